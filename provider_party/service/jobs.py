"""Connector (customization) jobs: a queue served by one worker thread, with progress events.

Training connectors takes minutes of CPU, so it never runs on a gRPC server thread: `Customize`
submits a job and returns at once, the worker runs it, and any number of `WatchJob` streams
follow its events (each stream starts from the first event). A job for a (base model, schema)
that is already queued or running is shared rather than duplicated.

Job records (id, clients, base model, schema digest, state, progress, events, result summary) are kept
in SQLite (`JobStore`: table `jobs` of the provider's state.db, apart from the hash-chained ledger):
written at every change of state and at most every `PROGRESS_EVERY_S` during progress, so `WatchJob`
after a restart replays an old job's events up to its final state. A job that was queued or running
when the provider stopped is recorded FAILED at the next start, with the reason.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from protocol.crashpoints import crashpoint
from protocol.durable_db import connect_durable, init_schema
from protocol.rpc_errors import RpcError

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED"
TERMINAL = (SUCCEEDED, FAILED)
PROGRESS_EVERY_S = 2.0      # progress events are persisted at most this often (state changes always)
MAX_STORED_EVENTS = 1000    # the oldest events beyond this are dropped from the stored record (the first is kept)
INTERRUPTED = "the provider stopped while this job was {state}; call Customize again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id            TEXT PRIMARY KEY,
    client_id         TEXT NOT NULL,
    watchers          TEXT NOT NULL,        -- JSON list of the clients sharing the job
    schema_digest     TEXT NOT NULL,
    base_model_id     TEXT NOT NULL,
    preset            TEXT NOT NULL,
    retrain           INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')),
    stage             TEXT NOT NULL,
    fraction          REAL NOT NULL,
    connectors_reused INTEGER NOT NULL,
    error             TEXT NOT NULL,
    metrics_json      TEXT NOT NULL,
    events            TEXT NOT NULL,        -- JSON list of the events, oldest first
    created_at        REAL NOT NULL,
    started           REAL NOT NULL,
    finished          REAL NOT NULL,
    updated_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
"""


@dataclass
class JobEventRecord:
    state: str
    stage: str
    fraction: float
    message: str
    time_ms: int


@dataclass
class Job:
    job_id: str
    client_id: str
    schema_digest: str
    base_model_id: str
    preset: str
    retrain: bool
    payload: Any = None                 # what the runner needs (the schema)
    state: str = QUEUED
    events: list[JobEventRecord] = field(default_factory=list)
    connectors_reused: bool = False
    error: str = ""
    metrics: dict = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    watchers: set[str] = field(default_factory=set)   # clients sharing this job
    created_at: float = field(default_factory=time.time)

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started if self.started else 0.0

    def result_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "client_id": self.client_id, "base_model_id": self.base_model_id,
                "schema_digest": self.schema_digest, "connectors_reused": self.connectors_reused, "state": self.state,
                "error": self.error, "metrics_json": json.dumps(self.metrics, sort_keys=True, default=str), "seconds": self.seconds}


