"""Privacy receipts: what the provider signs for every upload (and every deletion) of a client.

A receipt is an in-toto Statement v1 in a DSSE envelope signed by the provider's key:

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": <artifact name>, "digest": {"sha256": <artifact digest hex>}}],
     "predicateType": "https://llamdex.dev/privacy-receipt/v2",   (v1: the same, before RFC 8785)
     "predicate": {receipt_id, sequence, kind, client_id, dataset_id, epsilon_claimed, epsilon_recomputed,
                   delta, accountant, accountant_params {mechanism, noise_multiplier, sample_rate, steps,
                   max_grad_norm}, spent_before, spent_after, budget, delta_spent_before, delta_spent_after,
                   delta_budget, issued_at, previous_receipt_digest, provider_key, ledger_seq,
                   deleted, revokes_receipt_id}}

Conventions:
- The payload is the canonical JSON of the statement (`protocol.canonical`); a receipt whose payload
  is not canonical is refused, so its digest is unambiguous: `receipt_digest = "sha256:" +
  sha256(payload)`. The signature is not part of the digest (ECDSA signatures are randomized).
- Receipts form one hash chain **per client**: `sequence` counts the client's receipts from 1 and
  `previous_receipt_digest` is the digest of the client's previous receipt (the genesis value
  `"sha256:" + 64 zeros` for sequence 1). A client keeping its receipts can thus detect an omitted,
  reordered or forged receipt. `ledger_seq` is the provider ledger's global row number.
- Composition is **basic** (sequential) composition per (client, dataset): `spent_after = spent_before
  + epsilon_recomputed` and likewise for δ. The provider charges the ε it recomputed with its own
  accountant (the claim must match it within the tolerance of `protocol.dp.verify_statement`).
- JSON `null` for an ε value (epsilon_*, spent_*, budget) means ∞: an expert trained without DP
  (mechanism "none"), or a dataset without a budget. Such an upload only fits an unbounded budget.
- A **deletion** receipt (Forget) charges nothing (`spent_after == spent_before`, ε = 0): deleting a
  model does not give privacy back, since the provider may have seen it. It lists what was deleted
  and the receipt id of the upload it revokes, when known.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from protocol.canonical import LEGACY, RFC8785, canonical_json, parse_json, sha256_hex
from protocol.dsse import INTOTO_PAYLOAD_TYPE, Envelope, sign_envelope, verify_envelope
from protocol.errors import ReceiptError, SignatureError
from protocol.keys import PrivateKey, fingerprint

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
RECEIPT_PREDICATE_TYPE = "https://llamdex.dev/privacy-receipt/v2"
# The canonical JSON a receipt's payload must be in, by predicate type: v1 receipts (before RFC 8785)
# still verify; v2 receipts are RFC 8785 (the predicate members are the same).
RECEIPT_PREDICATE_TYPES = {"https://llamdex.dev/privacy-receipt/v1": LEGACY, RECEIPT_PREDICATE_TYPE: RFC8785}
GENESIS_DIGEST = "sha256:" + "0" * 64
KINDS = ("upload", "deletion")
REL_TOL = 1e-3          # claimed vs recomputed ε, as protocol.dp.verify_statement
ARITH_TOL = 1e-9        # budget arithmetic (relative)
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")   # every digest the protocol names: artifacts, receipts, schemas (fullmatch)
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
_PARAM_KEYS = ("mechanism", "noise_multiplier", "sample_rate", "steps", "max_grad_norm")


def utc_now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _enc(x: float | None) -> float | None:
    """∞ (or None) → JSON null; finite → float."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        raise ReceiptError("BAD_RECEIPT", "NaN is not a privacy value")
    return None if math.isinf(x) else x


def _dec(x: Any) -> float:
    return math.inf if x is None else float(x)


def close(a: float, b: float, rel: float = ARITH_TOL) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def receipt_digest(envelope: Envelope | dict | str | bytes) -> str:
    """`sha256:` digest of the receipt's payload (the canonical statement JSON)."""
    env = _as_envelope(envelope)
    return "sha256:" + sha256_hex(env.payload)


