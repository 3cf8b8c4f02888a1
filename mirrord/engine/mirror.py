"""The mirror database: harden received log, redo it into the page store.

Hardening is "append to the durable log, fsync, then acknowledge": the
acknowledged LSN is what a SAFETY FULL principal tells its clients is
committed, so it must be on disk before it leaves this node. The redo thread
applies only hardened records, in LSN order, whole transactions at a time, to
`db.sqlite`, which is never opened by SQLite while this node is the mirror.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path
from typing import Callable, Sequence

import structlog

from mirrord.core.session import Session
from mirrord.core.types import Lsn, ProtocolError
from mirrord.storage.fileutil import (FLUSH_EVERY, atomic_write_bytes, copy_in_steps, fsync_dir, remove_sqlite_sidecars,
                                      sqlite_page_size)
from mirrord.storage.log import DurableLog, LogRecord
from mirrord.core.checkmirror import PageDigests
from mirrord.core.page_repair import ERROR_CHECKSUM, ERROR_IO
from mirrord.storage.checksums import store_digests_apart
from mirrord.storage.pagestore import PageStore, RedoThread
from mirrord.engine.worker_thread import WorkerThread
from mirrord.storage import snapshot as snapfiles
from mirrord.core.snapshots import SnapshotMeta

log = structlog.get_logger()

CHECKSUMS_FILE = "page_checksums"
SNAPSHOTS_DIR = "snapshots"


class MirrorDatabase:
    """A database this node mirrors: durable log, page store, redo thread."""

    def __init__(self, directory: Path, session: Session, dlog: DurableLog, *, log_size_limit: int = 1 << 30) -> None:
        self.directory = directory
        # the same limit as a principal's log (--log-size-limit-mb): past it this copy hardens nothing more
        self.log_size_limit = log_size_limit
        self.on_redo_progress: Callable[[], None] | None = None  # told (on the event loop) when redo went further
        self.path = directory / "db.sqlite"
        self.session = session
        self.log = dlog
        self.redo_error: BaseException | None = None
        self.on_failure: Callable[[str], None] | None = None  # told (on the event loop) when this copy cannot go on
        self._loop = asyncio.get_running_loop()
        self._store: PageStore | None = None
        self._redo: RedoThread | None = None
        self._hardener: WorkerThread | None = None  # appends and fsyncs received log (see harden), from the first frame
        self._seed_tmp: Path | None = None
        self._seed_file = None
        self._page_size: int | None = None  # known once read from the copy's header
        # database snapshots of this copy, by name (storage/snapshot.py); told (on the event loop) of each one
        # dropped other than by DROP DATABASE, with why. Changed by the redo thread too (a failed save) and by
        # a seed's thread: readers copy it whole first (list(items())), which the GIL makes one step
        self.snapshots: dict[str, snapfiles.DatabaseSnapshot] = {}
        self.on_snapshot_dropped: Callable[[str, str], None] | None = None

    @property
    def checksums_path(self) -> Path:
        """The page store's per-page checksums (automatic page repair; storage/pagestore.py)."""
        return self.directory / CHECKSUMS_FILE

    def page_size(self) -> int | None:
        """The page size of this copy (its SQLite header), None while it has no header yet."""
        return sqlite_page_size(self.path)

    def check_records(self, records: Sequence[LogRecord]) -> None:
        """Refuse records this copy cannot take: none before it is seeded, page size the copy's own.

        The page size of a WAL database never changes, so a record with another
        one is forged or corrupt; refusing it before it is hardened changes nothing.
        """
        if not records:
            return
        if self._redo is None:
            raise ProtocolError("log records arrived before this mirror's copy was seeded")
        expected = self._page_size or self.page_size() or records[0].page_size
        for rec in records:
            if rec.page_size != expected:
                raise ProtocolError(f"log record {rec.lsn}: page size {rec.page_size}, but this database's page size is {expected}")
        self._page_size = expected

    @property
    def hardened_lsn(self) -> Lsn:
        """Everything up to here is on this node's disk."""
        return self.log.last_lsn

    @property
    def redo_lsn(self) -> Lsn:
        """Everything up to here is in the page store."""
        return self._redo.redo_lsn if self._redo else self.log.last_lsn

    @property
    def redo_queue_bytes(self) -> int:
        """The redo queue: bytes of log hardened here but not yet redone (this log holds all of them)."""
        redo, hardened = self.redo_lsn, self.log.last_lsn
        return self.log.bytes_between(redo, hardened) if hardened > redo else 0

    def log_full_refusal(self) -> str | None:
        """Why this copy may harden no more log now (its log is at its size limit), or None.

        The log is first cut to what redo has not made durable (a restart redoes
        from there): it shrinks by itself as redo goes on, so a refusal lasts
        only until redo catches up. Nothing is ever dropped to make room.
        """
        if self.log.size_bytes > self.log_size_limit and self._redo is not None:
            floor = self._redo.persisted_lsn + 1
            if floor > self.log.first_lsn:
                self.log.truncate_before(floor)
        if self.log.size_bytes <= self.log_size_limit:
            return None
        return (f"the mirror's log is full ({self.log.size_bytes >> 20} MB, limit {self.log_size_limit >> 20} MB, "
                f"--log-size-limit-mb): redo is {self.redo_queue_bytes >> 20} MB behind, so it hardens no more log "
                "until redo catches up (a PARTNER REDO_QUEUE limit on the principal keeps this from happening)")

    def start(self) -> None:
        """Start redo from the persisted redo LSN."""
        self._page_size = self.page_size()
        remove_sqlite_sidecars(self.path)
        self._store = PageStore(self.path, self.checksums_path)
        self._page_size = self._store.page_size or self._page_size  # the checksum map's: page 1 may be damaged
        self._attach_snapshots()  # before redo starts: it re-applies from the persisted LSN, saving first
        self._redo = RedoThread(
            self.log,
            self._store,
            self.directory / "redo_lsn",
            on_progress=self._on_redo_progress,
            on_error=self._on_redo_error,
        )
        self._redo.start()
        self.redo_hardened()
        self.session.note_redone(self._redo.redo_lsn)
        self.session.note_log_end(self.log.last_lsn)

    # ---------------------------------------------------------------- database snapshots

    @property
    def snapshots_dir(self) -> Path:
        """databases/<db>/snapshots: one directory per snapshot of this copy."""
        return self.directory / SNAPSHOTS_DIR

    def _attach_snapshots(self) -> None:
        """Open the snapshots on disk and hand them to the page store; drop those that cannot be read, saying why."""
        store = self._store
        store.on_snapshot_failed = self._snapshot_failed
        for directory in snapfiles.snapshot_dirs(self.snapshots_dir):
            if not (directory / snapfiles.META).exists():
                snapfiles.remove_directory(directory)  # an interrupted creation or drop
                continue
            try:
                snap = snapfiles.DatabaseSnapshot.open(directory, self.path)
                if snap.meta.page_size != store.page_size:
                    snap.close()
                    raise ValueError(f"its page size {snap.meta.page_size} is not the copy's {store.page_size}")
            except (ValueError, OSError) as exc:
                why = f"could not be opened at start: {exc}"
                (directory / snapfiles.META).unlink(missing_ok=True)
                snapfiles.remove_directory(directory)
                self._tell_snapshot_dropped(directory.name, why)
                continue
            self.snapshots[snap.meta.name] = snap
            store.snapshots.append(snap)

    def create_snapshot(self, name: str, created: str) -> SnapshotMeta:
        """Make a database snapshot of this copy as of the redo LSN now (no page is copied); RuntimeError saying why not."""
        store, redo = self._store, self._redo
        if store is None or redo is None or self.redo_error is not None or not store.page_size:
            raise RuntimeError(f"the copy of {self.session.db} is not being redone here (not seeded yet, or redo failed); "
                               "create the snapshot once the mirror is seeded and redo runs")
        with store.cow_lock:  # between two batches of redo: the store is exactly at store_lsn
            lsn = redo.store_lsn
            store.fsync_pages()  # a restart re-applies from the persisted LSN: unsaved pages must read as of lsn
            meta = SnapshotMeta(name=name, database=self.session.db, lsn=lsn, page_size=store.page_size,
                                page_count=store.page_count, created=created, role_sequence=self.session.config.role_sequence)
            if not self.snapshots_dir.exists():
                self.snapshots_dir.mkdir()
                fsync_dir(self.directory)
            snap = snapfiles.DatabaseSnapshot.create(self.snapshots_dir / name, meta, self.path)
            self.snapshots[name] = snap
            store.snapshots.append(snap)
        return meta

    def drop_snapshot(self, name: str, why: str) -> None:
        """Drop one snapshot (DROP DATABASE): no more saves into it, then its files go."""
        snap = self.snapshots.pop(name, None)
        if snap is None:
            return  # dropped meanwhile (a failed save)
        store = self._store
        if store is not None:
            with store.cow_lock:
                if snap in store.snapshots:
                    store.snapshots.remove(snap)
        snap.remove(why)

    def drop_all_snapshots(self, why: str) -> list[str]:
        """Drop every snapshot of this copy (it is being replaced, or is no longer a mirror's), each told with why."""
        names = sorted(dict(self.snapshots))
        for name in names:
            self.drop_snapshot(name, why)
            self._tell_snapshot_dropped(name, why)
        return names

    def _snapshot_failed(self, snap, exc: BaseException) -> None:
        """The page store dropped a snapshot that could not save (on the redo thread)."""
        self.snapshots.pop(snap.meta.name, None)
        snapfiles.remove_directory(snap.directory)
        self._tell_snapshot_dropped(snap.meta.name, snap.dropped or str(exc))

    def _tell_snapshot_dropped(self, name: str, why: str) -> None:
        log.warning("snapshot_dropped", database=self.session.db, snapshot=name, reason=why)
        if self.on_snapshot_dropped is not None:
            self._loop.call_soon_threadsafe(self.on_snapshot_dropped, name, why)

    def _on_redo_progress(self, lsn: Lsn) -> None:
        self._loop.call_soon_threadsafe(self._redo_progressed, lsn)

    def _redo_progressed(self, lsn: Lsn) -> None:
        self.session.note_redone(lsn)
        if self.on_redo_progress is not None:
            self.on_redo_progress()

    def _on_redo_error(self, exc: BaseException) -> None:
        # A partial apply must not be served: stop redo, keep the durable log,
        # and let a restart redo from the persisted redo LSN.
        self.redo_error = exc
        lsn = self._redo.redo_lsn + 1 if self._redo is not None else None
        why = f"redo failed at LSN {lsn}: {exc}"
        log.error("redo_failed", database=self.session.db, lsn=lsn, error=repr(exc))
        self._loop.call_soon_threadsafe(self._report_failure, why)

    def _report_failure(self, why: str) -> None:
        self.session.note_redo_error(why)
        if self.on_failure is not None:
            self.on_failure(why)

    async def harden(self, records: Sequence[LogRecord], redo_now: bool = True) -> Lsn:
        """Append received records durably; return the new hardened LSN.

        With redo_now=False, redo is left for `redo_hardened()`. The principal's link calls it
        once its ack is written. Woken first, the redo thread took the GIL from the ack: at
        1 client the ack's write took 138 us instead of 77 (a median, traced on both nodes).
        """
        if not records:
            return self.hardened_lsn
        self.check_records(records)
        expected = self.log.last_lsn + 1
        if records[0].lsn != expected:
            raise ProtocolError(f"log block starts at LSN {records[0].lsn}, expected {expected}")
        for prev, rec in zip(records, records[1:]):
            if rec.lsn != prev.lsn + 1:
                raise ProtocolError(f"log block is not contiguous at LSN {rec.lsn}")
        if self._hardener is None:
            self._hardener = WorkerThread(f"harden:{self.session.db}")
        await self._hardener.run(self._append_and_sync, records)
        self.session.note_log_end(self.log.last_lsn)
        if redo_now:
            self.redo_hardened()
        return self.log.last_lsn

    def redo_hardened(self) -> None:
        """Let redo apply everything hardened so far."""
        self._redo.notify(self.log.last_lsn)

    def _append_and_sync(self, records: Sequence[LogRecord]) -> None:
        self.log.append(records)
        self.log.sync()
        # The mirror's log is needed only past what redo made durable: a restart redoes
        # from there, and after a promotion the old principal holds at least our whole
        # history (anything it lacks is below its own hardened LSN, or it is reseeded).
        # Without this the mirror's log would grow for as long as the session runs.
        floor = self._redo.persisted_lsn + 1
        if floor > self.log.first_lsn:
            self.log.truncate_before(floor)

    # ---------------------------------------------------------------- seeding

    def seed_begin(self) -> None:
        """Start receiving a snapshot of the principal's database file."""
        self._seed_tmp = self.directory / "seed.tmp"
        self._seed_file = open(self._seed_tmp, "wb")

    def seed_chunk(self, offset: int, data: bytes, size: int) -> None:
        """Write one chunk of the snapshot, which seed_begin said is size bytes."""
        if self._seed_file is None:
            raise ProtocolError("seed_chunk without seed_begin")
        if offset + len(data) > size:
            raise ProtocolError(f"seed chunk ends at {offset + len(data)}, past the {size} bytes announced")
        if offset != self._seed_file.tell():
            raise ProtocolError(f"seed chunk at offset {offset}, expected {self._seed_file.tell()}")
        self._seed_file.write(data)
        if (offset + len(data)) // FLUSH_EVERY != offset // FLUSH_EVERY:
            # sync as it goes: one fsync of the whole copy at the end would stall every other fsync on the disk
            self._seed_file.flush()
            os.fdatasync(self._seed_file.fileno())

    async def seed_end(self, lsn: Lsn, role_sequence: int, size: int, crc: int) -> None:
        """Verify and install the snapshot as the page store at lsn; the log restarts after it."""
        if self._seed_file is None:
            raise ProtocolError("seed_end without seed_begin")
        f, self._seed_file = self._seed_file, None
        await asyncio.to_thread(self._install_seed, f, lsn, role_sequence, size, crc)
        log.info("seeded", database=self.session.db, lsn=lsn, role_sequence=role_sequence, bytes=size)

    def _install_seed(self, f, lsn: Lsn, role_sequence: int, size: int, crc: int) -> None:
        f.flush()
        os.fsync(f.fileno())
        f.close()
        data_crc = _file_crc(self._seed_tmp)
        if self._seed_tmp.stat().st_size != size or data_crc != crc:
            raise ProtocolError("seed snapshot does not match its size or checksum")
        self.install_snapshot(self._seed_tmp, lsn, role_sequence, why=f"the mirror was reseeded at LSN {lsn}")

    # ---------------------------------------------------------------- rewind

    def rewind_begin(self, page_size: int) -> None:
        """Start a rewind on a copy of the page store (the store itself changes only at the end, atomically)."""
        self._rewind_tmp = self.directory / "rewind.tmp"
        copy_in_steps(self.path, self._rewind_tmp)
        self._rewind_store = PageStore(self._rewind_tmp)
        self._rewind_page_size = page_size
        self._rewind_count = 0

    def rewind_pages(self, pages: Sequence[tuple[int, bytes]]) -> None:
        """Write the principal's images of pages either side changed since the fork."""
        if getattr(self, "_rewind_store", None) is None:
            raise ProtocolError("rewind_pages without rewind_begin")
        self._rewind_store.write_pages(pages, self._rewind_page_size)
        self._rewind_count += len(pages)

    async def rewind_end(self, lsn: Lsn, role_sequence: int, db_size: int, count: int) -> None:
        """Cut the copy to the principal's size and make it the page store at lsn."""
        store, self._rewind_store = getattr(self, "_rewind_store", None), None
        if store is None:
            raise ProtocolError("rewind_end without rewind_begin")
        if count != self._rewind_count:
            store.close()
            raise ProtocolError(f"rewind carried {self._rewind_count} pages, its end says {count}")
        await asyncio.to_thread(self._install_rewind, store, lsn, role_sequence, db_size)
        log.info("rewound", database=self.session.db, lsn=lsn, role_sequence=role_sequence, pages=count)

    def _install_rewind(self, store: PageStore, lsn: Lsn, role_sequence: int, db_size: int) -> None:
        try:
            store.truncate(db_size, self._rewind_page_size)
            store.sync()
        finally:
            store.close()
        self.install_snapshot(self._rewind_tmp, lsn, role_sequence, why=f"the mirror was rewound to the principal's copy at LSN {lsn}")

    def install_snapshot(self, source: Path, lsn: Lsn, role_sequence: int, why: str = "the mirror's copy was replaced") -> None:
        """Make source the page store at lsn (seeding, RESTORE … WITH NORECOVERY); database snapshots are dropped."""
        self.drop_all_snapshots(why)  # they show a copy that is about to be replaced whole
        self.stop()
        os.replace(source, self.path)
        self.checksums_path.unlink(missing_ok=True)  # another copy: start() checksums it anew
        fsync_dir(self.directory)
        atomic_write_bytes(self.directory / "redo_lsn", str(lsn).encode())
        self.log.reset(lsn + 1, role_sequence)
        self.start()

    # ---------------------------------------------------------------- DBCC CHECKMIRROR

    def hold_redo(self, lsn: Lsn) -> tuple[RedoThread, int]:
        """Hold redo at lsn (nothing past it is applied until release_redo); RuntimeError saying why it cannot."""
        redo = self._redo
        if redo is None or self.redo_error is not None:
            raise RuntimeError("this mirror's redo is not running (not seeded yet, or failed)")
        token = redo.hold_at(lsn)
        if redo.redo_lsn > lsn:
            redo.release(token)
            raise RuntimeError(f"redo is already at LSN {redo.redo_lsn}, past the LSN {lsn} asked for")
        return redo, token

    @staticmethod
    def release_redo(hold: tuple[RedoThread, int]) -> None:
        """Let redo go on after hold_redo (a no-op on a redo thread replaced meanwhile by a seed)."""
        redo, token = hold
        redo.release(token)

    async def digests_at(self, lsn: Lsn, timeout: float, mb_per_s: int = 0) -> PageDigests:
        """Every page's digest once redo (held by hold_redo) reaches lsn; TimeoutError if it does not in time."""
        redo = self._redo  # the one holding at lsn (hold_redo); a seed meanwhile replaces it and this fails
        deadline = self._loop.time() + timeout
        # short waits: a cancelled check (its link closed) must not leave a thread blocked for the whole timeout
        while redo is None or not await asyncio.to_thread(redo.wait_for, lsn, 0.5):
            if redo is None or redo.error is not None or self._loop.time() > deadline:
                raise TimeoutError(f"redo did not reach LSN {lsn} within {timeout:g} s (it is at {self.redo_lsn})")
        if redo.redo_lsn != lsn:
            raise RuntimeError(f"redo passed LSN {lsn} (it is at {redo.redo_lsn}) while it was held")
        return await store_digests_apart(self.path, lsn, mb_per_s)

    # ---------------------------------------------------------------- automatic page repair

    def damaged_pages(self, first: int, count: int) -> tuple[list[int], int, int]:
        """(pages of first..first+count-1 that are damaged, pages read, their error type); ([], 0, _) past the end.

        A page is damaged when its bytes do not match its checksum (error type 2),
        or, when reading the range fails, when reading it alone fails (-1).
        """
        store = self._store
        if store is None:
            return [], 0, ERROR_CHECKSUM
        try:
            bad, read = store.damaged(first, count)
            return bad, read, ERROR_CHECKSUM
        except OSError:
            return store.read_error(first, count), count, ERROR_IO

    @property
    def store_page_size(self) -> int | None:
        """This copy's page size as the page store knows it (its checksum map's; the header's of a damaged page 1 may lie)."""
        return self._page_size or self.page_size()

    @property
    def redo_thread(self) -> RedoThread | None:
        """The running redo thread (a seed replaces it)."""
        return self._redo if self.redo_error is None else None

    def whole_images(self, pages: Sequence[int]) -> tuple[Lsn, list[tuple[int, bytes]]]:
        """(an LSN the images are at least as of, the images of those pages that match their checksum)."""
        redo, store = self._redo, self._store
        if redo is None or store is None:
            return 0, []
        lsn = redo.redo_lsn  # read first: redo only goes forward, so every image read after is at least as of it
        return lsn, store.read_whole(pages)

    @property
    def page_count(self) -> int:
        """Pages in the page store now."""
        return self._store.page_count if self._store is not None else 0

    def mark_suspect(self, pages: Sequence[int]) -> RedoThread:
        """Note these pages are damaged (redo tracks whether it rewrites them); RuntimeError if redo is not running."""
        redo = self._redo
        if redo is None or self.redo_error is not None:
            raise RuntimeError("this mirror's redo is not running (not seeded yet, or failed)")
        redo.mark_suspect(pages)
        return redo

    # ---------------------------------------------------------------- shutdown

    async def wait_redone(self, timeout: float = 60.0) -> bool:
        """Wait until redo has applied everything hardened."""
        target = self.log.last_lsn
        return await asyncio.to_thread(self._redo.wait_for, target, timeout)

    def stop(self) -> None:
        """Stop hardening (what is under way finishes) and redo (persisting its LSN); close the page store and
        the snapshots (their files stay)."""
        if self._hardener is not None:
            self._hardener.close()
            self._hardener = None
        if self._redo is not None:
            self._redo.stop()
            self._redo.join()
            self._redo = None
        for snap in list(self.snapshots.values()):
            snap.close()
        self.snapshots.clear()
        if self._store is not None:
            self._store.close()
            self._store = None


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc
