"""`llamdex health ADDRESS [--ready|--live]`: a server's gRPC health from any host, over mutual TLS.

Liveness (`--live`, health name "") is SERVING from the moment the server's port is bound until it
drains; readiness (`--ready`, the default; health name `llamdex.v1.ProviderService`, or
`llamdex.v1.ClientService` for a client's service) is SERVING once the server can answer at full speed
(the provider: after its warm-up). The exit status suits scripts and exec probes:

    0  SERVING
    1  the server answered, but not SERVING (starting, warming up, draining, or the name is unknown)
    2  bad arguments (an address that is not HOST:PORT, --plaintext to another host)
    4  a TLS file named (or defaulted) here does not exist
    7  no answer: nothing listens, or the transport failed (the line says which file or flag to fix)

(the same statuses as every verb's: README, "Exit status")
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from simulations.cli.common import non_negative_float, positive_float

EXIT_SERVING, EXIT_NOT_SERVING, EXIT_NO_ANSWER = 0, 1, 7   # = EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE of simulations.cli.main


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser(
        "health", help="check a provider's (or client's) liveness or readiness over gRPC health, from any host",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  llamdex health 10.77.0.1:50051 --config bundles/client/client.toml            # readiness, with the client's TLS files\n"
        "  llamdex health 127.0.0.1:50051 --live --config provider.toml                 # on the provider host, its own certificate\n"
        "  llamdex health provider.example.org:50051 --ready --wait 300 --ca certs/ca.pem --cert certs/alice.pem --tls-key certs/alice.key\n"
        "  exec probe (Kubernetes: its built-in gRPC probe cannot present a client certificate):\n"
        "    command: [llamdex, health, 127.0.0.1:50051, --ready, --config, /etc/llamdex/provider.toml]")
    h.add_argument("address", metavar="ADDRESS", help="HOST:PORT of the server, as its certificate names it (or use --server-name)")
    what = h.add_mutually_exclusive_group()
    what.add_argument("--ready", dest="check", action="store_const", const="ready", default="ready",
                      help="readiness: SERVING once calls are answered at full speed (default)")
    what.add_argument("--live", dest="check", action="store_const", const="live", help="liveness: SERVING while the server runs")
    what.add_argument("--service", help="ask this health name instead (e.g. llamdex.v1.ClientService)")
    g = h.add_argument_group("transport (any certificate of the servers' CA will do)")
    g.add_argument("--config", type=Path, help="take --ca/--cert/--tls-key (and plaintext) from the [tls] table of this provider.toml or client.toml")
    g.add_argument("--ca", type=Path, help="CA certificate (PEM) that issued the server's certificate")
    g.add_argument("--cert", type=Path, help="a certificate of that CA to present (the server requires one)")
    g.add_argument("--tls-key", type=Path, help="the key of --cert")
    g.add_argument("--server-name", help="name to check in the server's certificate (default: the host of ADDRESS)")
    g.add_argument("--plaintext", action="store_true", help="no TLS (loopback only, for development)")
    h.add_argument("--timeout", type=positive_float, default=5.0, help="seconds to wait for one answer (default: %(default)s)")
    h.add_argument("--wait", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="keep asking (every second) until SERVING or this many seconds passed (default: %(default)s, ask once)")
    h.set_defaults(func=_health)


def tls_from_config(path: Path) -> tuple[object | None, bool]:
    """(TLSFiles or None, plaintext) from the [tls] table of a provider or client TOML file (paths relative to it)."""
    from protocol.tls import TLSFiles

    try:
        t = tomllib.loads(path.read_text()).get("tls", {})
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"--config {path}: cannot read it: {e}") from None   # a missing or unreadable file: exit 4, as everywhere
    if all(k in t for k in ("ca", "cert", "key")):
        return TLSFiles(path.parent / t["ca"], path.parent / t["cert"], path.parent / t["key"]), bool(t.get("plaintext", False))
    return None, bool(t.get("plaintext", False))


def _health(args: argparse.Namespace) -> int:
    from protocol.errors import CodedError
    from protocol.health_probe import wait_for
    from protocol.serving import LIVENESS
    from protocol.tls import TLSFiles

    tls, plaintext = (tls_from_config(args.config) if args.config else (None, False))
    if args.ca or args.cert or args.tls_key:
        if not (args.ca and args.cert and args.tls_key):
            raise SystemExit("--ca, --cert and --tls-key go together")
        tls = TLSFiles(args.ca, args.cert, args.tls_key)
    plaintext = plaintext or args.plaintext
    service = args.service if args.service is not None else (LIVENESS if args.check == "live" else None)

    def waiting(ans: object) -> None:
        print(f"  waiting: {getattr(ans, 'status', None) or getattr(ans, 'code', ans)}", file=sys.stderr, flush=True)

    try:
        ans = wait_for(args.address, tls, service=service, wait_s=args.wait, plaintext=plaintext, server_name=args.server_name,
                       timeout_s=args.timeout, on_wait=waiting if args.wait else None)
    except CodedError as e:
        from protocol.tls_diagnosis import OWN_FILE_CODES
        from simulations.cli.main import EXIT_INVALID, EXIT_MISSING_FILE, EXIT_USAGE

        print(f"{args.address}: {e}", file=sys.stderr)
        # no answer (7) only when something was asked; missing or invalid own TLS files and a malformed address are the caller's (4, 3, 2)
        return {"TLS_FILES_MISSING": EXIT_MISSING_FILE, "BAD_ADDRESS": EXIT_USAGE, "PLAINTEXT_NOT_LOOPBACK": EXIT_USAGE,
                **dict.fromkeys(OWN_FILE_CODES, EXIT_INVALID)}.get(e.code, EXIT_NO_ANSWER)
    print(f"{args.address} {ans.what}: {ans.status} ({1000 * ans.seconds:.0f} ms)")
    return EXIT_SERVING if ans.serving else EXIT_NOT_SERVING
