"""Token layout of a Llamdex query: the chat prompt, the reserved expert slots, the answer position.

A query is `prefix + slots + suffix`, where `prefix` ends with the user's question and the answer
instruction, `slots` are `num_tokens` placeholder positions, and `suffix` opens the assistant turn;
the answer is read at the last position. Sequences are left-padded so the slots and the answer
position sit at the same offsets from the end in every row of a batch. The plain base-LLM query is
the same without the slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.errors import SchemaError
from protocol.schema import PublicSchema
from protocol.verbalizer import answer_instruction
from provider_party.model.numbers import number_values


@dataclass(frozen=True)
class PromptRow:
    """One tokenized query before padding: `prefix + slots + suffix`."""

    ids: list[int]
    question_len: int  # prefix tokens (chat head, the user's question, the answer instruction)
    numbers: list[float]  # per prefix token: the value of the stated number ending there, else NaN
    reads: list[bool] | None = None  # per prefix token: part of the user's question text (what the encoder reads)


@dataclass
class QueryBatch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens
    position_ids: torch.Tensor  # (B, L) positions that ignore left padding
    question_mask: torch.Tensor  # (B, L) bool: tokens of the user's question text, which the expert encoder reads
    numbers: torch.Tensor  # (B, L) float: value of the number the question states ending at this token, else NaN
    num_slots: int
    suffix_len: int

    def slots(self, num_slots: int) -> slice:
        """Positions of `num_slots` slots in every row (left padding aligns the rows' ends)."""
        end = self.input_ids.shape[1] - self.suffix_len
        return slice(end - num_slots, end)

    @property
    def slot_slice(self) -> slice:
        return self.slots(self.num_slots)

    @staticmethod
    def pad(rows: list[PromptRow], pad_id: int, num_slots: int, suffix_len: int) -> QueryBatch:
        """Left-pads rows to one width; rows of a mixed batch may carry different slot counts."""
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        qmask = torch.zeros((len(rows), width), dtype=torch.bool)
        numbers = torch.full((len(rows), width), float("nan"))
        for i, r in enumerate(rows):
            start = width - len(r.ids)
            ids[i, start:] = torch.tensor(r.ids)
            mask[i, start:] = 1
            qmask[i, start: start + r.question_len] = True if r.reads is None else torch.tensor(r.reads, dtype=torch.bool)
            numbers[i, start: start + r.question_len] = torch.tensor(r.numbers, dtype=torch.float32)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        return QueryBatch(ids, mask, pos, qmask, numbers, num_slots, suffix_len)

    def to(self, device: torch.device | str) -> QueryBatch:
        return QueryBatch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                          self.question_mask.to(device), self.numbers.to(device), self.num_slots, self.suffix_len)


class PromptBuilder:
    """Tokenizes questions for one schema and one tokenizer."""

    def __init__(self, tokenizer, schema: PublicSchema):
        self.tokenizer = tokenizer
        self.schema = schema
        self.instruction = answer_instruction(schema)
        marker = "\u2063QUESTION\u2063"
        text = self._template(marker)
        cut = text.index(marker) + len(marker)
        self._head_text, self._tail_text = text[: text.index(marker)], text[cut:]
        self.suffix_ids = self._encode(self._tail_text)
        self.pad_id = tokenizer.pad_token_id
        self.slot_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.pad_id
        self.verbalizer_ids = self._verbalizer_ids()

    def _template(self, content: str) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
        return f"{content}\nAnswer:"

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _verbalizer_ids(self) -> list[int]:
        """First token of each verbalizer as it would start the assistant's answer: the answer is read there.

        One forward pass gives the next-token distribution at one position, so each class is scored by the
        first token of its word; a word of several tokens ("Chinstrap" = "Ch" "inst" "rap") is fine as long
        as no two words start with the same token. Words that do ("Very low" / "Very high") could only be told
        apart at a later position, after the shared token, which would need that token in the prompt (and,
        for words sharing only part of a prefix, one pass per branch): the schema is refused instead, here
        (connector training and serving) and by `llamdex schema check`, with the words and the fix.
        """
        ids = []
        for word in self.schema.label.verbalizers:
            toks = self._encode(self._tail_text + word)[len(self.suffix_ids):] or self._encode(word)
            ids.append(toks[0])
        by_token: dict[int, list[str]] = {}
        for word, tid in zip(self.schema.label.verbalizers, ids):
            by_token.setdefault(tid, []).append(word)
        clashes = [(tid, words) for tid, words in by_token.items() if len(words) > 1]
        if clashes:
            what = "; ".join(f"{' and '.join(repr(w) for w in words)} {'both' if len(words) == 2 else 'all'} start with the token "
                             f"{self.tokenizer.decode([tid])!r}" for tid, words in clashes)
            raise SchemaError(
                f"schema {self.schema.name!r}, label {self.schema.label.name!r}: {what} under this base LLM's tokenizer, but the answer "
                "is read at the first token of each verbalizer (one forward pass), so these classes cannot be told apart; "
                "change 'verbalizers' so that each word starts differently (a one-word synonym, or the distinguishing word first: "
                "'Low' / 'High' rather than 'Very low' / 'Very high'); `llamdex schema check` tests a schema before upload")
        return ids

    def prefix_ids(self, question: str) -> list[int]:
        return self.prefix(question)[0]

    def prefix(self, question: str) -> tuple[list[int], list[float]]:
        """Token ids of the prompt up to the answer instruction, and the numbers the question states."""
        ids, numbers, _, _ = self._prefix(question)
        return ids, numbers

    def _prefix(self, question: str) -> tuple[list[int], list[float], list[bool], list[tuple[int, int]]]:
        """(ids, numbers, reads, offsets): offsets are character spans relative to the stripped question."""
        q = question.strip()
        text = self._head_text + q + "\n" + self.instruction
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start, end = len(self._head_text), len(self._head_text) + len(q)
        offsets = [(a - start, b - start) for a, b in enc["offset_mapping"]]
        reads = [b > 0 and a < len(q) and b > a for a, b in offsets]
        return enc["input_ids"], number_values(enc["offset_mapping"], text, start, end), reads, offsets

    def value_tokens(self, question: str, spans: dict[str, tuple[int, int]]) -> dict[str, list[int]]:
        """Per column, the prefix positions of the tokens that overlap the character span of its stated value.

        `spans` are relative to `question` as given (leading blanks are stripped like the prompt does).
        """
        lead = len(question) - len(question.lstrip())
        _, _, reads, offsets = self._prefix(question)
        out = {}
        for name, (a, b) in spans.items():
            a, b = a - lead, b - lead
            out[name] = [i for i, (s, e) in enumerate(offsets) if reads[i] and s < b and e > a]
        return out

    def row(self, question: str, num_slots: int) -> PromptRow:
        prefix, numbers, reads, _ = self._prefix(question)
        return PromptRow(prefix + [self.slot_id] * num_slots + self.suffix_ids, len(prefix), numbers, reads)

    def batch(self, questions: list[str], num_slots: int) -> QueryBatch:
        """Left-padded batch; `num_slots=0` gives the plain base-LLM query."""
        return QueryBatch.pad([self.row(q, num_slots) for q in questions], self.pad_id, num_slots, len(self.suffix_ids))
