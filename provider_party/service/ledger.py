"""The provider's privacy ledger: append-only, hash-chained, in SQLite (stdlib sqlite3, WAL).

Tables
- `entries`: one row per event of the ledger, numbered `seq` = 1, 2, ... Each row stores its kind, the
  charged ε and δ, the running spend of its (client, dataset) before and after, the budget, the signed
  statement (DSSE envelope JSON) and its digest, and `entry_digest` = digest_json of all those columns
  plus `prev_digest` (the previous row's `entry_digest`, genesis `sha256:` + 64 zeros): a hash chain.
  Triggers forbid UPDATE and DELETE. Kinds:
  - `upload`, `deletion`: a privacy receipt (protocol.receipts) in the client's own receipt chain
    (`receipt_seq` counts the client's receipts); `client_key` names the client key that signed the
    uploaded artifact;
  - `budget`, `revocation`, `receipt_key` (format v2): a signed ledger event (protocol.receipts.LedgerEvent):
    a dataset's budget set or changed, a client key revoked, the provider's receipt key rotated. Events
    have no `receipt_seq`: they are in the ledger's chain, not in any client's receipt chain.
- `budgets`: the ε/δ budget and current spend per (client_id, dataset_id). It is a cache: the spend is
  the sum over `entries`, the budget is the last `budget` event of that dataset; `verify_chain`
  recomputes both, so a budget edited in this table (4 → 100) is a discrepancy, not a bigger budget.
- `meta`: format version (`llamdex.ledger/v2`); `v2_from_seq`, the first row written under v2.

Format v1 (before budget changes were chain events) is upgraded in place when the provider opens it
with its signing key: one transaction rebuilds `entries` with the v2 columns and appends one signed
`budget` event per budgets row ("carried over from ledger format v1"). Rows before `v2_from_seq` keep
their v1 digests (which cover no `client_key`). A v1 file opened without the key (an audit) is read
and verified under the v1 rules; `format` says which.

Composition: **basic (sequential) composition** per (client, dataset): the ε of successive uploads
of the same dataset add up (ε_total = Σ ε_i, δ_total = Σ δ_i), which holds for any mechanisms and
any adaptivity. Tighter accounting (advanced composition, RDP across uploads) is possible but would
need the raw mechanism parameters of every upload; basic composition is conservative and simple to
audit. The charged ε is the provider's recomputed ε. An ε of ∞ (no DP) only fits an unbounded
budget (registered with `math.inf`); SQL NULL and JSON null stand for ∞ in ε-valued columns.

Atomicity: every append (upload, deletion, event) checks, inserts the row, updates the budget and
commits inside one `BEGIN IMMEDIATE` transaction (`synchronous=FULL`, WAL), so a crash at any point
leaves either the whole entry (row + budget + signed statement) or nothing, and concurrent writers
(threads or processes) are serialised by SQLite's write lock (`busy_timeout` waits for it). The crash
points `ledger.*` and `receipt.*` (protocol.crashpoints) mark the places the reliability tests kill at.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from protocol.canonical import LEGACY, RFC8785, digest_json, parse_json, sha256_hex
from protocol.crashpoints import crashpoint
from protocol.durable_db import describe_tables, read_only_store
from protocol.errors import BudgetError, LedgerError, ReceiptError
from protocol.keys import PrivateKey, PublicKey, fingerprint, public_key_of, public_key_pem
from protocol.receipts import (
    GENESIS_DIGEST,
    issue_deletion_receipt,
    issue_ledger_event,
    issue_receipt,
    receipt_digest,
    utc_now_rfc3339,
    verify_ledger_event,
    verify_receipt,
)

LEDGER_FORMAT = "llamdex.ledger/v2"
LEDGER_FORMAT_V1 = "llamdex.ledger/v1"
BUSY_TIMEOUT_S = 30.0
TOL = 1e-9
MAX_PAGE = 1000
RECEIPT_KINDS = ("upload", "deletion")
EVENT_KINDS = ("budget", "revocation", "receipt_key")
ALL_KINDS = RECEIPT_KINDS + EVENT_KINDS
V1_UPGRADE_REASON = "carried over from ledger format v1, where budget changes were not chain events"

_ENTRIES = """
CREATE TABLE IF NOT EXISTS entries (
    seq                INTEGER PRIMARY KEY,
    entry_digest       TEXT NOT NULL UNIQUE,
    prev_digest        TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    dataset_id         TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('upload', 'deletion', 'budget', 'revocation', 'receipt_key')),
    artifact_digest    TEXT NOT NULL,      -- events: the digest of what they are about (dataset, client key, receipt key)
    epsilon            REAL,               -- charged epsilon; NULL = infinity (no DP)
    delta              REAL NOT NULL,
    spent_before       REAL,               -- NULL = infinity
    spent_after        REAL,
    budget             REAL,               -- NULL = unbounded
    delta_spent_before REAL NOT NULL,
    delta_spent_after  REAL NOT NULL,
    delta_budget       REAL,
    receipt_id         TEXT NOT NULL UNIQUE,   -- events: the event id
    receipt_seq        INTEGER,            -- the client's receipt sequence; NULL for events
    receipt_digest     TEXT NOT NULL,
    receipt            TEXT NOT NULL,      -- DSSE envelope JSON (receipt or event)
    created_at         TEXT NOT NULL,
    client_key         TEXT                -- upload: fingerprint of the client key that signed the artifact; revocation: the revoked key
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS entries_by_client ON entries (client_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS entries_client_receipt ON entries (client_id, receipt_seq);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE is forbidden'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE is forbidden'); END;
"""
_OTHER = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    client_id      TEXT NOT NULL,
    dataset_id     TEXT NOT NULL,
    epsilon_budget REAL,                   -- NULL = unbounded
    delta_budget   REAL,                   -- NULL = unbounded
    epsilon_spent  REAL DEFAULT 0,         -- NULL = infinity
    delta_spent    REAL NOT NULL DEFAULT 0,
    last_seq       INTEGER,
    PRIMARY KEY (client_id, dataset_id)
);
"""

_ENTRY_COLS_V1 = ("seq", "entry_digest", "prev_digest", "client_id", "dataset_id", "kind", "artifact_digest", "epsilon", "delta",
                  "spent_before", "spent_after", "budget", "delta_spent_before", "delta_spent_after", "delta_budget",
                  "receipt_id", "receipt_seq", "receipt_digest", "receipt", "created_at")
_ENTRY_COLS = _ENTRY_COLS_V1 + ("client_key",)
_DIGESTED_V1 = tuple(c for c in _ENTRY_COLS_V1 if c not in ("entry_digest", "receipt"))
_DIGESTED = tuple(c for c in _ENTRY_COLS if c not in ("entry_digest", "receipt"))


def _to_db(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else float(x)


def _from_db(x: float | None) -> float:
    return math.inf if x is None else float(x)


def _close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=TOL, abs_tol=1e-12)


