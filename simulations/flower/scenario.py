"""The scenario of a run, read from Flower's run config (`[tool.flwr.app.config]`, `--run-config`, `llamdex simulate` flags).

Both apps derive the same plan from it: the `ServerApp` (the provider's operator: budgets, phases,
timeouts) and every `ClientApp` (a data owner: which table, which partition of it, which ε it asks for).
Clients are spread over the tables round-robin (client i holds table i mod T); the clients of one table
split it IID or Dirichlet non-IID by label (`partitioning`). Lists (`epsilon`, `budget`) are cycled over
the clients. Every value is checked here, once, with an error that names the key, the rule and the fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import CodedError

PARTITIONS = ("iid", "dirichlet")
FAULTS = ("crash", "timeout", "tamper", "over-budget")


class ScenarioError(CodedError):
    """A run-config value is invalid (code BAD_RUN_CONFIG), or its out-dir holds an earlier run (OUT_DIR_IN_USE); the
    message names the key, the rule and the fix."""


RUN_FILES = ("report.json", "provider")   # what a run's ServerApp writes first and last into its out-dir


def refuse_an_earlier_run(out_dir: Path, *, any_file: bool) -> None:
    """Each run makes its own provider key and ledger: one started in a folder of an earlier run replaced that run's key
    (so its ledger and receipts no longer verified against the folder) and its report, or, killed before it wrote one,
    passed the earlier report off as its own. `any_file`: the launchers want a new or empty folder; the ServerApp,
    started after the launcher wrote its own files there, looks for an earlier run's files."""
    out_dir = Path(out_dir)
    held = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    earlier = [n for n in held if n in RUN_FILES]
    if earlier or (any_file and held):
        raise ScenarioError("OUT_DIR_IN_USE", f"the run folder {out_dir} already holds {(earlier or held)[:5]}"
                            f"{' (an earlier run)' if earlier else ''}; give each run a new folder (--out / run config 'out-dir'), "
                            "or delete this one", rule="out-dir")


def _bad(key: str, value: Any, rule: str, fix: str) -> ScenarioError:
    return ScenarioError("BAD_RUN_CONFIG", f"run config {key!r} = {value!r}: {rule}; {fix}", rule=key)


def _epsilons(key: str, text: str, *, allow_none: bool) -> tuple[float | None, ...]:
    out: list[float | None] = []
    for part in str(text).split(","):
        p = part.strip().lower()
        if p in ("none", "no-dp", "inf") and allow_none:
            out.append(None if key == "epsilon" else math.inf)
            continue
        try:
            v = float(p)
        except ValueError:
            raise _bad(key, text, f"{part.strip()!r} is not a number" + (" or 'none'" if allow_none else ""),
                       "give a comma-separated list such as '1,4" + (",none'" if allow_none else "'")) from None
        if not (math.isfinite(v) and v > 0):
            raise _bad(key, text, f"{v:g} is not a positive finite number", "use e.g. 1 or 4")
        out.append(v)
    if not out:
        raise _bad(key, text, "the list is empty", "give at least one value")
    return tuple(out)


