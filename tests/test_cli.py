"""The `llamdex` command as a user meets it: every verb's help with an example, global options that mean one thing
before or after the verb, one name per concept, old names that still work, and errors as one sentence with a
documented exit status (a traceback only under --debug)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types

import pytest

from simulations.cli import main as cli
from simulations.cli.main import build_parser, describe_error, walk

TREE = list(walk(build_parser()))
VERB_PATHS = [path for path, _ in TREE]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: --help and usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_tree_has_every_verb():
    for path in [("demo",), ("schema", "draft"), ("schema", "check"), ("client", "train"), ("client", "upload"), ("client", "evaluate"),
                 ("provider", "serve"), ("provider", "connectors"), ("bench", "accuracy"), ("bench", "inference"), ("bench", "protocol"),
                 ("keygen",), ("certs",), ("audit",), ("attack", "mia")]:
        assert path in VERB_PATHS, path


def test_the_overview_names_every_verb():
    """`llamdex --help` opens with a line per verb; a verb added without one is found only by reading the list below it."""
    from simulations.cli.main import DESCRIPTION

    listed = {line.split()[0] for line in DESCRIPTION.splitlines() if line.startswith("  ")}
    assert listed == {path[0] for path in VERB_PATHS if len(path) == 1}


@pytest.mark.parametrize("path", VERB_PATHS, ids=lambda p: " ".join(p) or "llamdex")
def test_every_verb_and_sub_verb_has_help_with_an_example(path, capsys):
    code, out, _ = run_main([*path, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: llamdex")
    assert "example" in out and "  llamdex " in out.split("example", 1)[1], f"`llamdex {' '.join(path)} --help` shows no example"
    assert "-v, --verbose" in out


def test_the_installed_entry_point_answers_help():
    r = subprocess.run([sys.executable, "-m", "simulations.cli.main", "client", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: llamdex client train" in r.stdout and "--data NAME|FILE" in r.stdout


@pytest.mark.parametrize("argv", [["-v", "audit", "--ledger", "x"], ["audit", "-v", "--ledger", "x"], ["audit", "--ledger", "x", "--verbose"]])
def test_verbose_is_one_global_option_before_or_after_the_verb(argv):
    args = build_parser().parse_args(argv)
    assert args.verbose is True and args.show_passing is False and args.debug is False


def test_global_options_keep_their_defaults_when_a_verb_is_given():
    args = build_parser().parse_args(["--debug", "--log-level", "info", "schema", "check", "--data", "titanic"])
    assert (args.verbose, args.debug, args.log_level) == (False, True, "info")
    args = build_parser().parse_args(["client", "hello", "--log-level", "error"])
    assert (args.verbose, args.debug, args.log_level) == (False, False, "error")


def test_a_verb_that_redefines_a_global_option_cannot_be_built(monkeypatch):
    bad = types.ModuleType("bad_verb")

    def register(sub):
        p = sub.add_parser("bad")
        p.add_argument("-v", "--verbose", action="store_true", help="print more of this verb")

    bad.register = register
    monkeypatch.setitem(sys.modules, "bad_verb", bad)
    monkeypatch.setattr(cli, "VERB_MODULES", [*cli.VERB_MODULES, "bad_verb"])
    with pytest.raises(argparse.ArgumentError, match="verbose"):
        build_parser()


# --- one name per concept ------------------------------------------------------------------------------------------

OLD_NAMES = {"--run-dir": "--out", "--results-dir": "--out", "--out-dir": "--out", "--store": "--connectors", "--connector-root": "--connectors",
             "--dataset": "--data", "--datasets": "--data", "--max-questions": "--max-test"}


def visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("path", VERB_PATHS, ids=lambda p: " ".join(p) or "llamdex")
def test_one_name_per_concept(path):
    parser = dict(TREE)[path]
    shown = visible_options(parser)
    assert not shown & set(OLD_NAMES), f"`llamdex {' '.join(path)}` shows {sorted(shown & set(OLD_NAMES))}; use {OLD_NAMES}"
    examples = " ".join(cli._example_lines(parser.epilog)) + " "
    stale = [old for old in OLD_NAMES if f"{old} " in examples]
    assert not stale, f"`llamdex {' '.join(path)} --help` examples use {stale}"
    json_actions = [a for a in parser._actions if "--json" in a.option_strings]
    for a in json_actions:  # --json alone prints JSON, --json FILE writes it
        assert a.nargs == "?" and a.const == "-", f"`llamdex {' '.join(path)} --json` must take an optional FILE"


@pytest.mark.parametrize("path", VERB_PATHS, ids=lambda p: " ".join(p) or "llamdex")
def test_every_option_says_what_it_is_for(path):
    """--help teaches: an option listed without a word (`--seed SEED`) leaves the reader to guess what it seeds."""
    parser = dict(TREE)[path]
    silent = sorted((a.option_strings or [a.dest])[0] for a in parser._actions
                    if a.help is None and not isinstance(a, argparse._SubParsersAction))
    assert not silent, f"`llamdex {' '.join(path)}`: options without a help text: {silent}"


COUNTS = ("--threads", "--batch-size", "--epochs", "--days", "--chunk-bytes", "--max-test")


@pytest.mark.parametrize("path", [path for path, _ in TREE])
def test_counts_and_seeds_refuse_what_cannot_be_one(path):
    """A count (threads, batch size, epochs, days) of 0 or below and a negative seed are usage errors at the flag, not
    an empty run, a crash deep inside a library, or exit 0 with nothing done."""
    from simulations.cli.common import non_negative_int, positive_int

    parser = dict(TREE)[path]
    for a in parser._actions:
        name = (a.option_strings or [a.dest])[0]
        if name in COUNTS and a.help is not argparse.SUPPRESS:
            assert a.type in (positive_int, non_negative_int), f"`llamdex {' '.join(path)} {name}` takes any int ({a.type})"
        if name == "--seed":
            assert a.type is non_negative_int, f"`llamdex {' '.join(path)} --seed` takes any int ({a.type})"


@pytest.mark.parametrize("argv, dest, value", [
    (["demo", "--run-dir", "r"], "out", "r"),
    (["demo", "--dataset", "default"], "data", "default"),
    (["demo", "--max-questions", "7"], "max_test", 7),
    (["client", "train", "--dataset", "titanic", "--out", "o"], "data", "titanic"),
    (["client", "evaluate", "--max-questions", "9"], "max_test", 9),
    (["provider", "connectors", "--schema", "titanic", "--store", "s"], "connectors", "s"),
    (["bench", "accuracy", "--datasets", "titanic,churn", "--results-dir", "d"], "data", "titanic,churn"),
    (["bench", "inference", "--results-dir", "d"], "out", "d"),
    (["attack", "mia", "--connector-root", "c"], "connectors", "c"),
])
def test_old_flag_names_still_work_and_say_the_new_name(argv, dest, value, capsys):
    args = build_parser().parse_args(argv)
    assert str(getattr(args, dest)) == str(value)
    assert "is now --" in capsys.readouterr().err


def test_json_goes_to_stdout_alone_or_to_a_file(tmp_path, capsys):
    from simulations.cli.common import emit_json

    assert emit_json("-", {"a": 1}) is True and capsys.readouterr().out == '{\n  "a": 1\n}\n'
    assert emit_json(tmp_path / "x" / "r.json", {"a": 1}) is False and (tmp_path / "x" / "r.json").read_text() == '{\n  "a": 1\n}\n'
    assert emit_json(None, {"a": 1}) is False and capsys.readouterr().out == ""


# --- errors: one sentence, a documented exit status, a traceback only under --debug ------------------------------------

class FakeRpcError(Exception):
    """Stands in for a grpc.RpcError as the handler receives it (the handler is under test, not gRPC)."""

    def __init__(self, code, details, error_code=None):
        super().__init__(details)
        self._code, self._details, self._md = code, details, ((("llamdex-error-code", error_code),) if error_code else ())

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._md


def _grpc_error(code, details, error_code=None):
    import grpc

    return type("RpcError", (FakeRpcError, grpc.RpcError), {})(code, details, error_code)


def _cases():
    import grpc

    from protocol.errors import (
        ArtifactIntegrityError,
        BudgetError,
        DataValidationError,
        KeyMaterialError,
        LedgerError,
        ReceiptError,
        SchemaError,
        SignatureError,
    )
    from protocol.tls import TransportError
    from protocol.toml_config import ConfigError

    return [
        (cli.UsageError("--ca, --cert and --tls-key go together"), 2, "--ca, --cert and --tls-key"),
        (SystemExit("--party 'x': expected NAME=HOST"), 2, "--party"),
        (SchemaError("schema s.json: column 'age': numeric column needs a finite number 'min'"), 3, "llamdex schema check"),
        (DataValidationError("t.csv violates schema 't': 2 problem(s) in 2 record(s):\n  row 3, column 'age': -4 is outside\n  row 9, ...\nfix",
                             [(3, "age", "-4 is outside")]), 3, "2 problem(s) in 2 record(s): age (invalid: 1); fix the table or the schema"),
        (ConfigError("BAD_CONFIG", "c.toml [tls]: missing key"), 3, "[tls]: missing key"),
        (KeyMaterialError("KEY_PERMISSIONS", "k.key is readable by others; chmod 600 k.key"), 3, "chmod 600"),
        (BudgetError("target_delta 0.5 must be in (0, 1/n)"), 3, "target_delta"),
        (FileNotFoundError(2, "No such file", "runs/x/expert.json"), 4, "runs/x/expert.json does not exist"),
        (PermissionError(13, "Permission denied", "/root/k.key"), 4, "permission denied"),
        (ArtifactIntegrityError("DIGEST_MISMATCH", "expert.safetensors digest differs"), 5, "verification failed: [DIGEST_MISMATCH]"),
        (ReceiptError("CHAIN_BROKEN", "receipt 3 does not follow receipt 2"), 5, "verification failed"),
        (SignatureError("BAD_SIGNATURE", "no signature verifies"), 5, "verification failed"),
        (LedgerError("LEDGER_CORRUPT", "the ledger at s/ledger.db does not verify"), 5, "verification failed: [LEDGER_CORRUPT]"),
        (TransportError("UNREACHABLE", "nothing answers at 10.0.0.2:50051"), 7, "[UNREACHABLE]"),
        (TransportError("TLS_FILES_MISSING", "tls/provider.pem does not exist"), 4, "[TLS_FILES_MISSING]"),
        (TransportError("TLS_PEER_UNTRUSTED", "the provider's certificate is not from your CA"), 3, "[TLS_PEER_UNTRUSTED]"),
        (KeyMaterialError("KEY_NOT_FOUND", "private key keys/alice.key does not exist"), 4, "keys/alice.key does not exist"),
        (UnicodeDecodeError("utf-8", b"\xa9", 0, 1, "invalid start byte"), 3, "is not UTF-8 (invalid start byte at byte 0)"),
        (_grpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "[BUDGET_EXCEEDED] ε 2 over the budget 4 - 3", "BUDGET_EXCEEDED"), 6,
         "the other party refused the call: RESOURCE_EXHAUSTED: [BUDGET_EXCEEDED]"),
        (_grpc_error(grpc.StatusCode.PERMISSION_DENIED, "unregistered", "UNREGISTERED_CLIENT"), 6, "PERMISSION_DENIED [UNREGISTERED_CLIENT]"),
        (_grpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), 7, "could not reach the other party: UNAVAILABLE"),
        (_grpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), 7, "took longer than its deadline"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (ZeroDivisionError("division by zero"), 70, "internal error: ZeroDivisionError: division by zero — rerun with --debug"),
    ]


@pytest.mark.parametrize("case", range(24))
def test_each_kind_of_error_has_its_exit_status_and_one_line(case):
    error, code, text = _cases()[case]
    report = describe_error(error)
    assert report.exit_code == code, report
    assert text in report.line, report.line
    assert "\n" not in report.line


def test_exit_statuses_are_distinct_and_documented():
    from pathlib import Path

    codes = [cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_INVALID, cli.EXIT_MISSING_FILE, cli.EXIT_VERIFICATION, cli.EXIT_REFUSED,
             cli.EXIT_UNREACHABLE, cli.EXIT_INTERNAL, cli.EXIT_INTERRUPTED, cli.EXIT_READER_GONE, cli.EXIT_TERMINATED]
    assert len(set(codes)) == len(codes)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for c in codes:
        assert f"| {c} |" in readme, f"exit status {c} is not in the README's table"


def test_a_missing_table_is_one_line_and_a_traceback_only_under_debug(tmp_path, capsys):
    code, _, err = run_main(["client", "train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")], capsys)
    assert code == 4 and err.count("\n") == 1 and err.startswith("llamdex: error: ") and "none.csv" in err and "Traceback" not in err
    code, _, err = run_main(["--debug", "client", "train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")], capsys)
    assert code == 4 and "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith("llamdex: error: ")


def test_a_table_that_violates_its_schema_is_refused_in_one_line_naming_column_and_kind_not_the_value(tmp_path, capsys):
    csv = tmp_path / "people.csv"
    csv.write_text("sex,age,passengerClass,survived\nfemale,29,1st,yes\nmale,-4,3rd,no\n")
    (tmp_path / "people.csv.schema.json").write_text((__import__("client_party.datasets", fromlist=["x"]).SCHEMA_DIR / "titanic.json").read_text())
    code, _, err = run_main(["client", "train", "--data", str(csv), "--out", str(tmp_path / "o")], capsys)
    assert code == 3 and err.count("\n") == 1
    assert "age (out_of_range: 1)" in err and "--on-invalid drop or clip" in err
    assert "-4" not in err.replace(str(tmp_path), "TABLE")   # the value; pytest's folder (".../pytest-41/...") may hold those characters


def test_every_verb_that_loads_a_table_offers_on_invalid_and_hands_it_to_the_table(tmp_path):
    from simulations.cli.common import table_ref

    takes_data = [path for path, p in TREE if any("--data" in a.option_strings for a in p._actions)]
    offers = [path for path, p in TREE if any("--on-invalid" in a.option_strings for a in p._actions)]
    assert ("demo",) in offers and ("client", "train") in offers and ("simulate",) in offers and ("client", "round") in offers
    assert set(takes_data) - set(offers) == {("schema", "check")}   # it reports the problems; there is nothing to load
    csv = tmp_path / "people.csv"
    csv.write_text("sex,age,passengerClass,survived\nfemale,29,1st,yes\n")
    args = build_parser().parse_args(["demo", "--data", str(csv), "--on-invalid", "clip"])
    assert table_ref(args).on_invalid == "clip"
    assert table_ref(build_parser().parse_args(["demo", "--data", str(csv)])).on_invalid == "reject"


def test_the_projects_warnings_are_one_line_and_a_librarys_keep_their_source_line():
    import io

    from simulations.cli.main import ROOT, show_warning

    out = io.StringIO()
    show_warning(UserWarning("loans.csv: dropped 3 of 40 records"), UserWarning, str(ROOT / "client_party" / "datasets.py"), 258, out)
    assert out.getvalue() == "llamdex: warning: loans.csv: dropped 3 of 40 records\n"
    out = io.StringIO()
    show_warning(UserWarning("Optimal order is the largest alpha."), UserWarning, "/usr/lib/python3/site-packages/opacus/rdp.py", 332, out)
    assert out.getvalue().startswith("/usr/lib/python3/site-packages/opacus/rdp.py:332: UserWarning: Optimal order")


def test_records_dropped_under_on_invalid_are_counted_in_one_warning_line(tmp_path, capsys):
    csv = tmp_path / "people.csv"
    rows = "".join(f"{'female' if i % 2 else 'male'},{20 + i % 40},{('1st', '2nd', '3rd')[i % 3]},{'yes' if i % 3 else 'no'}\n" for i in range(60))
    csv.write_text("sex,age,passengerClass,survived\n" + rows + "male,-4,3rd,no\n")
    (tmp_path / "people.csv.schema.json").write_text((__import__("client_party.datasets", fromlist=["x"]).SCHEMA_DIR / "titanic.json").read_text())
    code, _, err = run_main(["client", "train", "--data", str(csv), "--on-invalid", "drop", "--epochs", "1", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert f"llamdex: warning: {csv}: dropped 1 of 61 records that violate schema 'titanic' (age/out_of_range: 1)" in err


def _small_table(tmp_path):
    csv = tmp_path / "people.csv"
    rows = "".join(f"{'female' if i % 2 else 'male'},{20 + i % 40},{('1st', '2nd', '3rd')[i % 3]},{'yes' if i % 3 else 'no'}\n" for i in range(60))
    csv.write_text("sex,age,passengerClass,survived\n" + rows)
    (tmp_path / "people.csv.schema.json").write_text((__import__("client_party.datasets", fromlist=["x"]).SCHEMA_DIR / "titanic.json").read_text())
    return csv


@pytest.mark.parametrize("case", ["empty csv", "latin-1 csv", "text as parquet", "folder as table", "header only", "one-class label",
                                  "binary schema", "huge number in schema", "binary questions", "binary receipts", "too few records",
                                  "repeated header"])
def test_files_that_are_not_what_their_name_says_are_refused_in_a_sentence(case, tmp_path, capsys):
    """Each of these was an internal error (exit 70, "report it") with a library's exception; each is the user's input."""
    import json

    from client_party.datasets import SCHEMA_DIR

    schema = tmp_path / "s.json"
    schema.write_text((SCHEMA_DIR / "titanic.json").read_text())
    files = {"empty csv": ("t.csv", b""), "latin-1 csv": ("t.csv", b"sex,age\n\xe9,1\n"), "text as parquet": ("t.parquet", b"hello"),
             "header only": ("t.csv", b"a,b,label\n"), "one-class label": ("t.csv", b"a,label\n1,x\n2,x\n"), "binary schema": ("b.json", b"\xa9\xff\x00"),
             "binary questions": ("q.txt", b"\xa9\xff"), "binary receipts": ("r.json", b"\xa9\xff"),
             "too few records": ("t.csv", b"sex,age,passengerClass,survived\nfemale,29,1st,yes\nmale,40,3rd,no\n"),
             "repeated header": ("t.csv", b"sex,age,passengerClass,age,survived\n" + b"female,29,1st,30,yes\nmale,40,3rd,41,no\n" * 40)}
    if case in files:
        name, data = files[case]
        (tmp_path / name).write_bytes(data)
    big = json.loads(schema.read_text())
    big["columns"][1]["max"] = 10 ** 400
    (tmp_path / "big.json").write_text(json.dumps(big))
    (tmp_path / "dir.csv").mkdir()
    t, out = str(tmp_path / files.get(case, ("t.csv",))[0]), str(tmp_path / "o")
    argv, status, said = {
        "empty csv": (["schema", "draft", t, "--label", "survived", "--out", out], 3, "is empty"),
        "latin-1 csv": (["client", "train", "--data", t, "--schema", str(schema), "--out", out], 3, "is not UTF-8 text"),
        "text as parquet": (["client", "train", "--data", t, "--schema", str(schema), "--out", out], 3, "cannot be read as Parquet"),
        "folder as table": (["schema", "draft", str(tmp_path / "dir.csv"), "--label", "survived", "--out", out], 4, "dir.csv"),
        "header only": (["schema", "draft", t, "--label", "label", "--out", out], 3, "no usable feature column"),
        "one-class label": (["schema", "draft", t, "--label", "label", "--out", out], 3, "at least 2 classes"),
        "binary schema": (["schema", "check", "--data", "titanic", "--schema", t], 3, "is not UTF-8 text"),
        "huge number in schema": (["schema", "check", "--data", "titanic", "--schema", str(tmp_path / "big.json")], 3, "too large"),
        "binary questions": (["client", "ask", "--file", t, "--provider", "127.0.0.1:1", "--plaintext", "--id", "alice",
                              "--workspace", str(tmp_path / "ws")], 2, "is not UTF-8 text"),
        "binary receipts": (["audit", "--receipts", t], 1, ""),
        "too few records": (["client", "train", "--data", t, "--schema", str(schema), "--out", out], 3, "too small"),
        "repeated header": (["client", "train", "--data", t, "--schema", str(schema), "--out", out], 3, "'age' in columns 2, 4"),
    }[case]
    code, _, err = run_main(argv, capsys)
    assert code == status and said in err and "internal error" not in err, (code, err)


def test_client_train_refuses_a_bad_out_or_key_before_training_and_leaves_nothing(tmp_path, capsys):
    """Each refusal comes before the first epoch (a key that cannot sign used to be found after the training, with an
    unsigned artifact left behind), and a refused command writes nothing."""
    import os

    from protocol.keys import generate_keypair

    csv = _small_table(tmp_path)
    train = ["client", "train", "--data", str(csv), "--epochs", "1"]
    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("mine")
    _, pub, _ = generate_keypair(tmp_path / "keys", "alice")
    loose = tmp_path / "keys" / "loose.key"
    loose.write_bytes((tmp_path / "keys" / "alice.key").read_bytes())
    os.chmod(loose, 0o644)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for argv, status, said in ((["--out", str(held)], 2, "already holds ['notes.txt']"), (["--out", ""], 2, "a folder of its own"),
                               (["--out", str(csv)], 2, "is a file"), (["--out", str(tmp_path / "a"), "--key", str(pub)], 3, ""),
                               (["--out", str(tmp_path / "a"), "--delta", "1e-5"], 2, "give it with --epsilon"),
                               (["--out", str(tmp_path / "a"), "--key", str(loose)], 3, "chmod 600"),
                               (["--out", str(tmp_path / "a"), "--key", str(tmp_path / "nope.key")], 4, "nope.key")):
        code, _, err = run_main(train + argv, capsys)
        assert code == status and said in err and "epoch" not in err.lower(), (argv, code, err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_client_train_replaces_an_artifact_only_with_force_and_the_result_verifies(tmp_path, capsys):
    from protocol.artifact import ArtifactVerifier
    from protocol.keys import generate_keypair

    csv = _small_table(tmp_path)
    key, _, priv = generate_keypair(tmp_path / "keys", "alice")
    art = tmp_path / "art"
    base = ["client", "train", "--data", str(csv), "--epochs", "1", "--key", str(key), "--out", str(art)]
    assert run_main(base, capsys)[0] == 0
    first = ArtifactVerifier([priv.public_key()]).verify(art).digest
    assert run_main(base + ["--seed", "1"], capsys)[0] == 2                      # the signed artifact is kept as it was
    assert ArtifactVerifier([priv.public_key()]).verify(art).digest == first
    assert run_main(base + ["--seed", "1", "--force"], capsys)[0] == 0
    assert ArtifactVerifier([priv.public_key()]).verify(art).digest != first   # a whole new artifact, signed
    assert not list(tmp_path.glob(".partial-*"))


def test_an_unreachable_provider_is_exit_7_with_what_to_check(tmp_path, capsys):
    """A real gRPC call to a port where nothing listens."""
    from protocol.keys import generate_keypair
    from simulations.two_party_demo import free_port

    generate_keypair(tmp_path, "alice")
    generate_keypair(tmp_path, "provider")
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'[client]\nid = "alice"\nkey = "alice.key"\n[provider]\naddress = "127.0.0.1:{free_port()}"\n'
                   'public_key = "provider.pub"\n[tls]\nplaintext = true\n')
    code, _, err = run_main(["client", "hello", "--config", str(cfg)], capsys)
    assert code == 7 and err.count("\n") == 1
    assert "could not reach the other party: UNAVAILABLE" in err and "check that the server is running" in err


def test_a_table_file_without_a_schema_points_to_schema_draft_before_anything_starts(tmp_path, capsys):
    csv = tmp_path / "loans.csv"
    csv.write_text("a,b\n1,2\n")
    code, _, err = run_main(["demo", "--data", str(csv), "--out", str(tmp_path / "run")], capsys)
    assert code == 3 and "no schema for" in err and "llamdex schema draft" in err
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_schema_goes_with_exactly_one_table(tmp_path, capsys):
    code, _, err = run_main(["bench", "accuracy", "--data", "titanic,churn", "--schema", "s.json", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--schema goes with exactly one --data file" in err
    assert not (tmp_path / "accuracy.json").exists()


@pytest.mark.parametrize("argv, rest", [
    (["bench", "compare", "--threads", "2", "--seeds", "0"], ["--threads", "2", "--seeds", "0"]),
    (["bench", "compare", "--", "--threads", "2"], ["--threads", "2"]),
    (["--debug", "bench", "privacy", "--seats", "query"], ["--seats", "query"]),
    (["bench", "protocol"], []),
])
def test_pass_through_benchmarks_take_their_options_with_or_without_the_separator(argv, rest, monkeypatch):
    """The commands the benchmarks record (`llamdex bench compare --threads 2 ...`) must run as written."""
    from simulations.cli import bench

    seen = []
    real = bench.importlib.import_module

    def fake_benchmark(name):  # a fake of the benchmark (not under test): records the options it was given
        if name not in {bench.BENCHMARKS[b][0] for b in bench.PASSTHROUGH}:
            return real(name)
        return types.SimpleNamespace(main=lambda a: seen.append((name, a)) or 0)

    monkeypatch.setattr(bench.importlib, "import_module", fake_benchmark)
    assert cli.main(argv) == 0
    assert seen and seen[0][1] == rest


def test_help_of_a_pass_through_benchmark_stays_with_llamdex(capsys):
    code, out, _ = run_main(["bench", "compare", "--help"], capsys)
    assert code == 0 and out.startswith("usage: llamdex bench compare") and "-- --help" in out


@pytest.mark.parametrize("argv", [["keygen", "--name", "../evil"], ["keygen", "--name", ""], ["keygen", "--name", "a/b"],
                                  ["certs", "--party", "../x=localhost"], ["certs", "--party", "p="]])
def test_names_that_become_file_names_cannot_leave_the_output_folder(argv, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(argv + ["--out", str(out)], capsys)
    assert code == 2 and ("--name" in err or "--party" in err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_missing_artifact_or_tls_file_is_a_missing_file_and_a_refused_upload_records_nothing(tmp_path, capsys):
    from protocol.keys import generate_keypair

    key, _, _ = generate_keypair(tmp_path / "keys", "alice")
    ws = tmp_path / "ws"
    code, _, err = run_main(["client", "upload", "--artifact", str(tmp_path / "nope"), "--dataset-id", "titanic", "--id", "alice", "--key", str(key),
                             "--workspace", str(ws), "--provider", "127.0.0.1:1", "--plaintext"], capsys)
    assert code == 4 and "nope does not exist" in err, err
    code, _, err = run_main(["health", "127.0.0.1:1", "--live"], capsys)          # no TLS files given: the caller's, not "no answer"
    assert code == 4 and "TLS_FILES_MISSING" in err, err
    code, _, err = run_main(["health", "127.0.0.1:1", "--live", "--plaintext", "--timeout", "1"], capsys)
    assert code == 7, err

    from protocol.tls import make_certs

    a, b = make_certs(tmp_path / "ca-a", {"alice": ["localhost"]})["alice"], make_certs(tmp_path / "ca-b", {"alice": ["localhost"]})["alice"]
    code, _, err = run_main(["health", "127.0.0.1:1", "--live", "--ca", str(a.ca), "--cert", str(a.cert), "--tls-key", str(b.key),
                             "--timeout", "1"], capsys)                   # this host's own files disagree: invalid input, not "no answer"
    assert code == 3 and "TLS_KEY_MISMATCH" in err, (code, err)


def test_the_advice_fits_the_problem_a_table_has(tmp_path, capsys):
    """--on-invalid drop or clip is offered only where a record policy helps: not for a table without records, nor for
    a schema whose columns the table lacks (another table's schema); a schema saved with a byte-order mark is read."""
    from client_party.datasets import SCHEMA_DIR

    schema = tmp_path / "s.json"
    schema.write_bytes(b"\xef\xbb\xbf" + (SCHEMA_DIR / "titanic.json").read_bytes())
    header = tmp_path / "h.csv"
    header.write_text("sex,age,passengerClass,survived\n")
    code, out, _ = run_main(["schema", "check", "--data", str(header), "--schema", str(schema)], capsys)
    assert code == 3 and "no records" in out and "--on-invalid" not in out
    code, _, err = run_main(["client", "train", "--data", str(header), "--schema", str(schema), "--out", str(tmp_path / "o")], capsys)
    assert code == 3 and "no records" in err and "--on-invalid" not in err
    code, _, err = run_main(["client", "train", "--data", "titanic", "--schema", str(SCHEMA_DIR / "credit.json"), "--on-invalid", "drop",
                             "--out", str(tmp_path / "o")], capsys)
    assert code == 3 and "check that the schema is this table's" in err and "pass --on-invalid" not in err, err


def test_a_dataset_id_the_provider_would_refuse_is_refused_before_anything_is_recorded(tmp_path, capsys):
    from protocol.keys import generate_keypair

    key, _, _ = generate_keypair(tmp_path / "keys", "alice")
    _, provider_pub, _ = generate_keypair(tmp_path / "keys", "provider")
    art = tmp_path / "art"
    csv = _small_table(tmp_path)
    assert run_main(["client", "train", "--data", str(csv), "--epochs", "1", "--key", str(key), "--out", str(art)], capsys)[0] == 0
    ws = tmp_path / "ws"
    code, _, err = run_main(["client", "upload", "--artifact", str(art), "--dataset-id", "../x y", "--id", "alice", "--key", str(key),
                             "--workspace", str(ws), "--provider", "127.0.0.1:1", "--plaintext", "--provider-key", str(provider_pub)], capsys)
    assert code == 3 and "[BAD_REQUEST] dataset_id '../x y'" in err, err
    index = ws / "artifacts.json"
    assert not index.exists() or "../x y" not in index.read_text()


def test_a_client_command_refused_for_its_configuration_makes_no_workspace(tmp_path, capsys):
    """`client upload` without the provider's key used to leave an empty workspace (artifacts/, jobs/) behind."""
    from protocol.keys import generate_keypair

    generate_keypair(tmp_path / "keys", "alice")
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    ws = tmp_path / "ws"
    code, _, err = run_main(["client", "upload", "--dataset-id", "titanic", "--artifact", str(artifact), "--provider", "127.0.0.1:1",
                             "--plaintext", "--id", "alice", "--key", str(tmp_path / "keys" / "alice.key"), "--workspace", str(ws)], capsys)
    assert code == 3 and "provider's public key is not configured" in err, (code, err)
    assert not ws.exists()
