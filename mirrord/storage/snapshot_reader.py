"""Queries on a database snapshot: SQLite reading pages through a VFS that asks the snapshot for each one.

Why a VFS (apsw's, the Python binding that exposes SQLite's VFS interface):
creation copies nothing, so no file on disk is the snapshot; each page is
either its saved image or the mirror's copy as it stands
(`DatabaseSnapshot.page`), decided at the moment SQLite reads it, while redo
goes on. SQLite opens the snapshot `immutable` and read-only: no locks, no
journal, no WAL; it may cache pages freely, as they never change.

Queries are bounded as the principal's are (the client's `StatementGuard`:
timeout, result size, the client gone) and may only read: the statement must
be read-only by SQLite's own judgement (`Cursor.is_readonly`, asked before it
runs), and ATTACH is refused (it would open a file by name).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw

from mirrord.core.types import LimitExceeded, MirrordError, StatementRefused
from mirrord.storage.snapshot import DatabaseSnapshot, SnapshotGone
from mirrord.storage.statement_guard import CURRENT, PROGRESS_STEPS, row_cost

VFS_NAME = "mirrord-snapshot"
_OPEN: dict[str, DatabaseSnapshot] = {}  # the name SQLite opens -> the snapshot it reads
_OPEN_LOCK = threading.Lock()
# Snapshot queries run on threads of their own: on asyncio's default pool, a few long SELECTs would hold up
# the mirror's hardening (it syncs there), and with it every SAFETY FULL commit of the principal.
QUERY_THREADS = 4
_queries = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="snapshot-query")


class _SnapshotFile:
    """The SQLite file of one snapshot: reads from the snapshot, refuses writes."""

    def __init__(self, snap: DatabaseSnapshot) -> None:
        self._snap = snap

    def xRead(self, amount: int, offset: int) -> bytes:
        try:
            return self._snap.read(amount, offset)
        except SnapshotGone as exc:
            raise apsw.IOError(f"the snapshot was dropped: {exc}") from None

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("a database snapshot is read-only")

    def xTruncate(self, newsize: int) -> None:
        raise apsw.ReadOnlyError("a database snapshot is read-only")

    def xFileSize(self) -> int:
        return self._snap.file_size

    def xSync(self, flags: int) -> None:
        pass

    def xClose(self) -> None:
        pass

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return self._snap.meta.page_size

    def xDeviceCharacteristics(self) -> int:
        return 0


class _SnapshotVFS(apsw.VFS):
    """Opens the snapshots registered in _OPEN; anything else (temporary files of a sort) as the default VFS does."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, "")

    def xOpen(self, name, flags):
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        with _OPEN_LOCK:
            snap = _OPEN.get(filename) if filename else None
        if snap is None:
            return super().xOpen(name, flags)
        flags[1] = apsw.SQLITE_OPEN_READONLY
        return _SnapshotFile(snap)


_vfs: _SnapshotVFS | None = None


def _register() -> None:
    global _vfs
    with _OPEN_LOCK:
        if _vfs is None:
            _vfs = _SnapshotVFS()


def _deny_attach(op: int, *args) -> int:
    return apsw.SQLITE_DENY if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH) else apsw.SQLITE_OK


