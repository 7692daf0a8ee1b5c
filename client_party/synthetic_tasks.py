"""Labelled synthetic learning tasks drawn from a public schema alone, for choosing hyper-parameters.

A DP recipe tuned on the private table would spend privacy (or leak it, unaccounted); one tuned on
tasks that only share the table's *shape* costs nothing. `synthetic_task(schema, n, ...)` returns
encoded rows (in the schema's `FeatureEncoder` encoding) and labels:

- features: each numeric column from a Beta distribution with random shape over its public range
  (encoded in [0, 1]), each categorical column from random Dirichlet level probabilities; nullable
  columns miss 10 % of their values; a shared Gaussian factor correlates the columns;
- labels: a random teacher (a linear term plus a one-hidden-layer tanh network over the encoded
  row), scaled to a chosen signal strength, with per-class offsets that give the chosen prior of
  the minority class, and sampled (so the Bayes classifier is not perfect).

Nothing here reads data; the provider's own synthesizer (`provider_party.model.synthesis`, for
connector training) is a different model with well-separated classes and is not used by the client.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.encoding import FeatureEncoder
from protocol.schema import PublicSchema


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic task: encoded rows, labels, and how it was made."""

    x: np.ndarray
    y: np.ndarray
    minority_prior: float
    signal: float
    seed: int


def _features(schema: PublicSchema, n: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.stats import beta, norm

    fe = FeatureEncoder(schema)
    x = np.zeros((n, fe.dim), dtype=np.float32)
    factor = rng.standard_normal(n)
    for b in fe.blocks:
        loading = rng.uniform(-0.8, 0.8)
        u = norm.cdf(loading * factor + np.sqrt(1 - loading ** 2) * rng.standard_normal(n))   # uniform, correlated
        missing = rng.random(n) < 0.1 if b.column.nullable else np.zeros(n, bool)
        if b.kind == "numeric":
            a, c = rng.uniform(0.5, 4.0, size=2)
            x[:, b.start] = np.where(missing, 0.0, beta.ppf(u, a, c))
        else:
            p = rng.dirichlet(np.full(b.num_levels, 1.0))
            level = np.minimum(np.searchsorted(np.cumsum(p), u), b.num_levels - 1)
            x[np.arange(n), b.start + level] = np.where(missing, 0.0, 1.0)
        x[missing, b.missing_index] = 1.0
    return x


def synthetic_task(schema: PublicSchema, n: int, *, minority_prior: float = 0.5, signal: float = 3.0, seed: int = 0) -> SyntheticTask:
    """A task of n rows shaped like `schema`: minority_prior is the smallest class's share (the other
    classes share the rest equally), signal the scale of the teacher's logits (larger: easier)."""
    k = schema.label.num_classes
    if not 0 < minority_prior <= 1 / k:
        raise ValueError(f"minority_prior must be in (0, 1/{k}] for {k} classes, got {minority_prior}")
    rng = np.random.default_rng(seed)
    x = _features(schema, n, rng)
    d = x.shape[1]
    hidden = 16
    w1, b1 = rng.standard_normal((d, hidden)) * 2.0, rng.standard_normal(hidden)
    w2 = rng.standard_normal((hidden, k))
    wl = rng.standard_normal((d, k))
    z = np.tanh(x @ w1 + b1) @ w2 + x @ wl
    z = signal * (z - z.mean(0)) / (z.std(0) + 1e-9)
    priors = np.full(k, (1 - minority_prior) / (k - 1))
    priors[0] = minority_prior
    offsets = _offsets_for_priors(z, priors)
    logits = z + offsets
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1)
    y = np.minimum(y, k - 1).astype(np.int64)
    perm = rng.permutation(k)                      # the minority is not always class 0
    return SyntheticTask(x=x, y=perm[y], minority_prior=minority_prior, signal=signal, seed=seed)


def _offsets_for_priors(z: np.ndarray, priors: np.ndarray, iters: int = 200) -> np.ndarray:
    """Per-class logit offsets whose mean softmax over the rows equals `priors` (fixed-point iteration)."""
    offsets = np.log(priors)
    for _ in range(iters):
        logits = z + offsets
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        offsets += np.log(priors / p.mean(0))
    return offsets


__all__ = ["SyntheticTask", "synthetic_task"]
