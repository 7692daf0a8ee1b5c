"""Crash campaign: kill -9 the provider or the client service at precise points, restart it, and check that nothing is lost.

    python -m simulations.benchmarks.fault_campaign --trials 20     # >= 20 kill points per scenario (~1 h on 2 cores)
                                                                   # -> the `faults` part of docs/results/reliability.json
    python -m simulations.benchmarks.fault_campaign --trials 1 --scenario "provider: upload"   # one scenario, one kill

Every trial starts the real process (`llamdex provider serve`, `llamdex client serve`, mutual TLS on loopback)
with one crash point armed (`protocol.crashpoints`: the process SIGKILLs itself the n-th time it reaches the
point; n is drawn at random from the number of times a dry run reached it), drives it until it dies, restarts
it unarmed, and checks:

- provider: the ledger verifies (hash chain, every signature, budgets explained by events); every live expert
  verifies and has exactly one ledger upload entry, every ledger upload is live (or forgotten); nothing is left
  in staging, tmp or trash; each upload row is `complete` with the ledger's receipt or `receiving` with only
  verified bytes; each connector job cut off is `FAILED` with its reason and `Customize` starts a new one;
  a connector set is complete or absent; the client retries under the same upload id and gets a receipt that
  verifies, charged exactly once (no double spending); every receipt obtained before the kill is still there;
- client service: no half artifact in its workspace (every artifact folder verifies); a training cut off is
  retried by the orchestrator and charged once; an upload cut off is resumed at start under the same upload id
  and charged once; the client's receipt chain verifies and matches the provider's ledger.

Scenarios: "provider: upload" (`upload.chunk_written`), "provider: ledger write" (`ledger.*`, `upload.*` around
the charge), "provider: receipt signing" (`receipt.before_sign`/`after_sign`), "provider: connector training"
(`job.progress`), "client: training" (`client.train_epoch`, `client.artifact_written`), "client: upload"
(`client.upload_chunk`), and "provider: disk full" (a small tmpfs; root only, skipped with the reason otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from protocol import crashpoints
from simulations.benchmarks.results_md import command_line
from simulations.cli.common import add_out_arg
from simulations.two_party_demo import (
    RunLayout,
    free_port,
    prepare_parties,
    spawn,
    wait_healthy,
    write_client_config,
    write_provider_config,
)

TINY = {"name": "tiny", "n_synthetic": 300, "encoder_questions": 16, "decoder_questions": 8, "val_questions": 8, "encoder_epochs": 1,
        "decoder_epochs": 1, "inject_candidates": [24], "surrogate_epochs": 1}
UPLOAD_CHUNK = 16 << 10        # small chunks: many kill points inside one ~350 kB upload
LEDGER_POINTS = ("ledger.after_insert", "ledger.after_budget_update", "ledger.before_commit", "ledger.after_commit",
                 "upload.finalize", "upload.staged", "upload.charged", "upload.promoted")
SIGNING_POINTS = ("receipt.before_sign", "receipt.after_sign")
CLIENT_TRAIN_EPOCHS = 3


def _terminate(proc: subprocess.Popen | None) -> None:
    """SIGTERM a service that is still running (it drains), then SIGKILL if it has not exited within 20 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class TrialResult:
    scenario: str
    point: str
    injected: bool
    survived: bool
    problems: list[str] = field(default_factory=list)
    lost: int = 0
    seconds: float = 0.0


# --- the provider rig --------------------------------------------------------------------------------------------

