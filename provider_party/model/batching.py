"""Dynamic batching across tenants: concurrent callers' rows share one forward pass of the base LLM.

Each caller (an Ask of one client) submits its rows (`TenantQuery`: question, schema connectors,
client expert) and waits. One worker thread takes the queued requests in arrival order, lets the
oldest wait at most `max_wait_ms` for others to join (or until `max_batch_rows` rows are there),
answers them all with one `answer_mixed` pass, and hands each caller its own rows. While a pass
runs, new requests queue up and form the next pass, so under load the batch fills by itself and
at low load a request waits only `max_wait_ms`. This is what multi-adapter servers do (Triton's
dynamic batcher, vLLM/LoRAX/S-LoRA continuous batching with one base model and many adapters), at
the granularity of whole requests: a Llamdex answer is one pass, there is no decoding loop.

Limits are explicit: the queue holds at most `max_queued_rows` rows and refuses more at once
(`QUEUE_FULL`, back-pressure instead of memory growth); each request has a deadline and is dropped
unanswered (`DEADLINE_EXCEEDED`) if it expires before its pass starts; `close()` refuses new work
(`SHUTTING_DOWN`) and either drains or fails what is queued. A pass that fails is retried request
by request, so one bad request fails only its own caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable

from protocol.errors import CodedError
from provider_party.model.llamdex_model import RowAnswer, TenantQuery, answer_mixed

log = logging.getLogger(__name__)

Runner = Callable[[list[TenantQuery]], list[RowAnswer]]


class BatcherError(CodedError):
    """A request the batcher did not answer: QUEUE_FULL, DEADLINE_EXCEEDED or SHUTTING_DOWN."""


@dataclass(frozen=True)
class BatchingLimits:
    """How long a request may wait for company, how big a pass and the queue may grow, and the default deadline."""

    max_wait_ms: float = 5.0          # the oldest queued request waits at most this long for others to join its pass
    max_batch_rows: int = 32          # rows per pass (a single larger request still runs, alone)
    max_queued_rows: int = 512        # rows waiting for a pass; a request that would pass this is refused
    deadline_s: float = 120.0         # default time from submit to answer

    def __post_init__(self) -> None:
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        for name in ("max_batch_rows", "max_queued_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s!r}")


@dataclass
class BatcherStats:
    """Counters since start (read them with `MixedBatcher.stats()`, a copy)."""

    requests: int = 0                 # accepted by submit
    rows: int = 0                     # rows answered
    passes: int = 0                   # answer_mixed calls (retries included)
    coalesced_passes: int = 0         # passes that served more than one request
    max_requests_in_pass: int = 0
    max_rows_in_pass: int = 0
    refused_full: int = 0
    expired: int = 0
    failed: int = 0
    retried_alone: int = 0


@dataclass
class _Request:
    queries: list[TenantQuery]
    base_key: int                     # rows of one pass must share one base LLM
    deadline: float                   # time.monotonic()
    enqueued: float
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.queries)


class MixedBatcher:
    """Collects concurrent callers' rows (any clients, any schemas) into shared `answer_mixed` passes."""

    def __init__(self, limits: BatchingLimits | None = None, run: Runner = answer_mixed, name: str = "llamdex-batcher"):
        self.limits = limits or BatchingLimits()
        self._run = run
        self._name = name
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._drain = True
        self._worker: threading.Thread | None = None
        self._stats = BatcherStats()

    # --- callers ---------------------------------------------------------------------------------------
    def submit(self, queries: list[TenantQuery], deadline_s: float | None = None) -> Future:
        """Queues one caller's rows; the future resolves to their answers, in order, or to a BatcherError."""
        if not queries:
            raise ValueError("submit needs at least one row")
        lim = self.limits
        now = time.monotonic()
        request = _Request(list(queries), id(queries[0].model.base), now + (deadline_s if deadline_s is not None else lim.deadline_s), now)
        with self._cond:
            if self._closing:
                raise BatcherError("SHUTTING_DOWN", "the provider is shutting down and takes no new questions; retry against a running provider",
                                   rule="shutdown")
            if self._queued_rows + request.rows > lim.max_queued_rows:
                self._stats.refused_full += 1
                raise BatcherError("QUEUE_FULL", f"the answer queue holds {self._queued_rows} of at most {lim.max_queued_rows} rows and this "
                                   f"request adds {request.rows}; retry after a short back-off (or the operator raises [limits] "
                                   "batch_max_queued_rows)", rule="batch_max_queued_rows")
            self._queue.append(request)
            self._queued_rows += request.rows
            self._stats.requests += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return request.future

    def answer(self, queries: list[TenantQuery], deadline_s: float | None = None) -> list[RowAnswer]:
        """Submits and waits: the answers of `queries`, or the BatcherError (or the pass's own error) that stopped them."""
        budget = deadline_s if deadline_s is not None else self.limits.deadline_s
        future = self.submit(queries, budget)
        try:
            return future.result(timeout=budget)
        except (FutureTimeout, CancelledError):
            future.cancel()   # not started yet: the worker skips it; started: its answer is dropped
            raise _deadline(budget) from None

    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(**vars(self._stats))

    def queued_rows(self) -> int:
        with self._cond:
            return self._queued_rows

    def close(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Refuses new requests; answers what is queued (`drain`) or fails it with SHUTTING_DOWN; waits for the worker."""
        with self._cond:
            self._closing, self._drain = True, drain
            if not drain:
                self._fail_queued(BatcherError("SHUTTING_DOWN", "the provider shut down before this request's pass started; retry "
                                               "against a running provider", rule="shutdown"))
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout_s)

    def __enter__(self) -> "MixedBatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the worker ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._answer(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Waits for a first request, lets it wait up to max_wait_ms for company, and takes one pass's worth."""
        lim = self.limits
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None                       # closing and nothing left
            head = self._queue[0]
            close_at = head.enqueued + lim.max_wait_ms / 1000.0
            while not self._closing and self._compatible_rows(head.base_key) < lim.max_batch_rows:
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._take(head.base_key)

    def _compatible_rows(self, base_key: int) -> int:
        return sum(r.rows for r in self._queue if r.base_key == base_key)

    def _take(self, base_key: int) -> list[_Request]:
        """Queued requests for one pass, oldest first; expired and cancelled ones leave the queue unanswered."""
        now, rows, taken, kept = time.monotonic(), 0, [], deque()
        for r in self._queue:
            if r.future.cancelled():
                self._queued_rows -= r.rows
            elif r.deadline <= now:
                self._queued_rows -= r.rows
                self._stats.expired += 1
                r.future.set_exception(_deadline(r.deadline - r.enqueued))
            elif r.base_key == base_key and (not taken or rows + r.rows <= self.limits.max_batch_rows):
                self._queued_rows -= r.rows
                taken.append(r)
                rows += r.rows
            else:
                kept.append(r)
        self._queue = kept
        return [r for r in taken if r.future.set_running_or_notify_cancel()]

    def _answer(self, batch: list[_Request]) -> None:
        rows = [q for r in batch for q in r.queries]
        try:
            answers = self._pass(rows)
        except Exception as e:  # noqa: BLE001 - one bad request must not fail the others
            if len(batch) == 1:
                self._fail(batch[0], e)
                return
            log.warning("a mixed pass of %d requests failed (%s: %s); answering them one by one", len(batch), type(e).__name__, e)
            for r in batch:
                with self._cond:
                    self._stats.retried_alone += 1
                try:
                    r.future.set_result(self._pass(r.queries))
                except Exception as e1:  # noqa: BLE001 - delivered to its caller
                    self._fail(r, e1)
            return
        with self._cond:
            if len(batch) > 1:
                self._stats.coalesced_passes += 1
            self._stats.max_requests_in_pass = max(self._stats.max_requests_in_pass, len(batch))
        at = 0
        for r in batch:
            r.future.set_result(answers[at: at + r.rows])
            at += r.rows

    def _pass(self, rows: list[TenantQuery]) -> list[RowAnswer]:
        answers = self._run(rows)
        with self._cond:
            self._stats.passes += 1
            self._stats.rows += len(rows)
            self._stats.max_rows_in_pass = max(self._stats.max_rows_in_pass, len(rows))
        return answers

    def _fail(self, r: _Request, e: BaseException) -> None:
        with self._cond:
            self._stats.failed += 1
        r.future.set_exception(e)

    def _fail_queued(self, err: BatcherError) -> None:
        for r in self._queue:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(err)
        self._queue.clear()
        self._queued_rows = 0


def _deadline(seconds: float) -> BatcherError:
    return BatcherError("DEADLINE_EXCEEDED", f"no answer within the request's deadline of {seconds:.3g} s (queue and pass); the provider is "
                        "overloaded: retry later with fewer questions per call, or with a longer deadline", rule="deadline")


__all__ = ["BatcherError", "BatcherStats", "BatchingLimits", "MixedBatcher"]
