"""`llamdex attack ...`: privacy attacks on an expert (membership, attribute, one-run canary audit)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Measure what an uploaded expert reveals about the client's training records. Each command simulates
the client (it trains the target expert on a seeded split of a registered table with the client's
own recipe, DP-SGD when --epsilon is given) and then attacks it as the provider would (it holds the
weights) or as an end user of the customized LLM would (query seat). Only counts and metrics are
printed; no record is ever shown.

  mia        membership inference: loss, confidence, entropy, modified entropy, margin thresholds
             and LiRA online/offline with shadow experts; ROC AUC and TPR at 0.1 %, 1 %, 10 % FPR
  attribute  infer the schema's sensitive column from the expert and the other columns, against a
             baseline that uses the public population alone
  canary     one-run audit (Steinke, Nasr, Jagielski 2023): empirical lower bound on ε at 95 %,
             next to the claimed ε (Opacus) and the ε recomputed with dp-accounting"""

MIA_EPILOG = """\
examples:
  # a DP expert at ε = 1 on the credit table, provider seat, 16 shadows per LiRA variant
  llamdex attack mia --dataset credit --epsilon 1 --shadows 16
  # a deliberately overfit non-DP expert: LiRA should find members
  llamdex attack mia --dataset credit --target-size 100 --members 100 --nonmembers 100 --epochs 150 --lr 0.01 --batch-size 50
  # also through the customized LLM's answers (200 + 200 records, connectors from the 'quick' preset)
  llamdex attack mia --dataset credit --query 200 --query-shadows 4 --json runs/mia-credit.json --roc runs/mia-credit.png
"""

ATTRIBUTE_EPILOG = """\
examples:
  llamdex attack attribute --dataset titanic                    # sensitive column 'sex' from the schema
  llamdex attack attribute --dataset credit --column Marital --epsilon 1 --json runs/attr.json
"""

