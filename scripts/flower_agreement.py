"""Where does Llamdex answer otherwise than a Flower client's own expert, and why?

    python scripts/flower_agreement.py --run runs/sim/scaling-10 --run runs/sim/schemas --out docs/results/flower_agreement.json

A `llamdex simulate` (or `python -m simulations.benchmarks.simulation`) run reports, per client, how often Llamdex
answers as that client's DP expert does on its held-out questions (`llamdex_expert_agreement`): 0.94-1.00 in the
quick-preset runs, below the two-party demo's 1.00. This script replays each client's questions in-process, on the
run's own artifacts, split and connectors (nothing is retrained; the answers are deterministic, and the replayed
agreement is checked against the run's report), and splits every disagreement by where it arises:

- extraction: the expert, given the features the encoder read from the question, answers otherwise than on the
  record's true features (the connectors misread a value that mattered);
- decoding: the expert answered as on the true features, but the LLM's read-out after injection chose another class.

Each question is also binned by the expert's margin on the true features (top class probability minus the second),
to test whether disagreements gather where the expert is nearly tied. `--connectors DIR` answers a second time with
another connector store (e.g. the default preset's, $LLAMDEX_HOME/connectors) for the same experts and questions.
Writes one JSON object and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from simulations.benchmarks.results_md import command_line

MARGIN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0001)


def _margin(p: np.ndarray) -> np.ndarray:
    top = np.sort(p, axis=1)
    return top[:, -1] - top[:, -2]


def replay(run_dir: Path, base, connectors: Path | None) -> list[dict[str, Any]]:
    """One row per question of every client of the run that was not excluded."""
    import torch

    from client_party.datasets import encode_table
    from client_party.expert_training import predict_proba
    from provider_party.model.connector_store import ConnectorStore
    from simulations.flower.scenario import Scenario
    from simulations.flower.simulated_client import SimulatedClient

    rc = tomllib.loads((run_dir / "run-config.toml").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    scenario = Scenario.from_run_config(rc)
    store = ConnectorStore(connectors or rc["connectors"])
    reported = {c["client_id"]: c for c in report["clients"]}
    models: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for i in range(scenario.clients):
        client = SimulatedClient(scenario, i, run_dir)
        rec = reported.get(client.client_id)
        if rec is None or rec["excluded"]:
            continue
        d = client.data()
        held = d.heldout.iloc[: scenario.max_test]
        x, y = encode_table(held, d.schema)
        expert = client._individual_expert()
        p_true = predict_proba(expert, x)
        if d.schema.digest not in models:
            models[d.schema.digest] = store.load(base, d.schema)
        model, questions = models[d.schema.digest], client.questions()
        llamdex, p_read = [], []
        with torch.inference_mode():
            for s in range(0, len(questions), scenario.ask_batch):
                ans = model.answer(questions[s:s + scenario.ask_batch], expert)
                llamdex.append(ans.probs.argmax(-1).numpy())
                p_read.append(ans.expert_probs.float().numpy())
        llamdex_a, read_a = np.concatenate(llamdex), np.concatenate(p_read).argmax(1)
        margin = _margin(p_true)
        for q in range(len(y)):
            rows.append({"run": run_dir.name, "client": client.client_id, "table": d.table_id, "n_train": len(d.train),
                         "expert": int(p_true[q].argmax()), "expert_on_read": int(read_a[q]), "llamdex": int(llamdex_a[q]),
                         "margin": round(float(margin[q]), 4),
                         "reported_agreement": rec["scores"].get("llamdex_expert_agreement")})
    return rows


def summarize(rows: list[dict[str, Any]], own_connectors: bool) -> dict[str, Any]:
    agree = np.array([r["llamdex"] == r["expert"] for r in rows])
    extraction = np.array([r["expert_on_read"] != r["expert"] for r in rows])
    decoding = ~agree & ~extraction
    margin = np.array([r["margin"] for r in rows])
    bins = []
    for lo, hi in zip(MARGIN_EDGES, MARGIN_EDGES[1:]):
        m = (margin >= lo) & (margin < hi)
        bins.append({"margin": f"[{lo:g}, {min(hi, 1):g}{']' if hi > 1 else ')'}", "questions": int(m.sum()),
                     "agreement": round(float(agree[m].mean()), 3) if m.any() else None,
                     "disagreements": int((~agree & m).sum())})
    # with the run's own connectors the replay must give what the run reported, client by client, or the analysis is of
    # something else (with another store the answers are meant to differ)
    by_client: dict[tuple[str, str], tuple[list[bool], float | None]] = {}
    for r, a in zip(rows, agree):
        by_client.setdefault((r["run"], r["client"]), ([], r["reported_agreement"]))[0].append(bool(a))
    off = None if not own_connectors else sum(1 for v, reported in by_client.values()
                                              if reported is not None and abs(float(np.mean(v)) - reported) > 1e-9)
    return {"questions": len(rows), "clients": len(by_client), "agreement": round(float(agree.mean()), 4),
            "disagreements": int((~agree).sum()), "from_extraction": int((~agree & extraction).sum()),
            "from_decoding": int(decoding.sum()),
            "extraction_changed_expert_but_llamdex_agreed": int((agree & extraction).sum()),
            "median_margin_agreeing": round(float(np.median(margin[agree])), 3) if agree.any() else None,
            "median_margin_disagreeing": round(float(np.median(margin[~agree])), 3) if (~agree).any() else None,
            "by_margin": bins, "clients_whose_replay_differs_from_the_report": off}


def _columns(rows: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """Every question's record, a list per field and run (the summaries are recomputable from it, and it stays small)."""
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        cols = out.setdefault(r["run"], {k: [] for k in ("client", "expert", "expert_on_read", "llamdex", "margin")})
        for k in cols:
            cols[k].append(r[k])
    return out