class ProviderRig:
    """A provider's folders and config on loopback; starts its process (optionally with a crash point armed)."""

    def __init__(self, root: Path, *, state: Path | None = None, limits: dict[str, Any] | None = None):
        self.layout = RunLayout(Path(root).resolve())
        self.layout.root.mkdir(parents=True, exist_ok=True)
        prepare_parties(self.layout, "alice")
        self.addr = f"127.0.0.1:{free_port()}"
        self.connectors = self.layout.root / "connectors"
        self.config = write_provider_config(self.layout.provider / "provider.toml", listen=self.addr, preset=TINY,
                                            connectors=str(self.connectors), limits=limits,
                                            clients=[{"id": "alice", "public_key": "../keys/alice.pub", "epsilon_budget": 1000.0}])
        if state is not None:   # the state folder elsewhere (a small tmpfs for the disk-full scenario)
            self.config.write_text(self.config.read_text().replace('state = "state"', f'state = "{state}"'))
        self.state = state or self.layout.provider / "state"
        self.log = self.layout.provider / "provider.log"
        self.proc: subprocess.Popen | None = None
        from protocol.keys import load_private_key, load_public_key
        from protocol.tls import TLSFiles

        self.provider_pub = load_public_key(self.layout.keys / "provider.pub")
        self.alice_key = load_private_key(self.layout.keys / "alice.key")
        self.tls = {n: TLSFiles.in_folder(self.layout.certs, n) for n in ("alice", "orchestrator", "provider")}

    def start(self, point: str | None = None, count_log: Path | None = None, timeout_s: float = 120) -> subprocess.Popen:
        env = crashpoints.environment(point, str(count_log) if count_log else None) if (point or count_log) else {}
        self.proc = spawn(["--log-level", "info", "provider", "serve", "--config", str(self.config), "--no-preload"], self.log, threads=1,
                          extra_env=env)
        wait_healthy(self.addr, self.tls["orchestrator"], "llamdex.v1.ProviderService", [("provider", self.proc, self.log)], timeout_s=timeout_s)
        return self.proc

    def stop(self) -> None:
        _terminate(self.proc)

    def died_by_kill(self, timeout_s: float = 60) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return False
        return self.proc.returncode == -signal.SIGKILL

    def client(self, **kw: Any) -> Any:
        from client_party.provider_client import ProviderClient

        return ProviderClient(self.addr, "alice", self.alice_key, tls=self.tls["alice"], provider_public_key=self.provider_pub, timeout_s=60, **kw)


def artifact_tar(folder: Path, key: Any, seed: int) -> bytes:
    """A distinct signed default-size expert (400-200, ~350 kB) as the client would upload it."""
    import torch

    from protocol.artifact import pack_artifact, write_artifact
    from protocol.dp import DPStatement, compute_epsilon
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec, build_expert
    from protocol.schema import PublicSchema

    schema = PublicSchema.load(Path(__file__).resolve().parents[2] / "client_party" / "schemas" / "titanic.json")
    torch.manual_seed(seed)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, hidden=(400, 200), schema_digest=schema.digest)
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=4.0, sample_rate=0.01, steps=50, max_grad_norm=1.0, accountant="rdp",
                     epsilon=compute_epsilon(4.0, 0.01, 50, 1e-5), delta=1e-5, dataset_size_bucket="1k-2k")
    shutil.rmtree(folder, ignore_errors=True)
    return pack_artifact(write_artifact(folder, build_expert(spec), schema, dp, key))


# --- invariants on disk ---------------------------------------------------------------------------------------

