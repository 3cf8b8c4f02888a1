"""PageStore and RedoThread: apply order, file size, persisted redo LSN, resume, errors."""

from __future__ import annotations

import threading

import pytest

from mirrord.storage.log import DurableLog, LogRecord
from mirrord_testing.localcluster import wait_for
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
    log.reset(10, role_sequence=1)  # records 1..9 are gone: redo from 0 cannot proceed
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


# ---------------------------------------------------------------- page checksums and repair (automatic page repair)

from mirrord.core.page_repair import page_checksum  # noqa: E402


def header_page(tag: int) -> bytes:
    """Page 1 with a SQLite header naming page size PS (the store reads its page size there)."""
    return b"SQLite format 3\x00" + PS.to_bytes(2, "big") + bytes([tag % 256]) * (PS - 18)


def with_header(records: list[LogRecord]) -> list[LogRecord]:
    return [LogRecord(r.lsn, r.role_sequence, r.db_size, r.page_size,
                      tuple((p, header_page(r.lsn) if p == 1 else img) for p, img in r.pages)) for r in records]


HISTORY_H = with_header(HISTORY)


def checksums_of(data: bytes) -> bytes:
    return b"MPC1" + PS.to_bytes(4, "big") + b"".join(page_checksum(data[i:i + PS]).to_bytes(4, "little") for i in range(0, len(data), PS))


def test_the_store_keeps_a_checksum_of_every_page_redo_writes(tmp_path):
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    store.apply(HISTORY_H)  # grows, cuts, regrows a page without writing it
    store.sync()
    assert store.damaged(1, 100) == ([], 4)
    store.close()
    data = (tmp_path / "db").read_bytes()
    assert data == expected_image(HISTORY_H)
    assert (tmp_path / "sums").read_bytes() == checksums_of(data)


def test_a_damaged_page_is_found_and_a_repair_writes_page_and_checksum(tmp_path):
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    store.apply(HISTORY_H)
    good = (tmp_path / "db").read_bytes()[PS:2 * PS]
    with open(tmp_path / "db", "r+b") as f:  # what dd does
        f.seek(PS)
        f.write(b"\xff" * 100)
    assert store.damaged(1, 100) == ([2], 4)
    assert store.damaged(3, 100) == ([], 2) and store.damaged(5, 10) == ([], 0)
    assert store.repair(2, good) and store.damaged(1, 100) == ([], 4)
    assert not store.repair(9, good)  # past the end: nothing written
    assert (tmp_path / "db").stat().st_size == 4 * PS
    store.close()


def test_a_missing_or_short_checksum_map_is_rebuilt_from_the_store(tmp_path):
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    store.apply(HISTORY_H)
    store.close()
    (tmp_path / "sums").write_bytes(b"\x00" * 5)
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    assert store.damaged(1, 100) == ([], 4)
    store.close()
    assert (tmp_path / "sums").read_bytes() == checksums_of((tmp_path / "db").read_bytes())


def repaired_by(redo: RedoThread, lsn: int, pgno: int, image: bytes | None) -> str:
    outcome = []
    done = threading.Event()
    redo.repair(lsn, pgno, image, lambda p, o: (outcome.append((p, o)), done.set()))
    assert done.wait(10)
    assert outcome[0][0] == pgno
    return outcome[0][1]


def test_redo_writes_a_repair_at_its_lsn_unless_a_later_record_rewrote_the_page(tmp_path):
    log = DurableLog(tmp_path / "log")
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    records = with_header([txn(1, 3, [1, 2, 3]), txn(2, 3, [2]), txn(3, 3, [3]), txn(4, 3, [2])])
    log.append(records[:2])
    redo = start_redo(tmp_path, log, store)
    try:
        redo.notify(2)
        assert redo.wait_for(2, 10)
        with open(tmp_path / "db", "r+b") as f:  # pages 2 and 3 damaged
            f.seek(PS)
            f.write(b"\xee" * 2 * PS)
        assert store.damaged(1, 10)[0] == [2, 3]
        redo.mark_suspect([2, 3])
        # the principal's images are as of LSN 3: redo must reach it before they are written
        done: list = []
        redo.repair(3, 3, records[2].pages[0][1], lambda p, o: done.append((p, o)))
        assert not done and store.damaged(1, 10)[0] == [2, 3]  # not yet: redo is at 2
        log.append(records[2:])
        redo.notify(4)  # LSN 4 rewrites page 2 whole: a repair of it as of LSN 3 must not go over that
        wait_for(lambda: done, 10, "the repair of page 3 at LSN 3")
        assert done == [(3, "repaired")]
        assert repaired_by(redo, 3, 2, page(32)) == "rewritten"
        assert redo.redo_lsn == 4 and store.damaged(1, 10) == ([], 3)
        assert (tmp_path / "db").read_bytes() == expected_image(records)
        assert repaired_by(redo, 4, 9, None) == "gone"  # the database had no page 9 at LSN 4
    finally:
        redo.stop()
        redo.join()
        store.close()
        log.close()


