"""Drafts a public schema from a table: the first step for a table the project has never seen.

What a draft takes from the data: each column's type, the category lists, whether a column has
missing values, the label's classes. What it never takes from the data: numeric ranges. The
smallest and the largest value of a column are records (the youngest passenger, the largest
loan), so a draft writes a placeholder string for every `min` and `max`; `PublicSchema` refuses a
placeholder (a range must be a number), so the draft cannot be used until its owner fills in
public bounds (a physical, legal or documented range). Every column gets one note saying what to
check or fill in. Nothing here prints or logs a cell value except category names, which the draft
publishes anyway and which the notes ask the owner to review, and texts that are not numbers
(missing-value markers such as "NA", junk such as "?" in a column of numbers).

A CSV reaches the draft as text, markers such as "NA" included (`read_table_file`); how cells are written
(markers, numbers, formatted numbers, dates) is read by `cell_forms.py`. The draft reads a marker as a missing value, as the loader does for a column whose schema does not list the marker as a
level, and the note says how many cells held which marker, for the owner to decide.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client_party.cell_forms import (UNIT_KEY, as_number, as_numbers, case_clashes, column_decimals, control_levels, date_time_kind, markers_in,
                                     number_form, present_cells)
from protocol.encoding import bool_level
from protocol.errors import LlamdexError
from protocol.schema import MAX_DECIMALS, SCHEMA_FORMAT

PLACEHOLDER = "FILL IN: a public {bound} bound of {column} (not the data's {extreme})"
MAX_CATEGORIES = 30          # more distinct texts than this: free text or an identifier, left out
MIN_IDENTIFIER_ROWS = 20     # all-distinct integer/text columns of at least this many rows are identifiers
RARE_CATEGORY = 5            # a category held by fewer records reveals them; the note says so
MAX_SHOWN = 4                # texts quoted in a note at most (junk in a column of numbers, clashing levels)
SIGNIFICANT_DIGITS = 3       # fewer kept by the schema's decimals (values too small for its cap): the note says rescale
MAX_UNITS = 2                # more distinct letters after numbers than this: codes ('3B', '4C'), not units
UNIT_SUFFIXES = {"mm": "mm", "cm": "cm", "m": "meters", "km": "km", "g": "grams", "kg": "kg", "lb": "pounds", "lbs": "pounds",
                 "years": "years", "yrs": "years", "months": "months", "days": "days", "hours": "hours", "usd": "dollars",
                 "dollars": "dollars", "eur": "euros", "pct": "percent", "percent": "percent"}


_UNNAMED = re.compile(r"Unnamed: \d+(?:_level_\d+)?")   # what pandas calls a column with an empty header name


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
    """The answer word drafted for a class: its text with separators as spaces, first letter upper-case.

    A number keeps its digits ('1.0' -> '1', '2.5' -> '2.5'): its point is no separator."""
    number = _number_text(level)
    if number is not None:
        return number
    text = re.sub(r"[_.]+", " ", str(level)).strip()
    return text[:1].upper() + text[1:] if text else str(level).strip()


def _number_text(level: Any) -> str | None:
    """A finite number's text as an answer word: integral ones as integers ('1.0' -> '1'), others as written; None for a
    text that is not a number. A label read as floats (a CSV written from a float column) thus drafts like an integer one."""
    x = as_number(level)
    if x is None or not math.isfinite(x):
        return None
    return str(int(x)) if x.is_integer() else str(level).strip()


# --- words ----------------------------------------------------------------------------------------


def _levels(values: pd.Series) -> list[str]:
    return sorted({str(v).strip() for v in values})


def _and(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


# --- decimals -----------------------------------------------------------------------------------


def _decimals_note(numbers: np.ndarray, written: int, cap: int) -> str:
    """What a schema's cap on decimals does to the column: values rounded; small ones printed as 0 or with a digit or
    two. The advice is a unit in which the values are larger; no value, nor its order of magnitude, is printed."""
    if written <= cap:
        return ""
    nonzero = np.abs(numbers[numbers != 0])
    rescale = "rescale it in the table into a unit in which its values are larger (e.g. mg instead of g, or per million), then draft again"
    most = f"; at {cap} decimals (the most a schema allows) most of its nonzero values"
    if nonzero.size and 2 * np.count_nonzero(np.round(nonzero, cap) == 0) > nonzero.size:
        return f"{most} print as 0: {rescale}"
    if nonzero.size and 2 * np.count_nonzero(nonzero < 10.0 ** (SIGNIFICANT_DIGITS - 1 - cap)) > nonzero.size:
        return f"{most} keep fewer than {SIGNIFICANT_DIGITS} significant digits: {rescale}"
    return (f"; its values are written with more than the {cap} decimals a schema allows, so they print rounded to {cap}: "
            f"if the lost digits matter, {rescale}")


# --- what a column is: dates, a single value, numbers written as text ---------------------------


def _date_time_note(kind: str) -> str:
    if kind == "a duration":
        return "a duration: write it as a number in a unit (e.g. days) in the table by hand"
    return "a date/time: derive a public numeric feature (e.g. year, or days since a date) in the table by hand"


def _single_value(present: pd.Series, numbers: np.ndarray | None) -> bool:
    """One distinct value: the same number however written ('1', '1.0'), or one text however capitalised."""
    if numbers is not None:
        return len(np.unique(numbers)) == 1
    return len({str(v).strip().casefold() for v in present}) == 1


def _forms_text(forms: list[str]) -> str:
    """"'$' and thousands separators", "a unit after the number ('kg')"."""
    units = [f[len(UNIT_KEY):] for f in forms if f.startswith(UNIT_KEY)]
    parts = [f for f in forms if not f.startswith(UNIT_KEY)]
    if units:
        parts.append(f"{'a unit' if len(units) == 1 else 'units'} after the number ({', '.join(map(repr, units))})")
    return _and(parts)


def _shown(texts: Counter[str]) -> str:
    """Texts to quote, most frequent first: those with no digit (a text with a digit may hold a value: '<5', '12 years')."""
    wordy = [t for t, _ in texts.most_common() if not any(c.isdigit() for c in t)]
    parts = [repr(t) for t in wordy[:MAX_SHOWN]]
    hidden = len(texts) - len(parts)
    if hidden:
        parts.append(f"{hidden} more{' with digits' if hidden == len(texts) - len(wordy) else ''}, not shown")
    return ", ".join(parts)


def _number_like_reason(present: pd.Series) -> str | None:
    """Why a column that is mostly numbers is not drafted as one: numbers formatted as text ('$1,200', '12%', '12 kg'),
    or a few other texts ('?', 'unknown'). None when most cells are not numbers. The draft does not convert: the owner
    does, in the table, and a category of number-like levels would publish the data's values."""
    texts = [str(v).strip() for v in present]
    is_number = [as_number(v) is not None for v in present]
    form_of = {t: number_form(t) for t, n in zip(texts, is_number) if not n}
    units = {f for form in form_of.values() if form for f in form if f.startswith(UNIT_KEY)}
    if len(units) > MAX_UNITS:   # '3B', '4C', '12A': codes, not a quantity with a unit
        form_of = {t: None if form and any(f.startswith(UNIT_KEY) for f in form) else form for t, form in form_of.items()}
    forms = list(dict.fromkeys(f for t, n in zip(texts, is_number) if not n and form_of[t] for f in form_of[t]))
    formatted = sum(1 for t, n in zip(texts, is_number) if not n and form_of[t])
    others = Counter(t for t, n in zip(texts, is_number) if not n and not form_of[t])
    if 2 * (sum(is_number) + formatted) <= len(texts) or not (formatted or others):   # few numbers, or no finite one ('inf')
        return None
    n_other = sum(others.values())
    if formatted:
        reason = f"numbers written with {_forms_text(forms)}: write them as plain numbers"
        if others:
            reason += (f"; {_plural(n_other, 'cell')} hold{'s' if n_other == 1 else ''} {_plural(len(others), 'other text')} "
                       f"({_shown(others)}): replace them with empty cells (nullable)")
        return reason + "; then draft again"
    return (f"numbers except {_plural(n_other, 'cell')} holding {_plural(len(others), 'other text')} ({_shown(others)}): replace "
            "them with empty cells to draft it as a number (nullable), or add it by hand as a category if the numbers are codes")


