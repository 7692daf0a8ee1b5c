"""Attribute inference: guess a record's sensitive column (declared `sensitive` in the schema) from
the other columns, the label and the expert, against a baseline that uses the population alone.

The attacker knows a target record except its sensitive value s, knows the record's label y, and
holds the expert (provider seat). For each candidate value v it asks the expert for p(y | others, v)
and combines it with what the auxiliary population says about v given the other columns:

    ŝ = argmax_v  f_target(y | others, v) · P_aux(v | others)       (Fredrikson et al.; Yeom et al. 2018)

Baselines that never touch the expert: `prior`, the most frequent value in the population, and
`population`, a classifier trained on the auxiliary population that sees the other columns *and*
the label, i.e. the best guess public data allows. Leakage shows as attack accuracy on members
above the same attack on non-members and above the population baseline. Only categorical and boolean
sensitive columns are supported (all bundled schemas declare such columns).

Intervals (95 %): exact Clopper–Pearson for each accuracy; percentile bootstrap over records for the
advantage (paired: attack and baseline on the same members) and for the membership gap (members and
non-members resampled separately). Leakage is claimed only when the interval excludes 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class AttributeResult:
    column: str
    levels: list[str]
    n_members: int
    n_nonmembers: int
    attack_members: float            # accuracy of the attack on members
    attack_nonmembers: float
    population_members: float        # the population baseline (other columns + label, no expert)
    population_nonmembers: float
    prior: float                     # accuracy of always guessing the population's most frequent value (on all)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)   # 95 % intervals, see the module doc

    @property
    def advantage(self) -> float:
        """Attack accuracy on members minus the population baseline on members."""
        return self.attack_members - self.population_members

    @property
    def membership_gap(self) -> float:
        """Attack accuracy on members minus on non-members: what the expert memorized."""
        return self.attack_members - self.attack_nonmembers

    def to_dict(self) -> dict[str, Any]:
        r = lambda v: round(float(v), 5)  # noqa: E731
        return {"column": self.column, "levels": self.levels, "n_members": self.n_members, "n_nonmembers": self.n_nonmembers,
                "attack_members": r(self.attack_members), "attack_nonmembers": r(self.attack_nonmembers),
                "population_members": r(self.population_members), "population_nonmembers": r(self.population_nonmembers),
                "prior": r(self.prior), "advantage": r(self.advantage), "membership_gap": r(self.membership_gap),
                **{f"{k}_ci": [r(v) for v in ci] for k, ci in self.intervals.items()},
                "leaks": bool(self.intervals.get("advantage", (0.0, 0.0))[0] > 0 or self.intervals.get("membership_gap", (0.0, 0.0))[0] > 0)}


def _other_features(fe: Any, x: np.ndarray, column: str) -> np.ndarray:
    """Encoded rows without the sensitive column's block."""
    keep = np.ones(x.shape[1], dtype=bool)
    for b in fe.blocks:
        if b.column.name == column:
            keep[b.start:b.stop] = False
    return x[:, keep]


