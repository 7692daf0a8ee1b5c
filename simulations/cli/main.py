"""Entry point of the `llamdex` command: the parser built from one module per verb, and one error handler.

Global options (`-v/--verbose`, `--debug`, `--log-level`) mean the same thing before or after the
verb; no verb may define them again (building the parser fails if one does).

Exit status, the same for every verb (documented in the README):

    0    success
    1    the command ran and found a failure (an audit discrepancy, a failed job, a failed run)
    2    bad usage: an unknown flag, a missing or conflicting option
    3    invalid input: a schema, a table, a config file, a key, a DP target, a request the local state refuses
    4    a file or folder that was named does not exist or cannot be read
    5    verification failed: a signature, an artifact, a receipt or the ledger does not check out
    6    the other party refused the request (its gRPC status and reason are printed)
    7    the other party could not be reached in time (gRPC UNAVAILABLE or DEADLINE_EXCEEDED)
    70   internal error (a bug): rerun with --debug for the traceback
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM): the command unwinds as on Ctrl-C (servers keep their own drain)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.cli.bench import split_passthrough
from simulations.cli.common import UsageError

# Each module defines `register(subparsers)` and sets `func` on its parser(s).
VERB_MODULES = [
    "simulations.cli.demo",
    "simulations.cli.schema",
    "simulations.cli.client",
    "simulations.cli.provider",
    "simulations.cli.keys",
    "simulations.cli.bench",
    "simulations.cli.attack",
    "simulations.cli.audit",
    "simulations.cli.health",
    "simulations.cli.hosts",
    "simulations.cli.simulate",
]

DESCRIPTION = """\
Llamdex: customize a frozen LLM with a client's privately trained expert model, without the data.

Roles:
  client     the data owner: trains an expert on its table (optionally with DP-SGD) and uploads it
  provider   the LLM service: trains connectors from the public schema, serves questions
Tools:
  demo       the whole pipeline on the embedded defaults (start here)
  schema     draft a public schema from a table (first step for a new table), check a table against one
  bench      accuracy and latency benchmarks written to docs/results/
  keygen     a signing key pair (artifacts and requests of a client, receipts of the provider)
  certs      a small CA and the mutual-TLS certificates of the provider, clients and orchestrator
  attack     privacy attacks on an expert: membership inference, attribute inference, canary audit
  audit      offline verification of artifacts, receipts and the ledger; every ε recomputed twice
  health     a provider's (or client's) liveness or readiness over gRPC health, from any host
  hosts      two hosts: key, certificate and config bundles; check a host's setup
  simulate   many clients, one base LLM: the Flower app (simulation or deployment engine)
"""

EPILOG = """\
examples:
  llamdex demo                                   # the main job, two processes over mutual TLS
  llamdex schema draft loans.csv --label Status  # the first step for a new table
  llamdex -v client hello --config client.toml   # any verb, with debug logs

