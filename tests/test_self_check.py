"""Connector training checks its own extraction, retrains the weak columns, and reports what still misses."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unreachable_check(base_llm, default_schema, tiny_preset):
    """Tiny connectors for ISLR Default whose self-check thresholds no encoder can meet (above 1)."""
    from provider_party.model.connector_training import train_connectors

    preset = replace(tiny_preset, inject_candidates=(20,), check_categorical=1.01, check_numeric=1.01, check_missing=1.01,
                     retrain_epochs=1, encoder_min_steps=0)
    return train_connectors(base_llm, default_schema, preset, seed=2, progress=False)


def test_weak_columns_get_one_round_of_more_questions(unreachable_check, tiny_preset):
    check = unreachable_check.metrics["self_check"]
    assert len(check["retrain_rounds"]) == 1
    rnd = check["retrain_rounds"][0]
    assert set(rnd["weak_columns"]) == {"student", "balance", "income"}
    assert rnd["extra_questions"] >= tiny_preset.batch_size
    assert unreachable_check.metrics["timings"]["self_check_round1_s"] > 0


def test_columns_that_still_miss_are_reported_with_the_gap(unreachable_check):
    check = unreachable_check.metrics["self_check"]
    assert check["passed"] is False
    assert set(check["missed"]) == {"student", "balance", "income"}
    for col, metrics in check["missed"].items():
        assert metrics, col
        for name, m in metrics.items():
            assert name in ("accuracy", "exact", "missing_flag_accuracy")
            assert m["threshold"] == 1.01 and m["short_by"] == pytest.approx(1.01 - m["value"], abs=1e-3)
    assert check["thresholds"] == {"categorical_accuracy": 1.01, "numeric_exact": 1.01, "missing_flag_accuracy": 1.01}


def test_the_report_is_stored_with_the_connectors_and_printed_by_the_cli(unreachable_check, base_llm, default_schema, tmp_path):
    from provider_party.model.connector_store import ConnectorStore

    store = ConnectorStore(tmp_path / "store")
    path = store.save(base_llm, default_schema, unreachable_check)
    stored = json.loads((path / "connectors.json").read_text())
    assert stored["metrics"]["self_check"]["missed"] == unreachable_check.metrics["self_check"]["missed"]
    out = subprocess.run([sys.executable, "-m", "simulations.cli.main", "provider", "connectors", "--schema", "default", "--store", str(tmp_path / "store")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "connectors reused" in out.stdout
    printed = json.loads(out.stdout[out.stdout.index("{"):])
    assert printed["self_check"]["passed"] is False and set(printed["self_check"]["missed"]) == {"student", "balance", "income"}
