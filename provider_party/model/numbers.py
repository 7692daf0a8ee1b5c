"""Finds the numbers a question states and the token that ends each one.

A 135M-parameter LLM does not carry a number like "187.35" in any hidden state precisely enough to
read it back (measured: a learned read-out of layer 8-16 states misses churn's minute counts by
40-80 minutes on a 0-400 range). The expert encoder therefore splits the job: it *learns*, from
the LLM's hidden states, which stated number belongs to which column (a pointer), and takes the
number's value from the text itself, parsed here. Parsing is deterministic and sees only the
question the user sent, so it adds nothing to what the provider already holds.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

# "1,234.5", "1234", "0.75", "-3"; thousands separators only in groups of three.
NUMBER = re.compile(r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


def find_numbers(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int, float]]:
    """(char start, char end, value) of each number in `text[start:end]`."""
    end = len(text) if end is None else end
    out = []
    for m in NUMBER.finditer(text, start, end):
        value = float(m.group().replace(",", ""))
        if math.isfinite(value):
            out.append((m.start(), m.end(), value))
    return out


def number_values(offsets: Sequence[tuple[int, int]], text: str, start: int, end: int) -> list[float]:
    """Per token: the value of the number that ends in this token, NaN elsewhere.

    The value sits on the number's last token because that is the first position whose (causal)
    hidden state has seen the whole number and the field name stated before it.
    """
    values = [math.nan] * len(offsets)
    spans = find_numbers(text, start, end)
    si = 0
    for ti, (a, b) in enumerate(offsets):
        while si < len(spans) and spans[si][1] <= a:
            si += 1
        if si == len(spans):
            break
        _, e, v = spans[si]
        if a < e <= b:  # the token holding the number's last character
            values[ti] = v
    return values
