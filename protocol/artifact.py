"""The expert artifact (docs/PROTOCOL.md, "Upload"): a flat folder, or a deterministic tar of it, holding

    expert.safetensors   the expert's tensors (safetensors only; never pickle)
    expert.json          the architecture spec (protocol.expert_spec.ExpertSpec)
    schema.json          the public schema (protocol.schema.PublicSchema)
    dp.json              the DP statement (protocol.dp.DPStatement)
    model.sig            the signature, in the OpenSSF model-signing format

`model.sig` is what `model_signing sign key` (PyPI `model-signing` 1.x) writes: a Sigstore bundle
(`application/vnd.dev.sigstore.bundle.v0.3+json`) with `verificationMaterial.publicKey.hint` (SHA-256
hex of the signer's PEM public key) and a DSSE envelope (`application/vnd.in-toto+json`) whose payload
is an in-toto Statement v1:

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": <model name>, "digest": {"sha256": <root>}}],
     "predicateType": "https://model_signing/signature/v1.0",
     "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false,
                                     "ignore_paths": [".git", ..., "model.sig"]},
                   "resources": [{"name": <file>, "algorithm": "sha256", "digest": <hex>}, ...],
                   "llamdex": {"format": "llamdex.artifact/v1", "sizes": {<file>: <bytes>, ...}}}}

`root` is SHA-256 over the concatenated raw file digests in resource order (sorted by name); it is the
**artifact digest** (`sha256:<root>`) that receipts and the ledger name. The `llamdex` predicate member
is our extension (file sizes); model-signing v1.0 verifiers ignore members they do not know, and our
verifier accepts statements without it (a folder signed by `model_signing` itself).

Verification (`ArtifactVerifier.verify`) runs, in this order, and stops at the first failure with an
`ArtifactError` subclass whose `.code` names the rule and `.file` the file:
  1. layout: a real directory; no symlink (SYMLINK), no non-regular file (NOT_REGULAR_FILE), no name
     outside the allowed set (FORBIDDEN_FILE: *.pkl, *.pt, *.bin, sub-folders, ...), every required
     file present (MISSING_FILE), each file under its size limit (FILE_TOO_LARGE);
  2. signature: bundle shape and media type (BAD_BUNDLE), key hint against the trusted keys
     (UNTRUSTED_KEY), ECDSA over the DSSE PAE (BAD_SIGNATURE), in-toto statement and predicate
     (BAD_STATEMENT, UNSUPPORTED_SERIALIZATION), resource names (PATH_TRAVERSAL);
  3. integrity: listed ⇔ present (UNLISTED_FILE / MISSING_FILE), sizes (SIZE_MISMATCH), digests
     (DIGEST_MISMATCH); every file is read once and the verified bytes are what gets parsed;
  4. content: expert.json (SPEC_INVALID), schema.json (SCHEMA_INVALID), spec ↔ schema digest, input
     width and class count (SPEC_MISMATCH), the safetensors header's names/shapes/dtypes against the
     spec, read without loading a tensor (TENSOR_MISMATCH), dp.json (DP_INVALID).
Only then may `VerifiedArtifact.load_tensors()` run; it re-checks the digest of the bytes it hands to
`safetensors.torch.load` (bytes verified once are the bytes loaded: no check-then-swap race).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from protocol.canonical import canonical_json, parse_json
from protocol.dsse import (
    INTOTO_PAYLOAD_TYPE,
    Envelope,
    as_key_list,
    b64encode,
    pae,
    sign_envelope,
    verify_signature,
)
from protocol.errors import (
    ArtifactContentError,
    ArtifactError,  # noqa: F401  (re-exported)
    ArtifactIntegrityError,
    ArtifactLayoutError,
    ArtifactSignatureError,
    LlamdexError,
    SignatureError,
)
from protocol.keys import PrivateKey, PublicKey, fingerprint, model_signing_hint

# --- format constants -------------------------------------------------------------------------

ARTIFACT_FORMAT = "llamdex.artifact/v1"
TENSORS_FILE = "expert.safetensors"
SPEC_FILE = "expert.json"
SCHEMA_FILE = "schema.json"
DP_FILE = "dp.json"
SIGNATURE_FILE = "model.sig"
CONTENT_FILES: tuple[str, ...] = (DP_FILE, SPEC_FILE, TENSORS_FILE, SCHEMA_FILE)  # what the statement lists
ALLOWED_FILES: frozenset[str] = frozenset(CONTENT_FILES + (SIGNATURE_FILE,))

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# What `model_signing sign key` records as ignored (git files and the signature itself), sorted.
IGNORE_PATHS: tuple[str, ...] = (".git", ".gitattributes", ".github", ".gitignore", SIGNATURE_FILE)

MiB = 1 << 20
DEFAULT_LIMITS: dict[str, int] = {
    TENSORS_FILE: 256 * MiB,
    SPEC_FILE: 1 * MiB,
    SCHEMA_FILE: 4 * MiB,
    DP_FILE: 1 * MiB,
    SIGNATURE_FILE: 4 * MiB,
}
SAFETENSORS_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_PICKLE_LIKE = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".keras", ".onnx", ".py")


# --- helpers ------------------------------------------------------------------------------------

def check_member_name(name: str, where: str = "artifact") -> str:
    """A flat, plain file name: no separators, no '..', not absolute, no control characters."""
    if not isinstance(name, str) or name == "":
        raise ArtifactLayoutError("PATH_TRAVERSAL", f"{where}: empty or non-string file name {name!r}", file=repr(name), rule="plain file name")
    bad = (
        name.startswith("/") or name.startswith("\\") or "/" in name or "\\" in name
        or name in (".", "..") or ".." in PurePosixPath(name).parts or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or (len(name) >= 2 and name[1] == ":")
    )
    if bad:
        raise ArtifactLayoutError("PATH_TRAVERSAL", f"{where}: file name {name!r} is not a plain name inside the artifact folder (no '/', '\\', '..', absolute paths or control characters)", file=name, rule="plain file name")
    return name


def _forbidden(name: str, where: str) -> ArtifactLayoutError:
    hint = ""
    if name.lower().endswith(_PICKLE_LIKE):
        hint = " (pickle-capable or executable formats are never accepted; tensors travel as expert.safetensors only)"
    return ArtifactLayoutError("FORBIDDEN_FILE", f"{where}: unexpected file {name!r}{hint}; an artifact holds exactly {sorted(ALLOWED_FILES)}", file=name, rule="allowed file set")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def root_digest(resources: Iterable[tuple[str, str]]) -> str:
    """model_signing's subject digest: SHA-256 over the raw digests in resource order; hex."""
    h = hashlib.sha256()
    for _name, hexdigest in resources:
        h.update(bytes.fromhex(hexdigest))
    return h.hexdigest()


