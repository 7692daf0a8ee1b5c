"""Many clients, one base LLM: the Flower app's figures, every run end to end through `flwr run .`.

    python -m simulations.benchmarks.simulation                 # every figure (about an hour on 2 busy cores)
    python -m simulations.benchmarks.simulation --only federated --federated-epsilons 1,4

Series (each a Flower run; `simulations.flower.launcher` / `deployment`):
- scaling: N clients partitioning one table (IID), N in --clients. The first run trains the connectors with
  --preset (the "≤ 20 minutes for 50 clients with connectors trained in the run" figure); the others reuse its
  store. `per_extra_client_s` = (wall − connector training)(N) minus the same for the smallest N, over the
  difference in clients: what one more client costs once its schema's connectors exist.
- schemas: several tables with different schemas at once (--schemas-data, connectors trained in the run).
- federated: the clients of one table train one DP-FedAvg expert (client-level ε) next to their individual
  DP-SGD experts at the same ε number; accuracies on the same clients' held-out records.
- deployment: the same app with flower-superlink and one flower-supernode per client on loopback.

Writes docs/results/simulation.json (`runs`, `federated`; a `multi_tenant` list written by the serving
benchmark is kept as it is), docs/results/simulation.png and the `simulation` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from simulations.benchmarks.results_md import RESULTS_DIR, command_line, environment, results_md_path, update_section, write_json
from simulations.cli.common import add_out_arg

SERIES = ("scaling", "schemas", "federated", "deployment")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulations.benchmarks.simulation", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SERIES), help=f"comma-separated series to run (default: all of {', '.join(SERIES)})")
    p.add_argument("--data", default="titanic", help="the table of the scaling and federated series (default titanic)")
    p.add_argument("--clients", default="50,2,10", help="client counts of the scaling series; the first trains the connectors (default 50,2,10)")
    p.add_argument("--schemas-data", default="titanic,default,credit", help="tables of the several-schemas run (default titanic,default,credit)")
    p.add_argument("--schemas-clients", type=int, default=6, help="clients of the several-schemas run, spread over --schemas-data (default 6)")
    p.add_argument("--federated-clients", type=int, default=10, help="clients that train the federated expert together (default 10)")
    p.add_argument("--federated-epsilons", default="1,4", help="ε of both the federated (client-level) and the individual experts (default 1,4)")
    p.add_argument("--federated-seeds", default="0,1,2",
                   help="one federated run per seed and ε (default 0,1,2): the seed moves the partition and the training order, and "
                        "the DP noise is fresh in every run, so one run's accuracy is one draw")
    p.add_argument("--fed-rounds", type=int, default=5, help="FedAvg rounds of the federated expert (default 5)")
    p.add_argument("--deployment-clients", type=int, default=3, help="SuperNodes of the deployment-engine run (default 3)")
    p.add_argument("--preset", default="quick", help="connector training preset of every run (default quick)")
    p.add_argument("--epsilon", default="1", help="individual experts' ε in the scaling, schemas and deployment runs (default 1)")
    p.add_argument("--max-test", type=int, default=16, help="held-out questions each client asks (default 16)")
    p.add_argument("--connectors", default="", help="reuse this connector store everywhere instead of training in the first run of each series")
    p.add_argument("--work-dir", type=Path, default=None, help="where the runs' folders go (default runs/bench-simulation-<time>)")
    add_out_arg(p, default=RESULTS_DIR, help="folder of simulation.json, simulation.png and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    p.add_argument("--timeout-s", type=float, default=900.0, help="the app's phase timeout (default 900)")
    p.add_argument("--render-only", action="store_true", help="only rewrite the plot and the RESULTS.md section from simulation.json")
    return p


def _means(report: dict[str, Any]) -> dict[str, float | None]:
    out = {}
    for m in ("base_llm", "expert", "llamdex"):
        out[m] = _mean([c["scores"][m]["accuracy"] for c in report["clients"] if not c["excluded"] and m in c["scores"]])
    out["llamdex_expert_agreement"] = _mean([c["scores"].get("llamdex_expert_agreement") for c in report["clients"] if not c["excluded"]])
    return out


def _entry(series: str, engine: str, run: Any, report: dict[str, Any], preset: str, connectors: str) -> dict[str, Any]:
    conn_s = report["phases"].get("customize", 0.0)
    return {"series": series, "engine": engine, "clients": len(report["clients"]), "schemas": len(report["schemas"]),
            "tables": sorted({c["dataset_id"] for c in report["clients"] if c["dataset_id"]}), "total_s": round(run.seconds, 1),
            "app_s": round(report["total_s"], 1), "connector_training_s": round(conn_s, 1), "per_extra_client_s": None,
            "preset": preset, "connectors": connectors, "status": report["status"], "excluded": report["excluded"],
            "finished": sum(1 for c in report["clients"] if not c["excluded"]), "phases": {k: round(v, 1) for k, v in report["phases"].items()},
            "questions_per_client_mean": _mean([c["scores"].get("n_questions") for c in report["clients"] if not c["excluded"]]),
            "accuracy_mean": _means(report), "ledger_verified": report["ledger_verified"], "receipts_verified": report["receipts_verified"],
            "processes_stopped": len(run.stopped), "processes_left": run.leftovers, "run_dir": str(run.out_dir)}


def _simulate(work: Path, name: str, rc: dict[str, Any], clients: int) -> tuple[Any, dict[str, Any]]:
    from simulations.flower.launcher import run_simulation
    from simulations.flower.progress import ProgressBars

    print(f"\n== {name}: {clients} clients, {rc['data']} ==", file=sys.stderr, flush=True)
    bars = ProgressBars()
    try:
        run = run_simulation(rc, clients=clients, out_dir=work / name, on_line=bars.feed, timeout_s=4 * 3600)
    finally:
        bars.close()
    report = run.report()
    print(f"   {report['status']} in {run.seconds:.0f} s; excluded {report['excluded']}", file=sys.stderr, flush=True)
    return run, report


def scaling(args: argparse.Namespace, work: Path, base_rc: dict[str, Any]) -> list[dict[str, Any]]:
    counts = [int(c) for c in args.clients.split(",")]
    store = args.connectors or str(work / "connectors-scaling")
    out = []
    for i, n in enumerate(counts):
        rc = {**base_rc, "data": args.data, "connectors": store}
        run, report = _simulate(work, f"scaling-{n}", rc, n)
        trained = i == 0 and not args.connectors
        out.append(_entry("scaling", "simulation", run, report, args.preset, "trained in this run" if trained else "reused"))
    smallest = min(out, key=lambda e: e["clients"])
    for e in out:
        if e is not smallest:
            own = e["total_s"] - e["connector_training_s"]
            ref = smallest["total_s"] - smallest["connector_training_s"]
            e["per_extra_client_s"] = round((own - ref) / (e["clients"] - smallest["clients"]), 2)
    return out


def schemas(args: argparse.Namespace, work: Path, base_rc: dict[str, Any]) -> list[dict[str, Any]]:
    store = args.connectors or str(work / "connectors-schemas")
    run, report = _simulate(work, "schemas", {**base_rc, "data": args.schemas_data, "connectors": store}, args.schemas_clients)
    return [_entry("schemas", "simulation", run, report, args.preset, "trained in this run" if not args.connectors else "reused")]


def deployment(args: argparse.Namespace, work: Path, base_rc: dict[str, Any], store: str) -> list[dict[str, Any]]:
    from simulations.flower.deployment import run_deployment

    print(f"\n== deployment: {args.deployment_clients} SuperNodes on loopback ==", file=sys.stderr, flush=True)
    run = run_deployment({**base_rc, "data": args.data, "connectors": store}, clients=args.deployment_clients, out_dir=work / "deployment",
                         timeout_s=4 * 3600)
    report = run.report()
    return [_entry("deployment", "deployment", run, report, args.preset, "reused" if Path(store).exists() else "trained in this run")]


def federated(args: argparse.Namespace, work: Path, base_rc: dict[str, Any], store: str) -> list[dict[str, Any]]:
    out = []
    epsilons = [float(e) for e in args.federated_epsilons.split(",")]
    for eps, seed in itertools.product(epsilons, [int(s) for s in args.federated_seeds.split(",")]):
        rc = {**base_rc, "data": args.data, "connectors": store, "epsilon": f"{eps:g}", "federated": args.data, "fed-epsilon": eps,
              "fed-rounds": args.fed_rounds, "seed": seed}
        run, report = _simulate(work, f"federated-eps{eps:g}-seed{seed}", rc, args.federated_clients)
        for f in report["federations"]:
            members = [c for c in report["clients"] if c["client_id"] in f["clients"]]
            out.append({"dataset": f["dataset_id"], "epsilon": eps, "seed": seed, "clients": len(f["clients"]),
                        "federated_accuracy": f["federated_accuracy"],
                        "individual_accuracy_mean": f["individual_accuracy_mean"],
                        # balanced accuracy shows what accuracy near the majority class hides: an expert that answers one class
                        # for every record scores 0.5 whichever class it is
                        "federated_balanced_accuracy_mean": _mean([c["scores"].get("federated_expert", {}).get("balanced_accuracy")
                                                                   for c in members]),
                        "individual_balanced_accuracy_mean": _mean([c["scores"].get("expert", {}).get("balanced_accuracy") for c in members]),
                        "individual_llamdex_accuracy_mean": _mean([c["scores"].get("llamdex", {}).get("accuracy") for c in members]),
                        "majority_class_accuracy_mean": _mean([c["scores"].get("majority_class", {}).get("accuracy") for c in members]),
                        "individual_llamdex_expert_agreement_mean": _mean([c["scores"].get("llamdex_expert_agreement") for c in members]),
                        # the federated expert asked through Llamdex, on the same members' questions
                        "federated_llamdex_accuracy": f.get("federated_llamdex_accuracy"),
                        "federated_llamdex_agreement": f.get("federated_llamdex_agreement"),
                        "epsilon_unit": {"federated": "client (all records of one client)", "individual": "record (one row of one client's table)"},
                        "epsilon_flower": f["epsilon_flower"], "epsilon_provider": f["epsilon_provider"], "delta_client_level": f["delta"],
                        "individual_epsilons": f["individual_epsilons"], "rounds": f["rounds"], "noise_multiplier": f["noise_multiplier"],
                        "clip": f["clip"], "receipt_id": f["receipt_id"], "error": f["error"], "run_dir": str(run.out_dir)})
    return out


def _spread(runs: list[dict[str, Any]], key: str) -> str:
    """Mean over the runs, with [min–max] when there is more than one."""
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return "–"
    return f"{_mean(vals):.3f}" + (f" [{min(vals):.3f}–{max(vals):.3f}]" if len(vals) > 1 else "")


def _largest(runs: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return f"{max(vals):.3f}" if vals else "–"


def _mean(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return sum(v) / len(v) if v else None


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = sorted((r for r in runs if r["series"] == "scaling"), key=lambda r: r["clients"])
    if not sc:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [r["clients"] for r in sc]
    a.plot(xs, [r["total_s"] / 60 for r in sc], "o-", label="end to end (flwr run)")
    a.plot(xs, [(r["total_s"] - r["connector_training_s"]) / 60 for r in sc], "s--", label="without connector training")
    for r in runs:
        if r["series"] != "scaling":
            a.plot([r["clients"]], [r["total_s"] / 60], "^", label=f"{r['series']} ({r['schemas']} schema{'s' if r['schemas'] > 1 else ''}, {r['engine']})")
    a.set_xlabel("clients")
    a.set_ylabel("minutes")
    a.set_title("total time")
    a.legend(fontsize=7)
    per = [r for r in sc if r["per_extra_client_s"] is not None]
    b.bar([str(r["clients"]) for r in per], [r["per_extra_client_s"] for r in per])
    b.set_xlabel("clients")
    b.set_ylabel("seconds per extra client")
    b.set_title(f"cost of one more client (vs {sc[0]['clients']} clients)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _stamped(payload: dict[str, Any]) -> dict[str, Any]:
    """Each series keeps the command and date it was measured with, so a rerun of one series (`--only`) does not
    put its command over the others' rows; entries stored before this was kept get the file's own."""
    for r in payload.get("runs", []) + payload.get("federated", []):
        r.setdefault("command", payload.get("command", ""))
        r.setdefault("date", payload.get("environment", {}).get("date", ""))
    return payload


def _provenance(payload: dict[str, Any]) -> str:
    """`command` (date) once per distinct run of the benchmark, naming the series it measured when there are several."""
    file_command, file_date = payload.get("command", ""), payload.get("environment", {}).get("date", "")
    seen: dict[tuple[str, str], list[str]] = {}
    for r in payload.get("runs", []) + [{**f, "series": "federated"} for f in payload.get("federated", [])]:
        names = seen.setdefault((r.get("command", file_command), r.get("date", file_date)), [])
        if r["series"] not in names:
            names.append(r["series"])
    if len(seen) == 1:
        ((command, date),) = seen
        return f"`{command}` ({date})"
    return "; ".join(f"{', '.join(names)}: `{command}` ({date})" for (command, date), names in seen.items())


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = ["## Many clients, one base LLM: the Flower app (issue: Flower orchestration)", "",
             f"{_provenance(payload)}, {env['cpu_count']} CPU cores shared with other jobs. Every run goes end to end "
             "through `flwr run .` (the deployment run through `flower-superlink` + one `flower-supernode` per client): each client makes "
             "its key, trains and signs its expert, the provider verifies, recomputes ε, charges the ledger and signs a receipt the client "
             "verifies, connectors are trained once per schema, every client scores base LLM, expert and Llamdex on its held-out records "
             "(and how often Llamdex answers as its expert does: `Llamdex = expert`). "
             "`total` is the wall time of the whole run (SuperLink, Ray and the processes' start and stop included); `per extra client` "
             "is (total − connector training) at N minus the same at the smallest N, per client added. What a client costs is mostly its "
             "held-out questions (each answered twice by the provider, by Llamdex and by the base LLM for comparison) and its DP training: "
             "a table split among more clients leaves each fewer held-out rows, so fewer questions.", "",
             "| series | engine | clients | schemas | connectors | total | connector training | per extra client | questions / client | "
             "finished / excluded | mean acc. base / expert / Llamdex | Llamdex = expert |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["runs"]:
        acc = r["accuracy_mean"]
        f3 = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        per = "–" if r["per_extra_client_s"] is None else f"{r['per_extra_client_s']:.1f} s"
        q = r.get("questions_per_client_mean")
        lines.append(f"| {r['series']} | {r['engine']} | {r['clients']} | {r['schemas']} ({', '.join(r['tables'])}) | {r['connectors']} ({r['preset']}) | "
                     f"{r['total_s'] / 60:.1f} min | {r['connector_training_s'] / 60:.1f} min | {per} | {'–' if q is None else f'{q:.1f}'} | "
                     f"{r['finished']} / {len(r['excluded'])} | "
                     f"{f3(acc['base_llm'])} / {f3(acc['expert'])} / {f3(acc['llamdex'])} | {f3(acc.get('llamdex_expert_agreement'))} |")
    if payload.get("federated"):
        lines += ["", "Federated (DP-FedAvg, one expert per table, uploaded once by a lead client) against the same clients' individual "
                  "DP-SGD experts at the same ε number, accuracy of the expert alone on each client's held-out questions (mean over clients). "
                  "**The two ε protect different units**: the federated ε is client-level (a whole client, every record it holds, "
                  "δ = 1/(10 × clients)); an individual expert's ε is record-level (one row of one client's table). They are not comparable "
                  "as privacy and never add up; the ledger charges them to different datasets. One run per seed: the seed moves the "
                  "partition and the training order, and the DP noise (the server's on the federated average, Opacus' on each client's "
                  "gradients) is drawn fresh in every run, as DP requires, so one run's accuracy is one draw; each cell is the mean over "
                  "the runs with [min–max].", "",
                  "Balanced accuracy (mean over classes of the share of each class answered right) is 0.500 for an expert that gives "
                  "every record the same answer, whichever class it picks.", "",
                  "| table | ε | clients | runs (seeds) | federated acc. (client-level DP) | federated bal. acc. | "
                  "federated through Llamdex | Llamdex = federated expert | individual acc. mean (record-level DP) | individual bal. acc. | "
                  "individual Llamdex | Llamdex = individual expert | majority class | rounds | noise multiplier | ε Flower / provider (largest) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for f in payload["federated"]:
            groups.setdefault((f["dataset"], f["epsilon"]), []).append(f)
        for (dataset, eps), fs in groups.items():
            lines.append(f"| {dataset} | {eps:g} | {fs[0]['clients']} | {len(fs)} ({', '.join(str(f.get('seed', 0)) for f in fs)}) | "
                         f"{_spread(fs, 'federated_accuracy')} | {_spread(fs, 'federated_balanced_accuracy_mean')} | "
                         f"{_spread(fs, 'federated_llamdex_accuracy')} | {_spread(fs, 'federated_llamdex_agreement')} | "
                         f"{_spread(fs, 'individual_accuracy_mean')} | {_spread(fs, 'individual_balanced_accuracy_mean')} | "
                         f"{_spread(fs, 'individual_llamdex_accuracy_mean')} | {_spread(fs, 'individual_llamdex_expert_agreement_mean')} | "
                         f"{_spread(fs, 'majority_class_accuracy_mean')} | "
                         f"{fs[0]['rounds']} | {fs[0]['noise_multiplier']:.3g} | "
                         f"{_largest(fs, 'epsilon_flower')} / {_largest(fs, 'epsilon_provider')} |")
    lines += ["", "![total time and time per extra client](results/simulation.png)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.connectors:   # the app runs from the bundle Flower installs elsewhere, so a relative path would point nowhere
        args.connectors = str(Path(args.connectors).resolve())
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SERIES)
    if unknown:
        print(f"--only: unknown series {sorted(unknown)}; choose from {list(SERIES)}", file=sys.stderr)
        return 2
    if args.render_only:
        payload = json.loads((Path(args.out) / "simulation.json").read_text())
        plot(payload["runs"], Path(args.out) / "simulation.png")
        update_section("simulation", markdown(payload), results_md_path(Path(args.out)))
        return 0
    work = (args.work_dir or Path("runs") / time.strftime("bench-simulation-%Y%m%d-%H%M%S")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base_rc = {"preset": args.preset, "epsilon": args.epsilon, "budget": "inf", "max-test": args.max_test, "timeout-s": args.timeout_s}
    runs: list[dict[str, Any]] = []
    fed: list[dict[str, Any]] = []
    store = args.connectors or str(work / "connectors-scaling")
    if "scaling" in only:
        runs += scaling(args, work, base_rc)
    if "schemas" in only:
        runs += schemas(args, work, base_rc)
    if "federated" in only:
        fed = federated(args, work, base_rc, store)
    if "deployment" in only:
        runs += deployment(args, work, base_rc, store)
    path = Path(args.out) / "simulation.json"
    old = _stamped(json.loads(path.read_text())) if path.is_file() else {}
    measured = {r["series"] for r in runs}
    command, env = command_line("python -m simulations.benchmarks.simulation", argv), environment()
    for r in runs + fed:
        r["command"], r["date"] = command, env["date"]
    payload = {**old, "command": command, "environment": env,
               "runs": [r for r in old.get("runs", []) if r.get("series") not in measured] + runs,
               "federated": fed if "federated" in only else old.get("federated", [])}
    write_json("simulation.json", payload, Path(args.out))
    plot(payload["runs"], Path(args.out) / "simulation.png")
    update_section("simulation", markdown(payload), results_md_path(Path(args.out)))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
