"""Multi-tenant serving: one base LLM for 1..200 resident clients, against one model copy per client.

Run (CPU, the embedded SmolLM2 and the quick connectors of three schemas; ~15 min on 2 busy cores):

    flock /tmp/llamdex-heavy.lock python -m simulations.benchmarks.multi_tenant --threads 2

and where a GPU exists, without any download: `... --device cuda --random-init-model 1B`.

Everything is measured side by side in one run. The provider is the real `ProviderParty`: every
client has its own signing key, and its expert (trained without DP on synthetic rows of its schema:
what grows here is the number of tenants) is uploaded in-process through the provider's verification,
ε recomputation, ledger and signed receipt, then loaded by the provider as it would be for an Ask.
At each resident-client count N (`--clients`):

1. memory: the provider's RSS with N clients' experts resident, and the bytes each extra client adds;
2. throughput of mixed batches (B rows from min(B, N) clients over every schema, one pass) against
   single-client batches of the same size (B rows of one client, whose schema cycles over the
   repetitions so both see the same mix of questions), calls alternated;
3. the naive design, one model copy per client: its throughput (each client's rows of the same
   mixed batch on that client's own copy; `--naive-copies` real copies are built and cycled: a copy
   computes exactly what any other would) and its resident memory (measured for the copies built,
   extrapolated beyond them from the measured bytes per copy, and marked so);
4. concurrent Ask callers through `ProviderParty.ask` (`--callers` threads of distinct clients):
   batched (`MixedBatcher`) against one pass per call (the same batcher with one request per pass).

Results merge into docs/results/simulation.json (keys `multi_tenant`, `multi_tenant_run`; other keys
are kept), the `multi_tenant` section of docs/RESULTS.md, and docs/results/multi_tenant.png.
With `--random-init-model` the base LLM and the connectors have random weights: a benchmarking-only
setting whose answers mean nothing (throughput and memory do not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import hashlib
import json
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from simulations.benchmarks.results_md import RESULTS_DIR, command_line, environment, results_md_path, update_section
from simulations.cli.common import add_data_args, add_out_arg, add_threads_arg, set_threads, table_refs

SIMULATION_JSON = "simulation.json"


# --- memory ------------------------------------------------------------------------------------------------

def _trim() -> None:
    """Collects garbage and returns freed heap pages to the OS, so RSS shows what is still held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    import psutil

    _trim()
    return int(psutil.Process().memory_info().rss)


def device_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.memory_allocated(device))


def parameter_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the provider with its resident clients ------------------------------------------------------------------

@dataclass
class Tenant:
    client: Any                       # RegisteredClient
    schema: Any                       # PublicSchema
    expert: Any = None                # the provider's verified, loaded expert (once resident)


@dataclass
class Setup:
    party: Any
    models: dict[str, Any]            # schema digest -> LlamdexModel (the party's own)
    tenants: list[Tenant]
    questions: dict[str, list[str]]   # schema digest -> questions
    notes: list[str] = field(default_factory=list)


def _random_connectors(base: Any, schema: Any, seed: int) -> Any:
    """BENCHMARKING ONLY: connectors with random weights for a random-init base (training them would teach nothing)."""
    from protocol.seeding import generator, init_parameters
    from provider_party.model.connector_training import TrainedConnectors
    from provider_party.model.connectors import ConnectorConfig, build_connectors

    # the quick preset's depths on SmolLM2 (encoder at 12, slots at 24 of 30 layers), scaled to this model's depth
    layers = base.num_layers
    config = ConnectorConfig(base_model_id=base.model_id, schema_digest=schema.digest, hidden_size=base.hidden_size, num_layers=layers,
                             encoder_layer=max(1, round(0.4 * layers)), inject_layer=min(layers - 1, max(1, round(0.8 * layers))))
    encoder, decoder = build_connectors(config, schema)
    init_parameters(encoder, generator(seed))
    init_parameters(decoder, generator(seed + 1))
    config.metrics = {"preset": "random (benchmarking only)"}
    return TrainedConnectors(config, encoder, decoder, surrogate=None, metrics=config.metrics)


