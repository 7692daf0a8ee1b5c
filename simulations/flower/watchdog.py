"""Stops a run's Flower and Ray processes if the process that launched them dies without stopping them.

The launchers start every process of a run in a session of its own (so that Ctrl-C in a terminal reaches the
command, which then stops them in order), and stop them in a `finally`. A launcher killed outright (SIGKILL, the
OOM killer) runs no `finally`: the run went on detached, and its SuperLink stayed for good. This small process,
started beside the run and stopped with it, waits for the launcher to vanish and then stops every process
tagged with the run's token (`launcher.stop_run_processes`). It does not carry the token itself, so it is never
among the processes it stops.

    python -m simulations.flower.watchdog LAUNCHER_PID TOKEN
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 1.0


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(launcher_pid: int, token: str, poll_s: float = POLL_S) -> list[str]:
    """Waits until `launcher_pid` is gone, then stops the run's processes; returns those it stopped."""
    from simulations.flower.launcher import stop_run_processes

    while _alive(launcher_pid):
        time.sleep(poll_s)
    return stop_run_processes(token)[0]


def start_watchdog(token: str, launcher_pid: int | None = None) -> subprocess.Popen:
    """The watchdog of the run tagged `token`, for this process (or `launcher_pid`)."""
    from simulations.flower.launcher import ROOT, RUN_TOKEN_ENV

    env = {k: v for k, v in os.environ.items() if k != RUN_TOKEN_ENV}
    return subprocess.Popen([sys.executable, "-m", "simulations.flower.watchdog", str(launcher_pid or os.getpid()), token], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_watchdog(proc: subprocess.Popen) -> None:
    """The launcher stopped the run itself: the watchdog has nothing left to do."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
