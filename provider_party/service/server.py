"""The provider's gRPC server: `ProviderService` plus gRPC health checking, on mutual TLS by default.

Start one with `ProviderServer(config).start()` or `llamdex provider serve`.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from protocol.request_guard import MalformedRequestInterceptor
from protocol.rpc.llamdex.v1 import provider_pb2, provider_pb2_grpc
from protocol.serving import announce_serving
from protocol.tls import add_port
from protocol.wire import parse_upload_request
from provider_party.service.config import ProviderConfig
from provider_party.service.servicer import SERVICE_NAME, ProviderServicer

log = logging.getLogger(__name__)


class _CaptureHandlers:
    """Stands in for a server to read the method handlers the generated registration builds."""

    handlers: dict[str, Any] | None = None

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def _add_provider_servicer(servicer: ProviderServicer, server: grpc.Server) -> None:
    """`add_ProviderServiceServicer_to_server`, except that UploadExpert's requests are parsed by
    `protocol.wire.parse_upload_request`: a chunk's data stays a view of the received message instead of
    being copied out of it (the same messages on the wire; the header still goes through protobuf)."""
    cap = _CaptureHandlers()
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, cap)
    if not cap.handlers or "UploadExpert" not in cap.handlers:  # another generated layout: the plain registration
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)
        return
    handlers = cap.handlers
    handlers["UploadExpert"] = grpc.stream_unary_rpc_method_handler(
        servicer.UploadExpert, request_deserializer=parse_upload_request, response_serializer=provider_pb2.UploadResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class ProviderServer:
    """The provider's gRPC server: ProviderService plus gRPC health checking, on mutual TLS by default."""

    def __init__(self, config: ProviderConfig):
        self.config = config
        self.servicer = ProviderServicer(config)
        lim = config.limits
        self.server = grpc.server(ThreadPoolExecutor(max_workers=lim.max_workers, thread_name_prefix="llamdex-provider"),
                                  interceptors=[MalformedRequestInterceptor()],
                                  options=[("grpc.max_receive_message_length", lim.max_message_bytes),
                                           ("grpc.max_send_message_length", lim.max_message_bytes)])
        _add_provider_servicer(self.servicer, self.server)
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
