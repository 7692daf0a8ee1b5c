"""Keys (P-256 PEM, 0600, fingerprints) and DSSE envelopes (PAE, sign/verify, precise failures)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from protocol.dsse import INTOTO_PAYLOAD_TYPE, Envelope, Signature, pae, sign_envelope, verify_envelope
from protocol.errors import KeyMaterialError, SignatureError
from protocol.keys import (
    fingerprint,
    generate_keypair,
    generate_private_key,
    load_private_key,
    load_public_key,
    model_signing_hint,
    public_key_pem,
    save_private_key,
    save_public_key,
)

OPENSSL = shutil.which("openssl")


# --- keys ---------------------------------------------------------------------------------------

def test_generate_save_load_roundtrip_and_mode(tmp_path):
    key = generate_private_key()
    assert key.curve.name == "secp256r1"
    p = save_private_key(key, tmp_path / "k.pem")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    save_public_key(key, tmp_path / "k.pub")
    loaded = load_private_key(p)
    assert fingerprint(loaded) == fingerprint(key) == fingerprint(load_public_key(tmp_path / "k.pub"))


def test_private_key_created_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        p = save_private_key(generate_private_key(), tmp_path / "k.pem")
        p2 = save_private_key(generate_private_key(), p, overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p2).st_mode) == 0o600


def test_refuses_to_clobber_and_symlink(tmp_path):
    key = generate_private_key()
    p = save_private_key(key, tmp_path / "k.pem")
    with pytest.raises(KeyMaterialError) as ei:
        save_private_key(key, p)
    assert ei.value.code == "KEY_EXISTS"
    target = tmp_path / "elsewhere"
    target.write_text("do not touch")
    (tmp_path / "link.pem").symlink_to(target)
    with pytest.raises(KeyMaterialError):
        save_private_key(key, tmp_path / "link.pem")
    assert target.read_text() == "do not touch"


def test_password_protected_key(tmp_path):
    key = generate_private_key()
    p = save_private_key(key, tmp_path / "k.pem", password="s3cret")
    assert b"ENCRYPTED" in p.read_bytes()
    assert fingerprint(load_private_key(p, password="s3cret")) == fingerprint(key)
    with pytest.raises(KeyMaterialError) as ei:
        load_private_key(p)
    assert ei.value.code == "KEY_PASSWORD"
    with pytest.raises(KeyMaterialError):
        load_private_key(p, password="wrong")


def test_load_refuses_group_readable_private_key(tmp_path):
    p = save_private_key(generate_private_key(), tmp_path / "k.pem")
    os.chmod(p, 0o644)
    with pytest.raises(KeyMaterialError) as ei:
        load_private_key(p)
    assert ei.value.code == "KEY_PERMISSIONS" and "0644" in str(ei.value)
    load_private_key(p, check_permissions=False)


def test_non_ecdsa_key_refused():
    from cryptography.hazmat.primitives import serialization

    pem = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyMaterialError) as ei:
        load_public_key(pem)
    assert ei.value.code == "UNSUPPORTED_KEY_TYPE"
    with pytest.raises(KeyMaterialError):
        generate_private_key("P-192")


def test_generate_keypair(tmp_path):
    priv, pub, key = generate_keypair(tmp_path / "keys", "provider")
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert fingerprint(load_public_key(pub)) == fingerprint(key)


def test_fingerprint_is_sha256_of_der_spki(tmp_path):
    key = generate_private_key()
    fp = fingerprint(key)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)
    assert model_signing_hint(key) == hashlib.sha256(public_key_pem(key)).hexdigest()
    if OPENSSL:
        pub = save_public_key(key, tmp_path / "k.pub")
        der = subprocess.run([OPENSSL, "pkey", "-pubin", "-in", str(pub), "-outform", "DER"], capture_output=True, check=True).stdout
        assert fp == "sha256:" + hashlib.sha256(der).hexdigest()


# --- DSSE ---------------------------------------------------------------------------------------

def test_pae_matches_spec_vector():
    # secure-systems-lab/dsse protocol.md test vector
    assert pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    # lengths are in bytes, not characters
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 " + "é".encode()


def test_pae_matches_model_signing():
    ms = pytest.importorskip("model_signing._signing.sign_sigstore_pb", reason="model-signing not installed")
    payload = b'{"_type":"https://in-toto.io/Statement/v1"}'
    assert ms.pae(payload) == pae(INTOTO_PAYLOAD_TYPE, payload)


def test_sign_verify_roundtrip_json():
    key = generate_private_key()
    env = sign_envelope(b'{"a":1}', INTOTO_PAYLOAD_TYPE, key)
    assert env.signatures[0].keyid == fingerprint(key)
    d = env.to_dict()
    assert set(d) == {"payload", "payloadType", "signatures"} and base64.b64decode(d["payload"]) == b'{"a":1}'
    env2 = Envelope.from_json(env.to_json())
    assert env2 == env
    v = verify_envelope(env2, key.public_key(), expected_payload_type=INTOTO_PAYLOAD_TYPE)
    assert v.payload == b'{"a":1}' and v.key_fingerprint == fingerprint(key)
    # dict and JSON inputs, and a list of trusted keys in which the signer is not first
    other = generate_private_key()
    assert verify_envelope(d, [other.public_key(), key.public_key()]).key_fingerprint == fingerprint(key)
    # an unknown keyid is only a hint: every trusted key is tried
    env3 = Envelope(env.payload_type, env.payload, (Signature(env.signatures[0].sig, keyid="whatever"),))
    verify_envelope(env3.to_json(), key.public_key())


@pytest.mark.parametrize("curve, used, other", [("P-256", "SHA256", "SHA384"), ("P-384", "SHA384", "SHA256"), ("P-521", "SHA512", "SHA256")])
def test_each_curve_signs_with_its_own_hash(curve, used, other):
    """The signature checks out, with cryptography alone, under ECDSA with the curve's hash over PAE, and not under another hash."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = generate_private_key(curve)
    env = sign_envelope(b"x", "text/plain", key)
    verify_envelope(env, key.public_key())
    sig, message = env.signatures[0].sig, pae("text/plain", b"x")
    key.public_key().verify(sig, message, ec.ECDSA(getattr(hashes, used)()))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig, message, ec.ECDSA(getattr(hashes, other)()))