def provider_invariants(rig: ProviderRig, receipted: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Problems found in the provider's state after a restart, and how many receipted uploads were lost."""
    from protocol.artifact import ArtifactVerifier
    from provider_party.service.ledger import Ledger

    problems: list[str] = []
    state = Path(rig.state)
    ledger = Ledger(state / "ledger.db")
    problems += [f"ledger: {d.reason}" for d in ledger.verify_chain(rig.provider_pub)]
    entries, token = [], None
    while True:
        page, token = ledger.entries(page_token=token, page_size=1000)
        entries += page
        if not token:
            break
    last: dict[tuple[str, str], str] = {}
    uploads: dict[tuple[str, str], int] = {}
    for e in entries:
        last[(e.client_id, e.artifact_digest)] = e.kind
        if e.kind == "upload":
            uploads[(e.client_id, e.artifact_digest)] = uploads.get((e.client_id, e.artifact_digest), 0) + 1
    problems += [f"artifact {d} charged {n} times" for (c, d), n in uploads.items() if n > 1]
    live_root = state / "experts" / "live"
    live = {(c.name, "sha256:" + d.name) for c in live_root.iterdir() if c.is_dir() for d in c.iterdir()} if live_root.is_dir() else set()
    for c, d in sorted(live):
        if last.get((c, d)) != "upload":
            problems.append(f"live expert {d} of {c} has no ledger upload as its last entry")
        try:
            ArtifactVerifier([rig.alice_key.public_key()]).verify(live_root / c / d.split(":")[1] / "artifact")
        except Exception as e:  # noqa: BLE001 - a finding
            problems.append(f"live expert {d} does not verify: {e}")
    for (c, d), kind in last.items():
        if kind == "upload" and (c, d) not in live:
            problems.append(f"ledger upload of {d} ({c}) is not live: the expert was lost")
    for sub in ("staging", "tmp", "trash"):
        left = [str(p) for p in (state / "experts" / sub).rglob("*") if p.is_file()]
        if left:
            problems.append(f"experts/{sub} still holds {left[:3]} after recovery")
    con = sqlite3.connect(state / "state.db")
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM uploads").fetchall()
        jobs = con.execute("SELECT job_id, state, error FROM jobs").fetchall()
    finally:
        con.close()
    receipts = {e.receipt_id: e for e in entries}
    for r in rows:
        part = state / "uploads" / "parts" / r["client_id"] / f"{r['upload_id']}.part"
        if r["state"] == "complete":
            if _receipt_id(json.loads(r["receipt"])) not in receipts:
                problems.append(f"upload {r['upload_id']} is complete with a receipt the ledger does not hold")
            if part.exists():
                problems.append(f"upload {r['upload_id']} is complete but its part file remains")
        elif r["state"] == "receiving" and part.exists() and part.stat().st_size > r["total_bytes"]:
            problems.append(f"upload {r['upload_id']}: part file longer than the artifact")
    for j in jobs:
        if j["state"] in ("QUEUED", "RUNNING"):
            problems.append(f"job {j['job_id']} still {j['state']} after the restart")
        if j["state"] == "FAILED" and not j["error"]:
            problems.append(f"job {j['job_id']} FAILED without a reason")
    lost = 0
    for digest, rid in (receipted or {}).items():
        if rid not in receipts or ("alice", digest) not in live:
            lost += 1
            problems.append(f"receipted upload {digest} (receipt {rid}) lost")
    return problems, lost


def _receipt_id(env: dict) -> str:
    import base64

    return json.loads(base64.b64decode(env["payload"]))["predicate"]["receipt_id"]


# --- provider scenarios -----------------------------------------------------------------------------------------

class ProviderScenario:
    """Kills the provider at `point` while a client uploads (or customizes); restarts; checks; the client retries."""

    def __init__(self, rig: ProviderRig, name: str, points: tuple[str, ...]):
        self.rig, self.name, self.points = rig, name, points
        self.receipted: dict[str, str] = {}     # artifact digest -> receipt id the client holds
        self.trial = 0
        self.hits: dict[str, int] = {}

    def work(self, dataset: str) -> tuple[bytes, str]:
        tar = artifact_tar(self.rig.layout.root / "art" / f"{self.name.split(':')[-1].strip().replace(' ', '-')}-{self.trial}",
                           self.rig.alice_key, seed=1000 * len(self.name) + self.trial)
        return tar, secrets.token_urlsafe(24)

    def dry_run(self) -> dict[str, int]:
        """Counts how often each point is reached by one trial's work (the range the kill points are drawn from)."""
        log = self.rig.layout.root / f"count-{self.name.replace(' ', '_').replace(':', '')}.log"
        log.unlink(missing_ok=True)
        self.rig.start(count_log=log)
        try:
            self._drive(*self.work(f"dry-{self.trial}"), dataset=f"dry{self.trial}-{secrets.token_hex(3)}", expect_death=False)
        finally:
            self.rig.stop()
        self.hits = {p: n for p, n in crashpoints.counts(log).items() if p in self.points}
        return self.hits

    def _drive(self, tar: bytes, upload_id: str, dataset: str, expect_death: bool) -> Any:
        with self.rig.client() as pc:
            try:
                return pc.upload(tar, dataset, upload_id=upload_id, chunk_bytes=UPLOAD_CHUNK, max_attempts=2, timeout_s=60)
            except Exception:  # noqa: BLE001 - the provider died under the call
                if not expect_death:
                    raise
                return None

    def trial_once(self, rng: random.Random) -> TrialResult:
        self.trial += 1
        t0 = time.perf_counter()
        candidates = [p for p in self.points if self.hits.get(p)]
        point = rng.choice(candidates)
        n = rng.randint(1, self.hits[point])
        armed = f"{point}@{n}"
        dataset = f"d{self.trial}-{secrets.token_hex(3)}"     # a fresh dataset: its budget event is written in the trial too
        tar, upload_id = self.work(dataset)
        self.rig.start(armed)
        self._drive(tar, upload_id, dataset, expect_death=True)
        injected = self.rig.died_by_kill()
        self.rig.start()                                    # the restart, unarmed
        problems: list[str] = []
        try:
            problems, lost = provider_invariants(self.rig, self.receipted)
            with self.rig.client() as pc:                   # the client retries under the same upload id
                res = pc.upload(tar, dataset, upload_id=upload_id, chunk_bytes=UPLOAD_CHUNK, max_attempts=3)
                self.receipted[res.artifact_digest] = res.receipt.receipt_id
                from protocol.receipts import verify_chain

                verify_chain(pc.ledger_receipts(), self.rig.provider_pub)
            again, lost2 = provider_invariants(self.rig, self.receipted)
            problems += [p for p in again if p not in problems]
            lost = max(lost, lost2)
        except Exception as e:  # noqa: BLE001 - a failed retry is a finding
            problems.append(f"after the restart: {type(e).__name__}: {e}")
            lost = 0
        finally:
            self.rig.stop()
        return TrialResult(self.name, armed, injected, injected and not problems, problems, lost, time.perf_counter() - t0)


class TrainingScenario(ProviderScenario):
    """Kills the provider while it trains connectors (`job.progress`), restarts, checks the job and the store."""

    def __init__(self, rig: ProviderRig):
        super().__init__(rig, "provider: connector training", ("job.progress",))
        self.digest: str | None = None

    def _ensure_expert(self) -> str:
        if self.digest is None:
            with self.rig.client() as pc:
                self.digest = pc.upload(artifact_tar(self.rig.layout.root / "art" / "train", self.rig.alice_key, seed=7), "titanic").artifact_digest
        return self.digest

    def _train(self, expect_death: bool) -> tuple[str, list[Any]]:
        with self.rig.client() as pc:
            job = pc.customize(self._ensure_expert())
            events = []
            try:
                for ev in pc.watch_job(job.job_id, timeout_s=1800):
                    events.append(ev)
            except Exception:  # noqa: BLE001 - the provider died under the stream
                if not expect_death:
                    raise
            return job.job_id, events

    def dry_run(self) -> dict[str, int]:
        log = self.rig.layout.root / "count-training.log"
        log.unlink(missing_ok=True)
        self.rig.start()
        self._ensure_expert()
        self.rig.stop()
        shutil.rmtree(self.rig.connectors, ignore_errors=True)
        self.rig.start(count_log=log)
        try:
            self._train(expect_death=False)
        finally:
            self.rig.stop()
        self.hits = {p: n for p, n in crashpoints.counts(log).items() if p in self.points}
        return self.hits

    def trial_once(self, rng: random.Random, wait_for_success: bool = False) -> TrialResult:
        from protocol.wire import JOB_STATE_NAMES

        self.trial += 1
        t0 = time.perf_counter()
        shutil.rmtree(self.rig.connectors, ignore_errors=True)   # the operator dropped them: the job must train
        n = rng.randint(1, self.hits["job.progress"])
        armed = f"job.progress@{n}"
        self.rig.start(armed)
        job_id, _ = self._train(expect_death=True)
        injected = self.rig.died_by_kill()
        self.rig.start()
        problems: list[str] = []
        try:
            problems, lost = provider_invariants(self.rig)
            with self.rig.client() as pc:
                last = list(pc.watch_job(job_id, timeout_s=60))[-1]
                if JOB_STATE_NAMES[last.state] != "FAILED" or "stopped while this job was" not in last.result.error:
                    problems.append(f"the cut-off job {job_id} reads {JOB_STATE_NAMES[last.state]} {last.result.error!r}, not FAILED with its reason")
            problems += _connector_store_problems(self.rig.connectors)
            with self.rig.client() as pc:                   # Customize again: a new job, which trains to the end when asked to
                job = pc.customize(self.digest)
                if job.job_id == job_id:
                    problems.append("Customize after the restart returned the dead job")
                if wait_for_success:
                    end = list(pc.watch_job(job.job_id, timeout_s=1800))[-1]
                    if JOB_STATE_NAMES[end.state] != "SUCCEEDED":
                        problems.append(f"the new job ended {JOB_STATE_NAMES[end.state]}: {end.result.error}")
                    problems += _connector_store_problems(self.rig.connectors, must_exist=True)
        except Exception as e:  # noqa: BLE001 - a finding
            problems.append(f"after the restart: {type(e).__name__}: {e}")
            lost = 0
        finally:
            self.rig.stop()
        return TrialResult(self.name, armed, injected, injected and not problems, problems, lost, time.perf_counter() - t0)


def _connector_store_problems(root: Path, must_exist: bool = False) -> list[str]:
    """A connector set is complete (its meta reads) or absent; a `.tmp` folder is never read and is replaced by the next save."""
    from provider_party.model.connectors import read_connector_meta

    sets = [p for p in root.glob("*/*") if p.is_dir() and not p.name.endswith(".tmp")] if root.is_dir() else []
    problems = []
    for s in sets:
        try:
            read_connector_meta(s)
        except Exception as e:  # noqa: BLE001 - a finding
            problems.append(f"connector set {s} is half written: {e}")
    if must_exist and not sets:
        problems.append("no connector set after the job succeeded")
    return problems


# --- client scenarios ------------------------------------------------------------------------------------------

class ClientScenario:
    """Kills the client service mid-training or mid-upload (a TrainExpert with upload from the orchestrator)."""

    def __init__(self, root: Path, name: str, points: tuple[str, ...]):
        self.prig = ProviderRig(root / "provider-side")
        self.name, self.points = name, points
        lay = self.prig.layout
        self.addr = f"127.0.0.1:{free_port()}"
        self.config = write_client_config(lay.client / "client.toml", client_id="alice", listen=self.addr, provider_address=self.prig.addr,
                                          max_epsilon=1.0, datasets=["titanic"])
        self.config.write_text(self.config.read_text().replace("[client]\n", f"[client]\nchunk_bytes = {UPLOAD_CHUNK}\n", 1))
        self.log = lay.client / "client.log"
        self.proc: subprocess.Popen | None = None
        self.charged = 0          # uploads the provider should have charged alice so far
        self.hits: dict[str, int] = {}
        self.trial = 0

    def start(self, point: str | None = None, count_log: Path | None = None) -> None:
        env = crashpoints.environment(point, str(count_log) if count_log else None) if (point or count_log) else {}
        self.proc = spawn(["--log-level", "info", "client", "serve", "--config", str(self.config)], self.log, threads=1, extra_env=env)
        wait_healthy(self.addr, self.prig.tls["orchestrator"], "llamdex.v1.ClientService", [("client", self.proc, self.log)], timeout_s=120)

    def stop(self) -> None:
        _terminate(self.proc)

    def orchestrator(self) -> tuple[Any, Any]:
        from protocol.rpc.llamdex.v1 import client_pb2_grpc
        from protocol.tls import open_channel

        ch = open_channel(self.addr, self.prig.tls["orchestrator"])
        return ch, client_pb2_grpc.ClientServiceStub(ch)

    def train(self, expect_death: bool) -> Any:
        from protocol.rpc.llamdex.v1 import client_pb2

        ch, orch = self.orchestrator()
        try:
            return orch.TrainExpert(client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=1.0, epochs=CLIENT_TRAIN_EPOCHS,
                                                                  seed=self.trial, upload=True), timeout=900)
        except Exception:  # noqa: BLE001 - the client died under the call
            if not expect_death:
                raise
            return None
        finally:
            ch.close()

    def dry_run(self) -> dict[str, int]:
        log = self.prig.layout.root / f"count-{self.name.split(':')[-1].strip()}.log"
        log.unlink(missing_ok=True)
        self.prig.start()
        self.start(count_log=log)
        try:
            self.train(expect_death=False)
            self.charged += 1
        finally:
            self.stop()
        self.hits = {p: n for p, n in crashpoints.counts(log).items() if p in self.points}
        return self.hits

    def trial_once(self, rng: random.Random) -> TrialResult:
        self.trial += 1
        t0 = time.perf_counter()
        candidates = [p for p in self.points if self.hits.get(p)]
        point = rng.choice(candidates)
        n = rng.randint(1, self.hits[point])
        armed = f"{point}@{n}"
        if self.prig.proc is None or self.prig.proc.poll() is not None:
            self.prig.start()
        self.start(armed)
        self.train(expect_death=True)
        injected = self.proc.wait(120) == -signal.SIGKILL if self.proc else False
        problems: list[str] = []
        try:
            self.start()                                   # restart: pending uploads are resumed in the background
            mid_upload = point == "client.upload_chunk"
            if mid_upload:
                self._wait_receipts(self.charged + 1)
            else:
                problems += self._workspace_problems()
                self.train(expect_death=False)             # the orchestrator retries the training
            self.charged += 1
            problems += self._workspace_problems() + self._chain_problems()
        except Exception as e:  # noqa: BLE001 - a finding
            problems.append(f"after the restart: {type(e).__name__}: {e}")
        finally:
            self.stop()
        return TrialResult(self.name, armed, injected, injected and not problems, problems, 0, time.perf_counter() - t0)

    def _wait_receipts(self, n: int, timeout_s: float = 120) -> None:
        from protocol.rpc.llamdex.v1 import client_pb2

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ch, orch = self.orchestrator()
            try:
                if len(orch.ListReceipts(client_pb2.ListReceiptsRequest(), timeout=30).receipts) >= n:
                    return
            finally:
                ch.close()
            time.sleep(1.0)
        raise TimeoutError(f"the client did not resume its cut-off upload within {timeout_s:.0f} s (expected {n} receipts)")

    def _workspace_problems(self) -> list[str]:
        from protocol.artifact import ArtifactVerifier

        arts = self.prig.layout.client / "workspace" / "artifacts"
        problems = [f"half artifact left: {p}" for p in arts.glob(".partial-*")] if arts.is_dir() else []
        for folder in sorted(arts.iterdir()) if arts.is_dir() else []:
            if folder.name.startswith(".partial-"):
                continue
            try:
                ArtifactVerifier([self.prig.alice_key.public_key()]).verify(folder)
            except Exception as e:  # noqa: BLE001 - a finding
                problems.append(f"artifact {folder.name} in the workspace does not verify: {e}")
        return problems

    def _chain_problems(self) -> list[str]:
        from protocol.receipts import verify_chain
        from protocol.rpc.llamdex.v1 import client_pb2
        from protocol.wire import receipt_envelope

        ch, orch = self.orchestrator()
        try:
            held = [receipt_envelope(r) for r in orch.ListReceipts(client_pb2.ListReceiptsRequest(), timeout=30).receipts]
        finally:
            ch.close()
        problems: list[str] = []
        chain = verify_chain(held, self.prig.provider_pub)
        with self.prig.client() as pc:
            ledger = pc.ledger_receipts()
        uploads = [r for r in chain if r.kind == "upload"]
        if len(uploads) != self.charged:
            problems.append(f"the client holds {len(uploads)} upload receipts; {self.charged} uploads were made (double spending or a loss)")
        if [json.dumps(e, sort_keys=True) for e in held] != [json.dumps(e, sort_keys=True) for e in ledger]:
            problems.append(f"the client's receipts ({len(held)}) differ from the provider's ledger ({len(ledger)})")
        digests = [r.artifact_digest for r in uploads]
        if len(set(digests)) != len(digests):
            problems.append("an artifact was charged twice")
        problems += provider_invariants(self.prig)[0]
        return problems

    def close(self) -> None:
        self.stop()
        self.prig.stop()


