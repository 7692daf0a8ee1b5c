"""Resource guards, each at its limit: Ask batch size and question length, admission control (OVERLOADED instead
of a queue), upload streams per client and in all, a stalled upload stream cut at its deadline (what arrived is
kept), connector jobs per client, and a deadline on every call the parties make."""

from __future__ import annotations

import ast
import hashlib
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from protocol.artifact import pack_artifact
from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.rpc_errors import RpcError, error_code
from provider_party.service.admission import AskGate, InteractiveFirst
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def parties(tmp_path):
    return make_parties(tmp_path)


def _limits(p, **kw):
    return replace(provider_config(p).limits, **kw)


def test_ask_refuses_oversized_batches_and_questions_before_any_work(parties):
    p = parties
    server = ProviderServer(provider_config(p)).start()
    try:
        with provider_client(p, server.address) as pc:
            for questions, rule in ((["q?"] * 65, "1..64 questions"), ([], "1..64 questions"), (["x" * 4001], "1..4000 characters"),
                                    (["   "], "1..4000 characters")):
                with pytest.raises(grpc.RpcError) as ei:
                    pc.ask_raw(questions)
                assert (ei.value.code(), error_code(ei.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
                assert rule.split()[0] in ei.value.details()
        assert server.servicer.ask_gate.stats.admitted == 0           # refused before taking a place at the gate
    finally:
        server.stop()


def test_the_admission_gate_sheds_with_overloaded_instead_of_queueing():
    gate = AskGate(max_concurrent=1, wait_s=0.2, per_client=1)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with gate.admit("alice"):
            inside.set()
            release.wait(10)
    th = threading.Thread(target=hold)
    th.start()
    assert inside.wait(10)
    t = time.monotonic()
    with pytest.raises(RpcError) as ei:                               # bob waits its 0.2 s, then is told to come back
        with gate.admit("bob"):
            pass
    assert ei.value.code == "OVERLOADED" and ei.value.rule == "max_concurrent_asks" and 0.15 < time.monotonic() - t < 2
    assert "retry in about" in str(ei.value)
    with pytest.raises(RpcError) as ei:                               # alice already holds her one place: refused at once
        with gate.admit("alice"):
            pass
    assert ei.value.rule == "max_asks_per_client"
    release.set()
    th.join(10)
    with gate.admit("bob"):                                           # a free place is taken at once
        pass
    assert (gate.stats.admitted, gate.stats.refused_busy, gate.stats.refused_per_client) == (2, 1, 1)


def test_background_steps_wait_for_a_running_ask_pass_but_never_longer_than_their_bound():
    gate = InteractiveFirst(max_wait_s=0.3)
    assert gate.background_turn() == 0.0                              # no pass running: at once
    inside, release = threading.Event(), threading.Event()

    def ask_pass():
        with gate.foreground():
            inside.set()
            release.wait(10)
    th = threading.Thread(target=ask_pass)
    th.start()
    assert inside.wait(10)
    t = time.monotonic()
    waited = gate.background_turn()                                   # a pass that does not end: the bound
    assert 0.25 < waited < 2 and 0.25 < time.monotonic() - t < 2
    threading.Timer(0.1, release.set).start()
    waited = gate.background_turn()                                   # a pass that ends after 0.1 s: then
    th.join(10)
    assert 0.05 < waited < 0.3
    assert InteractiveFirst(0.0).background_turn() == 0.0


def test_a_stream_keeps_its_place_until_its_upload_is_verified(parties):
    """An upload whose bytes are in but whose verification waits (for Ask passes) still holds a server thread, so it
    still counts against max_upload_streams until its receipt; the place is given back by end_stream."""
    p = parties
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    bobs = pack_artifact(make_artifact(p.root / "b", p.keys["bob"]))
    server = ProviderServer(provider_config(p, limits=_limits(p, max_upload_streams=1, background_wait_s=60.0))).start()
    party = server.servicer.party
    inside, release = threading.Event(), threading.Event()

    def ask_pass():
        with party.interactive.foreground():
            inside.set()
            release.wait(20)
    th = threading.Thread(target=ask_pass)
    th.start()
    assert inside.wait(10)
    try:
        with provider_client(p, server.address) as pc:
            first = pc.stub.UploadExpert.future(iter(pc_messages(p, "alice", tar, "c" * 20)), timeout=60)
            # bytes in (the session closed), its verification waiting for the pass: the stream still holds its place
            _wait(lambda: sum(party.uploads._streams.values()) == 1 and "c" * 20 not in party.uploads._busy)
            with provider_client(p, server.address, "bob") as pb, pytest.raises(grpc.RpcError) as ei:
                pb.upload(bobs, "titanic", max_attempts=1)
            assert error_code(ei.value) == "TOO_MANY_UPLOADS" and "max_upload_streams" in ei.value.details()
            release.set()
            assert first.result().receipt.sequence == 1
        _wait(lambda: sum(party.uploads._streams.values()) == 0)
    finally:
        release.set()
        th.join(10)
        server.stop()


def pc_messages(p, who: str, tar: bytes, upload_id: str):
    yield provider_pb2.UploadRequest(header=_header(p, who, tar, upload_id))
    yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=0, data=tar, sha256=hashlib.sha256(tar).hexdigest()))


