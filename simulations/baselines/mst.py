"""MST: the marginal-based DP synthesizer of McKenna, Miklau and Sheldon (2021), on the schema's domain.

The algorithm, as in the authors' reference code (`mechanisms/mst.py` of Private-PGM), with the
total budget ρ split in three equal parts:

1. one-way marginals of every attribute, Gaussian noise (ρ/3 over d measurements);
   values whose noisy count is below 3σ are merged into one "rare" value (domain compression);
2. a maximum spanning tree over the attributes, chosen edge by edge with the exponential mechanism
   (ρ/3 over d − 1 choices); an edge's score is the L1 distance between the true two-way marginal and
   the one that the independent model of step 1 predicts;
3. two-way marginals along the tree's edges, Gaussian noise (ρ/3 over d − 1 measurements).

A tree-structured graphical model is fitted to all the noisy marginals (`tree_model`) and rows are
sampled from it, then rare values are spread uniformly over the values they merged and bins are
turned back into values (`discretize`). ρ comes from the target (ε, δ) through OpenDP's zCDP
conversion, every measurement's ρ from OpenDP's own map (`zcdp`), and the statement lists each
measurement with its scale, so anyone recomputes the spend. Neighbouring tables differ by adding
or removing one record, as for the expert's DP-SGD.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import DisjointSet

from protocol.errors import BudgetError
from protocol.schema import PublicSchema
from simulations.baselines.discretize import TableDomain
from simulations.baselines.tree_model import Measurement, TreeModel, fit_tree_model
from simulations.baselines.zcdp import (
    ZCDPBudget,
    epsilon_of_rho,
    recompute_rho,
    rho_for,
    scale_for_rho,
)


@dataclass
class SynthesisStatement:
    """What a synthesizer spent: target and achieved (ε, δ) and the log to recompute it from."""

    synthesizer: str
    epsilon: float            # achieved ε at delta
    delta: float
    target_epsilon: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"synthesizer": self.synthesizer, "epsilon": self.epsilon, "delta": self.delta,
                "target_epsilon": self.target_epsilon, **self.details}


@dataclass
class SynthesisResult:
    table: pd.DataFrame       # the schema's feature columns and the label, as `load_table` returns them
    statement: SynthesisStatement
    model: TreeModel | None = None


@dataclass(frozen=True)
class MSTConfig:
    """bins: equal-width bins per numeric column over its public range; iters: mirror-descent steps of the fit."""

    bins: int = 16
    iters: int = 1500
    select_iters: int = 300


@dataclass
class _Compression:
    """Per attribute: which original values kept their own code (the rest share the last code)."""

    keep: list[np.ndarray]

    def sizes(self) -> tuple[int, ...]:
        return tuple(int(k.sum()) + int((~k).any()) for k in self.keep)

    def apply(self, codes: np.ndarray) -> np.ndarray:
        out = np.empty_like(codes)
        for j, k in enumerate(self.keep):
            mapping = np.full(len(k), int(k.sum()))
            mapping[k] = np.arange(int(k.sum()))
            out[:, j] = mapping[codes[:, j]]
        return out

    def undo(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(codes)
        for j, k in enumerate(self.keep):
            kept, rare = np.flatnonzero(k), np.flatnonzero(~k)
            c = codes[:, j]
            is_rare = c == len(kept)
            out[~is_rare, j] = kept[c[~is_rare]]
            if is_rare.any():
                out[is_rare, j] = rng.choice(rare, size=int(is_rare.sum()))
        return out


def _counts(codes: np.ndarray, attrs: tuple[int, ...], sizes: tuple[int, ...]) -> np.ndarray:
    shape = tuple(sizes[a] for a in attrs)
    flat = np.ravel_multi_index(tuple(codes[:, a] for a in attrs), shape) if codes.size else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape)


def _total_estimate(measured: list[tuple[np.ndarray, float]]) -> float:
    """Minimum-variance unbiased estimate of the number of records from the one-way noisy marginals."""
    est = np.array([y.sum() for y, _ in measured])
    var = np.array([s ** 2 * y.size for y, s in measured])
    w = 1.0 / var
    return max(1.0, float((w * est).sum() / w.sum()))


def _compress(one_way: list[tuple[np.ndarray, float]]) -> tuple[_Compression, list[Measurement]]:
    """MST's domain compression: values with noisy count < 3σ share one code; their measurement is re-expressed."""
    keep, measurements = [], []
    for a, (y, sigma) in enumerate(one_way):
        k = y >= 3 * sigma
        keep.append(k)
        if k.all():
            measurements.append(Measurement((a,), y, sigma))
            continue
        merged = int((~k).sum())
        y2 = np.append(y[k], y[~k].sum() / math.sqrt(merged))
        w = np.ones(len(y2))
        w[-1] = 1.0 / math.sqrt(merged)
        measurements.append(Measurement((a,), y2, sigma, w))
    return _Compression(keep), measurements


