"""The provider proves, at Hello, that it holds the receipt key the client pinned.

Why: the provider's public key is public. A party with a certificate from the same CA whose name matches
the dialed address (the monitor's, another client's) could announce the real provider's key at Hello,
and the client would upload its model before the first receipt failed to verify. So the client sends a
fresh random challenge with its Hello, and the provider signs it under its receipt key together with
the caller's identity as its TLS certificate names it. The client checks the signature under the key it
trusts (the pinned one, or one the pinned key endorsed) before anything is uploaded, deleted or asked.

Binding the caller's identity is what stops a relay: an impostor that passes the challenge on to the
real provider, under its own certificate, gets back a proof naming itself, not the client it fools.

The proof is a DSSE envelope of its own payload type, so a signed Hello can never be taken for a
receipt or a ledger event (DSSE signs the type with the payload).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from protocol.canonical import parse_json
from protocol.dsse import b64decode_strict, b64encode, sign_envelope, verify_envelope
from protocol.errors import ReceiptError, SignatureError
from protocol.keys import PrivateKey, fingerprint

HELLO_PROOF_PAYLOAD_TYPE = "application/vnd.llamdex.hello-proof+json"
HELLO_PROOF_TYPE = "llamdex.hello-proof/v1"
CHALLENGE_BYTES = 32
MIN_CHALLENGE_BYTES, MAX_CHALLENGE_BYTES = 16, 64   # what a provider signs: enough to be fresh, too little to carry anything else


def new_challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_BYTES)


def check_challenge(challenge: bytes) -> None:
    """The provider's rule for a challenge it is asked to sign (raises ValueError with the reason)."""
    if not MIN_CHALLENGE_BYTES <= len(challenge) <= MAX_CHALLENGE_BYTES:
        raise ValueError(f"the Hello challenge is {len(challenge)} bytes; it must be {MIN_CHALLENGE_BYTES} to {MAX_CHALLENGE_BYTES} random bytes")


def sign_hello_proof(key: PrivateKey, *, provider_id: str, client_id: str, challenge: bytes) -> str:
    """The provider's answer to a challenge: a DSSE envelope (JSON) over the challenge, the caller and itself."""
    check_challenge(challenge)
    payload = json.dumps({"type": HELLO_PROOF_TYPE, "provider_id": provider_id, "client_id": client_id,
                          "challenge": b64encode(challenge), "key": fingerprint(key)},
                         sort_keys=True, separators=(",", ":")).encode("utf-8")
    return sign_envelope(payload, HELLO_PROOF_PAYLOAD_TYPE, key).to_json()


@dataclass(frozen=True)
class HelloProof:
    provider_id: str
    client_id: str
    key_fingerprint: str


def _refused(detail: str) -> ReceiptError:
    return ReceiptError("PROVIDER_NOT_PROVEN", f"the provider did not prove that it holds the trusted receipt key: {detail}; "
                        "this may not be the provider you meant to reach (another party's certificate from the same CA can "
                        "answer at that address), so nothing was sent", rule="hello proof")


def verify_hello_proof(proof_json: str, trusted_keys: Any, *, client_id: str, challenge: bytes) -> HelloProof:
    """Checks the provider's answer to this connection's challenge under `trusted_keys`; raises ReceiptError
    PROVIDER_NOT_PROVEN naming what failed."""
    if not proof_json:
        raise _refused("its Hello carries no proof (a provider older than this client, or not a Llamdex provider)")
    try:
        v = verify_envelope(proof_json, trusted_keys, expected_payload_type=HELLO_PROOF_PAYLOAD_TYPE)
    except SignatureError as e:
        raise _refused(f"the proof's signature: {e}") from None
    try:
        p = parse_json(v.payload)   # it crossed the wire
        kind, signed_for, signed_challenge = p["type"], p["client_id"], b64decode_strict(p["challenge"], "challenge")
        provider_id = p["provider_id"]
    except (ValueError, KeyError, TypeError, SignatureError) as e:
        raise _refused(f"the proof's payload is malformed ({type(e).__name__}: {e})") from None
    if kind != HELLO_PROOF_TYPE:
        raise _refused(f"the proof is of type {kind!r}, expected {HELLO_PROOF_TYPE!r}")
    if not secrets.compare_digest(signed_challenge, challenge):
        raise _refused("the proof signs another challenge than this connection's (a replayed Hello)")
    if signed_for != client_id:
        raise _refused(f"the proof was signed for the caller {signed_for!r}, not for this client {client_id!r} "
                       "(a party relaying this Hello to the provider under its own certificate)")
    return HelloProof(provider_id=str(provider_id), client_id=signed_for, key_fingerprint=v.key_fingerprint)