@dataclass(frozen=True)
class Scenario:
    """Everything a run is, as plain values (see docs/SIMULATION.md for each key). The connector preset is the
    provider's business: `preset_value()` checks it where it is used (the ServerApp, `llamdex simulate`)."""

    data: tuple[str, ...] = ("titanic",)
    schema: str = ""
    on_invalid: str = "reject"                      # records that violate the schema: reject | drop | clip (as --on-invalid)
    clients: int = 3
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    epsilon: tuple[float | None, ...] = (1.0,)     # per client (cycled); None = no DP
    budget: tuple[float, ...] = (4.0,)              # per client (cycled), set by the provider's operator; inf = unbounded
    epochs: int = 0                                 # 0: the trainer's default
    test_size: float = 0.2
    max_test: int = 32
    ask_batch: int = 16
    preset: str = "quick"
    connectors: str = ""
    out_dir: str = ""
    timeout_s: float = 600.0
    faults: dict[int, str] = field(default_factory=dict)
    federated: tuple[str, ...] = ()
    fed_rounds: int = 5
    fed_epsilon: float = 1.0
    fed_delta: float = 0.0                          # 0: 1 / (10 x clients of the federation)
    fed_clip: float = 0.5
    fed_local_epochs: int = 2
    fed_lr: float = 0.05
    provider_device: str = "cpu"

    # --- reading -----------------------------------------------------------------------------------------
    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> "Scenario":
        """Parses Flower's flat run config (kebab-case keys); unknown keys are ignored (Flower checks them)."""
        def get(key: str, default: Any) -> Any:
            return rc.get(key, default)

        def integer(key: str, default: int, lo: int) -> int:
            v = get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise _bad(key, v, f"must be an integer >= {lo}", f"set e.g. {key}={max(lo, default)}")
            return v

        def number(key: str, default: float, lo: float, hi: float = math.inf, lo_open: bool = True) -> float:
            v = get(key, default)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
            if not ok:
                rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
                raise _bad(key, v, f"must be a number in {rng}", f"set e.g. {key}={default}")
            return float(v)

        data = tuple(t.strip() for t in str(get("data", "titanic")).split(",") if t.strip())
        if not data:
            raise _bad("data", get("data", ""), "names no table", "give registered tables and/or CSV/Parquet files, comma-separated")
        schema = str(get("schema", ""))
        if schema and len(data) != 1:
            raise _bad("schema", schema, "goes with exactly one data file", "name one file in 'data' or put each file's schema beside it")
        from client_party.datasets import ON_INVALID

        on_invalid = str(get("on-invalid", "reject")).lower()
        if on_invalid not in ON_INVALID:
            raise _bad("on-invalid", on_invalid, f"must be one of {list(ON_INVALID)}", "use 'reject' (the default), 'drop' or 'clip'")
        partition = str(get("partition", "iid")).lower()
        if partition not in PARTITIONS:
            raise _bad("partition", partition, f"must be one of {list(PARTITIONS)}", "use 'iid' or 'dirichlet'")
        clients = integer("clients", 3, 1)
        if clients < len(data):
            raise _bad("clients", clients, f"is below the number of tables ({len(data)})", f"run at least {len(data)} clients")
        device = str(get("provider-device", "cpu"))
        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise _bad("provider-device", device, "must be cpu, cuda or cuda:N", "use cpu (the default)")
        out_dir, connectors = str(get("out-dir", "")), str(get("connectors", ""))
        for key, path in (("out-dir", out_dir), ("connectors", connectors)):
            if path and not Path(path).expanduser().is_absolute():
                raise _bad(key, path, "must be an absolute path (the apps run from the bundle Flower installed in $FLWR_HOME/apps)",
                           f"use e.g. {key}=\"{Path(path).resolve()}\"")
        federated = tuple(t.strip() for t in str(get("federated", "")).split(",") if t.strip())
        out = cls(
            data=data, schema=schema, on_invalid=on_invalid, clients=clients, partition=partition, alpha=number("alpha", 0.5, 0.0),
            seed=integer("seed", 0, 0), epsilon=_epsilons("epsilon", get("epsilon", "1"), allow_none=True),
            budget=tuple(float(b) for b in _epsilons("budget", get("budget", "4"), allow_none=True)),
            epochs=integer("epochs", 0, 0), test_size=number("test-size", 0.2, 0.0, 0.5),
            max_test=integer("max-test", 32, 1), ask_batch=integer("ask-batch", 16, 1), preset=str(get("preset", "quick")),
            connectors=connectors, out_dir=out_dir, timeout_s=number("timeout-s", 600.0, 0.0),
            faults=_faults(str(get("faults", "")), clients), federated=federated, fed_rounds=integer("fed-rounds", 5, 1),
            fed_epsilon=number("fed-epsilon", 1.0, 0.0), fed_delta=number("fed-delta", 0.0, 0.0, 1.0, lo_open=False),
            fed_clip=number("fed-clip", 0.5, 0.0), fed_local_epochs=integer("fed-local-epochs", 2, 1), fed_lr=number("fed-lr", 0.05, 0.0),
            provider_device=device,
        )
        return out

    # --- the plan ----------------------------------------------------------------------------------------
    def client_id(self, i: int) -> str:
        return f"client-{i:03d}"

    def table_index(self, i: int) -> int:
        return i % len(self.data)

    def table_clients(self, t: int) -> list[int]:
        """The clients (partition ids) holding table t, in order."""
        return [i for i in range(self.clients) if self.table_index(i) == t]

    def part_of(self, i: int) -> tuple[int, int]:
        """(this client's part, number of parts) of its table."""
        t = self.table_index(i)
        return self.table_clients(t).index(i), len(self.table_clients(t))

    def epsilon_for(self, i: int) -> float | None:
        return self.epsilon[i % len(self.epsilon)]

    def budget_for(self, i: int) -> float:
        return self.budget[i % len(self.budget)]

    def fault_for(self, i: int) -> str:
        return self.faults.get(i, "")

    def table_refs(self) -> list[Any]:
        from client_party.datasets import TableRef

        try:
            return [TableRef.parse(t, self.schema or None, self.on_invalid) for t in self.data]
        except FileNotFoundError as e:
            raise _bad("data", ",".join(self.data), str(e), "name a registered table or an existing CSV/Parquet file") from None

    def table_id(self, t: int) -> str:
        return self.table_refs()[t].id

    def federated_tables(self) -> list[int]:
        """Tables whose clients also train one DP-FedAvg expert ('all': every table with two clients or more)."""
        ids = [self.table_id(t) for t in range(len(self.data))]
        if self.federated == ("all",):
            return [t for t in range(len(ids)) if len(self.table_clients(t)) >= 2]
        out = []
        for name in self.federated:
            if name not in ids:
                raise _bad("federated", ",".join(self.federated), f"{name!r} is not one of the run's tables {ids}", "name tables of 'data', or 'all'")
            t = ids.index(name)
            if len(self.table_clients(t)) < 2:
                raise _bad("federated", name, "a federation needs at least two clients of the table", "run more clients")
            out.append(t)
        return out

    def preset_value(self) -> Any:
        """The connector preset: a name of `PRESETS` or a JSON object of `Preset` fields (e.g. a tiny preset for tests)."""
        from provider_party.model.connector_training import PRESETS, Preset

        text = self.preset.strip()
        if text.startswith("{"):
            try:
                d = json.loads(text)
                if not isinstance(d, dict):
                    raise ValueError("not an object")
                return Preset.from_fields(d)
            except ValueError as e:   # json.JSONDecodeError is one
                raise _bad("preset", text, f"is not a JSON object of Preset fields ({e})", f"use one of {sorted(PRESETS)}") from None
        if text not in PRESETS:
            raise _bad("preset", text, f"is not one of {sorted(PRESETS)}", "use 'quick' or give a JSON object of Preset fields")
        return text

    def out_path(self, run_id: int | str) -> Path:
        """Where the run's files go: `out-dir`, or $LLAMDEX_HOME/flower-runs/<run id> (the same on every process of a host)."""
        if self.out_dir:
            return Path(self.out_dir).expanduser().resolve()
        from provider_party.model.base_llm import llamdex_home

        return llamdex_home() / "flower-runs" / str(run_id)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epsilon"] = [e if e is not None else "none" for e in self.epsilon]
        d["budget"] = [b if math.isfinite(b) else "inf" for b in self.budget]
        d["faults"] = {self.client_id(i): k for i, k in self.faults.items()}
        return d


