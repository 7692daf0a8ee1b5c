"""Trains the client's expert MLP on its encoded private table, with or without DP-SGD (Opacus).

`train_expert(x, y, schema, config)` returns the plain `ExpertMLP` (eval mode, no Opacus hooks), the
`DPStatement` that describes the run, and the per-epoch training losses.

**Without DP** the client may look at its data freely: a stratified validation split of the
training records (`validation_fraction`) stops training at the epoch of lowest validation loss
(`patience` epochs without improvement end it), and the best weights are kept. The label prior is
counted exactly.

**With DP** (`config.target_epsilon` set) training is DP-SGD with Poisson sampling through Opacus
(ghost clipping: the same flat per-sample clipping and Gaussian noise as the hooks mode, without
materialising per-sample gradients). The run has three phases that are all steps of *one* DP-SGD
mechanism (same noise multiplier, sampling rate and clipping norm, counted by the same accountant,
so the statement (σ, q, steps, C) and its ε are unchanged):

0. *count* (the first `prior_fraction` of the steps, at least min(20, an eighth)): the counter of
   the calibration below alone, on the untrained expert; its noisy class counts set the head's bias
   to the log label prior before fitting. Why: under clipping every record pulls with the same
   weight, and with Adam every parameter moves about `lr` per step, so on an imbalanced table a head
   started at bias 0 spends the whole run lowering the minority logit along the features' mean
   (measured: a DP logistic regression on ISLR Default ranked defaulters *below* non-defaulters,
   AUC 0.27, while its non-DP twin reached 0.96); started at the prior, the first steps already
   follow the difference between the classes;
1. *fit*: the expert minimises cross-entropy;
2. *calibrate* (the last `calibration_fraction` of the steps, at least min(40, a quarter)): the
   expert is frozen; each record's "gradient" is its one-hot label on a counter (so the released
   noisy sums add up to the class counts, from which the label prior is estimated) and the gradient
   of cross-entropy of softmax(f(x) + b) on a logit shift `b`. Their norm is bounded and the loss
   scaled so that they never reach the clipping norm: clipping, which under DP-SGD makes every
   record vote with the same weight and so drags an imbalanced model toward the majority class
   (class weights in the loss change almost nothing there), cannot distort this phase.

**Decision rule** (`decision`): "balanced" (default) folds `b − log prior` (DP) or `−log prior` (no DP)
into the head's bias, so the expert's argmax maximises *balanced* accuracy (Bayes rule for equal
class priors); "calibrated" folds in `b` only (DP) and keeps the data's prior, maximising plain
accuracy. The default DP hyper-parameters (`TrainConfig.private`) were chosen on data synthesized
from schemas alone (`python -m simulations.benchmarks.dp_recipe`), never on a private table.

**Randomness**: parameter initialisation and (without DP) the validation split and data order
come from private generators seeded with `config.seed`, so non-DP runs are reproducible; torch's
global generator is never reseeded. DP-SGD's Gaussian noise and its Poisson sampling come from
generators seeded from the operating system's entropy (`os.urandom`), and the noise is drawn in
Opacus' floating-point-safe way (`secure_mode`): a public seed would let anyone subtract the noise.
Only audits and simulations whose model is never released pass `dp_seed`, so that the same run
(and a test's verdict on it) can be replayed noise for noise; such a model is marked
(`protocol.expert_spec.block_release`) and `save_expert`, hence every artifact, refuses it.

**Audits**: a `DPStepObserver` (see `simulations.attacks.gradient_canary`) may watch every step
of the fit phase between clipping and noise, the white-box access that gradient-canary audits
need; `replay=` re-runs a DP statement's exact mechanism (σ, q, steps, C) on given records.
Small MLPs train fastest with `torch.set_num_threads(1)` on a busy CPU.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import nn

from protocol.crashpoints import crashpoint
from protocol.dp import (
    ACCOUNTANTS, DPStatement, compute_epsilon, no_privacy_statement, noise_for_epsilon, quiet_largest_order, rdp_bound_at_largest_order, size_bucket,
)
from protocol.encoding import FeatureEncoder
from protocol.errors import BudgetError, TooFewRecordsError
from protocol.expert_spec import MAX_BINS, ExpertSpec, block_release, build_expert, load_expert_state
from protocol.schema import PublicSchema
from protocol.seeding import generator, init_parameters

DECISIONS = ("balanced", "calibrated")


@dataclass
class TrainConfig:
    """Hyper-parameters of one expert training run.

    target_epsilon: None trains without DP; a number trains with DP-SGD to at most that ε.
    target_delta: δ of the guarantee; default 1/(10 n). It must be below 1/n.
    batch_size: minibatch size; under DP the *expected* batch size of Poisson sampling
      (sample rate = 1 / ceil(n / batch_size)). None: the DP recipe's rule `dp_batch_size(n)`.
    epochs: without DP the most epochs (early stopping usually ends sooner); with DP all of them.
    decision: "balanced" (argmax maximises balanced accuracy) or "calibrated" (plain accuracy).
    Defaults suit non-private training; `TrainConfig.private(eps)` gives the DP-SGD recipe.
    """

    epochs: int = 100
    batch_size: int | None = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    target_epsilon: float | None = None
    target_delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    seed: int = 0
    decision: str = "balanced"
    validation_fraction: float = 0.15     # no DP: held out for early stopping
    patience: int = 8                     # no DP: epochs without a better validation loss before stopping
    early_stopping: bool = True           # no DP: False trains every epoch on every record (e.g. a deliberately overfit expert)
    calibration_fraction: float = 0.1     # DP: share of the DP-SGD steps spent on the output calibration
    calibration_lr: float = 0.1           # DP: Adam's least learning rate of the calibration (decays linearly to 0)
    prior_fraction: float = 0.05          # DP: share of the steps that count the labels first (the head's initial bias)
    numeric_bins: int = 0                 # >0: numeric inputs also enter as that many piecewise-linear bins (expert spec v2)

    @classmethod
    def private(cls, target_epsilon: float, **overrides) -> TrainConfig:
        """The DP-SGD recipe, chosen on tasks synthesized from the schemas alone (candidate `q1/4-e60-lr5e-3` of
        `python -m simulations.benchmarks.dp_recipe study`, docs/results/dp_recipe.json): expected batch
        `dp_batch_size(n)` (sampling rate 1/4 or 1/5, lower above 4096 records), 60 epochs, AdamW lr 5e-3, clipping norm 1, and the
        calibration on the last 10 % of the steps (at least min(40, a quarter)).

        The DP expert also reads its numeric inputs through 16 piecewise-linear bins over the public
        range (expert spec v2), chosen on public tables that are not among the four evaluated
        (`python -m simulations.benchmarks.dp_recipe encoding`, docs/results/dp_encoding.json): +6.8
        points of balanced accuracy there on average at ε = 1 and 4. The non-DP recipe keeps v1
        (+0.3 points there: within noise, and its measured figures stand)."""
        base = cls(epochs=60, batch_size=None, lr=5e-3, target_epsilon=target_epsilon, max_grad_norm=1.0, numeric_bins=DP_NUMERIC_BINS)
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

    def resolved_batch_size(self, n: int) -> int:
        """The (expected) batch size for n records: `batch_size`, or the DP rule when it is None."""
        return min(n, self.batch_size if self.batch_size is not None else dp_batch_size(n))

    def validate(self) -> None:
        for name in ("epochs", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"TrainConfig.batch_size must be a positive integer or None (the DP rule), got {self.batch_size!r}")
        for name in ("lr", "max_grad_norm", "calibration_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name, hi in (("validation_fraction", 0.5), ("calibration_fraction", 0.5), ("prior_fraction", 0.25)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= hi):
                raise ValueError(f"TrainConfig.{name} must be in (0, {hi}], got {v!r}")
        if self.numeric_bins != 0 and (isinstance(self.numeric_bins, bool) or not isinstance(self.numeric_bins, int)
                                       or not 2 <= self.numeric_bins <= MAX_BINS):
            raise ValueError(f"TrainConfig.numeric_bins must be 0 (no bins) or an integer in 2..{MAX_BINS}, got {self.numeric_bins!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"TrainConfig.decision must be one of {list(DECISIONS)}, got {self.decision!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"TrainConfig.accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}")
        if self.target_epsilon is not None and not (isinstance(self.target_epsilon, (int, float)) and math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise BudgetError(f"TrainConfig.target_epsilon must be a positive finite number (or None for no DP), got {self.target_epsilon!r}")
        if self.target_epsilon is not None and self.target_epsilon > MAX_TARGET_EPSILON:
            raise BudgetError(f"target ε {self.target_epsilon:g} is above {MAX_TARGET_EPSILON:g}, where DP-SGD's noise is nil and the guarantee "
                              "means nothing (and the noise calibration loses its precision); train without DP instead (omit --epsilon)")


# Above this target the calibrated noise multiplier is below 1e-5: no privacy, and the accountant's search loses precision
# (a target of 1e30 never returned). The DP studies go up to 1e4.
MAX_TARGET_EPSILON = 1e6

DP_NUMERIC_BINS = 16


def dp_batch_size(n: int) -> int:
    """Expected DP-SGD batch size for n training records: n/4, at least 64 and at most 1024.

    Large batches raise the signal against the noise added once per step; a sampling rate near 1/4
    keeps the steps few, which the study on schema-synthetic tasks found as good as any smaller rate
    and cheapest (see `TrainConfig.private`). The rate is 1 / ceil(n / batch): 1/4 or 1/5 up to 4096
    records (churn 1/4, titanic and credit 1/5: 240 or 300 steps at 60 epochs), lower once the cap
    binds (Default, 8000 records: 1/8, 480 steps)."""
    return int(max(64, min(1024, n // 4)))


@dataclass
class TrainedExpert:
    """A trained expert (plain module, eval mode), its DP statement and per-epoch mean losses.

    `calibration` holds what the decision rule used: the log label prior and (DP) the logit shift `b`
    and the noisy class counts, as lists over classes; `epochs_run` the epochs actually trained (no DP: early stopping)."""

    model: nn.Module
    dp: DPStatement
    history: list[float] = field(default_factory=list)
    calibration: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0

    @property
    def spec(self) -> ExpertSpec:
        return self.model.spec

    def as_received(self) -> nn.Module:
        """The expert as the provider rebuilds it from its spec and tensors alone (no client code), on copies of
        the tensors: what evaluations put behind the connectors, so they measure the uploaded model."""
        return load_expert_state(self.spec, {k: v.clone() for k, v in self.model.state_dict().items()})


class DPStepObserver(Protocol):
    """White-box access to DP-SGD for auditors (gradient canaries, Nasr et al. 2023).

    `attach` is called once with the trained parameters, the Poisson sampling rate, the clipping
    norm C (0 without clipping) and the *claimed* noise multiplier; then, at every optimizer step,
    `before_noise(grads)` with the per-parameter sums of the clipped per-sample gradients (it may add
    to them in place: a canary's clipped gradient) and `after_noise(grads)` with the same sums after
    the Gaussian noise was added. Without DP both calls see the step's gradient (no clipping, no noise)."""

    def attach(self, params: list[torch.Tensor], *, sample_rate: float, max_grad_norm: float, noise_multiplier: float,
               expected_batch_size: float) -> None: ...

    def before_noise(self, grads: list[torch.Tensor]) -> None: ...

    def after_noise(self, grads: list[torch.Tensor]) -> None: ...


def train_expert(x: np.ndarray, y: np.ndarray, schema: PublicSchema, config: TrainConfig, *, progress: bool = False,
                 observer: DPStepObserver | None = None, replay: DPStatement | None = None,
                 dp_seed: int | None = None) -> TrainedExpert:
    """Trains an `ExpertMLP` on encoded rows `x` (n, FeatureEncoder(schema).dim) and class indices `y`.

    `observer`: see `DPStepObserver`. `replay`: a dp-sgd statement whose noise multiplier, sampling
    rate, steps, clipping norm, δ and accountant are used instead of the config's target ε, batch
    size and epochs (the learning rates and the decision rule still come from `config`). `dp_seed`: see
    `dp_generator`; never for an expert that will be uploaded."""
    x_t, y_t = _check_inputs(x, y, schema)
    spec = expert_spec(schema, config.numeric_bins)
    trained = train_classifier(build_expert(spec), x_t, y_t, config, progress=progress, observer=observer, replay=replay,
                               dp_seed=dp_seed)
    clean = build_expert(spec)
    clean.load_state_dict({k: v.detach().clone() for k, v in trained.model.state_dict().items()})
    clean.eval()
    if getattr(trained.model, "release_blocker", None):
        block_release(clean, trained.model.release_blocker)
    return replace(trained, model=clean)


def config_digest(**configs: TrainConfig) -> str:
    """A short digest of named training configs: a cached or resumed result is reused only under the same recipe."""
    import hashlib
    import json
    from dataclasses import asdict

    blob = {name: asdict(c) for name, c in configs.items()}
    return "sha256:" + hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_recipe_digest() -> str:
    """Digest of the client's default recipes (non-DP and DP at ε = 1): results that depend on the expert
    (benchmark units that resume) are remeasured when it changes."""
    return config_digest(no_dp=TrainConfig(), dp=TrainConfig.private(1.0))


def expert_spec(schema: PublicSchema, numeric_bins: int = 0) -> ExpertSpec:
    """The expert architecture for `schema`: the default MLP, with `numeric_bins` bins of every numeric input."""
    fe = FeatureEncoder(schema)
    return ExpertSpec.binned(fe.dim, schema.label.num_classes, fe.numeric_positions, numeric_bins, schema_digest=schema.digest)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *, progress: bool = False,
                     observer: DPStepObserver | None = None, replay: DPStatement | None = None,
                     dp_seed: int | None = None) -> TrainedExpert:
    """The recipe of `train_expert` on any classifier whose last layer is a Linear named `head` (the
    decision rule is folded into its bias), e.g. a logistic regression as a DP baseline. Parameters
    are re-drawn from a generator seeded with `config.seed`; inputs are checked by the caller."""
    if replay is not None:
        if not replay.is_private:
            raise ValueError("replay needs a dp-sgd statement; a statement of mechanism 'none' has no mechanism to replay")
        config = replace(config, target_epsilon=float(replay.epsilon), max_grad_norm=float(replay.max_grad_norm), accountant=replay.accountant)
    config.validate()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 400-200 MLP gains nothing from intra-op threads, and loses badly on a busy machine
    try:
        model = init_parameters(model, generator(config.seed))
        if config.is_private:
            result = _train_private(model, x, y, config, progress, observer, replay, dp_seed)
        else:
            result = _train_plain(model, x, y, config, progress, observer)
    finally:
        torch.set_num_threads(threads)
    trained, dp, history, calibration, epochs_run = result
    trained.eval()
    if config.is_private and dp_seed is not None:
        block_release(trained, f"its DP-SGD noise and sampling were drawn from the public seed dp_seed={dp_seed}")
    return TrainedExpert(model=trained, dp=dp, history=history, calibration=calibration, epochs_run=epochs_run)


