"""Errors an operator can act on: each refusal between two hosts is one line that names the flag or the
file to fix (messages from protocol/operator_errors.py). Real servers on loopback with mutual TLS; the
"other host" of the plaintext cases is an address nothing is dialed at (the refusal comes first)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from client_party.provider_client import ProviderClient
from protocol import operator_errors
from protocol.artifact import pack_artifact
from protocol.keys import generate_private_key, load_private_key, save_private_key
from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.rpc_errors import STATUS_BY_CODE, error_code
from protocol.tls import TLSFiles, TransportError, make_certs
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config

OTHER_HOST = "10.77.0.1:50051"
SIGNING_KEY_FLAG = re.compile(r"(?<![\w-])--key\b")     # the signing key's flag, which a TLS message must not name


def one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("operator-errors")
    p = make_parties(root)
    server = ProviderServer(provider_config(p, preload=False)).start()
    yield p, server, root
    server.stop(0)


def _cert_valid(root: Path, ca: Path, ca_key: Path, name: str, *, days: tuple[int, int] = (-10, -1)) -> TLSFiles:
    """A certificate of the CA valid from `days[0]` to `days[1]` days from now: by default one that expired yesterday
    (issue_cert never makes one); (1, 30) is one whose validity starts tomorrow, as a CA whose clock runs ahead makes."""
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    key, now = generate_private_key(), dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(load_private_key(ca_key), hashes.SHA256()))
    folder = root / f"window{days[0]}{days[1]}-{name}"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    save_private_key(key, folder / f"{name}.key", overwrite=True)
    return TLSFiles(ca, folder / f"{name}.pem", folder / f"{name}.key")


def _hello_to_a_provider_with(p, tls: TLSFiles, state: Path) -> TransportError:
    """Alice's refused Hello to a provider that serves with `tls` (its own state folder)."""
    server = ProviderServer(provider_config(p, preload=False, tls=tls, state=state)).start()
    try:
        return _hello_refused(p, server.address, p.tls["alice"])
    finally:
        server.stop(0)


def _hello_refused(p, address: str, tls: TLSFiles, **kw) -> TransportError:
    with ProviderClient(address, "alice", p.keys["alice"], tls=tls, provider_public_key=p.pubs["provider"], timeout_s=10, **kw) as pc:
        with pytest.raises(TransportError) as ei:
            pc.hello()
    return ei.value


# --- plaintext between hosts -----------------------------------------------------------------------------

def test_plaintext_to_another_host_is_refused_in_one_line_naming_the_tls_flags(world):
    p, _, _ = world
    with pytest.raises(TransportError) as ei:
        ProviderClient(OTHER_HOST, "alice", p.keys["alice"], plaintext=True)
    msg = one_line(str(ei.value))
    assert ei.value.code == "PLAINTEXT_NOT_LOOPBACK" and OTHER_HOST in msg
    assert "--plaintext" in msg and "--tls-key" in msg and "--cert" in msg and "--ca" in msg
    assert not SIGNING_KEY_FLAG.search(msg), msg


def test_client_round_and_provider_serve_print_the_plaintext_refusal_as_one_line(world, tmp_path, capsys):
    from simulations.cli.main import main
    from simulations.host_bundles import make_bundles

    b = make_bundles(tmp_path / "bundles", "10.77.0.1", "10.77.0.2", preset="tiny")
    assert main(["client", "round", "--config", str(b.client / "client.toml"), "--plaintext"]) == 3   # invalid input (README)
    err = one_line(capsys.readouterr().err.strip())
    assert err.startswith("round stopped: [PLAINTEXT_NOT_LOOPBACK]") and "--tls-key" in err
    assert main(["provider", "serve", "--config", str(b.provider / "provider.toml"), "--plaintext", "--no-preload"]) == 3
    msg = one_line(capsys.readouterr().err.strip())
    assert "[PLAINTEXT_NOT_LOOPBACK]" in msg and "0.0.0.0:50051" in msg and "--tls-key" in msg


