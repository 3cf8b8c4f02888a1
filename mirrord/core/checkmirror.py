"""DBCC CHECKMIRROR: are the two copies identical, page for page, at one LSN?

How it works (invariant I3: once the mirror has redone up to LSN n, its file
equals the principal's database at n). The principal pins an LSN n, the end
of its log, and in that same instant sends the mirror `checkmirror {rid, lsn}`
on the link that carries the log: every record past n was captured after the
pin, so it travels behind the request, and when the mirror reads the request
its redo has not passed n. The mirror holds redo at n, waits until redo
reaches n, hashes every page of its page store, lets redo go on, and answers
`checkmirror_result` with one digest per page. The principal meanwhile hashes
its database at n from a read-only view (its file as of the last complete
checkpoint, checkpoints paused, with the log's page images up to n laid over
it, the way `snapshot_to` builds a seed). Neither side stops commits: the
principal's go to the WAL and its log, the mirror keeps hardening (its redo
queue grows for the time of the hash).

This module is the pure part: the digest of a page, the check of an answer
from the mirror, the comparison and how it reads, and when a scheduled check
is due.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DIGEST_BYTES = 8  # blake2b-64 per page: a chance collision is 2^-64 per differing page
MAX_PAGES = 1 << 22  # pages one answer may carry (32 MiB of digests, within one 64 MiB frame)
LISTED_PAGES = 100  # differing pages named in the statement's answer; the count says how many in all


def page_digest(image: bytes) -> bytes:
    """The digest of one page image."""
    return hashlib.blake2b(image, digest_size=DIGEST_BYTES).digest()


@dataclass(frozen=True)
class PageDigests:
    """Every page of one copy at one LSN: digests concatenated in page order (page 1 first)."""

    lsn: int
    page_size: int
    digests: bytes

    @property
    def page_count(self) -> int:
        return len(self.digests) // DIGEST_BYTES

    def digest_of(self, pgno: int) -> bytes | None:
        """The digest of page pgno (1-based), None past the end."""
        if not 1 <= pgno <= self.page_count:
            return None
        return self.digests[(pgno - 1) * DIGEST_BYTES: pgno * DIGEST_BYTES]


def answer_refusal(msg: dict, asked_lsn: int) -> str | None:
    """Why a checkmirror_result (already schema-checked) cannot be compared, or None."""
    if msg["error"]:
        return f"the mirror could not hash its copy: {msg['error']}"
    if msg["lsn"] != asked_lsn:
        return f"the mirror hashed LSN {msg['lsn']}, not the LSN {asked_lsn} asked for"
    size = msg["page_size"]
    if not (512 <= size <= 65536 and size & (size - 1) == 0):
        return f"the mirror's page size {size} is not a power of two in 512..65536"
    if len(msg["digests"]) % DIGEST_BYTES or len(msg["digests"]) // DIGEST_BYTES > MAX_PAGES:
        return f"the mirror's digests are {len(msg['digests'])} bytes, not {DIGEST_BYTES} per page for at most {MAX_PAGES} pages"
    return None


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison."""

    database: str
    lsn: int
    page_count: int  # the principal's
    mirror_page_count: int
    differing: tuple[int, ...]  # page numbers (either side's extra pages count as differing)
    page_size_differs: bool = False

    @property
    def identical(self) -> bool:
        return not self.differing and not self.page_size_differs and self.page_count == self.mirror_page_count

    def message(self) -> str:
        """The statement's answer, in words."""
        if self.identical:
            return f"{self.database}: principal and mirror are identical at LSN {self.lsn} ({self.page_count} pages)"
        parts = []
        if self.page_size_differs:
            parts.append("the page sizes differ")
        if self.page_count != self.mirror_page_count:
            parts.append(f"the principal has {self.page_count} pages, the mirror {self.mirror_page_count}")
        if self.differing:
            shown = ", ".join(map(str, self.differing[:LISTED_PAGES]))
            more = f" and {len(self.differing) - LISTED_PAGES} more" if len(self.differing) > LISTED_PAGES else ""
            parts.append(f"{len(self.differing)} page(s) differ: {shown}{more}")
        return f"{self.database}: principal and mirror DIFFER at LSN {self.lsn}: " + "; ".join(parts)

    def row(self) -> dict:
        """The statement's result row."""
        return {"database": self.database, "lsn": self.lsn, "result": "IDENTICAL" if self.identical else "DIFFERENT",
                "pages": self.page_count, "mirror_pages": self.mirror_page_count, "differing_pages": len(self.differing),
                "first_differing_pages": ",".join(map(str, self.differing[:LISTED_PAGES])) or None}


ROW_COLUMNS = ["database", "lsn", "result", "pages", "mirror_pages", "differing_pages", "first_differing_pages"]


def compare(database: str, principal: PageDigests, mirror: PageDigests) -> Verdict:
    """Page by page, at the principal's LSN."""
    if principal.page_size != mirror.page_size:
        every = tuple(range(1, max(principal.page_count, mirror.page_count) + 1))
        return Verdict(database, principal.lsn, principal.page_count, mirror.page_count, every, page_size_differs=True)
    return Verdict(database, principal.lsn, principal.page_count, mirror.page_count,
                   _differing(principal.digests, mirror.digests))


_BLOCK = 4096 * DIGEST_BYTES  # equal blocks are skipped whole: a million pages compare in milliseconds


def _differing(a: bytes, b: bytes) -> tuple[int, ...]:
    """Page numbers whose digests differ (or that one side lacks)."""
    out: list[int] = []
    for start in range(0, max(len(a), len(b)), _BLOCK):
        if a[start:start + _BLOCK] == b[start:start + _BLOCK]:
            continue
        for offset in range(start, min(start + _BLOCK, max(len(a), len(b))), DIGEST_BYTES):
            if a[offset:offset + DIGEST_BYTES] != b[offset:offset + DIGEST_BYTES]:
                out.append(offset // DIGEST_BYTES + 1)
    return tuple(out)


def due(last_started: float | None, now: float, interval: float) -> bool:
    """Is a scheduled check due (interval 0: never)?"""
    if interval <= 0:
        return False
    return last_started is None or now - last_started >= interval
