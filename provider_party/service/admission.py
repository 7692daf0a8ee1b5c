"""Admission control for `Ask`: back-pressure instead of an unbounded queue.

A forward pass of the base LLM takes a fixed amount of CPU; calls that run beside each other only
share it, so admitting more of them at once makes every one of them slower and the process bigger
(each holds its activations). The gate admits at most `max_concurrent_asks` calls at once; a call
beyond that waits at most `ask_admission_wait_s` for a free place and is then refused with
RESOURCE_EXHAUSTED `OVERLOADED`, which names a retry delay. One client holds at most
`max_asks_per_client` places (admitted or waiting), so a client flooding the provider is refused
before it can crowd out the others. The gate sits in front of `ProviderParty.ask`, so it works the
same whether the core answers each call in its own pass or batches concurrent calls together (then
`max_concurrent_asks` is how many calls may be gathered into one pass).

Counters (admitted, refused, waits) are kept for the load test and the operator's log.

`StreamSlots` bounds the server threads that long-lived streams hold (an UploadExpert stream from its first byte, a
WatchJob stream for the life of its job). The gRPC server runs each call on one of `max_workers` threads; without a
bound, one client opening 16 streams that never sent a header (or watched one job 16 times) left no thread for any
other client's call, nor for the health probe (wire sweep, 2026-12). Each client holds at most
`max_streams_per_client`, and all together at most `max_workers - reserved_workers`, so that short calls always find
a thread.

`InteractiveFirst` orders the provider's own CPU work: an upload's verification (hashing, signature,
tensor headers, ledger and receipt) waits while an Ask pass runs, at most `background_wait_s`. Why: on
a small CPU the pass's intra-op threads and the verifier compete for the same cores and for Python's
GIL, and the pass, which a person waits for, slowed 2-7x under 32 uploaders (load test, 2 cores); an
upload is a one-off transfer whose extra second nobody notices. The wait is bounded, so uploads are
never starved, only deferred to the gaps between passes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from protocol.rpc_errors import RpcError


@dataclass
class GateStats:
    admitted: int = 0
    refused_busy: int = 0          # no place within the wait
    refused_per_client: int = 0    # the client already held its share
    wait_s_total: float = 0.0
    busy_s_ewma: float = 0.0       # exponentially weighted service time of admitted calls (retry hint)
    per_client: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def cancelled_after(seconds: float, cancel: Callable[[], None] | None) -> Iterator[None]:
    """Runs the body with `cancel` (a call's `context.cancel`) armed to fire after `seconds`: a stream whose sender goes
    quiet would otherwise hold its server thread, and its client's stream place, for as long as the connection stays
    open. None arms nothing (a caller with no call to cancel, e.g. the in-process path)."""
    timer = threading.Timer(seconds, cancel) if cancel is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


class StreamSlots:
    """At most `total` long-lived streams at once, each client at most `per_client`; beyond that a stream is refused at
    once (RESOURCE_EXHAUSTED `TOO_MANY_STREAMS`) instead of waiting for a thread another client holds."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = int(total), int(per_client)
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, client_id: str, call: str) -> Iterator[None]:
        with self._lock:
            mine, everyone = self._held.get(client_id, 0), sum(self._held.values())
            if mine >= self.per_client:
                raise RpcError("TOO_MANY_STREAMS", f"client {client_id!r} already holds {mine} UploadExpert/WatchJob streams, its limit "
                               f"(max_streams_per_client); finish or cancel one before opening this {call}", rule="max_streams_per_client")
            if everyone >= self.total:
                raise RpcError("TOO_MANY_STREAMS", f"the provider holds {everyone} UploadExpert/WatchJob streams, its limit (max_workers - "
                               f"reserved_workers); retry this {call} in a few seconds", rule="max_workers - reserved_workers")
            self._held[client_id] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[client_id] - 1
                if left:
                    self._held[client_id] = left
                else:
                    del self._held[client_id]

    def held(self, client_id: str | None = None) -> int:
        with self._lock:
            return self._held.get(client_id, 0) if client_id is not None else sum(self._held.values())


class AskGate:
    """At most `max_concurrent` Ask calls at once, each client at most `per_client` places; waiters give up after `wait_s`."""

    def __init__(self, max_concurrent: int, wait_s: float, per_client: int):
        self.max_concurrent, self.wait_s, self.per_client = int(max_concurrent), float(wait_s), int(per_client)
        self._cond = threading.Condition()
        self._running = 0
        self._held: dict[str, int] = {}
        self.stats = GateStats()

    def _retry_hint_s(self) -> float:
        return max(0.1, self.stats.busy_s_ewma or 0.5)

    @contextlib.contextmanager
    def admit(self, client_id: str) -> Iterator[None]:
        """Holds one place for the body of the `with`; raises RpcError OVERLOADED when none frees up in time."""
        with self._cond:
            if self._held.get(client_id, 0) >= self.per_client:
                self.stats.refused_per_client += 1
                raise RpcError("OVERLOADED", f"client {client_id!r} already has {self.per_client} Ask calls admitted or waiting "
                               f"(max_asks_per_client); wait for their answers, then retry", rule="max_asks_per_client")
            self._held[client_id] = self._held.get(client_id, 0) + 1
            t0 = time.monotonic()
            deadline = t0 + self.wait_s
            while self._running >= self.max_concurrent:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._release_hold(client_id)
                    self.stats.refused_busy += 1
                    raise RpcError("OVERLOADED", f"the provider is answering {self._running} Ask calls, its limit (max_concurrent_asks); "
                                   f"none finished within {self.wait_s:g} s; retry in about {self._retry_hint_s():.1f} s",
                                   rule="max_concurrent_asks")
                self._cond.wait(left)
            self._running += 1
            self.stats.admitted += 1
            self.stats.wait_s_total += time.monotonic() - t0
            self.stats.per_client[client_id] = self.stats.per_client.get(client_id, 0) + 1
        start = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._release_hold(client_id)
                busy = time.monotonic() - start
                self.stats.busy_s_ewma = busy if not self.stats.busy_s_ewma else 0.8 * self.stats.busy_s_ewma + 0.2 * busy
                self._cond.notify()

    def _release_hold(self, client_id: str) -> None:
        n = self._held.get(client_id, 0) - 1
        if n <= 0:
            self._held.pop(client_id, None)
        else:
            self._held[client_id] = n


class InteractiveFirst:
    """Foreground passes (`foreground`) and background steps that yield to them (`background_turn`)."""

    def __init__(self, max_wait_s: float):
        self.max_wait_s = float(max_wait_s)
        self._cond = threading.Condition()
        self._running = 0

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if self._running == 0:
                    self._cond.notify()   # one deferred step at a time: a burst of them would slow the next call's own work

    def background_turn(self) -> float:
        """Returns once no foreground pass runs, or after `max_wait_s`; the seconds waited."""
        with self._cond:
            if self._running == 0 or self.max_wait_s <= 0:
                return 0.0
            t0 = time.monotonic()
            self._cond.wait_for(lambda: self._running == 0, timeout=self.max_wait_s)
            return time.monotonic() - t0


__all__ = ["AskGate", "GateStats", "InteractiveFirst"]
