"""What the nemesis checks, as pure functions over what it recorded.

The writers record every write they send and, for each one the server
acknowledged, an `Ack`: which node answered, the role sequence and LSN
of its commit token, and whether SAFETY was FULL for the whole time the write
was in flight (`SafetyBook`). A write that failed after it was sent, with or
without an answer, is in doubt: it may or may not be there.

The invariants, checked after each round once the cluster has healed:
* no acknowledged write of a SAFETY FULL period is missing from the principal (`find_lost`);
* in each role sequence of a database one node at most acknowledged writes
  (`find_split_brain`): two would mean two principals at once;
* nothing is in the database that was never sent (`find_phantoms`);
* no two writes were acknowledged with the same commit token (`find_shared_tokens`);
* the mirror's page store equals the principal's database page for page
  (`overlay_wal`, `differing_pages`).

Forced service (FORCE_SERVICE_ALLOW_DATA_LOSS) may lose what the old principal
acknowledged alone past the fork. Such a write is excused only if the old
principal's loss report names it — same node and role sequence, its LSN in the
reported range — and its id is in the salvage copy (`LossReport`,
`explained_by_forced_service`); any other missing write is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from mirrord.storage.wal import WalTransaction


@dataclass(frozen=True, slots=True)  # a long run holds millions
class Ack:
    """An acknowledged write."""

    id: int
    db: str
    node: str
    role_sequence: int
    lsn: int
    full: bool  # SAFETY FULL from before it was sent until it was acknowledged
    seq: int = 0  # its place among the writes its commit holds (autocommit writes share one, a SAVEPOINT each)


@dataclass(frozen=True)
class Violation:
    """A broken invariant: kind (lost, split_brain, phantom, pages, content, convergence, crash) and what."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class SafetyBook:
    """Per database: is SAFETY FULL now, and a generation that changes at every switch.

    The nemesis marks a database OFF *before* it sends SET PARTNER SAFETY OFF
    and FULL only *after* FULL was confirmed, so a write counted as FULL was
    never in flight while the session might have been OFF.
    """

    def __init__(self, databases: Iterable[str]) -> None:
        self._state = {db: (True, 0) for db in databases}

    def snapshot(self, db: str) -> tuple[bool, int]:
        """(full, generation) now."""
        return self._state[db]

    def mark_off(self, db: str) -> None:
        _, gen = self._state[db]
        self._state[db] = (False, gen + 1)

    def mark_full(self, db: str) -> None:
        full, gen = self._state[db]
        if not full:
            self._state[db] = (True, gen + 1)

    def full_throughout(self, db: str, before: tuple[bool, int]) -> bool:
        """True if SAFETY was FULL at `before` and has not changed since."""
        return before[0] and self._state[db] == before

    def is_full(self, db: str) -> bool:
        return self._state[db][0]


@dataclass
class Ledger:
    """Every write sent, acknowledged, or left in doubt, for all databases."""

    sent: dict[str, set[int]] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    in_doubt: dict[str, set[int]] = field(default_factory=dict)
    _next: int = 0

    def new_id(self, db: str) -> int:
        """A fresh id, recorded as sent to db."""
        self._next += 1
        self.sent.setdefault(db, set()).add(self._next)
        return self._next

    def ack(self, ack: Ack) -> None:
        self.acks.append(ack)

    def doubt(self, db: str, write_id: int) -> None:
        self.in_doubt.setdefault(db, set()).add(write_id)


@dataclass(frozen=True)
class LossReport:
    """What an old principal reported it would lose to a forced service, read before RESUME."""

    db: str
    node: str  # the old principal
    role_sequence: int  # its role sequence when service was forced elsewhere
    lost_from: int  # its lost LSN range, first..last (0, 0: nothing past the fork)
    lost_to: int
    salvaged: frozenset[int]  # the ids in its salvage copy


def explained_by_forced_service(ack: Ack, reports: Iterable[LossReport]) -> bool:
    """A missing acknowledged write that a forced service's loss report names, and the salvage copy holds."""
    return any(r.db == ack.db and r.node == ack.node and r.role_sequence == ack.role_sequence and r.lost_from <= ack.lsn <= r.lost_to
               and ack.id in r.salvaged for r in reports)


def find_lost(acks: Sequence[Ack], db: str, present: set[int]) -> list[Ack]:
    """Acknowledged SAFETY FULL writes of db that are not present."""
    return [a for a in acks if a.db == db and a.full and a.id not in present]


def find_lost_unprotected(acks: Sequence[Ack], db: str, present: set[int]) -> list[Ack]:
    """Acknowledged writes of a SAFETY OFF period that are not present (allowed, but reported)."""
    return [a for a in acks if a.db == db and not a.full and a.id not in present]


def find_split_brain(acks: Sequence[Ack]) -> dict[tuple[str, int], set[str]]:
    """(db, role_sequence) -> the nodes that acknowledged in it, where that is more than one."""
    writers: dict[tuple[str, int], set[str]] = {}
    for a in acks:
        writers.setdefault((a.db, a.role_sequence), set()).add(a.node)
    return {key: nodes for key, nodes in writers.items() if len(nodes) > 1}


def find_shared_tokens(acks: Sequence[Ack]) -> dict[tuple[str, int, int, int], list[int]]:
    """(db, role_sequence, lsn, seq) -> the write ids acknowledged with that commit token, where more than one.

    Several writes may share a commit (and its LSN), each its own place (seq)
    in it; so two writes sharing a whole token means a token that does not
    name the write.
    """
    by_token: dict[tuple[str, int, int, int], list[int]] = {}
    for a in acks:
        by_token.setdefault((a.db, a.role_sequence, a.lsn, a.seq), []).append(a.id)
    return {token: ids for token, ids in by_token.items() if len(ids) > 1}


def find_phantoms(sent: set[int], present: set[int]) -> set[int]:
    """Ids present that were never sent."""
    return present - sent


def overlay_wal(base: bytes, transactions: Sequence[WalTransaction]) -> bytes:
    """The database as a reader sees it: the main file with the committed WAL pages on top.

    Each WAL frame holds a whole page image, and a later frame of a page wins,
    exactly as SQLite resolves a page read; the last commit's db size sets the
    length. This is also what a full checkpoint would write into the file.
    """
    if not transactions:
        return bytes(base)
    page_size = transactions[-1].page_size
    image = bytearray(base)
    for tx in transactions:
        for pgno, page in tx.pages:
            end = pgno * page_size
            if len(image) < end:
                image.extend(bytes(end - len(image)))
            image[end - page_size:end] = page
    size = transactions[-1].db_size * page_size
    if len(image) < size:
        image.extend(bytes(size - len(image)))
    return bytes(image[:size])


def page_size_of(image: bytes) -> int:
    """The page size in a SQLite header (1 means 65536); 4096 for an empty file."""
    if len(image) < 18:
        return 4096
    size = int.from_bytes(image[16:18], "big")
    return 65536 if size == 1 else size


def differing_pages(a: bytes, b: bytes) -> list[int]:
    """Page numbers (1-based) whose images differ, including pages only one side has."""
    size = page_size_of(a or b)
    pages = (max(len(a), len(b)) + size - 1) // size
    return [n + 1 for n in range(pages) if a[n * size:(n + 1) * size] != b[n * size:(n + 1) * size]]