def _expert_artifact(folder: Path, key: Any, schema: Any, seed: int) -> bytes:
    """A client's expert, trained without DP on synthetic rows of its schema, signed and packed as uploaded."""
    from client_party.expert_training import TrainConfig, train_expert
    from protocol.artifact import pack_artifact, write_artifact
    from protocol.encoding import FeatureEncoder
    from provider_party.model.synthesis import synthesize

    rows, labels = synthesize(schema, n=400, seed=seed)
    trained = train_expert(FeatureEncoder(schema).encode_frame(rows), labels, schema, TrainConfig(epochs=3, seed=seed))
    return pack_artifact(write_artifact(folder, trained.model, schema, trained.dp, key))


def _upload(party: Any, client: Any, dataset_id: str, tar: bytes, upload_id: str) -> None:
    """The UploadExpert path without the wire: the bytes, then the provider's own finalize (verify, ε, ledger, receipt)."""
    header = SimpleNamespace(upload_id=upload_id, dataset_id=dataset_id, artifact_name="expert", total_bytes=len(tar),
                             artifact_sha256=hashlib.sha256(tar).hexdigest(), resume_offset=0)
    party.uploads.validate_header(header)
    session = party.uploads.open(client, header)
    try:
        session.write(0, tar, hashlib.sha256(tar).hexdigest(), max(len(tar), 1))
        session.close()
        party.finalize_upload(session.record, client)
    finally:
        party.uploads.end_stream(client.client_id)


def build_setup(root: Path, tables: list[Any], n_clients: int, *, base_model: str, device: str, connectors: Path | None, preset: str,
                questions_per_schema: int, seed: int) -> Setup:
    from protocol.keys import generate_keypair
    from protocol.verbalizer import Verbalizer
    from provider_party.model.connector_store import ConnectorStore
    from provider_party.service.config import ProviderConfig, ProviderLimits, RegisteredClient
    from provider_party.service.core import ProviderParty
    from provider_party.model.synthesis import synthesize

    schemas = [t.schema() for t in tables]
    random_init = base_model.startswith("random-init:")
    keys, regs, tenants = {}, [], []
    generate_keypair(root / "keys", "provider")
    for i in tqdm(range(n_clients), desc="client keys", leave=False):
        cid = f"client{i:03d}"
        keys[cid] = generate_keypair(root / "keys", cid)[2]
        regs.append(RegisteredClient(cid, keys[cid].public_key(), epsilon_budget=math.inf))
    limits = ProviderLimits(max_resident_experts=max(256, n_clients))
    store_root = (root / "connectors") if random_init else ConnectorStore(connectors).root
    cfg = ProviderConfig(provider_id="provider", key=root / "keys" / "provider.key", state=root / "provider-state", connectors=store_root,
                         base_model=base_model, device=device, preload=False, clients=tuple(regs), limits=limits)
    party = ProviderParty(cfg)
    base = party.ensure_base()
    store = party.connectors
    notes = []
    for i, schema in enumerate(schemas):
        if not store.has(base, schema):
            if random_init:
                store.save(base, schema, _random_connectors(base, schema, seed + 100 * i))
            else:
                notes.append(f"connectors for {schema.name} were trained in this run (preset {preset})")
                store.get_or_train(base, schema, preset, seed=seed)
    models = {s.digest: party.model_for(s) for s in schemas}
    for i in tqdm(range(n_clients), desc="experts: train, sign, upload", leave=False):
        cid, schema = regs[i].client_id, schemas[i % len(schemas)]
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            tar = _expert_artifact(Path(tmp) / "artifact", keys[cid], schema, seed=seed + 1000 + i)
        _upload(party, regs[i], tables[i % len(tables)].id, tar, f"bench-upload-{i:06d}")
        tenants.append(Tenant(regs[i], schema))
    questions = {}
    for i, schema in enumerate(schemas):
        rows, _ = synthesize(schema, n=max(200, questions_per_schema), seed=seed + 7 + i)
        questions[schema.digest] = Verbalizer(schema, seed=seed + i).questions(rows.to_dict("records")[:questions_per_schema])
    return Setup(party, models, tenants, questions, notes)


def make_resident(setup: Setup, upto: int) -> None:
    """Loads (verifies again, then reads the tensors of) the experts of the first `upto` clients, as Ask would."""
    for t in setup.tenants[:upto]:
        if t.expert is None:
            t.expert, _ = setup.party.expert_for(t.client, setup.party.live_expert(t.client))


# --- throughput ---------------------------------------------------------------------------------------------

