"""The mirror's side of the redo queue limit: its redo queue in bytes, its log size limit, and the redo pace test hook."""

from __future__ import annotations

import asyncio
import time

import pytest

from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import DatabaseStatus, Role
from mirrord.engine.mirror import MirrorDatabase
from mirrord.storage.log import DurableLog, LogRecord
from mirrord.storage.pagestore import TEST_REDO_RATE_ENV, PageStore, RedoThread, redo_rate_cap

PS = 4096
PAGES = 16  # 64 KB a record


def record(lsn: int) -> LogRecord:
    return LogRecord(lsn, 1, PAGES, PS, tuple((p, bytes([lsn % 256]) * PS) for p in range(1, PAGES + 1)))


@pytest.mark.parametrize("text,rate", [("", 0), ("abc", 0), ("0", 0), ("-5", 0), ("1.5", 0), ("100", 100 * 1024)])
def test_the_redo_pace_hook_is_off_unless_set_to_a_positive_integer(monkeypatch, text, rate):
    monkeypatch.setenv(TEST_REDO_RATE_ENV, text)
    assert redo_rate_cap() == rate


def test_paced_redo_goes_no_faster_than_the_cap_and_stops_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_REDO_RATE_ENV, "1024")  # 1 MB/s: 8 records of 64 KB take at least 0.5 s
    log, store = DurableLog(tmp_path / "log"), PageStore(tmp_path / "db")
    log.append([record(lsn) for lsn in range(1, 9)])
    redo = RedoThread(log, store, tmp_path / "redo_lsn")
    started = time.monotonic()
    redo.start()
    redo.notify(8)
    assert redo.wait_for(8, timeout=10)
    assert time.monotonic() - started >= 8 * record(1).nbytes / (1024 * 1024) * 0.9
    log.append([record(lsn) for lsn in range(9, 200)])  # ~12 s of redo at the cap
    redo.notify(199)
    stopping = time.monotonic()
    redo.stop()
    redo.join(5)
    assert not redo.is_alive() and time.monotonic() - stopping < 2 and redo.redo_lsn < 199
    store.close()
    log.close()


async def test_redo_queue_bytes_and_the_mirror_log_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_REDO_RATE_ENV, "256")  # redo trails hardening
    session = Session(SessionConfig("shop", role=Role.MIRROR, status=DatabaseStatus.RESTORING, partner="tcp://a:1"))
    log = DurableLog(tmp_path / "log", 64 << 10)
    limit = 6 * record(1).nbytes
    mirror = MirrorDatabase(tmp_path, session, log, log_size_limit=limit)
    PageStore(tmp_path / "db.sqlite").close()
    mirror.start()
    try:
        assert mirror.redo_queue_bytes == 0 and mirror.log_full_refusal() is None
        await mirror.harden([record(lsn) for lsn in range(1, 9)])  # 8 records: over the limit of 6
        assert mirror.redo_queue_bytes == log.bytes_between(mirror.redo_lsn, 8) > 0
        why = mirror.log_full_refusal()
        assert why is not None and "the mirror's log is full" in why and "until redo catches up" in why
        assert log.last_lsn == 8  # nothing is dropped to make room
        # redo catches up: the log is cut to what redo has made durable, and takes log again
        deadline = time.monotonic() + 15
        while mirror.log_full_refusal() is not None:
            assert time.monotonic() < deadline, "the mirror's log never came under its limit"
            await asyncio.sleep(0.05)
        assert log.last_lsn == 8
    finally:
        mirror.stop()
        log.close()
