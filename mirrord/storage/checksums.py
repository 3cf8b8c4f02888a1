"""Page digests of a database file, for DBCC CHECKMIRROR (the comparison is core.checkmirror).

The file is read with plain reads, never through SQLite. The principal's
database at LSN n is its file (held still: checkpoints paused) with the log's
page images (base, n] laid over it; only the digest of each page's last image
is kept, so memory stays at 8 bytes per page whatever the log holds. The
mirror's page store at its redo LSN is the file itself (redo held still
meanwhile).

Why the file is hashed in a child process (`python -m mirrord.storage.checksums`):
a hashing thread in the node's own process holds the GIL for most of each
page, and every time the event loop gives it up (each socket read and write)
it waits its turn behind the hash; commits then took twice as long while a
check ran (benchmarks/checkmirror_bench.py). A child process takes nothing
but its share of a core and of the disk, which --checkmirror-rate-mb paces, and
it runs at a lower priority (nice 10) than the node.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Callable

from mirrord.core.checkmirror import DIGEST_BYTES, MAX_PAGES, PageDigests, page_digest
from mirrord.storage.fileutil import sqlite_page_size
from mirrord.storage.log import DurableLog

READ_PAGES = 256  # pages per read
NICENESS = 10  # the hashing child's scheduling priority, below the node's


class Pacer:
    """Keeps a hash at most `mb_per_s` MB of pages a second (0: as fast as it goes), so that the
    commits that go on meanwhile keep most of the disk and the CPU."""

    def __init__(self, mb_per_s: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = mb_per_s * 1e6
        self.clock, self.sleep = clock, sleep
        self.started, self.done = clock(), 0

    def spent(self, nbytes: int) -> None:
        """nbytes more were hashed: wait until the pace allows the next."""
        self.done += nbytes
        if self.rate > 0:
            ahead = self.done / self.rate - (self.clock() - self.started)
            if ahead > 0:
                self.sleep(ahead)


def digest_file(path: Path, page_size: int, page_count: int, overrides: dict[int, bytes] | None = None,
                pacer: Pacer | None = None) -> bytes:
    """Digests of pages 1..page_count of the file; `overrides` gives some pages' digests instead."""
    if page_count > MAX_PAGES:
        raise ValueError(f"{page_count} pages: more than the {MAX_PAGES} one check can compare")
    overrides = overrides or {}
    out = bytearray()
    zero = bytes(page_size)  # what a page store extended by truncate holds where nothing was written
    with open(path, "rb") as f:
        pgno = 1
        while pgno <= page_count:
            n = min(READ_PAGES, page_count - pgno + 1)
            f.seek((pgno - 1) * page_size)
            data = f.read(n * page_size)
            for i in range(n):
                digest = overrides.get(pgno + i)
                if digest is None:
                    image = data[i * page_size:(i + 1) * page_size]
                    digest = page_digest(image + zero[len(image):])
                out += digest
            pgno += n
            if pacer is not None:
                pacer.spent(n * page_size)
    assert len(out) == page_count * DIGEST_BYTES
    return bytes(out)


def log_view(path: Path, log: DurableLog, base: int, lsn: int, pacer: Pacer | None = None,
             batch_bytes: int = 8 << 20) -> tuple[int, int, dict[int, bytes]]:
    """(page size, page count, digests of the pages the log rewrote) of the principal's database at lsn."""
    pacer = pacer or Pacer(0)
    overrides: dict[int, bytes] = {}
    page_size, db_size = None, None
    for record in _records(log, base + 1, lsn, batch_bytes):
        for pgno, image in record.pages:
            overrides[pgno] = page_digest(image)
        pacer.spent(record.nbytes)
    page_size, db_size = _size_at(path, log, lsn)
    if not page_size:
        return 4096, 0, {}
    return page_size, db_size, {p: d for p, d in overrides.items() if p <= db_size}


def _records(log: DurableLog, first: int, lsn: int, batch_bytes: int):
    """The log's records first..lsn, read a batch of about batch_bytes at a time."""
    while first <= lsn:
        records = [r for r in log.read_from(first, batch_bytes) if r.lsn <= lsn]
        yield from records
        first = records[-1].lsn + 1


def _size_at(path: Path, log: DurableLog, lsn: int) -> tuple[int | None, int]:
    """(page size, pages) of the database at lsn: its log record's, else the file's own (None: no header yet)."""
    last = log.get(lsn) if lsn else None
    if last is not None:
        return last.page_size, last.db_size
    page_size = sqlite_page_size(path)
    return page_size, path.stat().st_size // page_size if page_size else 0