# --- disk full --------------------------------------------------------------------------------------------------

def disk_full_trial(root: Path, room: float = 0.5, size_kb: int = 1536) -> TrialResult:
    """The provider's state on a small tmpfs with room for `room` × the artifact: an upload that does not fit (room 0.5:
    during the stream; room 1.1: the bytes fit, their verification does not) is refused with DISK_FULL, no half artifact
    appears, nothing is charged; once space is freed the same upload id resumes and is charged once."""
    name = f"room for {room:g}× the artifact"
    import grpc

    from protocol.rpc_errors import error_code

    t0 = time.perf_counter()
    mnt = Path(root) / "tmpfs"
    mnt.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return TrialResult("provider: disk full", f"{name}: skipped, not root (a tmpfs needs mount)", False, False, ["skipped"])
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return TrialResult("provider: disk full", f"{name}: skipped, mount failed ({r.stderr.strip()})", False, False, ["skipped"])
    rig = ProviderRig(Path(root) / f"rig-{room:g}", state=mnt / "state")
    problems: list[str] = []
    try:
        rig.start()
        tar = artifact_tar(rig.layout.root / "big", rig.alice_key, seed=99)      # ~350 kB; verifying it needs as much again
        filler = mnt / "filler"
        free = shutil.disk_usage(mnt).free
        filler.write_bytes(b"\0" * max(0, free - int(room * len(tar))))
        upload_id = secrets.token_urlsafe(24)
        with rig.client() as pc:
            try:
                pc.upload(tar, "titanic", upload_id=upload_id, chunk_bytes=UPLOAD_CHUNK, max_attempts=1)
                problems.append("the upload succeeded on a full disk")
            except grpc.RpcError as e:
                if (e.code(), error_code(e)) != (grpc.StatusCode.RESOURCE_EXHAUSTED, "DISK_FULL") or "disk is full" not in (e.details() or ""):
                    problems.append(f"a full disk answered {e.code().name} {error_code(e)}: {e.details()}")
            part = Path(rig.state) / "uploads" / "parts" / "alice" / f"{upload_id}.part"
            stored = part.stat().st_size if part.exists() else 0
            if (stored % UPLOAD_CHUNK and stored != len(tar)) or tar[:stored] != (part.read_bytes() if part.exists() else b""):
                problems.append(f"the part file holds {stored} bytes, not whole verified chunks")
            live = [p for p in (Path(rig.state) / "experts").rglob("*") if p.is_file()]
            if live:
                problems.append(f"files of a half artifact on the full disk: {live[:3]}")
            filler.unlink()                                                      # the operator frees space
            status = pc.upload_status(upload_id)
            if (status.state, status.received_bytes) != ("receiving", stored):
                problems.append(f"after freeing space the upload reads {status.state} with {status.received_bytes} bytes, not receiving {stored}")
            res = pc.upload(tar, "titanic", upload_id=upload_id, chunk_bytes=UPLOAD_CHUNK)
            if res.receipt.sequence != 1:
                problems.append(f"the resumed upload got receipt sequence {res.receipt.sequence}")
        rig.stop()
        rig.start()
        problems += provider_invariants(rig)[0]
    except Exception as e:  # noqa: BLE001 - a finding
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        rig.stop()
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    return TrialResult("provider: disk full", f"{name} (tmpfs {size_kb} kB)", True, not problems, problems, 0, time.perf_counter() - t0)


