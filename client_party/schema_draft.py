"""Drafts a public schema from a table: the first step for a table the project has never seen.

What a draft takes from the data: each column's type, the category lists, whether a column has
missing values, the label's classes. What it never takes from the data: numeric ranges. The
smallest and the largest value of a column are records (the youngest passenger, the largest
loan), so a draft writes a placeholder string for every `min` and `max`; `PublicSchema` refuses a
placeholder (a range must be a number), so the draft cannot be used until its owner fills in
public bounds (a physical, legal or documented range). Every column gets one note saying what to
check or fill in. Nothing here prints or logs a cell value except category names, which the draft
publishes anyway and which the notes ask the owner to review.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from protocol.encoding import bool_level, is_missing
from protocol.errors import LlamdexError
from protocol.schema import SCHEMA_FORMAT

PLACEHOLDER = "FILL IN: a public {bound} bound of {column} (not the data's {extreme})"
MAX_CATEGORIES = 30          # more distinct texts than this: free text or an identifier, left out
MIN_IDENTIFIER_ROWS = 20     # all-distinct integer/text columns of at least this many rows are identifiers
RARE_CATEGORY = 5            # a category held by fewer records reveals them; the note says so
UNIT_SUFFIXES = {"mm": "mm", "cm": "cm", "m": "meters", "km": "km", "g": "grams", "kg": "kg", "lb": "pounds", "lbs": "pounds",
                 "years": "years", "yrs": "years", "months": "months", "days": "days", "hours": "hours", "usd": "dollars",
                 "dollars": "dollars", "eur": "euros", "pct": "percent", "percent": "percent"}


class DraftError(LlamdexError, ValueError):
    """The table cannot give a schema as asked (no such label column, a label of one class or too many, no feature)."""


@dataclass(frozen=True)
class Draft:
    """A schema draft (JSON-ready; `PublicSchema` refuses it until the placeholders are filled) and one note per column."""

    schema: dict[str, Any]
    notes: list[str]

    @property
    def placeholders(self) -> list[str]:
        """'column.min' / 'column.max' entries still holding a placeholder."""
        return [f"{c['name']}.{k}" for c in self.schema["columns"] for k in ("min", "max") if isinstance(c.get(k), str)]


def words_of(name: str) -> str:
    """'bill_length_mm' -> 'bill length mm', 'passengerClass' -> 'passenger class'."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name))
    return re.sub(r"[\s_.\-]+", " ", spaced).strip().lower()


def unit_of(name: str) -> tuple[str, str | None]:
    """The column's words without a unit suffix, and the unit ('bill length', 'mm')."""
    words = words_of(name).split(" ")
    if len(words) > 1 and words[-1] in UNIT_SUFFIXES:
        return " ".join(words[:-1]), UNIT_SUFFIXES[words[-1]]
    return " ".join(words), None


def verbalizer_for(level: str) -> str:
    """The answer word drafted for a class: its text with separators as spaces, first letter upper-case."""
    text = re.sub(r"[_.]+", " ", str(level)).strip()
    return text[:1].upper() + text[1:]


def _present(values: pd.Series) -> pd.Series:
    return values[[not (is_missing(v) or (isinstance(v, str) and v.strip() == "")) for v in values]]


def _as_numbers(values: pd.Series) -> np.ndarray | None:
    """Every value as a float ("inf" and "-Infinity" included), or None when a value is not a number.

    A column of numbers with one "inf" is still a numeric column with one bad record: drafted as text, it became a
    category of every distinct number, or was left out as free text."""
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            return None
        try:
            out.append(float(v.strip() if isinstance(v, str) else v))
        except (TypeError, ValueError):
            return None
    numbers = np.asarray(out, dtype=np.float64)
    return numbers if np.isfinite(numbers).any() else None


def _decimals(values: pd.Series) -> int:
    """Digits after the decimal point as the file writes them (formatting, not a statistic), at most 4."""
    most = 0
    for v in values:
        text = v.strip() if isinstance(v, str) else repr(float(v))
        if "." in text and "e" not in text.lower():
            most = max(most, len(text.split(".", 1)[1].rstrip("0")))
    return min(most, 4)


def _levels(values: pd.Series) -> list[str]:
    return sorted({str(v).strip() for v in values})


def _looks_like_identifier(name: str, numbers: np.ndarray) -> bool:
    """Distinct integers that count rows (consecutive) or sit in a column named like an id ('id', 'loan_id', 'rownames', ...)."""
    if len(numbers) < MIN_IDENTIFIER_ROWS or len(np.unique(numbers)) != len(numbers):
        return False
    consecutive = bool(np.all(np.diff(np.sort(numbers)) == 1))
    return consecutive or bool(re.search(r"(^|[\s_.\-])(id|index|key|row|rownames|number|no)$", words_of(name)))


def _is_bool(levels: list[str]) -> bool:
    return len(levels) == 2 and {bool_level(v) for v in levels} == {"no", "yes"}