def _faults(text: str, clients: int) -> dict[int, str]:
    """'3=tamper,4=crash': client index -> fault (injected misbehaviour, for tests and demos)."""
    out: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        idx, _, kind = part.partition("=")
        try:
            i = int(idx)
        except ValueError:
            i = -1
        if not 0 <= i < clients or kind not in FAULTS:
            raise _bad("faults", text, f"{part!r} is not CLIENT=KIND with CLIENT in 0..{clients - 1} and KIND in {list(FAULTS)}",
                       "write e.g. '3=tamper,4=crash'")
        out[i] = kind
    return out


def check_run_config(rc: dict[str, Any]) -> Scenario:
    """Every check the ServerApp makes of a run config before its first phase (values, preset, federations), so that a
    caller can refuse a bad one before any Flower process starts; raises ScenarioError."""
    from provider_party.service.config import ProviderLimits

    scenario = Scenario.from_run_config(rc)
    scenario.preset_value()
    scenario.federated_tables()
    most = ProviderLimits().max_batch_questions   # the run's provider keeps its default limits
    if scenario.ask_batch > most:   # every client would be excluded at evaluation, after its ε was spent
        raise _bad("ask-batch", scenario.ask_batch, f"is above the provider's {most} questions per Ask", f"give at most {most}")
    seen: dict[str, str] = {}
    for given, ref in zip(scenario.data, scenario.table_refs()):
        if ref.id in seen:   # the dataset id keys a table's budget, federation and report rows
            raise _bad("data", ",".join(scenario.data), f"{seen[ref.id]!r} and {given!r} are both dataset {ref.id!r}",
                       "give each table once, and tables of one name distinct file names")
        seen[ref.id] = given
        try:   # a table file without its schema (or with a broken one) fails here, not in every ClientApp
            ref.schema()
        except (OSError, ValueError) as e:   # FileNotFoundError, SchemaError, a file that is not UTF-8
            key = "schema" if scenario.schema else "data"
            why = f"{e.filename} {e.strerror}" if isinstance(e, OSError) and e.filename else " ".join(str(e).split())
            raise _bad(key, scenario.schema or ref.name or str(ref.path), f"has no usable schema ({why})",
                       "write one with `llamdex schema draft`, or name it with --schema") from None
    return scenario


