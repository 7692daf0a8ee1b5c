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
  (`train_expert`, same TrainConfig, same DP settings, other seeds) on the attacker's auxiliary
  population split, which is disjoint from the target's training set.
  *Online*: each candidate record is added to exactly half of the shadows' training sets (the IN
  models; the attacker knows the candidate records, not their membership); the score is the
  likelihood ratio log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out). *Offline*: shadows never see a
  candidate; the score is the one-sided z-score (φ − μ_out)/σ_out. With fewer than 64 shadows the
  variance is pooled over records (Carlini et al.'s "fixed variance").

`run_mia` builds the split, trains the target and the shadows, and evaluates every attack from both
seats. Nothing here prints or logs a record: only counts and metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from simulations.attacks.metrics import AttackResult, evaluate_attack

SCORE_ATTACKS: tuple[str, ...] = ("loss", "confidence", "entropy", "modified_entropy", "margin")
LIRA_ATTACKS: tuple[str, ...] = ("lira_online", "lira_offline")
ALL_ATTACKS: tuple[str, ...] = SCORE_ATTACKS + LIRA_ATTACKS
FIX_VARIANCE_BELOW = 64   # shadows per variant under which the variance is pooled (Carlini et al.)


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

    The frozen LLM's layers below the injection layer, the question encoder and the question texts do
    not depend on the expert, so they run once here; each expert then costs only the layers above the
    injection layer (`LlamdexModel.inject`, tested equal to the one-pass `answer`)."""

    seat = "query"

    def __init__(self, llamdex: Any, records: pd.DataFrame, *, seed: int = 0, batch_size: int = 16, progress: bool = False):
        from protocol.verbalizer import Verbalizer

        self.model = llamdex
        schema = llamdex.schema
        # a verbalizer seed apart from connector training (seed 0..) and evaluation (10_000 + seed)
        questions = Verbalizer(schema, seed=20_000 + seed).questions(records[schema.feature_names].to_dict("records"))
        order = np.argsort([len(q) for q in questions], kind="stable")
        j, k = llamdex.config.encoder_layer, llamdex.config.inject_layer
        self._cache: list[tuple[np.ndarray, Any, torch.Tensor, torch.Tensor]] = []
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        with torch.inference_mode():
            for i, idx in enumerate(chunks):
                batch = llamdex.batch([questions[t] for t in idx])
                hs = llamdex.lm.lower(batch, [j, k])
                feats = llamdex.encoder.to_expert_input(llamdex.encoder(hs[j], batch.question_mask, batch.numbers))
                self._cache.append((idx, batch, hs[k], feats))
                if progress:
                    print(f"  query seat: encoded {min((i + 1) * batch_size, len(order))}/{len(order)} questions", flush=True)
        self._n = len(questions)
        self.num_classes = schema.label.num_classes

    def __len__(self) -> int:
        return self._n

    def log_probs(self, model: torch.nn.Module) -> np.ndarray:
        out = np.zeros((self._n, self.num_classes))
        model.eval()
        with torch.inference_mode():
            for idx, batch, h_k, feats in self._cache:
                probs = model(feats).float().softmax(-1)
                logits = self.model.inject(h_k, batch, probs)
                out[idx] = torch.log_softmax(logits.double(), dim=-1).numpy()
        return out


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
               aux_size: int | None = None) -> MIASplit:
    """Shuffles the rows and cuts: `target_size` training records, `eval_nonmembers` held-out records,
    and the rest (or `aux_size` of it) as the attacker's population; members are drawn from training."""
    if eval_members > target_size:
        raise ValueError(f"eval_members ({eval_members}) cannot exceed target_size ({target_size})")
    need = target_size + eval_nonmembers + target_size
    if n_rows < need:
        raise ValueError(f"the table has {n_rows} rows; target_size {target_size} + eval_nonmembers {eval_nonmembers} + an auxiliary "
                         f"population of at least target_size needs {need}; lower --target-size or --nonmembers")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_rows)
    train, out = perm[:target_size], perm[target_size:target_size + eval_nonmembers]
    aux = perm[target_size + eval_nonmembers:]
    if aux_size is not None:
        aux = aux[:max(aux_size, target_size)]
    members = rng.choice(train, size=eval_members, replace=False)
    return MIASplit(np.sort(train), np.sort(out), np.sort(aux), members, out.copy())


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
class MIAConfig:
    """Sizes and recipe of one membership-inference experiment."""

    target_size: int = 1000
    eval_members: int = 500
    eval_nonmembers: int = 500
    n_shadows: int = 16                 # per LiRA variant (online and offline each)
    epsilon: float | None = None        # None: the target trains without DP
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    fix_variance: bool | None = None    # None: pooled variance below 64 shadows
    attacks: tuple[str, ...] = ALL_ATTACKS
    query_members: int = 200            # query seat: bounded numbers of records (the LLM is slow on CPU)
    query_nonmembers: int = 200
    query_shadows: int | None = None    # shadows per LiRA variant used from the query seat (None: all)
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
            "llamdex_accuracy": self.llamdex_accuracy, "expert_accuracy_query_subset": self.expert_accuracy_query_subset,
            "results": [r.to_dict(with_roc) for r in self.results], "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }


