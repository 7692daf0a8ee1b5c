"""Security properties, each tried against the real services: TLS 1.3 only between the parties, private key
files 0600, the request replay window, client key revocation, receipt key rotation, budget changes as signed
events in the ledger's hash chain (and what the audit says about a budget no event explains, in format v2 and
in an old v1 ledger), and Forget removing an expert's files, its cached tensors and what was derived from it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import ssl
import stat
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from protocol.artifact import pack_artifact
from protocol.errors import KeyMaterialError, ReceiptError
from protocol.keys import fingerprint, generate_keypair, generate_private_key, load_private_key, save_private_key, save_public_key
from protocol.receipts import GENESIS_DIGEST, issue_receipt, verify_chain, verify_receipt
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.rpc_errors import error_code
from provider_party.service.ledger import LEDGER_FORMAT, LEDGER_FORMAT_V1, Ledger
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import dp_statement, make_artifact, make_parties, provider_client, provider_config


@pytest.fixture
def parties(tmp_path):
    return make_parties(tmp_path)


def _code(ei) -> tuple[grpc.StatusCode, str | None]:
    return ei.value.code(), error_code(ei.value)


# --- TLS 1.3 only -------------------------------------------------------------------------------------------------

def _handshake(address: str, tls, version: ssl.TLSVersion) -> str:
    """A raw TLS handshake with the party's own client certificate, pinned to one TLS version."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as sock, ctx.wrap_socket(sock, server_hostname="localhost") as s:
        return s.version()


def test_both_services_speak_tls_1_3_only(parties):
    from client_party.config import ClientConfig
    from client_party.service import ClientServer
    from simulations.two_party_demo import free_port

    p = parties
    provider = ProviderServer(provider_config(p)).start()
    ccfg = ClientConfig(client_id="alice", key=p.root / "keys" / "alice.key", workspace=p.root / "ws", listen=f"127.0.0.1:{free_port()}",
                        provider_address=provider.address, provider_public_key=p.pubs["provider"], tls=p.tls["alice"])
    client = ClientServer(ccfg).start()
    try:
        for address in (provider.address, client.address):
            assert _handshake(address, p.tls["orchestrator"], ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                _handshake(address, p.tls["orchestrator"], ssl.TLSVersion.TLSv1_2)
        with provider_client(p, provider.address) as pc:           # and gRPC itself still connects (over TLS 1.3)
            assert pc.hello().client_id == "alice"
    finally:
        client.stop()
        provider.stop()


# --- key files --------------------------------------------------------------------------------------------------

def test_every_private_key_file_is_0600_from_the_first_byte_and_a_readable_one_is_refused(tmp_path):
    from protocol.tls import make_certs

    priv, pub, _ = generate_keypair(tmp_path / "keys", "alice")
    tls = make_certs(tmp_path / "certs", {"provider": ["localhost"], "alice": ["localhost"]})
    keys = [priv, tmp_path / "certs" / "ca.key"] + [t.key for t in tls.values()]
    for k in keys:
        assert stat.S_IMODE(os.stat(k).st_mode) == 0o600, k
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644
    os.chmod(priv, 0o640)
    with pytest.raises(KeyMaterialError) as ei:
        load_private_key(priv)
    assert ei.value.code == "KEY_PERMISSIONS" and "chmod 600" in str(ei.value)
    with pytest.raises(KeyMaterialError) as ei:                      # never overwritten by accident
        save_private_key(generate_private_key(), tmp_path / "keys" / "alice.key")
    assert ei.value.code == "KEY_EXISTS"


# --- replay window ----------------------------------------------------------------------------------------------

def _signed_header(p, tar: bytes, upload_id: str, *, timestamp_ms: int | None = None, nonce: bytes | None = None):
    from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body

    h = provider_pb2.UploadHeader(upload_id=upload_id, dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                                  artifact_sha256=hashlib.sha256(tar).hexdigest())
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(p.keys["alice"], "alice", UPLOAD_METHOD, upload_body(h),
                                                               timestamp_ms=timestamp_ms, nonce=nonce).to_proto_kwargs()))
    return h


