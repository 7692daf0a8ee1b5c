"""Differential-privacy statements and accounting that both parties compute the same way.

A `DPStatement` is what a client claims about how its expert was trained: the DP-SGD parameters
(noise multiplier, Poisson sampling rate, number of optimizer steps, clipping norm), the accountant,
the resulting (ε, δ) and a coarse training-set size bucket (the exact size is not revealed). The
provider never trusts the claimed ε: `verify_statement` recomputes it from the parameters with
Opacus' accountant and rejects a claim that does not match.

Two units of privacy exist. `dp-sgd` (and `none`) protect one **record** of one client's table:
steps are optimizer steps, the sampling rate is that of records, the size bucket counts records.
`dp-fedavg` (DP-FedAvg with fixed clipping, McMahan et al. 2018) protects one **client** of a
federation that trained one expert together: each round clips every client's model update to
`max_grad_norm` and adds Gaussian noise of `noise_multiplier` × `max_grad_norm` to the sum, so steps
are rounds, the sampling rate is that of clients per round, the size bucket counts clients, and δ must
be below 1/(number of clients). The same accountant recomputes both (a Gaussian mechanism composed
`steps` times, subsampled at `sample_rate`), but the two ε bound different things and never add up.

JSON form (`to_dict`): every field, plus `"format"`; for mechanism "none" the ε (infinite in memory) is
written as `null`. Record-level statements are written exactly as before, `"format":
"llamdex.dp-statement/v1"`; a client-level statement is `"llamdex.dp-statement/v2"` and names its
unit, `"privacy_unit": "client"`, so a reader that only knows v1 refuses it instead of misreading it.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from protocol.errors import BudgetError

DP_FORMAT = "llamdex.dp-statement/v1"
DP_FORMAT_V2 = "llamdex.dp-statement/v2"      # adds privacy_unit; written for client-level (dp-fedavg) statements only
MECHANISMS = ("dp-sgd", "dp-fedavg", "none")
ACCOUNTANTS = ("rdp", "prv")
PRIVACY_UNITS = {"dp-sgd": "record", "none": "record", "dp-fedavg": "client"}   # what one unit of (ε, δ) protects


class DPStatementError(BudgetError):
    """A DP statement is malformed; the message names the field, the rule and the value."""


# --- dataset size buckets ---------------------------------------------------------------------

# Bucket edges: 1, 2, 4, ..., 512, then 1k, 2k, ..., 512k, then 1M, 2M, ... (powers of two times a
# power of a thousand), so a bucket spans at most a factor of two and reads as round numbers.
_SCALES = ((1, ""), (1000, "k"), (1_000_000, "M"), (1_000_000_000, "G"))


def _edges(limit: int) -> list[int]:
    edges = [2**k * scale for scale, _ in _SCALES for k in range(10)]
    return [e for e in edges if e <= limit] + [e for e in edges if e > limit][:1]


def _fmt_count(n: int) -> str:
    for scale, suffix in reversed(_SCALES):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)  # pragma: no cover


def _parse_count(s: str) -> int:
    m = re.fullmatch(r"(\d+)([kMG]?)", s)
    if not m:
        raise ValueError(s)
    return int(m.group(1)) * dict((sfx, scale) for scale, sfx in _SCALES)[m.group(2)]


def size_bucket(n: int) -> str:
    """Coarse label of a training-set size, e.g. 1047 -> "1k-2k", 300 -> "256-512" (lower bound inclusive)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < 512_000_000_000:
        raise ValueError(f"dataset size must be a positive integer below 512G, got {n!r}")
    edges = _edges(n)
    for lo, hi in zip(edges, edges[1:]):
        if lo <= n < hi:
            return f"{_fmt_count(lo)}-{_fmt_count(hi)}"
    raise AssertionError("unreachable")  # pragma: no cover


