"""One-run privacy audit (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run").

The auditor makes `m` canary records, flips a fair coin for each, adds the canaries that came up heads
to the client's training set, trains **once** with the client's recipe, scores every canary against
the trained expert, guesses "included" for the `k+` highest scores and "excluded" for the `k−` lowest
(abstaining on the rest), and counts the correct guesses. If training is (ε, δ)-DP, the number of
correct guesses is stochastically dominated as in the paper's Theorem (randomized response with
accuracy e^ε/(1+e^ε), plus a δ term); `p_value_dp_audit` computes that tail bound exactly as the
paper's algorithm does, and `epsilon_lower_bound` inverts it: the largest ε the observed guesses
reject at the chosen confidence (95 %). A lower bound above the claimed ε means the claim is false
(a bug in DP training or in the audit), up to the 5 % error rate.

Canaries. Given a pool of real records the auditor holds (disjoint from the training set), the
canaries are m pool records relabelled with the class a reference expert finds *least* likely:
mislabelled, in-distribution records, which only memorization fits, while the real records around
an excluded one pull the expert back to its true class. Without a pool: random points of the encoded
space with random labels (weaker: with two classes an excluded canary's random label is predicted
half the time). (Labelling *random* points with the least-likely class does not work: the expert
learns "odd points get the odd label" from the included ones and generalizes it to the excluded.)
Scores are the canary's logit-scaled confidence under the trained expert minus under the reference
expert, which is trained without canaries before the coins are flipped, so neither the labels nor
the scoring depend on the coins, as the theorem requires. The guess counts
(k+, k−) come from a fixed list chosen before training; the bound takes the best of them with a
Bonferroni correction, so it stays valid at the stated confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

DEFAULT_GUESS_FRACTIONS: tuple[tuple[float, float], ...] = ((0.05, 0.0), (0.1, 0.0), (0.05, 0.05), (0.1, 0.1), (0.25, 0.25))


def p_value_dp_audit(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of at least `v` correct guesses out of `r` (among `m` canaries) under (ε, δ)-DP.

    Steinke et al. (2023), the algorithm of their (ε, δ) theorem: with q = e^ε/(1+e^ε),
    β = P[Binomial(r, q) >= v] and α = max_{1<=i<=v} P[v > Binomial(r, q) >= v − i] / i,
    the p-value is min(1, β + 2 m δ α)."""
    from scipy.stats import binom

    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and delta in [0, 1], got {eps}, {delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = float(binom.sf(v - 1, r, q))
    alpha, total = 0.0, 0.0
    if v > 0:
        pmf = binom.pmf(np.arange(v - 1, -1, -1), r, q)   # P[B = v-1], P[B = v-2], ..., P[B = 0]
        cums = np.cumsum(pmf)                              # P[v > B >= v - i] for i = 1..v
        alpha = float((cums / np.arange(1, v + 1)).max())
    total = beta + alpha * delta * 2 * m
    return min(total, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float = 0.05, iters: int = 40) -> float:
    """The largest ε that `v` correct guesses out of `r` reject at level `p` (binary search; 0 if none)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if r == 0 or p_value_dp_audit(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value_dp_audit(m, r, v, hi, delta) < p:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        if p_value_dp_audit(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def guess_counts(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """(r, v): guesses made and correct ones, guessing IN for the k+ top scores and OUT for the k− bottom."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    k_plus, k_minus = min(k_plus, len(order)), min(k_minus, len(order) - min(k_plus, len(order)))
    top, bottom = order[:k_plus], order[len(order) - k_minus:] if k_minus else order[:0]
    v = int(included[top].sum() + (~included[bottom]).sum())
    return k_plus + k_minus, v


def make_canaries(schema: Any, m: int, rng: np.random.Generator, pool: np.ndarray | None = None,
                  reference: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """m canaries and their labels.

    With a `pool` of real encoded records (disjoint from the training set, e.g. the auditor's
    population) and a `reference` expert: m pool records relabelled with the class the reference finds
    least likely (in-distribution mislabelled records: only memorization fits an included one, and the
    real records around an excluded one pull it back to its true class). Otherwise: random points of
    the encoded space (numbers uniform in the public range, categories uniform) with random labels."""
    from protocol.encoding import FeatureEncoder

    if pool is not None:
        if reference is None:
            raise ValueError("canaries drawn from a pool need a reference expert to choose their (wrong) labels")
        if len(pool) < m:
            raise ValueError(f"the canary pool has {len(pool)} records; {m} canaries need at least as many")
        from simulations.attacks.mia import log_probs

        x = np.asarray(pool, dtype=np.float32)[rng.choice(len(pool), size=m, replace=False)]
        return x, log_probs(reference, x).argmin(1).astype(np.int64)
    fe = FeatureEncoder(schema)
    x = np.zeros((m, fe.dim), dtype=np.float32)
    for b in fe.blocks:
        if b.kind == "numeric":
            x[:, b.start] = rng.random(m)
        else:
            x[np.arange(m), b.start + rng.integers(b.num_levels, size=m)] = 1.0
    return x, rng.integers(schema.label.num_classes, size=m).astype(np.int64)


@dataclass
class CanaryAudit:
    """Outcome of one audit run: counts, the bound, and the ε the training claimed."""

    m: int
    included: int
    guesses: list[dict[str, int]]          # per (k+, k−) option: r, v
    best: dict[str, float]                 # the option giving the largest bound
    epsilon_lb: float                      # empirical lower bound at `confidence`
    confidence: float
    epsilon_claimed: float | None          # None: no DP (ε = ∞)
    epsilon_recomputed: float | None       # Opacus, from the statement's parameters
    epsilon_second: float | None           # dp-accounting, independently
    delta: float
    expert_accuracy: float | None = None
    canary_auc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exceeds_claim(self) -> bool:
        return self.epsilon_claimed is not None and self.epsilon_lb > self.epsilon_claimed * (1 + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(float(v), 5)  # noqa: E731
        return {
            "m": self.m, "included": self.included, "guesses": self.guesses, "best": self.best,
            "epsilon_lb": r(self.epsilon_lb), "confidence": self.confidence, "epsilon_claimed": r(self.epsilon_claimed),
            "epsilon_recomputed": r(self.epsilon_recomputed), "epsilon_second_accountant": r(self.epsilon_second),
            "delta": self.delta, "expert_accuracy": r(self.expert_accuracy), "canary_auc": r(self.canary_auc),
            "exceeds_claim": self.exceeds_claim, **self.extra,
        }


def audit_from_scores(scores: np.ndarray, included: np.ndarray, delta: float, *, confidence: float = 0.95,
                      guess_fractions: Sequence[tuple[float, float]] = DEFAULT_GUESS_FRACTIONS) -> tuple[float, list[dict], dict]:
    """The bound from canary scores and coins: best over the fixed guess options, Bonferroni-corrected."""
    m = len(scores)
    p = (1 - confidence) / len(guess_fractions)
    rows, best = [], {"epsilon_lb": 0.0}
    for fp, fm in guess_fractions:
        kp, km = int(round(fp * m)), int(round(fm * m))
        r, v = guess_counts(scores, included, kp, km)
        eps = epsilon_lower_bound(m, r, v, delta, p)
        rows.append({"k_plus": kp, "k_minus": km, "r": r, "v": v, "epsilon_lb": round(eps, 5)})
        if eps > best["epsilon_lb"]:
            best = {"k_plus": kp, "k_minus": km, "r": r, "v": v, "epsilon_lb": eps}
    return float(best["epsilon_lb"]), rows, best


def run_canary_audit(x: np.ndarray, y: np.ndarray, schema: Any, config: Any, *, m: int = 1000, seed: int = 0,
                     pool: np.ndarray | None = None, x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                     confidence: float = 0.95, replay: Any = None,
                     guess_fractions: Sequence[tuple[float, float]] = DEFAULT_GUESS_FRACTIONS) -> CanaryAudit:
    """Inserts m canaries (each with probability 1/2) into (x, y), trains once with `config`
    (a client_party TrainConfig, or `replay`: a DP statement's mechanism), and returns the empirical ε
    lower bound beside the claimed ε. `pool`: real encoded records disjoint from (x, y) to draw
    canaries from (see `make_canaries`)."""
    from client_party.expert_training import train_expert
    from protocol.dp import recompute
    from simulations.attacks.metrics import roc_auc
    from simulations.attacks.mia import lira_statistic, log_probs
    from simulations.audit import second_accountant_epsilon

    rng = np.random.default_rng([seed, 7])
    reference = train_expert(x, y, schema, replace(config, target_epsilon=None, target_delta=None, seed=seed + 1)).model
    xc, yc = make_canaries(schema, m, rng, pool, reference)
    included = rng.random(m) < 0.5                      # the coins: drawn after the canaries are fixed
    xa = np.concatenate([x, xc[included]])
    ya = np.concatenate([y, yc[included]])
    perm = rng.permutation(len(xa))
    trained = train_expert(xa[perm], ya[perm], schema, replace(config, seed=seed), replay=replay)
    scores = lira_statistic(log_probs(trained.model, xc), yc) - lira_statistic(log_probs(reference, xc), yc)
    dp = trained.dp
    delta = float(dp.delta) if dp.is_private else 0.0
    eps_lb, rows, best = audit_from_scores(scores, included, delta, confidence=confidence, guess_fractions=guess_fractions)
    acc = None
    if x_test is not None and y_test is not None:
        acc = float((log_probs(trained.model, x_test).argmax(1) == y_test).mean())
    return CanaryAudit(
        m=m, included=int(included.sum()), guesses=rows, best=best, epsilon_lb=eps_lb, confidence=confidence,
        epsilon_claimed=float(dp.epsilon) if dp.is_private else None,
        epsilon_recomputed=float(recompute(dp)) if dp.is_private else None,
        epsilon_second=float(second_accountant_epsilon(dp)) if dp.is_private else None,
        delta=delta, expert_accuracy=acc, canary_auc=roc_auc(scores, included),
        extra={"training_records": len(xa), "canaries_from": "pool" if pool is not None else "random", "dp": dp.to_dict()},
    )


__all__ = [
    "DEFAULT_GUESS_FRACTIONS",
    "CanaryAudit",
    "audit_from_scores",
    "epsilon_lower_bound",
    "guess_counts",
    "make_canaries",
    "p_value_dp_audit",
    "run_canary_audit",
]
