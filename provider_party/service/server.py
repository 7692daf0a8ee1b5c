"""The provider's gRPC server: `ProviderService` plus gRPC health checking, on mutual TLS by default.

Start one with `ProviderServer(config).start()` or `llamdex provider serve`. Health (see
`protocol.serving`): the empty name is liveness, SERVING once the port is bound; the name
`llamdex.v1.ProviderService` is readiness, SERVING only after the warm-up (`ProviderParty.warm_up`:
base LLM, stored connectors of live experts, the experts, one forward pass), which runs in the
background while early calls are already answered (they wait for what they need). Without preload
(`--no-preload`) nothing is warmed and readiness is SERVING at once. `stop(grace)` drains: health
NOT_SERVING, new calls refused, running calls get `grace` seconds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from protocol.request_guard import MalformedRequestInterceptor
from protocol.rpc.llamdex.v1 import provider_pb2_grpc
from protocol.serving import EXCLUSIVE_PORT, announce_serving, check_port_file, mark_ready
from protocol.tls import add_port
from provider_party.service.config import ProviderConfig
from provider_party.service.core import WarmUp
from provider_party.service.operator_log import CallLog, log_jobs
from provider_party.service.servicer import SERVICE_NAME, ProviderServicer

log = logging.getLogger(__name__)


def _refuse_a_clients_certificate(config: ProviderConfig) -> None:
    """A provider serving with a registered client's certificate (a copy-paste slip between bundles) is refused: the
    clients verify only that the certificate is their CA's and names the address they dial, so it would serve them as
    the provider while claiming, at the TLS layer, to be that client."""
    if config.plaintext or config.tls is None or not Path(config.tls.cert).is_file():
        return
    from protocol.toml_config import ConfigError

    try:
        name = config.tls.identity()
    except ValueError:   # not a PEM certificate: `add_port`'s file checks name it
        return
    if name in {c.client_id for c in config.clients}:
        raise ConfigError("BAD_CONFIG", f"[tls] cert {config.tls.cert} is registered client {name!r}'s certificate (CN={name}), not the "
                          "provider's: take provider.pem and provider.key from the provider's bundle")


class ProviderServer:
    """The provider's gRPC server: ProviderService plus gRPC health checking, on mutual TLS by default."""

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.created = time.monotonic()
        self.calls = CallLog(plaintext=config.plaintext)
        lim = config.limits
        self.server = grpc.server(ThreadPoolExecutor(max_workers=lim.max_workers, thread_name_prefix="llamdex-provider"),
                                  interceptors=[self.calls, MalformedRequestInterceptor()],
                                  options=[("grpc.max_receive_message_length", lim.max_message_bytes),
                                           ("grpc.max_send_message_length", lim.max_message_bytes), EXCLUSIVE_PORT])
        # bound before any state is opened: a bad address, a busy port or bad TLS files leave no state folder behind
        check_port_file(config.port_file)
        _refuse_a_clients_certificate(config)
        self.port = add_port(self.server, config.listen, config.tls, plaintext=config.plaintext)
        try:
            self.servicer = ProviderServicer(config)
        except BaseException:
            self.server.stop(None)
            raise
        jobs = self.servicer.party.jobs
        jobs.runner = log_jobs(jobs.runner)
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        host = config.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        self.ready = threading.Event()
        self.warm_up: WarmUp | None = None
        self.ready_after_s: float | None = None      # from this object's creation to readiness

    def start(self) -> "ProviderServer":
        self.server.start()
        warm = self.config.preload
        announce_serving(self.health, SERVICE_NAME, self.address, self.config.port_file, ready=not warm)
        log.info("provider %s live on %s (%s)%s", self.config.provider_id, self.address, "plaintext" if self.config.plaintext else "mutual TLS",
                 "; warming up before it reports ready" if warm else "; ready (no warm-up: the base LLM loads at the first call that needs it)")
        if warm:
            threading.Thread(target=self._warm_up, name="llamdex-warm-up", daemon=True).start()
        else:
            self._set_ready()
        return self

    def _warm_up(self) -> None:
        try:
            w = self.servicer.party.warm_up()
        except Exception:  # noqa: BLE001 - stays live and not ready; the log says why
            log.exception("warm-up failed: the provider stays NOT_SERVING for readiness (calls are still answered)")
            return
        self.warm_up = w
        log.info("warm-up done: base LLM in %.1f s; %d live expert(s), connectors of %d schema(s) in %.1f s; first forward pass %.2f s",
                 w.base_s, w.experts, w.schemas, w.connectors_s, w.forward_s)
        self._set_ready()

    def _set_ready(self) -> None:
        mark_ready(self.health, SERVICE_NAME)
        self.ready_after_s = time.monotonic() - self.created
        self.ready.set()
        log.info("provider %s ready (health %s SERVING) %.1f s after start", self.config.provider_id, SERVICE_NAME, self.ready_after_s)

    def calls_in_flight(self) -> int:
        return self.calls.in_flight()

    def stop(self, grace: float | None = None) -> None:
        """Drains: health NOT_SERVING, new calls refused, running calls get `grace` seconds (default: the
        configured `drain_grace_s`) to finish and are cancelled after it; then the job worker stops (a
        connector job still running is recorded FAILED at the next start)."""
        grace = self.config.drain_grace_s if grace is None else grace
        grace = min(grace, 3600.0) if math.isfinite(grace) else 3600.0
        self.health.enter_graceful_shutdown()
        running = [j.job_id for j in list(self.servicer.party.jobs.jobs.values()) if j.state in ("QUEUED", "RUNNING")]
        if running:
            log.warning("stopping with connector job(s) %s unfinished: they are recorded FAILED at the next start; clients call Customize again",
                        ", ".join(running))
        self.server.stop(grace).wait(grace + 1)
        self.stopped_cleanly = self.servicer.party.close()

    def stop_now(self) -> None:
        self.server.stop(0)

    def wait(self) -> None:
        self.server.wait_for_termination()


__all__ = ["ProviderServer", "SERVICE_NAME"]
