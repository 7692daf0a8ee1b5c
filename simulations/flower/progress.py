"""Phase progress as plain log lines, so it survives Flower's log stream and becomes tqdm bars in `llamdex simulate`.

The ServerApp runs in a process Flower starts (`flwr-simulation` or `flwr-serverapp`); what it prints
reaches the user through `flwr run --stream`. Each change prints one line

    [llamdex] phase=train done=3 total=50 note=client-002 excluded

which a person reads as is, and `ProgressBars` turns into one tqdm bar per phase.
"""

from __future__ import annotations

import re
import sys
from typing import Any

LINE_RE = re.compile(r"\[llamdex\] phase=(?P<phase>[\w.-]+) done=(?P<done>\d+) total=(?P<total>\d+)(?: note=(?P<note>.*))?$")


def report_progress(phase: str, done: int, total: int, note: str = "") -> None:
    print(f"[llamdex] phase={phase} done={done} total={total}" + (f" note={note}" if note else ""), flush=True)


def parse_progress(line: str) -> tuple[str, int, int, str] | None:
    m = LINE_RE.search(line.rstrip("\n"))
    if not m:
        return None
    return m["phase"], int(m["done"]), int(m["total"]), m["note"] or ""


class ProgressBars:
    """One tqdm bar per phase, fed with the lines of a Flower log stream."""

    def __init__(self, file: Any = None, disable: bool = False):
        self.file, self.disable = file or sys.stderr, disable
        self.bars: dict[str, Any] = {}

    def feed(self, line: str) -> bool:
        """Updates the bars from one log line; True when the line was a progress line."""
        from tqdm.auto import tqdm

        got = parse_progress(line)
        if got is None:
            return False
        phase, done, total, note = got
        bar = self.bars.get(phase)
        if bar is None:
            for other in self.bars.values():   # a new phase: the previous one is over (its bar stays printed)
                other.close()
            bar = self.bars[phase] = tqdm(total=total, desc=f"{phase:<16}", unit="step", file=self.file, disable=self.disable, leave=True,
                                          dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.set_postfix_str(note[:60], refresh=False)   # an empty note clears the last one (a finished stage)
        bar.refresh()
        return True

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


__all__ = ["ProgressBars", "parse_progress", "report_progress"]
