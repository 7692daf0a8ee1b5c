"""A run's processes are stopped when the command that launched them is killed outright (SIGKILL, the OOM killer):
before the watchdog, the run went on detached and its SuperLink stayed for good. Real processes, no Flower needed:
the 'run' is a sleeping process tagged with the run's token, as every Flower and Ray process of a run is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from simulations.flower.launcher import RUN_TOKEN_ENV, run_processes
from simulations.flower.watchdog import start_watchdog, stop_watchdog

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _gone(proc: subprocess.Popen, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        time.sleep(0.2)
    return False


def test_the_runs_processes_are_stopped_when_its_launcher_is_killed_and_not_before():
    token = uuid.uuid4().hex
    launcher = subprocess.Popen(SLEEPER)                                           # stands in for `llamdex simulate`
    run = subprocess.Popen(SLEEPER, env={**os.environ, RUN_TOKEN_ENV: token}, start_new_session=True)
    watchdog = start_watchdog(token, launcher_pid=launcher.pid)
    try:
        assert not _gone(run, 3.0)                                                 # the launcher lives: the run goes on
        assert [p.pid for p in run_processes(token)] == [run.pid]                  # the watchdog is not one of the run's processes
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert _gone(run, 20.0), "the run outlived its killed launcher"
        assert watchdog.wait(timeout=20) == 0
    finally:
        for p in (launcher, run):
            if p.poll() is None:
                p.kill()
                p.wait()
        if watchdog.poll() is None:
            stop_watchdog(watchdog)


def test_a_launcher_that_stops_its_run_stops_its_watchdog_too():
    token = uuid.uuid4().hex
    watchdog = start_watchdog(token)
    stop_watchdog(watchdog)
    assert watchdog.poll() is not None
