"""Small wire-level rules: the hand-encoded upload chunk is exactly the protobuf encoding, signed requests
bind method, identity, time, nonce and body, plaintext is refused off loopback, and every error code maps
to a gRPC status."""

from __future__ import annotations

import hashlib
import os
import time

import grpc
import pytest

from client_party.provider_client import encode_chunk
from protocol.keys import generate_private_key
from protocol.request_auth import FORGET_METHOD, UPLOAD_METHOD, RequestAuthError, check_request_signature, sign_request
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.rpc_errors import STATUS_BY_CODE
from protocol.tls import TransportError, is_loopback, open_channel, require_loopback_for_plaintext, split_address


@pytest.mark.parametrize("offset,n", [(0, 1), (5, 1 << 20), (300 << 20, 1000), (2**40, 0), (127, 128), (128, 16383)])
def test_hand_encoded_chunk_is_the_protobuf_encoding(offset, n):
    d = os.urandom(n)
    h = hashlib.sha256(d).hexdigest()
    ref = provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=offset, data=d, sha256=h)).SerializeToString()
    assert encode_chunk(offset, memoryview(d), h) == ref


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


def test_every_error_code_maps_to_a_specific_status():
    assert all(isinstance(s, grpc.StatusCode) and s not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN) for s in STATUS_BY_CODE.values())
    assert STATUS_BY_CODE["REPLAYED_REQUEST"] == grpc.StatusCode.UNAUTHENTICATED
    assert STATUS_BY_CODE["BUDGET_EXCEEDED"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert STATUS_BY_CODE["UNREGISTERED_CLIENT"] == grpc.StatusCode.PERMISSION_DENIED
