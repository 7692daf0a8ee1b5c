"""Interop with OpenSSF model-signing (PyPI `model-signing` 1.x): its `verify key` accepts our
artifacts, and our verifier accepts folders it signed with `sign key` (CLI and Python API)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

model_signing = pytest.importorskip(
    "model_signing",
    reason="PyPI package `model-signing` (with `pyopenssl`) is not installed: `pip install model-signing pyopenssl` to run interop tests",
)

from protocol.artifact import SIGNATURE_FILE, ArtifactVerifier, sign_artifact, write_artifact  # noqa: E402
from protocol.dp import DPStatement  # noqa: E402
from protocol.encoding import FeatureEncoder  # noqa: E402
from protocol.errors import ArtifactError  # noqa: E402
from protocol.expert_spec import ExpertSpec, build_expert  # noqa: E402
from protocol.keys import generate_private_key, load_public_key, save_private_key, save_public_key  # noqa: E402
from protocol.schema import PublicSchema  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TITANIC = ROOT / "client_party" / "schemas" / "titanic.json"
TINY_SCHEMA = {
    "format": "llamdex.schema/v1", "name": "tiny", "version": "1", "description": "A tiny test table.", "subject": "person",
    "columns": [{"name": "age", "type": "int", "description": "Age in years.", "min": 0, "max": 100}],
    "label": {"name": "y", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Is it yes?"},
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def setup(tmp_path):
    key = generate_private_key()
    save_private_key(key, tmp_path / "key.pem")
    save_public_key(key, tmp_path / "pub.pem")
    schema = PublicSchema.load(TITANIC) if TITANIC.exists() else PublicSchema.from_dict(TINY_SCHEMA)
    spec = ExpertSpec(input_dim=FeatureEncoder(schema).dim, num_classes=2, hidden=(8, 4), schema_digest=schema.digest)
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0,
                     accountant="rdp", epsilon=1.2141, delta=1e-5, dataset_size_bucket="1k-2k")
    folder = tmp_path / "expert"
    write_artifact(folder, build_expert(spec), schema, dp)  # unsigned
    return key, tmp_path, folder


def test_model_signing_cli_verifies_ours(setup):
    key, tmp, folder = setup
    sign_artifact(folder, key)
    r = cli("verify", "key", "--signature", str(folder / SIGNATURE_FILE), "--public_key", str(tmp / "pub.pem"), str(folder))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Verification succeeded" in r.stdout
    # and it rejects our artifact once tampered
    (folder / "dp.json").write_text((folder / "dp.json").read_text().replace("1.2141", "0.0001"))
    r = cli("verify", "key", "--signature", str(folder / SIGNATURE_FILE), "--public_key", str(tmp / "pub.pem"), str(folder))
    assert r.returncode != 0
    assert "dp.json" in r.stdout + r.stderr


def test_model_signing_api_verifies_ours(setup):
    from model_signing import hashing, verifying

    key, tmp, folder = setup
    sign_artifact(folder, key)
    verifying.Config().use_elliptic_key_verifier(public_key=tmp / "pub.pem").verify(folder, folder / SIGNATURE_FILE)
    # with the hashing configuration stated explicitly rather than guessed from the signature
    hc = hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])
    verifying.Config().use_elliptic_key_verifier(public_key=tmp / "pub.pem").set_hashing_config(hc).verify(folder, folder / SIGNATURE_FILE)


def test_we_verify_model_signing_cli_signature(setup):
    key, tmp, folder = setup
    r = cli("sign", "key", "--private_key", str(tmp / "key.pem"), "--signature", str(folder / SIGNATURE_FILE), str(folder))
    assert r.returncode == 0, r.stdout + r.stderr
    theirs = ArtifactVerifier(load_public_key(tmp / "pub.pem")).verify(folder)
    assert theirs.model_name == "expert"
    sign_artifact(folder, key)
    ours = ArtifactVerifier(key.public_key()).verify(folder)
    assert ours.digest == theirs.digest  # same manifest root digest for the same files


def test_we_verify_model_signing_api_signature_and_catch_tampering(setup):
    from model_signing import signing

    key, tmp, folder = setup
    signing.Config().use_elliptic_key_signer(private_key=tmp / "key.pem").sign(folder, folder / SIGNATURE_FILE)
    bundle = json.loads((folder / SIGNATURE_FILE).read_text())
    assert bundle["dsseEnvelope"]["signatures"][0]["keyid"] == ""  # theirs carries no keyid; the hint selects the key
    v = ArtifactVerifier([generate_private_key().public_key(), key.public_key()]).verify(folder)
    assert v.spec.hidden == (8, 4)
    p = folder / "expert.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as ei:
        ArtifactVerifier(key.public_key()).verify(folder)
    assert ei.value.code == "DIGEST_MISMATCH"
    # a different key signing with model_signing is refused by hint
    other = generate_private_key()
    save_private_key(other, tmp / "other.pem")
    p.write_bytes(bytes(data))
    signing.Config().use_elliptic_key_signer(private_key=tmp / "other.pem").sign(folder, folder / SIGNATURE_FILE)
    with pytest.raises(ArtifactError) as ei:
        ArtifactVerifier(key.public_key()).verify(folder)
    assert ei.value.code == "UNTRUSTED_KEY"
