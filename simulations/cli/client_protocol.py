"""`llamdex client serve|upload|customize|ask|receipts|forget`: the client's side of the two-party protocol.

Every action reads its settings from `--config client.toml` (see client_party/config.py for the
format) and lets flags override them. Transport is mutual TLS unless `--plaintext` is given, which
works only on loopback addresses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulations.cli.common import UsageError, add_alias, add_json_arg, emit_json, non_negative_float, non_negative_int, positive_float, positive_int

CONFIG_HELP = "client TOML config ([client], [provider], [tls]); flags override its values"


def _common(p: argparse.ArgumentParser, *, serve: bool = False) -> None:
    g = p.add_argument_group("identity and transport (override the config file)")
    g.add_argument("--config", type=Path, help=CONFIG_HELP)
    g.add_argument("--id", dest="client_id", help="client id (= the CN of its certificate)")
    g.add_argument("--key", type=Path, help="the client's signing key (PEM, mode 0600)")
    g.add_argument("--workspace", type=Path, help="folder for artifacts, receipts.db and job results")
    g.add_argument("--provider", dest="provider_address", help="provider address HOST:PORT")
    g.add_argument("--provider-key", dest="provider_public_key", type=Path, help="the provider's public key (pinned; receipts must verify under it)")
    g.add_argument("--server-name", help="name to check in the provider's certificate, if not the host of --provider")
    g.add_argument("--ca", type=Path, help="CA certificate (PEM) both parties trust")
    g.add_argument("--cert", type=Path, help="this client's TLS certificate (PEM)")
    g.add_argument("--tls-key", type=Path, help="this client's TLS private key (PEM)")
    g.add_argument("--plaintext", action="store_true", default=None, help="no TLS: allowed only on loopback, for development")
    if serve:
        g.add_argument("--listen", help="address of this client's ClientService (HOST:PORT; port 0 = any)")
        g.add_argument("--port-file", type=Path, help="write the bound address here once serving")
        g.add_argument("--max-epsilon", type=positive_float, help="refuse TrainExpert requests above this ε")


def config_from_args(args: argparse.Namespace):
    from client_party.config import ClientConfig, load_client_config
    from protocol.tls import TLSFiles

    cfg = load_client_config(args.config) if getattr(args, "config", None) else ClientConfig()
    tls = cfg.tls
    if args.ca or args.cert or args.tls_key:
        if not (args.ca and args.cert and args.tls_key):
            raise UsageError("--ca, --cert and --tls-key go together: give all three (mutual TLS) or none")
        tls = TLSFiles(args.ca, args.cert, args.tls_key)
    return cfg.with_overrides(client_id=args.client_id, key=args.key, workspace=args.workspace, provider_address=args.provider_address,
                              provider_public_key=args.provider_public_key, server_name=args.server_name, tls=tls,
                              plaintext=args.plaintext, listen=getattr(args, "listen", None), port_file=getattr(args, "port_file", None),
                              max_epsilon=getattr(args, "max_epsilon", None))


def register_actions(csub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    s = csub.add_parser("serve", help="run the ClientService: the provider or an orchestrator asks this client to train and hand over experts",
                        description="Serve llamdex.v1.ClientService (and gRPC health). Callers (by certificate CN) must be in "
                        "[client] allowed_callers; TrainExpert requests above max_epsilon or for datasets not offered are refused. "
                        "The private tables are read here and never sent.", formatter_class=fmt,
                        epilog="example:\n  llamdex client serve --config client.toml\n  llamdex client serve --config client.toml --listen 127.0.0.1:0 --port-file client.addr")
    _common(s, serve=True)
    s.set_defaults(func=_serve, grpc_core_logs=True)   # a failed handshake leaves no other trace on the server's side

    u = csub.add_parser("upload", help="upload a signed artifact to the provider and keep its verified receipt",
                        description="Pack the artifact folder (deterministic tar), upload it in chunks (resuming after a broken "
                        "stream), verify the provider's privacy receipt under the pinned provider key and keep it in the receipt store.",
                        formatter_class=fmt, epilog="example:\n  llamdex client train --data titanic --epsilon 1 --key keys/alice.key --out art/\n"
                        "  llamdex client upload --config client.toml --artifact art/ --dataset-id titanic")
    u.add_argument("--artifact", type=Path, required=True, help="signed artifact folder (from `llamdex client train --key ...`)")
    u.add_argument("--dataset-id", required=True, help="the dataset it was trained on: its privacy budget is charged")
    u.add_argument("--chunk-bytes", type=positive_int, default=None,
                   help="upload chunk size in bytes (default: [client] chunk_bytes of the config, 1 MiB; capped at the provider's limit)")
    u.add_argument("--seed", type=non_negative_int, default=0, help="the --seed it was trained with (names the held-out split for `evaluate`)")
    _common(u)
    u.set_defaults(func=_upload)

    c = csub.add_parser("customize", help="ask the provider to train (or reuse) connectors for an uploaded expert; shows progress",
                        description="Start the provider's connector job for the schema of an uploaded expert and follow it "
                        "(WatchJob) with a progress bar. Connectors are reused when the provider already has them for this base model and schema.",
                        formatter_class=fmt, epilog="example:\n  llamdex client customize --config client.toml")
    c.add_argument("--artifact-digest", default="", help="sha256:... of the expert (default: the latest uploaded)")
    c.add_argument("--preset", default="", help="connector training preset (default: the provider's)")
    _common(c)
    c.set_defaults(func=_customize)

    a = csub.add_parser("ask", help="ask questions through the provider's Ask (one, several, or a file of them)",
                        description="Send questions (batched) to the provider's customized LLM and print each answer with its probabilities.",
                        formatter_class=fmt, epilog='example:\n  llamdex client ask --config client.toml "A woman of 29 in first class. Did she survive?"')
    a.add_argument("questions", nargs="*", help="questions, each one argument (quote it); asked before those of --file when both are given")
    a.add_argument("--file", type=Path, help="a text file with one question per line")
    a.add_argument("--artifact-digest", default="", help="which expert (default: the latest uploaded)")
    a.add_argument("--include-base", action="store_true", help="also show the base LLM's answer alone")
    a.add_argument("--batch-size", type=positive_int, default=16, help="questions per Ask (default: %(default)s)")
    add_json_arg(a, "the answers")
    _common(a)
    a.set_defaults(func=_ask)

    h = csub.add_parser("hello", help="check the provider: identity, base model, limits, receipt key (optionally wait for it)",
                        description="Call the provider's Hello over mutual TLS and print what it announces. The announced receipt key "
                        "must be the pinned one (--provider-key), or one it endorsed, and the provider must sign this call's random challenge "
                        "with it: a party that only copies the provider's public key is refused. --wait retries until the provider answers.",
                        formatter_class=fmt, epilog="example:\n  llamdex client hello --config client.toml --wait 60")
    h.add_argument("--wait", type=non_negative_float, default=0.0, help="seconds to keep retrying while the provider is unreachable")
    _common(h)
    h.set_defaults(func=_hello)

    e = csub.add_parser("evaluate", help="ask the held-out questions of an uploaded expert's dataset through Ask and score them here",
                        description="Turn the held-out records (the split the expert was not trained on) into questions, ask them "
                        "through the provider's Ask in batches, and score the answers locally: the labels never leave this machine. "
                        "Prints accuracy, balanced accuracy and macro F1 of the base LLM, the expert alone and Llamdex.",
                        formatter_class=fmt, epilog="example:\n  llamdex client evaluate --config client.toml --max-test 100")
    e.add_argument("--artifact-digest", default="", help="which expert (default: the latest uploaded)")
    e.add_argument("--max-test", type=non_negative_int, default=0, metavar="N", help="ask at most N held-out records (default 0 = every one)")
    add_alias(e, "--max-questions", "--max-test", "max_test", type=non_negative_int)
    e.add_argument("--batch-size", type=positive_int, default=16, help="questions per Ask (default: %(default)s)")
    e.add_argument("--no-base", action="store_true", help="skip the base-LLM-alone answers (half the cost)")
    add_json_arg(e, "the scores")
    _common(e)
    e.set_defaults(func=_evaluate)

    r = csub.add_parser("receipts", help="list and verify this client's privacy receipts (optionally fetch missing ones)",
                        description="Verify every receipt held (provider signature, hash chain, running spend under basic composition) "
                        "and print the chain. --sync first fetches the client's ledger page by page (GetLedger) and adds missing receipts.",
                        formatter_class=fmt, epilog="example:\n  llamdex client receipts --config client.toml --sync")
    r.add_argument("--sync", action="store_true", help="fetch missing receipts from the provider first")
    add_json_arg(r, "the receipts")
    r.add_argument("--export", type=Path, help="write the DSSE envelopes to this JSON file")
    _common(r)
    r.set_defaults(func=_receipts)

    f = csub.add_parser("forget", help="ask the provider to delete this client's experts (and unshared connectors); signed deletion receipts",
                        description="Signed Forget request: the provider deletes the expert(s), and the connectors of their schema when "
                        "no other client needs them, and returns one signed deletion receipt per expert (nothing is refunded).",
                        formatter_class=fmt, epilog="example:\n  llamdex client forget --config client.toml --all")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--artifact-digest", help="the expert to delete")
    g.add_argument("--all", action="store_true", help="every live expert of this client")
    _common(f)
    f.set_defaults(func=_forget)


def _serve(args: argparse.Namespace) -> int:
    from client_party.service import ClientServer
    from protocol.serving import serve_forever

    server = ClientServer(config_from_args(args)).start()
    print(f"client {server.config.client_id} serving on {server.address} ({'plaintext' if server.config.plaintext else 'mutual TLS'})", flush=True)
    serve_forever(server)
    return 0


def _upload(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from client_party.receipt_store import describe
    from client_party.service import ClientParty

    if not args.artifact.is_dir():   # a path that is not there is a missing file (4), not a failed verification (5)
        raise (NotADirectoryError(20, "Not a directory", str(args.artifact)) if args.artifact.exists()
               else FileNotFoundError(2, "No such file or directory", str(args.artifact)))
    config = config_from_args(args)
    party = ClientParty(replace(config, chunk_bytes=args.chunk_bytes) if args.chunk_bytes is not None else config)
    res = party.upload(args.artifact.resolve(), args.dataset_id, seed=args.seed)
    print(f"uploaded {res.bytes} bytes in {res.seconds:.2f} s ({res.attempts} stream(s)); artifact {res.artifact_digest}")
    print("receipt verified and stored: " + describe(res.receipt))
    return 0


def _customize(args: argparse.Namespace) -> int:
    import grpc

    from protocol.progress import progress_bar as tqdm   # one line per update in a file or pipe

    from client_party.service import ClientParty
    from protocol.wire import JOB_STATE_NAMES

    party = ClientParty(config_from_args(args))
    last = None
    try:
        with tqdm(total=100, desc="customize", unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}") as bar:
            for ev in party.customize(args.artifact_digest, args.preset):
                bar.n = int(round(100 * ev.fraction))
                bar.set_postfix_str(f"{JOB_STATE_NAMES.get(ev.state, '?').lower()}: {ev.stage}", refresh=False)
                bar.refresh()
                last = ev
    except (grpc.RpcError, KeyboardInterrupt) as e:
        if last is None or JOB_STATE_NAMES.get(last.state) in ("SUCCEEDED", "FAILED"):
            raise
        again = (f"`llamdex client customize{' --config ' + str(args.config) if getattr(args, 'config', None) else ''}` follows it again: the "
                 "uploaded expert is kept and no ε is spent (a new `client round` would train and upload another expert)")
        if isinstance(e, KeyboardInterrupt):   # the job is the provider's: it goes on without this watcher
            print(f"connector job {last.job_id} keeps running at the provider ({last.stage}, {100 * last.fraction:.0f} %); {again}",
                  file=sys.stderr)
            raise
        if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            raise
        from protocol.tls import TransportError

        raise TransportError("UNREACHABLE", f"the provider went away during connector job {last.job_id} ({last.stage}, "
                             f"{100 * last.fraction:.0f} %; {e.code().name}): a job cut off is recorded FAILED at the provider's next "
                             f"start; once it is back, {again}") from None
    if last is None or JOB_STATE_NAMES.get(last.state) != "SUCCEEDED":
        print(f"job failed: {last.result.error if last is not None else 'no events'}", file=sys.stderr)
        return 1
    print(f"job {last.job_id}: connectors {'reused' if last.result.connectors_reused else 'trained'} for schema {last.result.schema_digest[:19]}… "
          f"on {last.result.base_model_id} ({last.result.seconds:.0f} s)")
    return 0


def _ask(args: argparse.Namespace) -> int:
    qs = list(args.questions)
    if args.file:
        try:
            text = args.file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"--file {args.file} is not UTF-8 text ({e.reason}); give a text file with one question per line") from None
        qs += [line.strip() for line in text.splitlines() if line.strip()]
    if not qs:
        raise UsageError("give questions as arguments or --file")
    from tqdm.auto import tqdm

    cfg = config_from_args(args)
    answers = []
    with cfg.provider_client(with_store=False) as pc, \
            tqdm(total=len(qs), desc="questions through Ask", unit="q", file=sys.stderr, disable=len(qs) <= args.batch_size) as bar:
        for s in range(0, len(qs), args.batch_size):
            answers += pc.ask(qs[s:s + args.batch_size], artifact_digest=args.artifact_digest, include_base=args.include_base,
                              batch_size=args.batch_size)
            bar.update(min(args.batch_size, len(qs) - s))
    if emit_json(args.json, [{"question": q, "answer": a.answer, "probs": list(a.probs), "expert_probs": list(a.expert_probs),
                              "base_probs": list(a.base_probs)} for q, a in zip(qs, answers)]):
        return 0
    for q, a in zip(qs, answers):
        base = f"  (base LLM alone: {max(a.base_probs):.2f})" if a.base_probs else ""
        print(f"{a.answer} (p={max(a.probs):.2f}){base}  <- {q}")
    return 0


def _receipts(args: argparse.Namespace) -> int:
    from client_party.receipt_store import describe

    cfg = config_from_args(args)
    store = cfg.receipt_store()
    if args.sync:
        with cfg.provider_client() as pc:
            print(f"fetched {store.sync(pc)} missing receipt(s) from the provider")
    chain = store.verify()
    if args.export:
        store.export(args.export)
    if emit_json(args.json, [r.to_dict() for r in chain]):
        return 0
    from protocol.keys import fingerprint

    pinned = fingerprint(store.provider_key)
    if not chain:
        print(f"no receipt yet (pinned provider key {pinned})")
        return 0
    print(f"{len(chain)} receipt(s), chain verified under the pinned provider key {pinned}"
          + ("" if len(store.keys) == 1 else f" and the {len(store.keys) - 1} key(s) it endorsed") + ":")
    for r in chain:
        print("  " + describe(r))
    return 0


def _forget(args: argparse.Namespace) -> int:
    from client_party.receipt_store import describe

    cfg = config_from_args(args)
    with cfg.provider_client() as pc:
        receipts, deleted = pc.forget("" if args.all else args.artifact_digest)
    print("deleted: " + ", ".join(deleted))
    for r in receipts:
        print("deletion receipt verified and stored: " + describe(r))
    return 0


def _hello(args: argparse.Namespace) -> int:
    import time

    import grpc

    cfg = config_from_args(args)
    deadline = time.monotonic() + args.wait
    with cfg.provider_client(with_store=False) as pc:
        call_timeout_s = pc.timeout_s
        while True:
            if args.wait:   # each try ends by the deadline: a peer that accepts and then stays silent would hold one for 20 s or more
                pc.timeout_s = max(1.0, min(call_timeout_s, deadline - time.monotonic()))
            try:
                h = pc.hello()
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                    raise  # one line from the error handler: the status, the reason and what to check
                time.sleep(1.0)
    lim = h.limits
    print(f"provider {h.provider_id} at {cfg.provider_address} ({h.protocol_version}) knows this client as {h.client_id!r}")
    print(f"base model {h.base_model_id}; connectors ready for {len(h.schemas_ready)} schema(s); receipt key {h.provider_key_fingerprint} (the pinned key; the provider proved it holds it)")
    print(f"limits: artifact {lim.max_artifact_bytes} B, chunk {lim.max_chunk_bytes} B, {lim.max_batch_questions} questions/Ask, "
          f"{lim.max_requests_per_second:g} requests/s, signature window ±{lim.signature_max_skew_ms / 1000:g} s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from client_party.service import ClientParty, format_scores

    party = ClientParty(config_from_args(args))
    ev = None
    with tqdm(desc="held-out questions through Ask", unit="q", file=sys.stderr) as bar:
        for asked, total, result in party.evaluate_steps(args.artifact_digest, args.max_test, args.batch_size, include_base=not args.no_base):
            bar.total = total
            bar.update(asked - bar.n)
            ev = result if result is not None else ev
    if emit_json(args.json, ev):
        return 0
    print(f"{ev['n_test']} held-out questions through Ask in {ev['ask_calls']} calls ({ev['ask_seconds']:.1f} s); "
          f"Llamdex agrees with the expert on {ev['agreement_with_expert']:.1%}")
    print(format_scores(ev["dataset_id"], ev["rows"]))
    return 0