def _case_note(levels: list[str]) -> str:
    clashes = case_clashes(levels)
    return "".join(f"; levels {_and([repr(lv) for lv in g])} differ only by case: merge them in the table" for g in clashes)


# --- notes on missing values --------------------------------------------------------------------


def _marker_counts(markers: Counter[str]) -> str:
    """"101 cells 'NA' and 2 cells 'null' read as missing"."""
    return _and([f"{_plural(n, 'cell')} {m!r}" for m, n in markers.most_common()]) + " read as missing"


def _marker_note(name: str, markers: Counter[str], kind: str, levels: list[str], empty: int) -> str:
    """What the markers did, and for a column whose values are texts how to keep a marker that is a value (North
    America's 'NA'). `kind`: 'category', 'bool', 'single' (left out as one value), or anything else (no advice)."""
    if not markers:
        return ""
    which = " or ".join(map(repr, markers))
    note = f"; {_marker_counts(markers)}"
    if kind == "category":
        note += f"; if {which} is a value of {name} (not a missing value), add it to categories"
        note += " and set nullable to false" if len(markers) == 1 and empty == 0 else ""
    elif kind == "bool":
        note += (f"; if {which} is a value of {name} (not a missing value), make it a category with categories "
                 f"{levels + list(markers)}")
    elif kind == "single":
        note += f"; if {which} is a value of {name} (not a missing value), add it by hand as a category with {which} among its categories"
    return note


