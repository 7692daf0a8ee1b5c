"""Membership inference against an uploaded expert, from the provider's seat and from a query-only seat.

Threat model. A client trained an expert on its private training set (the *members*) and uploaded
it. The attacker wants to tell, for candidate records it holds, whether each was a member:

- **provider seat** (`ExpertChannel`): the provider holds the weights and runs the expert on the
  encoded record; it sees the expert's log-probabilities;
- **query-only seat** (`LLMChannel`): an end user asks the customized LLM about the record (the
  record turned into a question by the verbalizer) and sees the answer's probabilities over the
  label's verbalizer tokens. The connectors are trained on synthetic data only, so whatever leaks
  here leaked through the expert; the comparison shows how much of it survives the LLM.

Attacks (all give a score that is higher for "member"):

- MICO-style score attacks (Song & Mittal 2021; the MICO competition baselines): `loss` (log p_y),
  `confidence` (max_k log p_k), `entropy` (−H(p)), `modified_entropy` (−Mentr(p, y)), `margin`
  (log p_y − max_{k≠y} log p_k);
- LiRA (Carlini et al. 2022): the logit-scaled confidence φ = log p_y − log(1 − p_y) of the target is
  compared with Gaussians fitted to φ of *shadow experts* trained with the client's own recipe
  (`train_expert`, same TrainConfig, same DP settings, other seeds). One set of shadows serves every
  reference-model attack: each challenge record is in exactly half of them (the IN models; the
  attacker knows the candidate records, not their membership), the rest of each shadow's training
  set comes from the attacker's auxiliary population, disjoint from the target's training set.
  *Online*: log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out). *Offline*: the one-sided z-score
  (φ − μ_out)/σ_out against the OUT models of each record only. With fewer than 64 shadows the
  variance is pooled over records (Carlini et al.'s "fixed variance").
- RMIA (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks"): the likelihood
  ratio Pr(x|θ)/Pr(x), with Pr(x) the mean of p_y(x) over the reference models (all shadows:
  online; the OUT ones through the paper's linear approximation ½((1+a) Pr_OUT(x) + (1−a)):
  offline), is compared with the same ratio of population records z; the score is the fraction of z
  it dominates by a factor γ.

Every result carries 95 % intervals (`metrics.evaluate_attack`). `run_mia` builds the split, trains
the target and the shadows, and evaluates every attack from both seats. Nothing here prints or logs
a record: only counts and metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from simulations.attacks.metrics import (
    CONFIDENCE,
    AttackResult,
    auc_interval,
    beats_chance,
    evaluate_attack,
)

SCORE_ATTACKS: tuple[str, ...] = ("loss", "confidence", "entropy", "modified_entropy", "margin")
LIRA_ATTACKS: tuple[str, ...] = ("lira_online", "lira_offline")
RMIA_ATTACKS: tuple[str, ...] = ("rmia", "rmia_offline")
REFERENCE_ATTACKS: tuple[str, ...] = LIRA_ATTACKS + RMIA_ATTACKS
ALL_ATTACKS: tuple[str, ...] = SCORE_ATTACKS + REFERENCE_ATTACKS
FIX_VARIANCE_BELOW = 64   # shadows under which LiRA's variance is pooled (Carlini et al.)
RMIA_GAMMA = 1.0          # RMIA: x dominates z when its ratio is at least γ times z's
RMIA_OFFLINE_A = 0.3      # RMIA offline: Pr(x) ≈ ½((1 + a) Pr_OUT(x) + (1 − a))


# --- scores ---------------------------------------------------------------------------------------


def log_complement(logp: np.ndarray) -> np.ndarray:
    """log(1 − p_k) for every class k, computed as logsumexp over the other classes (stable near p_k = 1)."""
    from scipy.special import logsumexp

    logp = np.asarray(logp, dtype=np.float64)
    out = np.empty_like(logp)
    for k in range(logp.shape[1]):
        others = np.delete(logp, k, axis=1)
        out[:, k] = logsumexp(others, axis=1)
    return out


def lira_statistic(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ = log p_y − log(1 − p_y), the logit-scaled confidence LiRA models as Gaussian."""
    idx = np.arange(len(y))
    return logp[idx, y] - log_complement(logp)[idx, y]


