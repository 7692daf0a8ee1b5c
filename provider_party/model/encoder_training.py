"""Stage 1 of connector training: the expert encoder learns to read each column out of a question, and checks itself.

The encoder sees cached layer-`j` states of synthetic questions and is trained to point at each
column's stated value, or at "nothing stated" (`ExpertEncoder.loss`). `extraction_report` then
measures, per column, on held-out synthetic questions, what the expert will depend on:
categorical accuracy, numeric exactness (the value read equals the stated one up to the
verbalizer's rounding) and missing-flag accuracy; `shortfalls` compares them with thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder
from provider_party.model.connectors import ExpertEncoder, PointerTargets
from provider_party.model.training_data import EncoderBatch


def split_batches(cache: list[EncoderBatch], size: int) -> list[EncoderBatch]:
    """The cached batches cut into batches of at most `size` questions (the frozen pass batches for speed;
    the encoder learns to tie values to fields in fewer epochs from more, smaller steps)."""
    out: list[EncoderBatch] = []
    for h, qmask, numbers, t in cache:
        for a in range(0, len(h), size):
            s = slice(a, a + size)
            out.append((h[s], qmask[s], numbers[s], PointerTargets(t.tokens[s], t.missing[s], t.levels[s], t.values[s])))
    return out


def train_encoder(encoder: ExpertEncoder, cache: list[EncoderBatch], *, epochs: int, lr: float, gen: torch.Generator,
                  progress: bool = False, on_epoch: Callable[[float], None] | None = None, desc: str = "stage 1: encoder",
                  batch_size: int | None = None, min_steps: int = 0) -> ExpertEncoder:
    """AdamW with a one-cycle schedule over the cached batches (cut to `batch_size`), in a seeded order, for
    `epochs` or as many as `min_steps` optimizer steps need; returns the frozen encoder."""
    if batch_size is not None:
        cache = split_batches(cache, batch_size)
    epochs = max(epochs, -(-min_steps // max(len(cache), 1)))
    encoder.requires_grad_(True)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    total_steps = epochs * len(cache)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1), pct_start=0.1)
    encoder.train()
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False)
    for epoch in range(epochs):
        for ci in torch.randperm(len(cache), generator=gen).tolist():
            h, qmask, numbers, targets = cache[ci]
            loss = encoder.loss(h.float(), qmask, numbers, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_epoch is not None:
            on_epoch((epoch + 1) / epochs)
    bar.close()
    return encoder.eval().requires_grad_(False)


@dataclass(frozen=True)
class Thresholds:
    """What the self-check asks of every column on synthetic validation questions."""

    categorical_accuracy: float = 0.97
    numeric_exact: float = 0.97
    missing_flag_accuracy: float = 0.97


@torch.no_grad()
def extraction_report(encoder: ExpertEncoder, cache: list[EncoderBatch], fe: FeatureEncoder) -> dict[str, dict]:
    """Per column, on cached questions with known targets.

    Categorical / yes-no: `accuracy` of the level where a value is stated. Numeric: `exact`, the share
    of stated values read to within half a unit of the coarsest printed precision, and `mae` in the
    column's units. Every column: `missing_flag_accuracy`, whether "missing" was decided exactly when
    the question states no value (omitted or said to be unknown). `n` counts stated values.
    """
    stats: dict[str, dict[str, list[float]]] = {b.column.name: {"hit": [], "err": [], "flag": []} for b in fe.blocks}
    cat = [i for i, b in enumerate(fe.blocks) if b.kind != "numeric"]
    num = [i for i, b in enumerate(fe.blocks) if b.kind == "numeric"]
    for h, qmask, numbers, t in cache:
        outs = encoder(h.float(), qmask, numbers)
        for c, i in enumerate(cat):
            o, s = outs[i], stats[fe.blocks[i].column.name]
            said_missing = o.argmax(-1) == fe.blocks[i].num_levels
            stated = ~t.missing[:, i]
            s["flag"] += (said_missing == ~stated).float().tolist()
            s["hit"] += ((o[:, :-1].argmax(-1) == t.levels[:, c]) & ~said_missing)[stated].float().tolist()
        for c, i in enumerate(num):
            o, b, s = outs[i], fe.blocks[i], stats[fe.blocks[i].column.name]
            said_missing = o[:, 1] > 0
            stated = ~t.missing[:, i]
            s["flag"] += (said_missing == ~stated).float().tolist()
            err = (o[:, 0] - t.values[:, c]).abs() * (b.column.max - b.column.min)
            s["err"] += err[stated & ~said_missing].tolist()
            s["hit"] += ((err <= tolerance(b.column)) & ~said_missing)[stated].float().tolist()
    out: dict[str, dict] = {}
    for b in fe.blocks:
        s = stats[b.column.name]
        mean = (lambda v: float(np.mean(v)) if v else None)
        row = {"accuracy": mean(s["hit"])} if b.kind != "numeric" else {"exact": mean(s["hit"]), "mae": mean(s["err"]), "unit": b.column.unit}
        out[b.column.name] = {**row, "missing_flag_accuracy": mean(s["flag"]), "n": len(s["hit"])}
    return out


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def tolerance(col) -> float:
    """Half a unit of the coarsest precision the verbalizer prints (it may drop one decimal), in the column's units,
    plus the float32 rounding of the [0, 1] scaling over the public range.

    The rounding term matters: "25.1" stated for 25.05 is read exactly, yet the error then comes out as
    0.0500679 after the float32 round trip through a 0-8,700 range, and a tolerance of 0.05005 alone
    counted 11 % of telco's `total_charges` as misread (measured)."""
    half_unit = 0.5 if col.type == "int" or not col.decimals else 0.5 * 10.0 ** -(col.decimals - 1)
    return half_unit * 1.001 + 4 * FLOAT32_EPS * float(col.max - col.min)


def shortfalls(report: dict[str, dict], thresholds: Thresholds) -> dict[str, dict]:
    """Columns below a threshold: {column: {metric: {"value", "threshold", "short_by"}}}."""
    out: dict[str, dict] = {}
    for col, r in report.items():
        for metric, need in (("accuracy", thresholds.categorical_accuracy), ("exact", thresholds.numeric_exact),
                             ("missing_flag_accuracy", thresholds.missing_flag_accuracy)):
            value = r.get(metric)
            if value is not None and value < need:
                out.setdefault(col, {})[metric] = {"value": round(value, 4), "threshold": need, "short_by": round(need - value, 4)}
    return out


def describe_shortfalls(missed: dict[str, dict]) -> str:
    """One line per weak column, e.g. "JobSatisfaction: accuracy 0.912 < 0.97"."""
    return "; ".join(f"{col}: " + ", ".join(f"{m} {v['value']:.3f} < {v['threshold']}" for m, v in ms.items()) for col, ms in missed.items())


def thresholds_dict(thresholds: Thresholds) -> dict[str, float]:
    return asdict(thresholds)


__all__ = ["EncoderBatch", "Thresholds", "describe_shortfalls", "extraction_report", "shortfalls", "split_batches", "thresholds_dict", "tolerance", "train_encoder"]
