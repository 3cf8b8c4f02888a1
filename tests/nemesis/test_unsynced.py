"""Unsynced (pure): reads see every write, a sync makes the disk equal to what was seen, a cut goes back to the disk."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord_testing.nemesis.unsynced import BLOCK, Unsynced


class Disk:
    """A bytearray playing the backing file."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        if len(self.data) < offset:
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(data)] = data

    def resize(self, size: int) -> None:
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))


def seen(u: Unsynced, disk: Disk) -> bytes:
    return u.read(0, u.size + 10, disk.read)


def test_a_write_is_read_back_but_the_disk_keeps_the_old_bytes():
    disk = Disk(b"a" * 10)
    u = Unsynced(10)
    u.write(5, b"bbbbbbbb", disk.read)
    assert seen(u, disk) == b"aaaaabbbbbbbb"
    assert disk.data == b"a" * 10
    assert u.pending_bytes() == BLOCK and not u.is_clean()


def test_sync_writes_what_was_seen_and_empties_the_cache():
    disk = Disk(b"a" * 10)
    u = Unsynced(10)
    u.write(BLOCK * 2 + 3, b"z", disk.read)
    assert u.sync(disk.write, disk.resize) > 0
    assert bytes(disk.data) == b"a" * 10 + bytes(BLOCK * 2 + 3 - 10) + b"z"
    assert u.is_clean() and u.pending_bytes() == 0


def test_shrink_then_grow_reads_zeros_not_the_disks_old_bytes():
    disk = Disk(b"x" * (3 * BLOCK))
    u = Unsynced(len(disk.data))
    u.truncate(BLOCK + 7, disk.read)
    u.truncate(3 * BLOCK, disk.read)
    assert seen(u, disk) == b"x" * (BLOCK + 7) + bytes(2 * BLOCK - 7)
    assert disk.data == b"x" * (3 * BLOCK)  # not yet durable
    u.sync(disk.write, disk.resize)
    assert bytes(disk.data) == b"x" * (BLOCK + 7) + bytes(2 * BLOCK - 7)


def test_read_past_the_end_is_short():
    disk = Disk(b"abc")
    u = Unsynced(3)
    assert u.read(1, 100, disk.read) == b"bc"
    assert u.read(5, 10, disk.read) == b""


ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3 * BLOCK), st.binary(min_size=1, max_size=BLOCK + 100)),
    st.tuples(st.just("truncate"), st.integers(0, 4 * BLOCK)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("cut")),
), max_size=25)


@settings(max_examples=300, deadline=None)
@given(initial=st.binary(max_size=2 * BLOCK + 50), steps=ops)
def test_against_a_model_of_seen_and_durable_bytes(initial, steps):
    """The model: `visible` is what a program sees, `durable` what the disk held at the last sync."""
    disk = Disk(initial)
    u = Unsynced(len(initial))
    visible, durable = bytearray(initial), bytes(initial)
    for step in steps:
        if step[0] == "write":
            _, offset, data = step
            u.write(offset, data, disk.read)
            if len(visible) < offset:
                visible.extend(bytes(offset - len(visible)))
            visible[offset:offset + len(data)] = data
        elif step[0] == "truncate":
            u.truncate(step[1], disk.read)
            del visible[step[1]:]
            visible.extend(bytes(step[1] - len(visible)))
        elif step[0] == "sync":
            u.sync(disk.write, disk.resize)
            durable = bytes(visible)
            assert bytes(disk.data) == durable
        else:  # power cut: the cache is gone, programs see the disk
            u = Unsynced(len(disk.data))
            visible = bytearray(durable)
        assert bytes(disk.data) == durable, "the disk changed without a sync"
        assert u.size == len(visible)
        assert seen(u, disk) == bytes(visible)
        for offset in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK):
            assert u.read(offset, 2 * BLOCK, disk.read) == bytes(visible[offset:offset + 2 * BLOCK])
