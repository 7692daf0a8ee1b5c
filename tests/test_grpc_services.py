"""The two services end to end, in-process, on loopback with mutual TLS: an orchestrator asks the client
to train and hand over a DP expert, the client verifies and keeps the receipt, customization streams
its progress, Ask answers single and batched questions exactly as the in-process model does, and
Forget deletes with a signed deletion receipt. Uses the tiny connector preset (~30 s on 2 cores)."""

from __future__ import annotations

import json

import grpc
import pytest

from tests._grpc_fixtures import make_parties, provider_client, provider_config
from client_party.config import ClientConfig
from client_party.service import ClientServer
from protocol.receipts import verify_chain, verify_receipt
from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc, common_pb2
from protocol.rpc_errors import error_code
from protocol.tls import open_channel
from protocol.wire import receipt_envelope, receipt_message
from provider_party.service.server import ProviderServer
from simulations.two_party_demo import free_port


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("services")
    p = make_parties(root)
    c_addr = f"127.0.0.1:{free_port()}"
    provider = ProviderServer(provider_config(p, callbacks={"alice": c_addr})).start()
    ccfg = ClientConfig(client_id="alice", key=root / "keys" / "alice.key", workspace=root / "alice-ws", max_epsilon=2.0,
                        datasets=("titanic",), listen=c_addr, provider_address=provider.address, provider_public_key=p.pubs["provider"],
                        tls=p.tls["alice"])
    client = ClientServer(ccfg).start()
    ch = open_channel(client.address, p.tls["orchestrator"])
    yield {"p": p, "provider": provider, "client": client, "orch": client_pb2_grpc.ClientServiceStub(ch), "state": {}}
    ch.close()
    client.stop()
    provider.stop()


def test_both_servers_report_serving_over_grpc_health(world):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for addr, svc in ((world["provider"].address, "llamdex.v1.ProviderService"), (world["client"].address, "llamdex.v1.ClientService")):
        with open_channel(addr, world["p"].tls["orchestrator"]) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=svc), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_client_refuses_requests_outside_its_policy(world):
    orch = world["orch"]
    for req, status, code in (
        (client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=10.0), grpc.StatusCode.FAILED_PRECONDITION, "POLICY_REFUSED"),
        (client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=0.0), grpc.StatusCode.FAILED_PRECONDITION, "POLICY_REFUSED"),
        (client_pb2.TrainExpertRequest(dataset_id="churn", max_epsilon=1.0), grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET"),
    ):
        with pytest.raises(grpc.RpcError) as ei:
            orch.TrainExpert(req, timeout=30)
        assert (ei.value.code(), error_code(ei.value)) == (status, code)
    with open_channel(world["client"].address, world["p"].tls["bob"]) as ch:   # a certificate the client does not allow
        with pytest.raises(grpc.RpcError) as ei:
            client_pb2_grpc.ClientServiceStub(ch).Hello(client_pb2.ClientHelloRequest(), timeout=10)
    assert (ei.value.code(), error_code(ei.value)) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


def test_train_and_hand_over_returns_a_receipt_the_client_verified_and_kept(world, caplog):
    with caplog.at_level("INFO", logger="llamdex.provider"):
        resp = world["orch"].TrainExpert(client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=1.0, epochs=5, upload=True), timeout=600)
    refused = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert refused == [], refused   # a first upload asks no GetUploadStatus for an id the provider never saw
    r = verify_receipt(receipt_envelope(resp.receipt), world["p"].pubs["provider"])
    dp = json.loads(resp.dp_statement_json)
    assert r.kind == "upload" and r.client_id == "alice" and r.artifact_digest == resp.artifact_digest
    assert dp["mechanism"] == "dp-sgd" and dp["epsilon"] <= 1.0 and abs(r.epsilon_recomputed - dp["epsilon"]) < 1e-6
    held = world["orch"].ListReceipts(client_pb2.ListReceiptsRequest(), timeout=30)
    assert [x.digest for x in held.receipts] == [r.digest]
    assert world["provider"].servicer.party.ledger.verify_chain() == []
    world["state"]["digest"] = resp.artifact_digest


def test_customize_streams_progress_then_reuses_connectors_and_delivers_the_result(world):
    import time

    digest = world["state"]["digest"]
    events = list(world["orch"].Customize(client_pb2.ClientCustomizeRequest(artifact_digest=digest), timeout=900))
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and len(events) >= 4
    last = events[-1]
    assert last.state == common_pb2.JOB_STATE_SUCCEEDED and not last.result.connectors_reused
    check = json.loads(last.result.metrics_json)["self_check"]  # the connectors' own extraction check travels with the result
    assert {"passed", "missed", "retrain_rounds", "thresholds"} <= set(check)
    again = list(world["orch"].Customize(client_pb2.ClientCustomizeRequest(artifact_digest=digest), timeout=120))
    assert again[-1].state == common_pb2.JOB_STATE_SUCCEEDED and again[-1].result.connectors_reused
    jobs = world["client"].party.workspace / "jobs"
    for _ in range(50):   # the provider pushes the result to the client's ClientService as well
        if len(list(jobs.glob("*.delivered.json"))) >= 2:
            break
        time.sleep(0.1)
    assert {p.name.split(".")[0] for p in jobs.glob("*.delivered.json")} == {last.job_id, again[-1].job_id}


