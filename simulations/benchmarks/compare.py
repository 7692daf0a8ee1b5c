"""Comparison benchmark: Llamdex against DP data synthesis + LoRA, the expert API, in-context prompting and LoRA on real data.

Run: `llamdex bench compare` (or `python -m simulations.benchmarks.compare`). Every method answers
the same real held-out questions of each table (the split and questions of `run_pipeline`) with
the same constrained read-out, at the same (ε, δ) as the client's DP expert:

  llamdex       the client's DP expert plugged into the frozen LLM (rows from `run_pipeline`)
  llamdex_calibrated  the same with experts trained for plain accuracy (`TrainConfig.decision`), the rule
                the fine-tuned baselines follow; the default experts are trained for balanced accuracy
  expert_api    the LLM fills in the expert's inputs from the question (constrained generation), the expert answers
  icl_dp        k MST-synthesized rows as answered questions in the prompt
  lora_dp_mst   LoRA fine-tuning on questions from an MST-synthesized table
  lora_dp_gan   LoRA fine-tuning on questions from a DP-CTGAN-style synthetic table (Opacus DP-SGD)
  lora_real     LoRA fine-tuning on the real training questions (no privacy: the upper bound)

Each LoRA unit reports two read-outs of the same model: argmax (plain accuracy, as trained) and
`<method>_balanced`, the argmax after dividing by the label prior of its own training questions (the
balanced rule the client's default expert uses; no privacy cost), so that balanced accuracy compares
like with like.

The grid (defaults): titanic, default, credit and churn (`--data`) at ε ∈ {1, 4}, seeds 0, 1, 2 at ε = 1 and seed 0
elsewhere (`--all-seeds-at`), plus the ε curve {0.5, 1, 2, 4, 8} on titanic (`--curve`,
`--curve-data`); `lora_real` at seed 0 (`--real-seeds`); query latency of every method on every
table (seed 0, ε = 1). `--curve-methods` limits which methods run the curve's extra ε. Before a
long run, `--dry-run` lists the units left with an estimate of each from the stored units' wall
times, and the whole grid's.

It resumes: each finished (table, method, ε, seed) unit is written to docs/results/compare.json at
once, and a rerun skips the units already there with the same settings for that method (`USES`:
a new LoRA recipe reruns the LoRA and in-context units, not Llamdex's or the expert API's;
`--redo` reruns them all).
After every unit the new rows are merged into docs/results/accuracy.json (rows of the baseline
methods and of `llamdex_calibrated` with its experts, replaced by (dataset, method, epsilon, seed);
nothing else in the file changes), the
costs into the `compare` list of docs/results/inference.json, and the `compare` section of
docs/RESULTS.md and docs/results/compare_epsilon_<table>.png are redrawn. To refresh only Llamdex's rows
(after its connectors change): `llamdex bench compare --methods llamdex --redo`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulations.baselines.dp_gan import GANConfig
from simulations.baselines.lora import LoRAConfig
from simulations.baselines.methods import MethodResult, MethodSettings, Workbench
from simulations.baselines.mst import MSTConfig
from simulations.benchmarks.results_md import (
    RESULTS_DIR,
    command_line,
    environment,
    results_md_path,
    update_section,
    write_json,
)
from simulations.cli.common import (add_data_args, add_out_arg, add_threads_arg, epsilon_list, non_negative_int_list, positive_float,
                                    positive_int, set_threads)

METHODS = ("llamdex", "llamdex_calibrated", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan", "lora_real")
LLAMDEX_METHODS = ("llamdex", "llamdex_calibrated")   # one unit runs several ε; the connectors are part of the method
TIMED_METHODS = ("llamdex", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan", "lora_real")   # what the latency units measure
# Rows this benchmark owns in accuracy.json (Llamdex's own rows come from `bench accuracy`).
MERGED_METHODS = ("llamdex_calibrated", "expert_calibrated", "expert_api", "icl_dp", "lora_dp_mst", "lora_dp_gan", "lora_real",
                  "lora_dp_mst_balanced", "lora_dp_gan_balanced", "lora_real_balanced")
DATASETS = "titanic,default,credit,churn"

PRESETS: dict[str, MethodSettings] = {
    "default": MethodSettings(),
    # A small subset for the default test suite: every code path, seconds per unit.
    "quick": MethodSettings(max_test=10, max_train=200, eval_batch=5, mst=MSTConfig(iters=40, select_iters=20),
                            gan=GANConfig(steps=8, batch_size=32, hidden=16, noise_dim=8), lora=LoRAConfig(questions=6, batch_size=3),
                            icl_k=2, api_batch=5),
}
CONNECTOR_PRESETS = {"default": "default", "quick": "quick"}


@dataclass(frozen=True)
class Unit:
    """One piece of the grid: a method on a table at one seed (Llamdex and latency: several ε or methods at once)."""

    dataset: str
    method: str                      # one of METHODS, or "latency"
    epsilons: tuple[float | None, ...]
    seed: int
    measures: tuple[str, ...] = ()   # latency: the methods timed

    @property
    def key(self) -> str:
        eps = ",".join("none" if e is None else f"{e:g}" for e in self.epsilons)
        extra = f"|{'+'.join(self.measures)}" if self.measures else ""
        return f"{self.dataset}|{self.method}|eps={eps}|seed={self.seed}{extra}"


def plan(datasets: list[str], methods: list[str], epsilons: list[float], seeds: list[int], all_seeds_at: list[float],
         curve: list[float], curve_datasets: list[str], real_seeds: list[int], latency_epsilon: float | None,
         latency_only: bool = False, curve_methods: list[str] | None = None, all_seeds_data: list[str] | None = None) -> list[Unit]:
    """The units of the grid, ordered so that units sharing work run back to back (one table at a time).

    curve_methods: the methods that run the curve's extra ε (None: all).
    all_seeds_data: the tables that run every seed at `all_seeds_at` (None: all); the others run the first seed only.
    latency_only: just the latency units (their keys are the full grid's, so a later full run skips them)."""
    units: list[Unit] = []
    for ds in datasets:
        def mine(method: str, seed: int) -> list[float]:
            curved = ds in curve_datasets and (curve_methods is None or method in curve_methods)
            seeded = all_seeds_data is None or ds in all_seeds_data
            return [e for e in sorted(set(epsilons + (curve if curved else []))) if seed == seeds[0] or (seeded and e in all_seeds_at)]

        for seed in seeds:
            for m in LLAMDEX_METHODS:
                if m in methods and (grid := mine(m, seed)):
                    units.append(Unit(ds, m, tuple(grid), seed))
            for m in ("expert_api", "lora_dp_mst", "icl_dp", "lora_dp_gan"):
                if m in methods:
                    units += [Unit(ds, m, (e,), seed) for e in mine(m, seed)]
            if "lora_real" in methods and seed in real_seeds:
                units.append(Unit(ds, "lora_real", (None,), seed))
        if latency_epsilon is not None:
            timed = [m for m in TIMED_METHODS if m in methods]
            if "llamdex" in timed and "expert_api" not in timed:
                timed.append("expert_api")   # Llamdex's latency target is set against the expert API's
            units.append(Unit(ds, "latency", (latency_epsilon,), seeds[0], tuple(timed)))
    return [u for u in units if u.method == "latency"] if latency_only else units


def estimate_s(unit: Unit, stored: dict[str, Any], form_filled: bool = False) -> float | None:
    """Seconds a unit should take: the median wall time of the stored units of the same table and method
    (Llamdex: per ε it evaluates; the expert API without its form filling when that is already made).
    None when nothing alike has run. A guide for choosing a grid, not a promise: stored times include
    whatever else shared the machine then."""
    kin = LLAMDEX_METHODS if unit.method in LLAMDEX_METHODS else (unit.method,)   # the Llamdex variants do the same work
    alike = [u for u in stored.values() if u["dataset"] == unit.dataset and u["method"] in kin and u.get("wall_s")]
    if not alike:
        return None
    if unit.method in LLAMDEX_METHODS:
        walls = sorted(u["wall_s"] / len(u["epsilons"]) * len(unit.epsilons) for u in alike)
    elif unit.method == "expert_api" and form_filled:
        walls = sorted(max(0.0, u["wall_s"] - u.get("costs", {}).get("extract_s", 0.0)) for u in alike)
    else:
        walls = sorted(u["wall_s"] for u in alike)
    return walls[len(walls) // 2]


def settings_digest(settings: MethodSettings, connector_preset: str) -> str:
    """The whole preset's digest (shown in the report)."""
    blob = json.dumps({"settings": asdict(settings), "connectors": connector_preset}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


# The settings each method's result depends on (dotted: one field of a group), so that changing, say,
# the LoRA recipe reruns the LoRA and in-context units and keeps Llamdex's and the expert API's.
# ICL's demonstrations are drawn from the MST table made for LoRA, hence `lora.questions`.
# Latency times every method: it depends on everything.
USES: dict[str, tuple[str, ...]] = {
    "llamdex": ("max_test", "max_train", "eval_batch"),
    "llamdex_calibrated": ("max_test", "max_train", "eval_batch"),
    "expert_api": ("max_test", "max_train", "api_batch"),
    "icl_dp": ("max_test", "max_train", "eval_batch", "mst", "lora.questions", "icl_k"),
    "lora_dp_mst": ("max_test", "max_train", "eval_batch", "mst", "lora"),
    "lora_dp_gan": ("max_test", "max_train", "eval_batch", "gan", "lora"),
    "lora_real": ("max_test", "max_train", "eval_batch", "lora"),
}


EXPERT_USERS = ("llamdex", "llamdex_calibrated", "expert_api", "latency")


def unit_digest(settings: dict[str, Any], connector_preset: str, method: str) -> str:
    """Digest of what one method's unit depends on (`settings` as `asdict(MethodSettings)`)."""
    used: dict[str, Any] = dict(settings)
    if method in USES:
        used = {}
        for path in USES[method]:
            group, _, field_ = path.partition(".")
            used[path] = settings[group][field_] if field_ else settings[group]
    connectors = connector_preset if method in (*LLAMDEX_METHODS, "latency") else None
    blob = {"settings": used, "connectors": connectors}
    if method in EXPERT_USERS:   # the client's expert is part of the method: a new recipe reruns these units
        from client_party.expert_training import default_recipe_digest

        blob["expert_recipe"] = default_recipe_digest()
    blob = json.dumps(blob, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


class CompareStore:
    """docs/results/compare.json: every finished unit with its rows, costs and report material."""

    def __init__(self, results_dir: Path):
        self.path = Path(results_dir) / "compare.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {"units": {}}
        self.data.setdefault("units", {})
        for u in self.data["units"].values():  # units stored before commands were kept per unit ran under the file's command
            if self.data.get("command"):
                u.setdefault("command", self.data["command"])
        # Units stored under the whole preset's digest: those of the file's last settings get their method's digest.
        settings, whole = self.data.get("settings"), self.data.get("settings_digest")
        for u in self.data["units"].values():
            if settings and whole and u.get("settings_digest") == whole and "per_method_digest" not in u:
                u["settings_digest"] = unit_digest(settings, self.data.get("connector_preset", "default"), u["method"])
                u["per_method_digest"] = True

    def done(self, unit: Unit, digest: str) -> bool:
        u = self.data["units"].get(unit.key)
        return bool(u) and u.get("settings_digest") == digest

    def put(self, unit: Unit, digest: str, result: MethodResult, wall_s: float, command: str) -> None:
        self.data["units"][unit.key] = {"dataset": unit.dataset, "method": unit.method, "epsilons": list(unit.epsilons), "seed": unit.seed,
                                        "settings_digest": digest, "per_method_digest": True, "command": command, "wall_s": wall_s, "rows": result.rows, "costs": result.costs,
                                        "info": _jsonable(result.info), "finished": datetime.now(UTC).isoformat(timespec="seconds")}

    def current(self, digests: dict[str, str]) -> dict[str, Any]:
        """The file's data with only the units run under today's settings for their method: what is
        reported and merged (units of an older recipe stay in the file until rerun, never in the tables)."""
        units = {k: u for k, u in self.data["units"].items() if u.get("settings_digest") == digests.get(u["method"])}
        return {**self.data, "units": units, "stale_units": sorted(set(self.data["units"]) - set(units))}

    @staticmethod
    def rows(data: dict[str, Any]) -> list[dict]:
        from simulations.baselines.report import measured_rows

        return measured_rows(data["units"])

    @staticmethod
    def cost_rows(data: dict[str, Any]) -> list[dict]:
        return [r for u in data["units"].values() if u["method"] == "latency" for r in u["rows"]]

    def save(self, results_dir: Path) -> None:
        write_json("compare.json", self.data, results_dir)


def _jsonable(info: dict) -> dict:
    """The report material of a unit, without in-memory objects (models, experts)."""
    return {k: v for k, v in info.items() if k not in ("model", "experts")}


def merge_accuracy(results_dir: Path, rows: list[dict]) -> None:
    """Adds the rows this benchmark owns (`MERGED_METHODS`) to accuracy.json; replaces only rows of the same (dataset, method, epsilon, seed)."""
    path = Path(results_dir) / "accuracy.json"
    payload = json.loads(path.read_text()) if path.exists() else {"rows": []}
    new = [r for r in rows if r["method"] in MERGED_METHODS]
    keys = {(r["dataset"], r["method"], r["epsilon"], r["seed"]) for r in new}
    kept = [r for r in payload.get("rows", []) if (r.get("dataset"), r.get("method"), r.get("epsilon"), r.get("seed")) not in keys]
    payload["rows"] = kept + [{k: r[k] for k in ("dataset", "method", "epsilon", "accuracy", "balanced_accuracy", "macro_f1", "n_test", "seed")}
                              for r in new]
    write_json("accuracy.json", payload, results_dir)


def merge_inference(results_dir: Path, cost_rows: list[dict], command: str) -> None:
    """Puts the methods' query costs under the `compare` key of inference.json; other keys stay as they are."""
    path = Path(results_dir) / "inference.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    keys = {(r["dataset"], r["method"], r["batch_size"]) for r in cost_rows}
    kept = [r for r in payload.get("compare", []) if (r["dataset"], r["method"], r["batch_size"]) not in keys]
    payload["compare"] = kept + cost_rows
    payload["compare_command"] = command
    write_json("inference.json", payload, results_dir)


def run_unit(bench: Workbench, unit: Unit, connector_preset: str, connectors_root, reps: int) -> MethodResult:
    m, seed = unit.method, unit.seed
    if m in LLAMDEX_METHODS:
        return bench.llamdex(unit.dataset, unit.epsilons, seed, connector_preset, connectors_root,
                             decision="balanced" if m == "llamdex" else m.removeprefix("llamdex_"))
    if m == "latency":
        from provider_party.model.connector_store import ConnectorStore
        from simulations.baselines.latency import latency_rows

        model = None
        if "llamdex" in unit.measures:
            store = ConnectorStore(connectors_root)
            schema = bench.split(unit.dataset, seed).schema
            if store.has(bench.base, schema):
                model = store.load(bench.base, schema)
            else:
                bench.log(f"[{unit.dataset}] no stored connectors: Llamdex's latency is not measured (run the llamdex units first)")
        return MethodResult(latency_rows(bench, unit.dataset, unit.epsilons[0], seed, list(unit.measures), reps, model))
    eps = unit.epsilons[0]
    if m == "expert_api":
        return bench.expert_api(unit.dataset, eps, seed)
    if m == "icl_dp":
        return bench.icl(unit.dataset, eps, seed)
    if m in ("lora_dp_mst", "lora_dp_gan"):
        return bench.lora_dp(unit.dataset, m, eps, seed)
    if m == "lora_real":
        return bench.lora_real(unit.dataset, seed)
    raise ValueError(f"unknown method {m!r}; use one of {list(METHODS)}")


def _csv(kind, text: str) -> list:
    return [kind(t.strip()) for t in text.split(",") if t.strip()]


def _methods(text: str) -> list[str]:
    out = _csv(str, text)
    bad = [m for m in out if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    return out


def _finite_epsilons(text: str) -> list[float]:
    eps = epsilon_list(text)
    if any(e is None for e in eps):
        raise argparse.ArgumentTypeError("the comparison is at finite ε only (lora_real is the no-privacy reference)")
    return eps  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llamdex bench compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  llamdex bench compare                         # the whole grid (resumes)\n"
                                        "  llamdex bench compare --seeds 0 --dry-run       # what is left of a one-seed grid, and how long it should take\n"
                                        "  llamdex bench compare --methods llamdex --redo  # refresh Llamdex's rows only\n"
                                        "  llamdex bench compare --data titanic --preset quick --out /tmp/c")
    add_data_args(ap, multiple=True, default=DATASETS)
    ap.add_argument("--methods", type=_methods, default=list(METHODS), help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    ap.add_argument("--epsilons", type=_finite_epsilons, default=[1.0, 4.0], help="ε of the per-ε tables (default 1,4)")
    ap.add_argument("--seeds", type=lambda t: list(non_negative_int_list(t)), default=[0, 1, 2], help="seeds at --all-seeds-at (default 0,1,2); other ε use the first")
    ap.add_argument("--all-seeds-at", type=_finite_epsilons, default=[1.0], help="ε that run every seed (default 1)")
    ap.add_argument("--all-seeds-data", type=lambda t: _csv(str, t), default=None,
                    help="tables of --data that run every seed at --all-seeds-at (default titanic: 3 seeds on every table do not fit 3 hours on 2 cores)")
    ap.add_argument("--curve", type=_finite_epsilons, default=[0.5, 1.0, 2.0, 4.0, 8.0], help="ε of the accuracy-vs-ε curve (default 0.5,1,2,4,8)")
    ap.add_argument("--curve-data", type=lambda t: _csv(str, t), default=None, help="tables of --data that run the curve (default titanic)")
    ap.add_argument("--curve-methods", type=_methods, default=None, help="methods that run the curve's extra ε (default: all in --methods)")
    ap.add_argument("--no-curve", dest="curve_data", action="store_const", const=[], help="no table runs the curve (same as --curve-data '')")
    ap.add_argument("--real-seeds", type=lambda t: list(non_negative_int_list(t)), default=[0], help="seeds of lora_real (default 0)")
    ap.add_argument("--latency-epsilon", type=positive_float, default=1.0, help="ε of the expert and synthetic rows in the latency runs (default 1)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    ap.add_argument("--latency-only", action="store_true", help="only the latency runs (measures every method in --methods)")
    ap.add_argument("--latency-reps", type=positive_int, default=40, help="questions per method in the latency runs (default 40: a ratio of medians near 1.1 needs more than a handful; about a minute per table)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default", help="sizes of every method (quick: a small subset for tests)")
    ap.add_argument("--max-test", type=positive_int, default=None, help="held-out questions per table (default: the preset's, 300)")
    ap.add_argument("--lora-questions", type=positive_int, default=None, help="training questions per LoRA run (default: the preset's; LoRAConfig.questions = 960 in the default one)")
    ap.add_argument("--connectors", type=Path, default=None, help="connector store of the llamdex units (default $LLAMDEX_HOME/connectors)")
    ap.add_argument("--redo", action="store_true", help="rerun units already in compare.json")
    ap.add_argument("--dry-run", action="store_true", help="run nothing: list the units still to run with an estimate of each from the stored ones")
    ap.add_argument("--merge-only", action="store_true", help="run nothing: merge compare.json into accuracy.json / inference.json and redraw the report")
    ap.add_argument("--work", type=Path, default=Path("runs/compare"), help="folder of the synthetic tables (default runs/compare)")
    add_threads_arg(ap)
    add_out_arg(ap, default=RESULTS_DIR, help="folder of compare.json, accuracy.json, inference.json, the plots and RESULTS.md's section "
                "(default: docs/results)", aliases=("--results-dir",))
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _tables_of(ap: argparse.ArgumentParser, flag: str, given: list[str] | None, datasets: list[str]) -> list[str]:
    """A table named by --curve-data or --all-seeds-data must be one of --data: a misspelt name would otherwise
    leave that table out of the curve (or to one seed) without a word. The default, titanic, applies where run."""
    if given is None:
        return [d for d in ("titanic",) if d in datasets]
    stray = [d for d in given if d not in datasets]
    if stray:
        ap.error(f"{flag} names {stray}, which are not tables of this run (--data: {', '.join(datasets)})")
    return given


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with --curve-data and --all-seeds-data settled against --data (`_tables_of`)."""
    ap = parser()
    args = ap.parse_args(argv)
    datasets = _csv(str, args.data)
    if args.curve_data != []:   # [] is --no-curve
        args.curve_data = _tables_of(ap, "--curve-data", args.curve_data, datasets)
    args.all_seeds_data = _tables_of(ap, "--all-seeds-data", args.all_seeds_data, datasets)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from client_party.datasets import TableRef

    set_threads(args.threads)
    command = command_line("llamdex bench compare", argv)
    settings = PRESETS[args.preset]
    if args.max_test is not None:
        settings = replace(settings, max_test=args.max_test)
    if args.lora_questions is not None:
        settings = replace(settings, lora=replace(settings.lora, questions=args.lora_questions))
    connector_preset = CONNECTOR_PRESETS[args.preset]
    digest = settings_digest(settings, connector_preset)
    datasets = _csv(str, args.data)
    for t in datasets:
        TableRef.parse(t)  # a precise error for an unknown table, before anything runs
    store = CompareStore(args.out)
    if args.latency_only and args.no_latency:
        raise SystemExit("llamdex bench compare: --latency-only and --no-latency exclude each other")
    units = plan(datasets, args.methods, args.epsilons, args.seeds, args.all_seeds_at, args.curve,
                 args.curve_data, args.real_seeds, None if args.no_latency else args.latency_epsilon,
                 latency_only=args.latency_only, curve_methods=args.curve_methods, all_seeds_data=args.all_seeds_data)
    meta = {"command": command, "preset": args.preset, "settings": asdict(settings), "settings_digest": digest,
            "connector_preset": connector_preset, "environment": environment(), "table_epsilons": args.epsilons,
            "curve_epsilons": args.curve, "curve_datasets": args.curve_data, "seeds": args.seeds, "all_seeds_at": args.all_seeds_at, "all_seeds_data": args.all_seeds_data,
            "real_seeds": args.real_seeds, "curve_methods": args.curve_methods or args.methods}
    if args.merge_only:  # describes the runs already stored; a merge does not rewrite it
        for k, v in meta.items():
            store.data.setdefault(k, v)
    else:
        store.data.update(meta)
    digests = {m: unit_digest(asdict(settings), connector_preset, m) for m in (*METHODS, "latency")}
    todo = [u for u in units if args.redo or not store.done(u, digests[u.method])]
    if args.dry_run:
        return dry_run(units, todo, store)
    if not args.merge_only:
        print(f"compare: {len(units)} units in the grid, {len(units) - len(todo)} already done, {len(todo)} to run", flush=True)
        if todo:
            _run(todo, settings, digests, connector_preset, args, store, command)
    store.save(args.out)
    publish(store, digests, args.out, command)
    return 0


def dry_run(units: list[Unit], todo: list[Unit], store: CompareStore) -> int:
    total, unknown = 0.0, 0
    filled = {(u.dataset, u.seed) for u in units if u.method == "expert_api" and u not in todo}
    for u in todo:
        est = estimate_s(u, store.data["units"], form_filled=(u.dataset, u.seed) in filled)
        if u.method == "expert_api":
            filled.add((u.dataset, u.seed))
        total += est or 0.0
        unknown += est is None
        print(f"  {u.key:<70} {'?' if est is None else f'{est / 60:5.1f} min'}")
    spent = sum(store.data["units"][u.key]["wall_s"] for u in units if u not in todo and u.key in store.data["units"])
    print(f"compare: {len(units)} units in the grid, {len(units) - len(todo)} done ({spent / 3600:.1f} h as run), {len(todo)} to run, "
          f"about {total / 3600:.1f} h" + (f" plus {unknown} without a stored unit alike" if unknown else "")
          + f" (from the stored units' median wall times); the whole grid about {(spent + total) / 3600:.1f} h")
    return 0


def publish(store: CompareStore, digests: dict[str, str], results_dir: Path, command: str) -> None:
    """accuracy.json, inference.json and the report from the units of today's settings."""
    from simulations.baselines.report import write_report

    data = store.current(digests)
    merge_accuracy(results_dir, store.rows(data))
    timed_by = sorted({u.get("command", command) for u in data["units"].values() if u["method"] == "latency"})
    merge_inference(results_dir, store.cost_rows(data), "; ".join(timed_by) or command)   # the runs that measured the costs
    write_report(data, results_dir, results_md_path(results_dir), update_section)


def _run(todo: list[Unit], settings: MethodSettings, digests: dict[str, str], connector_preset: str, args, store: CompareStore,
         command: str) -> None:
    from tqdm.auto import tqdm

    from provider_party.model.base_llm import load_base_llm

    bench = Workbench(load_base_llm(), settings, args.work, progress=not args.quiet, log=lambda m: tqdm.write(str(m)))
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="compare", unit="unit", disable=args.quiet)
    for unit in bar:
        bar.set_postfix_str(unit.key, refresh=True)
        t = time.perf_counter()
        result = run_unit(bench, unit, connector_preset, args.connectors, args.latency_reps)
        wall = time.perf_counter() - t
        store.put(unit, digests[unit.method], result, wall, command)
        store.data["last_run_wall_s"] = time.perf_counter() - t0
        store.save(args.out)  # a finished unit survives an interruption
        publish(store, digests, args.out, command)
        tqdm.write(f"[{unit.key}] {wall:.0f} s: " + ", ".join(f"{r['method']} acc {r['accuracy']:.3f}" for r in result.rows if "accuracy" in r))


if __name__ == "__main__":
    raise SystemExit(main())
