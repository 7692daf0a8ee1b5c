"""Connector (customization) jobs: a queue served by one worker thread, with progress events.

Training connectors takes minutes of CPU, so it never runs on a gRPC server thread: `Customize`
submits a job and returns at once, the worker runs it, and any number of `WatchJob` streams
follow its events (each stream starts from the first event). A job for a (base model, schema)
that is already queued or running is shared rather than duplicated.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from protocol.rpc_errors import RpcError

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED"
TERMINAL = (SUCCEEDED, FAILED)


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

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started if self.started else 0.0

    def result_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "client_id": self.client_id, "base_model_id": self.base_model_id,
                "schema_digest": self.schema_digest, "connectors_reused": self.connectors_reused, "state": self.state,
                "error": self.error, "metrics_json": json.dumps(self.metrics, sort_keys=True, default=str), "seconds": self.seconds}


# runner(job, progress(stage, fraction)) -> (connectors_reused, metrics)
Runner = Callable[[Job, Callable[[str, float], None]], tuple[bool, dict]]


class JobManager:
    def __init__(self, runner: Runner, max_queue: int = 8, on_done: Callable[[Job], None] | None = None):
        self.runner = runner
        self.max_queue = max_queue
        self.on_done = on_done
        self.jobs: dict[str, Job] = {}
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="llamdex-connector-jobs", daemon=True)
        self._worker.start()

    def _event(self, job: Job, state: str, stage: str, fraction: float, message: str = "") -> None:
        with self._cond:
            job.state = state
            job.events.append(JobEventRecord(state, stage, max(0.0, min(1.0, float(fraction))), message, int(time.time() * 1000)))
            self._cond.notify_all()

    def submit(self, client_id: str, schema_digest: str, base_model_id: str, preset: str, retrain: bool, payload: Any) -> Job:
        with self._cond:
            for j in self.jobs.values():
                if j.state in (QUEUED, RUNNING) and j.schema_digest == schema_digest and j.base_model_id == base_model_id:
                    j.watchers.add(client_id)
                    return j
            pending = sum(1 for j in self.jobs.values() if j.state in (QUEUED, RUNNING))
            if pending >= self.max_queue:
                raise RpcError("QUEUE_FULL", f"{pending} connector jobs are pending; the limit is {self.max_queue}; retry later", rule="max_job_queue")
            job = Job(uuid.uuid4().hex, client_id, schema_digest, base_model_id, preset, retrain, payload, watchers={client_id})
            self.jobs[job.job_id] = job
        self._event(job, QUEUED, "queued", 0.0, f"connectors for schema {schema_digest[:19]}… on {base_model_id}")
        self._queue.put(job)
        return job

    def get(self, job_id: str, client_id: str) -> Job:
        with self._cond:
            job = self.jobs.get(job_id)
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
            job.started = time.time()
            self._event(job, RUNNING, "starting", 0.0)
            try:
                reused, metrics = self.runner(job, lambda stage, frac: self._event(job, RUNNING, stage, frac))
                job.connectors_reused, job.metrics = reused, metrics
                job.finished = time.time()
                self._event(job, SUCCEEDED, "done", 1.0, "connectors reused" if reused else f"connectors trained in {job.seconds:.0f} s")
            except Exception as e:  # noqa: BLE001 - a failed job is reported, the worker goes on
                log.error("connector job %s failed: %s", job.job_id, traceback.format_exc())
                job.error, job.finished = f"{type(e).__name__}: {e}", time.time()
                self._event(job, FAILED, "failed", job.events[-1].fraction if job.events else 0.0, job.error)
            if self.on_done is not None:
                try:
                    self.on_done(job)
                except Exception:  # noqa: BLE001
                    log.warning("job %s: result delivery failed", job.job_id, exc_info=True)

    def stop(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)


__all__ = ["FAILED", "Job", "JobEventRecord", "JobManager", "QUEUED", "RUNNING", "SUCCEEDED"]