CANARY_EPILOG = """\
examples:
  llamdex attack canary --dataset credit --epsilon 1 --canaries 1000 --seeds 3
  llamdex attack canary --dataset churn --canaries 500            # no DP: the bound shows memorization
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="registered table: titanic, default, credit, churn")
    p.add_argument("--epsilon", type=float, default=None, help="target ε of the client's DP-SGD; omit for no DP")
    p.add_argument("--target-size", type=int, default=1000, help="records in the client's training set (default: %(default)s)")
    p.add_argument("--members", type=int, default=500, help="members attacked (default: %(default)s)")
    p.add_argument("--nonmembers", type=int, default=500, help="non-members attacked (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="privacy attacks on an expert: membership, attribute, canary audit",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="run `llamdex attack mia --help` (or attribute, canary) for each command's options and examples")
    asub = p.add_subparsers(dest="attack_command", metavar="ATTACK")
    m = asub.add_parser("mia", help="membership inference (score attacks, LiRA online/offline), provider and query seats",
                        description=DESCRIPTION.split("\n\n")[0], epilog=MIA_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(m)
    m.add_argument("--shadows", type=int, default=16, help="shadow experts per LiRA variant (default: %(default)s)")
    m.add_argument("--attacks", default=None, help="comma-separated subset of: loss, confidence, entropy, modified_entropy, margin, "
                                                   "lira_online, lira_offline (default: all)")
    m.add_argument("--query", type=int, default=0, metavar="N", help="also attack through the customized LLM with N members + N non-members")
    m.add_argument("--query-shadows", type=int, default=4, help="shadows per LiRA variant used from the query seat (default: %(default)s)")
    m.add_argument("--preset", default="quick", help="connector preset for the query seat (default: %(default)s)")
    m.add_argument("--connector-root", type=Path, help="connector store (default: $LLAMDEX_HOME/connectors-quick)")
    m.add_argument("--roc", type=Path, metavar="PNG", help="plot the ROC curves")
    m.set_defaults(func=_mia)
    a = asub.add_parser("attribute", help="attribute inference of the schema's sensitive column",
                        epilog=ATTRIBUTE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(a)
    a.add_argument("--column", help="the column to infer (default: the schema's first sensitive column)")
    a.set_defaults(func=_attribute)
    c = asub.add_parser("canary", help="one-run canary audit: empirical ε lower bound at 95 %%",
                        epilog=CANARY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(c)
    c.add_argument("--canaries", type=int, default=1000, help="number of canaries m (default: %(default)s)")
    c.add_argument("--seeds", type=int, default=1, help="independent audit runs (default: %(default)s)")
    c.add_argument("--confidence", type=float, default=0.95, help="confidence of the bound (default: %(default)s)")
    c.set_defaults(func=_canary)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _write_json(path: Path | None, data: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"results written to {path}")


def _mia(args: argparse.Namespace) -> int:
    from simulations.attacks.mia import ALL_ATTACKS, MIAConfig, run_mia

    attacks = tuple(a.strip() for a in args.attacks.split(",")) if args.attacks else ALL_ATTACKS
    bad = set(attacks) - set(ALL_ATTACKS)
    if bad:
        print(f"llamdex attack mia: unknown attacks {sorted(bad)}; choose from {list(ALL_ATTACKS)}", file=sys.stderr)
        return 2
    cfg = MIAConfig(target_size=args.target_size, eval_members=args.members, eval_nonmembers=args.nonmembers, n_shadows=args.shadows,
                    epsilon=args.epsilon, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, attacks=attacks,
                    query_members=args.query, query_nonmembers=args.query, query_shadows=args.query_shadows)
    llamdex = None
    if args.query:
        from client_party.datasets import load_table
        from provider_party.model.base_llm import llamdex_home, load_base_llm
        from provider_party.model.connector_store import ConnectorStore

        _, schema = load_table(args.dataset)
        store = ConnectorStore(args.connector_root or llamdex_home() / "connectors-quick")
        llamdex, trained_now = store.get_or_train(load_base_llm(), schema, args.preset, progress=True)
    report = run_mia(args.dataset, cfg, llamdex=llamdex, progress=True)
    dp = report.dp
    eps = "no DP" if dp["mechanism"] == "none" else f"ε = {dp['epsilon']:.4g}, δ = {dp['delta']:.2g}"
    print(f"\n{args.dataset}: target expert ({eps}), held-out accuracy {report.expert_accuracy:.3f}"
          + (f"; Llamdex accuracy {report.llamdex_accuracy:.3f} (expert on the same records {report.expert_accuracy_query_subset:.3f})"
             if report.llamdex_accuracy is not None else ""))
    print(f"{'seat':9} {'attack':17} {'AUC':>6} {'TPR@0.1%':>9} {'TPR@1%':>7} {'TPR@10%':>8} {'ε_lb':>6} {'members':>8} {'non-m.':>7}")
    for r in report.results:
        t = r.tpr_at_fpr
        print(f"{r.seat:9} {r.attack:17} {r.auc:6.3f} {t[0.001]:9.3f} {t[0.01]:7.3f} {t[0.1]:8.3f} {r.epsilon_lb or 0:6.2f} "
              f"{r.n_members:8d} {r.n_nonmembers:7d}")
    _write_json(args.json, report.to_dict(with_roc=True))
    if args.roc:
        from simulations.attacks.report import _mpl

        plt = _mpl()
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8, ls=":")
        for i, r in enumerate(report.results):
            ax.plot(r.roc[0], r.roc[1], ls="-" if r.seat == "provider" else "--", color=f"C{i % 10}", label=f"{r.attack} ({r.seat}) {r.auc:.3f}")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate", ylabel="true positive rate",
               title=f"{args.dataset}, {eps}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        args.roc.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.roc, dpi=110)
        print(f"ROC curves written to {args.roc}")
    return 0


def _attribute(args: argparse.Namespace) -> int:
    from simulations.attacks.attribute import run_attribute

    res, dp = run_attribute(args.dataset, column=args.column, epsilon=args.epsilon, target_size=args.target_size,
                            eval_members=args.members, eval_nonmembers=args.nonmembers, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, seed=args.seed)
    eps = "no DP" if dp["mechanism"] == "none" else f"ε = {dp['epsilon']:.4g}"
    print(f"{args.dataset}: infer {res.column!r} ({len(res.levels)} values) from the expert ({eps}) and the other columns")
    print(f"{'':28} {'members':>8} {'non-members':>12}")
    print(f"{'attack (expert + population)':28} {res.attack_members:8.3f} {res.attack_nonmembers:12.3f}")
    print(f"{'population baseline':28} {res.population_members:8.3f} {res.population_nonmembers:12.3f}")
    print(f"{'most frequent value':28} {res.prior:8.3f} {res.prior:12.3f}")
    print(f"advantage over the population on members: {res.advantage:+.3f}; members − non-members: {res.membership_gap:+.3f} "
          f"({res.n_members} members, {res.n_nonmembers} non-members)")
    _write_json(args.json, {"dataset": args.dataset, "dp": dp, **res.to_dict()})
    return 0


def _canary(args: argparse.Namespace) -> int:
    from client_party.datasets import encode_table, load_table
    from simulations.attacks.canary import run_canary_audit
    import numpy as np

    from simulations.attacks.mia import torch_threads, train_config

    df, schema = load_table(args.dataset)
    x, y = encode_table(df, schema)
    if args.target_size >= len(df):
        print(f"llamdex attack canary: --target-size {args.target_size} must be below the table's {len(df)} records", file=sys.stderr)
        return 2
    perm = np.random.default_rng(args.seed).permutation(len(df))
    train, test = perm[:args.target_size], perm[args.target_size:args.target_size + args.nonmembers]
    runs = []
    for s in range(args.seeds):
        seed = args.seed + 100 * s
        cfg = train_config(args.epsilon, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
        with torch_threads(1):
            audit = run_canary_audit(x[train], y[train], schema, cfg, m=args.canaries, seed=seed,
                                     x_test=x[test], y_test=y[test], confidence=args.confidence)
        runs.append(audit.to_dict())
        b = audit.best
        fmt = lambda v: "∞ (no DP)" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"seed {seed}: {audit.m} canaries ({audit.included} included); best guesses r={b.get('r', 0)} correct v={b.get('v', 0)}; "
              f"ε lower bound {audit.epsilon_lb:.3f} at {args.confidence:.0%} | claimed {fmt(audit.epsilon_claimed)}, "
              f"Opacus {fmt(audit.epsilon_recomputed)}, dp-accounting {fmt(audit.epsilon_second)}"
              + ("  ** EXCEEDS THE CLAIM **" if audit.exceeds_claim else ""))
    worst = max(r["epsilon_lb"] for r in runs)
    print(f"max ε lower bound over {len(runs)} run(s): {worst:.3f}")
    _write_json(args.json, {"dataset": args.dataset, "runs": runs})
    return 1 if any(r["exceeds_claim"] for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    """`llamdex attack ARGS` without the top-level parser."""
    p = argparse.ArgumentParser(prog="llamdex")
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["attack", *(argv or [])])
    return int(args.func(args) or 0)

