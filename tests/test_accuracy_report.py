"""The accuracy benchmark's report: `phrasing` per table next to `rows` and `extraction`, self-check verdicts."""

from __future__ import annotations

import json

from simulations.benchmarks.accuracy import PER_TABLE, markdown, phrasing_entry, previous_results


def _payload() -> dict:
    rows = [{"dataset": "t", "method": "base_llm", "epsilon": None, "accuracy": 0.6, "balanced_accuracy": 0.5, "macro_f1": 0.4, "n_test": 10},
            {"dataset": "t", "method": "expert", "epsilon": None, "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.7, "n_test": 10},
            {"dataset": "t", "method": "llamdex", "epsilon": None, "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.7, "n_test": 10,
             "agreement_with_expert": 1.0}]
    per_expert = {"no-dp": {"agreement": 0.96, "llamdex_accuracy": 0.79, "llamdex_balanced_accuracy": 0.7, "expert_accuracy": 0.8,
                            "verbalizer_agreement": 1.0, "n": 10, "by_mechanism": {"hand": {"agreement": 0.92, "n": 5}, "general": {"agreement": 1.0, "n": 5}},
                            "extraction": {"a": {"accuracy": 0.9}}},
                  "eps=1": {"agreement": 0.9, "llamdex_accuracy": 0.7, "llamdex_balanced_accuracy": 0.6, "expert_accuracy": 0.7,
                            "verbalizer_agreement": 1.0, "n": 10, "by_mechanism": {}, "extraction": {}}}
    conn = {"timings": {"total_s": 12.0}, "inject_layer": 20,
            "self_check": {"passed": False, "retrain_rounds": [{"weak_columns": ["b"]}],
                           "missed": {"b": {"missing_flag_accuracy": {"value": 0.9, "threshold": 0.97, "short_by": 0.07}}}}}
    return {"command": "python -m simulations.benchmarks.accuracy", "preset": "default", "seed": 0,
            "environment": {"cpu_count": 2, "torch_threads": 1, "date": "today"}, "datasets": ["t"], "rows": rows,
            "extraction": {"t": {"a": {"accuracy": 0.99, "stated_accuracy": 0.99, "missing_flag_accuracy": 1.0, "n": 10},
                                 "b": {"mae": 0.1, "exact": 1.0, "unit": "years", "missing_flag_accuracy": 0.9, "n": 9}}},
            "phrasing": {"t": phrasing_entry(per_expert)}, "connectors": {"t": conn}}


def test_phrasing_entry_puts_the_non_dp_expert_first_and_keeps_every_expert():
    entry = _payload()["phrasing"]["t"]
    assert (entry["agreement"], entry["llamdex_accuracy"], entry["n"]) == (0.96, 0.79, 10)
    assert set(entry["by_expert"]) == {"no-dp", "eps=1"} and "extraction" not in entry["by_expert"]["no-dp"]
    assert phrasing_entry({}) == {}


def test_markdown_reports_phrasing_extraction_and_the_self_check():
    md = markdown(_payload())
    assert "| t | 0.960 | 1.000 | 0.920 | 1.000 | 0.790 | 0.800 | 10 |" in md
    assert "exact 1.000, MAE 0.10 years" in md
    assert "missed: missing_flag_accuracy 0.900" in md


def _fresh(datasets: list[str]) -> dict:
    return {"command": "new", "preset": "default", "seed": 0, "datasets": datasets, "rows": [], **{k: {} for k in PER_TABLE}}


def test_a_rerun_keeps_the_comparisons_rows_and_with_update_every_other_table(tmp_path):
    old = _payload()
    old["datasets"] = ["titanic", "t"]
    own = old["rows"][0]
    old["rows"] += [{**own, "dataset": "titanic"}, {**own, "method": "lora_dp_mst"}, {**own, "dataset": "titanic", "method": "icl_dp"}]
    old["extraction"]["titanic"] = {"sex": {"accuracy": 1.0}}
    path = tmp_path / "accuracy.json"
    path.write_text(json.dumps(old))

    plain = _fresh(["t"])
    previous_results(path, False, ["t"], plain)
    assert {(r["dataset"], r["method"]) for r in plain["rows"]} == {("t", "lora_dp_mst"), ("titanic", "icl_dp")}
    assert plain["extraction"] == {} and plain["datasets"] == ["t"]

    update = _fresh(["t"])
    previous_results(path, True, ["t"], update)          # t's own rows stay until t is measured again
    assert {(r["dataset"], r["method"]) for r in update["rows"]} == {("t", "lora_dp_mst"), ("titanic", "icl_dp"), ("titanic", "base_llm"),
                                                                      ("t", "base_llm"), ("t", "expert"), ("t", "llamdex")}
    assert update["extraction"] == {"titanic": {"sex": {"accuracy": 1.0}}, "t": old["extraction"]["t"]}
    assert update["runs"]["titanic"]["command"] == old["command"] and update["datasets"] == ["titanic", "t"]
    nothing = _fresh(["t"])
    previous_results(tmp_path / "none.json", True, ["t"], nothing)
    assert nothing == _fresh(["t"])                       # no file: the fresh payload stays as it was


def test_markdown_names_each_tables_run_when_the_runs_differ():
    payload = _payload()
    payload["runs"] = {"t": {"command": "rerun t", "date": "d2", "encoder": {"encoder_kernel": 9, "encoder_mixer_layers": 2}}}
    assert "Command: `rerun t`" in markdown(payload)
    payload["datasets"] = ["u", "t"]
    payload["rows"] += [{**r, "dataset": "u"} for r in payload["rows"]]
    payload["runs"]["u"] = {"command": "first", "date": "d1"}
    md = markdown(payload)
    assert "- t: `rerun t` (d2; encoder window 9 tokens × 2 mixer layers)" in md and "- u: `first` (d1)" in md


def test_markdown_sets_the_plain_accuracy_rule_beside_the_default_one():
    payload = _payload()
    assert "### The two decision rules" not in markdown(payload)   # nothing measured, no section
    base = {"dataset": "t", "epsilon": None, "macro_f1": 0.7, "n_test": 10, "seed": 0}
    payload["decisions"] = {"t": [{**base, "method": "expert_calibrated", "accuracy": 0.9, "balanced_accuracy": 0.6},
                                  {**base, "method": "llamdex_calibrated", "accuracy": 0.89, "balanced_accuracy": 0.6, "agreement_with_expert": 0.99}]}
    md = markdown(payload)
    assert "### The two decision rules" in md
    assert "| t | – | 0.700 | 0.900 | 0.890 | -1.0 | 0.990 |" in md


def test_the_decisions_flag_takes_the_other_rule_or_none():
    import argparse

    import pytest

    from simulations.benchmarks.accuracy import decision_list

    assert decision_list("calibrated") == ["calibrated"] and decision_list("none") == []
    for bad in ("balanced", "plain", "calibrated,x"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown decision rule"):
            decision_list(bad)


def test_markdown_reports_each_recipes_spread_over_training_seeds():
    payload = _payload()
    assert "### Across expert training seeds" not in markdown(payload)   # one seed, no section
    payload["seeds"] = {"t": {"no-dp": {"seeds": [0, 1, 2], "expert_accuracy": [0.8, 0.9, 0.7], "llamdex_accuracy": [0.8, 0.9, 0.7],
                                        "expert_balanced_accuracy": [0.7, 0.7, 0.7], "llamdex_balanced_accuracy": [0.7, 0.6, 0.8],
                                        "agreement": [1.0, 0.98, 0.99]}}}
    md = markdown(payload)
    assert "### Across expert training seeds" in md
    assert "| t | no-dp | 0.800 ± 0.100 (0.700–0.900) | 0.800 ± 0.100 (0.700–0.900) | +0.0 (worst +0.0) | " \
           "0.700 ± 0.000 (0.700–0.700) | 0.700 ± 0.100 (0.600–0.800) | +0.0 (worst -10.0) | 0.980 | – | 3 |" in md


def test_counts_on_the_command_line_are_whole_and_positive():
    import argparse

    import pytest

    from simulations.benchmarks.accuracy import add_arguments

    ap = add_arguments(argparse.ArgumentParser(exit_on_error=False))
    assert ap.parse_args(["--expert-seeds", "5"]).expert_seeds == 5
    assert ap.parse_args([]).expert_seeds == 5   # the published table's setting
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(argparse.ArgumentError, match="expert-seeds"):
            ap.parse_args(["--expert-seeds", bad])
