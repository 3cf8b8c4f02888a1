"""Crash-safe small-file writes.

A file that must be either old or new after a crash (metadata, the redo LSN,
the log's base) is written to a temporary file in the same directory, fsynced,
renamed over the target with os.replace (atomic on POSIX), and then the
directory is fsynced so that the rename itself is durable.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """fsync a directory so that creations, renames and deletions in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as JSON (sorted keys, so files diff cleanly)."""
    atomic_write_bytes(Path(path), json.dumps(obj, sort_keys=True, indent=1).encode() + b"\n")


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file, or return `default` if it does not exist."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return default


def remove_sqlite_sidecars(path: Path) -> None:
    """Delete SQLite's -wal, -shm and -journal beside a database file whose content is whole without them."""
    removed = False
    for suffix in ("-wal", "-shm", "-journal"):
        side = Path(str(path) + suffix)
        if side.exists():
            side.unlink()
            removed = True
    if removed:
        fsync_dir(Path(path).parent)


# A node takes no more log (principal: refuses writes; mirror: refuses its principal's
# log) while less than this is free: SQLite's WAL, the log, checkpoints and redo need room.
DISK_RESERVE_BYTES = 8 << 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def sqlite_page_size(path: Path) -> int | None:
    """The page size a SQLite file's header gives (bytes 16-17; 1 means 65536), or None without a whole header."""
    try:
        with open(path, "rb") as f:
            header = f.read(18)
    except FileNotFoundError:
        return None
    if len(header) < 18:
        return None
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def is_disk_full(exc: BaseException) -> bool:
    """The error is the disk being full: an OSError ENOSPC/EDQUOT, or SQLite's SQLITE_FULL (anywhere in its causes)."""
    import sqlite3  # here: the rest of this module is plain file handling

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                                               or "database or disk is full" in str(exc)):
            return True
        if getattr(exc, "code", None) == "disk_full":  # mirrord's DiskFull
            return True
        exc = exc.__cause__ or exc.__context__
    return False


FLUSH_EVERY = 8 << 20  # bytes a bulk copy may leave dirty before it syncs them


def copy_in_steps(src: Path, dest: Path) -> None:
    """Copy a large file and sync it, a few MB at a time.

    One fsync at the end would flush the whole copy at once, and on ext4 a
    commit's small fsync then waits behind it (the journal commits other files'
    dirty data first): syncing as it goes keeps every commit's fsync short.
    """
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while True:
            done = os.copy_file_range(fin.fileno(), fout.fileno(), FLUSH_EVERY)
            if done == 0:
                break
            os.fdatasync(fout.fileno())
        os.fsync(fout.fileno())


def disk_free(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FreeSpace:
    """disk_free for a check made before every write, asking the kernel only when the answer could matter.

    A statvfs per write was 4 % of a busy principal's event loop. While far
    more than the reserve is free (`margin` beyond it), the last answer stands
    for `recheck` seconds: writing `margin` bytes within that time would take
    over a GB/s. Near the reserve every call asks again, so a filling disk is
    seen at the very write that crosses it.
    """

    def __init__(self, path: Path, margin: int = 64 << 20, recheck: float = 0.05) -> None:
        self.path, self.margin, self.recheck = path, margin, recheck
        self._free, self._until = 0, 0.0

    def bytes(self) -> int:
        now = time.monotonic()
        if now >= self._until or self._free < DISK_RESERVE_BYTES + self.margin:
            self._free, self._until = disk_free(self.path), now + self.recheck
        return self._free


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """size bytes at offset, or fewer at the end of the file (os.pread may return less than asked)."""
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of data at offset (os.pwrite may write less than given)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
