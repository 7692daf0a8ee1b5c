"""Privacy receipts: in-toto statements in DSSE envelopes, signed by the provider, hash-chained per client."""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess

import pytest

from protocol.canonical import canonical_json
from protocol.dp import DPStatement
from protocol.dsse import INTOTO_PAYLOAD_TYPE, Envelope, sign_envelope
from protocol.errors import ReceiptError
from protocol.keys import fingerprint, generate_private_key, save_public_key
from protocol.receipts import (
    GENESIS_DIGEST,
    RECEIPT_PREDICATE_TYPE,
    issue_deletion_receipt,
    issue_receipt,
    issue_upload_receipt,
    receipt_digest,
    verify_chain,
    verify_receipt,
)

ART = "sha256:" + "ab" * 32
ART2 = "sha256:" + "cd" * 32
PARAMS = {"mechanism": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100, "max_grad_norm": 1.0}


@pytest.fixture(scope="module")
def key():
    return generate_private_key()


def upload(key, seq, prev, spent_before=0.0, eps=1.0, client="alice", dataset="titanic", budget=5.0, art=ART, **kw):
    return issue_receipt(key, sequence=seq, client_id=client, dataset_id=dataset, artifact_digest=art, epsilon_claimed=eps,
                         epsilon_recomputed=eps, delta=1e-5, accountant="rdp", accountant_params=PARAMS,
                         spent_before=spent_before, delta_spent_before=1e-5 * round(spent_before), budget=budget,
                         delta_budget=1e-3, previous_receipt_digest=prev, **kw)


def chain(key, n=3):
    envs, prev, spent = [], GENESIS_DIGEST, 0.0
    for i in range(n):
        e = upload(key, i + 1, prev, spent_before=spent)
        envs.append(e)
        prev, spent = receipt_digest(e), spent + 1.0
    return envs


def test_roundtrip(key):
    env = upload(key, 1, GENESIS_DIGEST, artifact_name="expert-v1", ledger_seq=7)
    r = verify_receipt(env.to_json(), key.public_key())
    assert (r.sequence, r.kind, r.client_id, r.dataset_id, r.artifact_digest) == (1, "upload", "alice", "titanic", ART)
    assert r.spent_before == 0 and r.spent_after == pytest.approx(1.0) and r.budget == 5.0 and r.remaining == pytest.approx(4.0)
    assert r.previous_receipt_digest == GENESIS_DIGEST and r.provider_key == fingerprint(key) and r.ledger_seq == 7
    assert r.digest == receipt_digest(env) and r.issued_at.endswith("Z")
    st = json.loads(env.payload)
    assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"] == RECEIPT_PREDICATE_TYPE
    assert st["subject"] == [{"name": "expert-v1", "digest": {"sha256": "ab" * 32}}]
    assert env.payload == canonical_json(st)
    assert env.payload_type == INTOTO_PAYLOAD_TYPE


def test_upload_receipt_from_dp_statement(key):
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0,
                     accountant="rdp", epsilon=1.2141, delta=1e-5, dataset_size_bucket="1k-2k")
    env = issue_upload_receipt(key, dp=dp, epsilon_recomputed=1.21414, sequence=1, client_id="c", dataset_id="d",
                               artifact_digest=ART, spent_before=0.0, budget=10.0, previous_receipt_digest=GENESIS_DIGEST)
    r = verify_receipt(env, key.public_key())
    assert r.epsilon_claimed == 1.2141 and r.epsilon_recomputed == 1.21414 and r.accountant_params["steps"] == 100


