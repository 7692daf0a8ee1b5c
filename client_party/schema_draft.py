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

A CSV reaches the draft as text, markers such as "NA" included (`read_table_file`); the draft reads a
marker as a missing value, as the loader does for a column whose schema does not list the marker as a
level, and the note says how many cells held which marker, for the owner to decide.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from client_party.datasets import MISSING_MARKERS
from protocol.encoding import bool_level, is_missing
from protocol.errors import LlamdexError, SchemaError
from protocol.schema import SCHEMA_FORMAT, PublicSchema

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

# Dates and times as tables write them: ISO (2020-01-31, 2020-01-31T12:00:00Z), with slashes or dots (31/01/2020,
# 2020/1/31, 31.01.2020), with a month name (31 Jan 2020, January 31, 2020), and times of day (12:00, 9:30 pm).
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_DATE = (rf"\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{4}}|\d{{1,2}}/\d{{1,2}}/\d{{2}}"
         rf"|\d{{1,2}}[ -]{_MONTH}[ -,]*\d{{4}}|{_MONTH} \d{{1,2}},? \d{{4}}")
_TIME = r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[ap]\.?m\.?)?"
_ZONE = r"(?:\s*(?:z|utc|gmt|[+-]\d{2}:?\d{2}))?"
_DATE_TIME = re.compile(rf"(?:{_DATE})(?:(?:t|\s+){_TIME}{_ZONE})?|{_TIME}{_ZONE}", re.IGNORECASE)

# A number as people format it: a currency symbol, thousands separators, a decimal comma, a percent sign or a unit.
_CURRENCIES = "$€£¥₹"
_FORMATTED = re.compile(rf"([+-]?)\s*([{_CURRENCIES}]?)\s*([+-]?)\s*(\d(?:[\d,.'\u00a0\u202f ]*\d)?)\s*([{_CURRENCIES}%]|[^\W\d_]{{1,12}}\.?)?")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"\d{1,3}([,'\u00a0\u202f ])\d{3}(?:\1\d{3})*(?:\.\d+)?|\d{1,3}(?:\.\d{3}){2,}")
_DECIMAL_COMMA = re.compile(r"\d+,\d+|\d{1,3}([.'\u00a0\u202f ])\d{3}(?:\1\d{3})*,\d+")
_UNIT_KEY = "unit "   # how `_number_form` marks the letters after a number
_WRITTEN_NUMBER = re.compile(r"[+-]?\d*(?:\.(\d*))?(?:e([+-]?\d+))?", re.IGNORECASE)
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
    x = _number(level)
    if x is None or not math.isfinite(x):
        return None
    return str(int(x)) if x.is_integer() else str(level).strip()


# --- cells: missing, markers, numbers -----------------------------------------------------------


def _marker_of(value: Any) -> str | None:
    """The missing-value marker a cell holds ('NA', 'null', ...: `MISSING_MARKERS`), or None."""
    if isinstance(value, str) and value.strip() in MISSING_MARKERS:
        return value.strip()
    return None


def _is_empty(value: Any) -> bool:
    return is_missing(value) or (isinstance(value, str) and value.strip() == "")


def _present(values: pd.Series) -> pd.Series:
    """The cells with a value: not empty, not NaN/None, not a marker (the loader reads a marker as missing unless the
    schema lists it as a level; the note offers that)."""
    return values[[not (_is_empty(v) or _marker_of(v)) for v in values]]


def _markers(values: pd.Series) -> Counter[str]:
    """How many cells hold each missing-value marker."""
    return Counter(m for m in map(_marker_of, values) if m is not None)


