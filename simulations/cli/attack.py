"""`llamdex attack mia|attribute|canary`: privacy attacks on an expert, simulated or a real signed artifact."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path
from typing import Any, Callable

from simulations.cli.common import UsageError as CommonUsageError
from simulations.cli.common import (add_connectors_arg, add_data_args, add_json_arg, canary_count, emit_json, non_negative_int, positive_float, positive_int,
                                    probability, refuse_outputs_inside, table_refs)

DESCRIPTION = """\
Measure what an expert reveals about the records it was trained on. Two ways to name the target:

  simulated  --data NAME|FILE: the command plays the client (it trains the target expert on a seeded
             split of the table with the client's own recipe, DP-SGD when --epsilon is given) and
             then attacks it;
  artifact   --artifact DIR --client-key PEM --members FILE --nonmembers FILE: a real signed expert,
             verified first (signature, every digest, spec, schema, DP statement), attacked with
             records the auditor holds: the ones it was trained on and ones it was not (CSV or
             Parquet under the artifact's schema.json). Shadow experts train on a public table
             (--data, under the same schema) or on half of the non-members.

Seats: the provider's (it holds the weights) and the query seat (an end user of the customized LLM:
--query N through a local LLM when simulated, --provider ADDRESS through a running provider's Ask
for an artifact). Every AUC and TPR comes with its 95 % interval; an attack is said to beat chance
only when its interval excludes chance. Only counts and metrics are printed; no record is shown.

  mia        membership inference: loss, confidence, entropy, modified entropy, margin thresholds,
             LiRA online/offline and RMIA with shadow experts; ROC AUC and TPR at 0.1 %, 1 %, 10 % FPR
  attribute  infer the schema's sensitive column from the expert and the other columns, against a
             baseline that uses the population alone
  canary     one-run audits (Steinke, Nasr, Jagielski 2023): empirical ε lower bound at 95 % from
             input-space canaries (black box) and gradient canaries (white box), next to the claimed
             ε (Opacus) and the ε recomputed with dp-accounting; exit 1 when a bound exceeds a claim"""

MIA_EPILOG = """\
examples:
  # a DP expert at ε = 1 on the credit table, provider seat, 16 shadows
  llamdex attack mia --data credit --epsilon 1 --shadows 16
  # a deliberately overfit non-DP expert: LiRA and RMIA should find members
  llamdex attack mia --data credit --target-size 100 --n-members 100 --n-nonmembers 100 --epochs 150 --lr 0.01 \\
                     --batch-size 50 --no-early-stopping
  # also through the customized LLM's answers (500 + 500 records, connectors from the 'quick' preset)
  llamdex attack mia --data credit --query 500 --json runs/mia-credit.json --roc runs/mia-credit.png
  # a real artifact, with the records it was trained on and records it was not
  llamdex attack mia --artifact runs/titanic-eps1 --client-key keys/alice.pub \\
                     --members members.csv --nonmembers nonmembers.csv
  # the same, plus the query seat through a running provider (the artifact's owner asks, mutual TLS)
  llamdex attack mia --artifact runs/titanic-eps1 --client-key keys/alice.pub --members members.csv \\
                     --nonmembers nonmembers.csv --provider provider.example:50051 --config client.toml
"""

ATTRIBUTE_EPILOG = """\
examples:
  llamdex attack attribute --data titanic                     # sensitive column 'sex' from the schema
  llamdex attack attribute --data credit --column Marital --epsilon 1 --json runs/attr.json
  llamdex attack attribute --artifact runs/titanic-eps1 --client-key keys/alice.pub \\
                           --members members.csv --nonmembers nonmembers.csv
"""

CANARY_EPILOG = """\
examples:
  llamdex attack canary --data credit --epsilon 1 --canaries 1000 --seeds 3
  llamdex attack canary --data churn --canaries 500            # no DP: the bounds show memorization
  # replay a real artifact's DP statement on the records it was trained on
  llamdex attack canary --artifact runs/titanic-eps1 --client-key keys/alice.pub --members members.csv
"""


def _target_args(p: argparse.ArgumentParser, *, members_files: bool = True) -> None:
    sim = p.add_argument_group("simulated client (the command trains the target)")
    add_data_args(sim, default=None)
    sim.add_argument("--epsilon", type=positive_float, default=None, help="target ε of the client's DP-SGD; omit for no DP")
    sim.add_argument("--target-size", type=positive_int, default=None,
                     help="records in the client's training set (default: 1000; when none of the three sizes is given and the "
                          "table is too small for the defaults, all three shrink in proportion)")
    sim.add_argument("--n-members", type=positive_int, default=None, help="members attacked (default: 500, or shrunk as above)")
    sim.add_argument("--n-nonmembers", type=positive_int, default=None, help="non-members attacked (default: 500, or shrunk as above)")
    sim.add_argument("--epochs", type=positive_int, default=None, help="override the recipe's epochs")
    sim.add_argument("--batch-size", type=positive_int, default=None, help="override the recipe's batch size")
    sim.add_argument("--lr", type=positive_float, default=None, help="override the recipe's learning rate")
    sim.add_argument("--no-early-stopping", dest="early_stopping", action="store_false", default=None,
                     help="without DP: train every epoch on every record (a deliberately overfit expert)")
    art = p.add_argument_group("a real artifact (verified first); --data is then an optional public table for shadows")
    art.add_argument("--artifact", type=Path, metavar="DIR", help="a signed artifact folder (from `llamdex client train --key ...`)")
    art.add_argument("--client-key", action="append", type=Path, default=[], metavar="PEM", help="trusted public key of the artifact's signer (repeatable)")
    art.add_argument("--members", type=Path, metavar="FILE", help="CSV/Parquet: records the artifact was trained on")
    if members_files:
        art.add_argument("--nonmembers", type=Path, metavar="FILE", help="CSV/Parquet: records it was not trained on")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the splits, shadow models and attack samples (default: %(default)s)")
    add_json_arg(p, "the results")


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("attack", help="privacy attacks on an expert (simulated or a signed artifact): membership, attribute, canary audit",
                       description=DESCRIPTION, formatter_class=fmt,
                       epilog="run `llamdex attack mia --help` (or attribute, canary) for each command's options and examples")
    asub = p.add_subparsers(dest="attack_command", metavar="ATTACK")
    m = asub.add_parser("mia", help="membership inference (score attacks, LiRA, RMIA) from the provider and query seats",
                        description=DESCRIPTION.split("\n\n")[0], epilog=MIA_EPILOG, formatter_class=fmt)
    _target_args(m)
    m.add_argument("--shadows", type=non_negative_int, default=16, help="shadow experts (default: %(default)s; 0: only the attacks without shadows)")
    m.add_argument("--population", type=positive_int, default=500, help="population records z for RMIA (default: %(default)s)")
    m.add_argument("--attacks", default=None, help="comma-separated subset of: loss, confidence, entropy, modified_entropy, margin, "
                                                   "lira_online, lira_offline, rmia, rmia_offline (default: all)")
    q = m.add_argument_group("query seat")
    q.add_argument("--query", type=positive_int, default=None, metavar="N",
                   help="simulated: also attack through a local customized LLM with N members + N non-members; "
                        "artifact with --provider: ask about N members + N non-members (default: every attacked record)")
    q.add_argument("--query-shadows", type=positive_int, default=None, help="simulated: shadows pushed through the LLM (default: all)")
    q.add_argument("--preset", default="quick", help="simulated: connector preset for the query seat (default: %(default)s)")
    add_connectors_arg(q, help="simulated: connector store (default: $LLAMDEX_HOME/connectors-quick)", aliases=("--connector-root",))
    from simulations.cli.client_protocol import _common as provider_flags

    provider_flags(m)   # --provider ADDRESS and the client's identity and TLS flags (artifact: the query seat through Ask)
    m.add_argument("--roc", type=Path, metavar="PNG", help="plot the ROC curves")
    m.set_defaults(func=_json_on_stdout_alone(_mia))
    a = asub.add_parser("attribute", help="attribute inference of the schema's sensitive column", epilog=ATTRIBUTE_EPILOG, formatter_class=fmt)
    _target_args(a)
    a.add_argument("--column", help="the column to infer (default: the schema's first sensitive column)")
    a.set_defaults(func=_json_on_stdout_alone(_attribute))
    c = asub.add_parser("canary", help="one-run canary audits (input-space and gradient canaries): empirical ε lower bound at 95 %%",
                        epilog=CANARY_EPILOG, formatter_class=fmt)
    _target_args(c, members_files=False)
    c.add_argument("--canaries", type=canary_count, default=1000, help="number of canaries m (default: %(default)s)")
    c.add_argument("--seeds", type=positive_int, default=1, help="independent audit runs (default: %(default)s)")
    c.add_argument("--confidence", type=probability, default=0.95, help="confidence of the bound (default: %(default)s)")
    c.set_defaults(func=_json_on_stdout_alone(_canary))
    p.set_defaults(func=lambda args: p.print_help() or 2)


FEW_ATTACKED = 50   # fewer members or non-members than this: the command says its intervals will be wide


class UsageError(Exception):
    """Bad flags: printed with the verb's name, exit status 2."""


def _json_on_stdout_alone(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """With `--json` alone, standard output carries the JSON and nothing else (so it can be piped): the attack's
    report text goes to standard error instead, as its progress bars already do."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        if args.json != "-":
            return handler(args)
        args.json_stream = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            return handler(args)
    return run


def _write_json(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.json == "-":
        with contextlib.redirect_stdout(args.json_stream):   # the real standard output, set aside by _json_on_stdout_alone
            emit_json("-", data)
    elif args.json is not None:
        emit_json(args.json, data)
        print(f"results written to {args.json}")


def _mode(args: argparse.Namespace, verb: str, need_nonmembers: bool = True) -> str:
    """'artifact' or 'simulated', after checking that the flags of exactly one mode are given."""
    if args.artifact:
        missing = [f for f, v in (("--client-key", args.client_key), ("--members", args.members),
                                  ("--nonmembers", getattr(args, "nonmembers", True) if need_nonmembers else True)) if not v]
        if missing:
            raise UsageError(f"--artifact needs {', '.join(missing)} (the signer's public key and the auditor's records)")
        if args.epsilon is not None:
            raise UsageError("--epsilon trains a simulated target; an artifact's ε is in its DP statement")
        return "artifact"
    if not args.data:
        raise UsageError("name the target: --data NAME|FILE (simulated client) or --artifact DIR with --members/--nonmembers")
    if args.members or getattr(args, "nonmembers", None):
        raise UsageError("--members/--nonmembers are record files for --artifact; a simulated run counts them with --n-members/--n-nonmembers")
    if getattr(args, "provider_address", None):
        raise UsageError("--provider attacks a real artifact through a running provider: give --artifact (simulated: --query N)")
    return "simulated"


def _check_outputs(args: argparse.Namespace) -> None:
    """Where the results go, checked before minutes of training rather than after."""
    json_out = getattr(args, "json", None)
    for path in filter(None, (Path(json_out) if json_out not in (None, "-") else None, getattr(args, "roc", None))):
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder, not a file", str(path))
        if not path.parent.is_dir():
            raise FileNotFoundError(2, "folder does not exist", str(path.parent))
    roc = getattr(args, "roc", None)
    try:
        refuse_outputs_inside({"--json": json_out, "--roc": roc}, [args.artifact] if args.artifact else [])
    except CommonUsageError as e:   # said with the verb's name, as this verb's other usage errors
        raise UsageError(str(e)) from None
    if roc is not None and roc.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--roc {roc}: name an image file ending in .png, .pdf or .svg")


def _run(verb: str, fn, args: argparse.Namespace) -> int:
    """Exit 1 is the attack's own finding (canary: a bound above the claim); a bad flag is 2, and every other refusal
    (a missing file, an artifact that fails verification, a table that breaks its schema) takes the status `llamdex`
    gives it everywhere (README, exit status)."""
    from protocol.errors import DataValidationError, LlamdexError
    from protocol.rpc_errors import redacted_data_error

    try:
        _check_outputs(args)
        return fn(args)
    except UsageError as e:
        print(f"llamdex attack {verb}: {e}", file=sys.stderr)
        return 2
    except DataValidationError as e:   # records the auditor holds break the schema: counts, kinds and columns, no value
        raise redacted_data_error(e) from None
    except ValueError as e:
        if isinstance(e, LlamdexError):
            raise
        print(f"llamdex attack {verb}: {e}", file=sys.stderr)   # a value the attack cannot take (its rule in the message)
        return 3


def _load_simulated(args: argparse.Namespace, *, attacks_records: bool = True):
    """The simulated client's table, and the attack's sizes settled against it (`fitting_sizes`) before any training.
    `attacks_records`: members and non-members are what the attack scores (mia, attribute; canary scores canaries)."""
    from simulations.attacks.mia import DEFAULT_SIZES, fitting_sizes

    df, schema = table_refs(args)[0].load()
    given = (args.target_size, args.n_members, args.n_nonmembers)
    args.target_size, args.n_members, args.n_nonmembers = fitting_sizes(len(df), given)
    if given == (None, None, None) and (args.target_size, args.n_members, args.n_nonmembers) != DEFAULT_SIZES:
        print(f"{args.data} has {len(df)} records, too few for the default sizes: the target trains on {args.target_size}, "
              f"{args.n_members} members and {args.n_nonmembers} non-members are attacked (--target-size, --n-members, "
              "--n-nonmembers set them)")
    if not attacks_records:
        return df, schema
    from simulations.attacks.artifact_attacks import MIN_RECORDS   # the artifact mode's floor for its record files, too

    if min(args.n_members, args.n_nonmembers) < MIN_RECORDS:   # a bootstrap over one record gives a zero-width interval
        raise ValueError(f"{args.data} gives {args.n_members} member(s) and {args.n_nonmembers} non-member(s) to attack; at least "
                         f"{MIN_RECORDS} of each are needed for an interval to mean anything (a larger table, or --n-members and "
                         "--n-nonmembers)")
    if min(args.n_members, args.n_nonmembers) < FEW_ATTACKED:
        print(f"only {min(args.n_members, args.n_nonmembers)} members or non-members are attacked: every interval below is wide, "
              "and 'no leakage shown' says little", file=sys.stderr)
    return df, schema


def _population(args: argparse.Namespace):
    return table_refs(args)[0].load() if args.data else None


def _print_results(results) -> None:
    print(f"{'seat':9} {'attack':16} {'AUC [95 % interval]':>24} {'TPR@0.1%':>9} {'TPR@1% [95 %]':>22} {'TPR@10%':>8} {'ε_lb':>5} "
          f"{'members':>8} {'non-m.':>7}")
    for r in results:
        t, ci = r.tpr_at_fpr, r.tpr_ci
        mark = " *" if r.beats_chance else ""
        print(f"{r.seat:9} {r.attack:16} {r.auc:6.3f} [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]{mark:2} {t[0.001]:9.3f} "
              f"{t[0.01]:6.3f} [{ci[0.01][0]:.3f}, {ci[0.01][1]:.3f}] {t[0.1]:8.3f} {r.epsilon_lb or 0:5.2f} {r.n_members:8d} {r.n_nonmembers:7d}")
    if any(r.beats_chance for r in results):
        print("* the AUC's 95 % interval excludes 0.5 (before correcting for the number of attacks compared)")
    else:
        print("no attack's AUC interval excludes 0.5")


def _mia(args: argparse.Namespace) -> int:
    return _run("mia", _mia_impl, args)


def _mia_impl(args: argparse.Namespace) -> int:
    from simulations.attacks.mia import ALL_ATTACKS, MIAConfig, best_attack, make_split, run_mia

    attacks = tuple(a.strip() for a in args.attacks.split(",")) if args.attacks else ALL_ATTACKS
    bad = set(attacks) - set(ALL_ATTACKS)
    if bad:
        raise UsageError(f"unknown attacks {sorted(bad)}; choose from {list(ALL_ATTACKS)}")
    with_shadows = [a for a in attacks if a.startswith(("lira", "rmia"))]
    if args.shadows == 0 and args.attacks and with_shadows:   # they would be dropped, and an empty table printed
        raise UsageError(f"{', '.join(with_shadows)} need shadow experts: give --shadows 1 or more")
    if _mode(args, "mia") == "artifact":
        return _mia_artifact(args, attacks)
    df, schema = _load_simulated(args)
    make_split(len(df), args.target_size, args.n_members, args.n_nonmembers, args.seed)   # a table too small: said before any training
    cfg = MIAConfig(target_size=args.target_size, eval_members=args.n_members, eval_nonmembers=args.n_nonmembers, n_shadows=args.shadows,
                    population=args.population, epsilon=args.epsilon, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    early_stopping=args.early_stopping, seed=args.seed, attacks=attacks, query_members=args.query or 0,
                    query_nonmembers=args.query or 0, query_shadows=args.query_shadows)
    llamdex = None
    if args.query:
        from provider_party.model.base_llm import llamdex_home, load_base_llm
        from provider_party.model.connector_store import ConnectorStore

        store = ConnectorStore(args.connectors or llamdex_home() / "connectors-quick")
        llamdex, _ = store.get_or_train(load_base_llm(), schema, args.preset, progress=True)
    report = run_mia((df, schema), cfg, llamdex=llamdex, progress=True)
    dp = report.dp
    eps = "no DP" if dp["mechanism"] == "none" else f"ε = {dp['epsilon']:.4g}, δ = {dp['delta']:.2g}"
    print(f"\n{args.data}: target expert ({eps}), held-out accuracy {report.expert_accuracy:.3f}, balanced {report.expert_balanced_accuracy:.3f}"
          + (f"; Llamdex accuracy {report.llamdex_accuracy:.3f} (expert on the same records {report.expert_accuracy_query_subset:.3f})"
             if report.llamdex_accuracy is not None else ""))
    _print_results(report.results)
    for seat in ("provider", "query"):
        b = best_attack(report.results, seat)
        if b:
            print(f"best {seat}-seat attack: {b['attack']} AUC {b['auc']:.3f}, family-wise interval [{b['auc_ci_family'][0]:.3f}, "
                  f"{b['auc_ci_family'][1]:.3f}] over {b['attacks_compared']} attacks: {'beats' if b['beats_chance'] else 'does not beat'} chance")
    _write_json(args, report.to_dict(with_roc=True))
    if args.roc:
        _plot(report.results, args.roc, f"{args.data}, {eps}")
    return 0


def _mia_artifact(args: argparse.Namespace, attacks: tuple[str, ...]) -> int:
    from simulations.attacks.artifact_attacks import attack_artifact, load_target, provider_asker
    from simulations.attacks.mia import best_attack

    target = load_target(args.artifact, args.client_key, args.members, args.nonmembers, _population(args))
    dp = target.dp
    eps = "no DP" if not dp.is_private else f"ε = {dp.epsilon:.4g}, δ = {dp.delta:.2g}"
    print(f"artifact {args.artifact} ({target.artifact.digest}) verified: {eps}")
    client = None
    if args.provider_address:
        from simulations.cli.client_protocol import config_from_args

        client = config_from_args(args).provider_client(with_store=False)
    try:
        report = attack_artifact(target, n_shadows=args.shadows, population=args.population, seed=args.seed, attacks=attacks,
                                 ask=provider_asker(client, target.artifact.digest) if client else None, query_records=args.query,
                                 progress=print)
    finally:
        if client is not None:
            client.close()
    print(f"{report.members} members, {report.nonmembers_attacked} non-members attacked; {report.shadows} shadows on {report.shadow_pool}; "
          f"expert accuracy on the non-members {report.expert_accuracy_nonmembers:.3f}")
    _print_results(report.results)
    for seat in ("provider", "query"):
        b = best_attack(report.results, seat)
        if b:
            print(f"best {seat}-seat attack: {b['attack']} AUC {b['auc']:.3f}, family-wise interval [{b['auc_ci_family'][0]:.3f}, "
                  f"{b['auc_ci_family'][1]:.3f}]: {'beats' if b['beats_chance'] else 'does not beat'} chance")
    _write_json(args, report.to_dict(with_roc=True))
    if args.roc:
        _plot(report.results, args.roc, f"{args.artifact.name}, {eps}")
    return 0


def _plot(results, path: Path, title: str) -> None:
    from simulations.attacks.report import _mpl

    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8, ls=":")
    for i, r in enumerate(results):
        ax.plot(r.roc[0], r.roc[1], ls="-" if r.seat == "provider" else "--", color=f"C{i % 10}",
                label=f"{r.attack} ({r.seat}) {r.auc:.3f} [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]")
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"ROC curves written to {path}")


def _attribute(args: argparse.Namespace) -> int:
    return _run("attribute", _attribute_impl, args)


def _attribute_impl(args: argparse.Namespace) -> int:
    if _mode(args, "attribute") == "artifact":
        from simulations.attacks.artifact_attacks import attribute_on_artifact, load_target

        target = load_target(args.artifact, args.client_key, args.members, args.nonmembers, _population(args))
        res, dp, name = attribute_on_artifact(target, args.column, args.seed), target.dp.to_dict(), str(args.artifact)
    else:
        from simulations.attacks.attribute import run_attribute

        table = _load_simulated(args)
        res, dp = run_attribute(table, column=args.column, epsilon=args.epsilon, target_size=args.target_size, eval_members=args.n_members,
                                eval_nonmembers=args.n_nonmembers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        name = args.data
    eps = "no DP" if dp["mechanism"] == "none" else f"ε = {dp['epsilon']:.4g}"
    ci = res.intervals
    fmt = lambda v, k: f"{v:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else f"{v:.3f}"  # noqa: E731
    print(f"{name}: infer {res.column!r} ({len(res.levels)} values) from the expert ({eps}) and the other columns")
    print(f"{'':28} {'members':>22} {'non-members':>22}")
    print(f"{'attack (expert + population)':28} {fmt(res.attack_members, 'attack_members'):>22} {fmt(res.attack_nonmembers, 'attack_nonmembers'):>22}")
    print(f"{'population baseline':28} {fmt(res.population_members, 'population_members'):>22} {res.population_nonmembers:22.3f}")
    print(f"{'most frequent value':28} {res.prior:22.3f} {res.prior:22.3f}")
    print(f"advantage over the population on members: {fmt(res.advantage, 'advantage')}; members − non-members: "
          f"{fmt(res.membership_gap, 'membership_gap')} ({res.n_members} members, {res.n_nonmembers} non-members): "
          f"{'leaks (an interval lies above 0)' if res.to_dict()['leaks'] else 'no leakage shown (neither interval lies above 0)'}")
    _write_json(args, {"target": name, "dp": dp, **res.to_dict()})
    return 0


def _canary(args: argparse.Namespace) -> int:
    return _run("canary", _canary_impl, args)


def _canary_impl(args: argparse.Namespace) -> int:
    import numpy as np

    from client_party.datasets import encode_table
    from simulations.attacks.canary import run_canary_audit
    from simulations.attacks.gradient_canary import run_gradient_canary_audit
    from simulations.attacks.mia import torch_threads, train_config

    replay = None
    if _mode(args, "canary", need_nonmembers=False) == "artifact":
        from protocol.artifact import ArtifactVerifier
        from simulations.attacks.artifact_attacks import load_records

        va = ArtifactVerifier(list(args.client_key)).verify(args.artifact)
        schema = va.schema
        x, y = encode_table(load_records(args.members, args.artifact, "members"), schema)
        replay = va.dp if va.dp.is_private else None
        name, eps = str(args.artifact), (float(va.dp.epsilon) if va.dp.is_private else None)
        x_test = y_test = None
    else:
        df, schema = _load_simulated(args, attacks_records=False)
        x_all, y_all = encode_table(df, schema)
        if args.target_size >= len(df):
            raise UsageError(f"--target-size {args.target_size} must be below the table's {len(df)} records")
        perm = np.random.default_rng(args.seed).permutation(len(df))
        train, test = perm[:args.target_size], perm[args.target_size:args.target_size + args.n_nonmembers]
        x, y, x_test, y_test = x_all[train], y_all[train], x_all[test], y_all[test]
        name, eps = args.data, args.epsilon
    runs = []
    fmt = lambda v: "∞ (no DP)" if v is None else f"{v:.4f}"  # noqa: E731
    for s in range(args.seeds):
        seed = args.seed + 100 * s
        cfg = train_config(eps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, early_stopping=args.early_stopping)
        with torch_threads(1):
            for kind, fn in (("input-space", run_canary_audit), ("gradient", run_gradient_canary_audit)):
                audit = fn(x, y, schema, cfg, m=args.canaries, seed=seed, x_test=x_test, y_test=y_test, confidence=args.confidence, replay=replay)
                runs.append({**audit.to_dict(), "kind": kind, "seed": seed})
                b = audit.best
                print(f"{name} seed {seed}, {kind} canaries: {audit.m} ({audit.included} included); best guesses r={b.get('r', 0)} correct "
                      f"v={b.get('v', 0)}; ε lower bound {audit.epsilon_lb:.3f} at {args.confidence:.0%} | claimed {fmt(audit.epsilon_claimed)}, "
                      f"Opacus {fmt(audit.epsilon_recomputed)}, dp-accounting {fmt(audit.epsilon_second)}"
                      + ("  ** EXCEEDS THE CLAIM **" if audit.exceeds_claim else ""))
    worst = max(r["epsilon_lb"] for r in runs)
    print(f"max ε lower bound over {len(runs)} run(s): {worst:.3f}")
    _write_json(args, {"target": name, "runs": runs})
    return 1 if any(r["exceeds_claim"] for r in runs) else 0


def main(argv: list[str] | None = None) -> int:
    """`llamdex attack ARGS` without the top-level parser."""
    p = argparse.ArgumentParser(prog="llamdex")
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["attack", *(argv or [])])
    return int(args.func(args) or 0)
