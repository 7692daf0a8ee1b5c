"""Load test: many clients uploading and asking at once against one provider, bounded in time, checked afterwards.

    flock /tmp/llamdex-heavy.lock python -m simulations.benchmarks.load_test
        # 32 uploading + 64 asking clients for 5 min (~12-15 min with set-up on 2 cores)
        # -> the `load` part of docs/results/reliability.json and the reliability section of docs/RESULTS.md
    python -m simulations.benchmarks.load_test --quick     # 4 + 8 clients for 40 s (the slow test's version)

What it does, on loopback with mutual TLS (every client its own certificate and signing key, registered):
1. starts the provider as its own process (`llamdex provider serve`, base LLM preloaded), lets every asking
   client upload an expert (default size, 400-200) for one of two schemas (titanic, ISLR Default), and has
   the provider train connectors for both (tiny preset) through Customize, so that Ask serves two schemas
   and as many experts as clients: mixed tenants, batched together wherever the provider's serving does so;
2. measures the unloaded Ask latency: one client, one call at a time;
3. runs the load for `--duration` seconds: the uploading clients upload new signed experts back to back,
   the asking clients ask `--questions` questions per call back to back; clients run in `--workers` separate
   processes (threads inside), and every call has a deadline. A refusal for back-pressure (RESOURCE_EXHAUSTED:
   OVERLOADED, TOO_MANY_UPLOADS, RATE_LIMITED) is retried with jittered exponential back-off and counted as
   *shed*; anything else is an *error*. The provider's resident memory is sampled every second (psutil);
4. stops by itself (every client stops starting calls at the deadline; calls under way finish), and checks:
   every upload a client saw accepted has exactly one receipt in the ledger and its upload row, every receipt
   verifies (each client's chain, from GetLedger), the ledger file verifies offline, and nothing accepted is
   missing.
Reported: per call p50/p99 latency (admitted calls, and for Ask also end to end including the back-off),
throughput, shed and errors; unloaded Ask p50 and the ratio of loaded p99 to it (target ≤ 3); peak RSS and its
growth over the last minute. The command line is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.cli.common import add_out_arg
from simulations.two_party_demo import RunLayout, free_port, spawn, wait_healthy, write_provider_config

TINY = {"name": "tiny", "n_synthetic": 300, "encoder_questions": 16, "decoder_questions": 8, "val_questions": 8, "encoder_epochs": 1,
        "decoder_epochs": 1, "inject_candidates": [24], "surrogate_epochs": 1}
SCHEMAS = ("titanic", "default")
SHED_CODES = ("OVERLOADED", "TOO_MANY_UPLOADS", "TOO_MANY_STREAMS", "RATE_LIMITED", "QUEUE_FULL")
CALL_TIMEOUT_S = 120.0


# --- clients ------------------------------------------------------------------------------------------------------

@dataclass
class ClientSpec:
    client_id: str
    role: str             # "upload" or "ask"
    schema: str
    digest: str = ""      # askers: their expert


@dataclass
class WorkerSpec:
    root: str
    provider_addr: str
    deadline: float       # epoch seconds: no call starts after it
    questions_per_ask: int
    clients: list[dict]
    seed: int
    out: str


def party_files(root: Path, cid: str) -> tuple[Path, Any]:
    from protocol.tls import TLSFiles

    return root / "keys" / f"{cid}.key", TLSFiles.in_folder(root / "certs", cid)


def provider_client(root: Path, addr: str, cid: str) -> Any:
    from client_party.provider_client import ProviderClient
    from protocol.keys import load_private_key

    key_path, tls = party_files(root, cid)
    return ProviderClient(addr, cid, load_private_key(key_path), tls=tls, provider_public_key=root / "keys" / "provider.pub",
                          timeout_s=CALL_TIMEOUT_S)


class ArtifactFactory:
    """Distinct signed artifacts of one client, cheaply: one template expert, the i-th variant differs in one weight."""

    def __init__(self, template: Path, key: Any):
        self.files = {p.name: p.read_bytes() for p in template.iterdir() if p.name != "model.sig"}
        self.key = key
        data = self.files["expert.safetensors"]
        (n,) = struct.unpack("<Q", data[:8])
        self.body_at = 8 + n

    def tar(self, i: int) -> bytes:
        import io
        import tarfile

        from protocol.artifact import build_statement, make_bundle

        w = bytearray(self.files["expert.safetensors"])
        w[self.body_at:self.body_at + 8] = struct.pack("<ff", 1e-3 * (i % 1000), 1e-6 * (i // 1000))
        files = {**self.files, "expert.safetensors": bytes(w)}
        files["model.sig"] = json.dumps(make_bundle(build_statement(files, f"load-{i}"), self.key), separators=(",", ":")).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for name in sorted(files):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode = len(files[name]), 0o644
                t.addfile(ti, io.BytesIO(files[name]))
        return buf.getvalue()


def _backoff(attempt: int, rng: random.Random) -> float:
    return rng.uniform(0, min(3.0, 0.2 * (2 ** attempt)))


def _code(e: Any) -> tuple[str, str]:
    from protocol.rpc_errors import error_code

    return e.code().name, error_code(e) or ""


def run_asker(spec: WorkerSpec, c: dict, questions: list[str], rec: list, rng: random.Random) -> None:
    import grpc

    root = Path(spec.root)
    with provider_client(root, spec.provider_addr, c["client_id"]) as pc:
        while time.time() < spec.deadline:
            qs = rng.sample(questions, spec.questions_per_ask)
            first, attempt = time.perf_counter(), 0
            while True:
                t = time.perf_counter()
                try:
                    resp = pc.ask_raw(qs, artifact_digest=c["digest"])
                    now = time.perf_counter()
                    rec.append({"call": "Ask", "ok": True, "s": now - t, "e2e": now - first, "t": time.time(), "attempts": attempt + 1,
                                "server": resp.seconds})
                    break
                except grpc.RpcError as e:
                    status, code = _code(e)
                    if status == "RESOURCE_EXHAUSTED" and code in SHED_CODES and time.time() < spec.deadline + 60:
                        rec.append({"call": "Ask", "shed": True, "code": code, "t": time.time()})
                        time.sleep(_backoff(attempt, rng))
                        attempt += 1
                        continue
                    rec.append({"call": "Ask", "error": f"{status} {code} {(e.details() or '')[:160]}", "t": time.time()})
                    break


def run_uploader(spec: WorkerSpec, c: dict, rec: list, accepted: list, rng: random.Random) -> None:
    import grpc

    from protocol.keys import load_private_key

    root = Path(spec.root)
    key_path, _ = party_files(root, c["client_id"])
    factory = ArtifactFactory(root / "templates" / c["schema"], load_private_key(key_path))
    i = 0
    with provider_client(root, spec.provider_addr, c["client_id"]) as pc:
        while time.time() < spec.deadline:
            i += 1
            tar = factory.tar(i)
            first, attempt = time.perf_counter(), 0
            while True:
                t = time.perf_counter()
                try:
                    res = pc.upload(tar, f"ds{i % 4}", timeout_s=CALL_TIMEOUT_S)
                    now = time.perf_counter()
                    rec.append({"call": "UploadExpert", "ok": True, "s": now - t, "e2e": now - first, "t": time.time(), "bytes": len(tar)})
                    accepted.append({"client_id": c["client_id"], "upload_id": res.upload_id, "digest": res.artifact_digest,
                                     "receipt_id": res.receipt.receipt_id})
                    break
                except grpc.RpcError as e:
                    status, code = _code(e)
                    if status == "RESOURCE_EXHAUSTED" and code in SHED_CODES and time.time() < spec.deadline + 60:
                        rec.append({"call": "UploadExpert", "shed": True, "code": code, "t": time.time()})
                        time.sleep(_backoff(attempt, rng))
                        attempt += 1
                        continue
                    rec.append({"call": "UploadExpert", "error": f"{status} {code} {(e.details() or '')[:160]}", "t": time.time()})
                    break
                except Exception as e:  # noqa: BLE001 - a receipt that does not verify, a timeout: an error to report
                    rec.append({"call": "UploadExpert", "error": f"{type(e).__name__}: {str(e)[:160]}", "t": time.time()})
                    break


def worker_main(spec_path: str) -> int:
    """One worker process: its clients in threads until the deadline; writes its records as JSON."""
    spec = WorkerSpec(**json.loads(Path(spec_path).read_text()))
    questions = json.loads((Path(spec.root) / "questions.json").read_text())
    rec: list = []
    accepted: list = []
    threads = []
    for i, c in enumerate(spec.clients):
        rng = random.Random(spec.seed * 1000 + i)
        target = (lambda c=c, rng=rng: run_asker(spec, c, questions[c["schema"]], rec, rng)) if c["role"] == "ask" else \
            (lambda c=c, rng=rng: run_uploader(spec, c, rec, accepted, rng))
        th = threading.Thread(target=target, name=c["client_id"], daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(timeout=max(0.0, spec.deadline - time.time()) + CALL_TIMEOUT_S + 120)
    Path(spec.out).write_text(json.dumps({"records": rec, "accepted": accepted}))
    return 0


# --- set-up ---------------------------------------------------------------------------------------------------

def prepare(root: Path, uploaders: int, askers: int, *, limits: dict[str, Any] | None = None, connectors: Path | None = None) -> dict[str, Any]:
    """Keys and certificates of every party, the provider's config, question pools and expert templates."""
    from client_party.datasets import load_table, split_table
    from protocol.keys import generate_keypair, load_private_key
    from protocol.tls import make_certs
    from protocol.verbalizer import Verbalizer

    layout = RunLayout(root)
    clients = [ClientSpec(f"up{i:02d}", "upload", SCHEMAS[i % 2]) for i in range(uploaders)] + \
              [ClientSpec(f"ask{i:02d}", "ask", SCHEMAS[i % 2]) for i in range(askers)]
    ids = ["provider", "orchestrator"] + [c.client_id for c in clients]
    make_certs(layout.certs, {n: ["localhost", "127.0.0.1"] for n in ids})
    for n in ["provider"] + [c.client_id for c in clients]:
        if not (layout.keys / f"{n}.key").exists():
            generate_keypair(layout.keys, n)
    addr = f"127.0.0.1:{free_port()}"
    cfg = write_provider_config(layout.provider / "provider.toml", listen=addr, preset=TINY,
                                connectors=str(connectors or (root / "connectors")), limits=limits,
                                clients=[{"id": c.client_id, "public_key": f"../keys/{c.client_id}.pub", "epsilon_budget": 1e9} for c in clients])
    questions = {}
    for s in SCHEMAS:
        df, schema = load_table(s)
        _, test = split_table(df, schema, test_size=0.2, seed=0)
        questions[s] = Verbalizer(schema, seed=7).questions(test[schema.feature_names].iloc[:200].to_dict("records"))
    (root / "questions.json").write_text(json.dumps(questions))
    for s in SCHEMAS:
        _template(root / "templates" / s, s, load_private_key(layout.keys / "provider.key"))
    return {"layout": layout, "addr": addr, "config": cfg, "clients": clients}