def _scan_folder(folder: Path, limits: dict[str, int], *, require_signature: bool, where: str | None = None) -> dict[str, os.stat_result]:
    """Layout checks of step 1; returns lstat results of the files, by name."""
    where = where or str(folder)
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        raise ArtifactLayoutError("NOT_A_DIRECTORY", f"artifact folder {folder} does not exist", file=where) from None
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactLayoutError("SYMLINK", f"artifact folder {folder} is a symbolic link; give the real folder", file=where, rule="no symlinks")
    if not stat.S_ISDIR(st.st_mode):
        raise ArtifactLayoutError("NOT_A_DIRECTORY", f"artifact {folder} is not a directory", file=where)
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    found: dict[str, os.stat_result] = {}
    # symlinks first, then names, then types: the most dangerous finding is the one reported
    for e in entries:
        if e.is_symlink():
            raise ArtifactLayoutError("SYMLINK", f"{where}: {e.name!r} is a symbolic link; artifacts hold regular files only", file=e.name, rule="no symlinks")
    for e in entries:
        check_member_name(e.name, where)
    for e in entries:
        if e.name not in ALLOWED_FILES:
            raise _forbidden(e.name, where)
    for e in entries:
        s = e.stat(follow_symlinks=False)
        if not stat.S_ISREG(s.st_mode):
            raise ArtifactLayoutError("NOT_REGULAR_FILE", f"{where}: {e.name!r} is not a regular file", file=e.name, rule="regular files only")
        found[e.name] = s
    required = CONTENT_FILES + ((SIGNATURE_FILE,) if require_signature else ())
    for name in sorted(required):
        if name not in found:
            raise ArtifactLayoutError("MISSING_FILE", f"{where}: required file {name!r} is missing", file=name, rule="required files")
    for name, s in found.items():
        if s.st_size > limits.get(name, 0):
            raise ArtifactLayoutError("FILE_TOO_LARGE", f"{where}: {name!r} is {s.st_size} bytes; the limit is {limits.get(name, 0)}", file=name, rule="size limit")
    return found


