"""The public schema of a client's table: the only thing the provider learns about the data.

A schema names each feature column (type, range or categories, a description and paraphrases used
by the question verbalizer) and the label (classes and the words the LLM answers with). It is
public by definition, travels inside every artifact, and is identified by a stable digest.

Format v3 adds `level_phrases`: per level of a categorical or yes/no column, the words people use to
state it without the field's name ("has missed payments before"). They are the schema author's
domain knowledge, as public as the aliases; the verbalizer trains the reader on them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.canonical import LEGACY, RFC8785, digest_json, parse_json
from protocol.errors import SchemaError

SCHEMA_FORMAT = "llamdex.schema/v3"
# The canonical JSON each format's digest is computed with: v1 schemas (made before RFC 8785) keep their digests.
SCHEMA_FORMATS = {"llamdex.schema/v1": LEGACY, "llamdex.schema/v2": RFC8785, SCHEMA_FORMAT: RFC8785}
# Formats that may carry `level_phrases` (added in v3; an older reader would refuse the key).
LEVEL_PHRASE_FORMATS = (SCHEMA_FORMAT,)
COLUMN_TYPES = ("int", "float", "category", "bool")
MAX_DECIMALS = 6   # a float column's `decimals`: the verbalizer writes at most this many digits after the point
_COLUMN_KEYS = {"name", "type", "description", "min", "max", "categories", "aliases", "unit", "nullable", "sensitive", "decimals", "level_phrases"}
_LABEL_KEYS = {"name", "classes", "verbalizers", "question", "description"}
_SCHEMA_KEYS = {"format", "name", "version", "description", "subject", "columns", "label"}


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column. Numeric ranges come from public knowledge, never from the data."""

    name: str
    type: str
    description: str
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    unit: str | None = None
    nullable: bool = False
    sensitive: bool = False
    decimals: int | None = None
    level_phrases: tuple[tuple[str, tuple[str, ...]], ...] = ()   # (level, its phrases), in level order

    @property
    def is_numeric(self) -> bool:
        return self.type in ("int", "float")

    @property
    def printed_decimals(self) -> int:
        """Decimals a value is written with: 0 for an int, the schema's `decimals`, or 2 when a float names none.

        Every writer of numbers (verbalizer, synthesizer, evaluation) must agree on it.
        """
        if self.type == "int":
            return 0
        return self.decimals if self.decimals is not None else 2

    @property
    def levels(self) -> tuple[str, ...]:
        """Category levels of a categorical or boolean column ('no'/'yes' for bool)."""
        if self.type == "bool":
            return ("no", "yes")
        return self.categories

    @property
    def phrases(self) -> tuple[str, ...]:
        """The column's description-friendly names: its aliases, or its name with underscores as spaces."""
        return self.aliases or (self.name.replace("_", " "),)

    def phrases_for(self, level: str) -> tuple[str, ...]:
        """The schema's nameless phrases for `level` (empty when it gives none)."""
        return dict(self.level_phrases).get(level, ())


@dataclass(frozen=True)
class LabelSpec:
    """The prediction target: classes in data and the verbalizer word the LLM answers with for each."""

    name: str
    classes: tuple[str, ...]
    verbalizers: tuple[str, ...]
    question: str
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class PublicSchema:
    name: str
    version: str
    description: str
    subject: str
    columns: tuple[ColumnSpec, ...]
    label: LabelSpec
    format: str = SCHEMA_FORMAT
    _digest: str = field(default="", repr=False, compare=False)

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"schema {self.name!r} has no column {name!r}; columns: {[c.name for c in self.columns]}")

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def sensitive_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.sensitive]

    def to_dict(self) -> dict[str, Any]:
        cols = []
        for c in self.columns:
            d: dict[str, Any] = {"name": c.name, "type": c.type, "description": c.description}
            if c.is_numeric:
                d["min"], d["max"] = c.min, c.max
                if c.decimals is not None:
                    d["decimals"] = c.decimals
            if c.type == "category":
                d["categories"] = list(c.categories)
            if c.aliases:
                d["aliases"] = list(c.aliases)
            if c.unit:
                d["unit"] = c.unit
            d["nullable"] = c.nullable
            d["sensitive"] = c.sensitive
            if c.level_phrases:
                d["level_phrases"] = {lv: list(ph) for lv, ph in c.level_phrases}
            cols.append(d)
        lab = asdict(self.label)
        lab["classes"], lab["verbalizers"] = list(self.label.classes), list(self.label.verbalizers)
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "subject": self.subject,
            "columns": cols,
            "label": lab,
        }

    @property
    def digest(self) -> str:
        """`sha256:` digest of the canonical JSON (RFC 8785; v1 schemas: the scheme they were made with); equal schemas share connectors."""
        return digest_json(self.to_dict(), SCHEMA_FORMATS[self.format])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> "PublicSchema":
        return _parse_schema(data)

    @classmethod
    def load(cls, path: str | Path) -> "PublicSchema":
        p = Path(path)
        try:
            data = parse_json(p.read_text(encoding="utf-8-sig"))   # a byte-order mark (some editors write one) is not an error
        except FileNotFoundError:
            raise SchemaError(f"schema file {p} does not exist") from None
        except IsADirectoryError:
            raise SchemaError(f"{p} is a folder, not a schema file") from None
        except UnicodeDecodeError as e:
            raise SchemaError(f"schema file {p} is not UTF-8 text ({e.reason}); a schema is a JSON file") from None
        except json.JSONDecodeError as e:
            raise SchemaError(f"schema file {p} is not valid JSON: {e}") from None
        return _parse_schema(data, where=str(p))

    @classmethod
    def from_json(cls, text: str | bytes) -> "PublicSchema":
        try:
            data = parse_json(text)
        except json.JSONDecodeError as e:
            raise SchemaError(f"schema is not valid JSON: {e}") from None
        return _parse_schema(data)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise SchemaError(msg)


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    _need(isinstance(value, list) and all(isinstance(v, str) and v for v in value), f"{what} must be a list of non-empty strings")
    return tuple(value)


