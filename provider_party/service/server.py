"""The provider's gRPC server: `ProviderService` plus gRPC health checking, on mutual TLS by default.

Start one with `ProviderServer(config).start()` or `llamdex provider serve`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
import grpc
from grpc_health.v1 import health, health_pb2_grpc

from protocol.rpc.llamdex.v1 import provider_pb2_grpc
from protocol.serving import announce_serving
from protocol.tls import add_port
from provider_party.service.config import ProviderConfig
from provider_party.service.servicer import SERVICE_NAME, ProviderServicer

log = logging.getLogger(__name__)


class ProviderServer:
    """The provider's gRPC server: ProviderService plus gRPC health checking, on mutual TLS by default."""

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.servicer = ProviderServicer(config)
        lim = config.limits
        self.server = grpc.server(ThreadPoolExecutor(max_workers=lim.max_workers, thread_name_prefix="llamdex-provider"),
                                  options=[("grpc.max_receive_message_length", lim.max_message_bytes),
                                           ("grpc.max_send_message_length", lim.max_message_bytes)])
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = add_port(self.server, config.listen, config.tls, plaintext=config.plaintext)
        host = config.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    def start(self) -> "ProviderServer":
        self.server.start()
        if self.config.preload:
            self.servicer.party.preload()
        announce_serving(self.health, SERVICE_NAME, self.address, self.config.port_file)
        log.info("provider %s serving on %s (%s)", self.config.provider_id, self.address, "plaintext" if self.config.plaintext else "mutual TLS")
        return self

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)
        self.servicer.party.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


__all__ = ["ProviderServer", "SERVICE_NAME"]
