"""`llamdex provider serve` refusing a start: each bad setting is one line with the project's exit status, and a
refused start opens no state (no state folder, no ledger), or leaves the state it found as it was.

Each case was an internal error (exit 70, "Failed to bind to address", a sqlite3 or TypeError) or made a state
folder before the refusal, or, for the flags, was not refused at all."""

from __future__ import annotations

import socket

import pytest

from protocol.keys import generate_keypair
from protocol.tls import make_certs
from simulations.cli import main as cli


@pytest.fixture()
def world(tmp_path):
    generate_keypair(tmp_path / "keys", "provider")
    generate_keypair(tmp_path / "keys", "alice")
    make_certs(tmp_path / "certs", {"provider": ["localhost", "127.0.0.1"]})
    return tmp_path


def config(world, *, listen: str = "127.0.0.1:0", state: str = "state", extra: str = "", tls: dict | None = None) -> str:
    tls = {"ca": "certs/ca.pem", "cert": "certs/provider.pem", "key": "certs/provider.key", **(tls or {})}
    path = world / "provider.toml"
    path.write_text(f'[provider]\nlisten = "{listen}"\nkey = "keys/provider.key"\nstate = "{state}"\npreload = false\n{extra}\n'
                    f'[tls]\nca = "{tls["ca"]}"\ncert = "{tls["cert"]}"\nkey = "{tls["key"]}"\n\n'
                    '[[clients]]\nid = "alice"\npublic_key = "keys/alice.pub"\n')
    return str(path)