def _template(folder: Path, schema_name: str, key: Any) -> None:
    """A default-size expert (400-200) of `schema_name`; uploaders re-sign variants of it with their own key."""
    import torch

    from client_party.datasets import load_schema
    from protocol.artifact import write_artifact
    from protocol.dp import DPStatement, compute_epsilon
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec, build_expert

    schema = load_schema(schema_name)
    torch.manual_seed(0)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, hidden=(400, 200), schema_digest=schema.digest)
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=8.0, sample_rate=0.01, steps=20, max_grad_norm=1.0, accountant="rdp",
                     epsilon=compute_epsilon(8.0, 0.01, 20, 1e-5), delta=1e-5, dataset_size_bucket="1k-2k")
    shutil.rmtree(folder, ignore_errors=True)
    write_artifact(folder, build_expert(spec), schema, dp, key)


def warm_up(root: Path, addr: str, clients: list[ClientSpec], log: Any) -> None:
    """Each asker uploads its expert; connectors are trained for both schemas through Customize."""
    from concurrent.futures import ThreadPoolExecutor

    from protocol.keys import load_private_key
    from protocol.wire import JOB_STATE_NAMES

    askers = [c for c in clients if c.role == "ask"]

    def upload_one(c: ClientSpec) -> None:
        factory = ArtifactFactory(root / "templates" / c.schema, load_private_key(root / "keys" / f"{c.client_id}.key"))
        with provider_client(root, addr, c.client_id) as pc:
            c.digest = pc.upload(factory.tar(0), c.schema).artifact_digest

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(upload_one, askers))
    for s in SCHEMAS:
        c = next(x for x in askers if x.schema == s)
        with provider_client(root, addr, c.client_id) as pc:
            job = pc.customize(c.digest)
            t0 = time.perf_counter()
            last = list(pc.watch_job(job.job_id, timeout_s=3600))[-1]
            if JOB_STATE_NAMES[last.state] != "SUCCEEDED":
                raise RuntimeError(f"connector job for {s} ended {JOB_STATE_NAMES[last.state]}: {last.result.error}")
            log(f"[warm-up] connectors for {s}: {'reused' if job.connectors_reused else 'trained'} in {time.perf_counter() - t0:.0f} s")


