"""Transactions that don't block each other, on real nodes (issue 13, part 1).

A DB-API connection that only reads (autocommit off: BEGIN, SELECT) holds a
snapshot, never the write lock; writers queue for the lock at most their
LOCK_TIMEOUT and then hear who holds it; EXEC sp_who shows holder and waiter;
a statement sent and never answered is "outcome unknown" (mirrorctl exit 4,
the driver's InDoubt), never "unreachable".
"""

from __future__ import annotations

import threading

import pytest

from mirrord_testing.localcluster import wait_for
from mirrorctl import cli, dbapi
from mirrorctl.client import ServerError

from .helpers import create_table

DB = "shop"


def _standalone(cluster):
    a = cluster["a"]
    a.query(f"CREATE DATABASE {DB}")
    create_table(a, DB)
    a.query("INSERT INTO t VALUES (1, 'one')", db=DB)
    return a


def _count(cur) -> int:
    cur.execute("SELECT count(*) FROM t")
    return cur.fetchone()[0]


def _who(node) -> list[dict]:
    return node.query("EXEC sp_who").as_dicts()


def _holder_spid(node) -> int:
    rows = [r for r in _who(node) if "HOLDS WRITE LOCK" in r["cmd"]]
    assert len(rows) == 1, rows
    return rows[0]["spid"]