def _number(value: Any) -> float | None:
    """`value` as a float ("inf" included), or None: not a number, or a NaN text that is no marker ("NAN"), which the
    loader refuses in a number column like any other text."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _as_numbers(values: pd.Series) -> np.ndarray | None:
    """Every value as a float ("inf" and "-Infinity" included), or None when a value is not a number.

    A column of numbers with one "inf" is still a numeric column with one bad record: drafted as text, it became a
    category of every distinct number, or was left out as free text."""
    out = []
    for v in values:
        x = _number(v)
        if x is None:
            return None
        out.append(x)
    numbers = np.asarray(out, dtype=np.float64)
    return numbers if np.isfinite(numbers).any() else None


def _levels(values: pd.Series) -> list[str]:
    return sorted({str(v).strip() for v in values})


def _and(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


# --- decimals -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def max_decimals() -> int:
    """The most decimals a schema allows, asked of the schema validator (protocol/schema.py names no constant for it),
    so that a draft follows the format's rule rather than a copy of it."""
    def valid(n: int) -> bool:
        col = {"name": "x", "type": "float", "description": "x", "min": 0, "max": 1, "decimals": n}
        lab = {"name": "y", "classes": ["a", "b"], "verbalizers": ["A", "B"], "question": "Which?"}
        try:
            PublicSchema.from_dict({"format": SCHEMA_FORMAT, "name": "p", "version": "1", "description": "p", "subject": "p",
                                    "columns": [col], "label": lab})
        except SchemaError:
            return False
        return True

    n = 0
    while n < 64 and valid(n + 1):
        n += 1
    return n


def _written_decimals(value: Any, precision: int = 15) -> int:
    """Decimals a value needs as the file writes it (formatting, not a statistic): '2.50' needs 1, '8.800e-06' needs 9
    (the mantissa's 3 digits after the point plus the exponent's shift of 6), '1.5e3' none. A float that is not text is
    written as its type writes it (`precision` significant digits; a float32 value widened to float64 as the float32),
    so 0.1 + 0.2 needs 1, not 17, and a float32 age of 0.1667 needs 4, not 9."""
    if isinstance(value, str):
        text = value.strip()
    elif precision >= 15 and math.isfinite(x := float(value)) and float(np.float32(x)) == x:
        text = str(np.float32(x))
    else:
        text = format(float(value), f".{precision}g")
    m = _WRITTEN_NUMBER.fullmatch(text)
    if m is None:
        return 0
    fraction, exponent = m.group(1) or "", m.group(2)
    if exponent is None:
        return len(fraction.rstrip("0"))
    return max(0, len(fraction) - int(exponent))


def _decimals(values: pd.Series) -> int:
    """The most decimals any value of the column is written with (uncapped)."""
    precision = np.finfo(values.dtype).precision if isinstance(values.dtype, np.dtype) and values.dtype.kind == "f" else 15
    return max((_written_decimals(v, precision) for v in values), default=0)


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


