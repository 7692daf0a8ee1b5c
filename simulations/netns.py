"""Two Linux network namespaces joined by a veth pair: two "hosts" on one machine.

The separate-hosts test and the protocol benchmark's link run use it. Each namespace gets one end of
the pair and an address that exists only inside it (10.77.x.1 for the provider side, 10.77.x.2 for
the client side), so traffic between them crosses a real (virtual) link and never the host's loopback.
With `rate_mbit` set, both ends are shaped with a token-bucket filter (`tc ... tbf`), which turns the
pair into a link of that capacity, e.g. 1000 for a 1 Gbit/s LAN between two hosts.

Needs root (CAP_NET_ADMIN) and iproute2; `NetnsUnavailable` says which is missing, so callers can skip
with the reason. Everything made is removed on exit, and processes still running inside the namespaces
are killed first (only ones the caller started can be there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, or the kernel refused)."""


@dataclass(frozen=True)
class HostPair:
    provider_ns: str
    client_ns: str
    provider_ip: str
    client_ip: str
    rate_mbit: int | None

    def exec_in(self, side: str, argv: list[str]) -> list[str]:
        """`argv` run inside the provider's or the client's namespace."""
        ns = {"provider": self.provider_ns, "client": self.client_ns}[side]
        return ["ip", "netns", "exec", ns, *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def _tbf(ns: str, dev: str, rate_mbit: int) -> None:
    # burst: at least one 1500-byte packet and about 4 ms of the rate (a 1 Gbit/s link: 500 kB)
    burst_kb = max(16, rate_mbit * 1000 // 8 // 250)
    subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit", "burst", f"{burst_kb}kb",
                    "latency", "50ms"], capture_output=True, text=True, timeout=20, check=True)


@contextmanager
def host_pair(tag: str | None = None, subnet: int = 77, rate_mbit: int | None = None) -> Iterator[HostPair]:
    """Two namespaces joined by a veth pair, removed (with whatever still runs in them) on exit."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    if rate_mbit is not None and shutil.which("tc") is None:
        raise NetnsUnavailable("the `tc` command (iproute2) is not installed; it shapes the link")
    if os.geteuid() != 0:
        raise NetnsUnavailable("creating network namespaces needs root (CAP_NET_ADMIN)")
    tag = tag or f"llx{os.getpid() % 100000}"
    ns_p, ns_c, veth_p, veth_c = f"{tag}p", f"{tag}c", f"{tag}vp", f"{tag}vc"
    ip_p, ip_c = f"10.{subnet}.0.1", f"10.{subnet}.0.2"
    made: list[str] = []
    try:
        for ns in (ns_p, ns_c):
            r = _ip("netns", "add", ns, check=False)
            if r.returncode != 0:
                raise NetnsUnavailable(f"cannot create a network namespace here: {r.stderr.strip()}")
            made.append(ns)
        r = _ip("link", "add", veth_p, "type", "veth", "peer", "name", veth_c, check=False)
        if r.returncode != 0:
            raise NetnsUnavailable(f"cannot create a veth pair here: {r.stderr.strip()}")
        _ip("link", "set", veth_p, "netns", ns_p)
        _ip("link", "set", veth_c, "netns", ns_c)
        for ns, dev, addr in ((ns_p, veth_p, ip_p), (ns_c, veth_c, ip_c)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if rate_mbit is not None:
                _tbf(ns, dev, rate_mbit)
        yield HostPair(ns_p, ns_c, ip_p, ip_c, rate_mbit)
    finally:
        for ns in made:
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():   # only processes the caller started live here
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)


__all__ = ["HostPair", "NetnsUnavailable", "host_pair"]
