"""The principal database: SQL in, WAL frames captured as LSN-tagged log records.

How a write works. Every statement that may write runs on the single writer
connection, under `write_lock` (SQLite admits one writer anyway). Right after
it, in the same hop on the connection's thread, the WAL reader captures every
transaction committed since the last capture and appends them to the durable
log, each under the next LSN. Autocommit writes queue for the writer task,
which takes the lock once for all those queued and runs them in one hop, the
row changes among them in one SQLite transaction with a SAVEPOINT each: each its
own outcome, one WAL commit, one capture and one log record for the lot
(`_run_batch_and_capture`); the thread hop, not SQLite, is most of a small commit's cost. Automatic checkpoints are off: only `_capture`
checkpoints, after it has read everything, so no frame can be checkpointed away
before it is in the log. After a crash, `open()` captures whatever SQLite
committed but the log did not yet hold (the last record carries the WAL
position it was read up to).

How acknowledgement works (SAFETY FULL). `visible_lsn` is the highest LSN a
client may learn about: the end of log, or, while commits wait for the mirror,
the mirror's hardened LSN. No answer leaves the principal before everything the
statement could have seen is visible: a committing client waits for its LSN, a
reader takes its snapshot first and then waits for every commit that snapshot
can contain. So nobody reads a commit that a failover could still take away.
Waiting happens outside the write lock, which is what makes commits group:
many clients' records travel to the mirror in one frame and share its fsync.

How the principal's own copy stays durable. A commit is acknowledged only once
the log holding it is fsynced here too (`synced_lsn`), whatever the mode. A
hop fsyncs what it appended before it returns, on the writer's thread (the
GIL is free for the loop meanwhile, and no other thread hop is needed), so
the commits of one batch share one fsync (group commit); a sync task fsyncs
whatever else was appended and retries a sync that failed. Only synced records are shipped
to the mirror, so a mirror never holds a record its principal could lose in a
power cut: a restarted principal's log is never shorter than its mirror's in
the same role sequence. The database file itself is made durable by
checkpoints, after which `redo_lsn` records the LSN it holds; SQLite's WAL is
never fsynced on the commit path. At open, if the WAL lost frames the log has
(a power cut), the file is rebuilt from the log past `redo_lsn`, as redo does
on the mirror, before SQLite opens it.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiosqlite
import structlog

from mirrord.core import redo_queue, sql_surface
from mirrord.core.checkmirror import PageDigests
from mirrord.core.monitoring import CommitClock
from mirrord.core.page_check import auto_vacuum, header_problem, page_problem, page_size_of
from mirrord.core.quorum import AckRule
from mirrord.core.session import Session
from mirrord.core.txn import (LOCK_TIMEOUT_DEFAULT_MS, READ_ONLY_PREFIXES, TxnWord, batchable, classify,
                              serialization_message, shares_commit)
from mirrord.core.types import (CommitInDoubt, DiskFull, LimitExceeded, LogFull, Lsn, MirrordError, NotServing,
                                PermissionDenied, RedoQueueFull, StatementRefused, TransactionAborted)
from mirrord.storage.checksums import last_image, page_images_at, principal_digests_apart
from mirrord.storage.decltypes import DeclaredTypes
from mirrord.storage.fileutil import DISK_RESERVE_BYTES, NO_SPACE, FreeSpace, atomic_write_bytes, copy_in_steps
from mirrord.storage.statement_guard import CURRENT, run_guarded
from mirrord.storage.log import DurableLog, LogRecord
from mirrord.storage.pagestore import apply_log_range, load_redo_lsn, rebuild_from_log
from mirrord.storage.wal import WalPosition, WalReader, WalTransaction
from mirrord.engine.write_lock import LockUse, WriteLock

log = structlog.get_logger()

EXPIRY_SLACK = 0.001  # s: a lock timeout due within this is due now (the loop's timers may fire that early)
CHECKPOINT_FRAMES = 2000  # checkpoint the WAL once this many frames were captured
SCHEMA_WORDS, END_WORDS = ("CREATE", "ALTER", "DROP"), ("COMMIT", "END", "ROLLBACK")
READER_COUNT = 3  # readers for autocommit reads
# Readers for read transactions, opened as needed and kept for reuse: each is a thread and a
# connection, and its snapshot holds back checkpoints, so there is a bound (a `limit` error past it).
MAX_TRANSACTION_READERS = 32
SNAPSHOT_PROBE = "SELECT 1 FROM sqlite_schema LIMIT 1"  # SQLite takes a transaction's snapshot at its first read
WRITE_ATTEMPT_ON_READER = ("attempt to write a readonly database", "readonly database")
# Capture depends on these: the journal mode, who checkpoints, and that every
# page of the database lives in this one file.
INTERRUPTED = ("timeout", "cancelled")  # error codes of a statement its guard interrupted
BATCH_LIMIT = 64  # queued autocommit writes the writer task runs in one hop at most
# Writers held by the redo queue limit look again this often even unwoken: a wakeup (the mirror's report, a
# state change) is what normally lets them go, this only bounds the harm of one that never comes.
REDO_QUEUE_RECHECK = 0.5  # seconds
MANAGED_PRAGMAS = frozenset({"journal_mode", "wal_autocheckpoint", "wal_checkpoint", "locking_mode", "journal_size_limit", "synchronous"})


class SqlError(MirrordError):
    """SQLite refused the statement (syntax, constraint, …)."""

    code = "sql"


class SerializationFailure(MirrordError):
    """A transaction that read a snapshot wrote after others committed (SQLITE_BUSY_SNAPSHOT)."""

    code = "serialization"


class IntegrityError(SqlError):
    """A constraint failed."""

    code = "integrity"


@dataclass
class StatementResult:
    """Rows and facts of one executed statement."""

    columns: list[str]
    rows: list[list[Any]]
    rowcount: int
    lsn: Lsn | None = None  # commit LSN, when the statement committed a transaction
    role_sequence: int | None = None  # the role sequence that commit was logged in: (lsn, role_sequence, seq) is its token
    # its place among the client statements that commit holds (several clients' autocommit writes share
    # one SQLite transaction, each under a SAVEPOINT): 0 for a commit of its own
    seq: int | None = None
    lastrowid: int | None = None  # rowid of the row an INSERT added (DB-API cursor.lastrowid)
    types: list[str | None] | None = None  # each column's declared type (PEP 249 description), when known


@dataclass
class ClientTransaction:
    """A client's explicit transaction (BEGIN … COMMIT): deferred, then reading on a snapshot, then writing.

    Begun, it holds nothing. Its first read takes a reader connection of its own
    and a snapshot there (`snapshot_lsn`: the end of log that snapshot holds); its
    first write takes the write lock and moves it onto the writer (`on_writer`).
    """

    owner: object
    reader: aiosqlite.Connection | None = None
    snapshot_lsn: Lsn | None = None
    on_writer: bool = False


@dataclass(eq=False)
class QueuedWrite:
    """A client's autocommit write waiting in the writer's queue, then its outcome."""

    owner: object
    sql: str
    params: Any
    context: contextvars.Context  # the client's: its statement guard goes along onto the writer thread
    use: LockUse  # its place among the write lock's waiters (sp_who)
    done: asyncio.Future  # (outcome, records), or an error that kept it from running
    timeout_ms: int = 0  # its lock timeout (0: none)
    deadline: float = math.inf  # when that runs out (the event loop's clock)
    taken: bool = False  # in a hop: it runs, whatever its wait said


_denial = threading.local()  # the authorizer's last reason, per connection thread


class PageDamaged(SqlError):
    """SQLite found a page of the database damaged (SQLITE_CORRUPT / SQLITE_NOTADB) or could not read it
    (SQLITE_IOERR): the statement failed, the session goes on, and automatic page repair fetches the
    page from the mirror (mirrord/engine/page_repair.py)."""

    DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT: "SQLITE_CORRUPT", sqlite3.SQLITE_IOERR: "SQLITE_IOERR",
                    sqlite3.SQLITE_NOTADB: "SQLITE_NOTADB"}

    @property
    def io_error(self) -> bool:
        return "SQLITE_IOERR" in self.message


def _sql_error(exc: sqlite3.Error) -> MirrordError:
    if "not authorized" in str(exc) or "authorization denied" in str(exc):
        why = getattr(_denial, "reason", None) or "the statement does something client SQL may not do here"
        _denial.reason = None
        return StatementRefused(f"not allowed on a mirrored database: {why}")
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(str(exc))
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return DiskFull(f"the disk is full ({exc}); the statement was rolled back, nothing was logged. "
                        "Writes succeed again by themselves once space is freed")
    damage = PageDamaged.DAMAGE_CODES.get((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF)
    if damage is not None:
        return PageDamaged(f"{exc} ({damage}): a page of this database is damaged on this node; the statement "
                           "failed and changed nothing. Automatic page repair fetches the page from the mirror "
                           "(see sys.dm_db_mirroring_auto_page_repair): retry in a moment")
    return SqlError(str(exc))


async def _probe_snapshot(reader: aiosqlite.Connection) -> None:
    """Take a read transaction's snapshot (SQLite takes it at the first read, of the schema, page 1): a damaged
    page 1 fails the statement with its own clear error (PageDamaged), not an internal one."""
    try:
        await (await reader.execute(SNAPSHOT_PROBE)).fetchall()
    except sqlite3.Error as exc:
        raise _sql_error(exc) from None


async def _end_read(reader: aiosqlite.Connection) -> None:
    """End a read transaction. After a damaged page (SQLITE_CORRUPT) SQLite may refuse its COMMIT: a read has
    nothing to keep, so it is rolled back, and the client gets the statement's own error (PageDamaged)."""
    try:
        await reader.execute("COMMIT")
    except sqlite3.Error:
        try:
            await reader.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was left open


