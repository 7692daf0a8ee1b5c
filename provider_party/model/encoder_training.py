"""Stage 1 of connector training: the expert encoder learns to read each column out of a question.

The encoder sees cached layer-`j` states of synthetic questions and is trained against the rows
the questions were made from (numeric pointer: cross-entropy onto the stated number; categories
and missing flags: cross-entropy). Its extraction quality on held-out synthetic questions is
reported per column.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from protocol.encoding import FeatureEncoder
from provider_party.model.connectors import ExpertEncoder

# One cached batch: (layer-j states in float16, question mask, stated numbers, per-column targets).
EncoderBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]


def train_encoder(encoder: ExpertEncoder, cache: list[EncoderBatch], *, epochs: int, lr: float, gen: torch.Generator,
                  progress: bool = False, on_epoch: Callable[[float], None] | None = None) -> ExpertEncoder:
    """AdamW with a one-cycle schedule over the cached batches, in a seeded order; returns the frozen encoder."""
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    total_steps = epochs * len(cache)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1), pct_start=0.1)
    encoder.train()
    bar = tqdm(total=total_steps, desc="stage 1: encoder", disable=not progress, leave=False)
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


@torch.no_grad()
def evaluate_encoder(encoder: ExpertEncoder, cache: list[EncoderBatch], fe: FeatureEncoder) -> dict:
    """Numeric MAE in the column's units and categorical accuracy on cached (h, mask, numbers, targets)."""
    errs: dict[str, list[float]] = {b.column.name: [] for b in fe.blocks}
    for h, qmask, numbers, targets in cache:
        outs = encoder(h.float(), qmask, numbers)
        for b, o, t in zip(fe.blocks, outs, targets):
            if b.kind == "numeric":
                present = t[:, 1] < 0.5
                span = b.column.max - b.column.min
                errs[b.column.name] += ((o[present, 0].clamp(0, 1) - t[present, 0]).abs() * span).tolist()
            else:
                errs[b.column.name] += (o.argmax(-1) == t).float().tolist()
    out = {}
    for b in fe.blocks:
        v = errs[b.column.name]
        key = "mae" if b.kind == "numeric" else "accuracy"
        out[b.column.name] = {key: float(np.mean(v)) if v else None, "n": len(v)}
    return out


__all__ = ["EncoderBatch", "evaluate_encoder", "train_encoder"]