def _read_regular(folder: Path, name: str, limit: int) -> bytes:
    """Reads a file refusing symlinks at open time (O_NOFOLLOW) and anything beyond `limit` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(folder / name, flags)
    except FileNotFoundError:
        raise ArtifactIntegrityError("MISSING_FILE", f"{folder}: {name!r} disappeared during verification", file=name) from None
    except OSError as e:
        raise ArtifactLayoutError("SYMLINK", f"{folder}: cannot open {name!r} without following links: {e}", file=name, rule="no symlinks") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ArtifactLayoutError("NOT_REGULAR_FILE", f"{folder}: {name!r} is not a regular file", file=name)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactLayoutError("FILE_TOO_LARGE", f"{folder}: {name!r} exceeds its limit of {limit} bytes", file=name, rule="size limit")
    return data


# --- signing ------------------------------------------------------------------------------------

def build_statement(files: dict[str, bytes], model_name: str) -> dict[str, Any]:
    """The in-toto Statement v1 model_signing writes for a folder, plus our `llamdex` size extension."""
    names = sorted(files)
    resources = [{"name": n, "algorithm": "sha256", "digest": _sha256(files[n])} for n in names]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest((r["name"], r["digest"]) for r in resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": list(IGNORE_PATHS)},
            "resources": resources,
            "llamdex": {"format": ARTIFACT_FORMAT, "sizes": {n: len(files[n]) for n in names}},
        },
    }


def make_bundle(statement: dict[str, Any], private_key: PrivateKey) -> dict[str, Any]:
    """A Sigstore bundle v0.3 JSON object, as model_signing's key signer writes it."""
    payload = canonical_json(statement)
    env = sign_envelope(payload, INTOTO_PAYLOAD_TYPE, private_key)
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": model_signing_hint(private_key)}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": b64encode(env.payload),
            "payloadType": env.payload_type,
            "signatures": [{"sig": b64encode(s.sig), "keyid": s.keyid} for s in env.signatures],
        },
    }


def sign_artifact(folder: str | os.PathLike, private_key: PrivateKey, *, model_name: str | None = None,
                  check_content: bool = True, limits: dict[str, int] | None = None) -> Path:
    """Signs an artifact folder in place, writing `model.sig`; returns its path.

    The folder must hold exactly the four content files (an old `model.sig` is replaced). With
    `check_content` the spec, schema, tensor header and DP statement are validated first, so a client
    cannot sign an artifact the provider will refuse.
    """
    folder = Path(folder)
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    _scan_folder(folder, lim, require_signature=False)
    files = {n: _read_regular(folder, n, lim[n]) for n in CONTENT_FILES}
    if check_content:
        _check_content(files, str(folder))
    statement = build_statement(files, model_name or folder.resolve().name)
    bundle = make_bundle(statement, private_key)
    sig_path = folder / SIGNATURE_FILE
    tmp = folder / f".{SIGNATURE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(bundle, separators=(",", ":")).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, sig_path)
    return sig_path


