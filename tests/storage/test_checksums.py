"""Page digests of both copies: the principal's view (file + log past it) equals the page store after redo."""

from __future__ import annotations

import asyncio

import pytest

from mirrord.core.checkmirror import compare
from mirrord.storage.checksums import (Pacer, digest_file_apart, principal_digests, principal_digests_apart,
                                       store_digests, store_digests_apart)
from mirrord.storage.log import DurableLog, LogRecord
from mirrord.storage.pagestore import PageStore, RedoThread, apply_log_range

PS = 512


def page(pgno: int, tag: int) -> bytes:
    body = bytes([tag % 256]) * PS
    if pgno == 1:  # a SQLite header: the page size is read from it
        return (b"SQLite format 3\0" + PS.to_bytes(2, "big") + body)[:PS]
    return body


def txn(lsn: int, db_size: int, pgnos: list[int]) -> LogRecord:
    return LogRecord(lsn, 1, db_size, PS, tuple((p, page(p, lsn * 10 + p)) for p in pgnos))


HISTORY = [txn(1, 3, [1, 2, 3]), txn(2, 3, [2]), txn(3, 6, [1, 6]), txn(4, 5, [2, 5]), txn(5, 5, [4])]


def test_the_principals_view_at_any_lsn_equals_the_page_store_redone_to_it(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(HISTORY)
    base_file = tmp_path / "principal.sqlite"
    apply_log_range(base_file, log, 1, 2)  # the file as of a checkpoint at LSN 2
    for lsn in range(2, 6):
        mine = principal_digests(base_file, log, 2, lsn)
        store = tmp_path / f"store{lsn}.sqlite"
        apply_log_range(store, log, 1, lsn)
        theirs = store_digests(store, lsn)
        assert mine.page_count == HISTORY[lsn - 1].db_size
        assert compare("shop", mine, theirs).identical, lsn


def test_an_overwritten_page_of_the_store_is_found(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(HISTORY)
    store = tmp_path / "store.sqlite"
    apply_log_range(store, log, 1, 5)
    with open(store, "r+b") as f:
        f.seek(3 * PS + 100)  # page 4
        f.write(b"\xff" * 8)
    principal_file = tmp_path / "principal.sqlite"
    principal_file.touch()  # every page comes from the log
    v = compare("shop", principal_digests(principal_file, log, 0, 5), store_digests(store, 5))
    assert v.differing == (4,)


def test_redo_held_at_an_lsn_goes_no_further_until_released(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(HISTORY)
    store = PageStore(tmp_path / "store.sqlite")
    redo = RedoThread(log, store, tmp_path / "redo_lsn")
    first = redo.hold_at(3)
    redo.start()
    try:
        redo.notify(5)
        assert redo.wait_for(3, 10)
        assert not redo.wait_for(4, 0.2) and redo.redo_lsn == 3  # held: the store stays at LSN 3
        (tmp_path / "principal.sqlite").touch()
        assert compare("shop", principal_digests(tmp_path / "principal.sqlite", log, 0, 3), store_digests(store.path, 3)).identical
        second = redo.hold_at(4)
        redo.release(first)  # the other check's hold stands
        assert redo.wait_for(4, 10) and not redo.wait_for(5, 0.2) and redo.redo_lsn == 4
        redo.release(first)  # twice: harmless
        redo.release(second)
        assert redo.wait_for(5, 10) and redo.redo_lsn == 5
    finally:
        redo.stop()
        redo.join()
        store.close()


def test_the_pacer_keeps_the_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    pacer = Pacer(2, clock=lambda: now[0], sleep=sleep)  # 2 MB/s
    pacer.spent(1_000_000)
    assert slept == [0.5]
    now[0] += 1.0  # the next MB took a second by itself: no wait
    pacer.spent(1_000_000)
    assert slept == [0.5]
    unlimited = Pacer(0, clock=lambda: now[0], sleep=sleep)
    unlimited.spent(10**9)
    assert slept == [0.5]


def test_hashing_in_a_child_process_gives_the_same_digests(tmp_path):
    log = DurableLog(tmp_path / "log")
    log.append(HISTORY)
    base_file = tmp_path / "principal.sqlite"
    apply_log_range(base_file, log, 1, 2)
    store = tmp_path / "store.sqlite"
    apply_log_range(store, log, 1, 5)
    assert asyncio.run(principal_digests_apart(base_file, log, 2, 5)) == principal_digests(base_file, log, 2, 5)
    assert asyncio.run(store_digests_apart(store, 5)) == store_digests(store, 5)


def test_a_child_that_fails_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="hashing missing.sqlite failed: checksums: .*No such file"):
        asyncio.run(digest_file_apart(tmp_path / "missing.sqlite", 512, 3, 0))


def test_the_principals_pages_at_an_lsn_are_the_page_store_redone_to_it(tmp_path):
    from mirrord.storage.checksums import page_images_at

    log = DurableLog(tmp_path / "log")
    log.append(HISTORY)
    base_file = tmp_path / "principal.sqlite"
    apply_log_range(base_file, log, 1, 2)  # the file as of a checkpoint at LSN 2
    for lsn in range(2, 6):
        store = tmp_path / f"store{lsn}.sqlite"
        apply_log_range(store, log, 1, lsn)
        data = store.read_bytes()
        size, images = page_images_at(base_file, log, 2, lsn, [6, 2, 4, 1, 9])
        expected = [(p, data[(p - 1) * PS:p * PS]) for p in (1, 2, 4, 6) if p <= HISTORY[lsn - 1].db_size]
        assert size == PS and images == expected, lsn  # past the size at lsn (page 9; page 6 after LSN 4): left out


def test_the_last_image_of_a_page_at_or_before_an_lsn_is_the_logs_last_one(tmp_path):
    from mirrord.storage.checksums import last_image

    size = 512
    log = DurableLog(tmp_path / "log", 2048)  # small segments: truncation drops whole old ones
    log.append([LogRecord(lsn, 1, 3, size, ((1 if lsn % 3 == 0 else 2, bytes([lsn]) * size),)) for lsn in range(1, 31)])
    assert last_image(log, 1, 10) == (9, bytes([9]) * size)
    assert last_image(log, 1, 30) == (30, bytes([30]) * size)
    assert last_image(log, 3, 30) is None  # no image of it at all
    log.truncate_before(25)
    first = log.first_lsn
    assert 1 < first <= 25
    assert last_image(log, 1, 30) == (30, bytes([30]) * size)
    assert last_image(log, 1, first - 1) is None  # the log no longer reaches back there
    log.close()