def page_images_at(path: Path, log: DurableLog, base: int, lsn: int, pages: list[int],
                   batch_bytes: int = 8 << 20) -> tuple[int, list[tuple[int, bytes]]]:
    """(page size, [(pgno, image)]) of some pages of the principal's database at lsn (automatic page repair).

    The view log_view hashes: the file (durable up to `base`, held still) with
    the log's last image of each page in (base, lsn] over it. Pages past the
    database's size at lsn are left out.
    """
    wanted = set(pages)
    latest: dict[int, bytes] = {}
    for record in _records(log, base + 1, lsn, batch_bytes):
        for pgno, image in record.pages:
            if pgno in wanted:
                latest[pgno] = image
    page_size, db_size = _size_at(path, log, lsn)
    if not page_size:
        return 4096, []
    out = []
    with open(path, "rb") as f:
        for pgno in sorted(wanted):
            if pgno > db_size:
                continue
            image = latest.get(pgno)
            if image is None:
                f.seek((pgno - 1) * page_size)
                image = f.read(page_size)
                image += bytes(page_size - len(image))  # past the file's end: a page the size grew by, zeros
            out.append((pgno, image))
    return page_size, out


def principal_digests(path: Path, log: DurableLog, base: int, lsn: int, mb_per_s: int = 0) -> PageDigests:
    """The principal's database at lsn: its file (durable up to `base`, held still) plus the log's images past it."""
    pacer = Pacer(mb_per_s)
    page_size, page_count, overrides = log_view(path, log, base, lsn, pacer)
    return PageDigests(lsn, page_size, digest_file(path, page_size, page_count, overrides, pacer))


async def principal_digests_apart(path: Path, log: DurableLog, base: int, lsn: int, mb_per_s: int = 0) -> PageDigests:
    """principal_digests, the file hashed in a child process (the log's pages, few, in a thread)."""
    page_size, page_count, overrides = await asyncio.to_thread(log_view, path, log, base, lsn, Pacer(mb_per_s))
    digests = bytearray(await digest_file_apart(path, page_size, page_count, mb_per_s))
    for pgno, digest in overrides.items():
        digests[(pgno - 1) * DIGEST_BYTES: pgno * DIGEST_BYTES] = digest
    return PageDigests(lsn, page_size, bytes(digests))


def store_digests(path: Path, lsn: int, mb_per_s: int = 0) -> PageDigests:
    """The mirror's page store as it is (redo held at lsn): its size is db_size pages after every transaction."""
    page_size = sqlite_page_size(path)
    if not page_size:
        return PageDigests(lsn, 4096, b"")
    return PageDigests(lsn, page_size, digest_file(path, page_size, path.stat().st_size // page_size, pacer=Pacer(mb_per_s)))


async def store_digests_apart(path: Path, lsn: int, mb_per_s: int = 0) -> PageDigests:
    """store_digests, hashed in a child process."""
    page_size = sqlite_page_size(path)
    if not page_size:
        return PageDigests(lsn, 4096, b"")
    return PageDigests(lsn, page_size, await digest_file_apart(path, page_size, path.stat().st_size // page_size, mb_per_s))


async def digest_file_apart(path: Path, page_size: int, page_count: int, mb_per_s: int) -> bytes:
    """digest_file in a child process (see the module docstring); RuntimeError saying why if it failed."""
    if page_count == 0:
        return b""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirrord.storage.checksums", str(path), str(page_size), str(page_count), str(mb_per_s),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    except BaseException:  # cancelled: the child must not outlive the check
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0 or len(out) != page_count * DIGEST_BYTES:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"hashing {path.name} failed: {why[0][:500]}")
    return out


def last_image(log: DurableLog, pgno: int, upto: int, batch_bytes: int = 8 << 20) -> tuple[int, bytes] | None:
    """(lsn, image) of the log's last image of page pgno at or before upto, None if the log holds none.

    The log drops only its oldest records, so the last image it holds is the
    page as of upto (automatic page repair of the principal's page 1 at load),
    unless it holds none that old.
    """
    first = log.first_lsn
    if first == 0 or first > upto:
        return None
    found = None
    for record in _records(log, first, min(upto, log.last_lsn), batch_bytes):
        for p, image in record.pages:
            if p == pgno:
                found = (record.lsn, image)
    return found


def main(argv: list[str]) -> int:
    """python -m mirrord.storage.checksums PATH PAGE_SIZE PAGE_COUNT MB_PER_S: the digests on stdout."""
    try:
        os.nice(NICENESS)  # background work: the node's own commits come first on a busy machine
    except OSError:
        pass
    try:
        path, page_size, page_count, mb_per_s = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
        digests = digest_file(path, page_size, page_count, pacer=Pacer(mb_per_s))
    except (IndexError, ValueError, OSError) as exc:
        print(f"checksums: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(digests)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

