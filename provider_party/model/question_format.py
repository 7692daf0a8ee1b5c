"""A fingerprint of the questions a connector set was trained to read, so that a stale set is retrained, not served.

Connectors are stored by (base model, schema digest). That key does not change when an upgrade
changes how questions are written (the verbalizer's templates, the prompt around them, how their
tokens are matched to values), yet an encoder trained on the old text misreads the new one without
any error. So every stored set carries the fingerprint of the question format it was trained on:
the tokens, stated numbers and pointer targets of fixed probe questions for its schema. The store
treats a set whose fingerprint differs from the current code's as not stored.

The probe rows are built from the schema alone, deterministically (no random number library whose
stream could change with its version), and the verbalizer is seeded, so the fingerprint moves only
when the text or its tokenization does, and only for the schemas whose questions change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from protocol.schema import ColumnSpec, PublicSchema
from protocol.verbalizer import Verbalizer
from provider_party.model.prompting import PromptBuilder

PROBE_ROWS = 96


def _probe_value(col: ColumnSpec, k: int) -> Any:
    if col.nullable and k % 7 == 3:
        return None
    if col.is_numeric:
        lo, hi = float(col.min), float(col.max)
        v = lo + (hi - lo) * ((k * 37) % 101) / 100 * ((k % 5) / 4) ** 2   # spread over magnitudes, ends included
        return round(v) if col.type == "int" else round(v, col.printed_decimals)
    levels = col.levels
    return levels[k % len(levels)]


def probe_rows(schema: PublicSchema, n: int = PROBE_ROWS) -> list[dict[str, Any]]:
    """`n` rows that visit every level, missing values and numbers of every size, from the schema alone."""
    return [{c.name: _probe_value(c, k + 3 * i) for i, c in enumerate(schema.columns)} for k in range(n)]


def question_format_fingerprint(tokenizer: Any, schema: PublicSchema, n: int = PROBE_ROWS) -> str:
    """sha256 of what the connectors read from `n` probe questions: token ids, stated numbers, question tokens, value positions."""
    prompts = PromptBuilder(tokenizer, schema)
    h = hashlib.sha256()
    for u in Verbalizer(schema, seed=0).utterances(probe_rows(schema, n)):
        row = prompts.row(u.text, 0)
        numbers = [None if x != x else x for x in row.numbers]  # NaN marks "no number here"
        record = {"ids": row.ids, "numbers": numbers, "reads": row.reads, "values": prompts.value_tokens(u.text, u.spans)}
        h.update(json.dumps(record, sort_keys=True).encode())
    return "sha256:" + h.hexdigest()


__all__ = ["PROBE_ROWS", "probe_rows", "question_format_fingerprint"]
