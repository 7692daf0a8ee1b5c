"""The main job over the real protocol: provider and client as separate processes meeting only over gRPC.

`run_two_party_demo(run_dir)` creates keys and mutual-TLS certificates, writes both parties' TOML
configs, starts `llamdex provider serve` and `llamdex client serve` as separate processes on
loopback, and then acts as the orchestrator (its own certificate, CN `orchestrator`):

  1. ClientService.TrainExpert: the client trains a DP expert (ε = 1) on its private table, signs
     it, uploads it (chunked) and verifies and keeps the provider's privacy receipt;
  2. ClientService.Customize: the client asks the provider to customize (connector job), the
     progress streams back (WatchJob) into a progress bar;
  3. ClientService.WatchEvaluate: the client asks its held-out questions through the provider's Ask,
     batch by batch (a progress bar here), and scores the answers itself (the labels never leave it);
  4. ClientService.ListReceipts: the verified receipt chain, verified again here.

The client's table is any `TableRef`: a registered table, or a CSV/Parquet file with its schema (the
client's config then names it in `[tables.ID]`). Every file of the run lands in `run_dir`, the
provider's connector store included
(`run_dir/provider/connectors`); pass `connectors_root` (e.g. `$LLAMDEX_HOME/connectors`) to let the
provider reuse connectors trained before for the same base model and schema.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PROVIDER_ID, ORCHESTRATOR_ID = "provider", "orchestrator"
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1"]


@dataclass
class RunLayout:
    root: Path

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def provider(self) -> Path:
        return self.root / "provider"

    @property
    def client(self) -> Path:
        return self.root / "client"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _toml_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v != float("inf") else '"inf"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_str(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def _toml(sections: list[tuple[str, dict[str, Any]]]) -> str:
    out = []
    for name, values in sections:
        out.append(name)
        out += [f"{k} = {_toml_str(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)


def write_provider_config(path: Path, *, listen: str, clients: list[dict[str, Any]], preset: str | dict = "quick", connectors: str | None = None,
                          tls_name: str = PROVIDER_ID, plaintext: bool = False, limits: dict[str, Any] | None = None) -> Path:
    """provider.toml with paths relative to its folder (keys in ../keys, certificates in ../certs)."""
    sections = [("[provider]", {"id": PROVIDER_ID, "listen": listen, "key": "../keys/provider.key", "state": "state",
                                "connectors": connectors, "base_model": "embedded", "preset": preset, "preload": True}),
                ("[tls]", {"plaintext": True} if plaintext else {"ca": "../certs/ca.pem", "cert": f"../certs/{tls_name}.pem", "key": f"../certs/{tls_name}.key"})]
    if limits:
        sections.append(("[limits]", limits))
    for c in clients:
        sections.append(("[[clients]]", c))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by simulations/two_party_demo.py\n" + _toml(sections))
    return path


def write_client_config(path: Path, *, client_id: str, listen: str, provider_address: str, max_epsilon: float, datasets: list[str],
                        plaintext: bool = False, server_name: str | None = None, tables: dict[str, Any] | None = None) -> Path:
    """client.toml: `datasets` are registered tables; `tables` maps a dataset id to a `TableRef` of a file (absolute paths)."""
    sections = [("[client]", {"id": client_id, "key": f"../keys/{client_id}.key", "workspace": "workspace", "max_epsilon": max_epsilon,
                              "datasets": datasets, "listen": listen, "allowed_callers": [PROVIDER_ID, ORCHESTRATOR_ID]}),
                ("[provider]", {"address": provider_address, "public_key": "../keys/provider.pub", "server_name": server_name}),
                ("[tls]", {"plaintext": True} if plaintext else {"ca": "../certs/ca.pem", "cert": f"../certs/{client_id}.pem", "key": f"../certs/{client_id}.key"})]
    for name, ref in (tables or {}).items():
        sections.append((f"[tables.{name}]", {"data": str(Path(ref.path).resolve()),
                                               "schema": str(Path(ref.schema_path).resolve()) if ref.schema_path else None,
                                               "on_invalid": ref.on_invalid if ref.on_invalid != "reject" else None}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by simulations/two_party_demo.py\n" + _toml(sections))
    return path


def prepare_parties(layout: RunLayout, client_id: str = "alice", hosts: dict[str, list[str]] | None = None) -> None:
    """Signing keys of provider and client; a CA and certificates for provider, client and orchestrator."""
    from protocol.keys import generate_keypair
    from protocol.tls import make_certs

    for name in (PROVIDER_ID, client_id):
        if not (layout.keys / f"{name}.key").exists():
            generate_keypair(layout.keys, name)
    hosts = hosts or {}
    make_certs(layout.certs, {n: hosts.get(n, LOOPBACK_HOSTS) for n in (PROVIDER_ID, client_id, ORCHESTRATOR_ID)})


def spawn(argv: list[str], log_path: Path, *, threads: int | None = None, extra_env: dict[str, str] | None = None,
          prefix: list[str] | None = None) -> subprocess.Popen:
    """`llamdex ARGV` in its own session, output to `log_path`; `prefix` runs it through another command
    (e.g. `ip netns exec NS`, which execs in place: the process id stays the one returned)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.update(extra_env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    f = open(log_path, "ab")
    return subprocess.Popen([*(prefix or []), sys.executable, "-m", "simulations.cli.main", *argv], stdout=f, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _interrupt_on_sigterm() -> Any:
    """SIGTERM raises KeyboardInterrupt in the main thread, so that `finally` blocks stop what was started (SIGTERM's
    default ends the process at once, leaving children of their own session running). Returns the handler it replaced,
    or None off the main thread (where Python cannot set one)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    return signal.signal(signal.SIGTERM, interrupt)


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def wait_healthy(address: str, tls: Any, service: str, procs: list[tuple[str, subprocess.Popen, Path]], timeout_s: float = 180.0,
                 plaintext: bool = False, server_name: str | None = None) -> None:
    """Polls gRPC health until `service` is SERVING; fails early (with the log tail) if a process died."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protocol.tls import open_channel

    deadline = time.monotonic() + timeout_s
    with open_channel(address, tls, plaintext=plaintext, server_name=server_name) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            for name, p, log in procs:
                if p.poll() is not None:
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise RuntimeError(f"{name} exited with code {p.returncode} before serving; log {log}:\n{tail}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"{service} at {address} was not SERVING within {timeout_s:.0f} s")


def _fmt_receipt(r: Any) -> str:
    from client_party.receipt_store import describe

    return describe(r)


def run_two_party_demo(run_dir: Path, epsilon: float = 1.0, preset: str | dict = "quick", table: Any = "titanic", seed: int = 0, *,
                       client_id: str = "alice", epsilon_budget: float = 4.0, max_questions: int = 0, include_base: bool = True,
                       connectors_root: Path | None = None, log: Callable[[str], None] = print) -> int:
    """Runs the main job over gRPC with mutual TLS on loopback; returns 0 on success.

    `table` is a `TableRef` or the text `--data` takes (a registered name, or a CSV/Parquet file whose schema is beside it).
    """
    import grpc
    from protocol.progress import progress_bar as tqdm   # one line per update in a file or pipe

    from client_party.datasets import TableRef
    from client_party.service import format_scores
    from protocol.receipts import verify_chain, verify_receipt
    from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc
    from protocol.tls import TLSFiles, open_channel
    from protocol.wire import JOB_STATE_NAMES, receipt_envelope

    t_start = time.perf_counter()
    table = table if isinstance(table, TableRef) else TableRef.parse(table)
    if table.name and table.schema_path:   # the client config names registered tables by name alone, with their bundled schema
        raise ValueError(f"the two-party demo trains registered table {table.name!r} on its bundled schema, not {table.schema_path}; "
                         "to use your own schema, write the table to a CSV file with the schema beside it, or run --in-process")
    dataset = table.id
    layout = RunLayout(Path(run_dir).resolve())
    layout.root.mkdir(parents=True, exist_ok=True)
    log(f"[run] {layout.root}")
    prepare_parties(layout, client_id)
    p_port, c_port = free_port(), free_port()
    p_addr, c_addr = f"127.0.0.1:{p_port}", f"127.0.0.1:{c_port}"
    pcfg = write_provider_config(layout.provider / "provider.toml", listen=p_addr, preset=preset,
                                 connectors=str(connectors_root) if connectors_root else "connectors",
                                 clients=[{"id": client_id, "public_key": f"../keys/{client_id}.pub", "epsilon_budget": epsilon_budget,
                                           "callback": c_addr}])
    ccfg = write_client_config(layout.client / "client.toml", client_id=client_id, listen=c_addr, provider_address=p_addr,
                               max_epsilon=max(epsilon, 1.0) * 4, datasets=[table.name] if table.name else [],
                               tables={} if table.name else {dataset: table})
    orch = TLSFiles.in_folder(layout.certs, ORCHESTRATOR_ID)
    results: dict[str, Any] = {"dataset": dataset, "data": str(table), "epsilon_target": epsilon, "preset": preset if isinstance(preset, str) else preset.get("name", "custom"), "seed": seed, "provider": p_addr, "client": c_addr}
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    previous_handler = _interrupt_on_sigterm()   # the services run in sessions of their own: a SIGTERM to the demo must stop them too
    try:
        procs.append(("provider", spawn(["provider", "serve", "--config", str(pcfg)], layout.provider / "provider.log"), layout.provider / "provider.log"))
        procs.append(("client", spawn(["client", "serve", "--config", str(ccfg)], layout.client / "client.log", threads=1), layout.client / "client.log"))
        log(f"[run] provider pid {procs[0][1].pid} on {p_addr}, client pid {procs[1][1].pid} on {c_addr} (mutual TLS; logs in provider/ and client/)")
        wait_healthy(p_addr, orch, "llamdex.v1.ProviderService", procs)
        wait_healthy(c_addr, orch, "llamdex.v1.ClientService", procs)
        results["startup_s"] = time.perf_counter() - t_start
        log(f"[run] both services SERVING after {results['startup_s']:.1f} s")
        with open_channel(c_addr, orch) as ch:
            client = client_pb2_grpc.ClientServiceStub(ch)
            hello = client.Hello(client_pb2.ClientHelloRequest(), timeout=30)
            log(f"[orchestrator] client {hello.client_id} (key {hello.key_fingerprint[:23]}…) offers {list(hello.datasets)}, ε ≤ {hello.max_epsilon:g}")

            t = time.perf_counter()
            tr = client.TrainExpert(client_pb2.TrainExpertRequest(dataset_id=dataset, max_epsilon=epsilon, seed=seed, upload=True), timeout=1800)
            results["train_upload_s"] = time.perf_counter() - t
            dp = json.loads(tr.dp_statement_json)
            provider_pub = layout.keys / "provider.pub"
            receipt = verify_receipt(receipt_envelope(tr.receipt), provider_pub)
            log(f"[client] DP-SGD expert on {tr.n_train} records: ε={dp['epsilon']:.3f}, δ={dp['delta']:.2e} (σ={dp['noise_multiplier']:.3f}, "
                f"q={dp['sample_rate']:.4f}, {dp['steps']} steps); held-out accuracy {tr.expert_heldout_accuracy:.3f}")
            log(f"[client] uploaded {tr.artifact_bytes} bytes, artifact {tr.artifact_digest}")
            log(f"[provider→client] receipt (verified): {_fmt_receipt(receipt)}")
            log(f"           ε claimed {receipt.epsilon_claimed:.4f}, recomputed by the provider {receipt.epsilon_recomputed:.4f}; "
                f"dataset budget {receipt.budget:g}, remaining {receipt.remaining:.3f}")
            (layout.root / "receipt-upload.json").write_text(json.dumps(receipt_envelope(tr.receipt), indent=2) + "\n")
            results.update(artifact_digest=tr.artifact_digest, dp=dp, expert_heldout_accuracy=tr.expert_heldout_accuracy,
                           receipt=receipt.to_dict())

            t = time.perf_counter()
            last = None
            with tqdm(total=100, desc="[provider] customize", unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}",
                      file=sys.stdout) as bar:
                for ev in client.Customize(client_pb2.ClientCustomizeRequest(artifact_digest=tr.artifact_digest), timeout=3600):
                    bar.n = int(round(100 * ev.fraction))
                    bar.set_postfix_str(f"{JOB_STATE_NAMES.get(ev.state, '?').lower()}: {ev.stage}"[:60], refresh=False)
                    bar.refresh()
                    last = ev
            results["customize_s"] = time.perf_counter() - t
            if last is None or JOB_STATE_NAMES.get(last.state) != "SUCCEEDED":
                raise RuntimeError(f"customization failed: {last.result.error if last is not None else 'no events'}")
            results["connectors_reused"] = last.result.connectors_reused
            log(f"[provider] connectors {'reused' if last.result.connectors_reused else 'trained'} for {last.result.base_model_id} × "
                f"schema {last.result.schema_digest[:19]}… in {results['customize_s']:.0f} s")

            t = time.perf_counter()
            ev_resp = None
            with tqdm(total=max_questions or tr.n_test, desc="[client] held-out questions through Ask", unit="q", file=sys.stdout) as bar:
                for ev in client.WatchEvaluate(client_pb2.EvaluateRequest(artifact_digest=tr.artifact_digest, max_questions=max_questions,
                                                                         batch_size=16, include_base=include_base), timeout=3600):
                    bar.total = ev.total
                    bar.update(ev.asked - bar.n)
                    if ev.HasField("result"):
                        ev_resp = ev.result
            if ev_resp is None:
                raise RuntimeError("the client's evaluation ended without a result")
            results["evaluate_s"] = time.perf_counter() - t
            rows = [{"method": r.method, "epsilon": r.epsilon if r.has_epsilon else None, "accuracy": r.accuracy,
                     "balanced_accuracy": r.balanced_accuracy, "macro_f1": r.macro_f1, "n_test": r.n_test} for r in ev_resp.rows]
            table = format_scores(dataset, rows)
            results.update(rows=rows, ask_seconds=ev_resp.ask_seconds, ask_calls=ev_resp.ask_calls, agreement_with_expert=ev_resp.agreement_with_expert)
            log(f"[client] {rows[0]['n_test']} held-out questions through Ask in {ev_resp.ask_calls} calls ({ev_resp.ask_seconds:.1f} s); "
                f"Llamdex agrees with the expert on {ev_resp.agreement_with_expert:.1%}")
            log(table)
            (layout.root / "accuracy.md").write_text(table + "\n")

            lr = client.ListReceipts(client_pb2.ListReceiptsRequest(), timeout=60)
            envs = [receipt_envelope(r) for r in lr.receipts]
            chain = verify_chain(envs, provider_pub)
            (layout.root / "receipts.json").write_text(json.dumps(envs, indent=2) + "\n")
            log(f"[client] receipt chain ({len(chain)} receipt(s), verified again by the orchestrator under {lr.provider_key_fingerprint[:23]}…):")
            for r in chain:
                log("  " + _fmt_receipt(r))
            results["receipt_chain"] = [r.digest for r in chain]
    except (grpc.RpcError, RuntimeError, TimeoutError) as e:
        msg = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        log(f"[run] FAILED: {msg}")
        results["error"] = msg
        return 1
    finally:
        codes = {name: stop(p) for name, p, _ in procs}
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        results["exit_codes"] = codes
        results["total_s"] = time.perf_counter() - t_start
        (layout.root / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"[run] stopped provider and client; {results['total_s']:.0f} s in all; results in {layout.root / 'results.json'}")
    return 0
