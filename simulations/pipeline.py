"""The core Llamdex pipeline in one process: client trains experts, provider trains connectors, evaluate.

This is what `llamdex demo --in-process` and the accuracy benchmark run. The client side only
touches `client_party`, the provider side only `provider_party`; what crosses between them is
exactly what the protocol carries: the public schema and the expert (spec + tensors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from client_party.datasets import TableRef, encode_table, split_table
from client_party.expert_training import TrainConfig, train_expert
from protocol.schema import PublicSchema
from provider_party.model.base_llm import EMBEDDED, BaseLLM, load_base_llm
from provider_party.model.connector_store import ConnectorStore
from provider_party.model.connector_training import Preset
from simulations.evaluation import evaluate, scores


def eps_key(eps: float | None, decision: str = "balanced") -> str:
    """The name of the expert trained at `eps` (None = no DP) with `decision`; the default rule keeps the plain name."""
    key = "no-dp" if eps is None else f"eps={eps:g}"
    return key if decision == "balanced" else f"{key}/{decision}"


# Row method names of the experts trained with a decision rule other than the client's default.
DECISION_METHODS = {"calibrated": ("expert_calibrated", "llamdex_calibrated")}


@dataclass
class PipelineResult:
    dataset: str
    rows: list[dict[str, Any]]
    extraction: dict[str, dict]
    connector_metrics: dict[str, Any]
    connectors_trained_now: bool
    dp: dict[str, dict]
    timings: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0
    # The in-process objects, for callers that go on to measure (not serialised).
    model: Any = field(default=None, repr=False)
    experts: dict[str, Any] = field(default_factory=dict, repr=False)
    questions: list[str] = field(default_factory=list, repr=False)  # the held-out questions evaluated, in test order
    phrasing: dict[str, dict] = field(default_factory=dict)  # per expert: Llamdex on the evaluation-only phrasings
    # Rows of the experts trained with the other decision rules of `decisions` (methods `DECISION_METHODS`);
    # kept apart from `rows` because the comparison benchmark owns rows of those names in accuracy.json.
    decision_rows: list[dict[str, Any]] = field(default_factory=list)
    # With expert_seeds > 1, per expert name (e.g. "no-dp", "eps=1/calibrated"): `seed_spread` over its seeds.
    seed_runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def held_out_split(df: pd.DataFrame, schema: PublicSchema, *, seed: int = 0, max_train: int | None = None,
                   max_test: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline's 80/20 split, each side cut to a stratified subsample when capped.

    Every benchmark and study that compares with `run_pipeline` takes its records from here, so that two
    figures side by side are always measured on the same held-out records.
    """
    train, test = split_table(df, schema, test_size=0.2, seed=seed)
    if max_train is not None and len(train) > max_train:
        train, _ = split_table(train, schema, test_size=1 - max_train / len(train), seed=seed)
    if max_test is not None and len(test) > max_test:
        test, _ = split_table(test, schema, test_size=1 - max_test / len(test), seed=seed)
    return train, test


