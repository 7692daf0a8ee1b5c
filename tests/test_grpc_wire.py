"""Small wire-level rules: signed requests bind method, identity, time, nonce and body, plaintext is refused off loopback, and every error code maps
to a gRPC status."""

from __future__ import annotations

import os
import time

import grpc
import pytest

from protocol.keys import generate_private_key
from protocol.request_auth import FORGET_METHOD, UPLOAD_METHOD, RequestAuthError, check_request_signature, sign_request
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.rpc_errors import STATUS_BY_CODE
from protocol.tls import TransportError, is_loopback, open_channel, require_loopback_for_plaintext, split_address


def test_upload_body_signs_blake3_only_when_set():
    from protocol.request_auth import upload_body

    h = provider_pb2.UploadHeader(upload_id="u" * 20, dataset_id="d", artifact_name="e", total_bytes=5, artifact_sha256="a" * 64)
    assert "artifact_blake3" not in upload_body(h) and upload_body(h)["artifact_sha256"] == "a" * 64
    h.artifact_blake3 = "b" * 64                 # the oneof: setting BLAKE3 clears SHA-256
    assert upload_body(h)["artifact_blake3"] == "b" * 64 and upload_body(h)["artifact_sha256"] == ""


def _auth(signed):
    return common_pb2.RequestSignature(**signed.to_proto_kwargs())


def test_request_signature_binds_method_identity_time_nonce_and_body():
    key, other = generate_private_key(), generate_private_key()
    body = {"artifact_digest": "sha256:" + "0" * 64}
    a = _auth(sign_request(key, "alice", FORGET_METHOD, body))
    check_request_signature(key.public_key(), FORGET_METHOD, a, body, caller="alice", max_skew_ms=60_000)
    cases = [
        (dict(method=UPLOAD_METHOD), "BAD_REQUEST_SIGNATURE"),              # replayed as another call
        (dict(body={"artifact_digest": ""}), "BAD_REQUEST_SIGNATURE"),      # another body
        (dict(public_key=other.public_key()), "BAD_REQUEST_SIGNATURE"),     # another key
        (dict(caller="bob"), "IDENTITY_MISMATCH"),                          # another caller
        (dict(now_ms=int(time.time() * 1000) + 120_000), "STALE_REQUEST"),  # outside the window
    ]
    for change, code in cases:
        kw = dict(public_key=key.public_key(), method=FORGET_METHOD, body=body, caller="alice", now_ms=None)
        kw.update(change)
        with pytest.raises(RequestAuthError) as ei:
            check_request_signature(kw["public_key"], kw["method"], a, kw["body"], caller=kw["caller"], max_skew_ms=60_000, now_ms=kw["now_ms"])
        assert ei.value.code == code
    short = _auth(sign_request(key, "alice", FORGET_METHOD, body, nonce=b"x" * 8))
    with pytest.raises(RequestAuthError) as ei:
        check_request_signature(key.public_key(), FORGET_METHOD, short, body, caller="alice", max_skew_ms=60_000)
    assert ei.value.code == "BAD_REQUEST_SIGNATURE"


def test_plaintext_is_refused_off_loopback_and_tls_is_the_default():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.77.0.1")
    require_loopback_for_plaintext("127.0.0.1:1")
    require_loopback_for_plaintext("[::1]:1")
    for addr in ("10.77.0.1:50051", "example.org:443", "0.0.0.0:50051"):
        with pytest.raises(TransportError) as ei:
            open_channel(addr, None, plaintext=True)
        assert ei.value.code == "PLAINTEXT_NOT_LOOPBACK"
    with pytest.raises(TransportError) as ei:
        open_channel("127.0.0.1:1", None)
    assert ei.value.code == "TLS_FILES_MISSING"
    assert split_address("[::1]:50051") == ("::1", 50051)
    with pytest.raises(TransportError) as ei:
        split_address("::1:50051")
    assert ei.value.code == "BAD_ADDRESS" and "[::1]:50051" in str(ei.value)