def write_artifact(folder: str | os.PathLike, model: Any, schema: Any, dp: Any, private_key: PrivateKey | None = None,
                   *, model_name: str | None = None) -> Path:
    """Writes expert.safetensors + expert.json (from an ExpertMLP), schema.json, dp.json, and signs when a key is given."""
    from protocol.expert_spec import save_expert

    folder = Path(folder)
    save_expert(model, folder)   # first: it refuses an unreleasable model before it creates the folder
    (folder / SCHEMA_FILE).write_text(schema.to_json() if hasattr(schema, "to_json") else json.dumps(schema, indent=2), encoding="utf-8")
    dp_dict = dp.to_dict() if hasattr(dp, "to_dict") else dp
    (folder / DP_FILE).write_text(json.dumps(dp_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if private_key is not None:
        sign_artifact(folder, private_key, model_name=model_name)
    return folder


# --- verification -------------------------------------------------------------------------------

@dataclass
class VerifiedArtifact:
    """An artifact whose signature, files, spec, schema and DP statement have all been checked."""

    folder: Path
    digest: str                       # "sha256:<root>", the artifact digest receipts name
    model_name: str
    signer_fingerprint: str           # sha256:<hex> of the signer's DER public key
    statement: dict[str, Any]
    files: dict[str, tuple[str, int]]  # name -> (sha256 hex, size)
    spec: Any                         # ExpertSpec
    schema: Any                       # PublicSchema
    dp: Any                           # DPStatement
    tensor_header: dict[str, Any] = field(repr=False, default_factory=dict)
    _limit: int = field(repr=False, default=DEFAULT_LIMITS[TENSORS_FILE])

    def load_tensors(self) -> dict[str, Any]:
        """Loads the tensors with safetensors (never pickle), from bytes whose digest is re-checked."""
        import safetensors.torch

        data = _read_regular(self.folder, TENSORS_FILE, self._limit)
        want = self.files[TENSORS_FILE][0]
        if _sha256(data) != want:
            raise ArtifactIntegrityError("DIGEST_MISMATCH", f"{self.folder}: {TENSORS_FILE!r} changed after verification (sha256 {_sha256(data)} != signed {want})", file=TENSORS_FILE, rule="sha256")
        return safetensors.torch.load(data)

    def load_expert(self) -> Any:
        """The expert rebuilt from the spec with the verified tensors (eval mode)."""
        from protocol.expert_spec import load_expert_state
        from protocol.errors import SpecError

        try:
            return load_expert_state(self.spec, self.load_tensors())
        except SpecError as e:
            raise ArtifactContentError("TENSOR_MISMATCH", f"{self.folder}/{TENSORS_FILE}: {e}", file=TENSORS_FILE, rule="tensors match spec") from None


class ArtifactVerifier:
    """Verifies artifacts signed by one of `trusted_public_keys` (a key, PEM bytes, a path, or a list)."""

    def __init__(self, trusted_public_keys: Any, *, limits: dict[str, int] | None = None, require_sizes: bool = False):
        try:
            self.keys: list[PublicKey] = as_key_list(trusted_public_keys)
        except SignatureError as e:
            raise ArtifactSignatureError("UNTRUSTED_KEY", str(e)) from None
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.require_sizes = require_sizes

    # step 2
    def _verify_bundle(self, raw: bytes, where: str) -> tuple[dict[str, Any], PublicKey]:
        def bad(msg: str, rule: str) -> ArtifactSignatureError:
            return ArtifactSignatureError("BAD_BUNDLE", f"{where}/{SIGNATURE_FILE}: {msg}", file=SIGNATURE_FILE, rule=rule)

        try:
            bundle = parse_json(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad(f"not valid JSON: {e}", "json") from None
        if not isinstance(bundle, dict):
            raise bad("must be a JSON object", "shape")
        if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
            raise bad(f"mediaType is {bundle.get('mediaType')!r}, expected {BUNDLE_MEDIA_TYPE!r}", "mediaType")
        vm = bundle.get("verificationMaterial")
        if not isinstance(vm, dict):
            raise bad("lacks verificationMaterial", "verificationMaterial")
        pk = vm.get("publicKey")
        hint = pk.get("hint") if isinstance(pk, dict) else None
        if hint is not None and not isinstance(hint, str):
            raise bad("verificationMaterial.publicKey.hint must be a string", "publicKey.hint")
        env_d = bundle.get("dsseEnvelope")
        if not isinstance(env_d, dict):
            raise bad("lacks a dsseEnvelope (message signatures are not accepted)", "dsseEnvelope")
        try:
            env = Envelope.from_dict(env_d)
        except SignatureError as e:
            raise bad(str(e), "dsseEnvelope") from None
        if env.payload_type != INTOTO_PAYLOAD_TYPE:
            raise bad(f"DSSE payloadType is {env.payload_type!r}, expected {INTOTO_PAYLOAD_TYPE!r}", "payloadType")
        if len(env.signatures) != 1:
            raise bad(f"DSSE envelope has {len(env.signatures)} signatures; model-signing bundles carry exactly one", "signatures")
        candidates = self.keys
        if hint:
            candidates = [k for k in self.keys if model_signing_hint(k) == hint]
            if not candidates:
                raise ArtifactSignatureError("UNTRUSTED_KEY", f"{where}/{SIGNATURE_FILE}: signed by key with hint {hint} (sha256 of its PEM), which is not among the {len(self.keys)} trusted key(s) {[fingerprint(k) for k in self.keys]}", file=SIGNATURE_FILE, rule="trusted keys")
        message = pae(env.payload_type, env.payload)
        for k in candidates:
            if verify_signature(k, env.signatures[0].sig, message):
                break
        else:
            raise ArtifactSignatureError("BAD_SIGNATURE", f"{where}/{SIGNATURE_FILE}: the ECDSA signature over the DSSE PAE does not verify under trusted key(s) {[fingerprint(k) for k in candidates]}", file=SIGNATURE_FILE, rule="ECDSA over PAE")
        try:
            statement = parse_json(env.payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactSignatureError("BAD_STATEMENT", f"{where}/{SIGNATURE_FILE}: signed payload is not JSON: {e}", file=SIGNATURE_FILE) from None
        return statement, k

    def _parse_statement(self, st: Any, where: str) -> tuple[str, str, dict[str, str], dict[str, int] | None]:
        def bad(msg: str, rule: str, code: str = "BAD_STATEMENT") -> ArtifactSignatureError:
            return ArtifactSignatureError(code, f"{where}/{SIGNATURE_FILE}: {msg}", file=SIGNATURE_FILE, rule=rule)

        if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE:
            raise bad(f"payload is not an in-toto Statement v1 (_type {st.get('_type') if isinstance(st, dict) else None!r})", "_type")
        if st.get("predicateType") != PREDICATE_TYPE:
            raise bad(f"predicateType is {st.get('predicateType')!r}, expected {PREDICATE_TYPE!r}", "predicateType")
        subj = st.get("subject")
        if not isinstance(subj, list) or len(subj) != 1 or not isinstance(subj[0], dict):
            raise bad("statement must have exactly one subject", "subject")
        name = subj[0].get("name")
        root = (subj[0].get("digest") or {}).get("sha256") if isinstance(subj[0].get("digest"), dict) else None
        if not isinstance(name, str) or not isinstance(root, str) or len(root) != 64:
            raise bad("subject needs a name and a sha256 digest", "subject")
        pred = st.get("predicate")
        if not isinstance(pred, dict):
            raise bad("predicate must be an object", "predicate")
        ser = pred.get("serialization")
        if not isinstance(ser, dict) or ser.get("method") != "files" or ser.get("hash_type") != "sha256":
            raise bad(f"serialization {ser!r} is not supported; only method 'files' with hash_type 'sha256'", "serialization", "UNSUPPORTED_SERIALIZATION")
        res = pred.get("resources")
        if not isinstance(res, list) or not res:
            raise bad("predicate.resources must be a non-empty list", "resources")
        digests: dict[str, str] = {}
        order: list[tuple[str, str]] = []
        for i, r in enumerate(res):
            if not isinstance(r, dict):
                raise bad(f"resources[{i}] must be an object", "resources")
            rname, alg, dig = r.get("name"), r.get("algorithm"), r.get("digest")
            if not isinstance(rname, str):
                raise bad(f"resources[{i}].name must be a string", "resources")
            check_member_name(rname, f"{where}/{SIGNATURE_FILE} resources[{i}]")
            if alg != "sha256" or not isinstance(dig, str) or len(dig) != 64 or any(c not in "0123456789abcdef" for c in dig):
                raise bad(f"resources[{i}] ({rname!r}) needs algorithm 'sha256' and a 64-hex digest", "resources")
            if rname in digests:
                raise bad(f"resource {rname!r} is listed twice", "resources")
            digests[rname] = dig
            order.append((rname, dig))
        if root_digest(order) != root:
            raise bad(f"subject digest {root} does not match the listed resources ({root_digest(order)})", "subject digest")
        sizes = None
        ext = pred.get("llamdex")
        if ext is not None:
            if not isinstance(ext, dict) or not isinstance(ext.get("sizes"), dict):
                raise bad("predicate.llamdex.sizes must be an object", "llamdex.sizes")
            sizes = ext["sizes"]
            if set(sizes) != set(digests) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values()):
                raise bad("predicate.llamdex.sizes must give a non-negative integer size for every resource and nothing else", "llamdex.sizes")
        elif self.require_sizes:
            raise bad("statement carries no file sizes (predicate.llamdex.sizes) and this verifier requires them", "llamdex.sizes")
        return name, "sha256:" + root, digests, sizes

    def verify(self, folder: str | os.PathLike, *, name: str | None = None) -> VerifiedArtifact:
        """`name`: what the messages call the folder (the provider names the upload, never its own state folders)."""
        folder = Path(folder)
        where = name or str(folder)
        # 1. layout
        found = _scan_folder(folder, self.limits, require_signature=True, where=where)
        # 2. signature and statement
        raw_sig = _read_regular(folder, SIGNATURE_FILE, self.limits[SIGNATURE_FILE])
        statement, key = self._verify_bundle(raw_sig, where)
        model_name, digest, listed, sizes = self._parse_statement(statement, where)
        # 3. integrity: listed <=> present, sizes, digests
        present = set(found) - {SIGNATURE_FILE}
        for n in sorted(set(listed) - present):
            if n not in ALLOWED_FILES:
                raise _forbidden(n, f"{where}/{SIGNATURE_FILE} lists")
            raise ArtifactIntegrityError("MISSING_FILE", f"{where}: {n!r} is listed in the signed statement but missing", file=n, rule="listed files present")
        for n in sorted(present - set(listed)):
            raise ArtifactIntegrityError("UNLISTED_FILE", f"{where}: {n!r} is present but not covered by the signature", file=n, rule="present files listed")
        if sizes is not None:
            for n in sorted(listed):
                if found[n].st_size != sizes[n]:
                    raise ArtifactIntegrityError("SIZE_MISMATCH", f"{where}: {n!r} is {found[n].st_size} bytes, the signed statement says {sizes[n]}", file=n, rule="size")
        contents: dict[str, bytes] = {}
        for n in sorted(listed):
            data = _read_regular(folder, n, self.limits[n])
            if sizes is not None and len(data) != sizes[n]:
                raise ArtifactIntegrityError("SIZE_MISMATCH", f"{where}: {n!r} read {len(data)} bytes, the signed statement says {sizes[n]}", file=n, rule="size")
            got = _sha256(data)
            if got != listed[n]:
                raise ArtifactIntegrityError("DIGEST_MISMATCH", f"{where}: sha256 of {n!r} is {got}, the signed statement says {listed[n]}", file=n, rule="sha256")
            contents[n] = data
        # 4. content (no tensor is loaded here)
        spec, schema, dp, header = _check_content(contents, where)
        return VerifiedArtifact(
            folder=folder, digest=digest, model_name=model_name, signer_fingerprint=fingerprint(key), statement=statement,
            files={n: (listed[n], len(contents[n])) for n in sorted(listed)}, spec=spec, schema=schema, dp=dp,
            tensor_header=header, _limit=self.limits[TENSORS_FILE],
        )


def verify_artifact(folder: str | os.PathLike, trusted_public_keys: Any, **kw: Any) -> VerifiedArtifact:
    return ArtifactVerifier(trusted_public_keys, **kw).verify(folder)


def read_safetensors_header(data: bytes, where: str = TENSORS_FILE) -> dict[str, Any]:
    """Parses the safetensors JSON header (names, dtypes, shapes, offsets) without loading any tensor."""
    def bad(msg: str) -> ArtifactContentError:
        return ArtifactContentError("TENSOR_MISMATCH", f"{where}: {msg}", file=TENSORS_FILE, rule="safetensors header")

    if len(data) < 8:
        raise bad("too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, 100 * MiB):
        raise bad(f"header length {n} exceeds the file")
    try:
        header = parse_json(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    body = len(data) - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = 0
    for k, v in tensors.items():
        if not isinstance(v, dict) or not isinstance(v.get("shape"), list) or not isinstance(v.get("data_offsets"), list) or len(v["data_offsets"]) != 2:
            raise bad(f"tensor {k!r} has a malformed header entry")
        a, b = v["data_offsets"]
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b <= body):
            raise bad(f"tensor {k!r} has data offsets {v['data_offsets']} outside the {body}-byte buffer")
        end = max(end, b)
    if end != body:
        raise bad(f"tensor data covers {end} of {body} bytes; trailing data is not allowed")
    return tensors


def _check_content(files: dict[str, bytes], where: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Step 4: spec, schema, their consistency, tensor header against the spec, DP statement."""
    from protocol.encoding import FeatureEncoder
    from protocol.errors import SchemaError, SpecError
    from protocol.expert_spec import ExpertSpec
    from protocol.schema import PublicSchema

    def load_json(name: str, code: str) -> Any:
        try:
            return parse_json(files[name].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactContentError(code, f"{where}: {name!r} is not valid UTF-8 JSON: {e}", file=name, rule="json") from None

    try:
        spec = ExpertSpec.from_dict(load_json(SPEC_FILE, "SPEC_INVALID"))
    except SpecError as e:
        raise ArtifactContentError("SPEC_INVALID", f"{where}: {SPEC_FILE}: {e}", file=SPEC_FILE, rule="expert spec") from None
    try:
        schema = PublicSchema.from_dict(load_json(SCHEMA_FILE, "SCHEMA_INVALID"))
    except SchemaError as e:
        raise ArtifactContentError("SCHEMA_INVALID", f"{where}: {SCHEMA_FILE}: {e}", file=SCHEMA_FILE, rule="public schema") from None
    if spec.schema_digest != schema.digest:
        raise ArtifactContentError("SPEC_MISMATCH", f"{where}: {SPEC_FILE} names schema {spec.schema_digest or '<none>'} but {SCHEMA_FILE} has digest {schema.digest}", file=SPEC_FILE, rule="schema_digest")
    dim = FeatureEncoder(schema).dim
    if spec.input_dim != dim:
        raise ArtifactContentError("SPEC_MISMATCH", f"{where}: {SPEC_FILE} input_dim is {spec.input_dim}, the schema encodes to {dim} features", file=SPEC_FILE, rule="input_dim")
    numeric = FeatureEncoder(schema).numeric_positions
    if spec.numeric_inputs and spec.numeric_inputs != numeric:
        raise ArtifactContentError("SPEC_MISMATCH", f"{where}: {SPEC_FILE} bins inputs {list(spec.numeric_inputs)}, but the schema's numeric values sit at "
                                   f"{list(numeric)}", file=SPEC_FILE, rule="numeric_inputs")
    if spec.num_classes != schema.label.num_classes:
        raise ArtifactContentError("SPEC_MISMATCH", f"{where}: {SPEC_FILE} num_classes is {spec.num_classes}, the schema's label has {schema.label.num_classes} classes", file=SPEC_FILE, rule="num_classes")
    header = read_safetensors_header(files[TENSORS_FILE], f"{where}/{TENSORS_FILE}")
    expected = spec.expected_shapes()
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        raise ArtifactContentError("TENSOR_MISMATCH", f"{where}: {TENSORS_FILE} tensors do not match the spec: missing {missing}, unexpected {extra}", file=TENSORS_FILE, rule="tensor names")
    for k, shape in expected.items():
        h = header[k]
        if tuple(h["shape"]) != tuple(shape):
            raise ArtifactContentError("TENSOR_MISMATCH", f"{where}: {TENSORS_FILE} tensor {k!r} has shape {tuple(h['shape'])}, the spec needs {tuple(shape)}", file=TENSORS_FILE, rule="tensor shapes")
        if not isinstance(h.get("dtype"), str) or h["dtype"] not in SAFETENSORS_FLOAT_DTYPES:
            raise ArtifactContentError("TENSOR_MISMATCH", f"{where}: {TENSORS_FILE} tensor {k!r} has dtype {h.get('dtype')!r}; floating point required", file=TENSORS_FILE, rule="tensor dtypes")
    dp = _parse_dp(load_json(DP_FILE, "DP_INVALID"), where)
    return spec, schema, dp, header


def _parse_dp(d: Any, where: str) -> Any:
    try:
        from protocol.dp import DPStatement
    except ImportError as e:  # pragma: no cover - protocol.dp ships with the package
        raise ArtifactContentError("DP_INVALID", f"{where}: cannot read {DP_FILE}: protocol.dp is unavailable ({e})", file=DP_FILE) from None
    if not isinstance(d, dict):
        raise ArtifactContentError("DP_INVALID", f"{where}: {DP_FILE} must be a JSON object", file=DP_FILE, rule="dp statement")
    try:
        return DPStatement.from_dict(d)
    except (LlamdexError, ValueError, TypeError, KeyError) as e:
        raise ArtifactContentError("DP_INVALID", f"{where}: {DP_FILE}: {e}", file=DP_FILE, rule="dp statement") from None


# --- deterministic tar --------------------------------------------------------------------------

def pack_artifact(folder: str | os.PathLike, *, include_signature: bool = True, limits: dict[str, int] | None = None) -> bytes:
    """A deterministic uncompressed tar (USTAR) of the artifact: sorted names, regular files only, mode
    0644, mtime/uid/gid 0, empty owner names. Same files → same bytes → same SHA-256."""
    folder = Path(folder)
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    found = _scan_folder(folder, lim, require_signature=include_signature)
    names = sorted(n for n in found if include_signature or n != SIGNATURE_FILE)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n in names:
            data = _read_regular(folder, n, lim[n])
            ti = tarfile.TarInfo(n)
            ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0o644, 0, 0, 0, "", ""
            ti.type = tarfile.REGTYPE
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def unpack_artifact(data: bytes, dest: str | os.PathLike, max_bytes: int = 300 * MiB, *, limits: dict[str, int] | None = None) -> Path:
    """Safely extracts an artifact tar into `dest` (created; must be absent or empty).

    Every header is checked before any byte is written: only regular files with allowed plain names
    (no links, devices, FIFOs, directories, absolute or '..' names, duplicates), each within its limit
    and all together within `max_bytes`. Files are created with O_EXCL|O_NOFOLLOW. On any error,
    what was written is removed. Returns the folder; verify it with ArtifactVerifier next."""
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    dest = Path(dest)
    if len(data) > max_bytes + 64 * 1024 + 1024 * len(ALLOWED_FILES):
        raise ArtifactLayoutError("FILE_TOO_LARGE", f"artifact tar is {len(data)} bytes; the limit is {max_bytes}", rule="max_bytes")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = tar.getmembers()
    except tarfile.TarError as e:
        raise ArtifactLayoutError("BAD_ARCHIVE", f"artifact is not a readable uncompressed tar: {e}", rule="tar") from None
    if len(members) > len(ALLOWED_FILES):
        raise ArtifactLayoutError("FORBIDDEN_FILE", f"artifact tar has {len(members)} entries; at most {len(ALLOWED_FILES)} are allowed", rule="allowed file set")
    seen: set[str] = set()
    total = 0
    for m in members:
        if m.issym() or m.islnk():
            raise ArtifactLayoutError("SYMLINK", f"artifact tar entry {m.name!r} is a {'symbolic' if m.issym() else 'hard'} link to {m.linkname!r}; links are refused", file=m.name, rule="no links")
        check_member_name(m.name, "artifact tar")
        if m.isdev() or m.isfifo() or m.isdir() or not m.isreg():
            raise ArtifactLayoutError("NOT_REGULAR_FILE", f"artifact tar entry {m.name!r} is not a regular file (type {m.type!r})", file=m.name, rule="regular files only")
        if m.name not in ALLOWED_FILES:
            raise _forbidden(m.name, "artifact tar")
        if m.name in seen:
            raise ArtifactLayoutError("DUPLICATE_ENTRY", f"artifact tar holds {m.name!r} twice", file=m.name, rule="unique names")
        seen.add(m.name)
        if m.size > lim[m.name]:
            raise ArtifactLayoutError("FILE_TOO_LARGE", f"artifact tar entry {m.name!r} is {m.size} bytes; the limit is {lim[m.name]}", file=m.name, rule="size limit")
        total += m.size
        if total > max_bytes:
            raise ArtifactLayoutError("FILE_TOO_LARGE", f"artifact tar expands beyond max_bytes={max_bytes}", file=m.name, rule="max_bytes")
    if dest.is_symlink():
        raise ArtifactLayoutError("SYMLINK", f"destination {dest} is a symbolic link", file=str(dest), rule="no symlinks")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArtifactLayoutError("DEST_NOT_EMPTY", f"destination {dest} is not empty", file=str(dest))
    written: list[Path] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        for m in members:
            src = tar.extractfile(m)
            assert src is not None
            content = src.read(m.size + 1)
            if len(content) != m.size:
                raise ArtifactLayoutError("BAD_ARCHIVE", f"artifact tar entry {m.name!r} is truncated", file=m.name)
            p = dest / m.name
            fd = os.open(p, flags, 0o644)
            written.append(p)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
    except BaseException:
        for p in written:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        raise
    return dest


__all__ = [
    "ALLOWED_FILES", "ARTIFACT_FORMAT", "ArtifactError", "ArtifactVerifier", "BUNDLE_MEDIA_TYPE", "CONTENT_FILES",
    "DEFAULT_LIMITS", "PREDICATE_TYPE", "SIGNATURE_FILE", "STATEMENT_TYPE", "VerifiedArtifact", "build_statement",
    "check_member_name", "make_bundle", "pack_artifact", "read_safetensors_header", "root_digest", "sign_artifact",
    "unpack_artifact", "verify_artifact", "write_artifact",
]
