"""Inference cost: a Llamdex query against the same question to the base LLM, side by side.

Run: `python -m simulations.benchmarks.inference` (or `llamdex bench inference`, or `make bench`); `--data`
takes registered tables and CSV/Parquet files with their schemas. For each batch size the two
calls alternate on the same real held-out questions (order flipped every repetition, so drift on a
noisy machine hits both), and the medians and their ratio are written to
docs/results/inference.json and the `inference` section of docs/RESULTS.md.

What other benchmarks keep in inference.json (the comparison's `compare` rows) is kept. `--update`
remeasures only the `--data` tables and keeps every other table's result as measured; each result
names the run it came from (`run`: command, date).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from simulations.benchmarks.accuracy import DATASETS, table_order  # every registered table, as the accuracy benchmark
from simulations.benchmarks.results_md import RESULTS_DIR, command_line, environment, results_md_path, update_section, write_json
from simulations.cli.common import (add_connectors_arg, add_data_args, add_out_arg, add_threads_arg, positive_int, positive_int_list, set_threads,
                                    table_refs)


def measure(table, batch_sizes: tuple[int, ...], reps: int, preset: str, connectors: Path | None, seed: int = 0) -> dict:
    """Builds the table's non-DP expert and the stored (or newly trained) connectors, then times them.

    `table` is a `TableRef` or the text `--data` takes (a registered name, or a CSV/Parquet file with its schema beside it).
    """
    from client_party.datasets import TableRef, encode_table, split_table
    from client_party.expert_training import TrainConfig, train_expert
    from provider_party.model.base_llm import load_base_llm
    from provider_party.model.connector_store import ConnectorStore
    from simulations.evaluation import test_questions

    table = table if isinstance(table, TableRef) else TableRef.parse(table)
    df, schema = table.load()
    train, test = split_table(df, schema, seed=seed)
    expert = train_expert(*encode_table(train, schema), schema, TrainConfig(seed=seed)).model
    base = load_base_llm()
    model, _ = ConnectorStore(connectors).get_or_train(base, schema, preset, seed=seed)
    return measure_model(table.id, model, expert, test_questions(model, test, seed), batch_sizes, reps, seed)


def measure_model(dataset: str, model, expert, questions: list[str], batch_sizes: tuple[int, ...], reps: int, seed: int = 0) -> dict:
    """Median latency of the base LLM and of Llamdex on the same questions, calls alternated."""
    import torch

    n_base = float(np.mean([model.batch([q], with_slots=False).input_ids.shape[1] for q in questions[:200]]))
    n_ll = float(np.mean([model.batch([q]).input_ids.shape[1] for q in questions[:200]]))
    out = {"dataset": dataset, "num_tokens": model.config.num_tokens, "inject_layer": model.config.inject_layer,
           "encoder_layer": model.config.encoder_layer, "encoder_kernel": model.config.encoder_kernel, "mean_prompt_tokens_base": n_base, "mean_prompt_tokens_llamdex": n_ll, "batches": []}
    rng = np.random.default_rng(seed)
    for bs in batch_sizes:
        t_base, t_ll = [], []
        n_reps = reps if bs == 1 else max(5, reps // 3)
        with torch.inference_mode():
            model.answer_base(questions[:bs]), model.answer(questions[:bs], expert)  # warm-up
            for r in range(n_reps):
                qs = [questions[i] for i in rng.choice(len(questions), size=bs, replace=False)]
                calls = [("base", lambda: model.answer_base(qs)), ("llamdex", lambda: model.answer(qs, expert))]
                for name, fn in (calls if r % 2 == 0 else calls[::-1]):
                    t = time.perf_counter()
                    fn()
                    (t_base if name == "base" else t_ll).append(time.perf_counter() - t)
        mb, ml = float(np.median(t_base)), float(np.median(t_ll))
        out["batches"].append({"batch_size": bs, "reps": n_reps, "median_base_s": mb, "median_llamdex_s": ml, "ratio": ml / mb,
                               "p90_base_s": float(np.percentile(t_base, 90)), "p90_llamdex_s": float(np.percentile(t_ll, 90))})
        print(f"{dataset} batch {bs}: base {mb * 1000:.1f} ms, Llamdex {ml * 1000:.1f} ms, ratio {ml / mb:.3f}", flush=True)
    return out


def markdown(payload: dict) -> str:
    env = payload["environment"]
    runs = {(d.get("run") or {}).get("command", payload["command"]) for d in payload["results"]} or {payload["command"]}
    if len(runs) == 1:
        head = f"Command: `{next(iter(runs))}` ({env['cpu_count']} CPU cores, torch threads {env['torch_threads']}, {env['date']}). "
    else:
        by_run: dict[tuple[str, str], list[str]] = {}
        for d in payload["results"]:
            run = d.get("run") or {}
            by_run.setdefault((run.get("command", "?"), run.get("date", "?")), []).append(d["dataset"])
        head = (f"Measured in more than one run ({env['cpu_count']} CPU cores): "
                + "; ".join(f"{', '.join(tables)} by `{cmd}` ({date})" for (cmd, date), tables in by_run.items()) + ". ")
    lines = ["## Inference cost (issue: Llamdex core)", "",
             head + "Medians over alternating calls on the same real held-out questions; one forward pass per Llamdex query.", "",
             "| dataset | batch | base LLM (ms) | Llamdex (ms) | ratio | tokens base → Llamdex |", "|---|---|---|---|---|---|"]
    for d in payload["results"]:
        for b in d["batches"]:
            lines.append(f"| {d['dataset']} | {b['batch_size']} | {b['median_base_s'] * 1000:.1f} | {b['median_llamdex_s'] * 1000:.1f} | {b['ratio']:.3f} | "
                         f"{d['mean_prompt_tokens_base']:.0f} → {d['mean_prompt_tokens_llamdex']:.0f} |")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options, shared by `python -m simulations.benchmarks.inference` and `llamdex bench inference`."""
    add_data_args(ap, multiple=True, default=",".join(DATASETS), aliases=("--datasets",))
    ap.add_argument("--batch-sizes", type=positive_int_list, default=(1, 16), help="comma-separated questions per pass to time (default 1,16)")
    ap.add_argument("--reps", type=positive_int, default=30, help="repetitions per batch size (batch 16 uses a third)")
    ap.add_argument("--preset", default="default", choices=["default", "quick"], help="preset used only if no connectors are stored yet")
    add_connectors_arg(ap, help="connector store (default $LLAMDEX_HOME/connectors)")
    add_threads_arg(ap)
    ap.add_argument("--update", action="store_true", help="remeasure only the --data tables and keep every other table's result as measured")
    add_out_arg(ap, default=RESULTS_DIR, help="folder of the JSON and RESULTS.md's section (default: docs/results)", aliases=("--results-dir",))
    return ap