def _rows(setup: Setup, tenants: list[Tenant], rng: np.random.Generator, models: dict[str, Any] | None = None) -> list[Any]:
    from provider_party.model.llamdex_model import TenantQuery

    models = models or setup.models
    out = []
    for t in tenants:
        pool = setup.questions[t.schema.digest]
        out.append(TenantQuery(pool[int(rng.integers(len(pool)))], models[t.schema.digest], t.expert))
    return out


@dataclass
class NaiveCopies:
    """The naive design: each client gets its own copy of the base LLM (with its schema's connectors)."""

    models: list[dict[str, Any]]                          # per copy: schema digest -> LlamdexModel on that copy
    rss: list[tuple[int, int]]                            # (copies, RSS bytes) as they were built
    device_bytes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def per_copy_bytes(self) -> float:
        (k0, r0), (k1, r1) = self.rss[0], self.rss[-1]
        return (r1 - r0) / max(k1 - k0, 1)

    @property
    def per_copy_device_bytes(self) -> float:
        (k0, r0), (k1, r1) = self.device_bytes[0], self.device_bytes[-1]
        return (r1 - r0) / max(k1 - k0, 1)


def build_naive_copies(setup: Setup, copies: int, device: torch.device) -> NaiveCopies:
    from provider_party.model.base_llm import BaseLLM
    from provider_party.model.llamdex_model import LlamdexModel

    base = setup.party.ensure_base()
    out = NaiveCopies([], [(0, rss_bytes())], [(0, device_bytes(device) or 0)])
    for k in tqdm(range(1, copies + 1), desc="one model copy per client", leave=False):
        own = BaseLLM(copy.deepcopy(base.model), base.tokenizer, base.model_id)
        out.models.append({d: LlamdexModel(own, m.schema, m.config, copy.deepcopy(m.encoder), copy.deepcopy(m.decoder))
                           for d, m in setup.models.items()})
        out.rss.append((k, rss_bytes()))
        out.device_bytes.append((k, device_bytes(device) or 0))
    return out


def measure_throughput(setup: Setup, n: int, batch_size: int, reps: int, naive: NaiveCopies | None, device: torch.device,
                       seed: int) -> dict[str, Any]:
    """Mixed vs single-client batches of the same size (and the naive per-client copies), calls alternated."""
    from provider_party.model.llamdex_model import answer_mixed, default_split_cost, length_buckets

    rng = np.random.default_rng(seed + n)
    split_cost = default_split_cost(device)
    tenants = setup.tenants[:n]
    digests = list(setup.models)
    first_of_schema = {d: next((t for t in tenants if t.schema.digest == d), None) for d in digests}
    single_owners = [t for t in first_of_schema.values() if t is not None]
    times = {"mixed": [], "single": [], "naive": [], "mixed_padded": []}
    widths = {"mixed": [], "single": []}
    sub_batches = {"mixed": [], "single": []}
    mixed_clients, mixed_schemas = [], []

    def run(name, rows, fn):
        _sync(device)
        t = time.perf_counter()
        fn(rows)
        _sync(device)
        times[name].append(time.perf_counter() - t)

    def naive_pass(rows):
        by_client: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_client.setdefault(id(r.expert), []).append(i)
        for c, (key, idx) in enumerate(by_client.items()):
            models = naive.models[c % len(naive.models)]
            answer_mixed([type(rows[i])(rows[i].question, models[rows[i].model.schema.digest], rows[i].expert) for i in idx])

    for r in range(reps + 1):                              # repetition 0 warms every path up and is not counted
        start = (r * batch_size) % n
        chosen = [tenants[(start + j) % n] for j in range(batch_size)]
        mixed = _rows(setup, chosen, rng)
        owner = single_owners[r % len(single_owners)]
        single = _rows(setup, [owner] * batch_size, rng)
        calls = [("mixed", mixed, answer_mixed), ("single", single, answer_mixed),
                 ("mixed_padded", mixed, lambda rows: answer_mixed(rows, split_cost=math.inf))]
        if naive is not None:
            calls.append(("naive", mixed, naive_pass))
        for name, rows, fn in (calls[r % len(calls):] + calls[:r % len(calls)]):
            run(name, rows, fn)
        if r == 0:
            for v in times.values():
                v.clear()
            continue
        for name, rows in (("mixed", mixed), ("single", single)):
            lengths = [len(q.model.prompts.row(q.question, q.model.config.num_tokens).ids) for q in rows]
            widths[name].append(max(lengths))
            sub_batches[name].append(len(length_buckets(lengths, split_cost)))
        mixed_clients.append(len({id(q.expert) for q in mixed}))
        mixed_schemas.append(len({q.model.schema.digest for q in mixed}))
    rows_total = batch_size * reps
    qps = {k: (rows_total / sum(v) if v else None) for k, v in times.items()}
    return {"mixed_questions_per_s": qps["mixed"], "single_questions_per_s": qps["single"],
            "one_copy_per_client_questions_per_s": qps["naive"], "mixed_over_single": qps["mixed"] / qps["single"],
            "one_copy_per_client_over_shared": (qps["naive"] / qps["mixed"]) if qps["naive"] else None,
            "mixed_one_padded_pass_questions_per_s": qps["mixed_padded"], "one_padded_pass_over_single": qps["mixed_padded"] / qps["single"],
            "split_cost_tokens": split_cost, "mean_sub_batches_mixed": float(np.mean(sub_batches["mixed"])),
            "mean_sub_batches_single": float(np.mean(sub_batches["single"])),
            "clients_in_mixed_batch": float(np.mean(mixed_clients)), "schemas_in_mixed_batch": float(np.mean(mixed_schemas)),
            "mean_width_mixed": float(np.mean(widths["mixed"])), "mean_width_single": float(np.mean(widths["single"])),
            "median_mixed_s": float(np.median(times["mixed"])), "median_single_s": float(np.median(times["single"])), "reps": reps}


