"""Attack metrics: ROC AUC, TPR at fixed FPR, their 95 % intervals, and ε lower bounds from a ROC.

Conventions: a score is higher for "member" (or "canary included"); `is_member` is a boolean array.
TPR at a target FPR is the largest TPR over thresholds whose FPR does not exceed the target (Carlini
et al. 2022, "Membership Inference Attacks From First Principles"); with `n` non-members the smallest
non-zero FPR is 1/n, so TPR at 0.1 % FPR means "no false positive at all" below 1,000 non-members.

Intervals: the AUC's is a percentile bootstrap over records (members and non-members resampled
separately, 2,000 resamples); the TPR's at each target FPR is the exact Clopper–Pearson interval of
the true positives at that threshold. Chance is AUC 0.5 and TPR = the target FPR; an attack *beats
chance* only when its interval lies wholly above that (`beats_chance`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FPR_TARGETS: tuple[float, ...] = (0.001, 0.01, 0.1)
ROC_POINTS = 200  # ROC curves kept in reports are thinned to about this many points
BOOTSTRAP = 2000  # resamples of the AUC's bootstrap interval
CONFIDENCE = 0.95


def _check(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = np.asarray(is_member).astype(bool).ravel()
    if s.shape != m.shape:
        raise ValueError(f"scores ({s.shape}) and is_member ({m.shape}) must have the same length")
    if not m.any() or m.all():
        raise ValueError("need at least one member and one non-member to score an attack")
    if not np.isfinite(s).all():
        raise ValueError("attack scores contain NaN or infinity; clip log-probabilities before scoring")
    return s, m


def roc_curve(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing; ties count as one step (sklearn's convention)."""
    from sklearn.metrics import roc_curve as _roc

    s, m = _check(scores, is_member)
    fpr, tpr, thr = _roc(m, s, drop_intermediate=False)
    return fpr, tpr, thr


def roc_auc(scores: Any, is_member: Any) -> float:
    from sklearn.metrics import roc_auc_score

    s, m = _check(scores, is_member)
    return float(roc_auc_score(m, s))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR with FPR <= target on a ROC curve."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def auc_interval(scores: Any, is_member: Any, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC: members and non-members are resampled separately
    (their counts stay fixed). A resample is a pair of multinomial count vectors over the records, so
    its AUC is w_pos' K w_neg / (n_pos n_neg) with K[i, j] = [pos_i > neg_j] + [pos_i = neg_j] / 2."""
    s, m = _check(scores, is_member)
    pos, neg = s[m], s[~m]
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    if len(pos) * len(neg) <= 4_000_000:
        kernel = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).astype(np.float32)
        chunk = 500
        for start in range(0, resamples, chunk):
            b = min(chunk, resamples - start)
            wp = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=b).astype(np.float32)
            wn = rng.multinomial(len(neg), np.full(len(neg), 1 / len(neg)), size=b).astype(np.float32)
            aucs[start:start + b] = ((wp @ kernel) * wn).sum(1) / (len(pos) * len(neg))
    else:   # large sets: ranks of each resample
        from scipy.stats import rankdata

        for i in range(resamples):
            p, q = pos[rng.integers(len(pos), size=len(pos))], neg[rng.integers(len(neg), size=len(neg))]
            ranks = rankdata(np.concatenate([p, q]))
            aucs[i] = (ranks[:len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(q))
    a = (1 - confidence) / 2
    lo, hi = np.quantile(aucs, [a, 1 - a])
    return float(lo), float(hi)


def tpr_counts_at_fpr(scores: Any, is_member: Any, target: float) -> tuple[int, int]:
    """(true positives, members) at the threshold of `tpr_at_fpr` (largest TPR with FPR <= target)."""
    s, m = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(s, m)
    n_pos = int(m.sum())
    return int(round(tpr_at_fpr(fpr, tpr, target) * n_pos)), n_pos


def beats_chance(interval: Sequence[float], chance: float) -> bool:
    """An attack beats chance only when its whole interval lies above the chance level."""
    return bool(interval[0] > chance)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a binomial proportion k/n at `confidence`."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def epsilon_from_rates(tp: int, n_pos: int, fp: int, n_neg: int, delta: float = 0.0, confidence: float = 0.95) -> float:
    """ε lower bound from one threshold's counts (Jagielski et al. 2020): an (ε, δ)-DP mechanism has
    TPR <= e^ε FPR + δ and 1 - FPR <= e^ε (1 - TPR) + δ. The lower end of TPR's and the upper end
    of FPR's two-sided Clopper–Pearson interval at `confidence` each hold with probability
    (1 + confidence)/2, so the bound holds with probability at least `confidence`."""
    tpr_lo, _ = clopper_pearson(tp, n_pos, confidence)
    _, fpr_hi = clopper_pearson(fp, n_neg, confidence)
    best = 0.0
    if tpr_lo - delta > 0 and fpr_hi > 0:
        best = max(best, math.log((tpr_lo - delta) / fpr_hi))
    if (1 - fpr_hi) - delta > 0 and (1 - tpr_lo) > 0:
        best = max(best, math.log(((1 - fpr_hi) - delta) / (1 - tpr_lo)))
    return best


def epsilon_lower_bound(scores: Any, is_member: Any, delta: float = 0.0, confidence: float = 0.95, seed: int = 0) -> float:
    """Empirical ε lower bound of a membership attack, sound at `confidence`: the records are split in
    two halves at random; the threshold with the best point estimate is chosen on the first half and
    Clopper–Pearson intervals are computed on the second half only (a threshold chosen on the data it
    is evaluated on would overstate the bound)."""
    s, m = _check(scores, is_member)
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(s)) < len(s) // 2
    sel, ev = (s[half], m[half]), (s[~half], m[~half])
    if sel[1].all() or not sel[1].any() or ev[1].all() or not ev[1].any():
        return 0.0
    thr = np.unique(sel[0])
    pred = sel[0][None, :] >= thr[:, None]                      # (thresholds, records)
    n_pos, n_neg = sel[1].sum(), (~sel[1]).sum()
    tpr = (pred[:, sel[1]].sum(1) + 0.5) / (n_pos + 1)          # smoothed point estimates:
    fpr = (pred[:, ~sel[1]].sum(1) + 0.5) / (n_neg + 1)         # no division by zero, no infinite ratio
    est = np.maximum(np.log(np.clip(tpr - delta, 1e-12, None) / fpr), np.log(np.clip(1 - fpr - delta, 1e-12, None) / (1 - tpr)))
    best_thr = thr[int(np.argmax(est))]
    pred = ev[0] >= best_thr
    return epsilon_from_rates(int(pred[ev[1]].sum()), int(ev[1].sum()), int(pred[~ev[1]].sum()), int((~ev[1]).sum()), delta, confidence)


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = ROC_POINTS) -> tuple[list[float], list[float]]:
    """A ROC curve with about `points` points, log-spaced in FPR so the low-FPR region stays visible."""
    if len(fpr) <= points:
        return fpr.tolist(), tpr.tolist()
    grid = np.unique(np.concatenate([[0.0], np.logspace(-4, 0, points - 1)]))
    return grid.tolist(), [tpr_at_fpr(fpr, tpr, g) for g in grid]


