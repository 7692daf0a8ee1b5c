"""The two parties on separate hosts: two Linux network namespaces joined by a veth pair (addresses that exist
only inside them), each side driven through the `llamdex` command as an operator would (`hosts bundle`,
`provider serve`, `health`, `client round`, a hand-typed `client ask`), mutual TLS, then SIGTERM and two
restarts on the state the round left. It is the two-host benchmark (simulations/benchmarks/two_hosts_bench.py)
on the tiny connector preset and 8 questions.

Slow (a few minutes on 2 cores). Skipped, with the reason, where namespaces cannot be made (not root, no
`ip`, no CAP_NET_ADMIN). Every wait is bounded; the namespaces (and the veth pair) are removed at the end.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_round_between_two_hosts_over_mutual_tls_driven_by_the_llamdex_command(tmp_path):
    from simulations.benchmarks.two_hosts_bench import run_two_hosts
    from simulations.netns import NetnsUnavailable

    try:
        rec = run_two_hosts(tmp_path, preset="tiny", epochs=3, max_questions=8, threads=1, wait_s=300, subnet=77)
    except NetnsUnavailable as e:
        pytest.skip(str(e))

    rnd = rec["round"]
    assert set(rnd["phase_seconds"]) == {"ready", "train", "upload", "customize", "evaluate", "receipts"}
    assert rnd["n_questions"] == 8 and rnd["receipts"] == 1 and rnd["epsilon"] <= 1.0
    assert {r["method"] for r in rnd["scores"]} >= {"expert", "llamdex"}
    assert "knows this client as 'alice'" in rnd["output"] and "chain verified" in rnd["output"]
    ask = rec["hand_typed_ask"]["output"]
    assert ask.endswith(rec["hand_typed_ask"]["question"]) and ask.split(" ")[0] in ("Yes", "No")
    # the provider is reachable only through the veth pair, not on the client host's loopback
    assert rec["client_loopback_reaches_provider"] is False
    # plaintext to the other host is refused before it dials, in one line that names the TLS flags
    refusal = rec["plaintext_refusal"]
    assert refusal["exit_status"] == 3 and "\n" not in refusal["stderr"]   # invalid input (README, Exit status)
    assert "[PLAINTEXT_NOT_LOOPBACK]" in refusal["stderr"] and "--tls-key" in refusal["stderr"]
    # SIGTERM drains and exits 0
    assert rec["drain"]["exit_status"] == 0
    assert any("SIGTERM received: draining" in line for line in rec["provider_log_tail"])
    # restarted on the round's state: ready only after the warm-up, and the first Ask at readiness is answered
    warm, lazy = rec["restart_with_warm_up"], rec["restart_without_preload"]
    for r in (warm, lazy):
        assert r["live_s"] <= r["ready_s"] and r["answer"] in ("Yes", "No") and r["drain"]["exit_status"] == 0
