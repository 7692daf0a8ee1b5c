"""Mutual TLS for the two services: a small CA, party certificates, and gRPC credentials.

`llamdex certs` calls `make_certs`: one CA (ECDSA P-256, self-signed) and, per party, a key and a
certificate whose subject common name is the party's id (`provider`, a client id such as `alice`,
`orchestrator`) and whose subjectAltName lists the host names and IP addresses it serves on. Every
party certificate carries both TLS usages (serverAuth and clientAuth): the client also runs a
service, and the provider calls it back.

**TLS 1.3 only** (`protocol.tls_policy`, set when the `protocol` package is imported, before gRPC
loads): no TLS 1.2 handshake can agree on a cipher suite, so every connection between the parties is
TLS 1.3. `add_port` logs an error when the policy could not take effect in this process.

A gRPC peer's identity is the common name of its verified certificate (`peer_identity`).
Plaintext is allowed only on loopback and only when asked for (`open_channel(..., plaintext=True)`,
`add_port(..., plaintext=True)`); anything else raises `TransportError`.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol import operator_errors
from protocol import tls_policy
from protocol.errors import CodedError
from protocol.keys import generate_private_key, load_private_key, save_private_key

CA_NAME = "Llamdex CA"
DEFAULT_DAYS = 365
LOOPBACK_NAMES = ("localhost",)
IDENTITY_METADATA = "x-llamdex-client-id"   # plaintext (loopback) mode only: the caller's claimed id


class TransportError(CodedError):
    """A transport setting is unsafe or incomplete, or the other host cannot be reached over it (codes:
    PLAINTEXT_NOT_LOOPBACK, TLS_FILES_MISSING, BAD_ADDRESS; from `protocol.tls_diagnosis`: UNREACHABLE,
    TLS_NAME_MISMATCH, TLS_PEER_UNTRUSTED, TLS_PEER_CERT_EXPIRED, TLS_PEER_CERT_NOT_YET_VALID, TLS_CERT_REFUSED,
    TLS_OWN_CERT_EXPIRED, TLS_OWN_CERT_NOT_YET_VALID, TLS_OWN_CERT_NOT_FROM_CA, TLS_KEY_MISMATCH, NOT_TLS). Messages come from `protocol.operator_errors`."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one party: the CA certificate it trusts, its certificate and its private key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: str | os.PathLike, name: str) -> "TLSFiles":
        """The layout `make_certs` writes: ca.pem, <name>.pem, <name>.key."""
        folder = Path(folder)
        return cls(folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}.key")

    def read(self) -> tuple[bytes, bytes, bytes]:
        missing = [str(p) + (" (a folder, not a file)" if Path(p).is_dir() else "") for p in (self.ca, self.cert, self.key) if not Path(p).is_file()]
        if missing:
            raise TransportError("TLS_FILES_MISSING", operator_errors.tls_files_missing("", missing), rule="mutual TLS")
        key = load_private_key(self.key)  # refuses a key readable by group/others
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return Path(self.ca).read_bytes(), Path(self.cert).read_bytes(), key_pem

    def identity(self) -> str:
        """The common name of this party's own certificate."""
        return common_name(x509.load_pem_x509_certificate(Path(self.cert).read_bytes()))


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


# --- certificates ---------------------------------------------------------------------------------

def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)
    return path