def _single_note(name: str, levels: list[str], empty: int, markers: Counter[str]) -> str:
    note = f"{name}: left out: a single value; it tells nothing"
    if empty:
        note += (f" (besides {_plural(empty, 'empty cell')}: if an empty cell means something, e.g. 'no', write that in the "
                 "table and draft again)")
    return note + _case_note(levels) + _marker_note(name, markers, "single", levels, empty)


# --- columns ------------------------------------------------------------------------------------


def _looks_like_identifier(name: str, numbers: np.ndarray) -> bool:
    """Distinct integers that count rows (consecutive) or sit in a column named like an id ('id', 'loan_id', 'rownames', ...)."""
    if len(numbers) < MIN_IDENTIFIER_ROWS or len(np.unique(numbers)) != len(numbers):
        return False
    consecutive = bool(np.all(np.diff(np.sort(numbers)) == 1))
    return consecutive or bool(re.search(r"(^|[\s_.\-])(id|index|key|row|rownames|number|no)$", words_of(name)))


def _is_bool(levels: list[str]) -> bool:
    return len(levels) == 2 and {bool_level(v) for v in levels} == {"no", "yes"}


def _numeric_column(name: str, col: dict[str, Any], present: pd.Series, numbers: np.ndarray, unit: str | None) -> str | None:
    """Fills `col` as an int or float column and returns its note; None when it is an identifier (left out)."""
    finite = np.isfinite(numbers)
    non_finite = int((~finite).sum())
    if non_finite:   # the draft describes the finite values; the note names the others
        numbers, present = numbers[finite], present[finite]
    levels = _levels(present)
    integral = bool(np.all(numbers == np.round(numbers)))
    if integral and _looks_like_identifier(name, numbers):
        return None
    col["type"] = "int" if integral else "float"
    col["min"] = PLACEHOLDER.format(bound="lower", column=name, extreme="minimum")
    col["max"] = PLACEHOLDER.format(bound="upper", column=name, extreme="maximum")
    decimals_note = ""
    if not integral:
        written, cap = column_decimals(present), MAX_DECIMALS
        col["decimals"] = min(written, cap)
        decimals_note = _decimals_note(numbers, written, cap)
    if unit:
        col["unit"] = unit
    few = f"; only {len(levels)} distinct values: if they are codes, make it a category" if len(levels) <= 5 else ""
    note = (f"{name}: {col['type']}{f' in {unit}' if unit else ''}: fill in min and max from public knowledge (a physical, legal or "
            f"documented range), never from the data: its smallest and largest values are records{few}{decimals_note}")
    if non_finite:
        note += (f"; {non_finite} record{'s hold' if non_finite > 1 else ' holds'} an infinite value, which a number column refuses: "
                 f"fix {'them' if non_finite > 1 else 'it'} in the table, or load with --on-invalid drop")
    return note


