"""How a table writes its cells, read without converting anything: missing-value markers ("NA", "null"), numbers
(in e-notation too, and the decimals they are written with), numbers formatted as text ("$1,200", "12%", "12 kg"),
dates and times, and levels that hold control characters or differ only by case.

`llamdex schema draft` (`schema_draft.py`) decides from these what a column is and what its note says. Nothing here
keeps or prints a value: each function answers about the cells it is given.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from client_party.datasets import MISSING_MARKERS, is_missing_cell

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
UNIT_KEY = "unit "   # how `number_form` marks the letters after a number
_WRITTEN_NUMBER = re.compile(r"[+-]?\d*(?:\.(\d*))?(?:e([+-]?\d+))?", re.IGNORECASE)


def marker_of(value: Any) -> str | None:
    """The missing-value marker a cell holds ('NA', 'null', ...: `MISSING_MARKERS`), or None."""
    if isinstance(value, str) and value.strip() in MISSING_MARKERS:
        return value.strip()
    return None


def present_cells(values: pd.Series) -> pd.Series:
    """The cells with a value: not empty, not NaN/None, not a marker (`is_missing_cell` with no level: the loader reads
    a marker as missing unless the schema lists it as a level; the note offers that)."""
    return values[[not is_missing_cell(v) for v in values]]


def markers_in(values: pd.Series) -> Counter[str]:
    """How many cells hold each missing-value marker."""
    return Counter(m for m in map(marker_of, values) if m is not None)


def as_number(value: Any) -> float | None:
    """`value` as a float ("inf" included), or None: not a number, or a NaN text that is no marker ("NAN"), which the
    loader refuses in a number column like any other text."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def as_numbers(values: pd.Series) -> np.ndarray | None:
    """Every value as a float ("inf" and "-Infinity" included), or None when a value is not a number.

    A column of numbers with one "inf" is still a numeric column with one bad record: drafted as text, it became a
    category of every distinct number, or was left out as free text."""
    out = []
    for v in values:
        x = as_number(v)
        if x is None:
            return None
        out.append(x)
    numbers = np.asarray(out, dtype=np.float64)
    return numbers if np.isfinite(numbers).any() else None


def written_decimals(value: Any, precision: int = 15) -> int:
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


def column_decimals(values: pd.Series) -> int:
    """The most decimals any value of the column is written with (uncapped)."""
    precision = np.finfo(values.dtype).precision if isinstance(values.dtype, np.dtype) and values.dtype.kind == "f" else 15
    return max((written_decimals(v, precision) for v in values), default=0)


def date_time_kind(values: pd.Series, present: pd.Series) -> str | None:
    """'a date/time' or 'a duration' when the column is one (a datetime dtype, or most cells written as dates or times),
    else None. A date published as category levels names the records' days; a number derived from it is public."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return "a date/time"
    if pd.api.types.is_timedelta64_dtype(values.dtype):
        return "a duration"
    if values.dtype.kind in "biufc":   # a column of numbers holds no date text
        return None
    kinds = Counter(k for k in map(date_time_of, present) if k is not None)
    return kinds.most_common(1)[0][0] if 2 * sum(kinds.values()) > len(present) else None


def date_time_of(value: Any) -> str | None:
    if isinstance(value, (dt.timedelta, np.timedelta64)):
        return "a duration"
    if isinstance(value, (dt.date, dt.time, np.datetime64)):
        return "a date/time"
    if isinstance(value, str) and _DATE_TIME.fullmatch(value.strip()):
        return "a date/time"
    return None


def number_form(text: str) -> list[str] | None:
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
        forms.append(UNIT_KEY + suffix)
    return forms or None


def has_control(text: str) -> bool:
    """A line break, tab, NUL or other control character: it would break the one-line prompts, notes and answer words."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def control_levels(levels: list[str]) -> list[str]:
    return [lv for lv in levels if has_control(lv)]


def case_clashes(levels: list[str]) -> list[list[str]]:
    """Groups of levels that differ only by case ('Yes', 'yes'): surrounding blanks are stripped already. Numbers
    ('1e5', '1E5') are no levels to merge, and a note never prints one."""
    groups: dict[str, list[str]] = {}
    for lv in (lv for lv in levels if as_number(lv) is None):
        groups.setdefault(lv.casefold(), []).append(lv)
    return [g for g in groups.values() if len(g) > 1]
