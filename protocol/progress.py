"""Progress that reads well wherever it goes: a tqdm bar on a terminal, one plain line per update elsewhere.

A carriage-return bar written to a file or a pipe (a service's log, `| tee`, CI) becomes one long
line of overwritten states. `progress_bar(...)` returns tqdm when the stream is a terminal and a
`LineProgress` otherwise, which prints one line per update with the counts:

    customize: 40/100 % (running: stage 1: encoder) 12 s

Both take the same calls (`update`, `n = ...` then `refresh`, `set_postfix_str`, `close`, iteration,
`with`), so a caller writes its loop once. `min_interval_s` keeps a fast loop from flooding a log:
a line is printed when the count changed and that long has passed since the last line, and always
for the first and the last update.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO


class LineProgress:
    """tqdm's interface, printing one line per update (for files and pipes)."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 file: TextIO | None = None, min_interval_s: float = 0.0, **_ignored: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self.n: float = 0
        self.postfix = ""
        self._t0 = time.monotonic()
        self._last_line: tuple[float, str] | None = None   # (time, what was printed)
        self._closed = False

    # --- what tqdm offers ----------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh()

    # A new postfix or description shows in the next line (`update`, `refresh`, `close`): a loop that sets
    # the loss and then advances prints one line per step, not two.
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in items.items()), refresh)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self, *, final: bool = False) -> None:
        line = self._line()
        now = time.monotonic()
        if self._last_line is not None:
            last_t, last = self._last_line
            if line == last or (not final and now - last_t < self.min_interval_s):
                return
        print(f"{line} {now - self._t0:.0f} s", file=self.file, flush=True)
        self._last_line = (now, line)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.refresh(final=True)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the line ----------------------------------------------------------------------------------------
    def _line(self) -> str:
        n = int(self.n) if float(self.n).is_integer() else round(self.n, 2)
        count = f"{n}/{int(self.total)}" if self.total else f"{n}"
        unit = f" {self.unit}" if self.unit and self.unit != "it" else ""
        tail = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc + ': ' if self.desc else ''}{count}{unit}{tail}"


def is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
                 file: TextIO | None = None, min_interval_s: float = 1.0, **tqdm_kwargs: Any) -> Any:
    """tqdm on a terminal, `LineProgress` elsewhere (same interface). `tqdm_kwargs` (bar_format, leave...)
    only shape the bar; `min_interval_s` only paces the lines."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=stream, min_interval_s=min_interval_s)


__all__ = ["LineProgress", "is_terminal", "progress_bar"]
