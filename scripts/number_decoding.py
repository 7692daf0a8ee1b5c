"""How the expert encoder gives stated numbers to numeric columns, measured three ways on the same readings.

    python scripts/number_decoding.py --data titanic,default,credit,churn,penguins,telco,attrition --out docs/results/number_decoding.json

- `independent`: each numeric column takes its own best-scoring number (the reading before matching).
- `matching` (the default): the numbers are assigned jointly, each to one column at most (`number_matching`).
- `claim-all`: matching, and every stated number goes to some column before "nothing stated" is considered.

For each table: the stored connectors (the default preset, seed 0, trained into the main store if missing),
the no-DP expert of `bench accuracy` (seed 0) and its held-out records (the `--max-test` subsample). The
frozen pass runs once per question; each decoding then reads the same states. Three question sets:

- `verbalizer`: the held-out records in the training verbalizer's phrasing (as `bench accuracy`);
- `eval-only`: the same records in the evaluation-only phrasings (`simulations.phrasings`), by mechanism;
- `left-out`: the verbalizer's phrasing with one numeric column left out of each question: is it read
  as missing, or given another column's number?
- `aside`: the same, with an aside stating a number the schema has no field for ("The form was filed
  in 2019.") put in front: what a reader that assumes every number is a field's value does with a
  number that is not.

Agreement here is the expert's answer on the encoder's features against its answer on the true
features, without the LLM's decoder pass (which `bench accuracy` adds; on the verbalizer's phrasing
it changes agreement by a few answers in 500). Writes one JSON object and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from simulations.benchmarks.results_md import command_line

DECODINGS = ("independent", "matching", "claim-all")
# Asides that state a number belonging to no field of any table: general English, not any table's knowledge.
ASIDES = ("The form was filed in 2019.", "This is my 2nd question today.", "I have 3 more cases to go after this one.",
          "We looked at 12 files this morning.", "It took me 5 minutes to type this up.")


def _left_out_questions(schema, rows: list[dict], seed: int, aside: bool) -> tuple[list[str], list[dict], list[str]]:
    """Each record with one numeric column left out, and with `aside` a numbered aside in front; (questions, records as asked,
    the column left out)."""
    from protocol.verbalizer import Verbalizer

    rng = random.Random(70_000 + seed)
    numeric = [c.name for c in schema.columns if c.is_numeric]
    asked, left_out = [], []
    for row in rows:
        col = rng.choice(numeric)
        asked.append({**row, col: float("nan")})
        left_out.append(col)
    questions = Verbalizer(schema, seed=20_000 + seed, omit_missing_rate=1.0).questions(asked)
    return [f"{rng.choice(ASIDES)} {q}" if aside else q for q in questions], asked, left_out


def _readings(model, questions: list[str], batch_size: int = 16) -> dict[str, np.ndarray]:
    """The encoder's features under every decoding, from one frozen pass per batch."""
    import torch
    from tqdm.auto import tqdm

    enc, j = model.encoder, model.config.encoder_layer
    out = {d: [] for d in DECODINGS}
    try:
        for s in tqdm(range(0, len(questions), batch_size), desc="readings", leave=False):
            batch = model.batch(questions[s:s + batch_size], with_slots=False)
            with torch.inference_mode():
                h = model.lm.lower(batch, [j])[j].float()
                for d in DECODINGS:
                    enc.number_decoding = d
                    out[d].append(enc.to_expert_input(enc(h, batch.question_mask, batch.numbers)).numpy())
    finally:
        enc.number_decoding = "matching"
    return {d: np.concatenate(v) for d, v in out.items()}


def _summary(fe, expert, x_true: np.ndarray, x_pred: np.ndarray) -> dict:
    import torch

    from simulations.evaluation import extraction_quality, readings_below

    with torch.inference_mode():
        agree = expert(torch.as_tensor(x_true)).argmax(-1) == expert(torch.as_tensor(x_pred)).argmax(-1)
    low = readings_below(extraction_quality(fe, x_true, x_pred))
    worst = min(low.items(), key=lambda kv: kv[1]) if low else None
    return {"agreement": round(float(agree.float().mean()), 4), "n": len(x_true), "readings_below_0.97": len(low),
            "worst": worst, "below": low}


