"""DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse v1.0.0).

    {"payloadType": "<type>", "payload": "<base64>", "signatures": [{"keyid": "<id>", "sig": "<base64>"}]}

What is signed is the pre-authentication encoding (PAE) of the type and the *raw* payload bytes:

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

with lengths in bytes as ASCII decimals. Signatures are ECDSA over PAE with the curve's hash
(P-256: SHA-256), DER-encoded, as Sigstore and OpenSSF model-signing write them, so
`openssl dgst -sha256 -verify pub.pem -signature sig.der pae.bin` checks them too.
`keyid` is our key fingerprint (`sha256:<hex>` of the DER public key); it is only a hint: a verifier
tries the trusted key it names first and otherwise every trusted key.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.canonical import parse_json
from protocol.errors import SignatureError
from protocol.keys import PrivateKey, PublicKey, fingerprint, hash_for, load_public_key

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode_strict(value: Any, what: str) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE allows both); anything else is malformed."""
    if not isinstance(value, str):
        raise SignatureError("MALFORMED_ENVELOPE", f"{what} must be a base64 string, got {type(value).__name__}", rule="base64")
    s = value.strip()
    s_padded = s + "=" * (-len(s) % 4)
    try:
        if "-" in s or "_" in s:
            return base64.urlsafe_b64decode(s_padded.encode("ascii"))
        return base64.b64decode(s_padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise SignatureError("MALFORMED_ENVELOPE", f"{what} is not valid base64: {e}", rule="base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Signature:
    sig: bytes
    keyid: str = ""


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = field(default_factory=tuple)

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": b64encode(s.sig)} for s in self.signatures],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Any) -> "Envelope":
        if not isinstance(d, dict):
            raise SignatureError("MALFORMED_ENVELOPE", "a DSSE envelope must be a JSON object", rule="shape")
        for k in ("payload", "payloadType", "signatures"):
            if k not in d:
                raise SignatureError("MALFORMED_ENVELOPE", f"DSSE envelope lacks '{k}'", rule=k)
        ptype = d["payloadType"]
        if not isinstance(ptype, str) or not ptype:
            raise SignatureError("MALFORMED_ENVELOPE", "DSSE 'payloadType' must be a non-empty string", rule="payloadType")
        payload = b64decode_strict(d["payload"], "DSSE 'payload'")
        sigs_raw = d["signatures"]
        if not isinstance(sigs_raw, list):
            raise SignatureError("MALFORMED_ENVELOPE", "DSSE 'signatures' must be a list", rule="signatures")
        if len(sigs_raw) > MAX_SIGNATURES:
            raise SignatureError("MALFORMED_ENVELOPE", f"DSSE envelope has {len(sigs_raw)} signatures; at most {MAX_SIGNATURES} are read", rule="signatures")
        sigs = []
        for i, s in enumerate(sigs_raw):
            if not isinstance(s, dict) or "sig" not in s:
                raise SignatureError("MALFORMED_ENVELOPE", f"DSSE signatures[{i}] must be an object with 'sig'", rule="signatures")
            keyid = s.get("keyid", "") or ""
            if not isinstance(keyid, str):
                raise SignatureError("MALFORMED_ENVELOPE", f"DSSE signatures[{i}].keyid must be a string", rule="keyid")
            sigs.append(Signature(sig=b64decode_strict(s["sig"], f"DSSE signatures[{i}].sig"), keyid=keyid))
        return cls(payload_type=ptype, payload=payload, signatures=tuple(sigs))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Envelope":
        try:
            d = parse_json(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SignatureError("MALFORMED_ENVELOPE", f"DSSE envelope is not valid JSON: {e}", rule="json") from None
        return cls.from_dict(d)


def sign_envelope(payload: bytes, payload_type: str, private_key: PrivateKey, keyid: str | None = None) -> Envelope:
    """Signs PAE(payload_type, payload) with ECDSA (curve hash), DER signature; keyid defaults to the fingerprint."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise SignatureError("UNSUPPORTED_KEY", f"DSSE signing needs an ECDSA private key, got {type(private_key).__name__}", rule="key type")
    sig = private_key.sign(pae(payload_type, payload), ec.ECDSA(hash_for(private_key)))
    return Envelope(payload_type=payload_type, payload=payload,
                    signatures=(Signature(sig=sig, keyid=fingerprint(private_key) if keyid is None else keyid),))


@dataclass(frozen=True)
class VerifiedEnvelope:
    payload_type: str
    payload: bytes
    key: PublicKey
    key_fingerprint: str
    keyid: str


TrustedKeys = Union[PublicKey, PrivateKey, bytes, str, Iterable[Any]]


def as_key_list(keys: TrustedKeys) -> list[PublicKey]:
    """One key (object, PEM bytes or path) or an iterable of them → a list of public keys."""
    if isinstance(keys, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey, bytes, str)) or hasattr(keys, "__fspath__"):
        items = [keys]
    else:
        items = list(keys)  # type: ignore[arg-type]
    out = [load_public_key(k) for k in items]
    if not out:
        raise SignatureError("UNTRUSTED_KEY", "no trusted public key was given", rule="trusted keys")
    return out


def verify_signature(public_key: PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        public_key.verify(sig, message, ec.ECDSA(hash_for(public_key)))
        return True
    except InvalidSignature:
        return False


def verify_envelope(envelope: Envelope | dict | str | bytes, trusted_keys: TrustedKeys,
                    expected_payload_type: str | None = None) -> VerifiedEnvelope:
    """Returns the payload if at least one signature verifies under a trusted key; raises SignatureError
    with code MALFORMED_ENVELOPE, PAYLOAD_TYPE_MISMATCH, NO_SIGNATURES or BAD_SIGNATURE otherwise."""
    if isinstance(envelope, dict):
        envelope = Envelope.from_dict(envelope)
    elif isinstance(envelope, (str, bytes)):
        envelope = Envelope.from_json(envelope)
    keys = as_key_list(trusted_keys)
    if expected_payload_type is not None and envelope.payload_type != expected_payload_type:
        raise SignatureError("PAYLOAD_TYPE_MISMATCH", f"DSSE payloadType is {envelope.payload_type!r}, expected {expected_payload_type!r}", rule="payloadType")
    if not envelope.signatures:
        raise SignatureError("NO_SIGNATURES", "DSSE envelope carries no signature", rule="signatures")
    by_fp = {fingerprint(k): k for k in keys}
    message = envelope.pae()
    tried = []
    for s in envelope.signatures:
        candidates = [by_fp[s.keyid]] if s.keyid in by_fp else keys
        for k in candidates:
            fp = fingerprint(k)
            if verify_signature(k, s.sig, message):
                return VerifiedEnvelope(envelope.payload_type, envelope.payload, k, fp, s.keyid)
            tried.append((s.keyid or "<no keyid>", fp))
    named = sorted({kid for kid, _ in tried})
    raise SignatureError(
        "BAD_SIGNATURE",
        f"none of the {len(envelope.signatures)} DSSE signature(s) (keyids {named}) verifies over PAE({envelope.payload_type!r}, "
        f"{len(envelope.payload)} bytes) under the {len(keys)} trusted key(s) {sorted(by_fp)}",
        rule="ECDSA over PAE",
    )
