"""Turns a table row into a natural-language question about it, with deliberate variety.

The provider trains its connectors on questions made from *synthetic* rows; at evaluation the same
code turns the client's *real* held-out records into questions, so the connectors never see a real
question during training. Variety (templates, field order, paraphrased field names, irrelevant
context sentences, number formats, missing values said or omitted) keeps the expert encoder from
keying on one surface form.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

from protocol.encoding import bool_level, is_missing
from protocol.schema import ColumnSpec, PublicSchema

INTROS = (
    "Consider a {subject} with the following details.",
    "Here is the record of a {subject}.",
    "I have information about a {subject}.",
    "The following describes a {subject}.",
    "Take a look at this {subject}.",
    "Below is a short profile of a {subject}.",
    "We are reviewing one {subject}.",
    "",
)
FIELD_FORMS = (
    "{name}: {value}",
    "the {name} is {value}",
    "{name} = {value}",
    "{name} of {value}",
    "{name} is {value}",
    "with {name} {value}",
)
JOINERS = (", ", "; ", ". ", "\n- ", " and ")
MISSING_WORDS = ("unknown", "not recorded", "not available", "missing")
DISTRACTORS = (
    "The record was pulled from an archive last week.",
    "This is part of a routine review.",
    "The file was typed up by a clerk in a hurry.",
    "My colleague asked me to double-check this case.",
    "The weather was unremarkable that day.",
    "Some fields in the original form were hard to read.",
    "I found this in an old spreadsheet.",
    "The case came up in a discussion over lunch.",
    "Please think about it carefully.",
    "This question is for a class exercise.",
)


def answer_instruction(schema: PublicSchema) -> str:
    words = list(schema.label.verbalizers)
    options = " or ".join(words) if len(words) == 2 else ", ".join(words[:-1]) + " or " + words[-1]
    return f"Answer with one word: {options}."


class Verbalizer:
    """Seeded question generator for one schema."""

    def __init__(self, schema: PublicSchema, seed: int = 0, distractor_rate: float = 0.35, omit_missing_rate: float = 0.5):
        self.schema = schema
        self.rng = random.Random(seed)
        self.distractor_rate = distractor_rate
        self.omit_missing_rate = omit_missing_rate

    def format_value(self, col: ColumnSpec, value: Any) -> str:
        r = self.rng
        if col.type == "bool":
            return bool_level(value) or str(value)
        if col.type == "category":
            return str(value).replace("_", " ")
        v = float(value)
        if col.type == "int" or (col.decimals == 0):
            text = f"{int(round(v)):,}" if (abs(v) >= 1000 and r.random() < 0.5) else str(int(round(v)))
        else:
            decimals = col.decimals if col.decimals is not None else 2
            d = r.choice(sorted({decimals, max(decimals - 1, 0)}))
            text = f"{v:,.{d}f}" if (abs(v) >= 1000 and r.random() < 0.5) else f"{v:.{d}f}"
        if col.unit and r.random() < 0.6:
            if col.unit == "dollars" and r.random() < 0.5:
                return "$" + text
            return f"{text} {col.unit}"
        return text

    def describe_fields(self, row: Mapping[str, Any]) -> list[str]:
        r = self.rng
        parts = []
        cols = list(self.schema.columns)
        r.shuffle(cols)
        form = r.choice(FIELD_FORMS)
        for col in cols:
            value = row.get(col.name)
            name = r.choice(col.phrases)
            if is_missing(value):
                if r.random() < self.omit_missing_rate:
                    continue
                text = r.choice(MISSING_WORDS)
            else:
                text = self.format_value(col, value)
            parts.append((form if r.random() < 0.8 else r.choice(FIELD_FORMS)).format(name=name, value=text))
        return parts

    def question(self, row: Mapping[str, Any]) -> str:
        """One natural question about `row` (a mapping from column name to value)."""
        r = self.rng
        intro = r.choice(INTROS).format(subject=self.schema.subject)
        fields = self.describe_fields(row)
        joiner = r.choice(JOINERS)
        body = ("- " if joiner == "\n- " else "") + joiner.join(fields)
        body = body[0].upper() + body[1:] if body else body
        pieces = [p for p in (intro, body + ("" if joiner == "\n- " else ".")) if p]
        if r.random() < self.distractor_rate:
            pieces.insert(r.randrange(len(pieces) + 1), r.choice(DISTRACTORS))
        pieces.append(self.schema.label.question)
        return "\n".join(pieces) if joiner == "\n- " else " ".join(pieces)

    def questions(self, rows: list[Mapping[str, Any]]) -> list[str]:
        return [self.question(row) for row in rows]
