"""Attacks on a real, signed expert artifact with records an auditor holds (not a simulated client).

Inputs: an artifact folder (verified first with `protocol.artifact.ArtifactVerifier` under a trusted
client key: signature, every digest, spec, schema, DP statement), the records it was trained on
(`members`) and records it was not (`nonmembers`), both CSV or Parquet files under the artifact's
own `schema.json`, and optionally a public table (`population`) under the same schema.

- **Shadow experts** are trained with the client's default recipe at the artifact's ε (DP-SGD) or
  without DP, on random subsets of the population table; without one, the non-members are cut in
  two halves, one to train shadows on and one to attack, so no attacked record is ever in a shadow.
  Every attacked record is therefore OUT of every shadow: the offline attacks (LiRA offline, RMIA
  offline with population records z from the shadow pool) and the five score attacks run.
- **Provider seat**: the artifact's expert on the encoded records.
- **Query seat** (`ProviderClient`): the records turned into questions (the shared verbalizer) and
  asked through a running provider's `Ask` for this artifact; the answer probabilities feed the
  score attacks (shadows cannot be pushed through someone else's LLM).

Nothing here prints or logs a record: only counts and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from simulations.attacks.metrics import AttackResult

MIN_RECORDS = 20


@dataclass
class ArtifactTarget:
    """A verified artifact, its expert, and the auditor's records under its schema."""

    artifact: Any                      # protocol.artifact.VerifiedArtifact
    model: Any
    members: pd.DataFrame
    nonmembers: pd.DataFrame
    population: pd.DataFrame | None = None

    @property
    def schema(self) -> Any:
        return self.artifact.schema

    @property
    def dp(self) -> Any:
        return self.artifact.dp


def load_records(path: str | Path, artifact_folder: str | Path, what: str) -> pd.DataFrame:
    """A CSV/Parquet file validated against the artifact's own schema.json (errors name the file and the rule)."""
    from client_party.datasets import TableRef

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, f"--{what} is a folder, not a file of records", str(path))
    if not path.is_file():
        raise FileNotFoundError(2, f"--{what}: no such file", str(path))
    from protocol.errors import DataValidationError, LlamdexError
    from protocol.rpc_errors import redacted_data_error

    try:
        df, _ = TableRef.parse(path, Path(artifact_folder) / "schema.json").load()
    except DataValidationError as e:   # the records stay unprinted: counts, kinds and columns only
        raise ValueError(f"--{what} {path} does not fit the artifact's schema: {str(redacted_data_error(e)).split('] ', 1)[-1]}") from None
    except (LlamdexError, ValueError) as e:
        raise ValueError(f"--{what} {path} does not fit the artifact's schema: {e}") from None
    if len(df) < MIN_RECORDS:
        raise ValueError(f"--{what} {path}: {len(df)} records; at least {MIN_RECORDS} are needed for an attack to mean anything")
    return df.reset_index(drop=True)


def load_target(folder: str | Path, client_keys: Sequence[Any], members: str | Path, nonmembers: str | Path,
                population: tuple[pd.DataFrame, Any] | None = None) -> ArtifactTarget:
    """Verifies the artifact, loads its expert (safetensors) and the member / non-member files."""
    from protocol.artifact import ArtifactVerifier

    va = ArtifactVerifier(list(client_keys)).verify(Path(folder))
    pop = None
    if population is not None:
        pop_df, pop_schema = population
        if pop_schema.digest != va.schema.digest:
            raise ValueError(f"the population table is under schema {pop_schema.name!r} ({pop_schema.digest}), the artifact's is "
                             f"{va.schema.name!r} ({va.schema.digest}); give a public table under the artifact's schema")
        pop = pop_df.reset_index(drop=True)
    return ArtifactTarget(va, va.load_expert(), load_records(members, folder, "members"), load_records(nonmembers, folder, "nonmembers"), pop)


@dataclass
class ArtifactMIAReport:
    """What the attacks on one artifact measured (no record values)."""

    artifact: str
    digest: str
    dp: dict[str, Any]
    members: int
    nonmembers_attacked: int
    shadows: int
    shadow_pool: str
    results: list[AttackResult] = field(default_factory=list)
    expert_accuracy_nonmembers: float | None = None

    def to_dict(self, with_roc: bool = False) -> dict[str, Any]:
        from simulations.attacks.mia import best_attack

        return {"artifact": self.artifact, "digest": self.digest, "dp": self.dp, "members": self.members,
                "nonmembers_attacked": self.nonmembers_attacked, "shadows": self.shadows, "shadow_pool": self.shadow_pool,
                "expert_accuracy_nonmembers": self.expert_accuracy_nonmembers,
                "results": [r.to_dict(with_roc) for r in self.results],
                "best": {seat: best_attack(self.results, seat) for seat in ("provider", "query") if any(r.seat == seat for r in self.results)}}


def _recipe(dp: Any, seed: int):
    from client_party.expert_training import TrainConfig

    return TrainConfig.private(float(dp.epsilon), seed=seed) if dp.is_private else TrainConfig(seed=seed)