# --- the campaign ----------------------------------------------------------------------------------------------

SCENARIOS = ("provider: upload", "provider: ledger write", "provider: receipt signing", "provider: connector training",
             "client: training", "client: upload", "provider: disk full")


def run_scenario(name: str, root: Path, trials: int, rng: random.Random, on_trial: Callable[[TrialResult], None] | None = None) -> list[TrialResult]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if name == "provider: disk full":
        out = []
        for room in (0.5, 1.1):
            out.append(disk_full_trial(root / "diskfull", room))
            if on_trial:
                on_trial(out[-1])
        return out
    if name.startswith("client"):
        sc: Any = ClientScenario(root / name.replace(": ", "-"), name,
                                 ("client.train_epoch", "client.artifact_written") if name == "client: training" else ("client.upload_chunk",))
    elif name == "provider: connector training":
        sc = TrainingScenario(ProviderRig(root / "training"))
    else:
        points = {"provider: upload": ("upload.chunk_written",), "provider: ledger write": LEDGER_POINTS,
                  "provider: receipt signing": SIGNING_POINTS}[name]
        sc = ProviderScenario(ProviderRig(root / name.replace(": ", "-").replace(" ", "-")), name, points)
    results = []
    try:
        hits = sc.dry_run()
        if not hits:
            raise RuntimeError(f"{name}: the dry run reached none of the points {sc.points}")
        for i in range(trials):
            r = sc.trial_once(rng, wait_for_success=(i == trials - 1)) if isinstance(sc, TrainingScenario) else sc.trial_once(rng)
            results.append(r)
            if on_trial:
                on_trial(r)
    finally:
        if isinstance(sc, ClientScenario):
            sc.close()
    return results