def _say(progress: bool | Callable[[str], None], msg: str) -> None:
    if callable(progress):
        progress(msg)
    elif progress:
        print(msg, flush=True)


def train_shadows(x: np.ndarray, y: np.ndarray, schema: Any, cfg: Any, split: MIASplit, n_shadows: int, *, online: bool,
                  seed: int, progress: bool | Callable[[str], None] = False) -> tuple[list[torch.nn.Module], np.ndarray | None]:
    """Shadow experts with the target's recipe. Offline: random `target_size` subsets of the auxiliary
    population. Online: each challenge record in exactly half of them, filled up from the auxiliary
    population to the target's training-set size. Returns the models and the (S, n_challenge) inclusion
    matrix (None offline)."""
    from client_party.expert_training import train_expert

    rng = np.random.default_rng([seed, 1 if online else 2])
    n_t, challenge = len(split.train), split.challenge
    if len(split.aux) < n_t:
        raise ValueError(f"the auxiliary population has {len(split.aux)} records, fewer than the target's {n_t} training records")
    inc = balanced_inclusion(n_shadows, len(challenge), rng) if online else None
    models = []
    for s in range(n_shadows):
        if online:
            chosen = challenge[inc[s]]
            fill = max(0, n_t - len(chosen))
            idx = np.concatenate([chosen, rng.choice(split.aux, size=fill, replace=False)])
        else:
            idx = rng.choice(split.aux, size=n_t, replace=False)
        idx = rng.permutation(idx)
        shadow_cfg = replace(cfg, seed=int(rng.integers(2**31 - 1)))
        models.append(train_expert(x[idx], y[idx], schema, shadow_cfg).model)
        _say(progress, f"  shadow {'online' if online else 'offline'} {s + 1}/{n_shadows}")
    return models, inc


def attack_channel(channel: Any, y: np.ndarray, is_member: np.ndarray, target: torch.nn.Module, *, attacks: Sequence[str],
                   shadows_online: Sequence[torch.nn.Module] = (), inclusion: np.ndarray | None = None,
                   shadows_offline: Sequence[torch.nn.Module] = (), fix_variance: bool | None = None,
                   delta: float = 0.0) -> list[AttackResult]:
    """Runs the requested attacks on one seat's observations of the challenge records; `delta` (the
    target's δ) enters each attack's empirical ε lower bound."""
    logp = channel.log_probs(target)
    out: list[AttackResult] = []
    scores = score_attacks(logp, y)
    seat = channel.seat
    for name in attacks:
        if name in scores:
            out.append(evaluate_attack(name, scores[name], is_member, seat, delta=delta))
    phi = lira_statistic(logp, y)
    if "lira_online" in attacks and shadows_online:
        sp = np.stack([lira_statistic(channel.log_probs(m), y) for m in shadows_online])
        scores_on = lira_online(phi, sp, inclusion[: len(shadows_online)], fix_variance)
        out.append(evaluate_attack("lira_online", scores_on, is_member, seat, delta=delta))
    if "lira_offline" in attacks and shadows_offline:
        sp = np.stack([lira_statistic(channel.log_probs(m), y) for m in shadows_offline])
        out.append(evaluate_attack("lira_offline", lira_offline(phi, sp, fix_variance), is_member, seat, delta=delta))
    return out


