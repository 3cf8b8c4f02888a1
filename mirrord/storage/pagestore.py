"""The mirror's page store and the redo thread that fills it.

The page store is the mirror's copy of the SQLite database file: page N lives
at byte (N-1)*page_size, and after a transaction the file is exactly
db_size*page_size bytes long. That is what a SQLite checkpoint produces, so
when redo has reached LSN x the file equals the principal's database at x
(invariant I3), and it opens as an ordinary SQLite database on failover.

The redo thread applies hardened log records in LSN order, whole transactions
at a time, in the order LiteFS uses: write pages, truncate to the commit size,
sync the store, and only then persist the new redo LSN. A crash therefore
re-applies a batch (harmless: records are full page images) and never skips
one. Any failure stops the thread: a partially applied batch must not be
served, and the node recovers from its durable log on restart.

Why the sync and the persist are batched in time (PERSIST_INTERVAL): they cost
three fsyncs and a rename, and done after every small transaction they competed
with the hardening fsync that SAFETY FULL commits wait for (the profile showed
them at about half of the mirror's busy time). Redo is not on the commit path
and the durable log keeps everything past the persisted LSN, so persisting it
later only means a crash re-applies a little more. Stopping always persists:
a promotion opens the copy only after that.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from mirrord.storage.fileutil import NO_SPACE, atomic_write_bytes, pread_all, pwrite_all, remove_sqlite_sidecars
from mirrord.core.page_repair import CHECKSUM_BYTES, page_checksum
from mirrord.storage.log import DurableLog, LogRecord


class PageStore:
    """The mirror's copy of the SQLite database file: page N at byte (N-1)*page_size.

    With `checksums` (a path beside the store), it also keeps a crc32 of every
    page there (after a header naming the page size, which a damaged page 1
    cannot then hide), noted (in memory) with the page whenever redo writes it,
    and written and synced with the store (automatic page repair: a page
    whose bytes no longer match is damaged). A crash re-applies redo from the
    persisted LSN, rewriting page and checksum alike, so the two agree again.
    A map that is missing or of the wrong length is rebuilt from the store's
    pages as they are (after a seed, and once after an upgrade).
    """

    def __init__(self, path: Path, checksums: Path | None = None) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.lock = threading.Lock()  # a page and its checksum change together (redo, repair) or are read together (scrub)
        self._sums_path = checksums
        self._sums_fd = -1
        # the checksums, in memory as on disk after the header (4 bytes a page: 1 MB for a 1 GB database);
        # the blocks changed since the last sync, and whether the size or the header changed
        self._sums = bytearray()
        self._dirty: set[int] = set()
        self._resized = self._header_due = False
        self._page_size: int | None = None
        if checksums is not None:
            self._open_checksums()
        # database snapshots (storage/snapshot.py): before redo overwrites or cuts off a page, each saves its image.
        # cow_lock is held for a whole batch of redo, and by a snapshot's creation and drop, so a snapshot is
        # made between batches (at exactly the redo LSN) and the list never changes while a batch runs.
        self.snapshots: list = []
        self.cow_lock = threading.Lock()
        self.on_snapshot_failed: Callable[[object, BaseException], None] | None = None

    # ------------------------------------------------------------ checksums

    def _open_checksums(self) -> None:
        self._sums_fd = os.open(self._sums_path, os.O_RDWR | os.O_CREAT, 0o644)
        header = os.pread(self._sums_fd, SUMS_HEADER.size, 0)
        # the map names the page size itself: a damaged page 1 must not make the store's header the judge
        kept = _checked_page_size(SUMS_HEADER.unpack(header)[1]) if len(header) == SUMS_HEADER.size and header[:4] == SUMS_MAGIC else None
        self._page_size = kept or _header_page_size(self._fd)
        if self._page_size is None:
            os.ftruncate(self._sums_fd, 0)  # not seeded yet: redo's first record names the page size
            return
        pages = os.fstat(self._fd).st_size // self._page_size
        if kept is None or os.fstat(self._sums_fd).st_size != _sum_offset(pages + 1):
            self.rebuild_checksums()
        else:
            self._sums = bytearray(pread_all(self._sums_fd, pages * CHECKSUM_BYTES, SUMS_HEADER.size))

    def rebuild_checksums(self) -> None:
        """Checksum every page of the store as it is now."""
        size = self._page_size
        out = bytearray()
        with self.lock:
            pages = os.fstat(self._fd).st_size // size
            for first in range(0, pages, 256):
                data = os.pread(self._fd, 256 * size, first * size)
                for i in range(0, len(data), size):
                    out += page_checksum(data[i:i + size]).to_bytes(CHECKSUM_BYTES, "little")
            os.ftruncate(self._sums_fd, 0)
            pwrite_all(self._sums_fd, SUMS_HEADER.pack(SUMS_MAGIC, size) + out, 0)
            os.fsync(self._sums_fd)
            self._sums, self._dirty = out, set()

    @property
    def _sums_pages(self) -> int:
        return len(self._sums) // CHECKSUM_BYTES

    @property
    def page_count(self) -> int:
        """Pages in the store now (0 before its first page)."""
        if not self._page_size:
            return 0
        return os.fstat(self._fd).st_size // self._page_size

    @property
    def page_size(self) -> int | None:
        return self._page_size

    def _note_written(self, pgno: int, image: bytes) -> None:
        """The page's new checksum, in memory (one syscall per page cost redo a third of its speed): sync() writes it."""
        if self._sums_fd < 0:
            return
        if pgno > self._sums_pages:  # a rewind writes pages before it sets the size
            self._note_size(pgno, len(image))
        at = (pgno - 1) * CHECKSUM_BYTES
        self._sums[at:at + CHECKSUM_BYTES] = page_checksum(image).to_bytes(CHECKSUM_BYTES, "little")
        self._dirty.add(at // SUMS_BLOCK)

    def _note_size(self, db_size: int, page_size: int) -> None:
        if self._sums_fd < 0:
            return
        if self._page_size is None:  # the first record of a store that had no header
            self._page_size = page_size
            self._header_due = True
        old = self._sums_pages
        if db_size == old:
            return
        if db_size > old:  # pages the size grew by without a write hold zeros (as the store does)
            self._sums += page_checksum(bytes(page_size)).to_bytes(CHECKSUM_BYTES, "little") * (db_size - old)
        else:
            del self._sums[db_size * CHECKSUM_BYTES:]
        self._dirty.update(range(min(old, db_size) * CHECKSUM_BYTES // SUMS_BLOCK, len(self._sums) // SUMS_BLOCK + 1))
        self._resized = True

    def _write_checksums(self) -> None:
        """Write the checksums changed since the last sync, block by block (and the size, and the header)."""
        if self._header_due:
            pwrite_all(self._sums_fd, SUMS_HEADER.pack(SUMS_MAGIC, self._page_size), 0)
            self._header_due = False
        for block in sorted(self._dirty):
            chunk = self._sums[block * SUMS_BLOCK:(block + 1) * SUMS_BLOCK]
            if chunk:
                pwrite_all(self._sums_fd, bytes(chunk), SUMS_HEADER.size + block * SUMS_BLOCK)
        self._dirty.clear()
        if self._resized:
            os.ftruncate(self._sums_fd, SUMS_HEADER.size + len(self._sums))
            self._resized = False

    def damaged(self, first: int, count: int) -> tuple[list[int], int]:
        """(pages of first..first+count-1 whose bytes do not match their checksum, pages read).

        Reads under the lock: redo writes no page of the range meanwhile.
        """
        if self._sums_fd < 0 or not self._page_size:
            return [], 0
        size = self._page_size
        with self.lock:
            pages = os.fstat(self._fd).st_size // size
            count = max(0, min(count, pages - first + 1))
            if count == 0:
                return [], 0
            data = os.pread(self._fd, count * size, (first - 1) * size)
            sums = bytes(self._sums[(first - 1) * CHECKSUM_BYTES:(first - 1 + count) * CHECKSUM_BYTES])
        bad = []
        for i in range(count):
            image = data[i * size:(i + 1) * size]
            kept = sums[i * CHECKSUM_BYTES:(i + 1) * CHECKSUM_BYTES]
            if len(image) != size or len(kept) != CHECKSUM_BYTES or page_checksum(image) != int.from_bytes(kept, "little"):
                bad.append(first + i)
        return bad, count

    def read_whole(self, pages: Sequence[int]) -> list[tuple[int, bytes]]:
        """The images of those pages that match their checksum (pages past the end, or damaged, left out)."""
        out = []
        with self.lock:
            for pgno in pages:
                if not self._page_size or pgno > self._sums_pages:
                    continue
                image = os.pread(self._fd, self._page_size, (pgno - 1) * self._page_size)
                kept = self._sums[(pgno - 1) * CHECKSUM_BYTES:pgno * CHECKSUM_BYTES]
                if len(image) == self._page_size and page_checksum(image) == int.from_bytes(kept, "little"):
                    out.append((pgno, image))
        return out

    def read_error(self, first: int, count: int) -> list[int]:
        """Pages of the range a read fails on (an I/O error, 823): each page read alone."""
        bad = []
        for pgno in range(first, first + count):
            try:
                os.pread(self._fd, self._page_size, (pgno - 1) * self._page_size)
            except OSError:
                bad.append(pgno)
        return bad

    def repair(self, pgno: int, image: bytes) -> bool:
        """Write a partner's image of a page (and its checksum), synced; False if the page is past the end."""
        with self.lock:
            if not self._page_size or len(image) != self._page_size or pgno > self.page_count:
                return False
            pwrite_all(self._fd, image, (pgno - 1) * self._page_size)
            self._note_written(pgno, image)
        self.sync()
        return True

    # ------------------------------------------------------------ redo

    def apply(self, records: Sequence[LogRecord]) -> None:
        """Apply whole records in LSN order: write each page, then set the file to db_size pages.

        Database snapshots first save, durably, the images the batch would
        overwrite or cut off (copy-on-write); the caller holds cow_lock when
        there may be snapshots.
        """
        if self.snapshots:
            self._save_for_snapshots(records)
        for record in records:
            with self.lock:
                self._apply_one(record)

    def _save_for_snapshots(self, records: Sequence[LogRecord]) -> None:
        from mirrord.core.snapshots import pages_to_save

        batch = [([pgno for pgno, _ in r.pages], r.db_size) for r in records]
        size = records[0].page_size
        before = os.fstat(self._fd).st_size // size
        for snap in list(self.snapshots):
            pages = pages_to_save(batch, before, snap.meta.page_count, snap.is_saved)
            try:
                snap.save(pages, lambda pgno: os.pread(self._fd, size, (pgno - 1) * size))
            except OSError as exc:
                # a snapshot that cannot save (a full disk) is dropped, never the mirror stopped: the
                # reference's sparse file out of space marks the snapshot suspect, not the database
                # made durably no snapshot before any page is overwritten; if even that fails, the batch is
                # retried (a full disk) or redo stops, and the snapshot stays in the list until it succeeds
                snap.invalidate(f"saving pages before redo failed: {exc}")
                self.snapshots.remove(snap)
                if self.on_snapshot_failed is not None:
                    self.on_snapshot_failed(snap, exc)

    def fsync_pages(self) -> None:
        """Make the pages written so far durable (a snapshot's creation: a restart must find them as of its LSN)."""
        os.fsync(self._fd)

    def write_pages(self, pages: Sequence[tuple[int, bytes]], page_size: int) -> None:
        """Write page images (a rewind); the size is set apart, by truncate()."""
        for pgno, image in pages:
            pwrite_all(self._fd, image, (pgno - 1) * page_size)
            self._note_written(pgno, image)

    def truncate(self, db_size: int, page_size: int) -> None:
        """Make the file exactly db_size pages long."""
        os.ftruncate(self._fd, db_size * page_size)
        self._note_size(db_size, page_size)

    def _apply_one(self, record: LogRecord) -> None:
        size = record.page_size
        if self._sums_fd >= 0:
            self._note_size(max(record.db_size, self._sums_pages), size)  # room for the checksums of new pages
        for pgno, image in record.pages:
            pwrite_all(self._fd, image, (pgno - 1) * size)
            self._note_written(pgno, image)
        os.ftruncate(self._fd, record.db_size * size)
        self._note_size(record.db_size, size)

    def sync(self) -> None:
        """Make applied pages (and their checksums) durable (on the redo thread, the only one that writes either)."""
        os.fsync(self._fd)
        if self._sums_fd >= 0:
            self._write_checksums()
            os.fsync(self._sums_fd)

    def close(self) -> None:
        """Close the file (does not sync)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._sums_fd >= 0:
            os.close(self._sums_fd)
            self._sums_fd = -1


SUMS_MAGIC = b"MPC1"
SUMS_HEADER = struct.Struct(">4sI")  # magic, page size; then 4 bytes (crc32, little-endian) per page
SUMS_BLOCK = 4096  # bytes of checksums written at a time at a sync (1024 pages)


def _sum_offset(pgno: int) -> int:
    return SUMS_HEADER.size + (pgno - 1) * CHECKSUM_BYTES


def _checked_page_size(size: int) -> int | None:
    return size if 512 <= size <= 65536 and size & (size - 1) == 0 else None


def _header_page_size(fd: int) -> int | None:
    header = os.pread(fd, 18, 0)
    if len(header) < 18:
        return None
    size = int.from_bytes(header[16:18], "big")
    return _checked_page_size(65536 if size == 1 else size)


def load_redo_lsn(path: Path) -> int:
    """The persisted redo LSN, 0 if none was persisted yet."""
    try:
        return int(Path(path).read_bytes().decode().strip() or 0)
    except FileNotFoundError:
        return 0


# Tests and benchmarks only (the redo queue limit's): redo, and the redo a promotion finishes, go no faster than
# this many KB/s, as a mirror on a slow disk would. Unset, empty or not a positive integer: no cap.
TEST_REDO_RATE_ENV = "MIRRORD_TEST_REDO_KB_S"


def redo_rate_cap() -> int:
    """The redo cap of TEST_REDO_RATE_ENV in bytes per second, 0 for none."""
    text = os.environ.get(TEST_REDO_RATE_ENV, "")
    return int(text) * 1024 if text.isdigit() and 0 < int(text) < 1 << 40 else 0


def _paced_batch(batch_bytes: int, rate: int) -> int:
    """Smaller batches under a cap, so that progress moves in steps of about a tenth of a second."""
    return max(16 << 10, min(batch_bytes, rate // 10)) if rate else batch_bytes


def apply_log_range(path: Path, log: DurableLog, first: int, last: int, batch_bytes: int = 8 << 20,
                    rate: int = 0) -> None:
    """Apply the log's records first..last, in LSN order, to a database file, and sync it (at most rate bytes/s if set)."""
    store = PageStore(path)
    batch_bytes = _paced_batch(batch_bytes, rate)
    try:
        while first <= last:
            records = [r for r in log.read_from(first, batch_bytes) if r.lsn <= last]
            if rate:
                time.sleep(sum(r.nbytes for r in records) / rate)
            store.apply(records)
            first = records[-1].lsn + 1
        store.sync()
    finally:
        store.close()


def rebuild_from_log(path: Path, log: DurableLog, redo_lsn_path: Path, batch_bytes: int = 8 << 20) -> int:
    """Bring a database file up to the end of the log from its persisted redo LSN; return that end.

    The principal's database file is durable up to the redo LSN it persisted at
    its last complete checkpoint; what came after lived in SQLite's WAL, which a
    power cut may have cut short. The synced log holds all of it as full page
    images, so applying them in LSN order gives the database at the end of the
    log, exactly as redo does on the mirror. Raises LookupError if the log no
    longer reaches back to the redo LSN.
    """
    start, end = load_redo_lsn(redo_lsn_path) + 1, log.last_lsn
    if start > end:
        return end
    apply_log_range(path, log, start, end, batch_bytes, rate=redo_rate_cap())
    remove_sqlite_sidecars(path)  # what the WAL held is in the file now; a stale WAL must not be replayed over it
    atomic_write_bytes(redo_lsn_path, str(end).encode())
    return end


NO_SPACE_RETRY = 0.5  # seconds redo waits before trying a batch again on a full disk
# seconds an applied redo LSN may wait to be made durable: a crash re-applies at most this much of
# the log (a second of commits is a few MB of page images); more often, the three fsyncs a persist
# costs took a third of the mirror's busy time at 8 clients (benchmarks/profile_commit.py)
PERSIST_INTERVAL = 1.0


class RedoThread(threading.Thread):
    """Applies hardened log records to the page store, in LSN order, whole transactions at a time."""

    def __init__(
        self,
        log: DurableLog,
        store: PageStore,
        redo_lsn_path: Path,
        *,
        on_progress: Callable[[int], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        batch_bytes: int = 8 << 20,
        persist_interval: float = PERSIST_INTERVAL,
    ) -> None:
        super().__init__(name=f"redo:{store.path.name}", daemon=True)
        self._log, self._store, self._path = log, store, Path(redo_lsn_path)
        self._on_progress, self._on_error = on_progress, on_error
        self._rate = redo_rate_cap()  # 0 but in the tests of the redo queue limit
        self._batch_bytes = _paced_batch(batch_bytes, self._rate)
        self._cond = threading.Condition()
        self._persisted = load_redo_lsn(self._path)  # durable: a restart redoes from here
        self._applied = self._persisted  # in the page store (the OS's cache until the next persist)
        self._applied_in_store = self._applied  # the same, set under the store's cow_lock (snapshot creation)
        self._hardened = self._persisted
        self._persist_interval = persist_interval
        self._persist_due = 0.0
        self._stopping = False
        self._done = False  # exited (stopped or failed): waiters must not wait forever
        # DBCC CHECKMIRROR: apply nothing past the lowest of these LSNs (by token) while any is set
        self._holds: dict[int, int] = {}
        self._next_hold = 0
        # automatic page repair: suspect pages -> the LSN of the last record redo wrote them with since they
        # became suspect (0: none), and the partner's images waiting for redo to reach their LSN
        self._suspect: dict[int, int] = {}
        self._repairs: list[tuple[int, int, bytes | None, Callable[[int, str], None]]] = []
        self.error: BaseException | None = None

    @property
    def redo_lsn(self) -> int:
        """Everything up to this LSN is in the page store (durably after the next persist or stop)."""
        with self._cond:
            return self._applied

    @property
    def persisted_lsn(self) -> int:
        """Everything up to this LSN is durably in the page store: a restart redoes only what follows."""
        return self._persisted  # one int, written by the redo thread after the page store's sync

    @property
    def store_lsn(self) -> int:
        """The LSN the page store is at; read under the store's cow_lock, exact (a snapshot's creation)."""
        with self._cond:
            return self._applied_in_store

    def notify(self, hardened_lsn: int) -> None:
        """Tell the thread there is hardened log up to `hardened_lsn` to redo."""
        with self._cond:
            if hardened_lsn > self._hardened:
                self._hardened = hardened_lsn
                self._cond.notify_all()

    def wait_for(self, lsn: int, timeout: float) -> bool:
        """Block until redo_lsn >= lsn (True) or the timeout passes / the thread exits (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._applied >= lsn or self._done, timeout)
            return self._applied >= lsn

    def hold_at(self, lsn: int) -> int:
        """Apply nothing past lsn until release(token) (the page store then holds still at lsn for a check).

        Holds are counted apart, so two checks at once each keep their own
        (redo stops at the lower) and neither's release ends the other's.
        """
        with self._cond:
            self._next_hold += 1
            self._holds[self._next_hold] = lsn
            return self._next_hold

    def release(self, token: int) -> None:
        """End the hold hold_at returned this token for: redo goes on (up to any other hold)."""
        with self._cond:
            self._holds.pop(token, None)
            self._cond.notify_all()

    def mark_suspect(self, pages: Sequence[int]) -> None:
        """These pages are damaged: note from now on whether redo rewrites them (page repair)."""
        with self._cond:
            for pgno in pages:
                self._suspect.setdefault(pgno, 0)

    def forget_suspect(self, pages: Sequence[int]) -> None:
        """No repair of these pages is coming (the request failed): stop tracking them."""
        with self._cond:
            for pgno in pages:
                self._suspect.pop(pgno, None)

    def repair(self, lsn: int, pgno: int, image: bytes | None, done: Callable[[int, str], None]) -> None:
        """Write the partner's image of pgno as of lsn once redo has reached lsn; done(pgno, outcome) from this thread.

        outcome: "repaired" (written), "rewritten" (a record past lsn rewrote
        the page whole: the older image must not go over it), "gone" (the
        database no longer has the page; image None: the partner's had no such page at lsn),
        "dropped" (the thread stopped, or failed, before redo reached lsn: nothing
        written, the page is as damaged as it was). A stop first writes the images
        redo has reached.
        """
        with self._cond:
            exited = self._done
            if not exited:
                self._repairs.append((lsn, pgno, image, done))
                self._cond.notify_all()
        if exited:  # too late for this thread: the caller asks again for the next one
            done(pgno, "dropped")

    def _due_repairs(self) -> list:
        """The repairs whose LSN redo has reached (called with _cond held); removed from the queue."""
        due = [r for r in self._repairs if r[0] <= self._applied]
        if due:
            self._repairs = [r for r in self._repairs if r[0] > self._applied]
        return due

    def _do_repairs(self, due: list) -> None:
        """Write the due images in turn; one a write fails on (OSError), and those after it, go back in the queue."""
        while due:
            lsn, pgno, image, done = due[0]
            with self._cond:
                rewritten = self._suspect.get(pgno, 0) > lsn
            try:
                if rewritten:
                    outcome = "rewritten"
                elif image is None:  # the partner's database had no such page at lsn: redo has cut it off since
                    outcome = "gone"
                else:
                    outcome = "repaired" if self._store.repair(pgno, image) else "gone"
            except OSError:
                with self._cond:  # tried again at the next turn (a full disk passes), or handed back at the exit
                    self._repairs[:0] = due
                raise
            due.pop(0)
            with self._cond:
                if not any(r[1] == pgno for r in self._repairs):  # another image of it still waits: keep tracking
                    self._suspect.pop(pgno, None)
            done(pgno, outcome)

    def _redo_limit(self) -> int:
        """How far redo may go now: the hardened log, or the lowest hold (called with _cond held)."""
        return min(self._hardened, *self._holds.values()) if self._holds else self._hardened

    def stop(self) -> None:
        """Finish the current batch, persist, and exit; join() afterwards."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def run(self) -> None:
        """Redo loop: wait for hardened log, apply it batch by batch, persist the redo LSN now and then."""
        try:
            while (work := self._wait_for_work()) != "stop":
                try:
                    if work == "redo":
                        self._apply_batch()
                    with self._cond:
                        due = self._due_repairs()
                    if due:
                        self._do_repairs(due)
                    if self._applied > self._persisted and (work == "persist" or time.monotonic() >= self._persist_due):
                        self._persist()
                except OSError as exc:
                    if exc.errno not in NO_SPACE:
                        raise
                    # a full disk passes: retry the batch (full page images: applying again is harmless)
                    with self._cond:
                        self._cond.wait(NO_SPACE_RETRY)
            with self._cond:
                due = self._due_repairs()
            try:
                self._do_repairs(due)  # stopping: an image redo has reached is written now, not lost with the thread
            except OSError:
                pass  # not written (a full disk): handed back below with the others, and asked again
            try:
                self._persist()  # stopping: everything applied becomes durable, so a promotion starts from it
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise  # on a full disk the older redo LSN stands: a restart redoes a little more
        except BaseException as exc:  # noqa: BLE001 - any failure must stop redo and be reported
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
                dropped, self._repairs = self._repairs, []
            # images whose LSN redo never reached: their pages are still damaged, and the caller asks again
            # for the next redo thread (page_repair: a stop must not leave a page waiting for nothing)
            for _, pgno, _, done in dropped:
                done(pgno, "dropped")

    def _wait_for_work(self) -> str:
        """"repair" when a partner's page image is due, "redo" when hardened log waits, "persist" when the applied LSN is due to be made durable, or "stop"."""
        with self._cond:
            while True:
                if self._stopping:
                    return "stop"
                if any(r[0] <= self._applied for r in self._repairs):
                    return "repair"
                if self._redo_limit() > self._applied:
                    return "redo"
                timeout = None
                if self._applied > self._persisted:
                    timeout = self._persist_due - time.monotonic()
                    if timeout <= 0:
                        return "persist"
                self._cond.wait(timeout)

    def _apply_batch(self) -> None:
        """Apply one batch of whole transactions to the page store (not yet synced)."""
        with self._cond:
            start, upto = self._applied + 1, self._redo_limit()
        records = [r for r in self._log.read_from(start, self._batch_bytes) if r.lsn <= upto]
        if not records:
            raise RuntimeError(f"redo: hardened log up to {upto} but no record at {start}")
        if self._rate:  # a slow disk, as tests make it (TEST_REDO_RATE_ENV): stopping ends the wait, the batch unapplied
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, sum(r.nbytes for r in records) / self._rate):
                    return
        lsn = records[-1].lsn
        with self._store.cow_lock:  # a snapshot made meanwhile sees the store and redo_lsn agree
            self._store.apply(records)
            with self._cond:
                self._applied_in_store = lsn
        with self._cond:
            if self._suspect:
                for record in records:
                    touched = {pgno for pgno, _ in record.pages}
                    for pgno in self._suspect:
                        if pgno in touched or pgno > record.db_size:
                            self._suspect[pgno] = record.lsn
        if self._applied == self._persisted:
            self._persist_due = time.monotonic() + self._persist_interval
        with self._cond:
            self._applied = lsn
            self._cond.notify_all()
        if self._on_progress is not None:
            self._on_progress(lsn)

    def _persist(self) -> None:
        """Sync the pages, then persist the applied LSN: a crash re-applies rather than skips."""
        if self._applied == self._persisted:
            return
        lsn = self._applied
        self._store.sync()
        atomic_write_bytes(self._path, str(lsn).encode())
        self._persisted = lsn