def run_pipeline(table: TableRef | str = "titanic", epsilons: tuple[float | None, ...] = (None, 1.0, 4.0), *, preset: Preset | str = "default",
                 seed: int = 0, max_test: int | None = None, max_train: int | None = None, base_model: str | BaseLLM = EMBEDDED,
                 connectors_root=None, retrain: bool = False, progress: bool = True, log=print,
                 decision: str = "balanced", decisions: tuple[str, ...] = (), expert_seeds: int = 1) -> PipelineResult:
    """Client experts (one per ε; None = no DP), the provider's connectors for the schema, and the evaluation.

    decision: the experts' decision rule (`TrainConfig.decision`): "balanced" (the client's default) or
    "calibrated" (plain accuracy, the rule every fine-tuned baseline follows).
    decisions: further rules to train a second expert with at every ε, evaluated through the same
    connectors and questions (the connectors depend on the schema alone) and reported in `decision_rows`:
    each rule is measured by the metric it maximises, side by side.
    base_model: a name `load_base_llm` takes, or a base LLM the caller has loaded already.
    expert_seeds: experts trained per rule and ε, with seeds `seed`, `seed + 1`, ... (DP-SGD also draws
    fresh noise each time); every one goes through the same connectors and questions, so `seed_runs`
    tells a difference between two figures from the spread of one figure over training runs. The rows
    report the first (`seed`).

    `table` is a `TableRef` (a registered table, or a CSV/Parquet file with its schema) or the text
    `--data` takes (a registered name or a file path). Rows and results are named by `table.id`.
    """
    if not (isinstance(expert_seeds, int) and expert_seeds >= 1):
        raise ValueError(f"expert_seeds must be an integer >= 1, got {expert_seeds!r}")
    unknown = [d for d in decisions if d not in DECISION_METHODS]
    if unknown:
        raise ValueError(f"decisions {unknown}: the extra decision rules are {sorted(DECISION_METHODS)}")
    table = table if isinstance(table, TableRef) else TableRef.parse(table)
    dataset = table.id
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    df, schema = table.load()
    train, test = held_out_split(df, schema, seed=seed, max_train=max_train, max_test=max_test)
    log(f"[client] {dataset}: {len(train)} training and {len(test)} held-out records (schema {schema.digest[:19]}…)")

    # Client: train the experts (the data never leaves this block).
    x_train, y_train = encode_table(train, schema)
    extra = [d for d in dict.fromkeys(decisions) if d != decision]
    experts, dp = {}, {}
    replicas: dict[str, list[str]] = {}   # expert name -> its names under every seed, the first being itself
    for rule, eps, i in [(r, e, i) for r in [decision, *extra] for e in epsilons for i in range(expert_seeds)]:
        name = eps_key(eps) if rule == decision else eps_key(eps, rule)
        key = name if i == 0 else f"{name}#seed={seed + i}"
        replicas.setdefault(name, []).append(key)
        cfg = TrainConfig(seed=seed + i, decision=rule) if eps is None else TrainConfig.private(eps, seed=seed + i, decision=rule)
        t = time.perf_counter()
        trained = train_expert(x_train, y_train, schema, cfg, progress=progress)
        # What the provider receives: the spec and the tensors, rebuilt without client code.
        experts[key] = trained.as_received()
        if i > 0:
            continue
        timings[f"expert_{key}_s"] = time.perf_counter() - t
        dp[key] = trained.dp.to_dict()
        if eps is not None:
            log(f"[client] DP-SGD expert ({rule}): target ε={eps:g}, achieved ε={trained.dp.epsilon:.3f} at δ={trained.dp.delta:.2e} "
                f"(σ={trained.dp.noise_multiplier:.3f}, q={trained.dp.sample_rate:.4f}, {trained.dp.steps} steps)")
    timings["client_s"] = time.perf_counter() - t0

    # Provider: base LLM + connectors for this schema (trained from the schema alone, or reused).
    t = time.perf_counter()
    base = base_model if isinstance(base_model, BaseLLM) else load_base_llm(base_model)   # a caller's loaded model is reused
    model, trained_now = ConnectorStore(connectors_root).get_or_train(base, schema, preset, seed=seed, progress=progress, retrain=retrain)
    timings["connectors_s"] = time.perf_counter() - t
    log(f"[provider] connectors for {base.model_id} × {schema.name}: {'trained' if trained_now else 'reused'} "
        f"(inject layer k={model.config.inject_layer}, encoder layer j={model.config.encoder_layer}, {model.config.num_tokens} slots)")

    t = time.perf_counter()
    result = evaluate(model, test, experts, seed=seed, progress=progress)
    timings["evaluate_s"] = time.perf_counter() - t
    rows = [{"dataset": dataset, "method": "base_llm", "epsilon": None, **scores(result.y_true, result.base_pred), "n_test": len(test), "seed": seed}]
    for eps in epsilons:
        rows += _expert_rows(result, eps_key(eps), ("expert", "llamdex"), dataset=dataset, eps=eps, seed=seed)
    majority = np.bincount(result.y_true).argmax()
    rows.append({"dataset": dataset, "method": "majority_class", "epsilon": None, **scores(result.y_true, np.full_like(result.y_true, majority)), "n_test": len(test), "seed": seed})
    decision_rows = [r for rule in extra for eps in epsilons
                     for r in _expert_rows(result, eps_key(eps, rule), DECISION_METHODS[rule], dataset=dataset, eps=eps, seed=seed)]
    seed_runs = {name: seed_spread(result, keys, first_seed=seed) for name, keys in replicas.items()} if expert_seeds > 1 else {}
    phrasing = {k: v for k, v in result.phrasing.items() if k in replicas}   # the first seed's, as the rows
    return PipelineResult(dataset, rows, result.extraction, model.config.metrics, trained_now, dp, timings, len(train), len(test),
                          model=model, experts=experts, questions=result.questions, phrasing=phrasing, decision_rows=decision_rows,
                          seed_runs=seed_runs)


def seed_spread(result, keys: list[str], *, first_seed: int) -> dict[str, list[float]]:
    """One expert recipe's figures under each training seed (lists in seed order): the expert's and Llamdex's
    accuracy and balanced accuracy, their agreement, and the agreement on the evaluation-only phrasings."""
    out: dict[str, list[float]] = {"seeds": [first_seed + i for i in range(len(keys))]}
    for key in keys:
        for who, pred in (("expert", result.expert_pred[key]), ("llamdex", result.llamdex_pred[key])):
            s = scores(result.y_true, pred)
            out.setdefault(f"{who}_accuracy", []).append(s["accuracy"])
            out.setdefault(f"{who}_balanced_accuracy", []).append(s["balanced_accuracy"])
        out.setdefault("agreement", []).append(float((result.llamdex_pred[key] == result.expert_pred[key]).mean()))
        if key in result.phrasing:
            out.setdefault("phrasing_agreement", []).append(result.phrasing[key]["agreement"])
    return out


def _expert_rows(result, key: str, methods: tuple[str, str], *, dataset: str, eps: float | None, seed: int) -> list[dict[str, Any]]:
    """The expert named `key` and Llamdex with it, as rows of `methods` (expert's, Llamdex's); Llamdex's row
    carries its agreement with the expert."""
    expert, llamdex = result.expert_pred[key], result.llamdex_pred[key]

    def row(method: str, pred) -> dict[str, Any]:
        return {"dataset": dataset, "method": method, "epsilon": eps, **scores(result.y_true, pred), "n_test": len(result.y_true), "seed": seed}

    return [row(methods[0], expert), {**row(methods[1], llamdex), "agreement_with_expert": float((llamdex == expert).mean())}]


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | method | ε | accuracy | balanced acc. | macro F1 | n_test |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "–" if r["epsilon"] is None else f"{r['epsilon']:g}"
        lines.append(f"| {r['dataset']} | {r['method']} | {eps} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | {r['macro_f1']:.3f} | {r['n_test']} |")
    return "\n".join(lines)
