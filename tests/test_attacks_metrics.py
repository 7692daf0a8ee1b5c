"""Attack metrics and score functions: exact values on small hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulations.attacks.metrics import clopper_pearson, epsilon_from_rates, epsilon_lower_bound, evaluate_attack, roc_auc, roc_curve, tpr_at_fpr
from simulations.attacks.mia import lira_offline, lira_online, lira_statistic, log_complement, score_attacks


def test_auc_and_tpr_at_fpr_of_a_perfect_and_a_useless_attack():
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    perfect = np.array([8, 7, 6, 5, 4, 3, 2, 1], float)
    assert roc_auc(perfect, member) == 1.0
    fpr, tpr, _ = roc_curve(perfect, member)
    assert tpr_at_fpr(fpr, tpr, 0.0) == 1.0
    constant = np.zeros(8)
    assert roc_auc(constant, member) == 0.5
    fpr, tpr, _ = roc_curve(constant, member)
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.0      # ties: no threshold reaches TPR > 0 without FPR 1


def test_tpr_at_fpr_takes_the_best_threshold_within_the_budget():
    # 10 non-members (one of them scores above every member), 10 members
    scores = np.concatenate([[100.0], np.arange(9.0), np.arange(20.0, 30.0)])
    member = np.array([False] * 10 + [True] * 10)
    fpr, tpr, _ = roc_curve(scores, member)
    assert tpr_at_fpr(fpr, tpr, 0.05) == 0.0       # FPR 0 only above the outlier
    assert tpr_at_fpr(fpr, tpr, 0.1) == 1.0        # one false positive (10 %) buys every member


def test_clopper_pearson_matches_known_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and math.isclose(hi, 0.3084971, rel_tol=1e-5)
    lo, hi = clopper_pearson(5, 10)
    assert math.isclose(lo, 0.1870860, rel_tol=1e-5) and math.isclose(hi, 0.8129140, rel_tol=1e-5)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_epsilon_from_rates_is_zero_without_evidence_and_grows_with_it():
    assert epsilon_from_rates(50, 100, 50, 100) == 0.0
    assert epsilon_from_rates(100, 100, 99, 100) == 0.0     # everything called member: no evidence
    strong = epsilon_from_rates(90, 100, 1, 100)
    assert 2.0 < strong < math.log(90)                     # below the point estimate log(90/1)


def test_epsilon_lower_bound_of_random_scores_is_near_zero():
    rng = np.random.default_rng(0)
    for seed in range(5):
        s = rng.normal(size=400)
        assert epsilon_lower_bound(s, np.arange(400) < 200, seed=seed) < 0.5


def test_score_attacks_on_a_binary_example():
    logp = np.log(np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]))
    y = np.array([0, 0, 0])
    s = score_attacks(logp, y)
    assert np.allclose(s["loss"], np.log([0.9, 0.5, 0.2]))
    assert np.allclose(s["confidence"], np.log([0.9, 0.5, 0.8]))
    assert np.allclose(s["margin"], np.log([9.0, 1.0, 0.25]))
    assert np.allclose(s["entropy"], [0.9 * np.log(0.9) + 0.1 * np.log(0.1), np.log(0.5), 0.2 * np.log(0.2) + 0.8 * np.log(0.8)])
    # modified entropy (Song & Mittal): -(1-p_y) log p_y - sum_{i != y} p_i log(1 - p_i), negated
    mentr0 = -(0.1) * np.log(0.9) - 0.1 * np.log(0.9)
    assert math.isclose(s["modified_entropy"][0], -mentr0)
    assert np.argsort(s["modified_entropy"]).tolist() == [2, 1, 0]


def test_lira_statistic_is_stable_at_extreme_confidence():
    logits = np.array([[60.0, 0.0, -5.0]])
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    phi = lira_statistic(logp, np.array([0]))
    assert np.isfinite(phi).all() and math.isclose(phi[0], 60.0 - np.logaddexp(0.0, -5.0), rel_tol=1e-9)
    assert np.allclose(np.exp(log_complement(np.log([[0.25, 0.75]]))), [[0.75, 0.25]])


def test_lira_separates_in_from_out_gaussians():
    rng = np.random.default_rng(0)
    n, s = 200, 32
    member = np.arange(n) < n // 2
    inc = rng.random((s, n)) < 0.5
    shadow = np.where(inc, 3.0, 0.0) + rng.normal(size=(s, n))
    target = np.where(member, 3.0, 0.0) + rng.normal(size=n)
    assert evaluate_attack("on", lira_online(target, shadow, inc), member).auc > 0.95
    out = np.where(inc, np.nan, shadow)
    out_only = np.stack([np.where(np.isnan(c), np.nanmean(c), c) for c in out.T]).T
    assert evaluate_attack("off", lira_offline(target, out_only), member).auc > 0.9


def test_online_lira_with_a_few_shadows_falls_back_to_global_statistics():
    from simulations.attacks.mia import balanced_inclusion

    rng = np.random.default_rng(0)
    inc = balanced_inclusion(8, 200, rng)[:2]          # two of eight shadows: some records never IN (or never OUT)
    assert ((inc.sum(0) == 0) | (inc.sum(0) == 2)).any()
    scores = lira_online(rng.normal(size=200), rng.normal(size=(2, 200)), inc)
    assert np.isfinite(scores).all()
