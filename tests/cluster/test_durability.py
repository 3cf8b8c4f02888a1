"""Durability faults with real processes: a redo that fails on the mirror, a node that cannot load a database."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from mirrord_testing.localcluster import wait_for
from mirrorctl.client import ServerError

from .helpers import create_table, db_file, ids_on, wait_synchronized

DB = "shop"


def _immutable(path, on: bool) -> bool:
    """chattr +i / -i: writes through descriptors already open fail with EPERM, as a failing disk's would."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


def test_redo_failure_suspends_the_session_and_blocks_every_promotion(cluster):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    a.query(f"ALTER DATABASE {DB} SET PARTNER TIMEOUT 2")
    create_table(a, DB)
    for i in range(1, 21):
        a.query("INSERT INTO t(id, v) VALUES (?, 'before')", db=DB, params=[i])
    wait_synchronized(cluster, DB, "a", "b")
    store = db_file(b, DB)
    if not _immutable(store, True):
        pytest.skip("chattr +i is not available here: cannot make the mirror's page store fail")
    try:
        a.query("INSERT INTO t(id, v) VALUES (21, 'hardened, never redone')", db=DB)
        wait_for(lambda: a.status(DB)["state"] == b.status(DB)["state"] == "SUSPENDED" or None, 20,
                 "the session SUSPENDED on both partners after the redo failure")
        mirror, principal = b.status(DB), a.status(DB)
        assert "redo failed" in mirror["state_reason"]
        assert "the mirror suspended the session" in principal["state_reason"] and "redo failed" in principal["state_reason"]
        assert mirror["automatic_failover"].startswith("NO") and "redo failed" in mirror["automatic_failover"]
        with pytest.raises(ServerError) as refused:
            b.query(f"ALTER DATABASE {DB} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS")
        assert "principal is connected" in refused.value.message or "redo failed" in refused.value.message
        a.query("INSERT INTO t(id, v) VALUES (22, 'suspended: acknowledged by the principal alone')", db=DB)
        # The principal is lost: the mirror must not become a principal that cannot open.
        a.kill()
        deadline = time.monotonic() + 2 * 2 + 2  # twice PARTNER TIMEOUT, and then some
        while time.monotonic() < deadline:
            assert b.status(DB)["role"] == "MIRROR"
            time.sleep(0.2)
        with pytest.raises(ServerError) as forced:
            b.query(f"ALTER DATABASE {DB} SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS")
        assert "redo failed" in forced.value.message
        assert b.status(DB)["role"] == "MIRROR"
    finally:
        _immutable(store, False)
    # fixed: a restart redoes from the persisted redo LSN, RESUME catches up, nothing acknowledged is lost
    b.restart()
    a.start()
    wait_for(lambda: a.status(DB)["role"] == "PRINCIPAL" or None, 30, "a principal again")
    a.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    wait_synchronized(cluster, DB, "a", "b")
    assert b.status(DB)["state_reason"] is None and a.status(DB)["state_reason"] is None
    assert ids_on(a, DB) == set(range(1, 23))


def test_a_database_that_cannot_load_is_quarantined_and_the_others_run(cluster):
    a = cluster["a"]
    for db in ("good", "bad"):
        a.query(f"CREATE DATABASE {db}")
        create_table(a, db)
        a.query("INSERT INTO t(id, v) VALUES (1, 'x')", db=db)
    a.terminate()
    meta = a.data_dir / "databases" / "bad" / "meta.json"
    meta.write_text("{ this is not json")
    a.start()
    rows = {r["database"]: r for r in a.statuses()}
    assert rows["bad"]["status"] == "QUARANTINED" and "failed to load" in rows["bad"]["state_reason"]
    assert a.query("SELECT count(*) FROM t", db="good").rows == [[1]]
    with pytest.raises(ServerError) as info:
        a.query("SELECT count(*) FROM t", db="bad")
    assert "quarantined" in info.value.message


# ---------------------------------------------------------------- full disks

