"""The power-cut file system, mounted for real: what was synced survives a cut, nothing else does."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from mirrord_testing.nemesis.lazyfs import LazyFS, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"lazyfs cannot run here: {REASON}")


@pytest.fixture
def fs(tmp_path):
    lazy = LazyFS(tmp_path / "disk", tmp_path / "mnt")
    lazy.mount()
    try:
        yield lazy
    finally:
        lazy.unmount()
    assert not os.path.ismount(tmp_path / "mnt")


def write(path, data: bytes, sync: bool = False, mode: str = "ab") -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def test_fsynced_bytes_survive_and_unsynced_ones_do_not(fs):
    path = fs.mount_point / "f"
    write(path, b"durable", sync=True)
    write(path, b" and lost")
    assert path.read_bytes() == b"durable and lost"
    assert (fs.backing / "f").read_bytes() == b"durable"  # the disk holds only what was synced
    assert fs.report()["files_unsynced"] == 1
    dropped = fs.power_cut()
    assert dropped["files_unsynced"] == 1 and dropped["bytes_unsynced"] > 0
    assert path.read_bytes() == b"durable"
    assert fs.report() == {"files_unsynced": 0, "bytes_unsynced": 0, "writes_unsynced": 0, "syncs": 0, "cut": False,
                           "full": False}


def test_fdatasync_counts_and_a_sync_covers_only_its_own_file(fs):
    a, b = fs.mount_point / "a", fs.mount_point / "b"
    with open(a, "wb") as fa, open(b, "wb") as fb:
        fa.write(b"a1")
        fb.write(b"b1")
        fa.flush()
        fb.flush()
        os.fdatasync(fa.fileno())
        fa.write(b"a2")
        fa.flush()
    fs.power_cut()
    assert a.read_bytes() == b"a1"
    assert b.read_bytes() == b""  # created (metadata is durable at once), its content never synced


def test_overwrite_in_the_middle_is_undone_by_a_cut(fs):
    path = fs.mount_point / "f"
    write(path, b"0123456789" * 1000, sync=True, mode="wb")
    with open(path, "r+b") as f:
        f.seek(4095)
        f.write(b"XX")
    assert path.read_bytes()[4094:4098] == b"4XX7"
    fs.power_cut()
    assert path.read_bytes() == b"0123456789" * 1000


def test_unsynced_truncate_is_undone_and_a_synced_one_is_kept(fs):
    path = fs.mount_point / "f"
    write(path, b"x" * 10000, sync=True, mode="wb")
    os.truncate(path, 100)
    assert path.stat().st_size == 100
    fs.power_cut()
    assert path.read_bytes() == b"x" * 10000
    with open(path, "r+b") as f:
        f.truncate(100)
        f.seek(5000)
        f.write(b"y")  # the hole between reads as zeros, not as the old x's
        f.flush()
        os.fsync(f.fileno())
    fs.power_cut()
    assert path.read_bytes() == b"x" * 100 + bytes(4900) + b"y"


def test_rename_and_unlink_apply_at_once(fs):
    tmp, final = fs.mount_point / "meta.tmp", fs.mount_point / "meta"
    write(tmp, b"v1", sync=True, mode="wb")
    os.rename(tmp, final)
    write(fs.mount_point / "gone", b"bye", sync=True)
    os.unlink(fs.mount_point / "gone")
    fs.power_cut()
    assert final.read_bytes() == b"v1" and not tmp.exists()
    assert not (fs.mount_point / "gone").exists()


def test_unknown_control_command_is_refused(fs):
    with pytest.raises(RuntimeError, match="unknown command"):
        fs._command("format")
    assert fs.report()["cut"] is False


SQLITE_CHILD = textwrap.dedent("""
    import os, sqlite3, sys
    path, start, count, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(start, start + count):
        con.execute("INSERT INTO t VALUES (?, ?)", (i, "v" * 200))
    print("committed", con.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    os._exit(0)  # no close: a crash, so no checkpoint on the way out
""")


def sqlite_child(path, start, count, sync) -> int:
    """Commit rows start.. in a child process that then dies without closing; the rows it then counted."""
    out = subprocess.run([sys.executable, "-c", SQLITE_CHILD, str(path), str(start), str(count), sync],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "committed" in out.stdout, out.stderr
    return int(out.stdout.split()[1])


def test_sqlite_wal_synchronous_full_survives_and_normal_loses_the_tail(fs):
    db = fs.mount_point / "db.sqlite"
    assert sqlite_child(db, 1, 200, "FULL") == 200  # WAL + FULL: every commit fsyncs the WAL
    # WAL + NORMAL: commits fsync nothing until a checkpoint; a second process reading the
    # first one's WAL through the mmap'd -shm shows shared maps work on the mount
    assert sqlite_child(db, 201, 50, "NORMAL") == 250
    assert fs.report()["files_unsynced"] >= 1
    fs.power_cut()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = {row[0] for row in con.execute("SELECT id FROM t")}
    finally:
        con.close()
    assert set(range(1, 201)) <= ids, "a commit made under synchronous=FULL was lost"
    assert ids < set(range(1, 251)), "the unsynced NORMAL commits survived the cut"


def test_a_deep_directory_still_gets_a_control_socket(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    lazy = LazyFS(deep / "disk", deep / "mnt")
    assert len(str(lazy.control)) <= 100
    lazy.mount()
    try:
        assert lazy.report()["cut"] is False
    finally:
        lazy.unmount()
    assert not lazy.control.exists()


def test_a_full_disk_refuses_growth_but_not_overwrites_and_gets_space_back(fs):
    import errno

    path = fs.mount_point / "f"
    write(path, b"0123456789", sync=True)
    assert fs.fill()["full"] is True
    assert os.statvfs(fs.mount_point).f_bavail == 0
    with pytest.raises(OSError) as grow:
        write(path, b"more")
    assert grow.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as create:
        write(fs.mount_point / "new", b"x")
    assert create.value.errno == errno.ENOSPC
    with open(path, "r+b") as f:  # in place: no new blocks needed
        f.write(b"ab")
    assert path.read_bytes() == b"ab23456789"
    fs.make_space()
    write(path, b"more", sync=True)
    assert path.read_bytes() == b"ab23456789more"
    assert os.statvfs(fs.mount_point).f_bavail > 0