def _check_inputs(x: np.ndarray, y: np.ndarray, schema: PublicSchema) -> tuple[torch.Tensor, torch.Tensor]:
    dim, k = FeatureEncoder(schema).dim, schema.label.num_classes
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape (n, {dim}) (the encoding of schema {schema.name!r}), got {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
    if len(x) < 2:
        raise TooFewRecordsError(f"need at least 2 training records, got {len(x)}: the table is too small to train an expert on "
                                 "(what is left of it after the held-out split)")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinity; encode the table with FeatureEncoder (missing values become indicators)")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y must hold class indices 0..{k - 1}")
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def secret_generator() -> torch.Generator:
    """A torch generator seeded from the operating system's entropy, for DP noise and sampling."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def dp_generator(dp_seed: int | None, stream: int) -> torch.Generator:
    """The generator of one DP randomness stream (0: Poisson sampling, 1: noise): secret unless `dp_seed`
    is given, which only an audit or simulation whose model is never released may do."""
    if dp_seed is None:
        return secret_generator()
    return torch.Generator().manual_seed(int(np.random.SeedSequence([dp_seed, stream]).generate_state(1, np.uint64)[0] >> 1))


def _bar(total: int, progress: bool, desc: str, unit: str):
    if not progress:
        return None
    from protocol.progress import progress_bar   # a bar on a terminal, one line per update in a file or pipe

    return progress_bar(total=total, desc=desc, unit=unit, min_interval_s=0.0 if unit == "epoch" else 1.0)


# --- without DP ------------------------------------------------------------------------------------


def validation_split(y: np.ndarray, fraction: float, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices, stratified by class; a class with a single record stays in fit."""
    fit, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        k = int(round(fraction * len(idx))) if len(idx) >= 2 else 0
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        val.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _train_plain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, progress: bool, observer: DPStepObserver | None):
    gen = generator(config.seed + 1)
    if config.early_stopping:
        fit, val = validation_split(y.numpy(), config.validation_fraction, gen)
    else:
        fit, val = np.arange(len(y)), np.zeros(0, dtype=np.int64)
    xf, yf, xv, yv = x[fit], y[fit], x[val], y[val]
    n = len(xf)
    bs = config.resolved_batch_size(n)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    if observer is not None:
        observer.attach(params, sample_rate=min(1.0, bs / n), max_grad_norm=0.0, noise_multiplier=0.0, expected_batch_size=bs)
    history, steps, best, best_state, best_epoch, stale = [], 0, math.inf, None, 0, 0
    bar = _bar(config.epochs, progress, "expert", "epoch")
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xf[idx]), yf[idx])
            loss.backward()
            if observer is not None:
                grads = [p.grad for p in params]
                observer.before_noise(grads)
                observer.after_noise(grads)
            opt.step()
            steps += 1
            total += loss.item() * len(idx)
        history.append(total / n)
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(xv), yv)) if len(xv) else history[-1]
        if not config.early_stopping:
            best_epoch, best_state = epoch + 1, None
        elif val_loss < best - 1e-6:
            best, best_epoch, stale = val_loss, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        crashpoint("client.train_epoch")
        if bar is not None:   # the postfix first: a line per update in a file or pipe carries this epoch's loss
            bar.set_postfix(loss=f"{history[-1]:.4f}", val=f"{val_loss:.4f}", best_epoch=best_epoch)
            bar.update(1)
        if config.early_stopping and stale >= config.patience:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    counts = np.bincount(y.numpy(), minlength=model.head.out_features).astype(np.float64)
    log_prior = np.log(np.maximum(counts, 0.5) / counts.sum())
    calibration = {"log_prior": log_prior.tolist()}
    if config.decision == "balanced":
        lift, calibration["bounded_classes"] = balancing_log_prior(torch.as_tensor(log_prior), torch.as_tensor(counts), 0.0)
        with torch.no_grad():
            model.head.bias -= lift.to(model.head.bias.dtype)
    dp = no_privacy_statement(sample_rate=min(1.0, bs / n), steps=steps, dataset_size=len(x), accountant=config.accountant)
    return model, dp, history, calibration, best_epoch


