"""Load: the short version of `python -m simulations.benchmarks.load_test` (4 uploading and 8 asking clients for
40 s against one provider process, mutual TLS): no errors, back-pressure instead of queues, every accepted upload
charged exactly once with a receipt that verifies, the ledger verifies, the provider's memory stays bounded, and
the admitted Ask calls stay within 3x the unloaded median (the full 32 + 64 clients for 5 min: the benchmark)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_a_short_load_holds_with_nothing_lost(tmp_path):
    from simulations.benchmarks.load_test import run

    r = run(4, 8, 40.0, workers=2, run_dir=tmp_path / "load", log=lambda *_: None)
    ask, up = r["calls"]["Ask"], r["calls"]["UploadExpert"]
    assert ask["errors"] == 0 and up["errors"] == 0, (ask["error_examples"], up["error_examples"])
    assert ask["ok"] > 0 and up["ok"] > 0
    assert r["checks"]["problems"] == [] and r["checks"]["ledger_verifies"] and r["checks"]["receipts_verify"] and r["checks"]["lost"] == 0
    assert r["checks"]["accepted_uploads"] == up["ok"] or r["checks"]["accepted_uploads"] >= up["ok"]
    assert r["memory"]["peak_rss_mb"] < r["memory"]["rss_at_start_mb"] + 1024        # bounded: no per-call growth
    assert r["ask_p99_over_unloaded_p50"] <= 3.0, r["verdict"]