def _parse_level_phrases(d: Any, where: str, typ: str, levels: tuple[str, ...], fmt: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if "level_phrases" not in d:
        return ()
    _need(fmt in LEVEL_PHRASE_FORMATS, f"{where}: 'level_phrases' needs \"format\": {SCHEMA_FORMAT!r} (this schema says {fmt!r})")
    _need(typ in ("category", "bool"), f"{where}: only categorical and bool columns have 'level_phrases'")
    raw = d["level_phrases"]
    _need(isinstance(raw, dict) and raw, f"{where}: 'level_phrases' must be an object from level to a list of phrases")
    unknown = [k for k in raw if k not in levels]
    _need(not unknown, f"{where}: 'level_phrases' names {unknown}, which are not levels of the column; levels: {list(levels)}")
    out = tuple((lv, _str_list(raw[lv], f"{where}: 'level_phrases' of {lv!r}")) for lv in levels if lv in raw)
    empty = [lv for lv, phrases in out if not phrases]
    _need(not empty, f"{where}: 'level_phrases' of {empty} must be a list of non-empty strings, not empty (leave the level out instead)")
    return out


def _parse_column(d: Any, i: int, fmt: str = SCHEMA_FORMAT) -> ColumnSpec:
    _need(isinstance(d, dict), f"columns[{i}] must be an object")
    name = d.get("name")
    _need(isinstance(name, str) and name.strip() != "", f"columns[{i}]: 'name' must be a non-empty string")
    where = f"column {name!r}"
    unknown = set(d) - _COLUMN_KEYS
    _need(not unknown, f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_COLUMN_KEYS)}")
    typ = d.get("type")
    _need(typ in COLUMN_TYPES, f"{where}: 'type' is {typ!r}; use one of {list(COLUMN_TYPES)}")
    desc = d.get("description", "")
    _need(isinstance(desc, str) and desc.strip() != "", f"{where}: 'description' must be a non-empty string (the verbalizer and users read it)")
    lo, hi, cats, decimals = d.get("min"), d.get("max"), (), d.get("decimals")
    if typ in ("int", "float"):
        for k, v in (("min", lo), ("max", hi)):
            _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"{where}: numeric column needs a finite number '{k}' (got {v!r}); ranges come from public knowledge, not from the data")
        _need(lo < hi, f"{where}: 'min' ({lo}) must be below 'max' ({hi})")
        _need("categories" not in d, f"{where}: a {typ} column has no 'categories'")
        if decimals is not None:
            _need(isinstance(decimals, int) and not isinstance(decimals, bool) and 0 <= decimals <= MAX_DECIMALS,
                  f"{where}: 'decimals' must be an integer 0..{MAX_DECIMALS}")
    else:
        _need(lo is None and hi is None, f"{where}: a {typ} column has no 'min'/'max'")
        if typ == "category":
            cats = _str_list(d.get("categories"), f"{where}: 'categories'")
            _need(len(cats) >= 2, f"{where}: needs at least 2 categories, got {len(cats)}")
            _need(len(set(cats)) == len(cats), f"{where}: duplicate categories {[c for c in cats if cats.count(c) > 1]}")
        else:
            _need("categories" not in d, f"{where}: a bool column has implicit levels no/yes; remove 'categories'")
    aliases = _str_list(d.get("aliases", []), f"{where}: 'aliases'")
    unit = d.get("unit")
    _need(unit is None or isinstance(unit, str), f"{where}: 'unit' must be a string")
    for k in ("nullable", "sensitive"):
        _need(isinstance(d.get(k, False), bool), f"{where}: '{k}' must be true or false")
    level_phrases = _parse_level_phrases(d, where, typ, cats if typ == "category" else ("no", "yes"), fmt)
    return ColumnSpec(
        name=name, type=typ, description=desc,
        min=float(lo) if lo is not None else None, max=float(hi) if hi is not None else None,
        categories=cats, aliases=aliases, unit=unit,
        nullable=d.get("nullable", False), sensitive=d.get("sensitive", False), decimals=decimals, level_phrases=level_phrases,
    )


