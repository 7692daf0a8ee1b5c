"""One recipe for the parties' small SQLite stores: WAL, synchronous=FULL, autocommit.

Autocommit (`isolation_level=None`) makes transactions exactly the explicit BEGIN ... COMMIT
blocks each store writes; WAL plus synchronous=FULL makes a committed row survive a crash.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_durable(path: str | Path, *, timeout: float = 30.0, rows: bool = True) -> sqlite3.Connection:
    """A fresh connection; `rows=True` returns `sqlite3.Row` records (name and index access)."""
    con = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    if rows:
        con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con
