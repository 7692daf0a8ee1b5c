"""The protocol benchmark's measuring parts: the raw baselines' server, the CPU meters, the provider's
finalize log line the benchmark reads, and the shaped link between two network namespaces.

The benchmark itself (100 MB uploads) is run by hand: `python -m simulations.benchmarks.protocol_bench`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.benchmarks import protocol_bench as pb
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture
def raw_server(tmp_path):
    p = make_parties(tmp_path, names=("provider", "alice"))
    port_file = tmp_path / "raw" / "raw.addr"
    port_file.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "simulations.benchmarks.protocol_bench", "--raw-server", "127.0.0.1:0",
                             str(p.certs / "ca.pem"), str(p.certs / "provider.pem"), str(p.certs / "provider.key"), str(port_file)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            assert proc.poll() is None, "the raw server died"
            time.sleep(0.1)
        yield p, port_file.read_text().strip(), proc, port_file.parent / "raw-spool"
    finally:
        proc.kill()
        proc.wait(10)


def test_raw_push_and_push_store_count_every_byte_and_store_leaves_no_file(raw_server):
    from protocol.tls import open_channel

    p, address, proc, spool = raw_server
    data = bytes(range(256)) * (3 * MiB // 256) + b"tail"
    channel = open_channel(address, p.tls["alice"], options=[("grpc.max_send_message_length", 8 * MiB)])
    try:
        with pb.CpuMeter(proc.pid) as m:
            pb.raw_push(channel, data, MiB)
            pb.raw_push(channel, data, MiB, pb.RAW_STORE_METHOD)   # raw_push asserts the server's byte count
    finally:
        channel.close()
    assert m.client_s > 0 and m.server_s > 0
    assert spool.is_dir() and list(spool.iterdir()) == []


def test_process_cpu_counts_a_busy_thread_of_another_process():
    busy = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                             "def spin():\n    t = time.time()\n    while time.time() - t < 3: pass\n"
                             "th = threading.Thread(target=spin); th.start(); th.join()"])
    try:
        time.sleep(0.3)
        a, t = pb.process_cpu_s(busy.pid), time.perf_counter()
        time.sleep(0.5)
        b, dt = pb.process_cpu_s(busy.pid), time.perf_counter() - t
        assert 0.05 < b - a <= dt * 1.05   # one spinning thread: some CPU (the machine may be busy), never more than the wall time
    finally:
        busy.kill()
        busy.wait(10)


def test_the_provider_logs_each_accepted_upload_in_the_form_the_benchmark_reads(tmp_path, caplog):
    from provider_party.service.server import ProviderServer

    p = make_parties(tmp_path, names=("provider", "alice", "orchestrator"))
    server = ProviderServer(provider_config(p, clients=("alice",))).start()
    try:
        with caplog.at_level(logging.INFO, logger="provider_party.service.core"), provider_client(p, server.address) as pc:
            res = pc.upload(make_artifact(tmp_path / "art", p.keys["alice"]), "titanic")
    finally:
        server.stop(0)
    log = tmp_path / "provider.log"
    log.write_text("\n".join(r.getMessage() for r in caplog.records) + "\n")
    cpu = pb.finalize_cpu_s(log, res.upload_id, wait_s=0.1)
    assert 0.0 <= cpu <= res.verify_seconds + 0.05
    with pytest.raises(RuntimeError, match="no finalize line"):
        pb.finalize_cpu_s(log, "another-upload-id", wait_s=0.1)


def _throughput_mbps(ns_server: list[str], ns_client: list[str], ip: str, nbytes: int) -> float:
    """MB/s of one TCP transfer of `nbytes` from the client namespace to a sink in the server namespace."""
    sink = subprocess.Popen([*ns_server, sys.executable, "-c",
                             "import socket, sys\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                             f"s.bind(('{ip}', 50071)); s.listen(1); print('ready', flush=True)\nc, _ = s.accept(); n = 0\n"
                             "while True:\n    b = c.recv(1 << 20)\n    if not b: break\n    n += len(b)\nprint(n, flush=True)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        out = subprocess.run([*ns_client, sys.executable, "-c",
                              "import socket, time\ns = socket.create_connection(('%s', 50071), timeout=20)\n"
                              "buf = b'x' * (1 << 20); n = %d; t = time.perf_counter()\n"
                              "while n > 0:\n    s.sendall(buf[:min(n, len(buf))]); n -= len(buf)\n"
                              "s.shutdown(socket.SHUT_WR); s.recv(1); print(time.perf_counter() - t)" % (ip, nbytes)],
                             capture_output=True, text=True, timeout=60, check=True)
        sink.wait(20)
        return nbytes / float(out.stdout.strip()) / 1e6
    finally:
        sink.kill()


def test_a_shaped_link_between_two_namespaces_carries_about_its_rate():
    from simulations.netns import NetnsUnavailable, host_pair

    try:
        with host_pair("llxt", subnet=79, rate_mbit=80) as hosts:   # 80 Mbit/s = 10 MB/s
            rate = _throughput_mbps(hosts.exec_in("provider", []), hosts.exec_in("client", []), hosts.provider_ip, 4 * MiB)
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    assert 6.0 < rate < 12.0, rate   # tbf lets one burst (40 kB) through at once; TCP start-up costs a little
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    assert "llxtp" not in out and "llxtc" not in out   # removed on exit


def test_host_pair_reports_what_is_missing_when_not_root(monkeypatch):
    from simulations import netns

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NetnsUnavailable, match="needs root"):
        with netns.host_pair("llxu"):
            pass