def _as_envelope(envelope: Envelope | dict | str | bytes) -> Envelope:
    try:
        if isinstance(envelope, Envelope):
            return envelope
        if isinstance(envelope, dict):
            return Envelope.from_dict(envelope)
        if not isinstance(envelope, (str, bytes, bytearray)):
            raise ReceiptError("BAD_RECEIPT", f"a receipt is a DSSE envelope (JSON object or its text), not {type(envelope).__name__}",
                               rule="dsse")
        return Envelope.from_json(envelope)
    except SignatureError as e:
        raise ReceiptError("BAD_RECEIPT", f"receipt envelope is malformed: {e}", rule="dsse") from None


@dataclass(frozen=True)
class Receipt:
    """A verified (or about-to-be-signed) privacy receipt. ε values use math.inf for ∞."""

    receipt_id: str
    sequence: int
    kind: str
    client_id: str
    dataset_id: str
    artifact_digest: str
    artifact_name: str
    epsilon_claimed: float
    epsilon_recomputed: float
    delta: float
    accountant: str
    accountant_params: dict[str, Any]
    spent_before: float
    spent_after: float
    budget: float
    delta_spent_before: float
    delta_spent_after: float
    delta_budget: float
    issued_at: str
    previous_receipt_digest: str
    provider_key: str
    ledger_seq: int | None = None
    deleted: tuple[str, ...] = ()
    revokes_receipt_id: str | None = None
    digest: str = field(default="", compare=False)   # set once signed/verified

    @property
    def remaining(self) -> float:
        return self.budget - self.spent_after

    def predicate(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "sequence": self.sequence,
            "kind": self.kind,
            "client_id": self.client_id,
            "dataset_id": self.dataset_id,
            "epsilon_claimed": _enc(self.epsilon_claimed),
            "epsilon_recomputed": _enc(self.epsilon_recomputed),
            "delta": float(self.delta),
            "accountant": self.accountant,
            "accountant_params": dict(self.accountant_params),
            "spent_before": _enc(self.spent_before),
            "spent_after": _enc(self.spent_after),
            "budget": _enc(self.budget),
            "delta_spent_before": float(self.delta_spent_before),
            "delta_spent_after": float(self.delta_spent_after),
            "delta_budget": _enc(self.delta_budget),
            "issued_at": self.issued_at,
            "previous_receipt_digest": self.previous_receipt_digest,
            "provider_key": self.provider_key,
            "ledger_seq": self.ledger_seq,
            "deleted": list(self.deleted),
            "revokes_receipt_id": self.revokes_receipt_id,
        }

    def to_statement(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.artifact_name, "digest": {"sha256": self.artifact_digest.split(":", 1)[1]}}],
            "predicateType": RECEIPT_PREDICATE_TYPE,
            "predicate": self.predicate(),
        }

    def payload(self) -> bytes:
        return canonical_json(self.to_statement())

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly view (for reports and audits)."""
        return {**self.predicate(), "artifact_digest": self.artifact_digest, "artifact_name": self.artifact_name, "digest": self.digest}


def _check_semantics(r: Receipt) -> None:
    """Field rules and budget arithmetic shared by issuing and verifying."""
    def bad(msg: str, rule: str, code: str = "BAD_RECEIPT") -> ReceiptError:
        return ReceiptError(code, f"receipt {r.receipt_id!r} (sequence {r.sequence}): {msg}", file=r.receipt_id, rule=rule)

    if r.kind not in KINDS:
        raise bad(f"kind {r.kind!r} is not one of {list(KINDS)}", "kind")
    if isinstance(r.sequence, bool) or not isinstance(r.sequence, int) or r.sequence < 1:
        raise bad(f"sequence must be an integer >= 1, got {r.sequence!r}", "sequence")
    if r.ledger_seq is not None and (isinstance(r.ledger_seq, bool) or not isinstance(r.ledger_seq, int) or r.ledger_seq < 1):
        raise bad(f"ledger_seq must be null or an integer >= 1, got {r.ledger_seq!r}", "ledger_seq")
    for name in ("receipt_id", "client_id", "dataset_id", "artifact_name", "accountant"):
        v = getattr(r, name)
        if not isinstance(v, str) or not v:
            raise bad(f"{name} must be a non-empty string", name)
    for name in ("artifact_digest", "previous_receipt_digest", "provider_key"):
        if not isinstance(getattr(r, name), str) or not DIGEST_RE.fullmatch(getattr(r, name)):
            raise bad(f"{name} {getattr(r, name)!r} is not 'sha256:<64 hex>'", name)
    if not isinstance(r.issued_at, str) or not _RFC3339_RE.fullmatch(r.issued_at):
        raise bad(f"issued_at {r.issued_at!r} is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.frac]Z)", "issued_at")
    if r.sequence == 1 and r.previous_receipt_digest != GENESIS_DIGEST:
        raise bad("the first receipt of a client must link to the genesis digest", "genesis", "CHAIN_BROKEN")
    if r.sequence > 1 and r.previous_receipt_digest == GENESIS_DIGEST:
        raise bad("only sequence 1 may link to the genesis digest", "genesis", "CHAIN_BROKEN")
    if not isinstance(r.accountant_params, dict) or set(r.accountant_params) - set(_PARAM_KEYS):
        raise bad(f"accountant_params may only hold {list(_PARAM_KEYS)}", "accountant_params")
    for name in ("epsilon_claimed", "epsilon_recomputed", "spent_before", "spent_after", "budget", "delta", "delta_spent_before", "delta_spent_after", "delta_budget"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise bad(f"{name} must be a non-negative number (null = infinity), got {v!r}", name)
    for name in ("delta", "delta_spent_before", "delta_spent_after"):
        if math.isinf(getattr(r, name)):
            raise bad(f"{name} must be finite", name)
    if r.kind == "upload":
        if r.deleted or r.revokes_receipt_id is not None:
            raise bad("an upload receipt lists nothing deleted", "deleted")
        if not (math.isinf(r.epsilon_claimed) and math.isinf(r.epsilon_recomputed)) and not close(r.epsilon_claimed, r.epsilon_recomputed, REL_TOL):
            raise bad(f"epsilon_claimed {r.epsilon_claimed:.6g} and epsilon_recomputed {r.epsilon_recomputed:.6g} differ by more than {REL_TOL:g} (relative)", "claimed == recomputed", "ARITHMETIC")
        charged, dcharged = r.epsilon_recomputed, r.delta
    else:
        if r.epsilon_claimed != 0 or r.epsilon_recomputed != 0 or r.delta != 0:
            raise bad("a deletion receipt charges no epsilon or delta", "deletion charges nothing", "ARITHMETIC")
        if not r.deleted or not all(isinstance(x, str) and x for x in r.deleted):
            raise bad("a deletion receipt lists what was deleted", "deleted")
        charged, dcharged = 0.0, 0.0
    if not close(r.spent_after, r.spent_before + charged):
        raise bad(f"spent_after {r.spent_after!r} != spent_before {r.spent_before!r} + charged {charged!r} (basic composition)", "basic composition", "ARITHMETIC")
    if not close(r.delta_spent_after, r.delta_spent_before + dcharged):
        raise bad(f"delta_spent_after {r.delta_spent_after!r} != delta_spent_before {r.delta_spent_before!r} + {dcharged!r}", "basic composition (delta)", "ARITHMETIC")
    if r.kind == "upload" and (r.spent_after > r.budget * (1 + ARITH_TOL) or r.delta_spent_after > r.delta_budget * (1 + ARITH_TOL)):
        raise bad(f"spend after this upload (epsilon {r.spent_after:.6g}, delta {r.delta_spent_after:.3g}) exceeds the budget (epsilon {r.budget:.6g}, delta {r.delta_budget:.3g})", "within budget", "ARITHMETIC")


def _sign(r: Receipt, private_key: PrivateKey) -> Envelope:
    _check_semantics(r)
    return sign_envelope(r.payload(), INTOTO_PAYLOAD_TYPE, private_key)


def issue_receipt(private_key: PrivateKey, *, sequence: int, client_id: str, dataset_id: str, artifact_digest: str,
                  epsilon_claimed: float, epsilon_recomputed: float, delta: float, accountant: str,
                  accountant_params: dict[str, Any], spent_before: float, budget: float | None,
                  previous_receipt_digest: str, delta_spent_before: float = 0.0, delta_budget: float | None = None,
                  receipt_id: str | None = None, issued_at: str | None = None, artifact_name: str = "expert",
                  ledger_seq: int | None = None) -> Envelope:
    """Signs an **upload** receipt. `spent_after` = `spent_before` + `epsilon_recomputed` (basic composition).
    `budget`/`delta_budget` None mean unbounded; ε = math.inf (no DP) is written as null."""
    budget_f = _dec(budget)
    r = Receipt(
        receipt_id=receipt_id or uuid.uuid4().hex, sequence=sequence, kind="upload", client_id=client_id, dataset_id=dataset_id,
        artifact_digest=artifact_digest, artifact_name=artifact_name, epsilon_claimed=_dec(epsilon_claimed),
        epsilon_recomputed=_dec(epsilon_recomputed), delta=float(delta), accountant=accountant,
        accountant_params=dict(accountant_params), spent_before=_dec(spent_before),
        spent_after=_dec(spent_before) + _dec(epsilon_recomputed), budget=budget_f,
        delta_spent_before=float(delta_spent_before), delta_spent_after=float(delta_spent_before) + float(delta),
        delta_budget=_dec(delta_budget), issued_at=issued_at or utc_now_rfc3339(),
        previous_receipt_digest=previous_receipt_digest, provider_key=fingerprint(private_key), ledger_seq=ledger_seq,
    )
    return _sign(r, private_key)


def dp_params(dp: Any) -> dict[str, Any]:
    """accountant_params from a protocol.dp.DPStatement."""
    return {"mechanism": dp.mechanism, "noise_multiplier": float(dp.noise_multiplier), "sample_rate": float(dp.sample_rate),
            "steps": int(dp.steps), "max_grad_norm": float(dp.max_grad_norm)}


def issue_upload_receipt(private_key: PrivateKey, *, dp: Any, epsilon_recomputed: float | None = None, **kw: Any) -> Envelope:
    """`issue_receipt` with the claim, δ, accountant and parameters taken from a DPStatement;
    ε is recomputed with protocol.dp.recompute when not given."""
    if epsilon_recomputed is None:
        from protocol.dp import recompute

        epsilon_recomputed = recompute(dp)
    return issue_receipt(private_key, epsilon_claimed=dp.epsilon, epsilon_recomputed=epsilon_recomputed, delta=dp.delta,
                         accountant=dp.accountant, accountant_params=dp_params(dp), **kw)


def issue_deletion_receipt(private_key: PrivateKey, *, sequence: int, client_id: str, dataset_id: str, artifact_digest: str,
                           spent: float, budget: float | None, previous_receipt_digest: str,
                           deleted: Sequence[str] = ("expert", "connectors"), revokes_receipt_id: str | None = None,
                           delta_spent: float = 0.0, delta_budget: float | None = None, receipt_id: str | None = None,
                           issued_at: str | None = None, artifact_name: str = "expert", accountant: str = "rdp",
                           ledger_seq: int | None = None) -> Envelope:
    """Signs a **deletion** receipt (Forget): nothing is charged and nothing is refunded."""
    r = Receipt(
        receipt_id=receipt_id or uuid.uuid4().hex, sequence=sequence, kind="deletion", client_id=client_id, dataset_id=dataset_id,
        artifact_digest=artifact_digest, artifact_name=artifact_name, epsilon_claimed=0.0, epsilon_recomputed=0.0, delta=0.0,
        accountant=accountant, accountant_params={}, spent_before=_dec(spent), spent_after=_dec(spent), budget=_dec(budget),
        delta_spent_before=float(delta_spent), delta_spent_after=float(delta_spent), delta_budget=_dec(delta_budget),
        issued_at=issued_at or utc_now_rfc3339(), previous_receipt_digest=previous_receipt_digest,
        provider_key=fingerprint(private_key), ledger_seq=ledger_seq, deleted=tuple(deleted), revokes_receipt_id=revokes_receipt_id,
    )
    return _sign(r, private_key)


def _parse(statement: Any, digest: str) -> Receipt:
    def bad(msg: str, rule: str) -> ReceiptError:
        return ReceiptError("BAD_RECEIPT", f"receipt {digest}: {msg}", rule=rule)

    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise bad("payload is not an in-toto Statement v1", "_type")
    if not isinstance(statement.get("predicateType"), str) or statement["predicateType"] not in RECEIPT_PREDICATE_TYPES:
        raise bad(f"predicateType is {statement.get('predicateType')!r}, expected one of {sorted(RECEIPT_PREDICATE_TYPES)}", "predicateType")
    if set(statement) != {"_type", "subject", "predicateType", "predicate"}:
        raise bad(f"unexpected statement members {sorted(set(statement))}", "statement members")
    subj = statement.get("subject")
    if not (isinstance(subj, list) and len(subj) == 1 and isinstance(subj[0], dict) and isinstance(subj[0].get("digest"), dict)
            and isinstance(subj[0]["digest"].get("sha256"), str) and isinstance(subj[0].get("name"), str)):
        raise bad("subject must be exactly one {name, digest: {sha256}}", "subject")
    p = statement.get("predicate")
    expected = set(Receipt.__dataclass_fields__) - {"artifact_digest", "artifact_name", "digest"}
    if not isinstance(p, dict) or set(p) != expected:
        got = set(p) if isinstance(p, dict) else set()
        raise bad(f"predicate members differ from the receipt format: missing {sorted(expected - got)}, unexpected {sorted(got - expected)}", "predicate members")
    if not isinstance(p["deleted"], list) or not isinstance(p["accountant_params"], dict):
        raise bad("deleted must be a list and accountant_params an object", "types")
    for name in ("epsilon_claimed", "epsilon_recomputed", "spent_before", "spent_after", "budget", "delta_budget", "delta", "delta_spent_before", "delta_spent_after"):
        v = p[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad(f"{name} must be a number or null", name)
    try:
        return Receipt(
            receipt_id=p["receipt_id"], sequence=p["sequence"], kind=p["kind"], client_id=p["client_id"], dataset_id=p["dataset_id"],
            artifact_digest="sha256:" + subj[0]["digest"]["sha256"], artifact_name=subj[0]["name"],
            epsilon_claimed=_dec(p["epsilon_claimed"]), epsilon_recomputed=_dec(p["epsilon_recomputed"]), delta=_dec(p["delta"]),
            accountant=p["accountant"], accountant_params=p["accountant_params"], spent_before=_dec(p["spent_before"]),
            spent_after=_dec(p["spent_after"]), budget=_dec(p["budget"]), delta_spent_before=_dec(p["delta_spent_before"]),
            delta_spent_after=_dec(p["delta_spent_after"]), delta_budget=_dec(p["delta_budget"]), issued_at=p["issued_at"],
            previous_receipt_digest=p["previous_receipt_digest"], provider_key=p["provider_key"], ledger_seq=p["ledger_seq"],
            deleted=tuple(p["deleted"]), revokes_receipt_id=p["revokes_receipt_id"], digest=digest,
        )
    except (TypeError, ValueError) as e:
        raise bad(f"malformed field: {e}", "types") from None


def verify_receipt(envelope: Envelope | dict | str | bytes, provider_public_key: Any) -> Receipt:
    """Checks the DSSE signature (BAD_SIGNATURE), the statement and predicate (BAD_RECEIPT), the
    canonical payload, the signer named in the receipt, and the budget arithmetic (ARITHMETIC)."""
    env = _as_envelope(envelope)
    try:
        v = verify_envelope(env, provider_public_key, expected_payload_type=INTOTO_PAYLOAD_TYPE)
    except SignatureError as e:
        code = "BAD_SIGNATURE" if e.code in ("BAD_SIGNATURE", "NO_SIGNATURES") else "BAD_RECEIPT"
        raise ReceiptError(code, f"receipt signature: {e}", rule=e.rule) from None
    digest = "sha256:" + sha256_hex(v.payload)
    try:
        statement = parse_json(v.payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReceiptError("BAD_RECEIPT", f"receipt {digest}: payload is not JSON: {e}", rule="json") from None
    try:
        named = statement.get("predicateType") if isinstance(statement, dict) else None
        scheme = RECEIPT_PREDICATE_TYPES.get(named, RFC8785) if isinstance(named, str) else RFC8785
        canonical = canonical_json(statement, scheme)
    except ValueError as e:
        raise ReceiptError("BAD_RECEIPT", f"receipt {digest}: {e}", rule="canonical json") from None
    if canonical != v.payload:
        raise ReceiptError("BAD_RECEIPT", f"receipt {digest}: payload is not canonical JSON, so its digest would be ambiguous", rule="canonical json")
    r = _parse(statement, digest)
    if r.provider_key != v.key_fingerprint:
        raise ReceiptError("BAD_RECEIPT", f"receipt {r.receipt_id!r} names provider key {r.provider_key} but was signed by {v.key_fingerprint}", file=r.receipt_id, rule="provider_key")
    _check_semantics(r)
    return r


def verify_chain(envelopes: Iterable[Envelope | dict | str | bytes], provider_public_key: Any, *,
                 previous: Receipt | None = None) -> list[Receipt]:
    """Verifies a client's receipts in order: each signature, each receipt, sequence continuity
    (SEQUENCE_GAP), each previous_receipt_digest (CHAIN_BROKEN), one client only, and the running
    spend per dataset (ARITHMETIC: spent_before equals that dataset's previous spent_after).
    `previous` continues a chain whose earlier part was verified before; without it the first receipt
    must be sequence 1 linked to the genesis digest."""
    out: list[Receipt] = []
    prev = previous
    spent: dict[str, tuple[float, float]] = {}
    for i, env in enumerate(envelopes):
        r = verify_receipt(env, provider_public_key)
        where = f"receipt #{i} ({r.receipt_id!r}, sequence {r.sequence})"
        if prev is None:
            if r.sequence != 1:
                raise ReceiptError("SEQUENCE_GAP", f"{where}: the chain must start at sequence 1 (or pass the previous receipt)", file=r.receipt_id, rule="start at 1")
        else:
            if r.client_id != prev.client_id:
                raise ReceiptError("CHAIN_BROKEN", f"{where}: client {r.client_id!r} differs from {prev.client_id!r}; a chain belongs to one client", file=r.receipt_id, rule="one client")
            if r.sequence != prev.sequence + 1:
                raise ReceiptError("SEQUENCE_GAP", f"{where}: follows sequence {prev.sequence}; expected {prev.sequence + 1}", file=r.receipt_id, rule="consecutive sequence")
            if r.previous_receipt_digest != prev.digest:
                raise ReceiptError("CHAIN_BROKEN", f"{where}: previous_receipt_digest {r.previous_receipt_digest} != digest of sequence {prev.sequence} ({prev.digest})", file=r.receipt_id, rule="previous digest")
        if r.dataset_id in spent:
            eps_prev, delta_prev = spent[r.dataset_id]
            if not close(r.spent_before, eps_prev) or not close(r.delta_spent_before, delta_prev):
                raise ReceiptError("ARITHMETIC", f"{where}: dataset {r.dataset_id!r} spent_before {r.spent_before!r} != previous spent_after {eps_prev!r}", file=r.receipt_id, rule="running spend")
        elif previous is None and (r.spent_before != 0 or r.delta_spent_before != 0):
            raise ReceiptError("ARITHMETIC", f"{where}: first receipt for dataset {r.dataset_id!r} starts from spent {r.spent_before!r}, expected 0", file=r.receipt_id, rule="running spend")
        spent[r.dataset_id] = (r.spent_after, r.delta_spent_after)
        out.append(r)
        prev = r
    return out


# --- ledger events: budget changes, client key revocations, receipt key rotations ---------------------------

EVENT_PREDICATE_TYPE = "https://llamdex.dev/ledger-event/v1"
EVENT_KINDS = ("budget", "revocation", "receipt_key")
_EVENT_MEMBERS = {
    "budget": {"client_id", "dataset_id", "epsilon_budget", "delta_budget", "previous", "epsilon_spent", "delta_spent", "reason"},
    "revocation": {"client_id", "key_fingerprint", "reason"},
    "receipt_key": {"key_fingerprint", "public_key_pem", "previous_key_fingerprint", "endorsement"},
}
_EVENT_COMMON = {"event_id", "kind", "issued_at", "provider_key", "ledger_seq"}


@dataclass(frozen=True)
class LedgerEvent:
    """A verified ledger event: what changed outside the uploads and deletions, signed by the provider.

    Events are statements in the ledger's hash chain, not privacy receipts: they carry no client
    receipt sequence (a client's receipt chain is unchanged by them). ε values use math.inf for ∞.
    - `budget`: the (ε, δ) budget of (client, dataset) is set or changed; `previous` is the budget it
      replaces (None at registration); `epsilon_spent`/`delta_spent` what the dataset had spent then.
    - `revocation`: a client's signing key (`key_fingerprint`) is revoked from this point on.
    - `receipt_key`: the provider's receipt key becomes `key_fingerprint` (`public_key_pem`);
      `endorsement` is the handover statement signed by the previous key (`protocol.receipt_keys`), or None.
    """

    event_id: str
    kind: str
    issued_at: str
    provider_key: str
    ledger_seq: int
    subject_name: str
    subject_digest: str
    fields: dict[str, Any]
    digest: str = ""

    def budget(self) -> tuple[float, float]:
        return _dec(self.fields["epsilon_budget"]), _dec(self.fields["delta_budget"])


def event_subject(kind: str, fields: dict[str, Any]) -> tuple[str, str]:
    """(name, sha256 hex) of what an event is about: a client's dataset, a client key, or a receipt key."""
    if kind == "budget":
        who = {"client_id": fields["client_id"], "dataset_id": fields["dataset_id"]}
        return f"dataset:{who['client_id']}/{who['dataset_id']}", sha256_hex(canonical_json(who))
    if kind == "revocation":
        return f"client-key:{fields['client_id']}", fields["key_fingerprint"].split(":", 1)[1]
    return "receipt-key", fields["key_fingerprint"].split(":", 1)[1]


def _check_event(kind: str, fields: dict[str, Any], where: str) -> None:
    def bad(msg: str, rule: str) -> ReceiptError:
        return ReceiptError("BAD_RECEIPT", f"ledger event {where}: {msg}", rule=rule)

    if kind not in EVENT_KINDS:
        raise bad(f"kind {kind!r} is not one of {list(EVENT_KINDS)}", "event kind")
    if set(fields) != _EVENT_MEMBERS[kind]:
        raise bad(f"{kind} event members differ from the format: missing {sorted(_EVENT_MEMBERS[kind] - set(fields))}, "
                  f"unexpected {sorted(set(fields) - _EVENT_MEMBERS[kind])}", "event members")
    for name in ("client_id", "dataset_id", "reason", "public_key_pem"):
        if name in fields and (not isinstance(fields[name], str) or (name != "reason" and not fields[name])):
            raise bad(f"{name} must be a {'string' if name == 'reason' else 'non-empty string'}", name)
    for name in ("key_fingerprint", "previous_key_fingerprint"):
        if name in fields and fields[name] is not None and (not isinstance(fields[name], str) or not DIGEST_RE.fullmatch(fields[name])):
            raise bad(f"{name} {fields[name]!r} is not 'sha256:<64 hex>'", name)
    if kind == "receipt_key" and fields["endorsement"] is not None and not isinstance(fields["endorsement"], dict):
        raise bad("endorsement must be a DSSE envelope object or null", "endorsement")
    if kind == "budget":
        budgets = [fields["epsilon_budget"], fields["delta_budget"]]
        prev = fields["previous"]
        if prev is not None:
            if not isinstance(prev, dict) or set(prev) != {"epsilon_budget", "delta_budget"}:
                raise bad("previous must be null or {epsilon_budget, delta_budget}", "previous")
            budgets += [prev["epsilon_budget"], prev["delta_budget"]]
        for v in budgets:  # null = unbounded
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v <= 0):
                raise bad(f"a budget must be a positive number or null (unbounded), got {v!r}", "budget")
        for name in ("epsilon_spent", "delta_spent"):
            v = fields[name]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0):
                raise bad(f"{name} must be a non-negative number (null = infinity), got {v!r}", name)
        if _dec(fields["epsilon_spent"]) > _dec(fields["epsilon_budget"]) * (1 + ARITH_TOL):
            raise bad(f"budget ε {fields['epsilon_budget']!r} is below what the dataset spent ({fields['epsilon_spent']!r})", "budget >= spent", )


