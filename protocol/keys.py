"""Signing keys of both parties: ECDSA on NIST P-256 by default (what OpenSSF model-signing and
Sigstore use), PEM on disk, private keys created with mode 0600 from the first byte.

A key is named by its fingerprint, `sha256:<hex>` over the DER SubjectPublicKeyInfo, which is the
same for a key whether it came from our PEM, from `openssl ec -pubout` or from a certificate.
`model_signing` instead names a key in its bundle by a *hint*: the SHA-256 hex of the PEM text of
the public key; `model_signing_hint` computes that.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Union

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protocol.errors import KeyMaterialError

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
PathLike = Union[str, os.PathLike]

CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
DEFAULT_CURVE = "P-256"


def generate_private_key(curve: str = DEFAULT_CURVE) -> PrivateKey:
    """A fresh ECDSA key on `curve` ("P-256" default, "P-384", "P-521")."""
    if curve not in CURVES:
        raise KeyMaterialError("UNSUPPORTED_CURVE", f"curve {curve!r} is not supported; use one of {sorted(CURVES)}", rule="curve")
    return ec.generate_private_key(CURVES[curve]())


def curve_name(key: PrivateKey | PublicKey) -> str:
    name = key.curve.name
    if name not in _CURVE_NAMES:
        raise KeyMaterialError("UNSUPPORTED_CURVE", f"curve {name!r} is not supported; use one of {sorted(CURVES)}", rule="curve")
    return _CURVE_NAMES[name]


def hash_for(key: PrivateKey | PublicKey) -> hashes.HashAlgorithm:
    """The digest paired with the curve, as Sigstore and model_signing pair them (P-256: SHA-256)."""
    return {"P-256": hashes.SHA256, "P-384": hashes.SHA384, "P-521": hashes.SHA512}[curve_name(key)]()


def public_key_of(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    return public_key_of(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_der(key: PrivateKey | PublicKey) -> bytes:
    return public_key_of(key).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(public_key: PrivateKey | PublicKey) -> str:
    """`sha256:<hex>` over the DER SubjectPublicKeyInfo (a private key is reduced to its public half)."""
    return "sha256:" + hashlib.sha256(public_key_der(public_key)).hexdigest()


def model_signing_hint(public_key: PrivateKey | PublicKey) -> str:
    """The key hint `model_signing` writes in `verificationMaterial.publicKey.hint`: SHA-256 hex of the PEM."""
    return hashlib.sha256(public_key_pem(public_key)).hexdigest()


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None or isinstance(password, bytes):
        return password or None
    return password.encode("utf-8") or None


def private_key_pem(key: PrivateKey, password: str | bytes | None = None) -> bytes:
    pw = _password_bytes(password)
    enc = serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _write_new_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Writes `data` to `path`, creating the file with `mode` at open time (never chmod afterwards).

    Without `overwrite` the file must not exist (O_EXCL, and O_NOFOLLOW refuses a planted symlink).
    With `overwrite`, a temporary sibling is created the same way and renamed over `path` atomically.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if overwrite:
        fd_dir = str(path.parent) if str(path.parent) else "."
        tmp = Path(tempfile.mktemp(prefix=f".{path.name}.", suffix=".tmp", dir=fd_dir))
        target, final = tmp, path
    else:
        target, final = path, None
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise KeyMaterialError("KEY_EXISTS", f"{path} already exists; choose another name, or replace it on purpose (`llamdex keygen --force`, overwrite=True)", file=str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if final is not None:
            os.replace(target, final)
    except BaseException:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        raise


def save_private_key(key: PrivateKey, path: PathLike, password: str | bytes | None = None, *, overwrite: bool = False) -> Path:
    """PKCS#8 PEM (encrypted when `password` is given), created with mode 0600."""
    p = Path(path)
    _write_new_file(p, private_key_pem(key, password), 0o600, overwrite)
    return p


