"""The signed expert artifact: round trip, deterministic tar, and every tampering caught by its own
code *before* any tensor is loaded."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from protocol.artifact import (
    ALLOWED_FILES,
    SIGNATURE_FILE,
    ArtifactVerifier,
    build_statement,
    make_bundle,
    pack_artifact,
    sign_artifact,
    unpack_artifact,
    write_artifact,
)
from protocol.dp import DPStatement
from protocol.encoding import FeatureEncoder
from protocol.errors import ArtifactError, SpecError
from protocol.expert_spec import ExpertSpec, build_expert, load_expert_state, save_expert
from protocol.keys import generate_private_key, model_signing_hint
from protocol.schema import PublicSchema

ROOT = Path(__file__).resolve().parents[1]
TITANIC = ROOT / "client_party" / "schemas" / "titanic.json"
TINY_SCHEMA = {
    "format": "llamdex.schema/v1", "name": "tiny", "version": "1", "description": "A tiny test table.", "subject": "person",
    "columns": [
        {"name": "age", "type": "int", "description": "Age in years.", "min": 0, "max": 100},
        {"name": "color", "type": "category", "description": "Favourite colour.", "categories": ["red", "blue"]},
    ],
    "label": {"name": "y", "classes": ["no", "yes"], "verbalizers": ["No", "Yes"], "question": "Is it yes?"},
}


def load_schema() -> PublicSchema:
    return PublicSchema.load(TITANIC) if TITANIC.exists() else PublicSchema.from_dict(TINY_SCHEMA)


def dp_statement() -> DPStatement:
    # the verifier only parses dp.json; the provider recomputes epsilon later (protocol.dp)
    return DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0,
                       accountant="rdp", epsilon=1.2141, delta=1e-5, dataset_size_bucket="1k-2k")


def make_expert(schema: PublicSchema, hidden=(8, 4), input_dim: int | None = None):
    torch.manual_seed(0)
    spec = ExpertSpec(input_dim=input_dim or FeatureEncoder(schema).dim, num_classes=schema.label.num_classes,
                      hidden=hidden, schema_digest=schema.digest)
    return build_expert(spec)


@pytest.fixture(scope="module")
def key():
    return generate_private_key()


@pytest.fixture
def artifact(tmp_path, key):
    schema = load_schema()
    folder = tmp_path / "expert-v1"
    write_artifact(folder, make_expert(schema), schema, dp_statement(), key)
    return folder


@pytest.fixture
def no_tensor_load(monkeypatch):
    """Any tensor load (safetensors or torch.load) during verification is a test failure."""
    import safetensors.torch

    calls = []

    def forbid(name):
        def f(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} called before verification finished")
        return f

    monkeypatch.setattr(safetensors.torch, "load_file", forbid("safetensors.torch.load_file"))
    monkeypatch.setattr(safetensors.torch, "load", forbid("safetensors.torch.load"))
    monkeypatch.setattr(torch, "load", forbid("torch.load"))
    return calls


def expect(code, folder, key, calls, file=None, trusted=None):
    with pytest.raises(ArtifactError) as ei:
        ArtifactVerifier(trusted if trusted is not None else key.public_key()).verify(folder)
    assert ei.value.code == code, str(ei.value)
    if file is not None:
        assert ei.value.file == file, str(ei.value)
        assert file in str(ei.value)
    assert calls == []
    return ei.value


# --- round trip ---------------------------------------------------------------------------------

def test_roundtrip(artifact, key, monkeypatch):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be used"))
    v = ArtifactVerifier(key.public_key()).verify(artifact)
    assert sorted(os.listdir(artifact)) == sorted(ALLOWED_FILES)
    assert v.digest.startswith("sha256:") and len(v.digest) == 71
    assert v.model_name == "expert-v1"
    assert v.schema.digest == v.spec.schema_digest
    assert v.dp.epsilon == pytest.approx(1.2141)
    assert set(v.files) == ALLOWED_FILES - {SIGNATURE_FILE}
    model = v.load_expert()
    ref = make_expert(v.schema)
    x = torch.rand(3, v.spec.input_dim)
    assert torch.allclose(model(x), ref.eval()(x))
    bundle = json.loads((artifact / SIGNATURE_FILE).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == model_signing_hint(key)
    st = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://model_signing/signature/v1.0"
    assert [r["name"] for r in st["predicate"]["resources"]] == sorted(ALLOWED_FILES - {SIGNATURE_FILE})
    assert st["predicate"]["serialization"]["method"] == "files"
    assert "model.sig" in st["predicate"]["serialization"]["ignore_paths"]


def test_trusts_any_of_several_keys(artifact, key):
    other = generate_private_key()
    ArtifactVerifier([other.public_key(), key.public_key()]).verify(artifact)


def test_pack_is_deterministic_and_unpacks(artifact, key, tmp_path):
    a = pack_artifact(artifact)
    os.utime(artifact / "schema.json", (1, 1))
    b = pack_artifact(artifact)
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as t:
        ms = t.getmembers()
    assert [m.name for m in ms] == sorted(ALLOWED_FILES)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.isreg() for m in ms)
    out = unpack_artifact(a, tmp_path / "unpacked", max_bytes=10 << 20)
    assert ArtifactVerifier(key.public_key()).verify(out).digest == ArtifactVerifier(key.public_key()).verify(artifact).digest


# --- tampering: every case raises its code and loads nothing -------------------------------------

def test_flipped_byte_in_tensors(artifact, key, no_tensor_load):
    p = artifact / "expert.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(bytes(data))
    expect("DIGEST_MISMATCH", artifact, key, no_tensor_load, file="expert.safetensors")


def test_edited_spec_field_same_size(artifact, key, no_tensor_load):
    p = artifact / "expert.json"
    p.write_text(p.read_text().replace('"relu"', '"tanh"'))
    expect("DIGEST_MISMATCH", artifact, key, no_tensor_load, file="expert.json")


def test_edited_spec_field_other_size(artifact, key, no_tensor_load):
    p = artifact / "expert.json"
    p.write_text(p.read_text().replace('"relu"', '"gelu" '))
    expect("SIZE_MISMATCH", artifact, key, no_tensor_load, file="expert.json")


def test_signature_from_another_key(artifact, key, no_tensor_load):
    mallory = generate_private_key()
    sign_artifact(artifact, mallory)
    expect("UNTRUSTED_KEY", artifact, key, no_tensor_load, file=SIGNATURE_FILE)
    # without the key hint, the signature itself fails against the trusted key
    b = json.loads((artifact / SIGNATURE_FILE).read_text())
    del b["verificationMaterial"]["publicKey"]
    (artifact / SIGNATURE_FILE).write_text(json.dumps(b))
    expect("BAD_SIGNATURE", artifact, key, no_tensor_load, file=SIGNATURE_FILE)


def test_forged_signature_bytes(artifact, key, no_tensor_load):
    b = json.loads((artifact / SIGNATURE_FILE).read_text())
    sig = bytearray(base64.b64decode(b["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[10] ^= 0xFF
    b["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (artifact / SIGNATURE_FILE).write_text(json.dumps(b))
    expect("BAD_SIGNATURE", artifact, key, no_tensor_load, file=SIGNATURE_FILE)


def test_statement_swapped_under_signature(artifact, key, no_tensor_load):
    b = json.loads((artifact / SIGNATURE_FILE).read_text())
    st = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
    st["predicate"]["resources"][0]["digest"] = "0" * 64
    b["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    (artifact / SIGNATURE_FILE).write_text(json.dumps(b))
    expect("BAD_SIGNATURE", artifact, key, no_tensor_load)


@pytest.mark.parametrize("name", ["evil.pkl", "weights.pt", "pytorch_model.bin", "notes.txt"])
def test_extra_file(artifact, key, no_tensor_load, name):
    import pickle

    (artifact / name).write_bytes(pickle.dumps({"x": 1}))
    err = expect("FORBIDDEN_FILE", artifact, key, no_tensor_load, file=name)
    if name.endswith((".pkl", ".pt", ".bin")):
        assert "pickle" in str(err)


def test_subdirectory_forbidden(artifact, key, no_tensor_load):
    (artifact / "extra").mkdir()
    expect("FORBIDDEN_FILE", artifact, key, no_tensor_load, file="extra")


def test_symlink(artifact, key, no_tensor_load, tmp_path):
    real = tmp_path / "schema-copy.json"
    shutil.copy(artifact / "schema.json", real)
    (artifact / "schema.json").unlink()
    (artifact / "schema.json").symlink_to(real)
    expect("SYMLINK", artifact, key, no_tensor_load, file="schema.json")


def test_symlinked_folder(artifact, key, no_tensor_load, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(artifact)
    expect("SYMLINK", link, key, no_tensor_load)


def test_missing_file(artifact, key, no_tensor_load):
    (artifact / "dp.json").unlink()
    expect("MISSING_FILE", artifact, key, no_tensor_load, file="dp.json")
    (artifact / SIGNATURE_FILE).unlink()
    expect("MISSING_FILE", artifact, key, no_tensor_load)


def test_unlisted_file(artifact, key, no_tensor_load):
    files = {n: (artifact / n).read_bytes() for n in ("expert.json", "expert.safetensors", "schema.json")}
    (artifact / SIGNATURE_FILE).write_text(json.dumps(make_bundle(build_statement(files, "x"), key)))
    expect("UNLISTED_FILE", artifact, key, no_tensor_load, file="dp.json")


def test_path_traversal_in_statement(artifact, key, no_tensor_load):
    files = {n: (artifact / n).read_bytes() for n in ("dp.json", "expert.json", "expert.safetensors", "schema.json")}
    files["../../etc/passwd"] = b"root:x:0:0"
    (artifact / SIGNATURE_FILE).write_text(json.dumps(make_bundle(build_statement(files, "x"), key)))
    expect("PATH_TRAVERSAL", artifact, key, no_tensor_load, file="../../etc/passwd")


def test_schema_digest_mismatch(artifact, key, no_tensor_load):
    d = json.loads((artifact / "schema.json").read_text())
    d["description"] += " Edited."
    (artifact / "schema.json").write_text(json.dumps(d))
    sign_artifact(artifact, key, check_content=False)  # validly signed, but inconsistent
    err = expect("SPEC_MISMATCH", artifact, key, no_tensor_load, file="expert.json")
    assert err.rule == "schema_digest"
    with pytest.raises(ArtifactError):  # the client side refuses to sign it in the first place
        sign_artifact(artifact, key)


def test_invalid_schema(artifact, key, no_tensor_load):
    d = json.loads((artifact / "schema.json").read_text())
    d["columns"][0]["type"] = "complex"
    (artifact / "schema.json").write_text(json.dumps(d))
    sign_artifact(artifact, key, check_content=False)
    expect("SCHEMA_INVALID", artifact, key, no_tensor_load, file="schema.json")


def test_input_dim_mismatch(artifact, key, no_tensor_load):
    schema = load_schema()
    model = make_expert(schema, input_dim=FeatureEncoder(schema).dim + 1)
    save_expert(model, artifact)
    sign_artifact(artifact, key, check_content=False)
    err = expect("SPEC_MISMATCH", artifact, key, no_tensor_load, file="expert.json")
    assert err.rule == "input_dim"


def test_tensor_shapes_mismatch_spec(artifact, key, no_tensor_load, tmp_path):
    schema = load_schema()
    save_expert(make_expert(schema, hidden=(6, 4)), tmp_path / "other")
    shutil.copy(tmp_path / "other" / "expert.safetensors", artifact / "expert.safetensors")  # spec still says (8, 4)
    sign_artifact(artifact, key, check_content=False)
    expect("TENSOR_MISMATCH", artifact, key, no_tensor_load, file="expert.safetensors")


def test_invalid_dp_statement(artifact, key, no_tensor_load):
    d = json.loads((artifact / "dp.json").read_text())
    d["mechanism"] = "magic"
    (artifact / "dp.json").write_text(json.dumps(d))
    sign_artifact(artifact, key, check_content=False)
    expect("DP_INVALID", artifact, key, no_tensor_load, file="dp.json")


def test_oversize_file_rejected_before_hashing(artifact, key, no_tensor_load):
    with pytest.raises(ArtifactError) as ei:
        ArtifactVerifier(key.public_key(), limits={"expert.safetensors": 100}).verify(artifact)
    assert ei.value.code == "FILE_TOO_LARGE" and ei.value.file == "expert.safetensors"


def test_tensors_swapped_after_verification(artifact, key, tmp_path):
    v = ArtifactVerifier(key.public_key()).verify(artifact)
    p = artifact / "expert.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as ei:
        v.load_tensors()
    assert ei.value.code == "DIGEST_MISMATCH"


# --- unsafe tars --------------------------------------------------------------------------------

def _tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data=b"{}"):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def _special(name, typ, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.linkname = linkname
    return ti, None


@pytest.mark.parametrize("entries,code", [
    ([_file("../expert.json")], "PATH_TRAVERSAL"),
    ([_file("/etc/expert.json")], "PATH_TRAVERSAL"),
    ([_file("sub/expert.json")], "PATH_TRAVERSAL"),
    ([_special("expert.json", tarfile.SYMTYPE, "/etc/passwd")], "SYMLINK"),
    ([_file("dp.json"), _special("expert.json", tarfile.LNKTYPE, "dp.json")], "SYMLINK"),
    ([_special("expert.json", tarfile.CHRTYPE)], "NOT_REGULAR_FILE"),
    ([_special("expert.json", tarfile.FIFOTYPE)], "NOT_REGULAR_FILE"),
    ([_special("schema.json", tarfile.DIRTYPE)], "NOT_REGULAR_FILE"),
    ([_file("model.pkl")], "FORBIDDEN_FILE"),
    ([_file("dp.json"), _file("dp.json")], "DUPLICATE_ENTRY"),
    ([_file("expert.json", b"x" * 2000)], "FILE_TOO_LARGE"),
])
def test_unpack_refuses(tmp_path, entries, code):
    dest = tmp_path / "out"
    with pytest.raises(ArtifactError) as ei:
        unpack_artifact(_tar(entries), dest, max_bytes=1000)
    assert ei.value.code == code, str(ei.value)
    assert not dest.exists() or not any(dest.iterdir())
    assert not (tmp_path / "expert.json").exists()


def test_unpack_refuses_nonempty_dest_and_garbage(artifact, tmp_path):
    data = pack_artifact(artifact)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "x").write_text("x")
    with pytest.raises(ArtifactError) as ei:
        unpack_artifact(data, dest)
    assert ei.value.code == "DEST_NOT_EMPTY"
    with pytest.raises(ArtifactError) as ei:
        unpack_artifact(b"\x00garbage" * 100, tmp_path / "g")
    assert ei.value.code == "BAD_ARCHIVE"


# --- expert spec v2: numeric inputs through fixed piecewise-linear bins --------------------------

def test_binned_expert_round_trips_and_v1_specs_serialize_as_before(tmp_path, key):
    from client_party.expert_training import expert_spec

    schema = load_schema()
    spec = expert_spec(schema, numeric_bins=4)
    assert spec.format == "llamdex.expert-mlp/v2" and spec.numeric_inputs == FeatureEncoder(schema).numeric_positions
    torch.manual_seed(0)
    model = build_expert(spec).eval()
    write_artifact(tmp_path / "binned", model, schema, dp_statement(), key)
    verified = ArtifactVerifier(key.public_key()).verify(tmp_path / "binned")
    loaded = load_expert_state(verified.spec, verified.load_tensors())
    x = torch.rand(5, spec.input_dim)
    assert torch.equal(loaded(x), model(x))
    v1 = json.loads(ExpertSpec(input_dim=3, num_classes=2).to_json())   # an old artifact's spec document, unchanged
    assert set(v1) == {"input_dim", "num_classes", "hidden", "activation", "layer_norm", "schema_digest", "format"}
    assert expert_spec(schema, 0).format == "llamdex.expert-mlp/v1"


def test_numeric_bins_are_the_piecewise_linear_ramps():
    from protocol.expert_spec import NumericBins

    out = NumericBins((1,), 4)(torch.tensor([[0.9, 0.3], [0.0, 1.0]]))
    assert torch.allclose(out, torch.tensor([[0.9, 0.3, 1.0, 0.2, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]]))


@pytest.mark.parametrize("change, message", [
    ({"numeric_bins": 1}, "numeric_bins must be an integer in 2..64"),
    ({"numeric_bins": 65}, "numeric_bins must be an integer in 2..64"),
    ({"numeric_inputs": [3, 1]}, "distinct increasing"),
    ({"numeric_inputs": [99]}, "distinct increasing"),
    ({"numeric_inputs": []}, "distinct increasing"),
    ({"format": "llamdex.expert-mlp/v1"}, "need format"),
])
def test_binned_spec_refuses_bad_fields(change, message):
    d = {"input_dim": 9, "num_classes": 2, "numeric_inputs": [3], "numeric_bins": 16, "format": "llamdex.expert-mlp/v2", **change}
    with pytest.raises(SpecError, match=message):
        ExpertSpec.from_dict(d)


def test_binned_spec_must_bin_the_schemas_numeric_values(artifact, key, no_tensor_load):
    schema = load_schema()
    numeric = FeatureEncoder(schema).numeric_positions
    wrong = tuple(sorted({numeric[0] + 1, *numeric[1:]}))     # its missing flag instead of the first numeric value
    spec = ExpertSpec.binned(FeatureEncoder(schema).dim, schema.label.num_classes, wrong, 4, hidden=(8, 4), schema_digest=schema.digest)
    save_expert(build_expert(spec), artifact)
    sign_artifact(artifact, key, check_content=False)
    err = expect("SPEC_MISMATCH", artifact, key, no_tensor_load, file="expert.json")
    assert err.rule == "numeric_inputs"