def entry_digest(row: dict[str, Any], *, v1: bool = False) -> str:
    """digest_json over every column except the digest itself and the statement text (bound by receipt_digest).
    Rows written under format v1 are digested as v1 wrote them: without `client_key`, which v1 did not have,
    and with the canonical JSON of the time (sorted-keys json.dumps, before RFC 8785)."""
    return digest_json({c: row.get(c) for c in (_DIGESTED_V1 if v1 else _DIGESTED)}, LEGACY if v1 else RFC8785)


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    entry_digest: str
    prev_digest: str
    client_id: str
    dataset_id: str
    kind: str
    artifact_digest: str
    epsilon: float
    delta: float
    spent_before: float
    spent_after: float
    budget: float
    delta_spent_before: float
    delta_spent_after: float
    delta_budget: float
    receipt_id: str
    receipt_seq: int | None       # None for events
    receipt_digest: str
    receipt: dict[str, Any]       # DSSE envelope (a privacy receipt, or a ledger event)
    created_at: str
    client_key: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "LedgerEntry":
        d = dict(row)
        try:
            for c in ("epsilon", "spent_before", "spent_after", "budget", "delta_budget"):
                d[c] = _from_db(d[c])
            d["receipt"] = parse_json(d["receipt"])
        except (ValueError, TypeError, OverflowError) as e:
            raise LedgerError("LEDGER_CORRUPT", f"ledger row seq {d.get('seq')} cannot be read ({type(e).__name__}: {e}): the file was "
                              "altered; `Ledger.verify_chain` (or `llamdex audit --ledger`) names every altered row", rule="ledger rows") from None
        d.setdefault("client_key", None)
        return cls(**d)

    @property
    def is_event(self) -> bool:
        return self.kind in EVENT_KINDS


@dataclass(frozen=True)
class BudgetStatus:
    client_id: str
    dataset_id: str
    epsilon_budget: float
    delta_budget: float
    epsilon_spent: float
    delta_spent: float

    @property
    def epsilon_remaining(self) -> float:
        return self.epsilon_budget - self.epsilon_spent


@dataclass(frozen=True)
class Revocation:
    """A client key revoked by a signed ledger event."""

    client_id: str
    key_fingerprint: str
    reason: str
    seq: int
    revoked_at: str


def _budget_status(row: sqlite3.Row) -> BudgetStatus:
    return BudgetStatus(row["client_id"], row["dataset_id"], _from_db(row["epsilon_budget"]), _from_db(row["delta_budget"]),
                        _from_db(row["epsilon_spent"]), float(row["delta_spent"]))


@dataclass(frozen=True)
class Discrepancy:
    seq: int | None      # None: not tied to one row (e.g. the budgets table)
    reason: str


def _num_or_none(x: float) -> float | None:
    return None if math.isinf(x) else float(x)


def existing_ledger_format(path: str | Path) -> str:
    """The format of the ledger file at `path`, read without writing to it; `NOT_A_LEDGER` for any other file.

    Opening a `Ledger` creates its tables where they are missing: right for the provider's own state, wrong
    for a verifier. An auditor pointed at another SQLite file (the provider's `state.db` sits beside
    `ledger.db`) or at an empty file would otherwise find a valid ledger of 0 entries, and pass it.
    """
    p = Path(path)
    try:
        with read_only_store(p) as (con, tables):
            fmt_row = con.execute("SELECT value FROM meta WHERE key='format'").fetchone() if "meta" in tables else None
    except sqlite3.DatabaseError as e:
        raise LedgerError("NOT_A_LEDGER", f"{p} is not a ledger: {e}", file=str(p)) from None
    if "entries" not in tables:
        raise LedgerError("NOT_A_LEDGER", f"{p} is not a ledger: {describe_tables(tables)}, and a ledger has 'entries' and 'meta' "
                          "(a provider keeps it as ledger.db in its state folder)", file=str(p))
    if fmt_row is None:
        raise _format_row_missing(p)
    return fmt_row[0]


def _format_row_missing(path: Path) -> LedgerError:
    """Every ledger, v1 included, wrote its format row with its first table: entries without one mean an altered file."""
    return LedgerError("LEDGER_CORRUPT", f"{path} has ledger entries but no format row in its meta table: the file was altered; "
                       "restore it from a backup", file=str(path))


APPEND_ONLY_TRIGGERS = ("entries_no_update", "entries_no_delete")   # made with `entries` in format v2 (v1 had none)


def lost_append_only_triggers(con: sqlite3.Connection) -> list[str]:
    """The append-only triggers of `entries` that the file no longer holds (someone dropped them)."""
    present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='entries'")}
    return [t for t in APPEND_ONLY_TRIGGERS if t not in present]


