"""A database snapshot's files, the copy-on-write saves redo makes into them, and the page reads that serve it.

A snapshot lives in `databases/<db>/snapshots/<name>/` (beside the copy it
shows, so it goes wherever the database goes and the mirror finds it before
its redo starts):

* `meta.json` — `core.snapshots.SnapshotMeta`; written last at creation (the
  directory is built under a temporary name and renamed), removed first at a
  drop: a directory without it is no snapshot, only leftovers to delete;
* `pages` — a sparse file of page_count pages; page p's saved image at
  (p-1)*page_size;
* `saved` — the numbers of the saved pages, 4 bytes each (big-endian), in the
  order saved. A torn last entry is ignored.

Crash order (redo, `save`): the images are written and synced, then their
numbers, then synced, and only then may redo overwrite the pages in the copy.
A crash before the numbers are durable loses nothing: the copy still holds
those pages unchanged, and they are saved again when redo re-applies. That is
also why creation syncs the copy first: after a crash redo re-applies from
its persisted LSN, and a page not saved must then read as it did at creation.

Reading (`read`): a page with a saved image comes from `pages`; any other from
the copy as it stands. Redo runs meanwhile, so the copy's page is read first
and the saved flag looked at after: redo sets the flag before it overwrites
the page, so a flag still clear after the read means the read saw the page as
of creation; a flag set means the saved image is complete, and that is read.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

from mirrord.core.snapshots import SnapshotMeta, reader_header
from mirrord.storage.fileutil import atomic_write_json, fsync_dir, pread_all, pwrite_all, read_json

META, PAGES, SAVED = "meta.json", "pages", "saved"
_ENTRY = struct.Struct(">I")


class DatabaseSnapshot:
    """One snapshot's files, open: saves images before redo overwrites pages, and serves page reads."""

    def __init__(self, directory: Path, meta: SnapshotMeta, live: Path) -> None:
        self.directory = Path(directory)
        self.meta = meta
        self.dropped: str | None = None  # why, once dropped: readers are refused from then on
        self.closed = False  # closed (a drop, a promotion, the node stopping): no new reader starts
        self._pages_fd = os.open(self.directory / PAGES, os.O_RDWR)
        self._saved_fd = os.open(self.directory / SAVED, os.O_RDWR)
        self._live_fd = os.open(live, os.O_RDONLY)
        self._saved = bytearray(meta.page_count + 1)  # 1: page p has its image in `pages`
        self._count = 0  # entries in `saved`
        self._lock = threading.Lock()  # saves and drops, one at a time
        self.readers = None  # the open query connections (storage/snapshot_reader.py), closed before the files
        self._load_saved()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, directory: Path, meta: SnapshotMeta, live: Path) -> "DatabaseSnapshot":
        """Make the snapshot's files (nothing of the copy is copied) and open it; the copy must be synced first."""
        directory = Path(directory)
        building = directory.with_name(f".{directory.name}.creating")
        if building.exists():
            shutil.rmtree(building)
        building.mkdir(parents=True)
        with open(building / PAGES, "wb") as f:
            f.truncate(meta.page_count * meta.page_size)  # sparse: no block is written
            os.fsync(f.fileno())
        with open(building / SAVED, "wb") as f:
            os.fsync(f.fileno())
        atomic_write_json(building / META, meta.to_dict())
        os.replace(building, directory)
        fsync_dir(directory.parent)
        return cls(directory, meta, live)

    @classmethod
    def open(cls, directory: Path, live: Path) -> "DatabaseSnapshot":
        """Open a snapshot found at start; ValueError (or OSError) if its files are not a snapshot's."""
        meta = SnapshotMeta.from_dict(read_json(Path(directory) / META))
        if meta.name != Path(directory).name:
            raise ValueError(f"meta.json names {meta.name!r}, not its directory {Path(directory).name!r}")
        size = os.stat(Path(directory) / PAGES).st_size
        if size != meta.page_count * meta.page_size:
            raise ValueError(f"its page file is {size} bytes, not {meta.page_count} pages of {meta.page_size}")
        return cls(directory, meta, live)

    def _load_saved(self) -> None:
        data = pread_all(self._saved_fd, os.fstat(self._saved_fd).st_size, 0)
        whole = len(data) - len(data) % _ENTRY.size  # a torn last entry: its page was not overwritten yet
        for (pgno,) in _ENTRY.iter_unpack(data[:whole]):
            if not 1 <= pgno <= self.meta.page_count:
                raise ValueError(f"its list of saved pages names page {pgno}, outside 1..{self.meta.page_count}")
            self._saved[pgno] = 1
        self._count = whole // _ENTRY.size

    def close(self) -> None:
        """Close the readers (their queries interrupted), then the files (the snapshot stays on disk)."""
        self.closed = True
        if self.readers is not None:
            self.readers.close()  # no read may use a file number after it is closed (and perhaps reused)
        for name in ("_pages_fd", "_saved_fd", "_live_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def invalidate(self, why: str) -> None:
        """Make it no snapshot, durably (meta.json removed: nothing to load at a restart), then close it."""
        with self._lock:
            (self.directory / META).unlink(missing_ok=True)
            fsync_dir(self.directory)
            self.dropped = why  # only once that is durable: until then redo keeps saving into it (or retries)
        self.close()

    def remove(self, why: str) -> None:
        """Drop it: invalidate, then delete its files."""
        self.invalidate(why)
        remove_directory(self.directory)

    # ------------------------------------------------------------ copy-on-write (the redo thread)

    def is_saved(self, pgno: int) -> bool:
        """Whether page pgno's image as of creation is in the page file."""
        return bool(self._saved[pgno]) if 0 < pgno < len(self._saved) else False

    @property
    def pages_saved(self) -> int:
        """Pages saved so far (the sparse file holds this many)."""
        return self._count

    def save(self, pages: Sequence[int], read_live: Callable[[int], bytes]) -> None:
        """Save the current images of these pages (read_live(pgno) -> bytes), durably, before redo overwrites them."""
        if not pages:
            return
        size = self.meta.page_size
        with self._lock:
            if self.dropped is not None:
                return
            for pgno in pages:
                image = read_live(pgno)
                pwrite_all(self._pages_fd, image.ljust(size, b"\0")[:size], (pgno - 1) * size)
            os.fdatasync(self._pages_fd)
            entries = b"".join(_ENTRY.pack(p) for p in pages)
            pwrite_all(self._saved_fd, entries, self._count * _ENTRY.size)  # over a torn entry of an earlier failure
            os.fdatasync(self._saved_fd)
            self._count += len(pages)
            for pgno in pages:
                self._saved[pgno] = 1  # only now may redo overwrite it: see the module's docstring

    # ------------------------------------------------------------ reading (query threads)

    @property
    def file_size(self) -> int:
        """The snapshot's size as a database file."""
        return self.meta.page_count * self.meta.page_size

    def read(self, amount: int, offset: int) -> bytes:
        """Bytes of the snapshot as a database file (page 1 shown with a rollback-journal header)."""
        size = self.meta.page_size
        out = bytearray()
        end = min(offset + amount, self.file_size)
        at = offset
        while at < end:
            pgno = at // size + 1
            start = at - (pgno - 1) * size
            take = min(size - start, end - at)
            out += self.page(pgno)[start:start + take]
            at += take
        return bytes(out).ljust(amount, b"\0")  # past the end SQLite expects zeros (a short read)

    def page(self, pgno: int) -> bytes:
        """Page pgno of the snapshot: its saved image, or the copy's page, which redo has not overwritten since."""
        if self.dropped is not None or self.closed:
            raise SnapshotGone(self.dropped or "closed")
        size = self.meta.page_size
        if self.is_saved(pgno):
            image = os.pread(self._pages_fd, size, (pgno - 1) * size)
        else:
            image = os.pread(self._live_fd, size, (pgno - 1) * size)
            if self.is_saved(pgno):  # redo saved it while we read: the saved image is the one as of creation
                image = os.pread(self._pages_fd, size, (pgno - 1) * size)
        image = image.ljust(size, b"\0")
        return reader_header(image) if pgno == 1 else image


class SnapshotGone(Exception):
    """The snapshot was dropped while it was being read."""


def snapshot_dirs(base: Path) -> Iterable[Path]:
    """The directories under base/ (snapshots and leftovers), by name."""
    if not Path(base).is_dir():
        return []
    return sorted(p for p in Path(base).iterdir() if p.is_dir())


def remove_directory(directory: Path) -> None:
    """Delete a snapshot's directory (after its meta.json is gone, so a crash half way leaves only leftovers)."""
    trash = Path(directory).with_name(f".dropped-{Path(directory).name}-{os.getpid()}")
    try:
        os.replace(directory, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def remove_all(base: Path) -> list[str]:
    """Delete every snapshot under base/ (the copy is no longer a mirror's); the names of those that were snapshots."""
    names = []
    for directory in snapshot_dirs(base):
        if (directory / META).exists():
            names.append(directory.name)
            (directory / META).unlink()
            fsync_dir(directory)
        remove_directory(directory)
    return names