class JobStore:
    """Job records in SQLite (WAL, synchronous=FULL), one row per job, rewritten as the job moves."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        init_schema(self.db_path, _SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return connect_durable(self.db_path)

    def save(self, job: Job) -> None:
        last = job.events[-1] if job.events else JobEventRecord(job.state, "", 0.0, "", int(time.time() * 1000))
        events = job.events if len(job.events) <= MAX_STORED_EVENTS else job.events[:1] + job.events[-(MAX_STORED_EVENTS - 1):]
        row = (job.job_id, job.client_id, json.dumps(sorted(job.watchers)), job.schema_digest, job.base_model_id, job.preset, int(job.retrain),
               job.state, last.stage, last.fraction, int(job.connectors_reused), job.error,
               json.dumps(job.metrics, sort_keys=True, default=str), json.dumps([asdict(e) for e in events]),
               job.created_at, job.started, job.finished, time.time())
        con = self._connect()
        try:
            con.execute("INSERT OR REPLACE INTO jobs (job_id, client_id, watchers, schema_digest, base_model_id, preset, retrain, state, stage, "
                        "fraction, connectors_reused, error, metrics_json, events, created_at, started, finished, updated_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        finally:
            con.close()

    @staticmethod
    def _job(r: sqlite3.Row) -> Job:
        job = Job(r["job_id"], r["client_id"], r["schema_digest"], r["base_model_id"], r["preset"], bool(r["retrain"]), None, r["state"],
                  [JobEventRecord(**e) for e in json.loads(r["events"])], bool(r["connectors_reused"]), r["error"],
                  json.loads(r["metrics_json"]), r["started"], r["finished"], set(json.loads(r["watchers"])))
        job.created_at = r["created_at"]
        return job

    def load(self, job_id: str) -> Job | None:
        con = self._connect()
        try:
            r = con.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        finally:
            con.close()
        return self._job(r) if r is not None else None

    def fail_interrupted(self) -> int:
        """At start: every job still QUEUED or RUNNING was cut off by the stop; it is recorded FAILED with the reason."""
        con = self._connect()
        try:
            rows = con.execute("SELECT * FROM jobs WHERE state IN ('QUEUED', 'RUNNING')").fetchall()
        finally:
            con.close()
        for r in rows:
            job = self._job(r)
            job.error = INTERRUPTED.format(state=job.state.lower())
            job.finished = max(job.started, job.created_at, r["updated_at"])
            frac = job.events[-1].fraction if job.events else 0.0
            job.events.append(JobEventRecord(FAILED, "failed", frac, job.error, int(time.time() * 1000)))
            job.state = FAILED
            self.save(job)
        return len(rows)


# runner(job, progress(stage, fraction)) -> (connectors_reused, metrics)
Runner = Callable[[Job, Callable[[str, float], None]], tuple[bool, dict]]


class JobStopped(RuntimeError):
    """Raised inside a running job when the provider stops (drain): the job ends at its next progress report."""


class JobManager:
    def __init__(self, runner: Runner, max_queue: int = 8, on_done: Callable[[Job], None] | None = None, store: JobStore | None = None,
                 max_per_client: int | None = None):
        self.runner = runner
        self.max_queue = max_queue
        self.max_per_client = max_per_client or max_queue
        self.on_done = on_done
        self.store = store
        self.interrupted = store.fail_interrupted() if store is not None else 0
        self._saved_at: dict[str, float] = {}
        self.jobs: dict[str, Job] = {}
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="llamdex-connector-jobs", daemon=True)
        self._worker.start()

    def _event(self, job: Job, state: str, stage: str, fraction: float, message: str = "") -> None:
        with self._cond:
            changed = state != job.state or not job.events
            job.state = state
            fraction = max(0.0, min(1.0, float(fraction)))
            if job.events:   # WatchJob promises a non-decreasing fraction, whatever the runner reports (a stage re-run, a retry)
                fraction = max(fraction, job.events[-1].fraction)
            job.events.append(JobEventRecord(state, stage, fraction, message, int(time.time() * 1000)))
            self._cond.notify_all()
        self._persist(job, force=changed)

    def _persist(self, job: Job, force: bool) -> None:
        if self.store is None:
            return
        now = time.monotonic()
        if not force and now - self._saved_at.get(job.job_id, 0.0) < PROGRESS_EVERY_S:
            return
        self._saved_at[job.job_id] = now
        try:
            with self._cond:  # a consistent copy; SQLite runs outside the lock
                snap = Job(job.job_id, job.client_id, job.schema_digest, job.base_model_id, job.preset, job.retrain, None, job.state,
                           list(job.events), job.connectors_reused, job.error, dict(job.metrics), job.started, job.finished,
                           set(job.watchers), job.created_at)
            self.store.save(snap)
        except Exception:  # noqa: BLE001 - the job goes on; its record catches up at the next change
            log.warning("job %s: could not save its record", job.job_id, exc_info=True)

    def _progress(self, job: Job, stage: str, fraction: float) -> None:
        if self._stopping.is_set():   # the provider is draining: the job ends at its next progress report
            raise JobStopped("the provider was stopped while this job ran; call Customize again once it is back")
        self._event(job, RUNNING, stage, fraction)
        crashpoint("job.progress")

    def submit(self, client_id: str, schema_digest: str, base_model_id: str, preset: str, retrain: bool, payload: Any) -> Job:
        with self._cond:
            shared = next((j for j in self.jobs.values() if j.state in (QUEUED, RUNNING) and j.schema_digest == schema_digest
                           and j.base_model_id == base_model_id), None)
            if shared is not None:
                shared.watchers.add(client_id)
            else:
                pending = sum(1 for j in self.jobs.values() if j.state in (QUEUED, RUNNING))
                if pending >= self.max_queue:
                    raise RpcError("QUEUE_FULL", f"{pending} connector jobs are pending; the limit is {self.max_queue}; retry later", rule="max_job_queue")
                own = sum(1 for j in self.jobs.values() if j.state in (QUEUED, RUNNING) and j.client_id == client_id)
                if own >= self.max_per_client:
                    raise RpcError("TOO_MANY_JOBS", f"client {client_id!r} already started {own} connector jobs that are queued or running; "
                                   f"the limit is {self.max_per_client} (max_jobs_per_client): wait for one (WatchJob)", rule="max_jobs_per_client")
                job = Job(uuid.uuid4().hex, client_id, schema_digest, base_model_id, preset, retrain, payload, watchers={client_id})
                self.jobs[job.job_id] = job
        if shared is not None:
            self._persist(shared, force=True)   # the new watcher may WatchJob it after a restart
            return shared
        self._event(job, QUEUED, "queued", 0.0, f"connectors for schema {schema_digest[:19]}… on {base_model_id}")
        self._queue.put(job)
        return job

    def get(self, job_id: str, client_id: str) -> Job:
        with self._cond:
            job = self.jobs.get(job_id)
        if job is None and self.store is not None:  # a job of an earlier run of the provider: its final record
            try:
                job = self.store.load(job_id)
            except Exception:  # noqa: BLE001 - treated as unknown
                log.warning("job %s: could not read its record", job_id, exc_info=True)
                job = None
            if job is not None and job.state in TERMINAL:
                with self._cond:
                    job = self.jobs.setdefault(job_id, job)
        if job is None or client_id not in job.watchers:
            raise RpcError("JOB_NOT_FOUND", f"no job {job_id!r} for client {client_id!r}", rule="own jobs")
        return job

    def watch(self, job: Job, is_active: Callable[[], bool], poll_s: float = 0.5, max_s: float = 6 * 3600) -> Iterator[JobEventRecord]:
        """Every event of `job` from the first, then new ones as they come, until it ends or the caller leaves."""
        i, deadline = 0, time.monotonic() + max_s
        while time.monotonic() < deadline:
            with self._cond:
                while i >= len(job.events) and job.state not in TERMINAL and is_active():
                    self._cond.wait(timeout=poll_s)
                    if time.monotonic() >= deadline:
                        break
                batch = job.events[i:]
                done = job.state in TERMINAL and i + len(batch) >= len(job.events)
            for ev in batch:
                yield ev
            i += len(batch)
            if done or not is_active():
                return

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._stopping.is_set():   # queued before the drain: not started now, recorded FAILED like a running one
                job.error, job.finished = "JobStopped: the provider was stopped before this job started; call Customize again", time.time()
                self._event(job, FAILED, "failed", 0.0, job.error)
                continue
            job.started = time.time()
            self._event(job, RUNNING, "starting", 0.0)
            try:
                reused, metrics = self.runner(job, lambda stage, frac: self._progress(job, stage, frac))
                job.connectors_reused, job.metrics = reused, metrics
                job.finished = time.time()
                self._event(job, SUCCEEDED, "done", 1.0, "connectors reused" if reused else f"connectors trained in {job.seconds:.0f} s")
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the worker goes on
                if isinstance(e, JobStopped):
                    log.warning("connector job %s stopped by the drain; its client calls Customize again", job.job_id)
                else:
                    log.error("connector job %s failed: %s", job.job_id, traceback.format_exc())
                job.error, job.finished = f"{type(e).__name__}: {e}", time.time()
                self._event(job, FAILED, "failed", job.events[-1].fraction if job.events else 0.0, job.error)
            if self.on_done is not None:
                try:
                    self.on_done(job)
                except Exception:  # noqa: BLE001
                    log.warning("job %s: result delivery failed", job.job_id, exc_info=True)

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Ends the worker: a running job stops at its next progress report (recorded FAILED, with the reason) and a
        queued one is not started. Returns whether the worker ended within `timeout_s`. Why wait for it: a job thread
        still inside torch when the interpreter exits makes the C++ runtime abort the process (exit 134)."""
        self._stopping.set()
        self._queue.put(None)
        self._worker.join(timeout=timeout_s)
        return not self._worker.is_alive()


__all__ = ["FAILED", "Job", "JobEventRecord", "JobManager", "JobStopped", "JobStore", "QUEUED", "RUNNING", "SUCCEEDED"]
