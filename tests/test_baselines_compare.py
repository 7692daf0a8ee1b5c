"""`llamdex bench compare`: the grid, resuming, merging into the shared result files, and a quick run of every method."""

from __future__ import annotations

import json

import pytest

from simulations.benchmarks.compare import (
    METHODS,
    TIMED_METHODS,
    main,
    merge_accuracy,
    merge_inference,
    parse_args,
    parser,
    plan,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def test_no_curve_means_no_table_runs_the_curve():
    assert parser().parse_args(["--no-curve"]).curve_data == [] == parser().parse_args(["--curve-data", ""]).curve_data


def test_the_default_grid_is_three_seeds_at_epsilon_one_and_the_curve_on_titanic_one_seed_elsewhere():
    a = parse_args([])
    units = plan(a.data.split(","), a.methods, a.epsilons, a.seeds, a.all_seeds_at, a.curve, a.curve_data, a.real_seeds, a.latency_epsilon,
                 all_seeds_data=a.all_seeds_data)
    by = {}
    for u in units:
        by.setdefault((u.dataset, u.method), []).append(u)
    for ds in ("titanic", "default", "credit", "churn"):
        grid = [0.5, 1.0, 2.0, 4.0, 8.0] if ds == "titanic" else [1.0, 4.0]
        seeds = (0, 1, 2) if ds == "titanic" else (0,)
        for m in ("expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan"):
            got = sorted((u.epsilons[0], u.seed) for u in by[(ds, m)])
            assert got == sorted([(1.0, s) for s in seeds] + [(e, 0) for e in grid if e != 1.0])
        for m in ("llamdex", "llamdex_calibrated"):
            assert [(u.epsilons, u.seed) for u in by[(ds, m)]] == [(tuple(grid), 0)] + [((1.0,), s) for s in seeds[1:]]
        assert [(u.epsilons, u.seed) for u in by[(ds, "lora_real")]] == [((None,), 0)]
        [lat] = by[(ds, "latency")]
        assert lat.measures == TIMED_METHODS and lat.seed == 0
    assert len({u.key for u in units}) == len(units)
    every = plan(["credit"], ["lora_dp_mst"], [1.0], [0, 1, 2], [1.0], [], [], [0], None)   # all_seeds_data None: every table
    assert [u.seed for u in every] == [0, 1, 2]
    only = plan(a.data.split(","), a.methods, a.epsilons, a.seeds, a.all_seeds_at, a.curve, a.curve_data, a.real_seeds, a.latency_epsilon,
                latency_only=True, all_seeds_data=a.all_seeds_data)
    assert only == [u for u in units if u.method == "latency"] and len(only) == 4   # the same keys: a full run skips them later


def test_refreshing_llamdex_alone_still_times_it_against_the_expert_api():
    [_, lat] = plan(["titanic"], ["llamdex"], [1.0], [0], [1.0], [], [], [0], 1.0)
    assert lat.method == "latency" and lat.measures == ("llamdex", "expert_api")


def test_a_new_lora_recipe_reruns_only_the_units_that_use_it(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    from simulations.baselines.methods import MethodSettings
    from simulations.benchmarks.compare import CompareStore, settings_digest, unit_digest

    old = MethodSettings()
    new = replace(old, lora=replace(old.lora, questions=old.lora.questions * 3))
    same = {m for m in (*METHODS, "latency") if unit_digest(asdict(old), "default", m) == unit_digest(asdict(new), "default", m)}
    assert same == {"llamdex", "llamdex_calibrated", "expert_api"}
    assert unit_digest(asdict(old), "default", "llamdex") != unit_digest(asdict(old), "quick", "llamdex")   # connectors matter to Llamdex
    assert unit_digest(asdict(old), "default", "expert_api") == unit_digest(asdict(old), "quick", "expert_api")
    # a new default expert recipe reruns exactly the units that use the client's expert
    from client_party import expert_training

    before = {m: unit_digest(asdict(old), "default", m) for m in (*METHODS, "latency")}
    real_private = expert_training.TrainConfig.private.__func__
    monkeypatch.setattr(expert_training.TrainConfig, "private",
                        classmethod(lambda cls, eps, **kw: real_private(cls, eps, **{"epochs": 61, **kw})))
    moved = {m for m in before if unit_digest(asdict(old), "default", m) != before[m]}
    monkeypatch.undo()
    assert moved == {"llamdex", "llamdex_calibrated", "expert_api", "latency"}
    # a file written under the whole preset's digest: its units take their method's digest of the file's settings
    whole = settings_digest(old, "default")
    units = {k: {"method": m, "settings_digest": whole, "rows": []} for k, m in (("a", "llamdex"), ("b", "lora_real"))}
    units["c"] = {"method": "lora_real", "settings_digest": "sha256:other", "rows": []}
    (tmp_path / "compare.json").write_text(json.dumps({"settings": json.loads(json.dumps(asdict(old))), "settings_digest": whole,
                                                       "connector_preset": "default", "units": units}))
    got = CompareStore(tmp_path).data["units"]
    assert got["a"]["settings_digest"] == unit_digest(asdict(new), "default", "llamdex")
    assert got["b"]["settings_digest"] == unit_digest(asdict(old), "default", "lora_real") != unit_digest(asdict(new), "default", "lora_real")
    assert got["c"]["settings_digest"] == "sha256:other"   # run under other settings: left to be rerun
    # only units of today's settings are reported and merged; the others are named as waiting
    store = CompareStore(tmp_path)
    today = store.current({m: unit_digest(asdict(new), "default", m) for m in (*METHODS, "latency")})
    assert set(today["units"]) == {"a"} and today["stale_units"] == ["b", "c"]


def test_merging_keeps_every_other_row_and_key(tmp_path):
    other = {"dataset": "titanic", "method": "llamdex", "epsilon": 1.0, "accuracy": 0.8, "balanced_accuracy": 0.7, "macro_f1": 0.7, "n_test": 262, "seed": 0}
    stale = {**other, "method": "lora_dp_mst", "accuracy": 0.1}
    (tmp_path / "accuracy.json").write_text(json.dumps({"rows": [other, stale], "extraction": {"x": 1}, "phrasing": [1]}))
    fresh = {**stale, "accuracy": 0.6, "extra": "not copied"}
    merge_accuracy(tmp_path, [fresh, {**other, "accuracy": 0.0}])     # a llamdex row of the comparison is not merged
    data = json.loads((tmp_path / "accuracy.json").read_text())
    assert data["extraction"] == {"x": 1} and data["phrasing"] == [1]
    assert data["rows"] == [other, {k: v for k, v in fresh.items() if k != "extra"}]
    (tmp_path / "inference.json").write_text(json.dumps({"results": [{"dataset": "titanic"}], "compare": [{"dataset": "churn", "method": "lora", "batch_size": 1}]}))
    merge_inference(tmp_path, [{"dataset": "titanic", "method": "lora", "batch_size": 1, "median_s": 1.0}], "cmd")
    inf = json.loads((tmp_path / "inference.json").read_text())
    assert inf["results"] == [{"dataset": "titanic"}] and len(inf["compare"]) == 2 and inf["compare_command"] == "cmd"


@pytest.mark.parametrize("argv, message", [
    (["--methods", "llamdex,gpt"], "unknown method"),
    (["--epsilons", "1,none"], "finite"),
    (["--epsilons", "-1"], "positive"),
    (["--curve-data", "titanik"], "not tables of this run"),
])
def test_bad_options_are_refused_with_the_rule(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_an_unknown_table_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a registered table"):
        main(["--data", "nosuchtable", "--out", str(tmp_path), "--quiet"])
    assert not (tmp_path / "compare.json").exists()


@pytest.mark.slow   # ~1 min: every method end to end; each method has its own test in the default run (tests/test_baselines_*.py)
def test_quick_comparison_of_every_method_resumes_and_merges(tmp_path, base_llm, titanic_schema, tiny_connectors):
    """The quick preset on titanic at ε = 1: every method, then a rerun that has nothing left to do."""
    from provider_party.model.connector_store import ConnectorStore

    ConnectorStore(tmp_path / "connectors").save(base_llm, titanic_schema, tiny_connectors)
    res = tmp_path / "results"
    res.mkdir()
    (res / "accuracy.json").write_text(json.dumps({"rows": [{"dataset": "credit", "method": "llamdex", "epsilon": 1.0, "seed": 0}], "keep": True}))
    argv = ["--data", "titanic", "--preset", "quick", "--epsilons", "1", "--seeds", "0", "--curve", "1", "--latency-reps", "1", "--threads", "1",
            "--connectors", str(tmp_path / "connectors"), "--work", str(tmp_path / "work"), "--out", str(res), "--quiet"]
    assert main(argv) == 0
    units = json.loads((res / "compare.json").read_text())["units"]
    assert {u["method"] for u in units.values()} == set(METHODS) | {"latency"}
    acc = json.loads((res / "accuracy.json").read_text())
    assert acc["keep"] and acc["rows"][0]["dataset"] == "credit"
    mine = {r["method"]: r for r in acc["rows"][1:]}
    assert set(mine) == {"llamdex_calibrated", "expert_calibrated", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan", "lora_real",
                         "lora_dp_mst_balanced", "lora_dp_gan_balanced", "lora_real_balanced"}
    for r in mine.values():
        assert set(r) == {"dataset", "method", "epsilon", "accuracy", "balanced_accuracy", "macro_f1", "n_test", "seed"}
        assert r["n_test"] == 10 and r["dataset"] == "titanic" and r["epsilon"] == (None if r["method"].startswith("lora_real") else 1.0)
    ll = next(u for u in units.values() if u["method"] == "llamdex")
    assert {r["method"] for r in ll["rows"]} == {"base_llm", "expert", "llamdex", "majority_class"} and ll["rows"][0]["n_test"] == 10
    cal = next(u for u in units.values() if u["method"] == "llamdex_calibrated")
    assert {r["method"] for r in cal["rows"]} == {"expert_calibrated", "llamdex_calibrated"}
    costs = {r["method"]: r for r in json.loads((res / "inference.json").read_text())["compare"]}
    assert set(costs) == {"base_llm", "llamdex", "expert_api", "icl_dp", "lora"}
    assert costs["expert_api"]["mean_generated_tokens"] > 0 and costs["icl_dp"]["mean_prompt_tokens"] > costs["base_llm"]["mean_prompt_tokens"]
    md = (res / "RESULTS.md").read_text()
    assert "### ε = 1" in md and "**Llamdex**" in md and "### Target at ε = 1" in md
    synth = sorted(p.name for p in (tmp_path / "work" / "synthetic").iterdir())
    assert synth == sorted(f"titanic-{s}-eps1-seed0-n6.{x}" for s in ("mst", "dp_gan") for x in ("json", "parquet"))

    before = (res / "compare.json").read_text()
    assert main(argv) == 0                              # resumes: every unit is done, nothing reruns
    assert json.loads((res / "compare.json").read_text())["units"] == json.loads(before)["units"]


def test_the_expert_apis_form_filling_is_made_once_and_reused_at_another_epsilon_and_after_a_restart(tmp_path, base_llm, monkeypatch):
    """It does not depend on ε: an added ε or a resumed run reads it from the work folder instead of generating again."""
    from simulations.baselines.expert_api import ExpertAPI
    from simulations.baselines.methods import Workbench
    from simulations.benchmarks.compare import PRESETS

    bench = Workbench(base_llm, PRESETS["quick"], tmp_path / "work", progress=False)
    first = bench.expert_api("titanic", 1.0, 0)
    made, took = bench.extraction("titanic", 0)
    stored = list((tmp_path / "work" / "extraction").iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".json"

    def no_generation(*a, **k):
        raise AssertionError("the stored form filling should have been reused")

    monkeypatch.setattr(ExpertAPI, "extract", no_generation)
    again = Workbench(base_llm, PRESETS["quick"], tmp_path / "work", progress=False)
    assert again.extraction("titanic", 0) == (made, took)           # the same records, and the seconds they cost
    assert again.expert_api("titanic", 4.0, 0).rows[0]["epsilon"] == 4.0   # (DP noise is unseeded: the expert differs per run)
    assert again.expert_api("titanic", 1.0, 0).costs == first.costs


def test_curve_methods_limit_which_methods_run_the_curves_extra_epsilons():
    units = plan(["titanic", "credit"], list(METHODS), [1.0, 4.0], [0], [1.0], [0.5, 1.0, 8.0], ["titanic"], [0], None,
                 curve_methods=["llamdex", "lora_dp_mst"])
    eps = {(u.dataset, u.method): sorted(e for v in units if (v.dataset, v.method) == (u.dataset, u.method) for e in v.epsilons)
           for u in units if u.method != "lora_real"}
    assert eps[("titanic", "llamdex")] == eps[("titanic", "lora_dp_mst")] == [0.5, 1.0, 4.0, 8.0]
    assert eps[("titanic", "icl_dp")] == eps[("titanic", "expert_api")] == eps[("credit", "lora_dp_mst")] == [1.0, 4.0]


def test_a_dry_run_lists_what_is_left_with_estimates_from_the_stored_units_and_runs_nothing(tmp_path, capsys):
    from simulations.benchmarks.compare import estimate_s

    stored = {"a": {"dataset": "titanic", "method": "lora_dp_mst", "epsilons": [1.0], "wall_s": 300.0},
              "b": {"dataset": "titanic", "method": "llamdex", "epsilons": [1.0, 4.0], "wall_s": 200.0},
              "c": {"dataset": "titanic", "method": "expert_api", "epsilons": [1.0], "wall_s": 250.0, "costs": {"extract_s": 240.0}}}
    [ll, api1, api4, mst1, mst4] = plan(["titanic"], ["llamdex", "expert_api", "lora_dp_mst"], [1.0, 4.0], [0], [1.0], [0.5], ["titanic"], [0], None)[:5]
    assert (ll.method, ll.epsilons) == ("llamdex", (0.5, 1.0, 4.0)) and estimate_s(ll, stored) == 300.0   # 100 s per ε
    assert estimate_s(mst4, stored) == 300.0 and estimate_s(api4, stored) == 250.0
    assert estimate_s(api4, stored, form_filled=True) == 10.0            # the form filling is reused at another ε
    assert estimate_s(plan(["credit"], ["icl_dp"], [1.0], [0], [1.0], [], [], [0], None)[0], stored) is None
    (tmp_path / "compare.json").write_text(json.dumps({"units": {}}))
    assert main(["--data", "titanic", "--seeds", "0", "--no-curve", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "titanic|lora_dp_gan|eps=4|seed=0" in out and "0 done" in out
    assert json.loads((tmp_path / "compare.json").read_text()) == {"units": {}}   # nothing ran, nothing was written


def test_the_report_states_the_grid_its_units_were_run_on_whatever_commands_filled_it():
    from simulations.baselines.report import grid_as_run

    units = {"a": {"dataset": "titanic", "method": "llamdex", "epsilons": [1.0, 4.0], "seed": 0},
             "b": {"dataset": "titanic", "method": "icl_dp", "epsilons": [1.0], "seed": 0},
             "c": {"dataset": "titanic", "method": "icl_dp", "epsilons": [1.0], "seed": 1},
             "d": {"dataset": "titanic", "method": "lora_dp_mst", "epsilons": [1.0], "seed": 0},
             "e": {"dataset": "titanic", "method": "lora_dp_mst", "epsilons": [1.0], "seed": 1},
             "f": {"dataset": "credit", "method": "lora_real", "epsilons": [None], "seed": 0},
             "g": {"dataset": "credit", "method": "latency", "epsilons": [1.0], "seed": 0}}
    assert grid_as_run(units) == "titanic: llamdex at 1, 4 [0]; icl_dp, lora_dp_mst at 1 [0, 1] · credit: lora_real at no DP [0]"
    assert grid_as_run({}) == "no units yet"


def test_experts_trained_for_plain_accuracy_are_reported_apart_and_never_serve_the_expert_api(tmp_path, base_llm, titanic_schema, tiny_connectors):
    from provider_party.model.connector_store import ConnectorStore
    from simulations.baselines.methods import Workbench
    from simulations.benchmarks.compare import PRESETS

    ConnectorStore(tmp_path / "connectors").save(base_llm, titanic_schema, tiny_connectors)
    bench = Workbench(base_llm, PRESETS["quick"], tmp_path / "work", progress=False, log=lambda m: None)
    res = bench.llamdex("titanic", (1.0,), 0, "quick", tmp_path / "connectors", decision="calibrated")
    assert sorted(r["method"] for r in res.rows) == ["expert_calibrated", "llamdex_calibrated"]
    assert bench._experts == {}   # the expert API trains (or takes from a balanced Llamdex unit) the client's default expert
    assert res.info["dp"]["eps=1"]["epsilon"] <= 1.0


def test_the_balanced_read_out_divides_by_the_models_own_training_prior():
    import numpy as np

    from simulations.baselines.methods import balanced_decision

    probs = np.array([[0.8, 0.2], [0.97, 0.03], [0.3, 0.7]])
    assert probs.argmax(-1).tolist() == [0, 0, 1]
    assert balanced_decision(probs, np.array([90, 10])).tolist() == [1, 0, 1]   # 0.2 / 0.108 > 0.8 / 0.892; 0.03 is not enough
    assert balanced_decision(probs, np.array([50, 50])).tolist() == [0, 0, 1]   # a balanced prior changes nothing
    assert balanced_decision(probs, np.array([100, 0])).tolist() == [1, 1, 1]   # never seen in training: the add-one prior, not a division by 0


def test_a_seed_measured_by_two_units_counts_once_in_the_tables_and_in_accuracy_json(tmp_path):
    """A Llamdex unit with the ε curve and one without both measure seed 0 at ε = 1: one row, the later unit's."""
    from simulations.baselines.report import markdown, measured_rows
    from simulations.benchmarks.compare import merge_accuracy

    def unit(eps, acc, finished):
        rows = [{"dataset": "titanic", "method": m, "epsilon": e, "accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc,
                 "n_test": 10, "seed": 0} for m, e in (("llamdex_calibrated", 1.0), ("base_llm", None))]
        return {"dataset": "titanic", "method": "llamdex_calibrated", "epsilons": eps, "seed": 0, "rows": rows, "finished": finished,
                "costs": {}, "info": {}, "wall_s": 1.0}

    units = {"titanic|llamdex_calibrated|eps=1,4|seed=0": unit([1.0, 4.0], 0.9, "2026-12-01T02:00:00+00:00"),
             "titanic|llamdex_calibrated|eps=0.5,1|seed=0": unit([0.5, 1.0], 0.8, "2026-12-01T01:00:00+00:00")}
    rows = measured_rows(units)
    assert sorted((r["method"], r["accuracy"]) for r in rows) == [("base_llm", 0.9), ("llamdex_calibrated", 0.9)]
    merge_accuracy(tmp_path, rows)
    assert len([r for r in json.loads((tmp_path / "accuracy.json").read_text())["rows"] if r["method"] == "llamdex_calibrated"]) == 1
    assert "(2)" not in markdown({"units": units}, [])


def test_the_per_epsilon_tables_are_the_epsilons_measured_on_every_table_whatever_the_last_command():
    from simulations.baselines.report import table_epsilons

    def r(ds, eps):
        return {"dataset": ds, "method": "lora_dp_mst", "epsilon": eps, "seed": 0}

    rows = [r("titanic", e) for e in (0.5, 1.0, 2.0, 4.0, 8.0)] + [r("credit", e) for e in (1.0, 4.0)] + [r("credit", None)]
    assert table_epsilons(rows, ["titanic", "credit"]) == [1.0, 4.0]


def test_rows_keep_the_stored_order_of_the_units_whatever_finished_last():
    from simulations.baselines.report import measured_rows

    def unit(ds, finished):
        row = {"dataset": ds, "method": "icl_dp", "epsilon": 1.0, "seed": 0}
        return {"dataset": ds, "method": "icl_dp", "seed": 0, "rows": [row], "finished": finished}

    units = {"credit": unit("credit", "2026-12-01T05:00:00+00:00"), "churn": unit("churn", "2026-12-01T04:00:00+00:00")}
    assert [r["dataset"] for r in measured_rows(units)] == ["credit", "churn"]