exit status: 0 success, 1 the command found a failure, 2 bad usage, 3 invalid input, 4 missing file,
5 verification failed, 6 refused by the other party, 7 other party unreachable, 70 internal error
(rerun with --debug), 130 interrupted, 141 standard output's reader went away (| head), 143 terminated (SIGTERM)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID, EXIT_MISSING_FILE = 0, 1, 2, 3, 4
EXIT_VERIFICATION, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERNAL, EXIT_INTERRUPTED = 5, 6, 7, 70, 130
EXIT_TERMINATED = 143   # 128 + SIGTERM, as a shell reports a process the signal ended
EXIT_READER_GONE = 141  # 128 + SIGPIPE: what `cmd | head -1` gives a tool that writes past the reader's exit


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a service manager) raised where the command is, so that it unwinds as on Ctrl-C:
    without it the process died at once and left its child servers running and its temporary key folders behind."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turns SIGTERM into `Terminated` for the command's life, unless someone already handles it (a server installs
    its own drain); only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_term(_signum: int, _frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --- parser --------------------------------------------------------------------------------------------


def _add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options; below the top parser they default to SUPPRESS, so a verb never resets them."""
    keep = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("global options (before or after the verb)")
    g.add_argument("-v", "--verbose", action="store_true", help="log debug messages (same as --log-level debug)",
                   **({"default": False} if top else keep))
    g.add_argument("--debug", action="store_true", help="on an error, print the traceback too", **({"default": False} if top else keep))
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="what to log on standard error (default: warning; "
                   "`provider serve`: info, one line per event). `info` adds one line per accepted upload (bytes, artifact, receipt, "
                   "finalize wall and CPU time) and the servers' start-up lines", **({"default": None} if top else keep))


def subparsers_of(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-verbs of `p` by name (aliases dropped)."""
    out: dict[str, argparse.ArgumentParser] = {}
    seen: set[int] = set()
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out[name] = sub
    return out


def walk(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (path, parser) of the tree below `p`, `p` itself first."""
    yield path, p
    for name, sub in subparsers_of(p).items():
        yield from walk(sub, path + (name,))


def _example_lines(epilog: str | None) -> list[str]:
    return [ln for ln in (epilog or "").splitlines() if ln.strip().startswith("llamdex ")]


def _fill_group_examples(p: argparse.ArgumentParser) -> None:
    """A verb group without examples of its own shows the first example of each of its sub-verbs."""
    subs = subparsers_of(p)
    for sub in subs.values():
        _fill_group_examples(sub)
    if subs and not _example_lines(p.epilog):
        lines = [ex[0] for ex in (_example_lines(s.epilog) for s in subs.values()) if ex]
        if lines:
            p.epilog = ((p.epilog or "").rstrip() + "\n\n" if p.epilog else "") + "examples:\n" + "\n".join(lines)
            p.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamdex", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    for path, p in walk(parser):
        if path:
            _add_global_options(p, top=False)  # raises argparse.ArgumentError if a verb defined -v, --debug or --log-level
    _fill_group_examples(parser)
    return parser


# --- errors --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorReport:
    """What the handler prints for an exception: one line, and the exit status."""

    exit_code: int
    line: str


VERIFICATION_ERRORS = ("SignatureError", "ArtifactError", "ReceiptError", "LedgerError")
# Codes raised locally whose kind is not "invalid input": the peer cannot be reached, a file the user named is missing
CODE_EXITS = {"UNREACHABLE": EXIT_UNREACHABLE, "NOT_TLS": EXIT_UNREACHABLE, "TLS_FILES_MISSING": EXIT_MISSING_FILE, "KEY_NOT_FOUND": EXIT_MISSING_FILE}
GRPC_HINTS = {
    "UNAVAILABLE": "check that the server is running at that address and that both sides trust the same CA (mutual TLS)",
    "DEADLINE_EXCEEDED": "the call took longer than its deadline; retry, or check the server's load and log",
    "UNAUTHENTICATED": "check that this party's signing key and certificate are the ones registered at the other side",
    "PERMISSION_DENIED": "check that this party is registered (provider [[clients]] or client allowed_callers) under this certificate's name",
    "RESOURCE_EXHAUSTED": "a limit or a privacy budget was reached; `llamdex client hello` shows the limits, `llamdex client receipts` the spend",
    "NOT_FOUND": "check the digest or id; `llamdex client receipts` lists what this client uploaded",
    "FAILED_PRECONDITION": "do the step the message names first (e.g. upload, then customize, then ask)",
    "INVALID_ARGUMENT": "fix the request as the message says",
    "INTERNAL": "the other side failed; its log has the details",
}


def one_line(text: str, limit: int = 600) -> str:
    """Joins a message's lines into one, shortened to `limit` characters."""
    line = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _data_error_line(e: Exception) -> str:
    """Counts and kinds per column, never a cell value: the line lands in terminals, service logs and CI output.
    `llamdex schema check`, the owner's own tool, names each row and value."""
    problems = list(getattr(e, "problems", []) or [])
    head = str(e).splitlines()[0].rstrip(":")
    kinds = f": {e.kinds()}" if problems else ""
    check = "`llamdex schema check TABLE` lists each row and value"
    if any(getattr(p, "row", 0) is None for p in problems):   # a whole column: no record policy helps
        return f"{head}{kinds}; a column the schema names is not in the table: check that the schema is this table's ({check})"
    if "no valid record left" in head:                        # --on-invalid drop or clip was given, and nothing survived it
        return f"{head}{kinds}; every record violates the schema: check that the schema is this table's ({check})"
    return f"{head}{kinds}; fix the table or the schema ({check}), or pass --on-invalid drop or clip"


def describe_error(e: BaseException) -> ErrorReport:
    """Classifies an exception into its exit status and a one-line message naming what is wrong and what to do."""
    import grpc

    from protocol.errors import BudgetError, CodedError, DataValidationError, LlamdexError, SchemaError, SpecError

    if isinstance(e, Terminated):
        return ErrorReport(EXIT_TERMINATED, "terminated (SIGTERM); what the command started was stopped as on Ctrl-C")
    if isinstance(e, KeyboardInterrupt):
        return ErrorReport(EXIT_INTERRUPTED, "interrupted")
    if isinstance(e, (UsageError, argparse.ArgumentTypeError, argparse.ArgumentError)):
        return ErrorReport(EXIT_USAGE, f"{one_line(str(e))} (see --help)")
    if isinstance(e, SystemExit):  # `raise SystemExit("message")` in a verb
        return ErrorReport(EXIT_USAGE, f"{one_line(str(e.code))} (see --help)")
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        from protocol.rpc_errors import error_code

        status = e.code().name if e.code() is not None else "UNKNOWN"
        coded = error_code(e)
        exit_code = EXIT_UNREACHABLE if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else EXIT_REFUSED
        what = "could not reach the other party" if exit_code == EXIT_UNREACHABLE else "the other party refused the call"
        detail = one_line(e.details() or "")
        hint = GRPC_HINTS.get(status, "see the message")
        return ErrorReport(exit_code, f"{what}: {status}{f' [{coded}]' if coded and f'[{coded}]' not in detail else ''}: {detail} — {hint}")
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        if isinstance(e, NotADirectoryError) and e.filename is not None:
            e.filename = _file_in_the_way(Path(e.filename))
        if e.filename is not None:
            what = {FileNotFoundError: "does not exist", NotADirectoryError: "is not a folder", IsADirectoryError: "is a folder, not a file",
                    PermissionError: "cannot be read or written (permission denied)"}.get(type(e), e.strerror or "cannot be opened")
            return ErrorReport(EXIT_MISSING_FILE, f"{e.filename} {what}; check the path (paths in a config file are relative to its folder)")
        return ErrorReport(EXIT_MISSING_FILE, one_line(str(e)))
    if isinstance(e, DataValidationError):
        return ErrorReport(EXIT_INVALID, one_line(_data_error_line(e)))
    if isinstance(e, CodedError):
        if e.code in CODE_EXITS:   # the same kinds as the gRPC statuses and the OSErrors above
            return ErrorReport(CODE_EXITS[e.code], one_line(str(e)))
        family = {c.__name__ for c in type(e).__mro__}
        if family & set(VERIFICATION_ERRORS):
            return ErrorReport(EXIT_VERIFICATION, f"verification failed: {one_line(str(e))} — do not use it; `llamdex audit` gives the full report")
        return ErrorReport(EXIT_INVALID, one_line(str(e)))
    if isinstance(e, SchemaError):
        hint = "" if "llamdex schema" in str(e) else " — fix the schema (check it with `llamdex schema check`)"
        return ErrorReport(EXIT_INVALID, f"{one_line(str(e))}{hint}")
    if isinstance(e, (SpecError, BudgetError, LlamdexError)):
        return ErrorReport(EXIT_INVALID, one_line(str(e)))
    if isinstance(e, UnicodeDecodeError):   # a file read as text that is not (the reader names it where it can)
        return ErrorReport(EXIT_INVALID, f"a file given as text is not UTF-8 ({e.reason} at byte {e.start}); check the file you named")
    if isinstance(e, OSError) and getattr(e, "filename", None):
        return ErrorReport(EXIT_MISSING_FILE, f"{e.filename}: {e.strerror or e}")
    return ErrorReport(EXIT_INTERNAL, f"internal error: {type(e).__name__}: {one_line(str(e), 300)} — rerun with --debug for the traceback "
                                      "and report it")


def _file_in_the_way(path: Path) -> Path:
    """The file that stands where a folder of `path` should be: the OS names the whole path (`file/sub is not a
    folder`), which points at the wrong part of it."""
    for part in (path, *path.parents):
        if part.exists():
            return part if not part.is_dir() else path
    return path


ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("client_party", "protocol", "provider_party", "simulations")


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line: str | None = None) -> None:
    """The project's own warnings (records dropped under --on-invalid, ...) as one line a user reads, like its errors;
    a library's warnings keep Python's form, whose file and line make a useful bug report upstream."""
    out = file if file is not None else sys.stderr
    try:
        parts = Path(filename).resolve().relative_to(ROOT).parts
    except ValueError:
        parts = ()
    if parts and parts[0] in OWN_PACKAGES:
        out.write(f"llamdex: warning: {message}\n")
    else:
        out.write(warnings.formatwarning(message, category, filename, lineno, line))


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe nobody reads any more (poll reports an error on its write end); if so it is
    pointed at /dev/null, so the interpreter's last flush at exit does not raise the same error again."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no real file descriptor (a test's capture): not a pipe of ours
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