# --- concurrent Ask callers ----------------------------------------------------------------------------------

def measure_asks(setup: Setup, callers: int, asks_per_caller: int, questions_per_ask: int, seed: int) -> dict[str, Any]:
    """Concurrent `ProviderParty.ask` of distinct clients: batched against one pass per call (same batcher, one request per pass)."""
    from provider_party.model.batching import BatchingLimits, MixedBatcher

    party = setup.party
    default = party.config.limits.batching()
    modes = {"batched": default, "one_pass_per_call": BatchingLimits(max_wait_ms=0, max_batch_rows=1, max_queued_rows=default.max_queued_rows,
                                                                     deadline_s=default.deadline_s)}
    tenants = [setup.tenants[i % len(setup.tenants)] for i in range(callers)]
    out: dict[str, Any] = {"callers": callers, "asks_per_caller": asks_per_caller, "questions_per_ask": questions_per_ask}
    order = list(modes) if seed % 2 == 0 else list(modes)[::-1]
    for mode in order + order[:1]:                        # the first mode runs again last: a drift check, the later run counts
        original = party.batcher
        party.batcher = MixedBatcher(modes[mode], name=f"bench-{mode}")
        rng = np.random.default_rng(seed)
        latencies: list[float] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def caller(t: Tenant) -> None:
            pool = setup.questions[t.schema.digest]
            for _ in range(asks_per_caller):
                with lock:
                    qs = [pool[int(rng.integers(len(pool)))] for _ in range(questions_per_ask)]
                start = time.perf_counter()
                try:
                    party.ask(t.client, qs)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors.append(e)
                latencies.append(time.perf_counter() - start)

        threads = [threading.Thread(target=caller, args=(t,)) for t in tenants]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        stats = party.batcher.stats()
        party.batcher.close()
        party.batcher = original
        out[mode] = {"questions_per_s": callers * asks_per_caller * questions_per_ask / wall, "wall_s": wall,
                     "p50_ask_s": float(np.median(latencies)), "p95_ask_s": float(np.percentile(latencies, 95)),
                     "passes": stats.passes, "mean_rows_per_pass": stats.rows / max(stats.passes, 1), "errors": len(errors)}
    out["batched_over_one_pass_per_call"] = out["batched"]["questions_per_s"] / out["one_pass_per_call"]["questions_per_s"]
    return out


# --- output ------------------------------------------------------------------------------------------------

