"""DurableLog: append/read, restart, torn tails, segments, truncation, reset, wire validation."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrord.core.types import ProtocolError
from mirrord.storage.log import MAX_PAGE_COUNT, ZERO_STEP, DurableLog, LogRecord

PS = 512


def rec(lsn: int, role_sequence: int = 1, npages: int = 1, wal: dict | None = None) -> LogRecord:
    pages = tuple((p, bytes([(lsn + p) % 256]) * PS) for p in range(1, npages + 1))
    return LogRecord(lsn, role_sequence, max(npages, 1), PS, pages, wal)


def recs(first: int, last: int, **kw) -> list[LogRecord]:
    return [rec(n, **kw) for n in range(first, last + 1)]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


def test_empty_log(logdir):
    log = DurableLog(logdir)
    assert (log.first_lsn, log.last_lsn, log.last_role_sequence, log.size_bytes) == (0, 0, 0, 0)
    assert log.get(1) is None and log.read_from(1, 1 << 20) == [] and log.role_sequence_at(1) is None
    assert log.bytes_between(0, 10) == 0


def test_append_get_read_bytes_between(logdir):
    log = DurableLog(logdir)
    records = recs(1, 10, npages=2)
    log.append(records[:4])
    log.append(records[4:])
    assert (log.first_lsn, log.last_lsn, log.last_role_sequence) == (1, 10, 1)
    assert log.get(5) == records[4]
    assert log.read_from(3, 1 << 30) == records[2:]
    one = records[0].nbytes
    assert log.read_from(3, 3 * one) == records[2:5]
    assert log.read_from(3, 0) == records[2:3]  # at least one
    assert log.read_from(11, 100) == []
    assert log.bytes_between(2, 5) == 3 * one
    assert log.bytes_between(0, 100) == 10 * one
    assert log.role_sequence_at(7) == 1


def test_append_must_be_contiguous(logdir):
    log = DurableLog(logdir)
    log.append(recs(1, 3))
    with pytest.raises(ValueError):
        log.append([rec(5)])
    with pytest.raises(ValueError):
        log.append([rec(4), rec(6)])
    assert log.last_lsn == 3


def test_wal_position_kept_locally(logdir):
    log = DurableLog(logdir)
    log.append([rec(1, wal={"salt1": 1, "frame_count": 3})])
    log.close()
    again = DurableLog(logdir)
    assert again.get(1).wal == {"salt1": 1, "frame_count": 3}
    assert len(again.get(1).to_wire()) == 5  # never on the wire


def test_reopen_keeps_everything(logdir):
    log = DurableLog(logdir, segment_bytes=4 * PS)
    records = recs(1, 25, role_sequence=3)
    log.append(records)
    log.sync()
    size = log.size_bytes
    log.close()
    log = DurableLog(logdir, segment_bytes=4 * PS)
    assert (log.first_lsn, log.last_lsn, log.last_role_sequence, log.size_bytes) == (1, 25, 3, size)
    assert log.read_from(1, 1 << 30) == records
    log.append([rec(26, role_sequence=4)])
    assert log.last_role_sequence == 4 and log.role_sequence_at(25) == 3


def test_segment_rollover(logdir):
    log = DurableLog(logdir, segment_bytes=3 * PS)
    log.append(recs(1, 20))
    files = segment_files(logdir)
    assert len(files) > 3
    assert files[0].name.startswith(f"{1:020d}.")
    assert log.read_from(1, 1 << 30) == recs(1, 20)


def test_torn_tail_is_end_of_log(logdir):
    log = DurableLog(logdir)
    log.append(recs(1, 5))
    log.close()
    seg = segment_files(logdir)[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - 100])  # record 5 cut mid-write
    log = DurableLog(logdir)
    assert log.last_lsn == 4
    assert seg.stat().st_size < len(data) - 100  # torn bytes are cut off
    log.append([rec(5)])  # and the log goes on from there
    log.close()
    assert DurableLog(logdir).read_from(1, 1 << 30) == recs(1, 5)


@pytest.mark.parametrize("garbage", [b"\xff" * 40, b"\x10\x00\x00\x00junkjunkjunkjunk", b"\x00" * 8 + b"\x01"])
def test_garbage_after_tail_is_end_of_log(logdir, garbage):
    log = DurableLog(logdir)
    log.append(recs(1, 3))
    log.close()
    seg = segment_files(logdir)[-1]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(garbage)
    log = DurableLog(logdir)
    assert log.last_lsn == 3 and seg.stat().st_size == size


@pytest.mark.parametrize("zeros", [3, 64, 5000])
def test_zeros_after_tail_are_zeros_ahead_and_kept(logdir, zeros):
    log = DurableLog(logdir)
    log.append(recs(1, 3))
    log.close()
    seg = segment_files(logdir)[-1]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(zeros))
    log = DurableLog(logdir)
    assert log.last_lsn == 3 and seg.stat().st_size == size + zeros  # not cut: the next append writes into them
    log.append(recs(4, 5))
    log.sync()
    assert DurableLog(logdir).read_from(1, 1 << 30) == recs(1, 5)


def test_corrupt_record_in_last_segment(logdir):
    log = DurableLog(logdir)
    log.append(recs(1, 4))
    log.close()
    seg = segment_files(logdir)[-1]
    data = bytearray(seg.read_bytes())
    one = len(data) // 4
    data[2 * one + 50] ^= 0xFF  # record 3's payload
    seg.write_bytes(bytes(data))
    assert DurableLog(logdir).last_lsn == 2


def test_a_crash_leaves_zeros_ahead_of_the_records_and_loses_nothing(logdir):
    log = DurableLog(logdir)
    log.append(recs(1, 5))
    log.sync()
    [seg] = segment_files(logdir)
    data = seg.read_bytes()
    assert len(data) == ZERO_STEP and data[log.size_bytes:] == bytes(ZERO_STEP - log.size_bytes)
    again = DurableLog(logdir)  # opened as after a kill: no close
    assert again.read_from(1, 1 << 30) == recs(1, 5)
    again.append(recs(6, 8))
    size = again.size_bytes
    again.close()
    assert seg.stat().st_size == size  # a clean close leaves no zeros
    assert DurableLog(logdir).read_from(1, 1 << 30) == recs(1, 8)


def test_zeros_ahead_in_an_earlier_segment_do_not_end_the_log(logdir):
    log = DurableLog(logdir, segment_bytes=3 * PS)
    log.append(recs(1, 12))
    log.sync()
    files = segment_files(logdir)
    assert len(files) > 2
    with open(files[0], "ab") as f:  # zeros after an earlier segment's records: not a torn write
        f.write(bytes(100))
    assert DurableLog(logdir, segment_bytes=3 * PS).read_from(1, 1 << 30) == recs(1, 12)


def test_a_lost_write_before_a_kept_one_ends_the_log_there(logdir):
    """A power cut can keep a later page of the file and lose an earlier one: the log ends at the hole."""
    log = DurableLog(logdir)
    log.append(recs(1, 3))
    log.sync()
    [seg] = segment_files(logdir)
    one = recs(1, 1)[0]
    size = log.size_bytes // 3  # records of one size
    with open(seg, "r+b") as f:
        f.seek(size)
        f.write(bytes(size))  # record 2 never reached the disk; record 3 did
    again = DurableLog(logdir)
    assert again.last_lsn == 1 and again.get(1) == one
    assert seg.stat().st_size == size  # record 3's bytes are cut off, not left behind the zeros
    again.append(recs(2, 2))
    assert DurableLog(logdir).read_from(1, 1 << 30) == recs(1, 2)


def test_records_cut_by_truncate_after_do_not_come_back_after_a_crash(logdir):
    log = DurableLog(logdir)
    log.append([rec(n, npages=3) for n in range(1, 6)])
    log.truncate_after(2)
    log.append(recs(3, 3))  # shorter than the records it replaces
    log.sync()
    assert DurableLog(logdir).read_from(1, 1 << 30) == [rec(1, npages=3), rec(2, npages=3), rec(3)]


def test_truncate_before(logdir):
    log = DurableLog(logdir, segment_bytes=3 * PS)
    log.append(recs(1, 20))
    log.truncate_before(10)
    first = log.first_lsn
    assert 1 < first <= 10
    assert log.get(10) == rec(10) and log.get(first - 1) is None
    with pytest.raises(LookupError):
        log.read_from(first - 1, 1 << 20)
    assert log.bytes_between(0, 20) == (20 - first + 1) * rec(1).nbytes
    log.truncate_before(1000)  # never the active segment
    assert log.last_lsn == 20 and log.get(20) == rec(20)
    log.close()
    log = DurableLog(logdir, segment_bytes=3 * PS)
    assert log.last_lsn == 20 and log.first_lsn > first


def test_truncate_after(logdir):
    log = DurableLog(logdir, segment_bytes=3 * PS)
    log.append(recs(1, 20, role_sequence=2))
    log.truncate_after(8)
    assert log.last_lsn == 8 and log.get(9) is None
    log.append(recs(9, 12, role_sequence=3))  # a new fork
    log.close()
    log = DurableLog(logdir, segment_bytes=3 * PS)
    assert log.last_lsn == 12 and log.role_sequence_at(8) == 2 and log.role_sequence_at(9) == 3
    assert log.read_from(1, 1 << 30) == recs(1, 8, role_sequence=2) + recs(9, 12, role_sequence=3)


def test_reset_survives_restart(logdir):
    log = DurableLog(logdir)
    log.append(recs(1, 5))
    log.reset(101, role_sequence=7)
    assert (log.first_lsn, log.last_lsn, log.last_role_sequence) == (0, 100, 7)
    assert segment_files(logdir) == []
    log.close()
    log = DurableLog(logdir)
    assert (log.first_lsn, log.last_lsn, log.last_role_sequence) == (0, 100, 7)
    assert log.role_sequence_at(100) == 7
    with pytest.raises(ValueError):
        log.append([rec(1)])
    log.append(recs(101, 103, role_sequence=7))
    log.close()
    log = DurableLog(logdir)
    assert (log.first_lsn, log.last_lsn) == (101, 103)


def test_a_reset_point_written_before_the_role_sequence_had_one_name_is_read(logdir):
    log = DurableLog(logdir)
    log.reset(101, role_sequence=7)
    log.close()
    base = json.loads((logdir / "base.json").read_text())
    base["epoch"] = base.pop("role_sequence")
    (logdir / "base.json").write_text(json.dumps(base))
    log = DurableLog(logdir)
    assert (log.last_lsn, log.last_role_sequence, log.role_sequence_at(100)) == (100, 7, 7)


def test_interrupted_reset_leftovers_are_ignored(logdir):
    log = DurableLog(logdir)
    log.append(recs(1, 5))
    log.close()
    stale = segment_files(logdir)[0].read_bytes()
    log = DurableLog(logdir)
    log.reset(3, role_sequence=2)
    log.close()
    (logdir / f"{1:020d}.0.seg").write_bytes(stale)  # as if the delete never reached the disk
    log = DurableLog(logdir)
    assert (log.first_lsn, log.last_lsn, log.last_role_sequence) == (0, 2, 2)


def test_concurrent_append_and_read(logdir):
    log = DurableLog(logdir, segment_bytes=8 * PS)
    done = threading.Event()
    errors = []

    def reader():
        try:
            while not done.is_set():
                last = log.last_lsn
                if last:
                    got = log.read_from(1, 1 << 30)
                    assert [r.lsn for r in got[:last]] == list(range(1, last + 1))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for n in range(1, 200):
        log.append([rec(n)])
    done.set()
    t.join()
    assert errors == []


# --- wire validation ---------------------------------------------------------------


def test_wire_roundtrip():
    r = rec(7, role_sequence=2, npages=3, wal={"x": 1})
    back = LogRecord.from_wire(r.to_wire())
    assert back == LogRecord(7, 2, 3, PS, r.pages, None)


GOOD = [1, 0, 1, PS, [[1, b"\x00" * PS]]]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [1, 0, 1, PS],
        ["1", 0, 1, PS, []],
        [0, 0, 1, PS, []],
        [1, -1, 1, PS, []],
        [1, 0, 0, PS, []],
        [1, 0, 1, 1000, []],
        [1, 0, 1, 256, []],
        [1, 0, 1, 131072, []],
        [1, 0, 1, PS, "pages"],
        [1, 0, 1, PS, [[0, b"\x00" * PS]]],
        [1, 0, 1, PS, [[1.0, b"\x00" * PS]]],
        [1, 0, 1, PS, [[1, b"\x00" * (PS - 1)]]],
        [1, 0, 1, PS, [[1, "x" * PS]]],
        [1, 0, 1, PS, [[1]]],
        [1, 0, 1, PS, [[1, b"\x00" * PS], [1, b"\x01" * PS]]],
        [True, 0, 1, PS, []],
        [1, 0, 1, PS, [[2, b"\x00" * PS]]],  # past db_size
        [1, 0, 2**40, PS, [[2**40, b"\x00" * PS]]],  # past SQLite's maximum page count
        [1, 0, 1, PS, [[2**40, b"\x00" * PS]]],
        [1, 0, MAX_PAGE_COUNT + 1, PS, []],
        [1, 0, 1, PS, [[2**64, b"\x00" * PS]]],
    ],
)
def test_from_wire_rejects(bad):
    LogRecord.from_wire(GOOD)
    with pytest.raises(ProtocolError):
        LogRecord.from_wire(bad)


def test_bounds_at_the_limits():
    top = LogRecord.from_wire([1, 0, MAX_PAGE_COUNT, PS, [[MAX_PAGE_COUNT, b"\x00" * PS]]])
    assert top.pages[0][0] == MAX_PAGE_COUNT


def test_own_log_tolerates_pages_past_db_size():
    """Records this node wrote before the db_size rule may carry pages redo truncates away."""
    old = [1, 0, 1, PS, [[2, b"\x00" * PS]]]
    assert LogRecord.from_wire(old, strict=False).pages[0][0] == 2
    with pytest.raises(ProtocolError):
        LogRecord.from_wire([1, 0, 1, PS, [[MAX_PAGE_COUNT + 1, b"\x00" * PS]]], strict=False)


# --- property: the log behaves like a list across reopen ------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6), st.integers(0, 3)),
        st.tuples(st.just("reopen")),
        st.tuples(st.just("crash")),
        st.tuples(st.just("truncate_before"), st.integers(0, 40)),
        st.tuples(st.just("truncate_after"), st.integers(0, 40)),
        st.tuples(st.just("reset"), st.integers(1, 40), st.integers(0, 5)),
    ),
    max_size=12,
)


class Model:
    def __init__(self):
        self.records: dict[int, LogRecord] = {}
        self.next, self.base_role_sequence = 1, 0

    def check(self, log: DurableLog):
        assert log.last_lsn == self.next - 1
        if self.records:
            assert log.first_lsn >= min(self.records)
            assert log.last_role_sequence == self.records[self.next - 1].role_sequence
            kept = [self.records[n] for n in range(log.first_lsn, self.next)]
            assert log.read_from(log.first_lsn, 1 << 30) == kept
        else:
            assert log.first_lsn == 0 and log.last_role_sequence == self.base_role_sequence


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_log_model(ops_list):
    with tempfile.TemporaryDirectory() as d:
        log, model = DurableLog(Path(d), segment_bytes=2 * PS), Model()
        for op in ops_list:
            log = apply_op(log, model, op, Path(d))
            model.check(log)
        log.close()


def apply_op(log: DurableLog, model: Model, op: tuple, d: Path) -> DurableLog:
    kind = op[0]
    if kind == "append":
        new = [rec(model.next + i, role_sequence=op[2]) for i in range(op[1])]
        log.append(new)
        model.records.update((r.lsn, r) for r in new)
        model.next += op[1]
    elif kind in ("reopen", "crash"):
        if kind == "reopen":
            log.close()
        else:  # killed: no clean close, the zeros written ahead stay in the files
            log.sync()
        log = DurableLog(d, segment_bytes=2 * PS)
        model.records = {n: r for n, r in model.records.items() if n >= (log.first_lsn or model.next)}
    elif kind == "truncate_before":
        log.truncate_before(op[1])
        assert log.first_lsn == 0 or log.first_lsn <= max(op[1], min(model.records))
        model.records = {n: r for n, r in model.records.items() if n >= (log.first_lsn or model.next)}
    elif kind == "truncate_after":
        if op[1] < model.next - 1:
            log.truncate_after(op[1])
            if model.records and op[1] < min(model.records):
                model.records, model.next = {}, op[1] + 1
            else:
                model.records = {n: r for n, r in model.records.items() if n <= op[1]}
                model.next = op[1] + 1
    else:
        log.reset(op[1], op[2])
        model.records, model.next, model.base_role_sequence = {}, op[1], op[2]
    return log


def test_an_append_that_runs_out_of_space_is_undone_whole(tmp_path, monkeypatch):
    """All or nothing: a capture of several transactions never leaves half of them in the log."""
    import errno as _errno

    from mirrord.storage import log as log_mod

    dlog = DurableLog(tmp_path / "log", segment_bytes=6000)
    dlog.append([LogRecord(1, 1, 1, 4096, ((1, b"a" * 4096),))])
    real, calls = os.pwrite, []

    def failing(fd, data, offset):
        calls.append(1)
        if len(calls) >= 2:
            raise OSError(_errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(log_mod.os, "pwrite", failing)
    batch = [LogRecord(2, 1, 2, 4096, ((2, b"b" * 4096),)), LogRecord(3, 1, 3, 4096, ((3, b"c" * 4096),))]
    with pytest.raises(OSError):
        dlog.append(batch)
    monkeypatch.setattr(log_mod.os, "pwrite", real)
    assert dlog.last_lsn == 1 and len(list(tmp_path.joinpath("log").glob("*.seg"))) == 1
    dlog.append(batch)  # space is back: the same capture goes in
    assert [r.lsn for r in dlog.read_from(1, 1 << 20)] == [1, 2, 3]
    dlog.close()
    reopened = DurableLog(tmp_path / "log", segment_bytes=6000)
    assert [r.pages[0][1][:1] for r in reopened.read_from(1, 1 << 20)] == [b"a", b"b", b"c"]


def test_a_sync_started_while_another_is_fsyncing_returns_only_once_that_fsync_is_done(logdir):
    """Two threads sync (the principal's writer in its hop, and its sync task): the second must not report
    as durable what the first is still fsyncing, although it finds nothing dirty of its own."""
    log = DurableLog(logdir)
    log.append(recs(1, 3))
    seg = log._segments[-1]
    fsyncing, release = threading.Event(), threading.Event()
    real = seg.fsync

    def slow_fsync() -> None:
        fsyncing.set()
        assert release.wait(10)
        real()

    seg.fsync = slow_fsync
    results: list[tuple[str, int]] = []
    first = threading.Thread(target=lambda: results.append(("first", log.sync())))
    first.start()
    assert fsyncing.wait(10)
    second = threading.Thread(target=lambda: results.append(("second", log.sync())))
    second.start()
    second.join(0.2)  # a bound, not a synchronisation: the second must still be waiting after it
    assert results == []
    release.set()
    first.join(10)
    second.join(10)
    assert results == [("first", 3), ("second", 3)]


def test_zeros_ahead_never_go_past_the_segment_size(logdir):
    log = DurableLog(logdir, segment_bytes=3 * PS)
    log.append(recs(1, 12))
    log.sync()
    assert all(f.stat().st_size <= 3 * PS + rec(1).nbytes + 64 for f in segment_files(logdir))
    assert DurableLog(logdir, segment_bytes=3 * PS).read_from(1, 1 << 30) == recs(1, 12)


# ------------------------------------------------------------------ the newest records, kept in memory


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30), start=st.integers(1, 30),
       max_bytes=st.integers(1, 40 * PS))
def test_a_read_of_the_newest_records_from_memory_is_what_a_read_from_the_file_gives(sizes, start, max_bytes):
    import mirrord.storage.log as logmod

    with tempfile.TemporaryDirectory() as tmp:
        log = DurableLog(Path(tmp), segment_bytes=8 * PS * 40)
        for lsn, npages in enumerate(sizes, start=1):
            log.append([rec(lsn, npages=npages)])
        assert log._recent_bytes <= logmod.RECENT_BYTES  # noqa: SLF001 - the bound
        start = min(start, len(sizes))
        from_memory = log.read_from(start, max_bytes)
        log.close()
        reopened = DurableLog(Path(tmp), segment_bytes=8 * PS * 40)
        assert not reopened._recent  # noqa: SLF001 - a new log reads the file
        assert from_memory == reopened.read_from(start, max_bytes)
        reopened.close()


def test_records_kept_in_memory_never_outlive_a_rollback_or_a_reset(logdir, monkeypatch):
    log = DurableLog(logdir)
    log.append(recs(1, 5))
    assert log.read_from(4, 1 << 20)[0] is log._recent[3]  # noqa: SLF001 - served from memory, as appended
    log.truncate_after(3)  # a fork rolled back
    log.append(recs(4, 6, role_sequence=2))
    assert [(r.lsn, r.role_sequence) for r in log.read_from(3, 1 << 20)] == [(3, 1), (4, 2), (5, 2), (6, 2)]
    log.reset(100, 3)
    log.append([rec(100, role_sequence=3)])
    assert [r.lsn for r in log.read_from(100, 1 << 20)] == [100]
    log.close()


def test_only_the_newest_megabyte_stays_in_memory_and_a_larger_record_not_at_all(logdir, monkeypatch):
    import mirrord.storage.log as logmod

    monkeypatch.setattr(logmod, "RECENT_BYTES", 10 * PS)
    log = DurableLog(logdir)
    log.append(recs(1, 20))
    assert [r.lsn for r in log._recent][0] > 1 and log._recent[-1].lsn == 20  # noqa: SLF001
    assert [r.lsn for r in log.read_from(1, 1 << 20)] == list(range(1, 21))  # the older ones from the file
    log.append([rec(21, npages=20)])
    assert log._recent == []  # noqa: SLF001 - larger than the bound alone
    assert log.read_from(21, 1)[0] == rec(21, npages=20)
    log.close()