def _parse_label(d: Any, column_names: set[str]) -> LabelSpec:
    _need(isinstance(d, dict), "'label' must be an object")
    unknown = set(d) - _LABEL_KEYS
    _need(not unknown, f"label: unknown keys {sorted(unknown)}; allowed: {sorted(_LABEL_KEYS)}")
    name = d.get("name")
    _need(isinstance(name, str) and name != "", "label: 'name' must be a non-empty string")
    _need(name not in column_names, f"label {name!r} is also listed as a feature column; remove it from 'columns'")
    classes = _str_list(d.get("classes"), f"label {name!r}: 'classes'")
    verbs = _str_list(d.get("verbalizers"), f"label {name!r}: 'verbalizers'")
    _need(len(classes) >= 2, f"label {name!r}: needs at least 2 classes")
    _need(len(set(classes)) == len(classes), f"label {name!r}: duplicate classes")
    _need(len(verbs) == len(classes), f"label {name!r}: {len(verbs)} verbalizers for {len(classes)} classes; give one answer word per class")
    _need(len({v.lower() for v in verbs}) == len(verbs), f"label {name!r}: verbalizers must differ (case-insensitively)")
    q = d.get("question")
    _need(isinstance(q, str) and q.strip().endswith("?"), f"label {name!r}: 'question' must be a question ending in '?'")
    return LabelSpec(name=name, classes=classes, verbalizers=verbs, question=q, description=d.get("description", ""))


def _refuse_unfilled_bounds(cols_raw: list) -> None:
    """Every numeric bound that is still text (a draft's placeholder) in one refusal: a drafted 500-column table has
    1000 of them, and naming only the first would take as many rounds of edit and check."""
    unfilled = [f"{c['name']}.{k}" for c in cols_raw if isinstance(c, dict) and isinstance(c.get("name"), str)
                and c.get("type") in ("int", "float") for k in ("min", "max") if isinstance(c.get(k), str)]
    if len(unfilled) > 1:
        shown = ", ".join(unfilled[:40]) + (f", … ({len(unfilled) - 40} more)" if len(unfilled) > 40 else "")
        raise SchemaError(f"{len(unfilled)} numeric range bounds are still text, not numbers: {shown}; write public bounds there "
                          "(physical, legal or documented ranges; ranges come from public knowledge, not from the data)")


def _parse_schema(data: Any, where: str = "schema") -> PublicSchema:
    try:
        _need(isinstance(data, dict), f"{where}: top level must be a JSON object")
        unknown = set(data) - _SCHEMA_KEYS
        _need(not unknown, f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_SCHEMA_KEYS)}")
        fmt = data.get("format", SCHEMA_FORMAT)
        _need(isinstance(fmt, str) and fmt in SCHEMA_FORMATS, f"{where}: 'format' is {fmt!r}; this version reads {sorted(SCHEMA_FORMATS)} "
              f"(write {SCHEMA_FORMAT!r} for a new schema)")
        for k in ("name", "version", "description", "subject"):
            _need(isinstance(data.get(k), str) and data[k].strip() != "", f"{where}: '{k}' must be a non-empty string")
        cols_raw = data.get("columns")
        _need(isinstance(cols_raw, list) and len(cols_raw) > 0, f"{where}: 'columns' must be a non-empty list")
        _refuse_unfilled_bounds(cols_raw)
        cols = tuple(_parse_column(c, i, fmt) for i, c in enumerate(cols_raw))
        names = [c.name for c in cols]
        dup = sorted({n for n in names if names.count(n) > 1})
        _need(not dup, f"{where}: duplicate column names {dup}")
        label = _parse_label(data.get("label"), set(names))
    except SchemaError as e:
        if str(e).startswith(where):
            raise
        raise SchemaError(f"{where}: {e}") from None
    except OverflowError:   # an integer too large for a float (JSON has no limit): min, max or decimals
        raise SchemaError(f"{where}: a number is too large to be read as a float (min, max and decimals must be finite numbers)") from None
    return PublicSchema(
        name=data["name"], version=data["version"], description=data["description"],
        subject=data["subject"], columns=cols, label=label, format=fmt,
    )
