"""Stage 0 of connector training: synthetic rows, the surrogate expert, their questions, and cached frozen states.

Everything here comes from the public schema alone. The frozen base LLM gives the same states
every epoch, so each question runs through it once, in length-sorted batches (little padding):

- every question's layer-`j` states over its own tokens, for the expert encoder;
- for the decoder's questions the same pass goes on to the last layer, keeping what the decoder
  stage needs (`slot_pass.SlotContext`: the states entering each candidate inject layer at the
  slots, and the question's keys and values above it), so the encoder and the decoder share one
  frozen pass per question and decoder training never re-runs the question through the LLM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder, is_missing
from protocol.schema import PublicSchema
from protocol.verbalizer import Utterance, Verbalizer
from provider_party.model.connectors import PointerTargets
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.prompting import PromptBuilder, QueryBatch
from provider_party.model.slot_pass import SlotContext, full_pass
from provider_party.model.synthesis import synthesize, train_surrogate

# One cached encoder batch: (layer-j states in float16, question mask, stated numbers, targets), cut to the question's tokens.
EncoderBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, PointerTargets]
# One cached decoder batch: (the slot passes' context, surrogate logits).
DecoderBatch = tuple[SlotContext, torch.Tensor]


@dataclass
class SyntheticCorpus:
    """Labelled synthetic rows, their encodings, the surrogate, and the questions of each split."""

    schema: PublicSchema
    rows: pd.DataFrame
    labels: np.ndarray
    x: np.ndarray                    # FeatureEncoder encoding of `rows`
    surrogate: torch.nn.Module       # trained on (x, labels): stands in for the client's expert
    utterances: dict[int, Utterance]  # row index -> its question (with value spans)
    encoder_idx: np.ndarray          # questions only the encoder trains on
    encoder_val_idx: np.ndarray      # the encoder's validation (the self-check reads them)
    decoder_idx: np.ndarray          # questions both stages train on (one frozen pass to the last layer)
    decoder_val_idx: np.ndarray
    seed: int
    next_row: int                    # first row no question has used yet (for extra questions)
    verbalizer_options: dict = field(default_factory=dict)  # extra Verbalizer arguments (fillers), for the extra questions too

    @property
    def questions(self) -> list[str]:
        return [self.utterances[i].text for i in sorted(self.utterances)]

    def add_questions(self, n: int, focus: set[str], seed: int) -> np.ndarray:
        """`n` more questions on unused rows that always state the `focus` columns (others half the
        time): shorter questions with more examples of the columns that need them."""
        rng = np.random.default_rng(seed)
        idx = np.arange(self.next_row, min(self.next_row + n, len(self.rows)))
        v = Verbalizer(self.schema, seed=seed, **self.verbalizer_options)
        others = [c.name for c in self.schema.columns if c.name not in focus]
        for i in idx:
            keep = set(focus) | {c for c in others if rng.random() < 0.5}
            self.utterances[int(i)] = v.utterance(self.rows.iloc[int(i)].to_dict(), keep=keep)
        self.next_row = int(idx[-1]) + 1 if len(idx) else self.next_row
        return idx


def build_corpus(schema: PublicSchema, *, n_synthetic: int, encoder_questions: int, decoder_questions: int, val_questions: int,
                 surrogate_epochs: int, seed: int, reserve: int = 0, verbalizer_options: dict | None = None) -> SyntheticCorpus:
    """Synthesizes rows (with `reserve` spare rows for extra questions), trains the surrogate, verbalizes the splits."""
    fe = FeatureEncoder(schema)
    n_q = encoder_questions + decoder_questions + 2 * val_questions
    rows, labels = synthesize(schema, n=max(n_synthetic, n_q + reserve), seed=seed)
    x = fe.encode_frame(rows)
    surrogate = train_surrogate(schema, x, labels, epochs=surrogate_epochs, seed=seed)
    options = dict(verbalizer_options or {})
    utterances = dict(enumerate(Verbalizer(schema, seed=seed, **options).utterances(rows.to_dict("records")[:n_q])))
    cuts = np.cumsum([encoder_questions, val_questions, decoder_questions, val_questions])
    enc, enc_val, dec, dec_val = (np.arange(a, b) for a, b in zip([0, *cuts[:-1]], cuts))
    return SyntheticCorpus(schema, rows, labels, x, surrogate, utterances, enc, enc_val, dec, dec_val, seed, n_q, options)


def pointer_targets(fe: FeatureEncoder, prompts: PromptBuilder, utterances: list[Utterance], rows: pd.DataFrame, batch: QueryBatch) -> PointerTargets:
    """Where each column's value sits in each (left-padded) question, or that nothing is stated for it.

    A categorical value's target is every token of its stated text; a number's is the token that
    ends it (where `QueryBatch.numbers` holds its value). A column the question does not state, or
    says is unknown, targets "nothing stated".
    """
    B, T = batch.input_ids.shape
    C = len(fe.blocks)
    tokens = torch.zeros(B, C, T, dtype=torch.bool)
    missing = torch.ones(B, C, dtype=torch.bool)
    cat_cols = [i for i, b in enumerate(fe.blocks) if b.kind != "numeric"]
    levels = torch.zeros(B, len(cat_cols), dtype=torch.long)
    num_cols = [i for i, b in enumerate(fe.blocks) if b.kind == "numeric"]
    values = torch.zeros(B, len(num_cols))
    for r, (u, (_, row)) in enumerate(zip(utterances, rows.iterrows())):
        offset = T - int(batch.attention_mask[r].sum())
        where = prompts.value_tokens(u.text, u.spans)
        for ci, b in enumerate(fe.blocks):
            name = b.column.name
            if name not in where or is_missing(row[name]):
                continue
            pos = [offset + p for p in where[name]]
            if b.kind == "numeric":
                pos = [p for p in pos if torch.isfinite(batch.numbers[r, p])][-1:]
            if not pos:
                continue
            missing[r, ci] = False
            tokens[r, ci, pos] = True
        for c, ci in enumerate(cat_cols):
            if not missing[r, ci]:
                levels[r, c] = fe.level_index(fe.blocks[ci].column, row[fe.blocks[ci].column.name])
        for c, ci in enumerate(num_cols):
            if not missing[r, ci]:
                values[r, c] = fe.scale(fe.blocks[ci].column, float(row[fe.blocks[ci].column.name]))
    return PointerTargets(tokens, missing, levels, values)


def _trim(batch: QueryBatch, h: torch.Tensor, targets: PointerTargets) -> EncoderBatch:
    """The encoder batch cut to the columns where some row has a question token (the rest is padding or template)."""
    cols = batch.question_mask.any(0).nonzero().flatten()
    a, b = int(cols[0]), int(cols[-1]) + 1
    t = PointerTargets(targets.tokens[..., a:b].clone(), targets.missing, targets.levels, targets.values)
    return h[:, a:b].to(torch.float16).clone(), batch.question_mask[:, a:b].clone(), batch.numbers[:, a:b].clone(), t


def length_sorted(questions: list[str], prompts: PromptBuilder) -> np.ndarray:
    """Order that groups similar lengths, so padding wastes little compute."""
    lengths = [len(prompts.prefix_ids(q)) for q in questions]
    return np.argsort(lengths, kind="stable")


def _batches(model: LlamdexModel, corpus: SyntheticCorpus, idx: np.ndarray, batch_size: int, *, desc: str, progress: bool,
             on_batch: Callable[[float], None] | None) -> Iterator[tuple[np.ndarray, list[Utterance]]]:
    """The questions of `idx` in length-sorted batches (little padding), with a progress bar and `on_batch(fraction done)`."""
    texts = [corpus.utterances[int(i)].text for i in idx]
    order = idx[length_sorted(texts, model.prompts)]
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for ci, ids in enumerate(tqdm(chunks, desc=desc, disable=not progress, leave=False)):
        if on_batch is not None:
            on_batch(ci / max(len(chunks), 1))
        yield ids, [corpus.utterances[int(i)] for i in ids]


@torch.no_grad()
def cache_questions(model: LlamdexModel, corpus: SyntheticCorpus, idx: np.ndarray, batch_size: int, *, candidates: list[int] | None,
                    desc: str, progress: bool, on_batch: Callable[[float], None] | None = None) -> tuple[list[EncoderBatch], list[DecoderBatch]]:
    """One frozen pass per question of `idx`: encoder batches always; decoder batches too when `candidates` are given
    (the pass then runs to the last layer, with slots)."""
    j = model.config.encoder_layer
    if candidates is None:
        return cache_encoder_states(model, corpus, idx, batch_size, [j], desc=desc, progress=progress, on_batch=on_batch)[j], []
    fe, prompts = FeatureEncoder(model.schema), model.prompts
    enc: list[EncoderBatch] = []
    dec: list[DecoderBatch] = []
    for ids, utts in _batches(model, corpus, idx, batch_size, desc=desc, progress=progress, on_batch=on_batch):
        batch = model.batch([u.text for u in utts], with_slots=True)
        targets = pointer_targets(fe, prompts, utts, corpus.rows.iloc[ids], batch)
        kept, ctx = full_pass(model.lm, batch, [j], candidates)
        dec.append((ctx, corpus.surrogate(torch.as_tensor(corpus.x[ids]))))
        enc.append(_trim(batch, kept[j], targets))
    return enc, dec


@torch.no_grad()
def cache_encoder_states(model: LlamdexModel, corpus: SyntheticCorpus, idx: np.ndarray, batch_size: int, layers: list[int], *,
                         desc: str, progress: bool, on_batch: Callable[[float], None] | None = None) -> dict[int, list[EncoderBatch]]:
    """Encoder batches of the questions of `idx` at each of `layers`, from one frozen pass that stops at the deepest:
    the reader ablation compares layers on the same questions for the price of one pass."""
    fe, prompts = FeatureEncoder(model.schema), model.prompts
    out: dict[int, list[EncoderBatch]] = {l: [] for l in layers}
    for ids, utts in _batches(model, corpus, idx, batch_size, desc=desc, progress=progress, on_batch=on_batch):
        batch = model.batch([u.text for u in utts], with_slots=False)
        targets = pointer_targets(fe, prompts, utts, corpus.rows.iloc[ids], batch)
        for l, h in model.lm.lower(batch, list(layers)).items():
            out[l].append(_trim(batch, h, targets))
    return out


__all__ = ["DecoderBatch", "EncoderBatch", "SyntheticCorpus", "build_corpus", "cache_encoder_states", "cache_questions", "length_sorted", "pointer_targets"]
