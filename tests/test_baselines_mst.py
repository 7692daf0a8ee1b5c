"""MST and its pieces: zCDP accounting against the closed forms, the schema's discrete domain, the tree model, the synthesizer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq, minimize_scalar

from client_party.datasets import load_table, split_table, validate_table
from protocol.errors import BudgetError
from protocol.schema import PublicSchema
from simulations.baselines.discretize import TableDomain
from simulations.baselines.mst import MST, MSTConfig, verify_mst_statement
from simulations.baselines.tree_model import Measurement, TreeModel, fit_tree_model
from simulations.baselines.zcdp import (
    ZCDPBudget,
    epsilon_of_rho,
    gaussian_rho,
    noisy_max_rho,
    rho_for,
    scale_for_rho,
)


def cks_delta(rho: float, eps: float) -> float:
    """Canonne, Kamath, Steinke (2020), Prop. 12: δ of ρ-zCDP at ε, minimised over the Rényi order α."""
    def log_delta(a: float) -> float:
        return (a - 1) * (a * rho - eps) + a * math.log1p(-1 / a) - math.log(a - 1)
    res = minimize_scalar(log_delta, bounds=(1.0001, 1e4), method="bounded", options={"xatol": 1e-10})
    return math.exp(min(res.fun, 0.0))


def cks_epsilon(rho: float, delta: float) -> float:
    return brentq(lambda e: cks_delta(rho, e) - delta, 1e-9, rho + 2 * math.sqrt(rho * math.log(1 / delta)) + 1)


# --- accounting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 3.0, 17.3])
def test_gaussian_and_exponential_mechanisms_cost_their_closed_form_rho(sigma):
    assert gaussian_rho(sigma) == pytest.approx(1 / (2 * sigma**2), rel=1e-12)
    # exponential mechanism with Gumbel scale s is ε = 2/s pure DP, hence ε²/8 = 1/(2 s²) zCDP
    assert noisy_max_rho(sigma) == pytest.approx((2 / sigma) ** 2 / 8, rel=1e-12)


@pytest.mark.parametrize("rho, delta", [(0.01, 1e-5), (0.05, 1e-4), (0.5, 1e-6), (3.0, 1e-3)])
def test_zcdp_to_approximate_dp_matches_the_closed_form(rho, delta):
    eps = epsilon_of_rho(rho, delta)
    assert eps == pytest.approx(cks_epsilon(rho, delta), rel=1e-3)
    assert eps <= rho + 2 * math.sqrt(rho * math.log(1 / delta))  # Bun and Steinke's simpler bound is looser


@pytest.mark.parametrize("eps, delta", [(0.5, 1e-4), (1.0, 9.5e-5), (8.0, 1e-5)])
def test_rho_for_is_the_largest_rho_within_the_target(eps, delta):
    rho = rho_for(eps, delta)
    assert epsilon_of_rho(rho, delta) <= eps
    assert epsilon_of_rho(rho * 1.001, delta) > eps


@pytest.mark.parametrize("eps, delta, match", [(0.0, 1e-5, "epsilon"), (math.inf, 1e-5, "epsilon"), (1.0, 1.0, "delta"), (1.0, 0.0, "delta")])
def test_bad_privacy_targets_are_refused_by_name(eps, delta, match):
    with pytest.raises(BudgetError, match=match):
        rho_for(eps, delta)


def test_a_budget_refuses_to_overspend_and_keeps_its_log():
    budget = ZCDPBudget(0.1)
    budget.noisy_counts(np.array([5, 7]), scale_for_rho(0.06), "first")
    with pytest.raises(BudgetError, match="overspend"):
        budget.noisy_counts(np.array([5, 7]), scale_for_rho(0.06), "second")
    assert [s.what for s in budget.log] == ["first"] and budget.spent == pytest.approx(0.06)


def test_noisy_counts_are_unbiased_and_have_the_stated_scale():
    budget = ZCDPBudget(10.0)
    noisy = budget.noisy_counts(np.full(4000, 100), 5.0, "many cells")
    assert abs(noisy.mean() - 100) < 0.5 and abs(noisy.std() - 5.0) < 0.3


# --- the discrete domain ------------------------------------------------------------------------------


def _schema(**over) -> PublicSchema:
    cols = [{"name": "n", "type": "int", "description": "a count", "min": 0, "max": 5},
            {"name": "x", "type": "float", "description": "a size", "min": 0, "max": 100, "nullable": True, "decimals": 1},
            {"name": "c", "type": "category", "description": "a kind", "categories": ["a", "b_c"]},
            {"name": "b", "type": "bool", "description": "a flag"}]
    d = {"name": "toy", "version": "1", "description": "toy", "subject": "thing", "columns": cols,
         "label": {"name": "y", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Is it?"}}
    d.update(over)
    return PublicSchema.from_dict(d)


def test_bins_come_from_the_schemas_public_range_not_the_data():
    dom = TableDomain(_schema(), bins=5)
    n, x, c, b, y = dom.attributes
    assert not n.integer_bins and n.edges == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)   # 6 values > 5 bins: equal width
    assert x.edges == (0.0, 20.0, 40.0, 60.0, 80.0, 100.0) and x.size == 6    # 5 bins + missing
    assert TableDomain(_schema(), bins=6).attributes[0].integer_bins and TableDomain(_schema(), bins=6).attributes[0].size == 6
    assert (c.size, b.size, y.size) == (2, 2, 2)
    small = pd.DataFrame({"n": [0], "x": [1.0], "c": ["a"], "b": ["no"], "y": ["no"]})
    large = pd.DataFrame({"n": [5], "x": [99.0], "c": ["b_c"], "b": ["yes"], "y": ["yes"]})
    dom.encode(small), dom.encode(large)
    assert TableDomain(_schema(), bins=5).attributes[1].edges == x.edges


def test_decoding_gives_valid_rows_that_encode_back_to_the_same_codes():
    schema = _schema()
    dom = TableDomain(schema, bins=4)
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, s, 500) for s in dom.sizes], axis=1)
    table = dom.decode(codes, rng)
    assert validate_table(table, schema) == []
    assert (dom.encode(table) == codes).all()
    assert table["x"].isna().sum() == (codes[:, 1] == 4).sum()


def test_values_outside_the_schema_are_refused_by_column():
    dom = TableDomain(_schema())
    with pytest.raises(ValueError, match="column 'c'"):
        dom.encode(pd.DataFrame({"n": [0], "x": [1.0], "c": ["zzz"], "b": ["no"], "y": ["no"]}))
    with pytest.raises(ValueError, match="column 'n'.*not nullable"):
        dom.encode(pd.DataFrame({"n": [None], "x": [1.0], "c": ["a"], "b": ["no"], "y": ["no"]}))
    with pytest.raises(ValueError, match="bins"):
        TableDomain(_schema(), bins=1)


# --- the tree model ------------------------------------------------------------------------------------


def test_belief_propagation_gives_the_exact_marginals_of_the_tree():
    rng = np.random.default_rng(1)
    sizes, edges = (2, 3, 4, 2), ((0, 1), (1, 2), (1, 3))
    model = TreeModel(sizes, edges, total=10.0, unary=[rng.normal(size=s) for s in sizes],
                      pairwise={e: rng.normal(size=(sizes[e[0]], sizes[e[1]])) for e in edges})
    joint = np.zeros(sizes)
    for x in itertools.product(*[range(s) for s in sizes]):
        joint[x] = np.exp(sum(model.unary[a][x[a]] for a in range(4)) + sum(model.pairwise[(a, b)][x[a], x[b]] for a, b in edges))
    joint *= 10.0 / joint.sum()
    nodes, pair = model.marginals()
    for a in range(4):
        assert np.allclose(nodes[a], joint.sum(axis=tuple(i for i in range(4) if i != a)))
    for a, b in edges:
        assert np.allclose(pair[(a, b)], joint.sum(axis=tuple(i for i in range(4) if i not in (a, b))))
    draws = model.sample(40_000, rng)
    freq = np.bincount(np.ravel_multi_index(draws.T, sizes), minlength=joint.size).reshape(sizes) / 40_000
    assert np.abs(freq - joint / 10.0).sum() / 2 < 0.02


def test_fitting_noiseless_marginals_recovers_them():
    rng = np.random.default_rng(2)
    codes = np.stack([rng.integers(0, 3, 2000), rng.integers(0, 2, 2000)], axis=1)
    codes[:, 1] = np.where(rng.random(2000) < 0.8, codes[:, 0] % 2, codes[:, 1])   # correlated
    ab = np.bincount(codes[:, 0] * 2 + codes[:, 1], minlength=6).astype(float)
    ms = [Measurement((0,), np.bincount(codes[:, 0], minlength=3).astype(float), 1.0),
          Measurement((1,), np.bincount(codes[:, 1], minlength=2).astype(float), 1.0), Measurement((0, 1), ab, 1.0)]
    model = fit_tree_model((3, 2), ((0, 1),), ms, 2000.0, iters=1500)
    assert np.abs(model.marginals()[1][(0, 1)].ravel() - ab).max() < 2.0


def test_a_measurement_off_the_tree_is_refused():
    with pytest.raises(ValueError, match="not an edge"):
        fit_tree_model((2, 2, 2), ((0, 1), (1, 2)), [Measurement((0, 2), np.zeros(4), 1.0)], 10.0)


# --- MST -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def titanic_train():
    df, schema = load_table("titanic")
    train, _ = split_table(df, schema, seed=0)
    return train, schema


def test_mst_spends_its_budget_as_the_paper_splits_it(titanic_train):
    train, schema = titanic_train
    delta = 1 / (10 * len(train))
    res = MST(schema, MSTConfig(iters=200, select_iters=50)).fit_sample(train, 1.0, delta, n_rows=300, seed=0)
    st = res.statement.to_dict()
    d = len(schema.columns) + 1
    log = st["log"]
    assert [e["mechanism"] for e in log] == ["gaussian"] * d + ["noisy_max"] * (d - 1) + ["gaussian"] * (d - 1)
    third = st["rho"] / 3
    assert sum(e["rho"] for e in log[:d]) == pytest.approx(third, rel=1e-9)
    assert sum(e["rho"] for e in log[d:2 * d - 1]) == pytest.approx(third, rel=1e-9)
    assert sum(e["rho"] for e in log[2 * d - 1:]) == pytest.approx(third, rel=1e-9)
    for e in log:  # each measurement's ρ is the closed form of its scale
        assert e["rho"] == pytest.approx(1 / (2 * e["scale"] ** 2), rel=1e-12)
    assert st["epsilon"] <= 1.0 and st["epsilon"] == pytest.approx(cks_epsilon(st["rho_spent"], delta), rel=1e-3)
    assert verify_mst_statement(st) == pytest.approx(st["epsilon"])
    assert len(res.table) == 300 and validate_table(res.table, schema) == []
    tampered = {**st, "log": [{**log[0], "scale": log[0]["scale"] * 2}] + log[1:]}
    with pytest.raises(BudgetError, match="log gives"):
        verify_mst_statement(tampered)


def test_mst_marginals_match_the_truth_at_large_epsilon(titanic_train):
    train, schema = titanic_train
    mst = MST(schema, MSTConfig(iters=800, select_iters=100))
    res = mst.fit_sample(train, 1e4, 1e-6, n_rows=30_000, seed=1)
    dom = mst.domain
    truth, synth = dom.encode(train), dom.encode(res.table)
    names = [a.name for a in dom.attributes]

    def tv(a: tuple[int, ...]) -> float:
        def dist(c):
            flat = np.ravel_multi_index(tuple(c[:, i] for i in a), tuple(dom.sizes[i] for i in a))
            return np.bincount(flat, minlength=int(np.prod([dom.sizes[i] for i in a]))) / len(c)
        return float(np.abs(dist(truth) - dist(synth)).sum() / 2)

    for a in range(len(names)):
        assert tv((a,)) < 0.03, names[a]
    for a, b in res.statement.details["tree"]:
        assert tv((names.index(a), names.index(b))) < 0.05, (a, b)
    lab = schema.label.name
    for sex in ("female", "male"):  # the relation the label depends on most survives
        real = (train[train.sex == sex][lab] == "yes").mean()
        fake = (res.table[res.table.sex == sex][lab] == "yes").mean()
        assert abs(real - fake) < 0.04
