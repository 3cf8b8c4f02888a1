"""The two-partner data path with real processes: capture, stream, harden, redo."""

from __future__ import annotations

import shutil
import threading

import pytest

from mirrord_testing.localcluster import wait_for
from mirrorctl.client import Client, ServerError

from .helpers import Writer, assert_identical_copies, create_table, ids_on, wait_synchronized

DB = "shop"


def test_thousand_inserts_reach_the_mirror_page_for_page(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    client = a.client()
    for i in range(1, 1001):
        result = client.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, f"row {i}"])
        assert result.lsn is not None
    client.close()
    assert a.status(DB)["state"] == "SYNCHRONIZED"
    assert_identical_copies(cluster, DB, "a", "b")
    # the mirror's copy, brought online on its own, holds every row
    b.query(f"ALTER DATABASE {DB} SET PARTNER OFF")
    assert b.status(DB)["status"] == "RESTORING"
    b.query(f"RESTORE DATABASE {DB} WITH RECOVERY")
    assert b.query("SELECT count(*), min(id), max(id) FROM t", db=DB).rows == [[1000, 1, 1000]]
    assert b.query("PRAGMA integrity_check", db=DB).rows == [["ok"]]


def test_mirror_killed_mid_load_rejoins_by_itself(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", timeout=5)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    writer = Writer(a, DB)
    writer.start()
    wait_for(lambda: writer.acked_count_reaches(100), 30, "100 acknowledged inserts")
    b.kill()
    wait_for(lambda: a.status(DB)["state"] == "DISCONNECTED", 10, "principal DISCONNECTED (exposed)")
    exposed_from = len(writer.acked)
    wait_for(lambda: writer.acked_count_reaches(exposed_from + 200), 30, "200 commits while exposed")
    b.start()  # no statement issued: it rejoins by itself
    wait_for(lambda: b.status(DB)["state"] in ("SYNCHRONIZING", "SYNCHRONIZED"), 20, "mirror reconnected")
    writer.stop()
    wait_synchronized(cluster, DB, "a", "b")
    assert set(writer.acked) <= ids_on(a, DB)
    assert_identical_copies(cluster, DB, "a", "b")


def test_principal_killed_mid_load_keeps_every_acknowledged_commit(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", timeout=5)
    a = cluster["a"]
    create_table(a, DB)
    writer = Writer(a, DB)
    writer.start()
    wait_for(lambda: writer.acked_count_reaches(150), 30, "150 acknowledged inserts")
    a.kill()
    acked_before_kill = set(writer.acked)
    a.start()
    resumed_from = len(writer.acked)
    wait_for(lambda: writer.acked_count_reaches(resumed_from + 50), 30, "writes accepted after restart")
    writer.stop()
    assert acked_before_kill <= ids_on(a, DB)
    assert set(writer.acked) <= ids_on(a, DB)
    wait_synchronized(cluster, DB, "a", "b")
    assert_identical_copies(cluster, DB, "a", "b")


def test_suspended_survives_restarts_and_resume_catches_up(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    wait_for(lambda: b.status(DB)["state"] == "SUSPENDED", 10, "mirror sees SUSPENDED")
    for i in range(300):
        a.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, "suspended"])
    assert a.status(DB)["send_queue_bytes"] > 0
    a.kill()
    b.kill()
    a.start()
    b.start()
    assert a.status(DB)["state"] == "SUSPENDED"
    assert b.status(DB)["state"] == "SUSPENDED"
    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    wait_synchronized(cluster, DB, "a", "b")
    assert_identical_copies(cluster, DB, "a", "b")


def test_resume_catches_up_from_the_log_when_seeded_at_a_record_older_than_the_session(cluster):
    # The table is logged before the session exists (role sequence 0) and the
    # mirror is seeded at that record; nothing else is shipped before SUSPEND.
    # RESUME must send the queued log, not reseed: the seed carries the role sequence of
    # its record, so the mirror's hardened role sequence matches the principal's log.
    a, b = cluster["a"], cluster["b"]
    a.query(f"CREATE DATABASE {DB}")
    create_table(a, DB)
    cluster.setup_session(DB, principal="a", mirror="b")
    a.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    wait_for(lambda: b.status(DB)["state"] == "SUSPENDED", 10, "mirror sees SUSPENDED")
    for i in range(50):
        a.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, "suspended"])
    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    wait_synchronized(cluster, DB, "a", "b")
    assert a.log_text().count('"seeding_mirror"') == 1, "RESUME reseeded the mirror instead of sending the log"
    assert a.status(DB)["log_bytes_sent_raw"] > 0
    assert_identical_copies(cluster, DB, "a", "b")


