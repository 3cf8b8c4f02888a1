"""The asyncio face of mirrorctl.dbapi: the same connection, cursor and errors, as coroutines.

    from mirrorctl.dbapi.aio import connect_async

    async with await connect_async("mirror://10.0.0.1:1433/shop") as conn:
        cur = conn.cursor()
        await cur.execute("INSERT INTO items(name) VALUES (?)", ["apple"])
        await conn.commit()

Every decision (where the principal is, what to retry, what is in doubt) is
the shared `driver`; this module performs its operations with
`mirrorctl.client.AsyncClient`. One request at a time per connection: calls
from several tasks on one connection wait for each other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterable, Sequence

from mirrorctl.client import AsyncClient, ClientError
from mirrorctl.dbapi import errors
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
    settings_from,
    wire_many,
    wire_params,
)
from mirrorctl.dbapi.routing import parse_url
from mirrord.core.types import ProtocolError


async def connect_async(url: str, *, failover_timeout: float = UNSET, connect_timeout: float = UNSET,
                        query_timeout: float | None = UNSET, autocommit: bool = False) -> "AsyncConnection":
    """As mirrorctl.dbapi.connect, for asyncio."""
    target = parse_url(url)
    settings = settings_from(target.options, failover_timeout, connect_timeout, query_timeout, autocommit)
    conn = AsyncConnection(Driver(target, settings, time.monotonic))
    await conn._run(conn._driver.open())
    return conn


async def pump_async(steps: Steps, perform) -> Any:
    """Run a driver generator with an async perform(op) (see driver.pump)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            reply = await perform(op)
        except (ClientError, ProtocolError) as exc:
            error = exc


class AsyncConnection(ConnectionBase):
    """An asyncio DB-API-shaped connection to a mirrored database."""

    Error, OperationalError, InDoubt = errors.Error, errors.OperationalError, errors.InDoubt

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()

    def cursor(self) -> "AsyncCursor":
        """A new cursor on this connection."""
        self._driver._check_open()
        return AsyncCursor(self)

    async def commit(self) -> None:
        """Commit the open transaction (InDoubt / TransactionInterrupted as in the blocking API)."""
        await self._run(self._driver.commit())

    async def rollback(self) -> None:
        """Roll back the open transaction."""
        await self._run(self._driver.rollback())

    async def close(self) -> None:
        """Close the connection; an uncommitted transaction is rolled back."""
        await self._run(self._driver.close())

    async def transaction_committed(self, token: Token) -> bool:
        """Ask the principal whether the commit with this token survived."""
        return await self._run(self._driver.transaction_committed(token))

    async def execute(self, sql: str, params: Sequence | dict | None = None) -> "AsyncCursor":
        """Shortcut: a new cursor, executed."""
        return await self.cursor().execute(sql, params)

    @property
    def autocommit(self) -> bool:
        """True: each statement commits by itself (set it with set_autocommit)."""
        return self._driver.settings.autocommit

    async def set_autocommit(self, value: bool) -> None:
        """Switch autocommit; switching it on commits an open transaction first."""
        if value and self._driver.in_transaction:
            await self.commit()
        self._driver.settings.autocommit = bool(value)

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        """Commit if the block succeeded, roll back if it raised; then close."""
        try:
            if self._driver.closed:
                return
            if exc_type is None:
                await self.commit()
            else:
                await self.rollback()
        finally:
            await self.close()

    async def _run(self, steps: Steps) -> Any:
        async with self._lock:
            return await pump_async(steps, self._perform)

    async def _perform(self, op: Op) -> Any:
        if isinstance(op, Send):
            return await self._client.query(op.sql, db=op.db, params=op.params, timeout=op.timeout, many=op.many)
        if isinstance(op, Connect):
            await self._disconnect()
            self._client = await AsyncClient.connect(op.address, timeout=op.timeout, **self._driver.target.credentials())
            return None
        if isinstance(op, Disconnect):
            await self._disconnect()
            return None
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)  # backoff between connection rounds
            return None
        raise TypeError(f"unknown operation {op!r}")

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class AsyncCursor(CursorBase):
    """The rows of the last statement this cursor executed; fetches are coroutines, as in aiosqlite."""

    async def execute(self, sql: str, params: Sequence | dict | None = None) -> "AsyncCursor":
        """Run one statement with qmark (sequence) or named (mapping) parameters."""
        self._check_open()
        self._results = ResultSet()
        self._results = await self.connection._run(self.connection._driver.execute(sql, wire_params(params)))
        return self

    async def executemany(self, sql: str, seq_of_params: Iterable[Sequence | dict]) -> "AsyncCursor":
        """Run the statement once per parameter set, in one round trip; rowcount is the total."""
        self._check_open()
        self._results = ResultSet()
        many = wire_many(seq_of_params)
        if not many:
            self._results = ResultSet(rowcount=0)
            return self
        result = await self.connection._run(self.connection._driver.execute(sql, None, many))
        self._results = ResultSet(rowcount=result.rowcount)
        return self

    async def fetchone(self) -> tuple | None:
        """The next row, or None."""
        self._check_open()
        rows = self._results.fetch(1)
        return rows[0] if rows else None

    async def fetchmany(self, size: int | None = None) -> list[tuple]:
        """The next `size` rows (default arraysize)."""
        self._check_open()
        return self._results.fetch(self.arraysize if size is None else size)

    async def fetchall(self) -> list[tuple]:
        """Every remaining row."""
        self._check_open()
        return self._results.fetch(None)

    async def close(self) -> None:
        """Close the cursor."""
        self._closed = True
        self._results = ResultSet()

    def __aiter__(self) -> AsyncIterator[tuple]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[tuple]:
        while (row := await self.fetchone()) is not None:
            yield row

    def _check_open(self) -> None:
        if self._closed:
            raise errors.InterfaceError("the cursor is closed")
