"""The client's own store of privacy receipts: every receipt verified before it is kept, in one chain.

A receipt is accepted only if it verifies under the pinned provider key, names this client, and
continues the chain held so far (sequence + 1, previous digest = digest of the last receipt). A
receipt already held is accepted again without change; one that reuses a held sequence number
with different content is proof of a forked (equivocating) provider and is refused
(CHAIN_BROKEN); one that skips ahead is refused (SEQUENCE_GAP) until the missing ones are
fetched (`sync`, from the provider's GetLedger). Stored in SQLite (WAL), one file per client.

After the provider rotates its receipt key, `trust_key_list` accepts the provider's key list
(protocol.receipt_keys) if it leads from the pinned key to the new one through endorsements; the list
is kept in the store, and every receipt is then checked against the key that signed it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from protocol.durable_db import connect_durable, durable_connection, immediate_transaction, init_schema
from protocol.errors import ReceiptError
from protocol.keys import PublicKey, fingerprint, load_public_key
from protocol.receipts import GENESIS_DIGEST, Receipt, receipt_digest, verify_chain, verify_receipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    sequence        INTEGER PRIMARY KEY,
    digest          TEXT NOT NULL UNIQUE,
    receipt_id      TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    dataset_id      TEXT NOT NULL,
    artifact_digest TEXT NOT NULL,
    envelope        TEXT NOT NULL,
    received_at     REAL NOT NULL
);
"""