@dataclass
class AttackResult:
    """Figures of one attack on one set of challenge records."""

    attack: str
    seat: str                       # "provider" (holds the weights) or "query" (sees the LLM's answers)
    auc: float
    tpr_at_fpr: dict[float, float]
    n_members: int
    n_nonmembers: int
    epsilon_lb: float | None = None  # empirical ε lower bound (95 %), see epsilon_lower_bound
    roc: tuple[list[float], list[float]] = field(default=((), ()), repr=False)
    auc_ci: tuple[float, float] | None = None                 # 95 % bootstrap interval
    tpr_ci: dict[float, tuple[float, float]] = field(default_factory=dict)   # exact 95 % interval per target FPR
    auc_ci_family: tuple[float, float] | None = None   # AUC interval at a Bonferroni level over the attacks compared (mia.attack_view)

    @property
    def beats_chance(self) -> bool:
        """The AUC's interval lies wholly above 0.5."""
        return self.auc_ci is not None and beats_chance(self.auc_ci, 0.5)

    @property
    def advantage(self) -> float:
        """Membership advantage max(TPR − FPR), from the thinned ROC."""
        f, t = self.roc
        return float(max((b - a for a, b in zip(f, t)), default=0.0))

    def to_dict(self, with_roc: bool = False) -> dict[str, Any]:
        r5 = lambda v: round(float(v), 5)  # noqa: E731
        d: dict[str, Any] = {
            "attack": self.attack, "seat": self.seat, "auc": r5(self.auc),
            "auc_ci": None if self.auc_ci is None else [r5(v) for v in self.auc_ci],
            **{f"tpr@{_pct(k)}fpr": r5(v) for k, v in self.tpr_at_fpr.items()},
            **{f"tpr@{_pct(k)}fpr_ci": [r5(v) for v in ci] for k, ci in self.tpr_ci.items()},
            "auc_ci_family": None if self.auc_ci_family is None else [r5(v) for v in self.auc_ci_family],
            "beats_chance": self.beats_chance,
            "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
            "epsilon_lb": None if self.epsilon_lb is None else round(self.epsilon_lb, 4),
        }
        if with_roc:
            d["roc"] = {"fpr": [round(x, 6) for x in self.roc[0]], "tpr": [round(x, 6) for x in self.roc[1]]}
        return d


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def evaluate_attack(attack: str, scores: Any, is_member: Any, seat: str = "provider", *, delta: float = 0.0,
                    fpr_targets: tuple[float, ...] = FPR_TARGETS, with_epsilon: bool = True, confidence: float = CONFIDENCE,
                    resamples: int = BOOTSTRAP) -> AttackResult:
    """ROC AUC and TPR at each target FPR, each with its interval, and (optionally) an ε lower bound."""
    s, m = _check(scores, is_member)
    fpr, tpr, _ = roc_curve(s, m)
    n_pos = int(m.sum())
    tprs = {t: tpr_at_fpr(fpr, tpr, t) for t in fpr_targets}
    return AttackResult(
        attack=attack, seat=seat, auc=roc_auc(s, m), tpr_at_fpr=tprs,
        n_members=n_pos, n_nonmembers=int((~m).sum()),
        epsilon_lb=epsilon_lower_bound(s, m, delta) if with_epsilon else None, roc=thin_curve(fpr, tpr),
        auc_ci=auc_interval(s, m, confidence, resamples),
        tpr_ci={t: clopper_pearson(int(round(v * n_pos)), n_pos, confidence) for t, v in tprs.items()},
    )


__all__ = [
    "FPR_TARGETS",
    "AttackResult",
    "auc_interval",
    "beats_chance",
    "clopper_pearson",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "evaluate_attack",
    "roc_auc",
    "roc_curve",
    "thin_curve",
    "tpr_at_fpr",
    "tpr_counts_at_fpr",
]
