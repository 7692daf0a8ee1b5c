"""Every bad input to the provider gets a precise gRPC status, changes no state and loses nothing stored.

One provider runs on loopback with mutual TLS for the module. Alice uploads one good expert first;
after each refusal the ledger (rows, head, chain), the budgets and the live experts are exactly as
before, and Alice's good expert still verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from tests._grpc_fixtures import dp_statement, make_artifact, make_parties, provider_client, provider_config
from protocol.artifact import SIGNATURE_FILE, pack_artifact, sign_artifact
from protocol.request_auth import FORGET_METHOD, UPLOAD_METHOD, forget_body, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.rpc_errors import error_code
from provider_party.service.config import ProviderLimits
from provider_party.service.server import ProviderServer

MiB = 1 << 20


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    parties = make_parties(root)
    limits = ProviderLimits(max_artifact_bytes=2 * MiB, max_chunk_bytes=256 * 1024, max_message_bytes=1 * MiB, max_requests_per_second=1000)
    server = ProviderServer(provider_config(parties, budgets={"alice": 100.0, "bob": 100.0},
                                                  dataset_budgets={"alice": {"budgettest": 3.0}}, limits=limits)).start()
    alice = provider_client(parties, server.address, "alice")
    good = alice.upload(make_artifact(root / "good", parties.keys["alice"]), "titanic")
    yield {"root": root, "p": parties, "server": server, "svc": server.servicer.party, "alice": alice, "good": good}
    alice.close()
    server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_uploads(env):
    """Every test shares Alice's provider: an unfinished upload a failing test leaves behind is expired after it,
    as `upload_ttl_s` would, so that one failure cannot fill `max_open_uploads` and fail the tests after it (it
    did on CI). A passing test leaves nothing that a later one needs."""
    yield
    uploads = env["svc"].uploads
    uploads._exec("UPDATE uploads SET updated_at=0 WHERE state='receiving'")
    with uploads._lock:
        for client in ("alice", "bob"):
            uploads._settle_idle(client)


def snapshot(env) -> dict:
    svc = env["svc"]
    return {
        "ledger_rows": svc.ledger.count(),
        "head": svc.ledger.head(),
        "budgets": [(b.epsilon_spent, b.delta_spent) for b in filter(None, [svc.ledger.budget(c, d) for c in ("alice", "bob") for d in ("titanic", "other", "budgettest")])],
        "live": sorted((e.client_id, e.artifact_digest) for e in svc.experts.live()),
    }


def assert_unchanged(env, before: dict) -> None:
    svc = env["svc"]
    assert snapshot(env) == before
    assert svc.ledger.verify_chain() == []
    good = svc.experts.get("alice", env["good"].artifact_digest)
    assert good is not None and svc.experts.verify(good, env["p"].keys["alice"].public_key()).digest == env["good"].artifact_digest
    assert not any((svc.experts.root / "staging").rglob("*.safetensors"))
    assert not any((svc.experts.root / "tmp").iterdir())


def refused(call, status: grpc.StatusCode, code: str):
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert ei.value.code() == status, ei.value.details()
    assert error_code(ei.value) == code, ei.value.details()
    return ei.value


def _tar_with(folder: Path, extra: dict[str, bytes], drop: str | None = None) -> bytes:
    """The artifact's tar with `drop` removed and extra members added (names unchecked: the attacker's tar)."""
    raw = tarfile.open(fileobj=io.BytesIO(pack_artifact(folder)), mode="r:")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
        for m in raw.getmembers():
            if m.name != drop:
                t.addfile(m, raw.extractfile(m))
        for name, data in extra.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return out.getvalue()


# --- the artifact ---------------------------------------------------------------------------------------

def test_flipped_byte_in_the_weights_is_invalid_argument_digest_mismatch(env, tmp_path):
    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=11)
    f = art / "expert.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01  # a weight byte, after the header
    f.write_bytes(bytes(data))
    before = snapshot(env)
    refused(lambda: env["alice"].upload(art, "titanic"), grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH")
    assert_unchanged(env, before)


def test_edited_manifest_field_is_invalid_argument_bad_signature(env, tmp_path):
    import base64

    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=12)
    bundle = json.loads((art / SIGNATURE_FILE).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["llamdex"]["sizes"]["dp.json"] += 1   # one field of the signed manifest
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (art / SIGNATURE_FILE).write_text(json.dumps(bundle))
    before = snapshot(env)
    refused(lambda: env["alice"].upload(art, "titanic"), grpc.StatusCode.INVALID_ARGUMENT, "BAD_SIGNATURE")
    assert_unchanged(env, before)


def test_edited_signed_file_is_invalid_argument(env, tmp_path):
    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=13)
    spec = json.loads((art / "expert.json").read_text())
    spec["activation"] = "tanh"  # same length would still change the digest
    (art / "expert.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    before = snapshot(env)
    err = refused(lambda: env["alice"].upload(art, "titanic"), grpc.StatusCode.INVALID_ARGUMENT, error_code_of(art))
    assert "expert.json" in err.details()
    assert_unchanged(env, before)


def error_code_of(art: Path) -> str:
    """SIZE_MISMATCH when the edit changed the length, DIGEST_MISMATCH otherwise."""
    import base64

    bundle = json.loads((art / SIGNATURE_FILE).read_text())
    sizes = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))["predicate"]["llamdex"]["sizes"]
    return "SIZE_MISMATCH" if sizes["expert.json"] != (art / "expert.json").stat().st_size else "DIGEST_MISMATCH"


def test_signature_from_another_key_is_permission_denied_untrusted_key(env, tmp_path):
    art = make_artifact(tmp_path / "a", env["p"].keys["bob"], seed=14)   # Bob's key, Alice uploads
    before = snapshot(env)
    refused(lambda: env["alice"].upload(art, "titanic"), grpc.StatusCode.PERMISSION_DENIED, "UNTRUSTED_KEY")
    assert_unchanged(env, before)


def test_dp_claim_that_does_not_match_its_parameters_is_invalid_argument(env, tmp_path):
    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], dp=dp_statement(claim=0.5), seed=15)
    before = snapshot(env)
    err = refused(lambda: env["alice"].upload(art, "titanic"), grpc.StatusCode.INVALID_ARGUMENT, "DP_MISMATCH")
    assert "claims epsilon 0.5" in err.details()
    assert_unchanged(env, before)


def test_upload_over_the_dataset_budget_is_resource_exhausted(env, tmp_path):
    # Alice's budget for this dataset is 3.0; each expert costs ~1.21 under basic composition
    for seed in (16, 17):
        env["alice"].upload(make_artifact(tmp_path / f"ok{seed}", env["p"].keys["alice"], seed=seed), "budgettest")
    before = snapshot(env)
    err = refused(lambda: env["alice"].upload(make_artifact(tmp_path / "over", env["p"].keys["alice"], seed=18), "budgettest"),
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert "basic composition" in err.details()
    assert_unchanged(env, before)


def test_malformed_schema_is_invalid_argument_schema_invalid(env, tmp_path):
    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=19)
    schema = json.loads((art / "schema.json").read_text())
    schema["label"]["classes"] = []   # a label without classes
    (art / "schema.json").write_text(json.dumps(schema))
    sign_artifact(art, env["p"].keys["alice"], check_content=False)   # validly signed, still malformed
    before = snapshot(env)
    refused(lambda: env["alice"].upload(art, "titanic"), grpc.StatusCode.INVALID_ARGUMENT, "SCHEMA_INVALID")
    assert_unchanged(env, before)


@pytest.mark.parametrize("name,code", [("expert.pkl", "FORBIDDEN_FILE"), ("../../escape.txt", "PATH_TRAVERSAL"), ("/etc/evil", "PATH_TRAVERSAL")])
def test_pickle_or_path_traversal_inside_the_artifact_is_invalid_argument(env, tmp_path, name, code):
    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=20)
    tar = _tar_with(art, {name: b"cos\nsystem\n(S'echo pwned'\ntR."}, drop="dp.json")   # same entry count
    before = snapshot(env)
    refused(lambda: env["alice"].upload(tar, "titanic"), grpc.StatusCode.INVALID_ARGUMENT, code)
    assert_unchanged(env, before)
    state = Path(env["svc"].config.state)
    assert not (state.parent / "escape.txt").exists() and not list(state.rglob("escape.txt")) and not list(state.rglob("*.pkl"))


# --- who is calling ---------------------------------------------------------------------------------------

def test_unregistered_client_is_permission_denied(env, tmp_path):
    # Mallory holds a certificate from the provider's CA but is not registered
    mallory = provider_client(env["p"], env["server"].address, "mallory")
    before = snapshot(env)
    refused(mallory.hello, grpc.StatusCode.PERMISSION_DENIED, "UNREGISTERED_CLIENT")
    refused(lambda: mallory.upload(make_artifact(tmp_path / "m", env["p"].keys["mallory"]), "titanic"),
            grpc.StatusCode.PERMISSION_DENIED, "UNREGISTERED_CLIENT")
    refused(lambda: mallory.ask(["Did she survive?"]), grpc.StatusCode.PERMISSION_DENIED, "UNREGISTERED_CLIENT")
    mallory.close()
    assert_unchanged(env, before)


def test_certificate_from_another_ca_fails_the_handshake(env, tmp_path):
    from protocol.tls import make_certs

    other = make_certs(tmp_path / "other-ca", {"alice": ["localhost", "127.0.0.1"]})["alice"]
    from client_party.provider_client import ProviderClient

    pc = ProviderClient(env["server"].address, "alice", env["p"].keys["alice"], tls=replace(other, ca=env["p"].tls["alice"].ca),
                        provider_public_key=env["p"].pubs["provider"], timeout_s=5)
    from protocol.tls import TransportError

    with pytest.raises(TransportError) as ei:      # the handshake fails (UNAVAILABLE), explained: which file to fix
        pc.hello()
    assert ei.value.code == "TLS_OWN_CERT_NOT_FROM_CA" and ei.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE
    pc.close()


def _signed_header(env, tar: bytes, *, key=None, upload_id=None, timestamp_ms=None, resume_offset=0, **overrides):
    h = provider_pb2.UploadHeader(upload_id=upload_id or secrets.token_urlsafe(24), dataset_id="titanic", artifact_name="expert",
                                  total_bytes=len(tar), artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=resume_offset)
    signed = sign_request(key or env["p"].keys["alice"], "alice", UPLOAD_METHOD, upload_body(h), timestamp_ms=timestamp_ms)
    h.auth.CopyFrom(common_pb2.RequestSignature(**signed.to_proto_kwargs()))
    for k, v in overrides.items():
        setattr(h, k, v)
    return h


def _stream(h, tar: bytes, chunk: int = 64 * 1024, upto: int | None = None):
    yield provider_pb2.UploadRequest(header=h)
    end = len(tar) if upto is None else upto
    for off in range(h.resume_offset, end, chunk):
        data = tar[off:min(off + chunk, end)]
        yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=off, data=data, sha256=hashlib.sha256(data).hexdigest()))


def test_replayed_upload_request_is_unauthenticated(env, tmp_path):
    tar = pack_artifact(make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=21))
    h = _signed_header(env, tar)
    stub = env["alice"].stub
    first = stub.UploadExpert(_stream(h, tar), timeout=30)
    assert first.complete
    before = snapshot(env)
    refused(lambda: stub.UploadExpert(_stream(h, tar), timeout=30), grpc.StatusCode.UNAUTHENTICATED, "REPLAYED_REQUEST")
    assert_unchanged(env, before)


def test_replayed_forget_request_is_unauthenticated_and_deletes_nothing(env):
    req = provider_pb2.ForgetRequest(artifact_digest="sha256:" + "ab" * 32)
    req.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(env["p"].keys["alice"], "alice", FORGET_METHOD, forget_body(req)).to_proto_kwargs()))
    before = snapshot(env)
    refused(lambda: env["alice"].stub.Forget(req, timeout=10), grpc.StatusCode.NOT_FOUND, "NOTHING_TO_FORGET")
    refused(lambda: env["alice"].stub.Forget(req, timeout=10), grpc.StatusCode.UNAUTHENTICATED, "REPLAYED_REQUEST")
    assert_unchanged(env, before)


def test_stale_tampered_unsigned_or_foreign_signed_requests_are_refused(env, tmp_path):
    tar = pack_artifact(make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=22))
    stub = env["alice"].stub
    before = snapshot(env)
    stale = _signed_header(env, tar, timestamp_ms=int((time.time() - 3600) * 1000))
    refused(lambda: stub.UploadExpert(_stream(stale, tar), timeout=10), grpc.StatusCode.UNAUTHENTICATED, "STALE_REQUEST")
    tampered = _signed_header(env, tar, dataset_id="other")   # changed after signing
    refused(lambda: stub.UploadExpert(_stream(tampered, tar), timeout=10), grpc.StatusCode.UNAUTHENTICATED, "BAD_REQUEST_SIGNATURE")
    foreign = _signed_header(env, tar, key=env["p"].keys["bob"])
    refused(lambda: stub.UploadExpert(_stream(foreign, tar), timeout=10), grpc.StatusCode.UNAUTHENTICATED, "BAD_REQUEST_SIGNATURE")
    unsigned = _signed_header(env, tar)
    unsigned.ClearField("auth")
    refused(lambda: stub.UploadExpert(_stream(unsigned, tar), timeout=10), grpc.StatusCode.UNAUTHENTICATED, "MISSING_SIGNATURE")
    req = provider_pb2.ForgetRequest(artifact_digest=env["good"].artifact_digest)   # Forget without a signature
    refused(lambda: stub.Forget(req, timeout=10), grpc.StatusCode.UNAUTHENTICATED, "MISSING_SIGNATURE")
    assert_unchanged(env, before)


# --- the stream -------------------------------------------------------------------------------------------

def test_chunks_sent_behind_a_refused_header_are_dropped_and_their_reader_ends(env, tmp_path):
    """The provider receives chunks while it checks the header's signature (read-ahead); a refused header
    writes none of them, and the thread that received them ends with the call."""
    tar = pack_artifact(make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=26))
    stub = env["alice"].stub
    before = snapshot(env)
    tampered = _signed_header(env, tar, dataset_id="other")
    refused(lambda: stub.UploadExpert(_stream(tampered, tar, chunk=16 * 1024), timeout=10), grpc.StatusCode.UNAUTHENTICATED, "BAD_REQUEST_SIGNATURE")
    assert_unchanged(env, before)
    assert not (Path(env["svc"].config.state) / "uploads" / "parts" / "alice" / f"{tampered.upload_id}.part").exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(t.name == "llamdex-upload-reader" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "llamdex-upload-reader" for t in threading.enumerate())


def test_upload_over_the_size_limit_is_resource_exhausted_before_any_byte(env):
    tar = b"x" * 1024
    h = _signed_header(env, tar, total_bytes=2 * MiB + 1)
    before = snapshot(env)
    refused(lambda: env["alice"].stub.UploadExpert(iter([provider_pb2.UploadRequest(header=h)]), timeout=10),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "ARTIFACT_TOO_LARGE")
    assert_unchanged(env, before)
    assert not any((Path(env["svc"].config.state) / "uploads" / "parts").rglob("*.part"))


def test_chunks_past_the_declared_size_or_corrupted_are_refused(env, tmp_path):
    tar = pack_artifact(make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=23))
    stub = env["alice"].stub
    before = snapshot(env)
    h = _signed_header(env, tar)
    long = tar + b"\0" * 1024
    refused(lambda: stub.UploadExpert(_stream(h, long), timeout=10), grpc.StatusCode.OUT_OF_RANGE, "PAST_END")
    h2 = _signed_header(env, tar)

    def corrupted():
        yield provider_pb2.UploadRequest(header=h2)
        yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=0, data=tar[:1000], sha256="0" * 64))
    refused(lambda: stub.UploadExpert(corrupted(), timeout=10), grpc.StatusCode.DATA_LOSS, "CHUNK_DIGEST_MISMATCH")
    big = _signed_header(env, tar)
    refused(lambda: stub.UploadExpert(_stream(big, tar, chunk=len(tar)), timeout=10) if len(tar) > 256 * 1024 else
            stub.UploadExpert(iter([provider_pb2.UploadRequest(header=big), provider_pb2.UploadRequest(
                chunk=provider_pb2.UploadChunk(offset=0, data=b"y" * (300 * 1024), sha256=hashlib.sha256(b"y" * (300 * 1024)).hexdigest()))]), timeout=10),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "CHUNK_TOO_LARGE")
    assert_unchanged(env, before)


def test_the_client_library_keeps_its_chunks_within_the_limit_the_provider_announces(env, tmp_path):
    """A chunk size above the provider's `max_chunk_bytes` (a client config written for another provider) is capped at
    the limit Hello announces, rather than refused with CHUNK_TOO_LARGE after the stream has started."""
    tar = pack_artifact(make_artifact(tmp_path / "c", env["p"].keys["alice"], seed=26, hidden=(400, 200)))
    assert len(tar) > 256 * 1024
    result = env["alice"].upload(tar, "titanic", chunk_bytes=2 * MiB)
    assert result.receipt.kind == "upload" and result.attempts == 1 and result.bytes == len(tar)


def test_stream_cut_mid_upload_keeps_what_arrived_and_resumes(env, tmp_path):
    art = make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=24, hidden=(64, 32))
    tar = pack_artifact(art)
    stub = env["alice"].stub
    h = _signed_header(env, tar)
    before = snapshot(env)
    # the stream ends after 3 of the chunks: nothing is verified, charged or visible
    resp = stub.UploadExpert(_stream(h, tar, chunk=4096, upto=3 * 4096), timeout=10)
    assert not resp.complete and resp.received_bytes == 3 * 4096
    status = env["alice"].upload_status(h.upload_id)
    assert (status.state, status.received_bytes, status.total_bytes) == ("receiving", 3 * 4096, len(tar))
    assert_unchanged(env, before)
    # resuming from a wrong offset is refused and changes nothing
    wrong = _signed_header(env, tar, upload_id=h.upload_id, resume_offset=4096)
    refused(lambda: stub.UploadExpert(_stream(wrong, tar), timeout=10), grpc.StatusCode.FAILED_PRECONDITION, "OFFSET_MISMATCH")
    # the client library resumes from what the provider holds and gets a valid receipt
    result = env["alice"].upload(tar, "titanic", upload_id=h.upload_id, chunk_bytes=4096)
    assert result.receipt.kind == "upload" and result.attempts == 1
    assert env["svc"].ledger.verify_chain() == []
    # and a cancelled stream (as a dropped link) resumes too
    art2 = make_artifact(tmp_path / "b", env["p"].keys["alice"], seed=25, hidden=(64, 32))
    r2 = env["alice"].upload(art2, "titanic", chunk_bytes=4096, cut_after_bytes=8192)
    # at least one resume after the cut (a loaded machine may need one more retry on a deadline)
    assert r2.attempts >= 2 and r2.receipt.sequence == result.receipt.sequence + 1


class _SlowToReturnStub:
    """The real stub, except that `UploadExpert.future()` returns late, as on a loaded machine: gRPC's request
    thread then reaches the client's cut before the caller holds the call it must cancel."""

    def __init__(self, stub):
        self._stub = stub
        self.UploadExpert = self

    def future(self, *args, **kwargs):
        fut = self._stub.UploadExpert.future(*args, **kwargs)
        time.sleep(0.5)
        return fut

    def __getattr__(self, name):
        return getattr(self._stub, name)


