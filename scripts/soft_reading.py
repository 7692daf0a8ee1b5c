"""Does weighing the encoder's doubt help the expert on phrasings training never showed?

    python scripts/soft_reading.py --data titanic,default,credit,churn,penguins,telco,attrition --out docs/results/soft_reading.json

The encoder gives each categorical or yes/no column a distribution over its levels (and "missing" where the schema
allows it), and the provider hands the expert its most probable reading (`ExpertEncoder.to_expert_input`). Where a
wording was never seen in training, the reading is often unsure; three ways to pass that doubt on, measured on the same
readings:

- `hard` (what the provider does): the most probable level of every column;
- `expected-input`: each categorical block is the reading's probabilities instead of a one-hot (the expert was trained on
  one-hots, so this feeds it points between them);
- `expected-output`: the expert's class probabilities averaged over `--samples` readings drawn from the encoder's
  distributions (numbers stay as read), i.e. an estimate of the expected answer under the reader's doubt.

For each table: the stored connectors (the default preset, seed 0; trained into the main store if missing), the no-DP
expert of `bench accuracy` (seed 0) and its held-out records (the `--max-test` subsample). The frozen pass runs once per
question. Agreement is the expert's answer on the encoder's features against its answer on the true features, without
the LLM's decoder pass (as scripts/number_decoding.py), on the verbalizer's phrasing and on the evaluation-only
phrasings (`simulations.phrasings`) by mechanism; and, per question set, how sure the reader was of its categorical
readings, right and wrong (the probability of the level it chose, and of the true level). Writes one JSON object and
prints two Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from simulations.benchmarks.results_md import command_line

WAYS = ("hard", "expected-input", "expected-output")


def _outs(model, questions: list[str], batch_size: int = 16):
    """The encoder's raw outputs per block, concatenated over batches, from one frozen pass per batch."""
    import torch
    from tqdm.auto import tqdm

    enc, j = model.encoder, model.config.encoder_layer
    parts: list[list[torch.Tensor]] = []
    for s in tqdm(range(0, len(questions), batch_size), desc="readings", leave=False):
        batch = model.batch(questions[s:s + batch_size], with_slots=False)
        with torch.inference_mode():
            h = model.lm.lower(batch, [j])[j].float()
            parts.append(enc(h, batch.question_mask, batch.numbers))
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]


def _answers(enc, expert, outs, samples: int, seed: int) -> dict[str, np.ndarray]:
    """The expert's answer under each way of passing the reading on."""
    import torch

    hard = enc.to_expert_input(outs)          # numbers as the provider reads them; categorical blocks one-hot
    categorical = [(b, o.softmax(-1)) for b, o in zip(enc.fe.blocks, outs) if b.kind != "numeric"]
    expected_input = hard.clone()
    for b, p in categorical:
        expected_input[:, b.start:b.stop] = p
    gen = torch.Generator().manual_seed(seed)
    n = hard.shape[0]
    draws = hard.repeat_interleave(samples, 0)
    for b, p in categorical:
        pick = torch.multinomial(p, samples, replacement=True, generator=gen).reshape(-1)
        draws[:, b.start:b.stop] = torch.nn.functional.one_hot(pick, b.stop - b.start).float()
    with torch.inference_mode():
        out = {"hard": expert(hard).argmax(-1).numpy(),
               "expected-input": expert(expected_input).argmax(-1).numpy(),
               "expected-output": expert(draws).softmax(-1).reshape(n, samples, -1).mean(1).argmax(-1).numpy()}
    return out


