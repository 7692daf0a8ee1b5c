"""Why a connection to the other host fails, in one line an operator can act on.

gRPC reports every failed TLS handshake as UNAVAILABLE with a detail such as "Socket closed" (the
server refused our certificate) or "Hostname Verification Check failed". `diagnose_connection`
finds the actual reason by checking this party's own files, then dialing the address once with
Python's `ssl` (the same CA, certificate and key, the same name to verify), and returns a
`TransportError` whose message (from `protocol.operator_errors`) names the file or flag to fix; or
None when the transport is fine (then the failure was something else).

The checks, in order: own certificate expired; own certificate not issued by the trusted CA; TLS key
not the certificate's; nothing listening (refused, timeout); the peer's certificate expired, not from
the trusted CA, or not valid for the dialed name; the peer refusing our certificate (a TLS alert after
the handshake, or the connection closed: under TLS 1.3 the server checks the client's certificate only
after the client has finished its side of the handshake).
"""

from __future__ import annotations

import datetime as _dt
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol import operator_errors as msg
from protocol.tls import TLSFiles, TransportError, split_address

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"   # + an empty SETTINGS frame


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(no subject)"


def _issuer(cert: x509.Certificate) -> str:
    """The issuer's name and, when the certificate carries it, the first bytes of the issuing key's id (two
    CAs made by `llamdex certs` share a name; their key ids differ)."""
    name = cert.issuer.rfc4514_string() or "(no issuer)"
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        aki = None
    return f"{name}, key id {aki.hex()[:16]}" if aki else name


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


# OpenSSL's reasons when the answer to a ClientHello is not TLS at all (an HTTP server, a plaintext gRPC server, another
# protocol): reported as such, not as a refused certificate.
NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "PACKET_LENGTH_TOO_LONG",
                             "RECORD_LENGTH_MISMATCH"})


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# what `check_own_files` reports: this party's own files are at fault, whatever the other party does
OWN_FILE_CODES = ("TLS_FILE_INVALID", "TLS_KEY_MISMATCH", "TLS_OWN_CERT_NOT_YET_VALID", "TLS_OWN_CERT_EXPIRED", "TLS_OWN_CERT_NOT_FROM_CA")


