"""Trains the client's expert MLP on its encoded private table, with or without DP-SGD (Opacus).

`train_expert(x, y, schema, config)` returns the plain `ExpertMLP` (eval mode, no Opacus hooks), the
`DPStatement` that describes the run, and the per-epoch training losses. With
`config.target_epsilon` set, training is DP-SGD with Poisson sampling through Opacus'
`PrivacyEngine.make_private_with_epsilon`; the statement records the noise multiplier, the sampling
rate and the number of optimizer steps actually taken, so anyone recomputes the same ε with
`protocol.dp.compute_epsilon`. DP-SGD runs in Opacus' ghost-clipping mode: the same flat per-sample
clipping and Gaussian noise as the classic hooks mode (identical results), without materialising
per-sample gradients. Runs are deterministic given `config.seed` (the global torch RNG is forked,
not changed). Small MLPs train fastest with `torch.set_num_threads(1)` on a busy CPU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from protocol.crashpoints import crashpoint
from protocol.dp import ACCOUNTANTS, DPStatement, compute_epsilon, no_privacy_statement, size_bucket
from protocol.encoding import FeatureEncoder
from protocol.errors import BudgetError
from protocol.expert_spec import ExpertMLP, ExpertSpec, build_expert
from protocol.schema import PublicSchema


@dataclass
class TrainConfig:
    """Hyper-parameters of one expert training run.

    target_epsilon: None trains without DP; a number trains with DP-SGD to at most that ε.
    target_delta: δ of the guarantee; default 1/(10 n). It must be below 1/n.
    batch_size: minibatch size; under DP the *expected* batch size of Poisson sampling
      (sample rate = 1 / ceil(n / batch_size)).
    Defaults suit non-private training; `TrainConfig.private(eps)` gives settings tuned for DP-SGD.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    target_epsilon: float | None = None
    target_delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    seed: int = 0

    @classmethod
    def private(cls, target_epsilon: float, **overrides) -> "TrainConfig":
        """DP-SGD settings that work on the bundled tables: expected batch 256, AdamW lr 5e-3, 30 epochs, clip 1."""
        base = cls(epochs=30, batch_size=256, lr=5e-3, target_epsilon=target_epsilon, max_grad_norm=1.0)
        return replace(base, **overrides)

    @property
    def is_private(self) -> bool:
        return self.target_epsilon is not None

    def resolved_delta(self, n: int) -> float:
        """The δ to train with for n records: `target_delta` or 1/(10 n); raises if not below 1/n."""
        delta = self.target_delta if self.target_delta is not None else 1.0 / (10 * n)
        if not (0 < delta < 1.0 / n):
            raise BudgetError(f"target_delta {delta:g} must be in (0, 1/n) = (0, {1.0 / n:g}) for n = {n} training records; use e.g. {1.0 / (10 * n):.3g}")
        return delta

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("lr", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"TrainConfig.accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if self.target_epsilon is not None and not (isinstance(self.target_epsilon, (int, float)) and math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise BudgetError(f"TrainConfig.target_epsilon must be a positive finite number (or None for no DP), got {self.target_epsilon!r}")


@dataclass
class TrainedExpert:
    """A trained expert (plain module, eval mode), its DP statement and per-epoch mean losses."""

    model: ExpertMLP
    dp: DPStatement
    history: list[float] = field(default_factory=list)

    @property
    def spec(self) -> ExpertSpec:
        return self.model.spec


def train_expert(x: np.ndarray, y: np.ndarray, schema: PublicSchema, config: TrainConfig, *, progress: bool = False) -> TrainedExpert:
    """Trains an `ExpertMLP` on encoded rows `x` (n, FeatureEncoder(schema).dim) and class indices `y`."""
    config.validate()
    x_t, y_t = _check_inputs(x, y, schema)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=schema.label.num_classes, schema_digest=schema.digest)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 400-200 MLP gains nothing from intra-op threads, and loses badly on a busy machine
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_expert(spec)
            if config.is_private:
                trained, dp, history = _train_private(model, x_t, y_t, config, progress)
            else:
                trained, dp, history = _train_plain(model, x_t, y_t, config, progress)
    finally:
        torch.set_num_threads(threads)
    clean = build_expert(spec)
    clean.load_state_dict({k: v.detach().clone() for k, v in trained.state_dict().items()})
    clean.eval()
    return TrainedExpert(model=clean, dp=dp, history=history)


