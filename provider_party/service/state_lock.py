"""One provider process per state folder.

Two processes serving one state folder would each run start-up recovery on the other's uploads and jobs (an
upload still streaming to the first looks abandoned to the second). The lock is an advisory `flock` on
`provider.lock` in the folder, held until the process exits (the operating system releases it on a crash, so
nothing stale is left to clear by hand); the file holds the holder's pid for the message. Parties opened again
in the same process (a restart in tests, the Flower ServerApp's runs) share the one lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from protocol.toml_config import ConfigError

LOCK_NAME = "provider.lock"
_HELD: dict[Path, int] = {}   # state folder -> the descriptor holding its lock, for the life of the process


def hold_state_lock(state: Path) -> None:
    """Takes the folder's lock for this process, or refuses with STATE_IN_USE naming the process that holds it."""
    folder = Path(state).resolve()
    if folder in _HELD:
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError("STATE_IN_USE", f"another provider process (pid {holder}) serves from the state folder {folder}; stop it first, "
                          "or give this one its own --state") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[folder] = fd


__all__ = ["LOCK_NAME", "hold_state_lock"]
