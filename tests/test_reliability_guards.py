"""Resource guards, each at its limit: Ask batch size and question length, admission control (OVERLOADED instead
of a queue), upload streams per client and in all, a stalled upload stream cut at its deadline (what arrived is
kept), connector jobs per client, and a deadline on every call the parties make."""

from __future__ import annotations

import ast
import hashlib
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
from provider_party.service.admission import AskGate
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


def _header(p, who: str, tar: bytes, upload_id: str) -> provider_pb2.UploadHeader:
    h = provider_pb2.UploadHeader(upload_id=upload_id, dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                                  artifact_sha256=hashlib.sha256(tar).hexdigest())
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
