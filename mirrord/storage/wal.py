"""Read committed transactions out of a SQLite WAL file (the principal's capture).

The principal runs SQLite in WAL mode with auto-checkpoint off, so every commit
appends frames (24-byte header + one page image) to `<db>-wal`; the last frame
of a transaction is its commit frame (non-zero "db size"). After each commit the
principal calls `WalReader.read_committed(pos)` and gets the transactions that
were committed since `pos`.

Validity follows SQLite's own recovery rules (fileformat2.html#walformat): a
frame is valid only if its salts equal the header's and the cumulative checksum
chain (seeded by the header checksum) matches. The first invalid or torn frame
is the end of the valid WAL, never an error. Pages are held aside until their
commit frame, so a rolled-back or in-flight transaction is never returned.
When the WAL is restarted after a checkpoint, SQLite writes a new header with
new salts; a position whose salts differ is therefore restarted at frame 0.

The checksum is on the commit path, so it is computed with a SWAR trick rather
than a word-at-a-time loop: see `_ChecksumPlan`.
"""

from __future__ import annotations

import array
import operator
import os
import struct
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WAL_MAGIC_LE = 0x377F0682  # checksums over little-endian words
WAL_MAGIC_BE = 0x377F0683  # checksums over big-endian words
WAL_VERSION = 3007000
WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_READ_CHUNK = 4 << 20  # bytes per read() at most: one syscall covers many frames
_FIRST_READ_FRAMES = 8  # frames of the first read of a scan

_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
_MASK = 0xFFFFFFFF
_NATIVE_BIG = sys.byteorder == "big"