def _check_inputs(x: np.ndarray, y: np.ndarray, schema: PublicSchema) -> tuple[torch.Tensor, torch.Tensor]:
    dim, k = FeatureEncoder(schema).dim, schema.label.num_classes
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape (n, {dim}) (the encoding of schema {schema.name!r}), got {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
    if len(x) < 2:
        raise ValueError("need at least 2 training records")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinity; encode the table with FeatureEncoder (missing values become indicators)")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y must hold class indices 0..{k - 1}")
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def _epochs(config: TrainConfig, progress: bool, desc: str):
    if progress:
        from protocol.progress import progress_bar   # a bar on a terminal, one line per epoch in a file or pipe

        return progress_bar(range(config.epochs), desc=desc, unit="epoch", min_interval_s=0.0)
    return range(config.epochs)


def _train_plain(model: ExpertMLP, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, progress: bool):
    n = len(x)
    bs = min(config.batch_size, n)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history, steps = [], 0
    model.train()
    bar = _epochs(config, progress, "expert")
    for _ in bar:
        perm = torch.randperm(n)
        total = 0.0
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            steps += 1
            total += loss.item() * len(idx)
        history.append(total / n)
        crashpoint("client.train_epoch")
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    dp = no_privacy_statement(sample_rate=min(1.0, bs / n), steps=steps, dataset_size=n, accountant=config.accountant)
    return model, dp, history


def _train_private(model: ExpertMLP, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, progress: bool):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = len(x)
    delta = config.resolved_delta(n)
    target = float(config.target_epsilon)
    loader = DataLoader(TensorDataset(x, y), batch_size=min(config.batch_size, n), shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; the simulator uses torch's seeded PRNG on purpose.
        warnings.filterwarnings("ignore", message=".*Secure RNG.*")
        engine = PrivacyEngine(accountant=config.accountant)
        # Ghost clipping: same mechanism as hooks mode, several times faster on CPU (see module doc).
        gs_model, dp_opt, criterion, dp_loader = engine.make_private_with_epsilon(
            module=model, optimizer=opt, data_loader=loader, criterion=nn.CrossEntropyLoss(),
            target_epsilon=target, target_delta=delta, epochs=config.epochs,
            max_grad_norm=config.max_grad_norm, poisson_sampling=True, grad_sample_mode="ghost",
        )
    sample_rate = float(dp_loader.sample_rate)
    noise = float(dp_opt.noise_multiplier)
    history, steps = [], 0
    gs_model.train()
    bar = _epochs(config, progress, f"expert (DP, eps<={target:g})")
    with warnings.catch_warnings():
        # Opacus' hooks on a model whose inputs need no gradient make torch warn on every step.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for _ in bar:
            total, seen = 0.0, 0
            for xb, yb in dp_loader:  # Poisson batches; an empty one is still a step the accountant counts
                dp_opt.zero_grad(set_to_none=True)
                loss = criterion(gs_model(xb), yb)
                loss.backward()
                dp_opt.step()
                steps += 1
                if len(xb) > 0:
                    total, seen = total + loss.item() * len(xb), seen + len(xb)
            history.append(total / max(seen, 1))
            crashpoint("client.train_epoch")
            if progress:
                bar.set_postfix(loss=f"{history[-1]:.4f}", eps=f"{engine.get_epsilon(delta):.2f}")
    accounted = sum(s for (_, _, s) in engine.accountant.history)
    if accounted != steps or any((nm, sr) != (noise, sample_rate) for (nm, sr, _) in engine.accountant.history):
        raise BudgetError(f"accountant history {engine.accountant.history} disagrees with the training loop ({steps} steps)")
    achieved = float(engine.get_epsilon(delta))
    if not achieved <= target:
        raise BudgetError(f"DP training spent epsilon {achieved:.4f} > target {target:g}; lower epochs or raise the batch size")
    recomputed = compute_epsilon(noise, sample_rate, steps, delta, config.accountant)
    if recomputed != achieved:
        raise BudgetError(f"epsilon recomputed from the run's parameters ({recomputed!r}) differs from the accountant's ({achieved!r})")
    dp = DPStatement(
        mechanism="dp-sgd", noise_multiplier=noise, sample_rate=sample_rate, steps=steps,
        max_grad_norm=float(config.max_grad_norm), accountant=config.accountant, epsilon=achieved, delta=delta,
        dataset_size_bucket=size_bucket(n),
    )
    return gs_model._module, dp, history


def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities (n, num_classes) of an expert on encoded rows, computed in eval mode."""
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x_t), batch_size):
            out.append(torch.softmax(model(x_t[start:start + batch_size]), dim=-1))
    model.train(was_training)
    if not out:
        return np.zeros((0, getattr(getattr(model, "spec", None), "num_classes", 0)), dtype=np.float32)
    return torch.cat(out).numpy()