# --- with DP ---------------------------------------------------------------------------------------


class _Calibrator(nn.Module):
    """The calibration phase's parameters: a label counter and a logit shift `b`.

    Input (B, 2K): the frozen expert's logits z and the one-hot label. Output (B, 1 + K): the counter's
    reading w · onehot(y) and z + b. Both layers are nn.Linear (on the one-hot label, on a constant 1)
    so that Opacus computes their per-sample gradients like any other layer's."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.k = num_classes
        self.counter = nn.Linear(num_classes, 1, bias=False)
        self.shift = nn.Linear(1, num_classes, bias=False)
        nn.init.zeros_(self.counter.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, zy: torch.Tensor) -> torch.Tensor:
        z, onehot = zy[:, :self.k], zy[:, self.k:]
        return torch.cat([self.counter(onehot), z + self.shift(zy.new_ones(len(zy), 1))], dim=1)


def _calibration_loss(out: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean over the batch of −counter reading + CE(z + b, y), times `scale`.

    A record's gradient is −scale·onehot(y) on the counter (norm exactly `scale`) and
    scale·(softmax(z + b) − onehot(y)) on the shift (norm <= √2·scale): at most √3·scale in all."""
    if len(y) == 0:
        return out.sum() * 0.0
    ce = nn.functional.cross_entropy(out[:, 1:], y, reduction="none")
    return scale * (ce - out[:, 0]).mean()