def _category_column(name: str, col: dict[str, Any], present: pd.Series, levels: list[str]) -> str:
    """Fills `col` as a category column and returns its note (`_text_left_out` has said the texts are categories)."""
    col["type"] = "category"
    col["categories"] = levels
    counts = present.map(lambda v: str(v).strip()).value_counts()
    rare = sorted(counts[counts < RARE_CATEGORY].index)
    warn = (f"; {len(rare)} categor{'y is' if len(rare) == 1 else 'ies are'} held by fewer than {RARE_CATEGORY} records: publishing "
            f"{'it' if len(rare) == 1 else 'them'} says such records exist; merge or drop unless public") if rare else ""
    return f"{name}: category with {len(levels)} levels from the data: keep only levels that are public knowledge{warn}{_case_note(levels)}"


def _text_left_out(name: str, present: pd.Series, levels: list[str]) -> str | None:
    """Why a column of texts is not a category (numbers in disguise, an identifier, free text, unprintable levels), or None."""
    reason = _number_like_reason(present)
    if reason:
        return f"{name}: left out: {reason}"
    if len(levels) == len(present) >= MIN_IDENTIFIER_ROWS:
        return f"{name}: left out: every value is distinct (an identifier or free text?); add it by hand if it is a feature"
    if len(levels) > MAX_CATEGORIES:
        return f"{name}: left out: {len(levels)} distinct texts (free text?); add it as a category by hand if it is one"
    bad = control_levels(levels)
    if bad:
        return (f"{name}: left out: {_plural(len(bad), 'level')} hold{'s' if len(bad) == 1 else ''} a line break or another control "
                f"character ({', '.join(map(repr, bad[:MAX_SHOWN]))}{', ...' if len(bad) > MAX_SHOWN else ''}): clean "
                f"{'it' if len(bad) == 1 else 'them'} in the table, then draft again")
    return None


def draft_column(name: str, values: pd.Series) -> tuple[dict[str, Any] | None, str]:
    """One column's draft (None when it is left out) and its note."""
    present = present_cells(values)
    markers = markers_in(values)
    missing = len(values) - len(present)
    empty = missing - sum(markers.values())
    base, unit = unit_of(name)
    col: dict[str, Any] = {"name": str(name), "description": f"The {base}.", "aliases": [base]}
    if len(present) == 0:
        return None, f"{name}: left out: it has no value at all" + _marker_note(name, markers, "", [], empty)
    kind = date_time_kind(values, present)
    if kind:
        return None, f"{name}: left out: {_date_time_note(kind)}" + _marker_note(name, markers, "", [], empty)
    levels, numbers = _levels(present), as_numbers(present)
    if _single_value(present, numbers):
        return None, _single_note(name, levels, empty, markers)
    if _is_bool(levels):
        col["type"], note_kind = "bool", "bool"
        note = f"{name}: bool ({' / '.join(levels)}); check the description and aliases"
    elif numbers is not None:
        note_kind, note = "number", _numeric_column(name, col, present, numbers, unit)
        if note is None:
            return None, f"{name}: left out: every value is a distinct integer (a row number or an identifier?); add it by hand if it is a feature"
    else:
        left_out = _text_left_out(name, present, levels)
        if left_out:
            return None, left_out + _marker_note(name, markers, "", levels, empty)
        note_kind, note = "category", _category_column(name, col, present, levels)
    col["nullable"] = missing > 0
    col["sensitive"] = False
    note += f"; nullable ({missing} missing)" if missing else "; no missing value"
    note += _marker_note(name, markers, note_kind, levels, empty)
    return col, note + "; set sensitive = true if it is a protected attribute"


# --- the label ----------------------------------------------------------------------------------


def _label_is_bool(levels: list[str]) -> bool:
    """Two classes that read as no/yes, integral floats included ('0.0'/'1.0' as '0'/'1')."""
    return _is_bool([_number_text(v) or v for v in levels])


def _if_marker_is_a_class(name: str, markers: Counter[str]) -> str:
    return f"if {' or '.join(map(repr, markers))} is a class of {name} (not a missing label)"


