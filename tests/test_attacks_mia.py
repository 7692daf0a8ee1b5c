"""Membership inference soundness: the attack finds members of an overfit expert, and not of a DP one."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.attacks.mia import MIAConfig, balanced_inclusion, make_split, run_mia


def test_split_is_disjoint_and_members_come_from_training():
    s = make_split(1000, target_size=200, eval_members=150, eval_nonmembers=100, seed=3)
    sets = [set(s.train), set(s.out), set(s.aux)]
    assert sum(map(len, sets)) == 1000 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set(s.members) <= sets[0] and set(s.nonmembers) == sets[1]
    assert s.is_member.sum() == 150 and len(s.challenge) == 250
    with pytest.raises(ValueError, match="auxiliary population"):
        make_split(500, target_size=200, eval_members=100, eval_nonmembers=200)


def test_every_record_is_in_exactly_half_of_the_online_shadows():
    inc = balanced_inclusion(16, 300, np.random.default_rng(0))
    assert (inc.sum(0) == 8).all()


def test_lira_finds_members_of_a_deliberately_overfit_expert():
    """100 credit records, 150 epochs at lr 1e-2, no DP: online LiRA with 24 shadows must work."""
    cfg = MIAConfig(target_size=100, eval_members=100, eval_nonmembers=100, n_shadows=24, epochs=150, batch_size=50, lr=1e-2,
                    seed=0, attacks=("loss", "lira_online"))
    report = run_mia("credit", cfg)
    lira = report.result("lira_online")
    print(f"overfit expert: LiRA online AUC {lira.auc:.3f}, TPR@1%FPR {lira.tpr_at_fpr[0.01]:.3f}; "
          f"loss AUC {report.result('loss').auc:.3f}; held-out accuracy {report.expert_accuracy:.3f}")
    assert lira.n_members == 100 and lira.n_nonmembers == 100
    assert lira.auc >= 0.65
    assert lira.tpr_at_fpr[0.01] >= 0.05
    assert lira.auc > report.result("loss").auc     # shadows help


def test_dp_expert_at_epsilon_1_resists_every_attack():
    """The client's DP recipe at ε = 1 on 500 credit records: no attack gets AUC above 0.55."""
    cfg = MIAConfig(target_size=500, eval_members=500, eval_nonmembers=500, n_shadows=4, epsilon=1.0, seed=0)
    report = run_mia("credit", cfg)
    assert report.dp["mechanism"] == "dp-sgd" and report.dp["epsilon"] <= 1.0
    aucs = {r.attack: round(r.auc, 3) for r in report.results}
    print(f"DP expert (ε = {report.dp['epsilon']:.3f}): AUCs {aucs}; held-out accuracy {report.expert_accuracy:.3f}")
    assert set(aucs) == {"loss", "confidence", "entropy", "modified_entropy", "margin", "lira_online", "lira_offline"}
    assert max(aucs.values()) <= 0.55