def _check(off: int | None) -> str:
    return "–" if off is None else "yes" if off == 0 else f"no ({off} clients differ)"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python scripts/flower_agreement.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", required=True,
                    help="a simulate run folder (with run-config.toml, report.json and clients/); repeatable")
    ap.add_argument("--connectors", type=Path, default=None,
                    help="also answer with this connector store (e.g. the default preset's), same experts and questions")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return ap


def main(argv: list[str] | None = None) -> int:
    from provider_party.model.base_llm import load_base_llm

    args = parser().parse_args(argv)
    base = load_base_llm()
    stores = {"run's connectors": None, **({f"{args.connectors}": args.connectors} if args.connectors else {})}
    out: dict[str, Any] = {"command": command_line("python scripts/flower_agreement.py", argv), "runs": [str(r) for r in args.run],
                           "stores": {}}
    for name, root in stores.items():
        rows = [row for run in args.run for row in replay(run, base, root)]
        own = root is None
        per_run = {run.name: summarize([r for r in rows if r["run"] == run.name], own) for run in args.run}
        out["stores"][name] = {"all": summarize(rows, own), "per_run": per_run, "questions": _columns(rows)}
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("| connectors | run | questions | agreement | disagreements: extraction / decoding | median margin, agreeing / disagreeing | replay = report |")
    print("|---|---|---|---|---|---|---|")
    for name, s in out["stores"].items():
        for run, v in [*s["per_run"].items(), ("all", s["all"])]:
            print(f"| {name} | {run} | {v['questions']} | {v['agreement']:.3f} | {v['from_extraction']} / {v['from_decoding']} | "
                  f"{v['median_margin_agreeing']} / {v['median_margin_disagreeing']} | "
                  f"{_check(v['clients_whose_replay_differs_from_the_report'])} |")
    for name, s in out["stores"].items():
        print(f"\n{name}, all runs: agreement by the expert's margin on the true record")
        print("| margin | questions | agreement | disagreements |\n|---|---|---|---|")
        for b in s["all"]["by_margin"]:
            print(f"| {b['margin']} | {b['questions']} | {b['agreement']} | {b['disagreements']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
