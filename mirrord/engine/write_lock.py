"""A database's single write lock, knowing who holds it and who waits (lock_timeout, EXEC sp_who).

SQLite admits one writer; mirrord serialises writers before they reach it, so a
writer waits here, on the event loop, never on SQLite's busy handler. A client
waits at most its lock timeout (SET LOCK_TIMEOUT, else the node's default) and
then gets `lock_timeout` naming the holder; nothing of its statement ran.
mirrord itself (role change, close) takes the lock with `async with`, waiting
as long as it takes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from mirrord.core.txn import Holding, lock_timeout_message, wait_seconds
from mirrord.core.types import MirrordError


class LockTimeout(MirrordError):
    """The write lock was not free within the connection's lock timeout."""

    code = "lock_timeout"


@dataclass(eq=False)
class LockUse:
    """One holder of the lock, or one waiter for it (compared by identity: each wait is its own)."""

    owner: object | None  # a client connection's owner; None: mirrord itself
    since: float  # monotonic: when it began holding, or waiting
    statement: str  # holder: its last statement (updated as its transaction goes on); waiter: the one waiting


def spid_of(owner: object | None) -> int | None:
    """The session id a client connection's owner carries (client_listener.ClientConnection); None for mirrord itself."""
    return getattr(owner, "spid", None) if owner is not None else None


class WriteLock:
    """asyncio.Lock plus the facts sp_who and a lock_timeout error show."""

    def __init__(self, db: str) -> None:
        self.db = db
        self._lock = asyncio.Lock()
        self.holder: LockUse | None = None
        self.waiters: list[LockUse] = []

    def locked(self) -> bool:
        return self._lock.locked()

    async def acquire(self, owner: object | None = None, statement: str = "", timeout_ms: int = -1) -> None:
        """Take the lock for owner, waiting at most timeout_ms (-1: forever, 0: not at all); LockTimeout naming the holder."""
        if not self._lock.locked() and not self.waiters:
            await self._lock.acquire()  # free: taken without a wait (an uncontended acquire never suspends)
        elif timeout_ms == 0:
            raise LockTimeout(lock_timeout_message(self.db, 0, self._holding()))
        else:
            use = LockUse(owner, time.monotonic(), statement)
            self.waiters.append(use)
            try:
                await asyncio.wait_for(self._lock.acquire(), wait_seconds(timeout_ms))
            except asyncio.TimeoutError:
                raise LockTimeout(lock_timeout_message(self.db, timeout_ms, self._holding())) from None
            finally:
                self.waiters.remove(use)
        self.holder = LockUse(owner, time.monotonic(), statement)

    def queue(self, owner: object, statement: str) -> LockUse:
        """owner waits for the lock in the writer's queue (an autocommit write, run with others in one hop)."""
        use = LockUse(owner, time.monotonic(), statement)
        self.waiters.append(use)
        return use

    def unqueue(self, use: LockUse) -> None:
        """A queued write stops waiting: taken into a hop, timed out, or its client left."""
        if use in self.waiters:
            self.waiters.remove(use)

    def timed_out(self, timeout_ms: int) -> LockTimeout:
        """The error of a queued write that waited timeout_ms in vain, naming the holder."""
        return LockTimeout(lock_timeout_message(self.db, timeout_ms, self._holding()))

    async def acquire_for_queue(self, owner: object, statement: str) -> None:
        """The writer task takes the lock for the queued writes (they are the waiters sp_who shows), waiting as long as it takes.

        owner and statement (the first queued write's) are shown as the holder while the hop runs.
        """
        await self._lock.acquire()
        self.holder = LockUse(owner, time.monotonic(), statement)

    def release(self) -> None:
        self.holder = None
        self._lock.release()

    def note_statement(self, owner: object, statement: str) -> None:
        """owner, holding the lock, runs another statement of its transaction (sp_who's last statement)."""
        if self.holder is not None and self.holder.owner is owner:
            self.holder.statement = statement

    def waiting(self, owner: object) -> LockUse | None:
        """owner's wait for this lock, if it is waiting."""
        return next((w for w in self.waiters if w.owner is owner), None)

    def _holding(self) -> Holding | None:
        h = self.holder
        if h is None:
            return None
        return Holding(spid_of(h.owner), time.monotonic() - h.since, h.statement)

    async def __aenter__(self) -> "WriteLock":
        await self.acquire(None, "mirrord: role change or close")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
