"""A client that crashes or stops answering is excluded, named with its reason, and the others finish (slow: one more Flower run).

The tampered-artifact and over-budget cases run in the default suite (test_flower_simulation.py).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
def report(tmp_path_factory, base_llm, titanic_schema, tiny_connectors):
    from provider_party.model.connector_store import ConnectorStore
    from simulations.flower.launcher import leftover_processes, run_simulation

    store = tmp_path_factory.mktemp("connectors")
    ConnectorStore(store).save(base_llm, titanic_schema, tiny_connectors)
    rc = {"data": "titanic", "epochs": 3, "max-test": 8, "connectors": str(store), "timeout-s": TIMEOUT_S, "faults": "2=crash,3=timeout"}
    run = run_simulation(rc, clients=4, out_dir=tmp_path_factory.mktemp("flower-failures"), timeout_s=900)
    assert run.leftovers == [] and leftover_processes(run.token) == []   # the hanging client's worker is stopped too
    return run.report()


def _client(report, cid):
    return next(c for c in report["clients"] if c["client_id"] == cid)


def test_a_client_that_crashes_is_excluded_with_its_error(report):
    reason = _client(report, "client-002")["excluded"]
    assert reason.startswith("crashed in phase train") and "injected crash" in reason


def test_a_client_that_stops_answering_is_excluded_for_timing_out(report):
    reason = _client(report, "client-003")["excluded"]
    assert reason == f"timed out in phase train: no answer within {TIMEOUT_S:g} s of the phase's last answer"


def test_the_other_clients_finish(report):
    assert report["status"] == "completed" and report["ledger_verified"]
    for cid in ("client-000", "client-001"):
        c = _client(report, cid)
        assert c["excluded"] is None and c["receipt_verified"] and "llamdex" in c["scores"]
    assert sorted(e["client"] for e in report["excluded"]) == ["client-002", "client-003"]


def test_a_run_in_which_every_client_is_excluded_is_not_completed(tmp_path_factory, base_llm, titanic_schema, tiny_connectors):
    """It reported "completed" and `llamdex simulate` exited 0 with nothing measured."""
    from provider_party.model.connector_store import ConnectorStore
    from simulations.flower.launcher import run_simulation

    store = tmp_path_factory.mktemp("connectors-all-crash")
    ConnectorStore(store).save(base_llm, titanic_schema, tiny_connectors)
    rc = {"data": "titanic", "epochs": 3, "max-test": 8, "connectors": str(store), "timeout-s": TIMEOUT_S, "faults": "0=crash,1=crash"}
    report = run_simulation(rc, clients=2, out_dir=tmp_path_factory.mktemp("flower-all-crash"), timeout_s=900).report()
    assert report["status"] == "failed" and "no client finished the run: all 2 were excluded" in report["error"], report["error"]
    assert all(c["excluded"].startswith("crashed in phase train") for c in report["clients"])