def score_attacks(logp: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The five threshold attacks' scores (higher = member) from log-probabilities (n, C) and labels."""
    logp = np.asarray(logp, dtype=np.float64)
    y = np.asarray(y)
    idx = np.arange(len(y))
    p = np.exp(logp)
    logc = log_complement(logp)
    logp_y = logp[idx, y]
    others = logp.copy()
    others[idx, y] = -np.inf
    not_y = np.ones_like(p, dtype=bool)
    not_y[idx, y] = False
    mentr = -(1 - p[idx, y]) * logp_y - np.where(not_y, p * logc, 0.0).sum(1)
    return {
        "loss": logp_y,
        "confidence": logp.max(1),
        "entropy": (p * logp).sum(1),
        "modified_entropy": -mentr,
        "margin": logp_y - others.max(1),
    }


def _gauss_params(phi: np.ndarray, mask: np.ndarray, pooled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-record median and std of φ over the shadows selected by mask (S, n); pooled: one std for all.

    A record that no selected shadow covers (possible when only a few shadows of a balanced design are
    used, as from the query seat) gets the median over all covered records' values, a global estimate
    in the spirit of Carlini et al.'s fixed-variance variant."""
    counts = mask.sum(0)
    if not counts.any():
        raise ValueError("no shadow of this kind covers any candidate record; train more shadows")
    vals = np.where(mask, phi, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # uncovered records: all-NaN columns, filled below
        mu = np.nanmedian(vals, axis=0)
        mu = np.where(counts > 0, mu, np.nanmedian(vals))
        if pooled or (counts < 2).any():
            covered = counts > 0
            dev = np.where(mask, phi - np.nanmean(vals, axis=0), 0.0)[:, covered]
            dof = max(int(counts.sum() - covered.sum()), 1)
            sd = np.full(phi.shape[1], math.sqrt((dev ** 2).sum() / dof))
        else:
            sd = np.nanstd(vals, axis=0, ddof=1)
    return mu, np.maximum(sd, 1e-6)


def lira_online(target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray, fix_variance: bool | None = None) -> np.ndarray:
    """Online LiRA scores: log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out) per record.

    shadow_phi (S, n): φ of each shadow on each record; shadow_in (S, n): whether the record was in
    that shadow's training set."""
    from scipy.stats import norm

    shadow_in = np.asarray(shadow_in, dtype=bool)
    pooled = fix_variance if fix_variance is not None else len(shadow_phi) < FIX_VARIANCE_BELOW
    mu_in, sd_in = _gauss_params(shadow_phi, shadow_in, pooled)
    mu_out, sd_out = _gauss_params(shadow_phi, ~shadow_in, pooled)
    return norm.logpdf(target_phi, mu_in, sd_in) - norm.logpdf(target_phi, mu_out, sd_out)


def lira_offline(target_phi: np.ndarray, shadow_phi_out: np.ndarray, fix_variance: bool | None = None) -> np.ndarray:
    """Offline LiRA scores: the one-sided test (φ − μ_out)/σ_out against OUT shadows only (S, n)."""
    pooled = fix_variance if fix_variance is not None else len(shadow_phi_out) < FIX_VARIANCE_BELOW
    mu, sd = _gauss_params(shadow_phi_out, np.ones_like(shadow_phi_out, dtype=bool), pooled)
    return (target_phi - mu) / sd


def _log_mean_exp(logv: np.ndarray, mask: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
    """log of the mean of exp(logv) along `axis`, over the entries where `mask` is True."""
    from scipy.special import logsumexp

    if mask is None:
        return logsumexp(logv, axis=axis) - math.log(logv.shape[axis])
    with np.errstate(divide="ignore"):
        w = np.log(mask.astype(np.float64))
    counts = mask.sum(axis)
    if (counts == 0).any():
        raise ValueError("RMIA: a record has no reference model of the kind needed; train more shadows")
    return logsumexp(logv + w, axis=axis) - np.log(counts)


def rmia_scores(target_py: np.ndarray, ref_py: np.ndarray, target_pz: np.ndarray, ref_pz: np.ndarray, *,
                out_mask_x: np.ndarray | None = None, out_mask_z: np.ndarray | None = None, offline: bool = False,
                gamma: float = RMIA_GAMMA, a: float = RMIA_OFFLINE_A) -> np.ndarray:
    """RMIA scores (Zarifzadeh et al. 2024) from log p_y of the target and of S reference models.

    target_py (n,), ref_py (S, n): log-probability of each challenge record's label; target_pz (P,),
    ref_pz (S, P): the same for population records z. Online: Pr(x) is the mean over all reference
    models; offline: over the OUT ones (`out_mask_*`, (S, ·) booleans, None = all), mapped through
    ½((1 + a) Pr_OUT + (1 − a)). The score is the fraction of z with LR(x, z) = (Pr(x|θ)/Pr(x)) /
    (Pr(z|θ)/Pr(z)) >= γ."""
    def log_pr(ref: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if not offline:
            return _log_mean_exp(ref)
        out = np.exp(_log_mean_exp(ref, mask))
        return np.log(0.5 * ((1 + a) * out + (1 - a)))

    ratio_x = target_py - log_pr(ref_py, out_mask_x)
    ratio_z = np.sort(target_pz - log_pr(ref_pz, out_mask_z))
    return np.searchsorted(ratio_z, ratio_x - math.log(gamma), side="right") / len(ratio_z)


# --- channels: what each seat observes -----------------------------------------------------------


def log_probs(model: torch.nn.Module, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """log-softmax of an expert's logits on encoded rows, float64 (exact near p = 1, unlike log(softmax))."""
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(x_t), batch_size):
            out.append(torch.log_softmax(model(x_t[s:s + batch_size]).double(), dim=-1))
    model.train(was)
    return torch.cat(out).numpy()


class ExpertChannel:
    """Provider seat: the expert's log-probabilities on the encoded candidate records."""

    seat = "provider"

    def __init__(self, x: np.ndarray):
        self.x = np.asarray(x, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def log_probs(self, model: torch.nn.Module) -> np.ndarray:
        return log_probs(model, self.x)


class LLMChannel:
    """Query-only seat: the customized LLM's answer log-probabilities on the candidate records' questions.

    Everything before the expert's slots does not depend on the expert (causal attention), so the
    questions run through the LLM once here (`LlamdexModel.question_pass`: the encoder's features and
    the question's keys and values above the injection layer); each expert then costs only the upper
    layers over the slots and the answer position (`inject_cached`, tested equal to the one-pass
    `answer`). With 17 models per table this is what makes a 1,000-record query seat affordable."""

    seat = "query"

    def __init__(self, llamdex: Any, records: pd.DataFrame, *, seed: int = 0, batch_size: int = 16, progress: bool = False):
        from protocol.verbalizer import Verbalizer

        self.model = llamdex
        schema = llamdex.schema
        # a verbalizer seed apart from connector training (seed 0..) and evaluation (10_000 + seed)
        questions = Verbalizer(schema, seed=20_000 + seed).questions(records[schema.feature_names].to_dict("records"))
        order = np.argsort([len(q) for q in questions], kind="stable")
        self._cache: list[tuple[np.ndarray, Any, torch.Tensor]] = []
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        with torch.inference_mode():
            for idx in tqdm(chunks, desc=f"query seat: {len(questions)} questions through the LLM", unit="batch", disable=not progress, leave=False):
                feats, ctx = llamdex.question_pass(llamdex.batch([questions[t] for t in idx]))
                self._cache.append((idx, ctx, feats))
        self._n = len(questions)
        self.num_classes = schema.label.num_classes

    def __len__(self) -> int:
        return self._n

    def log_probs(self, model: torch.nn.Module) -> np.ndarray:
        out = np.zeros((self._n, self.num_classes))
        model.eval()
        with torch.inference_mode():
            for idx, ctx, feats in self._cache:
                logits = self.model.inject_cached(ctx, model(feats).float().softmax(-1))
                out[idx] = torch.log_softmax(logits.double(), dim=-1).numpy()
        return out


# --- what one seat observes, and the attacks on it ------------------------------------------------


@dataclass
class SeatView:
    """One seat's observations: log-probabilities (…, K) of the target and of S shadows on the challenge
    records and on population records z (RMIA), with which shadows trained on which record."""

    seat: str
    y: np.ndarray                     # (n,) labels of the challenge records
    is_member: np.ndarray             # (n,) truth, for scoring only
    target: np.ndarray                # (n, K)
    shadows: np.ndarray | None = None         # (S, n, K)
    inclusion: np.ndarray | None = None       # (S, n): record i in shadow s's training set
    y_z: np.ndarray | None = None             # (P,)
    target_z: np.ndarray | None = None        # (P, K)
    shadows_z: np.ndarray | None = None       # (S, P, K)
    inclusion_z: np.ndarray | None = None     # (S, P)


def _log_py(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p_y per record: logp (..., n, K), y (n,)."""
    return np.take_along_axis(logp, np.broadcast_to(y[:, None], logp.shape[:-1] + (1,)), axis=-1)[..., 0]


def attack_view(view: SeatView, attacks: Sequence[str] = ALL_ATTACKS, *, fix_variance: bool | None = None,
                delta: float = 0.0) -> list[AttackResult]:
    """Every requested attack that the view supports (reference attacks need shadows; RMIA needs z).

    Each result has its own 95 % intervals and, as `auc_ci_family`, an AUC interval at the
    Bonferroni-corrected level 1 − 0.05/k over the k attacks of the view: the one to read when the
    best of several attacks is picked."""
    scores: dict[str, np.ndarray] = {k: v for k, v in score_attacks(view.target, view.y).items() if k in attacks}
    if view.shadows is not None and len(view.shadows) > 0:
        inc = view.inclusion if view.inclusion is not None else np.zeros(view.shadows.shape[:2], bool)
        phi = lira_statistic(view.target, view.y)
        sphi = np.stack([lira_statistic(s, view.y) for s in view.shadows])
        if "lira_online" in attacks and inc.any(0).all() and (~inc).any(0).all():
            scores["lira_online"] = lira_online(phi, sphi, inc, fix_variance)
        if "lira_offline" in attacks and (~inc).any(0).all():
            scores["lira_offline"] = lira_offline_masked(phi, sphi, ~inc, fix_variance)
        if view.target_z is not None and view.shadows_z is not None and any(a in attacks for a in RMIA_ATTACKS):
            tpy, rpy = _log_py(view.target, view.y), _log_py(view.shadows, view.y)
            tpz, rpz = _log_py(view.target_z, view.y_z), _log_py(view.shadows_z, view.y_z)
            inc_z = view.inclusion_z if view.inclusion_z is not None else np.zeros(view.shadows_z.shape[:2], bool)
            if "rmia" in attacks and inc.any(0).all():          # online: references with and without each record
                scores["rmia"] = rmia_scores(tpy, rpy, tpz, rpz)
            out_z = (~inc_z).any(0)                              # offline: z needs a reference it was not in
            if "rmia_offline" in attacks and (~inc).any(0).all() and out_z.any():
                scores["rmia_offline"] = rmia_scores(tpy, rpy, tpz[out_z], rpz[:, out_z], out_mask_x=~inc, out_mask_z=~inc_z[:, out_z],
                                                     offline=True)
    family = 1 - (1 - CONFIDENCE) / max(len(scores), 1)
    out = []
    for name in [a for a in ALL_ATTACKS if a in scores]:
        r = evaluate_attack(name, scores[name], view.is_member, view.seat, delta=delta)
        r.auc_ci_family = auc_interval(scores[name], view.is_member, family) if len(scores) > 1 else r.auc_ci
        out.append(r)
    return out


def lira_offline_masked(target_phi: np.ndarray, shadow_phi: np.ndarray, out_mask: np.ndarray, fix_variance: bool | None = None) -> np.ndarray:
    """Offline LiRA where each record uses only the shadows it was OUT of (`out_mask`, (S, n))."""
    pooled = fix_variance if fix_variance is not None else int(out_mask.sum(0).min()) < FIX_VARIANCE_BELOW
    mu, sd = _gauss_params(shadow_phi, out_mask, pooled)
    return (target_phi - mu) / sd


def observe(channel: Any, target: torch.nn.Module, shadows: Sequence[torch.nn.Module], y: np.ndarray, is_member: np.ndarray,
            inclusion: np.ndarray | None, z_channel: Any = None, y_z: np.ndarray | None = None,
            inclusion_z: np.ndarray | None = None) -> SeatView:
    """Runs the target and every shadow through a seat's channel(s)."""
    view = SeatView(channel.seat, np.asarray(y), np.asarray(is_member, bool), channel.log_probs(target))
    if shadows:
        view.shadows = np.stack([channel.log_probs(m) for m in shadows])
        view.inclusion = inclusion
    if z_channel is not None:
        view.y_z, view.target_z, view.inclusion_z = np.asarray(y_z), z_channel.log_probs(target), inclusion_z
        if shadows:
            view.shadows_z = np.stack([z_channel.log_probs(m) for m in shadows])
    return view


def best_attack(results: Sequence[AttackResult], seat: str) -> dict[str, Any] | None:
    """The best attack of a seat by AUC and by TPR at 1 % FPR, with their 95 % intervals. It "beats
    chance" only when the family-wise AUC interval (Bonferroni over the attacks compared) excludes 0.5."""
    rs = [r for r in results if r.seat == seat]
    if not rs:
        return None
    by_auc = max(rs, key=lambda r: r.auc)
    by_tpr = max(rs, key=lambda r: r.tpr_at_fpr.get(0.01, 0.0))
    r5 = lambda v: round(float(v), 5)  # noqa: E731
    fam = by_auc.auc_ci_family or by_auc.auc_ci
    return {"attack": by_auc.attack, "auc": r5(by_auc.auc), "auc_ci": [r5(v) for v in by_auc.auc_ci],
            "auc_ci_family": [r5(v) for v in fam], "tpr@1%fpr": r5(by_tpr.tpr_at_fpr[0.01]),
            "tpr@1%fpr_ci": [r5(v) for v in by_tpr.tpr_ci[0.01]], "tpr_attack": by_tpr.attack, "attacks_compared": len(rs),
            "beats_chance": beats_chance(fam, 0.5), "tpr_beats_chance": beats_chance(by_tpr.tpr_ci[0.01], 0.01),
            "max_auc_ci_low": r5(max(r.auc_ci[0] for r in rs))}


# --- the experiment -------------------------------------------------------------------------------


@dataclass
class MIASplit:
    """Disjoint index sets into the table: the target's training set, its held-out records, the
    attacker's auxiliary population; and the evaluated members / non-members (challenge records)."""

    train: np.ndarray
    out: np.ndarray
    aux: np.ndarray
    members: np.ndarray
    nonmembers: np.ndarray

    @property
    def challenge(self) -> np.ndarray:
        return np.concatenate([self.members, self.nonmembers])

    @property
    def is_member(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.members), bool), np.zeros(len(self.nonmembers), bool)])


def make_split(n_rows: int, target_size: int, eval_members: int, eval_nonmembers: int, seed: int = 0,
               aux_size: int | None = None, balance_labels: np.ndarray | None = None) -> MIASplit:
    """Shuffles the rows and cuts: `target_size` training records, `eval_nonmembers` held-out records,
    and the rest (or `aux_size` of it) as the attacker's population; members are drawn from training.
    The population must fill a shadow's training set up to `target_size` beside its half of the
    challenge records. With `balance_labels` (the rows' labels) the shuffle takes the classes in turn,
    so the training and held-out records hold the classes equally as far as each class allows."""
    if eval_members > target_size:
        raise ValueError(f"eval_members ({eval_members}) cannot exceed target_size ({target_size})")
    fill = max(0, target_size - (eval_members + eval_nonmembers) // 2)
    need = target_size + eval_nonmembers + max(fill, 1)
    if n_rows < need:
        raise ValueError(f"the table has {n_rows} rows; target_size {target_size} + eval_nonmembers {eval_nonmembers} + an auxiliary "
                         f"population of at least {max(fill, 1)} (to fill the shadows' training sets) needs {need}; "
                         "lower --target-size or --n-nonmembers")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_rows)
    if balance_labels is not None:
        labels = np.asarray(balance_labels)[perm]
        groups = [perm[labels == c] for c in np.unique(labels)]
        rank = np.concatenate([np.arange(len(g)) for g in groups])   # a row's place within its class
        perm = np.concatenate(groups)[np.argsort(rank, kind="stable")]   # stable: the classes in turn at each rank
    train, out = perm[:target_size], perm[target_size:target_size + eval_nonmembers]
    aux = perm[target_size + eval_nonmembers:]
    if aux_size is not None:
        aux = aux[:max(aux_size, target_size)]
    members = rng.choice(train, size=eval_members, replace=False)
    return MIASplit(np.sort(train), np.sort(out), np.sort(aux), members, out.copy())


DEFAULT_SIZES = (1000, 500, 500)   # records the target trains on, members and non-members attacked


def fitting_sizes(n_rows: int, sizes: tuple[int | None, int | None, int | None] = (None, None, None)) -> tuple[int, int, int]:
    """(target_size, eval_members, eval_nonmembers) with each size not given taken from `DEFAULT_SIZES`.
    When none is given and the defaults need more rows than the table has, all three shrink in proportion, so
    `--data titanic` (1309 rows) runs as a newcomer types it; sizes the caller chose are never changed (a table
    too small for them is `make_split`'s error). The rows left for the attacker's population must fill every
    shadow up to the target's size: a shadow holds about half the challenge records (`balanced_inclusion`), give
    or take √c/2 for c of them, so the fit keeps four of those spreads (2√c rows) beyond the half."""
    if any(v is not None for v in sizes):
        return tuple(d if v is None else v for v, d in zip(sizes, DEFAULT_SIZES))  # type: ignore[return-value]

    def fits(target: int, members: int, nonmembers: int) -> bool:
        aux = n_rows - target - nonmembers
        return aux >= max(1.0, target - (members + nonmembers) / 2 + 2 * math.sqrt(members + nonmembers))

    target, members, nonmembers = DEFAULT_SIZES
    while target > 1 and not fits(target, members, nonmembers):
        target = max(1, int(target * 0.97))
        members = max(1, target * DEFAULT_SIZES[1] // DEFAULT_SIZES[0])
        nonmembers = max(1, target * DEFAULT_SIZES[2] // DEFAULT_SIZES[0])
    return target, members, nonmembers


def train_config(epsilon: float | None, *, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                 seed: int = 0, **overrides: Any):
    """The client's recipe: `TrainConfig()` without DP, `TrainConfig.private(ε)` with it, plus overrides."""
    from client_party.expert_training import TrainConfig

    cfg = TrainConfig(seed=seed) if epsilon is None else TrainConfig.private(epsilon, seed=seed)
    changes = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, **overrides).items() if v is not None}
    return replace(cfg, **changes)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily sets torch's intra-op threads (small MLPs train fastest on one thread)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def balanced_inclusion(n_shadows: int, n_records: int, rng: np.random.Generator) -> np.ndarray:
    """(S, n) boolean: each record is IN exactly ⌊S/2⌋ shadows, chosen at random (Carlini et al.)."""
    order = rng.random((n_shadows, n_records)).argsort(0)
    return order < n_shadows // 2


@dataclass
class Shadows:
    """Shadow experts and, per shadow, the table rows it trained on."""

    models: list[torch.nn.Module]
    rows: list[np.ndarray]

    def inclusion(self, rows: np.ndarray) -> np.ndarray:
        """(S, len(rows)): whether each given table row was in each shadow's training set."""
        return np.stack([np.isin(rows, r) for r in self.rows]) if self.models else np.zeros((0, len(rows)), bool)

    def __len__(self) -> int:
        return len(self.models)


def train_shadows(x: np.ndarray, y: np.ndarray, schema: Any, cfg: Any, split: MIASplit, n_shadows: int, *, seed: int,
                  progress: bool | Callable[[str], None] = False) -> Shadows:
    """Shadow experts with the target's recipe: each challenge record in exactly half of them (balanced
    design), each training set filled up from the auxiliary population to the target's size."""
    from client_party.expert_training import train_expert

    rng = np.random.default_rng([seed, 1])
    n_t, challenge = len(split.train), split.challenge
    inc = balanced_inclusion(n_shadows, len(challenge), rng)
    if len(split.aux) < n_t - int(inc.sum(1).min(initial=n_t)):
        raise ValueError(f"the auxiliary population has {len(split.aux)} records, too few to fill the shadows up to the target's "
                         f"{n_t} training records")
    models, rows = [], []
    for s in range(n_shadows):
        chosen = challenge[inc[s]]
        fill = max(0, n_t - len(chosen))
        idx = rng.permutation(np.concatenate([chosen, rng.choice(split.aux, size=fill, replace=False)]))
        shadow_cfg = replace(cfg, seed=int(rng.integers(2**31 - 1)))
        models.append(train_expert(x[idx], y[idx], schema, shadow_cfg).model)
        rows.append(np.sort(idx))
        _say(progress, f"  shadow {s + 1}/{n_shadows}")
    return Shadows(models, rows)


@dataclass
class MIAConfig:
    """Sizes and recipe of one membership-inference experiment."""

    target_size: int = 1000
    eval_members: int = 500
    eval_nonmembers: int = 500
    n_shadows: int = 16                 # one set of shadows for LiRA online/offline and RMIA
    population: int = 500               # population records z for RMIA (from the auxiliary population)
    epsilon: float | None = None        # None: the target trains without DP
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    early_stopping: bool | None = None  # None: the recipe's (on without DP); False: a deliberately overfit expert
    seed: int = 0
    fix_variance: bool | None = None    # None: pooled variance below 64 shadows
    attacks: tuple[str, ...] = ALL_ATTACKS
    query_members: int = 500            # query seat: members and non-members attacked through the LLM
    query_nonmembers: int = 500
    query_population: int = 200         # query seat: population records z for RMIA
    query_shadows: int | None = None    # shadows used from the query seat (None: all)
    threads: int | None = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attacks"] = list(self.attacks)
        return d


@dataclass
class MIAReport:
    """Everything one experiment measured (no record values)."""

    dataset: str
    config: dict[str, Any]
    dp: dict[str, Any]
    expert_accuracy: float                     # on the held-out records
    results: list[AttackResult] = field(default_factory=list)
    llamdex_accuracy: float | None = None      # query seat: the LLM's answers on held-out records
    expert_accuracy_query_subset: float | None = None
    expert_balanced_accuracy: float | None = None
    llamdex_balanced_accuracy: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def best(self, seat: str = "provider", key: str = "auc") -> AttackResult | None:
        rs = [r for r in self.results if r.seat == seat]
        if not rs:
            return None
        if key == "auc":
            return max(rs, key=lambda r: r.auc)
        return max(rs, key=lambda r: r.tpr_at_fpr.get(float(key), 0.0))

    def result(self, attack: str, seat: str = "provider") -> AttackResult:
        for r in self.results:
            if r.attack == attack and r.seat == seat:
                return r
        raise KeyError(f"no result for attack {attack!r} from the {seat} seat")

    def to_dict(self, with_roc: bool = False) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "config": self.config, "dp": self.dp, "expert_accuracy": self.expert_accuracy,
            "expert_balanced_accuracy": self.expert_balanced_accuracy,
            "llamdex_accuracy": self.llamdex_accuracy, "llamdex_balanced_accuracy": self.llamdex_balanced_accuracy,
            "expert_accuracy_query_subset": self.expert_accuracy_query_subset,
            "results": [r.to_dict(with_roc) for r in self.results], "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def _say(progress: bool | Callable[[str], None], msg: str) -> None:
    if callable(progress):
        progress(msg)
    elif progress:
        print(msg, flush=True)


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, pred))


def population_rows(split: MIASplit, size: int, seed: int) -> np.ndarray:
    """Population records z for RMIA: a seeded sample of the auxiliary population."""
    rng = np.random.default_rng([seed, 3])
    return np.sort(rng.choice(split.aux, size=min(size, len(split.aux)), replace=False))


def run_mia(dataset: str | tuple[pd.DataFrame, Any], config: MIAConfig, *, llamdex: Any = None,
            progress: bool | Callable[[str], None] = False, target: Any = None, query_channel: LLMChannel | None = None,
            query_z_channel: LLMChannel | None = None, seats: Sequence[str] = ("provider", "query")) -> MIAReport:
    """Trains the target (unless `target` = (TrainedExpert, MIASplit) is given) and the shadows, and
    attacks from the provider seat, and from the query seat when a `LlamdexModel` (or prebuilt
    `query_channel` / `query_z_channel` from `build_query_channels`) is given."""
    from client_party.datasets import encode_table, load_table
    from client_party.expert_training import train_expert

    df, schema = load_table(dataset) if isinstance(dataset, str) else dataset
    name = dataset if isinstance(dataset, str) else schema.name
    x, y = encode_table(df, schema)
    cfg = train_config(config.epsilon, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                       early_stopping=config.early_stopping)
    times: dict[str, float] = {}
    unknown = set(config.attacks) - set(ALL_ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {list(ALL_ATTACKS)}")
    with torch_threads(config.threads):
        t0 = time.perf_counter()
        if target is None:
            split = make_split(len(df), config.target_size, config.eval_members, config.eval_nonmembers, config.seed)
            trained = train_expert(x[split.train], y[split.train], schema, cfg)
        else:
            trained, split = target
        times["target"] = time.perf_counter() - t0
        eps = "no DP" if not trained.dp.is_private else f"ε={trained.dp.epsilon:.3g}"
        _say(progress, f"{name}: target expert trained on {len(split.train)} records ({eps})")
        pred = log_probs(trained.model, x[split.out]).argmax(1)
        acc, bacc = float((pred == y[split.out]).mean()), balanced_accuracy(pred, y[split.out])
        t0 = time.perf_counter()
        want_refs = any(a in REFERENCE_ATTACKS for a in config.attacks)
        shadows = train_shadows(x, y, schema, cfg, split, config.n_shadows, seed=config.seed, progress=progress) \
            if want_refs and config.n_shadows > 0 else Shadows([], [])
        times["shadows"] = time.perf_counter() - t0
        ch, z = split.challenge, population_rows(split, config.population, config.seed)
        report = MIAReport(name, config.to_dict(), trained.dp.to_dict(), acc, expert_balanced_accuracy=bacc, timings=times)
        if "provider" in seats:
            t0 = time.perf_counter()
            view = observe(ExpertChannel(x[ch]), trained.model, shadows.models, y[ch], split.is_member, shadows.inclusion(ch),
                           ExpertChannel(x[z]), y[z], shadows.inclusion(z))
            report.results.extend(attack_view(view, config.attacks, fix_variance=config.fix_variance, delta=float(trained.dp.delta)))
            times["provider_attacks"] = time.perf_counter() - t0
    if "query" in seats and (llamdex is not None or query_channel is not None):   # the LLM runs with the caller's thread setting
        t0 = time.perf_counter()
        _query_seat(report, llamdex, df, x, y, split, trained.model, shadows, config, progress, query_channel, query_z_channel)
        times["query_attacks"] = time.perf_counter() - t0
    return report


def query_selection(split: MIASplit, config: MIAConfig) -> np.ndarray:
    """Positions in `split.challenge` attacked from the query seat: the first `query_members` members
    and `query_nonmembers` non-members (the LLM is slow on CPU, so the numbers may be bounded)."""
    n_m, n_n = min(config.query_members, len(split.members)), min(config.query_nonmembers, len(split.nonmembers))
    return np.concatenate([np.arange(n_m), len(split.members) + np.arange(n_n)])


def build_query_channels(llamdex: Any, df: pd.DataFrame, split: MIASplit, config: MIAConfig,
                         progress: bool = False) -> tuple[LLMChannel, LLMChannel]:
    """The query seat's view of the selected challenge records and of the population records z
    (reusable across targets on the same split)."""
    rows = split.challenge[query_selection(split, config)]
    z = population_rows(split, config.query_population, config.seed)
    return (LLMChannel(llamdex, df.iloc[rows], seed=config.seed, progress=progress),
            LLMChannel(llamdex, df.iloc[z], seed=config.seed + 1, progress=progress))


def _query_seat(report: MIAReport, llamdex: Any, df: pd.DataFrame, x: np.ndarray, y: np.ndarray, split: MIASplit, target: Any,
                shadows: Shadows, config: MIAConfig, progress: bool | Callable[[str], None],
                channel: LLMChannel | None = None, z_channel: LLMChannel | None = None) -> None:
    """The same attacks through the customized LLM on the selected challenge records."""
    sel = query_selection(split, config)
    rows = split.challenge[sel]
    member = split.is_member[sel]
    z = population_rows(split, config.query_population, config.seed)
    _say(progress, f"{report.dataset}: query seat on {int(member.sum())} members + {int((~member).sum())} non-members through the LLM")
    if channel is None or z_channel is None:
        channel, z_channel = build_query_channels(llamdex, df, split, config, progress=bool(progress))
    if len(channel) != len(rows) or len(z_channel) != len(z):
        raise ValueError(f"the query channels hold {len(channel)} + {len(z_channel)} records, the selection {len(rows)} + {len(z)}; "
                         "build them with build_query_channels")
    k = config.query_shadows if config.query_shadows is not None else len(shadows)
    used = Shadows(shadows.models[:k], shadows.rows[:k])
    view = observe(channel, target, used.models, y[rows], member, used.inclusion(rows), z_channel, y[z], used.inclusion(z))
    report.results.extend(attack_view(view, config.attacks, fix_variance=config.fix_variance, delta=float(report.dp.get("delta") or 0.0)))
    held = ~member
    llm = view.target.argmax(1)
    report.llamdex_accuracy = float((llm[held] == y[rows][held]).mean())
    report.llamdex_balanced_accuracy = balanced_accuracy(llm[held], y[rows][held])
    report.expert_accuracy_query_subset = float((log_probs(target, x[rows[held]]).argmax(1) == y[rows][held]).mean())


__all__ = [
    "ALL_ATTACKS",
    "LIRA_ATTACKS",
    "REFERENCE_ATTACKS",
    "RMIA_ATTACKS",
    "SCORE_ATTACKS",
    "ExpertChannel",
    "LLMChannel",
    "MIAConfig",
    "MIAReport",
    "MIASplit",
    "SeatView",
    "Shadows",
    "attack_view",
    "balanced_inclusion",
    "best_attack",
    "build_query_channels",
    "lira_offline",
    "lira_offline_masked",
    "lira_online",
    "lira_statistic",
    "log_probs",
    "make_split",
    "observe",
    "population_rows",
    "query_selection",
    "rmia_scores",
    "run_mia",
    "score_attacks",
    "torch_threads",
    "train_config",
    "train_shadows",
]
