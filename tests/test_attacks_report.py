"""The privacy–utility report renders JSON, Markdown and PNGs from the results dictionary alone."""

from __future__ import annotations

import json

import numpy as np

from simulations.attacks.metrics import evaluate_attack
from simulations.attacks.report import markdown, write_all


def fake_results() -> dict:
    rng = np.random.default_rng(0)
    member = np.arange(200) < 100
    runs = []
    for eps in (1.0, None):
        shift = 0.2 if eps else 1.0
        mia = [evaluate_attack(a, rng.normal(size=200) + shift * member, member, seat).to_dict(with_roc=True)
               for a in ("loss", "lira_online") for seat in ("provider", "query")]
        best = {s: {"attack": "lira_online", "auc": max(m["auc"] for m in mia if m["seat"] == s),
                    "tpr@1%fpr": max(m["tpr@1%fpr"] for m in mia if m["seat"] == s)} for s in ("provider", "query")}
        runs.append({"epsilon_target": eps, "dp": {"epsilon": eps}, "epsilon_second": eps, "expert_accuracy": 0.8,
                     "llamdex_accuracy": 0.75, "mia": mia, "best_mia": best,
                     "attribute": {"attack_members": 0.7, "population_members": 0.69},
                     "canary": {"epsilon_lb": 0.0 if eps else 2.0}})
    return {"meta": {"command": "python -m simulations.benchmarks.privacy_utility", "summary": "test"},
            "tables": {"credit": {"setup": {"records": 4454}, "runs": runs,
                                  "overfit_anchor": {"target_size": 100, "epochs": 150, "lira_online": {"auc": 0.72, "tpr@1%fpr": 0.1},
                                                     "lira_offline": {"auc": 0.7}}}}}


def test_report_files_are_written(tmp_path):
    data = fake_results()
    paths = write_all(data, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["RESULTS.md", "attacks.json", "attacks.md", "roc_credit.png", "tradeoff.png"]
    section = (tmp_path / "RESULTS.md").read_text()   # a folder other than docs/results gets its own RESULTS.md
    assert "<!-- BEGIN attacks -->" in section and (tmp_path / "attacks.md").read_text().strip() in section
    assert json.loads((tmp_path / "attacks.json").read_text())["tables"]["credit"]["runs"][1]["epsilon_target"] is None
    for png in ("roc_credit.png", "tradeoff.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_one_row_per_epsilon():
    md = markdown(fake_results())
    rows = [line for line in md.splitlines() if line.startswith("| 1 ") or line.startswith("| no DP ")]
    assert len(rows) == 2
    assert "Sanity anchor" in md and "tradeoff.png" in md