def test_the_replay_window_is_enforced_and_survives_a_restart(parties):
    p = parties
    cfg = provider_config(p, limits=replace(provider_config(p).limits, signature_max_skew_ms=60_000))
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    now = int(time.time() * 1000)

    def send(header):
        with provider_client(p, server.address) as pc:
            return pc.stub.UploadExpert(iter([provider_pb2.UploadRequest(header=header)]), timeout=30)

    server = ProviderServer(cfg).start()
    try:
        inside = _signed_header(p, tar, "w" * 20, timestamp_ms=now - 50_000)       # 50 s old: inside the ±60 s window
        assert send(inside).complete is False                                      # accepted (no bytes yet)
        for ts in (now - 70_000, now + 70_000):                                    # 70 s old or 70 s ahead: outside
            with pytest.raises(grpc.RpcError) as ei:
                send(_signed_header(p, tar, "x" * 20, timestamp_ms=ts))
            assert _code(ei) == (grpc.StatusCode.UNAUTHENTICATED, "STALE_REQUEST") and "±60 s" in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:                                   # the same signed header again
            send(inside)
        assert _code(ei) == (grpc.StatusCode.UNAUTHENTICATED, "REPLAYED_REQUEST")
    finally:
        server.stop()
    server = ProviderServer(cfg).start()                                           # the nonce cache is on disk
    try:
        with pytest.raises(grpc.RpcError) as ei:
            send(inside)
        assert _code(ei) == (grpc.StatusCode.UNAUTHENTICATED, "REPLAYED_REQUEST")
        assert server.servicer.party.ledger.count() == 0
    finally:
        server.stop()


# --- client key revocation ----------------------------------------------------------------------------------------

def test_a_revoked_client_key_is_refused_and_its_receipts_still_verify_and_say_so(parties):
    from simulations.audit import run_audit

    p = parties
    cfg = provider_config(p)
    server = ProviderServer(cfg).start()
    party = server.servicer.party
    try:
        with provider_client(p, server.address) as pc:
            first = pc.upload(make_artifact(p.root / "a1", p.keys["alice"]), "titanic")
        rev = party.revoke_client_key("alice", fingerprint(p.keys["alice"]), "laptop lost")
        with provider_client(p, server.address) as pc:
            for call in (pc.hello, lambda: pc.upload(make_artifact(p.root / "a2", p.keys["alice"], seed=2), "titanic"),
                         lambda: pc.ask(["a question"]), pc.ledger):
                with pytest.raises(grpc.RpcError) as ei:
                    call()
                assert _code(ei) == (grpc.StatusCode.PERMISSION_DENIED, "KEY_REVOKED")
                msg = ei.value.details()
                assert fingerprint(p.keys["alice"]) in msg and "laptop lost" in msg and "receipts it earned stay valid" in msg
                assert "llamdex keygen --name alice" in msg and "--key" in msg and '[[clients]] id = "alice"' in msg   # what to do
        with provider_client(p, server.address, "bob") as pc:                      # other clients are not affected
            assert pc.hello().client_id == "bob"
    finally:
        server.stop()
    ledger = party.ledger
    assert verify_receipt(first.receipt_envelope, p.pubs["provider"]).receipt_id == first.receipt.receipt_id
    assert ledger.verify_chain() == [] and ledger.count() == 1
    assert ledger.revocations()[fingerprint(p.keys["alice"])].seq == rev.seq
    report = run_audit(ledger=ledger.path, provider_key=p.pubs["provider"])
    assert report.ok, report.render()
    said = [f for f in report.findings if f.check == "client key"]
    assert len(said) == 1 and "revoked" in said[0].detail and "laptop lost" in said[0].detail and first.receipt.receipt_id in said[0].subject

    # the revocation is in the chain: a restart keeps refusing; the operator registers a new key, which works
    server = ProviderServer(cfg).start()
    try:
        with provider_client(p, server.address) as pc, pytest.raises(grpc.RpcError) as ei:
            pc.hello()
        assert _code(ei)[1] == "KEY_REVOKED"
    finally:
        server.stop()
    new_priv, new_pub, new_key = generate_keypair(p.root / "keys", "alice-2")
    regs = tuple(replace(c, public_key=new_key.public_key()) if c.client_id == "alice" else c for c in cfg.clients)
    server = ProviderServer(replace(cfg, clients=regs)).start()
    try:
        from client_party.provider_client import ProviderClient

        with ProviderClient(server.address, "alice", new_key, tls=p.tls["alice"], provider_public_key=p.pubs["provider"]) as pc:
            second = pc.upload(make_artifact(p.root / "a3", new_key, seed=3), "titanic")
            assert second.receipt.sequence == 2                                   # the same client's receipt chain goes on
            assert [r.sequence for r in verify_chain(pc.ledger_receipts(), p.pubs["provider"])] == [1, 2]
    finally:
        server.stop()


