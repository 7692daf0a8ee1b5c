"""Hostile input: every reader of untrusted bytes, fed random and mutated inputs by hypothesis, accepts them or
refuses them with a precise error, in bounded time, without changing any state (the targets and the oracle are
in `simulations/benchmarks/fuzz_campaign.py`). 200 cases per target here (~50 s for all); 2,000 under -m slow.
"""

from __future__ import annotations

import pytest

from simulations.benchmarks import fuzz_campaign as fc

DEFAULT_CASES = 200
SLOW_CASES = 2000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return fc.build_world(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def rpc(world):
    r = fc.RpcWorld(world)
    yield r
    r.close()


def _check(stats: fc.TargetStats, cases: int) -> None:
    assert stats.crashes == [], stats.crashes
    assert (stats.hangs, stats.state_changes) == (0, 0)
    assert stats.cases >= cases and stats.refused > 0      # the inputs did reach the checks that refuse them


@pytest.mark.parametrize("target", sorted(fc.TARGETS))
def test_every_reader_accepts_or_refuses_precisely(world, target):
    _check(fc.run_target(fc.TARGETS[target], world, DEFAULT_CASES), DEFAULT_CASES)


def test_every_rpc_of_both_services_answers_hostile_messages_with_a_precise_status_and_no_state_change(world, rpc):
    _check(fc.run_target(fc.target_rpc_requests, world, DEFAULT_CASES, rpc=rpc), DEFAULT_CASES)


def test_a_message_that_does_not_parse_gets_invalid_argument_not_internal(rpc):
    for service, method, kind in (("provider", "Ask", "unary"), ("provider", "WatchJob", "server_stream"),
                                  ("provider", "UploadExpert", "client_stream"), ("client", "TrainExpert", "unary")):
        payload = [b"\xff\xff\xff"] if kind == "client_stream" else b"\xff\xff\xff"
        status, code, details = rpc.call(service, method, kind, payload)
        assert (status, code) == ("INVALID_ARGUMENT", "BAD_REQUEST") and "does not parse" in details, (method, status, details)


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(fc.TARGETS))
def test_thousands_of_hostile_inputs_per_reader(world, target):
    _check(fc.run_target(fc.TARGETS[target], world, SLOW_CASES, seed=1), SLOW_CASES)


@pytest.mark.slow
def test_thousands_of_hostile_messages_to_every_rpc(world, rpc):
    _check(fc.run_target(fc.target_rpc_requests, world, SLOW_CASES, seed=1, rpc=rpc), SLOW_CASES)
