"""PARTNER REDO_QUEUE with real processes: commits wait while the mirror's redo queue is over the limit, and resume;
status shows the queue and the limit; a failover then redoes at most about the limit.

The mirror's redo is slowed by MIRRORD_TEST_REDO_KB_S (mirrord.storage.pagestore; read by the node at start,
set only by tests and benchmarks), as a mirror on a slow disk would be: the principal logs far faster.
"""

from __future__ import annotations

import threading
import time

import pytest

from mirrord_testing.localcluster import wait_for
from mirrord.storage.pagestore import TEST_REDO_RATE_ENV
from mirrorctl.client import ServerError, Unreachable

DB = "shop"
MB = 1 << 20
REDO_KB_S = 1024  # the mirror redoes 1 MB/s
BLOB = 3 * MB  # one large transaction: three times the limit, three seconds of redo


@pytest.fixture
def slow_mirror(cluster, monkeypatch):
    """The cluster, with b's redo (and the redo a promotion finishes) capped at REDO_KB_S."""
    monkeypatch.setenv(TEST_REDO_RATE_ENV, str(REDO_KB_S))
    cluster["b"].restart()
    return cluster


def _refused(node, sql: str, code: str) -> str:
    with pytest.raises(ServerError) as info:
        node.query(sql, db=DB)
    assert info.value.code == code, info.value
    return info.value.message