def test_revocations_configured_for_a_client_are_recorded_once_as_chain_events(parties, tmp_path):
    from provider_party.service.config import load_provider_config
    from simulations.two_party_demo import write_provider_config

    p = parties
    old = generate_private_key()
    save_public_key(old, p.root / "keys" / "alice-old.pub")
    path = write_provider_config(p.root / "provider" / "provider.toml", listen="127.0.0.1:0", clients=[
        {"id": "alice", "public_key": "../keys/alice.pub", "revoked_keys": [{"key": "../keys/alice-old.pub", "reason": "rotated 2024"}]}])
    cfg = replace(load_provider_config(path), tls=p.tls["provider"], preload=False)
    from provider_party.service.core import ProviderParty

    for _ in range(2):
        party = ProviderParty(cfg)
        assert list(party.ledger.revocations()) == [fingerprint(old)]
        assert party.ledger.revocations()[fingerprint(old)].reason == "rotated 2024"
        party.close()
    assert len(party.ledger.events("revocation")) == 1 and party.ledger.verify_chain() == []


# --- receipt key rotation ---------------------------------------------------------------------------------------

def test_a_rotated_receipt_key_is_trusted_through_the_key_list_and_old_receipts_still_verify(parties):
    from client_party.receipt_store import ReceiptStore
    from protocol.receipt_keys import KeyList, rotate
    from simulations.audit import run_audit

    p = parties
    cfg = provider_config(p)
    store = ReceiptStore(p.root / "alice-receipts.db", "alice", p.pubs["provider"])
    server = ProviderServer(cfg).start()
    try:
        with provider_client(p, server.address, store=store) as pc:
            old = pc.upload(make_artifact(p.root / "a1", p.keys["alice"]), "titanic")
    finally:
        server.stop()
    # the operator rotates: the old key endorses the new one in the key list; the provider signs with the new key
    new_path = p.root / "keys" / "provider-2.key"
    new_key = generate_private_key()
    save_private_key(new_key, new_path)
    key_list = p.root / "keys" / "receipt-keys.json"
    rotate(key_list, p.keys["provider"], new_key)
    server = ProviderServer(replace(cfg, key=new_path, receipt_keys=key_list)).start()
    try:
        hello = None
        with provider_client(p, server.address, store=store) as pc:               # the client still pins the OLD key
            hello = pc.hello()
            assert hello.provider_key_fingerprint == fingerprint(new_key)
            assert KeyList.from_json(hello.receipt_keys_json).fingerprints() == [fingerprint(p.keys["provider"]), fingerprint(new_key)]
            new = pc.upload(make_artifact(p.root / "a2", p.keys["alice"], seed=2), "titanic")
        assert new.receipt.provider_key == fingerprint(new_key) and old.receipt.provider_key == fingerprint(p.keys["provider"])
        with provider_client(p, server.address, store=store) as pc:               # a new process (`llamdex client upload`): no Hello by hand
            third = pc.upload(make_artifact(p.root / "a3", p.keys["alice"], seed=3), "titanic")
        assert third.receipt.provider_key == fingerprint(new_key)
        chain = store.verify()                                                    # each receipt under the key that signed it
        assert [(r.sequence, r.provider_key) for r in chain] == [(1, fingerprint(p.keys["provider"])), (2, fingerprint(new_key)),
                                                                 (3, fingerprint(new_key))]
        ledger = server.servicer.party.ledger
        assert [e.kind for e in ledger.events("receipt_key")] == ["receipt_key"]
        assert ledger.verify_chain(p.pubs["provider"]) == []                      # trust follows the endorsement from the old key
        receipts = p.root / "receipts.json"
        store.export(receipts)
        report = run_audit(ledger=ledger.path, receipts=[receipts], provider_key=key_list)   # `llamdex audit --provider-key LIST`
        assert report.ok, report.render()
        assert not run_audit(receipts=[receipts], provider_key=p.pubs["provider"]).ok   # the old key alone cannot check the new receipt
    finally:
        server.stop()