class _Shed(grpc.RpcError):
    def __init__(self, code: str):
        self.llamdex_code = code

    def code(self):
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def trailing_metadata(self):
        from protocol.rpc_errors import ERROR_CODE_METADATA

        return ((ERROR_CODE_METADATA, self.llamdex_code),)


class _BusyStub:
    """Stands in for the transport only (the retry policy is under test): sheds the first `busy` calls."""

    def __init__(self, busy: int, code: str = "OVERLOADED"):
        self.busy, self.code, self.calls = busy, code, 0

    def Ask(self, req, timeout, metadata):
        self.calls += 1
        if self.calls <= self.busy:
            raise _Shed(self.code)
        return provider_pb2.AskResponse(answers=[provider_pb2.Answer(answer="yes") for _ in req.questions])


def test_the_client_asks_again_when_the_provider_sheds_and_gives_up_at_its_timeout(parties, caplog):
    with provider_client(parties, "127.0.0.1:1") as pc:
        pc._hello = provider_pb2.HelloResponse()   # greeted already: the Hello and its proof are tested in test_hello_proof.py
        pc.stub = _BusyStub(busy=3)
        with caplog.at_level(logging.WARNING, logger="client_party.provider_client"):
            assert [a.answer for a in pc.ask(["q1", "q2"], timeout_s=30)] == ["yes", "yes"] and pc.stub.calls == 4
        busy = [r for r in caplog.records if "provider busy (OVERLOADED)" in r.getMessage()]
        assert len(busy) == 1 and busy[0].levelno == logging.WARNING      # said once, where a user sees it
        pc.stub = _BusyStub(busy=10 ** 6, code="QUEUE_FULL")
        t = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            pc.ask(["q1"], timeout_s=1.0)
        assert error_code(ei.value) == "QUEUE_FULL" and time.monotonic() - t < 3
        pc.stub = _BusyStub(busy=1, code="RATE_LIMITED")                 # not a shed call: no second try
        with pytest.raises(grpc.RpcError):
            pc.ask(["q1"], timeout_s=30)
        assert pc.stub.calls == 1


def _header(p, who: str, tar: bytes, upload_id: str, resume_offset: int = 0) -> provider_pb2.UploadHeader:
    h = provider_pb2.UploadHeader(upload_id=upload_id, dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                                  artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=resume_offset)
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(p.keys[who], who, UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))
    return h


class _Stalled:
    """An UploadExpert stream that sends its header and first chunk, then waits (a slow or stuck client)."""

    def __init__(self, p, address, who, tar, upload_id):
        self.release = threading.Event()
        self.pc = provider_client(p, address, who)
        first = tar[:4096]

        def messages():
            yield provider_pb2.UploadRequest(header=_header(p, who, tar, upload_id))
            yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=0, data=first, sha256=hashlib.sha256(first).hexdigest()))
            self.release.wait(30)
        self.future = self.pc.stub.UploadExpert.future(messages(), timeout=60)

    def close(self):
        self.release.set()
        try:
            self.future.result()
        except grpc.RpcError:
            pass
        self.pc.close()