def run_mia(dataset: str | tuple[pd.DataFrame, Any], config: MIAConfig, *, llamdex: Any = None,
            progress: bool | Callable[[str], None] = False, target: Any = None, query_channel: LLMChannel | None = None) -> MIAReport:
    """Trains the target (unless `target` = (TrainedExpert, MIASplit) is given) and the shadows, and
    attacks from the provider seat, and from the query seat when a `LlamdexModel` (or a prebuilt
    `query_channel` from `build_query_channel`) is given."""
    from client_party.datasets import encode_table, load_table
    from client_party.expert_training import train_expert

    df, schema = load_table(dataset) if isinstance(dataset, str) else dataset
    name = dataset if isinstance(dataset, str) else schema.name
    x, y = encode_table(df, schema)
    cfg = train_config(config.epsilon, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
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
        acc = float((log_probs(trained.model, x[split.out]).argmax(1) == y[split.out]).mean())
        want_lira = [a for a in config.attacks if a in LIRA_ATTACKS]
        t0 = time.perf_counter()
        on, inc = train_shadows(x, y, schema, cfg, split, config.n_shadows, online=True, seed=config.seed, progress=progress) \
            if "lira_online" in want_lira else ([], None)
        off, _ = train_shadows(x, y, schema, cfg, split, config.n_shadows, online=False, seed=config.seed, progress=progress) \
            if "lira_offline" in want_lira else ([], None)
        times["shadows"] = time.perf_counter() - t0
        ch = split.challenge
        t0 = time.perf_counter()
        results = attack_channel(ExpertChannel(x[ch]), y[ch], split.is_member, trained.model, attacks=config.attacks,
                                 shadows_online=on, inclusion=inc, shadows_offline=off, fix_variance=config.fix_variance,
                                 delta=float(trained.dp.delta))
        times["provider_attacks"] = time.perf_counter() - t0
    report = MIAReport(name, config.to_dict(), trained.dp.to_dict(), acc, results, timings=times)
    if llamdex is not None or query_channel is not None:   # the LLM runs with the caller's thread setting
        t0 = time.perf_counter()
        _query_seat(report, llamdex, df, x, y, split, trained.model, on, inc, off, config, progress, query_channel)
        times["query_attacks"] = time.perf_counter() - t0
    return report


def query_selection(split: MIASplit, config: MIAConfig) -> np.ndarray:
    """Positions in `split.challenge` attacked from the query seat: the first `query_members` members
    and `query_nonmembers` non-members (the LLM is slow on CPU, so the numbers are bounded)."""
    n_m, n_n = min(config.query_members, len(split.members)), min(config.query_nonmembers, len(split.nonmembers))
    return np.concatenate([np.arange(n_m), len(split.members) + np.arange(n_n)])


def build_query_channel(llamdex: Any, df: pd.DataFrame, split: MIASplit, config: MIAConfig, progress: bool = False) -> LLMChannel:
    """The query seat's view of the selected challenge records (reusable across targets on the same split)."""
    rows = split.challenge[query_selection(split, config)]
    return LLMChannel(llamdex, df.iloc[rows], seed=config.seed, progress=progress)


def _query_seat(report: MIAReport, llamdex: Any, df: pd.DataFrame, x: np.ndarray, y: np.ndarray, split: MIASplit, target: Any,
                on: list, inc: np.ndarray | None, off: list, config: MIAConfig, progress: bool | Callable[[str], None],
                channel: LLMChannel | None = None) -> None:
    """The same attacks through the customized LLM on a bounded subset of the challenge records."""
    sel = query_selection(split, config)
    rows = split.challenge[sel]
    member = split.is_member[sel]
    _say(progress, f"{report.dataset}: query seat on {int(member.sum())} members + {int((~member).sum())} non-members through the LLM")
    if channel is None:
        channel = build_query_channel(llamdex, df, split, config)
    if len(channel) != len(rows):
        raise ValueError(f"the query channel holds {len(channel)} records, the selection {len(rows)}; build it with build_query_channel")
    k = config.query_shadows if config.query_shadows is not None else config.n_shadows
    q_inc = inc[:k, sel] if inc is not None else None
    results = attack_channel(channel, y[rows], member, target, attacks=config.attacks, shadows_online=on[:k],
                             inclusion=q_inc, shadows_offline=off[:k], fix_variance=config.fix_variance,
                             delta=float(report.dp.get("delta") or 0.0))
    report.results.extend(results)
    held = ~member
    llm = channel.log_probs(target).argmax(1)
    report.llamdex_accuracy = float((llm[held] == y[rows][held]).mean())
    report.expert_accuracy_query_subset = float((log_probs(target, x[rows[held]]).argmax(1) == y[rows][held]).mean())


__all__ = [
    "ALL_ATTACKS", "ExpertChannel", "build_query_channel", "query_selection", "LIRA_ATTACKS", "LLMChannel", "MIAConfig", "MIAReport", "MIASplit", "SCORE_ATTACKS",
    "attack_channel", "balanced_inclusion", "lira_offline", "lira_online", "lira_statistic", "log_probs", "make_split",
    "run_mia", "score_attacks", "torch_threads", "train_config", "train_shadows",
]
