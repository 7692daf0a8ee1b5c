"""`llamdex client ...`: the data owner's commands."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from simulations.cli.common import UsageError, add_data_args, non_negative_int, positive_float, positive_int, table_ref


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="data owner: train, sign and upload experts; customize; ask; keep receipts", description=__doc__)
    csub = p.add_subparsers(dest="client_command", metavar="ACTION")
    t = csub.add_parser(
        "train",
        help="train an expert (optionally DP-SGD) and save it as expert.safetensors + expert.json",
        description="Train the domain expert on a private table. The table never leaves this machine; "
        "the output folder holds the expert (safetensors + architecture spec), the public schema and the DP statement.",
        epilog="examples:\n  llamdex client train --data titanic --epsilon 1 --out runs/titanic-eps1\n"
        "  llamdex client train --data loans.csv --schema loans.schema.json --epsilon 2 --key keys/alice.key --out runs/loans-eps2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_args(t, default=None, required=True, aliases=("--dataset",))
    t.add_argument("--epsilon", type=positive_float, default=None, help="target ε for DP-SGD; omit for no DP")
    t.add_argument("--delta", type=positive_float, default=None, help="target δ (default 1/(10 n), must be below 1/n)")
    t.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the trainer's)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="training seed; also names the held-out split (default: %(default)s)")
    t.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    t.add_argument("--key", type=Path, default=None, help="sign the output folder as an artifact with this key (model.sig, OpenSSF model-signing format)")
    t.add_argument("--force", action="store_true", help="replace the --out folder if it already holds files (by default it must be new or empty)")
    t.set_defaults(func=_train)
    from simulations.cli.client_protocol import register_actions
    from simulations.cli.client_round import register_round

    register_actions(csub)
    register_round(csub)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from client_party.datasets import encode_table, split_table
    from client_party.expert_training import TrainConfig, predict_proba, train_expert
    from protocol.expert_spec import save_expert
    from simulations.attacks.metrics import clopper_pearson

    if args.delta is not None and args.epsilon is None:
        raise UsageError("--delta is the δ of DP training: give it with --epsilon (without --epsilon the expert trains without DP)")
    out = _checked_out(args.out, args.force)
    key = None
    if getattr(args, "key", None):   # a key that cannot sign is refused before the training, not after it
        from protocol.keys import load_private_key

        key = load_private_key(args.key)
    df, schema = table_ref(args).load()
    train, test = split_table(df, schema, seed=args.seed)
    cfg = TrainConfig(seed=args.seed) if args.epsilon is None else TrainConfig.private(args.epsilon, seed=args.seed, target_delta=args.delta)
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    x, y = encode_table(train, schema)
    trained = train_expert(x, y, schema, cfg, progress=True)
    xt, yt = encode_table(test, schema)
    right = int((predict_proba(trained.model, xt).argmax(1) == yt).sum())
    acc = right / len(yt)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{out.name}-", dir=out.parent))   # the folder appears whole, or not at all
    try:
        save_expert(trained.model, partial)
        schema.save(partial / "schema.json")
        (partial / "dp.json").write_text(json.dumps(trained.dp.to_dict(), indent=2, sort_keys=True) + "\n")
        if key is not None:
            from protocol.artifact import sign_artifact

            sign_artifact(partial, key)
        if out.exists():          # --force: the old folder goes only once the new one is complete
            shutil.rmtree(out)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    eps = "no DP" if args.epsilon is None else f"ε={trained.dp.epsilon:.3f}, δ={trained.dp.delta:.2e}"
    lo, hi = clopper_pearson(right, len(yt))   # a small table's accuracy is a wide interval, and says so
    print(f"expert saved to {out} ({eps}); held-out accuracy {acc:.3f} [95 % interval {lo:.3f}, {hi:.3f}] on {len(test)} records")
    return 0


def _checked_out(out: Path, force: bool) -> Path:
    """The artifact folder `client train` writes: a new or empty folder (or, with --force, one it replaces), refused
    before any training. Files left in it would be mixed into the artifact, and an old model.sig would sign nothing."""
    if out.resolve() == Path.cwd():   # also --out "" (argparse's Path("") is ".")
        raise UsageError("--out must name a folder of its own for the artifact, not the current folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the artifact")
    if out.is_dir() and any(out.iterdir()) and not force:
        held = sorted(p.name for p in out.iterdir())
        raise UsageError(f"--out {out} already holds {held[:5]}{' ...' if len(held) > 5 else ''}; choose a new folder, or add --force to "
                         "replace it (the old folder is removed only once the new artifact is complete)")
    return out
