"""What both parties' servers share: health that tells liveness from readiness, the port file, and a
drain on SIGTERM.

Health (the gRPC health checking protocol, `grpc.health.v1.Health`) answers two questions under two
names, as the protocol suggests (an empty name for the server as a whole, `package.Service` for a
service):

    ""                              liveness: the process is up and its gRPC loop answers. SERVING from
                                    the moment the port is bound until a drain starts.
    "llamdex.v1.ProviderService"    readiness: calls will be answered at full speed. The provider
    "llamdex.v1.ClientService"      reports SERVING only once its warm-up (base LLM, stored connectors,
                                    live experts, one forward pass) is done; the client at once.

Both turn NOT_SERVING when a drain starts (SIGTERM), so a load balancer or probe stops sending work
before the port closes. `llamdex health ADDRESS --live|--ready` asks either from any host.

`serve_forever` runs until SIGINT or SIGTERM, then drains: new calls are refused, running calls get
`grace_s` seconds to finish (then they are cancelled), and the process returns. A second signal
during the drain stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

log = logging.getLogger("llamdex.serving")
LIVENESS = ""                 # the health name of the server as a whole
DEFAULT_GRACE_S = 10.0        # how long a drain waits for running calls (`--grace`, [provider] drain_grace_s)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def announce_serving(health: Any, service_name: str, address: str, port_file: str | Path | None, *, ready: bool = True) -> None:
    """Marks the server live (and `service_name` ready, unless `ready=False`: then it stays NOT_SERVING
    until `mark_ready`), then writes `address` to `port_file` (atomically: whoever polls the file for a
    port chosen by the OS never reads half a line)."""
    health.set(LIVENESS, SERVING)
    health.set(service_name, SERVING if ready else NOT_SERVING)
    if port_file:
        tmp = Path(str(port_file) + ".tmp")
        tmp.write_text(address + "\n")
        tmp.replace(port_file)


def check_port_file(port_file: str | Path | None) -> None:
    """Refuses a port file that could not be written, before the server binds or opens any state: it is written only
    once serving, when a failure would leave a live server that its caller never hears about."""
    if not port_file:
        return
    path = Path(port_file)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    if not path.parent.is_dir():
        path.parent.stat()   # the OS says which: FileNotFoundError, or NotADirectoryError for a file further up
        raise NotADirectoryError(20, "is not a folder", str(path.parent))


def mark_ready(health: Any, service_name: str) -> None:
    """Readiness: `service_name` answers SERVING (ignored once a drain has started)."""
    health.set(service_name, SERVING)


# gRPC turns SO_REUSEPORT on by default, so a second server started on a busy port binds it too and the kernel splits
# the clients between two processes with two ledgers (measured: 6 Hellos went 4 to one provider, 2 to the other).
# Every llamdex server takes its port alone: the second start is refused "port in use".
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)


def serve_forever(server: Any, grace_s: float = DEFAULT_GRACE_S, name: str = "server") -> int:
    """Runs until SIGINT/SIGTERM, then drains `server` (its `stop(grace_s)`): one log line when the drain
    starts and one when it ends. Returns the signal number that stopped it."""
    first = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if first.is_set():   # a second signal while draining: stop now
            log.warning("%s received again: stopping %s without waiting for running calls", signal.Signals(signum).name, name)
            stop_now = getattr(server, "stop_now", None)
            if stop_now is not None:
                threading.Thread(target=stop_now, daemon=True).start()
            return
        got.append(signum)
        first.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not first.wait(0.5):
        pass
    signame = signal.Signals(got[0]).name
    running = getattr(server, "calls_in_flight", lambda: None)()
    log.info("%s received: draining %s; health NOT_SERVING, new calls refused, %s running call(s) get up to %g s to finish",
             signame, name, "the" if running is None else running, grace_s)
    t = time.monotonic()
    server.stop(grace_s)
    left = getattr(server, "calls_in_flight", lambda: 0)()
    log.info("%s stopped %.1f s after %s%s", name, time.monotonic() - t, signame,
             f"; {left} call(s) were cancelled at the end of the grace period" if left else "; every running call finished")
    return got[0]


__all__ = ["DEFAULT_GRACE_S", "EXCLUSIVE_PORT", "LIVENESS", "announce_serving", "check_port_file", "mark_ready", "serve_forever"]