def test_a_damaged_first_page_is_found_after_a_restart_the_map_names_the_page_size(tmp_path):
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    store.apply(HISTORY_H)
    store.sync()
    store.close()
    with open(tmp_path / "db", "r+b") as f:  # the SQLite header's page size is garbage now
        f.write(b"\xff" * PS)
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    assert store.page_size == PS and store.damaged(1, 100) == ([1], 4)
    store.close()


def test_a_second_image_of_a_page_never_goes_over_what_redo_wrote_after_it(tmp_path):
    log = DurableLog(tmp_path / "log")
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    records = with_header([txn(1, 3, [1, 2, 3]), txn(2, 3, [3]), txn(3, 3, [3]), txn(4, 3, [2])])
    log.append(records[:2])
    redo = start_redo(tmp_path, log, store)
    try:
        redo.notify(2)
        assert redo.wait_for(2, 10)
        redo.mark_suspect([2])
        done: list = []
        redo.repair(3, 2, records[0].pages[1][1], lambda p, o: done.append(o))  # asked again (a reconnect): waits for 3
        assert repaired_by(redo, 2, 2, records[0].pages[1][1]) == "repaired"  # the first answer, at redo's LSN
        log.append(records[2:])
        redo.notify(4)  # one batch: LSN 4 rewrites page 2 before the second image's turn comes
        wait_for(lambda: done, 10, "the second image's turn")
        assert done == ["rewritten"]
        assert (tmp_path / "db").read_bytes() == expected_image(records)
    finally:
        redo.stop()
        redo.join()
        store.close()
        log.close()


def test_a_stopping_redo_writes_the_images_it_reached_and_hands_back_the_others(tmp_path):
    log = DurableLog(tmp_path / "log")
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    records = with_header([txn(1, 3, [1, 2, 3]), txn(2, 3, [3])])
    log.append(records[:1])
    redo = start_redo(tmp_path, log, store)
    try:
        redo.notify(1)
        assert redo.wait_for(1, 10)
        good2, good3 = records[0].pages[1][1], records[0].pages[2][1]
        with open(tmp_path / "db", "r+b") as f:  # pages 2 and 3 damaged
            f.seek(PS)
            f.write(b"\xee" * 2 * PS)
        redo.mark_suspect([2, 3])
        done: list = []
        with redo._cond:  # both answers arrive at once: one at redo's LSN, one at an LSN redo never reaches
            redo._repairs += [(1, 2, good2, lambda p, o: done.append((p, o))),
                              (2, 3, good3, lambda p, o: done.append((p, o)))]
            redo._stopping = True  # the stop comes before redo's next turn (a seed, a promotion, a shutdown)
            redo._cond.notify_all()
        redo.join(10)
        assert not redo.is_alive()
        # the image redo had reached is written before the thread exits; the other is handed back, not lost
        assert sorted(done) == [(2, "repaired"), (3, "dropped")]
        assert store.damaged(1, 10)[0] == [3]
        late: list = []
        redo.repair(1, 3, good3, lambda p, o: late.append((p, o)))  # an answer after the exit: handed back at once
        assert late == [(3, "dropped")]
    finally:
        redo.stop()
        redo.join()
        store.close()
        log.close()
    # a new redo thread takes the page up again and writes it (what page_repair asks it for)
    log = DurableLog(tmp_path / "log")
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    redo = start_redo(tmp_path, log, store)
    try:
        redo.mark_suspect([3])
        assert repaired_by(redo, 1, 3, good3) == "repaired"
        assert store.damaged(1, 10) == ([], 3)
    finally:
        redo.stop()
        redo.join()
        store.close()
        log.close()


def test_a_failing_redo_hands_back_the_images_it_held(tmp_path):
    log = DurableLog(tmp_path / "log")
    store = PageStore(tmp_path / "db", tmp_path / "sums")
    log.append(with_header([txn(1, 2, [1, 2])]))
    redo = start_redo(tmp_path, log, store)
    try:
        assert redo.wait_for(0, 1)
        done: list = []
        redo.repair(5, 2, page(2), lambda p, o: done.append((p, o)))
        redo.notify(7)  # hardened past the log's end: redo finds no record at 2 and fails
        redo.join(10)
        assert not redo.is_alive() and redo.error is not None
        assert done == [(2, "dropped")]
    finally:
        store.close()
        log.close()
