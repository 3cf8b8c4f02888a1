"""The event history file: durable across reopen, bounded by count and age, a torn or bad line skipped, a full disk survived."""

from __future__ import annotations

import errno
import os

from mirrord.core import events as ev
from mirrord.storage import events as store
from mirrord.storage.events import CURRENT, PREVIOUS, EventLog

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lines(path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_events_survive_a_reopen_in_order(tmp_path):
    clock = Clock()
    log = EventLog(tmp_path, "a", clock=clock)
    for i in range(5):
        clock.now += 1
        assert log.record("shop", "STATE_CHANGE", role="PRINCIPAL", state="SYNCHRONIZED", role_sequence=1, lsn=i, detail=f"n{i}")
    before = log.rows()
    again = EventLog(tmp_path, "a", clock=clock)
    assert again.rows() == before and [r["lsn"] for r in before] == [0, 1, 2, 3, 4]
    clock.now += 1
    again.record(None, "NODE_STARTED")
    assert [r["event"] for r in again.rows()][-1] == "NODE_STARTED"
    assert [r["database"] for r in again.rows("shop")] == ["shop"] * 5


def test_the_same_millisecond_keeps_the_order_of_recording(tmp_path):
    log = EventLog(tmp_path, "a", clock=Clock())
    for i in range(3):
        log.record("shop", "ALERT", detail=str(i))
    assert [r["detail"] for r in ev.merged([log.rows()])] == ["0", "1", "2"]


def test_bounded_by_count_on_disk_and_in_the_view(tmp_path):
    clock = Clock()
    log = EventLog(tmp_path, "a", max_events=10, clock=clock)
    for i in range(57):
        clock.now += 1
        log.record("shop", "ALERT", detail=str(i))
        assert _lines(tmp_path / CURRENT) + _lines(tmp_path / PREVIOUS) <= 10
    assert [r["detail"] for r in log.rows()] == [str(i) for i in range(47, 57)]
    reopened = EventLog(tmp_path, "a", max_events=10, clock=clock)
    assert [r["detail"] for r in reopened.rows()][-5:] == [str(i) for i in range(52, 57)]
    assert len(reopened.rows()) >= 5  # at least the current file's half


def test_bounded_by_age_on_disk_and_in_the_view(tmp_path):
    clock = Clock()
    day = 86400.0
    log = EventLog(tmp_path, "a", max_age_seconds=day, clock=clock)
    log.record("shop", "ALERT", detail="old")
    clock.now += 0.5 * day
    log.record("shop", "ALERT", detail="newer")
    clock.now += 0.6 * day
    assert [r["detail"] for r in log.rows()] == ["newer"]  # the view: nothing older than the age
    log.record("shop", "ALERT", detail="now")  # the current file's oldest is past the age: it is rotated
    assert b"old" in (tmp_path / PREVIOUS).read_bytes() and b"old" not in (tmp_path / CURRENT).read_bytes()
    clock.now += 1.1 * day
    log.record("shop", "ALERT", detail="later")  # the rotated file's newest is past the age: it is deleted
    assert not (tmp_path / PREVIOUS).exists() or b"old" not in (tmp_path / PREVIOUS).read_bytes()
    assert [r["detail"] for r in log.rows()] == ["later"]
    assert [r["detail"] for r in EventLog(tmp_path, "a", max_age_seconds=day, clock=clock).rows()] == ["later"]


def test_a_torn_last_line_is_cut_and_a_bad_line_skipped(tmp_path):
    clock = Clock()
    log = EventLog(tmp_path, "a", clock=clock)
    log.record("shop", "SUSPEND", detail="one")
    with open(tmp_path / CURRENT, "ab") as f:
        f.write(b'{"not": "an event"}\n')
        f.write(b'{"time":"2027-01-15T08:00:00.000Z","node":"a","ev')  # a crash mid-append
    again = EventLog(tmp_path, "a", clock=clock)
    assert [r["detail"] for r in again.rows()] == ["one"]
    again.record("shop", "RESUME", detail="two")
    assert [r["detail"] for r in EventLog(tmp_path, "a", clock=clock).rows()] == ["one", "two"]
    assert (tmp_path / CURRENT).read_bytes().endswith(b"\n")


def test_a_full_disk_drops_the_event_and_leaves_no_half_line(tmp_path, monkeypatch):
    clock = Clock()
    log = EventLog(tmp_path, "a", clock=clock)
    log.record("shop", "SUSPEND", detail="kept")
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data)[:7])  # part of the line reaches the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "write", half_then_full)
    assert log.record("shop", "RESUME", detail="dropped") is None
    assert log.dropped == 1
    monkeypatch.setattr(store.os, "write", real_write)
    log.record("shop", "ALERT", detail="after")
    assert [r["detail"] for r in log.rows()] == ["kept", "after"]
    assert [r["detail"] for r in EventLog(tmp_path, "a", clock=clock).rows()] == ["kept", "after"]


def test_an_unwritable_directory_never_raises(tmp_path):
    log = EventLog(tmp_path / "events", "a", clock=Clock())
    (tmp_path / "events").chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway
            assert log.record("shop", "ALERT") is None
    finally:
        (tmp_path / "events").chmod(0o700)
