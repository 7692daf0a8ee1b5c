"""`llamdex simulate`: many clients customizing one base LLM, as the Flower app (`flwr run .`) with the same settings as flags."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from simulations.cli.common import non_negative_float, non_negative_int, positive_float, positive_int

# flag -> run-config key of [tool.flwr.app.config] (the same names, kebab-case)
RUN_CONFIG_FLAGS = ("clients", "partition", "alpha", "seed", "epsilon", "budget", "epochs", "test_size", "max_test", "ask_batch",
                    "preset", "connectors", "timeout_s", "faults", "federated", "fed_rounds", "fed_epsilon", "fed_delta", "fed_clip",
                    "fed_local_epochs", "fed_lr", "provider_device")


def register(sub: argparse._SubParsersAction) -> None:
    from simulations.cli.common import add_alias, add_data_args

    p = sub.add_parser(
        "simulate",
        help="many clients, one base LLM: the Flower app on the simulation (or deployment) engine",
        description="Runs the Llamdex Flower app (simulations/flower) with `flwr run .` on Flower's simulation engine, offline, and "
        "stops every process it started. Each simulated client holds a partition of a table (IID or Dirichlet non-IID) or its "
        "own table, makes its own signing key, trains its expert (DP-SGD at its own ε, or no DP), signs it and hands it over; "
        "the provider verifies, recomputes ε, charges the budget and signs a receipt that the client verifies; connectors are "
        "trained once per schema; every client scores base LLM, its expert and Llamdex on its own held-out records. One "
        "progress bar per phase; the report lands in --out (report.json, report.md). Every flag that describes the scenario is the "
        "run-config key of the same name in pyproject's [tool.flwr.app.config] (--out is the key out-dir), so `flwr run . "
        "--run-config ...` runs the same scenario; --engine, --num-cpus, --num-gpus and --timeout only say how this command "
        "launches it.",
        epilog="examples:\n  llamdex simulate --clients 3\n  llamdex simulate --data titanic,default,credit --clients 9 --epsilon 1,4,none\n"
        "  llamdex simulate --clients 10 --partition dirichlet --alpha 0.3 --federated titanic --fed-epsilon 4 --epsilon 4\n"
        "  llamdex simulate --engine deployment --clients 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_args(p, multiple=True)
    p.add_argument("--clients", type=int, default=3, help="number of clients, one SuperNode each, spread round-robin over the tables (default 3)")
    p.add_argument("--partition", choices=("iid", "dirichlet"), default="iid", help="how the clients of one table split it (default iid)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration for --partition dirichlet (default 0.5; smaller = more skewed)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the partition, each client's held-out split, training and questions (default 0)")
    p.add_argument("--epsilon", default="1", help="per-client ε targets, cycled over the clients; 'none' = no DP (default 1)")
    p.add_argument("--budget", default="4", help="per-client ε budgets the provider enforces, cycled; 'inf' = unbounded (default 4)")
    p.add_argument("--epochs", type=positive_int, default=0, help="expert training epochs (default: the trainer's)")
    p.add_argument("--test-size", type=float, default=0.2, help="share of each client's rows held out for evaluation (default 0.2)")
    p.add_argument("--max-test", type=positive_int, default=32, help="held-out questions each client asks (default 32)")
    add_alias(p, "--max-questions", "--max-test", "max_test", type=positive_int)
    p.add_argument("--ask-batch", type=int, default=16, help="questions per Ask (default 16)")
    p.add_argument("--preset", default="quick", help="connector-training preset: quick (default), default, or a JSON object of Preset fields")
    p.add_argument("--connectors", default="", help="a connector store to reuse (default: a fresh one in the run folder)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="a phase gives up on clients silent this long after its last answer (default 600)")
    p.add_argument("--faults", default="", help="injected misbehaviour for demos and tests, e.g. '3=tamper,4=crash' (crash|timeout|tamper|over-budget)")
    p.add_argument("--federated", default="", help="tables whose clients also train one DP-FedAvg expert ('all' = every table with 2+ clients)")
    p.add_argument("--fed-rounds", type=int, default=5, help="DP-FedAvg rounds (default 5)")
    p.add_argument("--fed-epsilon", type=float, default=1.0, help="client-level ε of the federated expert (default 1)")
    p.add_argument("--fed-delta", type=float, default=0.0, help="client-level δ (default 1/(10 × clients of the federation))")
    p.add_argument("--fed-clip", type=float, default=0.5, help="clipping norm of each client's model update (default 0.5)")
    p.add_argument("--fed-local-epochs", type=int, default=2, help="epochs each client trains on its records per DP-FedAvg round (default 2)")
    p.add_argument("--fed-lr", type=float, default=0.05, help="SGD learning rate of that local training (default 0.05)")
    p.add_argument("--provider-device", default="cpu", help="the provider's device: cpu (default), cuda or cuda:N")
    p.add_argument("--num-cpus", type=positive_int, default=1, help="CPUs per simulated client (federation: client-resources-num-cpus, default 1)")
    p.add_argument("--num-gpus", type=non_negative_float, default=0.0, help="GPU share per simulated client (client-resources-num-gpus, default 0)")
    p.add_argument("--engine", choices=("simulation", "deployment"), default="simulation",
                   help="simulation: `flwr run` on the simulation engine (default); deployment: flower-superlink and one "
                   "flower-supernode per client as processes on loopback")
    p.add_argument("--out", type=Path, default=None, help="the run's folder, new or empty (default runs/simulate-<time>)")
    p.add_argument("--timeout", type=positive_float, default=6 * 3600, help="wall-clock limit of the whole run in seconds (default 6 h)")
    p.set_defaults(func=run)


def run_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run config the flags describe (checked as the app will check it)."""
    from simulations.cli.common import table_refs
    from simulations.flower.scenario import check_partitions, check_run_config

    table_refs(args)   # a table that does not exist is refused here, before anything starts
    rc: dict[str, Any] = {"data": str(args.data), "schema": str(args.schema or ""), "on-invalid": args.on_invalid}
    for name in RUN_CONFIG_FLAGS:
        rc[name.replace("_", "-")] = getattr(args, name)
    rc["connectors"] = str(Path(rc["connectors"]).resolve()) if rc["connectors"] else ""
    if args.schema:
        rc["schema"] = str(Path(args.schema).resolve())
    rc["data"] = ",".join(t if not Path(t).exists() else str(Path(t).resolve()) for t in str(args.data).split(","))
    check_partitions(check_run_config(rc))
    return rc


