"""The connector job manager (provider_party/service/jobs.py): one worker, shared jobs, progress events, limits,
ownership, and records that outlive the provider. The runner is a small function the test controls (the part under
test is the manager, not connector training)."""

from __future__ import annotations

import threading
import time

import pytest

from protocol.rpc_errors import RpcError
from provider_party.service.jobs import (
    FAILED,
    INTERRUPTED,
    MAX_STORED_EVENTS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobManager,
    JobStore,
)

SCHEMA_A, SCHEMA_B, BASE = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "base@1"


class GatedRunner:
    """Reports two progress steps, then waits for `release` before it returns (or raises when told to fail)."""

    def __init__(self, fail: bool = False):
        self.release, self.started, self.fail, self.calls = threading.Event(), threading.Event(), fail, []

    def __call__(self, job, progress):
        self.calls.append(job.job_id)
        self.started.set()
        progress("encoder", 0.25)
        progress("decoder", 0.75)
        assert self.release.wait(10), "the test never released the runner"
        if self.fail:
            raise ValueError("synthetic failure for the test")
        return False, {"inject_layer": 24}


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture()
def runner():
    r = GatedRunner()
    yield r
    r.release.set()


def test_a_job_runs_through_queued_running_succeeded_with_every_progress_event(runner):
    jobs = JobManager(runner)
    job = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    runner.release.set()
    events = list(jobs.watch(job, is_active=lambda: True))
    assert [(e.state, e.stage, e.fraction) for e in events] == [
        (QUEUED, "queued", 0.0), (RUNNING, "starting", 0.0), (RUNNING, "encoder", 0.25), (RUNNING, "decoder", 0.75), (SUCCEEDED, "done", 1.0)]
    assert job.state == SUCCEEDED and job.metrics == {"inject_layer": 24} and not job.connectors_reused and job.error == ""
    assert job.seconds > 0 and job.result_dict()["state"] == SUCCEEDED
    jobs.stop()


def test_a_failing_runner_fails_its_job_with_the_reason_and_the_worker_goes_on():
    failing = GatedRunner(fail=True)
    failing.release.set()
    jobs = JobManager(failing)
    bad = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    assert [e.state for e in jobs.watch(bad, is_active=lambda: True)][-1] == FAILED
    assert bad.error == "ValueError: synthetic failure for the test" and bad.events[-1].fraction == 0.75
    failing.fail = False
    good = jobs.submit("bob", SCHEMA_B, BASE, "quick", False, payload=None)
    assert [e.state for e in jobs.watch(good, is_active=lambda: True)][-1] == SUCCEEDED
    jobs.stop()


def test_a_second_request_for_the_same_schema_shares_the_pending_job(runner):
    jobs = JobManager(runner)
    first = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    runner.started.wait(5)
    again = jobs.submit("bob", SCHEMA_A, BASE, "quick", False, payload=None)
    other_base = jobs.submit("bob", SCHEMA_A, "other-base@1", "quick", False, payload=None)
    assert again is first and first.watchers == {"alice", "bob"}
    assert other_base is not first
    runner.release.set()
    wait_for(lambda: first.state == SUCCEEDED and other_base.state == SUCCEEDED)
    assert runner.calls == [first.job_id, other_base.job_id]  # trained once for (base, schema)
    jobs.stop()


def test_the_queue_limit_refuses_with_queue_full_and_changes_nothing(runner):
    jobs = JobManager(runner, max_queue=2)
    jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    jobs.submit("alice", SCHEMA_B, BASE, "quick", False, payload=None)
    before = dict(jobs.jobs)
    with pytest.raises(RpcError) as err:
        jobs.submit("alice", "sha256:" + "c" * 64, BASE, "quick", False, payload=None)
    assert err.value.code == "QUEUE_FULL" and "limit is 2" in str(err.value)
    assert jobs.jobs == before
    runner.release.set()
    jobs.stop()


def test_a_client_sees_only_its_own_jobs(runner):
    jobs = JobManager(runner)
    job = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    assert jobs.get(job.job_id, "alice") is job
    for who, job_id in (("mallory", job.job_id), ("alice", "no-such-job")):
        with pytest.raises(RpcError) as err:
            jobs.get(job_id, who)
        assert err.value.code == "JOB_NOT_FOUND"
    runner.release.set()
    jobs.stop()


