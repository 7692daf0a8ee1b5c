"""Asking a server's gRPC health from any host: liveness or readiness, over mutual TLS.

`check_health` makes one `grpc.health.v1.Health/Check` call and returns the answer; `wait_for` polls
until SERVING or a deadline. Readiness without a service name asks `llamdex.v1.ProviderService` and, if
the server does not know that name (a client's service), `llamdex.v1.ClientService`. A transport fault
raises the `TransportError` of `protocol.tls_diagnosis` (code UNREACHABLE when nothing answers, which
`wait_for` keeps retrying; a TLS fault ends the wait at once, since waiting does not mend a file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocol import operator_errors
from protocol.serving import LIVENESS
from protocol.tls import TLSFiles, TransportError, open_channel

READY_SERVICES = ("llamdex.v1.ProviderService", "llamdex.v1.ClientService")
STATUS_NAMES = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


@dataclass(frozen=True)
class HealthAnswer:
    address: str
    service: str          # the name asked ("" = liveness)
    status: str           # SERVING, NOT_SERVING, UNKNOWN, or SERVICE_UNKNOWN (the server does not know the name)
    seconds: float

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"

    @property
    def what(self) -> str:
        return "liveness" if self.service == LIVENESS else f"readiness ({self.service})"


def _transport_error(e: grpc.RpcError, address: str, tls: TLSFiles | None, plaintext: bool, server_name: str | None,
                     timeout_s: float) -> TransportError:
    if not plaintext and tls is not None:
        from protocol.tls_diagnosis import diagnose_connection

        problem = diagnose_connection(address, tls, server_name=server_name, timeout_s=timeout_s)
        if problem is not None:
            return problem
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportError("UNREACHABLE", operator_errors.unreachable(address, f"no answer within {timeout_s:g} s"))
    return TransportError("UNREACHABLE", operator_errors.unreachable(address, f"{e.code().name}: {e.details()}"))


def check_health(address: str, tls: TLSFiles | None, *, service: str | None = LIVENESS, plaintext: bool = False,
                 server_name: str | None = None, timeout_s: float = 5.0) -> HealthAnswer:
    """One health check of `service` ("" = liveness; None = readiness of whichever llamdex service the server runs)."""
    names = READY_SERVICES if service is None else (service,)
    t = time.perf_counter()
    with open_channel(address, tls, plaintext=plaintext, server_name=server_name) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in names:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout_s, wait_for_ready=False)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                # the diagnosis gets what is left of the timeout (at least 1 s): a silent peer took 2x the time asked
                left = max(1.0, timeout_s - (time.perf_counter() - t))
                raise _transport_error(e, address, tls, plaintext, server_name, min(timeout_s, left)) from None
            return HealthAnswer(address, name, STATUS_NAMES.get(resp.status, str(resp.status)), time.perf_counter() - t)
    return HealthAnswer(address, names[-1] if len(names) == 1 else "/".join(names), "SERVICE_UNKNOWN", time.perf_counter() - t)


def wait_for(address: str, tls: TLSFiles | None, *, service: str | None = None, wait_s: float = 60.0, interval_s: float = 1.0,
             plaintext: bool = False, server_name: str | None = None, timeout_s: float = 5.0,
             on_wait: Callable[[HealthAnswer | TransportError], None] | None = None) -> HealthAnswer:
    """Polls until `service` is SERVING or `wait_s` passed; returns the last answer (raises the last
    transport error if the server never answered, and a TLS fault at once)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ans: HealthAnswer | TransportError = check_health(address, tls, service=service, plaintext=plaintext, server_name=server_name,
                                                              timeout_s=timeout_s)
        except TransportError as e:
            if e.code != "UNREACHABLE":
                raise
            ans = e
        if isinstance(ans, HealthAnswer) and ans.serving:
            return ans
        if time.monotonic() >= deadline:
            if isinstance(ans, TransportError):
                raise ans
            return ans
        if on_wait is not None:
            on_wait(ans)
        time.sleep(interval_s)


__all__ = ["HealthAnswer", "READY_SERVICES", "check_health", "wait_for"]
