"""`llamdex bench ...`: run a benchmark and write docs/results/*.json and its section of docs/RESULTS.md.

A benchmark module of `WITH_OPTIONS` exposes `add_arguments(parser)` and `run(args, command)` and is cheap to
import: it gets a real sub-command (its options in `llamdex bench NAME --help`). The others expose `main(argv)`
and receive the options as they are (`llamdex bench NAME -- --help` shows them; the `--` is optional, see
`split_passthrough`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "accuracy": ("simulations.benchmarks.accuracy", "accuracy of base LLM, expert and Llamdex on real held-out records",
                 "llamdex bench accuracy --data titanic,penguins --preset quick"),
    "inference": ("simulations.benchmarks.inference", "latency of a Llamdex query against the same question to the base LLM",
                  "llamdex bench inference --data titanic --batch-sizes 1,16"),
    "privacy": ("simulations.benchmarks.privacy_utility", "attack figures against DP and non-DP experts (privacy-utility trade-off)",
                "llamdex bench privacy -- --help"),
    "protocol": ("simulations.benchmarks.protocol_bench", "upload throughput, verification and Ask latency over gRPC",
                 "llamdex bench protocol -- --help"),
    "reader": ("simulations.benchmarks.reader_ablation", "the expert encoder's design variants read the same real questions, column by column",
               "llamdex bench reader --data churn --variants 5x2,9x2"),
    "compare": ("simulations.benchmarks.compare", "Llamdex against DP data synthesis + LoRA, an expert behind an API and prompting, at the same ε",
                "llamdex bench compare --threads 1"),
}
WITH_OPTIONS = ("accuracy", "inference")
PASSTHROUGH = tuple(name for name in BENCHMARKS if name not in WITH_OPTIONS)


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split `... bench NAME OPTIONS` into what `llamdex` parses and what goes to benchmark NAME unparsed.

    argparse's REMAINDER does not take a first token that looks like an option, so without this
    `llamdex bench compare --threads 2` (the form the benchmarks record as their command) fails
    with "unrecognized arguments". A lone `-h`/`--help` stays with `llamdex` (its help points to the
    benchmark's own); a leading `--` is dropped. Returns (argv, None) when no such benchmark is named.
    """
    for i in range(len(argv) - 1):
        if argv[i] == "bench" and argv[i + 1] in PASSTHROUGH:
            head, tail = argv[:i + 2], argv[i + 2:]
            if tail in (["-h"], ["--help"]):
                return argv, None
            return head, tail[1:] if tail[:1] == ["--"] else tail
    return argv, None


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("bench", help="run a benchmark (" + ", ".join(BENCHMARKS) + ")", description=__doc__, formatter_class=fmt,
                       epilog="examples:\n" + "\n".join(f"  {example}" for _, _, example in BENCHMARKS.values()))
    bsub = p.add_subparsers(dest="bench_command", metavar="NAME")
    for name, (module_name, help_text, example) in BENCHMARKS.items():
        b = bsub.add_parser(name, help=help_text, epilog=f"example:\n  {example}", formatter_class=fmt)
        if name in WITH_OPTIONS:  # light at import time: the model loads only when the benchmark runs
            module = importlib.import_module(module_name)
            b.description = module.__doc__
            module.add_arguments(b)
            b.set_defaults(func=lambda a, m=module: m.run(a, "llamdex " + " ".join(sys.argv[1:])))
        else:
            b.description = f"{help_text}; its options: `llamdex bench {name} -- --help`"
            b.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (`llamdex bench NAME -- --help`)")
            b.set_defaults(func=lambda a, m=module_name: importlib.import_module(m).main([x for x in a.rest if x != "--"]))
    p.set_defaults(func=lambda a: p.print_help() or 2)
