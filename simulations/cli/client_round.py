"""`llamdex client round`: the client's whole part of a round against a provider on another host.

One command runs, in order, what an operator would type one by one, and times each phase:

  1. ready      wait until the provider's health reports readiness (`--wait`), then Hello: the
                provider knows this client and proves it holds the pinned receipt key
  2. train      DP-SGD on the private table (`--data`, `--epsilon`); the table never leaves this host
  3. upload     the signed artifact, chunked and resumable; the privacy receipt is verified and kept
  4. customize  the provider trains (or reuses) the schema's connectors; one progress line per update
  5. evaluate   the held-out questions through Ask (`--max-test`), scored here
  6. receipts   the client's ledger page by page (GetLedger) and the receipt chain, verified

One round runs at a time per workspace (each spends ε): a second is refused (ROUND_IN_PROGRESS) before it trains.
It prints one line per phase and writes the phase times, the scores and the receipts' file to
`<workspace>/rounds/round-<time>.json` (or `--json`). Everything it reads is in client.toml
(`llamdex hosts bundle` writes one) or a flag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from simulations.cli.common import add_alias, add_json_arg, emit_json, non_negative_float, non_negative_int, positive_float, positive_int

PHASES = ("ready", "train", "upload", "customize", "evaluate", "receipts")


def register_round(csub: argparse._SubParsersAction) -> None:
    from simulations.cli.client_protocol import _common
    from simulations.cli.common import add_data_args

    r = csub.add_parser(
        "round", help="the client's whole round: wait for the provider, train (DP), upload, customize, evaluate, verify receipts",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  llamdex client round --config bundles/client/client.toml\n"
        "  llamdex client round --config client.toml --data loans.csv --schema loans.schema.json --epsilon 2 --max-test 100")
    g = r.add_argument_group("the round")
    add_data_args(g)
    g.add_argument("--epsilon", type=positive_float, default=1.0, help="target ε of DP-SGD (default: %(default)s; must fit the provider's budget)")
    g.add_argument("--delta", type=positive_float, default=None, help="target δ (default: 1/(10 n), below 1/n)")
    g.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the trainer's)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="training seed; also names the held-out split (default: %(default)s)")
    g.add_argument("--preset", default="", help="connector training preset asked of the provider (default: the provider's own)")
    g.add_argument("--max-test", type=non_negative_int, default=0, metavar="N", help="held-out questions to ask (default: %(default)s = all of them)")
    add_alias(g, "--max-questions", "--max-test", "max_test", type=non_negative_int)
    g.add_argument("--batch-size", type=positive_int, default=16, help="questions per Ask (default: %(default)s)")
    g.add_argument("--no-base", action="store_true", help="skip the base LLM's own answers (half the Ask cost)")
    g.add_argument("--wait", type=non_negative_float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the provider to report ready (default: %(default)s)")
    add_json_arg(g, "the round's record (always also kept in <workspace>/rounds/round-<time>.json)")
    _common(r)
    r.set_defaults(func=_round)


class PhaseClock:
    """Times the phases and prints one line as each ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any], describe: Callable[[Any], str]) -> Any:
        i = PHASES.index(name) + 1
        print(f"[{i}/{len(PHASES)}] {name} ...", flush=True)
        t = time.perf_counter()
        out = fn()
        self.seconds[name] = time.perf_counter() - t
        print(f"[{i}/{len(PHASES)}] {name}: {describe(out)} ({self.seconds[name]:.1f} s)", flush=True)
        return out


def _ready(cfg: Any, pc: Any, wait_s: float) -> Any:
    from protocol.health_probe import wait_for

    def waiting(ans: Any) -> None:
        print(f"      provider {cfg.provider_address}: {getattr(ans, 'status', None) or getattr(ans, 'code', ans)}, waiting", flush=True)

    ans = wait_for(cfg.provider_address, cfg.tls, service=None, wait_s=wait_s, interval_s=2.0, plaintext=cfg.plaintext,
                   server_name=cfg.server_name, on_wait=waiting)
    if not ans.serving:
        raise SystemExit(f"provider {cfg.provider_address} is not ready after {wait_s:g} s (health: {ans.status}); "
                         f"see its log, or wait longer (--wait)")
    return pc.hello()


def _customize(party: Any, digest: str, preset: str) -> Any:
    from protocol.progress import progress_bar
    from protocol.wire import JOB_STATE_NAMES

    last = None
    with progress_bar(total=100, desc="      customize", unit="%", min_interval_s=2.0,
                      bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}") as bar:
        for ev in party.customize(digest, preset):
            bar.n = int(round(100 * ev.fraction))
            bar.set_postfix_str(f"{JOB_STATE_NAMES.get(ev.state, '?').lower()}: {ev.stage}", refresh=False)
            bar.refresh()
            last = ev
    if last is None or JOB_STATE_NAMES.get(last.state) != "SUCCEEDED":
        raise SystemExit(f"the provider's connector job failed: {last.result.error if last is not None else 'no events'}")
    return last


