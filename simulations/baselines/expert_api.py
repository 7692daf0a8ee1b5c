"""The expert-API baseline: the LLM copies the expert's inputs out of the question, the expert answers.

This is how a client's model is usually offered without Llamdex: as a tool behind an API. The base
LLM reads the question and fills in a form with one line per schema column,

    sex: female
    age: 29
    ticket class: 1st

and the values go to the client's DP expert, whose class is the answer (the LLM would only repeat
it). The form is generated under a grammar, so every line parses: the field names are forced, a
categorical value must be one of the column's levels, a numeric value must be a number
(optionally with `$`, thousands separators and decimals), and a nullable column may say `unknown`.
Decoding is greedy with jump-forward (`constrained.ChunkedDecoder`): field names cost one forward
step each, a value one step per token. Llamdex instead reads the same information from the
question's hidden states in the one forward pass that answers it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder
from protocol.schema import ColumnSpec, PublicSchema
from provider_party.model.base_llm import BaseLLM
from simulations.baselines.constrained import ChunkedDecoder

UNKNOWN = "unknown"
MAX_VALUE_TOKENS = 16
_NUMBER_PREFIX = re.compile(r"\$?-?(\d[\d,]*(\.\d*)?)?")
_NUMBER = re.compile(r"\$?-?\d[\d,]*(\.\d+)?")
_NUMBER_CHARS = set("0123456789.,-$ ")


@lru_cache(maxsize=4)
def _vocab_strings(tokenizer) -> tuple[str, ...]:
    """Each token id's text as the tokenizer decodes it alone (computed once per tokenizer)."""
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def _core(text: str) -> str:
    """A value without the one space that may follow the colon."""
    return text.removeprefix(" ")


@dataclass(frozen=True)
class FieldGrammar:
    """One line of the form: the forced field name and what its value may be."""

    column: ColumnSpec
    header: tuple[int, ...]          # tokens of "name:"
    literals: dict[str, str | None]  # allowed literal text -> level (None: unknown)
    numeric: bool
    candidates: tuple[int, ...]      # token ids that can occur inside a value

    def valid_prefix(self, text: str) -> bool:
        core = _core(text)
        if core.startswith(" "):
            return False
        return any(lit.startswith(core) for lit in self.literals) or (self.numeric and _NUMBER_PREFIX.fullmatch(core) is not None)

    def complete(self, text: str) -> bool:
        core = _core(text)
        return core in self.literals or (self.numeric and _NUMBER.fullmatch(core) is not None and not core.endswith(","))

    def parse(self, text: str) -> tuple[object, bool]:
        """(value for the expert's encoder, parsed?) ; an unparsable value counts as missing."""
        core = _core(text)
        if core in self.literals:
            return self.literals[core], True
        if self.numeric and self.complete(text):
            return float(core.replace("$", "").replace(",", "")), True
        return None, False


class FormGrammar:
    """The form of a schema under one tokenizer: field names, value grammars and their token candidates."""

    def __init__(self, tokenizer, schema: PublicSchema):
        self.tokenizer, self.schema = tokenizer, schema
        vocab = _vocab_strings(tokenizer)
        self.newline = self._single_token("\n")
        self.fields = tuple(self._field(c, vocab) for c in schema.columns)

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"the tokenizer splits {text!r} into {len(ids)} tokens; the form needs it as one token")
        return ids[0]

    def _field(self, col: ColumnSpec, vocab: tuple[str, ...]) -> FieldGrammar:
        literals: dict[str, str | None] = {}
        if not col.is_numeric:
            for level in col.levels:
                literals[level.replace("_", " ")] = level
        if col.nullable:
            literals[UNKNOWN] = None
        variants = [" " + lit for lit in literals]
        cands = []
        for i, s in enumerate(vocab):
            if not s or "\n" in s:
                continue
            if any(s in v for v in variants) or (col.is_numeric and set(s) <= _NUMBER_CHARS):
                cands.append(i)
        header = tuple(self.tokenizer(f"{col.phrases[0]}:", add_special_tokens=False)["input_ids"])
        return FieldGrammar(col, header, literals, col.is_numeric, tuple(cands))


