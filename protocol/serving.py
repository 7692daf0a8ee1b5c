"""What both parties' servers do once they listen: tell gRPC health checking and the port file."""

from __future__ import annotations

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


__all__ = ["announce_serving"]
