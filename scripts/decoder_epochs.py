"""How faithfully does a preset's decoder carry the expert's answer, as a function of its passes over the decoder questions?

    python scripts/decoder_epochs.py --preset quick --epochs 2,6 --data titanic --out docs/results/quick_decoder_epochs.json

For each table this trains the preset's connectors once per `--epochs` value, with the same seed, into a store of its own
(`--store`, reused when it already holds them): the synthetic corpus, the frozen pass and the encoder are the same, and
only the decoder's training length differs. It trains experts on the table's training split (no DP, ε = 1 and ε = 4;
`--expert-seeds` seeds each, DP-SGD drawing fresh noise each time), asks the real held-out records in the verbalizer's
phrasing, and runs every expert behind the same question pass (`LlamdexModel.question_pass` / `inject_cached`, equal to
`answer`), so a difference between two rows is the decoder's alone. Per expert it records Llamdex's agreement with the
expert, the mean total-variation distance between the two answers' class probabilities, and the share of near-ties
(expert probabilities within 0.1 of each other), where any decoder error flips the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def measure(table, preset_name: str, epochs: list[int], expert_seeds: int, max_test: int, store_root: Path, base) -> dict:
    import numpy as np
    import torch

    from client_party.datasets import encode_table
    from client_party.expert_training import TrainConfig, train_expert
    from provider_party.model.connector_store import ConnectorStore
    from provider_party.model.connector_training import PRESETS
    from simulations.evaluation import test_questions
    from simulations.pipeline import eps_key, held_out_split

    df, schema = table.load()
    train, test = held_out_split(df, schema, seed=0, max_test=max_test)
    x, y = encode_table(train, schema)
    experts = {}
    for eps in (None, 1.0, 4.0):
        for s in range(expert_seeds):
            cfg = TrainConfig(seed=s) if eps is None else TrainConfig.private(eps, seed=s)
            trained = train_expert(x, y, schema, cfg, progress=False)
            experts[f"{eps_key(eps)}#seed={s}"] = trained.as_received()
    out: dict = {"n_test": len(test), "by_epochs": {}}
    for n in epochs:
        preset = replace(PRESETS[preset_name], name=f"{preset_name}-decoder-epochs-{n}", decoder_epochs=n)
        store = ConnectorStore(store_root / table.id / f"epochs-{n}")
        t0 = time.perf_counter()
        model, trained_now = store.get_or_train(base, schema, preset, seed=0, progress=True)
        wall = time.perf_counter() - t0
        questions = test_questions(model, test, 0)
        answers: dict[str, list] = {e: [] for e in experts}
        with torch.inference_mode():
            for i in range(0, len(questions), 16):
                features, ctx = model.question_pass(model.batch(questions[i:i + 16]))
                for e, expert in experts.items():
                    q = model.expert_probs(expert, features)
                    answers[e].append((model.inject_cached(ctx, q).softmax(-1), q))
        rows = {}
        for e, parts in answers.items():
            p, q = torch.cat([a for a, _ in parts]).numpy(), torch.cat([b for _, b in parts]).numpy()
            top2 = np.sort(q, axis=1)[:, -2:]
            rows[e] = {"agreement": round(float((p.argmax(1) == q.argmax(1)).mean()), 4),
                       "mean_tv_distance": round(float(np.abs(p - q).sum(1).mean() / 2), 4),
                       "near_ties": round(float((top2[:, 1] - top2[:, 0] < 0.1).mean()), 4)}
        timings = model.config.metrics.get("timings", {})
        out["by_epochs"][str(n)] = {"rows": rows, "connector_training_s": round(timings.get("total_s", float("nan")), 1),
                                    "trained_in_this_run": trained_now, "wall_s": round(wall, 1)}
        print(f"{table.id} epochs {n}: " + ", ".join(f"{e} {r['agreement']:.3f} / {r['mean_tv_distance']:.3f}" for e, r in rows.items()), flush=True)
    return out


def markdown(results: dict) -> str:
    lines = ["| table | expert | " + " | ".join(f"{n} passes: agreement / mean TV distance" for n in results["epochs"]) + " | near-ties |",
             "|---|---|" + "---|" * (len(results["epochs"]) + 1)]
    for table, t in results["tables"].items():
        first = t["by_epochs"][str(results["epochs"][0])]["rows"]
        for i, e in enumerate(first):
            cells = [f"{t['by_epochs'][str(n)]['rows'][e]['agreement']:.3f} / {t['by_epochs'][str(n)]['rows'][e]['mean_tv_distance']:.3f}"
                     for n in results["epochs"]]
            lines.append(f"| {table if i == 0 else ''} | {e} | " + " | ".join(cells) + f" | {first[e]['near_ties']:.3f} |")
        lines.append("| | connector training (s) | " + " | ".join(f"{t['by_epochs'][str(n)]['connector_training_s']:.0f}" for n in results["epochs"]) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from provider_party.model.base_llm import load_base_llm
    from simulations.benchmarks.results_md import command_line, environment
    from simulations.cli.common import add_data_args, set_threads, table_refs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(ap, multiple=True, default="titanic")
    ap.add_argument("--preset", default="quick", help="the preset whose decoder passes vary (default: %(default)s)")
    ap.add_argument("--epochs", default="2,6", type=lambda s: [int(t) for t in s.split(",") if t], help="decoder passes to compare (default: 2,6)")
    ap.add_argument("--expert-seeds", type=int, default=2, help="experts per ε (default: %(default)s)")
    ap.add_argument("--max-test", type=int, default=300, help="held-out records asked (default: %(default)s)")
    ap.add_argument("--store", type=Path, default=Path("runs/decoder_epochs"), help="connector stores, one per table and pass count")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    base = load_base_llm()
    results = {"command": command_line("python scripts/decoder_epochs.py", argv),
               "environment": environment(), "preset": args.preset, "epochs": args.epochs, "tables": {}}
    for table in table_refs(args):
        results["tables"][table.id] = measure(table, args.preset, args.epochs, args.expert_seeds, args.max_test, args.store, base)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")   # partial results survive an interruption
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