def _small_disk(node, mb: int) -> None:
    """Put a stopped node's data directory on a tmpfs of `mb` MB (skip where mounting is not allowed)."""
    node.terminate()
    shutil.rmtree(node.data_dir, ignore_errors=True)
    node.data_dir.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(node.data_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the full-disk test: {proc.stderr.strip()}")
    node.start()


def _unmount(node) -> None:
    node.terminate()  # before its directory goes away under it
    subprocess.run(["umount", "-l", str(node.data_dir)], capture_output=True)


def _fill(node, leave_mb: int = 1):
    """Take all but `leave_mb` MB of the node's disk; return the filler to remove."""
    filler = node.data_dir / "filler"
    st = os.statvfs(node.data_dir)
    size = st.f_bavail * st.f_frsize - (leave_mb << 20)
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


def _insert(node, i) -> str:
    """'ok', or the error code the server answered with."""
    try:
        node.query("INSERT INTO t(id, v) VALUES (?, ?)", db=DB, params=[i, "x" * 500])
        return "ok"
    except ServerError as exc:
        return exc.code


def test_a_full_disk_on_the_principal_refuses_writes_clearly_and_they_resume_by_themselves(cluster, request):
    a, b = cluster["a"], cluster["b"]
    _small_disk(a, 48)
    request.addfinalizer(lambda: _unmount(a))
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a, DB)
    acked = {i for i in range(1, 51) if _insert(a, i) == "ok"}
    assert len(acked) == 50
    filler = _fill(a)
    answers = [_insert(a, 1000 + i) for i in range(10)]
    assert answers == ["disk_full"] * 10, answers
    assert a.query("SELECT count(*) FROM t", db=DB).rows == [[50]]  # reads and status keep answering
    assert a.status(DB)["role"] == "PRINCIPAL"
    filler.unlink()
    wait_for(lambda: _insert(a, 2000) == "ok" or None, 20, "writes accepted again once space is freed")
    wait_synchronized(cluster, DB, "a", "b")  # the mirror redone up to the principal's end of log
    assert ids_on(a, DB) == acked | {2000}


def test_a_full_disk_on_the_mirror_disconnects_it_and_it_catches_up_by_itself(cluster, request):
    a, b = cluster["a"], cluster["b"]
    _small_disk(b, 48)
    request.addfinalizer(lambda: _unmount(b))
    cluster.setup_session(DB, principal="a", mirror="b", witness="c")
    create_table(a, DB)
    wait_synchronized(cluster, DB, "a", "b")
    filler = _fill(b)
    acked, i = set(), 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (a.status(DB)["state"] == "DISCONNECTED" and len(acked) >= 50):
        i += 1
        if _insert(a, i) == "ok":  # exposed once the witness heard: acknowledged by the principal alone
            acked.add(i)
    principal = wait_for(lambda: (lambda r: r if "disk full" in (r["state_reason"] or "") else None)(a.status(DB)), 10,
                         "the principal saying why the mirror is disconnected")
    assert principal["state"] == "DISCONNECTED", principal
    assert b.status(DB)["role"] == "MIRROR"  # a mirror that cannot harden is no failover candidate
    assert len(acked) >= 50
    assert "disk full" in (b.status(DB)["state_reason"] or "")
    filler.unlink()
    wait_synchronized(cluster, DB, "a", "b", timeout=60)
    assert acked <= ids_on(a, DB)
    assert b.status(DB)["state_reason"] is None


def test_a_database_a_full_disk_kept_from_loading_loads_by_itself_once_there_is_room(cluster, request):
    a = cluster["a"]
    _small_disk(a, 48)
    request.addfinalizer(lambda: _unmount(a))
    a.query(f"CREATE DATABASE {DB}")
    create_table(a, DB)
    acked = {i for i in range(1, 21) if _insert(a, i) == "ok"}
    a.kill()  # its WAL not checkpointed: opening it needs room
    filler = _fill(a, leave_mb=0)
    a.start()
    row = a.status(DB)
    if row["status"] != "QUARANTINED":  # it found enough room after all: nothing to show here
        pytest.skip(f"the database loaded on a full disk ({row['status']}); the filler left room")
    assert "disk is full" in row["state_reason"] and "retried" in row["state_reason"], row
    with pytest.raises(ServerError) as info:
        a.query("SELECT 1", db=DB)
    assert "quarantined" in info.value.message and "loads by itself once there is room" in info.value.message
    filler.unlink()

    def loaded() -> bool:
        rows = [r for r in a.statuses() if r["database"] == DB]
        assert len(rows) == 1, rows  # QUARANTINED until the database is open, then its session's row: never both
        return rows[0]["status"] != "QUARANTINED"

    wait_for(loaded, 20, "the database loaded once there was room")
    assert ids_on(a, DB) == acked  # open once status says so: it answers at once
    assert "database_loaded_after_disk_full" in a.log_text() and a.tracebacks() == []


# ---------------------------------------------------------------- fencing

