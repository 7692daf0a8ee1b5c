"""Keeps docs/RESULTS.md as named sections, so each benchmark rewrites only its own part."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("docs/results")
RESULTS_MD = Path("docs/RESULTS.md")
HEADER = "# Measured results\n\nEvery figure below is written by a benchmark; the command that reproduces it is given with it.\n"


def command_line(program: str, argv: list[str] | None) -> str:
    """The command stored beside a run's results so that anyone can rerun it: `program` and the arguments it was
    given (the process's own when `argv` is None, as when run from a shell), quoted for pasting into one."""
    return f"{program} {shlex.join(sys.argv[1:] if argv is None else argv)}"


def environment() -> dict[str, Any]:
    import os

    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def write_json(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def results_md_path(results_dir: Path) -> Path:
    """docs/RESULTS.md for the default results folder; a private RESULTS.md beside any other (tests)."""
    return RESULTS_MD if Path(results_dir).resolve() == RESULTS_DIR.resolve() else Path(results_dir) / "RESULTS.md"


def update_section(section: str, markdown: str, path: Path = RESULTS_MD) -> None:
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