def test_provider_serve_exits_with_the_status_of_what_stopped_it(tmp_path, capsys):
    """A missing certificate is a missing file (4); a ledger edited behind the provider's back is a verification
    failure (5) that names the altered row, not an internal error; both in one line, and the ledger is left as found."""
    import sqlite3

    from provider_party.service.core import ProviderParty
    from provider_party.service.config import load_provider_config
    from simulations.cli.main import main
    from simulations.host_bundles import make_bundles

    b = make_bundles(tmp_path / "bundles", "127.0.0.1", "127.0.0.1", preset="tiny")
    config = b.provider / "provider.toml"
    ProviderParty(load_provider_config(config)).close()          # the first start makes the state and its ledger
    ledger = next(b.provider.rglob("ledger.db"))
    clean = ledger.read_bytes()
    con = sqlite3.connect(ledger, isolation_level=None)            # a budget no signed chain event explains
    con.execute("INSERT INTO budgets (client_id, dataset_id, epsilon_budget, delta_budget) VALUES ('alice', 'titanic', 100, NULL)")
    con.close()
    altered = ledger.read_bytes()
    assert main(["provider", "serve", "--config", str(config), "--no-preload"]) == 5
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "[LEDGER_CORRUPT]" in err and "no budget event in the chain explains" in err and "llamdex audit" in err, err
    assert ledger.read_bytes() == altered
    ledger.write_bytes(clean)
    (b.provider / "certs" / "provider.pem").unlink()
    assert main(["provider", "serve", "--config", str(config), "--no-preload"]) == 4
    assert "[TLS_FILES_MISSING]" in capsys.readouterr().err


# --- certificates ------------------------------------------------------------------------------------------

def test_a_certificate_the_provider_does_not_trust_is_named_with_the_flags_to_fix(world, tmp_path):
    p, server, _ = world
    other = make_certs(tmp_path / "other-ca", {"alice": ["localhost", "127.0.0.1"]})
    both = tmp_path / "both-cas.pem"     # this client trusts both CAs, so its own files look consistent
    both.write_bytes(Path(p.tls["alice"].ca).read_bytes() + Path(other["alice"].ca).read_bytes())
    err = _hello_refused(p, server.address, TLSFiles(both, other["alice"].cert, other["alice"].key))
    msg = one_line(str(err))
    assert err.code == "TLS_CERT_REFUSED" and str(other["alice"].cert) in msg and "--cert" in msg and "--tls-key" in msg


def test_a_provider_certificate_from_another_ca_is_named_with_the_ca_flag(world, tmp_path):
    p, server, _ = world
    other = make_certs(tmp_path / "other-ca", {"alice": ["localhost"]})
    err = _hello_refused(p, server.address, other["alice"])
    msg = one_line(str(err))
    assert err.code == "TLS_PEER_UNTRUSTED" and str(other["alice"].ca) in msg and "--ca" in msg and "CN=provider" in msg


def test_the_command_line_prints_its_one_line_without_grpc_cores_own_handshake_lines(world, tmp_path):
    """gRPC's C core logs "I… ssl_transport_security.cc … Handshake failed" to stderr; the CLI's line says it better."""
    import os
    import subprocess
    import sys

    p, server, _ = world
    other = make_certs(tmp_path / "other-ca", {"alice": ["localhost"]})
    cmd = [sys.executable, "-m", "simulations.cli.main", "client", "hello", "--id", "alice", "--key", str(p.root / "keys" / "alice.key"),
           "--workspace", str(tmp_path / "ws"), "--provider", server.address, "--provider-key", str(p.pubs["provider"]),
           "--ca", str(other["alice"].ca), "--cert", str(other["alice"].cert), "--tls-key", str(other["alice"].key)]
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 3 and "[TLS_PEER_UNTRUSTED]" in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [next(ln for ln in r.stderr.splitlines() if "TLS_PEER_UNTRUSTED" in ln)], r.stderr
    r = subprocess.run(cmd + ["--log-level", "info"], capture_output=True, text=True, timeout=120, env=env)
    assert "Handshake failed" in r.stderr, r.stderr   # asked for: gRPC's own lines too


def test_dialing_the_provider_by_a_name_its_certificate_lacks_names_the_address_and_server_name_flags(world):
    p, server, _ = world
    err = _hello_refused(p, server.address, p.tls["alice"], server_name="provider.example.org")
    msg = one_line(str(err))
    assert err.code == "TLS_NAME_MISMATCH" and "'provider.example.org'" in msg and "localhost, 127.0.0.1" in msg
    assert "--provider" in msg and "--server-name" in msg


