"""A PEP 249 (DB-API 2.0) driver for mirrord that follows the principal through failovers.

    import mirrorctl.dbapi as mirror

    with mirror.connect("mirror://10.0.0.1:1433,10.0.0.2:1433/shop", failover_timeout=30) as conn:
        cur = conn.cursor()
        cur.execute("INSERT INTO items(name) VALUES (?)", ["apple"])
        conn.commit()                     # acknowledged: survives any failover
        token = conn.last_token           # (commit LSN, role sequence)

Transactions are PEP 249's: with autocommit off (the default) the first
statement opens one (the driver sends BEGIN), commit() sends COMMIT. The
connection finds the principal among the partners (see routing), and after a
failover the next transaction goes to the new principal by itself. A
transaction cut by a failover raises TransactionInterrupted (nothing of it
committed), or InDoubt if COMMIT was already on its way (see errors).
`mirrorctl.dbapi.aio` is the same API for asyncio. The logic of both lives in
`driver`; this module only moves bytes with the blocking `mirrorctl.client.Client`.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Sequence

from mirrorctl.client import Client
from mirrorctl.dbapi.driver import (
    UNSET,
    Connect,
    ConnectionBase,
    CursorBase,
    Disconnect,
    Driver,
    Op,
    ResultSet,
    Send,
    Sleep,
    Steps,
    Token,
    pump,
    settings_from,
    wire_many,
    wire_params,
)
from mirrorctl.dbapi.errors import (
    DatabaseError,
    DataError,
    Error,
    InDoubt,
    IntegrityError,
    InterfaceError,
    InternalError,
    NoPrincipal,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    TransactionInterrupted,
    Warning,
)
from mirrorctl.dbapi.routing import parse_url
from mirrorctl.dbapi.types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"  # SQLite's: `?` with a sequence; `:name` with a mapping works too

__all__ = [
    "apilevel", "threadsafety", "paramstyle", "connect", "Connection", "Cursor", "Token",
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError", "IntegrityError",
    "InternalError", "ProgrammingError", "NotSupportedError", "NoPrincipal", "TransactionInterrupted", "InDoubt",
    "Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks", "Binary",
    "STRING", "BINARY", "NUMBER", "DATETIME", "ROWID",
]

def connect(url: str, *, failover_timeout: float = UNSET, connect_timeout: float = UNSET,
            query_timeout: float | None = UNSET, autocommit: bool = False) -> "Connection":
    """Connect to the principal of the database named by 'mirror://host:port[,host:port…]/db'.

    failover_timeout (default 30 s): how long one call keeps looking for a
    principal (rounds over the partners, with backoff). connect_timeout
    (5 s): per connection attempt. query_timeout (30 s, None for no limit):
    per statement. The URL may carry them too: `…/db?failover_timeout=60`.
    Raises NoPrincipal if no partner serves the database in time.
    """
    target = parse_url(url)
    settings = settings_from(target.options, failover_timeout, connect_timeout, query_timeout, autocommit)
    conn = Connection(Driver(target, settings, time.monotonic))
    conn._run(conn._driver.open())
    return conn


class Connection(ConnectionBase):
    """A DB-API connection to a mirrored database (see the module docstring)."""

    Warning, Error, InterfaceError, DatabaseError, DataError = Warning, Error, InterfaceError, DatabaseError, DataError
    OperationalError, IntegrityError, InternalError = OperationalError, IntegrityError, InternalError
    ProgrammingError, NotSupportedError = ProgrammingError, NotSupportedError

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._client: Client | None = None

    # ---------------------------------------------------------------- PEP 249

    def cursor(self) -> "Cursor":
        """A new cursor on this connection."""
        self._driver._check_open()
        return Cursor(self)

    def commit(self) -> None:
        """Commit the open transaction; InDoubt if the answer never came, TransactionInterrupted if it was lost."""
        self._run(self._driver.commit())

    def rollback(self) -> None:
        """Roll back the open transaction."""
        self._run(self._driver.rollback())

    def close(self) -> None:
        """Close the connection; an uncommitted transaction is rolled back."""
        self._run(self._driver.close())

    # ---------------------------------------------------------------- beyond PEP 249

    @property
    def autocommit(self) -> bool:
        """True: each statement commits by itself. Setting it True commits an open transaction first."""
        return self._driver.settings.autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        if value and self._driver.in_transaction:
            self.commit()
        self._driver.settings.autocommit = bool(value)

    def transaction_committed(self, token: Token) -> bool:
        """Ask the principal whether the commit with this token survived (after InDoubt, or any time)."""
        return self._run(self._driver.transaction_committed(token))

    def execute(self, sql: str, params: Sequence | dict | None = None) -> "Cursor":
        """Shortcut: a new cursor, executed."""
        return self.cursor().execute(sql, params)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        """Commit if the block succeeded, roll back if it raised; then close."""
        try:
            if self._driver.closed:
                return
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self.close()

    # ---------------------------------------------------------------- I/O

    def _run(self, steps: Steps) -> Any:
        return pump(steps, self._perform)

    def _perform(self, op: Op) -> Any:
        if isinstance(op, Send):
            return self._client.query(op.sql, db=op.db, params=op.params, timeout=op.timeout, many=op.many)
        if isinstance(op, Connect):
            self._disconnect()
            self._client = Client.connect(op.address, timeout=op.timeout, **self._driver.target.credentials())
            return None
        if isinstance(op, Disconnect):
            self._disconnect()
            return None
        if isinstance(op, Sleep):
            time.sleep(op.seconds)  # backoff between connection rounds
            return None
        raise TypeError(f"unknown operation {op!r}")

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


class Cursor(CursorBase):
    """A DB-API cursor: the rows of the last statement it executed."""

    def execute(self, sql: str, params: Sequence | dict | None = None) -> "Cursor":
        """Run one statement with qmark (sequence) or named (mapping) parameters."""
        self._check_open()
        self._results = ResultSet()
        self._results = self.connection._run(self.connection._driver.execute(sql, wire_params(params)))
        return self

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence | dict]) -> "Cursor":
        """Run the statement once per parameter set, in one round trip and the connection's transaction; rowcount is the total."""
        self._check_open()
        self._results = ResultSet()
        many = wire_many(seq_of_params)
        if not many:
            self._results = ResultSet(rowcount=0)
            return self
        result = self.connection._run(self.connection._driver.execute(sql, None, many))
        self._results = ResultSet(rowcount=result.rowcount)
        return self

    def fetchone(self) -> tuple | None:
        """The next row, or None."""
        self._check_open()
        rows = self._results.fetch(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        """The next `size` rows (default arraysize)."""
        self._check_open()
        return self._results.fetch(self.arraysize if size is None else size)

    def fetchall(self) -> list[tuple]:
        """Every remaining row."""
        self._check_open()
        return self._results.fetch(None)

    def close(self) -> None:
        """Close the cursor (its rows are dropped)."""
        self._closed = True
        self._results = ResultSet()

    def setinputsizes(self, sizes: object) -> None:
        """PEP 249: accepted and ignored."""

    def setoutputsize(self, size: object, column: object = None) -> None:
        """PEP 249: accepted and ignored."""

    def __iter__(self) -> Iterator[tuple]:
        while (row := self.fetchone()) is not None:
            yield row

    def __enter__(self) -> "Cursor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise InterfaceError("the cursor is closed")
