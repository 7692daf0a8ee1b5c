"""Membership inference soundness: the attacks find members of an overfit expert, and not of a DP one."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.attacks.mia import (
    ALL_ATTACKS, ExpertChannel, MIAConfig, SeatView, Shadows, attack_view, balanced_inclusion, best_attack, make_split, rmia_scores,
    run_mia,
)


def test_split_is_disjoint_and_members_come_from_training():
    s = make_split(1000, target_size=200, eval_members=150, eval_nonmembers=100, seed=3)
    sets = [set(s.train), set(s.out), set(s.aux)]
    assert sum(map(len, sets)) == 1000 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set(s.members) <= sets[0] and set(s.nonmembers) == sets[1]
    assert s.is_member.sum() == 150 and len(s.challenge) == 250
    with pytest.raises(ValueError, match="auxiliary population"):
        make_split(300, target_size=200, eval_members=100, eval_nonmembers=200)


def test_a_label_balanced_split_holds_the_classes_equally_and_stays_disjoint():
    y = np.array([0] * 940 + [1] * 60)
    s = make_split(1000, target_size=50, eval_members=50, eval_nonmembers=50, seed=1, balance_labels=y)
    assert np.bincount(y[s.train]).tolist() == [25, 25] and np.bincount(y[s.out]).tolist() == [25, 25]
    sets = [set(s.train), set(s.out), set(s.aux)]
    assert sum(map(len, sets)) == 1000 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    few = make_split(1000, target_size=50, eval_members=50, eval_nonmembers=50, seed=1, balance_labels=np.array([0] * 970 + [1] * 30))
    assert np.bincount(np.array([0] * 970 + [1] * 30)[few.train]).tolist() == [25, 25]   # the rest of the minority is held out
    assert (y[make_split(1000, 50, 50, 50, seed=1).train] == 0).sum() > 40                   # without it, drawn as the table is


def test_every_record_is_in_exactly_half_of_the_shadows():
    inc = balanced_inclusion(16, 300, np.random.default_rng(0))
    assert (inc.sum(0) == 8).all()
    sh = Shadows([object(), object()], [np.array([1, 5, 9]), np.array([2, 5])])
    assert sh.inclusion(np.array([5, 9, 2])).tolist() == [[True, True, False], [True, False, True]]


def test_rmia_ranks_records_by_their_likelihood_ratio_against_the_population():
    # the target is more confident than the references on x0, as confident on x1, less on x2
    target_py = np.log([0.9, 0.5, 0.2])
    ref_py = np.log(np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    target_pz, ref_pz = np.log([0.5, 0.6, 0.4, 0.5]), np.log(np.full((2, 4), 0.5))
    s = rmia_scores(target_py, ref_py, target_pz, ref_pz)
    assert s.tolist() == [1.0, 0.75, 0.0]           # x dominates z when Pr(x|θ)/Pr(x) >= Pr(z|θ)/Pr(z)
    off = rmia_scores(target_py, ref_py, target_pz, ref_pz, offline=True)
    assert np.argsort(off).tolist() == [2, 1, 0]


def test_a_view_without_shadows_runs_the_score_attacks_only():
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet([1, 1], size=40))
    view = SeatView("provider", rng.integers(2, size=40), np.arange(40) < 20, logp)
    names = [r.attack for r in attack_view(view)]
    assert names == ["loss", "confidence", "entropy", "modified_entropy", "margin"]
    best = best_attack(attack_view(view), "provider")
    assert best["attacks_compared"] == 5 and best["auc_ci"][0] <= best["auc"] <= best["auc_ci"][1]
    assert best["auc_ci_family"][0] <= best["auc_ci"][0]         # the family-wise interval is wider


def test_lira_and_rmia_find_members_of_a_deliberately_overfit_expert():
    """100 credit records, 150 epochs at lr 1e-2 on every record (no early stopping), no DP: with 16 shadows
    online LiRA and RMIA must work, with intervals that exclude chance."""
    cfg = MIAConfig(target_size=100, eval_members=100, eval_nonmembers=100, n_shadows=16, epochs=150, batch_size=50, lr=1e-2,
                    early_stopping=False, population=200, seed=0)
    report = run_mia("credit", cfg)
    lira, rmia = report.result("lira_online"), report.result("rmia")
    print(f"overfit expert: LiRA online AUC {lira.auc:.3f} {lira.auc_ci}, TPR@1%FPR {lira.tpr_at_fpr[0.01]:.3f}; RMIA AUC {rmia.auc:.3f}; "
          f"loss AUC {report.result('loss').auc:.3f}; held-out accuracy {report.expert_accuracy:.3f}")
    assert {r.attack for r in report.results} == set(ALL_ATTACKS)
    assert lira.n_members == 100 and lira.n_nonmembers == 100
    assert lira.auc >= 0.65 and lira.beats_chance and rmia.beats_chance
    assert lira.tpr_at_fpr[0.01] >= 0.05
    assert lira.auc > report.result("loss").auc     # shadows help


def test_dp_expert_at_epsilon_1_resists_every_attack():
    """The client's DP recipe at ε = 1 (10 epochs, for time) on 500 credit records, 500 + 500 challenge records:
    no attack's 95 % interval lies wholly above AUC 0.55 (the issue's target).

    Not asserted: that no attack beats chance. ε = 1 allows TPR ≤ e·FPR + δ, so an attack whose interval
    excludes 0.5 is consistent with a correct DP-SGD (one fresh-clone run saw confidence at 0.550
    [0.515, 0.584]); a test of it failed for no fault of the code."""
    cfg = MIAConfig(target_size=500, eval_members=500, eval_nonmembers=500, n_shadows=4, population=200, epsilon=1.0, epochs=10, seed=0)
    report = run_mia("credit", cfg)
    assert report.dp["mechanism"] == "dp-sgd" and report.dp["epsilon"] <= 1.0
    aucs = {r.attack: (round(r.auc, 3), [round(v, 3) for v in r.auc_ci]) for r in report.results}
    print(f"DP expert (ε = {report.dp['epsilon']:.3f}): AUCs {aucs}; held-out balanced accuracy {report.expert_balanced_accuracy:.3f}")
    assert set(aucs) == set(ALL_ATTACKS)
    assert all(r.auc_ci[0] <= 0.55 for r in report.results)


def test_expert_channel_reads_log_probabilities():
    import torch

    from protocol.expert_spec import ExpertSpec, build_expert

    model = build_expert(ExpertSpec(input_dim=3, num_classes=2)).eval()
    lp = ExpertChannel(np.zeros((4, 3), np.float32)).log_probs(model)
    assert lp.shape == (4, 2) and np.allclose(np.exp(lp).sum(1), 1.0)
    assert np.allclose(lp, torch.log_softmax(model(torch.zeros(4, 3)), -1).detach().numpy(), atol=1e-6)
