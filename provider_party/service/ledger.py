"""The provider's privacy ledger: append-only, hash-chained, in SQLite (stdlib sqlite3, WAL).

Tables
- `entries`: one row per upload or deletion, numbered `seq` = 1, 2, ... Each row stores the charged ε
  and δ, the running spend of its (client, dataset) before and after, the budget, the signed receipt
  (DSSE envelope JSON) and its digest, and `entry_digest` = digest_json of all those columns plus
  `prev_digest` (the previous row's `entry_digest`, genesis `sha256:` + 64 zeros): a hash chain.
  Triggers forbid UPDATE and DELETE.
- `budgets`: the ε/δ budget and current spend per (client_id, dataset_id). It is a cache of the sums
  over `entries`, updated in the same transaction; `verify_chain` recomputes it.
- `meta`: format version.

Composition: **basic (sequential) composition** per (client, dataset): the ε of successive uploads
of the same dataset add up (ε_total = Σ ε_i, δ_total = Σ δ_i), which holds for any mechanisms and
any adaptivity. Tighter accounting (advanced composition, RDP across uploads) is possible but would
need the raw mechanism parameters of every upload; basic composition is conservative and simple to
audit. The charged ε is the provider's recomputed ε. An ε of ∞ (no DP) only fits an unbounded
budget (registered with `math.inf`); SQL NULL and JSON null stand for ∞ in ε-valued columns.

Atomicity: `append_upload` checks the budget, inserts the row, updates the budget and commits inside
one `BEGIN IMMEDIATE` transaction (`synchronous=FULL`, WAL), so a crash at any point leaves either
the whole entry (row + budget + receipt) or nothing, and concurrent writers (threads or processes)
are serialised by SQLite's write lock (`busy_timeout` waits for it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from protocol.canonical import LEGACY, RFC8785, digest_json, sha256_hex
from protocol.errors import BudgetError, LedgerError, ReceiptError
from protocol.keys import PrivateKey, PublicKey, public_key_of
from protocol.receipts import (
    GENESIS_DIGEST,
    issue_deletion_receipt,
    issue_receipt,
    receipt_digest,
    utc_now_rfc3339,
    verify_receipt,
)

LEDGER_FORMAT = "llamdex.ledger/v2"
# Each ledger file keeps the format it was created with; a v1 ledger (before RFC 8785) goes on digesting
# its entries with the canonical JSON its chain was built with, so it still verifies.
LEDGER_FORMATS = {"llamdex.ledger/v1": LEGACY, LEDGER_FORMAT: RFC8785}
BUSY_TIMEOUT_S = 30.0
TOL = 1e-9
MAX_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq                INTEGER PRIMARY KEY,
    entry_digest       TEXT NOT NULL UNIQUE,
    prev_digest        TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    dataset_id         TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('upload', 'deletion')),
    artifact_digest    TEXT NOT NULL,
    epsilon            REAL,               -- charged epsilon; NULL = infinity (no DP)
    delta              REAL NOT NULL,
    spent_before       REAL,               -- NULL = infinity
    spent_after        REAL,
    budget             REAL,               -- NULL = unbounded
    delta_spent_before REAL NOT NULL,
    delta_spent_after  REAL NOT NULL,
    delta_budget       REAL,
    receipt_id         TEXT NOT NULL UNIQUE,
    receipt_seq        INTEGER NOT NULL,
    receipt_digest     TEXT NOT NULL,
    receipt            TEXT NOT NULL,      -- DSSE envelope JSON
    created_at         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_client ON entries (client_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS entries_client_receipt ON entries (client_id, receipt_seq);
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
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE is forbidden'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE is forbidden'); END;
"""

_ENTRY_COLS = ("seq", "entry_digest", "prev_digest", "client_id", "dataset_id", "kind", "artifact_digest", "epsilon", "delta",
               "spent_before", "spent_after", "budget", "delta_spent_before", "delta_spent_after", "delta_budget",
               "receipt_id", "receipt_seq", "receipt_digest", "receipt", "created_at")
_DIGESTED = tuple(c for c in _ENTRY_COLS if c not in ("entry_digest", "receipt"))


def _to_db(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else float(x)


def _from_db(x: float | None) -> float:
    return math.inf if x is None else float(x)


def _close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=TOL, abs_tol=1e-12)