def _wait(cond, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_upload_streams_are_limited_per_client_and_in_all(parties):
    p = parties
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    server = ProviderServer(provider_config(p, limits=_limits(p, max_upload_streams_per_client=1, max_upload_streams=2))).start()
    uploads = server.servicer.party.uploads
    open_ = []
    try:
        open_.append(_Stalled(p, server.address, "alice", tar, "a" * 20))
        _wait(lambda: sum(uploads._streams.values()) == 1)
        with provider_client(p, server.address) as pc, pytest.raises(grpc.RpcError) as ei:   # alice's second stream
            pc.upload(tar, "titanic", max_attempts=1)
        assert (ei.value.code(), error_code(ei.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_UPLOADS")
        assert "max_upload_streams_per_client" in ei.value.details()
        open_.append(_Stalled(p, server.address, "bob", tar, "b" * 20))                   # bob's first: the second in all
        _wait(lambda: sum(uploads._streams.values()) == 2)
        with provider_client(p, server.address, "bob") as pc, pytest.raises(grpc.RpcError) as ei:   # a third in all
            pc.upload(pack_artifact(make_artifact(p.root / "b", p.keys["bob"])), "titanic", max_attempts=1)
        assert error_code(ei.value) == "TOO_MANY_UPLOADS" and "max_upload_streams" in ei.value.details()
        for s in open_:
            s.close()
        open_ = []
        _wait(lambda: sum(uploads._streams.values()) == 0)
        with provider_client(p, server.address) as pc:                                   # the places free up: accepted
            assert pc.upload(tar, "titanic").receipt.sequence == 1
    finally:
        for s in open_:
            s.close()
        server.stop()


def test_a_stalled_upload_stream_is_cut_at_its_deadline_and_keeps_what_arrived(parties):
    p = parties
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    server = ProviderServer(provider_config(p, limits=_limits(p, max_upload_stream_s=1.0))).start()
    try:
        stalled = _Stalled(p, server.address, "alice", tar, "c" * 20)
        with pytest.raises(grpc.RpcError) as ei:
            stalled.future.result(timeout=30)                         # the provider ends it after 1 s, not the client's 60 s
        assert ei.value.code() == grpc.StatusCode.CANCELLED
        stalled.close()
        _wait(lambda: sum(server.servicer.party.uploads._streams.values()) == 0)
        with provider_client(p, server.address) as pc:
            st = pc.upload_status("c" * 20)
            assert (st.state, st.received_bytes) == ("receiving", 4096)
            assert pc.upload(tar, "titanic", upload_id="c" * 20).receipt.sequence == 1   # resumed from the kept bytes
    finally:
        server.stop()


def _received(uploads, who: str, upload_id: str) -> int:
    """Bytes the provider holds of an upload; 0 before its row exists (the stream's header may still be on its way)."""
    try:
        return uploads.received_bytes(uploads.get(upload_id, who))
    except RpcError:
        return 0


def _age(uploads, upload_id: str, seconds: float) -> None:
    """Stands for `seconds` passing with no byte of the upload arriving (the row's last-activity time moves back)."""
    uploads._exec("UPDATE uploads SET updated_at=updated_at-? WHERE upload_id=?", (seconds, upload_id))


def test_an_abandoned_upload_expires_at_runtime_and_frees_its_place(parties):
    """Before, unfinished uploads expired only at the next start: a client whose links dropped `max_open_uploads`
    times was refused every upload until the operator restarted the provider."""
    p = parties
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    server = ProviderServer(provider_config(p, limits=_limits(p, max_open_uploads=1, upload_ttl_s=3600))).start()
    uploads = server.servicer.party.uploads
    held = _Stalled(p, server.address, "alice", tar, "d" * 20)   # a stream still writing its upload
    try:
        _wait(lambda: _received(uploads, "alice", "d" * 20) == 4096)
        _age(uploads, "d" * 20, 7200)
        with provider_client(p, server.address) as pc, pytest.raises(grpc.RpcError) as ei:
            pc.upload(tar, "titanic", max_attempts=1)
        assert error_code(ei.value) == "TOO_MANY_UPLOADS" and "upload_ttl_s" in ei.value.details()   # held: never expired
        held.close()
        _wait(lambda: not uploads._streams)
        assert uploads.get("d" * 20, "alice").state == "receiving"                  # the stream ended: kept for a resume
        with provider_client(p, server.address) as pc, pytest.raises(grpc.RpcError) as ei:
            pc.upload(tar, "titanic", max_attempts=1)
        assert error_code(ei.value) == "TOO_MANY_UPLOADS"                            # idle, but not yet for upload_ttl_s
        _age(uploads, "d" * 20, 7200)
        part = uploads.part_path("alice", "d" * 20)
        assert part.exists()
        with provider_client(p, server.address) as pc:
            assert pc.upload(tar, "titanic").receipt.sequence == 1                   # the expired one gave up its place
            st = pc.upload_status("d" * 20)
            assert st.state == "failed" and "UPLOAD_EXPIRED" in st.error and not part.exists()
            with pytest.raises(grpc.RpcError) as ei:                                 # and does not resume
                pc.stub.UploadExpert(iter([provider_pb2.UploadRequest(header=_header(p, "alice", tar, "d" * 20, resume_offset=4096))]), timeout=10)
            assert error_code(ei.value) == "UPLOAD_FAILED"
        assert server.servicer.party.ledger.count() == 1
    finally:
        if not held.release.is_set():
            held.close()
        server.stop()


def test_upload_status_reports_an_upload_past_its_ttl_as_expired_at_once(parties):
    """Expiry used to wait for the client's next upload: until then GetUploadStatus said `receiving` for an upload
    that could no longer be finished in time."""
    p = parties
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    server = ProviderServer(provider_config(p, limits=_limits(p, upload_ttl_s=3600))).start()
    uploads = server.servicer.party.uploads
    held = _Stalled(p, server.address, "alice", tar, "g" * 20)
    try:
        _wait(lambda: _received(uploads, "alice", "g" * 20) == 4096)
        _age(uploads, "g" * 20, 7200)
        with provider_client(p, server.address) as pc:
            assert pc.upload_status("g" * 20).state == "receiving"            # a stream holds it: never expired
            held.close()
            _wait(lambda: not uploads._streams)
            _age(uploads, "g" * 20, 7200)
            st = pc.upload_status("g" * 20)
            assert st.state == "failed" and "UPLOAD_EXPIRED" in st.error and not uploads.part_path("alice", "g" * 20).exists()
    finally:
        if not held.release.is_set():
            held.close()
        server.stop()


def test_unfinished_uploads_past_their_ttl_are_discarded_at_start(parties):
    from provider_party.service.core import ProviderParty

    p = parties
    cfg = provider_config(p, limits=_limits(p, upload_ttl_s=3600))
    tar = pack_artifact(make_artifact(p.root / "a", p.keys["alice"]))
    server = ProviderServer(cfg).start()
    try:
        for uid in ("e" * 20, "f" * 20):
            s = _Stalled(p, server.address, "alice", tar, uid)
            _wait(lambda: _received(server.servicer.party.uploads, "alice", uid) == 4096)
            s.close()
        _age(server.servicer.party.uploads, "e" * 20, 7200)
    finally:
        server.stop()
    again = ProviderParty(cfg)
    assert again.recovery["expired"] == 1
    assert (again.uploads.get("e" * 20, "alice").state, again.uploads.get("f" * 20, "alice").state) == ("failed", "receiving")
    assert not again.uploads.part_path("alice", "e" * 20).exists() and again.uploads.part_path("alice", "f" * 20).exists()


def test_connector_jobs_are_limited_per_client(tmp_path):
    from provider_party.service.jobs import JobManager

    release = threading.Event()
    jobs = JobManager(lambda job, progress: (release.wait(30), (False, {}))[1], max_queue=8, max_per_client=2)
    try:
        jobs.submit("alice", "sha256:" + "1" * 64, "base", "", False, None)
        jobs.submit("alice", "sha256:" + "2" * 64, "base", "", False, None)
        with pytest.raises(RpcError) as ei:
            jobs.submit("alice", "sha256:" + "3" * 64, "base", "", False, None)
        assert ei.value.code == "TOO_MANY_JOBS" and ei.value.rule == "max_jobs_per_client"
        shared = jobs.submit("alice", "sha256:" + "1" * 64, "base", "", False, None)   # joining a running job is not a new one
        assert jobs.submit("bob", "sha256:" + "3" * 64, "base", "", False, None).client_id == "bob"
        assert "alice" in shared.watchers
    finally:
        release.set()
        jobs.stop()


def _stub_calls(path: Path) -> list[tuple[str, bool]]:
    """Every call on a gRPC stub (or a prepared call) in `path`, and whether it sets a deadline (`timeout=`)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = ast.unparse(node.func)
        if ".stub." in target or target.startswith("stub.") or target.endswith("_upload_call.future"):
            out.append((f"{path.name}:{node.lineno} {target}", any(k.arg == "timeout" for k in node.keywords)))
    return out


def test_every_call_the_parties_make_carries_a_deadline():
    files = [ROOT / "client_party" / "provider_client.py", ROOT / "client_party" / "service.py", ROOT / "provider_party" / "service" / "servicer.py"]
    calls = [c for f in files for c in _stub_calls(f)]
    assert len(calls) >= 10                                        # Hello, upload, status, customize, watch, ask, ledger, forget, callback ...
    assert [name for name, has_deadline in calls if not has_deadline] == []
