"""`flwr run .` on the simulation engine, offline and self-contained, and leaving no process behind.

flwr 1.42's `flwr run` starts a detached local SuperLink (`flower-superlink --simulation`, which runs
`flower-superexec`, which runs `flwr-simulation` with Ray) and returns while it lives on. This module:

- gives the run its own `FLWR_HOME` (Flower's config.toml, state and installed app bundles) and its own
  local SuperLink ports, so runs never share a SuperLink;
- sets the offline switches: FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 (no `uv sync` of the app's
  dependencies), FLWR_DISABLE_UPDATE_CHECK=1, FLWR_TELEMETRY_ENABLED=0, RAY_USAGE_STATS_ENABLED=0;
- passes the run config as a TOML file (`--run-config`) and the federation as `--federation-config`
  (num-supernodes, client-resources-num-cpus/-num-gpus), since 1.42 keeps federations out of pyproject;
- streams the run's log (`--stream`), feeding phase progress lines to a callback;
- then stops every process of the run: each carries a token in its environment (`LLAMDEX_FLWR_RUN`),
  so the processes found with it are exactly those this run started, and `leftover_processes` proves
  none is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.flower.scenario import checked_run_config, run_config_toml
from simulations.flower.watchdog import start_watchdog, stop_watchdog

RUN_TOKEN_ENV = "LLAMDEX_FLWR_RUN"
ROOT = Path(__file__).resolve().parents[2]   # the project: its pyproject.toml is the Flower app's


@dataclass
class FlowerRun:
    """What one `flwr run` left: its exit code, its report, its log and how long it took."""

    returncode: int
    out_dir: Path
    log_path: Path
    seconds: float
    token: str
    stopped: list[str] = field(default_factory=list)     # processes of the run that were still alive and were stopped
    leftovers: list[str] = field(default_factory=list)   # processes of the run alive after stopping (must be empty)
    timed_out: bool = False                              # stopped at its wall-clock limit (`timeout_s`), before it ended

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    def last_phase(self) -> str:
        return last_phase(self.log_path)

    def report(self) -> dict[str, Any]:
        import json

        if not self.report_path.is_file():
            raise FileNotFoundError(f"the run wrote no report at {self.report_path}; see its log {self.log_path}")
        return json.loads(self.report_path.read_text())


def last_phase(log_path: Path) -> str:
    """The last phase a run's log names (its progress lines), "start" before the first."""
    from simulations.flower.progress import LINE_RE

    phase = "start"
    try:
        for line in Path(log_path).read_text(errors="replace").splitlines():
            m = LINE_RE.search(line.strip())
            phase = m.group("phase") if m else phase
    except OSError:
        pass
    return phase


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def flower_bin(name: str) -> str:
    """A Flower executable of this interpreter's environment (`flwr`, `flower-superlink`, ...)."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def flower_env(flwr_home: Path, token: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Flower process of a run: offline, quiet, isolated, tagged with the run's token."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", RUN_TOKEN_ENV: token,
        "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "TQDM_DISABLE": "1",   # the phases report progress as lines (progress.py); per-epoch bars would flood the log
    })
    env.update(extra or {})
    return env


def run_processes(token: str) -> list[Any]:
    """The live processes started for the run tagged `token` (found by the token in their environment)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and p.environ().get(RUN_TOKEN_ENV) == token and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out


def _describe(p: Any) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline()[:3])}"
    except Exception:  # noqa: BLE001 - it just ended
        return str(p.pid)


def stop_run_processes(token: str, grace_s: float = 10.0) -> tuple[list[str], list[str]]:
    """Stops every process of the run (SIGTERM, then SIGKILL after `grace_s`); returns (stopped, still alive)."""
    import psutil

    procs = run_processes(token)
    stopped = [_describe(p) for p in procs]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    time.sleep(0.5)   # a child started in the last moment is found by the second look
    return stopped, [_describe(p) for p in run_processes(token)]


def leftover_processes(token: str) -> list[str]:
    return [_describe(p) for p in run_processes(token)]


def stream_process(cmd: list[str], env: dict[str, str], log_path: Path, on_line: Callable[[str], None] | None, timeout_s: float,
                   cwd: Path = ROOT) -> int:
    """Runs `cmd`, teeing its output to `log_path` and `on_line`; kills it (and its group) past `timeout_s`."""
    import threading

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            for raw in proc.stdout:   # type: ignore[union-attr]
                log.write(raw)
                log.flush()
                if on_line is not None:
                    on_line(raw.decode("utf-8", "replace"))
            return proc.wait()
        finally:
            timer.cancel()


def run_simulation(run_config: dict[str, Any], *, clients: int, out_dir: Path, num_cpus: float = 1, num_gpus: float = 0.0,
                   on_line: Callable[[str], None] | None = None, timeout_s: float = 6 * 3600, app_dir: Path = ROOT) -> FlowerRun:
    """`flwr run <app_dir> --run-config ... --federation-config ... --stream` on a fresh local SuperLink; stops it afterwards."""
    out_dir = Path(out_dir).resolve()
    rc = checked_run_config(run_config, out_dir, clients)
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    home = out_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    env = flower_env(home, token, {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())})
    rc_path = out_dir / "run-config.toml"
    rc_path.write_text(run_config_toml(rc))
    federation = f"num-supernodes={clients} client-resources-num-cpus={max(1, int(num_cpus))}"
    if num_gpus:
        federation += f" client-resources-num-gpus={float(num_gpus)}"
    cmd = [flower_bin("flwr"), "run", str(app_dir), "--run-config", str(rc_path), "--federation-config", federation, "--stream"]
    log_path = out_dir / "flwr.log"
    t0 = time.perf_counter()
    timed_out = False
    watchdog = start_watchdog(token)   # stops the run if this process is killed outright
    try:
        code = stream_process(cmd, env, log_path, on_line, timeout_s)
        timed_out = time.perf_counter() - t0 >= timeout_s   # the timer killed it: no report is coming, and no orderly shutdown
        if not timed_out:
            _wait_for_report(out_dir / "report.json", 30.0)   # the stream can end a moment before the ServerApp's last write
            _wait_for_exit(token, ("flwr-simulation", "flwr-serverapp", "ray::", "raylet", "gcs_server"), 60.0)   # let the run shut Ray down itself
    finally:
        stopped, left = stop_run_processes(token)
        stop_watchdog(watchdog)
    return FlowerRun(code, out_dir, log_path, time.perf_counter() - t0, token, stopped, left, timed_out)


def _wait_for_exit(token: str, names: tuple[str, ...], timeout_s: float) -> None:
    """Waits until no process of the run whose command line names one of `names` is alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(n in d for d in leftover_processes(token) for n in names):
        time.sleep(0.5)


def _wait_for_report(path: Path, timeout_s: float) -> None:
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text()).get("status") in ("completed", "failed"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)


__all__ = ["FlowerRun", "RUN_TOKEN_ENV", "flower_env", "free_port", "leftover_processes", "run_simulation", "stop_run_processes"]
