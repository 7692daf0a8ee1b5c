"""`llamdex provider serve`: run the provider's gRPC service (ProviderService + health) on mutual TLS."""

from __future__ import annotations

import argparse
from pathlib import Path


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
        "      --ca certs/ca.pem --cert certs/provider.pem --tls-key certs/provider.key --client alice=keys/alice.pub")
    s.add_argument("--config", type=Path, help="provider TOML config ([provider], [tls], [limits], [[clients]]); flags override it")
    s.add_argument("--listen", help="HOST:PORT to serve on (port 0 = any; see --port-file)")
    s.add_argument("--key", type=Path, help="the provider's receipt-signing key (PEM, mode 0600)")
    s.add_argument("--state", type=Path, help="folder of the ledger, uploads and experts")
    s.add_argument("--connectors", type=Path, help="connector store (default $LLAMDEX_HOME/connectors)")
    s.add_argument("--base-model", help="'embedded' or a Hugging Face model name/path")
    s.add_argument("--preset", help="connector training preset: quick or default")
    s.add_argument("--client", action="append", metavar="ID=PUBKEY", help="register a client (repeatable), budget from --epsilon-budget")
    s.add_argument("--epsilon-budget", type=float, default=4.0, help="ε budget per dataset of clients given with --client (default 4)")
    s.add_argument("--ca", type=Path, help="CA certificate (PEM) that issued the clients' certificates")
    s.add_argument("--cert", type=Path, help="the provider's TLS certificate")
    s.add_argument("--tls-key", type=Path, help="the provider's TLS private key")
    s.add_argument("--plaintext", action="store_true", default=None, help="no TLS: allowed only on loopback, for development")
    s.add_argument("--port-file", type=Path, help="write the bound address here once serving")
    s.add_argument("--no-preload", action="store_true", help="load the base LLM on first use instead of at start")
    s.set_defaults(func=_serve)


def config_from_args(args: argparse.Namespace):
    from protocol.keys import load_public_key
    from protocol.tls import TLSFiles
    from provider_party.service.config import ProviderConfig, RegisteredClient, check_id, load_provider_config

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
        clients.append(RegisteredClient(check_id(cid, "--client id"), load_public_key(Path(pub)), epsilon_budget=args.epsilon_budget))
    return cfg.with_overrides(listen=args.listen, key=args.key, state=args.state, connectors=args.connectors, base_model=args.base_model,
                              preset=args.preset, tls=tls, plaintext=args.plaintext, clients=tuple(clients), port_file=args.port_file,
                              preload=False if args.no_preload else None)


def _serve(args: argparse.Namespace) -> int:
    from protocol.serving import serve_forever
    from provider_party.service.server import ProviderServer

    cfg = config_from_args(args)
    if not cfg.clients:
        raise SystemExit("no client is registered: add [[clients]] to the config or --client ID=PUBKEY")
    server = ProviderServer(cfg).start()
    rec = {k: v for k, v in server.servicer.party.recovery.items() if v}
    print(f"provider {cfg.provider_id} serving on {server.address} ({'plaintext' if cfg.plaintext else 'mutual TLS'}); "
          f"{len(cfg.clients)} registered client(s); ledger {server.servicer.party.ledger.count()} entries, chain verified"
          + (f"; recovered {rec}" if rec else ""), flush=True)
    serve_forever(server)
    return 0
