"""The same app on Flower's deployment engine: `flower-superlink` and one `flower-supernode` per client, as separate processes.

    superlink   flower-superlink --host H --port P            (the provider's side: runs the ServerApp)
    supernode   flower-supernode --superlink H:P --node-config "partition-id=I num-partitions=N"   (one per client)
    run         flwr run . deploy --stream                     (a SuperLink connection named `deploy` in $FLWR_HOME/config.toml)

Transport: insecure (plain HTTP) only when the SuperLink listens on loopback; on any other address the
SuperLink serves TLS (`--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`, a certificate for that address
from a run-local CA made with `protocol.tls`) and the SuperNodes and the CLI verify it with the CA
(`--root-certificates`, `root-certificates`), as Flower documents. What the parties exchange is signed
end to end anyway (artifacts, upload headers, receipts): the transport keeps it private.

Each role may run behind a command prefix, e.g. `ip netns exec NS` to put the SuperLink and the
SuperNodes on two network "hosts" (`simulations.netns.host_pair`). Every process carries the run's token
in its environment and is stopped at the end, as in `launcher`.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocol.tls import is_loopback
from simulations.flower.launcher import (
    ROOT,
    FlowerRun,
    _wait_for_exit,
    _wait_for_report,
    flower_bin,
    flower_env,
    free_port,
    stop_run_processes,
    stream_process,
)
from simulations.flower.scenario import checked_run_config, run_config_toml
from simulations.flower.watchdog import start_watchdog, stop_watchdog

CONNECTION = "deploy"


def superlink_command(host: str, port: int, tls: Any | None) -> list[str]:
    cmd = [flower_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if tls is None:
        return cmd + ["--insecure"]
    return cmd + ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]


def supernode_command(superlink: str, partition: int, partitions: int, port: int, ca: Path | None) -> list[str]:
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--host", "127.0.0.1", "--port", str(port),
           "--node-config", f"partition-id={partition} num-partitions={partitions}"]
    return cmd + (["--insecure"] if ca is None else ["--root-certificates", str(ca)])


def connection_toml(address: str, ca: Path | None) -> str:
    """$FLWR_HOME/config.toml with the `deploy` SuperLink connection (flwr 1.42 keeps connections there, not in pyproject)."""
    how = 'insecure = true' if ca is None else f'root-certificates = "{ca}"'
    return f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{how}\n'


def wait_reachable(host: str, port: int, prefix: Sequence[str], env: dict[str, str], timeout_s: float) -> None:
    """Waits until a TCP connection to host:port succeeds from where `prefix` runs (e.g. inside a namespace)."""
    probe = f"import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(({host!r}, {port})))"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subprocess.run([*prefix, sys.executable, "-c", probe], env=env, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the SuperLink at {host}:{port} did not accept connections within {timeout_s:g} s")


def run_deployment(run_config: dict[str, Any], *, clients: int, out_dir: Path, host: str = "127.0.0.1", port: int | None = None,
                   tls: bool | None = None, superlink_prefix: Sequence[str] = (), supernode_prefix: Sequence[str] = (),
                   on_line: Callable[[str], None] | None = None, timeout_s: float = 6 * 3600, app_dir: Path = ROOT) -> FlowerRun:
    """Starts a SuperLink and `clients` SuperNodes, runs the app on them with `flwr run`, and stops every process."""
    from protocol.tls import make_certs

    out_dir = Path(out_dir).resolve()
    rc = checked_run_config(run_config, out_dir, clients)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_tls = (not is_loopback(host)) if tls is None else tls
    if not use_tls and not is_loopback(host):
        raise ValueError(f"the SuperLink would listen on {host} without TLS; insecure transport is allowed on loopback only (pass tls=True)")
    files = make_certs(out_dir / "certs", {"superlink": [host]})["superlink"] if use_tls else None
    ca = files.ca if files is not None else None
    port = port or free_port()
    token = uuid.uuid4().hex
    home = out_dir / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(connection_toml(f"{host}:{port}", ca))
    env = flower_env(home, token)
    rc_path = out_dir / "run-config.toml"
    rc_path.write_text(run_config_toml(rc))
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    code, started, timed_out = -1, [], False
    watchdog = start_watchdog(token)   # stops the run if this process is killed outright
    try:
        started.append(_start([*superlink_prefix, *superlink_command(host, port, files)], env, logs / "superlink.log"))
        wait_reachable(host, port, superlink_prefix, env, 120.0)
        for i in range(clients):
            started.append(_start([*supernode_prefix, *supernode_command(f"{host}:{port}", i, clients, 39400 + i if supernode_prefix else free_port(), ca)],
                   env, logs / f"supernode-{i}.log"))
        cmd = [*superlink_prefix, flower_bin("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(rc_path), "--stream"]
        t_run = time.perf_counter()
        code = stream_process(cmd, env, out_dir / "flwr.log", on_line, timeout_s)
        timed_out = time.perf_counter() - t_run >= timeout_s   # killed at the limit: no report is coming
        if not timed_out:
            _wait_for_report(out_dir / "report.json", 30.0)
            _wait_for_exit(token, ("flwr-serverapp", "flwr-clientapp"), 60.0)
    finally:
        stopped, left = stop_run_processes(token)
        for p in started:   # reaped: no zombie of ours stays in the process table
            p.wait(timeout=10)
        stop_watchdog(watchdog)
    return FlowerRun(code, out_dir, out_dir / "flwr.log", time.perf_counter() - t0, token, stopped, left, timed_out)


def _start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


__all__ = ["connection_toml", "run_deployment", "superlink_command", "supernode_command"]