def _date_time_kind(values: pd.Series, present: pd.Series) -> str | None:
    """'a date/time' or 'a duration' when the column is one (a datetime dtype, or most cells written as dates or times),
    else None. A date published as category levels names the records' days; a number derived from it is public."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return "a date/time"
    if pd.api.types.is_timedelta64_dtype(values.dtype):
        return "a duration"
    if values.dtype.kind in "biufc":   # a column of numbers holds no date text
        return None
    kinds = Counter(k for k in map(_date_time_of, present) if k is not None)
    return kinds.most_common(1)[0][0] if 2 * sum(kinds.values()) > len(present) else None


def _date_time_of(value: Any) -> str | None:
    if isinstance(value, (dt.timedelta, np.timedelta64)):
        return "a duration"
    if isinstance(value, (dt.date, dt.time, np.datetime64)):
        return "a date/time"
    if isinstance(value, str) and _DATE_TIME.fullmatch(value.strip()):
        return "a date/time"
    return None


def _date_time_note(kind: str) -> str:
    if kind == "a duration":
        return "a duration: write it as a number in a unit (e.g. days) in the table by hand"
    return "a date/time: derive a public numeric feature (e.g. year, or days since a date) in the table by hand"


def _single_value(present: pd.Series, numbers: np.ndarray | None) -> bool:
    """One distinct value: the same number however written ('1', '1.0'), or one text however capitalised."""
    if numbers is not None:
        return len(np.unique(numbers)) == 1
    return len({str(v).strip().casefold() for v in present}) == 1


def _number_form(text: str) -> list[str] | None:
    """How a formatted number is written ("$1,200" -> ["'$'", 'thousands separators']), or None for a text that is no
    formatted number. Read, never converted: '1,200' may be a thousand two hundred or one point two."""
    m = _FORMATTED.fullmatch(text)
    if m is None or (m.group(1) and m.group(3)):
        return None
    symbol, body, suffix = m.group(2), m.group(4), m.group(5) or ""
    forms = [repr(symbol)] if symbol else []
    if _THOUSANDS.fullmatch(body):
        forms.append("thousands separators")
    elif _DECIMAL_COMMA.fullmatch(body):
        forms.append("decimal commas")
    elif not _PLAIN.fullmatch(body):
        return None
    if suffix and (suffix in _CURRENCIES or suffix == "%"):
        forms.append(repr(suffix))
    elif suffix:
        forms.append(_UNIT_KEY + suffix)
    return forms or None


def _forms_text(forms: list[str]) -> str:
    """"'$' and thousands separators", "a unit after the number ('kg')"."""
    units = [f[len(_UNIT_KEY):] for f in forms if f.startswith(_UNIT_KEY)]
    parts = [f for f in forms if not f.startswith(_UNIT_KEY)]
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
    is_number = [_number(v) is not None for v in present]
    form_of = {t: _number_form(t) for t, n in zip(texts, is_number) if not n}
    units = {f for form in form_of.values() if form for f in form if f.startswith(_UNIT_KEY)}
    if len(units) > MAX_UNITS:   # '3B', '4C', '12A': codes, not a quantity with a unit
        form_of = {t: None if form and any(f.startswith(_UNIT_KEY) for f in form) else form for t, form in form_of.items()}
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


def _has_control(text: str) -> bool:
    """A line break, tab, NUL or other control character: it would break the one-line prompts, notes and answer words."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def _control_levels(levels: list[str]) -> list[str]:
    return [lv for lv in levels if _has_control(lv)]


def _case_clashes(levels: list[str]) -> list[list[str]]:
    """Groups of levels that differ only by case ('Yes', 'yes'): surrounding blanks are stripped already. Numbers
    ('1e5', '1E5') are no levels to merge, and a note never prints one."""
    groups: dict[str, list[str]] = {}
    for lv in (lv for lv in levels if _number(lv) is None):
        groups.setdefault(lv.casefold(), []).append(lv)
    return [g for g in groups.values() if len(g) > 1]


def _case_note(levels: list[str]) -> str:
    clashes = _case_clashes(levels)
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
        written, cap = _decimals(present), max_decimals()
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
    bad = _control_levels(levels)
    if bad:
        return (f"{name}: left out: {_plural(len(bad), 'level')} hold{'s' if len(bad) == 1 else ''} a line break or another control "
                f"character ({', '.join(map(repr, bad[:MAX_SHOWN]))}{', ...' if len(bad) > MAX_SHOWN else ''}): clean "
                f"{'it' if len(bad) == 1 else 'them'} in the table, then draft again")
    return None


def draft_column(name: str, values: pd.Series) -> tuple[dict[str, Any] | None, str]:
    """One column's draft (None when it is left out) and its note."""
    present = _present(values)
    markers = _markers(values)
    missing = len(values) - len(present)
    empty = missing - sum(markers.values())
    base, unit = unit_of(name)
    col: dict[str, Any] = {"name": str(name), "description": f"The {base}.", "aliases": [base]}
    if len(present) == 0:
        return None, f"{name}: left out: it has no value at all" + _marker_note(name, markers, "", [], empty)
    kind = _date_time_kind(values, present)
    if kind:
        return None, f"{name}: left out: {_date_time_note(kind)}" + _marker_note(name, markers, "", [], empty)
    levels, numbers = _levels(present), _as_numbers(present)
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
    bad = _control_levels(levels)
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
    present = _present(values)
    markers = _markers(values)
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
        raise DraftError(f"--label {label!r} is not a column of {source}; columns: {', '.join(map(str, df.columns))}")
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


__all__ = ["Draft", "PLACEHOLDER", "default_draft_path", "draft_column", "draft_label", "draft_schema", "max_decimals", "unit_of",
           "verbalizer_for", "words_of"]
