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
    """Creates a store's tables (the script uses IF NOT EXISTS, so opening an existing store is a no-op)."""
    with durable_connection(path) as con:
        con.executescript(script)


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
