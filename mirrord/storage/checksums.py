"""Page digests of a database file, for DBCC CHECKMIRROR (the comparison is core.checkmirror).

Both functions read the file with plain reads, never through SQLite, and run
in a worker thread. The principal's database at LSN n is its file (held still:
checkpoints paused) with the log's page images (base, n] laid over it; only
the digest of each page's last image is kept, so memory stays at 8 bytes per
page whatever the log holds. The mirror's page store at its redo LSN is the
file itself (redo held still meanwhile).
"""

from __future__ import annotations

from pathlib import Path

from mirrord.core.checkmirror import DIGEST_BYTES, MAX_PAGES, PageDigests, page_digest
from mirrord.storage.log import DurableLog

READ_PAGES = 256  # pages per read


def _header_page_size(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            header = f.read(18)
    except FileNotFoundError:
        return None
    if len(header) < 18:
        return None
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def digest_file(path: Path, page_size: int, page_count: int, overrides: dict[int, bytes] | None = None) -> bytes:
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
    assert len(out) == page_count * DIGEST_BYTES
    return bytes(out)


def principal_digests(path: Path, log: DurableLog, base: int, lsn: int, batch_bytes: int = 8 << 20) -> PageDigests:
    """The principal's database at lsn: its file (durable up to `base`, held still) plus the log's images past it."""
    overrides: dict[int, bytes] = {}
    page_size, db_size = None, None
    first = base + 1
    while first <= lsn:
        records = [r for r in log.read_from(first, batch_bytes) if r.lsn <= lsn]
        for record in records:
            for pgno, image in record.pages:
                overrides[pgno] = page_digest(image)
        first = records[-1].lsn + 1
    last = log.get(lsn) if lsn else None
    if last is not None:
        page_size, db_size = last.page_size, last.db_size
    else:
        page_size = _header_page_size(path)
        db_size = path.stat().st_size // page_size if page_size else 0
    if not page_size:
        return PageDigests(lsn, 4096, b"")
    overrides = {p: d for p, d in overrides.items() if p <= db_size}
    return PageDigests(lsn, page_size, digest_file(path, page_size, db_size, overrides))


def store_digests(path: Path, lsn: int) -> PageDigests:
    """The mirror's page store as it is (redo held at lsn): its size is db_size pages after every transaction."""
    page_size = _header_page_size(path)
    if not page_size:
        return PageDigests(lsn, 4096, b"")
    return PageDigests(lsn, page_size, digest_file(path, page_size, path.stat().st_size // page_size))