def test_a_new_receipt_key_without_the_old_keys_endorsement_is_refused_by_the_client(parties):
    from client_party.receipt_store import ReceiptStore

    p = parties
    cfg = provider_config(p)
    impostor = p.root / "keys" / "impostor.key"
    save_private_key(generate_private_key(), impostor)
    server = ProviderServer(replace(cfg, key=impostor)).start()
    try:
        with provider_client(p, server.address, store=ReceiptStore(p.root / "r.db", "alice", p.pubs["provider"])) as pc, \
                pytest.raises(ReceiptError) as ei:
            pc.hello()
        assert ei.value.code == "UNTRUSTED_KEY" and "no receipt key list" in str(ei.value)
        with provider_client(p, server.address) as pc, pytest.raises(ReceiptError) as ei:   # an upload stops before it is charged
            pc.upload(make_artifact(p.root / "a-impostor", p.keys["alice"]), "titanic")
        assert ei.value.code == "UNTRUSTED_KEY"
        assert server.servicer.party.ledger.receipts("alice") == []
    finally:
        server.stop()


# --- budgets: signed events in the hash chain -----------------------------------------------------------------------

def _received(party, client, tar: bytes, upload_id: str):
    """An upload whose bytes all arrived (through the upload manager, in-process), ready to finalize."""
    from types import SimpleNamespace

    h = SimpleNamespace(upload_id=upload_id, dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                        artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=0)
    session = party.uploads.open(client, h)
    session.write(0, tar, hashlib.sha256(tar).hexdigest(), len(tar))
    session.close()
    return session.record


def _tamper(path: Path, sql: str) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(sql)
    con.close()


def test_a_budget_edited_in_the_database_is_a_discrepancy_and_fails_the_audit(parties):
    from provider_party.service.core import ProviderParty
    from simulations.audit import run_audit

    p = parties
    cfg = provider_config(p, budgets={"alice": 4.0})
    party = ProviderParty(cfg)
    rec = _received(party, cfg.client("alice"), pack_artifact(make_artifact(p.root / "a", p.keys["alice"])), "u" * 20)
    party.uploads.finalize(rec, cfg.client("alice"), party.ledger, party.experts, party.ledger_lock)
    events = party.ledger.events("budget")
    assert [(e.kind, e.budget) for e in events] == [("budget", 4.0)]              # registered at the first upload, as an event
    assert run_audit(ledger=party.ledger.path, provider_key=p.pubs["provider"]).ok
    _tamper(party.ledger.path, "UPDATE budgets SET epsilon_budget = 100 WHERE client_id = 'alice'")
    reasons = [d.reason for d in party.ledger.verify_chain()]
    assert any("100" in r and "no chain event explains" in r for r in reasons), reasons
    report = run_audit(ledger=party.ledger.path, provider_key=p.pubs["provider"])
    assert not report.ok and any("no chain event explains" in f.detail for f in report.failures), report.render()
    party.close()


def test_a_budget_change_is_a_signed_chain_event_the_audit_accepts(parties):
    from provider_party.service.core import ProviderParty
    from simulations.audit import run_audit

    p = parties
    party = ProviderParty(provider_config(p, budgets={"alice": 2.0}))
    rec = _received(party, party.config.client("alice"), pack_artifact(make_artifact(p.root / "a", p.keys["alice"])), "u" * 20)
    party.uploads.finalize(rec, party.config.client("alice"), party.ledger, party.experts, party.ledger_lock)
    party.close()
    raised = ProviderParty(provider_config(p, budgets={"alice": 3.0}))            # the operator raised it: an event, signed
    events = raised.ledger.events("budget")
    assert [e.budget for e in events] == [2.0, 3.0]
    from protocol.receipts import verify_ledger_event

    ev = verify_ledger_event(events[-1].receipt, p.pubs["provider"])
    assert ev.fields["previous"] == {"epsilon_budget": 2.0, "delta_budget": None} and ev.fields["epsilon_budget"] == 3.0
    assert raised.ledger.verify_chain(p.pubs["provider"]) == []
    assert run_audit(ledger=raised.ledger.path, provider_key=p.pubs["provider"]).ok
    raised.close()
    # an event signed by another key, appended by someone who edits the file, does not verify
    forger = Ledger(raised.ledger.path, generate_private_key())
    forger.set_budget("alice", "titanic", 50.0)
    reasons = [d.reason for d in Ledger(raised.ledger.path).verify_chain(p.pubs["provider"])]
    assert any("does not verify" in r or "receipt key" in r for r in reasons), reasons