def _confidence(enc, outs, x_true: np.ndarray) -> dict[str, float | int]:
    """How sure the reader is of its categorical readings, split by right and wrong (pooled over the columns)."""
    right, wrong, true_when_wrong = [], [], []
    for b, o in zip(enc.fe.blocks, outs):
        if b.kind == "numeric":
            continue
        probs = o.softmax(-1).numpy()
        truth = x_true[:, b.start:b.stop].argmax(1)
        chosen = probs.argmax(1)
        ok = chosen == truth
        right += probs[ok, chosen[ok]].tolist()
        wrong += probs[~ok, chosen[~ok]].tolist()
        true_when_wrong += probs[~ok, truth[~ok]].tolist()
    mean = (lambda v: round(float(np.mean(v)), 4) if v else None)
    return {"right": len(right), "wrong": len(wrong), "p_chosen_when_right": mean(right), "p_chosen_when_wrong": mean(wrong),
            "p_true_when_wrong": mean(true_when_wrong), "wrong_with_p_chosen_over_0.9": int(np.sum(np.asarray(wrong) > 0.9)) if wrong else 0}


def measure(table: str, max_test: int, samples: int) -> dict:
    import torch

    from client_party.datasets import TableRef, encode_table
    from client_party.expert_training import TrainConfig, train_expert
    from protocol.encoding import FeatureEncoder
    from provider_party.model.base_llm import load_base_llm
    from provider_party.model.connector_store import ConnectorStore
    from simulations.evaluation import test_questions
    from simulations.phrasings import eval_questions
    from simulations.pipeline import held_out_split

    t0 = time.perf_counter()
    df, schema = TableRef.parse(table).load()
    train, test = held_out_split(df, schema, seed=0, max_test=max_test)
    x_train, y_train = encode_table(train, schema)
    expert = train_expert(x_train, y_train, schema, TrainConfig(seed=0)).as_received().eval()
    model, _ = ConnectorStore().get_or_train(load_base_llm(), schema, "default", seed=0)
    fe = FeatureEncoder(schema)
    x_true = fe.encode_frame(test)
    with torch.inference_mode():
        truth = expert(torch.as_tensor(x_true)).argmax(-1).numpy()
    evq, kinds = eval_questions(schema, test[schema.feature_names].to_dict("records"), seed=0)
    kinds = np.asarray(kinds)
    out: dict = {"table": table, "n": len(test)}
    for name, questions, by in (("verbalizer", test_questions(model, test, 0), None), ("eval-only", evq, kinds)):
        outs = _outs(model, questions)
        answers = _answers(model.encoder, expert, outs, samples, seed=0)
        out[name] = {"confidence": _confidence(model.encoder, outs, x_true)}
        for way, pred in answers.items():
            res = {"agreement": round(float(np.mean(pred == truth)), 4)}
            if by is not None:
                res["by_mechanism"] = {k: round(float(np.mean(pred[by == k] == truth[by == k])), 4) for k in sorted(set(by))}
            out[name][way] = res
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="credit,telco,attrition", help="registered tables, comma-separated")
    ap.add_argument("--max-test", type=int, default=500, help="held-out subsample, as bench accuracy's (default 500)")
    ap.add_argument("--samples", type=int, default=64, help="readings drawn per question for expected-output (default 64)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    runs = []
    for table in [t for t in args.data.split(",") if t]:
        print(f"== {table}", flush=True)
        runs.append(measure(table, args.max_test, args.samples))
        args.out.write_text(json.dumps({"command": command_line("python scripts/soft_reading.py", argv), "runs": runs}, indent=1) + "\n")
    print("| table | way | verbalizer | eval-only | general | hand-written |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        for way in WAYS:
            ev = r["eval-only"][way]
            mech = ev.get("by_mechanism", {})
            print(f"| {r['table']} | {way} | {r['verbalizer'][way]['agreement']:.3f} | {ev['agreement']:.3f} | "
                  f"{mech.get('general', float('nan')):.3f} | {mech.get('hand', float('nan')):.3f} |")
    print("\n| table | categorical readings wrong (eval-only) | p(chosen), right readings | p(chosen), wrong readings | "
          "p(true level), wrong readings | wrong readings with p(chosen) > 0.9 |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        c = r["eval-only"]["confidence"]
        print(f"| {r['table']} | {c['wrong']} of {c['wrong'] + c['right']} | {c['p_chosen_when_right']} | {c['p_chosen_when_wrong']} | "
              f"{c['p_true_when_wrong']} | {c['wrong_with_p_chosen_over_0.9']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
