"""`llamdex audit`: offline verification of artifacts, receipts, the ledger, and every ε (twice)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulations.cli.common import (UsageError, add_data_args, add_json_arg, canary_count, emit_json, positive_int, probability, refuse_outputs_inside,
                                    table_refs)

DESCRIPTION = """\
Verify, offline and from files only, what a client uploaded and what a provider recorded:

  artifacts  signature (OpenSSF model-signing bundle) under the trusted client key(s), every file's
             digest and size, the architecture spec, the schema, the DP statement;
  receipts   the provider's signature on each receipt, its budget arithmetic, and each client's
             hash chain (sequence numbers, previous-receipt digests, running spend);
  ledger     the SQLite ledger's row hash chain, every receipt in it, budget arithmetic, the budgets
             table, and that no dataset spent more than its budget (the file is copied, never written);
  epsilon    every DP statement and receipt recomputed with Opacus AND with Google's dp-accounting
             (RDP over Opacus' Rényi orders for 'rdp' claims, PLD for 'prv' claims); claims must
             match Opacus to 0.1 % and dp-accounting to 1 % (RDP) or 3 % (PLD vs PRV);
  cross      each artifact is named by an upload receipt and a ledger row with the same DP
             parameters; receipts given and ledger receipts of the same clients match one to one;
  canary     (--canary, with --data: the records the artifact was trained on) the white-box one-run
             audit of the training code: each artifact's DP statement (noise multiplier, sampling
             rate, steps, clipping norm, δ) is replayed through the client's DP-SGD with gradient
             canaries (Dirac canaries in the clipped per-sample gradients); an empirical ε lower
             bound above the claimed ε fails the artifact.

Exit status: 0 when every check passes, 1 on any discrepancy (each FAIL line names the record and
the rule), 2 on bad usage, 4 when a file or folder named does not exist (nothing is checked then)."""

EPILOG = """\
examples:
  # the client's view: its artifact, the receipts it kept, the provider's public key
  llamdex audit --artifact runs/titanic-eps1 --client-key keys/client.pub \\
                --receipts runs/receipts/ --provider-key keys/provider.pub
  # the provider's ledger (a copy of the SQLite file is opened, the original is untouched)
  llamdex audit --ledger provider/ledger.sqlite --provider-key keys/provider.pub --show-passing
  # everything, with a machine-readable report (--json alone prints it instead of the text)
  llamdex audit --artifact a1 --artifact a2 --receipts receipts.jsonl --ledger ledger.sqlite \\
                --client-key client.pub --provider-key provider.pub --json audit.json
  # does the code that made this artifact add the noise its statement claims? (trained by
  # `llamdex client train --data titanic --seed 0`, i.e. on the training part of split seed 0)
  llamdex audit --canary --artifact runs/titanic-eps1 --client-key keys/client.pub \\
                --data titanic --split-seed 0 --canaries 1000
