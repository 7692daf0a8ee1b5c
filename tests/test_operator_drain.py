"""SIGTERM drains the provider: it logs that it is draining, refuses new calls, lets a running call finish
within the grace period, logs how it stopped and exits 0; a call still running when the grace period
ends is cancelled."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from protocol.artifact import pack_artifact
from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2, provider_pb2_grpc
from protocol.tls import open_channel
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import make_artifact, make_parties, provider_config

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 16 * 1024


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _held_upload(p, tar: bytes, release: threading.Event, sent_first: threading.Event):
    """An UploadExpert stream that sends its header and first chunk, then waits for `release` to send the rest."""
    h = provider_pb2.UploadHeader(upload_id="drain-" + hashlib.sha256(tar).hexdigest()[:16], dataset_id="titanic", artifact_name="expert",
                                  total_bytes=len(tar), artifact_sha256=hashlib.sha256(tar).hexdigest())
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(p.keys["alice"], "alice", UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))

    def messages():
        yield provider_pb2.UploadRequest(header=h)
        for i, off in enumerate(range(0, len(tar), CHUNK)):
            data = tar[off:off + CHUNK]
            yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=off, data=data, sha256=hashlib.sha256(data).hexdigest()))
            if i == 0:
                sent_first.set()
                release.wait(120)
    return messages()


def test_sigterm_lets_a_running_upload_finish_within_the_grace_period_then_exits(tmp_path):
    p = make_parties(tmp_path)
    port_file, log_path = tmp_path / "provider.addr", tmp_path / "provider.log"
    argv = [sys.executable, "-m", "simulations.cli.main", "provider", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            "--key", str(tmp_path / "keys" / "provider.key"), "--state", str(tmp_path / "state"), "--ca", str(p.tls["provider"].ca),
            "--cert", str(p.tls["provider"].cert), "--tls-key", str(p.tls["provider"].key), "--client", f"alice={p.pubs['alice']}",
            "--no-preload", "--grace", "30"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: port_file.is_file() or proc.poll() is not None, 120, "the provider's port file")
        assert proc.poll() is None, log_path.read_text()
        address = port_file.read_text().strip()
        tar = pack_artifact(make_artifact(tmp_path / "art", p.keys["alice"], hidden=(256, 128)))
        assert len(tar) > 4 * CHUNK
        release, sent_first, outcome = threading.Event(), threading.Event(), {}
        ch = open_channel(address, p.tls["alice"])
        stub = provider_pb2_grpc.ProviderServiceStub(ch)

        def upload():
            try:
                outcome["response"] = stub.UploadExpert(_held_upload(p, tar, release, sent_first), timeout=120)
            except grpc.RpcError as e:
                outcome["error"] = e
        th = threading.Thread(target=upload)
        th.start()
        assert sent_first.wait(60)
        time.sleep(0.5)                                   # the call is running on the server
        os.kill(proc.pid, signal.SIGTERM)
        _wait_for(lambda: "draining" in log_path.read_text(), 30, "the drain's log line")
        release.set()                                     # the running call goes on and finishes within the grace period
        th.join(60)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["response"].complete and outcome["response"].receipt.envelope_json
        assert proc.wait(60) == 0
        ch.close()
        text = log_path.read_text()
        assert "SIGTERM received: draining provider provider" in text and "1 running call(s) get up to 30 s" in text
        assert "every running call finished" in text
        assert "upload drain-" in text and "accepted" in text             # the upload's own line, with its receipt
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_call_still_running_when_the_grace_period_ends_is_cancelled(tmp_path):
    p = make_parties(tmp_path)
    server = ProviderServer(provider_config(p, preload=False)).start()
    tar = pack_artifact(make_artifact(tmp_path / "art", p.keys["alice"], hidden=(256, 128)))
    release, sent_first, outcome = threading.Event(), threading.Event(), {}
    ch = open_channel(server.address, p.tls["alice"])
    stub = provider_pb2_grpc.ProviderServiceStub(ch)

    def upload():
        try:
            outcome["response"] = stub.UploadExpert(_held_upload(p, tar, release, sent_first), timeout=120)
        except grpc.RpcError as e:
            outcome["error"] = e
    th = threading.Thread(target=upload)
    th.start()
    try:
        assert sent_first.wait(30)
        _wait_for(lambda: server.calls_in_flight() == 1, 10, "the call to run")
        t = time.monotonic()
        server.stop(1.0)
        assert time.monotonic() - t < 5
    finally:
        release.set()
        th.join(30)
        ch.close()
    assert "response" not in outcome or not outcome["response"].complete     # cut off: nothing was charged for it
    assert server.servicer.party.ledger.count() == 0


def test_serve_forever_drains_on_sigterm_and_reports_it(caplog):
    """protocol.serving.serve_forever with a stand-in server (it is the loop under test, not a server)."""
    import logging

    from protocol.serving import serve_forever

    class Server:
        stopped_with = None

        def calls_in_flight(self):
            return 0

        def stop(self, grace):
            self.stopped_with = grace

    caplog.set_level(logging.INFO)
    signum = signal.SIGTERM
    s = Server()
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signum)).start()
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert serve_forever(s, 7.5, name="test server") == signum
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    assert s.stopped_with == 7.5
    lines = [r.getMessage() for r in caplog.records if r.name == "llamdex.serving"]
    assert lines[0].startswith(f"{signal.Signals(signum).name} received: draining test server") and "up to 7.5 s" in lines[0]
    assert "every running call finished" in lines[1]
