"""The inference benchmark's JSON: a rerun keeps what other benchmarks wrote, and `--update` keeps the other tables."""

from __future__ import annotations

import json

from simulations.benchmarks.inference import kept_results, markdown


def _result(ds: str, run: dict | None = None) -> dict:
    r = {"dataset": ds, "mean_prompt_tokens_base": 80.0, "mean_prompt_tokens_llamdex": 84.0,
         "batches": [{"batch_size": 1, "median_base_s": 0.2, "median_llamdex_s": 0.21, "ratio": 1.05}]}
    return {**r, "run": run} if run else r


def test_a_rerun_keeps_the_comparisons_entries_and_with_update_the_other_tables(tmp_path):
    path = tmp_path / "inference.json"
    path.write_text(json.dumps({"command": "old", "environment": {"date": "d0"}, "results": [_result("titanic"), _result("churn")],
                                "compare": [{"dataset": "churn", "method": "lora"}], "compare_command": "cmp"}))
    plain = kept_results(path, False)
    assert plain == {"compare": [{"dataset": "churn", "method": "lora"}], "compare_command": "cmp", "results": []}
    update = kept_results(path, True)           # churn's result stays until churn is measured again
    assert [r["dataset"] for r in update["results"]] == ["titanic", "churn"] and update["results"][0]["run"] == {"command": "old", "date": "d0"}
    assert kept_results(tmp_path / "none.json", True) == {"results": []}


def test_markdown_names_each_tables_run_when_the_runs_differ():
    env = {"cpu_count": 2, "torch_threads": 1, "date": "d2"}
    one = {"command": "new", "environment": env, "results": [_result("churn", {"command": "new", "date": "d2"})]}
    assert "Command: `new`" in markdown(one)
    two = {**one, "results": [_result("titanic", {"command": "old", "date": "d0"}), *one["results"], _result("penguins", {"command": "old", "date": "d0"})]}
    md = markdown(two)
    assert "titanic, penguins by `old` (d0); churn by `new` (d2)" in md and md.count("| 1 |") == 3
