"""Options every verb names the same way, and small helpers shared by the verbs.

One name per concept across commands:

    --data NAME|FILE [--schema S]   the table(s): a registered table or a CSV/Parquet file with its schema
    --out DIR                       the output folder
    --connectors DIR                the connector store
    --json [FILE]                   machine-readable output: on standard output, or written to FILE

A flag renamed to one of these keeps its old spelling as a hidden alias that still works and says
once, on standard error, what the new name is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any


class UsageError(Exception):
    """A verb's own usage check failed (exit status 2); the message names the options and the fix."""


class DeprecatedAlias(argparse.Action):
    """An old flag name kept working (hidden from --help); it stores into the new flag's dest and says so."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        kw.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values if self.nargs != 0 else self.const)


def add_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kw: Any) -> None:
    """Keeps `old` as a hidden alias of `new` (same dest, same type)."""
    p.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, default=argparse.SUPPRESS, **kw)


def epsilon_list(text: str) -> list[float | None]:
    """Parses '1,4,none' into [1.0, 4.0, None]; 'none' means no differential privacy."""
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("none", "no-dp", "inf"):
            out.append(None)
            continue
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number or 'none'") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"ε must be positive, got {v}")
        out.append(v)
    return out


def _whole_number_at_least(lo: int, doc: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected a number of at least {lo}, got {value}")
        return value
    parse.__doc__ = doc
    return parse


positive_int = _whole_number_at_least(1, "A count given on the command line (1 or more), refused in a sentence otherwise.")
non_negative_int = _whole_number_at_least(0, "A seed or an index given on the command line (0 or more), refused in a sentence otherwise.")


def _finite_number(positive: bool, doc: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (value <= 0 if positive else value < 0):
            raise argparse.ArgumentTypeError(f"expected a {'positive' if positive else 'non-negative'} finite number, got {text!r}")
        return value
    parse.__doc__ = doc
    return parse


positive_float = _finite_number(True, "A duration or size given on the command line (above 0, finite), refused in a sentence otherwise.")
non_negative_float = _finite_number(False, "A share given on the command line (0 or more, finite), refused in a sentence otherwise.")


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated counts (each 1 or more), at least one: `1,16`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least 1, got {text!r}")
    return tuple(positive_int(t) for t in items)


def non_negative_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated seeds (each 0 or more), at least one: `0,1,2`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of 0 or more, got {text!r}")
    return tuple(non_negative_int(t) for t in items)


def canary_count(text: str) -> int:
    """The canaries of a one-run audit: 2 or more (half are inserted, half held out)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected 2 canaries or more (half are inserted, half held out), got {text!r}")
    return value


def probability(text: str) -> float:
    """A confidence level given on the command line, strictly between 0 and 1, refused in a sentence otherwise."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (e.g. 0.95), got {text!r}")
    return value


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """`--threads N`, read by `set_threads`: one wording for every benchmark that runs the LLM in its own process."""
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: every core, or OMP_NUM_THREADS when it is set)")


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)
    elif os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def add_data_args(p: argparse.ArgumentParser, *, multiple: bool = False, default: str | None = "titanic", required: bool = False,
                  aliases: tuple[str, ...] = (), on_invalid: bool = True) -> None:
    """`--data NAME|FILE [--schema S]`, the one way every command names its table(s).

    NAME is a registered table (titanic, default, credit, churn, penguins, ...); FILE is a CSV or Parquet file
    whose public schema is `--schema` or the JSON beside it. With `multiple`, `--data` takes a comma-separated
    list. `aliases` are old flag names (e.g. `--dataset`) kept as hidden aliases. `required` is enforced by
    argparse, or, when there are aliases (which argparse would not count), by `table_refs`. With `on_invalid`,
    `--on-invalid reject|drop|clip` says what loading does with records that violate the schema; the policy
    rides on each `TableRef`, so a service or worker that loads the table later applies the same one.
    """
    from client_party.datasets import DATASETS, ON_INVALID

    what = "comma-separated registered tables and/or CSV/Parquet files" if multiple else "a registered table or a CSV/Parquet file"
    registered = ", ".join(sorted(DATASETS))
    p.add_argument("--data", default=default, required=required and not aliases, metavar="NAME|FILE" + (",..." if multiple else ""),
                   help=f"{what}; registered: {registered}" + (" (required)" if required else " (default: %(default)s)"))
    p.add_argument("--schema", default=None, metavar="S",
                   help="the public schema JSON of a --data file (default: the .schema.json beside it; `llamdex schema draft` writes one)")
    if on_invalid:
        p.add_argument("--on-invalid", choices=ON_INVALID, default="reject",
                       help="records that violate the schema: reject the table (default), drop them, or clip out-of-range "
                       "numbers to the schema's range and drop the rest; the counts are printed")
    for old in aliases:
        add_alias(p, old, "--data", "data")


def table_refs(args: argparse.Namespace) -> list:
    """The `TableRef`s named by `--data` (and `--schema`, which only a single file may take)."""
    from client_party.datasets import TableRef

    if not getattr(args, "data", None):
        raise argparse.ArgumentTypeError("give the table with --data NAME|FILE")
    items = [t.strip() for t in str(args.data).split(",") if t.strip()]
    if args.schema and len(items) != 1:
        raise argparse.ArgumentTypeError("--schema goes with exactly one --data file")
    return [TableRef.parse(t, args.schema, getattr(args, "on_invalid", None) or "reject") for t in items]


def table_ref(args: argparse.Namespace):
    """The one `TableRef` of a verb that takes a single table."""
    refs = table_refs(args)
    if len(refs) != 1:
        raise argparse.ArgumentTypeError(f"this command takes one table, got {len(refs)} in --data {args.data!r}")
    return refs[0]


def add_out_arg(p: argparse.ArgumentParser, *, default: Path | None, help: str, aliases: tuple[str, ...] = (), required: bool = False) -> None:
    """`--out DIR`, the output folder of every verb that writes one."""
    p.add_argument("--out", type=Path, default=default, required=required, metavar="DIR", help=help)
    for old in aliases:
        add_alias(p, old, "--out", "out", type=Path)


def add_connectors_arg(p: argparse.ArgumentParser, *, help: str, aliases: tuple[str, ...] = ()) -> None:
    """`--connectors DIR`, the connector store."""
    p.add_argument("--connectors", type=Path, default=None, metavar="DIR", help=help)
    for old in aliases:
        add_alias(p, old, "--connectors", "connectors", type=Path)


def add_json_arg(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """`--json [FILE]`: machine-readable output on standard output, or written to FILE."""
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help=f"{what} as JSON: on standard output (text output is then left out), or written to FILE (text output kept)")


def emit_json(target: str | Path | None, data: Any) -> bool:
    """Writes `data` where `--json` asked; returns True when it went to standard output (the text is then skipped)."""
    if target is None:
        return False
    text = json.dumps(data, indent=2, default=str) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
        return True
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return False


def refuse_outputs_inside(outputs: dict[str, Path | str | None], folders: list[Path]) -> None:
    """A result file written into a folder the verb reads (a signed artifact) would add a file its signature does not
    name, and every later verification of that artifact would fail; refused before any work."""
    for flag, out in outputs.items():
        if out is None or str(out) == "-":
            continue
        target = Path(out).resolve()
        for folder in folders:
            if target.is_relative_to(folder.resolve()):
                raise UsageError(f"{flag} {out} is inside {folder}, which this command reads; write the result elsewhere")

