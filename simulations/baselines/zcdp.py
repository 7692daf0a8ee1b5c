"""zCDP noise and accounting for the marginal-based synthesizer, on OpenDP's measurements.

MST (McKenna, Miklau, Sheldon 2021) is analysed in zero-concentrated DP: each noisy marginal is a
Gaussian mechanism (ρ = Δ²/2σ² with L2 sensitivity Δ = 1: under adding or removing one record, one
cell of a count vector moves by one), each edge choice is an exponential mechanism (ρ = ε²/8), and
ρ adds up under composition. OpenDP provides all three pieces: `make_gaussian` on integer count
vectors samples the discrete Gaussian and states its ρ, `make_noisy_max` under
`zero_concentrated_divergence` is the exponential mechanism and states its ρ, and
`make_zCDP_to_approxDP` turns a total ρ into the (ε, δ) curve (the conversion of Canonne, Kamath
and Steinke 2020 that MST's own code uses). `ZCDPBudget` spends a fixed ρ, refuses to overspend,
and keeps the log a statement is recomputed from.

Noise comes from OpenDP's samplers (the operating system's secure randomness), so a synthesizer's
measurements are not reproducible from a seed; everything after them (estimation, sampling) is
seeded post-processing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from protocol.errors import BudgetError

_ENABLED = False


def _dp():
    """OpenDP with its `contrib` features (the measurements used here are in contrib)."""
    global _ENABLED
    import opendp.prelude as dp

    if not _ENABLED:
        dp.enable_features("contrib")
        _ENABLED = True
    return dp


def gaussian_rho(scale: float) -> float:
    """ρ of OpenDP's (discrete) Gaussian mechanism on a count vector of L2 sensitivity 1."""
    dp = _dp()
    meas = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int), scale=float(scale))
    return float(meas.map(1))


def noisy_max_rho(scale: float) -> float:
    """ρ of OpenDP's exponential mechanism (noisy max) on scores that each move by at most 1."""
    dp = _dp()
    meas = dp.m.make_noisy_max(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.linf_distance(T=float),
                               dp.zero_concentrated_divergence(), scale=float(scale))
    return float(meas.map(1.0))


def epsilon_of_rho(rho: float, delta: float) -> float:
    """ε of a ρ-zCDP mechanism at δ (OpenDP's zCDP → approximate-DP conversion)."""
    _check_delta(delta)
    if not (math.isfinite(rho) and rho > 0):
        raise BudgetError(f"rho must be a positive finite number, got {rho!r}")
    dp = _dp()
    meas = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float), scale=1.0)
    # any measurement whose ρ at d_in = 1 is `rho`: the Gaussian with scale 1 at d_in = sqrt(2 rho)
    profile = dp.c.make_zCDP_to_approxDP(meas).map(math.sqrt(2 * rho))
    return float(profile.epsilon(float(delta)))


def rho_for(epsilon: float, delta: float) -> float:
    """The largest ρ whose (ε, δ) conversion stays within `epsilon` at `delta` (bisection to 1e-9 relative)."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise BudgetError(f"epsilon must be a positive finite number, got {epsilon!r}")
    _check_delta(delta)
    lo, hi = 0.0, float(epsilon)  # ρ-zCDP implies (ρ + 2 sqrt(ρ log 1/δ), δ)-DP, so ρ <= ε
    while epsilon_of_rho(hi, delta) <= epsilon:
        lo, hi = hi, 2 * hi
    for _ in range(80):
        mid = (lo + hi) / 2
        if mid > 0 and epsilon_of_rho(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    if lo <= 0:
        raise BudgetError(f"no positive ρ meets ε={epsilon:g} at δ={delta:g}")
    return lo


def scale_for_rho(rho: float) -> float:
    """Noise scale σ of a sensitivity-1 Gaussian (or noisy max) with the given ρ: σ = 1/sqrt(2ρ)."""
    return 1.0 / math.sqrt(2.0 * rho)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise BudgetError(f"delta must be in (0, 1), got {delta!r}")


@dataclass
class Spend:
    """One measurement of the log: what was measured, with which mechanism and scale, at which ρ."""

    mechanism: str       # "gaussian" or "noisy_max"
    what: str            # e.g. "marginal age", "marginal sex x survived", "edge choice 2"
    scale: float
    rho: float

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism, "what": self.what, "scale": self.scale, "rho": self.rho}


@dataclass
class ZCDPBudget:
    """A ρ budget that measurements draw from; a measurement that would overspend is refused."""

    rho: float
    log: list[Spend] = field(default_factory=list)

    @property
    def spent(self) -> float:
        return float(sum(s.rho for s in self.log))

    def _charge(self, mechanism: str, what: str, scale: float, rho: float) -> None:
        if self.spent + rho > self.rho * (1 + 1e-9):
            raise BudgetError(f"{what}: ρ {rho:.3g} would overspend the budget ({self.spent:.4g} of {self.rho:.4g} spent); "
                              "lower the number of measurements or raise ε")
        self.log.append(Spend(mechanism, what, float(scale), float(rho)))

    def noisy_counts(self, counts: np.ndarray, scale: float, what: str) -> np.ndarray:
        """Counts plus discrete Gaussian noise of scale σ (OpenDP); charged before any noise is drawn."""
        dp = _dp()
        meas = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int), scale=float(scale))
        self._charge("gaussian", what, scale, float(meas.map(1)))
        flat = [int(v) for v in np.asarray(counts, dtype=np.int64).ravel()]
        return np.asarray(meas(flat), dtype=np.float64).reshape(np.shape(counts))

    def noisy_argmax(self, scores: np.ndarray, scale: float, what: str) -> int:
        """Index of the highest score under Gumbel noise of the given scale (OpenDP's exponential mechanism)."""
        dp = _dp()
        meas = dp.m.make_noisy_max(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.linf_distance(T=float),
                                   dp.zero_concentrated_divergence(), scale=float(scale))
        self._charge("noisy_max", what, scale, float(meas.map(1.0)))
        return int(meas([float(s) for s in np.asarray(scores, dtype=np.float64)]))

    def epsilon(self, delta: float) -> float:
        """ε at δ of what has been spent so far."""
        return epsilon_of_rho(self.spent, delta) if self.spent > 0 else 0.0


def recompute_rho(log: list[dict]) -> float:
    """Total ρ recomputed from a statement's log by OpenDP, from each measurement's mechanism and scale."""
    total = 0.0
    for entry in log:
        if entry["mechanism"] == "gaussian":
            total += gaussian_rho(entry["scale"])
        elif entry["mechanism"] == "noisy_max":
            total += noisy_max_rho(entry["scale"])
        else:
            raise BudgetError(f"privacy log: unknown mechanism {entry['mechanism']!r}; expected 'gaussian' or 'noisy_max'")
    return total