def measure(table: str, max_test: int) -> dict:
    import pandas as pd

    from client_party.datasets import TableRef, encode_table
    from client_party.expert_training import TrainConfig, train_expert
    from protocol.encoding import FeatureEncoder
    from provider_party.model.base_llm import load_base_llm
    from provider_party.model.connector_store import ConnectorStore
    from simulations.pipeline import held_out_split
    from simulations.evaluation import test_questions
    from simulations.phrasings import eval_questions

    t0 = time.perf_counter()
    df, schema = TableRef.parse(table).load()
    train, test = held_out_split(df, schema, seed=0, max_test=max_test)
    x_train, y_train = encode_table(train, schema)
    trained = train_expert(x_train, y_train, schema, TrainConfig(seed=0))
    expert = trained.as_received().eval()
    model, _ = ConnectorStore().get_or_train(load_base_llm(), schema, "default", seed=0)
    fe = FeatureEncoder(schema)
    rows = test[schema.feature_names].to_dict("records")
    x_true = fe.encode_frame(test)
    evq, kinds = eval_questions(schema, rows, seed=0)
    kinds = np.asarray(kinds)
    sets = {"verbalizer": (test_questions(model, test, 0), x_true, None, None), "eval-only": (evq, x_true, kinds, None)}
    for name, aside in (("left-out", False), ("aside", True)):
        questions, asked, left_out = _left_out_questions(schema, rows, seed=0, aside=aside)
        sets[name] = (questions, fe.encode_frame(pd.DataFrame(asked, columns=schema.feature_names)), None, left_out)
    missing_index = {b.column.name: b.missing_index for b in fe.blocks}
    out: dict = {"table": table, "n": len(test)}
    for name, (questions, xt, by, left_out) in sets.items():
        readings = _readings(model, questions)
        out[name] = {}
        for d in DECODINGS:
            res = _summary(fe, expert, xt, readings[d])
            if by is not None:
                res["by_mechanism"] = {k: _summary(fe, expert, xt[by == k], readings[d][by == k]) for k in sorted(set(by))}
            if left_out is not None:    # the column left out of each question: read as missing, or given another number?
                res["left_out_read_missing"] = round(float(np.mean([readings[d][i, missing_index[c]] > 0.5
                                                                    for i, c in enumerate(left_out)])), 4)
            out[name][d] = res
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="credit,churn,attrition", help="registered tables, comma-separated")
    ap.add_argument("--max-test", type=int, default=500, help="held-out subsample, as bench accuracy's (default 500)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    runs = []
    for table in [t for t in args.data.split(",") if t]:
        print(f"== {table}", flush=True)
        runs.append(measure(table, args.max_test))
        args.out.write_text(json.dumps({"command": command_line("python scripts/number_decoding.py", argv), "runs": runs}, indent=1) + "\n")
    print("| table | decoding | verbalizer | eval-only | general | hand-written | readings < 0.97 (eval-only) | left out: read missing "
          "| with an aside: read missing | agreement, with an aside |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for d in DECODINGS:
            ev = r["eval-only"][d]
            mech = ev.get("by_mechanism", {})
            cell = (lambda k: f"{mech[k]['agreement']:.3f}" if k in mech else "–")
            print(f"| {r['table']} | {d} | {r['verbalizer'][d]['agreement']:.3f} | {ev['agreement']:.3f} | {cell('general')} | {cell('hand')} | "
                  f"{ev['readings_below_0.97']} | {r['left-out'][d]['left_out_read_missing']:.3f} | {r['aside'][d]['left_out_read_missing']:.3f} | "
                  f"{r['aside'][d]['agreement']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