class Ledger:
    """Append-only privacy ledger of one provider.

    `signing_key` signs every receipt and event the ledger issues (required to append; the ledger records
    a `receipt_key` event when it is opened with a key other than the one that signed its last entry,
    carrying `endorsement`, the previous key's handover statement, when given). `trusted_keys`: earlier
    receipt keys `verify_chain` trusts by default besides the signing key (the provider's key list). Datasets need a budget:
    `set_budget(...)`, or `default_epsilon_budget` / `default_delta_budget` applied on first upload;
    either way a signed `budget` event enters the chain. `create=False` (verifiers) refuses a file that is not
    already a ledger (`existing_ledger_format`) instead of making it one.
    """

    def __init__(self, path: str | Path, signing_key: PrivateKey | None = None, *,
                 default_epsilon_budget: float | None = None, default_delta_budget: float = math.inf,
                 endorsement: dict[str, Any] | None = None, trusted_keys: Sequence[PublicKey] | None = None, create: bool = True):
        self.path = Path(path)
        if not create:
            existing_ledger_format(self.path)
        self.signing_key = signing_key
        self.trusted_keys = list(trusted_keys or [])   # receipt keys verify_chain trusts by default (with the signing key)
        self.default_epsilon_budget = default_epsilon_budget
        self.default_delta_budget = default_delta_budget
        self._fault: Callable[[str], None] | None = None   # test hook: called at named points inside a write
        try:
            fmt = self._open_tables()
        except sqlite3.DatabaseError as e:   # random bytes, a folder, another program's database
            raise LedgerError("LEDGER_CORRUPT", f"{self.path} cannot be opened as a ledger ({e}); it was not changed. Restore it from a "
                              "backup, or point the provider at its own state folder", file=str(self.path)) from None
        if fmt not in (LEDGER_FORMAT, LEDGER_FORMAT_V1):
            raise LedgerError("LEDGER_FORMAT", f"ledger {self.path} has format {fmt!r}; this version reads {LEDGER_FORMAT!r} "
                              f"(and upgrades {LEDGER_FORMAT_V1!r}); use the provider version that wrote it", file=str(self.path))
        self.format = fmt
        if fmt == LEDGER_FORMAT_V1 and signing_key is not None:
            self._upgrade_v1()
        if signing_key is not None and self.format == LEDGER_FORMAT:
            self._note_receipt_key(endorsement)

    def _open_tables(self) -> str:
        """Creates the tables of a new ledger; returns the file's format."""
        with self._connect() as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            has_entries = "entries" in tables
            if has_entries and ("meta" not in tables or con.execute("SELECT value FROM meta WHERE key='format'").fetchone() is None):
                raise _format_row_missing(self.path)   # before anything is written to it
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_OTHER)
            fmt_row = con.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if fmt_row is None and not has_entries:
                con.executescript(_ENTRIES + _INDEXES)
                con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (LEDGER_FORMAT,))
                con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('v2_from_seq', '1')")
                fmt = LEDGER_FORMAT
            else:
                fmt = fmt_row[0]
                lost = lost_append_only_triggers(con)
                if lost and fmt == LEDGER_FORMAT and self.signing_key is not None:   # the provider's own open, not an auditor's
                    logging.getLogger(__name__).warning("ledger %s had lost its append-only guard(s) %s (someone dropped them); "
                                                        "restored. Run `llamdex audit --ledger` to check its chain", self.path, lost)
                    for stmt in _index_statements():
                        con.execute(stmt)
        return fmt

    # --- connections -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection per operation: safe across threads and forks; autocommit mode so that
        transactions are exactly the explicit BEGIN IMMEDIATE ... COMMIT blocks."""
        con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.format != LEDGER_FORMAT:
            raise LedgerError("LEDGER_FORMAT", f"ledger {self.path} has format {self.format!r} and was opened without the signing key; "
                              "the provider upgrades it to format v2 when it opens it with its key", file=str(self.path))
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                if not con.in_transaction:    # the block ended it itself (ROLLBACK: nothing to write)
                    return
                self._hook("before_commit")
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        self._hook("after_commit")

    def _hook(self, point: str) -> None:
        crashpoint(f"ledger.{point}")
        if self._fault is not None:
            self._fault(point)

    def meta(self, key: str) -> str | None:
        with self._connect() as con:
            r = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if r is None else r[0]

    def _v2_from_seq(self) -> int:
        v = self.meta("v2_from_seq")
        if self.format != LEDGER_FORMAT or v is None:
            return 1 << 62        # a v1 file: every row is a v1 row
        try:
            return int(v)
        except ValueError:
            return 1

    # --- format upgrade ----------------------------------------------------------------------------

    def _upgrade_v1(self) -> None:
        """v1 → v2 in one transaction: `entries` rebuilt with the v2 columns (rows copied as they are), and
        one signed `budget` event per budgets row, so that every budget is explained by the chain from here on."""
        key = self._need_key()
        cols = ", ".join(_ENTRY_COLS_V1)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if con.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0] != LEDGER_FORMAT_V1:
                    con.execute("ROLLBACK")     # another process upgraded it meanwhile
                    self.format = LEDGER_FORMAT
                    return
                con.execute(_ENTRIES.replace("IF NOT EXISTS entries", "entries_v2"))
                con.execute(f"INSERT INTO entries_v2 ({cols}) SELECT {cols} FROM entries")
                con.execute("DROP TABLE entries")
                con.execute("ALTER TABLE entries_v2 RENAME TO entries")
                for stmt in _index_statements():   # one by one: executescript would commit the transaction
                    con.execute(stmt)
                last = con.execute("SELECT MAX(seq) FROM entries").fetchone()[0] or 0
                con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('v2_from_seq', ?)", (str(last + 1),))
                con.execute("UPDATE meta SET value=? WHERE key='format'", (LEDGER_FORMAT,))
                self.format = LEDGER_FORMAT
                for b in con.execute("SELECT * FROM budgets ORDER BY client_id, dataset_id").fetchall():
                    last_row = con.execute("SELECT budget, delta_budget FROM entries WHERE client_id=? AND dataset_id=? ORDER BY seq DESC LIMIT 1",
                                           (b["client_id"], b["dataset_id"])).fetchone()
                    previous = None if last_row is None else (_from_db(last_row["budget"]), _from_db(last_row["delta_budget"]))
                    self._append_budget_event(con, key, b["client_id"], b["dataset_id"], _from_db(b["epsilon_budget"]),
                                              _from_db(b["delta_budget"]), previous, V1_UPGRADE_REASON)
                con.execute("COMMIT")
            except BaseException:
                self.format = LEDGER_FORMAT_V1
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    # --- budgets ---------------------------------------------------------------------------------

    def set_budget(self, client_id: str, dataset_id: str, epsilon: float, delta: float = math.inf, *,
                   reason: str = "set by the provider's operator") -> BudgetStatus:
        """Registers or changes the (ε, δ) budget of a dataset; math.inf = unbounded. A budget below
        what is already spent is refused. Each change is a signed `budget` event in the chain."""
        for name, v in (("epsilon", epsilon), ("delta", delta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v <= 0:
                raise BudgetError(f"budget {name} must be a positive number (math.inf = unbounded), got {v!r}")
        key = self._need_key()
        with self._write() as con:
            row = con.execute("SELECT * FROM budgets WHERE client_id=? AND dataset_id=?", (client_id, dataset_id)).fetchone()
            previous = None
            if row is not None:
                spent, dspent = _from_db(row["epsilon_spent"]), row["delta_spent"]
                if spent > epsilon or dspent > delta:
                    raise BudgetError(f"dataset {dataset_id!r} of client {client_id!r} has already spent epsilon {spent:g}, delta {dspent:g}; "
                                      f"a budget of ({epsilon:g}, {delta:g}) would be exceeded")
                previous = (_from_db(row["epsilon_budget"]), _from_db(row["delta_budget"]))
                if _close(previous[0], float(epsilon)) and _close(previous[1], float(delta)):
                    con.execute("ROLLBACK")
                    return _budget_status(row)
                con.execute("UPDATE budgets SET epsilon_budget=?, delta_budget=? WHERE client_id=? AND dataset_id=?",
                            (_to_db(epsilon), _to_db(delta), client_id, dataset_id))
            else:
                con.execute("INSERT INTO budgets (client_id, dataset_id, epsilon_budget, delta_budget, epsilon_spent, delta_spent) VALUES (?,?,?,?,0,0)",
                            (client_id, dataset_id, _to_db(epsilon), _to_db(delta)))
            self._append_budget_event(con, key, client_id, dataset_id, float(epsilon), float(delta), previous, reason)
        return self.budget(client_id, dataset_id)  # type: ignore[return-value]

    def budget(self, client_id: str, dataset_id: str) -> BudgetStatus | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM budgets WHERE client_id=? AND dataset_id=?", (client_id, dataset_id)).fetchone()
        return None if row is None else _budget_status(row)

    def budgets(self, client_id: str) -> list[BudgetStatus]:
        """Every dataset budget registered for `client_id`, by dataset id."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM budgets WHERE client_id=? ORDER BY dataset_id", (client_id,)).fetchall()
        return [_budget_status(r) for r in rows]

    def _budget_row(self, con: sqlite3.Connection, client_id: str, dataset_id: str) -> sqlite3.Row:
        row = con.execute("SELECT * FROM budgets WHERE client_id=? AND dataset_id=?", (client_id, dataset_id)).fetchone()
        if row is None:
            if self.default_epsilon_budget is None:
                raise BudgetError(f"no privacy budget is registered for dataset {dataset_id!r} of client {client_id!r}; "
                                  "register one with Ledger.set_budget (math.inf = unbounded)")
            con.execute("INSERT INTO budgets (client_id, dataset_id, epsilon_budget, delta_budget, epsilon_spent, delta_spent) VALUES (?,?,?,?,0,0)",
                        (client_id, dataset_id, _to_db(self.default_epsilon_budget), _to_db(self.default_delta_budget)))
            self._append_budget_event(con, self._need_key(), client_id, dataset_id, float(self.default_epsilon_budget),
                                      float(self.default_delta_budget), None, "the ledger's default budget, at the dataset's first upload")
            row = con.execute("SELECT * FROM budgets WHERE client_id=? AND dataset_id=?", (client_id, dataset_id)).fetchone()
        return row

    # --- appends ---------------------------------------------------------------------------------

    def _need_key(self) -> PrivateKey:
        if self.signing_key is None:
            raise LedgerError("NO_SIGNING_KEY", "this ledger was opened without the provider's signing key; it can be read and verified but not appended to")
        return self.signing_key

    @staticmethod
    def _chain_heads(con: sqlite3.Connection, client_id: str) -> tuple[int, str, int, str]:
        last = con.execute("SELECT seq, entry_digest FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["entry_digest"]) if last else (1, GENESIS_DIGEST)
        lr = con.execute("SELECT receipt_seq, receipt_digest FROM entries WHERE client_id=? AND receipt_seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
                         (client_id,)).fetchone()
        rseq, rprev = (lr["receipt_seq"] + 1, lr["receipt_digest"]) if lr else (1, GENESIS_DIGEST)
        return seq, prev, rseq, rprev

    def _insert(self, con: sqlite3.Connection, row: dict[str, Any]) -> LedgerEntry:
        row.setdefault("client_key", None)
        row["entry_digest"] = entry_digest(row)
        con.execute(f"INSERT INTO entries ({', '.join(_ENTRY_COLS)}) VALUES ({', '.join('?' for _ in _ENTRY_COLS)})",
                    tuple(row[c] for c in _ENTRY_COLS))
        self._hook("after_insert")
        if row["kind"] in RECEIPT_KINDS:
            con.execute("UPDATE budgets SET epsilon_spent=?, delta_spent=?, last_seq=? WHERE client_id=? AND dataset_id=?",
                        (row["spent_after"], row["delta_spent_after"], row["seq"], row["client_id"], row["dataset_id"]))
            self._hook("after_budget_update")
        return LedgerEntry.from_row(con.execute("SELECT * FROM entries WHERE seq=?", (row["seq"],)).fetchone())

    @staticmethod
    def _sign(what: str, sign: Callable[[], Any]) -> Any:
        """Signs a receipt or event between the crash points `receipt.before_sign` / `receipt.after_sign`."""
        crashpoint("receipt.before_sign")
        env = sign()
        crashpoint("receipt.after_sign")
        return env

    def _append_event(self, con: sqlite3.Connection, key: PrivateKey, kind: str, fields: dict[str, Any], *, client_id: str,
                      dataset_id: str = "", spent: tuple[float, float] = (0.0, 0.0), budget: tuple[float, float] = (math.inf, math.inf),
                      client_key: str | None = None) -> LedgerEntry:
        seq, prev, _, _ = self._chain_heads(con, client_id)
        issued_at = utc_now_rfc3339()
        env = self._sign(kind, lambda: issue_ledger_event(key, kind, fields, ledger_seq=seq, issued_at=issued_at))
        payload = env.payload
        ev = json.loads(payload)
        row = {"seq": seq, "prev_digest": prev, "client_id": client_id, "dataset_id": dataset_id, "kind": kind,
               "artifact_digest": "sha256:" + ev["subject"][0]["digest"]["sha256"], "epsilon": 0.0, "delta": 0.0,
               "spent_before": _to_db(spent[0]), "spent_after": _to_db(spent[0]), "budget": _to_db(budget[0]),
               "delta_spent_before": float(spent[1]), "delta_spent_after": float(spent[1]), "delta_budget": _to_db(budget[1]),
               "receipt_id": ev["predicate"]["event_id"], "receipt_seq": None, "receipt_digest": "sha256:" + sha256_hex(payload),
               "receipt": env.to_json(), "created_at": issued_at, "client_key": client_key}
        return self._insert(con, row)

    def _append_budget_event(self, con: sqlite3.Connection, key: PrivateKey, client_id: str, dataset_id: str, epsilon: float, delta: float,
                             previous: tuple[float, float] | None, reason: str) -> LedgerEntry:
        b = con.execute("SELECT epsilon_spent, delta_spent FROM budgets WHERE client_id=? AND dataset_id=?", (client_id, dataset_id)).fetchone()
        spent = (_from_db(b["epsilon_spent"]), float(b["delta_spent"])) if b is not None else (0.0, 0.0)
        fields = {"client_id": client_id, "dataset_id": dataset_id, "epsilon_budget": _num_or_none(epsilon), "delta_budget": _num_or_none(delta),
                  "previous": None if previous is None else {"epsilon_budget": _num_or_none(previous[0]), "delta_budget": _num_or_none(previous[1])},
                  "epsilon_spent": _num_or_none(spent[0]), "delta_spent": float(spent[1]), "reason": reason}
        return self._append_event(con, key, "budget", fields, client_id=client_id, dataset_id=dataset_id, spent=spent, budget=(epsilon, delta))

    def append_upload(self, client_id: str, dataset_id: str, artifact_digest: str, dp: Any,
                      epsilon_recomputed: float | None = None, *, artifact_name: str = "expert", client_key: str | None = None,
                      receipt_id: str | None = None) -> LedgerEntry:
        """Charges an upload to its dataset's budget and issues the signed receipt, atomically.

        `dp` is the artifact's DPStatement; `epsilon_recomputed` the provider's own ε (recomputed and
        checked with protocol.dp.verify_statement when omitted); `client_key` the fingerprint of the client
        key that signed the artifact. Raises BudgetError, writing nothing, if the claim does not verify or
        the upload would exceed the budget."""
        key = self._need_key()
        if epsilon_recomputed is None:
            from protocol.dp import verify_statement

            epsilon_recomputed = verify_statement(dp)
        eps, delta = float(epsilon_recomputed), float(dp.delta)
        if math.isnan(eps) or eps < 0 or math.isnan(delta) or delta < 0:
            raise BudgetError(f"charged epsilon/delta must be non-negative, got ({eps!r}, {delta!r})")
        with self._write() as con:
            b = self._budget_row(con, client_id, dataset_id)
            budget, dbudget = _from_db(b["epsilon_budget"]), _from_db(b["delta_budget"])
            before, dbefore = _from_db(b["epsilon_spent"]), float(b["delta_spent"])
            after, dafter = before + eps, dbefore + delta
            if after > budget * (1 + 1e-12) or dafter > dbudget * (1 + 1e-12):
                raise BudgetError(
                    f"upload refused: dataset {dataset_id!r} of client {client_id!r} has spent epsilon {before:.6g} (delta {dbefore:.3g}) "
                    f"of its budget {budget:.6g} (delta {dbudget:.3g}); this upload's epsilon {eps:.6g} (delta {delta:.3g}) "
                    f"would bring it to {after:.6g} (delta {dafter:.3g}) under basic composition")
            seq, prev, rseq, rprev = self._chain_heads(con, client_id)
            issued_at = utc_now_rfc3339()
            env = self._sign("upload", lambda: issue_receipt(
                key, sequence=rseq, client_id=client_id, dataset_id=dataset_id, artifact_digest=artifact_digest,
                epsilon_claimed=dp.epsilon, epsilon_recomputed=eps, delta=delta, accountant=dp.accountant,
                accountant_params={"mechanism": dp.mechanism, "noise_multiplier": float(dp.noise_multiplier),
                                   "sample_rate": float(dp.sample_rate), "steps": int(dp.steps), "max_grad_norm": float(dp.max_grad_norm)},
                spent_before=before, budget=budget, previous_receipt_digest=rprev, delta_spent_before=dbefore,
                delta_budget=dbudget, issued_at=issued_at, artifact_name=artifact_name, ledger_seq=seq, receipt_id=receipt_id,
            ))
            return self._insert(con, self._row(seq, prev, client_id, dataset_id, "upload", artifact_digest, eps, delta, before, after,
                                               budget, dbefore, dafter, dbudget, rseq, env, issued_at, client_key))

    def append_deletion(self, client_id: str, artifact_digest: str, *, deleted: Sequence[str] = ("expert", "connectors"),
                        artifact_name: str = "expert") -> LedgerEntry:
        """Records a Forget of an uploaded artifact and issues the signed deletion receipt (charges nothing)."""
        key = self._need_key()
        with self._write() as con:
            up = con.execute("SELECT * FROM entries WHERE client_id=? AND artifact_digest=? AND kind='upload' ORDER BY seq DESC LIMIT 1",
                             (client_id, artifact_digest)).fetchone()
            if up is None:
                raise LedgerError("NOT_FOUND", f"client {client_id!r} has no upload of artifact {artifact_digest}", file=artifact_digest)
            dataset_id = up["dataset_id"]
            b = self._budget_row(con, client_id, dataset_id)
            spent, dspent = _from_db(b["epsilon_spent"]), float(b["delta_spent"])
            budget, dbudget = _from_db(b["epsilon_budget"]), _from_db(b["delta_budget"])
            seq, prev, rseq, rprev = self._chain_heads(con, client_id)
            issued_at = utc_now_rfc3339()
            env = self._sign("deletion", lambda: issue_deletion_receipt(
                key, sequence=rseq, client_id=client_id, dataset_id=dataset_id, artifact_digest=artifact_digest, spent=spent,
                budget=budget, previous_receipt_digest=rprev, deleted=deleted, revokes_receipt_id=up["receipt_id"],
                delta_spent=dspent, delta_budget=dbudget, issued_at=issued_at, artifact_name=artifact_name, ledger_seq=seq,
            ))
            return self._insert(con, self._row(seq, prev, client_id, dataset_id, "deletion", artifact_digest, 0.0, 0.0, spent, spent,
                                               budget, dspent, dspent, dbudget, rseq, env, issued_at, None))

    def revoke_client_key(self, client_id: str, key: PublicKey | PrivateKey | str, reason: str) -> Revocation:
        """Revokes a client signing key (a key object or its `sha256:` fingerprint) with a signed `revocation`
        event. Revoking a key that is already revoked returns the first revocation and writes nothing."""
        fp = key if isinstance(key, str) else fingerprint(key)
        known = self.revocations().get(fp)
        if known is not None:
            return known
        pkey = self._need_key()
        with self._write() as con:
            entry = self._append_event(con, pkey, "revocation", {"client_id": client_id, "key_fingerprint": fp, "reason": str(reason)},
                                       client_id=client_id, client_key=fp)
        return Revocation(client_id, fp, str(reason), entry.seq, entry.created_at)

    def revocations(self) -> dict[str, Revocation]:
        """Every revoked client key (by fingerprint), from the chain's `revocation` events."""
        out: dict[str, Revocation] = {}
        with self._connect() as con:
            if self.format != LEDGER_FORMAT:
                return out
            rows = con.execute("SELECT * FROM entries WHERE kind='revocation' ORDER BY seq").fetchall()
        for r in rows:
            ev = _event_fields(json.loads(r["receipt"]))
            out.setdefault(ev["key_fingerprint"], Revocation(ev["client_id"], ev["key_fingerprint"], ev["reason"], r["seq"], r["created_at"]))
        return out

    def _note_receipt_key(self, endorsement: dict[str, Any] | None) -> None:
        """Records a `receipt_key` event when the signing key differs from the key that signed the last entry."""
        key = self._need_key()
        fp = fingerprint(key)
        with self._connect() as con:
            last = con.execute("SELECT receipt FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            return
        previous = _signer_named(json.loads(last["receipt"]))
        if previous == fp:
            return
        fields = {"key_fingerprint": fp, "public_key_pem": public_key_pem(key).decode("ascii"), "previous_key_fingerprint": previous,
                  "endorsement": endorsement}
        with self._write() as con:
            self._append_event(con, key, "receipt_key", fields, client_id="")

    @staticmethod
    def _row(seq: int, prev: str, client_id: str, dataset_id: str, kind: str, artifact_digest: str, eps: float, delta: float,
             before: float, after: float, budget: float, dbefore: float, dafter: float, dbudget: float, rseq: int,
             env: Any, created_at: str, client_key: str | None) -> dict[str, Any]:
        payload = env.payload
        rid = json.loads(payload)["predicate"]["receipt_id"]
        return {
            "seq": seq, "prev_digest": prev, "client_id": client_id, "dataset_id": dataset_id, "kind": kind,
            "artifact_digest": artifact_digest, "epsilon": _to_db(eps), "delta": delta, "spent_before": _to_db(before),
            "spent_after": _to_db(after), "budget": _to_db(budget), "delta_spent_before": dbefore, "delta_spent_after": dafter,
            "delta_budget": _to_db(dbudget), "receipt_id": rid, "receipt_seq": rseq,
            "receipt_digest": "sha256:" + sha256_hex(payload), "receipt": env.to_json(), "created_at": created_at, "client_key": client_key,
        }

    # --- reads -----------------------------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        """(last seq, last entry digest) over every entry, events included; (0, genesis) when empty."""
        with self._connect() as con:
            r = con.execute("SELECT seq, entry_digest FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (r["seq"], r["entry_digest"]) if r else (0, GENESIS_DIGEST)

    def count(self, kinds: Iterable[str] = RECEIPT_KINDS) -> int:
        """How many entries of `kinds`: by default the receipts issued (uploads and deletions), not the events."""
        kinds = tuple(kinds)
        with self._connect() as con:
            return con.execute(f"SELECT COUNT(*) FROM entries WHERE kind IN ({','.join('?' for _ in kinds)})", kinds).fetchone()[0]

    def entries(self, client_id: str | None = None, page_token: str | None = None, page_size: int = 100,
                kinds: Iterable[str] = RECEIPT_KINDS) -> tuple[list[LedgerEntry], str | None]:
        """One page of entries of `kinds` (default: the receipts, not the events) in seq order (optionally one
        client's), and the token of the next page (None at the end). Tokens are opaque strings; pass back
        what the previous call returned."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE:
            raise LedgerError("BAD_PAGE_SIZE", f"page_size must be an integer in 1..{MAX_PAGE}, got {page_size!r}")
        kinds = tuple(kinds)
        after = 0
        if page_token:
            try:
                tok = parse_json(base64.urlsafe_b64decode(page_token.encode("ascii")))
                after = int(tok["after"])
                if not 0 <= after < 2**63 or tok.get("client") != client_id:   # SQLite's integers are 64-bit
                    raise ValueError
            except (ValueError, KeyError, TypeError, UnicodeError, json.JSONDecodeError, OverflowError):
                raise LedgerError("BAD_PAGE_TOKEN", f"page token {page_token[:80]!r} is invalid for this query") from None
        q, args = f"SELECT * FROM entries WHERE seq > ? AND kind IN ({','.join('?' for _ in kinds)})", [after, *kinds]
        if client_id is not None:
            q += " AND client_id = ?"
            args.append(client_id)
        q += " ORDER BY seq LIMIT ?"
        args.append(page_size + 1)
        with self._connect() as con:
            rows = con.execute(q, args).fetchall()
        page = [LedgerEntry.from_row(r) for r in rows[:page_size]]
        nxt = None
        if len(rows) > page_size:
            nxt = base64.urlsafe_b64encode(json.dumps({"after": page[-1].seq, "client": client_id}).encode()).decode("ascii")
        return page, nxt

    def upload_entry(self, client_id: str, artifact_digest: str) -> LedgerEntry | None:
        """The last upload entry of `artifact_digest` by `client_id`, if any."""
        with self._connect() as con:
            r = con.execute("SELECT * FROM entries WHERE client_id=? AND artifact_digest=? AND kind='upload' ORDER BY seq DESC LIMIT 1",
                            (client_id, artifact_digest)).fetchone()
        return None if r is None else LedgerEntry.from_row(r)

    def events(self, kind: str | None = None) -> list[LedgerEntry]:
        """Every event entry (or those of one kind), in chain order."""
        kinds = (kind,) if kind else EVENT_KINDS
        out, token = [], None
        while True:
            page, token = self.entries(page_token=token, page_size=MAX_PAGE, kinds=kinds)
            out += page
            if not token:
                return out

    def receipts(self, client_id: str) -> list[dict[str, Any]]:
        """Every receipt envelope of a client, in chain order (events are not receipts)."""
        with self._connect() as con:
            rows = con.execute("SELECT receipt FROM entries WHERE client_id=? AND kind IN ('upload', 'deletion') ORDER BY seq", (client_id,)).fetchall()
        return [json.loads(r["receipt"]) for r in rows]

    def receipt_keys(self) -> list[PublicKey]:
        """The provider receipt keys the chain announces (`receipt_key` events), oldest first, plus the current key."""
        from protocol.keys import load_public_key

        keys = [load_public_key(_event_fields(e.receipt)["public_key_pem"].encode("ascii")) for e in self.events("receipt_key")]
        if self.signing_key is not None:
            keys.append(public_key_of(self.signing_key))
        return keys

    # --- audit -----------------------------------------------------------------------------------

    def verify_chain(self, public_key: PublicKey | PrivateKey | Sequence[Any] | None = None) -> list[Discrepancy]:
        """Recomputes the whole ledger from one snapshot and returns every discrepancy found (empty: sound).

        Checks: contiguous seq from 1; prev_digest links; each entry_digest; each receipt and event
        (signature, digest, agreement with its row); the receipt key in force (the signer of the first
        entry, which must be a trusted key, then each `receipt_key` event, endorsed by the key before it or
        itself trusted); each client's receipt chain (sequence, previous digest); budget arithmetic under
        basic composition (spent before/after, within budget); every budget explained by a `budget` event
        (the budget on each receipt row and in the budgets table equals the dataset's last budget event);
        and the budgets table's spend against the recomputed sums. `public_key`: the trusted receipt key(s);
        default the ledger's own key."""
        from protocol.dsse import as_key_list

        if public_key is not None:
            trusted = as_key_list(public_key)
        else:
            trusted = list(self.trusted_keys) + ([public_key_of(self.signing_key)] if self.signing_key else [])
        out: list[Discrepancy] = []
        v2_from = self._v2_from_seq()
        with self._connect() as con:
            con.execute("BEGIN")  # one consistent snapshot of both tables
            rows = con.execute("SELECT * FROM entries ORDER BY seq").fetchall()
            budgets = con.execute("SELECT * FROM budgets").fetchall()
            con.execute("COMMIT")
        prev_digest, expect_seq = GENESIS_DIGEST, 1
        running: dict[tuple[str, str], tuple[float, float]] = {}
        client_head: dict[str, tuple[int, str]] = {}
        budget_state: dict[tuple[str, str], tuple[float, float, int]] = {}   # last budget event per dataset: (ε, δ, seq)
        in_force: PublicKey | None = None
        for r in rows:
            d = dict(r)
            try:
                in_force = self._verify_row(d, v2_from, trusted, in_force, prev_digest, expect_seq, running, client_head, budget_state, out)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError, ReceiptError) as e:   # a value no writer produces
                out.append(Discrepancy(d["seq"], f"the row cannot be read as a ledger entry ({type(e).__name__}: {e}): the file was altered"))
            prev_digest, expect_seq = d["entry_digest"], d["seq"] + 1
        self._verify_budgets_table(budgets, running, budget_state, out)
        return out

    def _verify_row(self, d: dict[str, Any], v2_from: int, trusted: list[PublicKey], in_force: PublicKey | None, prev_digest: str,
                    expect_seq: int, running: dict, client_head: dict, budget_state: dict, out: list[Discrepancy]) -> PublicKey | None:
        """Checks one row against everything before it; returns the receipt key in force after it."""
        seq = d["seq"]
        v1_row = seq < v2_from
        if seq != expect_seq:
            out.append(Discrepancy(seq, f"sequence gap: expected seq {expect_seq}, found {seq}"))
        if d["prev_digest"] != prev_digest:
            out.append(Discrepancy(seq, f"prev_digest {d['prev_digest']} does not link to the previous entry's digest {prev_digest}"))
        recomputed = entry_digest(d, v1=v1_row)
        if recomputed != d["entry_digest"]:
            out.append(Discrepancy(seq, f"entry_digest {d['entry_digest']} != recomputed {recomputed}: the row was altered"))
        if d["kind"] not in ALL_KINDS or (v1_row and d["kind"] not in RECEIPT_KINDS):
            out.append(Discrepancy(seq, f"kind {d['kind']!r} is not a ledger entry kind of this format"))
            return in_force
        try:
            env = parse_json(d["receipt"])
            rdig = receipt_digest(env)
        except (ValueError, ReceiptError) as e:
            out.append(Discrepancy(seq, f"receipt is unreadable: {e}"))
            env, rdig = None, None
        if rdig is not None and rdig != d["receipt_digest"]:
            out.append(Discrepancy(seq, f"receipt digest {rdig} != recorded receipt_digest {d['receipt_digest']}"))
        # the key in force: the first signed entry's signer (a trusted key), then each receipt_key event
        signer = _signer_named(env) if isinstance(env, dict) else None
        if in_force is None and signer is not None:
            in_force = next((k for k in trusted if fingerprint(k) == signer), None)
            if in_force is None and trusted:
                out.append(Discrepancy(seq, f"signed by {signer}, which is not among the trusted receipt keys {[fingerprint(k) for k in trusted]}"))
        if d["kind"] in EVENT_KINDS:
            return self._verify_event_row(d, env, in_force, trusted, running, budget_state, out) or in_force
        key = in_force
        if env is not None and key is not None:
            if signer is not None and signer != fingerprint(key):
                out.append(Discrepancy(seq, f"receipt signed by {signer} while the receipt key in force was {fingerprint(key)}"))
            try:
                rc = verify_receipt(env, key)
            except ReceiptError as e:
                out.append(Discrepancy(seq, f"receipt does not verify: {e}"))
            else:
                mism = [(f, a, b) for f, a, b in (
                    ("client_id", rc.client_id, d["client_id"]), ("dataset_id", rc.dataset_id, d["dataset_id"]),
                    ("kind", rc.kind, d["kind"]), ("artifact_digest", rc.artifact_digest, d["artifact_digest"]),
                    ("receipt_id", rc.receipt_id, d["receipt_id"]), ("sequence", rc.sequence, d["receipt_seq"]),
                    ("ledger_seq", rc.ledger_seq, seq), ("created_at", rc.issued_at, d["created_at"]),
                ) if a != b]
                mism += [(f, a, b) for f, a, b in (
                    ("epsilon", rc.epsilon_recomputed, _from_db(d["epsilon"])), ("delta", rc.delta, d["delta"]),
                    ("spent_before", rc.spent_before, _from_db(d["spent_before"])), ("spent_after", rc.spent_after, _from_db(d["spent_after"])),
                    ("budget", rc.budget, _from_db(d["budget"])), ("delta_budget", rc.delta_budget, _from_db(d["delta_budget"])),
                    ("delta_spent_after", rc.delta_spent_after, d["delta_spent_after"]),
                ) if not _close(a, b)]
                for f, a, b in mism:
                    out.append(Discrepancy(seq, f"receipt field {f} = {a!r} but the row says {b!r}"))
                if rc.previous_receipt_digest != client_head.get(d["client_id"], (0, GENESIS_DIGEST))[1]:
                    out.append(Discrepancy(seq, f"receipt previous_receipt_digest does not link to client {d['client_id']!r}'s previous receipt"))
        # per-client receipt chain (from the columns)
        hseq, hdig = client_head.get(d["client_id"], (0, GENESIS_DIGEST))
        if d["receipt_seq"] != hseq + 1:
            out.append(Discrepancy(seq, f"client {d['client_id']!r} receipt sequence {d['receipt_seq']} follows {hseq}"))
        client_head[d["client_id"]] = (d["receipt_seq"] if isinstance(d["receipt_seq"], int) else hseq, d["receipt_digest"])
        # budget arithmetic
        k = (d["client_id"], d["dataset_id"])
        spent, dspent = running.get(k, (0.0, 0.0))
        eps = 0.0 if d["kind"] == "deletion" else _from_db(d["epsilon"])
        if d["kind"] == "deletion" and (d["epsilon"] != 0 or d["delta"] != 0):
            out.append(Discrepancy(seq, "a deletion entry charges epsilon/delta"))
        before, after, budget = _from_db(d["spent_before"]), _from_db(d["spent_after"]), _from_db(d["budget"])
        if not _close(before, spent) or not _close(d["delta_spent_before"], dspent):
            out.append(Discrepancy(seq, f"spent_before {before!r} (delta {d['delta_spent_before']!r}) != recomputed running spend {spent!r} (delta {dspent!r}) of dataset {k[1]!r}"))
        if not _close(after, spent + eps) or not _close(d["delta_spent_after"], dspent + d["delta"]):
            out.append(Discrepancy(seq, f"spent_after {after!r} != running spend {spent!r} + epsilon {eps!r} (basic composition)"))
        if d["kind"] == "upload" and (spent + eps > budget * (1 + 1e-12) or dspent + d["delta"] > _from_db(d["delta_budget"]) * (1 + 1e-12)):
            out.append(Discrepancy(seq, f"upload brings dataset {k[1]!r} to epsilon {spent + eps!r}, over its budget {budget!r}"))
        if not v1_row:
            ev = budget_state.get(k)
            if ev is None:
                out.append(Discrepancy(seq, f"no budget event of client {k[0]!r} dataset {k[1]!r} precedes this {d['kind']}: its budget "
                                            f"{budget!r} is explained by no chain event"))
            elif not (_close(budget, ev[0]) and _close(_from_db(d["delta_budget"]), ev[1])):
                out.append(Discrepancy(seq, f"this {d['kind']} records budget ε {budget!r} (δ {_from_db(d['delta_budget'])!r}) but the last budget "
                                            f"event of dataset {k[1]!r} (seq {ev[2]}) set ε {ev[0]!r} (δ {ev[1]!r})"))
        running[k] = (spent + eps, dspent + d["delta"])
        return in_force

    def _verify_budgets_table(self, budgets: list, running: dict, budget_state: dict, out: list[Discrepancy]) -> None:
        explained = self.format == LEDGER_FORMAT
        for b in budgets:
            try:
                self._verify_budget_row(b, explained, running, budget_state, out)
            except (ValueError, TypeError, OverflowError) as e:
                out.append(Discrepancy(None, f"a budgets row cannot be read ({type(e).__name__}: {e}): the file was altered"))
        missing = set(running) - {(b["client_id"], b["dataset_id"]) for b in budgets}
        for k in sorted(missing, key=repr):
            out.append(Discrepancy(None, f"entries charge client {k[0]!r} dataset {k[1]!r} but the budgets table has no row for it"))

    @staticmethod
    def _verify_budget_row(b: Any, explained: bool, running: dict, budget_state: dict, out: list[Discrepancy]) -> None:
        k = (b["client_id"], b["dataset_id"])
        spent, dspent = running.get(k, (0.0, 0.0))
        if not _close(_from_db(b["epsilon_spent"]), spent) or not _close(b["delta_spent"], dspent):
            out.append(Discrepancy(None, f"budgets table says client {k[0]!r} dataset {k[1]!r} spent epsilon {_from_db(b['epsilon_spent'])!r} "
                                         f"(delta {b['delta_spent']!r}); the entries sum to {spent!r} (delta {dspent!r})"))
        table = (_from_db(b["epsilon_budget"]), _from_db(b["delta_budget"]))
        ev = budget_state.get(k)
        if explained and ev is None:
            out.append(Discrepancy(None, f"budgets table gives client {k[0]!r} dataset {k[1]!r} the budget ε {table[0]!r} (δ {table[1]!r}), "
                                         "which no budget event in the chain explains"))
        elif ev is not None and not (_close(table[0], ev[0]) and _close(table[1], ev[1])):
            out.append(Discrepancy(None, f"budgets table gives client {k[0]!r} dataset {k[1]!r} the budget ε {table[0]!r} (δ {table[1]!r}), "
                                         f"but the last budget event in the chain (seq {ev[2]}) set ε {ev[0]!r} (δ {ev[1]!r}): "
                                         "a budget no chain event explains"))

    def _verify_event_row(self, d: dict[str, Any], env: Any, in_force: PublicKey | None, trusted: list[PublicKey],
                          running: dict, budget_state: dict, out: list[Discrepancy]) -> PublicKey | None:
        """Checks one event row; returns the new receipt key for a valid `receipt_key` event."""
        seq = d["seq"]
        if d["receipt_seq"] is not None:
            out.append(Discrepancy(seq, f"a {d['kind']} event carries a client receipt sequence {d['receipt_seq']}"))
        if d["epsilon"] != 0 or d["delta"] != 0:
            out.append(Discrepancy(seq, f"a {d['kind']} event charges epsilon/delta"))
        if env is None:
            return None
        verify_with: list[PublicKey] = [in_force] if in_force is not None else trusted
        new_key = None
        if d["kind"] == "receipt_key":
            try:   # signed by the new key itself; read what it announces first
                fields = _event_fields(env)
                from protocol.keys import load_public_key

                new_key = load_public_key(fields["public_key_pem"].encode("ascii"))
            except Exception as e:  # noqa: BLE001 - any malformed announcement is a discrepancy
                out.append(Discrepancy(seq, f"receipt_key event is unreadable: {e}"))
                return None
            verify_with = [new_key]
        if not verify_with:
            # no key to check signatures with (the chain alone, as `verify_chain()` without a key): the row's own
            # columns, bound by the hash chain, still say what budget the event set
            if d["kind"] == "budget":
                budget_state[(d["client_id"], d["dataset_id"])] = (_from_db(d["budget"]), _from_db(d["delta_budget"]), seq)
            return None
        try:
            ev = verify_ledger_event(env, verify_with)
        except ReceiptError as e:
            out.append(Discrepancy(seq, f"{d['kind']} event does not verify: {e}"))
            return None
        mism = [(f, a, b) for f, a, b in (("kind", ev.kind, d["kind"]), ("event_id", ev.event_id, d["receipt_id"]),
                                          ("ledger_seq", ev.ledger_seq, seq), ("created_at", ev.issued_at, d["created_at"]),
                                          ("subject", ev.subject_digest, d["artifact_digest"])) if a != b]
        for f, a, b in mism:
            out.append(Discrepancy(seq, f"event field {f} = {a!r} but the row says {b!r}"))
        if d["kind"] == "budget":
            k = (ev.fields["client_id"], ev.fields["dataset_id"])
            if k != (d["client_id"], d["dataset_id"]):
                out.append(Discrepancy(seq, f"budget event names {k} but the row says {(d['client_id'], d['dataset_id'])}"))
            eps_b, delta_b = ev.budget()
            spent, dspent = running.get(k, (0.0, 0.0))
            if not (_close(_from_db(d["budget"]), eps_b) and _close(_from_db(d["delta_budget"]), delta_b)):
                out.append(Discrepancy(seq, f"budget event sets ε {eps_b!r} (δ {delta_b!r}) but the row says {_from_db(d['budget'])!r}"))
            if not (_close(_from_db(d["spent_before"]), spent) and _close(_from_db(d["spent_after"]), spent)
                    and _close(_from_db(ev.fields["epsilon_spent"]), spent)):
                out.append(Discrepancy(seq, f"budget event records spend {ev.fields['epsilon_spent']!r}; the entries sum to {spent!r}"))
            if spent > eps_b * (1 + 1e-12) or dspent > delta_b * (1 + 1e-12):
                out.append(Discrepancy(seq, f"budget event sets ε {eps_b!r} below what dataset {k[1]!r} already spent ({spent!r})"))
            prev = budget_state.get(k)
            named = ev.fields["previous"]
            if prev is not None and (named is None or not (_close(_from_db(named["epsilon_budget"]), prev[0])
                                                           and _close(_from_db(named["delta_budget"]), prev[1]))):
                out.append(Discrepancy(seq, f"budget event says the previous budget was {named!r}; the chain's last budget event (seq {prev[2]}) set {prev[:2]}"))
            budget_state[k] = (eps_b, delta_b, seq)
            return None
        if d["kind"] == "revocation":
            if d["client_key"] != ev.fields["key_fingerprint"] or d["client_id"] != ev.fields["client_id"]:
                out.append(Discrepancy(seq, "revocation event and its row name different keys or clients"))
            return None
        # receipt_key: the previous key must be the one in force, and must have endorsed the new one (or the new one is trusted)
        from protocol.receipt_keys import verify_endorsement

        new_fp = fingerprint(new_key)
        if in_force is not None and ev.fields["previous_key_fingerprint"] != fingerprint(in_force):
            out.append(Discrepancy(seq, f"receipt_key event says it follows {ev.fields['previous_key_fingerprint']}, but the key in force was {fingerprint(in_force)}"))
        endorsed = False
        if in_force is not None and ev.fields["endorsement"] is not None:
            try:
                verify_endorsement(ev.fields["endorsement"], in_force, new_key)
                endorsed = True
            except ReceiptError as e:
                out.append(Discrepancy(seq, f"receipt_key event's endorsement does not verify: {e}"))
        if not endorsed and all(fingerprint(k) != new_fp for k in trusted):
            out.append(Discrepancy(seq, f"receipt key {new_fp} is neither endorsed by the key it follows nor among the trusted keys"))
        return new_key


def _event_fields(envelope: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(envelope["payload"]))["predicate"]


def _signer_named(envelope: Any) -> str | None:
    """The provider key a receipt or event names as its signer (`predicate.provider_key`), if readable."""
    try:
        key = _event_fields(envelope).get("provider_key")
        return key if isinstance(key, str) else None
    except Exception:  # noqa: BLE001 - unreadable: reported by the checks that read it properly
        return None


def _index_statements() -> list[str]:
    """The index and trigger statements of `entries`, one by one (executescript would commit the upgrade transaction)."""
    return [
        "CREATE INDEX IF NOT EXISTS entries_by_client ON entries (client_id, seq)",
        "CREATE UNIQUE INDEX IF NOT EXISTS entries_client_receipt ON entries (client_id, receipt_seq)",
        "CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries "
        "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE is forbidden'); END",
        "CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries "
        "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE is forbidden'); END",
    ]


__all__ = ["ALL_KINDS", "APPEND_ONLY_TRIGGERS", "BudgetStatus", "Discrepancy", "EVENT_KINDS", "LEDGER_FORMAT", "LEDGER_FORMAT_V1", "Ledger", "LedgerEntry",
           "RECEIPT_KINDS", "Revocation", "entry_digest", "lost_append_only_triggers"]
