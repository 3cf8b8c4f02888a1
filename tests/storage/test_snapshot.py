"""Database snapshots: copy-on-write saves before redo, reads as of creation, reopening after a restart."""

from __future__ import annotations

import shutil
import sqlite3
import threading

import pytest

from mirrord.core.snapshots import SnapshotMeta
from mirrord_testing.localcluster import wait_for
from mirrord.core.types import StatementRefused
from mirrord.storage.log import LogRecord
from mirrord.storage.pagestore import PageStore
from mirrord.storage.snapshot import META, DatabaseSnapshot, remove_all
from mirrord.storage.snapshot_reader import SnapshotReaders

PS = 4096


def _checkpointed(path, statements) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for sql in statements:
        conn.execute(sql)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for side in ("-wal", "-shm"):
        p = type(path)(str(path) + side)
        if p.exists():
            p.unlink()


def _record(lsn: int, before: bytes, after: bytes) -> LogRecord:
    """The redo record that turns a file `before` into `after`: every page that differs, and the new size."""
    pages = []
    for i in range(0, len(after), PS):
        if after[i:i + PS] != before[i:i + PS]:
            pages.append((i // PS + 1, after[i:i + PS]))
    return LogRecord(lsn, 1, len(after) // PS, PS, tuple(pages))


def _rows(conn) -> list:
    return [tuple(r) for r in conn.execute("SELECT id, v FROM t ORDER BY id")]


@pytest.fixture
def copy(tmp_path):
    """A mirror's copy (a checkpointed WAL database) with 300 rows, and the principal's file to change."""
    principal = tmp_path / "principal.sqlite"
    _checkpointed(principal, ["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
                              "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
                              "INSERT INTO t SELECT i, printf('row %d %s', i, hex(randomblob(40))) FROM n"])
    store_path = tmp_path / "db.sqlite"
    shutil.copyfile(principal, store_path)
    return principal, store_path


def _snapshot(tmp_path, store: PageStore, store_path, name="snap") -> DatabaseSnapshot:
    meta = SnapshotMeta(name=name, database="db", lsn=1, page_size=PS, page_count=store.page_count, created="now")
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    snap = DatabaseSnapshot.create(tmp_path / "snapshots" / name, meta, store_path)
    store.snapshots.append(snap)
    return snap


def _query(snap, sql="SELECT id, v FROM t ORDER BY id"):
    return [tuple(r) for r in SnapshotReaders.of(snap).run(sql, None)[1]]


def test_snapshot_reads_as_of_creation_while_redo_changes_the_copy(tmp_path, copy):
    principal, store_path = copy
    conn = sqlite3.connect(principal)
    before_rows = _rows(conn)
    conn.close()
    store = PageStore(store_path, tmp_path / "sums")
    snap = _snapshot(tmp_path, store, store_path)
    assert snap.pages_saved == 0  # creation copied nothing
    assert _query(snap) == before_rows

    old = principal.read_bytes()
    _checkpointed(principal, ["UPDATE t SET v = 'changed' WHERE id % 3 = 0", "DELETE FROM t WHERE id > 250",
                              "INSERT INTO t VALUES (1000, 'new')"])
    new = principal.read_bytes()
    store.apply([_record(2, old, new)])
    live = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    assert _rows(live) != before_rows and (1000, "new") in _rows(live)
    live.close()
    assert _query(snap) == before_rows
    assert 0 < snap.pages_saved <= snap.meta.page_count

    # a restart: the snapshot is opened from its files and still reads as of creation
    snap.close()
    again = DatabaseSnapshot.open(tmp_path / "snapshots" / "snap", store_path)
    assert again.pages_saved == snap.pages_saved
    assert _query(again) == before_rows
    again.close()
    store.close()


def test_a_shrinking_copy_saves_the_pages_it_cuts_off(tmp_path, copy):
    principal, store_path = copy
    conn = sqlite3.connect(principal)
    before_rows = _rows(conn)
    conn.close()
    store = PageStore(store_path, tmp_path / "sums")
    snap = _snapshot(tmp_path, store, store_path)
    old = principal.read_bytes()
    _checkpointed(principal, ["DELETE FROM t", "VACUUM"])
    new = principal.read_bytes()
    assert len(new) < len(old)
    store.apply([_record(2, old, new)])
    assert store.page_count < snap.meta.page_count
    assert _query(snap) == before_rows
    store.close()
    snap.close()


def test_a_snapshot_refuses_writes_and_attach(tmp_path, copy):
    _, store_path = copy
    store = PageStore(store_path, tmp_path / "sums")
    snap = _snapshot(tmp_path, store, store_path)
    with pytest.raises(StatementRefused, match="read-only"):
        _query(snap, "DELETE FROM t")
    with pytest.raises(StatementRefused, match="ATTACH"):
        _query(snap, f"ATTACH DATABASE '{store_path}' AS other")
    assert len(_query(snap)) > 0  # the pooled connection still answers
    store.close()
    snap.close()


def test_a_torn_last_entry_is_ignored_and_a_bad_meta_refused(tmp_path, copy):
    principal, store_path = copy
    store = PageStore(store_path, tmp_path / "sums")
    snap = _snapshot(tmp_path, store, store_path)
    old = principal.read_bytes()
    _checkpointed(principal, ["UPDATE t SET v = 'x' WHERE id = 1"])
    store.apply([_record(2, old, principal.read_bytes())])
    saved = snap.pages_saved
    snap.close()
    directory = tmp_path / "snapshots" / "snap"
    with open(directory / "saved", "ab") as f:
        f.write(b"\x00\x00")  # a crash half way through writing an entry
    assert DatabaseSnapshot.open(directory, store_path).pages_saved == saved
    (directory / META).write_text('{"name": "snap", "database": "db", "lsn": -1}')
    with pytest.raises(ValueError):
        DatabaseSnapshot.open(directory, store_path)
    assert remove_all(tmp_path / "snapshots") == ["snap"]
    assert not directory.exists()
    store.close()


def test_reads_during_redo_never_see_a_page_newer_than_creation(tmp_path, copy):
    """Redo rewrites pages over and over while a reader checks the snapshot's sum: it never moves."""
    principal, store_path = copy
    conn = sqlite3.connect(principal)
    expected = conn.execute("SELECT count(*), sum(length(v)), sum(id) FROM t").fetchone()
    conn.close()
    store = PageStore(store_path, tmp_path / "sums")
    snap = _snapshot(tmp_path, store, store_path)
    records, old = [], principal.read_bytes()
    for i in range(2, 12):
        _checkpointed(principal, [f"UPDATE t SET v = v || '{i}' WHERE id % 7 = {i % 7}", f"DELETE FROM t WHERE id = {i}"])
        new = principal.read_bytes()
        records.append(_record(i, old, new))
        old = new
    stop = threading.Event()
    seen = []

    def read() -> None:
        while not stop.is_set():
            seen.append(tuple(_query(snap, "SELECT count(*), sum(length(v)), sum(id) FROM t")[0]))

    reader = threading.Thread(target=read)
    reader.start()
    for record in records:
        store.apply([record])
    stop.set()
    reader.join()
    assert seen and set(seen) == {tuple(expected)}
    store.close()
    snap.close()


# ---------------------------------------------------------------- the mirror's snapshots (MirrorDatabase)


def _mirror(tmp_path, copy_path):
    from mirrord.core.session import Session, SessionConfig
    from mirrord.core.types import DatabaseStatus, Role
    from mirrord.engine.mirror import MirrorDatabase
    from mirrord.storage.log import DurableLog

    directory = tmp_path / "databases" / "db"
    directory.mkdir(parents=True)
    shutil.copyfile(copy_path, directory / "db.sqlite")
    log = DurableLog(directory / "log")
    log.reset(1, 1)
    session = Session(SessionConfig("db", role=Role.MIRROR, status=DatabaseStatus.RESTORING, partner="tcp://x:1"))
    mirror = MirrorDatabase(directory, session, log)
    mirror.start()
    return mirror


async def test_a_reseed_drops_the_snapshots_and_says_why(tmp_path, copy):
    import asyncio

    principal, _ = copy
    mirror = _mirror(tmp_path, principal)
    told = []
    mirror.on_snapshot_dropped = lambda name, why: told.append((name, why))
    mirror.create_snapshot("s1", "now")
    mirror.create_snapshot("s2", "now")
    assert sorted(mirror.snapshots) == ["s1", "s2"]
    seed = tmp_path / "seed.tmp"
    shutil.copyfile(principal, seed)
    await asyncio.to_thread(mirror.install_snapshot, seed, 7, 2, "the mirror was reseeded at LSN 7")
    await asyncio.sleep(0)  # the loop runs what the thread handed it
    assert mirror.snapshots == {} and not any(mirror.snapshots_dir.iterdir())
    assert sorted(told) == [("s1", "the mirror was reseeded at LSN 7"), ("s2", "the mirror was reseeded at LSN 7")]
    mirror.stop()


async def test_a_snapshot_that_cannot_save_is_dropped_and_redo_goes_on(tmp_path, copy, monkeypatch):
    import asyncio
    import errno

    principal, _ = copy
    mirror = _mirror(tmp_path, principal)
    told = []
    mirror.on_snapshot_dropped = lambda name, why: told.append((name, why))
    mirror.create_snapshot("full", "now")
    snap = mirror.snapshots["full"]

    def no_space(pages, read_live):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snap, "save", no_space)
    old = principal.read_bytes()
    _checkpointed(principal, ["UPDATE t SET v = 'x' WHERE id < 50"])
    mirror.log.append([_record(1, old, principal.read_bytes())])
    mirror.log.sync()
    mirror._redo.notify(1)
    assert await mirror.wait_redone(10)  # redo went on
    for _ in range(100):
        if told:
            break
        await asyncio.sleep(0.01)
    assert told and told[0][0] == "full" and "No space left" in told[0][1]
    assert "full" not in mirror.snapshots and not (mirror.snapshots_dir / "full").exists()
    mirror.stop()
    # a restart finds no snapshot to load
    mirror.start()
    assert mirror.snapshots == {}
    mirror.stop()


def test_dropping_a_snapshot_interrupts_its_running_query_and_refuses_new_ones(tmp_path, copy):
    from mirrord.storage.snapshot import SnapshotGone

    _, store_path = copy
    store = PageStore(store_path, tmp_path / "sums")
    snap = _snapshot(tmp_path, store, store_path)
    readers = SnapshotReaders.of(snap)
    failure = []
    started = threading.Event()

    def long_query() -> None:
        started.set()
        try:
            readers.run("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n, t", None)
        except SnapshotGone as exc:
            failure.append(exc)

    runner = threading.Thread(target=long_query)
    runner.start()
    started.wait(5)
    wait_for(lambda: bool(readers._busy), 5, "the query holding its connection")  # noqa: SLF001
    snap.remove("DROP DATABASE")
    runner.join(10)
    assert not runner.is_alive() and failure
    with pytest.raises(SnapshotGone):
        SnapshotReaders.of(snap)
    store.close()