def test_statement_and_status(slow_mirror):
    cluster = slow_mirror
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    row = a.status(DB)
    assert (row["mirroring_redo_queue"], row["mirroring_redo_queue_type"]) == (None, "UNLIMITED")
    # bad values and the wrong node are refused, saying why; nothing changes
    assert "must be 1..1048576 MB, or UNLIMITED" in _refused(a, f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE 0 MB", "syntax")
    assert "not below the log size limit" in _refused(a, f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE 1024 MB", "refused")
    assert "must be issued on the principal" in _refused(b, f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE 5 MB", "refused")
    assert a.status(DB)["mirroring_redo_queue_type"] == "UNLIMITED"
    a.query(f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE 5 MB")
    assert (a.status(DB)["mirroring_redo_queue"], a.status(DB)["mirroring_redo_queue_type"]) == (5, "MB")
    # the mirror adopts the setting and keeps it across a restart (it outlives a role change)
    wait_for(lambda: b.status(DB)["mirroring_redo_queue"] == 5, 10, "the mirror adopts REDO_QUEUE 5 MB")
    b.restart()
    assert b.status(DB)["mirroring_redo_queue"] == 5
    a.query(f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE UNLIMITED")
    wait_for(lambda: b.status(DB)["mirroring_redo_queue_type"] == "UNLIMITED", 10, "the mirror adopts UNLIMITED")


def test_commits_wait_while_the_redo_queue_is_over_the_limit_and_resume(slow_mirror):
    cluster = slow_mirror
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a, b = cluster["a"], cluster["b"]
    a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", db=DB)
    a.query(f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE 1 MB")
    # one large transaction: it goes (the queue was empty), and leaves ~3 MB for the mirror to redo
    a.query("INSERT INTO t(id, v) VALUES (1, randomblob(?))", db=DB, params=[BLOB])
    blob_lsn = a.status(DB)["end_of_log_lsn"]
    wait_for(lambda: a.status(DB)["redo_queue_bytes"] > MB, 10, "the principal sees the redo queue over 1 MB")

    # a write with a short lock timeout gives up with its own error, having changed nothing
    with a.client() as client:
        client.query("SET LOCK_TIMEOUT 200")
        with pytest.raises(ServerError) as info:
            client.query("INSERT INTO t(id, v) VALUES (2, 'held')", db=DB)
    assert info.value.code == "redo_queue_full", info.value
    assert "REDO_QUEUE 1 MB" in info.value.message and "not run" in info.value.message
    row = a.status(DB)
    assert row["redo_queue_timeouts"] >= 1 and row["redo_queue_holds"] >= 1
    assert b.status(DB)["redo_lsn"] < blob_lsn  # still redoing the large transaction

    # a write with the default lock timeout (10 s) waits, and goes once the mirror has redone enough
    done: dict = {}

    def write() -> None:
        try:
            done["lsn"] = a.query("INSERT INTO t(id, v) VALUES (3, 'waited')", db=DB).lsn
        except (ServerError, Unreachable, OSError) as exc:
            done["error"] = exc
        done["at"] = time.monotonic()

    writer = threading.Thread(target=write, daemon=True)
    started = time.monotonic()
    writer.start()
    wait_for(lambda: a.status(DB)["redo_queue_held"] or "at" in done, 10, "the write is held")
    writer.join(15)
    assert "error" not in done and "lsn" in done, done
    # it was held until the mirror had redone the large transaction (its bytes were the queue)
    assert b.status(DB)["redo_lsn"] >= blob_lsn
    row = a.status(DB)
    assert not row["redo_queue_held"] and row["redo_queue_held_s"] > 0
    assert done["at"] - started < 10
    ids = {r[0] for r in a.query("SELECT id FROM t", db=DB).rows}
    assert ids == {1, 3}  # the refused write changed nothing


def test_suspended_session_does_not_hold_commits(slow_mirror):
    cluster = slow_mirror
    cluster.setup_session(DB, principal="a", mirror="b")
    a = cluster["a"]
    a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", db=DB)
    a.query(f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE 1 MB")
    a.query("INSERT INTO t(id, v) VALUES (1, randomblob(?))", db=DB, params=[BLOB])
    wait_for(lambda: a.status(DB)["redo_queue_bytes"] > MB, 10, "the principal sees the redo queue over 1 MB")
    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    # the mirror takes no log: the principal runs as it would without a limit (exposed), and commits go at once
    with a.client() as client:
        client.query("SET LOCK_TIMEOUT 200")
        client.query("INSERT INTO t(id, v) VALUES (2, 'suspended')", db=DB)


def test_failover_redoes_at_most_about_the_limit(slow_mirror):
    """Under load of large transactions, an automatic failover takes about limit ÷ redo rate, not the whole backlog."""
    cluster = slow_mirror
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a, b = cluster["a"], cluster["b"]
    a.query("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", db=DB)
    limit_mb = 2
    a.query(f"ALTER DATABASE {DB} SET PARTNER REDO_QUEUE {limit_mb} MB")
    halt = threading.Event()
    acked: list[int] = []
    peak = [0]

    def load(first: int) -> None:
        key = first
        try:
            with a.client() as client:
                while not halt.is_set():
                    key += 1
                    client.query("INSERT INTO t(id, v) VALUES (?, randomblob(262144))", db=DB, params=[key])
                    acked.append(key)
        except (ServerError, Unreachable, OSError):
            pass  # the principal was killed

    writers = [threading.Thread(target=load, args=(i * 1_000_000,), daemon=True) for i in range(2)]
    for w in writers:
        w.start()
    deadline = time.monotonic() + 8  # the load runs long enough to fill the queue many times over without the limit
    while time.monotonic() < deadline:
        peak[0] = max(peak[0], b.status(DB)["redo_queue_bytes"])
        halt.wait(0.05)  # a sampling pace, not a synchronisation
    assert a.status(DB)["redo_queue_holds"] >= 1
    # the mirror's own count: the limit, plus what two writers had in flight when the last report came
    assert peak[0] <= (limit_mb + 1) * MB, f"redo queue peaked at {peak[0] / MB:.1f} MB"
    assert len(acked) > 10  # commits went on, held and resumed
    a.kill()
    killed = time.monotonic()
    halt.set()

    def accepts() -> bool:
        try:
            b.query("INSERT INTO t(id, v) VALUES (-1, 'after')", db=DB)
            return True
        except (ServerError, Unreachable, OSError):
            return False

    wait_for(accepts, 30, "b accepts writes as principal")
    took = time.monotonic() - killed
    # at most ~limit + in flight (3 MB) at 1 MB/s, plus the failover itself (~1-2 s here)
    assert took < 6.0, f"failover took {took:.1f} s"
    for w in writers:
        w.join(10)
    have = {r[0] for r in b.query("SELECT id FROM t", db=DB).rows}
    assert set(acked) <= have  # SAFETY FULL: nothing acknowledged is lost
