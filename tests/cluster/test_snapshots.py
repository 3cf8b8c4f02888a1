"""Database snapshots on the mirror with real processes: a read-only view as of the mirror's redo LSN while redo
goes on, through the client and the DB-API, across a restart of the mirror; DROP; a failover drops them, saying why."""

from __future__ import annotations

import pytest

from mirrorctl import dbapi
from mirrorctl.client import ServerError
from mirrord_testing.localcluster import wait_for

from .helpers import Writer, create_table, wait_synchronized

DB = "shop"


def rows(node, db: str) -> list[tuple]:
    return [tuple(r) for r in node.query("SELECT id, v FROM t ORDER BY id", db=db).rows]


def snapshot_row(node, name: str) -> dict | None:
    found = [r for r in node.query("SELECT * FROM sys.database_snapshots").as_dicts() if r["name"] == name]
    return found[0] if found else None


def refused(node, sql: str, db: str | None = None) -> str:
    with pytest.raises(ServerError) as info:
        node.query(sql, db=db)
    return str(info.value)


def events(node, kind: str) -> list[dict]:
    return [e for e in node.query(f"SELECT * FROM sys.database_mirroring_events WHERE database = '{DB}'").as_dicts()
            if e["event"] == kind]


def test_a_snapshot_shows_the_mirror_as_of_its_creation_while_redo_goes_on_and_after_a_restart(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a, DB)
    for i in range(300):
        a.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, f"row {i} " + "x" * 200])
    wait_synchronized(cluster, DB, "a", "b")
    before = rows(a, DB)

    message = b.query(f"CREATE DATABASE snap AS SNAPSHOT OF {DB}").message
    assert "none copied" in message
    created = snapshot_row(b, "snap")
    assert created["lsn"] == b.status(DB)["redo_lsn"] and created["pages_saved"] == 0

    # the principal moves on: updates, deletes, inserts; the mirror's redo applies them
    a.query("UPDATE t SET v = 'changed' WHERE id % 2 = 0", db=DB)
    a.query("DELETE FROM t WHERE id >= 250", db=DB)
    for i in range(1000, 1100):
        a.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, "new " + "y" * 300])
    wait_synchronized(cluster, DB, "a", "b")
    assert b.status(DB)["redo_lsn"] > created["lsn"]
    assert rows(b, "snap") == before  # exactly the rows as of creation
    assert rows(a, DB) != before
    assert snapshot_row(b, "snap")["pages_saved"] > 0

    # through the DB-API: the snapshot is an ONLINE database of the mirror node
    conn = dbapi.connect(f"mirror://{b.address}/snap")
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*), sum(id) FROM t")
        assert cur.fetchone() == (300, sum(range(300)))
        cur.execute("SELECT id, v FROM t WHERE id < 0")
        assert cur.fetchall() == [] and [d[0] for d in cur.description] == ["id", "v"]
    finally:
        conn.close()

    # refusals change nothing and say why
    assert "read-only" in refused(b, "DELETE FROM t", db="snap")
    assert "issued on the mirror" in refused(a, f"CREATE DATABASE snap2 AS SNAPSHOT OF {DB}")
    assert "already exists" in refused(b, f"CREATE DATABASE snap AS SNAPSHOT OF {DB}")
    assert "does not exist" in refused(b, "CREATE DATABASE snap2 AS SNAPSHOT OF nothere")
    assert "already exists" in refused(b, f"CREATE DATABASE {DB} AS SNAPSHOT OF {DB}")

    # the mirror killed just after more redo, and started again: redo re-applies from its persisted LSN,
    # saving first; the snapshot is still there and still as of its creation
    a.query("UPDATE t SET v = 'before the kill' WHERE id % 5 = 0", db=DB)
    b.kill()
    b.start()
    wait_for(lambda: snapshot_row(b, "snap") is not None, 30, "the snapshot loaded again")
    assert rows(b, "snap") == before
    a.query("UPDATE t SET v = 'after restart' WHERE id < 100", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    assert rows(b, "snap") == before

    b.query("DROP DATABASE snap")
    assert snapshot_row(b, "snap") is None
    assert "dropped" in refused(b, "SELECT count(*) FROM t", db="snap")
    assert not (b.data_dir / "databases" / DB / "snapshots" / "snap").exists()


def test_a_failover_drops_the_snapshots_of_the_mirror_saying_why(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a, DB)
    a.query("INSERT INTO t(id, v) VALUES (1, 'one')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    b.query(f"CREATE DATABASE before_failover AS SNAPSHOT OF {DB}")
    assert rows(b, "before_failover") == [(1, "one")]
    a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    wait_for(lambda: b.status(DB)["role"] == "PRINCIPAL", 30, "b the principal")
    wait_for(lambda: snapshot_row(b, "before_failover") is None, 30, "the snapshot dropped")
    dropped = events(b, "SNAPSHOT_DROPPED")
    assert dropped and "became the principal" in dropped[-1]["detail"]
    assert "became the principal" in refused(b, "SELECT * FROM t", db="before_failover")
    assert not (b.data_dir / "databases" / DB / "snapshots" / "before_failover").exists()
    # the old principal, now the mirror, can have snapshots of its own
    wait_synchronized(cluster, DB, "b", "a")
    a.query(f"CREATE DATABASE on_a AS SNAPSHOT OF {DB}")
    assert rows(a, "on_a") == [(1, "one")]


def test_reads_of_a_snapshot_under_write_load_never_move(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")
    create_table(a, DB)
    for i in range(200):
        a.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, "v" * 500])
    wait_synchronized(cluster, DB, "a", "b")
    b.query(f"CREATE DATABASE steady AS SNAPSHOT OF {DB}")
    expected = (200, sum(range(200)))
    writer = Writer(a, DB, start=10_000)
    writer.start()
    updates = 0
    try:
        with b.client() as reader, a.client() as updater:
            while len(writer.acked) < 300:
                updater.query("UPDATE t SET v = v || 'u' WHERE id = ?", db=DB, params=[updates % 200])
                updates += 1
                got = tuple(reader.query("SELECT count(*), sum(id) FROM t WHERE length(v) = 500", db="steady").rows[0])
                assert got == expected
    finally:
        writer.stop()
    wait_synchronized(cluster, DB, "a", "b")
    assert tuple(b.query("SELECT count(*), sum(id) FROM t WHERE length(v) = 500", db="steady").rows[0]) == expected
    assert not writer.errors
    assert a.query("SELECT count(*) FROM t", db=DB).rows[0][0] == 200 + len(writer.acked)
