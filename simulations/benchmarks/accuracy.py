"""Accuracy benchmark: base LLM, expert and Llamdex (no DP, ε=1, ε=4) on the registered tables, or on any table.

Run: `python -m simulations.benchmarks.accuracy` (or `llamdex bench accuracy`, or `make bench`); `--data`
takes registered tables and CSV/Parquet files with their schemas. Writes
docs/results/accuracy.json, docs/results/accuracy.png and the `accuracy` section of docs/RESULTS.md.
Connectors are retrained for every schema so their wall time is measured, not read from a cache.

accuracy.json: `rows` (one per table, method and ε), `extraction` (per table, per column, the
encoder's reading of the real held-out questions), `phrasing` (per table: Llamdex's `agreement`
with the non-DP expert, its `llamdex_accuracy` and `n` on the evaluation-only phrasings of
`simulations.phrasings`, with the same for each DP expert under `by_expert`), `connectors` (the
connector-training metrics, self-check included), `runs` (per table: the command, date and encoder
settings it was measured with), `decisions` (per table: the same expert/Llamdex rows for experts trained with
the plain-accuracy decision rule, `--decisions`; the client's default rule maximises balanced accuracy),
`seeds` (with `--expert-seeds N` > 1, per table and expert: the figures of N experts trained with
seeds seed..seed+N-1 through the same connectors and questions, lists in seed order; the rows report
the first).

Rows of methods another benchmark owns (the comparison's baselines) are kept as they are.
`--update` reruns only the tables named by `--data` and keeps every other table's entries as
measured, each with its own `runs` entry, so one table can be remeasured without rerunning all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from simulations.benchmarks.results_md import RESULTS_DIR, command_line, environment, results_md_path, update_section, write_json
from simulations.cli.common import add_connectors_arg, add_data_args, add_out_arg, add_threads_arg, epsilon_list, non_negative_int, positive_int, set_threads, table_refs

DATASETS = ("titanic", "default", "credit", "churn", "penguins", "telco", "attrition")
OWN_METHODS = ("base_llm", "expert", "llamdex", "majority_class")   # the rows this benchmark writes; others come from `compare`
PER_TABLE = ("extraction", "phrasing", "connectors", "dp", "timings", "runs", "decisions", "seeds")


def table_order(dataset: str) -> tuple[int, str]:
    """Sort key of a table in a report: the registered tables in `DATASETS` order, then any other by name."""
    return (DATASETS.index(dataset) if dataset in DATASETS else len(DATASETS), dataset)


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(payload: dict) -> str:
    from simulations.pipeline import format_table  # the pipeline (torch, the model) loads only when a benchmark runs

    rows = [r for r in payload["rows"] if r["method"] in OWN_METHODS]
    runs = payload.get("runs", {})
    commands = {r.get("command") for r in runs.values()} or {payload["command"]}
    env = payload["environment"]
    lines = ["## Accuracy on real held-out records (issue: Llamdex core)", ""]
    if len(commands) == 1:
        lines.append(f"Command: `{next(iter(commands))}` (preset `{payload['preset']}`, seed {payload['seed']}, {env['cpu_count']} CPU cores, "
                     f"torch threads {env['torch_threads']}, {env['date']}).")
    else:
        lines += ["Measured in more than one run (preset `{}`, seed {}); per table:".format(payload["preset"], payload["seed"]), ""]
        for ds in payload["datasets"]:
            r = runs.get(ds, {})
            enc = r.get("encoder")
            how = f"; encoder window {enc['encoder_kernel']} tokens × {enc['encoder_mixer_layers']} mixer layers" if enc else ""
            lines.append(f"- {ds}: `{r.get('command', payload['command'])}` ({r.get('date', '?')}{how})")
        lines.append("")
    lines += [
        "Test questions are the real held-out records of each table through the verbalizer; the connectors saw only synthetic rows.",
        "",
        format_table(rows),
        "",
        "### Targets",
        "",
        "| dataset | ε | expert acc. | Llamdex acc. | Llamdex − expert (pts) | expert bal. acc. | Llamdex bal. acc. | Llamdex − expert bal. (pts) | Llamdex − base (pts) | agreement with expert |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in payload["datasets"]:
        base = next(r for r in rows if r["dataset"] == ds and r["method"] == "base_llm")
        for r in rows:
            if r["dataset"] == ds and r["method"] == "llamdex":
                ex = next(e for e in rows if e["dataset"] == ds and e["method"] == "expert" and e["epsilon"] == r["epsilon"])
                lines.append(
                    f"| {ds} | {'–' if r['epsilon'] is None else format(r['epsilon'], 'g')} | {ex['accuracy']:.3f} | {r['accuracy']:.3f} | "
                    f"{100 * (r['accuracy'] - ex['accuracy']):+.1f} | {ex['balanced_accuracy']:.3f} | {r['balanced_accuracy']:.3f} | "
                    f"{100 * (r['balanced_accuracy'] - ex['balanced_accuracy']):+.1f} | {100 * (r['accuracy'] - base['accuracy']):+.1f} | {r['agreement_with_expert']:.3f} |"
                )
    lines += decision_lines(payload, rows)
    lines += seed_lines(payload)
    lines += ["", "### Evaluation-only phrasings (never used in training)", "",
              "Llamdex with the non-DP expert on the same held-out records asked in the phrasings of `simulations/phrasings.py` "
              "(half hand-written for the table's domain, half general templates), next to the verbalizer's phrasing.", "",
              "| dataset | agreement (eval-only) | agreement (verbalizer) | hand-written | general | Llamdex acc. (eval-only) | expert acc. | n |",
              "|---|---|---|---|---|---|---|---|"]
    for ds in payload["datasets"]:
        ph = payload.get("phrasing", {}).get(ds)
        if not ph:
            continue
        by = ph.get("by_mechanism", {})
        hand, gen = by.get("hand", {}).get("agreement"), by.get("general", {}).get("agreement")
        lines.append(f"| {ds} | {ph['agreement']:.3f} | {ph['verbalizer_agreement']:.3f} | {_fmt(hand)} | {_fmt(gen)} | "
                     f"{ph['llamdex_accuracy']:.3f} | {ph['expert_accuracy']:.3f} | {ph['n']} |")
    lines += ["", "### Expert-encoder extraction on real test questions, connector training and its self-check", "",
              "Categorical columns: accuracy over every record (a missing value must read as missing); numeric columns: share read exactly "
              "(up to the verbalizer's rounding) and MAE; missing flag: accuracy of the missing decision.", "",
              "| dataset | column | reading | missing flag | connector training (s) | inject layer k | self-check |", "|---|---|---|---|---|---|---|"]
    for ds in payload["datasets"]:
        info = payload["extraction"].get(ds)
        if not info:
            continue
        conn = payload["connectors"][ds]
        check = conn.get("self_check", {})
        missed = check.get("missed", {})
        for i, (col, q) in enumerate(info.items()):
            if "mae" in q:
                qual = f"exact {_fmt(q.get('exact'))}, MAE {_fmt(q['mae'], '.2f')} {q.get('unit') or ''}".strip()
            else:
                qual = f"accuracy {q['accuracy']:.3f}"
            t = f"{conn['timings']['total_s']:.0f}" if i == 0 else ""
            k = str(conn["inject_layer"]) if i == 0 else ""
            verdict = ("missed: " + ", ".join(f"{m} {v['value']:.3f}" for m, v in missed[col].items())) if col in missed else ""
            if i == 0 and not verdict:
                verdict = "passed" if check.get("passed") else ""
                if check.get("retrain_rounds"):
                    verdict += f" (retrained {len(check['retrain_rounds'])}x)"
            lines.append(f"| {ds if i == 0 else ''} | {col} | {qual} | {_fmt(q.get('missing_flag_accuracy'))} | {t} | {k} | {verdict} |")
    lines += ["", "![accuracy](results/accuracy.png)"]
    return "\n".join(lines)


def decision_lines(payload: dict, rows: list[dict]) -> list[str]:
    """The two decision rules side by side: each measured by the metric it maximises, through the same connectors."""
    tables = [ds for ds in payload["datasets"] if payload.get("decisions", {}).get(ds)]
    if not tables:
        return []
    lines = ["", "### The two decision rules", "",
             "The client's experts decide for balanced accuracy by default (the log label prior folded out of the head's bias); an expert trained for plain "
             "accuracy (`TrainConfig(decision=\"calibrated\")`) goes through the same connectors and questions. Each rule is "
             "read on the metric it maximises: balanced accuracy for the default, plain accuracy for the other.", "",
             "| dataset | ε | Llamdex bal. acc. (balanced rule) | expert acc. (plain rule) | Llamdex acc. (plain rule) | "
             "Llamdex − expert (pts) | agreement (plain rule) |", "|---|---|---|---|---|---|---|"]
    for ds in tables:
        for r in payload["decisions"][ds]:
            if r["method"] != "llamdex_calibrated":
                continue
            ex = next(e for e in payload["decisions"][ds] if e["method"] == "expert_calibrated" and e["epsilon"] == r["epsilon"])
            bal = next((b for b in rows if b["dataset"] == ds and b["method"] == "llamdex" and b["epsilon"] == r["epsilon"]), None)
            lines.append(f"| {ds} | {'–' if r['epsilon'] is None else format(r['epsilon'], 'g')} | {_fmt(bal and bal['balanced_accuracy'])} | "
                         f"{ex['accuracy']:.3f} | {r['accuracy']:.3f} | {100 * (r['accuracy'] - ex['accuracy']):+.1f} | "
                         f"{r['agreement_with_expert']:.3f} |")
    return lines


def format_spread(values: list[float]) -> str:
    """mean ± sample sd (min–max), for a figure measured once per training seed."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})"