def test_an_expired_certificate_on_either_side_is_named_with_its_date_and_the_fix(world, tmp_path):
    p, server, root = world
    own = _cert_valid(tmp_path, Path(p.tls["alice"].ca), root / "certs" / "ca.key", "alice")
    err = _hello_refused(p, server.address, own)
    msg = one_line(str(err))
    assert err.code == "TLS_OWN_CERT_EXPIRED" and str(own.cert) in msg and "expired on" in msg and "llamdex certs" in msg and "--cert" in msg

    expired_provider = _cert_valid(tmp_path, Path(p.tls["provider"].ca), root / "certs" / "ca.key", "provider")
    msg = one_line(str(err := _hello_to_a_provider_with(p, expired_provider, tmp_path / "state2")))
    assert err.code == "TLS_PEER_CERT_EXPIRED" and "CN=provider" in msg and "expired on" in msg and "re-issues" in msg


def test_a_certificate_not_yet_valid_on_either_side_is_named_as_a_clock_problem(world, tmp_path):
    """A clock behind the CA's: the client's own was refused with TLS_CERT_REFUSED ("use the certificate of your
    bundle"), the provider's named TLS_PEER_UNTRUSTED ("not signed by the CA"), both false."""
    p, server, root = world
    own = _cert_valid(tmp_path, Path(p.tls["alice"].ca), root / "certs" / "ca.key", "alice", days=(1, 30))
    err = _hello_refused(p, server.address, own)
    msg = one_line(str(err))
    assert err.code == "TLS_OWN_CERT_NOT_YET_VALID" and str(own.cert) in msg and "valid only from" in msg and "NTP" in msg

    early = _cert_valid(tmp_path, Path(p.tls["provider"].ca), root / "certs" / "ca.key", "provider", days=(1, 30))
    msg = one_line(str(err := _hello_to_a_provider_with(p, early, tmp_path / "state3")))
    assert err.code == "TLS_PEER_CERT_NOT_YET_VALID" and "CN=provider" in msg and "valid only from" in msg and "clock" in msg


def test_a_certificate_and_a_ca_of_different_bundles_are_named_before_dialing(world, tmp_path):
    p, server, _ = world
    other = make_certs(tmp_path / "other-ca", {"alice": ["localhost"]})
    err = _hello_refused(p, server.address, TLSFiles(p.tls["alice"].ca, other["alice"].cert, other["alice"].key))
    msg = one_line(str(err))
    assert err.code == "TLS_OWN_CERT_NOT_FROM_CA" and str(other["alice"].cert) in msg and str(p.tls["alice"].ca) in msg


# --- identity, clocks, keys -----------------------------------------------------------------------------

def test_an_unknown_client_is_told_what_the_provider_must_add_to_provider_toml(world):
    p, server, _ = world
    with provider_client(p, server.address, "mallory") as mallory, pytest.raises(grpc.RpcError) as ei:
        mallory.hello()
    e = ei.value
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and error_code(e) == "UNREGISTERED_CLIENT"
    msg = one_line(e.details())
    assert "'mallory'" in msg and '[[clients]] id = "mallory"' in msg and "provider.toml" in msg and "--client mallory=" in msg


def test_a_clock_outside_the_replay_window_names_the_skew_the_window_and_ntp(world, tmp_path):
    p, server, _ = world
    tar = pack_artifact(make_artifact(tmp_path / "a", p.keys["alice"], seed=5))
    h = provider_pb2.UploadHeader(upload_id="skewed-clock-upload", dataset_id="titanic", artifact_name="expert", total_bytes=len(tar),
                                  artifact_sha256=hashlib.sha256(tar).hexdigest())
    signed = sign_request(p.keys["alice"], "alice", UPLOAD_METHOD, upload_body(h), timestamp_ms=int((time.time() - 400) * 1000))
    h.auth.CopyFrom(common_pb2.RequestSignature(**signed.to_proto_kwargs()))
    with provider_client(p, server.address) as alice, pytest.raises(grpc.RpcError) as ei:
        alice.stub.UploadExpert(iter([provider_pb2.UploadRequest(header=h)]), timeout=10)
    e = ei.value
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED and error_code(e) == "STALE_REQUEST"
    msg = one_line(e.details())
    assert re.search(r"signed 40\d\.\d s behind the provider's clock", msg), msg
    assert "±300 s" in msg and "signature_max_skew_ms" in msg and "provider.toml" in msg and "NTP" in msg


