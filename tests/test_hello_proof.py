"""The provider proves at Hello that it holds the pinned receipt key, before the client sends anything.

Tried against real services: an impostor with a certificate from the same CA that announces the real
provider's (public) key, and one that relays the client's challenge to the real provider under its own
certificate. Both are refused at Hello, and nothing reaches them."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from protocol.dsse import sign_envelope
from protocol.errors import ReceiptError
from protocol.hello_proof import HELLO_PROOF_PAYLOAD_TYPE, new_challenge, sign_hello_proof, verify_hello_proof
from protocol.keys import fingerprint, generate_private_key, public_key_pem, save_private_key
from protocol.receipts import issue_receipt
from protocol.rpc.llamdex.v1 import provider_pb2, provider_pb2_grpc
from protocol.rpc_errors import error_code
from protocol.tls import open_channel
from provider_party.service.server import ProviderServer
from provider_party.service.servicer import ProviderServicer
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config


@pytest.fixture
def parties(tmp_path):
    return make_parties(tmp_path)


# --- the proof itself ---------------------------------------------------------------------------------------------

def _refused(fn) -> str:
    with pytest.raises(ReceiptError) as ei:
        fn()
    assert ei.value.code == "PROVIDER_NOT_PROVEN"
    return str(ei.value)


def test_a_proof_checks_only_for_its_challenge_its_client_and_the_trusted_key():
    key, other = generate_private_key(), generate_private_key()
    challenge = new_challenge()
    proof = sign_hello_proof(key, provider_id="provider", client_id="alice", challenge=challenge)
    assert verify_hello_proof(proof, key.public_key(), client_id="alice", challenge=challenge).key_fingerprint == fingerprint(key)
    assert "another challenge" in _refused(lambda: verify_hello_proof(proof, key.public_key(), client_id="alice", challenge=new_challenge()))
    assert "'bob'" in _refused(lambda: verify_hello_proof(proof, key.public_key(), client_id="bob", challenge=challenge))
    assert "signature" in _refused(lambda: verify_hello_proof(proof, other.public_key(), client_id="alice", challenge=challenge))
    assert "no proof" in _refused(lambda: verify_hello_proof("", key.public_key(), client_id="alice", challenge=challenge))
    assert "malformed" in _refused(lambda: verify_hello_proof(
        sign_envelope(b"[]", HELLO_PROOF_PAYLOAD_TYPE, key).to_json(), key.public_key(), client_id="alice", challenge=challenge))


def test_a_receipt_signed_by_the_provider_is_not_a_proof():
    """DSSE signs the payload type: a genuine receipt (the provider's signature over other bytes) cannot stand in."""
    key = generate_private_key()
    receipt = issue_receipt(key, sequence=1, client_id="alice", dataset_id="t", artifact_digest="sha256:" + "0" * 64,
                            epsilon_claimed=1.0, epsilon_recomputed=1.0, delta=1e-5, accountant="rdp",
                            accountant_params={"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100}, spent_before=0.0,
                            budget=4.0, previous_receipt_digest="sha256:" + "0" * 64).to_json()
    assert "payloadType" in _refused(lambda: verify_hello_proof(receipt, key.public_key(), client_id="alice", challenge=new_challenge()))


def test_the_provider_refuses_a_challenge_of_the_wrong_size_and_signs_none_without_one(parties):
    p = parties
    server = ProviderServer(provider_config(p)).start()
    try:
        with open_channel(server.address, p.tls["alice"]) as ch:
            stub = provider_pb2_grpc.ProviderServiceStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.Hello(provider_pb2.HelloRequest(challenge=b"abc"), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_code(ei.value) == "BAD_REQUEST"
            assert "3 bytes" in ei.value.details()
            assert stub.Hello(provider_pb2.HelloRequest(), timeout=10).hello_proof == ""
    finally:
        server.stop()


# --- impostors at the provider's address -----------------------------------------------------------------------------

def _impostor(p, monkeypatch, hello) -> ProviderServer:
    """A provider server run by someone else with a certificate from the same CA (the monitor's), whose Hello is
    `hello(servicer, request, context)`; it records the uploads and questions that reach it."""
    impostor_key = p.root / "keys" / "impostor.key"
    save_private_key(generate_private_key(), impostor_key)
    monkeypatch.setattr(ProviderServicer, "Hello", hello)
    reached: list[str] = []
    for name in ("UploadExpert", "Ask"):
        def counted(self, request, context, _name=name, _real=getattr(ProviderServicer, name)):
            reached.append(_name)
            return _real(self, request, context)

        monkeypatch.setattr(ProviderServicer, name, counted)
    server = ProviderServer(replace(provider_config(p), key=impostor_key, tls=p.tls["orchestrator"],
                                    state=p.root / "impostor-state")).start()
    server.reached = reached
    return server


def _nothing_reaches(p, server: ProviderServer, says: str) -> None:
    """Alice's Hello, upload and questions to `server` are each refused (the Hello's reason naming `says`), and no
    upload or question reaches it."""
    question = "A 34-year-old man in second class: did he survive?"   # questions carry what end users tell
    with provider_client(p, server.address) as pc:
        assert says in _refused(pc.hello)
        _refused(lambda: pc.upload(make_artifact(p.root / "a", p.keys["alice"]), "titanic"))
        _refused(lambda: pc.ask([question]))
        _refused(lambda: pc.ask_raw([question]))
    assert server.reached == [] and server.servicer.party.ledger.receipts("alice") == []


def test_an_impostor_announcing_the_providers_public_key_is_refused_before_anything_is_uploaded_or_asked(parties, monkeypatch):
    p = parties
    genuine_hello = ProviderServicer.Hello

    def announce_the_real_key(self, request, context):   # the provider's public key is public: copy it into the Hello
        h = genuine_hello(self, request, context)
        h.provider_public_key_pem = public_key_pem(p.keys["provider"]).decode("ascii")
        h.provider_key_fingerprint = fingerprint(p.keys["provider"])
        return h

    server = _impostor(p, monkeypatch, announce_the_real_key)
    try:
        _nothing_reaches(p, server, "signature")
    finally:
        server.stop()


def test_an_impostor_relaying_the_challenge_to_the_real_provider_is_refused(parties, monkeypatch):
    """The relay holds a certificate the real provider knows (bob's) and passes alice's challenge on: the real
    provider signs it for bob, and alice sees that."""
    p = parties
    real = ProviderServer(provider_config(p)).start()

    def relay(self, request, context):
        with open_channel(real.address, p.tls["bob"]) as ch:
            h = provider_pb2_grpc.ProviderServiceStub(ch).Hello(request, timeout=10)
        h.client_id = "alice"
        return h

    server = _impostor(p, monkeypatch, relay)
    try:
        _nothing_reaches(p, server, "relaying")
        with provider_client(p, real.address) as pc:   # the real provider proves itself to alice
            assert pc.hello().hello_proof
    finally:
        server.stop()
        real.stop()
