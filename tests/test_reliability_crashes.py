"""Crashes: the provider and the client service are killed with SIGKILL at precise points (protocol.crashpoints)
in their real processes, restarted, and checked: the ledger verifies, jobs are resumed or failed with their
reason, artifacts are complete and verified or absent, the client retries under the same upload id without
being charged twice, nothing receipted is lost; a full disk gives DISK_FULL and no half artifact
(`simulations/benchmarks/fault_campaign.py` holds the scenarios and the checks).

Default run: one kill around an upload's charge and a full disk (~1 min; `tests/test_grpc_recovery.py` kills the
provider mid-upload too). `-m slow`: one kill per scenario at a point drawn from its known range, and 20 kill
points per scenario drawn from the counts of a dry run, the scenarios that train included (connectors, the
client's DP expert)."""

from __future__ import annotations

import random

import pytest

from protocol import crashpoints
from simulations.benchmarks import fault_campaign as fc

# how often one trial reaches each point (what a dry run counts; a ~350 kB artifact in 16 KiB chunks is 22 chunks,
# a trial's fresh dataset writes a budget event before the upload's charge)
KNOWN_HITS = {
    "provider: upload": {"upload.chunk_written": 20},
    "provider: ledger write": {"ledger.after_insert": 2, "ledger.after_budget_update": 1, "ledger.before_commit": 2, "ledger.after_commit": 2,
                               "upload.finalize": 1, "upload.staged": 1, "upload.charged": 1, "upload.promoted": 1},
    "provider: receipt signing": {"receipt.before_sign": 2, "receipt.after_sign": 2},
    "client: upload": {"client.upload_chunk": 20},
}


def _assert_survived(results: list[fc.TrialResult]) -> None:
    for r in results:
        assert r.injected, f"{r.scenario} at {r.point}: the process was not killed there"
        assert r.survived and r.lost == 0, f"{r.scenario} at {r.point}: {r.problems}"


def _one_trial(name: str, tmp_path, seed: int) -> fc.TrialResult:
    rng = random.Random(seed)
    if name.startswith("client"):
        sc = fc.ClientScenario(tmp_path / "client", name, tuple(KNOWN_HITS[name]))
        sc.hits = KNOWN_HITS[name]
        try:
            sc.prig.start()
            return sc.trial_once(rng)
        finally:
            sc.close()
    sc = fc.ProviderScenario(fc.ProviderRig(tmp_path / "rig"), name, tuple(KNOWN_HITS[name]))
    sc.hits = KNOWN_HITS[name]
    return sc.trial_once(rng)


def test_crash_points_are_inert_unless_armed_with_the_phrase(monkeypatch, tmp_path):
    import importlib

    monkeypatch.setenv(crashpoints.POINT_VAR, "ledger.before_commit")     # a point without the arming phrase arms nothing
    monkeypatch.delenv(crashpoints.ARM_VAR, raising=False)
    assert importlib.reload(crashpoints).armed() is None
    crashpoints.crashpoint("ledger.before_commit")                        # still alive
    monkeypatch.setenv(crashpoints.ARM_VAR, "yes")
    assert importlib.reload(crashpoints).armed() is None
    monkeypatch.delenv(crashpoints.POINT_VAR)
    monkeypatch.delenv(crashpoints.ARM_VAR)
    importlib.reload(crashpoints)


def test_a_provider_killed_around_the_charge_restarts_sound_and_charges_the_retry_once(tmp_path):
    """The default run's one kill (~35 s): inside the ledger write of an upload's charge or around it."""
    _assert_survived([_one_trial("provider: ledger write", tmp_path, seed=3)])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["provider: upload", "provider: receipt signing", "client: upload"])
def test_a_kill_at_a_random_point_is_survived(scenario, tmp_path):
    _assert_survived([_one_trial(scenario, tmp_path, seed=len(scenario))])


def test_a_full_disk_during_an_upload_is_a_clear_error_and_leaves_no_half_artifact(tmp_path):
    r = fc.disk_full_trial(tmp_path, room=0.5)
    if r.problems == ["skipped"]:
        pytest.skip(r.point)
    _assert_survived([r])


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [s for s in fc.SCENARIOS])
def test_twenty_random_kill_points_per_scenario_are_all_survived(scenario, tmp_path):
    results = fc.run_scenario(scenario, tmp_path, trials=20, rng=random.Random(20))
    if scenario == "provider: disk full" and all(r.problems == ["skipped"] for r in results):
        pytest.skip(results[0].point)
    assert len(results) >= (2 if scenario == "provider: disk full" else 20)
    _assert_survived(results)
