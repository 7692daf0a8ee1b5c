"""What both parties' servers share: announcing that they serve (health, port file) and running until a signal."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2


def announce_serving(health: Any, service_name: str, address: str, port_file: str | Path | None) -> None:
    """Marks the server and `service_name` SERVING, then writes `address` to `port_file` (atomically:
    whoever polls the file for a port chosen by the OS never reads half a line)."""
    for name in ("", service_name):
        health.set(name, health_pb2.HealthCheckResponse.SERVING)
    if port_file:
        tmp = Path(str(port_file) + ".tmp")
        tmp.write_text(address + "\n")
        tmp.replace(port_file)


def serve_forever(server: Any) -> None:
    """Runs until SIGINT/SIGTERM, then stops the server gracefully (both parties' `serve` verbs)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    server.stop()


__all__ = ["announce_serving", "serve_forever"]
