"""Transactions that don't block each other: the pure decisions.

A client's explicit transaction begins deferred (SQLite's BEGIN DEFERRED): it
holds nothing until its first statement. A read gives it a snapshot on a reader
connection of its own, side by side with writers and other readers; only its
first write takes the database's write lock. If something committed since its
snapshot was taken, that write is refused (SQLite's SQLITE_BUSY_SNAPSHOT,
PostgreSQL's "could not serialize access"): writing on the newest data would
mix two views in one transaction. BEGIN IMMEDIATE / EXCLUSIVE take the lock at
once, as in SQLite.

This module classifies statements for that, and words the errors and the
`EXEC sp_who` rows; principal.py and write_lock.py do the waiting.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")
REMEMBERED_TEXT = 1024  # statements up to this long have their classification remembered
REMEMBERED_TEXTS = 4096  # the newest texts remembered, per classification


def _remembered(fn: Callable[[str], T]) -> Callable[[str], T]:
    """fn, remembering its answer for short texts: an application sends the same few statements again and again.

    Classifying a statement took 6-9 us of Python, three or four times per
    write (parse, classify, batchable, shares_commit); remembered, a lookup.
    Only pure functions of the text, with immutable answers, are remembered.
    """
    cached = functools.lru_cache(maxsize=REMEMBERED_TEXTS)(fn)

    @functools.wraps(fn)
    def answer(sql: str) -> T:
        return cached(sql) if len(sql) <= REMEMBERED_TEXT else fn(sql)

    return answer


class TxnWord(enum.Enum):
    """What a statement means to an explicit transaction."""

    BEGIN = "begin"  # BEGIN [DEFERRED] [TRANSACTION]: holds nothing yet
    BEGIN_WRITE = "begin_write"  # any other BEGIN (IMMEDIATE, EXCLUSIVE): runs on the writer, taking the write lock
    COMMIT = "commit"  # COMMIT / END [TRANSACTION]
    ROLLBACK = "rollback"  # ROLLBACK [TRANSACTION] (not ROLLBACK TO a savepoint)
    READ = "read"  # SELECT, VALUES, EXPLAIN, WITH: tried on a read snapshot first
    OTHER = "other"  # anything else may write: it runs on the writer, under the write lock


READ_ONLY_PREFIXES = ("SELECT", "VALUES", "EXPLAIN", "WITH")
_COMMENT = re.compile(r"\s*(--[^\n]*(\n|$)|/\*.*?\*/)", re.S)
_WORD = re.compile(r"[A-Za-z_]+")


def words(sql: str, n: int = 3) -> list[str]:
    """The first n keywords of sql, upper case, leading comments and whitespace skipped."""
    found = []
    for token in re.split(r"[\s;]+", _strip(sql)):
        m = _WORD.match(token)
        if m is None:
            break
        found.append(m.group(0).upper())
        if m.end() != len(token) or len(found) == n:
            break
    return found


# The statements mirrord answers itself inside a transaction that has not written: exactly SQLite's forms.
_WHOLE = {
    TxnWord.BEGIN: re.compile(r"BEGIN(\s+DEFERRED)?(\s+TRANSACTION)?", re.I),
    TxnWord.COMMIT: re.compile(r"(COMMIT|END)(\s+TRANSACTION)?", re.I),
    TxnWord.ROLLBACK: re.compile(r"ROLLBACK(\s+TRANSACTION)?", re.I),
}


def _strip(sql: str) -> str:
    """sql without leading comments, surrounding whitespace and one trailing semicolon."""
    text = sql
    while (m := _COMMENT.match(text)) is not None and m.end() > 0:
        text = text[m.end():]
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(";") else text


@_remembered
def classify(sql: str) -> TxnWord:
    """What sql means to a transaction (pure; the SQL itself is judged by SQLite).

    BEGIN, COMMIT and ROLLBACK count only in exactly SQLite's forms; anything
    else beginning so (BEGIN IMMEDIATE, ROLLBACK TO a savepoint, a typo) goes
    to SQLite on the writer, which runs it or says what is wrong.
    """
    text = _strip(sql)
    for word, form in _WHOLE.items():
        if form.fullmatch(text):
            return word
    first = (words(text, 1) or [""])[0]
    if first == "BEGIN":
        return TxnWord.BEGIN_WRITE
    if first in READ_ONLY_PREFIXES:
        return TxnWord.READ
    return TxnWord.OTHER


# Statements that may open, end or step inside a transaction: never run in a writer's batch.
_TRANSACTION_WORDS = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})


@_remembered
def batchable(sql: str) -> bool:
    """Whether sql, outside a transaction, may run in one writer hop with other clients' autocommit writes.

    Only a statement that is its own transaction in SQLite qualifies: one that
    opens or ends a transaction or a savepoint (BEGIN IMMEDIATE, SAVEPOINT, …)
    leaves the writer in a state the next client's statement must not see.
    """
    first = words(sql, 1)
    return bool(first) and first[0] not in _TRANSACTION_WORDS


_ROW_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


@_remembered
def shares_commit(sql: str) -> bool:
    """Whether a batchable autocommit write may share one SQLite transaction with others, under a SAVEPOINT of its own.

    Only row changes qualify: a SAVEPOINT undoes exactly what one did, and
    nothing about them differs inside a transaction. Schema statements, PRAGMAs,
    VACUUM and the rest keep a transaction of their own (VACUUM cannot run in
    one; some PRAGMAs do nothing in one).
    """
    first = words(sql, 1)
    return bool(first) and first[0] in _ROW_WORDS


# ---------------------------------------------------------------- lock timeout

LOCK_TIMEOUT_DEFAULT_MS = 10_000
MAX_LOCK_TIMEOUT_MS = 86_400_000  # a day, as STATEMENT_TIMEOUT
STATEMENT_SHOWN = 80  # characters of a statement an error or sp_who shows


def lock_timeout_refusal(ms: int) -> str | None:
    """Why ms is no valid SET LOCK_TIMEOUT value (-1 waits forever, 0 does not wait), or None."""
    if ms < -1 or ms > MAX_LOCK_TIMEOUT_MS:
        return f"LOCK_TIMEOUT must be -1 (wait forever), 0 (do not wait) or 1..{MAX_LOCK_TIMEOUT_MS} ms; found {ms}"
    return None


def wait_seconds(ms: int) -> float | None:
    """asyncio's timeout for a lock wait of ms: None waits forever."""
    return None if ms < 0 else ms / 1000


