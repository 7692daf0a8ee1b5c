"""The one-run canary audit (Steinke, Nasr, Jagielski 2023): its bound, and its soundness on DP experts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client_party.datasets import encode_table, load_table
from simulations.attacks.canary import audit_from_scores, epsilon_lower_bound, guess_counts, p_value_dp_audit, run_canary_audit
from simulations.attacks.mia import train_config


def reference_p_value(m, r, v, eps, delta):
    """The paper's algorithm written out loop by loop, as an independent check."""
    from scipy.stats import binom

    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)
        alpha = max(alpha, total / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize("m,r,v,eps,delta", [(1000, 100, 90, 1.0, 0), (1000, 100, 90, 2.0, 1e-5), (500, 50, 50, 3.0, 1e-4), (200, 20, 11, 0.1, 1e-3)])
def test_p_value_matches_the_papers_algorithm(m, r, v, eps, delta):
    assert math.isclose(p_value_dp_audit(m, r, v, eps, delta), reference_p_value(m, r, v, eps, delta), rel_tol=1e-9, abs_tol=1e-15)


def test_pure_dp_bound_of_all_correct_guesses_has_a_closed_form():
    # r correct out of r under ε-DP (δ = 0): p = q^r, so the 95 % bound solves q^r = 0.05
    r = 100
    q = 0.05 ** (1 / r)
    assert math.isclose(epsilon_lower_bound(1000, r, r, 0.0, 0.05), math.log(q / (1 - q)), rel_tol=1e-6)


def test_no_evidence_gives_no_bound():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, 1e-5) == 0.0


def test_guesses_count_top_as_in_and_bottom_as_out():
    scores = np.array([5.0, 4, 3, 2, 1, 0])
    included = np.array([True, True, False, True, False, False])
    assert guess_counts(scores, included, 2, 0) == (2, 2)
    assert guess_counts(scores, included, 2, 2) == (4, 4)
    assert guess_counts(scores, included, 3, 3) == (6, 4)   # top: 2 of 3 in; bottom: 2 of 3 out


def test_perfect_scores_give_a_large_bound_and_random_ones_none():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    eps, _, best = audit_from_scores(included.astype(float) + 0.01 * rng.random(1000), included, 1e-5)
    assert eps > 3.0 and best["v"] == best["r"]
    eps_random, _, _ = audit_from_scores(rng.random(1000), included, 1e-5)
    assert eps_random < 0.5


@pytest.fixture(scope="module")
def credit():
    df, schema = load_table("credit")
    x, y = encode_table(df, schema)
    perm = np.random.default_rng(0).permutation(len(df))
    return schema, x[perm[:300]], y[perm[:300]], x[perm[300:800]], y[perm[300:800]], x[perm[800:1400]]


def test_the_bound_never_exceeds_the_claimed_epsilon_of_dp_experts(credit):
    schema, x, y, xt, yt, pool = credit
    for seed in range(3):
        audit = run_canary_audit(x, y, schema, train_config(1.0, seed=seed, epochs=10), m=300, seed=seed, x_test=xt, y_test=yt)
        print(f"seed {seed}: ε lower bound {audit.epsilon_lb:.3f} ≤ claimed {audit.epsilon_claimed:.3f} "
              f"(Opacus {audit.epsilon_recomputed:.3f}, dp-accounting {audit.epsilon_second:.3f}); canary AUC {audit.canary_auc:.3f}")
        assert audit.epsilon_claimed <= 1.0
        assert math.isclose(audit.epsilon_claimed, audit.epsilon_recomputed, rel_tol=1e-9)
        assert math.isclose(audit.epsilon_claimed, audit.epsilon_second, rel_tol=1e-3)
        assert audit.epsilon_lb <= audit.epsilon_claimed
        assert not audit.exceeds_claim


def test_the_audit_detects_memorization_without_dp(credit):
    schema, x, y, xt, yt, pool = credit
    cfg = train_config(None, epochs=150, batch_size=50, lr=1e-2, seed=0, early_stopping=False)
    audit = run_canary_audit(x, y, schema, cfg, m=300, seed=0, x_test=xt, y_test=yt)
    print(f"no DP: ε lower bound {audit.epsilon_lb:.3f}, canary AUC {audit.canary_auc:.3f}, best guesses {audit.best}")
    assert audit.epsilon_claimed is None
    assert audit.canary_auc > 0.65
    assert audit.epsilon_lb > 0.8


def test_canaries_can_come_from_a_pool_of_real_records(credit):
    schema, x, y, xt, yt, pool = credit
    audit = run_canary_audit(x, y, schema, train_config(None, epochs=5, seed=0), m=100, seed=0, pool=pool)
    assert audit.extra["canaries_from"] == "pool" and audit.m == 100
    assert 0 <= audit.epsilon_lb
