"""Evaluates base LLM, expert and Llamdex on the client's real held-out records turned into questions.

The LLM's frozen lower layers are run once per question and shared by every expert being compared
(`LlamdexModel.inject` is the one-pass query split at layer k; a test checks they agree exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder
from protocol.verbalizer import Verbalizer
from provider_party.model.llamdex_model import LlamdexModel


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
    }


@dataclass
class EvalResult:
    y_true: np.ndarray
    base_pred: np.ndarray
    expert_pred: dict[str, np.ndarray] = field(default_factory=dict)
    llamdex_pred: dict[str, np.ndarray] = field(default_factory=dict)
    extraction: dict[str, dict] = field(default_factory=dict)
    questions: list[str] = field(default_factory=list)


def test_questions(model: LlamdexModel, test: pd.DataFrame, seed: int) -> list[str]:
    """Real held-out records through the verbalizer (a seed distinct from any training seed)."""
    return Verbalizer(model.schema, seed=10_000 + seed).questions(test[model.schema.feature_names].to_dict("records"))


@torch.inference_mode()
def evaluate(model: LlamdexModel, test: pd.DataFrame, experts: dict[str, torch.nn.Module], seed: int = 0,
             batch_size: int = 16, progress: bool = True) -> EvalResult:
    schema, fe = model.schema, FeatureEncoder(model.schema)
    x_true = fe.encode_frame(test)
    y_true = fe.label_index(test[schema.label.name])
    questions = test_questions(model, test, seed)
    order = np.argsort([len(q) for q in questions], kind="stable")
    base_pred = np.zeros(len(test), dtype=np.int64)
    ll_pred = {name: np.zeros(len(test), dtype=np.int64) for name in experts}
    ex_pred = {name: e(torch.as_tensor(x_true)).argmax(-1).numpy() for name, e in experts.items()}
    j, k = model.config.encoder_layer, model.config.inject_layer
    extracted = []
    for s in tqdm(range(0, len(order), batch_size), desc=f"evaluate {schema.name}", disable=not progress, leave=False):
        idx = order[s:s + batch_size]
        qs = [questions[i] for i in idx]
        base_pred[idx] = model.answer_base(qs).probs.argmax(-1).numpy()
        batch = model.batch(qs)
        hs = model.lm.lower(batch, [j, k])
        feats = model.encoder.to_expert_input(model.encoder(hs[j], batch.question_mask, batch.numbers))
        extracted.append((idx, feats.numpy()))
        for name, e in experts.items():
            probs = e(feats).softmax(-1)
            ll_pred[name][idx] = model.inject(hs[k], batch, probs).argmax(-1).numpy()
    x_pred = np.zeros_like(x_true)
    for idx, f in extracted:
        x_pred[idx] = f
    return EvalResult(y_true, base_pred, ex_pred, ll_pred, extraction_quality(fe, x_true, x_pred), questions)


def extraction_quality(fe: FeatureEncoder, x_true: np.ndarray, x_pred: np.ndarray) -> dict[str, dict]:
    """Numeric MAE in the column's units (records where it is present) and categorical accuracy."""
    out: dict[str, dict] = {}
    for b in fe.blocks:
        col = b.column
        if b.kind == "numeric":
            present = x_true[:, b.missing_index] < 0.5
            mae = np.abs(x_true[present, b.start] - x_pred[present, b.start]).mean() * (col.max - col.min) if present.any() else None
            miss_acc = float(((x_pred[:, b.missing_index] > 0.5) == ~present).mean())
            out[col.name] = {"mae": None if mae is None else float(mae), "unit": col.unit, "missing_flag_accuracy": miss_acc, "n": int(present.sum())}
        else:
            t = x_true[:, b.start:b.stop].argmax(1)
            p = x_pred[:, b.start:b.stop].argmax(1)
            out[col.name] = {"accuracy": float((t == p).mean()), "n": len(t)}
    return out