def entry_digest(row: dict[str, Any], scheme: str = RFC8785) -> str:
    """digest_json over every column except the digest itself and the receipt text (bound by receipt_digest)."""
    return digest_json({c: row[c] for c in _DIGESTED}, scheme)


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
    receipt_seq: int
    receipt_digest: str
    receipt: dict[str, Any]       # DSSE envelope
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "LedgerEntry":
        d = dict(row)
        for c in ("epsilon", "spent_before", "spent_after", "budget", "delta_budget"):
            d[c] = _from_db(d[c])
        d["receipt"] = json.loads(d["receipt"])
        return cls(**d)


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


def _budget_status(row: sqlite3.Row) -> BudgetStatus:
    return BudgetStatus(row["client_id"], row["dataset_id"], _from_db(row["epsilon_budget"]), _from_db(row["delta_budget"]),
                        _from_db(row["epsilon_spent"]), float(row["delta_spent"]))


@dataclass(frozen=True)
class Discrepancy:
    seq: int | None      # None: not tied to one row (e.g. the budgets table)
    reason: str


class Ledger:
    """Append-only privacy ledger of one provider.

    `signing_key` signs every receipt the ledger issues (required to append). Datasets need a budget:
    `set_budget(...)`, or `default_epsilon_budget` / `default_delta_budget` applied on first upload.
    """

    def __init__(self, path: str | Path, signing_key: PrivateKey | None = None, *,
                 default_epsilon_budget: float | None = None, default_delta_budget: float = math.inf):
        self.path = Path(path)
        self.signing_key = signing_key
        self.default_epsilon_budget = default_epsilon_budget
        self.default_delta_budget = default_delta_budget
        self._fault: Callable[[str], None] | None = None   # test hook: called at named points inside a write
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (LEDGER_FORMAT,))
            fmt = con.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0]
        if fmt not in LEDGER_FORMATS:
            raise LedgerError("LEDGER_FORMAT", f"ledger {self.path} has format {fmt!r}; this version reads {sorted(LEDGER_FORMATS)}",
                              file=str(self.path))
        self.format, self.scheme = fmt, LEDGER_FORMATS[fmt]

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
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                self._hook("before_commit")
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def _hook(self, point: str) -> None:
        if self._fault is not None:
            self._fault(point)

    # --- budgets ---------------------------------------------------------------------------------

    def set_budget(self, client_id: str, dataset_id: str, epsilon: float, delta: float = math.inf) -> BudgetStatus:
        """Registers or changes the (ε, δ) budget of a dataset; math.inf = unbounded. A budget below
        what is already spent is refused."""
        for name, v in (("epsilon", epsilon), ("delta", delta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v <= 0:
                raise BudgetError(f"budget {name} must be a positive number (math.inf = unbounded), got {v!r}")
        with self._write() as con:
            row = con.execute("SELECT * FROM budgets WHERE client_id=? AND dataset_id=?", (client_id, dataset_id)).fetchone()
            if row is not None:
                spent, dspent = _from_db(row["epsilon_spent"]), row["delta_spent"]
                if spent > epsilon or dspent > delta:
                    raise BudgetError(f"dataset {dataset_id!r} of client {client_id!r} has already spent epsilon {spent:g}, delta {dspent:g}; "
                                      f"a budget of ({epsilon:g}, {delta:g}) would be exceeded")
                con.execute("UPDATE budgets SET epsilon_budget=?, delta_budget=? WHERE client_id=? AND dataset_id=?",
                            (_to_db(epsilon), _to_db(delta), client_id, dataset_id))
            else:
                con.execute("INSERT INTO budgets (client_id, dataset_id, epsilon_budget, delta_budget, epsilon_spent, delta_spent) VALUES (?,?,?,?,0,0)",
                            (client_id, dataset_id, _to_db(epsilon), _to_db(delta)))
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
        lr = con.execute("SELECT receipt_seq, receipt_digest FROM entries WHERE client_id=? ORDER BY seq DESC LIMIT 1", (client_id,)).fetchone()
        rseq, rprev = (lr["receipt_seq"] + 1, lr["receipt_digest"]) if lr else (1, GENESIS_DIGEST)
        return seq, prev, rseq, rprev

    def _insert(self, con: sqlite3.Connection, row: dict[str, Any]) -> LedgerEntry:
        row["entry_digest"] = entry_digest(row, self.scheme)
        con.execute(f"INSERT INTO entries ({', '.join(_ENTRY_COLS)}) VALUES ({', '.join('?' for _ in _ENTRY_COLS)})",
                    tuple(row[c] for c in _ENTRY_COLS))
        self._hook("after_insert")
        con.execute("UPDATE budgets SET epsilon_spent=?, delta_spent=?, last_seq=? WHERE client_id=? AND dataset_id=?",
                    (row["spent_after"], row["delta_spent_after"], row["seq"], row["client_id"], row["dataset_id"]))
        self._hook("after_budget_update")
        return LedgerEntry.from_row(con.execute("SELECT * FROM entries WHERE seq=?", (row["seq"],)).fetchone())

    def append_upload(self, client_id: str, dataset_id: str, artifact_digest: str, dp: Any,
                      epsilon_recomputed: float | None = None, *, artifact_name: str = "expert") -> LedgerEntry:
        """Charges an upload to its dataset's budget and issues the signed receipt, atomically.

        `dp` is the artifact's DPStatement; `epsilon_recomputed` the provider's own ε (recomputed and
        checked with protocol.dp.verify_statement when omitted). Raises BudgetError, writing nothing,
        if the claim does not verify or the upload would exceed the budget."""
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
            env = issue_receipt(
                key, sequence=rseq, client_id=client_id, dataset_id=dataset_id, artifact_digest=artifact_digest,
                epsilon_claimed=dp.epsilon, epsilon_recomputed=eps, delta=delta, accountant=dp.accountant,
                accountant_params={"mechanism": dp.mechanism, "noise_multiplier": float(dp.noise_multiplier),
                                   "sample_rate": float(dp.sample_rate), "steps": int(dp.steps), "max_grad_norm": float(dp.max_grad_norm)},
                spent_before=before, budget=budget, previous_receipt_digest=rprev, delta_spent_before=dbefore,
                delta_budget=dbudget, issued_at=issued_at, artifact_name=artifact_name, ledger_seq=seq,
            )
            return self._insert(con, self._row(seq, prev, client_id, dataset_id, "upload", artifact_digest, eps, delta, before, after,
                                               budget, dbefore, dafter, dbudget, rseq, env, issued_at))

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
            env = issue_deletion_receipt(
                key, sequence=rseq, client_id=client_id, dataset_id=dataset_id, artifact_digest=artifact_digest, spent=spent,
                budget=budget, previous_receipt_digest=rprev, deleted=deleted, revokes_receipt_id=up["receipt_id"],
                delta_spent=dspent, delta_budget=dbudget, issued_at=issued_at, artifact_name=artifact_name, ledger_seq=seq,
            )
            return self._insert(con, self._row(seq, prev, client_id, dataset_id, "deletion", artifact_digest, 0.0, 0.0, spent, spent,
                                               budget, dspent, dspent, dbudget, rseq, env, issued_at))

    @staticmethod
    def _row(seq: int, prev: str, client_id: str, dataset_id: str, kind: str, artifact_digest: str, eps: float, delta: float,
             before: float, after: float, budget: float, dbefore: float, dafter: float, dbudget: float, rseq: int,
             env: Any, created_at: str) -> dict[str, Any]:
        payload = env.payload
        rid = json.loads(payload)["predicate"]["receipt_id"]
        return {
            "seq": seq, "prev_digest": prev, "client_id": client_id, "dataset_id": dataset_id, "kind": kind,
            "artifact_digest": artifact_digest, "epsilon": _to_db(eps), "delta": delta, "spent_before": _to_db(before),
            "spent_after": _to_db(after), "budget": _to_db(budget), "delta_spent_before": dbefore, "delta_spent_after": dafter,
            "delta_budget": _to_db(dbudget), "receipt_id": rid, "receipt_seq": rseq,
            "receipt_digest": "sha256:" + sha256_hex(payload), "receipt": env.to_json(), "created_at": created_at,
        }

    # --- reads -----------------------------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        """(last seq, last entry digest); (0, genesis) when empty."""
        with self._connect() as con:
            r = con.execute("SELECT seq, entry_digest FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (r["seq"], r["entry_digest"]) if r else (0, GENESIS_DIGEST)

    def count(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def entries(self, client_id: str | None = None, page_token: str | None = None, page_size: int = 100) -> tuple[list[LedgerEntry], str | None]:
        """One page of entries in seq order (optionally one client's), and the token of the next page (None at the end).
        Tokens are opaque strings; pass back what the previous call returned."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE:
            raise LedgerError("BAD_PAGE_SIZE", f"page_size must be an integer in 1..{MAX_PAGE}, got {page_size!r}")
        after = 0
        if page_token:
            try:
                tok = json.loads(base64.urlsafe_b64decode(page_token.encode("ascii")))
                after = int(tok["after"])
                if after < 0 or tok.get("client") != client_id:
                    raise ValueError
            except (ValueError, KeyError, TypeError, UnicodeError, json.JSONDecodeError):
                raise LedgerError("BAD_PAGE_TOKEN", f"page token {page_token!r} is invalid for this query") from None
        q, args = "SELECT * FROM entries WHERE seq > ?", [after]
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

    def receipts(self, client_id: str) -> list[dict[str, Any]]:
        """Every receipt envelope of a client, in chain order."""
        with self._connect() as con:
            rows = con.execute("SELECT receipt FROM entries WHERE client_id=? ORDER BY seq", (client_id,)).fetchall()
        return [json.loads(r["receipt"]) for r in rows]

    # --- audit -----------------------------------------------------------------------------------

    def verify_chain(self, public_key: PublicKey | PrivateKey | None = None) -> list[Discrepancy]:
        """Recomputes the whole ledger from one snapshot and returns every discrepancy found (empty: sound).

        Checks: contiguous seq from 1; prev_digest links; each entry_digest; each receipt (signature
        under `public_key` or the ledger's own key, digest, and agreement with its row); each client's
        receipt chain (sequence, previous digest); budget arithmetic under basic composition (spent
        before/after, within budget); and the budgets table against the recomputed sums."""
        key = public_key_of(public_key) if public_key is not None else (public_key_of(self.signing_key) if self.signing_key else None)
        out: list[Discrepancy] = []
        with self._connect() as con:
            con.execute("BEGIN")  # one consistent snapshot of both tables
            rows = con.execute("SELECT * FROM entries ORDER BY seq").fetchall()
            budgets = con.execute("SELECT * FROM budgets").fetchall()
            con.execute("COMMIT")
        prev_digest, expect_seq = GENESIS_DIGEST, 1
        running: dict[tuple[str, str], tuple[float, float]] = {}
        client_head: dict[str, tuple[int, str]] = {}
        for r in rows:
            d = dict(r)
            seq = d["seq"]
            if seq != expect_seq:
                out.append(Discrepancy(seq, f"sequence gap: expected seq {expect_seq}, found {seq}"))
            expect_seq = seq + 1
            if d["prev_digest"] != prev_digest:
                out.append(Discrepancy(seq, f"prev_digest {d['prev_digest']} does not link to the previous entry's digest {prev_digest}"))
            recomputed = entry_digest(d, self.scheme)
            if recomputed != d["entry_digest"]:
                out.append(Discrepancy(seq, f"entry_digest {d['entry_digest']} != recomputed {recomputed}: the row was altered"))
            prev_digest = d["entry_digest"]
            # receipt
            try:
                env = json.loads(d["receipt"])
                rdig = receipt_digest(env)
            except (ValueError, ReceiptError) as e:
                out.append(Discrepancy(seq, f"receipt is unreadable: {e}"))
                env, rdig = None, None
            if rdig is not None and rdig != d["receipt_digest"]:
                out.append(Discrepancy(seq, f"receipt digest {rdig} != recorded receipt_digest {d['receipt_digest']}"))
            if env is not None and key is not None:
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
            client_head[d["client_id"]] = (d["receipt_seq"], d["receipt_digest"])
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
            running[k] = (spent + eps, dspent + d["delta"])
        for b in budgets:
            k = (b["client_id"], b["dataset_id"])
            spent, dspent = running.get(k, (0.0, 0.0))
            if not _close(_from_db(b["epsilon_spent"]), spent) or not _close(b["delta_spent"], dspent):
                out.append(Discrepancy(None, f"budgets table says client {k[0]!r} dataset {k[1]!r} spent epsilon {_from_db(b['epsilon_spent'])!r} "
                                             f"(delta {b['delta_spent']!r}); the entries sum to {spent!r} (delta {dspent!r})"))
        missing = set(running) - {(b["client_id"], b["dataset_id"]) for b in budgets}
        for k in sorted(missing):
            out.append(Discrepancy(None, f"entries charge client {k[0]!r} dataset {k[1]!r} but the budgets table has no row for it"))
        return out


__all__ = ["BudgetStatus", "Discrepancy", "LEDGER_FORMAT", "Ledger", "LedgerEntry", "entry_digest"]