def test_no_dp_upload_needs_unbounded_budget(key):
    env = issue_receipt(key, sequence=1, client_id="c", dataset_id="d", artifact_digest=ART, epsilon_claimed=math.inf,
                        epsilon_recomputed=math.inf, delta=0.0, accountant="rdp", accountant_params={"mechanism": "none"},
                        spent_before=0.0, budget=None, previous_receipt_digest=GENESIS_DIGEST)
    p = json.loads(env.payload)["predicate"]
    assert p["epsilon_claimed"] is None and p["spent_after"] is None and p["budget"] is None
    r = verify_receipt(env, key.public_key())
    assert math.isinf(r.spent_after)
    with pytest.raises(ReceiptError) as ei:
        issue_receipt(key, sequence=1, client_id="c", dataset_id="d", artifact_digest=ART, epsilon_claimed=math.inf,
                      epsilon_recomputed=math.inf, delta=0.0, accountant="rdp", accountant_params={}, spent_before=0.0,
                      budget=3.0, previous_receipt_digest=GENESIS_DIGEST)
    assert ei.value.code == "ARITHMETIC"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command line not available")
def test_openssl_verifies_receipt_signature(key, tmp_path):
    env = upload(key, 1, GENESIS_DIGEST)
    d = env.to_dict()
    payload = base64.b64decode(d["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(d["payloadType"]), d["payloadType"].encode(), len(payload), payload)
    (tmp_path / "pae.bin").write_bytes(pae)
    (tmp_path / "sig.der").write_bytes(base64.b64decode(d["signatures"][0]["sig"]))
    save_public_key(key, tmp_path / "pub.pem")
    r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature", str(tmp_path / "sig.der"),
                        str(tmp_path / "pae.bin")], capture_output=True, text=True)
    assert r.returncode == 0 and "Verified OK" in r.stdout, r.stdout + r.stderr
    # and openssl rejects a tampered PAE
    (tmp_path / "pae.bin").write_bytes(pae.replace(b"alice", b"alicf"))
    r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature", str(tmp_path / "sig.der"),
                        str(tmp_path / "pae.bin")], capture_output=True, text=True)
    assert r.returncode != 0


def test_bad_signature_and_wrong_key(key):
    env = upload(key, 1, GENESIS_DIGEST)
    forged = Envelope(env.payload_type, env.payload.replace(b'"alice"', b'"mallory"'), env.signatures)
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(forged, key.public_key())
    assert ei.value.code == "BAD_SIGNATURE"
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(env, generate_private_key().public_key())
    assert ei.value.code == "BAD_SIGNATURE"


def test_non_canonical_or_wrong_signer_refused(key):
    env = upload(key, 1, GENESIS_DIGEST)
    st = json.loads(env.payload)
    pretty = sign_envelope(json.dumps(st, indent=2).encode(), INTOTO_PAYLOAD_TYPE, key)
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(pretty, key.public_key())
    assert ei.value.code == "BAD_RECEIPT" and "canonical" in str(ei.value)
    # a receipt naming another provider key than the one that signed it
    other = generate_private_key()
    resigned = sign_envelope(env.payload, INTOTO_PAYLOAD_TYPE, other)
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(resigned, other.public_key())
    assert ei.value.code == "BAD_RECEIPT" and "provider key" in str(ei.value)


def test_arithmetic_checked_on_verify(key):
    env = upload(key, 1, GENESIS_DIGEST)
    st = json.loads(env.payload)
    st["predicate"]["spent_after"] = 0.5
    bad = sign_envelope(canonical_json(st), INTOTO_PAYLOAD_TYPE, key)
    with pytest.raises(ReceiptError) as ei:
        verify_receipt(bad, key.public_key())
    assert ei.value.code == "ARITHMETIC"
    with pytest.raises(ReceiptError) as ei:
        upload(key, 1, GENESIS_DIGEST, spent_before=4.5, budget=5.0)
    assert ei.value.code == "ARITHMETIC"


def test_chain_verifies(key):
    envs = chain(key, 3)
    d = issue_deletion_receipt(key, sequence=4, client_id="alice", dataset_id="titanic", artifact_digest=ART, spent=3.0, budget=5.0,
                               delta_spent=3e-5, delta_budget=1e-3, previous_receipt_digest=receipt_digest(envs[-1]),
                               revokes_receipt_id="r1")
    rs = verify_chain(envs + [d], key.public_key())
    assert [r.sequence for r in rs] == [1, 2, 3, 4]
    assert rs[-1].kind == "deletion" and rs[-1].spent_after == rs[-1].spent_before == pytest.approx(3.0)
    assert rs[-1].deleted == ("expert", "connectors") and rs[-1].revokes_receipt_id == "r1"
    # continuing a chain from a verified prefix
    assert verify_chain(envs[2:] + [d], key.public_key(), previous=rs[1])[0].sequence == 3


