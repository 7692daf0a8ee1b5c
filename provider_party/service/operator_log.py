"""What the provider tells its operator: one log line per event, at INFO, never a record or a question.

Two sources, both outside the core's logic so that the core and the servicer stay as they are:

- `CallLog`, a gRPC server interceptor: a client's first call on a new connection ("connected"),
  each Customize, Ask batch (question count, wall and model latency), Forget and paused upload, and
  every refused call (status, error code and message: budget refusals, unknown clients, stale
  requests...). It also counts the calls in flight, which the drain reports.
- `log_jobs`, around the connector-job runner: a job's start, its progress (one line per stage, and
  at most one per `JOB_PROGRESS_EVERY` of the fraction or `JOB_PROGRESS_EVERY_S` seconds within a
  stage) and its end.

Accepted uploads are logged by `ProviderParty.finalize_upload` (bytes, artifact, receipt, timings).
Lines name clients by their certificate's common name and artifacts by digest; question texts,
answers and tensors are never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import grpc

from protocol.tls import peer_identity

log = logging.getLogger("llamdex.provider")
SERVICE_PREFIX = "/llamdex.v1.ProviderService/"
MAX_PEERS_REMEMBERED = 4096
JOB_PROGRESS_EVERY = 0.1       # a progress line at least every 10 % of a stage...
JOB_PROGRESS_EVERY_S = 30.0    # ...or every 30 s, whichever comes first


def _short(digest: str) -> str:
    return digest[:19] + "…" if len(digest) > 20 else digest


class CallLog(grpc.ServerInterceptor):
    """Logs the events of ProviderService calls and counts the calls in flight."""

    def __init__(self, plaintext: bool = False):
        self.plaintext = plaintext
        self._lock = threading.Lock()
        self._in_flight = 0
        self._peers: "OrderedDict[str, None]" = OrderedDict()

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    # --- interceptor -------------------------------------------------------------------------------------
    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        name = method[len(SERVICE_PREFIX):]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(name, handler.unary_unary), handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(name, handler.stream_unary), handler.request_deserializer,
                                                        handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(name, handler.unary_stream), handler.request_deserializer,
                                                        handler.response_serializer)
        return handler

    def _begin(self, name: str, context: Any) -> tuple[str, str]:
        who = peer_identity(context, plaintext=self.plaintext) or "(no identity)"
        peer = context.peer() or "?"
        with self._lock:
            self._in_flight += 1
            new = peer not in self._peers
            self._peers[peer] = None
            self._peers.move_to_end(peer)
            while len(self._peers) > MAX_PEERS_REMEMBERED:
                self._peers.popitem(last=False)
        if new:
            log.info("client %s connected from %s (first call: %s)", who, peer, name)
        return who, peer

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _unary(self, name: str, behavior: Callable) -> Callable:
        def handle(request: Any, context: Any) -> Any:
            who, peer = self._begin(name, context)
            t = time.perf_counter()
            try:
                response = behavior(request, context)
            except BaseException:
                self._refused(name, who, peer, context)
                raise
            finally:
                self._end()
            self._done(name, who, request, response, time.perf_counter() - t)
            return response
        return handle

    def _streaming(self, name: str, behavior: Callable) -> Callable:
        def handle(request: Any, context: Any) -> Any:
            who, peer = self._begin(name, context)
            sent = 0
            try:
                for msg in behavior(request, context):
                    sent += 1
                    yield msg
            except BaseException:
                self._refused(name, who, peer, context)
                raise
            finally:
                self._end()
            log.debug("%s by %s ended after %d message(s)", name, who, sent)
        return handle

    # --- the lines ---------------------------------------------------------------------------------------
    def _refused(self, name: str, who: str, peer: str, context: Any) -> None:
        code = context.code()
        if code is None or code == grpc.StatusCode.CANCELLED:
            log.debug("%s by %s ended: the caller went away", name, who)
            return
        details = (context.details() or b"")
        details = details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details)
        log.warning("refused %s from %s (%s): %s %s", name, who, peer, code.name, details)

    def _done(self, name: str, who: str, request: Any, response: Any, seconds: float) -> None:
        if name == "Ask":
            n = len(response.answers)
            log.info("Ask from %s: %d question(s)%s answered in %.2f s (model %.2f s), expert %s", who, n,
                     " + the base LLM's answers" if request.include_base else "", seconds, response.seconds, _short(response.artifact_digest))
        elif name == "Customize":
            log.info("Customize from %s: job %s %s for schema %s on %s", who, response.job_id,
                     "reuses stored connectors" if response.connectors_reused else "queued", _short(response.schema_digest), response.base_model_id)
        elif name == "Forget":
            log.info("Forget from %s: deleted %s; %d signed deletion receipt(s)", who, ", ".join(response.deleted) or "nothing",
                     len(response.receipts))
        elif name == "UploadExpert" and not response.complete:
            log.info("upload %s from %s paused at %d bytes (the stream ended early; the client resumes it)", response.upload_id, who,
                     response.received_bytes)
        else:
            log.debug("%s from %s answered in %.3f s", name, who, seconds)


def log_jobs(runner: Callable) -> Callable:
    """The connector-job runner, logging each job's start, progress and end (see the module doc)."""
    def run(job: Any, progress: Callable[[str, float], None]) -> tuple[bool, dict]:
        log.info("job %s started: connectors for schema %s on %s (preset %s; asked by %s)", job.job_id, _short(job.schema_digest),
                 job.base_model_id, job.preset or "the provider's", ", ".join(sorted(job.watchers)))
        last = {"stage": None, "fraction": -1.0, "at": 0.0}
        t0 = time.monotonic()

        def report(stage: str, fraction: float) -> None:
            now = time.monotonic()
            if stage != last["stage"] or fraction - last["fraction"] >= JOB_PROGRESS_EVERY or now - last["at"] >= JOB_PROGRESS_EVERY_S:
                log.info("job %s: %s, %3.0f %% (%.0f s)", job.job_id, stage, 100 * fraction, now - t0)
                last.update(stage=stage, fraction=fraction, at=now)
            progress(stage, fraction)

        try:
            reused, metrics = runner(job, report)
        except Exception as e:
            log.error("job %s failed after %.0f s: %s: %s", job.job_id, time.monotonic() - t0, type(e).__name__, e)
            raise
        log.info("job %s finished in %.0f s: connectors %s", job.job_id, time.monotonic() - t0, "reused" if reused else "trained and stored")
        return reused, metrics
    return run


__all__ = ["CallLog", "log_jobs"]
