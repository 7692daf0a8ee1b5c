"""One recipe for the parties' small SQLite stores: WAL, synchronous=FULL, autocommit.

Autocommit (`isolation_level=None`) makes transactions exactly the explicit BEGIN ... COMMIT
blocks each store writes (`immediate_transaction`); WAL plus synchronous=FULL makes a committed row
survive a crash, and a block that raises leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


def connect_durable(path: str | Path, *, timeout: float = 30.0, rows: bool = True) -> sqlite3.Connection:
    """A fresh connection; `rows=True` returns `sqlite3.Row` records (name and index access)."""
    con = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    if rows:
        con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


@contextlib.contextmanager
def durable_connection(path: str | Path, *, rows: bool = True) -> Iterator[sqlite3.Connection]:
    """`connect_durable`, closed on exit."""
    con = connect_durable(path, rows=rows)
    try:
        yield con
    finally:
        con.close()


def init_schema(path: str | Path, script: str) -> None:
    """Creates a store's tables (the script uses IF NOT EXISTS, so opening an existing store is a no-op).

    A file that is not SQLite (random bytes, a folder) or holds other tables of the same names is refused as
    STORE_CORRUPT naming it, and left as it is."""
    from protocol.errors import LedgerError

    try:
        with durable_connection(path) as con:
            con.executescript(script)
    except sqlite3.DatabaseError as e:
        raise LedgerError("STORE_CORRUPT", f"{path} cannot be opened as this party's state store ({e}); it was not changed. Restore it "
                          "from a backup, or point the party at its own state folder", file=str(path)) from None


@contextlib.contextmanager
def immediate_transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock up front, so two writers never both read a stale head) ... COMMIT;
    anything raised inside rolls back first. A block may end the transaction itself (ROLLBACK for an
    early, unchanged return): then nothing is committed."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
        if con.in_transaction:
            con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_only_store(path: str | Path) -> Iterator[tuple[sqlite3.Connection, list[str]]]:
    """A read-only connection to an existing SQLite file and the names of its tables, for verifiers.

    Opening a store the usual way creates its tables; a verifier must not, or a wrong file (another
    store, an empty file) reads as an empty store of the right kind. `sqlite3.DatabaseError` when the
    file is no database."""
    con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        yield con, sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    finally:
        con.close()


def describe_tables(tables: list[str]) -> str:
    """`its tables are a, b` or `it holds no table`, for a message about a file that is not the store expected."""
    return f"its tables are {', '.join(tables)}" if tables else "it holds no table"
