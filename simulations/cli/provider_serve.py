"""`llamdex provider serve`: run the provider's gRPC service (ProviderService + health) on mutual TLS.

The server logs one line per event at INFO by default (see provider_party/service/operator_log.py);
the level comes from `--log-level`, else `LLAMDEX_LOG_LEVEL`, else `[provider] log_level`, else info
(`llamdex -v provider serve` is debug). SIGTERM or SIGINT drains it (`--grace`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

LOG_ENV = "LLAMDEX_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register_serve(psub: argparse._SubParsersAction) -> None:
    s = psub.add_parser(
        "serve", help="serve ProviderService: verified uploads with receipts, customization jobs, Ask, ledger, Forget",
        description="Serve llamdex.v1.ProviderService and gRPC health. Only registered clients are served: a client is "
        "identified by the CN of its TLS certificate and registered with its public signing key (config [[clients]] or "
        "--client ID=PUBKEY). Every upload is verified (signature, digests, spec, schema, DP recomputation, budget) before "
        "any tensor is loaded, and answered with a signed privacy receipt; the ledger is SQLite under --state.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  llamdex provider serve --config provider.toml\n"
        "  llamdex provider serve --listen 127.0.0.1:50051 --key keys/provider.key --state state/ \\\n"
        "      --ca certs/ca.pem --cert certs/provider.pem --tls-key certs/provider.key --client alice=keys/alice.pub\n"
        "  LLAMDEX_LOG_LEVEL=debug llamdex provider serve --config provider.toml --grace 30\n\n"
        "health (from any host, with a certificate of the same CA): `llamdex health HOST:PORT --live` is SERVING once the\n"
        "port is bound; `--ready` once the warm-up (base LLM, stored connectors, live experts) is done.\n"
        "SIGTERM drains: health NOT_SERVING, new calls refused, running calls get --grace seconds, then the process exits.")
    s.add_argument("--config", type=Path, help="provider TOML config ([provider], [tls], [limits], [[clients]]); flags override it")
    s.add_argument("--listen", help="HOST:PORT to serve on, port 0 = any (default: [provider] listen, else 127.0.0.1:50051)")
    s.add_argument("--key", type=Path, help="the provider's receipt-signing key, PEM, mode 0600 (default: [provider] key)")
    s.add_argument("--state", type=Path, help="folder of the ledger, uploads and experts (default: [provider] state, else provider-state)")
    s.add_argument("--connectors", type=Path, help="connector store (default: [provider] connectors, else $LLAMDEX_HOME/connectors)")
    s.add_argument("--base-model", help="'embedded' or a Hugging Face model name/path (default: [provider] base_model, else embedded)")
    s.add_argument("--preset", help="connector training preset, quick or default (default: [provider] preset, else quick)")
    s.add_argument("--client", action="append", metavar="ID=PUBKEY", help="register a client (repeatable), budget from --epsilon-budget")
    s.add_argument("--epsilon-budget", type=float, default=4.0, help="ε budget per dataset of clients given with --client (default: %(default)s)")
    s.add_argument("--ca", type=Path, help="CA certificate (PEM) that issued the clients' certificates")
    s.add_argument("--cert", type=Path, help="the provider's TLS certificate")
    s.add_argument("--tls-key", type=Path, help="the provider's TLS private key")
    s.add_argument("--plaintext", action="store_true", default=None, help="no TLS: allowed only on loopback, for development")
    s.add_argument("--port-file", type=Path, help="write the bound address here once serving")
    s.add_argument("--no-preload", action="store_true",
                   help="skip the warm-up: ready at once, the base LLM loads at the first call that needs it (default: warm up, then ready)")
    s.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long running calls get to finish (default: [provider] drain_grace_s, else 10)")
    s.set_defaults(func=_serve, grpc_core_logs=True)   # a failed handshake leaves no other trace on the server's side


def config_from_args(args: argparse.Namespace):
    from protocol.keys import load_public_key
    from protocol.tls import TLSFiles
    from provider_party.service.config import (
        ProviderConfig, RegisteredClient, check_clients, check_id, load_provider_config, positive_number, preset_setting,
    )

    cfg = load_provider_config(args.config) if args.config else ProviderConfig()
    tls = cfg.tls
    if args.ca or args.cert or args.tls_key:
        if not (args.ca and args.cert and args.tls_key):
            raise SystemExit("--ca, --cert and --tls-key go together")
        tls = TLSFiles(args.ca, args.cert, args.tls_key)
    clients = list(cfg.clients)
    for item in args.client or []:
        cid, sep, pub = item.partition("=")
        if not sep:
            raise SystemExit(f"--client {item!r}: expected ID=PUBLIC_KEY_FILE")
        clients.append(RegisteredClient(check_id(cid, "--client id"), load_public_key(Path(pub)),
                                        epsilon_budget=positive_number(args.epsilon_budget, "--epsilon-budget")))
    # the flags pass the same checks as the config's keys (a negative budget or grace, an unknown preset, an id twice)
    return cfg.with_overrides(listen=args.listen, key=args.key, state=args.state, connectors=args.connectors, base_model=args.base_model,
                              preset=None if args.preset is None else preset_setting(args.preset), tls=tls, plaintext=args.plaintext,
                              clients=check_clients(tuple(clients), "--client"), port_file=args.port_file,
                              preload=False if args.no_preload else None, drain_grace_s=None if args.grace is None else positive_number(args.grace, "--grace"))


def server_log_level(args: argparse.Namespace, config_level: str | None) -> str:
    """--log-level, else $LLAMDEX_LOG_LEVEL, else the config's log_level, else info; `llamdex -v` is debug."""
    if getattr(args, "verbose", False):
        return "debug"
    env = os.environ.get(LOG_ENV, "").strip().lower()
    if env and env not in ("debug", "info", "warning", "error"):
        raise SystemExit(f"{LOG_ENV}={env!r}: expected debug, info, warning or error")
    return getattr(args, "log_level", None) or env or config_level or "info"   # the global --log-level (llamdex --help)


def configure_logging(level: str) -> None:
    """Timestamped lines on standard error, one per event; grpc's own C-core lines are left as they are."""
    logging.basicConfig(level=getattr(logging, level.upper()), format=LOG_FORMAT, force=True)
    from protocol.progress import is_terminal
    import sys

    if not is_terminal(sys.stderr):   # no carriage-return bars in a log file (transformers' "Loading weights")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _serve(args: argparse.Namespace) -> int:
    from protocol.serving import serve_forever

    cfg = config_from_args(args)
    configure_logging(server_log_level(args, cfg.log_level))
    if not cfg.clients:
        raise SystemExit("no client is registered: add [[clients]] to the config or --client ID=PUBKEY")
    from provider_party.service.server import ProviderServer

    server = ProviderServer(cfg).start()   # a refusal (missing TLS files, an altered ledger) goes to `llamdex`'s handler: its exit status says which kind
    rec = {k: v for k, v in server.servicer.party.recovery.items() if v}
    print(f"provider {cfg.provider_id} serving on {server.address} ({'plaintext' if cfg.plaintext else 'mutual TLS'}); "
          f"{len(cfg.clients)} registered client(s); ledger {server.servicer.party.ledger.count()} entries, chain verified"
          + (f"; recovered {rec}" if rec else ""), flush=True)
    serve_forever(server, cfg.drain_grace_s, name=f"provider {cfg.provider_id}")
    if not getattr(server, "stopped_cleanly", True):   # a job thread still inside torch: a normal exit would abort (134)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0
