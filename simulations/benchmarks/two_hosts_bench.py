"""The two-host round, timed phase by phase through two network namespaces, and the provider's restart.

    python -m simulations.benchmarks.two_hosts_bench            # default: titanic, ε = 1, quick preset, every held-out question

Everything runs as an operator would run it, through the `llamdex` command on each "host" (two Linux
network namespaces joined by a veth pair, simulations/netns.py; needs root):

  1. `llamdex hosts bundle` for 10.78.0.1 (provider) and 10.78.0.2 (client);
  2. the provider starts (`llamdex provider serve --config provider.toml`); from the client host,
     `llamdex health --ready --wait` until it reports ready;
  3. `llamdex client round --config client.toml`: its phase times (ready, train, upload, customize,
     evaluate, receipts) come from the round's own record;
  4. a hand-typed `llamdex client ask` (process start included);
  5. checks an operator would make: the provider is not reachable on the client host's loopback, and
     plaintext to the other host is refused in one line;
  6. SIGTERM: how long the drain takes and the exit status;
  7. restarts, on the state the round left (stored connectors, one live expert), timed from the
     client host by simulations/benchmarks/two_hosts_probe.py: process start → liveness → readiness
     → the first Ask (sent the moment readiness is SERVING) → a second Ask; once with the warm-up
     (the default) and once with `--no-preload` (the behaviour before readiness waited for it).

Writes docs/results/two_hosts.json and its section of docs/RESULTS.md (`--out` elsewhere).
Times are wall seconds on this machine (2 shared cores); the command line is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulations.cli.common import add_alias, add_out_arg, positive_int

PORT = 50051
HAND_TYPED = "Mrs. Ann Smith, 34, travelled in second class and embarked at Southampton. Did she survive?"
CODE_ROOT = Path(__file__).resolve().parents[2]   # where the running `simulations` package lives: the processes run the same code


def _env(threads: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _llamdex(pair: Any, side: str, argv: list[str], threads: int | None, timeout_s: float) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    r = subprocess.run(pair.exec_in(side, [sys.executable, "-m", "simulations.cli.main", *argv]), env=_env(threads),
                       capture_output=True, text=True, timeout=timeout_s)
    return r, time.perf_counter() - t


def _check(r: subprocess.CompletedProcess, what: str) -> None:
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")


def _start_provider(pair: Any, config: Path, log: Path, threads: int | None, *extra: str) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(pair.exec_in("provider", [sys.executable, "-m", "simulations.cli.main", "provider", "serve", "--config",
                                                          str(config), *extra]),
                                env=_env(threads), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _drain(proc: subprocess.Popen, timeout_s: float = 60.0) -> dict[str, Any]:
    import signal

    t = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(10)
    return {"exit_status": rc, "seconds": time.perf_counter() - t}


def _timed_restart(pair: Any, b: Any, log: Path, threads: int | None, extra: list[str], timeout_s: float) -> dict[str, Any]:
    """Starts the provider with the probe already waiting on the client host; returns the probe's times and the drain's."""
    probe = subprocess.Popen(pair.exec_in("client", [sys.executable, "-m", "simulations.benchmarks.two_hosts_probe", "--config",
                                                     str(b.client / "client.toml"), "--timeout", str(timeout_s)]),
                             env=_env(threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = probe.stdout.readline()
    if line.strip() != "probe ready":
        probe.kill()
        raise RuntimeError(f"the probe did not start: {line}{probe.stderr.read()[-2000:]}")
    t0 = time.time()
    proc = _start_provider(pair, b.provider / "provider.toml", log, threads, *extra)
    probe.stdin.write(f"{t0}\n")
    probe.stdin.flush()
    try:
        out, err = probe.communicate(timeout=timeout_s + 60)
        if probe.returncode != 0:
            raise RuntimeError(f"the probe failed: {err[-3000:]}\n--- provider ---\n{log.read_text(errors='replace')[-3000:]}")
        times = json.loads(out.strip().splitlines()[-1])
    finally:
        drain = _drain(proc)
    return {**times, "drain": drain}


def run_two_hosts(work: Path, *, data: str = "titanic", preset: str = "quick", epsilon: float = 1.0, epochs: int | None = None,
                  max_questions: int = 0, threads: int | None = None, wait_s: float = 900.0, subnet: int = 78,
                  tag: str | None = None, restarts: bool = True) -> dict[str, Any]:
    """The whole benchmark (see the module doc); returns its record. Raises NetnsUnavailable where namespaces cannot be made."""
    from simulations.host_bundles import make_bundles
    from simulations.netns import host_pair

    work = Path(work)
    record: dict[str, Any] = {"settings": {"data": data, "preset": preset, "epsilon": epsilon, "epochs": epochs, "max_questions": max_questions,
                                           "threads": threads}}
    with host_pair(tag=tag, subnet=subnet) as pair:
        addr = f"{pair.provider_ip}:{PORT}"
        b = make_bundles(work / "bundles", pair.provider_ip, pair.client_ip, preset=preset, port=PORT, force=True)
        ccfg = str(b.client / "client.toml")
        record["hosts"] = {"provider": pair.provider_ip, "client": pair.client_ip}

        t0 = time.perf_counter()
        proc = _start_provider(pair, b.provider / "provider.toml", work / "provider.log", threads)
        try:
            r, _ = _llamdex(pair, "client", ["health", addr, "--ready", "--wait", str(wait_s), "--config", ccfg], threads, wait_s + 60)
            _check(r, "llamdex health --ready --wait")
            record["first_start_to_ready_s"] = time.perf_counter() - t0

            round_json = work / "round.json"
            argv = ["client", "round", "--config", ccfg, "--data", data, "--epsilon", str(epsilon), "--max-test", str(max_questions),
                    "--json", str(round_json)] + (["--epochs", str(epochs)] if epochs else [])
            r, seconds = _llamdex(pair, "client", argv, threads, 6 * 3600)
            (work / "round.log").write_text(r.stdout + r.stderr)
            _check(r, "llamdex client round")
            rnd = json.loads(round_json.read_text())
            record["round"] = {"phase_seconds": rnd["phase_seconds"], "total_seconds": rnd["total_seconds"], "process_seconds": seconds,
                               "n_questions": rnd["scores"]["n_test"], "ask_calls": rnd["scores"]["ask_calls"], "epsilon": rnd["epsilon"],
                               "connectors_reused": rnd["connectors_reused"], "receipts": rnd["receipts"], "scores": rnd["scores"]["rows"],
                               "output": r.stdout}
            if data == "titanic":
                r, seconds = _llamdex(pair, "client", ["client", "ask", "--config", ccfg, HAND_TYPED], threads, 600)
                _check(r, "llamdex client ask")
                record["hand_typed_ask"] = {"question": HAND_TYPED, "output": r.stdout.strip(), "process_seconds": seconds}

            r = subprocess.run(pair.exec_in("client", [sys.executable, "-c", "import socket; s=socket.socket(); s.settimeout(2); "
                                                       f"print(s.connect_ex(('127.0.0.1', {PORT})))"]), capture_output=True, text=True, timeout=30)
            record["client_loopback_reaches_provider"] = r.stdout.strip() == "0"
            r, _ = _llamdex(pair, "client", ["client", "round", "--config", ccfg, "--plaintext"], threads, 120)
            record["plaintext_refusal"] = {"exit_status": r.returncode, "stderr": r.stderr.strip()}
        finally:
            record["drain"] = _drain(proc)
        record["provider_log_tail"] = (work / "provider.log").read_text(errors="replace").splitlines()[-12:]

        if restarts:
            record["restart_with_warm_up"] = _timed_restart(pair, b, work / "provider-restart.log", threads, [], wait_s)
            record["restart_without_preload"] = _timed_restart(pair, b, work / "provider-lazy.log", threads, ["--no-preload"], wait_s)
    return record


def markdown(rec: dict[str, Any]) -> str:
    s = rec["settings"]
    ph = rec["round"]["phase_seconds"]
    lines = ["## Two hosts (network namespaces)\n",
             f"`{rec['command']}` ({rec['environment']['date']}; {s['data']}, ε = {s['epsilon']}, preset {s['preset']}, "
             f"{rec['round']['n_questions']} held-out questions; provider {rec['hosts']['provider']}, client {rec['hosts']['client']}, mutual TLS)\n",
             "| phase | seconds |", "|---|---|", f"| provider start → ready (first start, empty state) | {rec['first_start_to_ready_s']:.1f} |"]
    lines += [f"| round: {k} | {v:.1f} |" for k, v in ph.items()]
    lines.append(f"| round total (the `client round` process: {rec['round']['process_seconds']:.1f}) | {rec['round']['total_seconds']:.1f} |")
    if "hand_typed_ask" in rec:
        lines.append(f"| hand-typed `llamdex client ask` (process included) | {rec['hand_typed_ask']['process_seconds']:.1f} |")
    lines.append(f"| SIGTERM → exit (drain) | {rec['drain']['seconds']:.1f} |")
    for key, name in (("restart_with_warm_up", "restart, warm-up (default)"), ("restart_without_preload", "restart, `--no-preload`")):
        if key in rec:
            r = rec[key]
            lines += ["", f"{name}: process start → live {r['live_s']:.1f} s → ready {r['ready_s']:.1f} s; first Ask at readiness "
                      f"{r['first_ask_s']:.2f} s, second Ask {r['second_ask_s']:.2f} s"]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.two_hosts_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="titanic", help="the client's table (default: %(default)s)")
    ap.add_argument("--preset", default="quick", choices=("quick", "default", "tiny"), help="connector preset (default: %(default)s)")
    ap.add_argument("--epsilon", type=float, default=1.0, help="ε of the expert (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the trainer's)")
    ap.add_argument("--max-test", type=int, default=0, help="held-out questions (default: %(default)s = all)")
    add_alias(ap, "--max-questions", "--max-test", "max_test", type=int)
    ap.add_argument("--threads", type=positive_int, default=None, help="OMP_NUM_THREADS of every process (default: torch's)")
    ap.add_argument("--work", type=Path, default=None, help="folder for bundles and logs (default: a temporary one)")
    add_out_arg(ap, default=Path("docs/results"), help="where the JSON goes (default: %(default)s)", aliases=("--results-dir",))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    import tempfile

    from simulations.benchmarks.results_md import environment, results_md_path, update_section, write_json

    with tempfile.TemporaryDirectory(prefix="llamdex-two-hosts-") as tmp:
        rec = run_two_hosts(args.work or Path(tmp), data=args.data, preset=args.preset, epsilon=args.epsilon, epochs=args.epochs,
                            max_questions=args.max_test, threads=args.threads)
    rec["command"] = "python -m simulations.benchmarks.two_hosts_bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    rec["environment"] = environment()
    path = write_json("two_hosts.json", rec, args.out)
    update_section("two-hosts", markdown(rec), results_md_path(args.out))
    print(markdown(rec))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