def shorten(statement: str, limit: int = STATEMENT_SHOWN) -> str:
    """A statement on one line, cut to limit characters (… marks the cut)."""
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class Holding:
    """Who holds a database's write lock, as a lock_timeout error and sp_who show it."""

    spid: int | None  # the holder's session id (None: mirrord itself, e.g. a role change)
    seconds: float  # how long it has held the lock
    statement: str  # its last statement


def lock_timeout_message(db: str, waited_ms: int, holder: Holding | None) -> str:
    """The message of a lock_timeout error: who holds the lock, for how long, doing what."""
    if holder is None:
        who = "no one any more (it was released as the wait ended)"
    elif holder.spid is None:
        who = f"mirrord itself ({holder.statement or 'a role change'}), for {holder.seconds:.1f} s"
    else:
        who = (f"session {holder.spid} (EXEC sp_who shows it), for {holder.seconds:.1f} s; "
               f"its last statement: {shorten(holder.statement)!r}")
    waited = "without waiting (LOCK_TIMEOUT 0)" if waited_ms == 0 else f"within {waited_ms} ms"
    return (f"the write lock of database {db} was not free {waited}: it is held by {who}. Nothing of this statement "
            "ran. Retry later, raise SET LOCK_TIMEOUT (-1 waits forever), or end the holder's transaction")


def serialization_message(db: str, snapshot_lsn: int, end_lsn: int) -> str:
    """The message of a write refused because the transaction's snapshot is no longer the newest."""
    return (f"could not serialize access: this transaction on {db} read a snapshot at LSN {snapshot_lsn}, and other "
            f"transactions have committed since (end of log {end_lsn}); writing now would mix two views. Nothing of "
            "this statement ran and the transaction was rolled back: ROLLBACK, then run the transaction again "
            "(BEGIN IMMEDIATE takes the write lock at the start and is never refused this way)")


# ---------------------------------------------------------------- sp_who

SP_WHO_COLUMNS = ["spid", "status", "loginame", "dbname", "cmd", "blk", "wait_s", "open_tran", "last_statement"]


@dataclass(frozen=True)
class SessionFacts:
    """One client session as sp_who shows it, for one database (dbname None: no transaction anywhere)."""

    spid: int
    login: str | None
    db: str | None
    transaction: str | None  # None, "read" (a snapshot), "write" (holds the write lock), "begun" (nothing held yet)
    waiting_for: int | None  # spid holding the lock it waits for (0: mirrord itself), or None
    wait_seconds: float  # how long it has waited, or held the lock
    running: bool  # a statement of it is running now
    last_statement: str


def sp_who_row(f: SessionFacts) -> list:
    """One sp_who row, close to SQL Server's: spid, status, loginame, dbname, cmd, blk, …"""
    if f.waiting_for is not None:
        status, cmd = "suspended", "LOCK WAIT"
    elif f.running:
        status, cmd = "runnable", "EXECUTING"
    else:
        status, cmd = "sleeping", "AWAITING COMMAND"
    open_tran = 0 if f.transaction is None else 1
    if f.transaction == "write" and f.waiting_for is None:
        cmd += " (HOLDS WRITE LOCK)"
    blk = f.waiting_for if f.waiting_for is not None else 0
    return [f.spid, status, f.login or "", f.db or "", cmd, blk, round(f.wait_seconds, 3), open_tran,
            shorten(f.last_statement)]
