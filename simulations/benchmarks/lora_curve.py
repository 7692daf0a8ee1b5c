"""LoRA learning curve: how many fine-tuning steps the comparison's LoRA recipe needs before it learns.

Run: `python -m simulations.benchmarks.lora_curve --data titanic` (minutes on 2 cores). The adapters of
`LoRAConfig` (rank, layers, batch size, learning rate) are trained on real training questions of the
table at a constant learning rate after warm-up, and scored at step checkpoints on validation
questions drawn from the client's *training* split (never the held-out test records of the
comparison), so the step budget it motivates is chosen without looking at test data. Writes
docs/results/lora_curve.json and the `lora_curve` section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace

import numpy as np

from simulations.benchmarks.results_md import RESULTS_DIR, command_line, environment, results_md_path, update_section, write_json
from simulations.cli.common import add_data_args, add_out_arg, add_threads_arg, set_threads


def curve(table: str, lr: float, checkpoints: list[int], fit_questions: int, val_records: int, seed: int = 0,
          progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from client_party.datasets import TableRef, split_table
    from protocol.encoding import FeatureEncoder
    from protocol.verbalizer import Verbalizer
    from provider_party.model.base_llm import load_base_llm
    from simulations.baselines.lora import LoRAConfig, lower_states, train_lora
    from simulations.baselines.methods import SYNTH_QUESTION_SEED
    from simulations.pipeline import held_out_split
    from simulations.evaluation import scores

    base = load_base_llm()
    df, schema = TableRef.parse(table).load()
    train, _ = held_out_split(df, schema, seed=seed)       # the comparison's training split; its test records stay unseen
    fit, val = split_table(train, schema, test_size=min(val_records, len(train) // 4) / len(train), seed=seed + 1)
    fit = fit.sample(n=min(fit_questions, len(fit)), random_state=seed)
    fe = FeatureEncoder(schema)
    q_fit = Verbalizer(schema, seed=SYNTH_QUESTION_SEED + seed).questions(fit[schema.feature_names].to_dict("records"))
    q_val = Verbalizer(schema, seed=10_000 + seed).questions(val[schema.feature_names].to_dict("records"))
    y_fit, y_val = fe.label_index(fit[schema.label.name]), fe.label_index(val[schema.label.name])
    cfg = replace(LoRAConfig(), lr=lr)
    first = cfg.first_layer(base.num_layers)
    low_fit, low_val = lower_states(base, schema, q_fit, first, progress=progress), lower_states(base, schema, q_val, first, progress=progress)
    points: list[dict] = []
    clock = {"start": time.perf_counter(), "scoring": 0.0}

    def score(step: int, clf) -> None:   # train_lora's own run, scored at the checkpoints; scoring time is not training time
        if step not in checkpoints:
            return
        t = time.perf_counter()
        sc = scores(y_val, clf.probs(q_val, 16, lower=low_val).argmax(-1))
        train_s = t - clock["start"] - clock["scoring"]
        points.append({"step": step, "train_s": round(train_s, 1), "loss_last10": float(np.mean(clf.history[-10:])),
                       "val_accuracy": sc["accuracy"], "val_balanced_accuracy": sc["balanced_accuracy"]})
        tqdm.write(f"step {step}: validation balanced accuracy {sc['balanced_accuracy']:.3f} (accuracy {sc['accuracy']:.3f})")
        clock["scoring"] += time.perf_counter() - t

    train_lora(base, schema, q_fit, y_fit, cfg, seed=seed, progress=progress, steps=max(checkpoints), on_step=score, lower=low_fit)
    return {"dataset": table, "lr": lr, "lora": asdict(cfg), "fit_questions": len(q_fit), "val_records": len(q_val),
            "val_label_share": np.bincount(y_val, minlength=schema.label.num_classes).tolist(), "points": points}


def merged(results_dir, curves: list[dict]) -> list[dict]:
    """The file's curves with these added: a curve of the same (table, lr, sizes) is replaced, others kept."""
    import json
    from pathlib import Path

    path = Path(results_dir) / "lora_curve.json"
    old = json.loads(path.read_text()).get("curves", []) if path.exists() else []
    key = lambda c: (c["dataset"], c["lr"], c["fit_questions"], c["val_records"])  # noqa: E731
    mine = {key(c) for c in curves}
    return sorted([c for c in old if key(c) not in mine] + curves, key=key)


def markdown(payload: dict) -> str:
    lines = ["Command: `python -m simulations.benchmarks.lora_curve --data TABLE --lr LR` (each curve's own below). LoRA recipe of the comparison (constant learning rate after its warm-up steps), "
             "trained on real training questions and scored on validation questions from the client's training split "
             "(not the comparison's test records). Balanced accuracy (accuracy):", ""]
    for c in payload["curves"]:
        steps = [p["step"] for p in c["points"]]
        lines += [f"{c['dataset']}, lr {c['lr']:g}, {c['fit_questions']} training questions, {c['val_records']} validation records "
                  f"(`{c.get('command', payload['command'])}`):", "",
                  "| step | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps),
                  "| validation | " + " | ".join(f"{p['val_balanced_accuracy']:.3f} ({p['val_accuracy']:.3f})" for p in c["points"]) + " |",
                  "| training seconds | " + " | ".join(f"{p['train_s']:.0f}" for p in c["points"]) + " |", ""]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.lora_curve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n  python -m simulations.benchmarks.lora_curve --data titanic,credit --threads 2")
    add_data_args(ap, multiple=True, default="titanic")
    ap.add_argument("--lr", type=float, default=None, help="learning rate after warm-up (default: LoRAConfig's)")
    ap.add_argument("--checkpoints", default="20,40,80,120,160,240", help="steps at which to score (default 20,40,80,120,160,240)")
    ap.add_argument("--fit-questions", type=int, default=640, help="distinct training questions (default 640)")
    ap.add_argument("--val-records", type=int, default=200, help="validation records from the training split (default 200)")
    add_threads_arg(ap)
    add_out_arg(ap, default=RESULTS_DIR, help="folder of lora_curve.json and RESULTS.md's section (default: docs/results)",
                aliases=("--results-dir",))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    set_threads(args.threads)
    checkpoints = sorted({int(c) for c in args.checkpoints.split(",") if c.strip()})
    if not checkpoints or checkpoints[0] < 1:
        ap.error("--checkpoints: positive step counts, e.g. 20,40,80")
    command = command_line("python -m simulations.benchmarks.lora_curve", argv)
    from simulations.baselines.lora import LoRAConfig

    lr = args.lr if args.lr is not None else LoRAConfig().lr
    curves = [curve(t.strip(), lr, checkpoints, args.fit_questions, args.val_records) for t in args.data.split(",") if t.strip()]
    for c in curves:
        c["command"] = command
    payload = {"command": command, "environment": environment(), "curves": merged(args.out, curves)}
    write_json("lora_curve.json", payload, args.out)
    update_section("lora_curve", markdown(payload), results_md_path(args.out))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