def unloaded_ask(root: Path, addr: str, c: ClientSpec, questions: list[str], k: int, n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    out = []
    with provider_client(root, addr, c.client_id) as pc:
        pc.ask_raw(rng.sample(questions, k), artifact_digest=c.digest)   # warm: the expert is loaded and cached
        for _ in range(n):
            t = time.perf_counter()
            pc.ask_raw(rng.sample(questions, k), artifact_digest=c.digest)
            out.append(time.perf_counter() - t)
    return out


# --- measurement -----------------------------------------------------------------------------------------------

class MemorySampler:
    """The provider process's resident memory, sampled every `every_s` seconds on a thread, and the CPU
    seconds spent by the provider and by the load generator's worker processes (`watch`), because on one
    machine the clients' own work competes with the provider for the same cores."""

    def __init__(self, pid: int, every_s: float = 1.0):
        import psutil

        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self.cpu_start = self._cpu(self.proc)
        self.cpu_provider = 0.0
        self.cpu_workers: dict[int, float] = {}
        self._workers: list[Any] = []
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu(proc: Any) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system)

    def watch(self, pid: int) -> None:
        import psutil

        self._workers.append(psutil.Process(pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.proc.memory_info().rss))
                self.cpu_provider = self._cpu(self.proc) - self.cpu_start
            except Exception:  # noqa: BLE001 - the process ended
                return
            for w in self._workers:
                try:
                    self.cpu_workers[w.pid] = self._cpu(w)
                except Exception:  # noqa: BLE001 - the worker ended; its last reading stays
                    pass
            self._stop.wait(self.every_s)

    def start(self) -> "MemorySampler":
        self._th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._th.join(5)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[i]


