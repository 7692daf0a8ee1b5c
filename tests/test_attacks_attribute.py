"""Attribute inference of a sensitive column, against the population baseline."""

from __future__ import annotations

import pytest

from simulations.attacks.attribute import run_attribute


def test_attribute_attack_on_titanic_sex_reports_attack_and_baselines():
    res, dp = run_attribute("titanic", target_size=400, eval_members=300, eval_nonmembers=300, epochs=40, seed=0)
    print(res.to_dict())
    assert res.column == "sex" and res.levels == ["female", "male"]       # the schema's sensitive column
    assert res.n_members == 300 and res.n_nonmembers == 300
    for v in (res.attack_members, res.attack_nonmembers, res.population_members, res.population_nonmembers, res.prior):
        assert 0.0 <= v <= 1.0
    # sex is strongly tied to survival: both the attack and the population beat the majority guess
    assert res.attack_members > res.prior and res.population_members > res.prior
    assert dp["mechanism"] == "none"
    d = res.to_dict()
    for name in ("attack_members", "attack_nonmembers", "population_members", "advantage", "membership_gap"):
        lo, hi = d[f"{name}_ci"]
        assert lo <= d[name] <= hi and hi - lo < 0.2                            # 95 % intervals around the point figures
    assert d["leaks"] == (d["advantage_ci"][0] > 0 or d["membership_gap_ci"][0] > 0)


def test_intervals_exclude_zero_only_for_a_clear_difference():
    import numpy as np

    from simulations.attacks.attribute import accuracy_intervals

    m = np.arange(400) < 200
    same = accuracy_intervals(np.arange(400) % 2 == 0, np.arange(400) % 2 == 0, m)
    assert same["advantage"] == (0.0, 0.0) and same["membership_gap"][0] < 0 < same["membership_gap"][1]
    better = accuracy_intervals(np.ones(400, bool), np.arange(400) % 2 == 0, m)
    assert better["advantage"][0] > 0.4


def test_numeric_or_missing_sensitive_columns_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="numeric"):
        run_attribute("titanic", column="age", target_size=400, eval_members=100, eval_nonmembers=100, epochs=1)