def _batch_size_for(n: int, sample_rate: float) -> int:
    """A batch size whose Opacus sampling rate 1 / ceil(n / B) equals `sample_rate` (to replay a statement)."""
    k = round(1.0 / sample_rate)
    for b in sorted(range(1, n + 1), key=lambda b: abs(b - n / k)):
        if math.ceil(n / b) == k and 1.0 / k == sample_rate:
            return b
    raise ValueError(f"no batch size gives the sampling rate {sample_rate!r} on {n} records (Opacus uses 1/ceil(n/B)); "
                     "replay the statement on the same number of records it was trained on")


def calibration_steps(total_steps: int, fraction: float) -> int:
    """DP-SGD steps spent on the calibration: `fraction` of them, but at least min(40, a quarter)."""
    if total_steps < 2:
        return 0
    return int(min(total_steps - 1, max(round(fraction * total_steps), min(40, total_steps // 4))))


def prior_steps(total_steps: int, fraction: float, calib_steps: int) -> int:
    """DP-SGD steps that count the labels before the fit: `fraction` of them, but at least min(20, an
    eighth); none when the run is too short to leave a fit step beside the `calib_steps` of the calibration."""
    k = int(max(round(fraction * total_steps), min(20, total_steps // 8)))
    return k if total_steps - calib_steps - k >= 1 else 0


def _log_prior(counts: torch.Tensor) -> torch.Tensor:
    """Log label prior from noisy class counts (each at least 1, so no class gets probability 0)."""
    prior = counts.clamp(min=1.0)
    return torch.log(prior / prior.sum())


def balancing_log_prior(log_prior: torch.Tensor, counts: torch.Tensor, count_noise_std: float) -> tuple[torch.Tensor, list[int]]:
    """The log prior the balanced decision rule divides by, and the classes whose lift it bounds.

    Dividing by the prior lifts a class by -log p. For a class the schema names but the table never shows (a public
    outcome absent from this client's records, a skewed federated partition) p is its count's floor, and the lift
    is so large that the expert answers that class for every record (measured: accuracy 0.000 in 3 of 6 DP runs on
    a two-class table with a third, empty class). So:
    - with DP, no count is taken below the standard deviation of its noise (`count_noise_std`): a noisy count
      there cannot be told from an empty class, and its lift stays at most log(total/σ). Counts above it, every
      class of the registered tables at ε ≥ 0.5, are unchanged. Post-processing of the released noisy counts;
    - without DP the counts are exact, and a class with no record gets the commonest class's prior: no more lift
      than any class the data holds."""
    if count_noise_std > 0:
        floored = torch.maximum(counts, torch.full_like(counts, count_noise_std))
        bounded = [int(i) for i in torch.nonzero(counts < count_noise_std).flatten()]
        return (_log_prior(floored) if bounded else log_prior), bounded
    empty = counts <= 0
    if bool(empty.all()) or not bool(empty.any()):
        return log_prior, []
    out = log_prior.clone()
    out[empty] = log_prior[~empty].max()
    return out, [int(i) for i in torch.nonzero(empty).flatten()]


def _endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


def _train_private(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, progress: bool,
                   observer: DPStepObserver | None, replay: DPStatement | None, dp_seed: int | None = None):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    n = len(x)
    if replay is not None:
        delta, noise, total_steps = float(replay.delta), float(replay.noise_multiplier), int(replay.steps)
        bs = _batch_size_for(n, float(replay.sample_rate))
    else:
        delta = config.resolved_delta(n)
        bs = config.resolved_batch_size(n)
        total_steps = config.epochs * math.ceil(n / bs)
        try:
            noise = noise_for_epsilon(config.target_epsilon, delta, 1.0 / math.ceil(n / bs), total_steps, config.accountant)
        except ValueError as e:   # Opacus: "The privacy budget is too low." (no noise multiplier reaches the target)
            raise BudgetError(f"no DP-SGD noise reaches ε {config.target_epsilon:g} at δ {delta:.3g} in {total_steps} steps over {n} records "
                              f"({e}); raise --epsilon, or train on more records") from None
    clip = float(config.max_grad_norm)
    loader = DataLoader(TensorDataset(x, y), batch_size=bs, generator=dp_generator(dp_seed, 0))   # Poisson sampling draws from it
    noise_gen = dp_generator(dp_seed, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off: its secure mode needs torchcsprng, which no current torch has; the
        # noise and sampling generators above are seeded from os.urandom and the noise is drawn the secure way below.
        warnings.filterwarnings("ignore", message=".*Secure RNG.*")
        engine = PrivacyEngine(accountant=config.accountant)
        gs_model, dp_opt, criterion, dp_loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, criterion=nn.CrossEntropyLoss(), noise_multiplier=noise,
            max_grad_norm=clip, poisson_sampling=True, grad_sample_mode="ghost", noise_generator=noise_gen,
        )
    dp_opt.secure_mode = True   # four Gaussian draws per coordinate: robust to floating-point attacks on the noise
    if dp_opt.generator is not noise_gen or getattr(dp_loader.batch_sampler, "generator", None) is not loader.generator:
        raise RuntimeError("Opacus did not take the secret generators for the noise and the Poisson sampling; refusing to train "
                           "with DP randomness from torch's global generator")
    sample_rate = float(dp_loader.sample_rate)
    calib_steps = calibration_steps(total_steps, config.calibration_fraction)
    count_steps = prior_steps(total_steps, config.prior_fraction, calib_steps)
    fit_steps = total_steps - calib_steps - count_steps
    if observer is not None:
        params = [p for p in gs_model.parameters() if p.requires_grad]
        observer.attach(params, sample_rate=sample_rate, max_grad_norm=clip, noise_multiplier=noise, expected_batch_size=dp_opt.expected_batch_size)
        _observe(dp_opt, params, observer)
    per_epoch = max(1, round(1 / sample_rate))
    history, total, seen = [], 0.0, 0
    bar = _bar(total_steps, progress, f"expert (DP, eps<={config.target_epsilon:g})", "step")
    batches = _endless(dp_loader)
    gs_model.train()
    with warnings.catch_warnings():
        # Opacus' hooks on a model whose inputs need no gradient make torch warn on every step.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        if count_steps:
            counted = _calibrate(gs_model._module, engine, loader, noise, clip, noise_gen, count_steps, config, bar)
            with torch.no_grad():
                gs_model._module.head.bias += torch.as_tensor(counted["log_prior"], dtype=gs_model._module.head.bias.dtype)
        else:
            counted = None
        for step in range(fit_steps):
            xb, yb = next(batches)   # Poisson batch; an empty one is still a step the accountant counts
            dp_opt.zero_grad(set_to_none=True)
            loss = criterion(gs_model(xb), yb)
            loss.backward()
            dp_opt.step()
            if len(xb) > 0:
                total, seen = total + loss.item() * len(xb), seen + len(xb)
            if (step + 1) % per_epoch == 0 or step + 1 == fit_steps:
                history.append(total / max(seen, 1))
                total, seen = 0.0, 0
                crashpoint("client.train_epoch")
            if bar is not None:
                bar.update(1)
                if history and (step + 1) % per_epoch == 0:
                    bar.set_postfix(loss=f"{history[-1]:.4f}")
        expert = gs_model._module
        expert.eval()
        calibration = _calibrate(expert, engine, loader, noise, clip, noise_gen, calib_steps, config, bar)
        if counted is not None:   # both phases released noisy counts of the same labels: the prior uses their sum
            counts = torch.as_tensor(calibration["class_counts"], dtype=torch.float64) + torch.as_tensor(counted["class_counts"], dtype=torch.float64)
            calibration["class_counts"] = counts.tolist()
            calibration["log_prior"] = _log_prior(counts).tolist()
    if bar is not None:
        bar.close()
    steps = count_steps + fit_steps + calib_steps
    accounted = sum(s for (_, _, s) in engine.accountant.history)
    if accounted != steps or any((nm, sr) != (noise, sample_rate) for (nm, sr, _) in engine.accountant.history):
        raise BudgetError(f"accountant history {engine.accountant.history} disagrees with the training loop ({steps} steps)")
    with quiet_largest_order():
        achieved = float(engine.get_epsilon(delta))
    if config.accountant == "rdp" and rdp_bound_at_largest_order(noise, sample_rate, steps, delta):
        warnings.warn(f"ε {achieved:.3g} is a loose bound: the RDP accountant's best Rényi order is its largest, so the true ε of this "
                      f"noise is lower and the expert got more noise than its target needs (the stated guarantee holds, and the provider "
                      f"recomputes the same figure); more records or a larger ε avoid it", UserWarning, stacklevel=2)
    if replay is None and not achieved <= float(config.target_epsilon):
        raise BudgetError(f"DP training spent epsilon {achieved:.4f} > target {config.target_epsilon:g}; lower epochs or raise the batch size")
    recomputed = compute_epsilon(noise, sample_rate, steps, delta, config.accountant)
    if recomputed != achieved:
        raise BudgetError(f"epsilon recomputed from the run's parameters ({recomputed!r}) differs from the accountant's ({achieved!r})")
    dp = DPStatement(
        mechanism="dp-sgd", noise_multiplier=noise, sample_rate=sample_rate, steps=steps, max_grad_norm=clip,
        accountant=config.accountant, epsilon=achieved, delta=delta, dataset_size_bucket=size_bucket(n),
    )
    if config.decision == "balanced":
        # the counts summed over the calibration's steps (and the count phase's): per step the noise on a count is
        # σ·C/scale = σ·√3/(1 − 10⁻³) (see `_calibrate`), public like every parameter of the statement
        counted_steps = calib_steps + (count_steps if counted is not None else 0)
        count_noise_std = noise * math.sqrt(3.0) / (1 - 1e-3) * math.sqrt(counted_steps)
        lift, calibration["bounded_classes"] = balancing_log_prior(torch.as_tensor(calibration["log_prior"], dtype=torch.float64),
                                                                  torch.as_tensor(calibration["class_counts"], dtype=torch.float64),
                                                                  count_noise_std)
    with torch.no_grad():
        shift = torch.as_tensor(calibration["shift"], dtype=expert.head.bias.dtype)
        expert.head.bias += shift - (lift.to(expert.head.bias.dtype) if config.decision == "balanced" else 0.0)
    return expert, dp, history, calibration, config.epochs


def _observe(dp_opt, params: list[torch.Tensor], observer: DPStepObserver) -> None:
    """Lets the observer see (and add to) the clipped sums before the noise, and the noisy sums after it."""
    add_noise = dp_opt.add_noise

    def observed_add_noise() -> None:
        observer.before_noise([p.summed_grad for p in params])
        add_noise()
        observer.after_noise([p.grad for p in params])

    dp_opt.add_noise = observed_add_noise


def _calibrate(expert: nn.Module, engine, loader, noise: float, clip: float, noise_gen: torch.Generator, steps: int,
               config: TrainConfig, bar) -> dict[str, list[float]]:
    """The calibration phase: `steps` DP-SGD steps of the same mechanism (σ, q, C) that release, per step,
    the noisy class counts of the batch (summed into the label prior) and fit the logit shift b."""
    k = expert.head.out_features
    calib = _Calibrator(k)
    if steps == 0:
        return {"log_prior": [0.0] * k, "shift": [0.0] * k, "class_counts": [0.0] * k}
    # Adam moves about lr per step while the gradient's sign is clear: with a linear decay it travels lr * steps / 2
    opt = torch.optim.Adam(calib.shift.parameters(), lr=max(config.calibration_lr, 6.0 / steps))
    opt.add_param_group({"params": calib.counter.parameters(), "lr": 0.0})    # read, never trained
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / steps))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG.*")
        gs_calib, dp_opt, dp_loader = engine.make_private(
            module=calib, optimizer=opt, data_loader=loader, noise_multiplier=noise, max_grad_norm=clip,
            poisson_sampling=True, grad_sample_mode="hooks", noise_generator=noise_gen,
        )
    dp_opt.secure_mode = True
    scale = clip / math.sqrt(3.0) * (1 - 1e-3)   # per-sample gradient norm <= √3 * scale < clip: never clipped
    counts = torch.zeros(k, dtype=torch.float64)
    batches = _endless(dp_loader)
    gs_calib.train()
    for _ in range(steps):
        xb, yb = next(batches)
        with torch.no_grad():
            zy = torch.cat([expert(xb), nn.functional.one_hot(yb, k).to(xb.dtype)], dim=1)
        dp_opt.zero_grad(set_to_none=True)
        _calibration_loss(gs_calib(zy), yb, scale).backward()
        dp_opt.step()
        # the released (noisy) counter gradient is -(batch class counts) * scale / B plus noise: undo the scaling
        counts += calib.counter.weight.grad.detach()[0].double() * (-dp_opt.expected_batch_size / scale)
        sched.step()
        if bar is not None:
            bar.update(1)
    b = calib.shift.weight.detach()[:, 0]
    return {"log_prior": _log_prior(counts).tolist(), "shift": (b - b.mean()).tolist(), "class_counts": counts.tolist()}


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