class SnapshotReaders:
    """The query connections of one snapshot: a small pool, interrupted and closed when the snapshot goes."""

    def __init__(self, snap: DatabaseSnapshot) -> None:
        _register()
        self._snap = snap
        self._key = str(snap.directory / "pages")
        self._idle: list[apsw.Connection] = []
        self._busy: set[apsw.Connection] = set()
        self._cond = threading.Condition()
        self._closed = False
        with _OPEN_LOCK:
            _OPEN[self._key] = snap

    @classmethod
    def of(cls, snap: DatabaseSnapshot) -> "SnapshotReaders":
        """The snapshot's readers (made at its first query); SnapshotGone once it is closed."""
        if snap.closed:
            raise SnapshotGone(snap.dropped or "closed")
        if snap.readers is None:
            snap.readers = cls(snap)
        return snap.readers

    def _take(self) -> apsw.Connection:
        with self._cond:
            if self._closed:
                raise SnapshotGone(self._snap.dropped or "closed")
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = apsw.Connection(f"file:{self._key}?immutable=1", vfs=VFS_NAME,
                                       flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
                conn.authorizer = _deny_attach
            self._busy.add(conn)
            return conn

    def _give_back(self, conn: apsw.Connection) -> None:
        with self._cond:
            self._busy.discard(conn)
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
            self._cond.notify_all()

    def close(self) -> None:
        """Interrupt the running queries, wait for them to end, and close every connection."""
        with self._cond:
            self._closed = True
            for conn in self._busy:
                conn.interrupt()
            self._cond.wait_for(lambda: not self._busy)
            for conn in self._idle:
                conn.close()
            self._idle.clear()
        with _OPEN_LOCK:
            _OPEN.pop(self._key, None)

    def run(self, sql: str, params: Any) -> tuple[list[str], list[list[Any]], list[str | None]]:
        """(columns, rows, declared types) of a read-only statement, under the client's guard."""
        conn = self._take()
        try:
            return _run(conn, sql, params)
        except SnapshotSqlError:
            if self._snap.dropped is not None or self._snap.closed:  # a page read failed because it went
                raise SnapshotGone(self._snap.dropped or "closed") from None
            raise
        finally:
            self._give_back(conn)


async def run_snapshot_query(readers: "SnapshotReaders", sql: str, params: Any):
    """readers.run on the snapshot query threads, with the client's guard (a context variable) along."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_queries, context.run, readers.run, sql, params)


def _run(conn: apsw.Connection, sql: str, params: Any) -> tuple[list[str], list[list[Any]], list[str | None]]:
    guard = CURRENT.get()
    budget = guard.max_result_bytes if guard is not None else None
    if guard is not None:
        conn.set_progress_handler(guard.should_interrupt, PROGRESS_STEPS)
        conn.limit(apsw.SQLITE_LIMIT_LENGTH, max(1, budget))
    seen: dict = {}

    def check(cursor: apsw.Cursor, statement: str, bindings) -> bool:
        if not cursor.is_readonly:
            seen["write"] = statement
            return False
        seen["description"] = cursor.get_description()
        return True

    cur = conn.cursor()
    cur.exec_trace = check
    rows: list[list[Any]] = []
    used = 0
    try:
        cur.execute(sql, params if params is not None else ())
        for row in cur:
            rows.append(list(row))
            used += row_cost(row)
            if budget is not None and used > budget:
                raise LimitExceeded(
                    f"the result is larger than this node's limit of {budget >> 20} MiB (after {len(rows)} rows); "
                    "nothing was sent. Select fewer rows or columns (WHERE, LIMIT/OFFSET), or raise --max-result-mb")
    except apsw.ExecTraceAbort:
        raise StatementRefused("a database snapshot is read-only: it answers SELECT, VALUES, EXPLAIN and WITH … SELECT; "
                               "write on the principal") from None
    except apsw.InterruptError:
        if guard is not None and guard.should_interrupt():
            raise guard.error() from None
        raise SnapshotGone("the snapshot was dropped while the statement ran") from None
    except apsw.Error as exc:
        if isinstance(exc, apsw.AuthError):
            raise StatementRefused("ATTACH and DETACH are not allowed on a database snapshot") from None
        raise SnapshotSqlError(str(exc)) from None
    finally:
        cur.close()
        if guard is not None:
            conn.set_progress_handler(None)
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # a pooled connection must not keep a transaction a statement opened
    description = seen.get("description") or ()
    return [d[0] for d in description], rows, [d[1] for d in description]


class SnapshotSqlError(MirrordError):
    """SQLite refused or failed a statement on a snapshot (a syntax error, no such table, ...)."""

    code = "sql"
