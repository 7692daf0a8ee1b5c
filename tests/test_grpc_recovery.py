"""The provider survives being killed at any point of an upload: the ledger verifies, no half artifact is
ever visible, and the upload either completes from what the disk holds or is charged exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import time
from types import SimpleNamespace

import grpc
import pytest

from protocol.artifact import pack_artifact
from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.toml_config import ConfigError
from provider_party.service.ledger import Ledger
from provider_party.service.core import ProviderParty
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config


class Crash(BaseException):
    """Stands for the process dying at a given point."""


def _write_all(svc: ProviderParty, client, tar: bytes, upload_id: str):
    h = SimpleNamespace(upload_id=upload_id, dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                        artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=0)
    session = svc.uploads.open(client, h)
    for off in range(0, len(tar), 4096):
        data = tar[off:off + 4096]
        session.write(off, data, hashlib.sha256(data).hexdigest(), 1 << 20)
    session.close()
    return session.record


def _visible(svc: ProviderParty) -> list[str]:
    return [e.artifact_digest for e in svc.experts.live()]


def _party(tmp_path, **config):
    """The parties, a provider party on fresh state, its config, Alice's registration and one packed artifact of hers."""
    p = make_parties(tmp_path)
    cfg = provider_config(p, **config)
    return p, cfg, ProviderParty(cfg), cfg.client("alice"), pack_artifact(make_artifact(tmp_path / "a", p.keys["alice"]))


def _finalize(svc: ProviderParty, rec, client):
    return svc.uploads.finalize(rec, client, svc.ledger, svc.experts, svc.ledger_lock)


def _crash_before_the_ledger_commit(point: str) -> None:
    if point == "before_commit":
        raise Crash()


def test_crash_after_the_ledger_commit_is_completed_at_restart(tmp_path, monkeypatch):
    p, cfg, svc, alice, tar = _party(tmp_path)
    rec = _write_all(svc, alice, tar, "u" * 20)

    def die(*a, **k):
        raise Crash()
    monkeypatch.setattr(svc.experts, "promote", die)
    with pytest.raises(Crash):
        _finalize(svc, rec, alice)
    assert svc.ledger.count() == 1 and _visible(svc) == []          # charged, not yet visible
    monkeypatch.undo()
    again = ProviderParty(cfg)                                     # the restarted provider
    assert again.recovery["promoted"] == 1 and again.recovery["completed"] == 1
    assert len(_visible(again)) == 1 and again.ledger.verify_chain() == []
    done = again.uploads.get("u" * 20, "alice")
    assert done.state == "complete" and done.receipt and done.artifact_digest == _visible(again)[0]


def test_an_error_after_the_charge_is_not_charged_again_when_the_upload_is_retried(tmp_path, monkeypatch):
    """Not a crash (a restart would promote the staged copy) but an error the process survives, such as EIO on
    the rename that makes the expert visible: the client's retry of the same upload used to stage and charge it
    a second time."""
    import errno

    p, cfg, svc, alice, tar = _party(tmp_path)
    rec = _write_all(svc, alice, tar, "w" * 20)
    promote = svc.experts.promote

    def fails_once(*a, **k):
        monkeypatch.setattr(svc.experts, "promote", promote)
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(svc.experts, "promote", fails_once)
    with pytest.raises(OSError):
        _finalize(svc, rec, alice)
    assert svc.ledger.count() == 1 and _visible(svc) == []           # charged, not visible
    receipt = svc.ledger.upload_entry("alice", svc.ledger.entries()[0][0].artifact_digest).receipt
    fin = _finalize(svc, svc.uploads.get("w" * 20, "alice"), alice)
    assert svc.ledger.count() == 1 and svc.ledger.verify_chain() == []  # the retry is not charged again
    assert fin.entry.receipt == receipt and "made visible now" in fin.checks[-1]
    assert _visible(svc) == [fin.record.artifact_digest] and svc.uploads.get("w" * 20, "alice").state == "complete"


def test_a_charged_upload_nobody_retried_is_completed_not_expired_at_runtime(tmp_path, monkeypatch):
    """The same error after the charge, but the client never retries. When its upload passes `upload_ttl_s` and
    the client opens another upload, the runtime expiry used to look only at visible experts: it marked the
    charged upload failed and left its expert staged, unserved until a restart."""
    import errno

    p, cfg, svc, alice, tar = _party(tmp_path, budgets={"alice": 100.0})
    rec = _write_all(svc, alice, tar, "v" * 20)
    monkeypatch.setattr(svc.experts, "promote", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError):
        _finalize(svc, rec, alice)
    monkeypatch.undo()
    receipt = svc.ledger.entries()[0][0].receipt
    svc.uploads._exec("UPDATE uploads SET updated_at=updated_at-? WHERE upload_id=?", (cfg.limits.upload_ttl_s + 60, "v" * 20))
    _write_all(svc, alice, pack_artifact(make_artifact(tmp_path / "b", p.keys["alice"], seed=1)), "t" * 20)   # opening it settles the idle one
    done = svc.uploads.get("v" * 20, "alice")
    assert done.state == "complete" and json.loads(done.receipt) == receipt
    assert _visible(svc) == [done.artifact_digest] and svc.ledger.count() == 1