def check_partitions(scenario: Scenario) -> None:
    """Every client of every table gets its rows (at least MIN_PART_ROWS, also under a Dirichlet split). The process that
    starts the clients on this machine calls it: it reads the tables, which the ServerApp never does, so that a run whose
    clients cannot all get data is refused before Flower starts rather than failing in every ClientApp."""
    from simulations.flower.partitioning import client_partition

    for t, ref in enumerate(scenario.table_refs()):
        df, schema = ref.load()
        try:   # the partition the table's first client draws: every client's rows come from that one draw
            client_partition(df, schema.label.name, 0, len(scenario.table_clients(t)), scenario.partition, scenario.alpha,
                             seed=scenario.seed * 1009 + t)
        except ScenarioError as e:
            raise ScenarioError(e.code, f"table {ref.id}: {str(e).split('] ', 1)[-1]}", rule=e.rule) from None


def checked_run_config(run_config: dict[str, Any], out_dir: Path, clients: int) -> dict[str, Any]:
    """The run config a launcher hands to `flwr run`, checked first: a bad value fails in the caller's process, before
    any SuperLink starts, with the ScenarioError the ServerApp would otherwise write to flwr.log minutes later."""
    rc = {**run_config, "out-dir": str(out_dir), "clients": clients}
    check_run_config(rc)
    refuse_an_earlier_run(out_dir, any_file=True)
    return rc


def run_config_toml(values: dict[str, Any]) -> str:
    """A `--run-config` TOML file of flat key = value lines (strings, integers, floats, booleans)."""
    lines = []
    for k, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            if not math.isfinite(v):
                raise ValueError(f"run config {k!r}: {v!r} cannot be written to TOML; pass it as a string")
            lines.append(f"{k} = {v!r}")
        else:
            lines.append(f"{k} = {json.dumps(str(v), ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


__all__ = ["FAULTS", "PARTITIONS", "Scenario", "ScenarioError", "refuse_an_earlier_run", "run_config_toml"]