def _launch(args: argparse.Namespace, rc: dict, out: Path, on_line: Any) -> Any:
    if args.engine == "simulation":
        from simulations.flower.launcher import run_simulation

        return run_simulation(rc, clients=args.clients, out_dir=out, num_cpus=args.num_cpus, num_gpus=args.num_gpus, on_line=on_line,
                              timeout_s=args.timeout)
    from simulations.flower.deployment import run_deployment

    return run_deployment(rc, clients=args.clients, out_dir=out, on_line=on_line, timeout_s=args.timeout)


def run(args: argparse.Namespace) -> int:
    from simulations.flower.progress import ProgressBars
    from simulations.flower.scenario import ScenarioError, refuse_an_earlier_run

    out = (args.out or Path("runs") / time.strftime("simulate-%Y%m%d-%H%M%S")).resolve()
    try:
        rc = run_config_from_args(args)
        refuse_an_earlier_run(out, any_file=True)
    except (ScenarioError, FileNotFoundError, argparse.ArgumentTypeError) as e:
        from simulations.cli.main import EXIT_MISSING_FILE, EXIT_USAGE

        print(f"llamdex simulate: {e}", file=sys.stderr)
        return EXIT_MISSING_FILE if isinstance(e, FileNotFoundError) else EXIT_USAGE   # as `client train` says a missing table
    bars = ProgressBars()

    def on_line(line: str) -> None:
        if not bars.feed(line) and ("[llamdex]" in line or "ERROR" in line):
            bars.file.write(line if line.endswith("\n") else line + "\n")

    print(f"{args.engine} engine: {args.clients} clients on {rc['data']}; log and report in {out}", file=sys.stderr)
    try:
        result = _launch(args, rc, out, on_line)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: the run's processes are stopped, and its ServerApp writes no report
        from simulations.flower.launcher import last_phase

        print(f"llamdex simulate: stopped in phase {last_phase(out / 'flwr.log')}; the run wrote no report, and its folder {out} keeps "
              "what it did (uploads already received are charged in provider/state's ledger; `llamdex audit --ledger "
              f"{out / 'provider' / 'state' / 'ledger.db'} --provider-key {out / 'provider' / 'keys' / 'provider.pub'}` checks them)",
              file=sys.stderr)
        raise
    finally:
        bars.close()
    if result.leftovers:
        print(f"WARNING: processes of the run still alive after stopping: {result.leftovers}", file=sys.stderr)
    if result.timed_out:
        print(f"llamdex simulate: the run reached --timeout {args.timeout:g} s in phase {result.last_phase()} and was stopped "
              f"({result.seconds:.0f} s in all); what it wrote is in {out} (its log: {result.log_path}); give a longer --timeout",
              file=sys.stderr)
        return 1
    try:
        report = result.report()
    except FileNotFoundError as e:
        print(f"llamdex simulate: {e}", file=sys.stderr)
        return 1
    print((out / "report.md").read_text())
    left = "none left" if not result.leftovers else f"{len(result.leftovers)} LEFT"
    print(f"run folder: {out}  ({result.seconds / 60:.1f} min wall; {len(result.stopped)} Flower/Ray processes stopped, {left})")
    return 0 if report["status"] == "completed" else 1