def test_a_staged_copy_left_by_a_crash_before_the_charge_is_charged_once(tmp_path, monkeypatch):
    """The other side of that check: a staged copy with no charge of its own (the process died between staging
    and the charge, while the ledger holds an older upload of the same bytes) is charged, not taken for charged."""
    p, cfg, svc, alice, tar = _party(tmp_path, budgets={"alice": 100.0})
    first = _finalize(svc, _write_all(svc, alice, tar, "x" * 20), alice)
    svc.experts.remove("alice", first.record.artifact_digest)        # as a Forget does (its ledger entry aside)
    rec = _write_all(svc, alice, tar, "y" * 20)

    svc.ledger._fault = _crash_before_the_ledger_commit
    monkeypatch.setattr(svc.experts, "discard_staged", lambda *a: None)   # a dead process discards nothing
    with pytest.raises(Crash):
        _finalize(svc, rec, alice)
    svc.ledger._fault = None
    monkeypatch.undo()
    assert svc.experts.staged("alice", first.record.artifact_digest) is not None and svc.ledger.count() == 1
    again = _finalize(svc, svc.uploads.get("y" * 20, "alice"), alice)
    assert svc.ledger.count() == 2 and again.entry.receipt_id != first.entry.receipt_id


def test_crash_before_the_ledger_commit_leaves_nothing_and_the_upload_resumes(tmp_path):
    p, cfg, svc, alice, tar = _party(tmp_path)
    upload_id = "v" * 20
    rec = _write_all(svc, alice, tar, upload_id)
    svc.ledger._fault = _crash_before_the_ledger_commit
    with pytest.raises(Crash):
        _finalize(svc, rec, alice)
    from provider_party.service.server import ProviderServer

    server = ProviderServer(cfg).start()                              # restart on the same state
    try:
        s = server.servicer.party
        assert s.ledger.count() == 0 and _visible(s) == [] and s.ledger.verify_chain() == []
        assert not any((s.experts.root / "staging").rglob("*")) or s.recovery["discarded"] >= 0
        with provider_client(p, server.address) as pc:
            status = pc.upload_status(upload_id)
            assert (status.state, status.received_bytes) == ("receiving", len(tar))
            result = pc.upload(tar, "titanic", upload_id=upload_id)   # nothing left to send: the provider finalizes
        assert result.receipt.sequence == 1 and len(_visible(s)) == 1 and s.ledger.verify_chain() == []
    finally:
        server.stop()


def _header(p, tar: bytes, upload_id: str, offset: int = 0) -> provider_pb2.UploadHeader:
    h = provider_pb2.UploadHeader(upload_id=upload_id, dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                                  artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=offset)
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(p.keys["alice"], "alice", UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))
    return h


