"""The messages an operator reads when two hosts cannot work together: one line each, naming the flag or
the file to fix. Every place that refuses for one of these reasons builds its message here, so the
text lives in one place (tests/test_operator_errors.py checks each one).

Flags and keys are named as both parties spell them: `--ca`, `--cert`, `--tls-key` (TLS files; `--key`
is the signing key), `--provider` and `--server-name` (client), `[tls] ca/cert/key`, `[provider]
address/server_name` (client.toml), `[[clients]]` and `[limits]` (provider.toml).
"""

from __future__ import annotations

import datetime as _dt

TLS_FLAGS = "--ca, --cert and --tls-key (or [tls] ca, cert and key in the config)"


def _when(t: _dt.datetime | float | int | str) -> str:
    if isinstance(t, str):    # already a time as the ledger writes it (ISO 8601)
        return t
    if not isinstance(t, _dt.datetime):
        t = _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# --- transport ----------------------------------------------------------------------------------------

def plaintext_not_loopback(address: str) -> str:
    return (f"plaintext was asked for on {address!r}, which is not a loopback address: between hosts the parties use mutual TLS; "
            f"drop --plaintext (or [tls] plaintext = true) and give {TLS_FLAGS}")


def tls_files_missing(address: str, missing: list[str] | None = None) -> str:
    """`missing`: each path, with " (a folder, not a file)" where a folder stands at it."""
    what = f"TLS files not found: {missing}" if missing else f"no TLS files for {address!r}"
    return f"{what}: give {TLS_FLAGS}, made by `llamdex hosts bundle` or `llamdex certs`; --plaintext only on a loopback address"


def unreachable(address: str, reason: str) -> str:
    return (f"nothing answers at {address} ({reason}): check that the server runs there (`llamdex provider serve --config provider.toml`), "
            "its listen port ([provider] listen) and the firewall between the hosts, or fix the address (--provider / [provider] address)")


def tls_name_mismatch(address: str, dialed: str, names: list[str]) -> str:
    return (f"the TLS certificate of {address} is valid for {', '.join(names) or '(no names)'}, not for {dialed!r}: dial one of those names "
            "(--provider / [provider] address), or name the one to check with --server-name ([provider] server_name)")


def tls_peer_untrusted(address: str, subject: str, issuer: str, ca_file: str) -> str:
    return (f"the TLS certificate of {address} ({subject}, issued by {issuer}) is not signed by the CA in {ca_file} (--ca / [tls] ca): "
            "use the ca.pem of the bundle that issued the other party's certificate (`llamdex hosts bundle` writes it into both bundles)")


def tls_peer_cert_expired(address: str, subject: str, not_after: _dt.datetime) -> str:
    return (f"the TLS certificate of {address} ({subject}) expired on {_when(not_after)}: its operator re-issues it "
            "(`llamdex certs --out CA_FOLDER --party NAME=HOST`, on the CA's machine) and restarts with the new --cert and --tls-key")


def tls_cert_refused(address: str, cert_file: str, subject: str, issuer: str, alert: str) -> str:
    return (f"{address} refused this party's TLS certificate {cert_file} ({subject}, issued by {issuer}; TLS alert: {alert}): it accepts only "
            "certificates of the CA in its own [tls] ca; use the certificate and key of your bundle (--cert and --tls-key / [tls] cert and key)")


def silent_peer(address: str, timeout_s: float) -> str:
    return (f"{address} accepted the connection but did not answer the TLS handshake within {timeout_s:g} s: the program listening "
            "there is not a Llamdex party (a Llamdex server answers a handshake even while busy), or it hangs; check the address "
            "and port of the other party, and what listens there")


def not_tls(address: str, reason: str) -> str:
    return (f"{address} does not answer in TLS ({reason}): something else listens on that port (a web server, a plaintext "
            "server, another program); check the address and port of the other party")


def tls_own_cert_not_yet_valid(cert_file: str, not_before: _dt.datetime) -> str:
    return (f"this party's TLS certificate {cert_file} (--cert / [tls] cert) is valid only from {_when(not_before)}, and this host's clock "
            "says it is earlier: the clock of this host or of the CA's machine is wrong (set both by NTP), or wait until then")


def tls_peer_cert_not_yet_valid(address: str, subject: str, not_before: _dt.datetime) -> str:
    return (f"the TLS certificate of {address} ({subject}) is valid only from {_when(not_before)}, and this host's clock says it is "
            "earlier: the clock of this host, of the other party's or of the CA's machine is wrong (set them by NTP)")


def tls_own_cert_expired(cert_file: str, not_after: _dt.datetime) -> str:
    return (f"this party's TLS certificate {cert_file} (--cert / [tls] cert) expired on {_when(not_after)}: re-issue it "
            "(`llamdex certs --out CA_FOLDER --party NAME=HOST`, on the CA's machine) and replace --cert and --tls-key")


def tls_own_cert_not_from_ca(cert_file: str, ca_file: str) -> str:
    return (f"this party's TLS certificate {cert_file} (--cert / [tls] cert) is not signed by the CA in {ca_file} (--ca / [tls] ca): "
            "the two come from different CAs; take both (and --tls-key) from the same bundle")


def tls_key_mismatch(cert_file: str, key_file: str) -> str:
    return (f"the TLS key {key_file} (--tls-key / [tls] key) is not the key of the certificate {cert_file} (--cert / [tls] cert): "
            "take both from the same bundle (`llamdex hosts bundle` / `llamdex certs` write NAME.pem and NAME.key together)")


# --- identity, time, keys (refused by the provider) ----------------------------------------------------

def unregistered_client(client_id: str, provider_id: str) -> str:
    return (f"client {client_id!r} (the CN of its TLS certificate) is not registered with provider {provider_id!r}: the provider's operator "
            f"adds [[clients]] id = \"{client_id}\" with public_key = its .pub file to provider.toml (or --client {client_id}=FILE.pub) "
            "and restarts the provider")


def stale_request(skew_s: float, window_s: float) -> str:
    side = "ahead of" if skew_s > 0 else "behind"
    return (f"the request is signed {abs(skew_s):.1f} s {side} the provider's clock, outside the replay window of ±{window_s:g} s "
            "([limits] signature_max_skew_ms in provider.toml): synchronise both hosts' clocks (NTP: `timedatectl set-ntp true` or chrony) "
            "and send it again")


def revoked_key(client_id: str, key_fingerprint: str, revoked_at: _dt.datetime | float | str | None = None, where: str = "provider.toml") -> str:
    """`where`: what revoked it (the config entry, or the ledger event with its reason)."""
    when = f" on {_when(revoked_at)}" if revoked_at is not None else ""
    return (f"the signing key {key_fingerprint} of client {client_id!r} was revoked{when} ({where}); receipts it earned stay valid, but "
            f"nothing new is accepted under it: the client makes a new key (`llamdex keygen --name {client_id}`) and signs with it "
            f"(--key / [client] key); the provider's operator registers the new .pub as public_key of [[clients]] id = \"{client_id}\"")


__all__ = ["TLS_FLAGS", "plaintext_not_loopback", "revoked_key", "stale_request", "tls_cert_refused", "tls_files_missing",
           "tls_key_mismatch", "tls_name_mismatch", "tls_own_cert_expired", "tls_own_cert_not_from_ca", "tls_peer_cert_expired",
           "tls_peer_untrusted", "unreachable", "unregistered_client"]
