"""One provider process per state folder.

Two processes serving one state folder would each run start-up recovery on the other's uploads and jobs (an
upload still streaming to the first looks abandoned to the second). The lock is `protocol.folder_lock`'s on
`provider.lock` in the folder, held until the process exits. Parties opened again in the same process (a restart
in tests, the Flower ServerApp's runs) share the one lock.
"""

from __future__ import annotations

from pathlib import Path

from protocol.folder_lock import FolderInUse, take_lock
from protocol.toml_config import ConfigError

LOCK_NAME = "provider.lock"
_HELD: dict[Path, int] = {}   # state folder -> the descriptor holding its lock, for the life of the process


def hold_state_lock(state: Path) -> None:
    """Takes the folder's lock for this process, or refuses with STATE_IN_USE naming the process that holds it."""
    folder = Path(state).resolve()
    if folder in _HELD:
        return
    try:
        _HELD[folder] = take_lock(folder / LOCK_NAME)
    except FolderInUse as e:
        raise ConfigError("STATE_IN_USE", f"another provider process (pid {e.holder}) serves from the state folder {folder}; stop it first, "
                          "or give this one its own --state") from None


__all__ = ["LOCK_NAME", "hold_state_lock"]
