"""Who may call the provider: identity from the TLS client certificate, registration, key revocation,
rate limits, and signed requests (time + nonce) with a replay cache persisted in SQLite.

A client whose registered signing key is revoked (a signed `revocation` event in the ledger, from
`[[clients]] revoked_keys` at start or `ProviderParty.revoke_client_key`) is refused on every call
with KEY_REVOKED until the operator registers a new key for it; its receipts stay valid evidence.

The replay cache keeps every nonce accepted within the clock-skew window (and a little longer);
a request older than the window is refused by its timestamp, so older nonces can be dropped. The
cache lives in SQLite (WAL, synchronous=FULL), so a restarted provider still refuses a replay.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from protocol import operator_errors
from protocol.durable_db import durable_connection, immediate_transaction, init_schema
from protocol.request_auth import RequestAuthError, check_request_signature
from protocol.rpc_errors import RpcError
from protocol.tls import peer_identity
from provider_party.service.config import ProviderConfig, RegisteredClient

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    client_id    TEXT NOT NULL,
    nonce        BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    method       TEXT NOT NULL,
    PRIMARY KEY (client_id, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_by_time ON nonces (timestamp_ms);
"""


class TokenBucket:
    """Requests per second per client, with a burst of 4 seconds' worth."""

    def __init__(self, rate: float):
        self.rate, self.burst = float(rate), 4.0 * float(rate)
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._state[key] = (tokens, now)
                return False
            self._state[key] = (tokens - 1.0, now)
            return True


class Authenticator:
    def __init__(self, config: ProviderConfig, db_path: str | Path):
        self.config = config
        self.db_path = Path(db_path)
        self.buckets = TokenBucket(config.limits.max_requests_per_second)
        self.revocations: dict[str, Any] = {}   # key fingerprint -> ledger Revocation
        init_schema(self.db_path, _SCHEMA)

    def identify(self, context: Any) -> RegisteredClient:
        """The registered client behind this call (PERMISSION_DENIED / UNAUTHENTICATED otherwise)."""
        cid = peer_identity(context, plaintext=self.config.plaintext)
        if not cid:
            raise RpcError("NO_IDENTITY", "the call carries no client identity: connect with the client certificate "
                           "issued by the provider's CA (mutual TLS)", rule="mutual TLS")
        client = self.config.client(cid)
        if client is None:
            raise RpcError("UNREGISTERED_CLIENT", operator_errors.unregistered_client(cid, self.config.provider_id), rule="registered clients only")
        rev = self.revocations.get(client.key_fingerprint)
        if rev is not None:
            raise RpcError("KEY_REVOKED", operator_errors.revoked_key(cid, client.key_fingerprint, rev.revoked_at,
                                                                      where=f"ledger seq {rev.seq}: {rev.reason}"), rule="revoked keys refused")
        if not self.buckets.take(cid):
            raise RpcError("RATE_LIMITED", f"client {cid!r} exceeds {self.config.limits.max_requests_per_second:g} requests/s; retry later",
                           rule="max_requests_per_second")
        return client

    def check_signed(self, client: RegisteredClient, method: str, auth: Any, body: dict[str, Any]) -> None:
        """Signature, identity and time window, then the nonce (recorded only when everything else passed)."""
        max_skew = self.config.limits.signature_max_skew_ms
        check_request_signature(client.public_key, method, auth, body, caller=client.client_id, max_skew_ms=max_skew)
        now = int(time.time() * 1000)
        try:
            with durable_connection(self.db_path, rows=False) as con, immediate_transaction(con):
                con.execute("DELETE FROM nonces WHERE timestamp_ms < ?", (now - 2 * max_skew,))
                con.execute("INSERT INTO nonces (client_id, nonce, timestamp_ms, method) VALUES (?,?,?,?)",
                            (client.client_id, bytes(auth.nonce), int(auth.timestamp_ms), method))
        except sqlite3.IntegrityError:   # rolled back: the nonce is already there
            raise RequestAuthError("REPLAYED_REQUEST", f"nonce {bytes(auth.nonce).hex()[:16]}… of client {client.client_id!r} was already used; "
                                   "every signed request needs a fresh nonce (the request was not executed again)", rule="fresh nonce") from None


def apply_configured_revocations(config: ProviderConfig, ledger: Any) -> dict[str, Any]:
    """Records each `[[clients]] revoked_keys` entry not yet in the ledger as a signed `revocation` event (logged),
    and returns every revocation the ledger holds, by key fingerprint."""
    known = ledger.revocations()
    for client in config.clients:
        for fp, reason in client.revoked_keys:
            if fp not in known:
                rev = ledger.revoke_client_key(client.client_id, fp, reason)
                log.warning("client %s: key %s revoked (%s), ledger seq %d", client.client_id, fp, reason, rev.seq)
    return ledger.revocations()


def load_key_list(path: Path | None, key: Any) -> Any:
    """The provider's receipt key list (`[provider] receipt_keys`), whose current key must be the provider's key."""
    if path is None:
        return None
    from protocol.keys import fingerprint
    from protocol.receipt_keys import KeyList

    kl = KeyList.load(path)
    if kl.fingerprints()[-1] != fingerprint(key):
        raise RuntimeError(f"the receipt key list {path} ends with key {kl.fingerprints()[-1]}, but the provider signs with {fingerprint(key)}; "
                           "add the key with `python -m protocol.receipt_keys rotate` or point [provider] key at the list's current key")
    return kl


__all__ = ["Authenticator", "TokenBucket", "apply_configured_revocations", "load_key_list"]
