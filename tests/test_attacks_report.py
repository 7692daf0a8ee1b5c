"""The privacy–utility report renders JSON, Markdown and PNGs from the results dictionary alone."""

from __future__ import annotations

import json

import numpy as np

from simulations.attacks.metrics import evaluate_attack
from simulations.attacks.report import markdown, write_all
from simulations.benchmarks.privacy_utility import _best, sizes_for


def fake_results() -> dict:
    rng = np.random.default_rng(0)
    member = np.arange(200) < 100
    runs = []
    for eps in (1.0, None):
        shift = 0.2 if eps else 1.0
        mia = [evaluate_attack(a, rng.normal(size=200) + shift * member, member, seat).to_dict(with_roc=True)
               for a in ("loss", "lira_online") for seat in ("provider", "query")]
        runs.append({"epsilon_target": eps, "dp": {"epsilon": eps}, "epsilon_second": eps, "expert_accuracy": 0.8,
                     "expert_balanced_accuracy": 0.75, "llamdex_accuracy": 0.75, "llamdex_balanced_accuracy": 0.7, "mia": mia,
                     "best_mia": {s: _best(mia, s) for s in ("provider", "query")},
                     "attribute": {"attack_members": 0.7, "population_members": 0.69, "advantage": 0.01, "advantage_ci": [-0.02, 0.04]},
                     "canary": {"epsilon_lb": 0.0 if eps else 4.0, "input_space_epsilon_lb": 0.0, "epsilon_claimed": eps}})
    return {"meta": {"command": "python -m simulations.benchmarks.privacy_utility", "summary": "test", "missing": ["churn ε=1 query seat"]},
            "broken_dp": [{"dataset": "credit", "seed": 1000, "claimed_epsilon": 0.99, "epsilon_lb": 3.2, "caught": True}],
            "tables": {"credit": {"setup": {"records": 4454}, "runs": runs,
                                  "overfit_anchor": {"target_size": 100, "epochs": 150, "shadows": 16,
                                                     "lira_online": {"auc": 0.72, "auc_ci": [0.65, 0.79], "tpr@1%fpr": 0.1,
                                                                     "tpr@1%fpr_ci": [0.05, 0.18]},
                                                     "rmia": {"auc": 0.75, "auc_ci": [0.68, 0.81]}}}}}


def test_report_files_are_written(tmp_path):
    data = fake_results()
    paths = write_all(data, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["RESULTS.md", "attacks.json", "attacks.md", "roc_credit.png", "tradeoff.png"]
    section = (tmp_path / "RESULTS.md").read_text()   # a folder other than docs/results gets its own RESULTS.md
    assert "<!-- BEGIN attacks -->" in section and (tmp_path / "attacks.md").read_text().strip() in section
    saved = json.loads((tmp_path / "attacks.json").read_text())
    assert saved["tables"]["credit"]["runs"][1]["epsilon_target"] is None
    assert saved["broken_dp"][0]["caught"] is True
    for png in ("roc_credit.png", "tradeoff.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_attack_entry_carries_its_intervals():
    for run in fake_results()["tables"]["credit"]["runs"]:
        for a in run["mia"]:
            assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1]
            assert a["tpr@1%fpr_ci"][0] <= a["tpr@1%fpr"] <= a["tpr@1%fpr_ci"][1]


def test_markdown_has_one_row_per_epsilon_with_intervals():
    md = markdown(fake_results())
    rows = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| no DP ")]
    assert len(rows) == 2 and all(" [" in r for r in rows)
    assert "Sanity anchor" in md and "tradeoff.png" in md and "A broken DP-SGD is caught" in md and "1 of 1 runs" in md
    assert "Not yet run" in md


def test_small_tables_keep_an_auxiliary_population():
    assert sizes_for(10_000) == sizes_for(4454) and sizes_for(4454).target == 1000
    t = sizes_for(1309)                      # titanic: 500 + 500 attacked, the training set gives way (548 records)
    assert (t.members, t.nonmembers) == (500, 500) and t.target + t.nonmembers <= 1309 - 261
    s = sizes_for(900)                       # too small for both: non-members down to a third, members from what is left
    assert s.nonmembers == 300 and s.target == 900 - 300 - 180 and s.members == min(500, s.target)
