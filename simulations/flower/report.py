"""The report of one Flower run: per client, per schema, per federation, what was excluded and why, timings.

Written by the ServerApp to `<out>/report.json` (and `report.md` for people) whatever happens: a run
that fails half-way still says which phase failed and why. Scores are the clients' own (they score
their questions locally); the provider only adds what it did (receipts, connector jobs, timings).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_FORMAT = "llamdex.flower-run/v1"


@dataclass
class ClientRecord:
    client_id: str
    node_id: int
    dataset_id: str = ""
    schema_digest: str = ""
    budget: float | None = None
    epsilon_target: float | None = None
    epsilon: float | None = None          # the ε the provider recomputed and charged (None: no DP)
    delta: float | None = None
    n_train: int = 0
    n_heldout: int = 0
    artifact_digest: str = ""
    answered_by: str = ""                 # the artifact whose expert answered its evaluation questions: its own, above
    receipt_id: str = ""
    receipt_verified: bool = False
    train_seconds: float = 0.0
    upload_seconds: float = 0.0
    scores: dict[str, Any] = field(default_factory=dict)
    excluded: str | None = None           # the reason, when the run excluded this client


@dataclass
class SchemaRecord:
    schema_digest: str
    dataset_ids: list[str]
    clients: list[str]
    job_id: str = ""
    connectors: str = ""                  # "trained in this run" | "reused from the store" | "failed: ..."
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class FederationRecord:
    dataset_id: str
    clients: list[str]
    lead: str
    rounds: int
    clip: float
    noise_multiplier: float
    delta: float
    epsilon_target: float
    epsilon_flower: float | None
    epsilon_provider: float | None        # recomputed by the provider at upload and charged on the lead's receipt
    artifact_digest: str = ""
    receipt_id: str = ""
    federated_accuracy: float | None = None
    individual_accuracy_mean: float | None = None
    federated_llamdex_accuracy: float | None = None     # the federated expert asked through Llamdex, members' questions
    federated_llamdex_agreement: float | None = None    # share of those answers that equal the federated expert's own
    llamdex_error: str | None = None
    individual_epsilons: list[float | None] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    unit_note: str = ("the federated ε protects one client (all its records) in the federation; each individual expert's ε "
                      "protects one record of its own client's table: different units, never added")


@dataclass
class RunReport:
    engine: str
    run_id: str
    scenario: dict[str, Any]
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    clients: list[ClientRecord] = field(default_factory=list)
    schemas: list[SchemaRecord] = field(default_factory=list)
    federations: list[FederationRecord] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    ledger_verified: bool | None = None
    ledger_problems: list[str] = field(default_factory=list)
    receipts_verified: int = 0
    code_from: str = ""                   # where this run's code was imported from (the installed Flower app)
    status: str = "running"               # running | completed | failed
    error: str | None = None

    @property
    def excluded(self) -> list[dict[str, str]]:
        return [{"client": c.client_id, "reason": c.excluded} for c in self.clients if c.excluded]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = REPORT_FORMAT
        d["excluded"] = self.excluded
        return _finite(d)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / "report.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(p)
        (folder / "report.md").write_text(self.markdown())
        return p

    def markdown(self) -> str:
        lines = [f"# Flower run {self.run_id} ({self.engine} engine): {self.status}", ""]
        if self.error:
            lines += [f"**Error:** {self.error}", ""]
        n_ok = sum(1 for c in self.clients if not c.excluded)
        lines += [f"{len(self.clients)} clients, {n_ok} finished, {len(self.excluded)} excluded; {len(self.schemas)} schema(s); "
                  f"total {self.total_s:.1f} s; ledger chain {'verifies' if self.ledger_verified else 'DOES NOT verify'}; "
                  f"{self.receipts_verified} receipts verified by their clients.", "",
                  "| phase | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in self.phases.items()]
        lines += ["", "| client | table | ε (charged) | budget | n train / held out | accuracy: base LLM | expert | Llamdex | "
                  "Llamdex = expert | receipt | excluded |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in self.clients:
            acc = {k: (f"{v['accuracy']:.3f}" if isinstance(v, dict) else "–") for k, v in c.scores.items()}
            agree = c.scores.get("llamdex_expert_agreement")
            eps = "–" if not c.receipt_id else ("no DP" if c.epsilon is None else f"{c.epsilon:.3g}")
            lines.append(f"| {c.client_id} | {c.dataset_id} | {eps} | {_num(c.budget)} | {c.n_train} / {c.n_heldout} | {acc.get('base_llm', '–')} | "
                         f"{acc.get('expert', '–')} | {acc.get('llamdex', '–')} | {'–' if agree is None else f'{agree:.3f}'} | "
                         f"{'verified' if c.receipt_verified else '–'} | {c.excluded or ''} |")
        lines += ["", "| schema | tables | clients sharing it | connectors | seconds |", "|---|---|---|---|---|"]
        for s in self.schemas:
            lines.append(f"| {s.schema_digest[:19]}… | {', '.join(s.dataset_ids)} | {len(s.clients)} | {s.connectors} | {s.seconds:.1f} |")
        if self.federations:
            lines += ["", "| federation | clients | rounds | ε client-level (Flower / provider) | federated acc. | through Llamdex (agreement) | "
                      "individual acc. (mean) | note |", "|---|---|---|---|---|---|---|---|"]
            for f in self.federations:
                through = "–" if f.federated_llamdex_accuracy is None else f"{f.federated_llamdex_accuracy:.3f} ({f.federated_llamdex_agreement:.3f})"
                lines.append(f"| {f.dataset_id} | {len(f.clients)} | {f.rounds} | {_num(f.epsilon_flower)} / {_num(f.epsilon_provider)} | "
                             f"{_num(f.federated_accuracy)} | {through} | {_num(f.individual_accuracy_mean)} | "
                             f"{f.error or f.llamdex_error or f.unit_note} |")
        return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    if v is None:
        return "–"
    return "∞" if math.isinf(v) else f"{v:.3g}"


def _finite(x: Any) -> Any:
    """JSON has no infinity: ∞ is written as the string "inf"."""
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


__all__ = ["ClientRecord", "FederationRecord", "REPORT_FORMAT", "RunReport", "SchemaRecord"]
