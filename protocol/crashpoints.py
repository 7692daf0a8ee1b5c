"""Named crash points for fault-injection tests: a process that reaches an armed point kills itself with SIGKILL.

The reliability tests kill the provider and the client service at precise places (a chunk appended, a
ledger row inserted but not committed, a receipt signed, a connector job making progress) and check
what a restart finds. Code marks such a place with `crashpoint("ledger.after_insert")`; nothing
happens unless the process was started with **both** environment variables

    LLAMDEX_CRASHPOINT=<name>[@<n>]          the point to die at, the n-th time it is reached (default 1)
    LLAMDEX_CRASHPOINT_ARMED=<ARM_TOKEN>     the deliberate, long arming phrase below

read once, when this module is first imported. A production deployment sets neither, and setting only
the point (a typo, a copied environment) arms nothing: an unarmed `crashpoint` is a dictionary-free
comparison with None. An armed process says so in its log at start, and, when
`LLAMDEX_CRASHPOINT_LOG` names a file, appends one line per point reached ("<name> <count>"), which is
how a test counts the points of a dry run before it picks random ones to kill at.

The kill is `os.kill(getpid(), SIGKILL)`: no `finally`, no atexit, no flush — what kill -9 does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

POINT_VAR = "LLAMDEX_CRASHPOINT"
ARM_VAR = "LLAMDEX_CRASHPOINT_ARMED"
LOG_VAR = "LLAMDEX_CRASHPOINT_LOG"
ARM_TOKEN = "kill-this-process-at-the-crash-point-for-a-test"


def _parse(value: str) -> tuple[str, int]:
    name, _, nth = value.partition("@")
    n = int(nth) if nth else 1
    if not name or n < 1:
        raise ValueError(f"{POINT_VAR}={value!r} must be NAME or NAME@N with N >= 1")
    return name, n


def _armed_from_env() -> tuple[str, int] | None:
    point, token = os.environ.get(POINT_VAR, ""), os.environ.get(ARM_VAR, "")
    if not point and not os.environ.get(LOG_VAR):
        return None
    if token != ARM_TOKEN:
        if point:
            log.error("%s is set but %s does not hold the arming phrase: no crash point is armed", POINT_VAR, ARM_VAR)
        return None
    return _parse(point) if point else ("", 0)


_ARMED = _armed_from_env()
_LOG = os.environ.get(LOG_VAR) if _ARMED is not None else None
_counts: dict[str, int] = {}
_lock = threading.Lock()
if _ARMED is not None and _ARMED[0]:
    log.warning("TEST CRASH POINT ARMED: this process kills itself at %s (hit %d)", *_ARMED)


def crashpoint(name: str) -> None:
    """Kills this process (SIGKILL) if `name` is the armed point and this is its n-th hit; otherwise nothing."""
    if _ARMED is None:
        return
    with _lock:
        n = _counts[name] = _counts.get(name, 0) + 1
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{name} {n}\n")
                f.flush()
                os.fsync(f.fileno())
    if name == _ARMED[0] and n == _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def armed() -> tuple[str, int] | None:
    """The armed (point, n), ("", 0) when only counting, or None (the production case)."""
    return _ARMED


def environment(point: str | None, log_file: str | None = None) -> dict[str, str]:
    """The environment variables that arm `point` ("name" or "name@n") in a child process (tests only)."""
    env = {ARM_VAR: ARM_TOKEN}
    if point:
        _parse(point)
        env[POINT_VAR] = point
    if log_file:
        env[LOG_VAR] = str(log_file)
    return env


def counts(log_file: str | os.PathLike) -> dict[str, int]:
    """How often each point was reached, from a dry run's `LLAMDEX_CRASHPOINT_LOG`."""
    out: dict[str, int] = {}
    try:
        lines = open(log_file).read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        name, _, n = line.rpartition(" ")
        if name and n.isdigit():
            out[name] = max(out.get(name, 0), int(n))
    return out


__all__ = ["ARM_TOKEN", "ARM_VAR", "LOG_VAR", "POINT_VAR", "armed", "counts", "crashpoint", "environment"]