def _evaluate(party: Any, digest: str, args: argparse.Namespace) -> dict[str, Any]:
    from protocol.progress import progress_bar

    bar = None

    def on_batch(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total=total, desc="      evaluate", unit="question", min_interval_s=5.0)
        bar.n = done
        bar.refresh()

    try:
        return party.evaluate(digest, args.max_test, args.batch_size, include_base=not args.no_base, on_batch=on_batch)
    finally:
        if bar is not None:
            bar.close()


ROUND_LOCK = "round.lock"


def run_round(args: argparse.Namespace) -> dict[str, Any]:
    """One round at a time per workspace: each spends ε, so a second one started by mistake (another terminal, a
    retry while the first still runs) is refused before it trains, naming the first's pid."""
    from protocol.errors import CodedError
    from protocol.folder_lock import FolderInUse, holding
    from simulations.cli.client_protocol import config_from_args

    cfg = config_from_args(args)
    Path(cfg.workspace).mkdir(parents=True, exist_ok=True)
    try:
        with holding(Path(cfg.workspace) / ROUND_LOCK):
            return _run_round(args, cfg)
    except FolderInUse as e:
        raise CodedError("ROUND_IN_PROGRESS", f"another `llamdex client round` (pid {e.holder}) runs in the workspace {cfg.workspace}; "
                         "a second round would spend ε again: wait for it, or give this one its own workspace ([client] workspace, "
                         "--workspace)") from None


def _run_round(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from client_party.receipt_store import describe
    from client_party.service import ClientParty, format_scores
    from simulations.cli.common import table_refs

    ref = table_refs(args)[0]
    party = ClientParty(cfg)
    clock = PhaseClock()
    pc = party.provider()
    clock.run("ready", lambda: _ready(cfg, pc, args.wait),
              lambda h: f"provider {h.provider_id} at {cfg.provider_address} knows this client as {h.client_id!r}; "
                        f"base model {h.base_model_id}; receipt key {h.provider_key_fingerprint} pinned and proved")
    art = clock.run("train", lambda: party.train(ref, args.epsilon, delta=args.delta, epochs=args.epochs, seed=args.seed, progress=True),
                    lambda a: f"expert on {a.dataset_id} ({a.n_train} records; "
                              f"{'ε=%.3f, δ=%.1e' % (a.dp.epsilon, a.dp.delta) if a.dp.is_private else 'no DP'}); "
                              f"held-out accuracy {a.heldout_accuracy:.3f}; artifact {a.artifact_digest[:19]}…")
    up = clock.run("upload", lambda: party.upload(art.folder, art.dataset_id, seed=args.seed),
                   lambda u: f"{u.bytes} bytes in {u.attempts} stream(s); receipt verified and stored: {describe(u.receipt)}")
    job = clock.run("customize", lambda: _customize(party, up.artifact_digest, args.preset),
                    lambda j: f"job {j.job_id}: connectors {'reused' if j.result.connectors_reused else 'trained'} for schema "
                              f"{j.result.schema_digest[:19]}… on {j.result.base_model_id}")
    ev = clock.run("evaluate", lambda: _evaluate(party, up.artifact_digest, args),
                   lambda e: f"{e['n_test']} held-out questions through Ask in {e['ask_calls']} call(s); "
                             f"Llamdex agrees with the expert on {e['agreement_with_expert']:.1%}")
    print(format_scores(ev["dataset_id"], ev["rows"]), flush=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    receipts_file = Path(cfg.workspace) / "rounds" / f"receipts-{stamp}.json"

    def receipts() -> list[Any]:
        party.store.sync(pc)
        chain = party.store.verify()
        receipts_file.parent.mkdir(parents=True, exist_ok=True)
        party.store.export(receipts_file)
        return chain

    chain = clock.run("receipts", receipts, lambda c: f"{len(c)} receipt(s), chain verified under the pinned provider key; "
                                                       f"written to {receipts_file}")
    record = {"command": sys.argv, "provider": cfg.provider_address, "client_id": cfg.client_id, "table": str(ref),
              "dataset_id": art.dataset_id, "epsilon_target": args.epsilon, "epsilon": art.dp.epsilon if art.dp.is_private else None,
              "artifact_digest": up.artifact_digest, "receipt_id": up.receipt.receipt_id, "job_id": job.job_id,
              "connectors_reused": bool(job.result.connectors_reused), "phase_seconds": clock.seconds,
              "total_seconds": sum(clock.seconds.values()), "scores": ev, "receipts": len(chain), "receipts_file": str(receipts_file)}
    out = Path(cfg.workspace) / "rounds" / f"round-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in clock.seconds.items()) + f"; record in {out}", flush=True)
    return record


def _round(args: argparse.Namespace) -> int:
    import grpc

    from protocol.errors import CodedError
    from simulations.cli.main import describe_error

    # with `--json` alone the record is the only thing on standard output: the phase lines go to standard error
    try:
        with contextlib.redirect_stdout(sys.stderr if args.json == "-" else sys.stdout):
            record = run_round(args)
    except (CodedError, grpc.RpcError) as e:   # one line naming the phase's failure, and the exit status of its kind (README)
        report = describe_error(e)
        print(f"round stopped: {report.line}", file=sys.stderr)
        return report.exit_code
    emit_json(args.json, record)
    return 0
