"""Entry point of the `llamdex` command: builds the parser from one module per verb."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module defines `register(subparsers)` and sets `func` on its parser(s).
VERB_MODULES = [
    "simulations.cli.demo",
    "simulations.cli.client",
    "simulations.cli.provider",
    "simulations.cli.keys",
    "simulations.cli.bench",
    "simulations.cli.attack",
    "simulations.cli.audit",
    "simulations.cli.simulate",
]

DESCRIPTION = """\
Llamdex: customize a frozen LLM with a client's privately trained expert model, without the data.

Roles:
  client     the data owner: trains an expert on its table (optionally with DP-SGD) and uploads it
  provider   the LLM service: trains connectors from the public schema, serves questions
Tools:
  demo       the whole pipeline on the embedded defaults (start here)
  bench      accuracy and latency benchmarks written to docs/results/
  keygen     a signing key pair (artifacts and requests of a client, receipts of the provider)
  certs      a small CA and the mutual-TLS certificates of the provider, clients and orchestrator
  attack     privacy attacks on an expert: membership inference, attribute inference, canary audit
  audit      offline verification of artifacts, receipts and the ledger; every ε recomputed twice
  simulate   many clients, one base LLM: the Flower app (simulation or deployment engine)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamdex", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (same as --log-level debug)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                        help="what to log on standard error (default: warning). `info` adds one line per accepted upload "
                        "(bytes, artifact, receipt, finalize wall and CPU time) and the servers' start-up lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
