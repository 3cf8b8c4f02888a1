"""PageStore and RedoThread: apply order, file size, persisted redo LSN, resume, errors."""

from __future__ import annotations

import threading

import pytest

from mirrord.storage.log import DurableLog, LogRecord
from mirrord.localcluster import wait_for
from mirrord.storage.pagestore import PageStore, RedoThread, load_redo_lsn

PS = 512


def page(tag: int) -> bytes:
    return bytes([tag % 256]) * PS


def txn(lsn: int, db_size: int, pgnos: list[int]) -> LogRecord:
    return LogRecord(lsn, 1, db_size, PS, tuple((p, page(lsn * 10 + p)) for p in pgnos))


def expected_image(records: list[LogRecord]) -> bytes:
    """What the store must hold: a simple in-memory model of apply."""
    img = bytearray()
    for r in records:
        for pgno, data in r.pages:
            end = pgno * PS
            if len(img) < end:
                img.extend(bytes(end - len(img)))
            img[end - PS : end] = data
        img = img[: r.db_size * PS] + bytes(max(0, r.db_size * PS - len(img)))
    return bytes(img)


HISTORY = [txn(1, 3, [1, 2, 3]), txn(2, 3, [2]), txn(3, 6, [1, 6]), txn(4, 2, [2]), txn(5, 4, [4])]


def test_apply_writes_pages_and_sets_size(tmp_path):
    store = PageStore(tmp_path / "db")
    store.apply(HISTORY)
    store.sync()
    store.close()
    data = (tmp_path / "db").read_bytes()
    assert data == expected_image(HISTORY)
    assert len(data) == 4 * PS and data[2 * PS : 3 * PS] == bytes(PS)  # page 3 was cut, then regrown empty


def test_apply_is_idempotent(tmp_path):
    store = PageStore(tmp_path / "db")
    store.apply(HISTORY)
    store.apply(HISTORY[2:])  # a crash re-applies a batch: same result
    store.close()
    assert (tmp_path / "db").read_bytes() == expected_image(HISTORY)


@pytest.fixture
def parts(tmp_path):
    log = DurableLog(tmp_path / "log")
    store = PageStore(tmp_path / "db")
    yield tmp_path, log, store
    store.close()
    log.close()


def start_redo(tmp_path, log, store, **kw) -> RedoThread:
    redo = RedoThread(log, store, tmp_path / "redo_lsn", **kw)
    redo.start()
    return redo


def test_redo_applies_and_persists(parts):
    tmp_path, log, store = parts
    progress = []
    log.append(HISTORY)
    redo = start_redo(tmp_path, log, store, on_progress=progress.append)
    assert redo.redo_lsn == 0
    redo.notify(5)
    assert redo.wait_for(5, timeout=10)
    assert redo.redo_lsn == 5
    # persisted by itself within the persist interval, without a stop
    wait_for(lambda: load_redo_lsn(tmp_path / "redo_lsn") == 5, 10, "the redo LSN persisted")
    assert progress[-1] == 5
    assert (tmp_path / "db").read_bytes() == expected_image(HISTORY)
    redo.stop()
    redo.join(10)
    assert not redo.is_alive()


def test_redo_lsn_is_persisted_late_but_always_at_stop(parts):
    # Syncing the store and persisting the LSN wait for the persist interval (they
    # competed with hardening fsyncs); stop persists whatever was applied.
    tmp_path, log, store = parts
    log.append(HISTORY)
    redo = start_redo(tmp_path, log, store, persist_interval=3600)
    redo.notify(5)
    assert redo.wait_for(5, timeout=10)
    assert (tmp_path / "db").read_bytes() == expected_image(HISTORY)  # applied ...
    assert load_redo_lsn(tmp_path / "redo_lsn") == 0  # ... not yet persisted: a crash would re-apply
    redo.stop()
    redo.join(10)
    assert not redo.is_alive() and redo.error is None
    assert load_redo_lsn(tmp_path / "redo_lsn") == 5
    resumed = start_redo(tmp_path, log, store)
    assert resumed.redo_lsn == 5
    resumed.stop()
    resumed.join(10)


def test_redo_only_up_to_hardened(parts):
    tmp_path, log, store = parts
    log.append(HISTORY)
    redo = start_redo(tmp_path, log, store)
    redo.notify(2)
    assert redo.wait_for(2, timeout=10)
    assert not redo.wait_for(3, timeout=0.05)  # nothing hardened past 2
    assert redo.redo_lsn == 2
    assert (tmp_path / "db").read_bytes() == expected_image(HISTORY[:2])
    redo.stop()
    redo.join(10)


def test_small_batches_report_each_step(parts):
    tmp_path, log, store = parts
    log.append(HISTORY)
    progress = []
    redo = start_redo(tmp_path, log, store, on_progress=progress.append, batch_bytes=1)
    redo.notify(5)
    assert redo.wait_for(5, timeout=10)
    assert progress == [1, 2, 3, 4, 5]  # one record per batch
    redo.stop()
    redo.join(10)


def test_redo_resumes_from_persisted_lsn(parts):
    tmp_path, log, store = parts
    log.append(HISTORY[:3])
    redo = start_redo(tmp_path, log, store)
    redo.notify(3)
    assert redo.wait_for(3, timeout=10)
    redo.stop()
    redo.join(10)
    log.append(HISTORY[3:])
    applied = []
    redo = start_redo(tmp_path, log, store, on_progress=applied.append, batch_bytes=1)
    assert redo.redo_lsn == 3
    redo.notify(5)
    assert redo.wait_for(5, timeout=10)
    assert applied == [4, 5]  # nothing before the persisted LSN is redone
    assert (tmp_path / "db").read_bytes() == expected_image(HISTORY)
    redo.stop()
    redo.join(10)


def test_error_stops_redo_and_is_reported(parts):
    tmp_path, log, store = parts
    log.reset(10, epoch=1)  # records 1..9 are gone: redo from 0 cannot proceed
    log.append([txn(10, 1, [1])])
    failed = threading.Event()
    errors = []

    def on_error(exc):
        errors.append(exc)
        failed.set()

    redo = start_redo(tmp_path, log, store, on_error=on_error)
    redo.notify(10)
    assert failed.wait(10)
    assert not redo.wait_for(10, timeout=10)  # returns at once: the thread has exited
    redo.join(10)
    assert isinstance(errors[0], LookupError) and redo.redo_lsn == 0
    assert not (tmp_path / "redo_lsn").exists()


def test_stop_without_work(parts):
    tmp_path, log, store = parts
    redo = start_redo(tmp_path, log, store)
    redo.stop()
    redo.join(10)
    assert not redo.is_alive()