"""


# Defaults of the canary group's flags, filled in only with --canary: given without it, a flag is refused rather
# than ignored (an auditor who typed --canaries 5000 and forgot --canary would read a report with no canary check).
CANARY_DEFAULTS = {"canaries": 1000, "canary_seeds": 1, "confidence": 0.95}


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--artifact", action="append", type=Path, default=[], metavar="DIR", help="an artifact folder (repeatable)")
    p.add_argument("--receipts", action="append", type=Path, default=[], metavar="PATH",
                   help="a folder of receipt *.json / *.jsonl files, a JSONL file, or one receipt JSON (repeatable)")
    p.add_argument("--ledger", type=Path, metavar="FILE", help="the provider's ledger SQLite file")
    p.add_argument("--client-key", action="append", type=Path, default=[], metavar="PEM",
                   help="a trusted client public key for artifact signatures (repeatable)")
    p.add_argument("--provider-key", type=Path, metavar="PEM", help="the provider's public key for receipts and the ledger")
    add_json_arg(p, "the full report")
    p.add_argument("--show-passing", action="store_true", help="print passing checks too")
    c = p.add_argument_group("canary audit (white-box, gradient canaries)")
    c.add_argument("--canary", action="store_true", help="replay each artifact's DP statement with gradient canaries on --data")
    add_data_args(c, default=None)
    c.add_argument("--split-seed", type=int, default=None, metavar="S",
                   help="use the training part of the client's 80/20 split with seed S (as `llamdex client train --seed S`); "
                        "default: every record of --data")
    c.add_argument("--canaries", type=canary_count, default=None, help=f"canaries per run (default: {CANARY_DEFAULTS['canaries']})")
    c.add_argument("--canary-seeds", type=positive_int, default=None,
                   help=f"independent canary runs per artifact (default: {CANARY_DEFAULTS['canary_seeds']})")
    c.add_argument("--confidence", type=probability, default=None, help=f"confidence of the lower bound (default: {CANARY_DEFAULTS['confidence']})")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="verify artifacts, receipts and the ledger offline; recompute every ε twice",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    build_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulations.audit import run_audit

    if not (args.artifact or args.receipts or args.ledger):
        raise UsageError("give at least one of --artifact, --receipts, --ledger")
    _require_named_paths(args)
    refuse_outputs_inside({"--json": args.json}, list(args.artifact))
    canary = None
    if args.canary:
        from protocol.errors import DataValidationError, LlamdexError
        from protocol.rpc_errors import redacted_data_error

        try:
            canary = _canary_spec(args)
        except DataValidationError as e:   # the records behind an artifact: counts, kinds and columns, never a value
            raise redacted_data_error(e) from None
        except (ValueError, argparse.ArgumentTypeError) as e:
            if isinstance(e, LlamdexError):   # a schema or a table file the command cannot take: exit 3, as everywhere
                raise
            raise UsageError(f"--canary: {e}") from None
    else:
        stray = [flag for flag, v in (("--data", args.data), ("--split-seed", args.split_seed), ("--canaries", args.canaries),
                                      ("--canary-seeds", args.canary_seeds), ("--confidence", args.confidence),
                                      ("--schema", getattr(args, "schema", None))) if v is not None]
        if stray:
            raise UsageError(f"{', '.join(stray)} {'applies' if len(stray) == 1 else 'apply'} only to the canary audit: "
                             f"add --canary (or leave {'it' if len(stray) == 1 else 'them'} out)")
    report = run_audit(artifacts=args.artifact, receipts=args.receipts, ledger=args.ledger,
                       client_keys=args.client_key or None, provider_key=args.provider_key, canary=canary)
    if not emit_json(args.json, report.to_dict()):
        print(report.render(verbose=args.show_passing))
    return 0 if report.ok else 1


def _require_named_paths(args: argparse.Namespace) -> None:
    """A path typed wrong is a usage slip, not a discrepancy in what is audited: it stops the audit with exit 4
    (as every verb does) instead of becoming one FAIL line among the checks that did run."""
    named = [*args.artifact, *args.receipts, *args.client_key, *filter(None, (args.ledger, args.provider_key))]
    for path in named:
        if not path.exists():
            raise FileNotFoundError(2, "does not exist", str(path))


def _canary_spec(args: argparse.Namespace):
    """The training records named by --data (and --split-seed), encoded, for the canary replay."""
    from client_party.datasets import encode_table, split_table
    from simulations.audit import CanaryAuditSpec

    if not args.data:
        raise ValueError("give --data NAME|FILE: the records the artifact was trained on (and --split-seed S for the training part of a table)")
    if not args.artifact:
        raise ValueError("give --artifact DIR: the canary audit replays an artifact's DP statement")
    refs = table_refs(args)
    if len(refs) != 1:
        raise ValueError("--canary takes one --data table")
    df, schema = _with_artifact_schema(refs[0], args.artifact[0]).load()
    if args.split_seed is not None:
        df, _ = split_table(df, schema, seed=args.split_seed)
    x, y = encode_table(df, schema)
    chosen = {k: CANARY_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in CANARY_DEFAULTS}
    return CanaryAuditSpec(x, y, schema, canaries=chosen["canaries"], seeds=chosen["canary_seeds"], confidence=chosen["confidence"])


def _with_artifact_schema(ref, artifact: Path):
    """A table file with no schema named and none beside it is read under the audited artifact's own schema.json: the
    records it was trained on follow that schema by definition (and the audit checks the artifact's digests)."""
    import dataclasses

    from client_party.datasets import default_schema_path
    from protocol.artifact import SCHEMA_FILE

    if ref.path is None or ref.schema_path is not None:
        return ref
    if default_schema_path(ref.path).is_file() or not (artifact / SCHEMA_FILE).is_file():
        return ref
    print(f"--canary: {ref.path} is read under {artifact / SCHEMA_FILE} (no schema beside it; --schema names another)", file=sys.stderr)
    return dataclasses.replace(ref, schema_path=artifact / SCHEMA_FILE)


def main(argv: list[str] | None = None) -> int:
    """`llamdex audit ARGS` without the top-level parser (tests, scripts)."""
    p = build_parser(argparse.ArgumentParser(prog="llamdex audit", description=DESCRIPTION, epilog=EPILOG,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(p.parse_args(argv))
