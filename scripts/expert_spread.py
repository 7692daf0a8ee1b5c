"""How much does an expert's accuracy move with its training seed, under this or an older training recipe?

    python scripts/expert_spread.py --data titanic,credit --seeds 5 --out spread.json
    git worktree add /tmp/filed 47cde1f
    python scripts/expert_spread.py --code /tmp/filed --data titanic,credit --seeds 5 --out spread_filed.json

Trains the client's expert on each table's training split with seeds 0..N-1 at no DP, ε = 1 and ε = 4
(DP-SGD also draws fresh noise each time) and scores it on the same held-out records as
`bench accuracy --max-test 500` (the same split, the same subsample). `--code DIR` imports the client
code from DIR instead of this checkout, so a recipe that has since changed is measured side by side with
today's on the same records; where the code has decision rules (`TrainConfig.decision`), each rule is
trained. Experts only: Llamdex's figures with the same seeds come from `bench accuracy --expert-seeds N`.
Writes one JSON object and prints a Markdown table (mean ± sample sd).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="titanic,default,credit,churn", help="registered tables, comma-separated")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds per recipe (default 5)")
    ap.add_argument("--max-test", type=int, default=500, help="held-out subsample, as bench accuracy's (default 500)")
    ap.add_argument("--code", type=Path, default=REPO, help="a checkout whose client code trains the experts (default: this one)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = ap.parse_args(argv)
    if not (args.code / "client_party").is_dir():
        ap.error(f"--code {args.code}: no client_party package there")
    sys.path.insert(0, str(args.code.resolve()))

    from sklearn.metrics import balanced_accuracy_score

    from client_party.datasets import encode_table, load_table
    from simulations.pipeline import held_out_split
    from client_party.expert_training import TrainConfig, predict_proba, train_expert

    rules = ("calibrated", "balanced") if "decision" in TrainConfig.__dataclass_fields__ else (None,)
    out: dict = {"code": str(args.code), "seeds": args.seeds, "tables": {}}
    lines = ["| table | rule | ε | accuracy | balanced accuracy |", "|---|---|---|---|---|"]
    for name in args.data.split(","):
        df, schema = load_table(name)
        train, test = held_out_split(df, schema, seed=0, max_test=args.max_test)
        x, y = encode_table(train, schema)
        xt, yt = encode_table(test, schema)
        per = out["tables"][name] = {}
        for rule in rules:
            for eps in (None, 1.0, 4.0):
                base = TrainConfig() if eps is None else TrainConfig.private(eps)
                if rule is not None:
                    base = replace(base, decision=rule)
                accs, bals = [], []
                for seed in range(args.seeds):
                    pred = predict_proba(train_expert(x, y, schema, replace(base, seed=seed)).model, xt).argmax(1)
                    accs.append(float((pred == yt).mean()))
                    bals.append(float(balanced_accuracy_score(yt, pred)))
                key = f"{rule or 'filed'}/{'no-dp' if eps is None else f'eps={eps:g}'}"
                per[key] = {"accuracy": accs, "balanced_accuracy": bals}
                lines.append(f"| {name} | {rule or '(one rule)'} | {'–' if eps is None else f'{eps:g}'} | {_spread(accs)} | {_spread(bals)} |")
                print(lines[-1], flush=True)
        args.out.write_text(json.dumps(out, indent=1))
    print("\n".join(lines))
    return 0


def _spread(v: list[float]) -> str:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.fmean(v):.3f} ± {sd:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