def test_provider_killed_mid_upload_restarts_with_a_sound_ledger_and_no_half_artifact(tmp_path):
    from simulations.two_party_demo import free_port, spawn, stop, wait_healthy, write_provider_config

    p = make_parties(tmp_path)
    cfg_path = write_provider_config(tmp_path / "provider" / "provider.toml", listen=f"127.0.0.1:{free_port()}",
                                     clients=[{"id": "alice", "public_key": "../keys/alice.pub", "epsilon_budget": 10.0}])
    addr = cfg_path.read_text().split('listen = "')[1].split('"')[0]
    log = tmp_path / "provider" / "provider.log"
    argv = ["provider", "serve", "--config", str(cfg_path), "--no-preload"]

    def start():
        proc = spawn(argv, log, threads=1)
        wait_healthy(addr, p.tls["orchestrator"], "llamdex.v1.ProviderService", [("provider", proc, log)], timeout_s=90)
        return proc

    proc = start()
    try:
        # one good upload before the crash: it must survive
        with provider_client(p, addr) as pc:
            first = pc.upload(make_artifact(tmp_path / "first", p.keys["alice"]), "titanic")
        tar = pack_artifact(make_artifact(tmp_path / "a", p.keys["alice"], seed=3, hidden=(400, 200)))   # ~350 kB
        upload_id = secrets.token_urlsafe(24)
        sent = {"n": 0}

        def slow():
            yield provider_pb2.UploadRequest(header=_header(p, tar, upload_id))
            for off in range(0, len(tar), 8192):
                data = tar[off:off + 8192]
                yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=off, data=data, sha256=hashlib.sha256(data).hexdigest()))
                sent["n"] = off + len(data)
                if off >= 5 * 8192:
                    time.sleep(0.05)
        with provider_client(p, addr) as pc:
            fut = pc.stub.UploadExpert.future(slow(), timeout=60)
            deadline = time.monotonic() + 30
            while sent["n"] < 10 * 8192 and time.monotonic() < deadline:
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)                         # no goodbye
            proc.wait(10)
            with pytest.raises(grpc.RpcError):
                fut.result()
        assert 10 * 8192 <= sent["n"] < len(tar)
        ledger = Ledger(tmp_path / "provider" / "state" / "ledger.db")
        assert ledger.verify_chain(p.keys["provider"].public_key()) == [] and ledger.count() == 1
        live = tmp_path / "provider" / "state" / "experts" / "live" / "alice"
        assert [d.name for d in live.iterdir()] == [first.artifact_digest.split(":")[1]]
        proc = start()                                                  # restart on the same state
        with provider_client(p, addr) as pc:
            status = pc.upload_status(upload_id)
            assert status.state == "receiving" and 0 < status.received_bytes <= sent["n"]
            result = pc.upload(tar, "titanic", upload_id=upload_id, chunk_bytes=8192)
            assert result.receipt.sequence == 2
            from protocol.receipts import verify_chain

            assert [r.sequence for r in verify_chain(pc.ledger_receipts(), p.pubs["provider"])] == [1, 2]
        assert ledger.verify_chain(p.keys["provider"].public_key()) == [] and ledger.count() == 2
        assert sorted(d.name for d in live.iterdir()) == sorted(x.split(":")[1] for x in (first.artifact_digest, result.artifact_digest))
    finally:
        stop(proc)


# --- Forget cut off between its ledger entry and the deletion of files ------------------------------------------

class Died(Exception):
    """The handler stops at this point, as if the process had died there (a gRPC handler may not raise BaseException)."""


def _die(*a, **k):
    raise Died("killed here")


def _uploaded_with_connectors(tmp_path, p, server):
    from tests._grpc_fixtures import titanic_schema

    with provider_client(p, server.address) as pc:
        res = pc.upload(make_artifact(tmp_path / "a", p.keys["alice"]), "titanic")
    s = server.servicer.party
    conn = s.connectors.path_for(s.base_model_id(), titanic_schema().digest)   # stands for trained connectors
    conn.mkdir(parents=True)
    (conn / "connectors.json").write_text("{}\n")
    return res, conn


@pytest.mark.parametrize("point", ["before removing the expert", "before deleting the connectors"])
def test_forget_cut_off_after_its_ledger_entry_is_finished_at_restart(tmp_path, point):
    from protocol.receipts import verify_receipt
    from provider_party.service.server import ProviderServer

    p = make_parties(tmp_path)
    cfg = provider_config(p)
    server = ProviderServer(cfg).start()
    s = server.servicer.party
    try:
        res, conn = _uploaded_with_connectors(tmp_path, p, server)
        if point == "before removing the expert":
            s.experts.remove = _die
        else:
            s.connectors.delete = _die
        with provider_client(p, server.address) as pc:
            with pytest.raises(grpc.RpcError) as e:
                pc.forget(res.artifact_digest)
            assert e.value.code() == grpc.StatusCode.INTERNAL
    finally:
        server.stop()
    entries = s.ledger.entries()[0]
    assert [e.kind for e in entries] == ["upload", "deletion"]                  # the promise is in the ledger ...
    assert verify_receipt(entries[1].receipt, p.pubs["provider"]).deleted == ("expert", "connectors")
    assert conn.exists() and s.forgets.pending()                                # ... the files are not deleted yet
    assert (_visible(s) == [res.artifact_digest]) == (point == "before removing the expert")

    again = ProviderParty(cfg)                                               # the restarted provider keeps the promise
    assert (again.recovery["forgets_finished"], again.recovery["connectors_deleted"]) == (1, 1)
    assert not conn.exists() and _visible(again) == [] and again.forgets.pending() == []
    assert again.ledger.verify_chain() == [] and again.ledger.count() == 2
    third = ProviderParty(cfg)                                               # and there is nothing left to do
    assert (third.recovery["forgets_finished"], third.recovery["forgets_dropped"], third.recovery["connectors_deleted"]) == (0, 0, 0)