def draft_column(name: str, values: pd.Series) -> tuple[dict[str, Any] | None, str]:
    """One column's draft (None when it is left out) and its note."""
    present = _present(values)
    nullable = len(present) < len(values)
    base, unit = unit_of(name)
    col: dict[str, Any] = {"name": str(name), "description": f"The {base}.", "aliases": [base]}
    if len(present) == 0:
        return None, f"{name}: left out: it has no value at all"
    numbers = _as_numbers(present)
    levels = _levels(present)
    if _is_bool(levels):
        col["type"] = "bool"
        note = f"{name}: bool ({' / '.join(levels)}); check the description and aliases"
    elif numbers is not None:
        finite = np.isfinite(numbers)
        non_finite = int((~finite).sum())
        if non_finite:   # the draft describes the finite values; the note names the others
            numbers, present = numbers[finite], present[finite]
            levels = _levels(present)
        integral = bool(np.all(numbers == np.round(numbers)))
        if integral and _looks_like_identifier(name, numbers):
            return None, f"{name}: left out: every value is a distinct integer (a row number or an identifier?); add it by hand if it is a feature"
        col["type"] = "int" if integral else "float"
        col["min"] = PLACEHOLDER.format(bound="lower", column=name, extreme="minimum")
        col["max"] = PLACEHOLDER.format(bound="upper", column=name, extreme="maximum")
        if not integral:
            col["decimals"] = _decimals(present)
        if unit:
            col["unit"] = unit
        few = f"; only {len(levels)} distinct values: if they are codes, make it a category" if len(levels) <= 5 else ""
        note = (f"{name}: {col['type']}{f' in {unit}' if unit else ''}: fill in min and max from public knowledge (a physical, legal or "
                f"documented range), never from the data: its smallest and largest values are records{few}")
        if non_finite:
            note += (f"; {non_finite} record{'s hold' if non_finite > 1 else ' holds'} an infinite value, which a number column refuses: "
                     f"fix {'them' if non_finite > 1 else 'it'} in the table, or load with --on-invalid drop")
    else:
        if len(levels) == len(present) >= MIN_IDENTIFIER_ROWS:
            return None, f"{name}: left out: every value is distinct (an identifier or free text?); add it by hand if it is a feature"
        if len(levels) > MAX_CATEGORIES:
            return None, f"{name}: left out: {len(levels)} distinct texts (free text?); add it as a category by hand if it is one"
        col["type"] = "category"
        col["categories"] = levels
        counts = present.map(lambda v: str(v).strip()).value_counts()
        rare = sorted(counts[counts < RARE_CATEGORY].index)
        warn = (f"; {len(rare)} categor{'y is' if len(rare) == 1 else 'ies are'} held by fewer than {RARE_CATEGORY} records: publishing "
                f"{'it' if len(rare) == 1 else 'them'} says such records exist; merge or drop unless public") if rare else ""
        note = f"{name}: category with {len(levels)} levels from the data: keep only levels that are public knowledge{warn}"
    col["nullable"] = nullable
    col["sensitive"] = False
    note += f"; nullable ({len(values) - len(present)} missing)" if nullable else "; no missing value"
    return col, note + "; set sensitive = true if it is a protected attribute"


def draft_label(name: str, values: pd.Series, subject: str) -> tuple[dict[str, Any], str]:
    present = _present(values)
    levels = _levels(present)
    if len(levels) < 2:
        raise DraftError(f"label column {name!r} has {len(levels)} distinct value(s); a label needs at least 2 classes: choose another --label")
    if len(levels) > MAX_CATEGORIES:
        raise DraftError(f"label column {name!r} has {len(levels)} distinct values; a label is a class with at most {MAX_CATEGORIES} values "
                         "(bin a numeric target first, or choose another --label)")
    words = words_of(name)
    if _is_bool(levels):
        verbalizers = ["Yes" if bool_level(v) == "yes" else "No" for v in levels]
        question = f"Is this {subject} {words}?"
    else:
        verbalizers = [verbalizer_for(v) for v in levels]
        question = f"What is the {words} of this {subject}?"
    missing = len(values) - len(present)
    note = (f"{name} (label): {len(levels)} classes, answer words {verbalizers}: each word's first token must differ under the base LLM's "
            f"tokenizer (`llamdex schema check` tests it); rewrite the question as an end user would ask it")
    if missing:
        note += f"; {missing} records have no label and will be refused (or dropped with --on-invalid drop)"
    return {"name": str(name), "classes": levels, "verbalizers": verbalizers, "question": question,
            "description": f"The {words}."}, note


def draft_schema(df: pd.DataFrame, *, label: str, name: str, subject: str = "record", source: str = "the table") -> Draft:
    """A draft of the public schema of `df` with `label` as the prediction target (see the module docstring)."""
    if label not in df.columns:
        raise DraftError(f"--label {label!r} is not a column of {source}; columns: {', '.join(map(str, df.columns))}")
    columns, notes = [], []
    for col_name in df.columns:
        if col_name == label:
            continue
        col, note = draft_column(col_name, df[col_name])
        notes.append(note)
        if col is not None:
            columns.append(col)
    if not columns:
        raise DraftError(f"{source} has no usable feature column besides the label {label!r}")
    lab, lab_note = draft_label(label, df[label], subject)
    notes.append(lab_note)
    notes.append(f"subject {subject!r}: what one row describes, used in every question (--subject); "
                 "name, description and version: edit them to describe the table")
    notes.append("aliases: each column's only alias is its name as words; add the names your users say (\"self-employed\" for "
                 "selfemp): questions are read against them, and written aliases read markedly better than column names "
                 "(docs/RESULTS.md, \"A table of your own\")")
    if any(c["type"] in ("category", "bool") for c in columns):
        notes.append("categorical and yes/no columns may take \"level_phrases\": per level, the words people use for it without "
                     "the field's name (\"owns their home\"); the reader learns them, so write the ones your users say")
    schema = {"format": SCHEMA_FORMAT, "name": name, "version": "1",
              "description": f"Drafted from {source} by `llamdex schema draft`: describe the table here.",
              "subject": subject, "columns": columns, "label": lab}
    return Draft(schema, notes)


def default_draft_path(data_path: Path) -> Path:
    """Where a draft goes by default: `<file>.schema.json` beside the table (what `--data FILE` looks for)."""
    return data_path.with_name(data_path.name + ".schema.json")


__all__ = ["Draft", "PLACEHOLDER", "default_draft_path", "draft_column", "draft_label", "draft_schema", "unit_of", "verbalizer_for", "words_of"]