def _gap(llamdex: list[float], expert: list[float]) -> str:
    """Llamdex − expert in points, paired by seed: the mean, and the seed where Llamdex falls furthest behind."""
    gaps = [100 * (a - b) for a, b in zip(llamdex, expert)]
    return f"{statistics.fmean(gaps):+.1f} (worst {min(gaps):+.1f})"


def seed_lines(payload: dict) -> list[str]:
    """Each expert recipe over several training seeds: how far one figure moves when only the seed changes."""
    tables = [ds for ds in payload["datasets"] if payload.get("seeds", {}).get(ds)]
    if not tables:
        return []
    n = sorted({len(v["seeds"]) for ds in tables for v in payload["seeds"][ds].values()})
    lines = ["", "### Across expert training seeds", "",
             f"Each expert recipe trained with {'/'.join(map(str, n))} seeds (parameter initialisation and data order; DP-SGD also "
             "draws fresh noise), every expert through the same connectors and the same questions: mean ± sample standard "
             "deviation (min–max) over the seeds, and Llamdex − expert paired by seed. Two single runs that differ by less than "
             "this spread do not tell two recipes apart. The rows above are the first seed's.", "",
             "| dataset | expert | expert acc. | Llamdex acc. | Llamdex − expert (pts) | expert bal. acc. | Llamdex bal. acc. | "
             "Llamdex − expert bal. (pts) | agreement (min) | eval-only agreement | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds in tables:
        for name, v in payload["seeds"][ds].items():
            phr = format_spread(v["phrasing_agreement"]) if v.get("phrasing_agreement") else "–"
            lines.append(f"| {ds} | {name} | {format_spread(v['expert_accuracy'])} | {format_spread(v['llamdex_accuracy'])} | "
                         f"{_gap(v['llamdex_accuracy'], v['expert_accuracy'])} | {format_spread(v['expert_balanced_accuracy'])} | "
                         f"{format_spread(v['llamdex_balanced_accuracy'])} | {_gap(v['llamdex_balanced_accuracy'], v['expert_balanced_accuracy'])} | "
                         f"{min(v['agreement']):.3f} | {phr} | {len(v['seeds'])} |")
    return lines


def phrasing_entry(phrasing: dict[str, dict]) -> dict:
    """The table's `phrasing` entry: the non-DP expert's figures at the top level, every expert's under `by_expert`."""
    if not phrasing:
        return {}
    main = phrasing.get("no-dp") or next(iter(phrasing.values()))
    return {**{k: v for k, v in main.items() if k != "extraction"}, "extraction": main.get("extraction", {}),
            "by_expert": {name: {k: v for k, v in p.items() if k != "extraction"} for name, p in phrasing.items()}}


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [("base_llm", None), ("expert", None), ("llamdex", None), ("expert", 1.0), ("llamdex", 1.0), ("expert", 4.0), ("llamdex", 4.0)]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for i, (m, e) in enumerate(methods):
        vals = []
        for ds in payload["datasets"]:
            r = [r for r in payload["rows"] if r["dataset"] == ds and r["method"] == m and r["epsilon"] == e]
            vals.append(r[0]["balanced_accuracy"] if r else 0)
        label = m if e is None else f"{m} ε={e:g}"
        ax.bar([d + i * width for d in range(len(payload["datasets"]))], vals, width, label=label)
    ax.set_xticks([d + 0.4 - width / 2 for d in range(len(payload["datasets"]))], payload["datasets"])
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.legend(ncol=4, fontsize=8, loc="upper center")
    ax.set_title("Real held-out records: base LLM vs expert vs Llamdex")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options, shared by `python -m simulations.benchmarks.accuracy` and `llamdex bench accuracy`."""
    add_data_args(ap, multiple=True, default=",".join(DATASETS), aliases=("--datasets",))
    ap.add_argument("--epsilons", type=epsilon_list, default=[None, 1.0, 4.0], help="ε of the DP experts; 'none' = no DP (default: none,1,4)")
    ap.add_argument("--preset", default="default", choices=["default", "quick"],
                    help="connector training preset, used only for schemas with no stored connectors (default: default)")
    ap.add_argument("--seed", type=non_negative_int, default=0, help="seed of the held-out split, the questions and the first expert (default 0)")
    ap.add_argument("--max-test", type=positive_int, default=1000, help="stratified subsample of the held-out split (default 1000)")
    add_connectors_arg(ap, help="connector store (default $LLAMDEX_HOME/connectors)")
    ap.add_argument("--no-retrain", action="store_true", help="reuse stored connectors (timing then not measured)")
    add_threads_arg(ap)
    ap.add_argument("--decisions", type=decision_list, default=["calibrated"], metavar="RULES",
                    help="other decision rules to train a second expert with at every ε, reported beside the default (balanced) "
                         "rule: 'calibrated' maximises plain accuracy; 'none' skips them (default: calibrated)")
    ap.add_argument("--expert-seeds", type=positive_int, default=5, metavar="N",
                    help="train each expert N times (seeds --seed..--seed+N-1) and report the spread of every figure over them; "
                         "the questions run through the LLM once for all; 1 reports single runs (default 5)")
    ap.add_argument("--update", action="store_true",
                    help="rerun only the --data tables and keep every other table of the existing accuracy.json as measured")
    add_out_arg(ap, default=RESULTS_DIR, help="folder of the JSON, the plot and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    return ap


def decision_list(text: str) -> list[str]:
    from simulations.pipeline import DECISION_METHODS  # the rules the pipeline can train beside the default one

    rules = [] if text.strip().lower() == "none" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [r for r in rules if r not in DECISION_METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown decision rule(s) {bad}; the other rule is 'calibrated' (or 'none')")
    return rules


def run(args: argparse.Namespace, command: str) -> int:
    from simulations.pipeline import format_table, run_pipeline

    set_threads(args.threads)
    tables = table_refs(args)
    datasets = [t.id for t in tables]
    env = environment()
    payload = {"command": command, "preset": args.preset, "seed": args.seed,
               "datasets": datasets, "epsilons": args.epsilons, "environment": env, "rows": [], **{k: {} for k in PER_TABLE}}
    previous_results(args.out / "accuracy.json", args.update, datasets, payload)
    t0 = time.perf_counter()
    for table in tables:
        ds = table.id
        res = run_pipeline(table, tuple(args.epsilons), preset=args.preset, seed=args.seed, max_test=args.max_test,
                           connectors_root=args.connectors, retrain=not args.no_retrain, decisions=tuple(args.decisions),
                           expert_seeds=args.expert_seeds)
        payload["rows"] = [r for r in payload["rows"] if r["dataset"] != ds or r["method"] not in OWN_METHODS] + res.rows
        cfg = res.model.config
        payload["runs"][ds] = {"command": command, "date": env["date"], "encoder": {k: getattr(cfg, k) for k in (
            "encoder_layer", "encoder_dim", "encoder_mixer_layers", "encoder_kernel", "inject_layer")}}
        payload["extraction"][ds] = res.extraction
        payload["phrasing"][ds] = phrasing_entry(res.phrasing)
        payload["connectors"][ds] = {**res.connector_metrics, "trained_in_this_run": res.connectors_trained_now}
        payload["dp"][ds] = res.dp
        if res.decision_rows:
            payload["decisions"][ds] = res.decision_rows
        else:
            payload["decisions"].pop(ds, None)
        if res.seed_runs:
            payload["seeds"][ds] = res.seed_runs
        else:
            payload["seeds"].pop(ds, None)
        payload.setdefault("timings", {})[ds] = res.timings
        print(format_table(res.rows), flush=True)
        write_json("accuracy.json", payload, args.out)  # partial results survive an interruption
    payload["wall_s"] = time.perf_counter() - t0
    write_json("accuracy.json", payload, args.out)
    plot(payload, args.out / "accuracy.png")
    update_section("accuracy", markdown(payload), results_md_path(args.out))
    print(f"wrote {args.out / 'accuracy.json'} and {results_md_path(args.out)} in {payload['wall_s'] / 60:.1f} min")
    return 0


def previous_results(path: Path, update: bool, datasets: list[str], payload: dict) -> None:
    """Fills `payload` with what a rerun keeps from the existing accuracy.json: always the rows of methods other
    benchmarks own; with `update`, every table's rows and entries too, each replaced only when its table is
    measured again (so an interrupted run loses nothing that was there)."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    keep_tables = list(old.get("datasets", [])) if update else []
    payload["rows"] = [r for r in old.get("rows", []) if r["method"] not in OWN_METHODS or r["dataset"] in keep_tables]
    for ds in keep_tables:
        for key in PER_TABLE:
            if ds in old.get(key, {}):
                payload[key][ds] = old[key][ds]
        payload["runs"].setdefault(ds, {"command": old.get("command"), "date": old.get("environment", {}).get("date")})
    payload["datasets"] = sorted(set(keep_tables) | set(datasets), key=table_order)


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m simulations.benchmarks.accuracy", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args, command_line("python -m simulations.benchmarks.accuracy", argv))


if __name__ == "__main__":
    raise SystemExit(main())
