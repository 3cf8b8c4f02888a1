"""Database snapshots on the mirror: the pure decisions (the reference's "Database Mirroring and Database Snapshots").

How it works. `CREATE DATABASE snap AS SNAPSHOT OF db` on the mirror records
the redo LSN and the page count of the mirror's copy at that instant and
copies nothing. From then on, before redo overwrites page p of the copy (or
cuts it off by shrinking the file), the page's image as it is is saved in the
snapshot's sparse file, once per page: copy-on-write, as SQL Server's sparse
files. So a page of the snapshot is its saved image if it has one, else the
copy's page as it stands, which redo has not touched since creation.

This module is pure: the snapshot's description (`SnapshotMeta`, checked when
read back, as any file is outside input), which pages a batch of redo must
save first (`pages_to_save`), how a page-1 image is shown to the reader (a
read-only, rollback-journal header: SQLite must not look for a WAL beside a
copy that has none), and the refusals of the statements. Files, fsync and the
reader are in `mirrord.storage.snapshot`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from mirrord.core.names import is_db_name

MAX_PAGE_COUNT = 0xFFFFFFFE  # SQLite's largest page number
WAL_VERSION_OFFSET = 18  # bytes 18 and 19 of the database header: file format write/read version (2 = WAL)


@dataclass(frozen=True)
class SnapshotMeta:
    """What a snapshot is: its name, the database it shows, as of which redo LSN, and that copy's size then."""

    name: str
    database: str
    lsn: int  # the mirror's redo LSN at creation: the snapshot shows the database exactly as of it
    page_size: int
    page_count: int  # pages of the copy at creation: the snapshot's size
    created: str  # UTC text (core.events.utc_text)
    role_sequence: int = 0

    def to_dict(self) -> dict:
        """The meta.json form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "SnapshotMeta":
        """Read back a meta.json; ValueError saying what is wrong (a file is outside input)."""
        if not isinstance(data, dict):
            raise ValueError("snapshot meta.json is not an object")
        fields = {"name": str, "database": str, "lsn": int, "page_size": int, "page_count": int, "created": str,
                  "role_sequence": int}
        values = {}
        for key, kind in fields.items():
            value = data.get(key, 0 if key == "role_sequence" else None)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"snapshot meta.json: {key} is {value!r}, not a {kind.__name__}")
            values[key] = value
        meta = cls(**values)
        if (why := meta.refusal()) is not None:
            raise ValueError(f"snapshot meta.json: {why}")
        return meta

    def refusal(self) -> str | None:
        """What is wrong with these values, or None."""
        if not is_db_name(self.name) or not is_db_name(self.database):
            return f"names {self.name!r} / {self.database!r} do not follow the database name rule"
        if not (512 <= self.page_size <= 65536 and self.page_size & (self.page_size - 1) == 0):
            return f"page size {self.page_size} is not a power of two in 512..65536"
        if not 1 <= self.page_count <= MAX_PAGE_COUNT:
            return f"page count {self.page_count} is not in 1..{MAX_PAGE_COUNT}"
        if self.lsn < 0 or self.role_sequence < 0:
            return f"LSN {self.lsn} or role sequence {self.role_sequence} is negative"
        return None


def pages_to_save(batch: Iterable[tuple[Iterable[int], int]], size_before: int, snapshot_pages: int,
                  saved: Callable[[int], bool]) -> list[int]:
    """The pages a snapshot must save before a batch of redo is applied, ascending.

    batch: each record's (pages it writes, database size after it), in LSN
    order; size_before: pages in the copy before the batch. A page is saved if
    the batch writes it or cuts it off (a record shrinks the file below it),
    it is one of the snapshot's (1..snapshot_pages), and it has no saved image
    yet. Saving before the whole batch is right: a page without a saved image
    is unchanged since creation, so its image before the batch is the
    snapshot's, whatever the batch does to it in between.
    """
    due: set[int] = set()
    size = size_before
    for pages, db_size in batch:
        due.update(p for p in pages if 1 <= p <= snapshot_pages)
        if db_size < size:
            due.update(range(db_size + 1, min(size, snapshot_pages) + 1))
        size = db_size
    return sorted(p for p in due if not saved(p))


def reader_header(page1: bytes) -> bytes:
    """Page 1 as the snapshot's reader is shown it: the WAL format versions (2, 2) shown as (1, 1).

    The mirror's copy is a WAL database's file without its WAL (every commit
    is in the file). A reader that saw version 2 would look for a -wal and
    -shm beside a file it must not write; version 1 tells SQLite the file is
    whole and read-only access needs nothing else. Nothing else is changed.
    """
    at = WAL_VERSION_OFFSET
    if len(page1) < at + 2 or page1[at:at + 2] != b"\x02\x02":
        return page1
    return page1[:at] + b"\x01\x01" + page1[at + 2:]


# ---------------------------------------------------------------- refusals


def name_refusal(name: str, databases: Iterable[str], snapshots: Iterable[str]) -> str | None:
    """Why a new snapshot may not take this name (a database or a snapshot has it), or None."""
    if name in set(databases):
        return f"a database named {name} already exists on this node; choose another name for the snapshot"
    if name in set(snapshots):
        return f"database snapshot {name} already exists on this node; DROP DATABASE {name} first to create it anew"
    return None


def drop_source_refusal(db: str, snapshots_of_db: Iterable[str]) -> str | None:
    """Why DROP DATABASE db may not run while it has snapshots (as SQL Server: drop them first), or None."""
    names = sorted(snapshots_of_db)
    if not names:
        return None
    return f"database {db} has database snapshots ({', '.join(names)}); DROP DATABASE each of them first"


READ_ONLY_REFUSAL = ("database snapshot {name} is read-only (a view of {db} as of LSN {lsn}); "
                     "it answers SELECT, VALUES, EXPLAIN and WITH … SELECT. Write on the principal of {db}")