@pytest.mark.parametrize("case", ["payload", "type", "wrong_key", "sig_bytes"])
def test_verify_rejects_tampering(case):
    key = generate_private_key()
    env = sign_envelope(b'{"a":1}', INTOTO_PAYLOAD_TYPE, key)
    trusted = key.public_key()
    if case == "payload":
        env = Envelope(env.payload_type, b'{"a":2}', env.signatures)
    elif case == "type":
        env = Envelope("text/plain", env.payload, env.signatures)
    elif case == "wrong_key":
        trusted = generate_private_key().public_key()
    else:
        sig = bytearray(env.signatures[0].sig)
        sig[-1] ^= 1
        env = Envelope(env.payload_type, env.payload, (Signature(bytes(sig), env.signatures[0].keyid),))
    with pytest.raises(SignatureError) as ei:
        verify_envelope(env, trusted)
    assert ei.value.code == "BAD_SIGNATURE"
    assert "PAE" in str(ei.value)


def test_verify_precise_errors():
    key = generate_private_key()
    env = sign_envelope(b"{}", INTOTO_PAYLOAD_TYPE, key)
    with pytest.raises(SignatureError) as ei:
        verify_envelope(env, key.public_key(), expected_payload_type="application/json")
    assert ei.value.code == "PAYLOAD_TYPE_MISMATCH"
    with pytest.raises(SignatureError) as ei:
        verify_envelope(Envelope(env.payload_type, env.payload, ()), key.public_key())
    assert ei.value.code == "NO_SIGNATURES"
    for bad in ('{"payload": "!!!", "payloadType": "x", "signatures": []}', "[]", "not json",
                '{"payloadType": "x", "signatures": []}', '{"payload": "", "payloadType": "x", "signatures": [{"keyid": ""}]}'):
        with pytest.raises(SignatureError) as ei:
            verify_envelope(bad, key.public_key())
        assert ei.value.code == "MALFORMED_ENVELOPE", bad


@pytest.mark.skipif(OPENSSL is None, reason="openssl command line not available")
def test_openssl_verifies_dsse_signature(tmp_path):
    key = generate_private_key()
    env = sign_envelope(b'{"hello":"world"}', INTOTO_PAYLOAD_TYPE, key)
    (tmp_path / "pae.bin").write_bytes(env.pae())
    (tmp_path / "sig.der").write_bytes(env.signatures[0].sig)
    save_public_key(key, tmp_path / "pub.pem")
    r = subprocess.run([OPENSSL, "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature", str(tmp_path / "sig.der"),
                        str(tmp_path / "pae.bin")], capture_output=True, text=True)
    assert r.returncode == 0 and "Verified OK" in r.stdout, r.stdout + r.stderr