def check_own_files(tls: TLSFiles, *, expiry: bool = True) -> TransportError | None:
    """This party's files: each a PEM of its kind; the certificate not expired (unless `expiry` is False), issued by
    the CA it trusts, matching its key."""
    def parsed(path: Path, what: str, load: Any) -> Any:
        try:
            return load(Path(path).read_bytes())
        except (ValueError, TypeError) as e:   # not PEM, another kind of PEM, an encrypted key
            reason = ' '.join(str(e).split())[:200] or type(e).__name__
            return TransportError("TLS_FILE_INVALID", f"{path} is not {what} ({reason}); take ca.pem, NAME.pem "
                                  "and NAME.key from one `llamdex certs` (or `hosts bundle`) folder", file=str(path))

    cert = parsed(tls.cert, "a PEM certificate", x509.load_pem_x509_certificate)
    cas = parsed(tls.ca, "a PEM CA certificate", x509.load_pem_x509_certificates)
    key = parsed(tls.key, "an unencrypted PEM private key", lambda b: serialization.load_pem_private_key(b, password=None))
    for got in (cert, cas, key):
        if isinstance(got, TransportError):
            return got
    leaf = next((c for c in cas if not _is_ca(c)), None)
    if leaf is not None:   # a party's own certificate given as the CA: no handshake can verify against it
        return TransportError("TLS_FILE_INVALID", f"{tls.ca} holds a certificate that is not a CA's ({leaf.subject.rfc4514_string()}); "
                              "the CA file is ca.pem of the `llamdex certs` (or `hosts bundle`) folder, not a party's NAME.pem",
                              file=str(tls.ca))
    if expiry and cert.not_valid_before_utc > _now():   # a clock behind the CA's: the other party refuses it with a bare alert
        return TransportError("TLS_OWN_CERT_NOT_YET_VALID", msg.tls_own_cert_not_yet_valid(str(tls.cert), cert.not_valid_before_utc),
                              file=str(tls.cert))
    if expiry and cert.not_valid_after_utc < _now():
        return TransportError("TLS_OWN_CERT_EXPIRED", msg.tls_own_cert_expired(str(tls.cert), cert.not_valid_after_utc), file=str(tls.cert))
    if not any(_issued_by(cert, ca) for ca in cas):
        return TransportError("TLS_OWN_CERT_NOT_FROM_CA", msg.tls_own_cert_not_from_ca(str(tls.cert), str(tls.ca)), file=str(tls.cert))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        return TransportError("TLS_KEY_MISMATCH", msg.tls_key_mismatch(str(tls.cert), str(tls.key)), file=str(tls.key))
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    """Marked a CA, or an old (v1) self-signed root that carries no basic constraints at all."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.subject == cert.issuer


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends: not this CA
        return False


def _peer_certificate(host: str, port: int, tls: TLSFiles, timeout_s: float) -> x509.Certificate | None:
    """The peer's certificate, read without verifying it (only to name it in a message)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            der = s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def diagnose_connection(address: str, tls: TLSFiles | None, *, server_name: str | None = None, timeout_s: float = 5.0) -> TransportError | None:
    """The reason a mutual-TLS connection to `address` fails, or None if a handshake succeeds and the peer
    keeps the connection (see the module doc)."""
    host, port = split_address(address)
    if tls is not None:
        own = check_own_files(tls)
        if own is not None:
            return own
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return TransportError("UNREACHABLE", msg.unreachable(address, "connection refused"))
    except socket.timeout:
        return TransportError("UNREACHABLE", msg.unreachable(address, f"no answer within {timeout_s:g} s"))
    except OSError as e:
        return TransportError("UNREACHABLE", msg.unreachable(address, e.strerror or str(e)))
    if tls is None:
        raw.close()
        return None
    name = server_name or host
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(tls.ca))
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.set_alpn_protocols(["h2"])
    try:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.settimeout(timeout_s)
            s.sendall(H2_PREFACE)
            try:
                first = s.recv(1)     # the server's SETTINGS; an alert or a closed connection refuses our certificate
            except socket.timeout:
                return None
            if first:
                return None
            own = x509.load_pem_x509_certificate(Path(tls.cert).read_bytes())
            return TransportError("TLS_CERT_REFUSED", msg.tls_cert_refused(address, str(tls.cert), _subject(own), _issuer(own),
                                                                           "none, the connection was closed after the handshake"),
                                  file=str(tls.cert))
    except ssl.SSLCertVerificationError as e:
        peer = _peer_certificate(host, port, tls, timeout_s)
        subject = _subject(peer) if peer is not None else "?"
        code = getattr(e, "verify_code", None)
        if code == 9 and peer is not None:                        # X509_V_ERR_CERT_NOT_YET_VALID: a clock is wrong
            return TransportError("TLS_PEER_CERT_NOT_YET_VALID", msg.tls_peer_cert_not_yet_valid(address, subject, peer.not_valid_before_utc))
        if code == 10 and peer is not None:                       # X509_V_ERR_CERT_HAS_EXPIRED
            return TransportError("TLS_PEER_CERT_EXPIRED", msg.tls_peer_cert_expired(address, subject, peer.not_valid_after_utc))
        if code in (62, 64):                                      # hostname / IP address mismatch
            return TransportError("TLS_NAME_MISMATCH", msg.tls_name_mismatch(address, name, _names(peer) if peer is not None else []))
        return TransportError("TLS_PEER_UNTRUSTED", msg.tls_peer_untrusted(address, subject, _issuer(peer) if peer is not None else "?",
                                                                          str(tls.ca)), file=str(tls.ca))
    except ssl.SSLError as e:
        if e.reason in NOT_TLS_REASONS:   # the bytes back were no TLS record: something else listens there
            return TransportError("NOT_TLS", msg.not_tls(address, (e.reason or "").lower().replace("_", " ")))
        own = x509.load_pem_x509_certificate(Path(tls.cert).read_bytes())
        alert = (e.reason or str(e)).lower().replace("_", " ")
        return TransportError("TLS_CERT_REFUSED", msg.tls_cert_refused(address, str(tls.cert), _subject(own), _issuer(own), alert),
                              file=str(tls.cert))
    except TimeoutError:   # connected, and then silence: the handshake's own timeout (the reply's is handled above)
        return TransportError("NOT_TLS", msg.silent_peer(address, timeout_s))
    except (ConnectionResetError, BrokenPipeError) as e:
        own = x509.load_pem_x509_certificate(Path(tls.cert).read_bytes())
        return TransportError("TLS_CERT_REFUSED", msg.tls_cert_refused(address, str(tls.cert), _subject(own), _issuer(own),
                                                                       f"connection closed ({type(e).__name__})"), file=str(tls.cert))
    except OSError as e:
        return TransportError("UNREACHABLE", msg.unreachable(address, e.strerror or str(e)))


__all__ = ["OWN_FILE_CODES", "check_own_files", "diagnose_connection"]
