"""mirrorctl.dbapi against real nodes: PEP 249 behaviour, and a writer that rides through failovers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mirrord_testing.localcluster import iptables_available, wait_for
from mirrorctl import dbapi
from mirrorctl.dbapi.aio import connect_async

from .helpers import create_table, ids_on

DB = "shop"
needs_iptables = pytest.mark.skipif(not iptables_available(), reason="link cuts need root and iptables")


# ------------------------------------------------------------------ PEP 249 on a standalone database


def test_dbapi_conformance_on_a_standalone_database(cluster):
    a = cluster["a"]
    a.query(f"CREATE DATABASE {DB}")
    conn = dbapi.connect(f"mirror://{a.address}/{DB}")
    assert not conn.autocommit and conn.principal == a.address
    cur = conn.cursor()
    cur.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT UNIQUE, price REAL)")
    cur.executemany("INSERT INTO items(name, price) VALUES (?, ?)", [("apple", 1.5), ("pear", 2.0), ("fig", 3.25)])
    assert cur.rowcount == 3
    cur.execute("INSERT INTO items(name, price) VALUES (:name, :price)", {"name": "kiwi", "price": 0.5})
    assert (cur.rowcount, cur.lastrowid) == (1, 4)
    conn.commit()
    token = conn.last_token
    assert token is not None and conn.transaction_committed(token) is True

    cur.execute("SELECT id, name, price FROM items ORDER BY id")
    assert [d[0] for d in cur.description] == ["id", "name", "price"] and len(cur.description[0]) == 7
    assert cur.fetchone() == (1, "apple", 1.5)
    cur.arraysize = 2
    assert cur.fetchmany() == [(2, "pear", 2.0), (3, "fig", 3.25)]
    assert cur.fetchall() == [(4, "kiwi", 0.5)] and cur.fetchone() is None
    assert cur.lastrowid is None
    conn.rollback()

    cur.execute("INSERT INTO items(name) VALUES ('plum')")
    conn.rollback()  # PEP 249: the driver began a transaction; rollback discards it
    assert conn.execute("SELECT count(*) FROM items").fetchone() == (4,)
    conn.rollback()

    cur.execute("INSERT INTO items(name) VALUES ('date')")
    with pytest.raises(dbapi.IntegrityError, match="UNIQUE"):
        cur.execute("INSERT INTO items(name) VALUES ('apple')")
    assert conn.in_transaction  # the failed statement does not end the transaction
    conn.commit()
    with pytest.raises(dbapi.ProgrammingError, match="syntax"):
        cur.execute("SELEC 1")
    with pytest.raises(dbapi.ProgrammingError, match="no such table"):
        cur.execute("SELECT * FROM missing_table")
    conn.rollback()
    with pytest.raises(dbapi.NotSupportedError):
        cur.execute("PRAGMA journal_mode=DELETE")
    conn.rollback()

    conn.autocommit = True
    cur.execute("INSERT INTO items(name) VALUES ('lime')")
    assert not conn.in_transaction and conn.last_token.lsn > token.lsn
    conn.close()
    with pytest.raises(dbapi.InterfaceError):
        conn.cursor()

    with dbapi.connect(f"mirror://{a.address}/{DB}") as conn2:  # commits on a clean exit
        conn2.execute("INSERT INTO items(name) VALUES ('yuzu')")
    with pytest.raises(RuntimeError), dbapi.connect(f"mirror://{a.address}/{DB}") as conn3:  # rolls back on error
        conn3.execute("INSERT INTO items(name) VALUES ('quince')")
        raise RuntimeError("application failure")
    names = {r[0] for r in a.query("SELECT name FROM items", db=DB).rows}
    assert {"date", "lime", "yuzu"} <= names and not {"plum", "quince"} & names

    with pytest.raises(dbapi.ProgrammingError, match="no partner has a database"):
        dbapi.connect(f"mirror://{a.address}/nope")


def test_asyncio_api_has_the_same_shape(cluster):
    a = cluster["a"]
    a.query(f"CREATE DATABASE {DB}")

    async def scenario():
        async with await connect_async(f"mirror://{a.address}/{DB}") as conn:
            cur = conn.cursor()
            await cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
            await cur.executemany("INSERT INTO t(v) VALUES (?)", [("x",), ("y",)])
            await conn.commit()
            assert await conn.transaction_committed(conn.last_token) is True
            await cur.execute("SELECT id, v FROM t ORDER BY id")
            assert cur.description[1][0] == "v"
            assert await cur.fetchone() == (1, "x") and await cur.fetchall() == [(2, "y")]
            with pytest.raises(dbapi.IntegrityError):
                await cur.execute("INSERT INTO t(v) VALUES ('x')")
            await conn.rollback()
            await conn.set_autocommit(True)
            await cur.execute("INSERT INTO t(v) VALUES ('z')")
            return [row async for row in await conn.execute("SELECT v FROM t ORDER BY id")]

    assert asyncio.run(scenario()) == [("x",), ("y",), ("z",)]


# ------------------------------------------------------------------ through failovers


class DbapiWriter(threading.Thread):
    """One row per transaction with unique ids through one DB-API connection, recording each outcome."""

    def __init__(self, conn: dbapi.Connection) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.acked: dict[int, dbapi.Token] = {}
        self.in_doubt: dict[int, dbapi.InDoubt] = {}
        self.interrupted: list[int] = []
        self.other: list[tuple[int, str]] = []
        self.principals: list[str] = []
        self.ack_times: list[float] = []
        self._halt = threading.Event()
        self._next = 0

    def run(self) -> None:
        cur = self.conn.cursor()
        while not self._halt.is_set():
            self._next += 1
            key = self._next
            try:
                cur.execute("INSERT INTO t(id, v) VALUES (?, ?)", [key, "through failover"])
                self.conn.commit()
                self.acked[key] = self.conn.last_token
                self.ack_times.append(time.monotonic())
                if not self.principals or self.principals[-1] != self.conn.principal:
                    self.principals.append(self.conn.principal)
            except dbapi.InDoubt as exc:
                self.in_doubt[key] = exc
            except dbapi.TransactionInterrupted:
                self.interrupted.append(key)
            except dbapi.Error as exc:  # anything else is a failure of the driver's promise
                self.other.append((key, repr(exc)))

    def count(self) -> int:
        return len(self.acked)

    def stop(self) -> None:
        self._halt.set()
        self.join(60)
        assert not self.is_alive()

    def check(self, principal, failovers: int) -> None:
        """Every acknowledged row is on the principal, in-doubt ones resolve truthfully, interrupted ones are absent."""
        gap = max(b - a for a, b in zip(self.ack_times, self.ack_times[1:]))
        print(f"writer: {len(self.acked)} acknowledged, {len(self.in_doubt)} in doubt, "
              f"{len(self.interrupted)} interrupted, longest gap between acknowledgements {gap:.2f} s, "
              f"principals {self.principals}")
        assert not self.other, self.other[:5]
        assert len(self.in_doubt) <= failovers, {k: str(v) for k, v in self.in_doubt.items()}
        ids = ids_on(principal, DB)
        missing = set(self.acked) - ids
        assert not missing, f"acknowledged commits lost: {sorted(missing)[:20]}"
        assert not set(self.interrupted) & ids, "an interrupted transaction committed"
        for key, exc in self.in_doubt.items():
            if exc.token is not None:
                assert self.conn.transaction_committed(exc.token) is (key in ids), (key, str(exc))
        last_key = max(self.acked)
        assert self.conn.transaction_committed(self.acked[last_key]) is True


@pytest.mark.parametrize("addresses", ["one_address", "both_partners"])
def test_writer_rides_through_a_sigkill_failover(cluster, addresses):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    partners = a.address if addresses == "one_address" else f"{a.address},{b.address}"
    conn = dbapi.connect(f"mirror://{partners}/{DB}", failover_timeout=60)
    assert conn.partners == [a.address, b.address]  # b learned from the principal
    writer = DbapiWriter(conn)
    writer.start()
    wait_for(lambda: writer.count() >= 200, 60, "200 acknowledged transactions on a")
    a.kill()
    after = writer.count()
    wait_for(lambda: writer.count() >= after + 200, 60, "200 more acknowledged transactions on b")
    assert b.status(DB)["role"] == "PRINCIPAL"
    a.start()
    wait_for(lambda: a.status(DB)["role"] == "MIRROR", 30, "old principal rejoins as mirror")
    writer.stop()
    assert writer.principals == [a.address, b.address]
    writer.check(b, failovers=1)
    conn.close()


def test_writer_rides_through_a_frozen_principal(cluster):
    """SIGSTOP: no reset, no answer. The statement in flight times out (query_timeout) and the driver moves on."""
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    conn = dbapi.connect(f"mirror://{a.address}/{DB}", failover_timeout=60, query_timeout=3, connect_timeout=1)
    writer = DbapiWriter(conn)
    writer.start()
    wait_for(lambda: writer.count() >= 200, 60, "200 acknowledged transactions on a")
    a.freeze()
    after = writer.count()
    wait_for(lambda: writer.count() >= after + 200, 60, "200 more acknowledged transactions on b")
    a.thaw()
    wait_for(lambda: a.status(DB)["role"] == "MIRROR", 30, "old principal steps down and rejoins as mirror")
    writer.stop()
    assert writer.principals == [a.address, b.address]
    writer.check(b, failovers=1)
    conn.close()


@needs_iptables
def test_commit_in_doubt_on_an_isolated_principal_comes_with_a_token_that_resolves(cluster):
    """The cut principal logged a commit its mirror never acknowledged: the server says in doubt, with the token."""
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=2)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    conn = dbapi.connect(f"mirror://{a.address}/{DB}", failover_timeout=60)
    writer = DbapiWriter(conn)
    writer.start()
    wait_for(lambda: writer.count() >= 200, 60, "200 acknowledged transactions on a")
    cluster.isolate("a")  # its client port stays reachable: the writer keeps talking to it
    after = writer.count()
    wait_for(lambda: writer.count() >= after + 200, 60, "200 more acknowledged transactions on b")
    cluster.heal_all()
    wait_for(lambda: a.status(DB)["role"] == "MIRROR", 30, "old principal steps down and rejoins as mirror")
    writer.stop()
    assert writer.principals == [a.address, b.address]
    assert [exc.token is not None for exc in writer.in_doubt.values()] == [True]  # the commit in flight
    writer.check(b, failovers=1)
    conn.close()


def test_writer_rides_through_manual_failovers(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", witness="c", timeout=5)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    conn = dbapi.connect(f"mirror://{a.address}/{DB}", failover_timeout=60)
    writer = DbapiWriter(conn)
    writer.start()
    principal, mirror = a, b
    for n in range(4):
        wait_for(lambda: writer.count() >= 100 * (n + 1), 60, f"100 acknowledged transactions on {principal.name}")
        cluster.wait_synchronized(DB, principal.name, mirror.name, 30)
        principal.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
        principal, mirror = mirror, principal
    wait_for(lambda: writer.count() >= 500, 60, "transactions after the last failover")
    writer.stop()
    assert writer.principals == [a.address, b.address] * 2 + [a.address]
    writer.check(principal, failovers=4)
    conn.close()
