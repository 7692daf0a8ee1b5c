"""The provider tells its operator what it does: one INFO line per event (a client connecting, an upload
accepted with its receipt, a connector job's start, progress and end, each Ask batch with its counts and
latency) and one WARNING line per refusal (budget, unknown client), never a question's text.

The provider's base LLM is the session's model, handed to it before the first call (its loading is
not under test); the connectors are the session's tiny set, stored as an earlier Customize would have.
"""

from __future__ import annotations

import logging
import time

import grpc
import pytest

from protocol.wire import JOB_STATE_NAMES
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import dp_statement, make_artifact, make_parties, provider_client, provider_config

QUESTION = "Mrs. Zelda Quist, 41, travelled in second class. Did she survive?"


def lines(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def test_each_event_is_one_log_line_and_refusals_say_why(tmp_path, caplog, base_llm, titanic_schema, tiny_connectors):
    from provider_party.model.connector_store import ConnectorStore

    caplog.set_level(logging.INFO)
    p = make_parties(tmp_path)
    ConnectorStore(tmp_path / "connectors").save(base_llm, titanic_schema, tiny_connectors)
    server = ProviderServer(provider_config(p, dataset_budgets={"alice": {"small": 0.01}}, preload=False)).start()
    server.servicer.party._base = base_llm
    try:
        with provider_client(p, server.address) as alice:
            alice.hello()
            up = alice.upload(make_artifact(tmp_path / "a", p.keys["alice"]), "titanic")
            job = alice.customize(up.artifact_digest)
            events = list(alice.watch_job(job.job_id))
            assert JOB_STATE_NAMES[events[-1].state] == "SUCCEEDED" and events[-1].result.connectors_reused
            alice.ask([QUESTION, QUESTION], up.artifact_digest)
            with pytest.raises(grpc.RpcError):      # over the dataset's budget
                alice.upload(make_artifact(tmp_path / "b", p.keys["alice"], seed=1, dp=dp_statement()), "small")
        with provider_client(p, server.address, "mallory") as mallory, pytest.raises(grpc.RpcError):
            mallory.hello()
        time.sleep(0.2)
    finally:
        server.stop(0)
    info = lines(caplog)
    one = lambda pred: [m for m in info if pred(m)]   # noqa: E731

    assert len(one(lambda m: m.startswith("client alice connected from ipv4:127.0.0.1:"))) == 1
    accepted = one(lambda m: m.startswith(f"upload {up.upload_id} from alice accepted"))
    assert len(accepted) == 1 and up.receipt.receipt_id in accepted[0]
    assert len(one(lambda m: m.startswith(f"Customize from alice: job {job.job_id} reuses stored connectors"))) == 1
    assert len(one(lambda m: m.startswith(f"job {job.job_id} started: connectors for schema"))) == 1
    assert one(lambda m: m.startswith(f"job {job.job_id}: loading base model"))
    assert len(one(lambda m: m.startswith(f"job {job.job_id} finished in") and "connectors reused" in m)) == 1
    asks = one(lambda m: m.startswith("Ask from alice: 2 question(s) answered in"))
    assert len(asks) == 1 and "(model " in asks[0] and up.artifact_digest[:19] in asks[0]

    warnings = lines(caplog, logging.WARNING)
    budget = [m for m in warnings if m.startswith("refused UploadExpert from alice")]
    assert len(budget) == 1 and "RESOURCE_EXHAUSTED [BUDGET_EXCEEDED]" in budget[0]
    unknown = [m for m in warnings if m.startswith("refused Hello from mallory")]
    assert len(unknown) == 1 and "PERMISSION_DENIED [UNREGISTERED_CLIENT]" in unknown[0]
    assert not any(QUESTION in r.getMessage() for r in caplog.records)
    assert all("\n" not in m for m in info)


def test_the_log_level_comes_from_the_flag_else_the_environment_else_the_config_else_info(monkeypatch):
    from argparse import Namespace

    from simulations.cli.provider_serve import server_log_level

    monkeypatch.delenv("LLAMDEX_LOG_LEVEL", raising=False)
    assert server_log_level(Namespace(log_level=None), None) == "info"
    assert server_log_level(Namespace(log_level=None), "warning") == "warning"
    monkeypatch.setenv("LLAMDEX_LOG_LEVEL", "error")
    assert server_log_level(Namespace(log_level=None), "warning") == "error"
    assert server_log_level(Namespace(log_level="debug"), "warning") == "debug"
    assert server_log_level(Namespace(log_level=None, verbose=True), "warning") == "debug"
    monkeypatch.setenv("LLAMDEX_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit, match="LLAMDEX_LOG_LEVEL='loud'"):
        server_log_level(Namespace(log_level=None), None)
