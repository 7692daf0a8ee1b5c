"""The Flower app end to end on the simulation engine, through `flwr run .` (a detached local SuperLink, Ray).

One run of five clients on TitanicSurvival (tiny experts, a stored tiny connector set): three honest
ones, one whose artifact is changed after signing, one asking for twice its ε budget; the three honest
ones also train a DP-FedAvg expert together. The run must complete for the honest clients, exclude the
other two with the provider's reason, leave every receipt verifiable by its client and the ledger
chain intact, and leave no SuperLink, SuperExec, simulation or Ray process behind.
"""

from __future__ import annotations

import json

import pytest

HONEST = ["client-000", "client-001", "client-002"]


@pytest.fixture(scope="module")
def connector_store(tmp_path_factory, base_llm, titanic_schema, tiny_connectors):
    """A stored tiny connector set for titanic, as a provider keeps one between runs."""
    from provider_party.model.connector_store import ConnectorStore

    root = tmp_path_factory.mktemp("connectors")
    ConnectorStore(root).save(base_llm, titanic_schema, tiny_connectors)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, connector_store):
    from simulations.flower.launcher import run_simulation

    rc = {"data": "titanic", "epochs": 3, "max-test": 8, "connectors": str(connector_store), "timeout-s": 180.0, "epsilon": "1",
          "budget": "4", "faults": "3=tamper,4=over-budget", "federated": "titanic", "fed-rounds": 2, "fed-epsilon": 2.0}
    return run_simulation(rc, clients=5, out_dir=tmp_path_factory.mktemp("flower-run"), timeout_s=900)


@pytest.fixture(scope="module")
def report(run):
    return run.report()


def _client(report, cid):
    return next(c for c in report["clients"] if c["client_id"] == cid)


def test_the_run_completes_through_flwr_run_from_the_installed_app_bundle(run, report):
    assert report["status"] == "completed", report.get("error")
    assert report["engine"] == "simulation"
    assert str(run.out_dir / "flwr-home" / "apps") in report["code_from"]   # the ServerApp ran from the FAB flwr installed


def test_no_superlink_superexec_simulation_or_ray_process_is_left(run):
    from simulations.flower.launcher import leftover_processes

    assert run.leftovers == [] and leftover_processes(run.token) == []
    assert any("flower-superlink" in p for p in run.stopped)   # the detached local SuperLink existed, and was stopped


def test_every_honest_client_finishes_with_scores_from_the_base_llm_its_expert_and_llamdex(report):
    for cid in HONEST:
        c = _client(report, cid)
        assert c["excluded"] is None and c["receipt_verified"]
        assert 0 < c["epsilon"] <= 1.0 and c["n_train"] > 0
        assert {"base_llm", "expert", "llamdex"} <= set(c["scores"]) and c["scores"]["n_questions"] == 8
        # its own expert answered, the one its scores compare with: the lead (client-000) also holds the federated expert, uploaded later
        assert c["answered_by"] == c["artifact_digest"]
        s = c["scores"]   # where Llamdex answers as the expert does, both are right or both wrong: only disagreements move accuracy
        agree = s["llamdex_expert_agreement"]
        assert 0 <= agree <= 1 and abs(s["llamdex"]["accuracy"] - s["expert"]["accuracy"]) <= 1 - agree + 1e-9


def test_every_receipt_verifies_under_the_providers_key_and_chains_per_client(run):
    from protocol.receipts import verify_chain

    pub = run.out_dir / "provider" / "keys" / "provider.pub"
    kinds = {}
    for cid in HONEST:
        from client_party.receipt_store import ReceiptStore

        store = ReceiptStore(run.out_dir / "clients" / cid / "receipts.db", cid, pub)
        kinds[cid] = [r.kind for r in verify_chain(store.envelopes(), pub)]
    assert all(k and set(k) == {"upload"} for k in kinds.values())
    assert len(kinds["client-000"]) == 2   # the federation's lead also holds the federated expert's receipt


def test_the_ledger_chain_verifies_afterwards(run, report):
    from provider_party.service.ledger import Ledger

    assert report["ledger_verified"] is True
    assert Ledger(run.out_dir / "provider" / "state" / "ledger.db").verify_chain() == []


def test_a_tampered_artifact_is_refused_by_the_provider_and_its_client_excluded(report):
    c = _client(report, "client-003")
    assert c["excluded"].startswith("upload refused by the provider: [DIGEST_MISMATCH]") and c["receipt_id"] == ""
    assert {"client": "client-003", "reason": c["excluded"]} in report["excluded"]


def test_a_client_asking_beyond_its_budget_is_excluded_and_nothing_is_charged(run, report):
    from provider_party.service.ledger import Ledger

    c = _client(report, "client-004")
    assert c["excluded"].startswith("upload refused by the provider: [BUDGET_EXCEEDED]")
    ledger = Ledger(run.out_dir / "provider" / "state" / "ledger.db")
    assert ledger.entries(client_id="client-004")[0] == []
    spent = ledger.budget("client-004", "titanic")
    assert spent is None or spent.epsilon_spent == 0


def test_connectors_are_shared_by_every_client_of_the_schema(report):
    (schema,) = report["schemas"]
    assert schema["clients"] == HONEST and "shared by 3 clients" in schema["connectors"]


def test_the_federated_expert_is_uploaded_once_under_a_client_level_receipt(run, report):
    (fed,) = report["federations"]
    assert fed["error"] is None and fed["clients"] == HONEST and fed["lead"] == "client-000" and fed["rounds"] == 2
    assert 0 < fed["epsilon_provider"] <= 2.0 and abs(fed["epsilon_flower"] - fed["epsilon_provider"]) / fed["epsilon_provider"] < 0.05
    assert fed["federated_accuracy"] is not None and fed["individual_accuracy_mean"] is not None
    # asked through Llamdex too, on every member's questions, and scored by each member against the federated expert alone
    assert fed["llamdex_error"] is None and 0 <= fed["federated_llamdex_accuracy"] <= 1
    for cid in HONEST:
        s = _client(report, cid)["scores"]
        agree = s["federated_llamdex_agreement"]
        assert 0 <= agree <= 1 and abs(s["federated_llamdex"]["accuracy"] - s["federated_expert"]["accuracy"]) <= 1 - agree + 1e-9
    assert fed["federated_llamdex_agreement"] == sum(_client(report, c)["scores"]["federated_llamdex_agreement"] for c in HONEST) / len(HONEST)
    entries = [json.loads(e) for e in _ledger_receipts(run, "client-000")]
    params = [e["accountant_params"] for e in entries if e["dataset_id"] == "titanic-fedavg"]
    assert params and params[0]["mechanism"] == "dp-fedavg"


def _ledger_receipts(run, cid):
    import base64

    from client_party.receipt_store import ReceiptStore

    store = ReceiptStore(run.out_dir / "clients" / cid / "receipts.db", cid, run.out_dir / "provider" / "keys" / "provider.pub")
    return [json.dumps(json.loads(base64.b64decode(env["payload"]))["predicate"]) for env in store.envelopes()]
