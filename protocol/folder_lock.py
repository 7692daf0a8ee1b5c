"""One process at a time in a folder: an advisory `flock` on a lock file inside it.

The operating system releases the lock when the process dies, so a crash leaves nothing stale to clear by hand;
the file holds the holder's pid for the refusal. Used by the provider (one process per state folder) and by the
client (one round at a time per workspace, since each round spends ε).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


class FolderInUse(Exception):
    """Another process holds the lock; `holder` is the pid it wrote ("unknown" if none)."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by process {holder}")
        self.path, self.holder = path, holder


def take_lock(path: Path) -> int:
    """Takes the lock file `path` (created 0600) for this process and returns its descriptor; raises FolderInUse."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderInUse(path, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def holding(path: Path) -> Iterator[None]:
    """The lock for the duration of the block; raises FolderInUse."""
    fd = take_lock(path)
    try:
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the flock


__all__ = ["FolderInUse", "holding", "take_lock"]