class ReceiptStore:
    def __init__(self, path: str | Path, client_id: str, provider_public_key: Any):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.client_id = client_id
        self.provider_key: PublicKey = load_public_key(provider_public_key)
        init_schema(self.path, _SCHEMA)
        with durable_connection(self.path) as con:
            for k, v in (("client_id", client_id), ("provider_key", fingerprint(self.provider_key))):
                con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (k, v))
                got = con.execute("SELECT value FROM meta WHERE key=?", (k,)).fetchone()[0]
                if got != v:
                    raise ReceiptError("BAD_RECEIPT", f"receipt store {self.path} belongs to {k} {got!r}, not {v!r}; use another store file",
                                       file=str(self.path), rule="one client, one provider key")
            kl = con.execute("SELECT value FROM meta WHERE key='receipt_keys'").fetchone()
        self.keys: list[PublicKey] = [self.provider_key]
        if kl is not None:
            from protocol.receipt_keys import KeyList

            self.keys = KeyList.from_json(kl[0]).trusted_keys(self.provider_key)

    def trust_key_list(self, key_list: Any) -> list[PublicKey]:
        """Accepts the provider's receipt keys after a rotation (a KeyList that leads from the pinned key through
        endorsements) and keeps the list; raises ReceiptError (UNTRUSTED_KEY, BAD_SIGNATURE) otherwise."""
        keys = key_list.trusted_keys(self.provider_key)
        with durable_connection(self.path) as con:
            con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('receipt_keys', ?)", (key_list.to_json(),))
        self.keys = keys
        return keys

    def _connect(self) -> sqlite3.Connection:
        return connect_durable(self.path)

    def head(self) -> Receipt | None:
        con = self._connect()
        try:
            row = con.execute("SELECT envelope FROM receipts ORDER BY sequence DESC LIMIT 1").fetchone()
        finally:
            con.close()
        return verify_receipt(json.loads(row["envelope"]), self.keys) if row else None

    def add(self, envelope: dict[str, Any] | str) -> tuple[bool, Receipt]:
        """Verifies and keeps one receipt; returns (newly stored, receipt). Raises ReceiptError."""
        try:
            env = json.loads(envelope) if isinstance(envelope, str) else envelope
        except ValueError as e:
            raise ReceiptError("BAD_RECEIPT", f"receipt is not JSON: {e}", rule="dsse") from None
        r = verify_receipt(env, self.keys)
        if r.client_id != self.client_id:
            raise ReceiptError("BAD_RECEIPT", f"receipt {r.receipt_id!r} is for client {r.client_id!r}, not {self.client_id!r}", file=r.receipt_id, rule="own receipts")
        with durable_connection(self.path) as con, immediate_transaction(con):
            same = con.execute("SELECT digest FROM receipts WHERE sequence=?", (r.sequence,)).fetchone()
            if same is not None:
                con.execute("ROLLBACK")
                if same["digest"] == r.digest:
                    return False, r
                held = con.execute("SELECT MAX(sequence) AS top FROM receipts").fetchone()["top"]
                raise ReceiptError("CHAIN_BROKEN", f"receipt {r.receipt_id!r} reuses sequence {r.sequence} with different content "
                                   f"({r.digest} != held {same['digest']}): the provider signed two histories; keep both as evidence. "
                                   f"A provider whose state was restored from a backup does this too: its ledger no longer holds "
                                   f"receipts {r.sequence}-{held} that this client holds, nor the ε they charged; ask its operator",
                                   file=r.receipt_id, rule="one receipt per sequence")
            last = con.execute("SELECT sequence, envelope FROM receipts ORDER BY sequence DESC LIMIT 1").fetchone()
            previous = verify_receipt(json.loads(last["envelope"]), self.keys) if last else None
            verify_chain([env], self.keys, previous=previous) if previous else _check_genesis(r)
            con.execute("INSERT INTO receipts (sequence, digest, receipt_id, kind, dataset_id, artifact_digest, envelope, received_at) "
                        "VALUES (?,?,?,?,?,?,?,?)", (r.sequence, r.digest, r.receipt_id, r.kind, r.dataset_id, r.artifact_digest,
                                                      json.dumps(env, sort_keys=True, separators=(",", ":")), time.time()))
        return True, r

    def add_many(self, envelopes: Iterable[dict[str, Any] | str]) -> int:
        """Adds receipts in sequence order; returns how many were new."""
        items = [json.loads(e) if isinstance(e, str) else e for e in envelopes]
        items.sort(key=lambda e: verify_receipt(e, self.keys).sequence)
        return sum(1 for e in items if self.add(e)[0])

    def envelopes(self) -> list[dict[str, Any]]:
        con = self._connect()
        try:
            rows = con.execute("SELECT envelope FROM receipts ORDER BY sequence").fetchall()
        finally:
            con.close()
        return [json.loads(r["envelope"]) for r in rows]

    def verify(self) -> list[Receipt]:
        """Re-verifies the whole chain held (signatures, sequence, links, running spend)."""
        return verify_chain(self.envelopes(), self.keys)

    def sync(self, provider: Any) -> int:
        """Fetches the client's receipts from the provider's ledger (GetLedger) and adds the missing ones."""
        return self.add_many(provider.ledger_receipts())

    def export(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.envelopes(), indent=2) + "\n")
        return p


def _check_genesis(r: Receipt) -> None:
    if r.sequence != 1 or r.previous_receipt_digest != GENESIS_DIGEST:
        raise ReceiptError("SEQUENCE_GAP", f"receipt {r.receipt_id!r} has sequence {r.sequence}, but this store holds none yet; "
                           "fetch the earlier receipts first (llamdex client receipts --sync)", file=r.receipt_id, rule="start at 1")


def describe(r: Receipt) -> str:
    """One line for people."""
    eps = "∞" if r.epsilon_recomputed == float("inf") else f"{r.epsilon_recomputed:.4g}"
    budget = "∞" if r.budget == float("inf") else f"{r.budget:.4g}"
    spent = "∞" if r.spent_after == float("inf") else f"{r.spent_after:.4g}"
    return (f"#{r.sequence} {r.kind:<8} {r.dataset_id:<10} {r.artifact_digest[:19]}…  ε={eps:<7} spent {spent}/{budget}  "
            f"{r.issued_at}  digest {r.digest[:19]}…  prev {r.previous_receipt_digest[:19]}…")


__all__ = ["ReceiptStore", "describe", "receipt_digest"]