def test_a_folder_where_a_tls_file_belongs_is_named_as_a_folder(tmp_path):
    from protocol.tls import TLSFiles

    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "me.key").mkdir()
    with pytest.raises(TransportError) as ei:
        TLSFiles(tmp_path / "ca.pem", tmp_path / "me.pem", tmp_path / "me.key").read()
    assert ei.value.code == "TLS_FILES_MISSING"
    assert f"{tmp_path / 'me.key'} (a folder, not a file)" in str(ei.value) and f"{tmp_path / 'me.pem'}'" in str(ei.value)


def test_every_error_code_maps_to_a_specific_status():
    assert all(isinstance(s, grpc.StatusCode) and s not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN) for s in STATUS_BY_CODE.values())
    assert STATUS_BY_CODE["REPLAYED_REQUEST"] == grpc.StatusCode.UNAUTHENTICATED
    assert STATUS_BY_CODE["BUDGET_EXCEEDED"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert STATUS_BY_CODE["UNREGISTERED_CLIENT"] == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("alg", ["sha256", "blake3"])
def test_tar_and_chunk_digests_computed_together_equal_the_single_hashes(alg):
    """The client hashes the whole tar (helper thread) and the first stream's chunks (its own thread) at once."""
    from protocol.wire import upload_digest_hex, upload_digests

    d = os.urandom(3 * 4096 + 17)
    for offset in (0, 5000, len(d)):
        whole, parts = upload_digests(alg, d, offset, 4096)
        assert whole == upload_digest_hex(alg, d)
        assert parts == [upload_digest_hex(alg, d[p:p + 4096]) for p in range(offset, len(d), 4096)]
    with pytest.raises(ValueError):
        upload_digests("md5", d, 0, 4096)


def _reader_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "llamdex-upload-reader" and t.is_alive()]


def test_read_ahead_yields_in_order_holds_at_most_its_bound_and_passes_on_how_the_stream_ended():
    import threading

    from provider_party.service.uploads import ReadAhead

    pulled = []

    def source(n, end=None):
        for i in range(n):
            pulled.append(i)
            yield i
        if end is not None:
            raise end

    r = ReadAhead(source(10), max_messages=3)
    deadline = time.monotonic() + 5
    while len(pulled) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(pulled) == 4              # 3 queued + 1 waiting to be queued: flow control holds the rest back
    assert list(r) == list(range(10))
    with pytest.raises(StopIteration):
        next(r)

    class Gone(grpc.RpcError):
        pass

    r = ReadAhead(source(2, Gone()), max_messages=8)
    assert next(r) == 0 and next(r) == 1
    with pytest.raises(Gone):           # a client that went away: the consumer sees it after the chunks that arrived
        next(r)

    gate = threading.Event()

    def stalled():
        yield 0
        gate.wait(10)
        yield 1
        yield 2

    r = ReadAhead(stalled(), max_messages=1)
    assert next(r) == 0
    r.stop()                             # what was not consumed is dropped; the thread ends with the stream
    gate.set()
    deadline = time.monotonic() + 5
    while _reader_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _reader_threads()


def test_the_protocol_docs_status_table_lists_every_error_code_under_its_status():
    """docs/PROTOCOL.md's table of refusals is what a client author reads: a code added to `STATUS_BY_CODE` (or moved
    to another status) without the table fails here."""
    import re
    from pathlib import Path

    from protocol.rpc_errors import STATUS_BY_CODE

    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    table = doc[doc.index("| status | codes | examples |"):doc.index("## Limits")]
    listed: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        cells = line.split(" | ")
        if len(cells) >= 2 and line.startswith("| `"):
            for code in re.findall(r"`([A-Z0-9_*]+)`", cells[1]):
                listed[code] = cells[0].strip("| `")
    for code, status in STATUS_BY_CODE.items():
        row = listed.get(code) or next((s for c, s in listed.items() if c.endswith("*") and code.startswith(c[:-1])), None)
        assert row == status.name, f"{code} ({status.name}) is {'under ' + row if row else 'missing'} in docs/PROTOCOL.md's status table"
    assert not [c for c in listed if not c.endswith("*") and c not in STATUS_BY_CODE], "the table names codes the code does not have"
