"""Signed requests: what a client signs over an upload or a Forget, and how the provider checks it.

The signed bytes are the canonical JSON (protocol.canonical) of

    {"purpose": "llamdex.v1/request", "method": "/llamdex.v1.ProviderService/<Method>",
     "client_id": <id>, "timestamp_ms": <Unix ms>, "nonce": <hex of 16..64 random bytes>,
     "body": <the request fields, below>}

signed with ECDSA (the key's curve hash, DER) by the client's registered key. `body`:

    UploadExpert  {"upload_id", "dataset_id", "artifact_name", "total_bytes", "artifact_sha256", "resume_offset"}
                  (+ "artifact_blake3" when the header carries the tar's BLAKE3 instead of its SHA-256)
    Forget        {"artifact_digest"}

The method name and the purpose string keep a signature for one call from being replayed as
another; time and nonce keep it from being replayed at all (the provider keeps every nonce it saw
within the skew window, and refuses timestamps outside it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from protocol import operator_errors
from protocol.canonical import canonical_json
from protocol.dsse import verify_signature
from protocol.errors import CodedError
from protocol.keys import PrivateKey, PublicKey, fingerprint, hash_for

PURPOSE = "llamdex.v1/request"
UPLOAD_METHOD = "/llamdex.v1.ProviderService/UploadExpert"
FORGET_METHOD = "/llamdex.v1.ProviderService/Forget"
NONCE_MIN, NONCE_MAX = 16, 64
MAX_SIGNATURE_BYTES = 256


class RequestAuthError(CodedError):
    """A request signature is missing, malformed, stale, replayed or does not verify
    (codes: MISSING_SIGNATURE, BAD_REQUEST_SIGNATURE, STALE_REQUEST, REPLAYED_REQUEST, IDENTITY_MISMATCH)."""


@dataclass(frozen=True)
class SignedFields:
    client_id: str
    timestamp_ms: int
    nonce: bytes
    signature: bytes
    key_fingerprint: str

    def to_proto_kwargs(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "timestamp_ms": self.timestamp_ms, "nonce": self.nonce,
                "signature": self.signature, "key_fingerprint": self.key_fingerprint}


def upload_body(header: Any) -> dict[str, Any]:
    """The signed body of an UploadHeader. `artifact_blake3` is included only when set, so a SHA-256
    header signs exactly the same body as before BLAKE3 existed."""
    body = {"upload_id": header.upload_id, "dataset_id": header.dataset_id, "artifact_name": header.artifact_name,
            "total_bytes": int(header.total_bytes), "artifact_sha256": header.artifact_sha256, "resume_offset": int(header.resume_offset)}
    b3 = getattr(header, "artifact_blake3", "")
    if b3:
        body["artifact_blake3"] = b3
    return body


def forget_body(request: Any) -> dict[str, Any]:
    return {"artifact_digest": request.artifact_digest}


def request_payload(method: str, client_id: str, timestamp_ms: int, nonce: bytes, body: dict[str, Any]) -> bytes:
    return canonical_json({"purpose": PURPOSE, "method": method, "client_id": client_id, "timestamp_ms": int(timestamp_ms),
                           "nonce": nonce.hex(), "body": body})


def sign_request(private_key: PrivateKey, client_id: str, method: str, body: dict[str, Any], *,
                 timestamp_ms: int | None = None, nonce: bytes | None = None) -> SignedFields:
    from cryptography.hazmat.primitives.asymmetric import ec

    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    nonce = os.urandom(24) if nonce is None else nonce
    sig = private_key.sign(request_payload(method, client_id, ts, nonce, body), ec.ECDSA(hash_for(private_key)))
    return SignedFields(client_id, ts, nonce, sig, fingerprint(private_key))


def check_request_signature(public_key: PublicKey, method: str, auth: Any, body: dict[str, Any], *, caller: str,
                            max_skew_ms: int, now_ms: int | None = None) -> None:
    """Checks presence, shape, identity, time window and the ECDSA signature; the nonce's freshness is
    the provider's replay cache's job. Raises RequestAuthError."""
    if auth is None or not auth.signature:
        raise RequestAuthError("MISSING_SIGNATURE", f"{method} must carry a signature by the client's registered key (auth)", rule="signed request")
    if auth.client_id != caller:
        raise RequestAuthError("IDENTITY_MISMATCH", f"the request is signed for client {auth.client_id!r} but the caller's certificate says {caller!r}", rule="one identity")
    if not NONCE_MIN <= len(auth.nonce) <= NONCE_MAX:
        raise RequestAuthError("BAD_REQUEST_SIGNATURE", f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes, got {len(auth.nonce)}", rule="nonce length")
    if len(auth.signature) > MAX_SIGNATURE_BYTES:
        raise RequestAuthError("BAD_REQUEST_SIGNATURE", f"signature is {len(auth.signature)} bytes; at most {MAX_SIGNATURE_BYTES}", rule="signature length")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now - int(auth.timestamp_ms)) > max_skew_ms:
        raise RequestAuthError("STALE_REQUEST", operator_errors.stale_request((int(auth.timestamp_ms) - now) / 1000, max_skew_ms / 1000),
                               rule="clock skew")
    msg = request_payload(method, auth.client_id, int(auth.timestamp_ms), bytes(auth.nonce), body)
    if not verify_signature(public_key, bytes(auth.signature), msg):
        raise RequestAuthError("BAD_REQUEST_SIGNATURE", f"the {method} request signature does not verify under client {caller!r}'s registered key "
                               f"{fingerprint(public_key)}", rule="ECDSA over the canonical request")


__all__ = ["FORGET_METHOD", "PURPOSE", "RequestAuthError", "SignedFields", "UPLOAD_METHOD", "check_request_signature",
           "forget_body", "request_payload", "sign_request", "upload_body"]