class FormMachine:
    """One row's walk through the form (see `constrained.TokenMachine`)."""

    def __init__(self, grammar: FormGrammar, vocab: tuple[str, ...]):
        self.g, self.vocab = grammar, vocab
        self.field = 0
        self.values: list[str] = [""]
        self.value_tokens = 0
        self._pending: list[int] = list(grammar.fields[0].header) if grammar.fields else []
        self._finished = not grammar.fields

    def forced(self) -> list[int]:
        out, self._pending = self._pending, []
        return out

    def _choices(self) -> list[int]:
        f, text = self.g.fields[self.field], self.values[-1]
        if self.value_tokens >= MAX_VALUE_TOKENS:
            return []
        out = [t for t in f.candidates if f.valid_prefix(text + self.vocab[t])]
        if f.complete(text):
            out.append(self.g.newline)
        return out

    def allowed(self) -> list[int] | None:
        if self._finished:
            return None
        return self._choices() or [self.g.newline]  # nothing fits (too long, say): end the line; it parses as missing

    def feed(self, token: int) -> None:
        if token == self.g.newline:
            self._next_field(newline_fed=True)
            return
        self.values[-1] += self.vocab[token]
        self.value_tokens += 1
        if self._choices() == [self.g.newline]:   # the value cannot go on: end the line without asking the model
            self._next_field(newline_fed=False)

    def _next_field(self, newline_fed: bool) -> None:
        self.field += 1
        if self.field == len(self.g.fields):
            self._finished = True
            return
        self.values.append("")
        self.value_tokens = 0
        self._pending += ([] if newline_fed else [self.g.newline]) + list(self.g.fields[self.field].header)

    def record(self) -> tuple[dict[str, object], dict[str, bool]]:
        """The filled-in values by column name, and whether each parsed."""
        rec, ok = {}, {}
        for f, text in zip(self.g.fields, self.values + [""] * (len(self.g.fields) - len(self.values))):
            rec[f.column.name], ok[f.column.name] = f.parse(text)
        return rec, ok


@dataclass
class Extraction:
    records: list[dict[str, object]]
    parsed: list[dict[str, bool]]
    prompt_tokens: list[int]
    generated_tokens: list[int]      # model-chosen tokens per question
    forced_tokens: list[int]
    steps: int                        # forward steps over all batches


class ExpertAPI:
    """Base LLM fills in the schema's form from the question; the client's expert classifies the record."""

    def __init__(self, base: BaseLLM, schema: PublicSchema):
        self.base, self.schema = base, schema
        self.grammar = FormGrammar(base.tokenizer, schema)
        self.vocab = _vocab_strings(base.tokenizer)
        self.decoder = ChunkedDecoder(base)
        self.encoder = FeatureEncoder(schema)
        names = ", ".join(c.phrases[0] for c in schema.columns)
        self.instruction = (f"Fill in this form about the {schema.subject} from the text above, one line per field ({names}). "
                            f"Copy each value as the text gives it; write {UNKNOWN} if the text does not give it.")

    def prompt_ids(self, question: str) -> list[int]:
        content = question.strip() + "\n\n" + self.instruction
        tok = self.base.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True) \
            if getattr(tok, "chat_template", None) else content + "\n"
        return tok(text, add_special_tokens=False)["input_ids"]

    def extract(self, questions: list[str], batch_size: int = 16, progress: bool = False) -> Extraction:
        out = Extraction([], [], [], [], [], 0)
        for s in tqdm(range(0, len(questions), batch_size), desc=f"expert API {self.schema.name}", disable=not progress, leave=False):
            qs = questions[s:s + batch_size]
            prompts = [self.prompt_ids(q) for q in qs]
            machines = [FormMachine(self.grammar, self.vocab) for _ in qs]
            stats = self.decoder.run(prompts, machines)
            for p, m, c, f in zip(prompts, machines, stats.chosen, stats.forced):
                rec, ok = m.record()
                out.records.append(rec)
                out.parsed.append(ok)
                out.prompt_tokens.append(len(p))
                out.generated_tokens.append(c)
                out.forced_tokens.append(f)
            out.steps += stats.steps
        return out

    def features(self, records: list[dict[str, object]]) -> np.ndarray:
        """The expert's input for extracted records (numbers clipped to the schema's range; unknown = missing)."""
        return self.encoder.encode_records(records)

    @torch.inference_mode()
    def answer(self, questions: list[str], expert: nn.Module, batch_size: int = 16) -> np.ndarray:
        """Class probabilities (n, C): one constrained form generation per question, then the expert."""
        ext = self.extract(questions, batch_size)
        return expert(torch.as_tensor(self.features(ext.records))).softmax(-1).numpy()

    def timed_answer(self, question: str, expert: nn.Module) -> float:
        t = time.perf_counter()
        self.answer([question], expert, batch_size=1)
        return time.perf_counter() - t
