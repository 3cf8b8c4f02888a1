"""What bounds one client statement while SQLite runs it: time, result size, the client's presence.

How it works. The client port makes a `StatementGuard` per statement and sets
it in the `CURRENT` context variable; `principal._in_connection_thread` copies
the context onto the SQLite connection's thread, where `run_guarded` finds it.
While the statement steps, SQLite calls the guard's progress handler every
`PROGRESS_STEPS` virtual-machine instructions; a true answer interrupts the
statement (SQLite undoes it), and the error raised is the guard's: `timeout`
past the deadline, or "client gone" when the client port saw the connection
close. Rows are fetched in batches and their memory estimated as they come, so
a result that would outgrow `max_result_bytes` is refused before it is built,
not after (a 3 M-row SELECT once took a node to 990 MB and then failed); no single value
may be longer than that budget either (SQLITE_LIMIT_LENGTH while the statement runs).

Why a context variable: the guard reaches the one function that runs SQL
without threading a parameter through every layer between the client port and
the connection thread; code that runs SQL for mirrord itself has no guard and
is never interrupted.
"""

from __future__ import annotations

import contextvars
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from mirrord.core.types import LimitExceeded, MirrordError, StatementTimeout

PROGRESS_STEPS = 1000  # VM instructions between checks: microseconds apart, negligible cost
FETCH_BATCH = 256
# Rough Python memory of a fetched row: the list, and each value by type (CPython 3.11, 64-bit).
_ROW_COST = 64
_VALUE_COST = {int: 36, float: 32, type(None): 8, bool: 8}
_SIZED_COST = {str: 57, bytes: 41}

CURRENT: contextvars.ContextVar["StatementGuard | None"] = contextvars.ContextVar("statement_guard", default=None)


class ClientGone(MirrordError):
    """The client closed its connection while its statement ran; the statement was interrupted."""

    code = "cancelled"


@dataclass
class StatementGuard:
    """Limits of one statement: a deadline (monotonic seconds, or None) and a result budget in bytes."""

    deadline: float | None
    max_result_bytes: int
    timeout_ms: int = 0  # as set, for the error message
    cancelled: bool = False  # the client went away (set from the event loop thread)

    def cancel(self) -> None:
        """The client went away: interrupt the statement at its next progress check."""
        self.cancelled = True

    def should_interrupt(self) -> bool:
        """SQLite's progress handler: true stops the statement."""
        return self.cancelled or (self.deadline is not None and time.monotonic() > self.deadline)

    def error(self) -> MirrordError:
        """The error for an interrupted statement."""
        if self.cancelled:
            return ClientGone("the client closed the connection; its statement was interrupted and undone")
        return StatementTimeout(
            f"the statement ran longer than the STATEMENT_TIMEOUT of {self.timeout_ms} ms and was interrupted; "
            "nothing of it was kept. SET STATEMENT_TIMEOUT ms gives this connection more time"
        )


def row_cost(row: tuple) -> int:
    """Estimated Python memory of one fetched row."""
    cost = _ROW_COST + 8 * len(row)
    for value in row:
        kind = type(value)
        cost += _VALUE_COST.get(kind, 0) or (_SIZED_COST.get(kind, 32) + len(value))
    return cost


def fetch_bounded(cur: sqlite3.Cursor, budget: int) -> list[list[Any]]:
    """Every row of cur as lists, or LimitExceeded once their estimated memory passes budget."""
    rows: list[list[Any]] = []
    used = 0
    while batch := cur.fetchmany(FETCH_BATCH):
        for row in batch:
            used += row_cost(row)
            rows.append(list(row))
        if used > budget:
            raise LimitExceeded(
                f"the result is larger than this node's limit of {budget >> 20} MiB (after {len(rows)} rows); "
                "nothing was sent. Select fewer rows or columns (WHERE, LIMIT/OFFSET), or raise --max-result-mb"
            )
    return rows


def run_guarded(conn: sqlite3.Connection, sql: str, params: Any, on_error) -> tuple[sqlite3.Cursor, list[list[Any]]]:
    """Execute and fetch under the current guard (if any); sqlite errors go through on_error."""
    guard = CURRENT.get()
    if guard is None:
        try:
            cur = conn.execute(sql, params if params is not None else ())
            return cur, [list(r) for r in cur.fetchall()]
        except sqlite3.Error as exc:
            raise on_error(exc) from None
    conn.set_progress_handler(guard.should_interrupt, PROGRESS_STEPS)
    # no single string or blob may outgrow the result budget either: SQLite would build it whole
    # (zeroblob(1e9) is a gigabyte) before a row reaches fetch_bounded
    length_limit = conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1, guard.max_result_bytes))
    try:
        cur = conn.execute(sql, params if params is not None else ())
        rows = fetch_bounded(cur, guard.max_result_bytes)
    except sqlite3.Error as exc:
        if guard.should_interrupt() and "interrupt" in str(exc):
            raise guard.error() from None
        raise on_error(exc) from None
    except LimitExceeded:
        cur.close()  # ends the statement: a read's snapshot, a write's changes are not kept
        raise
    finally:
        conn.set_progress_handler(None, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length_limit)
    return cur, rows
