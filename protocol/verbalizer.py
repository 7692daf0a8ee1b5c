"""Turns a table row into a natural-language question about it, with deliberate variety.

The provider trains its connectors on questions made from *synthetic* rows; at evaluation the same
code turns the client's *real* held-out records into questions, so the connectors never see a real
question during training. Variety keeps the expert encoder from keying on one surface form:
templates, field order, paraphrased field names, the value before or after the name, values stated
with no name where the schema makes them unambiguous, yes/no columns said with words ("with",
"has no", "without"), ordinal levels said as words ("first"), irrelevant context sentences, number
formats, missing values said or omitted, and the schema's own level phrases where it gives them
("has missed payments before", format v3). Everything is derived from the schema by general rules;
nothing here knows a particular table. A caller may also ask for filler words in place of some
connectives (`filler_rate`, `filler_words`; off by default, measured not to help).

`Verbalizer.utterance` also returns, per column, the character span of the value it stated: the
expert encoder is trained to point at that span (and at nothing when the value is missing).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.encoding import bool_level, is_missing
from protocol.schema import ColumnSpec, PublicSchema

INTROS = (  # {a_subject}: the subject with its indefinite article ("a passenger", "an employee")
    "Consider {a_subject} with the following details.",
    "Here is the record of {a_subject}.",
    "I have information about {a_subject}.",
    "The following describes {a_subject}.",
    "Take a look at this {subject}.",
    "Below is a short profile of {a_subject}.",
    "We are reviewing one {subject}.",
    "",
)
# The field's name, then its value.
NAME_FIRST = (
    "{name}: {value}",
    "the {name} is {value}",
    "{name} = {value}",
    "{name} of {value}",
    "{name} is {value}",
    "with {name} {value}",
    "{name} {value}",
)
# The value, then the field's name.
VALUE_FIRST = (
    "{value} {name}",
    "{value} as {name}",
    "{value} for {name}",
    "{value} ({name})",
    "{value} for the {name}",
)
FIELD_FORMS = NAME_FIRST  # kept for callers of the first version
# A yes/no column said with words: (the value's words, template).
BOOL_WORDS = {
    "yes": (("with", "{value} {name}"), ("has", "{value} {name}"), ("has a", "{value} {name}"), ("yes", "{value} to {name}"),
            ("included", "{name} {value}"), ("true", "{name}: {value}")),
    "no": (("without", "{value} {name}"), ("no", "{value} {name}"), ("has no", "{value} {name}"), ("not", "{value} {name}"),
           ("none", "{name}: {value}"), ("false", "{name}: {value}")),
}
# Ordinal levels ("1st") may be said as words; general English, not any table's knowledge.
ORDINAL_WORDS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth", "5th": "fifth",
                 "6th": "sixth", "7th": "seventh", "8th": "eighth", "9th": "ninth", "10th": "tenth"}
JOINERS = (", ", "; ", ". ", "\n- ", " and ")
MISSING_WORDS = ("unknown", "not recorded", "not available", "missing")
MISSING_FORMS = ("{name}: {missing}", "the {name} is {missing}", "{name} {missing}", "no information on {name}", "{name} not stated")
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


@dataclass(frozen=True)
class Utterance:
    """A question and, per column whose value it states, the character span of that value."""

    text: str
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)


class _Pieces:
    """Concatenates text while keeping track of where each column's value landed."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: dict[str, tuple[int, int]] = {}

    def add(self, text: str, span: tuple[str, int, int] | None = None) -> None:
        if span is not None:
            name, a, b = span
            self.spans[name] = (len(self.text) + a, len(self.text) + b)
        self.text += text


# Words that start with a vowel letter but a consonant sound ("a user", "a one-off"), and with a silent h ("an hour").
_CONSONANT_SOUND = re.compile(r"^(uni|use|usu|ute|uti|ura|uro|eu|ewe|one\b|once)")
_SILENT_H = re.compile(r"^(hour|honest|honou?r|heir)")


def with_article(phrase: str) -> str:
    """`phrase` after "a" or "an" by how its first word sounds: "an employee", "a loan applicant", "a user".

    Schemas name their subject and levels freely, and a question that reads "a employee" is text no user
    writes; the connectors should be trained and measured on the text people do write.
    """
    word = phrase.strip().lower()
    vowel = (word[:1] in "aeiou" and not _CONSONANT_SOUND.match(word)) or bool(_SILENT_H.match(word))
    return ("an " if vowel else "a ") + phrase


def _fill(template: str, name: str, value: str) -> tuple[str, int, int]:
    """`template` with `{name}` and `{value}` filled in, and the value's (start, end) in the result."""
    head, tail = template.split("{value}")
    head = head.replace("{name}", name)
    return head + value + tail.replace("{name}", name), len(head), len(head) + len(value)


def unambiguous_levels(schema: PublicSchema) -> set[tuple[str, str]]:
    """(column, level word) pairs whose word names no level of another column: such values may be stated alone."""
    seen: dict[str, set[str]] = {}
    for col in schema.columns:
        if col.type == "category":
            for lv in col.levels:
                seen.setdefault(lv.replace("_", " ").lower(), set()).add(col.name)
    return {(next(iter(cols)), word) for word, cols in seen.items() if len(cols) == 1}


class Verbalizer:
    """Seeded question generator for one schema."""

    def __init__(self, schema: PublicSchema, seed: int = 0, distractor_rate: float = 0.35, omit_missing_rate: float = 0.5,
                 value_first_rate: float = 0.25, word_rate: float = 0.3, nameless_rate: float = 0.15, phrase_rate: float = 0.3,
                 filler_rate: float = 0.0, filler_words: Sequence[str] = ()):
        self.schema = schema
        self.rng = random.Random(seed)
        self.distractor_rate = distractor_rate
        self.omit_missing_rate = omit_missing_rate
        self.value_first_rate = value_first_rate
        self.word_rate = word_rate
        self.nameless_rate = nameless_rate
        self.phrase_rate = phrase_rate
        self.filler_rate = filler_rate if filler_words else 0.0
        self.filler_words = tuple(filler_words)
        self._alone = unambiguous_levels(schema)
        units = [c.unit for c in schema.columns if c.is_numeric and c.unit]
        self._unique_units = {u for u in units if units.count(u) == 1}

    def format_value(self, col: ColumnSpec, value: Any) -> str:
        return self._format(col, value)[0]

    def _format(self, col: ColumnSpec, value: Any) -> tuple[str, int, int]:
        """The value as text, and the span of the value proper (the number without '$' or unit)."""
        r = self.rng
        if col.type == "bool":
            text = bool_level(value) or str(value)
            return text, 0, len(text)
        if col.type == "category":
            text = str(value).replace("_", " ")
            if text in ORDINAL_WORDS and r.random() < 0.4:
                text = ORDINAL_WORDS[text]
            elif r.random() < 0.15:
                text = text.lower()
            return text, 0, len(text)
        v = float(value)
        decimals = col.printed_decimals
        if decimals == 0:
            text = f"{round(v):,}" if (abs(v) >= 1000 and r.random() < 0.5) else str(round(v))
        else:
            d = r.choice(sorted({decimals, max(decimals - 1, 0)}))
            text = f"{v:,.{d}f}" if (abs(v) >= 1000 and r.random() < 0.5) else f"{v:.{d}f}"
        if col.unit and r.random() < 0.6:
            if col.unit == "dollars" and r.random() < 0.5:
                return "$" + text, 1, 1 + len(text)
            return f"{text} {col.unit}", 0, len(text)
        return text, 0, len(text)

    def _field(self, col: ColumnSpec, value: Any, form: str) -> tuple[str, int, int] | None:
        """One field as text with its value's span; None when a missing value is left out."""
        r = self.rng
        name = r.choice(col.phrases)
        if is_missing(value):
            if r.random() < self.omit_missing_rate:
                return None
            text = r.choice(MISSING_FORMS).replace("{missing}", r.choice(MISSING_WORDS)).replace("{name}", name)
            return text, -1, -1
        level = (bool_level(value) or "no") if col.type == "bool" else str(value) if col.type == "category" else None
        phrases = col.phrases_for(level) if level is not None else ()
        # The schema's own words for this level, with no field name (draws from the generator only when there are
        # some, so a schema without level phrases gets the questions it always got).
        if phrases and r.random() < self.phrase_rate:
            text = r.choice(phrases)
            return text, 0, len(text)
        if col.type == "bool" and r.random() < self.word_rate:
            word, template = r.choice(BOOL_WORDS[level])
            return _fill(template, name, word)
        text, a, b = self._format(col, value)
        if col.type == "category" and (col.name, str(value).replace("_", " ").lower()) in self._alone and r.random() < self.nameless_rate:
            if r.random() < 0.5:  # as a word describing the subject: "a female passenger"
                head = with_article(text).removesuffix(text)
                return f"{head}{text} {self.schema.subject}", len(head) + a, len(head) + b
            return text, a, b
        if col.is_numeric and col.unit in self._unique_units and text.endswith(" " + col.unit) and r.random() < self.nameless_rate:
            return text, a, b
        if r.random() < self.value_first_rate:
            template = r.choice(VALUE_FIRST)
        else:
            template = form if r.random() < 0.8 else r.choice(NAME_FIRST)
        if self.filler_rate and r.random() < self.filler_rate:
            template = self._filler_template(template)
        filled, start, _ = _fill(template, name, text)
        return filled, start + a, start + b

    def _filler_template(self, template: str) -> str:
        """The template's connective replaced by one to three words that carry nothing about the value.

        Users join a field to its value with words no template list foresees; with fillers the encoder
        learns to find the value by the field's name and the value's own form, whatever stands between
        them, instead of by the few connectives it was shown. Drawn only when `filler_rate` > 0, so the
        default questions (and their fingerprint) are unchanged.
        """
        r = self.rng
        words = " ".join(r.choice(self.filler_words) for _ in range(r.randint(1, 3)))
        return f"{{value}} {words} {{name}}" if template.index("{value}") < template.index("{name}") else f"{{name}} {words} {{value}}"

    def describe_fields(self, row: Mapping[str, Any]) -> list[str]:
        return [text for text, _ in self._fields(row)]

    def _fields(self, row: Mapping[str, Any], keep: set[str] | None = None) -> list[tuple[str, tuple[str, int, int] | None]]:
        cols = [c for c in self.schema.columns if keep is None or c.name in keep]
        self.rng.shuffle(cols)
        form = self.rng.choice(NAME_FIRST)
        out = []
        for col in cols:
            f = self._field(col, row.get(col.name), form)
            if f is not None:
                text, a, b = f
                out.append((text, (col.name, a, b) if a >= 0 else None))
        return out

    def utterance(self, row: Mapping[str, Any], keep: set[str] | None = None) -> Utterance:
        """One natural question about `row` (a mapping from column name to value), with its value spans.

        `keep` limits the question to those columns (the others are left unsaid, as a user may do).
        """
        r = self.rng
        intro = r.choice(INTROS).format(subject=self.schema.subject, a_subject=with_article(self.schema.subject))
        fields = self._fields(row, keep)
        joiner = r.choice(JOINERS)
        listed = joiner == "\n- "
        body = _Pieces()
        for i, (text, span) in enumerate(fields):
            if i == 0:
                text = ("- " if listed else "") + text[0].upper() + text[1:]
                span = None if span is None else (span[0], span[1] + (2 if listed else 0), span[2] + (2 if listed else 0))
            else:
                body.add(joiner)
            body.add(text, span)
        if fields and not listed:
            body.add(".")
        pieces: list[str | _Pieces] = [p for p in (intro, body if fields else "") if p]
        if r.random() < self.distractor_rate:
            pieces.insert(r.randrange(len(pieces) + 1), r.choice(DISTRACTORS))
        pieces.append(self.schema.label.question)
        out = _Pieces()
        sep = "\n" if listed else " "
        for i, p in enumerate(pieces):
            if i:
                out.add(sep)
            if isinstance(p, _Pieces):
                offset = len(out.text)
                out.add(p.text)
                out.spans.update({k: (a + offset, b + offset) for k, (a, b) in p.spans.items()})
            else:
                out.add(p)
        return Utterance(out.text, out.spans)

    def question(self, row: Mapping[str, Any]) -> str:
        """One natural question about `row` (a mapping from column name to value)."""
        return self.utterance(row).text

    def questions(self, rows: list[Mapping[str, Any]]) -> list[str]:
        return [self.question(row) for row in rows]

    def utterances(self, rows: list[Mapping[str, Any]]) -> list[Utterance]:
        return [self.utterance(row) for row in rows]