def _population_model(features: np.ndarray, target: np.ndarray, n_levels: int, seed: int):
    """A classifier of the sensitive value from public-population features (predict_proba over all levels)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, random_state=seed)
    clf.fit(features, target)

    def proba(f: np.ndarray) -> np.ndarray:
        out = np.full((len(f), n_levels), 1e-6)
        out[:, clf.classes_] = np.clip(clf.predict_proba(f), 1e-6, None)
        return out / out.sum(1, keepdims=True)
    return proba


def attribute_inference(model: Any, schema: Any, records: pd.DataFrame, is_member: np.ndarray, aux: pd.DataFrame,
                        column: str | None = None, seed: int = 0) -> AttributeResult:
    """Runs the attack and both baselines on `records` (members and non-members of the expert's
    training set); `aux` is the attacker's population, disjoint from the training set."""
    from protocol.encoding import FeatureEncoder
    from simulations.attacks.mia import log_probs

    column = column or (schema.sensitive_columns[0] if schema.sensitive_columns else None)
    choices = [c.name for c in schema.columns if not c.is_numeric]
    if column is None:
        raise ValueError(f"schema {schema.name!r} declares no sensitive column; name the column to infer (--column on the command "
                         f"line, column= in Python) from {choices}, or mark one 'sensitive': true in the schema")
    if column not in schema.feature_names:   # the label is what the expert predicts, not a feature it reads
        what = "the label" if column == schema.label.name else "not a column of the schema"
        raise ValueError(f"column {column!r} is {what}; choose a categorical or boolean feature: {choices}")
    col = schema.column(column)
    if col.is_numeric:
        raise ValueError(f"column {column!r} is numeric; attribute inference supports categorical and boolean columns: {choices}")
    levels = list(col.levels)
    fe = FeatureEncoder(schema)
    label = schema.label.name
    known = records[column].notna().to_numpy()       # records whose sensitive value is missing are not scored
    records, is_member = records[known], np.asarray(is_member, bool)[known]
    aux = aux[aux[column].notna()]
    truth = np.array([levels.index(v) for v in records[column]])
    aux_truth = np.array([levels.index(v) for v in aux[column]])
    y = fe.label_index(records[label])
    n_classes = schema.label.num_classes

    x_aux = fe.encode_frame(aux)
    y_aux = fe.label_index(aux[label])
    others_aux = _other_features(fe, x_aux, column)
    with_label = lambda f, yy: np.concatenate([f, np.eye(n_classes)[yy]], axis=1)  # noqa: E731
    p_given_others = _population_model(others_aux, aux_truth, len(levels), seed)
    p_given_all = _population_model(with_label(others_aux, y_aux), aux_truth, len(levels), seed)

    x_rec = fe.encode_frame(records)
    others = _other_features(fe, x_rec, column)
    log_prior = np.log(p_given_others(others))
    log_lik = np.zeros((len(records), len(levels)))
    for i, v in enumerate(levels):
        candidate = records.copy()
        candidate[column] = v
        log_lik[:, i] = log_probs(model, fe.encode_frame(candidate))[np.arange(len(records)), y]
    attack = (log_lik + log_prior).argmax(1)
    baseline = p_given_all(with_label(others, y)).argmax(1)
    prior_guess = np.bincount(aux_truth, minlength=len(levels)).argmax()
    m = is_member
    acc = lambda guess, sel: float((guess[sel] == truth[sel]).mean()) if sel.any() else float("nan")  # noqa: E731
    return AttributeResult(
        column=column, levels=levels, n_members=int(m.sum()), n_nonmembers=int((~m).sum()),
        attack_members=acc(attack, m), attack_nonmembers=acc(attack, ~m),
        population_members=acc(baseline, m), population_nonmembers=acc(baseline, ~m),
        prior=float((truth == prior_guess).mean()),
        intervals=accuracy_intervals(attack == truth, baseline == truth, m, seed),
    )


def accuracy_intervals(attack_ok: np.ndarray, baseline_ok: np.ndarray, is_member: np.ndarray, seed: int = 0,
                       resamples: int = 2000, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """95 % intervals of the attribute attack's figures from per-record correctness (see the module doc)."""
    from simulations.attacks.metrics import clopper_pearson

    m = np.asarray(is_member, bool)
    out: dict[str, tuple[float, float]] = {}
    for name, ok, sel in (("attack_members", attack_ok, m), ("attack_nonmembers", attack_ok, ~m),
                          ("population_members", baseline_ok, m)):
        if sel.any():
            out[name] = clopper_pearson(int(ok[sel].sum()), int(sel.sum()), confidence)
    rng = np.random.default_rng([seed, 9])
    a = (1 - confidence) / 2
    if m.any():
        diff = (attack_ok[m].astype(float) - baseline_ok[m].astype(float))
        boot = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(1)
        out["advantage"] = tuple(float(v) for v in np.quantile(boot, [a, 1 - a]))
    if m.any() and (~m).any():
        am, an = attack_ok[m].astype(float), attack_ok[~m].astype(float)
        boot = am[rng.integers(len(am), size=(resamples, len(am)))].mean(1) - an[rng.integers(len(an), size=(resamples, len(an)))].mean(1)
        out["membership_gap"] = tuple(float(v) for v in np.quantile(boot, [a, 1 - a]))
    return out


def run_attribute(dataset: str | tuple[pd.DataFrame, Any], *, column: str | None = None, epsilon: float | None = None,
                  target_size: int = 1000, eval_members: int = 500, eval_nonmembers: int = 500, epochs: int | None = None,
                  batch_size: int | None = None, lr: float | None = None, seed: int = 0, target: Any = None) -> tuple[AttributeResult, dict]:
    """Trains a target (unless `target` = (TrainedExpert, MIASplit)) and attacks its sensitive column.
    Returns the result and the target's DP statement."""
    from client_party.datasets import encode_table, load_table
    from client_party.expert_training import train_expert
    from simulations.attacks.mia import make_split, torch_threads, train_config

    df, schema = load_table(dataset) if isinstance(dataset, str) else dataset
    if target is None:
        x, y = encode_table(df, schema)
        split = make_split(len(df), target_size, eval_members, eval_nonmembers, seed)
        cfg = train_config(epsilon, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        with torch_threads(1):
            trained = train_expert(x[split.train], y[split.train], schema, cfg)
    else:
        trained, split = target
    ch = split.challenge
    records = df.iloc[ch].reset_index(drop=True)
    result = attribute_inference(trained.model, schema, records, split.is_member, df.iloc[split.aux], column, seed)
    return result, trained.dp.to_dict()


__all__ = ["AttributeResult", "accuracy_intervals", "attribute_inference", "run_attribute"]
