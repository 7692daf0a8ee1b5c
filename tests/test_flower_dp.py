"""Client-level DP statements (DP-FedAvg): versioned JSON, recomputed ε, and Flower's accountant agreeing with the provider's."""

from __future__ import annotations

import json
import math

import pytest

from protocol.dp import DP_FORMAT, DP_FORMAT_V2, DPStatement, DPStatementError, compute_epsilon, size_bucket, verify_statement
from protocol.errors import BudgetError


def fedavg_statement(z: float = 1.2, rounds: int = 5, clients: int = 10, delta: float = 1e-2) -> DPStatement:
    eps = compute_epsilon(z, 1.0, rounds, delta)
    return DPStatement(mechanism="dp-fedavg", noise_multiplier=z, sample_rate=1.0, steps=rounds, max_grad_norm=0.5, accountant="rdp",
                       epsilon=eps, delta=delta, dataset_size_bucket=size_bucket(clients))


def test_a_client_level_statement_is_written_as_v2_and_names_its_unit():
    d = fedavg_statement().to_dict()
    assert d["format"] == DP_FORMAT_V2 and d["privacy_unit"] == "client"
    back = DPStatement.from_dict(json.loads(json.dumps(d)))
    assert back == fedavg_statement() and back.privacy_unit == "client" and back.is_private


def test_record_level_statements_keep_the_v1_bytes():
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0, accountant="rdp",
                     epsilon=compute_epsilon(1.0, 0.01, 100, 1e-5), delta=1e-5, dataset_size_bucket="1k-2k")
    d = dp.to_dict()
    assert d["format"] == DP_FORMAT and "privacy_unit" not in d and dp.privacy_unit == "record"
    assert set(d) == {"format", "mechanism", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "accountant", "epsilon",
                      "delta", "dataset_size_bucket"}


def test_the_provider_recomputes_a_client_level_epsilon_and_refuses_an_understated_one():
    dp = fedavg_statement()
    assert verify_statement(dp) == pytest.approx(dp.epsilon)
    d = dp.to_dict()
    d["epsilon"] = dp.epsilon / 2
    with pytest.raises(BudgetError, match="claims epsilon"):
        verify_statement(DPStatement.from_dict(d))


def test_client_level_delta_must_be_below_one_over_the_number_of_clients():
    with pytest.raises(BudgetError, match="federation of 8-16 clients"):
        verify_statement(fedavg_statement(clients=10, delta=0.2))


@pytest.mark.parametrize("change, rule", [
    ({"format": DP_FORMAT}, "needs 'format'"),                      # a client-level statement dressed as v1
    ({"privacy_unit": "record"}, "does not match mechanism"),       # the wrong unit
    ({"format": "llamdex.dp-statement/v9"}, "this version reads"),  # an unknown version
])
def test_malformed_client_level_statements_are_refused_with_the_rule(change, rule):
    d = {**fedavg_statement().to_dict(), **change}
    if d["format"] == DP_FORMAT:
        d.pop("privacy_unit")
    with pytest.raises(DPStatementError, match=rule):
        DPStatement.from_dict(d)


def test_flowers_accountant_and_the_providers_recomputation_agree():
    """The orchestrator accounts DP-FedAvg with Flower's RDP accountant (dp-accounting); the provider recomputes
    the statement with Opacus' RDP accountant. Same mechanism, different order grids: they agree closely."""
    from simulations.flower.federated import flower_epsilon

    z, rounds, delta = 1.2, 5, 1e-2
    flower = flower_epsilon(z, rounds, population=10, delta=delta)
    assert math.isclose(flower, compute_epsilon(z, 1.0, rounds, delta), rel_tol=0.02)
