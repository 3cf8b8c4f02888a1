"""The mirror hardens what its principal sends, and redo applies it: now, or once the ack is written."""

from __future__ import annotations

import asyncio
import time

from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import DatabaseStatus, Role
from mirrord.engine.mirror import MirrorDatabase
from mirrord.storage.log import DurableLog, LogRecord
from mirrord.storage.pagestore import PageStore

PS = 4096


def record(lsn: int) -> LogRecord:
    return LogRecord(lsn, 1, 2, PS, ((1, bytes([lsn]) * PS), (2, bytes([lsn + 100]) * PS)))


async def _redone(mirror: MirrorDatabase, lsn: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while mirror.redo_lsn < lsn:
        assert time.monotonic() < deadline, f"redo stayed at {mirror.redo_lsn}, below {lsn}"
        await asyncio.sleep(0.01)


async def test_redo_waits_for_redo_hardened_when_asked_to_and_applies_everything_hardened_then(tmp_path):
    session = Session(SessionConfig("shop", role=Role.MIRROR, status=DatabaseStatus.RESTORING, partner="tcp://a:1"))
    log = DurableLog(tmp_path / "log", 64 << 10)
    mirror = MirrorDatabase(tmp_path, session, log, log_size_limit=1 << 30)
    PageStore(tmp_path / "db.sqlite").close()
    mirror.start()
    try:
        assert await mirror.harden([record(1), record(2)]) == 2  # redo_now, as everywhere but the link's reader
        await _redone(mirror, 2)
        assert await mirror.harden([record(3), record(4)], redo_now=False) == 4
        assert log.last_lsn == 4 and session.end_of_log_lsn == 4  # hardened and noted at once
        await asyncio.sleep(0.2)
        assert mirror.redo_lsn == 2, "redo ran ahead of the ack it was to follow"
        mirror.redo_hardened()
        await _redone(mirror, 4)
    finally:
        mirror.stop()
        log.close()
