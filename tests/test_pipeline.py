"""End to end on a small subset: client experts (plain and DP), provider connectors, evaluation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from provider_party.model.connector_store import ConnectorStore
from simulations.pipeline import format_table, run_pipeline


@pytest.fixture()
def store_with_tiny(tmp_path, base_llm, titanic_schema, tiny_connectors):
    store = ConnectorStore(tmp_path / "connectors")
    store.save(base_llm, titanic_schema, tiny_connectors)
    return store


def test_connector_store_reuses_by_base_model_and_schema(store_with_tiny, base_llm, titanic_schema):
    assert store_with_tiny.has(base_llm, titanic_schema)
    model, trained_now = store_with_tiny.get_or_train(base_llm, titanic_schema, "quick", progress=False)
    assert not trained_now and model.config.schema_digest == titanic_schema.digest
    assert store_with_tiny.delete(base_llm.model_id, titanic_schema.digest)
    assert not store_with_tiny.has(base_llm, titanic_schema)


def test_pipeline_end_to_end_on_small_subset(store_with_tiny):
    res = run_pipeline("titanic", (None, 1.0), preset="quick", seed=0, max_train=300, max_test=24,
                       connectors_root=store_with_tiny.root, progress=False, log=lambda *_: None)
    assert not res.connectors_trained_now
    methods = [(r["method"], r["epsilon"]) for r in res.rows]
    assert methods == [("base_llm", None), ("expert", None), ("llamdex", None), ("expert", 1.0), ("llamdex", 1.0), ("majority_class", None)]
    for r in res.rows:
        assert r["n_test"] == 24 and r["dataset"] == "titanic"
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert 0.0 <= r[key] <= 1.0
    assert res.dp["eps=1"]["epsilon"] <= 1.0
    assert set(res.extraction) == {"sex", "age", "passengerClass"}
    assert "| titanic | llamdex | 1 |" in format_table(res.rows)


@pytest.mark.parametrize("argv", [[], ["demo"], ["client"], ["client", "train"], ["provider"], ["provider", "connectors"], ["bench"]])
def test_every_cli_verb_has_help(argv):
    r = subprocess.run([sys.executable, "-m", "simulations.cli.main", *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: llamdex" in r.stdout


@pytest.mark.slow
def test_full_benchmark_meets_targets_on_titanic(tmp_path):
    """The accuracy benchmark with the default preset: Llamdex within 3 points of each expert."""
    from simulations.benchmarks.accuracy import main
    import json

    assert main(["--datasets", "titanic", "--results-dir", str(tmp_path), "--connectors", str(tmp_path / "c")]) == 0
    rows = json.loads((tmp_path / "accuracy.json").read_text())["rows"]
    for r in rows:
        if r["method"] == "llamdex":
            ex = next(e for e in rows if e["method"] == "expert" and e["epsilon"] == r["epsilon"])
            assert r["accuracy"] >= ex["accuracy"] - 0.03


def test_latency_measured_on_the_pipelines_own_model(store_with_tiny):
    """`llamdex demo --in-process` times the model, expert and questions the pipeline built (nothing rebuilt)."""
    from simulations.benchmarks.inference import measure_model

    res = run_pipeline("titanic", (None,), preset="quick", seed=0, max_train=200, max_test=16,
                       connectors_root=store_with_tiny.root, progress=False, log=lambda *_: None)
    qs = res.questions
    assert len(qs) == 16
    lat = measure_model("titanic", res.model, res.experts["no-dp"], qs, (1, 4), reps=2)
    assert [b["batch_size"] for b in lat["batches"]] == [1, 4]
    for b in lat["batches"]:
        assert b["median_base_s"] > 0 and b["median_llamdex_s"] > 0 and b["ratio"] == b["median_llamdex_s"] / b["median_base_s"]
    assert lat["mean_prompt_tokens_llamdex"] == lat["mean_prompt_tokens_base"] + res.model.config.num_tokens
