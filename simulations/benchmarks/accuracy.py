"""Accuracy benchmark: base LLM, expert and Llamdex (no DP, ε=1, ε=4) on the registered tables, or on any table.

Run: `python -m simulations.benchmarks.accuracy` (or `llamdex bench accuracy`, or `make bench`); `--data`
takes registered tables and CSV/Parquet files with their schemas. Writes
docs/results/accuracy.json, docs/results/accuracy.png and the `accuracy` section of docs/RESULTS.md.
Connectors are retrained for every schema so their wall time is measured, not read from a cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simulations.benchmarks.results_md import RESULTS_DIR, environment, results_md_path, update_section, write_json
from simulations.cli.common import add_connectors_arg, add_data_args, add_out_arg, epsilon_list, set_threads, table_refs

DATASETS = ("titanic", "default", "credit", "churn", "penguins")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(payload: dict) -> str:
    from simulations.pipeline import format_table  # the pipeline (torch, the model) loads only when a benchmark runs

    rows = payload["rows"]
    lines = [
        "## Accuracy on real held-out records (issue: Llamdex core)",
        "",
        f"Command: `{payload['command']}` (preset `{payload['preset']}`, seed {payload['seed']}, {payload['environment']['cpu_count']} CPU cores, torch threads {payload['environment']['torch_threads']}, {payload['environment']['date']}).",
        "Test questions are the real held-out records of each table through the verbalizer; the connectors saw only synthetic rows.",
        "",
        format_table(rows),
        "",
        "### Targets",
        "",
        "| dataset | ε | expert acc. | Llamdex acc. | Llamdex − expert (pts) | Llamdex − base (pts) | agreement with expert |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in payload["datasets"]:
        base = next(r for r in rows if r["dataset"] == ds and r["method"] == "base_llm")
        for r in rows:
            if r["dataset"] == ds and r["method"] == "llamdex":
                ex = next(e for e in rows if e["dataset"] == ds and e["method"] == "expert" and e["epsilon"] == r["epsilon"])
                lines.append(
                    f"| {ds} | {'–' if r['epsilon'] is None else format(r['epsilon'], 'g')} | {ex['accuracy']:.3f} | {r['accuracy']:.3f} | "
                    f"{100 * (r['accuracy'] - ex['accuracy']):+.1f} | {100 * (r['accuracy'] - base['accuracy']):+.1f} | {r['agreement_with_expert']:.3f} |"
                )
    lines += ["", "### Expert-encoder extraction on real test questions, and connector training time", "",
              "| dataset | column | quality | connector training (s) | inject layer k |", "|---|---|---|---|---|"]
    for ds, info in payload["extraction"].items():
        conn = payload["connectors"][ds]
        for i, (col, q) in enumerate(info.items()):
            qual = f"MAE {_fmt(q['mae'], '.2f')} {q.get('unit') or ''}".strip() if "mae" in q else f"accuracy {q['accuracy']:.3f}"
            t = f"{conn['timings']['total_s']:.0f}" if i == 0 else ""
            k = str(conn["inject_layer"]) if i == 0 else ""
            lines.append(f"| {ds if i == 0 else ''} | {col} | {qual} | {t} | {k} |")
    lines += ["", "![accuracy](results/accuracy.png)"]
    return "\n".join(lines)


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
    ap.add_argument("--preset", default="default", choices=["default", "quick"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-test", type=int, default=1000, help="stratified subsample of the held-out split (default 1000)")
    add_connectors_arg(ap, help="connector store (default $LLAMDEX_HOME/connectors)")
    ap.add_argument("--no-retrain", action="store_true", help="reuse stored connectors (timing then not measured)")
    ap.add_argument("--threads", type=int, default=None)
    add_out_arg(ap, default=RESULTS_DIR, help="folder of the JSON, the plot and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    return ap


def run(args: argparse.Namespace, command: str) -> int:
    from simulations.pipeline import format_table, run_pipeline

    set_threads(args.threads)
    tables = table_refs(args)
    datasets = [t.id for t in tables]
    payload = {"command": command, "preset": args.preset, "seed": args.seed,
               "datasets": datasets, "epsilons": args.epsilons, "environment": environment(), "rows": [], "extraction": {}, "connectors": {}, "dp": {}}
    t0 = time.perf_counter()
    for table in tables:
        ds = table.id
        res = run_pipeline(table, tuple(args.epsilons), preset=args.preset, seed=args.seed, max_test=args.max_test,
                           connectors_root=args.connectors, retrain=not args.no_retrain)
        payload["rows"] += res.rows
        payload["extraction"][ds] = res.extraction
        payload["connectors"][ds] = {**res.connector_metrics, "trained_in_this_run": res.connectors_trained_now}
        payload["dp"][ds] = res.dp
        payload.setdefault("timings", {})[ds] = res.timings
        print(format_table(res.rows), flush=True)
        write_json("accuracy.json", payload, args.out)  # partial results survive an interruption
    payload["wall_s"] = time.perf_counter() - t0
    write_json("accuracy.json", payload, args.out)
    plot(payload, args.out / "accuracy.png")
    update_section("accuracy", markdown(payload), results_md_path(args.out))
    print(f"wrote {args.out / 'accuracy.json'} and docs/RESULTS.md in {payload['wall_s'] / 60:.1f} min")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = add_arguments(argparse.ArgumentParser(prog="python -m simulations.benchmarks.accuracy", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    args = ap.parse_args(argv)
    return run(args, "python -m simulations.benchmarks.accuracy " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