def create_ca(folder: str | os.PathLike, name: str = CA_NAME, days: int = DEFAULT_DAYS, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Writes ca.pem and ca.key (0600) into `folder`; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Llamdex")])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = save_private_key(key, folder / "ca.key", overwrite=overwrite)
    return _write_cert(cert, folder / "ca.pem"), key_path


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def issue_cert(ca_cert_path: str | os.PathLike, ca_key_path: str | os.PathLike, name: str, hosts: Sequence[str],
               folder: str | os.PathLike, days: int = DEFAULT_DAYS, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Writes <name>.pem and <name>.key (0600): CN=name, SAN=hosts, serverAuth+clientAuth, signed by the CA."""
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise TransportError("BAD_NAME", f"party name {name!r} must be a plain name (it becomes a file name and the certificate CN)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
    ca_key = load_private_key(ca_key_path)
    key = generate_private_key()
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_san(list(hosts) or list(LOOPBACK_NAMES)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_path = save_private_key(key, folder / f"{name}.key", overwrite=overwrite)
    return _write_cert(cert, folder / f"{name}.pem"), key_path


MAX_DAYS = 36_500   # a hundred years; past the year 9999 a certificate's date cannot be written at all
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_host(host: str) -> str:
    """A name a certificate can hold and a TLS peer can match: an IP address, or an ASCII DNS name (IDNs as A-labels)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if host.isascii() and len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in host.rstrip(".").split(".")):
        return host
    hint = (f"; write it as its A-label ({host.encode('idna').decode()})" if not host.isascii() and _idna(host) else
            "; give the host without the port (the port goes in [provider] listen / address)" if ":" in host and not host.startswith("[") else
            "; an IPv6 address goes without brackets" if host.startswith("[") else "")
    raise TransportError("BAD_HOST", f"{host!r} is neither an IP address nor a DNS name (letters, digits and '-' between dots){hint}",
                         rule="certificate host")


def _idna(host: str) -> bool:
    try:
        host.encode("idna")
        return True
    except UnicodeError:
        return False


def make_certs(folder: str | os.PathLike, parties: dict[str, Sequence[str]], days: int = DEFAULT_DAYS, *, overwrite: bool = False) -> dict[str, TLSFiles]:
    """A CA (reused when ca.pem/ca.key exist) and one certificate per party: {name: hosts}.

    Every name, host and the validity are checked before the first file is written."""
    folder = Path(folder)
    if not 1 <= days <= MAX_DAYS:
        raise TransportError("BAD_VALIDITY", f"a certificate's validity must be 1 to {MAX_DAYS} days, got {days}", rule="validity")
    for name, hosts in parties.items():
        if name == "ca":
            raise TransportError("BAD_NAME", "party name 'ca' is the certificate authority's own (ca.pem, ca.key); choose another name")
        for h in hosts:
            check_host(h)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(20, "the certificate folder is a file, not a folder", str(folder))
    if not ((folder / "ca.pem").is_file() and (folder / "ca.key").is_file()):
        create_ca(folder, days=days, overwrite=overwrite)
    out = {}
    for name, hosts in parties.items():
        issue_cert(folder / "ca.pem", folder / "ca.key", name, hosts, folder, days, overwrite=overwrite)
        out[name] = TLSFiles.in_folder(folder, name)
    return out


# --- addresses and transport policy -----------------------------------------------------------------

def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    try:
        if address.startswith("["):
            host, _, port = address[1:].partition("]:")
        else:
            host, _, port = address.rpartition(":")
        p = int(port)
        if not host or not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise TransportError("BAD_ADDRESS", f"address {address!r} is not HOST:PORT", rule="HOST:PORT") from None
    if ":" in host and not address.startswith("["):   # "::1:50051" would be dialed or bound as host "::1", or "::" on port 1
        raise TransportError("BAD_ADDRESS", f"address {address!r}: an IPv6 address is written in brackets, [{host}]:{port} "
                             "(if the last number is the port)", rule="HOST:PORT")
    return host, p


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback_for_plaintext(address: str) -> None:
    host, _ = split_address(address)
    if not is_loopback(host):
        raise TransportError("PLAINTEXT_NOT_LOOPBACK", operator_errors.plaintext_not_loopback(address), rule="plaintext only on loopback")


# --- gRPC credentials ------------------------------------------------------------------------------

def server_credentials(tls: TLSFiles) -> Any:
    import grpc

    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TLSFiles) -> Any:
    import grpc

    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def check_listen(address: str, tls: TLSFiles | None, *, plaintext: bool = False) -> None:
    """What a server can check before it binds or opens any state: the address's form, plaintext only on
    loopback, and (with TLS) that its three files exist, parse, and belong together (CA, certificate, key).

    gRPC reports every one of these as "Failed to bind to address", naming the address for a bad file."""
    split_address(address)
    if plaintext:
        require_loopback_for_plaintext(address)
        return
    if tls is None:
        raise TransportError("TLS_FILES_MISSING", operator_errors.tls_files_missing(address), rule="mutual TLS")
    tls.read()
    from protocol.tls_diagnosis import check_own_files

    # not the expiry: a server's certificate can expire while it runs too, and its clients name that case themselves
    # (TLS_PEER_CERT_EXPIRED); `llamdex hosts check` reports it before a start
    problem = check_own_files(tls, expiry=False)
    if problem is not None:
        raise problem


def add_port(server: Any, address: str, tls: TLSFiles | None, *, plaintext: bool = False) -> int:
    """Binds `server` to `address` with mutual TLS (or plaintext on loopback when asked); returns the port."""
    check_listen(address, tls, plaintext=plaintext)
    if not plaintext and not tls_policy.EFFECTIVE:
        logging.getLogger(__name__).error("gRPC was imported before protocol.tls_policy: %s accepts TLS 1.2 as well as 1.3 in this "
                                          "process; import `protocol` before `grpc`", address)
    try:
        port = server.add_insecure_port(address) if plaintext else server.add_secure_port(address, server_credentials(tls))
    except RuntimeError:   # grpc >= 1.5x raises instead of returning 0
        port = 0
    if port == 0:
        raise TransportError("BAD_ADDRESS", f"could not bind {address!r}: the port is in use, or the host is not an address of this machine",
                             rule="HOST:PORT")
    return port


def open_channel(address: str, tls: TLSFiles | None, *, plaintext: bool = False, options: Sequence[tuple[str, Any]] = (),
                 server_name: str | None = None) -> Any:
    """A gRPC channel to `address`: mutual TLS, or plaintext only on loopback when asked.
    `server_name` overrides the name checked against the server certificate."""
    import grpc

    opts = list(options)
    if plaintext:
        require_loopback_for_plaintext(address)
        return grpc.insecure_channel(address, options=opts)
    if tls is None:
        raise TransportError("TLS_FILES_MISSING", operator_errors.tls_files_missing(address), rule="mutual TLS")
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, channel_credentials(tls), options=opts)


def peer_identity(context: Any, *, plaintext: bool = False) -> str | None:
    """The caller's id: its certificate's common name under TLS; under plaintext (loopback only, for
    development) the `x-llamdex-client-id` metadata, which nothing authenticates."""
    auth = context.auth_context() or {}
    cn = auth.get("x509_common_name")
    if cn:
        return cn[0].decode("utf-8", "replace")
    if plaintext:
        for k, v in context.invocation_metadata() or ():
            if k == IDENTITY_METADATA:
                return v
    return None


__all__ = [
    "IDENTITY_METADATA", "TLSFiles", "TransportError", "add_port", "channel_credentials", "create_ca", "is_loopback",
    "issue_cert", "make_certs", "open_channel", "peer_identity", "require_loopback_for_plaintext", "server_credentials",
    "split_address",
]