def test_large_and_rolled_back_transactions_across_checkpoints(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a = cluster["a"]
    a.query("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)", db=DB)
    client = a.client()
    # a transaction much larger than SQLite's page cache (2 MiB by default; clients may not change it
    # on the shared writer connection) spills pages to the WAL before COMMIT
    for round_ in range(4):
        client.query("BEGIN", db=DB)
        for i in range(400):
            client.query("INSERT INTO blobs(id, data) VALUES (?, randomblob(8000))", db=DB, params=[round_ * 1000 + i])
        client.query("COMMIT", db=DB)
        client.query("BEGIN", db=DB)  # spilled, then rolled back: must never reach the mirror
        for i in range(400):
            client.query("INSERT INTO blobs(id, data) VALUES (?, randomblob(8000))", db=DB, params=[10_000 + round_ * 1000 + i])
        client.query("ROLLBACK", db=DB)
        client.query("DELETE FROM blobs WHERE id % 7 = 0", db=DB)
    client.close()
    assert a.query("SELECT count(*) FROM blobs WHERE id >= 10000", db=DB).rows == [[0]]
    assert_identical_copies(cluster, DB, "a", "b")


def test_reads_wait_for_commits_the_mirror_has_not_hardened(cluster):
    """SAFETY FULL: no client reads a commit that a failover could still take away."""
    cluster.setup_session(DB, principal="a", mirror="b", timeout=60)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    b.freeze()  # the mirror stops hardening; the principal does not give up for 60 s
    try:
        done = {}
        end_before = a.status(DB)["end_of_log_lsn"]
        commit = threading.Thread(target=lambda: done.setdefault("commit", a.query("INSERT INTO t VALUES (1, 'x')", db=DB)), daemon=True)
        commit.start()
        wait_for(lambda: a.status(DB)["end_of_log_lsn"] > end_before, 10, "the commit captured on the principal")
        read = threading.Thread(target=lambda: done.setdefault("read", a.query("SELECT count(*) FROM t", db=DB)), daemon=True)
        read.start()
        read.join(1.5)  # bounded observation: it must still be waiting
        assert "read" not in done and "commit" not in done
    finally:
        b.thaw()
    commit.join(20)
    read.join(20)
    assert done["read"].rows == [[1]]
    assert done["commit"].lsn is not None


def test_safety_off_acknowledges_without_the_mirror(cluster):
    cluster.setup_session(DB, principal="a", mirror="b", safety="OFF", timeout=60)
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    b.freeze()
    try:
        for i in range(50):
            a.query("INSERT INTO t VALUES (?, 'async')", db=DB, params=[i])
        assert a.query("SELECT count(*) FROM t", db=DB).rows == [[50]]
    finally:
        b.thaw()
    wait_synchronized(cluster, DB, "a", "b")


def test_refused_statements_say_why_and_change_nothing(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    before = {n: cluster[n].status(DB) for n in ("a", "b")}

    def refused(node, sql, code, *words, db=None):
        with pytest.raises(ServerError) as info:
            node.query(sql, db=db)
        assert info.value.code == code, info.value
        for word in words:
            assert word in info.value.message, info.value.message
        return info.value

    err = refused(b, "INSERT INTO t VALUES (1, 'x')", "not_principal", "principal", db=DB)
    assert err.principal == a.address
    refused(b, f"ALTER DATABASE {DB} SET PARTNER SAFETY OFF", "refused", "principal")
    refused(a, f"ALTER DATABASE {DB} SET PARTNER RESUME", "refused", "SUSPENDED")
    refused(a, f"ALTER DATABASE {DB} SET PARTNER = 'tcp://127.0.0.1:1'", "refused", "SET PARTNER OFF")
    refused(a, f"DROP DATABASE {DB}", "refused", "SET PARTNER OFF")
    refused(a, f"CREATE DATABASE {DB}", "refused", "already exists")
    refused(a, f"ALTER DATABASE {DB} SET PARTNER BANANA", "syntax", "FAILOVER")
    refused(a, "ALTER DATABASE nope SET PARTNER SAFETY OFF", "refused", "does not exist")
    refused(a, "SELECT 1", "refused", "no database selected")
    refused(a, "SELECT * FROM t", "unknown_database", db="nope")
    refused(a, f"RESTORE DATABASE {DB} WITH RECOVERY", "refused", "ONLINE")
    refused(a, f"ALTER DATABASE {DB} SET PARTNER TIMEOUT 0", "syntax")
    refused(b, f"BACKUP DATABASE {DB} TO DISK = '/tmp/x.bak'", "refused", "principal")
    refused(a, "SELECT * FROM no_such_table", "sql", "no such table", db=DB)
    after = {n: cluster[n].status(DB) for n in ("a", "b")}
    for n in ("a", "b"):
        for key in ("role", "state", "safety", "partner", "role_sequence", "timeout", "status"):
            assert before[n][key] == after[n][key], (n, key)


def test_backup_restore_norecovery_then_partner(cluster, tmp_path):
    a, b = cluster["a"], cluster["b"]
    a.query(f"CREATE DATABASE {DB}")
    create_table(a, DB)
    for i in range(100):
        a.query("INSERT INTO t VALUES (?, 'before backup')", db=DB, params=[i])
    a.query(f"BACKUP DATABASE {DB} TO DISK = 'shop.bak'")  # inside a's backup directory
    for i in range(100, 150):
        a.query("INSERT INTO t VALUES (?, 'after backup')", db=DB, params=[i])
    # the operator carries the file to b's backup directory, as between two servers
    (b.data_dir / "backups").mkdir(exist_ok=True)
    shutil.copyfile(a.data_dir / "backups" / "shop.bak", b.data_dir / "backups" / "shop.bak")
    b.query(f"RESTORE DATABASE {DB} FROM DISK = 'shop.bak' WITH NORECOVERY")
    assert b.status(DB)["status"] == "RESTORING"
    b.query(f"ALTER DATABASE {DB} SET PARTNER = '{a.endpoint_url}'")
    a.query(f"ALTER DATABASE {DB} SET PARTNER = '{b.endpoint_url}'")
    wait_synchronized(cluster, DB, "a", "b")
    assert_identical_copies(cluster, DB, "a", "b")


def test_endpoint_stopped_disconnects_and_started_reconnects(cluster):
    cluster.setup_session(DB, principal="a", mirror="b")
    a, b = cluster["a"], cluster["b"]
    create_table(a, DB)
    b.query("ALTER ENDPOINT mirroring STATE = STOPPED")
    wait_for(lambda: a.status(DB)["state"] == "DISCONNECTED", 10, "principal DISCONNECTED")
    a.query("INSERT INTO t VALUES (1, 'exposed')", db=DB)
    b.query("ALTER ENDPOINT mirroring STATE = STARTED")
    wait_synchronized(cluster, DB, "a", "b")


def _log_bytes(node, db: str) -> int:
    return sum(f.stat().st_size for f in (node.data_dir / "databases" / db / "log").iterdir() if f.is_file())


def test_mirror_log_is_truncated_below_durable_redo_and_a_restart_still_redoes(cluster):
    """The mirror keeps only the log past what redo made durable: it does not grow for ever,
    and a SIGKILLed mirror restarts, redoes from its persisted redo LSN and can become principal."""
    a, b = cluster["a"], cluster["b"]
    b.terminate()
    b.extra_args = ["--log-size-limit-mb", "1"]  # 128 KB log segments on the mirror
    b.start()
    cluster.setup_session(DB, principal="a", mirror="b")
    create_table(a, DB)
    for i in range(600):
        a.query("INSERT INTO t VALUES (?, ?)", db=DB, params=[i, f"{i:04d}" * 500])
    wait_synchronized(cluster, DB, "a", "b")
    shipped = a.status(DB)["log_bytes_sent_raw"]
    assert shipped > 4 << 20, f"the test meant to ship several MB of log, shipped {shipped}"
    for i in range(600, 620):  # later hardens truncate below what redo persisted meanwhile
        a.query("INSERT INTO t VALUES (?, ?)", db=DB, params=[i, "x" * 2000])
    wait_for(lambda: _log_bytes(b, DB) < 1 << 20 or None, 30, "the mirror's log truncated below 1 MB")
    b.kill()
    for i in range(620, 640):
        a.query("INSERT INTO t VALUES (?, ?)", db=DB, params=[i, "y"])  # exposed: b is down
    b.start()
    wait_synchronized(cluster, DB, "a", "b")
    a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER")
    wait_for(lambda: b.status(DB)["role"] == "PRINCIPAL" or None, 30, "b principal after the manual failover")
    assert ids_on(b, DB) == set(range(640))
    assert_identical_copies(cluster, DB, "b", "a")