def run(args: argparse.Namespace, command: str) -> int:
    set_threads(args.threads)
    sizes = tuple(args.batch_sizes)
    env = environment()
    tables = table_refs(args)
    payload = kept_results(Path(args.out) / "inference.json", args.update)
    payload.update({"command": command, "environment": env})
    for table in tables:
        res = {**measure(table, sizes, args.reps, args.preset, args.connectors), "run": {"command": command, "date": env["date"]}}
        payload["results"] = sorted([r for r in payload["results"] if r["dataset"] != table.id] + [res],
                                    key=lambda r: table_order(r["dataset"]))
        write_json("inference.json", payload, args.out)
    update_section("inference", markdown(payload), results_md_path(args.out))
    return 0


def kept_results(path: Path, update: bool) -> dict:
    """What a rerun keeps of the existing inference.json: every key another benchmark wrote (not `command`,
    `environment`, `results`) and, with `update`, every table's result (each with its `run`), replaced only when that
    table is measured again, so an interrupted run loses nothing that was there."""
    if not path.exists():
        return {"results": []}
    old = json.loads(path.read_text())
    kept = {k: v for k, v in old.items() if k not in ("command", "environment", "results")}
    results = []
    if update:
        for r in old.get("results", []):
            results.append({**r, "run": r.get("run") or {"command": old.get("command"), "date": old.get("environment", {}).get("date")}})
    return {**kept, "results": results}


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m simulations.benchmarks.inference", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args, command_line("python -m simulations.benchmarks.inference", argv))


if __name__ == "__main__":
    raise SystemExit(main())