def test_forget_cut_off_before_its_ledger_entry_deletes_nothing_at_restart(tmp_path):
    from provider_party.service.server import ProviderServer

    p = make_parties(tmp_path)
    cfg = provider_config(p)
    server = ProviderServer(cfg).start()
    s = server.servicer.party
    try:
        res, conn = _uploaded_with_connectors(tmp_path, p, server)

        def fault(point):
            if point == "before_commit":
                raise Died("killed before the deletion entry committed")
        s.ledger._fault = fault
        with provider_client(p, server.address) as pc:
            with pytest.raises(grpc.RpcError):
                pc.forget(res.artifact_digest)
    finally:
        server.stop()
    assert s.ledger.count() == 1 and s.forgets.pending()                        # noted, never promised
    again = ProviderParty(cfg)
    assert (again.recovery["forgets_dropped"], again.recovery["connectors_deleted"]) == (1, 0)
    assert conn.exists() and _visible(again) == [res.artifact_digest] and again.forgets.pending() == []
    assert again.ledger.verify_chain() == [] and again.ledger.count() == 1


# --- connector jobs across a restart ---------------------------------------------------------------------------

def _wait(cond, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_watchjob_after_a_restart_reports_old_jobs_final_state_and_cut_off_jobs_failed(tmp_path):
    import json
    import threading

    from protocol.wire import JOB_STATE_NAMES
    from provider_party.service.server import ProviderServer

    p = make_parties(tmp_path)
    cfg = provider_config(p)
    svc = ProviderParty(cfg)
    release = threading.Event()

    def runner(job, progress):
        progress("training", 0.5)
        if job.client_id == "bob":
            release.wait(60)                                        # still running when the provider "dies"
        return False, {"accuracy": 0.75}
    svc.jobs.runner = runner
    done = svc.jobs.submit("alice", "sha256:" + "a" * 64, "base@1", "", False, None)
    _wait(lambda: done.state == "SUCCEEDED")
    cut = svc.jobs.submit("bob", "sha256:" + "b" * 64, "base@1", "", False, None)
    _wait(lambda: cut.state == "RUNNING")

    server = ProviderServer(cfg).start()                            # the restarted provider, on the same state
    try:
        assert server.servicer.party.recovery["jobs_failed"] == 1
        with provider_client(p, server.address) as pc:
            events = list(pc.watch_job(done.job_id, timeout_s=10))
            assert [JOB_STATE_NAMES[e.state] for e in events][0] == "QUEUED"
            last = events[-1]
            assert JOB_STATE_NAMES[last.state] == "SUCCEEDED" and last.fraction == 1.0
            assert last.result.schema_digest == "sha256:" + "a" * 64 and json.loads(last.result.metrics_json) == {"accuracy": 0.75}
            assert not last.result.error and last.result.seconds >= 0
            with pytest.raises(grpc.RpcError) as e:                 # another client's job is not found
                list(pc.watch_job(cut.job_id, timeout_s=10))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with provider_client(p, server.address, "bob") as pc:
            last = list(pc.watch_job(cut.job_id, timeout_s=10))[-1]
            assert JOB_STATE_NAMES[last.state] == "FAILED" and "stopped while this job was running" in last.result.error
            assert last.result.error in last.message
    finally:
        release.set()
        svc.jobs.stop()
        server.stop()


def test_a_budget_changed_in_the_configuration_applies_at_restart_unless_below_the_spend(tmp_path, caplog):
    p, cfg, svc, alice, tar = _party(tmp_path, budgets={"alice": 2.0})
    fin = _finalize(svc, _write_all(svc, alice, tar, "u" * 20), alice)
    spent = svc.ledger.budget("alice", "titanic").epsilon_spent
    assert fin.entry.receipt and 0 < spent < 2.0 and svc.budget_changes == []

    raised = ProviderParty(provider_config(p, budgets={"alice": 3.0}))       # the operator raised it
    assert raised.ledger.budget("alice", "titanic").epsilon_budget == 3.0
    assert raised.budget_changes == ["applied: budget of client 'alice' dataset 'titanic': ε 2 → 3, δ inf → inf"]

    # below what was spent: the start is refused. It used to log one ERROR line and keep charging the old budget of 3.
    with pytest.raises(ConfigError, match=r"client 'alice' dataset 'titanic': ε [0-9.]+, δ inf is below the ε [0-9.]+, δ [0-9.e-]+ already spent"):
        ProviderParty(provider_config(p, budgets={"alice": spent / 2}))
    again = ProviderParty(provider_config(p, budgets={"alice": 3.0}))   # nothing was changed by the refused start
    b = again.ledger.budget("alice", "titanic")
    assert (b.epsilon_budget, b.epsilon_spent) == (3.0, spent) and again.budget_changes == []
    assert again.ledger.verify_chain() == []
