"""Federated experts: the clients of one schema train one expert with DP-FedAvg (client-level DP).

Flower does the federated part with its own pieces: `FedAvg` wrapped in
`DifferentialPrivacyServerSideFixedClipping` (each client's model update is clipped to `clip`, the
unweighted average gets Gaussian noise of `noise_multiplier × clip / clients`), accounted by Flower's
`RdpAccountant` (Google's dp-accounting underneath; every client in every round, no amplification by
sampling claimed, add-or-remove-one-client neighbours). The noise multiplier is calibrated so that
both Flower's accountant and the provider's recomputation (Opacus' RDP accountant over the same
Gaussian mechanism, `protocol.dp.recompute`) stay within the target ε after all rounds.

The final expert gets a client-level DP statement (mechanism `dp-fedavg`, steps = rounds, sample rate
= 1, size bucket = number of clients) and is signed by the federation's lead client and uploaded once,
through the same provider path as every other expert. Its ε protects a whole client (every record it
holds); an individual expert's ε protects one record of one client: the two never add up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from protocol.dp import DPStatement, compute_epsilon, quiet_largest_order, size_bucket


def flower_accountant(population: int, delta: float, max_epsilon: float | None = None) -> Any:
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=population, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=max_epsilon))


def flower_epsilon(noise_multiplier: float, rounds: int, population: int, delta: float) -> float:
    """ε of `rounds` DP-FedAvg releases over every one of `population` clients, by Flower's RDP accountant."""
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    acc = flower_accountant(population, delta)
    acc.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=population, population_size=population), rounds)
    return acc.get_epsilon(delta)


def calibrate_noise(target_epsilon: float, rounds: int, population: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1 %) whose ε after `rounds`, by both accountants, is within the target."""
    def eps(z: float) -> float:
        return max(flower_epsilon(z, rounds, population, delta), compute_epsilon(z, 1.0, rounds, delta))

    lo, hi = 1e-2, 1.0
    with quiet_largest_order():
        while eps(hi) > target_epsilon:
            lo, hi = hi, hi * 2
            if hi > 1e6:
                raise ValueError(f"no noise multiplier reaches ε {target_epsilon:g} in {rounds} rounds at δ {delta:g}")
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if eps(mid) <= target_epsilon else (mid, hi)
    return hi


class NodeSubset(Grid):
    """The run's grid seen through a subset of its nodes (one federation), so a Flower strategy samples only those."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]):
        self._grid, self._ids = grid, list(node_ids)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def dp_fedavg_strategy(noise_multiplier: float, clip: float, clients: int, accountant: Any) -> Any:
    """Flower's FedAvg (every client, equal weights) behind server-side fixed clipping and Gaussian noise, accounted.

    Its messages are plain `train` messages: the ClientApp's default `@app.train()` handler does a round."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients, weighted_by_key="weight")
    return DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=noise_multiplier, clipping_norm=clip, num_sampled_clients=clients,
                                                      accountant=accountant)


@dataclass
class FederatedResult:
    dataset: str
    clients: list[str]
    node_ids: list[int]
    rounds_planned: int
    rounds_released: int
    noise_multiplier: float
    clip: float
    delta: float
    target_epsilon: float
    flower_epsilon: float | None
    statement: DPStatement | None
    arrays: dict[str, Any] | None
    seconds: float
    train_loss: list[float] = field(default_factory=list)
    error: str | None = None


def initial_arrays(schema: Any, seed: int) -> ArrayRecord:
    """The federation's starting expert, drawn from a private generator (no global RNG)."""
    from protocol.expert_spec import build_expert
    from protocol.seeding import generator, init_parameters
    from simulations.flower.simulated_client import expert_spec_for

    model = init_parameters(build_expert(expert_spec_for(schema)), generator(seed))
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in model.state_dict().items()})


def train_federated(grid: Grid, dataset: str, node_ids: list[int], client_ids: list[str], schema: Any, *, target_epsilon: float, rounds: int,
                    clip: float, delta: float, local_epochs: int, lr: float, seed: int, timeout_s: float) -> FederatedResult:
    """Runs DP-FedAvg over `node_ids` and returns the final expert with its client-level DP statement."""
    import time

    n = len(node_ids)
    delta = delta or 1.0 / (10 * n)
    t0 = time.perf_counter()
    z = calibrate_noise(target_epsilon, rounds, n, delta)
    accountant = flower_accountant(n, delta, max_epsilon=target_epsilon * (1 + 1e-9))
    strategy = dp_fedavg_strategy(z, clip, n, accountant)
    res = FederatedResult(dataset, client_ids, node_ids, rounds, 0, z, clip, delta, target_epsilon, None, None, None, 0.0)
    try:
        result = strategy.start(grid=NodeSubset(grid, node_ids), initial_arrays=initial_arrays(schema, seed), num_rounds=rounds,
                                timeout=timeout_s, train_config=ConfigRecord({"local-epochs": local_epochs, "lr": lr, "seed": seed}))
    except Exception as e:  # noqa: BLE001 - the federation fails, the run goes on; the report names the reason
        res.error, res.seconds = f"DP-FedAvg stopped: {type(e).__name__}: {e}", time.perf_counter() - t0
        return res
    released = accountant.num_releases
    res.rounds_released, res.seconds = released, time.perf_counter() - t0
    res.train_loss = [float(m["train-loss"]) for _, m in sorted(result.train_metrics_clientapp.items()) if "train-loss" in m]
    if released == 0:
        res.error = "no DP-FedAvg round released an aggregate (a member failed in every round)"
        return res
    spent = strategy.privacy_spent()
    res.flower_epsilon = float(spent.epsilon)
    res.statement = DPStatement(mechanism="dp-fedavg", noise_multiplier=z, sample_rate=1.0, steps=released, max_grad_norm=clip, accountant="rdp",
                                epsilon=compute_epsilon(z, 1.0, released, delta), delta=delta, dataset_size_bucket=size_bucket(n))
    rec = result.arrays
    res.arrays = dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True))
    if not math.isfinite(res.statement.epsilon) or res.statement.epsilon > target_epsilon * (1 + 1e-6):
        res.error = f"client-level ε {res.statement.epsilon:.4g} exceeds the target {target_epsilon:g}"
    return res


__all__ = ["FederatedResult", "NodeSubset", "calibrate_noise", "dp_fedavg_strategy", "flower_accountant", "flower_epsilon", "train_federated"]