def test_watch_ends_when_the_caller_leaves(runner):
    jobs = JobManager(runner)
    job = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    runner.started.wait(5)
    wait_for(lambda: len(job.events) >= 4)
    active = {"on": True}
    seen = []
    for ev in jobs.watch(job, is_active=lambda: active["on"], poll_s=0.05):
        seen.append(ev.stage)
        if ev.stage == "decoder":
            active["on"] = False
    assert seen == ["queued", "starting", "encoder", "decoder"] and job.state == RUNNING
    runner.release.set()
    jobs.stop()


def test_job_records_outlive_the_provider_and_cut_off_jobs_are_failed_with_the_reason(tmp_path, runner):
    store = JobStore(tmp_path / "state.db")
    jobs = JobManager(runner, store=store)
    done = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    runner.release.set()
    wait_for(lambda: done.state == SUCCEEDED)
    runner.release.clear()
    runner.started.clear()
    cut = jobs.submit("bob", SCHEMA_B, BASE, "quick", False, payload=None)
    runner.started.wait(5)
    wait_for(lambda: cut.state == RUNNING)
    # a restart: a new manager on the same store (the old worker is left blocked, as a killed process would be)
    restarted = JobManager(GatedRunner(), store=JobStore(tmp_path / "state.db"))
    assert restarted.interrupted == 1
    old = restarted.get(done.job_id, "alice")
    assert old.state == SUCCEEDED and [e.state for e in old.events][-1] == SUCCEEDED and old.metrics == {"inject_layer": 24}
    failed = restarted.get(cut.job_id, "bob")
    assert failed.state == FAILED and failed.error == INTERRUPTED.format(state="running")
    assert [e.state for e in restarted.watch(failed, is_active=lambda: True)][-1] == FAILED
    with pytest.raises(RpcError):
        restarted.get(done.job_id, "bob")  # ownership survives the restart too
    runner.release.set()
    jobs.stop()
    restarted.stop()


def test_a_stored_record_keeps_the_first_and_the_latest_events(tmp_path):
    from provider_party.service.jobs import Job, JobEventRecord

    store = JobStore(tmp_path / "state.db")
    job = Job("j1", "alice", SCHEMA_A, BASE, "quick", False, state=RUNNING,
              events=[JobEventRecord(RUNNING, f"step {i}", i / 5000, "", i) for i in range(MAX_STORED_EVENTS + 50)], watchers={"alice"})
    store.save(job)
    back = store.load("j1")
    assert len(back.events) == MAX_STORED_EVENTS
    assert back.events[0].stage == "step 0" and back.events[-1].stage == f"step {MAX_STORED_EVENTS + 49}"
    assert store.load("nope") is None


def test_the_progress_fraction_never_goes_back_even_when_the_runner_reports_less():
    def runner(job, progress):
        progress("encoder", 0.6)
        progress("encoder, weak columns again", 0.4)   # a runner may start a stage over
        progress("decoder", 0.8)
        return False, {}

    jobs = JobManager(runner)
    job = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, payload=None)
    events = list(jobs.watch(job, is_active=lambda: True))
    assert [(e.stage, e.fraction) for e in events][2:] == [("encoder", 0.6), ("encoder, weak columns again", 0.6), ("decoder", 0.8), ("done", 1.0)]
    jobs.stop()


def test_a_drain_stops_the_running_job_at_its_next_progress_report_and_skips_queued_ones():
    """SIGTERM during connector training: the worker was joined for 5 s, then the interpreter exited with the job
    thread still inside torch, and the C++ runtime aborted the provider (exit 134)."""
    started, steps = threading.Event(), []

    def training(job, progress):
        started.set()
        for i in range(10_000):   # a long job that reports progress every few milliseconds, as connector training does
            progress("encoder", i / 10_000)
            steps.append(i)
            time.sleep(0.005)
        return False, {}

    jobs = JobManager(training)
    running = jobs.submit("alice", SCHEMA_A, BASE, "quick", False, None)
    queued = jobs.submit("bob", SCHEMA_B, BASE, "quick", False, None)
    assert started.wait(10)
    t0 = time.monotonic()
    assert jobs.stop(timeout_s=10) is True and time.monotonic() - t0 < 5
    assert running.state == FAILED and "stopped" in running.error and len(steps) < 10_000
    assert queued.state == FAILED and "before this job started" in queued.error