GRPC_VERBOSITY_VAR = "GRPC_VERBOSITY"


def _quiet_grpc_core(args: argparse.Namespace) -> None:
    """gRPC's C core writes its own lines to stderr ("I1204 … ssl_transport_security.cc … Handshake failed"),
    which only repeat, less clearly, the one line this CLI prints for the same failure (`protocol.tls_diagnosis`).
    They are shown with -v, --debug or --log-level info/debug, by the two servers (`provider serve`, `client serve`:
    a refused handshake leaves no other trace there), and a GRPC_VERBOSITY the user set is kept. gRPC reads the
    variable when it is first imported, which the verbs do after this."""
    if GRPC_VERBOSITY_VAR in os.environ or getattr(args, "grpc_core_logs", False):
        return
    chatty = args.verbose or args.debug or (args.log_level or "warning").lower() in ("info", "debug")
    os.environ[GRPC_VERBOSITY_VAR] = "INFO" if chatty else "ERROR"


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():      # restored on return, for callers that run main() in their own process (tests)
        warnings.showwarning = show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv, passthrough = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if passthrough is not None:
        args.rest = passthrough
    logging.basicConfig(level=logging.DEBUG if args.verbose else getattr(logging, (args.log_level or "warning").upper()), format="%(levelname)s %(name)s: %(message)s")
    _quiet_grpc_core(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        with _sigterm_unwinds():
            return int(args.func(args) or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            raise
        error: BaseException = e
    except BrokenPipeError as e:
        if _stdout_reader_gone():   # `llamdex ... | head -1`: the reader has what it wanted; not an error of ours
            return EXIT_READER_GONE
        error = e
    except BaseException as e:  # noqa: BLE001 - the one place that turns every error into a sentence
        error = e
    report = describe_error(error)
    if args.debug and report.exit_code not in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        traceback.print_exception(error)
    print(f"llamdex: error: {report.line}", file=sys.stderr)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
