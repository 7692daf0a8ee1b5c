"""`llamdex bench ...`: run a benchmark and write docs/results/*.json and docs/RESULTS.md."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "accuracy": "simulations.benchmarks.accuracy",
    "inference": "simulations.benchmarks.inference",
    "privacy": "simulations.benchmarks.privacy_utility",
    "protocol": "simulations.benchmarks.protocol_bench",
    "compare": "simulations.benchmarks.compare",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (accuracy, inference, privacy, protocol, compare)", description=__doc__,
                       epilog="examples:\n  llamdex bench accuracy --datasets titanic --preset quick\n  llamdex bench inference -- --help",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see `llamdex bench NAME --help`)")
    p.set_defaults(func=lambda a: importlib.import_module(BENCHMARKS[a.name]).main(a.rest))