def test_a_manual_failover_whose_answer_is_lost_leaves_the_old_principal_not_serving_until_it_knows(cluster):
    """No witness: when the mirror's answer never comes, the mirror may be principal already."""
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b", timeout=2)
    create_table(a, DB)
    a.query("INSERT INTO t(id, v) VALUES (1, 'x')", db=DB)
    wait_synchronized(cluster, DB, "a", "b")
    b.freeze()  # it will receive FAILOVER only when thawed, and answer too late
    try:
        with pytest.raises(ServerError) as info:
            a.query(f"ALTER DATABASE {DB} SET PARTNER FAILOVER", timeout=60)
        assert "outcome is unknown" in info.value.message
        assert _insert(a, 2) in ("not_serving", "refused")  # not serving: it may no longer be the principal
        assert "outcome is unknown" in a.status(DB)["state_reason"]
    finally:
        b.thaw()
    # b may act on the FAILOVER it holds (then a steps down when it hears), or time the old
    # connection out first on waking (then a hears that b still follows it and serves again):
    # either way, one principal, serving, and the other its mirror
    principal = wait_for(lambda: next((n for n in (a, b) if _insert(n, 3) == "ok"), None), 30, "a principal serving after the thaw")
    other = b if principal is a else a
    assert (principal.status(DB)["role"], other.status(DB)["role"]) == ("PRINCIPAL", "MIRROR")
    assert ids_on(principal, DB) == {1, 3}
    assert principal.status(DB)["state_reason"] is None


# ---------------------------------------------------------------- either partner

def test_suspend_and_resume_on_the_mirror(cluster):
    a, b = cluster["a"], cluster["b"]
    cluster.setup_session(DB, principal="a", mirror="b")
    create_table(a, DB)
    wait_synchronized(cluster, DB, "a", "b")
    b.query(f"ALTER DATABASE {DB} SET PARTNER SUSPEND")
    wait_for(lambda: a.status(DB)["state"] == b.status(DB)["state"] == "SUSPENDED" or None, 10, "SUSPENDED on both")
    assert "SUSPEND on the mirror" in a.status(DB)["state_reason"]
    assert _insert(a, 1) == "ok"  # the principal goes on alone; the log grows
    b.query(f"ALTER DATABASE {DB} SET PARTNER RESUME")
    wait_synchronized(cluster, DB, "a", "b")
    assert a.status(DB)["state_reason"] is None


def test_partner_off_on_the_principal_reaches_a_mirror_that_was_away(cluster):
    a, b = cluster["a"], cluster["b"]
    for db in ("shop", "crm"):
        cluster.setup_session(db, principal="a", mirror="b")
        create_table(a, db)
        wait_synchronized(cluster, db, "a", "b")
    # connected: the mirror is told at once
    a.query("ALTER DATABASE shop SET PARTNER OFF")
    wait_for(lambda: b.status("shop")["role"] == "NONE" or None, 10, "shop ended on the mirror too")
    # away: told once it is back, even if the principal restarted meanwhile (the notice is persisted)
    b.kill()
    a.query("ALTER DATABASE crm SET PARTNER OFF")
    assert a.status("crm")["role"] == "NONE" and _insert(a, 1) == "ok"
    a.kill()
    a.start()
    b.start()
    wait_for(lambda: b.status("crm")["role"] == "NONE" or None, 30, "crm ended on the mirror after it came back")
    row = b.status("crm")
    assert row["partner"] is None and row["status"] == "RESTORING"  # the copy waits for RESTORE … WITH RECOVERY
    wait_for(lambda: "partner_off_told" in a.log_text() or None, 10, "the principal stops telling")
    assert a.tracebacks() == [] and b.tracebacks() == []


def test_partner_off_on_the_mirror_ends_the_session_on_both_now_or_at_the_next_hello(cluster):
    a, b = cluster["a"], cluster["b"]
    for db in ("shop", "crm"):
        cluster.setup_session(db, principal="a", mirror="b")
        create_table(a, db)
        wait_synchronized(cluster, db, "a", "b")
    # connected: the principal is told at once
    b.query("ALTER DATABASE shop SET PARTNER OFF")
    wait_for(lambda: a.status("shop")["role"] == "NONE" or None, 10, "shop standalone on the principal too")
    assert a.status("shop")["partner"] is None and _insert(a, 1) == "ok"
    # disconnected: told by the refusal of its next hello
    a.terminate()
    b.query("ALTER DATABASE crm SET PARTNER OFF")
    a.start()
    wait_for(lambda: a.status("crm")["role"] == "NONE" or None, 15, "crm standalone on the principal after its next hello")
    a.query("INSERT INTO t(id, v) VALUES (1, 'standalone')", db="crm")