def test_cut_reached_before_the_call_is_returned_still_resumes(env, tmp_path):
    """Regression: the cut used to index the not-yet-filled call holder and broke the stream with an IndexError."""
    p = env["p"]
    carol = provider_client(p, env["server"].address, "bob")
    try:
        carol.stub = _SlowToReturnStub(carol.stub)
        art = make_artifact(tmp_path / "a", p.keys["bob"], seed=27, hidden=(64, 32))
        r = carol.upload(art, "other", chunk_bytes=4096, cut_after_bytes=4096)
        assert r.attempts >= 2 and r.receipt.kind == "upload"
    finally:
        carol.close()


def test_two_clients_uploading_at_once_both_get_receipts(env, tmp_path):
    p = env["p"]
    bob = provider_client(p, env["server"].address, "bob")
    results, errors = {}, []

    def run(who, client, seeds):
        try:
            for s in seeds:
                results[(who, s)] = client.upload(make_artifact(tmp_path / f"{who}{s}", p.keys[who], seed=s, hidden=(64, 32)), "other",
                                                  chunk_bytes=8192)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=("alice", env["alice"], (30, 31))), threading.Thread(target=run, args=("bob", bob, (32, 33, 34)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 5
    svc = env["svc"]
    assert svc.ledger.verify_chain() == []
    from protocol.receipts import verify_chain

    for who, client in (("alice", env["alice"]), ("bob", bob)):
        chain = verify_chain(client.ledger_receipts(), p.pubs["provider"])
        assert [r.sequence for r in chain] == list(range(1, len(chain) + 1))
    bob.close()


def test_same_upload_id_on_two_streams_at_once_is_aborted(env, tmp_path):
    tar = pack_artifact(make_artifact(tmp_path / "a", env["p"].keys["alice"], seed=40, hidden=(64, 32)))
    stub = env["alice"].stub
    h = _signed_header(env, tar)
    gate = threading.Event()

    def slow():
        yield provider_pb2.UploadRequest(header=h)
        data = tar[:4096]
        yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=0, data=data, sha256=hashlib.sha256(data).hexdigest()))
        gate.wait(10)

    fut = stub.UploadExpert.future(slow(), timeout=20)
    for _ in range(200):
        status = env["alice"]._status_or_none(h.upload_id)
        if status is not None and status.received_bytes == 4096:
            break
        time.sleep(0.05)
    h2 = _signed_header(env, tar, upload_id=h.upload_id, resume_offset=4096)
    refused(lambda: stub.UploadExpert(_stream(h2, tar), timeout=10), grpc.StatusCode.ABORTED, "UPLOAD_BUSY")
    gate.set()
    assert not fut.result().complete


