"""The provider's receipt keys over time: a published key list in which each new key is endorsed by the one before.

A client pins the provider's receipt key. When the provider rotates it, old receipts must still verify
against the key that signed them, and the client must be able to trust the new key without a new
out-of-band exchange. The key list does both:

    {"format": "llamdex.receipt-keys/v1",
     "keys": [{"fingerprint": "sha256:<old>", "public_key_pem": "...", "valid_from": "<RFC 3339>", "endorsement": null},
              {"fingerprint": "sha256:<new>", "public_key_pem": "...", "valid_from": "<RFC 3339>",
               "endorsement": <DSSE envelope signed by the previous key over the handover statement>}]}

The handover statement is the canonical JSON of
`{"purpose": "llamdex.v1/receipt-key-handover", "previous": <fp>, "next": <fp>, "next_public_key_pem": <PEM>, "valid_from": <time>}`.
`trusted_keys(pinned)` walks the list from the pinned key forward and returns every key reachable through
valid endorsements (a list that does not contain the pinned key, or a broken endorsement, is refused with
UNTRUSTED_KEY / BAD_SIGNATURE). `rotate(...)` writes a list with one more key (the old private key signs
the handover, so it is needed once, at rotation). The provider publishes the list in `Hello`
(`receipt_keys_json`), records each rotation as a `receipt_key` event in its ledger, and `llamdex audit
--provider-key` accepts the list file as well as a single PEM.

    python -m protocol.receipt_keys rotate --list keys/receipt-keys.json --old keys/provider.key --new keys/provider-2.key
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.canonical import canonical_json, parse_json
from protocol.dsse import Envelope, sign_envelope, verify_envelope
from protocol.errors import ReceiptError, SignatureError
from protocol.keys import PrivateKey, PublicKey, fingerprint, load_public_key, public_key_of, public_key_pem

KEY_LIST_FORMAT = "llamdex.receipt-keys/v1"
HANDOVER_PURPOSE = "llamdex.v1/receipt-key-handover"
HANDOVER_PAYLOAD_TYPE = "application/vnd.llamdex.receipt-key-handover+json"
MAX_KEYS = 256


@dataclass(frozen=True)
class ListedKey:
    fingerprint: str
    public_key: PublicKey
    valid_from: str
    endorsement: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "public_key_pem": public_key_pem(self.public_key).decode("ascii"),
                "valid_from": self.valid_from, "endorsement": self.endorsement}


def handover_payload(previous: PublicKey, new: PublicKey, valid_from: str) -> bytes:
    return canonical_json({"purpose": HANDOVER_PURPOSE, "previous": fingerprint(previous), "next": fingerprint(new),
                           "next_public_key_pem": public_key_pem(new).decode("ascii"), "valid_from": valid_from})


def endorse(previous_private: PrivateKey, new_key: PublicKey | PrivateKey, valid_from: str) -> dict[str, Any]:
    """The previous key's signed statement that `new_key` signs receipts from `valid_from` on."""
    return sign_envelope(handover_payload(previous_private.public_key(), public_key_of(new_key), valid_from), HANDOVER_PAYLOAD_TYPE,
                         previous_private).to_dict()


def verify_endorsement(endorsement: Any, previous: PublicKey, new_key: PublicKey) -> str:
    """Checks that `previous` signed the handover to `new_key`; returns its valid_from. Raises ReceiptError."""
    try:
        v = verify_envelope(Envelope.from_dict(endorsement), [previous], expected_payload_type=HANDOVER_PAYLOAD_TYPE)
        st = parse_json(v.payload)
    except SignatureError as e:
        raise ReceiptError("BAD_SIGNATURE", f"the handover to receipt key {fingerprint(new_key)} is not signed by {fingerprint(previous)}: {e}",
                           rule="endorsed by the previous key") from None
    except (ValueError, TypeError) as e:
        raise ReceiptError("BAD_RECEIPT", f"the handover to receipt key {fingerprint(new_key)} is unreadable: {e}", rule="handover") from None
    valid_from = st.get("valid_from") if isinstance(st, dict) else None
    if not isinstance(valid_from, str) or v.payload != handover_payload(previous, new_key, valid_from):
        raise ReceiptError("BAD_RECEIPT", f"the handover signed by {fingerprint(previous)} does not name {fingerprint(new_key)} as the next key",
                           rule="handover names both keys")
    return valid_from