class MST:
    """Fits on a private table and returns a synthetic one at (ε, δ); see the module docstring."""

    def __init__(self, schema: PublicSchema, config: MSTConfig = MSTConfig()):
        self.schema, self.config = schema, config
        self.domain = TableDomain(schema, bins=config.bins)

    def fit_sample(self, table: pd.DataFrame, epsilon: float, delta: float, n_rows: int | None = None, seed: int = 0) -> SynthesisResult:
        """Synthetic rows (`n_rows`, default the noisy record count) from `table` at (ε, δ)-DP."""
        rho = rho_for(epsilon, delta)
        budget = ZCDPBudget(rho)
        codes = self.domain.encode(table)
        sizes, d = self.domain.sizes, len(self.domain.sizes)
        names = [a.name for a in self.domain.attributes]
        rng = np.random.default_rng(seed)

        # 1. one-way marginals
        sigma1 = scale_for_rho(rho / 3 / d)
        one_way = [(budget.noisy_counts(_counts(codes, (a,), sizes), sigma1, f"marginal {names[a]}"), sigma1) for a in range(d)]
        total = _total_estimate(one_way)
        compression, log1 = _compress(one_way)
        csizes = compression.sizes()
        ccodes = compression.apply(codes)

        # 2. the spanning tree, edge by edge with the exponential mechanism
        independent = fit_tree_model(csizes, (), log1, total, iters=self.config.select_iters)
        edges = self._select(ccodes, csizes, independent, budget, rho / 3, names)

        # 3. two-way marginals along the tree
        sigma2 = scale_for_rho(rho / 3 / max(len(edges), 1))
        log2 = [Measurement(e, budget.noisy_counts(_counts(ccodes, e, csizes), sigma2, f"marginal {names[e[0]]} x {names[e[1]]}").ravel(), sigma2)
                for e in edges]

        model = fit_tree_model(csizes, edges, log1 + log2, total, iters=self.config.iters)
        n = round(total) if n_rows is None else int(n_rows)
        synthetic = self.domain.decode(compression.undo(model.sample(n, rng), rng), rng)
        achieved = budget.epsilon(delta)
        if achieved > epsilon * (1 + 1e-9):
            raise BudgetError(f"MST spent ε={achieved:.6f} > target {epsilon:g}")
        details = {"rho": rho, "rho_spent": budget.spent, "accountant": "opendp zCDP (Canonne-Kamath-Steinke conversion)",
                   "bins": self.config.bins, "tree": [[names[a], names[b]] for a, b in edges],
                   "compressed_sizes": dict(zip(names, map(int, csizes))), "log": [s.to_dict() for s in budget.log]}
        return SynthesisResult(synthetic, SynthesisStatement("mst", achieved, delta, float(epsilon), details), model)

    def _select(self, codes: np.ndarray, sizes: tuple[int, ...], independent: TreeModel, budget: ZCDPBudget, rho: float,
                names: list[str]) -> list[tuple[int, int]]:
        d = len(sizes)
        if d < 2:
            return []
        nodes, _ = independent.marginals()
        total = independent.total
        scores = {}
        for a, b in itertools.combinations(range(d), 2):
            predicted = np.outer(nodes[a], nodes[b]) / total
            scores[(a, b)] = float(np.abs(_counts(codes, (a, b), sizes) - predicted).sum())
        scale = scale_for_rho(rho / (d - 1))
        ds = DisjointSet(range(d))
        edges = []
        for i in range(d - 1):
            candidates = [e for e in scores if not ds.connected(*e)]
            pick = candidates[budget.noisy_argmax(np.array([scores[e] for e in candidates]), scale, f"edge choice {i + 1}")]
            ds.merge(*pick)
            edges.append(pick)
        return edges


def verify_mst_statement(statement: dict) -> float:
    """ε recomputed from an MST statement's log (OpenDP's ρ per measurement, then the zCDP conversion)."""
    rho = recompute_rho(statement["log"])
    if not math.isclose(rho, statement["rho_spent"], rel_tol=1e-9):
        raise BudgetError(f"MST statement: its log gives ρ={rho:.6g}, it claims {statement['rho_spent']:.6g}")
    eps = epsilon_of_rho(rho, statement["delta"])
    if not math.isclose(eps, statement["epsilon"], rel_tol=1e-6):
        raise BudgetError(f"MST statement claims ε={statement['epsilon']:.6g}; its log gives {eps:.6g}")
    return eps
