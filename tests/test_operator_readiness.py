"""Readiness means ready: the provider's health reports liveness at once and readiness only after its
warm-up has loaded the base LLM, the stored connectors of live experts and those experts; `llamdex
health` asks either over mutual TLS, with exit statuses a probe can use.

The base LLM is the session's (tests/conftest.py `base_llm`): the provider's loader returns it after a
gate the test opens, so the test decides when "the model load" ends. Loading weights is not under test
here; what readiness waits for is.
"""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocol.tls import open_channel
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config

PROVIDER_SERVICE = "llamdex.v1.ProviderService"


@pytest.fixture
def gated_base(monkeypatch, base_llm):
    """The provider's `load_base_llm` returns the session's model once `gate` is set."""
    import provider_party.model.base_llm as base_module

    gate, calls = threading.Event(), []

    def load(*_a, **_k):
        calls.append(1)
        assert gate.wait(120), "the test never opened the gate"
        return base_llm

    monkeypatch.setattr(base_module, "load_base_llm", load)
    return gate, calls


def status(address: str, tls, service: str) -> str:
    with open_channel(address, tls) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def test_liveness_is_serving_at_once_and_readiness_only_after_the_base_llm_is_loaded(tmp_path, gated_base):
    gate, calls = gated_base
    p = make_parties(tmp_path)
    server = ProviderServer(provider_config(p, preload=True)).start()
    try:
        tls = p.tls["orchestrator"]            # any certificate of the CA may ask health; orchestrator is not a registered client
        assert status(server.address, tls, "") == "SERVING"
        assert status(server.address, tls, PROVIDER_SERVICE) == "NOT_SERVING"
        assert server.servicer.party._base is None and not server.ready.is_set()
        gate.set()
        assert server.ready.wait(60)
        assert server.servicer.party._base is not None and calls == [1]
        assert status(server.address, tls, PROVIDER_SERVICE) == "SERVING"
        assert server.ready_after_s is not None and server.warm_up is not None
    finally:
        gate.set()
        server.stop(0)


def test_without_preload_readiness_is_serving_at_once(tmp_path):
    p = make_parties(tmp_path)
    server = ProviderServer(provider_config(p, preload=False)).start()
    try:
        assert status(server.address, p.tls["orchestrator"], PROVIDER_SERVICE) == "SERVING"
        assert server.servicer.party._base is None       # the model loads at the first call that needs it
    finally:
        server.stop(0)


def test_the_warm_up_loads_stored_connectors_and_live_experts_so_the_first_ask_needs_no_loading(tmp_path, gated_base, tiny_connectors,
                                                                                               titanic_schema, base_llm, caplog):
    gate, _ = gated_base
    p = make_parties(tmp_path)
    first = ProviderServer(provider_config(p, clients=("alice",), preload=False)).start()
    with provider_client(p, first.address) as alice:
        up = alice.upload(make_artifact(tmp_path / "art", p.keys["alice"]), "titanic")
    first.stop(0)
    from provider_party.model.connector_store import ConnectorStore

    ConnectorStore(tmp_path / "connectors").save(base_llm, titanic_schema, tiny_connectors)   # what an earlier Customize stored

    caplog.set_level(logging.INFO)
    server = ProviderServer(provider_config(p, clients=("alice",), preload=True)).start()     # the restarted provider
    party = server.servicer.party
    try:
        assert status(server.address, p.tls["orchestrator"], PROVIDER_SERVICE) == "NOT_SERVING"
        assert party._models == {} and len(party._expert_cache) == 0
        gate.set()
        assert server.ready.wait(120)
        assert titanic_schema.digest in party._models
        assert ("alice", up.artifact_digest) in party._expert_cache
        assert server.warm_up.experts == 1 and server.warm_up.schemas == 1
        assert any("warm-up done" in r.getMessage() and "1 live expert(s)" in r.getMessage() for r in caplog.records)
        loads = []
        store = party.connectors
        original = store.load
        store.load = lambda *a, **k: loads.append(1) or original(*a, **k)
        with provider_client(p, server.address) as alice:
            answers = alice.ask(["A woman of 29 travelled in first class. Did she survive?"])
        assert len(answers) == 1 and answers[0].answer in ("Yes", "No")
        assert loads == []                                  # nothing was loaded for the first Ask
    finally:
        gate.set()
        server.stop(0)


def test_llamdex_health_reports_liveness_and_readiness_over_mutual_tls_with_probe_exit_statuses(tmp_path, gated_base, capsys):
    from simulations.cli.main import main

    gate, _ = gated_base
    p = make_parties(tmp_path)
    server = ProviderServer(provider_config(p, preload=True)).start()
    t = p.tls["orchestrator"]
    tls_flags = ["--ca", str(t.ca), "--cert", str(t.cert), "--tls-key", str(t.key)]
    try:
        assert main(["health", server.address, "--live", *tls_flags]) == 0
        assert "liveness: SERVING" in capsys.readouterr().out
        assert main(["health", server.address, "--ready", *tls_flags]) == 1
        assert "readiness (llamdex.v1.ProviderService): NOT_SERVING" in capsys.readouterr().out
        gate.set()
        assert main(["health", server.address, "--ready", "--wait", "60", *tls_flags]) == 0
        assert "readiness (llamdex.v1.ProviderService): SERVING" in capsys.readouterr().out
        assert main(["health", server.address, "--service", "no.such.Service", *tls_flags]) == 1
        assert "SERVICE_UNKNOWN" in capsys.readouterr().out
    finally:
        gate.set()
        server.stop(0)
    assert main(["health", server.address, "--live", *tls_flags]) == 7          # stopped: nothing answers
    err = capsys.readouterr().err.strip()
    assert "[UNREACHABLE]" in err and "\n" not in err


def test_llamdex_health_reads_the_tls_files_from_a_config(tmp_path, capsys):
    from simulations.cli.main import main
    from simulations.host_bundles import make_bundles

    b = make_bundles(tmp_path / "bundles", "127.0.0.1", "127.0.0.1", preset="tiny")
    p = make_parties(tmp_path / "other")
    from protocol.tls import TLSFiles

    cfg = provider_config(p, preload=False, tls=TLSFiles(b.provider / "certs" / "ca.pem", b.provider / "certs" / "provider.pem",
                                                          b.provider / "certs" / "provider.key"))
    server = ProviderServer(cfg).start()
    try:
        for config in (b.client / "client.toml", b.provider / "provider.toml"):   # the client's certificate, or the provider's own
            assert main(["health", server.address, "--config", str(config)]) == 0, capsys.readouterr()
            assert "readiness (llamdex.v1.ProviderService): SERVING" in capsys.readouterr().out
        with pytest.raises(grpc.RpcError):   # and without a certificate of that CA, nothing answers
            status(server.address, p.tls["orchestrator"], "")
    finally:
        server.stop(0)
