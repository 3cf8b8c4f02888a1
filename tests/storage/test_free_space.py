"""FreeSpace: the free-space check before each write asks the kernel only when the answer could matter."""

from __future__ import annotations

import pytest

from mirrord.storage import fileutil
from mirrord.storage.fileutil import DISK_RESERVE_BYTES, FreeSpace


@pytest.fixture
def kernel(monkeypatch):
    """A file system whose free bytes the test sets; counts the statvfs calls."""
    state = {"free": 10 << 30, "calls": 0}

    def disk_free(path):
        state["calls"] += 1
        return state["free"]

    monkeypatch.setattr(fileutil, "disk_free", disk_free)
    return state


def test_far_above_the_reserve_one_look_serves_until_recheck(kernel, tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(fileutil.time, "monotonic", lambda: clock[0])
    gauge = FreeSpace(tmp_path, margin=64 << 20, recheck=0.05)
    assert gauge.bytes() == 10 << 30
    for _ in range(100):
        assert gauge.bytes() == 10 << 30
    assert kernel["calls"] == 1
    kernel["free"] = 5 << 30
    clock[0] += 0.05  # the recheck interval is up: the next write sees the new figure
    assert gauge.bytes() == 5 << 30
    assert kernel["calls"] == 2


def test_near_the_reserve_every_call_asks(kernel, tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(fileutil.time, "monotonic", lambda: clock[0])
    gauge = FreeSpace(tmp_path, margin=64 << 20, recheck=60.0)
    kernel["free"] = DISK_RESERVE_BYTES + (64 << 20) - 1
    gauge.bytes()
    kernel["free"] = DISK_RESERVE_BYTES - 1  # the disk fills between two writes, within the recheck interval
    assert gauge.bytes() == DISK_RESERVE_BYTES - 1
    assert gauge.bytes() == DISK_RESERVE_BYTES - 1
    assert kernel["calls"] == 3


def test_the_real_file_system(tmp_path):
    assert FreeSpace(tmp_path).bytes() == pytest.approx(fileutil.disk_free(tmp_path), rel=0.05)