def _in_connection_thread(conn: aiosqlite.Connection, fn, *args):
    """Run fn(sqlite3_connection, *args) on the connection's own thread, in one hop.

    aiosqlite keeps each sqlite3 connection on a thread of its own; executing a
    statement and capturing its WAL frames in one queued call saves a thread
    round trip per commit, which is most of the cost of a small commit.
    """
    # the context goes along: a client statement's guard (statement_guard.CURRENT) is read on that thread
    ctx = contextvars.copy_context()
    return conn._execute(ctx.run, fn, conn._conn, *args)  # noqa: SLF001 - see docstring


class PrincipalDatabase:
    """A database this node serves: SQL execution, capture, acknowledgement."""

    def __init__(self, directory: Path, session: Session, dlog: DurableLog, *, log_size_limit: int,
                 ack_rule: Callable[[], AckRule], quorum_refusal: Callable[[], str | None], log_retention: int = 64 << 20,
                 lock_timeout_ms: int = LOCK_TIMEOUT_DEFAULT_MS) -> None:
        self.directory = directory
        self._free_space = FreeSpace(directory)
        self.path = directory / "db.sqlite"
        self.decltypes = DeclaredTypes(self.path)
        self._schema_pending = False  # DDL ran since the types were last forgotten
        self.session = session
        self.log = dlog
        self.log_size_limit = log_size_limit
        self.log_retention = log_retention
        self.ack_rule = ack_rule
        self.quorum_refusal = quorum_refusal
        self.write_lock = WriteLock(session.db)
        self.lock_timeout_ms = lock_timeout_ms  # how long a writer queues for the lock unless its connection SET LOCK_TIMEOUT
        # Held only for one execute+capture hop: a reader passing through it knows
        # that every commit its snapshot can contain has been captured.
        self._hop_gate = asyncio.Lock()
        self.new_log = asyncio.Event()  # set whenever more records were synced (there is more to ship)
        self.synced_lsn: Lsn = 0  # the log is fsynced up to here: nothing past it is acknowledged or shipped
        self._sync_wanted = asyncio.Event()
        self._syncer: asyncio.Task | None = None
        self._synced_in_hop: Lsn = 0  # written by the writer thread's sync in a hop, read by the loop once the hop is back
        self._redo_lsn_path = directory / "redo_lsn"
        self.applied_lsn: Lsn = 0  # the database file (without its WAL) is durable up to here
        self.repaired_at_open: list[tuple[int, Lsn, str]] = []  # (page, LSN of the image, damage) put back by open()
        self._checkpoints_paused = 0  # snapshots copying db.sqlite: no checkpoint may write into it meanwhile
        # SQLite committed something the log could not take (the disk filled between the
        # space check and the append): reads are refused and capture retried until it is logged
        self._uncaptured = False
        self._recapture: asyncio.Task | None = None
        # Nothing is visible until the ack rule says so: after a restart the end of
        # log may hold commits the mirror never hardened.
        self.visible_lsn: Lsn = 0
        self._waiters: list[tuple[Lsn, int, asyncio.Future]] = []
        self._tiebreak = itertools.count()
        self._wal = WalReader(Path(str(self.path) + "-wal"))
        self._wal_pos: WalPosition | None = None
        self._writer: aiosqlite.Connection | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._reader_list: list[aiosqlite.Connection] = []
        # Autocommit writes waiting for the writer task, which runs all of them in one hop (see _write_loop)
        self._write_queue: list[QueuedWrite] = []
        # one timer for the queue's lock timeouts, at the earliest deadline it was armed for (not one per write)
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = math.inf
        self._writes_queued = asyncio.Event()
        self._write_task: asyncio.Task | None = None
        self._txn_owner: object | None = None  # the client whose transaction runs on the writer (holding the write lock)
        self._txns: dict[object, ClientTransaction] = {}  # every client's open explicit transaction, by owner
        self._spare_txn_readers: list[aiosqlite.Connection] = []
        self._txn_reader_count = 0  # transaction readers open, spare or in use
        # Clients whose transaction the node rolled back: until they end it, their
        # statements are refused, or they would run outside the transaction they believe open.
        self._aborted_owners: set[object] = set()
        self._abort_reasons: dict[object, str] = {}  # why, when it was not a role change
        self._internal = False  # set while mirrord itself runs a managed PRAGMA
        self.closed = False
        self.serving = True  # False once a manual failover handed the role over (close follows)
        # for the monitor: when transactions committed locally, and how long commits waited to be acknowledged
        self.commit_clock = CommitClock()
        self.commits = 0
        self.commit_wait = 0.0
        self.on_commit: Callable[[float], None] | None = None  # seconds from a committing statement's arrival to its ack
        # PARTNER REDO_QUEUE flow control (core.redo_queue): writers wait here while the mirror's redo queue is over it
        self._redo_room = asyncio.Event()
        self._redo_holders = 0  # waits under way: the writer task's, and lone writers'
        self._redo_held_since = 0.0
        self._writer_held = False  # the writer task waits on the redo queue: its queued writes are held by it
        self.redo_queue_holds = 0  # times writes began to be held (for status and metrics)
        self.redo_queue_held_s = 0.0  # seconds writes were held, in all (the current hold not counted until it ends)
        self.redo_queue_timeouts = 0  # writes that waited their lock timeout on the redo queue and did not run

    # ---------------------------------------------------------------- lifecycle

    @property
    def end_lsn(self) -> Lsn:
        """The last LSN in the log (end of log)."""
        return self.log.last_lsn

    async def open(self) -> None:
        """Open the SQLite database, bring it level with the log, and capture what a crash left uncaptured."""
        self._wal_pos = self._last_wal_position()
        await asyncio.to_thread(self._recover_file)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._open_connections()
        except BaseException:
            for conn in (self._writer, *self._reader_list):
                await conn.close()  # its thread would outlive the failure
            raise

    async def _open_connections(self) -> None:
        await _in_connection_thread(self._writer, self._configure_writer)
        records = await _in_connection_thread(self._writer, self._capture)
        if records:
            log.info("captured_after_restart", database=self.session.db, records=len(records), lsn=self.end_lsn)
        # A durable baseline: the file holds the whole log from here on (a later
        # rebuild starts at this point), and the log is synced before anything is shown.
        await _in_connection_thread(self._writer, self._checkpoint, "TRUNCATE")
        self.synced_lsn = await asyncio.to_thread(self.log.sync)
        for _ in range(READER_COUNT):
            self._readers.put_nowait(await self._open_reader())
        self._syncer = asyncio.create_task(self._sync_loop(), name=f"log-sync:{self.session.db}")
        self._write_task = asyncio.create_task(self._write_loop(), name=f"writer:{self.session.db}")
        self.session.note_log_end(self.end_lsn)
        self.update_visible()

    async def _open_reader(self) -> aiosqlite.Connection:
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader_list.append(reader)
        await reader.execute("PRAGMA query_only=ON")  # a write attempt fails; it is retried on the writer
        await reader.execute("PRAGMA busy_timeout=5000")
        await reader.set_authorizer(self._authorize)
        return reader

    def _recover_file(self) -> None:
        """Rebuild the database file from the log if SQLite's WAL lost commits the log holds (a power cut)."""
        self.applied_lsn = load_redo_lsn(self._redo_lsn_path)
        self._repair_first_page()
        end = self.log.last_lsn
        if self.applied_lsn >= end or (self._wal_pos is not None and self._wal.holds(self._wal_pos)):
            return
        if self.log.first_lsn > self.applied_lsn + 1 or self.log.first_lsn == 0:
            raise RuntimeError(
                f"the database file of {self.session.db} holds LSN {self.applied_lsn} and its WAL lost later commits, "
                f"but the log begins at LSN {self.log.first_lsn}: it cannot be rebuilt here; restore it from the partner "
                "or a backup")
        # After a promotion the copy was a page store redone up to here; after a power cut
        # the WAL lost commits the synced log holds. Either way the log brings it level.
        log.info("redo_from_log", database=self.session.db, from_lsn=self.applied_lsn + 1, lsn=end,
                 wal_lost=self._wal_pos is not None)
        self.applied_lsn = rebuild_from_log(self.path, self.log, self._redo_lsn_path)
        self._wal_pos = None

    def _repair_first_page(self) -> None:
        """A damaged page 1 (SQLite's header and the schema) keeps SQLite from opening the file at all: it is put
        back from the log's last image of it (automatic page repair, at load). An image at or before applied_lsn
        is the file's page 1 (the log drops only its oldest records); a later one is also in SQLite's WAL, whose
        frame SQLite reads over the file's, or is written again by the rebuild from the log below, as after any
        crash. The mirror's copy, opened at a promotion, is put back the same way."""
        last = self.log.get(self.log.last_lsn) if self.log.last_lsn else None
        if last is None or not self.path.exists():
            return  # nothing logged yet: SQLite made the file, and nothing can be told about page 1
        size = last.page_size
        with open(self.path, "rb") as f:
            page1 = f.read(size)
        if len(page1) < size:
            return
        anywhere = 1 << 31  # the file may be shorter than the database its WAL and log make: no size is judged here
        problem = page_problem(page1, 1, anywhere, size)
        if problem is None:
            return
        found = last_image(self.log, 1, self.log.last_lsn)
        if found is None or page_problem(found[1], 1, anywhere, size) is not None:
            raise RuntimeError(
                f"page 1 of {self.session.db} (SQLite's header and the schema) is damaged ({problem}) and the log "
                f"(LSN {self.log.first_lsn} on) holds no image of it: SQLite cannot open it. Fail over to the mirror "
                "(SET PARTNER FAILOVER there, or FORCE_SERVICE_ALLOW_DATA_LOSS), or restore it from a backup")
        lsn, image = found
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, image, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.error("page_repaired", database=self.session.db, pages=[1], lsn=lsn, side="principal", at="load",
                  damage=problem)
        self.repaired_at_open.append((1, lsn, problem))

    async def _sync_loop(self) -> None:
        """Group commit: fsync whatever was appended since the last fsync, then let it be shown and shipped."""
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted.clear()
            try:
                upto = await asyncio.to_thread(self.log.sync)
            except OSError as exc:
                # Nothing past synced_lsn is acknowledged: its clients hear that the outcome is
                # in doubt rather than wait; the sync is tried again shortly.
                why = f"{exc.strerror or exc} (errno {exc.errno})"
                log.error("log_sync_failed", database=self.session.db, error=why, lsn=self.synced_lsn)
                self.fail_waiters(DiskFull(f"the log could not be synced to disk ({why})"))
                await asyncio.sleep(0.1)
                self._sync_wanted.set()
                continue
            if self._note_synced(upto):
                self.update_visible()

    def _note_synced(self, upto: Lsn) -> bool:
        """The log is fsynced up to upto (a hop's sync or the sync task's): ship it; True if that is news."""
        if upto <= self.synced_lsn:
            return False
        self.synced_lsn = upto
        self.new_log.set()
        return True

    def _last_wal_position(self) -> WalPosition | None:
        last = self.log.get(self.log.last_lsn) if self.log.last_lsn else None
        if last is None or not last.wal:
            return None
        return WalPosition.from_dict(last.wal)

    async def close(self) -> None:
        """Close readers, then the writer (SQLite checkpoints everything captured)."""
        if self.closed:
            return
        self.closed = True
        self._redo_room.set()  # writers held by the redo queue limit hear that the database closes
        if self._expiry is not None:
            self._expiry.cancel()
        for task in (self._syncer, self._recapture):
            if task is not None:
                task.cancel()
        self.fail_waiters(NotServing("the database is closing on this node; reconnect"))
        self._writes_queued.set()  # the writer task ends once its hop in flight (if any) has ended
        self._fail_queued(NotServing("the database is closing on this node; the statement was not run. Reconnect"))
        await self.mark_transactions_aborted()
        for owner in list(self._txns):  # read transactions too: their readers close now
            self._aborted_owners.add(owner)
            await self._roll_back(owner)
        async with self.write_lock:
            self.decltypes.close()
            for reader in self._reader_list:
                await reader.close()
            if self._writer is not None:
                # everything into the file, so the copy is whole without its WAL (a mirror's page store
                # has none); the checkpoint records how far it got in redo_lsn
                try:
                    await _in_connection_thread(self._writer, self._capture_and_checkpoint)
                except (OSError, sqlite3.Error) as exc:
                    # a full disk: the file holds what redo_lsn says, the log the rest (redo replays it)
                    log.warning("checkpoint_at_close_failed", database=self.session.db, error=str(exc), redo_lsn=self.applied_lsn)
                await self._writer.close()

    # ---------------------------------------------------------------- capture

    def _capture(self, conn: sqlite3.Connection) -> list[LogRecord]:
        """Append every newly committed WAL transaction to the log (writer thread)."""
        txns, pos = self._wal.read_committed(self._wal_pos)
        return self._log_transactions(conn, txns, pos)

    def _log_transactions(self, conn: sqlite3.Connection, txns: list[WalTransaction], pos: WalPosition | None) -> list[LogRecord]:
        """Append WAL transactions read up to pos to the log as one batch, then checkpoint if it is time (writer thread)."""
        if not txns:
            return []
        lsn, role_sequence = self.log.last_lsn, self.session.config.role_sequence
        records = []
        for i, txn in enumerate(txns, start=1):
            wal = pos.to_dict() if i == len(txns) else None
            records.append(LogRecord(lsn + i, role_sequence, txn.db_size, txn.page_size, txn.pages, wal))
        self.log.append(records)
        self._wal_pos = pos
        try:
            # Group commit inside the hop: what this hop appended is synced on this thread,
            # while the GIL is free for the loop, rather than by another thread hop after it
            self._synced_in_hop = self.log.sync()
        except OSError:
            pass  # the sync task tries again, and fails the waiters while it cannot
        if self._checkpoints_paused:
            return records  # a snapshot is copying the file: it must not change under the copy
        # The log keeps what the file lacks (a lost WAL is rebuilt from it): checkpoint
        # before that share grows large, or truncation could not make room.
        unchecked = self.log.bytes_between(self.applied_lsn, self.log.last_lsn)
        if pos.frame_count >= CHECKPOINT_FRAMES or unchecked > self.log_size_limit // 4:
            # PASSIVE never waits for readers (one may be waiting for the mirror
            # while it holds a snapshot); once complete, SQLite restarts the WAL
            # with new salts at the next write and the reader follows.
            try:
                self._checkpoint(conn, "PASSIVE")
            except (OSError, sqlite3.Error) as exc:  # the records are logged: the checkpoint is retried next time
                log.warning("checkpoint_failed", database=self.session.db, error=str(exc), lsn=self.log.last_lsn)
        return records

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> bool:
        """Checkpoint the captured WAL into the database file; True if all of it went in."""
        self.log.sync()  # the log holds what the WAL held, before the WAL is reused
        lsn = self.log.last_lsn  # everything captured: the writer thread is the only one that appends here
        self._internal = True
        try:
            busy, wal_frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            self._internal = False
        complete = busy == 0 and wal_frames == done
        if complete and lsn > self.applied_lsn:
            # SQLite synced the file after a complete checkpoint: a rebuild need only start past here
            atomic_write_bytes(self._redo_lsn_path, str(lsn).encode())
            self.applied_lsn = lsn
        return complete

    def _configure_writer(self, conn: sqlite3.Connection) -> None:
        self._internal = True
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"could not put the database in WAL mode (got {mode})")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # only _capture checkpoints
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.execute("PRAGMA busy_timeout=5000")
        finally:
            self._internal = False
        conn.set_authorizer(self._authorize)

    def _authorize(self, action: int, arg1, arg2, dbname, source) -> int:
        """Client SQL: the allow-list of core.sql_surface (managed PRAGMAs, TEMP objects, ATTACH refused)."""
        if self._internal:
            return sqlite3.SQLITE_OK
        why = sql_surface.refusal(action, arg1, arg2, dbname)
        if why is None:
            return sqlite3.SQLITE_OK
        _denial.reason = why  # this connection's thread; _sql_error reports it with "not authorized"
        return sqlite3.SQLITE_DENY

    # ---------------------------------------------------------------- visibility

    def update_visible(self) -> None:
        """Recompute visible_lsn after an ack, a capture or a session change."""
        end = self.end_lsn
        self.session.note_log_end(end)
        rule = self.ack_rule()
        if rule is AckRule.MIRROR:
            target = min(end, self.synced_lsn, self.session.hardened_lsn)
        elif rule is AckRule.LOCAL:
            target = min(end, self.synced_lsn)
        else:
            target = self.visible_lsn  # blocked: the witness must hear first, or quorum is lost
            why = self.quorum_refusal()
            if why is not None and self._waiters:
                self.fail_waiters(NotServing(f"{why}. The outcome of this commit is in doubt: check it on the principal"))
        if target > self.visible_lsn:
            self.visible_lsn = target
        self.session.note_acknowledged(self.visible_lsn)  # what the mirror must hold to be caught up (Session.note_ack)
        while self._waiters and self._waiters[0][0] <= self.visible_lsn:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
        self.redo_queue_changed()  # an ack brings the mirror's redo queue; a session change may end a hold

    # ---------------------------------------------------------------- redo queue limit (flow control)

    def redo_queue_over(self) -> bool:
        """True while writers must wait: the mirror's redo queue is over PARTNER REDO_QUEUE (core.redo_queue.must_wait).

        Never on a database closing or no longer served here: its writers go on to hear that instead.
        """
        if self.closed or not self.serving:
            return False
        s = self.session
        return redo_queue.must_wait(s.config.redo_queue_mb, s.redo_queue_bytes, s.state)

    @property
    def redo_queue_holding(self) -> bool:
        """Writes are being held by the redo queue limit now."""
        return self._redo_holders > 0

    def redo_queue_changed(self) -> None:
        """The mirror reported its redo queue, the limit or the session's state changed: let held writers go if they may."""
        if not self.redo_queue_over():
            self._redo_room.set()

    async def _wait_redo_room(self, deadline: float | None = None, timeout_ms: int = 0) -> None:
        """Wait while the redo queue is over the limit; RedoQueueFull once `deadline` (monotonic) passes, nothing run.

        Called where a write is about to take the write lock (the writer task
        before it takes a batch, a lone write or a transaction's first write):
        once per batch, never per statement, and never while holding the lock.
        """
        if not self.redo_queue_over():
            return
        if self._redo_holders == 0:
            self.redo_queue_holds += 1
            self._redo_held_since = time.monotonic()
            log.info("redo_queue_holding_writes", database=self.session.db, redo_queue=self.session.redo_queue_bytes,
                     limit_mb=self.session.config.redo_queue_mb)
        self._redo_holders += 1
        try:
            while self.redo_queue_over():
                self._redo_room.clear()
                wait = REDO_QUEUE_RECHECK
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._redo_queue_full(timeout_ms)
                    wait = min(wait, left)
                try:
                    await asyncio.wait_for(self._redo_room.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._redo_holders -= 1
            if self._redo_holders == 0:
                self.redo_queue_held_s += time.monotonic() - self._redo_held_since
        if self.closed:
            raise NotServing("the database is closing on this node; the statement was not run. Reconnect")

    def _redo_queue_full(self, timeout_ms: int) -> RedoQueueFull:
        self.redo_queue_timeouts += 1
        s = self.session
        return RedoQueueFull(redo_queue.held_message(s.db, timeout_ms, s.redo_queue_bytes, s.config.redo_queue_mb))

    async def wait_visible(self, lsn: Lsn) -> None:
        """Wait until lsn may be shown to a client (hardened on the mirror, or exposed)."""
        if lsn <= self.visible_lsn:
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (lsn, next(self._tiebreak), fut))
        await fut

    def fail_waiters(self, exc: Exception) -> None:
        """Wake every waiter with an error (the database stops being served here)."""
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_exception(exc)

    def retained_floor(self) -> Lsn:
        """The lowest LSN the log must keep: what the mirror has not hardened, and what the file may still need."""
        rebuild_from = self.applied_lsn + 1  # a power cut may take the WAL: the file is rebuilt from here
        if self.session.config.partner is not None:
            return min(self.session.hardened_lsn + 1, rebuild_from)
        if self.log.size_bytes > self.log_retention:
            return rebuild_from
        return 0

    def truncate_log(self) -> None:
        """Drop whole log segments nobody needs any more."""
        floor = self.retained_floor()
        if floor > self.log.first_lsn:
            self.log.truncate_before(floor)

    # ---------------------------------------------------------------- SQL

    async def execute(self, owner: object, sql: str, params: Any) -> StatementResult:
        """Run one SQL statement for a client (owner identifies its connection)."""
        if self.closed or not self.serving:
            raise NotServing("the database is not being served on this node any more; reconnect")
        if (why := self.quorum_refusal()) is not None:
            raise NotServing(why)
        if owner in self._aborted_owners:
            return self._end_aborted(owner, sql)
        started = time.monotonic()
        word = classify(sql)
        txn = self._txns.get(owner)
        if txn is not None and txn.on_writer:
            self.write_lock.note_statement(owner, sql)
            return self._typed(sql, self._timed(started, await self._execute_in_transaction(owner, sql, params)))
        if txn is not None:
            return self._typed(sql, self._timed(started, await self._in_deferred_transaction(txn, word, sql, params)))
        if word is TxnWord.BEGIN:
            self._txns[owner] = ClientTransaction(owner)  # deferred: it holds nothing until its first statement
            return StatementResult([], [], -1)
        if word is TxnWord.READ:
            try:
                return self._typed(sql, await self._execute_read(sql, params))
            except SqlError as exc:
                if not any(m in exc.message for m in WRITE_ATTEMPT_ON_READER):
                    raise
        return self._typed(sql, self._timed(started, await self._execute_write(owner, sql, params)))

    async def _in_deferred_transaction(self, txn: ClientTransaction, word: TxnWord, sql: str, params: Any) -> StatementResult:
        """A statement of a transaction that has not written yet: read on its snapshot, end it, or make it write."""
        if word in (TxnWord.BEGIN, TxnWord.BEGIN_WRITE):
            raise SqlError("cannot start a transaction within a transaction")
        if word in (TxnWord.COMMIT, TxnWord.ROLLBACK):
            self._txns.pop(txn.owner, None)
            await self._release_snapshot(txn)  # it wrote nothing: both just let the snapshot go
            return StatementResult([], [], -1)
        if word is TxnWord.READ:
            try:
                return await self._read_in_transaction(txn, sql, params)
            except SqlError as exc:
                if not any(m in exc.message for m in WRITE_ATTEMPT_ON_READER):
                    raise
        return await self._write_in_transaction(txn, sql, params)

    async def _read_in_transaction(self, txn: ClientTransaction, sql: str, params: Any) -> StatementResult:
        """Read on the transaction's snapshot; its first read takes a reader and the snapshot."""
        if txn.reader is None:
            self._refuse_reads_while_uncaptured()
            reader = txn.reader = await self._take_transaction_reader()
            try:
                await reader.execute("BEGIN")
                async with self._hop_gate:
                    # no commit is half-captured while the gate is held: the snapshot holds exactly the
                    # end of log, which is what a later write compares with
                    self._refuse_reads_while_uncaptured()
                    await _probe_snapshot(reader)
                    txn.snapshot_lsn = self.end_lsn
            except BaseException:
                await self._release_snapshot(txn)
                raise
            await self.wait_visible(txn.snapshot_lsn)  # nobody reads a commit a failover could take away
        reader = txn.reader
        if reader is None or self.closed:  # the database closed while the snapshot was being taken
            raise NotServing("the database is not being served on this node any more; reconnect")
        try:
            return await _in_connection_thread(reader, _run, sql, params)
        except MirrordError as exc:
            if txn.reader is reader and not reader.in_transaction:  # interrupted: SQLite ended the transaction
                self._txns.pop(txn.owner, None)
                await self._release_snapshot(txn)
                self._aborted_owners.add(txn.owner)
                self._abort_reasons[txn.owner] = f"{exc.message} The open transaction was rolled back with it"
            raise

    async def _take_transaction_reader(self) -> aiosqlite.Connection:
        if self._spare_txn_readers:
            return self._spare_txn_readers.pop()
        if self._txn_reader_count >= MAX_TRANSACTION_READERS:
            raise LimitExceeded(
                f"{MAX_TRANSACTION_READERS} transactions on {self.session.db} are reading open snapshots already, the "
                "most this node holds at once: nothing was done. End idle transactions (COMMIT or ROLLBACK; DB-API: "
                "commit() after reading, or autocommit), or retry shortly")
        self._txn_reader_count += 1
        try:
            return await self._open_reader()
        except BaseException:
            self._txn_reader_count -= 1
            raise

    async def _release_snapshot(self, txn: ClientTransaction) -> None:
        """End the transaction's read snapshot, if it has one, and keep its reader for the next transaction."""
        reader, txn.reader = txn.reader, None
        if reader is None:
            return
        try:
            if reader.in_transaction:
                await reader.execute("ROLLBACK")
        except (sqlite3.Error, ValueError):  # closed with the database
            return
        if not self.closed:
            self._spare_txn_readers.append(reader)

    async def _write_in_transaction(self, txn: ClientTransaction, sql: str, params: Any) -> StatementResult:
        """The transaction's first write: take the write lock and move it onto the writer, if its view is still the newest."""
        owner = txn.owner
        await self._take_write_lock(owner, sql)
        if self._txns.get(owner) is not txn:  # rolled back by the node while it waited
            self.write_lock.release()
            return self._end_aborted(owner, sql)
        end = self.end_lsn
        if txn.snapshot_lsn is not None and (end != txn.snapshot_lsn or self._uncaptured):
            # Its reads saw an older state than the writer would: refused, as SQLite's BUSY_SNAPSHOT.
            self.write_lock.release()
            self._txns.pop(owner, None)
            await self._release_snapshot(txn)
            self._aborted_owners.add(owner)
            self._abort_reasons[owner] = "a serialization failure: it wrote after other transactions committed"
            raise SerializationFailure(serialization_message(self.session.db, txn.snapshot_lsn, end))
        try:
            await self._writer.execute("BEGIN")  # nothing committed since its snapshot: the writer's view is the same
        except BaseException:
            self.write_lock.release()
            raise
        txn.on_writer = True
        self._txn_owner = owner
        await self._release_snapshot(txn)
        return await self._execute_in_transaction(owner, sql, params)

    async def _take_write_lock(self, owner: object, sql: str) -> None:
        """Queue for the write lock within owner's lock timeout; refuse if the wait made the statement moot."""
        self._check_log_space()
        timeout_ms = self._lock_timeout(owner)
        if self.redo_queue_over():  # flow control first, within the same lock timeout: it holds no lock meanwhile
            started = time.monotonic()
            await self._wait_redo_room(None if timeout_ms < 0 else started + timeout_ms / 1000, timeout_ms)
            if timeout_ms > 0:
                timeout_ms = max(1, timeout_ms - int((time.monotonic() - started) * 1000))
        await self.write_lock.acquire(owner, sql, timeout_ms)
        if self.closed or not self.serving:  # the role moved on while this write waited
            self.write_lock.release()
            raise NotServing("the database is not being served on this node any more; reconnect")
        guard = CURRENT.get()
        if guard is not None and guard.cancelled:  # its client left while it waited: nobody wants it run
            self.write_lock.release()
            raise guard.error()

    def _lock_timeout(self, owner: object) -> int:
        """owner's SET LOCK_TIMEOUT (client_listener.ClientConnection), else the node's default; ms, -1 waits forever."""
        ms = getattr(owner, "lock_timeout_ms", None)
        return self.lock_timeout_ms if ms is None else ms

    def _timed(self, started: float, result: StatementResult) -> StatementResult:
        """Report an acknowledged commit's latency (the statement that committed, start to acknowledgement)."""
        if result.lsn is not None and self.on_commit is not None:
            self.on_commit(time.monotonic() - started)
        return result

    def _refuse_reads_while_uncaptured(self) -> None:
        if self._uncaptured:
            raise DiskFull(f"a commit on {self.session.db} could not be logged yet (the disk filled up): reads wait "
                           "until it is, so that none sees what a failover could still take away. Try again shortly")

    def _typed(self, sql: str, result: StatementResult) -> StatementResult:
        """Add the declared types of the result's columns; forget them when the schema may have changed."""
        word = sql.lstrip()[:8].upper()
        if word.startswith(SCHEMA_WORDS) or (self._schema_pending and word.startswith(END_WORDS)):
            # a transaction's DDL shows to other connections at its end: forget again then
            self.decltypes.schema_changed()
            self._schema_pending = word.startswith(SCHEMA_WORDS)
        if result.columns:
            result.types = self.decltypes.of(sql, len(result.columns))
        return result

    async def execute_read_only(self, sql: str, params: Any, why_not_write: str, owner: object = None) -> StatementResult:
        """Run SQL for a login that may only read: on a query_only reader, never on the writer.

        With an owner, it may hold read transactions too (BEGIN, reads on one snapshot, COMMIT or
        ROLLBACK), which a DB-API connection with autocommit off sends.
        """
        if self.closed or not self.serving:
            raise NotServing("the database is not being served on this node any more; reconnect")
        if (why := self.quorum_refusal()) is not None:
            raise NotServing(why)
        if owner is not None and (owner in self._aborted_owners or owner in self._txns or classify(sql) is TxnWord.BEGIN):
            return await self._read_only_transaction(owner, sql, params, why_not_write)
        if not sql.lstrip().upper().startswith(READ_ONLY_PREFIXES):
            raise PermissionDenied(f"{why_not_write} (this login may run SELECT, VALUES, EXPLAIN and WITH … SELECT)")
        try:
            return await self._execute_read(sql, params)
        except SqlError as exc:
            if any(m in exc.message for m in WRITE_ATTEMPT_ON_READER):
                raise PermissionDenied(why_not_write) from None
            raise

    async def _read_only_transaction(self, owner: object, sql: str, params: Any, why_not_write: str) -> StatementResult:
        """A read-only login's transaction: it begins, reads on its snapshot and ends; it never writes."""
        if owner in self._aborted_owners:
            return self._end_aborted(owner, sql)
        word = classify(sql)
        txn = self._txns.get(owner)
        if txn is None:  # BEGIN
            self._txns[owner] = ClientTransaction(owner)
            return StatementResult([], [], -1)
        if word is TxnWord.OTHER:
            raise PermissionDenied(f"{why_not_write} (this login may run SELECT, VALUES, EXPLAIN and WITH … SELECT, "
                                   "and BEGIN, COMMIT, ROLLBACK)")
        if word is not TxnWord.READ:
            return await self._in_deferred_transaction(txn, word, sql, params)
        try:
            return self._typed(sql, await self._read_in_transaction(txn, sql, params))
        except SqlError as exc:
            if any(m in exc.message for m in WRITE_ATTEMPT_ON_READER):
                raise PermissionDenied(why_not_write) from None
            raise

    async def _execute_read(self, sql: str, params: Any) -> StatementResult:
        self._refuse_reads_while_uncaptured()
        reader = await self._readers.get()
        try:
            await reader.execute("BEGIN")
            try:
                # The snapshot is taken at the first read; every commit it can
                # contain is captured once the hop gate is free, so waiting for
                # end_lsn covers them all.
                await _probe_snapshot(reader)
                async with self._hop_gate:
                    seen = self.end_lsn
                    self._refuse_reads_while_uncaptured()  # its snapshot may hold that commit
                await self.wait_visible(seen)
                return await _in_connection_thread(reader, _run, sql, params)
            finally:
                await _end_read(reader)
        finally:
            self._readers.put_nowait(reader)

    def _check_log_space(self) -> None:
        # refused before it runs: a commit SQLite made but the log could not take would leave its client in doubt
        free = self._free_space.bytes()
        if free < DISK_RESERVE_BYTES:
            raise DiskFull(
                f"the disk holding {self.session.db} is full ({free >> 20} MB free, {DISK_RESERVE_BYTES >> 20} MB needed "
                "for the WAL, the log and checkpoints): the statement was not run. Writes succeed again by themselves "
                "once space is freed; reads and status keep answering")
        if self.log.size_bytes > self.log_size_limit:
            self.truncate_log()
            if self.session.config.partner is not None and self.log.size_bytes > self.log_size_limit:
                raise LogFull(
                    f"the log of {self.session.db} is full ({self.log.size_bytes} bytes, limit {self.log_size_limit}): "
                    f"the mirror {self.session.config.partner} has hardened only up to LSN {self.session.hardened_lsn}; "
                    "writes resume when the mirror catches up, or after SET PARTNER OFF"
                )

    async def _execute_write(self, owner: object, sql: str, params: Any) -> StatementResult:
        timeout_ms = self._lock_timeout(owner)
        if timeout_ms != 0 and batchable(sql):  # LOCK_TIMEOUT 0 takes the lock now or never: alone, below
            self._check_log_space()
            result, records = await self._queue_write(owner, sql, params, timeout_ms)
            return await self._finish(result, records, wait_for=self.end_lsn)
        await self._take_write_lock(owner, sql)
        try:
            result, records, in_txn = await self._hop(sql, params)
        except BaseException:
            if self._writer.in_transaction:
                await self._writer.execute("ROLLBACK")
            self.write_lock.release()
            raise
        if in_txn:
            self._txn_owner = owner  # keep the lock: the client opened a transaction (BEGIN IMMEDIATE, SAVEPOINT)
            self._txns[owner] = ClientTransaction(owner, on_writer=True)
            return await self._finish(result, records, wait_for=self.end_lsn)
        self.write_lock.release()
        return await self._finish(result, records, wait_for=self.end_lsn)

    async def _execute_in_transaction(self, owner: object, sql: str, params: Any) -> StatementResult:
        try:
            result, records, in_txn = await self._hop(sql, params)
        except MirrordError as exc:
            if not self._writer.in_transaction:
                self._end_transaction(owner)
                if exc.code in INTERRUPTED:  # SQLite rolled the whole transaction back: the client must hear it
                    self._aborted_owners.add(owner)
                    self._abort_reasons[owner] = f"{exc.message} The open transaction was rolled back with it"
            raise
        if not in_txn:
            self._end_transaction(owner)
            self._aborted_owners.discard(owner)  # it ended (committed) before a rollback could reach it
        return await self._finish(result, records, wait_for=self.end_lsn)

    def _end_aborted(self, owner: object, sql: str) -> StatementResult:
        """A client whose transaction was rolled back here: ROLLBACK (or COMMIT) ends it, anything else is refused."""
        word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        why = self._abort_reasons.get(owner)
        if word in ("ROLLBACK", "COMMIT", "END"):
            self._aborted_owners.discard(owner)
            self._abort_reasons.pop(owner, None)
        if word == "ROLLBACK":
            return StatementResult([], [], -1)
        raise TransactionAborted(
            f"the open transaction of this connection on {self.session.db} was rolled back by the node "
            f"({why or 'role change or SET PARTNER OFF'}); nothing of it committed. ROLLBACK ends it; then start the transaction again"
        )

    def _end_transaction(self, owner: object) -> None:
        """owner's transaction ended; release the write lock unless a rollback took it over already."""
        if self._txn_owner is owner:
            self._txn_owner = None
            self._txns.pop(owner, None)
            self.write_lock.release()

    async def _finish(self, result: StatementResult, records: list[LogRecord], wait_for: Lsn) -> StatementResult:
        if records:
            result.lsn, result.role_sequence = records[-1].lsn, records[-1].role_sequence
            if result.seq is None:
                result.seq = 0
        committed = time.monotonic()
        try:
            await self.wait_visible(wait_for)
        except MirrordError as exc:
            if not records:
                raise
            # committed here, not acknowledged: only the token can tell later whether it survived
            raise CommitInDoubt(
                f"{exc.message.rstrip('.')}. The commit is in doubt; its token is LSN {result.lsn}, role sequence "
                f"{result.role_sequence}{f', statement {result.seq}' if result.seq else ''}: EXEC sp_transaction_status "
                f"'{self.session.db}', {result.lsn}, {result.role_sequence} on the principal tells whether it committed",
                lsn=result.lsn, role_sequence=result.role_sequence, seq=result.seq, principal=exc.details.get("principal"),
            ) from None
        if records:  # the delay mirroring adds: local commit to acknowledgement (the mirror hardened it, SAFETY FULL)
            self.commits += 1
            self.commit_wait += time.monotonic() - committed
        return result

    async def _hop(self, sql: str, params: Any):
        """Execute on the writer and capture; raise the statement's error after noting its records."""
        async with self._hop_gate:
            outcome, records, in_txn = await _in_connection_thread(self._writer, self._run_and_capture, sql, params)
        self._note_captured(records)
        if self._uncaptured and (self._recapture is None or self._recapture.done()):
            self._recapture = asyncio.create_task(self._recapture_loop(), name=f"recapture:{self.session.db}")
        if isinstance(outcome, MirrordError):
            raise outcome
        return outcome, records, in_txn

    # ---------------------------------------------------------------- the writer's queue

    async def _queue_write(self, owner: object, sql: str, params: Any, timeout_ms: int) -> tuple[StatementResult, list[LogRecord]]:
        """Queue an autocommit write for the writer task and wait for its outcome and its records.

        It waits for the write lock as a lone writer would: at most its lock
        timeout (then `lock_timeout`, nothing ran), shown by sp_who meanwhile.
        Once the writer task has taken it into a hop it runs, and its outcome is
        waited for however long that takes.
        """
        loop = asyncio.get_running_loop()
        write = QueuedWrite(owner, sql, params, contextvars.copy_context(), self.write_lock.queue(owner, sql),
                            loop.create_future())
        self._write_queue.append(write)
        if timeout_ms > 0:
            write.timeout_ms, write.deadline = timeout_ms, loop.time() + timeout_ms / 1000
            if write.deadline < self._expiry_at:
                self._arm_expiry(loop, write.deadline)
        self._writes_queued.set()
        try:
            # Not shielded: cancelling this task cancels `done` too, and whoever completes a write
            # completes it only if it is not done, so a write taken into a hop runs and nobody hears how
            outcome, records = await write.done
        except asyncio.CancelledError:
            self._drop_queued(write)  # its client went away before it ran: nobody wants it run
            raise
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, records

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry, self._expiry_at = loop.call_at(at, self._expire_due), at

    def _expire_due(self) -> None:
        """The queue's timer: every queued write whose lock timeout ran out fails (nothing of it ran); re-arm for the next.

        Most writes are taken long before their deadline, so the timer is armed for the
        earliest deadline seen and re-armed only when it fires, not moved per write.
        """
        self._expiry, self._expiry_at = None, math.inf
        loop = asyncio.get_running_loop()
        due = loop.time() + EXPIRY_SLACK
        for write in [w for w in self._write_queue if w.deadline <= due]:
            self._expire(write)
        nearest = min((w.deadline for w in self._write_queue), default=math.inf)
        if nearest < math.inf:
            self._arm_expiry(loop, nearest)

    def _expire(self, write: QueuedWrite) -> None:
        if not write.taken and not write.done.done():
            self._drop_queued(write)
            # held by the redo queue limit (the writer task waits on it), or by whoever holds the write lock
            held = self._writer_held and self.redo_queue_over()
            timeout_ms = write.timeout_ms
            write.done.set_exception(self._redo_queue_full(timeout_ms) if held else self.write_lock.timed_out(timeout_ms))

    def _drop_queued(self, write: QueuedWrite) -> None:
        if write.taken:
            return
        if write in self._write_queue:
            self._write_queue.remove(write)
        self.write_lock.unqueue(write.use)

    def _fail_queued(self, exc: MirrordError) -> None:
        for write in list(self._write_queue):
            self._drop_queued(write)
            if not write.done.done():
                write.done.set_exception(exc)

    def _take_queued(self) -> list[QueuedWrite]:
        """Up to BATCH_LIMIT queued writes, in arrival order; a write whose client left meanwhile is dropped unrun."""
        batch: list[QueuedWrite] = []
        while self._write_queue and len(batch) < BATCH_LIMIT:
            write = self._write_queue.pop(0)
            self.write_lock.unqueue(write.use)
            if write.done.done():
                continue
            guard = write.context.get(CURRENT)
            if guard is not None and guard.cancelled:
                write.done.set_exception(guard.error())
                continue
            write.taken = True
            batch.append(write)
        return batch

    async def _write_loop(self) -> None:
        """The writer task: take the write lock for every queued autocommit write and run them all in one hop.

        Each write is still its own SQLite transaction with its own outcome and
        its own log record (its commit token); what they share is the thread hop,
        one log append and one wakeup of the sync task. Writes that queued while
        a hop ran go together in the next one: the busier, the larger the hops.
        """
        while not self.closed:
            await self._writes_queued.wait()
            self._writes_queued.clear()
            while self._write_queue and not self.closed:
                if self.redo_queue_over():
                    # flow control where a batch is taken: the queued writes wait (within their lock timeouts)
                    self._writer_held = True
                    try:
                        await self._wait_redo_room()
                    except NotServing:
                        break  # closing: close() fails what is queued
                    finally:
                        self._writer_held = False
                    continue
                first = self._write_queue[0]
                await self.write_lock.acquire_for_queue(first.owner, first.sql)
                try:
                    batch = self._take_queued()
                    if not batch:
                        continue
                    if self.closed or not self.serving:  # the role moved on while they waited
                        for write in batch:
                            write.done.set_exception(NotServing(
                                "the database is not being served on this node any more; the statement was not run. Reconnect"))
                        continue
                    await self._run_queued(batch)
                finally:
                    self.write_lock.release()

    async def _run_queued(self, batch: list[QueuedWrite]) -> None:
        """One hop for the batch; hand each write its own outcome and records."""
        statements = [(w.context, w.sql, w.params) for w in batch]
        try:
            async with self._hop_gate:
                outcomes = await _in_connection_thread(self._writer, self._run_batch_and_capture, statements)
        except asyncio.CancelledError:  # the event loop is going away: nobody will hear more
            self._fail_taken(batch, NotServing("the node stopped while the statement ran; its outcome is in doubt"))
            raise
        except Exception as exc:  # noqa: BLE001 - as a lone write would: its client hears the failure
            self._fail_taken(batch, exc)
            return
        outcomes, records = outcomes
        # The writers' tasks are woken before the shipping task (_note_captured wakes it): all of
        # them run after this step, in the order woken, so an answer that need not wait for the
        # mirror (SAFETY OFF, standalone) leaves before the log is encoded and sent
        for write, outcome in zip(batch, outcomes):
            if not write.done.done():
                write.done.set_result(outcome)
        self._note_captured(records)
        if self._uncaptured and (self._recapture is None or self._recapture.done()):
            self._recapture = asyncio.create_task(self._recapture_loop(), name=f"recapture:{self.session.db}")

    @staticmethod
    def _fail_taken(batch: list[QueuedWrite], exc: BaseException) -> None:
        for write in batch:
            if not write.done.done():
                write.done.set_exception(exc)

    def _run_batch_and_capture(self, conn: sqlite3.Connection, statements: list[tuple[contextvars.Context, str, Any]]):
        """Run the statements, row changes together in one transaction, the rest each alone; log all commits at once.

        Returns each statement's (outcome, its records) — its result or its own
        error, and the log records of what it committed (its token is the last;
        several statements share a record, told apart by their `seq`) — and
        every record appended, once each.

        Consecutive row changes (`shares_commit`) run in one SQLite transaction,
        each under a SAVEPOINT of its own: a statement that fails is rolled back
        to its savepoint, so it changes nothing and the others still commit, as
        separate autocommit transactions would; one WAL commit, one page image
        per page and one log record serve them all. Each sees the rows of those
        before it, as it would have once they committed; nobody else sees any of
        them before the COMMIT.
        """
        pos = self._wal_pos
        outcomes: list[Any] = [None] * len(statements)
        owns: list[list[int]] = [[] for _ in statements]  # per statement, the WAL transactions (indexes) holding it
        committed: list[WalTransaction] = []
        i = 0
        while i < len(statements):
            j = i
            while j < len(statements) and shares_commit(statements[j][1]):
                j += 1
            if j - i >= 2:
                try:
                    pos = self._run_shared(conn, statements, list(range(i, j)), outcomes, owns, committed, pos)
                except BaseException:
                    if conn.in_transaction:  # a SAVEPOINT or ROLLBACK TO failed (I/O): nothing of it committed
                        self._internal_sql(conn, "ROLLBACK")
                    raise
                i = j
                continue
            context, sql, params = statements[i]
            try:
                outcome = context.run(_run, conn, sql, params)
            except Exception as exc:  # noqa: BLE001 - its own: raised to its client alone, the others go on
                outcome = exc
            if conn.in_transaction:  # batchable() keeps such statements out; never leave one open for the next
                self._internal_sql(conn, "ROLLBACK")
                outcome = SqlError("this statement left a transaction open inside a batch of writes and was rolled back")
            txns, pos = self._wal.read_committed(pos)
            owns[i] = list(range(len(committed), len(committed) + len(txns)))
            committed.extend(txns)
            outcomes[i] = outcome
            i += 1
        try:
            records = self._log_transactions(conn, committed, pos)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            # SQLite committed, the log could not take it (the append was undone): it is captured
            # by a retry once there is room, so every outcome of the hop is in doubt.
            self._uncaptured = True
            doubt = DiskFull(
                f"the disk is full ({exc.strerror}): the statement ran but its commit could not be logged; its outcome "
                "is in doubt until space is freed (it is logged then, and acknowledged to nobody)")
            return [(doubt, []) for _ in statements], []
        self._uncaptured = False
        return [(outcome, [records[k] for k in own]) for outcome, own in zip(outcomes, owns)], records

    def _run_shared(self, conn: sqlite3.Connection, statements, pending: list[int], outcomes: list[Any],
                    owns: list[list[int]], committed: list[WalTransaction], pos: WalPosition | None) -> WalPosition | None:
        """Run the row changes `pending` (indexes) in one transaction, a SAVEPOINT each; note outcomes and the commit."""
        while pending:
            kept: list[int] = []  # run and released: they commit with the transaction
            lost = None  # a statement that ended the whole transaction (INSERT OR ROLLBACK, RAISE(ROLLBACK), an interrupt)
            self._internal_sql(conn, "BEGIN")
            changed: set[int] = set()  # those that changed rows: a statement that changed nothing commits nothing
            for k in pending:
                context, sql, params = statements[k]
                self._internal_sql(conn, "SAVEPOINT mirrord_statement")
                before = conn.total_changes
                try:
                    outcome = context.run(_run, conn, sql, params)
                except Exception as exc:  # noqa: BLE001 - its own: raised to its client alone, the others go on
                    outcome = exc
                if not conn.in_transaction:
                    if not isinstance(outcome, Exception):
                        outcome = SqlError("this statement ended the transaction it shared with other clients' writes "
                                           "and was rolled back with it")
                    outcomes[k], lost = outcome, k
                    break
                if isinstance(outcome, Exception):
                    self._internal_sql(conn, "ROLLBACK TO mirrord_statement")  # it changes nothing; the others stay
                else:
                    kept.append(k)
                    if conn.total_changes != before:
                        changed.add(k)
                self._internal_sql(conn, "RELEASE mirrord_statement")
                outcomes[k] = outcome
            if lost is not None:
                # what ran before it was rolled back with it: those run again, then those after it
                at = pending.index(lost)
                pending = [k for k in pending[:at] if k in kept] + pending[at + 1:]
                continue
            try:
                self._internal_sql(conn, "COMMIT")
            except sqlite3.Error as exc:  # a full disk, an I/O error: none of them committed
                if conn.in_transaction:
                    self._internal_sql(conn, "ROLLBACK")
                for k in kept:
                    outcomes[k] = _sql_error(exc)
                kept = []
            txns, pos = self._wal.read_committed(pos)
            if txns:
                own = list(range(len(committed), len(committed) + len(txns)))
                committed.extend(txns)
                for seq, k in enumerate(k for k in kept if k in changed):
                    owns[k] = own
                    outcomes[k].seq = seq
            return pos
        return pos

    def _internal_sql(self, conn: sqlite3.Connection, sql: str) -> None:
        """A statement of the node's own on the writer, past the client authorizer."""
        self._internal = True
        try:
            conn.execute(sql)
        finally:
            self._internal = False

    def _note_captured(self, records: list[LogRecord]) -> None:
        if records:
            self.commit_clock.note(records[0].lsn, time.monotonic())
            self._note_synced(self._synced_in_hop)
            if self.synced_lsn < records[-1].lsn:
                self._sync_wanted.set()  # the hop could not sync them: the sync task makes them durable
            self.update_visible()

    async def _recapture_loop(self) -> None:
        """Log what SQLite committed while the disk was full, as soon as there is room."""
        while self._uncaptured and not self.closed:
            await asyncio.sleep(0.2)
            try:
                async with self._hop_gate:
                    records = await _in_connection_thread(self._writer, self._capture)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                continue
            self._uncaptured = False
            log.info("captured_after_disk_full", database=self.session.db, records=len(records), lsn=self.end_lsn)
            self._note_captured(records)

    def _run_and_capture(self, conn: sqlite3.Connection, sql: str, params: Any):
        try:
            outcome = _run(conn, sql, params)
        except MirrordError as exc:
            outcome = exc
        try:
            records = self._capture(conn)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            # SQLite committed, the log could not take it (the append was undone): it is
            # captured by a retry once there is room, so its outcome is in doubt.
            self._uncaptured = True
            return DiskFull(
                f"the disk is full ({exc.strerror}): the statement ran but its commit could not be logged; its outcome "
                "is in doubt until space is freed (it is logged then, and acknowledged to nobody)"), [], conn.in_transaction
        self._uncaptured = False
        return outcome, records, conn.in_transaction

    def holds_transaction(self, owner: object) -> bool:
        """True while owner's open transaction holds something here: a read snapshot, or the write lock."""
        txn = self._txns.get(owner)
        return txn is not None and (txn.on_writer or txn.reader is not None)

    def transaction_of(self, owner: object) -> str | None:
        """owner's open transaction here, for sp_who: "write" (holds the write lock), "read" (a snapshot), "begun", or None."""
        txn = self._txns.get(owner)
        if txn is None:
            return None
        return "write" if txn.on_writer else "read" if txn.reader is not None else "begun"

    async def abort_idle_transaction(self, owner: object, seconds: float) -> None:
        """owner held the write lock or a snapshot without a statement for longer than seconds: roll its transaction back."""
        if not self.holds_transaction(owner):
            return
        what = "the write lock" if self._txns[owner].on_writer else "a read snapshot"
        self._abort_reasons[owner] = f"it held {what} idle for more than {seconds:g} s"
        self._aborted_owners.add(owner)  # before awaiting: its next statement must not run outside it
        log.warning("idle_transaction_rolled_back", database=self.session.db, seconds=seconds, held=what)
        await self._roll_back(owner)

    async def abort_transaction(self, owner: object) -> None:
        """Roll back the open transaction of a client that went away."""
        self._aborted_owners.discard(owner)
        self._abort_reasons.pop(owner, None)
        await self._roll_back(owner)

    async def _roll_back(self, owner: object) -> None:
        """Roll back owner's transaction, releasing its snapshot or the write lock, exactly once.

        The transaction stops being owner's before the ROLLBACK is awaited, so a
        statement of owner's arriving meanwhile cannot run in it; one already
        queued at the hop gate runs first, inside the transaction.
        """
        txn = self._txns.pop(owner, None)
        if txn is not None and not txn.on_writer:
            await self._release_snapshot(txn)
            return
        if self._txn_owner is not owner:
            return
        self._txn_owner = None
        try:
            async with self._hop_gate:
                await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing open any more (the statement in flight ended it)
        finally:
            self.write_lock.release()

    # ---------------------------------------------------------------- snapshots

    async def snapshot_to(self, dest: Path) -> tuple[Lsn, int]:
        """Copy a consistent image of the database at some LSN to dest, writes going on; return (lsn, role_sequence).

        Without the write lock: only checkpoints write into db.sqlite (commits go
        to the WAL), so with checkpoints paused the file stays as it is, durable up
        to `applied_lsn` (and perhaps holding later pages of an unfinished
        checkpoint). The copy is brought to `lsn`, the end of log when the pause
        began, by applying the log's page images past `applied_lsn` — the redo the
        mirror runs. The result is the database at `lsn`, page for page (I3).
        Writers wait for nothing but the copy's share of the disk.
        """
        async with self._hop_gate:  # no capture under way: applied_lsn and the end of log hold still
            self._checkpoints_paused += 1
            base, lsn = self.applied_lsn, self.end_lsn
            # the role sequence of the record at lsn, not the current role sequence: a mirror seeded
            # here reports it as its hardened role sequence, and a mismatch reads as divergence (a full reseed)
            role_sequence = self.log.last_role_sequence
        try:
            await self.wait_synced(lsn)  # a mirror never holds what a power cut could take from us
            await asyncio.to_thread(copy_in_steps, self.path, dest)
            await asyncio.to_thread(apply_log_range, dest, self.log, base + 1, lsn)
        finally:
            self._checkpoints_paused -= 1
        return lsn, role_sequence

    async def page_digests(self, pinned: Callable[[Lsn], None], mb_per_s: int = 0) -> PageDigests:
        """Every page's digest at one LSN, writes going on (DBCC CHECKMIRROR; the view is snapshot_to's).

        `pinned(lsn)` is called in the instant the LSN is chosen, before any
        later commit is captured: the caller sends the mirror its request there,
        so that every record past lsn travels behind it.
        """
        async with self._hop_gate:
            self._checkpoints_paused += 1
            base, lsn = self.applied_lsn, self.end_lsn
            try:
                pinned(lsn)
            except BaseException:
                self._checkpoints_paused -= 1
                raise
        try:
            digests = await principal_digests_apart(self.path, self.log, base, lsn, mb_per_s)
        finally:
            self._checkpoints_paused -= 1
        if self.closed:  # close() checkpoints regardless of the pause: the file may have changed under the hash
            raise NotServing("the database closed on this node during the check")
        return digests

    async def page_images(self, pages: list[int]) -> tuple[Lsn, int, list[tuple[int, bytes]]]:
        """(lsn, page size, [(pgno, image)]) of some pages as of the end of log, writes going on (page repair).

        The view page_digests hashes: the file with checkpoints paused and the
        log's images over it. The LSN is at least what the mirror has hardened
        (it holds nothing this log lacks), so at least its redo LSN.
        """
        async with self._hop_gate:
            self._checkpoints_paused += 1
            base, lsn = self.applied_lsn, self.end_lsn
        try:
            await self.wait_synced(lsn)
            page_size, images = await asyncio.to_thread(page_images_at, self.path, self.log, base, lsn, pages)
        finally:
            self._checkpoints_paused -= 1
        if self.closed:
            raise NotServing("the database closed on this node while its pages were read")
        return lsn, page_size, images

    async def file_pages(self, first: int, count: int) -> tuple[int, int, int, bool, list[tuple[int, bytes]]]:
        """(page size, pages in the file, reserved bytes a page, whether it has pointer-map pages, [(pgno, image)]
        of pages first..first+count-1) of the database file as it is on disk, checkpoints paused meanwhile (the
        principal's page scrubber).

        The page size is the log's (page 1, SQLite's header, may be the damaged one); [] past the end.
        """
        async with self._hop_gate:
            self._checkpoints_paused += 1
        try:
            last = self.log.get(self.log.last_lsn) if self.log.last_lsn else None
            return await asyncio.to_thread(_read_file_pages, self.path, last.page_size if last else None, first, count)
        finally:
            self._checkpoints_paused -= 1

    async def repair_pages(self, since: Lsn, pages: list[tuple[int, bytes]]) -> tuple[list[int], str | None]:
        """Write the mirror's images of damaged pages into the database file: (pages written, why none could be).

        The file holds each page as of `applied_lsn` (its last complete
        checkpoint; checkpoints are paused meanwhile); later versions live in
        SQLite's WAL, which readers look in first. The mirror's image is of an
        LSN at least `since`; it equals the page as of applied_lsn, and may go
        into the file, only if no record after the lower of the two rewrote it.
        A page rewritten since is left out: its newer image is in the WAL, and
        the next checkpoint writes it into the file anyway.
        """
        async with self._hop_gate:
            self._checkpoints_paused += 1
            base, end = self.applied_lsn, self.end_lsn
        try:
            return await asyncio.to_thread(self._write_pages, min(since, base), end, pages)
        finally:
            self._checkpoints_paused -= 1

    def _write_pages(self, after: Lsn, end: Lsn, pages: list[tuple[int, bytes]]) -> tuple[list[int], str | None]:
        touched = self.log.pages_touched(after + 1, end)
        if touched is None:
            return [], f"the log no longer reaches back to LSN {after + 1}, so it cannot tell which pages changed since"
        size = self.path.stat().st_size
        written = []
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for pgno, image in pages:
                if pgno not in touched and pgno * len(image) <= size:
                    os.pwrite(fd, image, (pgno - 1) * len(image))
                    written.append(pgno)
            os.fsync(fd)
        finally:
            os.close(fd)
        return written, None

    async def wait_synced(self, lsn: Lsn) -> None:
        """Wait until the log is fsynced up to lsn."""
        while self.synced_lsn < lsn:
            if self.closed:
                raise NotServing("the database is closing on this node")
            self._sync_wanted.set()
            self.new_log.clear()
            if self.synced_lsn < lsn:
                await self.new_log.wait()

    def _capture_and_checkpoint(self, conn: sqlite3.Connection) -> bool:
        self._capture(conn)
        return self._checkpoint(conn, "TRUNCATE")

    def stop_serving(self) -> None:
        """The role has moved to the partner (manual failover), or may have: refuse every statement from now on."""
        self.serving = False
        self._redo_room.set()  # writers held by the redo queue limit go on to hear it

    def resume_serving(self) -> None:
        """A manual failover in doubt did not happen (the mirror still follows this principal): serve again."""
        self.serving = True

    async def mark_transactions_aborted(self) -> None:
        """Roll back a client transaction in progress (role change, SET PARTNER OFF)."""
        owner = self._txn_owner
        if owner is not None:
            self._aborted_owners.add(owner)  # before awaiting: its next statement must not run outside it
            await self._roll_back(owner)