class KeyList:
    """The provider's receipt keys, oldest first; see the module docstring."""

    def __init__(self, keys: list[ListedKey]):
        self.keys = keys

    @classmethod
    def from_dict(cls, d: Any) -> "KeyList":
        def bad(msg: str) -> ReceiptError:
            return ReceiptError("BAD_RECEIPT", f"receipt key list: {msg}", rule="key list format")

        if not isinstance(d, dict) or d.get("format") != KEY_LIST_FORMAT or not isinstance(d.get("keys"), list):
            raise bad(f"must be an object with format {KEY_LIST_FORMAT!r} and a list of keys")
        if not 1 <= len(d["keys"]) <= MAX_KEYS:
            raise bad(f"must list 1..{MAX_KEYS} keys, got {len(d['keys'])}")
        out = []
        for i, k in enumerate(d["keys"]):
            if not isinstance(k, dict) or set(k) != {"fingerprint", "public_key_pem", "valid_from", "endorsement"}:
                raise bad(f"keys[{i}] must hold exactly fingerprint, public_key_pem, valid_from, endorsement")
            if not isinstance(k["public_key_pem"], str) or not isinstance(k["valid_from"], str) or not isinstance(k["fingerprint"], str):
                raise bad(f"keys[{i}]: fingerprint, public_key_pem and valid_from must be strings")
            try:
                pk = load_public_key(k["public_key_pem"].encode("ascii"))
            except Exception as e:  # noqa: BLE001 - reported as the list's error
                raise bad(f"keys[{i}]: public_key_pem is not a supported public key: {e}") from None
            if fingerprint(pk) != k["fingerprint"]:
                raise bad(f"keys[{i}]: fingerprint {k['fingerprint']} is not that of its public key ({fingerprint(pk)})")
            if k["endorsement"] is not None and not isinstance(k["endorsement"], dict):
                raise bad(f"keys[{i}]: endorsement must be a DSSE envelope object or null")
            out.append(ListedKey(k["fingerprint"], pk, k["valid_from"], k["endorsement"]))
        return cls(out)

    @classmethod
    def from_json(cls, text: str | bytes) -> "KeyList":
        try:
            return cls.from_dict(parse_json(text))
        except (ValueError, UnicodeDecodeError) as e:
            raise ReceiptError("BAD_RECEIPT", f"receipt key list is not JSON: {e}", rule="key list format") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyList":
        return cls.from_json(Path(path).read_bytes())

    def to_dict(self) -> dict[str, Any]:
        return {"format": KEY_LIST_FORMAT, "keys": [k.to_dict() for k in self.keys]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def fingerprints(self) -> list[str]:
        return [k.fingerprint for k in self.keys]

    def endorsement_for(self, key: PublicKey | PrivateKey) -> dict[str, Any] | None:
        fp = fingerprint(key)
        return next((k.endorsement for k in self.keys if k.fingerprint == fp), None)

    def trusted_keys(self, pinned: Any) -> list[PublicKey]:
        """The pinned key and every later key endorsed, step by step, by the key before it. Raises ReceiptError."""
        pin = load_public_key(pinned)
        fps = self.fingerprints()
        if fingerprint(pin) not in fps:
            raise ReceiptError("UNTRUSTED_KEY", f"the receipt key list {fps} does not contain the pinned key {fingerprint(pin)}",
                               rule="key list starts from the pinned key")
        i = fps.index(fingerprint(pin))
        out = [self.keys[i].public_key]
        for prev, nxt in zip(self.keys[i:], self.keys[i + 1:], strict=False):
            if nxt.endorsement is None:
                raise ReceiptError("UNTRUSTED_KEY", f"receipt key {nxt.fingerprint} carries no endorsement by {prev.fingerprint}",
                                   rule="endorsed by the previous key")
            verify_endorsement(nxt.endorsement, prev.public_key, nxt.public_key)
            out.append(nxt.public_key)
        return out

    def current(self) -> PublicKey:
        return self.keys[-1].public_key


def rotate(list_path: str | os.PathLike, old_private: PrivateKey, new_key: PrivateKey | PublicKey, valid_from: str | None = None) -> KeyList:
    """Adds `new_key` to the key list at `list_path` (created with `old_private`'s public key first when absent),
    endorsed by `old_private`, and writes it atomically."""
    from protocol.receipts import utc_now_rfc3339

    p = Path(list_path)
    kl = KeyList.load(p) if p.exists() else KeyList([ListedKey(fingerprint(old_private), old_private.public_key(), utc_now_rfc3339(), None)])
    if kl.fingerprints()[-1] != fingerprint(old_private):
        raise ReceiptError("UNTRUSTED_KEY", f"the key list's current key is {kl.fingerprints()[-1]}, not the old key given "
                           f"({fingerprint(old_private)}); rotate from the current key", rule="rotate from the current key")
    if fingerprint(new_key) in kl.fingerprints():
        raise ReceiptError("BAD_RECEIPT", f"key {fingerprint(new_key)} is already in the list", rule="a new key")
    at = valid_from or utc_now_rfc3339()
    kl.keys.append(ListedKey(fingerprint(new_key), public_key_of(new_key), at, endorse(old_private, new_key, at)))
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(kl.to_json())
    os.replace(tmp, p)
    return kl


def load_trust(source: Any) -> list[PublicKey]:
    """Receipt keys to verify with, from a key object, a PEM file or bytes, or a key list file (JSON): a list's
    keys are all returned (an auditor who holds the list checks each receipt against the key that signed it)."""
    if isinstance(source, (str, os.PathLike)) and not str(source).lstrip().startswith("-----BEGIN"):
        data = Path(source).read_bytes()
        if data.lstrip().startswith(b"{"):
            kl = KeyList.from_json(data)
            return kl.trusted_keys(kl.keys[0].public_key)
    return [load_public_key(source)]


def main(argv: list[str] | None = None) -> int:
    from protocol.keys import load_private_key

    ap = argparse.ArgumentParser(prog="python -m protocol.receipt_keys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rotate", help="endorse a new receipt key with the current one and add it to the key list")
    r.add_argument("--list", required=True, type=Path)
    r.add_argument("--old", required=True, type=Path, help="the current receipt key (private, PEM)")
    r.add_argument("--new", required=True, type=Path, help="the new receipt key (private or public PEM)")
    a = ap.parse_args(argv)
    new = a.new.read_bytes()
    new_key = load_private_key(a.new) if b"PRIVATE KEY" in new else load_public_key(a.new)
    kl = rotate(a.list, load_private_key(a.old), new_key)
    print(f"{a.list}: {len(kl.keys)} keys, current {kl.fingerprints()[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["HANDOVER_PAYLOAD_TYPE", "KEY_LIST_FORMAT", "KeyList", "ListedKey", "endorse", "load_trust", "rotate", "verify_endorsement"]