def summarize_calls(records: list[dict], duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for call in ("UploadExpert", "Ask"):
        rs = [r for r in records if r["call"] == call]
        ok = [r["s"] for r in rs if r.get("ok")]
        e2e = [r["e2e"] for r in rs if r.get("ok")]
        errors = [r["error"] for r in rs if "error" in r]
        shed = [r.get("code", "") for r in rs if r.get("shed")]
        out[call] = {"ok": len(ok), "shed": len(shed), "shed_codes": {c: shed.count(c) for c in sorted(set(shed))}, "errors": len(errors),
                     "error_examples": sorted(set(errors))[:5], "p50_s": percentile(ok, 50), "p99_s": percentile(ok, 99),
                     "e2e_p50_s": percentile(e2e, 50), "e2e_p99_s": percentile(e2e, 99), "per_s": len(ok) / duration if duration else 0.0}
        server = [r["server"] for r in rs if r.get("ok") and "server" in r]
        if server:   # the provider's own time for the pass (its AskResponse.seconds): the rest is queueing in front of it
            out[call].update({"server_p50_s": percentile(server, 50), "server_p99_s": percentile(server, 99)})
    return out


def verify_after(root: Path, addr: str, state: Path, accepted: list[dict], clients: list[ClientSpec]) -> dict[str, Any]:
    """Every accepted upload has exactly one receipt; every receipt verifies; the ledger verifies; nothing accepted is lost."""
    from protocol.keys import load_public_key
    from protocol.receipts import verify_chain
    from provider_party.service.ledger import Ledger

    pub = load_public_key(root / "keys" / "provider.pub")
    problems: list[str] = []
    by_client: dict[str, list[dict]] = {}
    for a in accepted:
        by_client.setdefault(a["client_id"], []).append(a)
    receipts_ok = True
    for c in clients:
        with provider_client(root, addr, c.client_id) as pc:
            try:
                chain = verify_chain(pc.ledger_receipts(), pub)
            except Exception as e:  # noqa: BLE001 - a finding
                receipts_ok = False
                problems.append(f"{c.client_id}: receipts do not verify: {e}")
                continue
        ups = [r for r in chain if r.kind == "upload"]
        counts: dict[str, int] = {}
        for r in ups:
            counts[r.artifact_digest] = counts.get(r.artifact_digest, 0) + 1
        for a in by_client.get(c.client_id, []):
            n = counts.get(a["digest"], 0)
            if n != 1:
                problems.append(f"{c.client_id}: accepted upload {a['upload_id']} ({a['digest'][:19]}…) has {n} receipts")
            if not any(r.receipt_id == a["receipt_id"] for r in ups):
                problems.append(f"{c.client_id}: the receipt {a['receipt_id']} the client got is not in the ledger")
        extra = len(ups) - len(by_client.get(c.client_id, [])) - (1 if c.role == "ask" else 0)
        if extra > 0:
            problems.append(f"{c.client_id}: {extra} upload receipt(s) the client never saw accepted (an upload cut off after the charge)")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal", "-shm"):
            src = state / f"ledger.db{suffix}"
            if src.exists():
                shutil.copy2(src, Path(tmp) / f"ledger.db{suffix}")
        disc = Ledger(Path(tmp) / "ledger.db").verify_chain(pub)
    problems += [f"ledger: {d.reason}" for d in disc[:10]]
    con = sqlite3.connect(state / "state.db")
    try:
        complete = con.execute("SELECT upload_id, receipt FROM uploads WHERE state='complete'").fetchall()
    finally:
        con.close()
    rows = {u: r for u, r in complete}
    for a in accepted:
        if a["upload_id"] not in rows:
            problems.append(f"upload row {a['upload_id']} is not complete")
    lost = sum(1 for p in problems if "not in the ledger" in p or "has 0 receipts" in p)
    return {"accepted_uploads": len(accepted), "receipts_per_upload": "exactly one each" if not any("receipts" in p and "has" in p for p in problems) else "NOT one each",
            "receipts_verify": receipts_ok, "ledger_verifies": not disc, "lost": lost, "problems": problems[:20]}


# --- the run ------------------------------------------------------------------------------------------------------

def run(uploaders: int, askers: int, duration: float, *, workers: int = 4, questions_per_ask: int = 4, unloaded_calls: int = 20,
        limits: dict[str, Any] | None = None, run_dir: Path | None = None, connectors: Path | None = None, seed: int = 0,
        log: Any = print) -> dict[str, Any]:
    root = Path(run_dir or tempfile.mkdtemp(prefix="llamdex-load-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t_setup = time.perf_counter()
    setup = prepare(root, uploaders, askers, limits=limits, connectors=connectors)
    layout, addr, clients = setup["layout"], setup["addr"], setup["clients"]
    plog = layout.provider / "provider.log"
    provider = spawn(["--log-level", "info", "provider", "serve", "--config", str(setup["config"])], plog)
    mem = None
    try:
        from protocol.tls import TLSFiles

        wait_healthy(addr, TLSFiles.in_folder(layout.certs, "orchestrator"), "llamdex.v1.ProviderService", [("provider", provider, plog)],
                     timeout_s=300)
        warm_up(root, addr, clients, log)
        questions = json.loads((root / "questions.json").read_text())
        askers_ = [c for c in clients if c.role == "ask"]
        unloaded = unloaded_ask(root, addr, askers_[0], questions[askers_[0].schema], questions_per_ask, unloaded_calls)
        log(f"[unloaded] Ask of {questions_per_ask} questions: p50 {1000 * statistics.median(unloaded):.0f} ms over {len(unloaded)} calls")
        setup_s = time.perf_counter() - t_setup
        # the load: clients spread over worker processes (threads inside), one deadline for all
        mem = MemorySampler(provider.pid).start()
        t0 = time.time() + 5.0
        deadline = t0 + duration
        procs, outs = [], []
        for w in range(workers):
            mine = clients[w::workers]          # each worker gets its share of uploaders and of askers
            out = root / f"worker-{w}.json"
            spec = WorkerSpec(str(root), addr, deadline, questions_per_ask,
                              [{"client_id": c.client_id, "role": c.role, "schema": c.schema, "digest": c.digest} for c in mine], seed + w, str(out))
            sp = root / f"worker-{w}.spec.json"
            sp.write_text(json.dumps(spec.__dict__))
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            procs.append(subprocess.Popen([sys.executable, "-m", "simulations.benchmarks.load_test", "--worker", str(sp)], env=env,
                                          stdout=open(root / f"worker-{w}.log", "w"), stderr=subprocess.STDOUT))
            mem.watch(procs[-1].pid)
            outs.append(out)
        from tqdm import tqdm

        with tqdm(total=int(duration), desc="load", unit="s") as bar:
            while time.time() < deadline:
                time.sleep(1.0)
                bar.n = int(max(0, min(duration, time.time() - t0)))
                rss = mem.samples[-1][1] / 2 ** 20 if mem.samples else 0
                bar.set_postfix_str(f"provider RSS {rss:.0f} MB", refresh=True)
        for p in procs:
            p.wait(timeout=CALL_TIMEOUT_S + 300)
        t_end = time.time()
        mem.stop()
        records, accepted = [], []
        for o in outs:
            d = json.loads(o.read_text())
            records += d["records"]
            accepted += d["accepted"]
        in_window = [r for r in records if t0 <= r["t"] <= t_end]
        calls = summarize_calls(in_window, duration)
        checks = verify_after(root, addr, layout.provider / "state", accepted, clients)
        samples = mem.samples
        peak = max(r for _, r in samples) / 2 ** 20 if samples else 0.0
        last_t = samples[-1][0] if samples else 0.0
        window = [r for t, r in samples if t >= last_t - 60]
        before = [r for t, r in samples if t <= t0] or [samples[0][1]]
        unloaded_p50 = statistics.median(unloaded)
        ask_p99 = calls["Ask"]["p99_s"] or float("nan")
        ratio = ask_p99 / unloaded_p50
        result = {
            "uploaders": uploaders, "askers": askers, "duration_s": duration, "workers": workers, "questions_per_ask": questions_per_ask,
            "setup_s": round(setup_s, 1), "limits": _limits(limits), "calls": calls,
            "unloaded": {"ask_p50_s": unloaded_p50, "ask_p99_s": percentile(unloaded, 99), "calls": len(unloaded)},
            "ask_p99_over_unloaded_p50": ratio,
            "ask_end_to_end": {"p50_s": calls["Ask"]["e2e_p50_s"], "p99_s": calls["Ask"]["e2e_p99_s"]},
            "memory": {"peak_rss_mb": peak, "rss_at_start_mb": before[-1] / 2 ** 20,
                       "last_minute_growth_mb": (window[-1] - window[0]) / 2 ** 20 if window else 0.0,
                       "last_minute_span_mb": (max(window) - min(window)) / 2 ** 20 if window else 0.0, "samples": len(samples)},
            "cpu_seconds": {"provider": round(mem.cpu_provider, 1), "load_generator": round(sum(mem.cpu_workers.values()), 1),
                            "available": round((t_end - t0) * (os.cpu_count() or 1), 1)},
            "checks": checks,
        }
        result["verdict"] = verdict(result)
        return result
    finally:
        if mem is not None:
            mem.stop()
        if provider.poll() is None:
            provider.send_signal(signal.SIGTERM)
            try:
                provider.wait(30)
            except subprocess.TimeoutExpired:
                provider.kill()


def _limits(limits: dict[str, Any] | None) -> dict[str, Any]:
    from dataclasses import asdict

    from provider_party.service.config import ProviderLimits

    return {k: v for k, v in asdict(ProviderLimits(**(limits or {}))).items()
            if k in ("max_concurrent_asks", "ask_admission_wait_s", "background_wait_s", "max_asks_per_client", "max_workers", "max_upload_streams_per_client", "max_upload_streams",
                     "max_open_uploads", "max_requests_per_second")}


def verdict(r: dict[str, Any]) -> str:
    """One sentence: what held and what did not, with the numbers that explain why."""
    ask, up = r["calls"]["Ask"], r["calls"]["UploadExpert"]
    rate = ask["per_s"] * r["questions_per_ask"]
    little = r["askers"] * r["questions_per_ask"] / rate if rate else float("inf")
    parts = []
    parts.append("no errors" if ask["errors"] + up["errors"] == 0 else f"{ask['errors'] + up['errors']} errors")
    if r["ask_p99_over_unloaded_p50"] <= 3:
        parts.append(f"admitted Ask p99 within 3× the unloaded p50 ({r['ask_p99_over_unloaded_p50']:.2f}×)")
    else:
        parts.append(f"admitted Ask p99 {r['ask_p99_over_unloaded_p50']:.2f}× the unloaded p50 (target 3×)")
    parts.append(f"the provider answered {rate:.1f} questions/s; {r['askers']} askers of {r['questions_per_ask']} questions each wait "
                 f"{little:.1f} s per call on average by Little's law, so end to end (with back-off) no scheduler can keep every "
                 f"asker within 3× of {1000 * r['unloaded']['ask_p50_s']:.0f} ms on this machine: the excess is shed "
                 f"({ask['shed']} refusals with OVERLOADED) instead of queued")
    return "; ".join(parts) + "."


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.load_test", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploaders", type=int, default=32, help="clients that keep uploading signed experts (default 32)")
    ap.add_argument("--askers", type=int, default=64, help="clients that keep asking questions of their uploaded expert (default 64)")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    ap.add_argument("--workers", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--questions", type=int, default=4, help="questions per Ask call (default 4)")
    ap.add_argument("--max-concurrent-asks", type=int, default=None, help="the provider's admission limit (default: its own)")
    ap.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                    help="a provider [limits] setting for this run, e.g. --limit ask_admission_wait_s=0.05 (repeatable)")
    ap.add_argument("--quick", action="store_true", help="4 uploaders, 8 askers, 40 s")
    ap.add_argument("--run-dir", type=Path, help="folder of the provider's state, keys and logs during the run (default: a temporary one)")
    ap.add_argument("--connectors", type=Path, help="a connector store to reuse (default: trained in the run folder)")
    add_out_arg(ap, default=None, help="folder of reliability.json and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    ap = parser()
    a = ap.parse_args(argv)
    if a.quick:
        a.uploaders, a.askers, a.duration = 4, 8, 40.0
    limits = {"max_concurrent_asks": a.max_concurrent_asks} if a.max_concurrent_asks else {}
    for kv in a.limit:
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--limit {kv!r}: write KEY=VALUE, e.g. ask_admission_wait_s=0.05")
        limits[key.strip()] = json.loads(value)
    limits = limits or None
    res = run(a.uploaders, a.askers, a.duration, workers=a.workers, questions_per_ask=a.questions, limits=limits, run_dir=a.run_dir,
              connectors=a.connectors)
    res["command"] = "python -m simulations.benchmarks.load_test " + " ".join(argv)
    from simulations.benchmarks.reliability_report import merge_and_render

    merge_and_render("load", res, a.out)
    print(json.dumps({k: res[k] for k in ("calls", "unloaded", "ask_p99_over_unloaded_p50", "memory", "cpu_seconds", "checks", "verdict")}, indent=1, default=str))
    return 0 if not res["checks"]["problems"] and res["calls"]["Ask"]["errors"] + res["calls"]["UploadExpert"]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
