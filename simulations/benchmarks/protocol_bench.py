"""Protocol benchmark: what the two-party protocol costs on top of the bare computation.

    python -m simulations.benchmarks.protocol_bench            # ~2-4 min on 2 cores; writes docs/results/protocol.{json,md}
                                                               # and the `protocol` section of docs/RESULTS.md
    python -m simulations.benchmarks.protocol_bench --quick    # a 17 MB artifact, fewer repetitions (smoke run)

Measured on loopback with mutual TLS, each server in its own process (as deployed):
1. upload throughput of a ~100 MB signed artifact through `UploadExpert` against raw gRPC client
   streaming of the same bytes in the same 1 MiB chunks (`CHUNK`, both sides) over the same mutual TLS
   to a server that only counts them. Raw, raw + store and protocol uploads alternate, so all see the
   same load.
   - raw: the wall time of one client-streaming call, from the first chunk copied out of the tar to
     the server's answer (the byte count).
   - raw + store: the same to a server that appends each chunk to a file, unbuffered, as the provider
     appends verified chunks to the part file: the least any resumable upload does with the bytes.
   - upload, end to end: the wall time of `ProviderClient.upload(tar)`: the tar's digest and the first
     stream's chunk digests (BLAKE3 when both sides have it, else SHA-256), the signed header, the
     stream (the provider checks the header's signature, records its nonce and the upload row, checks
     each chunk's offset, size and digest and appends it to the part file), the provider's finalize
     (the whole tar's digest, safe unpack, artifact verification, ε recomputation, ledger, signed
     receipt, promotion), and the client's verification of the receipt.
   - upload, streaming ("transfer", the issue's figure): the end-to-end time minus the provider's
     finalize time as the provider measured it (`UploadResponse.verify_seconds`); everything else above
     stays in.
   Ratios are median(raw) / median(upload); `ratio_transfer_paired` is the median of the per-repetition
   ratios (each upload against the raw push just before it), a check on the machine's noise.
   - CPU per 100 MB of the client (this process) and of the receiving server for each path: with both
     processes on the same two cores, throughput follows total CPU.
   - with `--links 100,1000,10000` (the default; root only, skipped with the reason otherwise) the same
     measurement between two network namespaces joined by a veth pair shaped to each rate in Mbit/s
     (`simulations.netns`): servers in one, the measuring client in the other, as on two hosts. What a
     user feels is the link: at 100 Mbit/s and 1 Gbit/s both paths wait on the wire; at 10 Gbit/s two
     processes sharing 2 cores are CPU-bound again, like loopback.
2. verification time per artifact (`ArtifactVerifier.verify`: signature, digests, spec, schema,
   tensor header, DP statement) for the ~100 MB artifact and for the default expert (400-200);
3. `Ask` latency through the service against the in-process `LlamdexModel.answer` at batch 1 and 16.
Results are medians over repetitions; they are figures, not pass/fail tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from simulations.cli.common import add_out_arg, positive_int

MiB = 1 << 20
CHUNK = MiB           # chunk size of both the raw stream and UploadExpert (the client's default)
RAW_METHOD = "/llamdex.bench.Raw/Push"
RAW_STORE_METHOD = "/llamdex.bench.Raw/PushStore"
LINKS_MBIT = (100, 1000, 10000)
LINK_TARGET = 0.9     # UploadExpert / raw streaming over the shaped links that a user's upload actually crosses
TINY = {"name": "tiny", "n_synthetic": 300, "encoder_questions": 16, "decoder_questions": 8, "val_questions": 8, "encoder_epochs": 1,
        "decoder_epochs": 1, "inject_candidates": [24], "surrogate_epochs": 1}


# --- the raw gRPC baselines ---------------------------------------------------------------------------------

def raw_server(address: str, ca: str, cert: str, key: str, port_file: str) -> None:
    """The baselines' server (its own process, like the provider): `Push` counts a client stream of raw
    byte chunks; `PushStore` also appends each chunk to a file, unbuffered, the way the provider appends
    verified chunks to an upload's part file, and deletes the file at the end. Both answer the byte count.

    `PushStore` is the least any resumable upload must do with the bytes (keep them somewhere a resumed
    stream can continue from); the gap between it and `UploadExpert` is what the protocol itself adds."""
    from protocol.tls import TLSFiles, add_port

    spool = Path(port_file).parent / "raw-spool"   # the benchmark's folder: the same file system as the provider's part files
    spool.mkdir(parents=True, exist_ok=True)

    def push(request_iterator, context):
        n = 0
        for chunk in request_iterator:
            n += len(chunk)
        return n.to_bytes(8, "big")

    def push_store(request_iterator, context):
        path = spool / f"{os.getpid()}-{time.monotonic_ns()}.part"
        n = 0
        try:
            with open(path, "ab", buffering=0) as f:
                for chunk in request_iterator:
                    f.write(chunk)
                    n += len(chunk)
        finally:
            path.unlink(missing_ok=True)
        return n.to_bytes(8, "big")

    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", 8 * MiB)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("llamdex.bench.Raw", {
        "Push": grpc.stream_unary_rpc_method_handler(push), "PushStore": grpc.stream_unary_rpc_method_handler(push_store)}),))
    port = add_port(server, address, TLSFiles(Path(ca), Path(cert), Path(key)))
    server.start()
    host = address.rsplit(":", 1)[0]
    tmp = Path(port_file + ".tmp")
    tmp.write_text(f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}\n")
    tmp.replace(port_file)   # whoever waits for the file never reads half a line
    server.wait_for_termination()


def start_servers(layout: Any, host: str, *, threads: int, prefix: list[str] | None = None) -> tuple[str, Any, Any, Path, Path]:
    """The provider (`--log-level info`: its per-upload finalize line is read for the CPU figures) and the
    raw baselines' server, each in its own process listening on `host` (run through `prefix`, e.g. `ip
    netns exec NS`). Returns (provider address, provider process, raw process, provider log, raw port file)."""
    import subprocess

    from simulations.two_party_demo import free_port, spawn, write_provider_config

    p_addr = f"{host}:{free_port() if host == '127.0.0.1' else 50061}"   # inside a fresh namespace every port is free
    pcfg = write_provider_config(layout.provider / "provider.toml", listen=p_addr, preset=TINY, connectors=str(layout.root / "connectors"),
                                 clients=[{"id": "alice", "public_key": "../keys/alice.pub", "epsilon_budget": 1000.0}])
    plog, rport = layout.provider / "provider.log", layout.root / "raw.addr"
    provider = spawn(["--log-level", "info", "provider", "serve", "--config", str(pcfg), "--no-preload"], plog, threads=threads, prefix=prefix)
    raw = subprocess.Popen([*(prefix or []), sys.executable, "-m", "simulations.benchmarks.protocol_bench", "--raw-server", f"{host}:0",
                            str(layout.certs / "ca.pem"), str(layout.certs / "provider.pem"), str(layout.certs / "provider.key"), str(rport)],
                           stdout=open(layout.root / "raw.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return p_addr, provider, raw, plog, rport


def wait_raw_address(port_file: Path, timeout_s: float = 60.0) -> str:
    """The raw server's address, once it has written its port file."""
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the raw server wrote no {port_file} in {timeout_s:.0f} s")
        time.sleep(0.1)
    return port_file.read_text().strip()


def raw_push(channel: Any, data: bytes, chunk: int, method: str = RAW_METHOD) -> float:
    call = channel.stream_unary(method)
    view = memoryview(data)
    t = time.perf_counter()
    n = int.from_bytes(call((bytes(view[i:i + chunk]) for i in range(0, len(data), chunk)), timeout=600), "big")
    dt = time.perf_counter() - t
    assert n == len(data), (n, len(data))
    return dt


# --- CPU accounting -------------------------------------------------------------------------------------------

def process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of a process. This process: `getrusage` (every thread, also finished
    ones). Another process: the sum of its live threads' run time from /proc/PID/task/*/schedstat (ns; a
    thread that ended between two readings drops out, e.g. the provider's per-upload read-ahead helper,
    so a server's figure can only be too low, never too high)."""
    if pid is None or pid == os.getpid():
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass   # the thread ended while we read
    return total / 1e9


def finalize_cpu_s(provider_log: Path, upload_id: str, wait_s: float = 5.0) -> float:
    """The finalize CPU seconds the provider logged for `upload_id` ("upload ID from ... s CPU")."""
    pat = re.compile(rf"upload {re.escape(upload_id)} from .* finalize [0-9.]+ s wall, ([0-9.]+) s CPU")
    deadline = time.monotonic() + wait_s
    while True:
        m = pat.search(provider_log.read_text(errors="replace"))
        if m:
            return float(m.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError(f"the provider logged no finalize line for upload {upload_id} in {provider_log}")
        time.sleep(0.05)


class CpuMeter:
    """CPU seconds spent by the client (this process) and one server process during a block."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.client_s = self.server_s = 0.0

    def __enter__(self) -> "CpuMeter":
        self._c, self._s = process_cpu_s(), process_cpu_s(self.server_pid)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client_s, self.server_s = process_cpu_s() - self._c, process_cpu_s(self.server_pid) - self._s


# --- helpers ------------------------------------------------------------------------------------------------

def big_artifact(folder: Path, key: Any, hidden: tuple[int, ...], seed: int) -> Path:
    import torch

    from protocol.artifact import write_artifact
    from protocol.dp import DPStatement, compute_epsilon
    from protocol.encoding import FeatureEncoder
    from protocol.expert_spec import ExpertSpec, build_expert
    from protocol.schema import PublicSchema

    schema = PublicSchema.load(Path(__file__).resolve().parents[2] / "client_party" / "schemas" / "titanic.json")
    torch.manual_seed(seed)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, hidden=hidden, schema_digest=schema.digest)
    eps = compute_epsilon(1.0, 0.01, 100, 1e-5)
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0, accountant="rdp",
                     epsilon=eps, delta=1e-5, dataset_size_bucket="1k-2k")
    return write_artifact(folder, build_expert(spec), schema, dp, key)


def hidden_for(mb: int) -> tuple[int, ...]:
    """Hidden sizes whose weights total about `mb` MB (float32)."""
    if mb >= 90:
        return (4096, 4096, 2048)          # ~100.7 MB
    return (2048, 2048)                    # ~16.9 MB ... with the input layer, ~17 MB


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


# --- upload measurement (also run inside the client's namespace for the link figure) -----------------------

def make_artifacts(layout: Any, key: Any, artifact_mb: int, reps: int, log=print) -> tuple[list[Path], Path]:
    """`reps` distinct signed artifacts of about `artifact_mb` MB, and one of the default expert's size (warm-up, Ask)."""
    hidden = hidden_for(artifact_mb)
    log(f"[bench] building {reps} signed artifacts with hidden {hidden} ...")
    arts = [big_artifact(layout.root / f"big{i}", key, hidden, seed=i) for i in range(reps)]
    return arts, big_artifact(layout.root / "small", key, (400, 200), seed=99)


def measure_uploads(pc: Any, raw_address: str, tls: Any, arts: list[Path], *, provider_pid: int, raw_pid: int, provider_log: Path,
                    log=print, progress: bool = True) -> dict[str, Any]:
    """Upload throughput and CPU: raw push, raw push + store and UploadExpert of the same tar, alternating
    (so all three see the same machine load), one distinct artifact per repetition."""
    from protocol.artifact import pack_artifact
    from protocol.tls import open_channel
    from protocol.wire import preferred_upload_digest

    tars = [pack_artifact(a, limits={"expert.safetensors": 512 * MiB}) for a in arts]
    size = len(tars[0])
    opts = [("grpc.max_send_message_length", 8 * MiB), ("grpc.max_receive_message_length", 8 * MiB)]
    raw_ch = open_channel(raw_address, tls, options=opts)
    raw_push(raw_ch, tars[0][:8 * MiB], CHUNK)  # warm-up
    raw_push(raw_ch, tars[0][:8 * MiB], CHUNK, RAW_STORE_METHOD)
    raw_s, store_s, up_s, verify_server_s = [], [], [], []
    cpu: dict[str, list[tuple[float, float]]] = {"raw": [], "raw_store": [], "upload": []}
    for i in tqdm(range(len(tars)), desc="upload vs raw", unit="rep", disable=not progress):
        with CpuMeter(raw_pid) as m:
            raw_s.append(raw_push(raw_ch, tars[i], CHUNK))
        cpu["raw"].append((m.client_s, m.server_s))
        with CpuMeter(raw_pid) as m:
            store_s.append(raw_push(raw_ch, tars[i], CHUNK, RAW_STORE_METHOD))
        cpu["raw_store"].append((m.client_s, m.server_s))
        with CpuMeter(provider_pid) as m:
            t = time.perf_counter()
            res = pc.upload(tars[i], "bench", chunk_bytes=CHUNK)
            up_s.append(time.perf_counter() - t)
        verify_server_s.append(res.verify_seconds)
        # the provider's CPU while streaming: all of it minus its finalize (the finalizing thread's own
        # CPU, from the provider's log line for this upload), which runs after the last byte
        cpu["upload"].append((m.client_s, m.server_s - finalize_cpu_s(provider_log, res.upload_id)))
    raw_ch.close()
    transfer_s = [u - v for u, v in zip(up_s, verify_server_s)]
    per100 = 100e6 / size * 1000   # seconds for `size` bytes -> ms per 100 MB
    cpu_ms = {k: {"client": med([c for c, _ in v]) * per100, "server": med([s_ for _, s_ in v]) * per100} for k, v in cpu.items()}
    for v in cpu_ms.values():
        v["total"] = v["client"] + v["server"]
    u = {
        "raw_grpc_MBps": size / med(raw_s) / 1e6, "raw_store_MBps": size / med(store_s) / 1e6,
        "upload_transfer_MBps": size / med(transfer_s) / 1e6, "upload_end_to_end_MBps": size / med(up_s) / 1e6,
        "ratio_transfer": med(raw_s) / med(transfer_s), "ratio_end_to_end": med(raw_s) / med(up_s),
        "ratio_transfer_paired": med([r / t for r, t in zip(raw_s, transfer_s)]),
        "ratio_transfer_vs_store": med(store_s) / med(transfer_s), "ratio_store_vs_raw": med(raw_s) / med(store_s),
        "cpu_ms_per_100MB": cpu_ms, "ratio_cpu": cpu_ms["raw"]["total"] / cpu_ms["upload"]["total"],
        "raw_s": raw_s, "raw_store_s": store_s, "upload_s": up_s, "server_finalize_s": verify_server_s, "transfer_s": transfer_s}
    log(f"[bench] upload {size / 1e6:.1f} MB: raw gRPC {u['raw_grpc_MBps']:.0f} MB/s, raw + store {u['raw_store_MBps']:.0f} MB/s, "
        f"UploadExpert {u['upload_transfer_MBps']:.0f} MB/s streaming ({u['ratio_transfer']:.2f}× raw, {u['ratio_transfer_vs_store']:.2f}× "
        f"raw + store), {u['upload_end_to_end_MBps']:.0f} MB/s to the verified receipt ({u['ratio_end_to_end']:.2f}×); CPU ms per 100 MB "
        + ", ".join(f"{k} {v['client']:.0f}+{v['server']:.0f}" for k, v in cpu_ms.items()))
    return {"artifact_bytes": size, "upload_digest": preferred_upload_digest(pc.hello().limits.upload_digests), "upload": u}


# --- the same upload measurement across a shaped link between two network namespaces ------------------------

def run_link(rate_mbit: int, *, artifact_mb: int = 100, reps: int = 5, threads: int = 1, log=print) -> dict[str, Any]:
    """Upload vs raw streaming between two "hosts" (simulations.netns: two network namespaces, a veth
    pair shaped to `rate_mbit` on both ends), servers in one namespace, the measuring client in the other."""
    import subprocess

    from simulations.netns import NetnsUnavailable, host_pair
    from simulations.two_party_demo import RunLayout, prepare_parties, stop

    try:
        with tempfile.TemporaryDirectory(prefix="llamdex-bench-link-") as tmp, host_pair(f"llb{os.getpid() % 10000}", subnet=78,
                                                                                          rate_mbit=rate_mbit) as hosts:
            layout = RunLayout(Path(tmp))
            prepare_parties(layout, "alice", hosts={"provider": [hosts.provider_ip]})
            p_addr, provider, raw, plog, rport = start_servers(layout, hosts.provider_ip, threads=threads, prefix=hosts.exec_in("provider", []))
            try:
                job = {"root": tmp, "p_addr": p_addr, "raw_port_file": str(rport), "provider_pid": provider.pid, "raw_pid": raw.pid,
                       "provider_log": str(plog), "artifact_mb": artifact_mb, "reps": reps, "out": str(layout.root / "link.json")}
                child = subprocess.run(hosts.exec_in("client", [sys.executable, "-m", "simulations.benchmarks.protocol_bench", "--link-client",
                                                                json.dumps(job)]), capture_output=True, text=True, timeout=1800,
                                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                for line in child.stdout.splitlines():
                    if line.startswith("[bench]"):
                        log(line.replace("[bench]", f"[bench] link {rate_mbit} Mbit/s:", 1))
                if child.returncode != 0:
                    raise RuntimeError(f"the link client failed ({child.returncode}): {child.stderr[-3000:]}\n--- provider ---\n"
                                       f"{plog.read_text(errors='replace')[-2000:]}")
                out = json.loads((layout.root / "link.json").read_text())
            finally:
                stop(provider)
                stop(raw)
    except NetnsUnavailable as e:
        log(f"[bench] link run skipped: {e}")
        return {"rate_mbit": rate_mbit, "skipped": str(e)}
    return {"rate_mbit": rate_mbit, "topology": "two network namespaces joined by a veth pair, tc tbf on both ends; mutual TLS", **out}


def link_client(job: dict[str, Any]) -> None:
    """The measuring side of `run_link`, inside the client's namespace."""
    from client_party.provider_client import ProviderClient
    from protocol.keys import load_private_key
    from protocol.tls import TLSFiles
    from simulations.two_party_demo import RunLayout, wait_healthy

    layout = RunLayout(Path(job["root"]))
    raw_address = wait_raw_address(Path(job["raw_port_file"]))
    tls, orch = TLSFiles.in_folder(layout.certs, "alice"), TLSFiles.in_folder(layout.certs, "orchestrator")
    wait_healthy(job["p_addr"], orch, "llamdex.v1.ProviderService", [])
    key = load_private_key(layout.keys / "alice.key")
    arts, small = make_artifacts(layout, key, job["artifact_mb"], job["reps"])
    with ProviderClient(job["p_addr"], "alice", key, tls=tls, provider_public_key=layout.keys / "provider.pub", timeout_s=600) as pc:
        pc.upload(small, "bench")   # warm-up
        res = measure_uploads(pc, raw_address, tls, arts, provider_pid=job["provider_pid"], raw_pid=job["raw_pid"],
                              provider_log=Path(job["provider_log"]), progress=False)
    Path(job["out"]).write_text(json.dumps(res))


# --- the benchmark ----------------------------------------------------------------------------------------------

def run(out_dir: Path, *, artifact_mb: int = 100, reps: int = 3, ask_reps: int = 10, skip_ask: bool = False, threads: int = 1,
        links_mbit: tuple[int, ...] = LINKS_MBIT, link_reps: int = 5, log=print, progress: bool = True) -> dict[str, Any]:
    import torch

    from client_party.provider_client import ProviderClient
    from protocol.artifact import ArtifactVerifier
    from protocol.keys import load_private_key
    from protocol.tls import TLSFiles
    from simulations.two_party_demo import RunLayout, prepare_parties, stop, wait_healthy

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
                                           "grpc": grpc.__version__, "platform": platform.platform()},
                               "transport": "gRPC over mutual TLS on loopback, servers in separate processes", "chunk_bytes": CHUNK,
                               "torch_threads": threads}
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="llamdex-bench-") as tmp:
        layout = RunLayout(Path(tmp))
        prepare_parties(layout, "alice")
        alice_key = load_private_key(layout.keys / "alice.key")
        alice_tls = TLSFiles.in_folder(layout.certs, "alice")
        orch = TLSFiles.in_folder(layout.certs, "orchestrator")
        procs = []
        try:
            # --- servers
            p_addr, provider, raw, plog, rport = start_servers(layout, "127.0.0.1", threads=threads)
            procs += [("provider", provider, plog), ("raw", raw, layout.root / "raw.log")]
            wait_healthy(p_addr, orch, "llamdex.v1.ProviderService", procs[:1])
            r_addr = wait_raw_address(rport)

            # --- 1. upload throughput vs raw streaming
            arts, small = make_artifacts(layout, alice_key, artifact_mb, reps, log)
            with ProviderClient(p_addr, "alice", alice_key, tls=alice_tls, provider_public_key=layout.keys / "provider.pub", timeout_s=600) as pc:
                small_upload = pc.upload(small, "bench")   # warm-up: first-call imports on both sides
                results.update(measure_uploads(pc, r_addr, alice_tls, arts, provider_pid=provider.pid, raw_pid=raw.pid, provider_log=plog,
                                               log=log, progress=progress))
                size = results["artifact_bytes"]

                # --- 2. verification time per artifact
                verifier = ArtifactVerifier([alice_key.public_key()], limits={"expert.safetensors": 512 * MiB})
                big_v = []
                for _ in range(reps):
                    t = time.perf_counter()
                    verifier.verify(arts[0])
                    big_v.append(time.perf_counter() - t)
                small_v = []
                for _ in range(20):
                    t = time.perf_counter()
                    verifier.verify(small)
                    small_v.append(time.perf_counter() - t)
                small_bytes = sum(f.stat().st_size for f in small.iterdir())
                results["verification"] = {"big_bytes": size, "big_s": med(big_v), "big_MBps": size / med(big_v) / 1e6,
                                           "default_expert_bytes": small_bytes, "default_expert_s": med(small_v),
                                           "server_finalize_big_s": med(results["upload"]["server_finalize_s"])}
                log(f"[bench] verify: {med(big_v):.2f} s for {size / 1e6:.0f} MB, {1000 * med(small_v):.1f} ms for the default expert "
                    f"({small_bytes / 1e3:.0f} kB); server finalize (unpack + verify + ledger) {results['verification']['server_finalize_big_s']:.2f} s")

                if skip_ask:
                    return results
                # --- 3. Ask latency: service vs in-process
                res = small_upload
                job = pc.customize(res.artifact_digest)
                for ev in pc.watch_job(job.job_id, timeout_s=1800):
                    last = ev
                assert last.result.error == "", last.result.error
                questions = heldout_questions(16)
                ask = {}
                for b in (1, 16):
                    qs = questions[:b]
                    for _ in range(2):
                        pc.ask_raw(qs, artifact_digest=res.artifact_digest)
                    lat, server_s = [], []
                    for _ in range(ask_reps if b == 1 else max(3, ask_reps // 2)):
                        t = time.perf_counter()
                        r = pc.ask_raw(qs, artifact_digest=res.artifact_digest)
                        lat.append(time.perf_counter() - t)
                        server_s.append(r.seconds)
                    ask[b] = {"service_s": med(lat), "service_compute_s": med(server_s)}
            # in-process, with the provider idle (same connectors, same expert)
            from protocol.expert_spec import load_expert_state
            from provider_party.model.base_llm import load_base_llm
            from provider_party.model.connector_store import ConnectorStore

            base = load_base_llm()
            verified = ArtifactVerifier([alice_key.public_key()]).verify(small)
            expert = load_expert_state(verified.spec, verified.load_tensors())
            model = ConnectorStore(layout.root / "connectors").load(base, verified.schema)
            for b in (1, 16):
                qs = questions[:b]
                for _ in range(2):
                    model.answer(qs, expert)
                lat = []
                for _ in range(ask_reps if b == 1 else max(3, ask_reps // 2)):
                    t = time.perf_counter()
                    model.answer(qs, expert)
                    lat.append(time.perf_counter() - t)
                ask[b]["in_process_s"] = med(lat)
                ask[b]["ratio"] = ask[b]["service_s"] / ask[b]["in_process_s"]
                ask[b]["overhead_ms"] = 1000 * (ask[b]["service_s"] - ask[b]["in_process_s"])
                log(f"[bench] Ask batch {b}: service {1000 * ask[b]['service_s']:.0f} ms, in-process {1000 * ask[b]['in_process_s']:.0f} ms "
                    f"(×{ask[b]['ratio']:.3f}, +{ask[b]['overhead_ms']:.0f} ms)")
            results["ask"] = {f"batch_{b}": v for b, v in ask.items()}
        finally:
            for _, p, _ in procs:
                stop(p)
    results["links"] = [run_link(rate, artifact_mb=artifact_mb, reps=link_reps, threads=threads, log=log) for rate in links_mbit]
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "protocol.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "protocol.md").write_text(markdown(results) + "\n")
    from simulations.benchmarks.results_md import results_md_path, update_section

    update_section("protocol", SECTION_TITLE + markdown(results), results_md_path(out_dir))
    log(markdown(results))
    return results


def heldout_questions(n: int) -> list[str]:
    from client_party.datasets import load_table, split_table
    from protocol.verbalizer import Verbalizer

    df, schema = load_table("titanic")
    _, test = split_table(df, schema, test_size=0.2, seed=0)
    return Verbalizer(schema, seed=10_000).questions(test[schema.feature_names].iloc[:n].to_dict("records"))


SECTION_TITLE = "## Protocol overheads (issue: two-party protocol)\n\n"


def markdown(r: dict[str, Any]) -> str:
    u, v, a = r["upload"], r["verification"], r["ask"]
    mb = r["artifact_bytes"] / 1e6
    lines = [
        f"Protocol overheads ({r['transport']}; {r['machine']['cpus']} CPUs shared with other jobs, load average "
        f"{r['machine']['loadavg_at_start'][0]:.1f} at start; {r['torch_threads']} torch thread(s); medians). "
        "Command: `python -m simulations.benchmarks.protocol_bench`.",
        "",
        "| measure | protocol | baseline | ratio |",
        "|---|---|---|---|",
        f"| upload {mb:.0f} MB, streaming (UploadExpert with {r.get('upload_digest', 'sha256').upper()} chunk + tar digests vs raw gRPC stream, "
        f"{r['chunk_bytes'] / MiB:g} MiB chunks both) | {u['upload_transfer_MBps']:.0f} MB/s | "
        f"{u['raw_grpc_MBps']:.0f} MB/s | {u['ratio_transfer']:.2f} (paired {u.get('ratio_transfer_paired', u['ratio_transfer']):.2f}; loopback: "
        "both processes CPU-bound on the same 2 cores, see CPU per 100 MB below) |",
        *([f"| upload {mb:.0f} MB, streaming, against raw gRPC + storing the bytes (`PushStore`: each chunk appended to a file, as the part file is) | "
           f"{u['upload_transfer_MBps']:.0f} MB/s | {u['raw_store_MBps']:.0f} MB/s | {u['ratio_transfer_vs_store']:.2f} |"] if "raw_store_MBps" in u else []),
        *[link_row(lk, mb) for lk in r.get("links", []) if "upload" in lk],
        f"| upload {mb:.0f} MB, to the verified receipt | {u['upload_end_to_end_MBps']:.0f} MB/s | {u['raw_grpc_MBps']:.0f} MB/s | {u['ratio_end_to_end']:.2f} |",
        f"| verification, {mb:.0f} MB artifact (signature, digests, spec, schema, header, DP) | {v['big_s']:.2f} s ({v['big_MBps']:.0f} MB/s) | – | – |",
        f"| verification, default expert ({v['default_expert_bytes'] / 1e3:.0f} kB) | {1000 * v['default_expert_s']:.1f} ms | – | – |",
        f"| provider finalize, {mb:.0f} MB (tar {r.get('upload_digest', 'sha256').upper()}, safe unpack, verification, ε recomputation, ledger, receipt) | {v['server_finalize_big_s']:.2f} s | – | – |",
    ]
    for b in (1, 16):
        x = a[f"batch_{b}"]
        lines.append(f"| Ask latency, batch {b} (service vs in-process `answer`) | {1000 * x['service_s']:.0f} ms | {1000 * x['in_process_s']:.0f} ms | "
                     f"{x['ratio']:.3f} (+{x['overhead_ms']:.0f} ms) |")
    lines += ["", f"Upload timing ({len(u['raw_s'])} repetitions, the three alternating): raw = one client-streaming call of the tar's "
              "chunks to a server that only counts them; raw + store = the same to a server that appends each chunk to a file; streaming = "
              "`ProviderClient.upload` (tar and chunk digests, signed header, the provider's header, nonce and upload-row commits, per-chunk "
              "digest checks and appends to the part file, the client's receipt check) minus the provider's finalize (`verify_seconds`); to "
              "the verified receipt = all of `upload`. "
              f"Per repetition, raw {', '.join(f'{1000 * x:.0f}' for x in u['raw_s'])} ms; "
              + (f"raw + store {', '.join(f'{1000 * x:.0f}' for x in u['raw_store_s'])} ms; " if "raw_store_s" in u else "")
              + f"streaming {', '.join(f'{1000 * (x - y):.0f}' for x, y in zip(u['upload_s'], u['server_finalize_s']))} ms."]
    if "cpu_ms_per_100MB" in u:
        c = u["cpu_ms_per_100MB"]
        lines += ["", "CPU per 100 MB moved (medians; client = the benchmark process, server = the receiving process's threads; the "
                  "provider's finalize CPU, from its log, is left out):", "",
                  "| path | client CPU ms | server CPU ms | total |", "|---|---|---|---|"]
        for name, key in (("raw gRPC", "raw"), ("raw gRPC + store", "raw_store"), ("UploadExpert (streaming)", "upload")):
            lines.append(f"| {name} | {c[key]['client']:.0f} | {c[key]['server']:.0f} | {c[key]['total']:.0f} |")
        lines += ["", f"When both processes are CPU-bound on the same cores, throughput goes as 1 / total CPU: raw/UploadExpert CPU = "
                  f"{u['ratio_cpu']:.2f}."]
    return "\n".join(lines)


def link_row(lk: dict[str, Any], mb: float) -> str:
    u, rate = lk["upload"], lk["rate_mbit"]
    name = f"{rate / 1000:g} Gbit/s" if rate >= 1000 else f"{rate} Mbit/s"
    target = f"target ≥ {LINK_TARGET}" if rate <= 1000 else "reported: CPU-bound on 2 shared cores, like loopback"
    return (f"| upload {mb:.0f} MB, streaming, over a {name} link between two hosts (network namespaces, veth, tc tbf) | "
            f"{u['upload_transfer_MBps']:.0f} MB/s | {u['raw_grpc_MBps']:.0f} MB/s | {u['ratio_transfer']:.2f} (paired "
            f"{u['ratio_transfer_paired']:.2f}, to the receipt {u['ratio_end_to_end']:.2f}; {target}) |")



def _links(text: str) -> tuple[int, ...]:
    """Link capacities in Mbit/s, comma-separated whole numbers of at least 1 ('' for none)."""
    import argparse

    items = tuple(x.strip() for x in text.split(",") if x.strip())
    for t in items:
        if not t.isdigit() or int(t) < 1:
            raise argparse.ArgumentTypeError(f"link {t!r} is not a capacity in Mbit/s (a whole number of at least 1); '' for none")
    return tuple(int(t) for t in items)

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.protocol_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_arg(ap, default=Path("docs/results"), help="folder of protocol.json, protocol.md and RESULTS.md's section (default: docs/results)",
                aliases=("--out-dir",))
    ap.add_argument("--quick", action="store_true", help="a ~17 MB artifact and fewer repetitions (smoke run)")
    ap.add_argument("--reps", type=int, default=9, help="uploads of distinct ~100 MB artifacts, each against a raw push and a raw "
                    "push + store (default 9; the machine is noisy)")
    ap.add_argument("--links", type=_links, default=",".join(map(str, LINKS_MBIT)), help="also measure uploads across links of these capacities "
                    "(Mbit/s, comma-separated) between two network namespaces (needs root and iproute2; skipped with the reason otherwise; "
                    "'' for none; default %(default)s)")
    ap.add_argument("--link-reps", type=int, default=5, help="repetitions per shaped link (default 5)")
    ap.add_argument("--skip-ask", action="store_true", help="measure uploads and verification only (nothing is written)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads of the provider and of the in-process model (default 1: "
                    "robust on a shared machine, where 2-thread OpenMP stalls when another process holds a core)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--raw-server"]:
        raw_server(*argv[1:6])
        return 0
    if argv[:1] == ["--link-client"]:
        link_client(json.loads(argv[1]))
        return 0
    a = parser().parse_args(argv)
    links = a.links
    if a.quick:
        run(a.out, artifact_mb=17, reps=2, ask_reps=4, skip_ask=a.skip_ask, threads=a.threads, links_mbit=links, link_reps=2)
    else:
        run(a.out, artifact_mb=100, reps=a.reps, skip_ask=a.skip_ask, threads=a.threads, links_mbit=links, link_reps=a.link_reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