def serve(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(["provider", "serve", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("listen", ["host", ":", "[::1", "127.0.0.1:abc", "127.0.0.1:99999", "127.0.0.1:-1", ""])
def test_a_malformed_listen_address_is_refused_before_any_state(world, capsys, listen):
    code, err = serve(["--config", config(world, listen=listen)], capsys)
    assert code == 3 and "[BAD_ADDRESS]" in err and "internal error" not in err, (code, err)
    assert not (world / "state").exists()


def test_a_busy_port_is_refused_in_a_sentence_before_any_state(world, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, err = serve(["--config", config(world, listen=f"127.0.0.1:{port}")], capsys)
    assert code == 3 and "[BAD_ADDRESS]" in err and "in use" in err, (code, err)
    assert not (world / "state").exists()


@pytest.mark.parametrize("case", ["ca is random bytes", "cert is text", "key of another party", "a party's certificate beside the CA"])
def test_bad_tls_files_are_named_not_blamed_on_the_address(world, capsys, case):
    (world / "junk.pem").write_bytes(bytes(range(256)) * 4)
    (world / "notes.pem").write_text("not a certificate\n")
    (world / "ca+leaf.pem").write_bytes((world / "certs" / "ca.pem").read_bytes() + (world / "certs" / "provider.pem").read_bytes())
    generate_keypair(world / "other", "x")
    tls = {"ca is random bytes": {"ca": "junk.pem"}, "cert is text": {"cert": "notes.pem"}, "key of another party": {"key": "other/x.key"},
           "a party's certificate beside the CA": {"ca": "ca+leaf.pem"}}[case]
    code, err = serve(["--config", config(world, tls=tls)], capsys)
    named = next(iter(tls.values()))
    assert code == 3 and named in err and "Failed to bind" not in err and "internal error" not in err, (code, err)
    assert ("[TLS_KEY_MISMATCH]" if case == "key of another party" else "[TLS_FILE_INVALID]") in err
    assert not (world / "state").exists()


@pytest.mark.parametrize("store", ["ledger.db", "state.db"])
def test_a_store_that_is_not_one_is_refused_as_corrupt_and_left_as_it_was(world, capsys, store):
    state = world / "state"
    state.mkdir()
    junk = bytes(range(256)) * 160
    (state / store).write_bytes(junk)
    code, err = serve(["--config", config(world)], capsys)
    assert code == 5 and ("[LEDGER_CORRUPT]" if store == "ledger.db" else "[STORE_CORRUPT]") in err and str(state / store) in err, (code, err)
    assert (state / store).read_bytes() == junk


def test_a_ledger_with_other_tables_of_the_same_names_is_corrupt_not_an_internal_error(world, capsys):
    import sqlite3

    (world / "state").mkdir()
    con = sqlite3.connect(world / "state" / "ledger.db")
    con.executescript("create table entries(x); create table meta(y);")
    con.close()
    code, err = serve(["--config", config(world)], capsys)
    assert code == 5 and "[LEDGER_CORRUPT]" in err, (code, err)


@pytest.mark.parametrize("flags, said", [(["--client", "bob=PUB", "--epsilon-budget", "-1"], "--epsilon-budget must be a positive number"),
                                         (["--client", "bob=PUB", "--epsilon-budget", "nan"], "--epsilon-budget must be a positive number"),
                                         (["--grace", "-5"], "--grace must be a positive number"),
                                         (["--preset", "huge"], "preset 'huge' is not one of"),
                                         (["--client", "alice=PUB"], "a client id is registered twice")])
def test_serve_flags_pass_the_checks_of_the_config_keys_they_override(world, capsys, flags, said):
    flags = [f.replace("PUB", str(world / "keys" / "alice.pub")) for f in flags]
    code, err = serve(["--config", config(world), *flags], capsys)
    assert code == 3 and said in err, (code, err)
    assert not (world / "state").exists()


@pytest.mark.parametrize("extra, said", [('key = ""', "key must be a path"),
                                         ("[limits]\nmax_workers = 0.5", "max_workers must be a whole number"),
                                         ("[limits]\nmax_message_bytes = 2147483648", "max_message_bytes must be at most 2147483647")])
def test_config_values_the_server_cannot_take_are_refused_in_a_sentence(world, capsys, extra, said):
    path = config(world)
    text = open(path).read()
    if extra.startswith("key"):
        text = text.replace('key = "keys/provider.key"', extra)
    else:
        text = text.replace("[tls]", extra + "\n\n[tls]")
    open(path, "w").write(text)
    code, err = serve(["--config", path], capsys)
    assert code == 3 and said in err, (code, err)
    assert not (world / "state").exists()


def test_keygen_refused_for_an_existing_public_key_writes_no_private_key(tmp_path, capsys):
    (tmp_path / "a.pub").write_text("old\n")
    try:
        code = cli.main(["keygen", "--name", "a", "--out", str(tmp_path)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 3 and "[KEY_EXISTS]" in err and "a.pub" in err, (code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pub"]


@pytest.mark.parametrize("folder", ["a.key", "a.pub"])
def test_keygen_force_refuses_a_folder_where_a_key_file_goes_and_writes_nothing(tmp_path, capsys, folder):
    """--force replaces files; a folder in the way was found at the write, named by its temp file (`.a.key.x.tmp`),
    with the private key possibly written already."""
    (tmp_path / folder).mkdir()
    try:
        code = cli.main(["keygen", "--name", "a", "--out", str(tmp_path), "--force"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 4 and f"{tmp_path / folder} is a folder" in err and ".tmp" not in err, (code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder]


def test_a_connector_store_that_is_a_file_is_refused_before_state_or_training(world, capsys):
    """`provider connectors` used to run the frozen passes and fail only at the save; `provider serve` started and
    reported ready."""
    (world / "connfile").write_text("hi\n")
    path = config(world, extra='connectors = "connfile"')
    code, err = serve(["--config", path], capsys)
    assert code == 4 and "connfile" in err and "not a folder" in err, (code, err)
    assert not (world / "state").exists()
    try:
        code = cli.main(["provider", "connectors", "--schema", "titanic", "--quick", "--connectors", str(world / "connfile" / "sub")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 4 and "connfile" in err and "frozen" not in err.lower(), (code, err)


@pytest.mark.parametrize("argv, said", [(["--days", "100000000"], "1 to 36500 days"),
                                        (["--party", "provider=ünïcode.example"], "xn--"),
                                        (["--party", "provider=127.0.0.1:50051"], "without the port"),
                                        (["--party", "provider=host name"], "neither an IP address nor a DNS name"),
                                        (["--party", "ca=localhost"], "certificate authority's own"),
                                        (["--party", "provider=localhost", "--party", "provider=127.0.0.1"], "given twice")])
def test_certs_refuses_a_host_name_or_validity_it_cannot_write_before_writing_anything(tmp_path, capsys, argv, said):
    out = tmp_path / "c"
    try:
        code = cli.main(["certs", "--out", str(out), *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (2, 3) and said in err and "internal error" not in err, (code, err)
    assert not out.exists() or not any(out.iterdir())


def test_a_config_nested_past_the_parser_or_a_folder_as_config_is_refused_in_a_sentence(world, capsys):
    deep = world / "deep.toml"
    deep.write_text("[provider]\nid = " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, err = serve(["--config", str(deep)], capsys)
    assert code == 3 and "nest deeper" in err, (code, err)
    code, err = serve(["--config", str(world)], capsys)
    assert code == 4 and "is a folder" in err, (code, err)


def test_an_audited_receipt_file_nested_past_the_parser_is_a_finding(tmp_path, capsys):
    deep = tmp_path / "r.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    try:
        code = cli.main(["audit", "--receipts", str(deep)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code == 1 and "nests deeper" in out.out + out.err, (code, out)


@pytest.mark.parametrize("alteration", ["DELETE FROM meta", "DROP TRIGGER entries_no_delete"])
def test_an_altered_ledger_is_caught_by_the_audit_and_handled_by_the_provider(tmp_path, alteration):
    """Without its format row the server crashed (TypeError, exit 70) while the audit passed it as a v1 ledger; with a
    dropped guard both went on, and the guard stayed dropped."""
    import sqlite3

    from protocol.keys import generate_private_key
    from protocol.errors import LedgerError
    from provider_party.service.ledger import Ledger
    from simulations.audit import run_audit

    key = generate_private_key()
    path = tmp_path / "ledger.db"
    Ledger(path, signing_key=key).set_budget("alice", "titanic", 4.0)
    con = sqlite3.connect(path)
    con.execute(alteration)
    con.commit()
    con.close()
    report = run_audit(ledger=path, provider_key=key.public_key())
    assert not report.ok
    if alteration.startswith("DELETE"):
        assert any("no format row" in f.detail for f in report.failures)
        with pytest.raises(LedgerError, match="LEDGER_CORRUPT"):
            Ledger(path, signing_key=key)
    else:
        assert any("entries_no_delete" in f.detail for f in report.failures)
        Ledger(path, signing_key=key)            # the provider's own open restores the guard
        assert run_audit(ledger=path, provider_key=key.public_key()).ok


def test_a_second_provider_process_on_the_same_state_folder_is_refused(world, capsys):
    """Both used to start, the second running start-up recovery on the first's live uploads and jobs."""
    import os
    import subprocess
    import sys
    import time

    path = config(world)
    port_file = world / "port"
    first = subprocess.Popen([sys.executable, "-m", "simulations.cli.main", "provider", "serve", "--config", path, "--port-file", str(port_file)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert port_file.exists(), first.stderr.read().decode() if first.poll() is not None else "the first provider did not start"
        second = config(world, listen="127.0.0.1:0")
        code, err = serve(["--config", second], capsys)
        assert code == 3 and "[STATE_IN_USE]" in err and f"pid {first.pid}" in err, (code, err)
    finally:
        first.terminate()
        first.wait(timeout=60)


@pytest.mark.parametrize("where", ["under a file", "a folder", "in a missing folder"])
def test_a_port_file_that_cannot_be_written_is_refused_before_the_server_binds(world, capsys, where):
    """The port file is written once serving; a bad one was found only then (a temp file's name in the message, after
    the state folder was made, and the server had to be torn down)."""
    (world / "plain").write_text("x")
    (world / "taken").mkdir()
    path = {"under a file": world / "plain" / "port", "a folder": world / "taken",
            "in a missing folder": world / "nowhere" / "port"}[where]
    code, err = serve(["--config", config(world), "--port-file", str(path)], capsys)
    named = {"under a file": world / "plain", "a folder": world / "taken", "in a missing folder": world / "nowhere"}[where]
    assert code == 4 and f"{named} " in err and ".tmp" not in err, (code, err)
    assert not (world / "state").exists()


def test_a_state_path_below_a_file_names_the_file_in_the_way(world, capsys):
    """The OS says `plain/state is not a folder`: the message pointed at the folder to be made, not the file."""
    (world / "plain").write_text("x")
    code, err = serve(["--config", config(world, state="plain/state")], capsys)
    assert code == 4 and f"{world / 'plain'} is not a folder" in err, (code, err)
    assert (world / "plain").read_text() == "x"


def test_a_port_another_grpc_server_holds_is_refused_not_shared(world, capsys):
    """gRPC binds with SO_REUSEPORT by default: a second provider on a busy port started and shared it, and the kernel
    split the clients between two processes with two ledgers."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    held = grpc.server(ThreadPoolExecutor(max_workers=1))   # a server as gRPC makes it by default, port sharing on
    port = held.add_insecure_port("127.0.0.1:0")
    held.start()
    try:
        code, err = serve(["--config", config(world, listen=f"127.0.0.1:{port}")], capsys)
    finally:
        held.stop(0)
    assert code == 3 and "[BAD_ADDRESS]" in err and "in use" in err, (code, err)
    assert not (world / "state").exists()


def test_a_registered_clients_certificate_is_refused_as_the_providers(world, capsys):
    """With alice's certificate and key in [tls] (a slip between bundles) the provider started, and alice's Hello
    succeeded: a client checks only that the certificate is its CA's and names the address it dials."""
    make_certs(world / "certs", {"alice": ["127.0.0.1"]})
    code, err = serve(["--config", config(world, tls={"cert": "certs/alice.pem", "key": "certs/alice.key"})], capsys)
    assert code == 3 and "registered client 'alice''s certificate" in err and "provider's bundle" in err, (code, err)
    assert not (world / "state").exists()


@pytest.mark.parametrize("slip", ["readable by others", "a folder"])
def test_a_signing_key_the_provider_cannot_use_is_refused_before_any_state(world, capsys, slip):
    """Only the TLS key was checked before the state: a signing key readable by others, or a folder in its place, was
    refused after `state/provider.lock` had been made."""
    import os

    if slip == "a folder":
        (world / "keys" / "provider.key").unlink()
        (world / "keys" / "provider.key").mkdir()
    else:
        os.chmod(world / "keys" / "provider.key", 0o644)
    code, err = serve(["--config", config(world)], capsys)
    assert code in (3, 4) and "provider.key" in err, (code, err)
    assert not (world / "state").exists()