def test_chain_breaks_detected(key):
    envs = chain(key, 3)
    with pytest.raises(ReceiptError) as ei:  # omitted receipt
        verify_chain([envs[0], envs[2]], key.public_key())
    assert ei.value.code == "SEQUENCE_GAP"
    with pytest.raises(ReceiptError) as ei:  # reordered
        verify_chain([envs[1], envs[0]], key.public_key())
    assert ei.value.code == "SEQUENCE_GAP"
    with pytest.raises(ReceiptError) as ei:  # forked: right sequence, wrong previous digest
        verify_chain([envs[0], upload(key, 2, receipt_digest(envs[0]).replace("sha256:", "sha256:f")[:71], spent_before=1.0)],
                     key.public_key())
    assert ei.value.code == "CHAIN_BROKEN"
    with pytest.raises(ReceiptError) as ei:  # another client's receipt spliced in
        verify_chain([envs[0], upload(key, 2, receipt_digest(envs[0]), spent_before=1.0, client="bob")], key.public_key())
    assert ei.value.code == "CHAIN_BROKEN"
    with pytest.raises(ReceiptError) as ei:  # spend restarting from zero (budget reset)
        verify_chain([envs[0], upload(key, 2, receipt_digest(envs[0]), spent_before=0.0)], key.public_key())
    assert ei.value.code == "ARITHMETIC"
    with pytest.raises(ReceiptError) as ei:  # a first receipt that does not link to genesis
        upload(key, 1, receipt_digest(envs[0]))
    assert ei.value.code == "CHAIN_BROKEN"


def test_a_v1_receipt_made_before_rfc8785_still_verifies_and_v2_requires_rfc8785(key):
    """Receipts clients already keep must verify after canonical JSON became RFC 8785."""
    from protocol.canonical import LEGACY

    st = json.loads(upload(key, 1, GENESIS_DIGEST).payload)
    v1 = {**st, "predicateType": "https://llamdex.dev/privacy-receipt/v1"}
    old = sign_envelope(canonical_json(v1, LEGACY), INTOTO_PAYLOAD_TYPE, key)
    assert canonical_json(v1, LEGACY) != canonical_json(v1)           # δ = 1e-05 is written differently
    assert verify_receipt(old, key.public_key()).delta == 1e-5
    mixed = sign_envelope(canonical_json(st, LEGACY), INTOTO_PAYLOAD_TYPE, key)   # v2 type, old bytes: ambiguous
    with pytest.raises(ReceiptError, match="canonical"):
        verify_receipt(mixed, key.public_key())


def test_a_store_refuses_a_second_history_and_says_a_restored_provider_makes_one_too(key, tmp_path):
    """A provider restored from a backup signs sequence 2 again for another upload: the store keeps what it holds, and
    the refusal names the receipts (and so the ε) the provider's ledger forgot, besides the attack it may be."""
    from client_party.receipt_store import ReceiptStore

    store = ReceiptStore(tmp_path / "r.db", "alice", key.public_key())
    held = chain(key, 3)
    assert store.add_many([e.to_dict() for e in held]) == 3
    forked = upload(key, 2, receipt_digest(held[0]), spent_before=1.0, art=ART2)
    with pytest.raises(ReceiptError) as ei:
        store.add(forked.to_dict())
    assert ei.value.code == "CHAIN_BROKEN"
    assert "two histories" in str(ei.value) and "restored from a backup" in str(ei.value) and "receipts 2-3" in str(ei.value)
    assert [e["payload"] for e in store.envelopes()] == [e.to_dict()["payload"] for e in held]
