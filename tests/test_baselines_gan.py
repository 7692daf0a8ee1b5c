"""The DP-CTGAN-style synthesizer: its DP-SGD accounting, valid rows, reproducibility, and what it learns without noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client_party.datasets import load_table, split_table, validate_table
from protocol.dp import compute_epsilon
from simulations.baselines.dp_gan import DPGAN, GANConfig

SMALL = GANConfig(steps=12, batch_size=64, hidden=32, noise_dim=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def titanic_train():
    df, schema = load_table("titanic")
    train, _ = split_table(df, schema, seed=0)
    return train, schema


def test_dp_gan_spends_at_most_its_epsilon_and_the_statement_recomputes(titanic_train):
    train, schema = titanic_train
    delta = 1 / (10 * len(train))
    res = DPGAN(schema, SMALL).fit_sample(train, 1.0, delta, n_rows=50, seed=0)
    st = res.statement.to_dict()
    assert st["synthesizer"] == "dp_gan" and st["mechanism"] == "dp-sgd" and st["steps"] == SMALL.steps
    assert 0.9 < st["epsilon"] <= 1.0 and st["delta"] == delta
    assert st["sample_rate"] == pytest.approx(1 / math.ceil(len(train) / SMALL.batch_size))
    assert compute_epsilon(st["noise_multiplier"], st["sample_rate"], st["steps"], delta, "rdp") == st["epsilon"]
    assert len(res.table) == 50 and validate_table(res.table, schema) == []


def test_dp_gan_is_reproducible_from_its_seed(titanic_train):
    train, schema = titanic_train
    a = DPGAN(schema, SMALL).fit_sample(train, 2.0, 1e-4, n_rows=40, seed=3).table
    b = DPGAN(schema, SMALL).fit_sample(train, 2.0, 1e-4, n_rows=40, seed=3).table
    c = DPGAN(schema, SMALL).fit_sample(train, 2.0, 1e-4, n_rows=40, seed=4).table
    assert a.equals(b) and not a.equals(c)


def test_with_negligible_noise_the_gan_learns_the_tables_main_relation(titanic_train):
    """A check of the GAN itself (ε huge): the survival rate of women and men apart, as in the data."""
    train, schema = titanic_train
    # clipping at 10 rather than 1: without noise, clipping every row at 1 biases the discriminator enough to stall the GAN
    res = DPGAN(schema, GANConfig(steps=600, max_grad_norm=10.0)).fit_sample(train, 1e5, 1e-4, n_rows=3000, seed=0)
    t = res.table
    rate = {s: (t[t.sex == s].survived == "yes").mean() for s in ("female", "male")}
    assert rate["female"] > rate["male"] + 0.2
    share = (t.survived == "yes").mean()
    assert abs(share - (train.survived == "yes").mean()) < 0.15
    assert np.isin(t.passengerClass, ["1st", "2nd", "3rd"]).all()
