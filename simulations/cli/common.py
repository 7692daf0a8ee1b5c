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