# --- other calls ------------------------------------------------------------------------------------------

def test_other_clients_uploads_experts_and_bad_pages_are_not_found_or_invalid(env):
    p = env["p"]
    bob = provider_client(p, env["server"].address, "bob")
    refused(lambda: bob.ask(["q?"], artifact_digest=env["good"].artifact_digest), grpc.StatusCode.NOT_FOUND, "EXPERT_NOT_FOUND")
    refused(lambda: bob.customize(env["good"].artifact_digest), grpc.StatusCode.NOT_FOUND, "EXPERT_NOT_FOUND")
    refused(lambda: bob.upload_status(env["good"].upload_id), grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    refused(lambda: bob.forget(env["good"].artifact_digest), grpc.StatusCode.NOT_FOUND, "NOTHING_TO_FORGET")
    refused(lambda: bob.stub.GetLedger(provider_pb2.GetLedgerRequest(page_token="garbage"), timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_TOKEN")
    refused(lambda: bob.stub.GetLedger(provider_pb2.GetLedgerRequest(page_size=5000), timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_SIZE")
    refused(lambda: env["alice"].ask_raw([]), grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    refused(lambda: env["alice"].ask_raw(["x" * 5000]), grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    refused(lambda: env["alice"].stub.WatchJob(provider_pb2.WatchJobRequest(job_id="nope"), timeout=5).next(), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    bob.close()


def test_ledger_pages_hold_only_the_callers_entries_in_order(env):
    pages, token = [], ""
    while True:
        resp = env["alice"].stub.GetLedger(provider_pb2.GetLedgerRequest(page_size=2, page_token=token), timeout=10)
        pages.append(list(resp.entries))
        token = resp.next_page_token
        if not token:
            break
    entries = [e for page in pages for e in page]
    assert all(len(p) <= 2 for p in pages) and len(entries) >= 2
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)
    from protocol.receipts import verify_chain

    chain = verify_chain([json.loads(e.receipt.envelope_json) for e in entries], env["p"].pubs["provider"])
    assert {r.client_id for r in chain} == {"alice"} and [r.sequence for r in chain] == list(range(1, len(chain) + 1))


def test_rate_limit_is_a_token_bucket_per_client():
    from provider_party.service.auth import TokenBucket

    bucket = TokenBucket(rate=1.0)   # burst of 4
    assert [bucket.take("alice") for _ in range(5)] == [True] * 4 + [False]
    assert bucket.take("bob")