def summarize(results: dict[str, list[TrialResult]]) -> dict[str, Any]:
    out = {}
    for name, rs in results.items():
        out[name] = {"injected": sum(r.injected for r in rs), "survived": sum(r.survived for r in rs), "lost": sum(r.lost for r in rs),
                     "trials": [asdict(r) for r in rs]}
    return out


def _earlier_scenarios(results_dir: Path | None) -> dict[str, Any]:
    """Scenarios recorded by earlier runs (a campaign may be run one scenario at a time); this run's replace theirs."""
    from simulations.benchmarks.reliability_report import NAME
    from simulations.benchmarks.results_md import RESULTS_DIR

    path = Path(results_dir or RESULTS_DIR) / NAME
    try:
        return dict(json.loads(path.read_text()).get("faults", {}).get("scenarios", {}))
    except (OSError, ValueError):
        return {}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.fault_campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="kill points per scenario (default 20)")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="only these scenarios (repeatable)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points drawn in each scenario (default 0)")
    add_out_arg(ap, default=None, help="folder of reliability.json and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, states)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    a = parser().parse_args(argv)
    from simulations.benchmarks.reliability_report import merge_and_render

    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="llamdex-faults-"))
    names = a.scenario or list(SCENARIOS)
    results: dict[str, list[TrialResult]] = {}
    total = sum(2 if n == "provider: disk full" else a.trials for n in names)
    with tqdm(total=total, desc="kill points", unit="kill") as bar:
        def tick(r: TrialResult) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{r.scenario} {r.point}: {'survived' if r.survived else 'FAILED'}", refresh=True)
            if not r.survived:
                tqdm.write(f"{r.scenario} at {r.point}: {r.problems}")
        for name in names:
            results[name] = run_scenario(name, root / "runs", a.trials, rng, tick)
    summary = summarize(results)
    command = command_line("python -m simulations.benchmarks.fault_campaign", argv)
    for v in summary.values():
        v["command"], v["seconds"] = command, round(sum(t["seconds"] for t in v["trials"]), 1)
    merge_and_render("faults", {"trials_per_scenario": a.trials, "seed": a.seed,
                                "command": "python -m simulations.benchmarks.fault_campaign --trials 20 [--scenario NAME ...]",
                                "scenarios": {**_earlier_scenarios(a.out), **summary}}, a.out)
    print(json.dumps({k: {x: v[x] for x in ("injected", "survived", "lost")} for k, v in summary.items()}, indent=1))
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(v["survived"] == v["injected"] and v["lost"] == 0 for v in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