def issue_ledger_event(private_key: PrivateKey, kind: str, fields: dict[str, Any], *, ledger_seq: int, issued_at: str | None = None,
                       event_id: str | None = None) -> Envelope:
    """Signs a ledger event (see LedgerEvent) with the provider's receipt key."""
    eid = event_id or uuid.uuid4().hex
    _check_event(kind, fields, eid)
    name, digest_hex = event_subject(kind, fields)
    statement = {"_type": STATEMENT_TYPE, "subject": [{"name": name, "digest": {"sha256": digest_hex}}],
                 "predicateType": EVENT_PREDICATE_TYPE,
                 "predicate": {**fields, "event_id": eid, "kind": kind, "issued_at": issued_at or utc_now_rfc3339(),
                               "provider_key": fingerprint(private_key), "ledger_seq": int(ledger_seq)}}
    return sign_envelope(canonical_json(statement), INTOTO_PAYLOAD_TYPE, private_key)


def verify_ledger_event(envelope: Envelope | dict | str | bytes, provider_public_key: Any) -> LedgerEvent:
    """Checks the signature (BAD_SIGNATURE), the canonical payload, the statement and the event's members
    (BAD_RECEIPT) and the signer named in it; returns the event."""
    env = _as_envelope(envelope)
    try:
        v = verify_envelope(env, provider_public_key, expected_payload_type=INTOTO_PAYLOAD_TYPE)
    except SignatureError as e:
        code = "BAD_SIGNATURE" if e.code in ("BAD_SIGNATURE", "NO_SIGNATURES") else "BAD_RECEIPT"
        raise ReceiptError(code, f"ledger event signature: {e}", rule=e.rule) from None
    digest = "sha256:" + sha256_hex(v.payload)

    def bad(msg: str, rule: str) -> ReceiptError:
        return ReceiptError("BAD_RECEIPT", f"ledger event {digest}: {msg}", rule=rule)

    try:
        st = parse_json(v.payload)
        canonical = canonical_json(st)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"payload is not canonical JSON: {e}", "canonical json") from None
    if canonical != v.payload:
        raise bad("payload is not canonical JSON, so its digest would be ambiguous", "canonical json")
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != EVENT_PREDICATE_TYPE \
            or set(st) != {"_type", "subject", "predicateType", "predicate"}:
        raise bad(f"not an in-toto Statement v1 with predicateType {EVENT_PREDICATE_TYPE!r}", "statement")
    p, subj = st["predicate"], st["subject"]
    if not isinstance(p, dict) or not _EVENT_COMMON <= set(p) or not isinstance(p.get("kind"), str):
        raise bad(f"predicate must hold {sorted(_EVENT_COMMON)}", "predicate members")
    fields = {k: x for k, x in p.items() if k not in _EVENT_COMMON}
    _check_event(p["kind"], fields, digest)
    if not (isinstance(p["event_id"], str) and p["event_id"] and isinstance(p["issued_at"], str) and _RFC3339_RE.fullmatch(p["issued_at"])
            and isinstance(p["ledger_seq"], int) and not isinstance(p["ledger_seq"], bool) and p["ledger_seq"] >= 1):
        raise bad("event_id, issued_at (RFC 3339 UTC) and ledger_seq (>= 1) are required", "predicate members")
    name, digest_hex = event_subject(p["kind"], fields)
    if subj != [{"name": name, "digest": {"sha256": digest_hex}}]:
        raise bad(f"subject must be [{{name: {name!r}, digest: {{sha256: {digest_hex}}}}}]", "subject")
    if p["provider_key"] != v.key_fingerprint:
        raise bad(f"names provider key {p['provider_key']} but was signed by {v.key_fingerprint}", "provider_key")
    return LedgerEvent(p["event_id"], p["kind"], p["issued_at"], p["provider_key"], p["ledger_seq"], name, "sha256:" + digest_hex,
                       fields, digest)


__all__ = [
    "EVENT_KINDS", "EVENT_PREDICATE_TYPE", "GENESIS_DIGEST", "LedgerEvent", "RECEIPT_PREDICATE_TYPE", "RECEIPT_PREDICATE_TYPES", "Receipt", "dp_params",
    "event_subject", "issue_deletion_receipt", "issue_ledger_event", "issue_receipt", "issue_upload_receipt", "receipt_digest",
    "utc_now_rfc3339", "verify_chain", "verify_ledger_event", "verify_receipt",
]
