"""Automatic page repair: the pure part (what a page's checksum is, the rows of the view, the checks of a frame).

How it works on the mirror (mirrord/engine/page_repair.py drives it). The page store
keeps a checksum of every page (storage/pagestore.py), written whenever redo
writes the page. A page whose bytes no longer match it (the background
scrubber, or DBCC CHECKMIRROR naming it) is marked suspect and asked for:
`page_request {rid, pages}` on the link from the principal. The principal
answers `page_answer {rid, lsn, page_size, pages}` with each page as of one
LSN n, at least the mirror's redo LSN (its file with checkpoints paused and
the log's images up to n laid over it, as DBCC CHECKMIRROR reads it). The
mirror's redo thread writes an image once its redo has reached n, unless a
record past n rewrote the page meanwhile (redo writes full images, so such a
page is whole again by itself, and the older image must not go over it).

On the principal (which keeps no checksums: SQLite writes its file) a
statement that meets a damaged page fails with a clear error and starts a
DBCC CHECKMIRROR; the mirror offers its images of the differing pages that
match its checksums (`page_offer`), and the principal writes back those no
record rewrote since its file's last checkpoint (PrincipalDatabase.repair_pages).

The view follows the reference's sys.dm_db_mirroring_auto_page_repair: the
last 100 pages a repair was tried for, with its error type and status codes.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass

# error_type, as the reference numbers them
ERROR_IO = -1  # an operating-system read error (823)
ERROR_OTHER = 1  # SQLite found the page malformed (SQLITE_CORRUPT, on the principal): 824 other than a bad checksum
ERROR_CHECKSUM = 2  # the page does not match its checksum (824, bad checksum)

# page_status, as the reference numbers them
QUEUED_FOR_REQUEST = 2  # waiting to ask the partner
QUEUED_FOR_DELIVERY = 3  # asked: waiting for the partner's image
QUEUED_FOR_REPAIR = 4  # the image arrived: waiting for redo to reach its LSN
REPAIRED = 5
IRREPARABLE = 6

MAX_ROWS = 100  # the reference's view keeps the last 100 pages
MAX_REQUEST_PAGES = 64  # pages one page_request asks for (one answer frame: 64 x 64 KiB at most)
CHECKSUM_BYTES = 4

COLUMNS = ["database", "page_id", "error_type", "page_status", "modification_time"]


def page_checksum(image: bytes) -> int:
    """The checksum the page store keeps of a page (crc32: it only has to catch damage, not an adversary)."""
    return zlib.crc32(image)


@dataclass
class RepairRow:
    """One row of sys.dm_db_mirroring_auto_page_repair."""

    database: str
    page_id: int
    error_type: int
    page_status: int
    modification_time: str  # UTC text

    def row(self) -> dict:
        return {"database": self.database, "page_id": self.page_id, "error_type": self.error_type,
                "page_status": self.page_status, "modification_time": self.modification_time}


class RepairHistory:
    """The view's rows on one node: the last MAX_ROWS (database, page) pairs a repair was tried for, oldest first.

    Bounded in memory, as the reference's (it keeps 100 rows and loses them at
    a restart); every repair is also in the durable event history (PAGE_REPAIR).
    """

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple[str, int], RepairRow] = OrderedDict()

    def note(self, database: str, page: int, error_type: int, status: int, when: str) -> RepairRow:
        """A page's repair began or moved on: its row is updated and becomes the newest."""
        key = (database, page)
        row = self._rows.pop(key, None)
        if row is None or row.page_status in (REPAIRED, IRREPARABLE):
            row = RepairRow(database, page, error_type, status, when)  # a new attempt: its own error
        else:
            row.page_status, row.modification_time = status, when
        self._rows[key] = row
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)
        return row

    def status(self, database: str, page: int) -> int | None:
        row = self._rows.get((database, page))
        return None if row is None else row.page_status

    def rows(self, database: str | None = None) -> list[dict]:
        return [r.row() for r in self._rows.values() if database is None or r.database == database]

    def count(self, database: str, status: int) -> int:
        return sum(1 for r in self._rows.values() if r.database == database and r.page_status == status)


def request_refusal(pages: object, max_page: int) -> str | None:
    """Why a page_request's page list cannot be answered (after the frame's schema), or None."""
    if not isinstance(pages, list) or not 1 <= len(pages) <= MAX_REQUEST_PAGES:
        return f"pages must be a list of 1..{MAX_REQUEST_PAGES} page numbers"
    for p in pages:
        if type(p) is not int or not 1 <= p <= max_page:
            return f"page {p!r} is not a page number in 1..{max_page}"
    if len(set(pages)) != len(pages):
        return "pages must not repeat"
    return None


def answer_refusal(msg: dict, asked: frozenset[int] | set[int], redo_lsn: int, page_size: int | None) -> str | None:
    """Why a page_answer (schema-checked) cannot be used, or None.

    An answer must be at an LSN the mirror has not passed when it asked (the
    caller passes the redo LSN of the request), carry only pages asked for,
    each a whole page of this copy's page size.
    """
    if msg["error"]:
        return f"the principal could not read the pages: {msg['error']}"
    if msg["lsn"] < redo_lsn:
        return f"the principal's images are at LSN {msg['lsn']}, before this mirror's redo LSN {redo_lsn} when it asked"
    if page_size is not None and msg["page_size"] != page_size:
        return f"the principal's page size {msg['page_size']} is not this copy's {page_size}"
    seen: set[int] = set()
    for item in msg["pages"]:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], bytes)):
            return "pages must be [page number, image] pairs"
        pgno, image = item
        if pgno not in asked or pgno in seen:
            return f"page {pgno} was not asked for (or comes twice)"
        if len(image) != msg["page_size"]:
            return f"page {pgno}: {len(image)} bytes, not a page of {msg['page_size']}"
        seen.add(pgno)
    return None