def _in_thread(fn):
    """Run fn in a thread; the returned dict gets 'result' or 'error' when it ends."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def test_a_select_only_dbapi_transaction_does_not_block_writers(cluster):
    a = _standalone(cluster)
    reader = dbapi.connect(f"mirror://{a.address}/{DB}")  # PEP 249: autocommit off, the driver sends BEGIN
    rcur = reader.cursor()
    assert _count(rcur) == 1
    with a.client() as w:
        w.query("SET LOCK_TIMEOUT 0")  # fails at once if anyone held the write lock
        w.query("INSERT INTO t VALUES (2, 'autocommit')", db=DB)
    writer = dbapi.connect(f"mirror://{a.address}/{DB}", query_timeout=5)
    wcur = writer.cursor()
    wcur.execute("INSERT INTO t VALUES (3, 'dbapi')")
    writer.commit()
    assert _count(rcur) == 1  # its snapshot
    reader.commit()
    assert _count(rcur) == 3
    reader.close()
    writer.close()


def test_two_read_transactions_and_a_writer_side_by_side(cluster):
    a = _standalone(cluster)
    readers = [dbapi.connect(f"mirror://{a.address}/{DB}") for _ in range(2)]
    writer = dbapi.connect(f"mirror://{a.address}/{DB}")
    assert [_count(r.cursor()) for r in readers] == [1, 1]
    wcur = writer.cursor()
    wcur.execute("INSERT INTO t VALUES (2, 'two')")
    assert _count(wcur) == 2  # its own write
    kinds = sorted(r["cmd"] for r in _who(a) if r["dbname"] == DB and r["open_tran"] == 1)
    assert kinds == ["AWAITING COMMAND", "AWAITING COMMAND", "AWAITING COMMAND (HOLDS WRITE LOCK)"]
    writer.commit()
    assert [_count(r.cursor()) for r in readers] == [1, 1]
    for r in readers:
        r.commit()
    assert [_count(r.cursor()) for r in readers] == [2, 2]
    for conn in (*readers, writer):
        conn.close()


def test_a_read_transaction_that_writes_after_another_commit_is_refused(cluster):
    a = _standalone(cluster)
    conn = dbapi.connect(f"mirror://{a.address}/{DB}")
    cur = conn.cursor()
    assert _count(cur) == 1
    a.query("INSERT INTO t VALUES (2, 'meanwhile')", db=DB)
    with pytest.raises(dbapi.OperationalError) as err:
        cur.execute("UPDATE t SET v = 'stale' WHERE id = 1")
    assert err.value.code == "serialization" and "could not serialize access" in err.value.message
    conn.rollback()
    cur.execute("UPDATE t SET v = 'fresh' WHERE id = 1")  # run again: a new snapshot
    conn.commit()
    assert a.query("SELECT v FROM t ORDER BY id", db=DB).rows == [["fresh"], ["meanwhile"]]
    conn.close()


def test_lock_timeout_names_the_holder_and_sp_who_shows_holder_and_waiter(cluster):
    a = _standalone(cluster)
    holder = a.client()
    holder.query("BEGIN IMMEDIATE", db=DB)
    holder.query("UPDATE t SET v = 'held' WHERE id = 1", db=DB)
    spid = _holder_spid(a)
    with a.client() as w:
        w.query("SET LOCK_TIMEOUT 300")
        with pytest.raises(ServerError) as err:
            w.query("INSERT INTO t VALUES (5, 'timed out')", db=DB)
        assert err.value.code == "lock_timeout"
        assert f"session {spid} " in err.value.message and "UPDATE t SET v = 'held' WHERE id = 1" in err.value.message
        w.query("SET LOCK_TIMEOUT 0")
        with pytest.raises(ServerError, match="without waiting") as err:
            w.query("INSERT INTO t VALUES (6, 'no wait')", db=DB)
        assert err.value.code == "lock_timeout"
    forever = a.client(timeout=60)
    forever.query("SET LOCK_TIMEOUT -1")
    waiting = _in_thread(lambda: forever.query("INSERT INTO t VALUES (7, 'waited')", db=DB, timeout=60))

    def waiter_row():
        rows = [r for r in _who(a) if r["status"] == "suspended"]
        return rows[0] if rows else None

    row = wait_for(waiter_row, 10, "the waiter in sp_who")
    assert (row["cmd"], row["blk"], row["dbname"]) == ("LOCK WAIT", spid, DB)
    assert "INSERT INTO t VALUES (7" in row["last_statement"]
    holder.query("COMMIT", db=DB)
    waiting["thread"].join(30)
    assert "error" not in waiting and waiting["result"].lsn is not None
    assert a.query("SELECT id, v FROM t ORDER BY id", db=DB).rows == [[1, "held"], [7, "waited"]]  # 5 and 6 never ran
    assert all(r["status"] != "suspended" for r in _who(a))
    holder.close()
    forever.close()


def test_the_node_default_lock_timeout(cluster):
    a = cluster["a"]
    assert a.terminate() == 0
    a.extra_args = ["--lock-timeout-ms", "200"]
    a.start()
    _standalone(cluster)
    holder = a.client()
    holder.query("BEGIN IMMEDIATE", db=DB)
    with pytest.raises(ServerError, match="within 200 ms") as err:
        a.query("INSERT INTO t VALUES (2, 'x')", db=DB)
    assert err.value.code == "lock_timeout"
    holder.query("ROLLBACK", db=DB)
    holder.close()


def test_mirrorctl_says_outcome_unknown_when_the_server_dies_mid_statement(cluster, capsys):
    a = _standalone(cluster)
    holder = a.client()
    holder.query("BEGIN IMMEDIATE", db=DB)  # the statement below waits for the lock
    run = _in_thread(lambda: cli.main(["-S", a.address, "-d", DB, "--timeout", "30",
                                       "-Q", "INSERT INTO t VALUES (9, 'in doubt')"]))
    wait_for(lambda: any(r["status"] == "suspended" for r in _who(a)), 10, "mirrorctl's statement waiting")
    a.kill()
    run["thread"].join(30)
    assert run.get("result") == 4, run
    err = capsys.readouterr().err
    assert "outcome unknown" in err and "cannot talk to" not in err
    assert cli.main(["-S", a.address, "-d", DB, "--timeout", "2", "-Q", "SELECT 1"]) == 3  # nothing sent: unreachable
    assert "cannot talk to" in capsys.readouterr().err
    holder.close()
    a.start()


def test_the_driver_raises_in_doubt_when_a_frozen_server_never_answers(cluster):
    a = _standalone(cluster)
    holder = a.client()
    holder.query("BEGIN IMMEDIATE", db=DB)
    conn = dbapi.connect(f"mirror://{a.address}/{DB}", autocommit=True, query_timeout=3, failover_timeout=5,
                         connect_timeout=1)
    run = _in_thread(lambda: conn.cursor().execute("INSERT INTO t VALUES (9, 'in doubt')"))
    wait_for(lambda: any(r["status"] == "suspended" for r in _who(a)), 10, "the driver's statement waiting")
    a.freeze()
    try:
        run["thread"].join(30)
        assert isinstance(run.get("error"), dbapi.InDoubt), run
        assert isinstance(run["error"], dbapi.OperationalError)
    finally:
        a.thaw()
    holder.query("ROLLBACK", db=DB)
    # its client left while it waited: once the lock is free it is not run for nobody
    wait_for(lambda: not any(r["status"] == "suspended" for r in _who(a)), 20, "the abandoned wait to end")
    assert a.query("SELECT id FROM t ORDER BY id", db=DB).rows == [[1]]
    holder.close()
    conn.close()


def test_a_read_only_login_reads_in_dbapi_transactions(cluster):
    a = _standalone(cluster)
    a.query("CREATE LOGIN viewer WITH PASSWORD = 'viewer-password'")
    a.query(f"GRANT SELECT ON DATABASE::{DB} TO viewer")
    conn = dbapi.connect(f"mirror://viewer:viewer-password@{a.address}/{DB}?tls_ca={a.security.ca_file}")
    cur = conn.cursor()  # autocommit off: BEGIN, then the reads on one snapshot
    assert _count(cur) == 1
    a.query("INSERT INTO t VALUES (2, 'two')", db=DB)
    assert _count(cur) == 1
    with pytest.raises(dbapi.OperationalError) as err:
        cur.execute("INSERT INTO t VALUES (3, 'by viewer')")
    assert err.value.code == "permission_denied"
    conn.commit()
    assert _count(cur) == 2
    conn.close()


def test_an_idle_read_transaction_is_rolled_back(cluster):
    a = cluster["a"]
    assert a.terminate() == 0
    a.extra_args = ["--idle-transaction-timeout", "1"]
    a.start()
    _standalone(cluster)
    idle = a.client()
    idle.query("BEGIN", db=DB)
    idle.query("SELECT count(*) FROM t", db=DB)
    assert [r["open_tran"] for r in _who(a) if r["dbname"] == DB] == [1]
    wait_for(lambda: not any(r["open_tran"] for r in _who(a)), 15, "the idle read transaction to be rolled back")
    with pytest.raises(ServerError) as err:
        idle.query("SELECT 1", db=DB)
    assert err.value.code == "transaction_aborted" and "held a read snapshot idle for more than 1 s" in err.value.message
    idle.query("ROLLBACK", db=DB)
    assert idle.query("SELECT count(*) FROM t", db=DB).rows == [[1]]  # usable again
    idle.close()
