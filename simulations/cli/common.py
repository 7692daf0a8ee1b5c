"""Small helpers shared by CLI verbs: dataset/epsilon parsing and thread settings."""

from __future__ import annotations

import argparse
import os


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


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)
    elif os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


def add_data_args(p: argparse.ArgumentParser, *, multiple: bool = False, default: str | None = "titanic", required: bool = False) -> None:
    """`--data NAME|FILE [--schema S]`, the one way every command names its table(s).

    NAME is a registered table (titanic, default, credit, churn, ...); FILE is a CSV or Parquet file whose
    public schema is `--schema` or the JSON beside it. With `multiple`, `--data` takes a comma-separated list.
    """
    what = "comma-separated registered tables and/or CSV/Parquet files" if multiple else "a registered table or a CSV/Parquet file"
    p.add_argument("--data", default=default, required=required, metavar="NAME|FILE" + (",..." if multiple else ""),
                   help=f"{what} (default: %(default)s)")
    p.add_argument("--schema", default=None, metavar="S",
                   help="the public schema JSON of a --data file (default: the .schema.json beside it)")


def table_refs(args: argparse.Namespace) -> list:
    """The `TableRef`s named by `--data` (and `--schema`, which only a single file may take)."""
    from client_party.datasets import TableRef

    items = [t.strip() for t in str(args.data).split(",") if t.strip()]
    if args.schema and len(items) != 1:
        raise argparse.ArgumentTypeError("--schema goes with exactly one --data file")
    return [TableRef.parse(t, args.schema) for t in items]
