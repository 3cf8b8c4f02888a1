"""The principal's own durability: acknowledged means synced here, and a lost WAL is rebuilt from the log.

A power cut is modelled by copying what is on disk except the WAL (never
fsynced on the commit path) — or only part of it — into a fresh directory and
opening a principal there, as a restart after the cut would.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from mirrord.core.quorum import AckRule
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import Role
from mirrord.engine.principal import PrincipalDatabase
from mirrord.storage.log import DurableLog


def _principal(directory: Path, segment_bytes: int = 16 << 20) -> PrincipalDatabase:
    directory.mkdir(parents=True, exist_ok=True)
    session = Session(SessionConfig(db="shop", role=Role.PRINCIPAL))
    return PrincipalDatabase(directory, session, DurableLog(directory / "log", segment_bytes), log_size_limit=1 << 30,
                             ack_rule=lambda: AckRule.LOCAL, quorum_refusal=lambda: None)


def _rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]


def _cut_power(src: Path, dest: Path, wal_bytes: int | None) -> None:
    """Copy src to dest as a power cut would leave it: the WAL lost (None) or cut to wal_bytes."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("db.sqlite-wal", "db.sqlite-shm"))
    wal = src / "db.sqlite-wal"
    if wal_bytes is not None and wal.exists():
        (dest / "db.sqlite-wal").write_bytes(wal.read_bytes()[:wal_bytes])


async def _write(p: PrincipalDatabase, ids) -> None:
    for i in ids:
        result = await p.execute(object(), "INSERT INTO t(id, v) VALUES (?, ?)", [i, "x" * 100])
        assert result.lsn is not None and result.lsn <= p.synced_lsn  # acknowledged only once synced here


async def test_acknowledged_commits_are_synced_and_grouped(tmp_path):
    p = _principal(tmp_path / "a")
    await p.open()
    try:
        await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
        import asyncio
        await asyncio.gather(*(_write(p, range(k * 100, k * 100 + 20)) for k in range(8)))
        # 1 + 160 commits at most: writes queued together share one (one record, a SAVEPOINT each)
        assert p.synced_lsn == p.end_lsn and 1 < p.end_lsn <= 161
        assert len((await p.execute(object(), "SELECT id FROM t", None)).rows) == 160
        assert p.visible_lsn == p.end_lsn
    finally:
        await p.close()


@pytest.mark.parametrize("wal_kept", [None, 0, 32 + 4120 * 3, "half"])
async def test_power_cut_rebuilds_the_file_from_the_synced_log(tmp_path, wal_kept):
    src = tmp_path / "a"
    p = _principal(src)
    await p.open()
    await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
    await _write(p, range(1, 301))
    wal = (src / "db.sqlite-wal").stat().st_size
    kept = wal // 2 if wal_kept == "half" else wal_kept
    _cut_power(src, tmp_path / "b", kept)
    await p.close()

    q = _principal(tmp_path / "b")
    await q.open()
    try:
        assert q.end_lsn == 301
        result = await q.execute(object(), "SELECT count(*), max(id) FROM t", None)
        assert result.rows == [[300, 300]]
        await _write(q, [1000])  # it goes on from there
        assert q.end_lsn == 302
    finally:
        await q.close()
    assert _rows(tmp_path / "b" / "db.sqlite") == [*range(1, 301), 1000]


async def test_power_cut_after_a_checkpoint_replays_only_what_follows(tmp_path, monkeypatch):
    import mirrord.engine.principal as principal_mod

    monkeypatch.setattr(principal_mod, "CHECKPOINT_FRAMES", 50)  # checkpoints under way, WAL restarted
    src = tmp_path / "a"
    p = _principal(src)
    await p.open()
    await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
    await _write(p, range(1, 181))
    assert 1 < p.applied_lsn < p.end_lsn
    applied = p.applied_lsn
    _cut_power(src, tmp_path / "b", None)
    await p.close()
    (tmp_path / "b" / "redo_lsn").write_text(str(applied))  # as persisted before the cut

    q = _principal(tmp_path / "b")
    await q.open()
    try:
        assert q.applied_lsn == q.end_lsn == 181
        assert (await q.execute(object(), "SELECT count(*) FROM t", None)).rows == [[180]]
    finally:
        await q.close()


async def test_a_log_that_no_longer_reaches_the_file_is_refused(tmp_path):
    src = tmp_path / "a"
    p = _principal(src, segment_bytes=1024)  # a segment per record: truncation can drop the first ones
    await p.open()
    await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
    await _write(p, range(1, 11))
    _cut_power(src, tmp_path / "b", None)
    await p.close()
    dlog = DurableLog(tmp_path / "b" / "log", 1024)
    dlog.truncate_before(5)
    dlog.close()
    q = _principal(tmp_path / "b", segment_bytes=1024)
    assert q.log.first_lsn == 5
    with pytest.raises(RuntimeError, match="cannot be rebuilt"):
        await q.open()


async def test_a_snapshot_is_exact_at_its_lsn_while_writes_go_on(tmp_path, monkeypatch):
    """Seeding and BACKUP copy without the write lock: commits during the copy are not in it, nor waited for."""
    import asyncio

    import mirrord.engine.principal as principal_mod

    monkeypatch.setattr(principal_mod, "CHECKPOINT_FRAMES", 40)  # the file is checkpointed now and then
    p = _principal(tmp_path / "a")
    await p.open()
    try:
        await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
        await _write(p, range(1, 101))
        writing = asyncio.ensure_future(_write(p, range(1000, 1200)))
        snaps = []
        for k in range(5):
            await asyncio.sleep(0)
            lsn, role_sequence = await p.snapshot_to(tmp_path / f"snap{k}.sqlite")
            snaps.append((k, lsn))
        await writing
        for k, lsn in snaps:
            conn = sqlite3.connect(tmp_path / f"snap{k}.sqlite")
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (lsn - 1,)  # LSN 1 created the table
            conn.close()
        assert any(101 < lsn < 301 for _, lsn in snaps), snaps  # taken while the writes went on
    finally:
        await p.close()


async def test_a_commit_the_full_disk_kept_out_of_the_log_is_logged_when_room_returns_and_hidden_until_then(tmp_path):
    import asyncio
    import errno

    from mirrord.core.types import DiskFull

    p = _principal(tmp_path / "a")
    await p.open()
    try:
        await p.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
        real_append, failing = p.log.append, [True]

        def append(records):
            if failing[0]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_append(records)

        p.log.append = append
        with pytest.raises(DiskFull, match="in doubt"):
            await p.execute(object(), "INSERT INTO t(id, v) VALUES (1, 'x')", None)
        with pytest.raises(DiskFull, match="reads wait"):  # SQLite has it, the log does not: nobody may see it
            await p.execute(object(), "SELECT count(*) FROM t", None)
        failing[0] = False  # room again: the retry logs it without any new write
        for _ in range(100):
            if not p._uncaptured:
                break
            await asyncio.sleep(0.05)
        assert p.end_lsn == 2
        assert (await p.execute(object(), "SELECT count(*) FROM t", None)).rows == [[1]]
    finally:
        await p.close()
