"""The provider ledger: append-only, hash-chained, budget-enforcing, crash-safe, concurrent."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from protocol.dp import DPStatement
from protocol.errors import BudgetError, LedgerError
from protocol.keys import generate_private_key, save_private_key
from protocol.receipts import GENESIS_DIGEST, verify_chain as verify_receipt_chain, verify_receipt
from provider_party.service.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def dp(eps: float = 1.0) -> DPStatement:
    return DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0,
                       accountant="rdp", epsilon=eps, delta=1e-5, dataset_size_bucket="1k-2k")


def art(i: int) -> str:
    return "sha256:" + f"{i:064x}"


@pytest.fixture(scope="module")
def key():
    return generate_private_key()


@pytest.fixture
def ledger(tmp_path, key):
    lg = Ledger(tmp_path / "ledger.db", key)
    lg.set_budget("alice", "titanic", 3.0)
    lg.set_budget("bob", "credit", 10.0)
    return lg


def test_append_and_verify(ledger, key):
    e1 = ledger.append_upload("alice", "titanic", art(1), dp(1.0), 1.0)
    e2 = ledger.append_upload("bob", "credit", art(2), dp(2.0), 2.0)
    e3 = ledger.append_upload("alice", "titanic", art(3), dp(1.5), 1.5)
    assert (e1.seq, e2.seq, e3.seq) == (1, 2, 3)
    assert e1.prev_digest == GENESIS_DIGEST and e2.prev_digest == e1.entry_digest and e3.prev_digest == e2.entry_digest
    assert (e3.spent_before, e3.spent_after, e3.budget) == (1.0, 2.5, 3.0)
    assert e3.receipt_seq == 2 and e2.receipt_seq == 1  # receipts chain per client
    r = verify_receipt(e3.receipt, key.public_key())
    assert r.ledger_seq == 3 and r.spent_after == 2.5 and r.previous_receipt_digest == e1.receipt_digest
    assert ledger.verify_chain() == []
    assert ledger.verify_chain(key.public_key()) == []
    rs = verify_receipt_chain(ledger.receipts("alice"), key.public_key())
    assert [x.sequence for x in rs] == [1, 2]
    b = ledger.budget("alice", "titanic")
    assert b.epsilon_spent == 2.5 and b.epsilon_remaining == 0.5 and b.delta_spent == pytest.approx(2e-5)
    assert ledger.head() == (3, e3.entry_digest)


def test_budget_exceeded_writes_nothing(ledger):
    ledger.append_upload("alice", "titanic", art(1), dp(2.0), 2.0)
    before = (ledger.count(), ledger.head(), ledger.budget("alice", "titanic"))
    with pytest.raises(BudgetError, match="exceed|would bring"):
        ledger.append_upload("alice", "titanic", art(2), dp(1.5), 1.5)
    assert (ledger.count(), ledger.head(), ledger.budget("alice", "titanic")) == before
    with pytest.raises(BudgetError, match="no privacy budget"):
        ledger.append_upload("carol", "unknown", art(3), dp(0.1), 0.1)
    assert ledger.count() == 1 and ledger.budget("carol", "unknown") is None
    # exactly filling the budget is allowed
    ledger.append_upload("alice", "titanic", art(4), dp(1.0), 1.0)
    assert ledger.verify_chain() == []
    with pytest.raises(BudgetError):  # a budget may not drop below what is spent
        ledger.set_budget("alice", "titanic", 1.0)


def test_claim_verified_when_not_recomputed_by_caller(ledger):
    with pytest.raises(BudgetError):  # claims epsilon 0.01 for parameters that give ~1.21
        ledger.append_upload("alice", "titanic", art(1), dp(0.01))
    assert ledger.count() == 0


def test_no_dp_upload(ledger, key):
    nodp = DPStatement(mechanism="none", noise_multiplier=0.0, sample_rate=0.01, steps=100, max_grad_norm=0.0,
                       accountant="rdp", epsilon=math.inf, delta=0.0, dataset_size_bucket="1k-2k")
    with pytest.raises(BudgetError):
        ledger.append_upload("alice", "titanic", art(1), nodp, math.inf)
    ledger.set_budget("alice", "public", math.inf)
    e = ledger.append_upload("alice", "public", art(2), nodp, math.inf)
    assert math.isinf(e.spent_after) and math.isinf(e.epsilon)
    assert ledger.verify_chain() == []


def test_default_budget(tmp_path, key):
    lg = Ledger(tmp_path / "l.db", key, default_epsilon_budget=2.0)
    lg.append_upload("x", "y", art(1), dp(1.5), 1.5)
    with pytest.raises(BudgetError):
        lg.append_upload("x", "y", art(2), dp(1.0), 1.0)
    assert lg.budget("x", "y").epsilon_budget == 2.0


def test_deletion(ledger, key):
    up = ledger.append_upload("alice", "titanic", art(1), dp(1.0), 1.0)
    d = ledger.append_deletion("alice", art(1))
    assert d.kind == "deletion" and d.spent_before == d.spent_after == 1.0 and d.epsilon == 0.0
    r = verify_receipt(d.receipt, key.public_key())
    assert r.kind == "deletion" and r.revokes_receipt_id == up.receipt_id and r.previous_receipt_digest == up.receipt_digest
    assert ledger.budget("alice", "titanic").epsilon_spent == 1.0  # forgetting refunds nothing
    with pytest.raises(LedgerError) as ei:
        ledger.append_deletion("bob", art(1))
    assert ei.value.code == "NOT_FOUND"
    assert ledger.verify_chain() == []
    verify_receipt_chain(ledger.receipts("alice"), key.public_key())


def test_update_and_delete_refused(ledger):
    ledger.append_upload("alice", "titanic", art(1), dp(1.0), 1.0)
    con = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE entries SET epsilon = 0.0 WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM entries WHERE seq = 1")
    con.close()
    assert ledger.verify_chain() == []


def _raw(ledger, *sql):
    con = sqlite3.connect(ledger.path, isolation_level=None)
    for s in sql:
        con.execute(s)
    con.close()


def test_raw_edit_after_dropping_trigger_is_caught(ledger, key):
    for i in range(3):
        ledger.append_upload("bob", "credit", art(i), dp(1.0), 1.0)
    _raw(ledger, "DROP TRIGGER entries_no_update", "UPDATE entries SET epsilon = 0.1, spent_after = 1.1 WHERE seq = 2")
    found = ledger.verify_chain()
    assert found and {d.seq for d in found} >= {2}
    assert any("entry_digest" in d.reason and d.seq == 2 for d in found)
    assert any("receipt field epsilon" in d.reason for d in found)


def test_raw_delete_and_budget_drift_are_caught(ledger):
    for i in range(3):
        ledger.append_upload("bob", "credit", art(i), dp(1.0), 1.0)
    _raw(ledger, "DROP TRIGGER entries_no_delete", "DELETE FROM entries WHERE seq = 2", "UPDATE budgets SET epsilon_spent = 0 WHERE client_id = 'bob'")
    reasons = [(d.seq, d.reason) for d in ledger.verify_chain()]
    assert any(s == 3 and "sequence gap" in r for s, r in reasons)
    assert any(s == 3 and "prev_digest" in r for s, r in reasons)
    assert any(s is None and "budgets table" in r for s, r in reasons)


def test_forged_receipt_is_caught(ledger, key):
    ledger.append_upload("alice", "titanic", art(1), dp(1.0), 1.0)
    mallory = generate_private_key()
    assert ledger.verify_chain(mallory.public_key())  # receipts are not signed by this key


def test_paging(ledger):
    for i in range(7):
        ledger.append_upload("bob", "credit", art(i), dp(0.1), 0.1)
        ledger.append_upload("alice", "titanic", art(100 + i), dp(0.1), 0.1)
    seen, tok = [], None
    while True:
        page, tok = ledger.entries(page_size=5, page_token=tok)
        seen += [e.seq for e in page]
        if tok is None:
            break
    assert seen == list(range(1, 15))
    page, tok = ledger.entries("alice", page_size=4)
    assert [e.client_id for e in page] == ["alice"] * 4 and tok
    page2, tok2 = ledger.entries("alice", page_token=tok, page_size=4)
    assert len(page2) == 3 and tok2 is None and page2[0].seq > page[-1].seq
    with pytest.raises(LedgerError) as ei:
        ledger.entries("bob", page_token=tok)  # a token of another query
    assert ei.value.code == "BAD_PAGE_TOKEN"
    with pytest.raises(LedgerError):
        ledger.entries(page_token="garbage!")
    with pytest.raises(LedgerError):
        ledger.entries(page_size=0)


def test_read_only_without_key(ledger, key):
    ledger.append_upload("alice", "titanic", art(1), dp(1.0), 1.0)
    ro = Ledger(ledger.path)
    assert ro.verify_chain(key.public_key()) == []
    with pytest.raises(LedgerError) as ei:
        ro.append_upload("alice", "titanic", art(2), dp(1.0), 1.0)
    assert ei.value.code == "NO_SIGNING_KEY"


# --- crashes and concurrency (real processes) ----------------------------------------------------

_WORKER = textwrap.dedent("""
    import os, sys
    from protocol.dp import DPStatement
    from protocol.keys import load_private_key
    from provider_party.service.ledger import Ledger
    db, keyfile, client, n, crash_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    lg = Ledger(db, load_private_key(keyfile))
    if crash_at != "-":
        lg._fault = lambda point: os._exit(17) if point == crash_at else None
    dp = DPStatement(mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.01, steps=100, max_grad_norm=1.0,
                     accountant="rdp", epsilon=0.01, delta=1e-7, dataset_size_bucket="1k-2k")
    i = 0
    while n < 0 or i < n:
        lg.append_upload(client, "data", "sha256:" + f"{i:064x}", dp, 0.01)
        i += 1
        if n < 0:
            print(i, flush=True)
