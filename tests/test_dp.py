"""DP accounting and expert training: ε recomputes exactly, tampered claims are refused, budgets are met."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from client_party.datasets import encode_table, load_table, split_table
from client_party.expert_training import TrainConfig, TrainedExpert, predict_proba, train_expert
from protocol.dp import (
    DPStatement, DPStatementError, bucket_bounds, compute_epsilon, recompute, size_bucket, verify_statement,
)
from protocol.errors import BudgetError
from protocol.expert_spec import ExpertMLP, load_expert, save_expert


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small MLPs train fastest on one thread, and much faster when another job shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def titanic():
    df, schema = load_table("titanic")
    train, test = split_table(df, schema, seed=0)
    (xtr, ytr), (xte, yte) = encode_table(train, schema), encode_table(test, schema)
    return schema, xtr, ytr, xte, yte


@pytest.fixture(scope="module")
def private_experts(titanic):
    schema, xtr, ytr, _, _ = titanic
    return {eps: train_expert(xtr, ytr, schema, TrainConfig.private(eps)) for eps in (1.0, 4.0)}


def accuracy(model, x, y) -> float:
    return float((predict_proba(model, x).argmax(axis=1) == y).mean())


def genuine() -> DPStatement:
    eps = compute_epsilon(1.1, 0.01, 1000, 1e-5)
    return DPStatement("dp-sgd", 1.1, 0.01, 1000, 1.0, "rdp", eps, 1e-5, size_bucket(5000))


# --- accounting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_compute_epsilon_agrees_with_opacus_stepping(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(300):
        acc.step(noise_multiplier=1.3, sample_rate=0.02)
    assert compute_epsilon(1.3, 0.02, 300, 1e-5, accountant) == acc.get_epsilon(delta=1e-5)


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    assert compute_epsilon(1.0, 0.01, 2000, 1e-5) > compute_epsilon(1.0, 0.01, 1000, 1e-5)
    assert compute_epsilon(2.0, 0.01, 1000, 1e-5) < compute_epsilon(1.0, 0.01, 1000, 1e-5)


@pytest.mark.parametrize("n, bucket", [(1, "1-2"), (300, "256-512"), (512, "512-1k"), (999, "512-1k"), (1047, "1k-2k"), (8000, "8k-16k"), (10**6, "1M-2M"), (999_999, "512k-1M")])
def test_size_bucket_hides_the_exact_size(n, bucket):
    assert size_bucket(n) == bucket
    lo, hi = bucket_bounds(bucket)
    assert lo <= n < hi


def test_verify_accepts_a_genuine_statement_and_refuses_a_tampered_epsilon():
    stmt = genuine()
    assert verify_statement(stmt) == pytest.approx(stmt.epsilon)
    tampered = DPStatement(**{**stmt.__dict__, "epsilon": stmt.epsilon / 2})
    with pytest.raises(BudgetError, match="claims epsilon .* give"):
        verify_statement(tampered)
    object.__setattr__(tampered, "epsilon", math.inf)  # bypassing construction-time checks
    with pytest.raises(BudgetError, match="epsilon"):
        verify_statement(tampered)


def test_verify_refuses_delta_not_below_one_over_n():
    stmt = genuine()
    bad = DPStatement(**{**stmt.__dict__, "delta": 2e-3, "dataset_size_bucket": "1k-2k"})
    bad = DPStatement(**{**bad.__dict__, "epsilon": recompute(bad)})
    with pytest.raises(BudgetError, match="delta .* not below 1/n"):
        verify_statement(bad)


def test_statement_json_round_trip_and_no_privacy_as_null():
    stmt = genuine()
    assert DPStatement.from_dict(json.loads(json.dumps(stmt.to_dict()))) == stmt
    none = DPStatement("none", 0.0, 0.05, 100, 0.0, "rdp", math.inf, 0.0, "1k-2k")
    d = none.to_dict()
    assert d["epsilon"] is None and json.loads(json.dumps(d, allow_nan=False))["epsilon"] is None
    assert DPStatement.from_dict(d) == none and recompute(none) == math.inf and verify_statement(none) == math.inf


@pytest.mark.parametrize(
    "change, field",
    [
        ({"mechanism": "laplace"}, "mechanism"),
        ({"accountant": "gdp"}, "accountant"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": 10.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"epsilon": None}, "epsilon"),
        ({"epsilon": "1.0"}, "epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"dataset_size_bucket": "about 5000"}, "dataset_size_bucket"),
        ({"dataset_size_bucket": "3k-6k"}, "dataset_size_bucket"),
        ({"format": "llamdex.dp-statement/v0"}, "format"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_statement_names_the_field(change, field):
    d = {**genuine().to_dict(), **change}
    with pytest.raises(DPStatementError, match=field):
        DPStatement.from_dict(d)


def test_statement_with_a_missing_field_is_refused():
    d = genuine().to_dict()
    del d["steps"]
    with pytest.raises(DPStatementError, match="missing fields \\['steps'\\]"):
        DPStatement.from_dict(d)


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_dp_training_meets_the_target_and_recomputes_exactly(private_experts, titanic, target):
    schema, xtr, ytr, xte, yte = titanic
    trained = private_experts[target]
    dp = trained.dp
    assert dp.mechanism == "dp-sgd" and dp.epsilon <= target
    assert dp.epsilon > 0.9 * target  # the budget is used, not wasted
    assert dp.delta == pytest.approx(1 / (10 * len(xtr))) and dp.dataset_size_bucket == "1k-2k"
    assert compute_epsilon(dp.noise_multiplier, dp.sample_rate, dp.steps, dp.delta) == dp.epsilon
    assert verify_statement(DPStatement.from_dict(json.loads(json.dumps(dp.to_dict())))) == dp.epsilon
    assert dp.steps == 30 * round(1 / dp.sample_rate)
    majority = max(yte.mean(), 1 - yte.mean())
    assert accuracy(trained.model, xte, yte) > majority + 0.05


def test_trained_expert_is_a_plain_module_that_saves_and_loads(private_experts, titanic, tmp_path):
    schema, _, _, xte, _ = titanic
    model = private_experts[1.0].model
    assert type(model) is ExpertMLP and not model.training
    assert model.spec.schema_digest == schema.digest and model.spec.num_classes == 2
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    save_expert(model, tmp_path)
    np.testing.assert_allclose(predict_proba(load_expert(tmp_path), xte), predict_proba(model, xte), rtol=1e-6)


def test_delta_must_be_below_one_over_n(titanic):
    schema, xtr, ytr, _, _ = titanic
    with pytest.raises(BudgetError, match="target_delta .* must be in \\(0, 1/n\\)"):
        train_expert(xtr, ytr, schema, TrainConfig.private(1.0, target_delta=1 / len(xtr)))


def test_non_private_training_beats_the_majority_class(titanic):
    schema, xtr, ytr, xte, yte = titanic
    trained = train_expert(xtr, ytr, schema, TrainConfig(epochs=15))
    assert isinstance(trained, TrainedExpert) and len(trained.history) == 15
    assert trained.dp.mechanism == "none" and trained.dp.epsilon == math.inf
    assert trained.history[-1] < trained.history[0]
    majority = max(yte.mean(), 1 - yte.mean())
    assert accuracy(trained.model, xte, yte) > majority + 0.1


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_training_is_deterministic_given_the_seed(titanic):
    schema, xtr, ytr, _, _ = titanic
    runs = [train_expert(xtr, ytr, schema, TrainConfig.private(2.0, epochs=3, seed=s)) for s in (7, 7, 8)]
    same = [torch.equal(a, b) for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values())]
    assert all(same)
    differs = [torch.equal(a, b) for a, b in zip(runs[0].model.state_dict().values(), runs[2].model.state_dict().values())]
    assert not all(differs)


def test_inputs_that_do_not_match_the_schema_are_refused(titanic):
    schema, xtr, ytr, _, _ = titanic
    with pytest.raises(ValueError, match="shape"):
        train_expert(xtr[:, :-1], ytr, schema, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="class indices"):
        train_expert(xtr, ytr + 5, schema, TrainConfig(epochs=1))
    with pytest.raises(BudgetError, match="target_epsilon"):
        train_expert(xtr, ytr, schema, TrainConfig(target_epsilon=-1.0))
