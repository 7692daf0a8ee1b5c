"""The two parties on separate hosts: two Linux network namespaces joined by a veth pair (10.77.0.1 and
10.77.0.2, addresses that exist only inside them), scripts/two_hosts.sh on each side, mutual TLS.

Skipped, with the reason, where namespaces cannot be made (not root, no `ip`, no CAP_NET_ADMIN).
Every wait is bounded; the namespaces (and with them the veth pair) are removed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "two_hosts.sh"
PROVIDER_IP, CLIENT_IP, PORT = "10.77.0.1", "10.77.0.2", 50051


@pytest.fixture
def namespaces():
    from simulations.netns import NetnsUnavailable, host_pair

    try:
        with host_pair() as pair:
            assert (pair.provider_ip, pair.client_ip) == (PROVIDER_IP, CLIENT_IP)
            yield pair.provider_ns, pair.client_ns
    except NetnsUnavailable as e:
        pytest.skip(str(e))


def test_provider_and_client_on_two_hosts_over_mutual_tls(namespaces, tmp_path):
    ns_p, ns_c = namespaces
    env = {**os.environ, "LLAMDEX": f"{sys.executable} -m simulations.cli.main", "PRESET": "tiny", "EPOCHS": "3",
           "MAX_QUESTIONS": "8", "WAIT": "90", "PORT": str(PORT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "bundles"
    subprocess.run(["bash", str(SCRIPT), "setup", str(out), PROVIDER_IP, CLIENT_IP], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    plog = open(tmp_path / "provider.log", "wb")
    provider = subprocess.Popen(["ip", "netns", "exec", ns_p, "bash", str(SCRIPT), "provider", str(out / "provider"), "--no-preload"],
                                cwd=ROOT, env=env, stdout=plog, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = subprocess.run(["ip", "netns", "exec", ns_c, "bash", str(SCRIPT), "client", str(out / "client")], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=420)
        log = client.stdout + client.stderr
        assert client.returncode == 0, log[-4000:] + "\n--- provider ---\n" + (tmp_path / "provider.log").read_text(errors="replace")[-3000:]
        assert "knows this client as 'alice'" in log and "receipt verified and stored" in log and "chain verified" in log
        scores = json.loads((out / "client" / "workspace" / "scores.json").read_text())
        assert {r["method"] for r in scores["rows"]} >= {"expert", "llamdex"} and scores["n_test"] == 8
        receipts = json.loads((out / "client" / "workspace" / "receipts.json").read_text())
        from protocol.receipts import verify_chain

        assert [r.kind for r in verify_chain(receipts, out / "client" / "keys" / "provider.pub")] == ["upload"]
        # the provider is reachable only through the veth pair: not from the client namespace's loopback
        r = subprocess.run(["ip", "netns", "exec", ns_c, sys.executable, "-c",
                            f"import socket; s=socket.socket(); s.settimeout(2); print(s.connect_ex(('127.0.0.1', {PORT})))"],
                           capture_output=True, text=True, timeout=20)
        assert r.stdout.strip() != "0"
        # and a plaintext client across hosts is refused before it dials
        r = subprocess.run(["ip", "netns", "exec", ns_c, sys.executable, "-m", "simulations.cli.main", "client", "hello", "--config",
                            str(out / "client" / "client.toml"), "--plaintext"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "PLAINTEXT_NOT_LOOPBACK" in (r.stdout + r.stderr)
    finally:
        try:
            os.killpg(provider.pid, signal.SIGTERM)
            provider.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(provider.pid, signal.SIGKILL)
            provider.wait(5)
        plog.close()