def test_ask_single_and_batched_equals_the_in_process_model(world):
    import torch

    from protocol.artifact import ArtifactVerifier
    from protocol.expert_spec import load_expert_state
    from provider_party.model.connector_store import ConnectorStore

    p, digest = world["p"], world["state"]["digest"]
    questions = ["A woman of 29 travelled in first class. Did she survive?",
                 "Here is the record of a passenger. sex: male, age: 40, passenger class: 3rd. Did this passenger survive?",
                 "Consider a passenger: a 5 year old girl in second class. Did she survive?",
                 "The passenger is a man of 62, first class. Did he survive?"]
    with provider_client(p, world["provider"].address) as pc:
        single = pc.ask(questions[:1], artifact_digest=digest)
        batch = pc.ask_raw(questions, artifact_digest=digest, include_base=True)
    assert len(single) == 1 and len(batch.answers) == 4 and list(batch.verbalizers)
    svc = world["provider"].servicer.party
    folder = world["client"].party.index()[digest]["folder"]
    verified = ArtifactVerifier([p.keys["alice"].public_key()]).verify(folder)
    expert = load_expert_state(verified.spec, verified.load_tensors())
    model = ConnectorStore(svc.config.connectors).load(svc.ensure_base(), verified.schema)
    local = model.answer(questions, expert).probs
    remote = torch.tensor([list(a.probs) for a in batch.answers], dtype=torch.float64)
    assert torch.allclose(remote, local.double(), atol=1e-5)
    one = torch.tensor(list(single[0].probs), dtype=torch.float64)
    assert torch.allclose(one, model.answer(questions[:1], expert).probs[0].double(), atol=1e-5)
    assert all(len(a.base_probs) == len(a.probs) for a in batch.answers)


def test_evaluate_scores_heldout_questions_asked_through_the_provider(world):
    resp = world["orch"].Evaluate(client_pb2.EvaluateRequest(max_questions=8, batch_size=4, include_base=False), timeout=600)
    methods = {r.method: r for r in resp.rows}
    assert set(methods) == {"expert", "llamdex", "majority_class"} and resp.ask_calls == 2
    assert all(0.0 <= r.accuracy <= 1.0 and r.n_test == 8 for r in resp.rows)


def test_delivered_receipts_are_verified_before_they_are_kept(world):
    held = world["orch"].ListReceipts(client_pb2.ListReceiptsRequest(), timeout=30)
    again = world["orch"].DeliverReceipt(client_pb2.DeliverReceiptRequest(receipt=held.receipts[0]), timeout=30)
    assert not again.stored and again.sequence == 1
    env = receipt_envelope(held.receipts[0])
    env["signatures"][0]["sig"] = env["signatures"][0]["sig"][:-8] + "AAAAAAA="   # a forged signature
    with pytest.raises(grpc.RpcError) as ei:
        world["orch"].DeliverReceipt(client_pb2.DeliverReceiptRequest(receipt=receipt_message(env)), timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_code(ei.value) in ("BAD_SIGNATURE", "BAD_RECEIPT")


def test_forget_deletes_expert_and_connectors_with_a_signed_deletion_receipt(world):
    p, digest = world["p"], world["state"]["digest"]
    svc = world["provider"].servicer.party
    store = world["client"].party.store
    with provider_client(p, world["provider"].address, store=store) as pc:
        receipts, deleted = pc.forget(digest)
        assert [r.kind for r in receipts] == ["deletion"] and receipts[0].deleted == ("expert", "connectors")
        assert f"expert:{digest}" in deleted and any(d.startswith("connectors:") for d in deleted)
        with pytest.raises(grpc.RpcError) as ei:
            pc.ask(["Did she survive?"], artifact_digest=digest)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        chain = verify_chain(pc.ledger_receipts(), p.pubs["provider"])
    assert [r.kind for r in chain] == ["upload", "deletion"] and chain[1].spent_after == chain[0].spent_after
    assert [r.digest for r in store.verify()] == [r.digest for r in chain]
    assert svc.experts.live("alice") == [] and svc.ledger.verify_chain() == []
    assert not svc.connectors.path_for(svc.base_model_id(), chain[0].artifact_digest).exists()


def test_a_table_that_violates_its_schema_is_refused_without_a_private_value_reaching_the_caller(world, tmp_path):
    """The orchestrator (or provider) that asks a client to train learns how many problems of which kinds in which
    public columns, never a cell value, a row number or the file's name: those are the data owner's."""
    from client_party.datasets import TableRef

    p = world["p"]
    secret = "73981244551902"                    # a value that must not leave the client
    table = tmp_path / "payroll-private.csv"
    table.write_text("sex,age,passengerClass,survived\nfemale,29,1st,yes\nmale," + secret + ",3rd,no\nmale,abc,2nd,no\n")
    titanic = tmp_path / "payroll-private.csv.schema.json"
    from client_party.datasets import load_schema

    titanic.write_text(json.dumps(load_schema("titanic").to_dict()))
    ccfg = ClientConfig(client_id="alice", key=p.root / "keys" / "alice.key", workspace=tmp_path / "ws", max_epsilon=2.0, datasets=(),
                        tables={"payroll": TableRef.parse(str(table))}, listen="127.0.0.1:0", provider_address=world["provider"].address,
                        provider_public_key=p.pubs["provider"], tls=p.tls["alice"])
    client = ClientServer(ccfg).start()
    try:
        with open_channel(client.address, p.tls["orchestrator"]) as ch, pytest.raises(grpc.RpcError) as ei:
            client_pb2_grpc.ClientServiceStub(ch).TrainExpert(client_pb2.TrainExpertRequest(dataset_id="payroll", max_epsilon=1.0), timeout=60)
    finally:
        client.stop()
    e = ei.value
    assert (e.code(), error_code(e)) == (grpc.StatusCode.FAILED_PRECONDITION, "DATA_INVALID")
    msg = e.details()
    assert "2 problem(s)" in msg and "age (" in msg and "out_of_range" in msg and "non_numeric" in msg
    for private in (secret, "abc", "payroll-private", "row "):
        assert private not in msg, (private, msg)
