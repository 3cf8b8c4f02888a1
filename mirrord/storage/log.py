"""The durable log: LSN-tagged transaction records on disk, on both partners.

Layout: a directory of segment files, each named by the first LSN it holds and
the log's generation (`<first lsn, 20 digits>.<generation>.seg`), plus
`base.json` = {next_lsn, role_sequence, generation}. A record on disk is
`[u32 length][u32 crc32(payload)][payload]`, payload = msgpack([wire, wal]).

Appends write and flush (the OS has them; a process kill loses nothing);
`sync()` makes them durable. Opening the log scans every segment and rebuilds an
in-memory index (per LSN: segment, offset, role_sequence, cumulative bytes); the first
torn or corrupt record (a write cut by a kill or a power loss) is the end of the
log, and the file is truncated there. `reset()` and emptying `truncate_after()`
start a new generation: base.json is replaced atomically first (the commit
point), so segments of an older generation found at open are leftovers of an
interrupted reset and are deleted.

Zeros ahead. The active segment is written with zeros ahead of its records,
ZERO_STEP at a time and never past its size, as PostgreSQL fills a WAL segment
before using it: a
record then overwrites bytes the file already has, and its fsync writes data
only. Appending that grows the file makes every fsync a journal commit too, and
those queue behind each other: two processes fsyncing growing files took 300 us
each here, 120-160 us into zeros (both partners sync on one machine in tests
and benchmarks). So a segment ends at its last valid record, followed by zeros;
bytes past the last valid record that are not all zeros are a torn or lost
write, cut off as before, and the log ends there. The zeros are never stale:
every cut (a torn tail, truncate_after, an undone append) shortens the file to
the records kept. A clean close trims them; zeros found at open stay for the
next appends (trimming them would free room a full disk could then lack).

One lock guards the index and the files: the asyncio thread appends while the
redo thread reads. Reads copy bytes under the lock and decode outside it.

The newest records stay in memory as appended (RECENT_BYTES of them): the
principal ships, and the mirror's redo applies, what was just appended, so a
read there takes them as they are instead of reading the file back and
decoding it again (`read_from` and decoding were 6 % of a principal's
interpreter time at 1 client, py-spy --gil). Records on disk were checked when
appended, as these were when made or received.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import msgpack

from mirrord.core.types import ProtocolError
from mirrord.storage.fileutil import atomic_write_json, fsync_dir, read_json

_REC_HEADER = struct.Struct("<II")
_MAX_RECORD = 1 << 31  # a length beyond this is garbage, not a record
_PAGE_OVERHEAD = 16  # approximate msgpack bytes per page besides its image
_RECORD_OVERHEAD = 32
_SEGMENT_NAME = re.compile(r"^(\d{20})\.(\d+)\.seg$")
ZERO_STEP = 1 << 20  # bytes of zeros written ahead of the records at a time (see "Zeros ahead")
RECENT_BYTES = 1 << 20  # of record nbytes: the newest records kept in memory (see the module docstring); per log
_ZEROS = bytes(ZERO_STEP)
# SQLite's largest page count (SQLITE_MAX_PAGE_COUNT): no real database has a page past it.
MAX_PAGE_COUNT = 4294967294


@dataclass(frozen=True)
class LogRecord:
    """One committed transaction: its LSN, role sequence, resulting db size and page images."""

    lsn: int
    role_sequence: int
    db_size: int
    page_size: int
    pages: tuple[tuple[int, bytes], ...]
    wal: dict | None = None  # principal-local WalPosition.to_dict(); never sent on the wire

    def to_wire(self) -> list:
        """The msgpack-able form sent to the partner (without `wal`)."""
        return [self.lsn, self.role_sequence, self.db_size, self.page_size, [[p, d] for p, d in self.pages]]

    @classmethod
    def from_wire(cls, obj: object, wal: dict | None = None, *, strict: bool = True) -> "LogRecord":
        """Decode and validate a wire record; raise ProtocolError saying what is wrong.

        Bounds: 1 <= page number <= db_size <= MAX_PAGE_COUNT, so a record can
        never make redo write past the end of a real SQLite file (a page number
        of 2**40 once made redo fail and the node unable to start). strict=False
        (records read back from this node's own log) skips only "page number <=
        db_size": records written before that rule may hold such pages, which
        redo truncates away, and a record refused at open would cut the log there.
        """
        if not isinstance(obj, (list, tuple)) or len(obj) != 5:
            raise ProtocolError("log record: expected a list of 5 fields")
        lsn, role_sequence, db_size, page_size, raw_pages = obj
        _check_int("lsn", lsn, 1)
        _check_int("role_sequence", role_sequence, 0)
        _check_int("db_size", db_size, 1)
        _check_int("page_size", page_size, 512)
        if db_size > MAX_PAGE_COUNT:
            raise ProtocolError(f"log record {lsn}: db_size {db_size} exceeds SQLite's maximum page count {MAX_PAGE_COUNT}")
        check_page_size(f"log record {lsn}", page_size)
        pages = _check_pages(lsn, page_size, raw_pages, db_size if strict else MAX_PAGE_COUNT)
        return cls(lsn, role_sequence, db_size, page_size, pages, wal)

    @property
    def nbytes(self) -> int:
        """Approximate encoded size, for queue accounting."""
        return _RECORD_OVERHEAD + len(self.pages) * (self.page_size + _PAGE_OVERHEAD)


def check_page_size(what: str, page_size: object) -> None:
    """SQLite's page sizes: a power of two in 512..65536 (log records, seeds and rewinds alike)."""
    if type(page_size) is not int or not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        raise ProtocolError(f"{what}: page_size {page_size} is not a power of two in 512..65536")


def _check_int(name: str, value: object, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise ProtocolError(f"log record: {name} must be an integer >= {minimum}, got {value!r}")


def _check_pages(lsn: int, page_size: int, raw_pages: object, last_page: int) -> tuple[tuple[int, bytes], ...]:
    """Validate [[pgno, image], ...]: 1 <= pgno <= last_page, unique, images exactly page_size bytes."""
    if not isinstance(raw_pages, (list, tuple)):
        raise ProtocolError(f"log record {lsn}: pages must be a list")
    pages, seen = [], set()
    for item in raw_pages:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ProtocolError(f"log record {lsn}: a page must be [pgno, image]")
        pgno, image = item
        if type(pgno) is not int or not 1 <= pgno <= last_page:
            raise ProtocolError(f"log record {lsn}: page number {pgno!r} must be an integer 1..{last_page} (the db_size)")
        if not isinstance(image, bytes) or len(image) != page_size:
            raise ProtocolError(f"log record {lsn}: page {pgno} is not {page_size} bytes")
        if pgno in seen:
            raise ProtocolError(f"log record {lsn}: page {pgno} appears twice")
        seen.add(pgno)
        pages.append((pgno, image))
    return tuple(pages)


def encode_record(record: LogRecord) -> bytes:
    """The on-disk bytes of one record: header (length, crc32) + payload."""
    payload = msgpack.packb([record.to_wire(), record.wal], use_bin_type=True)
    return _REC_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> LogRecord:
    """Decode a payload written by encode_record (validated like a wire record)."""
    wire, wal = msgpack.unpackb(payload, raw=False)
    return LogRecord.from_wire(wire, wal, strict=False)


class LogCorrupt(Exception):
    """A record read back from disk does not match its checksum or index."""


class _Segment:
    """One segment file, kept open read-write."""

    def __init__(self, path: Path, first_lsn: int) -> None:
        self.path = path
        self.first_lsn = first_lsn
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size  # where the records end (the next append's offset)
        self.zeroed = self.size  # the file's length: zeros from size up to here
        self.count = 0  # records indexed in this segment

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # a sync running outside the log's lock skips a closed segment
        os.close(fd)

    def fsync(self) -> None:
        """fsync this segment, unless truncation closed it meanwhile (nothing of it is needed then)."""
        fd = self.fd
        if fd < 0:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF or self.fd >= 0:
                raise


def _scan_segment(data: bytes, expected_lsn: int):
    """Yield (offset, end, record) for the valid records of one segment, stopping at the first bad one."""
    off = 0
    while off + _REC_HEADER.size <= len(data):
        length, crc = _REC_HEADER.unpack_from(data, off)
        end = off + _REC_HEADER.size + length
        if length > _MAX_RECORD or end > len(data):
            return
        payload = data[off + _REC_HEADER.size : end]
        if zlib.crc32(payload) != crc:
            return
        try:
            record = decode_payload(payload)
        except (ProtocolError, ValueError, TypeError, msgpack.UnpackException):
            return
        if record.lsn != expected_lsn:
            return
        yield off, end, record
        off, expected_lsn = end, expected_lsn + 1


class DurableLog:
    """Append-only, segmented, CRC-checked, thread-safe (one internal threading.Lock)."""

    def __init__(self, directory: Path, segment_bytes: int = 16 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        # One sync at a time: a second one started meanwhile would find nothing dirty and
        # return an LSN whose fsync the first is still waiting for
        self._sync_serial = threading.Lock()
        self._segments: list[_Segment] = []
        self._dirty: set[_Segment] = set()
        self._dir_dirty = False
        self._reset_index(0)
        base = read_json(self.directory / "base.json", {}) or {}
        self._base_next = int(base.get("next_lsn", 1))
        # "epoch" is the key written before the role sequence had one name
        self._base_role_sequence = int(base.get("role_sequence", base.get("epoch", 0)))
        self._generation = int(base.get("generation", 0))
        self._open_segments()

    # --- index ------------------------------------------------------------------

    def _reset_index(self, cum_before: int) -> None:
        self._first = 0  # LSN of _segs[0], 0 when empty
        self._segs: list[_Segment] = []  # per record
        self._offsets: list[int] = []
        self._role_sequences: list[int] = []
        self._cum: list[int] = []  # cumulative nbytes up to and including the record
        self._cum_before = cum_before
        self._forget_recent()

    def _forget_recent(self) -> None:
        self._recent: list[LogRecord] = []  # the newest records as appended, contiguous, ending at the last
        self._recent_bytes = 0

    def _remember(self, records: Sequence[LogRecord]) -> None:
        """Keep what was just appended; drop the oldest kept past RECENT_BYTES (a record larger alone is not kept)."""
        self._recent.extend(records)
        self._recent_bytes += sum(r.nbytes for r in records)
        if self._recent_bytes > RECENT_BYTES:
            drop = 0
            while self._recent_bytes > RECENT_BYTES:
                self._recent_bytes -= self._recent[drop].nbytes
                drop += 1
            del self._recent[:drop]

    def _index(self, seg: _Segment, offset: int, record: LogRecord) -> None:
        if not self._segs:
            self._first = record.lsn
        self._segs.append(seg)
        self._offsets.append(offset)
        self._role_sequences.append(record.role_sequence)
        self._cum.append((self._cum[-1] if self._cum else self._cum_before) + record.nbytes)
        seg.count += 1

    # --- opening ----------------------------------------------------------------

    def _list_segments(self) -> list[tuple[int, Path]]:
        """Segments of the current generation, by first LSN; leftovers of older ones are deleted."""
        found = []
        for path in self.directory.iterdir():
            m = _SEGMENT_NAME.match(path.name)
            if not m:
                continue
            if int(m.group(2)) != self._generation:
                path.unlink()
                self._dir_dirty = True
                continue
            found.append((int(m.group(1)), path))
        return sorted(found)

    def _open_segments(self) -> None:
        """Rebuild the index; the first invalid record ends the log (the rest is cut off)."""
        expected = None
        listing = self._list_segments()
        for i, (first_lsn, path) in enumerate(listing):
            if expected is not None and first_lsn != expected:
                self._drop_files([p for _, p in listing[i:]])
                break
            seg = _Segment(path, first_lsn)
            self._segments.append(seg)
            end, zeros_after = self._load_segment(seg)
            expected = first_lsn + seg.count
            if zeros_after:  # the zeros written ahead (kept: the next append writes into them), or nothing
                seg.size = end
                continue
            self._cut(seg, end)  # a torn or lost write: the log ends here
            self._drop_files([p for _, p in listing[i + 1 :]])
            break
        self._drop_empty_tail()
        self._sync_dir_if_dirty()

    def _load_segment(self, seg: _Segment) -> tuple[int, bool]:
        """Index the valid records of `seg`; return the offset where they end, and whether only zeros follow."""
        data = os.pread(seg.fd, seg.size, 0)
        end = 0
        for off, end, record in _scan_segment(data, seg.first_lsn):
            self._index(seg, off, record)
        return end, not data[end:].strip(b"\0")

    def _cut(self, seg: _Segment, end: int) -> None:
        """Truncate a torn or corrupt tail, or zeros ahead, durably."""
        os.ftruncate(seg.fd, end)
        os.fsync(seg.fd)
        seg.size = seg.zeroed = end

    def _drop_files(self, paths: list[Path]) -> None:
        for path in paths:
            path.unlink()
        self._dir_dirty = self._dir_dirty or bool(paths)

    def _drop_empty_tail(self) -> None:
        """An empty segment holds nothing; remove it so names stay first-LSN-exact."""
        while self._segments and self._segments[-1].count == 0:
            seg = self._segments.pop()
            seg.close()
            self._drop_files([seg.path])
            self._dirty.discard(seg)

    def _sync_dir_if_dirty(self) -> None:
        if self._dir_dirty:
            fsync_dir(self.directory)
            self._dir_dirty = False

    # --- properties -------------------------------------------------------------

    @property
    def first_lsn(self) -> int:
        """LSN of the oldest retained record, 0 if empty."""
        with self._lock:
            return self._first

    @property
    def last_lsn(self) -> int:
        """LSN of the newest record; when empty, the LSN before the next append."""
        with self._lock:
            return self._last()

    def _last(self) -> int:
        return self._first + len(self._segs) - 1 if self._segs else self._base_next - 1

    @property
    def last_role_sequence(self) -> int:
        """Role sequence of the newest record, or the one given to reset(); 0 if never set."""
        with self._lock:
            return self._role_sequences[-1] if self._role_sequences else self._base_role_sequence

    @property
    def size_bytes(self) -> int:
        """Bytes retained on disk."""
        with self._lock:
            return sum(seg.size for seg in self._segments)

    # --- appending --------------------------------------------------------------

    def append(self, records: Sequence[LogRecord]) -> None:
        """Append contiguous records starting at last_lsn+1 (written and flushed, not fsynced)."""
        with self._lock:
            expected = self._last() + 1
            for i, record in enumerate(records):
                if record.lsn != expected + i:
                    raise ValueError(f"append: record LSN {record.lsn}, expected {expected + i}")
            mark = (len(self._segs), len(self._segments), self._segments[-1].size if self._segments else 0)
            try:
                for record in records:
                    self._append_one(record, encode_record(record))
            except OSError:
                self._undo_appends(*mark)  # all or nothing: a full disk must not leave half a capture
                raise
            self._remember(records)

    def _undo_appends(self, records: int, segments: int, last_size: int) -> None:
        """Forget what one append() added: index entries, new segment files, bytes at the tail."""
        for seg in self._segs[records:]:
            seg.count -= 1
        for lst in (self._segs, self._offsets, self._role_sequences, self._cum):
            del lst[records:]
        while len(self._segments) > segments:
            self._forget(self._segments.pop())
        if self._segments:
            seg = self._segments[-1]
            seg.size = seg.zeroed = last_size
            os.ftruncate(seg.fd, last_size)  # freeing space cannot fail for want of it
        if not self._segs:
            self._first = 0

    def _append_one(self, record: LogRecord, data: bytes) -> None:
        seg = self._active_for(record.lsn)
        offset = seg.size
        if offset + len(data) > seg.zeroed:
            self._zero_ahead(seg, offset + len(data))
        view = memoryview(data)
        while view:
            view = view[os.pwrite(seg.fd, view, offset + len(data) - len(view)) :]
        seg.size += len(data)
        self._dirty.add(seg)
        self._index(seg, offset, record)

    def _zero_ahead(self, seg: _Segment, need: int) -> None:
        """Write zeros from the file's end past `need`, to the next ZERO_STEP boundary (see "Zeros ahead").

        Never past the segment's size (it rolls over there), unless a record itself reaches beyond.
        """
        end = max(need, min(-(-need // ZERO_STEP) * ZERO_STEP, self.segment_bytes))
        at = seg.zeroed
        while at < end:
            at += os.pwrite(seg.fd, memoryview(_ZEROS)[: min(ZERO_STEP, end - at)], at)
            seg.zeroed = at

    def _active_for(self, lsn: int) -> _Segment:
        """The segment to append `lsn` to, rolling over to a new file when full."""
        if self._segments and self._segments[-1].size < self.segment_bytes:
            return self._segments[-1]
        path = self.directory / f"{lsn:020d}.{self._generation}.seg"
        seg = _Segment(path, lsn)
        if seg.size:  # a stale file of that name cannot hold valid data here
            self._cut(seg, 0)
        self._segments.append(seg)
        self._dir_dirty = True
        return seg

    def sync(self) -> int:
        """Make every record appended so far durable; return the last LSN that is now durable.

        The fsyncs run outside the lock, so appends go on meanwhile (group commit:
        whatever was appended before this call is covered, later appends wait for
        the next sync). A failed fsync leaves the segments marked dirty. Syncs
        from several threads take turns.
        """
        with self._sync_serial:
            with self._lock:
                upto = self._last()
                dirty, self._dirty = self._dirty, set()
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            try:
                for seg in dirty:
                    seg.fsync()
                if dir_dirty:
                    fsync_dir(self.directory)
            except BaseException:
                with self._lock:
                    self._dirty |= {seg for seg in dirty if seg.fd >= 0}
                    self._dir_dirty = self._dir_dirty or dir_dirty
                raise
            return upto

    # --- reading ----------------------------------------------------------------

    def get(self, lsn: int) -> LogRecord | None:
        """The record at `lsn`, or None if it is not retained."""
        with self._lock:
            if not self._segs or not self._first <= lsn <= self._last():
                return None
            raw = self._read_span(lsn - self._first, lsn - self._first + 1)
        return self._decode_span(raw, lsn)[0]

    def read_from(self, lsn: int, max_bytes: int) -> list[LogRecord]:
        """Records from `lsn` on, up to max_bytes of nbytes (at least one); LookupError if truncated away."""
        with self._lock:
            if lsn > self._last():
                return []
            if not self._segs or lsn < self._first:
                raise LookupError(f"log record {lsn} was truncated (first retained: {self._first})")
            recent = self._recent
            if recent and recent[0].lsn <= lsn:
                i = lsn - recent[0].lsn
                taken, total = [recent[i]], recent[i].nbytes
                for record in recent[i + 1:]:
                    total += record.nbytes
                    if total > max_bytes:
                        break
                    taken.append(record)
                return taken
            lo = lsn - self._first
            hi = lo + 1
            start_cum = self._cum[lo] - self._nbytes_at(lo)
            while hi < len(self._cum) and self._cum[hi] - start_cum <= max_bytes:
                hi += 1
            raws = self._read_span(lo, hi)
        return self._decode_span(raws, lsn)

    def _nbytes_at(self, i: int) -> int:
        return self._cum[i] - (self._cum[i - 1] if i else self._cum_before)

    def _read_span(self, lo: int, hi: int) -> list[bytes]:
        """Raw bytes of records [lo, hi) (index positions), one pread per segment."""
        chunks, i = [], lo
        while i < hi:
            seg = self._segs[i]
            j = i
            while j < hi and self._segs[j] is seg:
                j += 1
            start = self._offsets[i]
            end = self._offsets[j] if j < len(self._segs) and self._segs[j] is seg else seg.size
            chunks.append(os.pread(seg.fd, end - start, start))
            i = j
        return chunks

    @staticmethod
    def _decode_span(chunks: list[bytes], first_lsn: int) -> list[LogRecord]:
        """Decode records from raw segment bytes, checking CRC and LSN order."""
        records = []
        for data in chunks:
            off = 0
            while off < len(data):
                length, crc = _REC_HEADER.unpack_from(data, off)
                payload = data[off + _REC_HEADER.size : off + _REC_HEADER.size + length]
                if len(payload) != length or zlib.crc32(payload) != crc:
                    raise LogCorrupt(f"log record {first_lsn + len(records)}: checksum mismatch on read")
                record = decode_payload(payload)
                if record.lsn != first_lsn + len(records):
                    raise LogCorrupt(f"log record {first_lsn + len(records)}: found LSN {record.lsn}")
                records.append(record)
                off += _REC_HEADER.size + length
        return records

    def bytes_between(self, after_lsn: int, upto_lsn: int) -> int:
        """Sum of nbytes of retained records in (after_lsn, upto_lsn]."""
        with self._lock:
            if not self._segs:
                return 0
            return self._cum_at(upto_lsn) - self._cum_at(after_lsn)

    def _cum_at(self, lsn: int) -> int:
        """Cumulative nbytes through `lsn`, clamped to the retained range."""
        i = min(lsn, self._last()) - self._first
        return self._cum[i] if i >= 0 else self._cum_before

    def pages_touched(self, first: int, last: int, batch_bytes: int = 8 << 20) -> set[int] | None:
        """Page numbers written by records first..last, or None if the log no longer holds them all."""
        if first > last:
            return set()
        if self.first_lsn == 0 or self.first_lsn > first or self.last_lsn < last:
            return None
        touched: set[int] = set()
        while first <= last:
            records = [r for r in self.read_from(first, batch_bytes) if r.lsn <= last]
            for record in records:
                touched.update(pgno for pgno, _ in record.pages)
            first = records[-1].lsn + 1
        return touched

    def role_sequence_at(self, lsn: int) -> int | None:
        """Role sequence of the record at `lsn` (or of the reset point), None if unknown."""
        with self._lock:
            if self._segs and self._first <= lsn <= self._last():
                return self._role_sequences[lsn - self._first]
            if lsn == self._base_next - 1 and lsn >= 1 and (not self._segs or self._first == self._base_next):
                return self._base_role_sequence
            return None

    # --- truncation -------------------------------------------------------------

    def truncate_before(self, lsn: int) -> None:
        """Delete whole segments all of whose records are < lsn (never the active one)."""
        with self._lock:
            dropped = 0
            while len(self._segments) > 1 and self._segments[1].first_lsn <= lsn:
                seg = self._segments.pop(0)
                dropped += seg.count
                self._forget(seg)
            if dropped:
                self._cum_before = self._cum[dropped - 1]
                for lst in (self._segs, self._offsets, self._role_sequences, self._cum):
                    del lst[:dropped]
                self._first += dropped
                self._sync_dir_if_dirty()

    def _forget(self, seg: _Segment) -> None:
        seg.close()
        self._dirty.discard(seg)
        self._drop_files([seg.path])

    def truncate_after(self, lsn: int) -> None:
        """Remove every record > lsn, durably (used to roll back a fork)."""
        with self._lock:
            if lsn >= self._last():
                return
            if not self._segs or lsn < self._first:
                self._start_generation(lsn + 1, self._base_role_sequence)
                return
            keep = lsn - self._first + 1
            seg, offset = self._segs[keep], self._offsets[keep]
            while self._segments[-1] is not seg:
                self._forget(self._segments.pop())
            for dropped in self._segs[keep:]:
                dropped.count -= 1
            for lst in (self._segs, self._offsets, self._role_sequences, self._cum):
                del lst[keep:]
            self._forget_recent()
            self._cut(seg, offset)
            self._drop_empty_tail()
            self._sync_dir_if_dirty()

    def reset(self, next_lsn: int, role_sequence: int) -> None:
        """Delete everything durably; the next append must be next_lsn."""
        if next_lsn < 1:
            raise ValueError("reset: next_lsn must be >= 1")
        with self._lock:
            self._start_generation(next_lsn, role_sequence)

    def _start_generation(self, next_lsn: int, role_sequence: int) -> None:
        """Commit a new empty log (base.json), then delete the old generation's files."""
        self._generation += 1
        atomic_write_json(
            self.directory / "base.json",
            {"next_lsn": next_lsn, "role_sequence": role_sequence, "generation": self._generation},
        )
        self._base_next, self._base_role_sequence = next_lsn, role_sequence
        while self._segments:
            self._forget(self._segments.pop())
        self._reset_index(0)
        self._sync_dir_if_dirty()

    def close(self) -> None:
        """Sync and close every segment file; a clean close leaves no zeros ahead of the records."""
        self.sync()
        with self._lock:
            for seg in self._segments:
                if seg.zeroed > seg.size:
                    self._cut(seg, seg.size)
                seg.close()
            self._segments = []
            self._reset_index(0)