def bucket_bounds(bucket: str) -> tuple[int, int]:
    """(lower inclusive, upper exclusive) sizes of a bucket made by `size_bucket`."""
    try:
        lo_s, hi_s = bucket.split("-")
        lo, hi = _parse_count(lo_s), _parse_count(hi_s)
    except (ValueError, AttributeError):
        raise DPStatementError(f"dp statement: dataset_size_bucket {bucket!r} is not of the form 'LO-HI' (e.g. '1k-2k')") from None
    if size_bucket(lo) != bucket:
        raise DPStatementError(f"dp statement: dataset_size_bucket {bucket!r} is not a standard bucket (expected {size_bucket(lo)!r})")
    return lo, hi


# --- accounting --------------------------------------------------------------------------------


def _make_accountant(accountant: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if accountant == "rdp":
        return RDPAccountant()
    if accountant == "prv":
        return PRVAccountant()
    raise DPStatementError(f"accountant {accountant!r} is not supported; use one of {list(ACCOUNTANTS)}")


@contextmanager
def quiet_largest_order() -> Iterator[None]:
    """Silence Opacus' "Optimal order is the largest alpha" warning, which names no parameter and no figure.

    A noise calibration meets it at trial levels far from its answer, where the bound is never used; a final
    figure meets it at very small ε. The second case is reported in words by `rdp_bound_at_largest_order`'s
    callers, so the warning itself only repeats (or, in a search, misleads).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)
        yield


def rdp_bound_at_largest_order(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> bool:
    """Whether the RDP ε of these parameters is attained at the largest Rényi order Opacus tries.

    Then the figure is a valid but loose upper bound: larger orders would give a smaller ε, so a calibration
    to a target added more noise than the target needs. Both parties use the same orders (Opacus' defaults),
    so the figure still recomputes exactly.
    """
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with quiet_largest_order():
        _, best = acc.get_privacy_spent(delta=float(delta))
    return float(best) >= max(acc.DEFAULT_ALPHAS)


def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """Opacus' smallest noise multiplier whose ε after `steps` subsampled steps is within the target.

    Raises ValueError, as Opacus does, when no noise reaches the target ("The privacy budget is too low").
    """
    from opacus.accountants.utils import get_noise_multiplier

    with quiet_largest_order():
        return float(get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta), sample_rate=float(sample_rate),
                                          steps=int(steps), accountant=accountant))


def compute_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε of `steps` Poisson-subsampled Gaussian steps, as Opacus' accountant computes it.

    Same defaults as Opacus' `PrivacyEngine.get_epsilon` (RDP: default orders; PRV: eps_error 0.01),
    so a client's training-time ε and a provider's recomputation agree exactly.
    """
    _check_positive_finite("noise_multiplier", noise_multiplier)
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise DPStatementError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DPStatementError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise DPStatementError(f"delta must be in (0, 1), got {delta!r}")
    acc = _make_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with quiet_largest_order():
        return float(acc.get_epsilon(delta=float(delta)))


def _check_positive_finite(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise DPStatementError(f"{name} must be a positive finite number, got {v!r}")


# --- the statement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DPStatement:
    """How an expert was trained, privacy-wise. Validated on construction.

    mechanism "dp-sgd": noise_multiplier > 0, sample_rate in (0, 1], steps >= 1, max_grad_norm > 0,
      finite ε > 0, δ in (0, 1).
    mechanism "dp-fedavg" (client-level DP): the same rules, read per client and round (see the module doc).
    mechanism "none" (no privacy): noise_multiplier 0, ε = inf, δ = 0; sample_rate, steps and
      max_grad_norm (0 = no clipping) only describe the training run.
    """

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    accountant: str
    epsilon: float
    delta: float
    dataset_size_bucket: str

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "sample_rate", "max_grad_norm", "epsilon", "delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DPStatementError(f"dp statement: {name!r} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        self._validate()

    def _validate(self) -> None:
        def bad(field: str, rule: str) -> DPStatementError:
            return DPStatementError(f"dp statement: {field!r} {rule}, got {getattr(self, field)!r}")

        if self.mechanism not in MECHANISMS:
            raise bad("mechanism", f"must be one of {list(MECHANISMS)}")
        if self.accountant not in ACCOUNTANTS:
            raise bad("accountant", f"must be one of {list(ACCOUNTANTS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise bad("steps", "must be a non-negative integer")
        if not 0 < self.sample_rate <= 1:
            raise bad("sample_rate", "must be in (0, 1]")
        if not isinstance(self.dataset_size_bucket, str):
            raise bad("dataset_size_bucket", "must be a string such as '1k-2k'")
        bucket_bounds(self.dataset_size_bucket)
        if self.mechanism != "none":
            m = self.mechanism
            if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
                raise bad("noise_multiplier", f"must be a positive finite number for {m}")
            if self.steps < 1:
                raise bad("steps", f"must be at least 1 for {m}")
            if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
                raise bad("max_grad_norm", f"must be a positive finite number for {m}")
            if not (math.isfinite(self.epsilon) and self.epsilon > 0):
                raise bad("epsilon", f"must be a positive finite number for {m}")
            if not 0 < self.delta < 1:
                raise bad("delta", f"must be in (0, 1) for {m}")
        else:
            if self.noise_multiplier != 0:
                raise bad("noise_multiplier", "must be 0 for mechanism 'none'")
            if self.epsilon != math.inf:
                raise bad("epsilon", "must be infinite (JSON null) for mechanism 'none'")
            if self.delta != 0:
                raise bad("delta", "must be 0 for mechanism 'none'")
            if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
                raise bad("max_grad_norm", "must be a finite number >= 0 (0: no clipping)")

    @property
    def is_private(self) -> bool:
        return self.mechanism != "none"

    @property
    def privacy_unit(self) -> str:
        """What one unit of this (ε, δ) protects: "record" (DP-SGD, no DP) or "client" (DP-FedAvg)."""
        return PRIVACY_UNITS[self.mechanism]

    def to_dict(self) -> dict[str, Any]:
        client_level = self.privacy_unit == "client"
        d: dict[str, Any] = {"format": DP_FORMAT_V2 if client_level else DP_FORMAT}
        for f in fields(self):
            d[f.name] = getattr(self, f.name)
        if client_level:
            d["privacy_unit"] = "client"
        if self.mechanism == "none":
            d["epsilon"] = None
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "DPStatement":
        """Parses the JSON form strictly: every field present, no unknown key, types checked.

        v1 (or no `format`): a record-level statement (dp-sgd or none). v2: adds `privacy_unit`, which must
        be the unit of its mechanism ("client" for dp-fedavg)."""
        if not isinstance(data, dict):
            raise DPStatementError("dp statement must be a JSON object")
        fmt = data.get("format", DP_FORMAT)
        if fmt not in (DP_FORMAT, DP_FORMAT_V2):
            raise DPStatementError(f"dp statement: 'format' is {fmt!r}; this version reads {DP_FORMAT!r} and {DP_FORMAT_V2!r}")
        names = [f.name for f in fields(cls)]
        extra = {"format"} | ({"privacy_unit"} if fmt == DP_FORMAT_V2 else set())
        unknown = set(data) - set(names) - extra
        if unknown:
            raise DPStatementError(f"dp statement: unknown keys {sorted(unknown)}; allowed in {fmt}: {sorted(set(names) | extra)}")
        missing = [n for n in names + sorted(extra - {"format"}) if n not in data]
        if missing:
            raise DPStatementError(f"dp statement: missing fields {missing}")
        mech = data["mechanism"]
        if fmt == DP_FORMAT and mech == "dp-fedavg":
            raise DPStatementError(f"dp statement: mechanism 'dp-fedavg' is client-level and needs 'format' {DP_FORMAT_V2!r} with "
                                   "'privacy_unit': 'client'")
        if fmt == DP_FORMAT_V2 and (not isinstance(mech, str) or data["privacy_unit"] != PRIVACY_UNITS.get(mech)):
            raise DPStatementError(f"dp statement: 'privacy_unit' {data['privacy_unit']!r} does not match mechanism {mech!r} "
                                   f"(units: {PRIVACY_UNITS})")
        values = {n: data[n] for n in names}
        for n in ("mechanism", "accountant", "dataset_size_bucket"):
            if not isinstance(values[n], str):
                raise DPStatementError(f"dp statement: {n!r} must be a string, got {values[n]!r}")
        if values["epsilon"] is None:
            if values["mechanism"] != "none":
                raise DPStatementError("dp statement: 'epsilon' is null (infinite), which only mechanism 'none' may claim")
            values["epsilon"] = math.inf
        elif values["mechanism"] == "none":
            raise DPStatementError(f"dp statement: 'epsilon' must be null for mechanism 'none', got {values['epsilon']!r}")
        return cls(**values)


def no_privacy_statement(*, sample_rate: float, steps: int, dataset_size: int, max_grad_norm: float = 0.0, accountant: str = "rdp") -> DPStatement:
    """The statement of an expert trained without DP (ε = ∞)."""
    return DPStatement(
        mechanism="none", noise_multiplier=0.0, sample_rate=sample_rate, steps=steps,
        max_grad_norm=max_grad_norm, accountant=accountant, epsilon=math.inf, delta=0.0,
        dataset_size_bucket=size_bucket(dataset_size),
    )


def recompute(statement: DPStatement) -> float:
    """ε recomputed from the statement's parameters (inf for mechanism 'none').

    dp-sgd and dp-fedavg are both `steps` compositions of a Gaussian mechanism subsampled at
    `sample_rate` (records per optimizer step, or clients per round), so the same accountant applies."""
    if statement.mechanism == "none":
        return math.inf
    return compute_epsilon(statement.noise_multiplier, statement.sample_rate, statement.steps, statement.delta, statement.accountant)


def verify_statement(stmt: DPStatement, rel_tol: float = 1e-3) -> float:
    """Recomputes ε and returns it; raises `BudgetError` unless the claim matches.

    Rejects: a non-finite claimed ε for dp-sgd or dp-fedavg, a claimed ε that differs from the
    recomputed one by more than `rel_tol` (relative), and a δ that is not below 1/(smallest size of
    the bucket), since δ must be below 1/n (records, or clients for dp-fedavg) for the guarantee to
    mean anything.
    """
    if not isinstance(stmt, DPStatement):
        raise DPStatementError(f"expected a DPStatement, got {type(stmt).__name__}")
    stmt._validate()  # a statement altered after construction is checked again
    if stmt.mechanism == "none":
        return math.inf
    if not math.isfinite(stmt.epsilon):
        raise BudgetError(f"dp statement claims a non-finite epsilon {stmt.epsilon!r} for {stmt.mechanism}")
    lo, _ = bucket_bounds(stmt.dataset_size_bucket)
    if stmt.delta >= 1.0 / lo:
        unit = "training set" if stmt.privacy_unit == "record" else "federation"
        raise BudgetError(
            f"dp statement: delta {stmt.delta:g} is not below 1/n for a {unit} of {stmt.dataset_size_bucket} {stmt.privacy_unit}s "
            f"(must be < {1.0 / lo:g}); train with a smaller target delta"
        )
    eps = recompute(stmt)
    if not math.isclose(stmt.epsilon, eps, rel_tol=rel_tol):
        raise BudgetError(
            f"dp statement claims epsilon {stmt.epsilon:.6g}, but its parameters (noise_multiplier {stmt.noise_multiplier:g}, "
            f"sample_rate {stmt.sample_rate:g}, steps {stmt.steps}, delta {stmt.delta:g}, {stmt.accountant} accountant) "
            f"give {eps:.6g}"
        )
    return eps