def test_a_revoked_signing_key_is_named_with_keygen_the_key_flag_and_the_registration():
    """Against a real server in tests/test_security.py (revocation); here the message's parts and its status."""
    revoked = one_line(operator_errors.revoked_key("alice", "sha256:ab12", 1_800_000_000, where="[[clients]] revoked in provider.toml"))
    assert "sha256:ab12" in revoked and "llamdex keygen --name alice" in revoked and "--key" in revoked
    assert '[[clients]] id = "alice"' in revoked and "public_key" in revoked and "revoked on 2027-01-15" in revoked
    assert "revoked on 2026-12-03T10:00:00Z" in operator_errors.revoked_key("alice", "sha256:ab12", "2026-12-03T10:00:00Z")
    assert STATUS_BY_CODE["KEY_REVOKED"] == grpc.StatusCode.PERMISSION_DENIED


def test_hosts_check_names_a_key_readable_by_others_and_the_chmod_that_fixes_it(tmp_path, capsys):
    from simulations.cli.main import main
    from simulations.host_bundles import make_bundles

    b = make_bundles(tmp_path / "bundles", "10.77.0.1", "10.77.0.2", preset="tiny")
    assert main(["hosts", "check", "--config", str(b.client / "client.toml"), "--offline"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    (b.client / "certs" / "alice.key").chmod(0o644)
    (b.client / "keys" / "provider.pub").unlink()
    assert main(["hosts", "check", "--config", str(b.client / "client.toml"), "--offline"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL TLS key ([tls] key) {b.client / 'certs' / 'alice.key'}: mode 0o644; run `chmod 600" in out
    assert "FAIL pinned provider key ([provider] public_key)" in out and "2 check(s) failed" in out


def test_a_port_where_no_tls_server_listens_is_named_as_such(world):
    """An HTTP server on the dialed port was reported as "refused this party's TLS certificate ... use the certificate
    of your bundle"; the certificates were fine."""
    import socket
    import threading

    from protocol.tls_diagnosis import diagnose_connection

    p, _, _ = world
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_like_http() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=answer_like_http, daemon=True)
    t.start()
    try:
        err = diagnose_connection(f"127.0.0.1:{port}", p.tls["alice"], timeout_s=5)
    finally:
        listener.close()
    assert err is not None and err.code == "NOT_TLS" and "does not answer in TLS" in str(err) and "certificate" not in str(err)


def test_a_port_that_accepts_and_stays_silent_is_named_within_the_wait_asked(world, tmp_path, capsys):
    """A program that accepts TCP and never answers the handshake: `client hello --wait 2` took 25 s (gRPC's own
    handshake timeout) and then said only UNAVAILABLE "check that both sides trust the same CA"."""
    import socket

    from protocol.health_probe import check_health
    from protocol.tls_diagnosis import diagnose_connection
    from simulations.cli.main import main

    p, _, _ = world
    listener = socket.create_server(("127.0.0.1", 0))   # the kernel accepts into the backlog; nobody ever answers
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        err = diagnose_connection(address, p.tls["alice"], timeout_s=1)
        assert err is not None and err.code == "NOT_TLS" and "did not answer the TLS handshake within 1 s" in str(err), err
        t = time.monotonic()
        with pytest.raises(TransportError) as ei:   # `llamdex health` and `hosts check`: the check, then a diagnosis in what is left
            check_health(address, p.tls["alice"], timeout_s=2)
        assert ei.value.code == "NOT_TLS" and time.monotonic() - t < 3.5, (ei.value, time.monotonic() - t)   # was 2 + 2 s
        t = time.monotonic()
        code = main(["client", "hello", "--id", "alice", "--key", str(p.root / "keys" / "alice.key"), "--workspace", str(tmp_path / "ws"),
                     "--provider", address, "--provider-key", str(p.pubs["provider"]), "--ca", str(p.tls["alice"].ca),
                     "--cert", str(p.tls["alice"].cert), "--tls-key", str(p.tls["alice"].key), "--wait", "2"])
        took = time.monotonic() - t
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert code == 7 and "[NOT_TLS]" in err and "did not answer the TLS handshake" in err, err
    assert took < 12, took   # the wait (2 s) and the diagnosis's handshake (5 s), not gRPC's 20 s
