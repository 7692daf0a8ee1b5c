"""Stage 0 of connector training: synthetic rows, the surrogate expert, their questions, and cached frozen states.

Everything here comes from the public schema alone. The frozen base LLM's layers below the encoder
layer `j` and the inject layer `k` give the same states every epoch, so each question runs through
them once (in length-sorted batches, so padding wastes little) and training reads the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema
from protocol.verbalizer import Verbalizer
from provider_party.model.llamdex_model import LlamdexModel
from provider_party.model.prompting import QueryBatch
from provider_party.model.synthesis import synthesize, train_surrogate


@dataclass
class SyntheticCorpus:
    """Labelled synthetic rows, their encodings, their questions, and the four disjoint splits of them."""

    rows: pd.DataFrame
    labels: np.ndarray
    x: np.ndarray                    # FeatureEncoder encoding of `rows`
    surrogate: torch.nn.Module       # trained on (x, labels): stands in for the client's expert
    questions: list[str]
    encoder_idx: np.ndarray
    encoder_val_idx: np.ndarray
    decoder_idx: np.ndarray
    decoder_val_idx: np.ndarray


def build_corpus(schema: PublicSchema, *, n_synthetic: int, encoder_questions: int, decoder_questions: int, val_questions: int,
                 surrogate_epochs: int, seed: int) -> SyntheticCorpus:
    """Synthesizes rows, trains the surrogate on all of them, and verbalizes the ones the two stages use."""
    fe = FeatureEncoder(schema)
    n_q = encoder_questions + decoder_questions + 2 * val_questions
    rows, labels = synthesize(schema, n=max(n_synthetic, n_q), seed=seed)
    x = fe.encode_frame(rows)
    surrogate = train_surrogate(schema, x, labels, epochs=surrogate_epochs, seed=seed)
    questions = Verbalizer(schema, seed=seed).questions(rows.to_dict("records")[:n_q])
    cuts = np.cumsum([encoder_questions, val_questions, decoder_questions, val_questions])
    enc, enc_val, dec, dec_val = (np.arange(a, b) for a, b in zip([0, *cuts[:-1]], cuts))
    return SyntheticCorpus(rows, labels, x, surrogate, questions, enc, enc_val, dec, dec_val)


def encoder_targets(fe: FeatureEncoder, rows: pd.DataFrame, idx: np.ndarray) -> list[torch.Tensor]:
    t = fe.targets(rows.iloc[idx])
    return [torch.as_tensor(t[b.column.name]) for b in fe.blocks]


def length_sorted(questions: list[str], model: LlamdexModel) -> np.ndarray:
    """Order that groups similar lengths, so padding wastes little compute."""
    lengths = [len(model.prompts.prefix_ids(q)) for q in questions]
    return np.argsort(lengths, kind="stable")


@torch.no_grad()
def cache_states(model: LlamdexModel, questions: list[str], idx: np.ndarray, batch_size: int, with_slots: bool,
                 make_entry: Callable[[np.ndarray, QueryBatch], Any], *, desc: str, progress: bool,
                 on_batch: Callable[[float], None] | None = None) -> list[Any]:
    """Runs each question of `idx` once (length-sorted batches); `make_entry(ids, batch)` keeps what a stage needs."""
    order = idx[length_sorted([questions[i] for i in idx], model)]
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    out = []
    for ci, ids in enumerate(tqdm(chunks, desc=desc, disable=not progress, leave=False)):
        if on_batch is not None:
            on_batch(ci / max(len(chunks), 1))
        out.append(make_entry(ids, model.batch([questions[i] for i in ids], with_slots=with_slots)))
    return out


__all__ = ["SyntheticCorpus", "build_corpus", "cache_states", "encoder_targets", "length_sorted"]