def merge_json(path: Path, updates: dict[str, Any]) -> None:
    """Sets `updates`' keys in the JSON file and keeps every other key (other benchmarks write `runs`, `federated`)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "llamdex-simulation-json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(updates)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)


def _mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:,.0f}"


def markdown(rows: list[dict], run: dict) -> str:
    env, gpu = run["environment"], run["device"].startswith("cuda")
    lines = ["## Multi-tenant serving (issue: many clients, one base LLM)", "",
             f"Command: `{run['command']}` ({env['cpu_count']} CPU cores, torch threads {env['torch_threads']}, device {run['device']}, "
             f"base {run['base_model_id']}, {run['base_parameters'] / 1e6:.0f} M parameters; schemas {', '.join(run['schemas'])}; {env['date']}). "
             "Every client is a real signed upload through the provider's verification, ε check and ledger; its expert is loaded by "
             "the provider. Throughputs are measured side by side, calls alternated.", "",
             "| resident clients | batch | mixed q/s | single-client q/s | mixed / single | mixed as one padded pass / single | "
             "one copy per client q/s | RSS shared (MiB) | RSS one copy per client (MiB) |" + (" GPU memory shared / one copy per client (MiB) |" if gpu else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in rows:
        naive = "–" if r["one_copy_per_client_questions_per_s"] is None else f"{r['one_copy_per_client_questions_per_s']:.2f}"
        mark = "" if r["one_copy_per_client_rss_measured"] else " (extrapolated)"
        dev = f" {_mib(r['device_bytes'])} / {_mib(r['one_copy_per_client_device_bytes'])}{mark} |" if gpu else ""
        lines.append(f"| {r['resident_clients']} | {r['batch_size']} | {r['mixed_questions_per_s']:.2f} | {r['single_questions_per_s']:.2f} | "
                     f"**{r['mixed_over_single']:.2f}** | {r['one_padded_pass_over_single']:.2f} | {naive} | {_mib(r['rss_bytes'])} | {_mib(r['one_copy_per_client_rss_bytes'])}{mark} |{dev}")
    lines += ["", f"Memory: the shared design adds **{run['bytes_per_extra_client'] / 1024:,.0f} KiB per extra client** (RSS slope from "
              f"{run['memory_points'][0]['resident_clients']} to {run['memory_points'][-1]['resident_clients']} resident clients; "
              f"an expert's tensors are {run['expert_parameter_bytes'] / 1024:,.0f} KiB); one model copy per client adds "
              f"**{run['one_copy_per_client_bytes_per_copy'] / 2**20:,.0f} MiB per client** (measured with "
              f"{run['naive_copies_measured'][-1]['copies']} copies; the base LLM's parameters are {run['base_parameter_bytes'] / 2**20:,.0f} MiB)."]
    if gpu:
        lines += ["", f"GPU memory: **{run['device_bytes_per_extra_client'] / 1024:,.0f} KiB per extra client** shared, "
                  f"**{run['one_copy_per_client_device_bytes_per_copy'] / 2**20:,.0f} MiB per client** with one copy each."]
    if run.get("asks"):
        lines += ["", "Concurrent `Ask` callers through `ProviderParty.ask` (distinct clients, all schemas):", "",
                  "| callers | questions per Ask | batched q/s | one pass per call q/s | batched / per call | batched rows per pass | "
                  "p50 Ask batched / per call (s) |", "|---|---|---|---|---|---|---|"]
        for a in run["asks"]:
            b, s = a["batched"], a["one_pass_per_call"]
            lines.append(f"| {a['callers']} | {a['questions_per_ask']} | {b['questions_per_s']:.2f} | {s['questions_per_s']:.2f} | "
                         f"**{a['batched_over_one_pass_per_call']:.2f}** | {b['mean_rows_per_pass']:.1f} | {b['p50_ask_s']:.2f} / {s['p50_ask_s']:.2f} |")
    for note in run.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


def plot(rows: list[dict], run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["resident_clients"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(n, [r["mixed_questions_per_s"] for r in rows], "o-", label="shared base, mixed batches")
    a.plot(n, [r["single_questions_per_s"] for r in rows], "s--", label="shared base, single-client batches")
    if all(r["one_copy_per_client_questions_per_s"] for r in rows):
        a.plot(n, [r["one_copy_per_client_questions_per_s"] for r in rows], "^:", label="one model copy per client")
    a.set(xscale="log", xlabel="resident clients", ylabel="questions / s", title=f"throughput (batch {rows[0]['batch_size']}, {run['device']})")
    a.set_ylim(bottom=0)
    a.legend(fontsize=8)
    gpu = run["device"].startswith("cuda")
    shared_key, naive_key = ("device_bytes", "one_copy_per_client_device_bytes") if gpu else ("rss_bytes", "one_copy_per_client_rss_bytes")
    b.plot(n, [r[shared_key] / 2**30 for r in rows], "o-", label="shared base (measured)")
    measured = [(r["resident_clients"], r[naive_key] / 2**30) for r in rows if r["one_copy_per_client_rss_measured"]]
    b.plot(n, [r[naive_key] / 2**30 for r in rows], "^:", label="one copy per client (extrapolated)")
    if measured:
        b.plot(*zip(*measured), "^", color="C2", label="one copy per client (measured)")
    b.set(xscale="log", yscale="log", xlabel="resident clients", ylabel="GiB", title="provider memory (" + ("GPU" if gpu else "RSS") + ")")
    b.legend(fontsize=8)
    fig.suptitle(f"Multi-tenant serving: {run['base_model_id']}, schemas {', '.join(run['schemas'])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be at least 1")
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.multi_tenant", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(ap, multiple=True, default="titanic,default,credit")
    ap.add_argument("--clients", type=_ints, default=[1, 10, 50, 200], help="resident-client counts (default: 1,10,50,200)")
    ap.add_argument("--batch-size", type=_ints, default=[16], help="rows per batch; several allowed, e.g. 16,32 (default: 16)")
    ap.add_argument("--reps", type=int, default=6, help="timed repetitions per count and batch size (default: 6)")
    ap.add_argument("--naive-copies", type=int, default=4, help="model copies actually built for the one-copy-per-client design (default: 4)")
    ap.add_argument("--callers", type=_ints, default=[16, 64], help="concurrent Ask threads (default: 16,64); --callers 0 is refused, use --no-asks")
    ap.add_argument("--no-asks", action="store_true", help="skip the concurrent-Ask measurement")
    ap.add_argument("--asks-per-caller", type=int, default=2, help="Ask calls each concurrent caller makes (default 2)")
    ap.add_argument("--questions-per-ask", type=int, default=2, help="questions in each of those Ask calls (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--random-init-model", default=None, metavar="SIZE",
                    help="BENCHMARKING ONLY: a random-weight Llama-architecture base of this size (1B, 360M, 135M, tiny) instead of the "
                         "embedded SmolLM2; connectors get random weights too, answers mean nothing")
    ap.add_argument("--connectors", type=Path, default=None, help="connector store (default $LLAMDEX_HOME/connectors)")
    ap.add_argument("--preset", default="quick", choices=["quick", "default"], help="used only for schemas without stored connectors")
    add_threads_arg(ap)
    ap.add_argument("--seed", type=int, default=0, help="seed of the questions drawn and the connectors trained for missing schemas (default 0)")
    add_out_arg(ap, default=RESULTS_DIR, help="folder of simulation.json, multi_tenant.png and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = parser()
    args = ap.parse_args(argv)
    if args.reps < 1 or args.naive_copies < 1:
        ap.error("--reps and --naive-copies must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from provider_party.model.base_llm import resolve_device

    args = parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    tables = table_refs(args)
    if len(tables) < 2:
        raise SystemExit("--data needs at least two tables: mixed batches must mix schemas")
    base_model = f"random-init:{args.random_init_model}" if args.random_init_model else "embedded"
    command = command_line("python -m simulations.benchmarks.multi_tenant", argv)
    n_max = max(args.clients)
    with tempfile.TemporaryDirectory(prefix="llamdex-multi-tenant-") as tmp:
        setup = build_setup(Path(tmp), tables, n_max, base_model=base_model, device=str(device), connectors=args.connectors,
                            preset=args.preset, questions_per_schema=64, seed=args.seed)
        base = setup.party.ensure_base()
        rss_zero = rss_bytes()
        memory = []
        for n in tqdm(args.clients, desc="resident clients", leave=False):
            make_resident(setup, n)
            memory.append({"resident_clients": n, "rss_bytes": rss_bytes(), "device_bytes": device_bytes(device)})
        naive = build_naive_copies(setup, args.naive_copies, device)
        per_copy, per_copy_device = naive.per_copy_bytes, naive.per_copy_device_bytes
        naive_points = [{"copies": k, "rss_bytes": r, "device_bytes": d} for (k, r), (_, d) in zip(naive.rss, naive.device_bytes)]
        rows = []
        for n, mem in zip(args.clients, memory):
            # N clients, one copy each = the shared process at N plus N - 1 more copies (measured while they fit, else extrapolated)
            measured = n - 1 <= args.naive_copies
            extra = (naive.rss[n - 1][1] - naive.rss[0][1]) if measured else (n - 1) * per_copy
            naive_rss = mem["rss_bytes"] + extra
            naive_device = None
            if mem["device_bytes"] is not None:   # on a GPU the copies live in device memory: the figure that matters there
                extra_dev = (naive.device_bytes[n - 1][1] - naive.device_bytes[0][1]) if measured else (n - 1) * naive.per_copy_device_bytes
                naive_device = int(mem["device_bytes"] + extra_dev)
            for bs in args.batch_size:
                print(f"{n} resident clients, batch {bs} ...", flush=True)
                t = measure_throughput(setup, n, bs, args.reps, naive, device, args.seed)
                rows.append({"resident_clients": n, "batch_size": bs, "mixed_over_single": t["mixed_over_single"], "rss_bytes": mem["rss_bytes"],
                             "one_copy_per_client_rss_bytes": int(naive_rss), "device": str(device), "one_copy_per_client_rss_measured": measured,
                             "device_bytes": mem["device_bytes"], "one_copy_per_client_device_bytes": naive_device,
                             "base_model_id": base.model_id, **t})
                print(f"  mixed {t['mixed_questions_per_s']:.2f} q/s, single {t['single_questions_per_s']:.2f} q/s "
                      f"(mixed/single {t['mixed_over_single']:.3f}), one copy per client {t['one_copy_per_client_questions_per_s']:.2f} q/s", flush=True)
        del naive
        _trim()
        asks = []
        if not args.no_asks:
            make_resident(setup, n_max)
            for c in args.callers:
                print(f"{c} concurrent Ask callers ...", flush=True)
                a = measure_asks(setup, c, args.asks_per_caller, args.questions_per_ask, args.seed)
                asks.append(a)
                print(f"  batched {a['batched']['questions_per_s']:.2f} q/s ({a['batched']['mean_rows_per_pass']:.1f} rows/pass), one pass per "
                      f"call {a['one_pass_per_call']['questions_per_s']:.2f} q/s: {a['batched_over_one_pass_per_call']:.2f}x", flush=True)
        expert_bytes = float(np.mean([parameter_bytes(t.expert) for t in setup.tenants if t.expert is not None]))
        first, last = memory[0], memory[-1]
        span = max(last["resident_clients"] - first["resident_clients"], 1)
        run = {"command": command, "environment": environment(), "device": str(device), "base_model_id": base.model_id,
               "random_init": bool(args.random_init_model), "base_parameters": sum(p.numel() for p in base.model.parameters()),
               "base_parameter_bytes": parameter_bytes(base.model), "schemas": [t.id for t in tables],
               "connector_bytes": {m.schema.name: parameter_bytes(m.encoder) + parameter_bytes(m.decoder) for m in setup.models.values()},
               "expert_parameter_bytes": expert_bytes, "rss_before_experts_bytes": rss_zero, "memory_points": memory,
               "bytes_per_extra_client": (last["rss_bytes"] - first["rss_bytes"]) / span,
               "device_bytes_per_extra_client": None if first["device_bytes"] is None else (last["device_bytes"] - first["device_bytes"]) / span,
               "one_copy_per_client_bytes_per_copy": per_copy, "one_copy_per_client_device_bytes_per_copy": per_copy_device,
               "naive_copies_measured": naive_points,
               "asks": asks, "notes": setup.notes + [
                   "one copy per client: its throughput runs each client's rows of the same mixed batch on a model copy of its own "
                   f"({args.naive_copies} copies built and cycled); its memory beyond {args.naive_copies + 1} clients is extrapolated from the "
                   "measured bytes per copy (marked). A copy here carries every schema's connectors, so it overstates a client's copy by "
                   f"{_mib(sum(parameter_bytes(m.encoder) + parameter_bytes(m.decoder) for m in setup.models.values()))} MiB at most."]}
        setup.party.close()
    merge_json(args.out / SIMULATION_JSON, {"multi_tenant": rows, "multi_tenant_run": run})
    update_section("multi_tenant", markdown(rows, run), results_md_path(args.out))
    plot(rows, run, args.out / "multi_tenant.png")
    print(markdown(rows, run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