@dataclass(frozen=True)
class WalPosition:
    """Where capture stopped: WAL generation (salts), frames consumed, running checksum."""

    salt1: int
    salt2: int
    frame_count: int  # frames consumed: index of the next frame to read
    checksum1: int  # running checksum after the last consumed frame
    checksum2: int
    page_size: int

    def to_dict(self) -> dict:
        """A JSON/msgpack-able form of this position."""
        return {
            "salt1": self.salt1,
            "salt2": self.salt2,
            "frame_count": self.frame_count,
            "checksum1": self.checksum1,
            "checksum2": self.checksum2,
            "page_size": self.page_size,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "WalPosition":
        """Rebuild a position written by to_dict()."""
        return cls(
            int(d["salt1"]),
            int(d["salt2"]),
            int(d["frame_count"]),
            int(d["checksum1"]),
            int(d["checksum2"]),
            int(d["page_size"]),
        )


@dataclass(frozen=True)
class WalTransaction:
    """One committed transaction: its page images (sorted by pgno) and the db size after it."""

    pages: tuple[tuple[int, bytes], ...]
    db_size: int
    page_size: int


# --- checksum -------------------------------------------------------------------


def wal_checksum_reference(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum, word by word (the definition; used for short inputs and tests)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    it = iter(words)
    for x, y in zip(it, it):
        s0 = (s0 + x + s1) & _MASK
        s1 = (s1 + y + s0) & _MASK
    return s0, s1


def _step_matrix(pairs: int) -> tuple[int, int, int, int]:
    """A**pairs mod 2**32, where A = [[1,1],[1,2]] is one (s0, s1) checksum step."""
    a00, a01, a10, a11 = 1, 0, 0, 1
    for _ in range(pairs):
        a00, a01, a10, a11 = (a00 + a10) & _MASK, (a01 + a11) & _MASK, (a00 + 2 * a10) & _MASK, (a01 + 2 * a11) & _MASK
    return a00, a01, a10, a11


class _ChecksumPlan:
    """Fast WAL checksum for inputs of one fixed length, in pure Python.

    The checksum is linear mod 2**32: after n word pairs, state = A**n·seed +
    f(data), where f(data) is the same computation from a zero seed. Split the
    data into B blocks of P pairs; f(data) = sum_b A**(P·(B-1-b))·f(block_b).
    All blocks are computed at once, one 64-bit lane per block in a Python int
    (a block of <= 32 words from a zero seed stays below 2**63, so lanes never
    carry into each other): 2·P big-int additions instead of one loop step per
    word pair. The lanes are combined with precomputed matrix powers.
    """

    PAIRS_PER_BLOCK = 16

    def __init__(self, nbytes: int) -> None:
        pairs = nbytes // 8
        per = self.PAIRS_PER_BLOCK
        self.blocks = -(-pairs // per)
        self.width = 2 * per  # words per block
        # Leading zero pairs leave a zero state at zero: pad in front.
        self.pad = bytes((self.blocks * per - pairs) * 8)
        self.zeros = bytes(self.width * self.blocks * 8)
        self.lane_bytes = self.blocks * 8
        self.unpack_lanes = struct.Struct(f"={self.blocks}Q").unpack
        powers = [_step_matrix((self.blocks - 1 - b) * per) for b in range(self.blocks)]
        self.p00, self.p01, self.p10, self.p11 = (list(col) for col in zip(*powers))
        self.seed = _step_matrix(pairs)

    def lanes(self, data: bytes, big_endian: bool) -> bytes:
        """Transpose the words so that each block position is one run of 64-bit lanes."""
        src = array.array("I", self.pad + data)
        if big_endian != _NATIVE_BIG:
            src.byteswap()
        dst = array.array("I", self.zeros)
        blocks, width = self.blocks, self.width
        low = 1 if _NATIVE_BIG else 0  # which half of a native 64-bit lane holds the value
        for i in range(width):
            dst[2 * i * blocks + low : 2 * (i + 1) * blocks : 2] = src[i::width]
        return dst.tobytes()

    def __call__(self, data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
        """Checksum `data` (exactly the planned length) continuing from (s0, s1)."""
        raw = self.lanes(data, big_endian)
        step, order, from_bytes = self.lane_bytes, sys.byteorder, int.from_bytes
        a = b = 0
        for off in range(0, len(raw), 2 * step):
            a += from_bytes(raw[off : off + step], order) + b
            b += from_bytes(raw[off + step : off + 2 * step], order) + a
        la = self.unpack_lanes(a.to_bytes(step, order))
        lb = self.unpack_lanes(b.to_bytes(step, order))
        q, mul = self.seed, operator.mul
        r0 = q[0] * s0 + q[1] * s1 + sum(map(mul, self.p00, la)) + sum(map(mul, self.p01, lb))
        r1 = q[2] * s0 + q[3] * s1 + sum(map(mul, self.p10, la)) + sum(map(mul, self.p11, lb))
        return r0 & _MASK, r1 & _MASK


@lru_cache(maxsize=16)
def _plan(nbytes: int) -> _ChecksumPlan:
    return _ChecksumPlan(nbytes)


def wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's cumulative WAL checksum of `data` (a multiple of 8 bytes) from seed (s0, s1)."""
    if len(data) < 256:
        return wal_checksum_reference(data, s0, s1, big_endian)
    return _plan(len(data))(data, s0, s1, big_endian)


# --- reader ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    big_endian: bool
    page_size: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int


def parse_wal_header(buf: bytes) -> _Header | None:
    """Decode and verify a 32-byte WAL header; None if it is not a valid one."""
    if len(buf) < WAL_HEADER_SIZE:
        return None
    magic, version, page_size, _ckpt, salt1, salt2, c1, c2 = _HEADER.unpack_from(buf)
    if magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE) or version != WAL_VERSION:
        return None
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        return None
    big_endian = magic == WAL_MAGIC_BE
    if wal_checksum_reference(buf[:24], 0, 0, big_endian) != (c1, c2):
        return None
    return _Header(big_endian, page_size, salt1, salt2, c1, c2)


class _Scan:
    """State of one pass over the frames: pending pages and the last commit seen."""

    def __init__(self, header: _Header, start: WalPosition) -> None:
        self.header = header
        self.frame = start.frame_count
        self.ck = (start.checksum1, start.checksum2)
        self.pending: dict[int, bytes] = {}
        self.committed: list[WalTransaction] = []
        self.pos = start

    def feed(self, frame: memoryview) -> bool:
        """Consume one full frame; False if it is not valid (the end of the WAL)."""
        h = self.header
        pgno, db_size, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack_from(frame)
        if pgno == 0 or salt1 != h.salt1 or salt2 != h.salt2:
            return False
        page = bytes(frame[FRAME_HEADER_SIZE:])
        ck = wal_checksum(bytes(frame[:8]) + page, self.ck[0], self.ck[1], h.big_endian)
        if ck != (c1, c2):
            return False
        self.ck = ck
        self.frame += 1
        self.pending[pgno] = page  # a later frame of the same page wins
        if db_size:
            self._commit(db_size)
        return True

    def _commit(self, db_size: int) -> None:
        h = self.header
        # A transaction that shrank the file may have spilled pages past its final size
        # before the commit frame; they are cut off by the truncation, so they are not shipped.
        pages = tuple(p for p in sorted(self.pending.items()) if p[0] <= db_size)
        self.committed.append(WalTransaction(pages, db_size, h.page_size))
        self.pending = {}
        self.pos = WalPosition(h.salt1, h.salt2, self.frame, self.ck[0], self.ck[1], h.page_size)


class WalReader:
    """Reads the committed transactions of one SQLite WAL file, incrementally."""

    def __init__(self, wal_path: Path) -> None:
        self.path = Path(wal_path)

    def read_committed(self, pos: WalPosition | None) -> tuple[list[WalTransaction], WalPosition | None]:
        """Transactions committed after `pos`, and the position after the last one (or `pos`)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return [], pos
        with f:
            header = parse_wal_header(f.read(WAL_HEADER_SIZE))
            if header is None:
                return [], pos
            scan = _Scan(header, self._start(header, pos))
            self._scan_frames(f, scan)
        if not scan.committed:
            return [], pos
        return scan.committed, scan.pos

    def holds(self, pos: WalPosition) -> bool:
        """Whether the WAL still holds every frame up to `pos`, by SQLite's own validity rules.

        After a power cut the WAL (never fsynced on the commit path) may have lost
        frames that the synced log holds: then the database, opened by SQLite,
        would lack commits the log has, and must be rebuilt from the log.
        """
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return False
        with f:
            header = parse_wal_header(f.read(WAL_HEADER_SIZE))
            if header is None or (header.salt1, header.salt2, header.page_size) != (pos.salt1, pos.salt2, pos.page_size):
                return False
            scan = _Scan(header, self._start(header, None))
            self._scan_frames(f, scan, stop_at=pos.frame_count)
        return scan.pos.frame_count == pos.frame_count and (scan.pos.checksum1, scan.pos.checksum2) == (pos.checksum1, pos.checksum2)

    @staticmethod
    def _start(header: _Header, pos: WalPosition | None) -> WalPosition:
        """Continue at `pos` if it is in this WAL generation, else at frame 0."""
        same = pos is not None and (pos.salt1, pos.salt2, pos.page_size) == (
            header.salt1,
            header.salt2,
            header.page_size,
        )
        if same:
            return pos
        return WalPosition(header.salt1, header.salt2, 0, header.checksum1, header.checksum2, header.page_size)

    @staticmethod
    def _scan_frames(f, scan: _Scan, stop_at: int | None = None) -> None:
        """Feed whole frames to `scan`, reading large chunks, until the first invalid one (or frame `stop_at`)."""
        size = FRAME_HEADER_SIZE + scan.header.page_size
        # Small first, then doubling: an incremental read after one commit needs a frame or
        # two, and past them a restarted WAL still holds megabytes of stale frames nobody reads.
        per_read, most = _FIRST_READ_FRAMES, max(1, _READ_CHUNK // size)
        f.seek(WAL_HEADER_SIZE + scan.frame * size)
        while True:
            chunk = f.read(per_read * size)
            view = memoryview(chunk)
            for off in range(0, len(chunk) - size + 1, size):
                if scan.frame == stop_at or not scan.feed(view[off : off + size]):
                    return
            if len(chunk) < per_read * size:
                return  # end of file (a torn last frame is simply not fed)
            per_read = min(per_read * 2, most)


def _timing(page_size: int = 4096, rounds: int = 2000) -> float:
    """Microseconds per frame checksum (frame header + page): a quick benchmark."""
    import time

    data = os.urandom(page_size + 8)
    start = time.perf_counter()
    for _ in range(rounds):
        wal_checksum(data, 1, 2, False)
    return (time.perf_counter() - start) / rounds * 1e6
