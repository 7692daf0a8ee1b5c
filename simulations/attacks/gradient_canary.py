"""White-box one-run audit of DP-SGD with gradient-space Dirac canaries (Nasr et al. 2023, "Tight
Auditing of Differentially Private Machine Learning"; Steinke, Nasr, Jagielski 2023, "Privacy
Auditing with One (1) Training Run").

Input-space canaries (`canary.py`) audit what the *final model* reveals, which is far less than
DP-SGD's guarantee covers: their bounds sit near 0 at every ε, so they cannot tell a correct
implementation from a broken one. This audit instead takes the white-box seat the guarantee is
about. It runs the client's own training code (`client_party.expert_training.train_expert`, as a
`DPStepObserver`) and, at every DP-SGD step:

1. reads the sum of the clipped per-sample gradients of the real records, S_t;
2. inserts the canaries: canary j is a "record" whose clipped gradient is C·e_{c_j} (a Dirac at its
   own coordinate c_j of the expert's parameters, norm exactly the clipping norm C); an included
   canary joins each step with the Poisson sampling rate q, like any record;
3. reads the noisy sum G_t the implementation releases, and keeps x_{t,j} = (G_t − S_t)[c_j] / C.

If the implementation is correct, x_{t,j} = 1[j sampled at t] + σ·N(0, 1), exactly the subsampled
Gaussian mechanism the accountant bounds (knowing S_t, the other records' contribution, is allowed:
DP holds for any fixed rest of the data). The score of canary j is the log-likelihood ratio
Σ_t log(1 − q + q·exp((x_{t,j} − ½)/σ²)) with the *claimed* σ (Neyman–Pearson for one canary), and
`canary.audit_from_scores` turns the scores of canaries whose inclusion was decided by fair coins
into an ε lower bound at the stated confidence. A bound above the claimed ε means the implementation
does not add the noise it claims (or does not clip, sample or account as it says).

Without DP the same observer sees the plain gradient step (no clipping, no noise); the canaries are
then perfectly separable and the bound reaches what m canaries can show.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch

from simulations.attacks.canary import DEFAULT_GUESS_FRACTIONS, CanaryAudit, audit_from_scores


class GradientCanaries:
    """A `DPStepObserver` that inserts m Dirac canaries and scores them (see the module doc)."""

    def __init__(self, m: int, included: np.ndarray, rng: np.random.Generator):
        if len(included) != m:
            raise ValueError(f"included must have {m} entries, got {len(included)}")
        self.m = m
        self.included = np.asarray(included, bool)
        self.rng = rng
        self.steps = 0
        self.sampled_steps = np.zeros(m, dtype=np.int64)
        self._llr = np.zeros(m)
        self._sum = np.zeros(m)

    def attach(self, params: list[torch.Tensor], *, sample_rate: float, max_grad_norm: float, noise_multiplier: float,
               expected_batch_size: float) -> None:
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        if total < self.m:
            raise ValueError(f"{self.m} Dirac canaries need {self.m} distinct coordinates; the model has {total}")
        flat = np.sort(self.rng.choice(total, size=self.m, replace=False))
        offsets = np.cumsum([0, *sizes])
        self._where = [(int(np.searchsorted(offsets, f, side="right") - 1), int(f - offsets[np.searchsorted(offsets, f, side="right") - 1]))
                       for f in flat]
        self._by_param: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for j, (pi, off) in enumerate(self._where):
            idx, js = self._by_param.get(pi, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
            self._by_param[pi] = (np.append(idx, off), np.append(js, j))
        self.q = float(sample_rate)
        self.sigma = float(noise_multiplier)
        # DP: the sums are of clipped gradients (norm <= C each); no DP: the step's mean gradient, one record = 1/B
        self.unit = float(max_grad_norm) if max_grad_norm > 0 else 1.0 / float(expected_batch_size)

    def _read(self, grads: Sequence[torch.Tensor]) -> np.ndarray:
        out = np.zeros(self.m)
        for pi, (idx, js) in self._by_param.items():
            out[js] = grads[pi].detach().reshape(-1)[torch.as_tensor(idx)].double().numpy()
        return out

    def before_noise(self, grads: list[torch.Tensor]) -> None:
        self._before = self._read(grads)
        take = self.included & (self.rng.random(self.m) < self.q)
        self.sampled_steps += take
        for pi, (idx, js) in self._by_param.items():
            add = take[js]
            if add.any():
                flat = grads[pi].view(-1)
                flat[torch.as_tensor(idx[add])] += self.unit

    def after_noise(self, grads: list[torch.Tensor]) -> None:
        x = (self._read(grads) - self._before) / self.unit
        self.steps += 1
        self._sum += x
        if self.sigma > 0:
            # log(1 − q + q·exp((x − ½)/σ²)), computed stably
            a = (x - 0.5) / self.sigma ** 2
            self._llr += np.logaddexp(math.log1p(-self.q) if self.q < 1 else -np.inf, math.log(self.q) + a)

    def scores(self) -> np.ndarray:
        """Per canary: the summed log-likelihood ratio (DP) or the summed observation (no noise)."""
        return self._llr.copy() if self.sigma > 0 else self._sum.copy()


def run_gradient_canary_audit(x: np.ndarray, y: np.ndarray, schema: Any, config: Any, *, m: int = 1000, seed: int = 0,
                              replay: Any = None, confidence: float = 0.95,
                              guess_fractions: Sequence[tuple[float, float]] = DEFAULT_GUESS_FRACTIONS,
                              x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                              noise_seed: int | None = None) -> CanaryAudit:
    """Trains once with `config` (or `replay`: a DP statement's exact mechanism) and m gradient
    canaries, each included with probability ½; returns the ε lower bound beside the claimed ε.

    noise_seed: None draws DP-SGD's noise and sampling from the OS as a released expert does; an
    integer replays them exactly, so that a verdict (a test's, a report's) is reproducible."""
    from client_party.expert_training import train_expert
    from protocol.dp import compute_epsilon, recompute
    from simulations.attacks.metrics import roc_auc
    from simulations.attacks.mia import log_probs
    from simulations.audit import second_accountant_epsilon

    rng = np.random.default_rng([seed, 11])
    included = rng.random(m) < 0.5                      # the coins, independent of everything the scores use
    observer = GradientCanaries(m, included, np.random.default_rng([seed, 12]))
    trained = train_expert(x, y, schema, replace(config, seed=seed), observer=observer, replay=replay,
                           dp_seed=noise_seed)
    scores = observer.scores()
    dp = trained.dp
    delta = float(dp.delta) if dp.is_private else 0.0
    eps_lb, rows, best = audit_from_scores(scores, included, delta, confidence=confidence, guess_fractions=guess_fractions)
    observed = None
    if dp.is_private and observer.steps:
        observed = compute_epsilon(dp.noise_multiplier, dp.sample_rate, observer.steps, dp.delta, dp.accountant)
    acc = None
    if x_test is not None and y_test is not None:
        acc = float((log_probs(trained.model, x_test).argmax(1) == y_test).mean())
    return CanaryAudit(
        m=m, included=int(included.sum()), guesses=rows, best=best, epsilon_lb=eps_lb, confidence=confidence,
        epsilon_claimed=float(dp.epsilon) if dp.is_private else None,
        epsilon_recomputed=float(recompute(dp)) if dp.is_private else None,
        epsilon_second=float(second_accountant_epsilon(dp)) if dp.is_private else None,
        delta=delta, expert_accuracy=acc, canary_auc=roc_auc(scores, included),
        extra={"kind": "gradient (white-box, Dirac canaries)", "observed_steps": observer.steps, "total_steps": dp.steps,
               "epsilon_of_observed_steps": observed, "mean_sampled_steps_of_included": float(observer.sampled_steps[included].mean())
               if included.any() else 0.0, "training_records": int(len(x)), "dp": dp.to_dict()},
    )


__all__ = ["GradientCanaries", "run_gradient_canary_audit"]