def _write_v1_ledger(path: Path, key) -> None:
    """A ledger as format v1 wrote it (budgets outside the chain): schema, two uploads, the budgets row."""
    from protocol.canonical import LEGACY, digest_json, sha256_hex

    cols = ("seq", "entry_digest", "prev_digest", "client_id", "dataset_id", "kind", "artifact_digest", "epsilon", "delta", "spent_before",
            "spent_after", "budget", "delta_spent_before", "delta_spent_after", "delta_budget", "receipt_id", "receipt_seq", "receipt_digest",
            "receipt", "created_at")
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE entries (seq INTEGER PRIMARY KEY, entry_digest TEXT NOT NULL UNIQUE, prev_digest TEXT NOT NULL, client_id TEXT NOT NULL,
            dataset_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('upload', 'deletion')), artifact_digest TEXT NOT NULL, epsilon REAL,
            delta REAL NOT NULL, spent_before REAL, spent_after REAL, budget REAL, delta_spent_before REAL NOT NULL, delta_spent_after REAL NOT NULL,
            delta_budget REAL, receipt_id TEXT NOT NULL UNIQUE, receipt_seq INTEGER NOT NULL, receipt_digest TEXT NOT NULL, receipt TEXT NOT NULL,
            created_at TEXT NOT NULL);
        CREATE TABLE budgets (client_id TEXT NOT NULL, dataset_id TEXT NOT NULL, epsilon_budget REAL, delta_budget REAL,
            epsilon_spent REAL DEFAULT 0, delta_spent REAL NOT NULL DEFAULT 0, last_seq INTEGER, PRIMARY KEY (client_id, dataset_id));
        INSERT INTO meta VALUES ('format', 'llamdex.ledger/v1');
    """)
    dp = dp_statement()
    prev, rprev, spent, dspent = GENESIS_DIGEST, GENESIS_DIGEST, 0.0, 0.0
    for seq in (1, 2):
        env = issue_receipt(key, sequence=seq, client_id="alice", dataset_id="titanic", artifact_digest="sha256:" + f"{seq:064x}",
                            epsilon_claimed=dp.epsilon, epsilon_recomputed=dp.epsilon, delta=dp.delta, accountant="rdp",
                            accountant_params={"mechanism": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100, "max_grad_norm": 1.0},
                            spent_before=spent, budget=4.0, previous_receipt_digest=rprev, delta_spent_before=dspent, ledger_seq=seq)
        st = json.loads(env.payload)
        row = {"seq": seq, "prev_digest": prev, "client_id": "alice", "dataset_id": "titanic", "kind": "upload",
               "artifact_digest": "sha256:" + f"{seq:064x}", "epsilon": dp.epsilon, "delta": dp.delta, "spent_before": spent,
               "spent_after": spent + dp.epsilon, "budget": 4.0, "delta_spent_before": dspent, "delta_spent_after": dspent + dp.delta,
               "delta_budget": None, "receipt_id": st["predicate"]["receipt_id"], "receipt_seq": seq,
               "receipt_digest": "sha256:" + sha256_hex(env.payload), "receipt": env.to_json(), "created_at": st["predicate"]["issued_at"]}
        row["entry_digest"] = digest_json({c: row[c] for c in cols if c not in ("entry_digest", "receipt")}, LEGACY)  # v1: before RFC 8785
        con.execute(f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", tuple(row[c] for c in cols))
        prev, rprev, spent, dspent = row["entry_digest"], row["receipt_digest"], row["spent_after"], row["delta_spent_after"]
    con.execute("INSERT INTO budgets VALUES ('alice', 'titanic', 4.0, NULL, ?, ?, 2)", (spent, dspent))
    con.close()


def test_an_old_v1_ledger_still_verifies_and_is_upgraded_by_the_provider_with_its_budgets_as_events(tmp_path):
    from simulations.audit import run_audit

    key = generate_private_key()
    path = tmp_path / "ledger.db"
    _write_v1_ledger(path, key)
    ro = Ledger(path)                                                                     # the audit's view: read as v1
    assert ro.format == LEDGER_FORMAT_V1 and ro.verify_chain(key.public_key()) == []
    report = run_audit(ledger=path, provider_key=key.public_key())
    assert report.ok and any(f.check == "format" and "v1" in f.detail for f in report.findings), report.render()
    _tamper(path, "UPDATE budgets SET epsilon_budget = 100")                              # even v1: the last entry recorded 4
    report = run_audit(ledger=path, provider_key=key.public_key())
    assert not report.ok and any("no chain entry explains" in f.detail for f in report.failures), report.render()
    _tamper(path, "UPDATE budgets SET epsilon_budget = 4")

    lg = Ledger(path, key)                                                                # the provider opens it: upgraded in place
    assert lg.format == LEDGER_FORMAT and lg.meta("format") == LEDGER_FORMAT and lg.meta("v2_from_seq") == "3"
    ev = lg.events("budget")
    from protocol.receipts import verify_ledger_event

    assert [(e.seq, e.budget) for e in ev] == [(3, 4.0)]
    assert "format v1" in verify_ledger_event(ev[0].receipt, key.public_key()).fields["reason"]
    assert lg.verify_chain(key.public_key()) == [] and lg.count() == 2
    up = lg.append_upload("alice", "titanic", "sha256:" + f"{3:064x}", dp_statement(), client_key="sha256:" + "c" * 64)
    assert up.seq == 4 and up.receipt_seq == 3 and lg.verify_chain(key.public_key()) == []
    assert [r.sequence for r in verify_chain(lg.receipts("alice"), key.public_key())] == [1, 2, 3]
    _tamper(path, "UPDATE budgets SET epsilon_budget = 100")
    assert any("no chain event explains" in d.reason for d in lg.verify_chain(key.public_key()))
    with pytest.raises(Exception) as ei:                                                  # an unknown format is refused, clearly
        _tamper(path, "UPDATE meta SET value = 'llamdex.ledger/v9' WHERE key = 'format'")
        Ledger(path)
    assert getattr(ei.value, "code", "") == "LEDGER_FORMAT" and "v9" in str(ei.value)


# --- Forget leaves nothing behind ---------------------------------------------------------------------------------

def _files_with(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if any(n in data for n in needles) or any(n.decode("latin-1") in str(f) for n in needles):
                hits.append(str(f))
    return hits


def test_forget_removes_the_experts_files_cached_tensors_and_derived_connectors(parties, base_llm, tiny_connectors, titanic_schema):
    from provider_party.model.connector_store import ConnectorStore

    p = parties
    cfg = provider_config(p)
    ConnectorStore(cfg.connectors).save(base_llm, titanic_schema, tiny_connectors)   # as if Customize had trained them
    server = ProviderServer(cfg).start()
    party = server.servicer.party
    party._base = base_llm
    art = make_artifact(p.root / "a", p.keys["alice"], seed=11)
    weights = (art / "expert.safetensors").read_bytes()
    try:
        with provider_client(p, server.address) as pc:
            up = pc.upload(art, "titanic")
            pc.ask(["Mrs. Ann Smith, 34, travelled in second class. Did she survive?"])   # loads and caches the expert
            assert ("alice", up.artifact_digest) in party._expert_cache
            hexd = up.artifact_digest.split(":")[1]
            state, conn = Path(cfg.state), party.connectors.path_for(party.base_model_id(), titanic_schema.digest)
            assert _files_with(state, [weights]) and conn.is_dir()
            receipts, deleted = pc.forget(up.artifact_digest)
        assert deleted == [f"expert:{up.artifact_digest}", f"connectors:{titanic_schema.digest}"]
        assert receipts[0].deleted == ("expert", "connectors")
        assert ("alice", up.artifact_digest) not in party._expert_cache and titanic_schema.digest not in party._models
        assert _files_with(state, [weights]) == []                                   # no copy of the weights anywhere in the state
        assert not any(hexd in str(f) for f in state.rglob("*")), [str(f) for f in state.rglob("*") if hexd in str(f)]
        assert not conn.exists() and not any(Path(cfg.connectors).rglob("connectors.json"))
        for sub in ("tmp", "trash", "staging", "live"):
            assert [f for f in (state / "experts" / sub).rglob("*") if f.is_file()] == []
        assert list((state / "uploads" / "parts").rglob("*.part")) == []
    finally:
        server.stop()