def _read_file_pages(path: Path, page_size: int | None, first: int, count: int) -> tuple[int, int, int, bool, list[tuple[int, bytes]]]:
    with open(path, "rb") as f:
        header = f.read(100)
        page_size = page_size or page_size_of(header) or 4096
        total = os.fstat(f.fileno()).st_size // page_size
        whole = header_problem(header, page_size) is None  # a damaged page 1 says nothing of the others
        reserved = header[20] if whole else 0
        pointer_maps = whole and auto_vacuum(header)
        count = max(0, min(count, total - first + 1))
        f.seek((first - 1) * page_size)
        data = f.read(count * page_size)
    return page_size, total, reserved, pointer_maps, [(first + i, data[i * page_size:(i + 1) * page_size]) for i in range(count)]


def _run(conn: sqlite3.Connection, sql: str, params: Any) -> StatementResult:
    # bounded by the client's guard: statement timeout, client gone, result size (mirrord.storage.statement_guard)
    cur, rows = run_guarded(conn, sql, params, _sql_error)
    columns = [d[0] for d in cur.description] if cur.description else []
    # sqlite3 keeps the connection's last insert rowid on every cursor: report it only for a row just inserted
    inserted = cur.rowcount > 0 and sql.lstrip()[:7].upper().startswith(("INSERT", "REPLACE"))
    return StatementResult(columns, rows, cur.rowcount, lastrowid=cur.lastrowid if inserted else None)


