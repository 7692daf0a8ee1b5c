"""`llamdex demo`: the main job on the embedded defaults (TitanicSurvival, DP expert at ε = 1), or on any table."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simulations.cli.common import add_alias, add_connectors_arg, add_data_args, add_out_arg, non_negative_int, positive_float, positive_int, table_ref


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded defaults (start here)",
        description="Starts the provider and the client as two processes talking gRPC over mutual TLS on loopback. "
        "The client trains a DP expert (ε=1) on its table (TitanicSurvival by default, or --data), signs and uploads it and "
        "shows the provider's privacy receipt; the provider trains connectors for the public schema from synthetic data only "
        "(progress bar), plugs the expert into the frozen SmolLM2-135M-Instruct, and the client asks its held-out records as "
        "plain-language questions through Ask (progress bar). Prints the accuracy table (base LLM, expert, Llamdex) and the "
        "receipt chain; every file of the run (keys, certificates, configs, logs, ledger, receipts, connectors) lands in --out.\n\n"
        "--in-process runs the same pipeline in one process instead (no services), and adds a latency comparison.",
        epilog="examples:\n  llamdex demo\n  llamdex demo --data default --epsilon 4\n  llamdex demo --data penguins --max-test 40\n"
        "  llamdex demo --data loans.csv --schema loans.schema.json     # your own table (see `llamdex schema draft`)\n"
        "  llamdex demo --in-process --preset default",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_args(p, aliases=("--dataset",))
    p.add_argument("--epsilon", type=positive_float, default=1.0, help="DP target ε of the client's expert (default 1)")
    p.add_argument("--preset", choices=["default", "quick"], default="quick",
                   help="connector-training preset when no connectors are stored for the schema yet (default: quick, ~5 min; "
                   "'default' is what the benchmarks use)")
    p.add_argument("--quick", dest="preset", action="store_const", const="quick", help="same as --preset quick")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the held-out split and of the expert's training (default: %(default)s)")
    p.add_argument("--max-test", type=positive_int, default=None, metavar="N", help="ask at most N held-out records (default: all)")
    add_alias(p, "--max-questions", "--max-test", "max_test", type=positive_int)
    add_out_arg(p, default=None, help="folder for the run's files (default runs/demo-<time>)", aliases=("--run-dir",))
    add_connectors_arg(p, help="connector store to reuse across runs (default: the run folder for the two-party demo, "
                       "$LLAMDEX_HOME/connectors in-process)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all cores; --in-process only)")
    p.add_argument("--in-process", action="store_true", help="run client and provider code in one process, without gRPC")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = table_ref(args)
    table.schema()  # a missing or invalid schema is reported now, before any process starts
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if not args.in_process:
        from simulations.two_party_demo import run_two_party_demo

        return run_two_party_demo(out, args.epsilon, args.preset, table, args.seed, max_questions=args.max_test or 0,
                                  connectors_root=args.connectors)
    return run_in_process(args, table, out)


def run_in_process(args: argparse.Namespace, table, out: Path) -> int:
    from simulations.benchmarks.inference import measure_model
    from simulations.cli.common import set_threads
    from simulations.pipeline import format_table, run_pipeline

    set_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_pipeline(table, (None, args.epsilon), preset=args.preset, seed=args.seed, max_test=args.max_test,
                       connectors_root=args.connectors)
    print("\nAccuracy on real held-out records (questions made by the verbalizer):\n")
    print(format_table(res.rows))
    print("\nExpert-encoder extraction on those questions: " + ", ".join(
        f"{c} {'MAE %.2f' % q['mae'] if q.get('mae') is not None else 'acc %.3f' % q['accuracy'] if 'accuracy' in q else 'n/a'}"
        for c, q in res.extraction.items()))
    # The pipeline's own model, non-DP expert and held-out questions: nothing is loaded or trained twice.
    sizes = tuple(b for b in (1, 16) if b <= len(res.questions))
    lat = measure_model(res.dataset, res.model, res.experts["no-dp"], res.questions, sizes, 10, args.seed)
    print("\nLatency (median, same questions, side by side):")
    for b in lat["batches"]:
        print(f"  batch {b['batch_size']:>2}: base LLM {b['median_base_s'] * 1000:7.1f} ms   Llamdex {b['median_llamdex_s'] * 1000:7.1f} ms   ratio {b['ratio']:.3f}")
    summary = {"data": str(table), "dataset": res.dataset, "epsilon": args.epsilon, "preset": args.preset, "rows": res.rows,
               "extraction": res.extraction, "dp": res.dp, "connectors": res.connector_metrics, "latency": lat, "timings": res.timings,
               "wall_s": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nrun folder: {out}  ({summary['wall_s'] / 60:.1f} min)")
    return 0