def _refuse_unusable_classes(name: str, levels: list[str], markers: Counter[str]) -> None:
    """Refuses a label of fewer than 2 classes (naming the markers read as missing: a label of EU and NA is one class
    and missing labels until its owner says otherwise), of too many, or of classes that cannot be printed on one line."""
    if len(levels) < 2:
        besides, fix = "", ""
        if markers:
            besides = f" besides {_marker_counts(markers)}"
            fix = f" {_if_marker_is_a_class(name, markers)}, write it out in the table (e.g. its full name) and draft again, or"
        raise DraftError(f"label column {name!r} has {len(levels)} distinct value(s){besides}; a label needs at least 2 classes:"
                         f"{fix} choose another --label")
    if len(levels) > MAX_CATEGORIES:
        raise DraftError(f"label column {name!r} has {len(levels)} distinct values; a label is a class with at most {MAX_CATEGORIES} values "
                         "(bin a numeric target first, or choose another --label)")
    bad = control_levels(levels)
    if bad:
        raise DraftError(f"label column {name!r}: {_plural(len(bad), 'class')} hold{'s' if len(bad) == 1 else ''} a line break or another control character "
                         f"({', '.join(map(repr, bad[:MAX_SHOWN]))}): clean the label in the table, then draft again")


def _refuse_clashing_verbalizers(name: str, levels: list[str], verbalizers: list[str]) -> None:
    """A schema's answer words must differ case-insensitively (`PublicSchema` refuses the schema otherwise): classes
    drafted to one word ('Yes' and 'yes', 'very_good' and 'very good', '1' and '1.0') are refused here, by name."""
    groups: dict[str, list[int]] = {}
    for i, word in enumerate(verbalizers):
        groups.setdefault(word.casefold(), []).append(i)
    clashes = [g for g in groups.values() if len(g) > 1]
    if clashes:
        named = "; ".join(f"classes {_and([repr(levels[i]) for i in g])} would get the same answer word {verbalizers[g[0]]!r}"
                          for g in clashes)
        raise DraftError(f"label column {name!r}: {named}; a schema's answer words must differ (case aside): merge them in the "
                         "table if they are one class, or rename one, then draft again")


def draft_label(name: str, values: pd.Series, subject: str) -> tuple[dict[str, Any], str]:
    present = present_cells(values)
    markers = markers_in(values)
    levels = _levels(present)
    _refuse_unusable_classes(name, levels, markers)
    words = words_of(name)
    if _label_is_bool(levels):
        verbalizers = ["Yes" if bool_level(_number_text(v) or v) == "yes" else "No" for v in levels]
        question = f"Is this {subject} {words}?"
    else:
        verbalizers = [verbalizer_for(v) for v in levels]
        question = f"What is the {words} of this {subject}?"
    _refuse_clashing_verbalizers(name, levels, verbalizers)
    missing = len(values) - len(present)
    note = (f"{name} (label): {len(levels)} classes, answer words {verbalizers}: each word's first token must differ under the base LLM's "
            f"tokenizer (`llamdex schema check` tests it); rewrite the question as an end user would ask it")
    if missing:
        why = f" ({_marker_counts(markers)}; {_if_marker_is_a_class(name, markers)}, add it to classes and verbalizers)" if markers else ""
        note += f"; {missing} records have no label{why} and will be refused (or dropped with --on-invalid drop)"
    return {"name": str(name), "classes": levels, "verbalizers": verbalizers, "question": question,
            "description": f"The {words}."}, note


# --- the schema ---------------------------------------------------------------------------------


def _unnamed_note(name: Any, position: int) -> str:
    """A column whose header cell is empty (pandas calls it 'Unnamed: 1'): its name should come from its owner."""
    if not _UNNAMED.fullmatch(str(name)):
        return ""
    return f"; column {position} has no name in the header (read as {str(name)!r}): name it in the table, then draft again"


def draft_schema(df: pd.DataFrame, *, label: str, name: str, subject: str = "record", source: str = "the table") -> Draft:
    """A draft of the public schema of `df` with `label` as the prediction target (see the module docstring)."""
    if label not in df.columns:
        near = [c for c in map(str, df.columns) if c.strip().casefold() == label.strip().casefold()]
        hint = f"; did you mean {near[0]!r}? (a column name keeps its blanks and case)" if near else ""
        listed = [repr(c) if c != c.strip() else c for c in map(str, df.columns)]   # a blank at either end made visible
        raise DraftError(f"--label {label!r} is not a column of {source}{hint}; columns: {', '.join(listed)}")
    columns, notes = [], []
    for position, col_name in enumerate(df.columns, start=1):
        if col_name == label:
            continue
        col, note = draft_column(col_name, df[col_name])
        notes.append(note + _unnamed_note(col_name, position))
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


__all__ = ["Draft", "PLACEHOLDER", "default_draft_path", "draft_column", "draft_label", "draft_schema", "unit_of",
           "verbalizer_for", "words_of"]