def save_public_key(key: PrivateKey | PublicKey, path: PathLike, *, overwrite: bool = True) -> Path:
    """SubjectPublicKeyInfo PEM (what `openssl ec -pubout` and `model_signing --public_key` read), mode 0644."""
    p = Path(path)
    _write_new_file(p, public_key_pem(key), 0o644, overwrite)
    return p


def generate_keypair(folder: PathLike, name: str = "signing", password: str | bytes | None = None,
                     curve: str = DEFAULT_CURVE, *, overwrite: bool = False) -> tuple[Path, Path, PrivateKey]:
    """Writes `<name>.key` (0600) and `<name>.pub` into `folder`; returns both paths and the key."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in (folder / f"{name}.key", folder / f"{name}.pub"):   # both refused before either is written: a new .key
        if path.is_dir():                                           # beside an old .pub would be a pair that does not match
            raise IsADirectoryError(21, "is a folder, not a key file", str(path))   # --force replaces files, never folders
        if not overwrite and os.path.lexists(path):
            raise KeyMaterialError("KEY_EXISTS", f"{path} already exists; choose another name, or replace it on purpose "
                                   "(`llamdex keygen --force`, overwrite=True)", file=str(path))
    key = generate_private_key(curve)
    priv = save_private_key(key, folder / f"{name}.key", password, overwrite=overwrite)
    pub = save_public_key(key, folder / f"{name}.pub", overwrite=overwrite)
    return priv, pub, key


def _check_ec(key: object, where: str) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise KeyMaterialError("UNSUPPORTED_KEY_TYPE", f"{where}: {type(key).__name__} is not an ECDSA key; use P-256 (default), P-384 or P-521", file=where, rule="key type")
    curve_name(key)  # raises on an unsupported curve


def load_private_key(path_or_pem: PathLike | bytes, password: str | bytes | None = None, *, check_permissions: bool = True) -> PrivateKey:
    """Loads a PEM private key from a path (or PEM bytes). Refuses keys readable by group/others."""
    if isinstance(path_or_pem, bytes):
        data, where = path_or_pem, "<PEM bytes>"
    else:
        p = Path(path_or_pem)
        where = str(p)
        try:
            st = os.stat(p)
            data = p.read_bytes()
        except FileNotFoundError:
            raise KeyMaterialError("KEY_NOT_FOUND", f"private key {p} does not exist", file=where) from None
        if check_permissions and os.name == "posix" and st.st_mode & 0o077:
            raise KeyMaterialError("KEY_PERMISSIONS", f"private key {p} has mode {st.st_mode & 0o777:04o}; it must not be readable by group or others (chmod 600)", file=where, rule="mode 0600")
    try:
        key = serialization.load_pem_private_key(data, _password_bytes(password))
    except TypeError as e:  # password given for an unencrypted key or missing for an encrypted one
        raise KeyMaterialError("KEY_PASSWORD", f"{where}: {e}", file=where, rule="password") from None
    except ValueError as e:
        raise KeyMaterialError("KEY_MALFORMED", f"{where}: not a readable PEM private key (or wrong password): {e}", file=where) from None
    _check_ec(key, where)
    return key  # type: ignore[return-value]


def load_public_key(path_or_pem: PathLike | bytes | PublicKey | PrivateKey) -> PublicKey:
    """Loads a PEM public key from a path, PEM bytes or a PEM string; a key object is passed through (private → public)."""
    if isinstance(path_or_pem, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return public_key_of(path_or_pem)
    if isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        path_or_pem = path_or_pem.encode("ascii")
    if isinstance(path_or_pem, bytes):
        data, where = path_or_pem, "<PEM bytes>"
    else:
        p = Path(path_or_pem)
        where = str(p)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise KeyMaterialError("KEY_NOT_FOUND", f"public key {p} does not exist", file=where) from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeyMaterialError("KEY_MALFORMED", f"{where}: not a readable PEM public key: {e}", file=where) from None
    _check_ec(key, where)
    return key  # type: ignore[return-value]
