"""No private key ever leaves its file: a whole two-party run (train + upload, customize, evaluate through Ask,
receipts, Forget) with every log record at DEBUG, everything printed, and every gRPC message in both
directions recorded, searched for the material of every private key of the run (both signing keys, the
CA key and the three TLS keys) in every encoding a leak would take: PEM lines, DER, the private scalar
as raw bytes, hex, base64 and decimal."""

from __future__ import annotations

import base64
import logging
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from protocol.keys import load_private_key
from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc


class _Recorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor,
                grpc.StreamStreamClientInterceptor):
    """Keeps the serialized bytes of every request sent and every response received on a channel."""

    def __init__(self, sink: list[bytes]):
        self.sink = sink

    def _keep(self, msg: Any) -> Any:
        self.sink.append(msg if isinstance(msg, (bytes, bytearray, memoryview)) and not hasattr(msg, "SerializeToString")
                         else msg.SerializeToString())
        return msg

    def _requests(self, it: Any) -> Any:
        for m in it:
            yield self._keep(m)

    def _responses(self, it: Any) -> Any:
        for m in it:
            yield self._keep(m)

    def intercept_unary_unary(self, cont, details, request):
        out = cont(details, self._keep(request))
        res = out.result()
        self._keep(res)
        return out

    def intercept_unary_stream(self, cont, details, request):
        return self._responses(cont(details, self._keep(request)))

    def intercept_stream_unary(self, cont, details, request_iterator):
        out = cont(details, self._requests(request_iterator))
        try:
            self._keep(out.result())
        except grpc.RpcError:
            pass
        return out

    def intercept_stream_stream(self, cont, details, request_iterator):
        return self._responses(cont(details, self._requests(request_iterator)))


def _needles(key_file) -> dict[str, bytes]:
    """Every form in which the private key of `key_file` could leak."""
    key = load_private_key(key_file)
    scalar = key.private_numbers().private_value
    raw = scalar.to_bytes((key.curve.key_size + 7) // 8, "big")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem_lines = [ln for ln in key_file.read_bytes().splitlines() if ln and not ln.startswith(b"-----")]
    out = {"raw scalar": raw, "scalar hex": raw.hex().encode(), "scalar HEX": raw.hex().upper().encode(),
           "scalar decimal": str(scalar).encode(), "scalar base64": base64.b64encode(raw), "DER": der,
           "DER base64": base64.b64encode(der)}
    out.update({f"PEM line {i}": ln for i, ln in enumerate(pem_lines)})
    return out


@pytest.fixture
def recorded_run(tmp_path, monkeypatch, base_llm, tiny_connectors, titanic_schema, caplog, capfd):
    import client_party.provider_client as pclient
    import provider_party.service.servicer as servicer
    from client_party.config import ClientConfig
    from client_party.service import ClientServer
    from protocol.tls import open_channel
    from provider_party.model.connector_store import ConnectorStore
    from provider_party.service.server import ProviderServer
    from simulations.two_party_demo import free_port
    from tests._grpc_fixtures import make_parties, provider_client, provider_config

    messages: list[bytes] = []

    def recording_channel(*a, **kw):
        return grpc.intercept_channel(open_channel(*a, **kw), _Recorder(messages))

    monkeypatch.setattr(pclient, "open_channel", recording_channel)
    monkeypatch.setattr(servicer, "open_channel", recording_channel)
    caplog.set_level(logging.DEBUG)
    p = make_parties(tmp_path)
    c_addr = f"127.0.0.1:{free_port()}"
    cfg = provider_config(p, callbacks={"alice": c_addr})
    ConnectorStore(cfg.connectors).save(base_llm, titanic_schema, tiny_connectors)
    provider = ProviderServer(cfg).start()
    provider.servicer.party._base = base_llm
    ccfg = ClientConfig(client_id="alice", key=p.root / "keys" / "alice.key", workspace=p.root / "alice-ws", max_epsilon=2.0,
                        datasets=("titanic",), listen=c_addr, provider_address=provider.address, provider_public_key=p.pubs["provider"],
                        tls=p.tls["alice"])
    client = ClientServer(ccfg).start()
    ch = recording_channel(client.address, p.tls["orchestrator"])
    orch = client_pb2_grpc.ClientServiceStub(ch)
    try:
        trained = orch.TrainExpert(client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=1.0, epochs=1, upload=True), timeout=600)
        events = list(orch.Customize(client_pb2.ClientCustomizeRequest(artifact_digest=trained.artifact_digest), timeout=600))
        scores = orch.Evaluate(client_pb2.EvaluateRequest(artifact_digest=trained.artifact_digest, max_questions=2, batch_size=1,
                                                          include_base=True), timeout=600)
        held = orch.ListReceipts(client_pb2.ListReceiptsRequest(), timeout=60)
        with provider_client(p, provider.address) as pc:
            pc.hello()
            pc.ledger()
            receipts, deleted = pc.forget(trained.artifact_digest)
    finally:
        ch.close()
        client.stop()
        provider.stop()
    out, err = capfd.readouterr()
    logs = "\n".join(caplog.messages) + "\n" + "\n".join(r.getMessage() for r in caplog.records)
    keys = {"provider signing key": p.root / "keys" / "provider.key", "alice signing key": p.root / "keys" / "alice.key",
            "CA key": p.certs / "ca.key", **{f"{n} TLS key": p.tls[n].key for n in ("provider", "alice", "orchestrator")}}
    return {"messages": messages, "text": (logs + out + err).encode("utf-8", "replace"), "keys": keys,
            "did": (trained, events, scores, held, receipts, deleted)}


def test_no_private_key_material_in_any_log_line_or_message_of_a_full_run(recorded_run):
    trained, events, scores, held, receipts, deleted = recorded_run["did"]
    assert trained.receipt.envelope_json and events and scores.ask_calls >= 2 and len(held.receipts) == 1 and receipts and deleted
    messages, text = recorded_run["messages"], recorded_run["text"]
    assert len(messages) > 20 and len(text) > 1000          # the run was recorded: many messages, many log lines
    blob = b"\x00".join(messages)
    leaks = []
    for who, path in recorded_run["keys"].items():
        for form, needle in _needles(path).items():
            assert len(needle) >= 16, (who, form)             # long enough that a chance match is impossible
            if needle in blob:
                leaks.append(f"{who} ({form}) in a gRPC message")
            if needle in text:
                leaks.append(f"{who} ({form}) in the logs or output")
    assert leaks == []
    # the search can see what it looks for: a public key does travel (Hello), and is found in the messages
    from protocol.keys import public_key_der

    pub_der = public_key_der(load_private_key(recorded_run["keys"]["provider signing key"]))
    assert any(base64.b64encode(pub_der)[:40] in m.replace(b"\n", b"") for m in messages)