def shadow_pool(target: ArtifactTarget, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(records to train shadows on, non-members to attack, a description of the pool)."""
    if target.population is not None:
        return target.population, target.nonmembers, f"public table ({len(target.population)} records)"
    rng = np.random.default_rng([seed, 5])
    perm = rng.permutation(len(target.nonmembers))
    half = len(perm) // 2
    return (target.nonmembers.iloc[np.sort(perm[:half])].reset_index(drop=True),
            target.nonmembers.iloc[np.sort(perm[half:])].reset_index(drop=True),
            f"half of the non-members ({half} records; the other {len(perm) - half} are attacked)")


def attack_artifact(target: ArtifactTarget, *, n_shadows: int = 16, population: int = 500, seed: int = 0,
                    ask: Callable[[list[str]], np.ndarray] | None = None, query_records: int | None = None,
                    attacks: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> ArtifactMIAReport:
    """Membership inference against the artifact from the provider seat, and from the query seat when
    `ask` (questions -> answer probabilities, e.g. through a running provider) is given; the query seat
    asks about every attacked record, or a seeded sample of `query_records` members and as many non-members."""
    from client_party.datasets import encode_table
    from client_party.expert_training import train_expert
    from protocol.verbalizer import Verbalizer
    from simulations.attacks.mia import ALL_ATTACKS, SCORE_ATTACKS, ExpertChannel, Shadows, attack_view, observe, torch_threads

    attacks = tuple(attacks or ALL_ATTACKS)
    schema = target.schema
    pool, nonmembers, pool_desc = shadow_pool(target, seed)
    records = pd.concat([target.members, nonmembers], ignore_index=True)
    is_member = np.r_[np.ones(len(target.members), bool), np.zeros(len(nonmembers), bool)]
    x, y = encode_table(records, schema)
    xp, yp = encode_table(pool, schema)
    rng = np.random.default_rng([seed, 6])
    size = min(len(pool) // 2, len(target.members))      # the target trained on (about) the members
    shadows = Shadows([], [])
    with torch_threads(1):
        for s in range(n_shadows if any(a not in SCORE_ATTACKS for a in attacks) else 0):
            rows = np.sort(rng.choice(len(pool), size=size, replace=False))
            shadows.models.append(train_expert(xp[rows], yp[rows], schema, _recipe(target.dp, int(rng.integers(2**31 - 1)))).model)
            shadows.rows.append(rows)
            if progress:
                progress(f"  shadow {s + 1}/{n_shadows} trained on {size} pool records")
    z = np.sort(rng.choice(len(pool), size=min(population, len(pool)), replace=False))
    no_inc = np.zeros((len(shadows), len(records)), bool)
    view = observe(ExpertChannel(x), target.model, shadows.models, y, is_member, no_inc, ExpertChannel(xp[z]), yp[z], shadows.inclusion(z))
    report = ArtifactMIAReport(str(target.artifact.folder), target.artifact.digest, target.dp.to_dict(), int(is_member.sum()),
                               int((~is_member).sum()), len(shadows), pool_desc)
    report.results.extend(attack_view(view, attacks, delta=float(target.dp.delta)))
    held = ~is_member
    report.expert_accuracy_nonmembers = float((view.target.argmax(1)[held] == y[held]).mean())
    if ask is not None:
        from simulations.attacks.mia import SeatView

        rows = np.arange(len(records))
        if query_records is not None:
            pick = np.random.default_rng([seed, 7])
            m_rows, n_rows = rows[is_member], rows[~is_member]
            rows = np.sort(np.r_[pick.choice(m_rows, min(query_records, len(m_rows)), replace=False),
                                 pick.choice(n_rows, min(query_records, len(n_rows)), replace=False)])
        questions = Verbalizer(schema, seed=20_000 + seed).questions(records.iloc[rows][schema.feature_names].to_dict("records"))
        if progress:
            progress(f"  query seat: asking the provider {len(questions)} questions")
        probs = np.asarray(ask(questions), dtype=np.float64)
        if probs.shape != (len(rows), schema.label.num_classes):
            raise ValueError(f"the provider answered {probs.shape} probabilities for {len(rows)} questions over "
                             f"{schema.label.num_classes} classes")
        logp = np.log(np.clip(probs, 1e-12, None))
        qview = SeatView("query", y[rows], is_member[rows], logp - np.log(np.exp(logp).sum(1, keepdims=True)))
        report.results.extend(attack_view(qview, [a for a in attacks if a in SCORE_ATTACKS], delta=float(target.dp.delta)))
    return report


def provider_asker(client: Any, digest: str, batch_size: int = 16) -> Callable[[list[str]], np.ndarray]:
    """`ask` for `attack_artifact` through a running provider's Ask (a `ProviderClient`), for this artifact."""
    def ask(questions: list[str]) -> np.ndarray:
        answers = client.ask(questions, artifact_digest=digest, batch_size=batch_size)
        return np.array([list(a.probs) for a in answers], dtype=np.float64)
    return ask


def attribute_on_artifact(target: ArtifactTarget, column: str | None = None, seed: int = 0):
    """Attribute inference of the schema's sensitive column on the member and non-member records, the
    population baseline from the population table (or the non-members' shadow half)."""
    from simulations.attacks.attribute import attribute_inference

    pool, nonmembers, _ = shadow_pool(target, seed)
    records = pd.concat([target.members, nonmembers], ignore_index=True)
    is_member = np.r_[np.ones(len(target.members), bool), np.zeros(len(nonmembers), bool)]
    return attribute_inference(target.model, target.schema, records, is_member, pool, column, seed)


__all__ = ["ArtifactMIAReport", "ArtifactTarget", "attack_artifact", "attribute_on_artifact", "load_records", "load_target",
           "provider_asker", "shadow_pool"]