""")


def _spawn(tmp_path, key, client, n, crash_at="-", **kw):
    keyfile = tmp_path / "provider.key"
    if not keyfile.exists():
        save_private_key(key, keyfile)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "ledger.db"), str(keyfile), client, str(n), crash_at],
                            cwd=ROOT, env=env, **kw)


@pytest.mark.parametrize("point", ["after_insert", "after_budget_update", "before_commit"])
def test_crash_mid_transaction_leaves_no_half_entry(tmp_path, key, point):
    lg = Ledger(tmp_path / "ledger.db", key)
    lg.set_budget("p", "data", 100.0)
    lg.append_upload("p", "data", art(999), dp(1.0), 1.0)
    proc = _spawn(tmp_path, key, "p", 1, crash_at=point)
    assert proc.wait(timeout=60) == 17
    assert lg.count() == 1 and lg.budget("p", "data").epsilon_spent == 1.0
    assert lg.verify_chain() == []
    lg.append_upload("p", "data", art(1000), dp(1.0), 1.0)  # the ledger is writable again: no stale lock
    assert lg.count() == 2 and lg.verify_chain() == []


def test_kill_9_while_appending(tmp_path, key):
    lg = Ledger(tmp_path / "ledger.db", key)
    lg.set_budget("k", "data", 1e6)
    proc = _spawn(tmp_path, key, "k", -1, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # let it commit some entries, then kill it wherever it is
            proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    n = lg.count()
    assert n >= 20
    assert lg.verify_chain() == []
    assert lg.budget("k", "data").epsilon_spent == pytest.approx(0.01 * n)
    verify_receipt_chain(lg.receipts("k"), key.public_key())


def test_concurrent_threads_and_processes(tmp_path, key):
    lg = Ledger(tmp_path / "ledger.db", key)
    for c in ("t0", "t1", "p0", "p1"):
        lg.set_budget(c, "data", 100.0)
    procs = [_spawn(tmp_path, key, c, 10) for c in ("p0", "p1")]
    errors = []

    def work(c):
        try:
            for i in range(10):
                lg.append_upload(c, "data", art(i), dp(0.01), 0.01)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c,)) for c in ("t0", "t1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert not errors
    assert lg.count() == 40
    assert lg.verify_chain() == []
    seqs = [e.seq for e in lg.entries(page_size=100)[0]]
    assert seqs == list(range(1, 41))
    for c in ("t0", "t1", "p0", "p1"):
        assert len(verify_receipt_chain(lg.receipts(c), key.public_key())) == 10
        assert lg.budget(c, "data").epsilon_spent == pytest.approx(0.1)


def test_wal_and_synchronous_full(ledger):
    con = sqlite3.connect(ledger.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with ledger._connect() as c:
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_v1_ledger_made_before_rfc8785_keeps_its_scheme_and_verifies(tmp_path, key):
    """A ledger file keeps the canonical JSON its chain was built with: old ledgers verify and grow."""
    from protocol.canonical import LEGACY
    from provider_party.service.ledger import entry_digest

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('format', 'llamdex.ledger/v1')")
    con.commit()
    con.close()
    lg = Ledger(path, key)
    lg.set_budget("alice", "titanic", 3.0)
    e = lg.append_upload("alice", "titanic", art(1), dp(1.0), 1.0)
    assert lg.format == "llamdex.ledger/v1" and lg.verify_chain(key.public_key()) == []
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    row = dict(con.execute("SELECT * FROM entries WHERE seq=1").fetchone())
    assert e.entry_digest == entry_digest(row, LEGACY) != entry_digest(row)
    assert Ledger(tmp_path / "new.db", key).format == "llamdex.ledger/v2"


def test_a_ledger_of_an_unknown_format_is_refused(tmp_path, key):
    path = tmp_path / "future.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('format', 'llamdex.ledger/v9')")
    con.commit()
    with pytest.raises(LedgerError, match="llamdex.ledger/v2"):
        Ledger(path, key)
