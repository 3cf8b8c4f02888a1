"""One file's writes that are not yet durable: what a power cut takes away.

The model is a disk with a volatile cache in front of it. The backing file is
the disk: it holds exactly what was made durable. `Unsynced` is the cache for
one file: the blocks written since the last sync, the file's size as programs
see it, and the point past which a truncate (not yet synced) has cut the disk's
bytes off. Reads see the cache over the disk; `sync` writes the cache to the
disk and empties it; a power cut simply forgets the `Unsynced` object.

Invariants the methods keep (the unit tests check them through reads):
* a cached block is always whole (BLOCK bytes), and its bytes past `size` are zero;
* the disk's bytes at or past `floor` read as zero (a truncate cut them off;
  `floor` is infinite while no unsynced truncate is pending);
* the disk's bytes past `size` are never visible, because any shrink sets
  `floor <= size`.

Pure: the disk is reached through the two callables given to the methods, so
the tests drive it with a bytearray and the file system with a file descriptor.
"""

from __future__ import annotations

import math
from typing import Callable

BLOCK = 4096

ReadDisk = Callable[[int, int], bytes]     # (offset, size) -> bytes; short at the disk's end
WriteDisk = Callable[[int, bytes], None]   # (offset, data)
ResizeDisk = Callable[[int], None]         # (new size)


class Unsynced:
    """The unsynced state of one file whose durable content is `disk_size` bytes long."""

    def __init__(self, disk_size: int) -> None:
        self.size = disk_size
        self.floor: float = math.inf
        self.blocks: dict[int, bytearray] = {}
        self.writes = 0  # write calls since the last sync, for the report

    # ------------------------------------------------------------ what is pending

    def pending_bytes(self) -> int:
        """Bytes a power cut would drop now (cached blocks, counted whole)."""
        return len(self.blocks) * BLOCK

    def is_clean(self) -> bool:
        """True if the disk already holds what programs see."""
        return not self.blocks and self.floor == math.inf

    # ------------------------------------------------------------ reads and writes

    def read(self, offset: int, size: int, read_disk: ReadDisk) -> bytes:
        """What a program reads: cached blocks over the disk, nothing past `size`."""
        size = max(0, min(size, self.size - offset))
        out = bytearray()
        pos, end = offset, offset + size
        while pos < end:
            index = pos // BLOCK
            block = self.blocks.get(index)
            if block is not None:
                take = min(end, (index + 1) * BLOCK) - pos
                out += block[pos - index * BLOCK:pos - index * BLOCK + take]
                pos += take
                continue
            run_end = pos  # a run of uncached blocks: one disk read
            while run_end < end and (run_end // BLOCK) not in self.blocks:
                run_end = min(end, (run_end // BLOCK + 1) * BLOCK)
            out += self._from_disk(pos, run_end - pos, read_disk)
            pos = run_end
        return bytes(out)

    def _from_disk(self, offset: int, size: int, read_disk: ReadDisk) -> bytes:
        """Disk bytes, zero-padded to size, zero at or past the floor."""
        visible = max(0, min(size, int(min(self.floor, offset + size)) - offset))
        data = read_disk(offset, visible) if visible else b""
        return data + bytes(size - len(data))

    def _block(self, index: int, read_disk: ReadDisk) -> bytearray:
        """The cached block, brought into the cache from the disk if it is not there."""
        block = self.blocks.get(index)
        if block is None:
            start = index * BLOCK
            block = bytearray(self.read(start, BLOCK, read_disk).ljust(BLOCK, b"\0"))
            self.blocks[index] = block
        return block

    def write(self, offset: int, data: bytes, read_disk: ReadDisk) -> int:
        """Cache a write; the file grows if it ends past `size`. Returns len(data)."""
        pos, view = offset, memoryview(data)
        while view:
            index, within = divmod(pos, BLOCK)
            take = min(len(view), BLOCK - within)
            self._block(index, read_disk)[within:within + take] = view[:take]
            pos += take
            view = view[take:]
        self.size = max(self.size, offset + len(data))
        self.writes += 1
        return len(data)

    def truncate(self, length: int, read_disk: ReadDisk) -> None:
        """Set the size: a shrink hides the disk's bytes from `length` on; a growth reads as zeros."""
        if length < self.size:
            for index in [i for i in self.blocks if i * BLOCK >= length]:
                del self.blocks[index]
            index, within = divmod(length, BLOCK)
            if within:
                self._block(index, read_disk)[within:] = bytes(BLOCK - within)
            self.floor = min(self.floor, length)
        self.size = length

    # ------------------------------------------------------------ sync

    def sync(self, write_disk: WriteDisk, resize_disk: ResizeDisk) -> int:
        """Make the disk hold what programs see, empty the cache; the bytes written to the disk."""
        if self.floor != math.inf:
            resize_disk(int(self.floor))  # what a pending truncate cut off must not come back
        resize_disk(self.size)
        written = 0
        for index in sorted(self.blocks):
            start = index * BLOCK
            chunk = bytes(self.blocks[index][:max(0, min(BLOCK, self.size - start))])
            if chunk:
                write_disk(start, chunk)
                written += len(chunk)
        self.blocks.clear()
        self.floor = math.inf
        self.writes = 0
        return written
