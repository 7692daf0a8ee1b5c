"""Which epoch should a non-DP expert keep? The measurement behind the client's early-stopping rule.

    python scripts/stopping_rules.py --data titanic,credit,churn,default,penguins,telco,attrition --out stopping.json

For each table and seed, trains the client's expert for 100 epochs on the fit part of its training
split (the client's validation split held out, as `TrainConfig` does) and records, after every epoch,
the validation loss and decision metrics and the held-out (test) accuracy and balanced accuracy under
both decision rules. Then compares, offline on the same trajectories, the epoch each stopping rule
would have kept: the client's (lowest validation loss, patience 8), patience 20, the best validation
decision metric up to the client's stop, that metric with patience 8, a fixed 30 epochs (the recipe
before early stopping) and the last epoch trained. Prints mean test figures over the seeds.

This reads the tables' test splits, so it measures a choice; it must not be used to tune the recipe
to these tables (a rule is kept only if it is no worse on every table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ("val_loss_p8", "val_loss_p20", "val_metric_up_to_stop", "val_metric_p8", "fixed_30", "last_trained")


def trajectories(name: str, seeds: int, epochs: int, max_test: int) -> list[list[dict]]:
    import numpy as np
    import torch
    from sklearn.metrics import balanced_accuracy_score as bal
    from torch import nn

    from client_party.datasets import encode_table, load_table
    from simulations.pipeline import held_out_split
    from client_party.expert_training import expert_spec, validation_split
    from protocol.expert_spec import build_expert
    from protocol.seeding import generator, init_parameters

    torch.set_num_threads(1)
    df, schema = load_table(name)
    train, test = held_out_split(df, schema, seed=0, max_test=max_test)
    x_np, y_np = encode_table(train, schema)
    xt, yt = encode_table(test, schema)
    x, y, xt = torch.as_tensor(x_np), torch.as_tensor(y_np), torch.as_tensor(xt)
    k = len(schema.label.classes)
    log_prior = np.log(np.maximum(np.bincount(y_np, minlength=k), 0.5) / len(y_np))

    runs = []
    for seed in range(seeds):
        model = init_parameters(build_expert(expert_spec(schema)), generator(seed))
        gen = generator(seed + 1)
        fit, val = validation_split(y_np, 0.15, gen)
        xf, yf, xv, yv = x[fit], y[fit], x[val], y[val]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        traj = []
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(xf), generator=gen)
            for s in range(0, len(xf), 64):
                idx = perm[s:s + 64]
                opt.zero_grad()
                loss_fn(model(xf[idx]), yf[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                lv, lt = model(xv), model(xt).numpy()
                vloss, lv = float(loss_fn(lv, yv)), lv.numpy()
            yvn = yv.numpy()
            traj.append({"val_loss": vloss, "val_plain": float((lv.argmax(1) == yvn).mean()), "val_balanced": float(bal(yvn, (lv - log_prior).argmax(1))),
                         "acc_plain": float((lt.argmax(1) == yt).mean()), "bal_plain": float(bal(yt, lt.argmax(1))),
                         "acc_balanced": float(((lt - log_prior).argmax(1) == yt).mean()), "bal_balanced": float(bal(yt, (lt - log_prior).argmax(1)))})
        runs.append(traj)
    return runs


def kept_epoch(traj: list[dict], decision: str, rule: str) -> int:
    """The 0-based epoch `rule` keeps for an expert deciding by `decision` ("plain" or "balanced")."""
    def by_loss(patience: int) -> tuple[int, int]:
        best, best_i, stale = float("inf"), 0, 0
        for i, t in enumerate(traj):
            if t["val_loss"] < best - 1e-6:
                best, best_i, stale = t["val_loss"], i, 0
            else:
                stale += 1
            if stale >= patience:
                return best_i, i
        return best_i, len(traj) - 1

    metric = f"val_{decision}"
    best_i, stop = by_loss(8)
    if rule == "val_loss_p8":
        return best_i
    if rule == "val_loss_p20":
        return by_loss(20)[0]
    if rule == "val_metric_up_to_stop":
        return max(range(stop + 1), key=lambda i: (traj[i][metric], -traj[i]["val_loss"]))
    if rule == "val_metric_p8":
        best, best_i, stale = -1.0, 0, 0
        for i, t in enumerate(traj):
            if t[metric] > best + 1e-9:
                best, best_i, stale = t[metric], i, 0
            else:
                stale += 1
            if stale >= 8:
                break
        return best_i
    if rule == "fixed_30":
        return min(29, len(traj) - 1)
    if rule == "last_trained":
        return stop
    raise ValueError(rule)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="titanic,credit,churn,default,penguins,telco,attrition")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--max-test", type=int, default=500)
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the trajectories and the summary")
    args = ap.parse_args(argv)
    out: dict = {"trajectories": {}, "summary": {}}
    for name in args.data.split(","):
        out["trajectories"][name] = trajectories(name, args.seeds, args.epochs, args.max_test)
        print(f"{name}: {args.seeds} trajectories", flush=True)
    for decision in ("plain", "balanced"):
        print(f"\n{decision} decision rule: test accuracy / balanced accuracy, mean over seeds (mean epoch kept)\n")
        print("| table | " + " | ".join(RULES) + " |\n|---|" + "---|" * len(RULES))
        for name, runs in out["trajectories"].items():
            cells = []
            for rule in RULES:
                kept = [kept_epoch(t, decision, rule) for t in runs]
                acc = statistics.fmean(t[e][f"acc_{decision}"] for t, e in zip(runs, kept))
                bal = statistics.fmean(t[e][f"bal_{decision}"] for t, e in zip(runs, kept))
                out["summary"].setdefault(decision, {}).setdefault(name, {})[rule] = {"accuracy": acc, "balanced_accuracy": bal,
                                                                                       "mean_epoch": statistics.fmean(kept) + 1}
                cells.append(f"{acc:.3f} / {bal:.3f} ({statistics.fmean(kept) + 1:.0f})")
            print(f"| {name} | " + " | ".join(cells) + " |")
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
