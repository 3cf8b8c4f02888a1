"""The client port's connection loop, with the limits that keep one client from holding the node.

How a connection goes. At most `max_clients` connections are served at once;
one more gets a `limit` error frame and is closed. Between statements the
connection may stay silent for `idle_timeout` seconds; once the first byte of a
frame has arrived, the whole frame must arrive within `frame_deadline` (a
client that sends a header a byte at a time, or a big frame slowly, is cut off)
and be at most `max_frame` bytes, checked on the header before the body is
read. A frame that fails any check gets an error frame (code `protocol`, with
the request id when it can be read) and the connection is closed; a statement
that fails gets an error frame and the connection goes on.

While a statement runs, its connection's reader (`ClientReader`) watches for
the client going away: EOF with nothing left unread, or a reset, interrupts
the statement (`StatementGuard.cancel`) instead of letting it run on for
nobody. Bytes that arrive meanwhile wait in the reader as the start of the
client's next frame. No task or timer is made per statement for this: a
request costs the connection's own task a read, a frame deadline and the
answer. While the client holds an open transaction (and with it the
write lock) and stays silent longer than `idle_transaction_timeout`, the
transaction is rolled back; the client learns it from the error its next
statement gets (`transaction_aborted`), since the protocol has no unsolicited
frames.

The node supplies a `ClientSession` per connection: how to answer a query, and
its transaction hooks. This module knows nothing of databases.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import structlog

from mirrord.core import messages
from mirrord.core.types import ProtocolError
from mirrord.net import framing
from mirrord.storage.statement_guard import CURRENT, StatementGuard

log = structlog.get_logger()


@dataclass(frozen=True)
class ClientLimits:
    """Bounds on what one client can hold: connections, time, frame and result sizes."""

    max_clients: int = 256
    idle_timeout: float = 600.0  # seconds of silence between statements
    frame_deadline: float = 10.0  # seconds from a frame's first byte to its last
    max_frame: int = 4 << 20  # bytes of one client frame (the mirroring endpoint allows 64 MiB)
    max_result_bytes: int = 64 << 20  # estimated memory of one result's rows
    statement_timeout_ms: int = 60_000  # default for a connection; SET STATEMENT_TIMEOUT changes it
    idle_transaction_timeout: float = 60.0  # seconds a silent client may hold the write lock or a read snapshot
    lock_timeout_ms: int = 10_000  # how long a writer queues for a database's write lock; SET LOCK_TIMEOUT changes it


# setting (TOML key, MIRRORD_* variable, flag: mirrord/config.py) -> (ClientLimits field, scale, kind)
_LIMITS = {
    "max_clients": ("max_clients", 1, int),
    "client_idle_timeout": ("idle_timeout", 1, float),
    "client_frame_deadline": ("frame_deadline", 1, float),
    "client_max_frame_kb": ("max_frame", 1024, int),
    "max_result_mb": ("max_result_bytes", 1 << 20, int),
    "statement_timeout_ms": ("statement_timeout_ms", 1, int),
    "idle_transaction_timeout": ("idle_transaction_timeout", 1, float),
    "lock_timeout_ms": ("lock_timeout_ms", 1, int),
}
MAX_CLIENT_FRAME_KB = 64 * 1024  # the frame format's own limit


def limits_from_settings(values: dict) -> ClientLimits:
    """ClientLimits from settings (TOML keys); ValueError naming a bad one."""
    fields = {}
    for key, (field, scale, kind) in _LIMITS.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(f"{key} must be a positive {'whole ' if kind is int else ''}number")
        if not 0 < value <= (MAX_CLIENT_FRAME_KB if key == "client_max_frame_kb" else 10**9):
            raise ValueError(f"{key} must be positive (and client_max_frame_kb at most {MAX_CLIENT_FRAME_KB})")
        fields[field] = kind(value * scale)
    return ClientLimits(**fields)


class ClientSession(Protocol):
    """What the node provides for one connection."""

    statement_timeout_ms: int | None

    async def answer(self, msg: dict) -> dict:
        """The result or error frame for a validated query."""

    def holds_transaction(self) -> bool:
        """True while this connection has an open transaction (the write lock)."""

    async def abort_idle_transaction(self, seconds: float) -> None:
        """Roll back this connection's open transaction: it was idle longer than seconds."""


class ClientReader(asyncio.StreamReader):
    """A client connection's StreamReader, which says when the client went away while a statement runs.

    `on_gone` is called once the connection ends with nothing left to read (EOF
    after the last byte was read, or a reset): a byte still unread is the start
    of the client's next frame, so a client that sent it has not gone yet.
    """

    on_gone: Callable[[], None] | None = None

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.on_gone is not None and self.at_eof():
            self.on_gone()

    def set_exception(self, exc: BaseException) -> None:
        super().set_exception(exc)
        if self.on_gone is not None:
            self.on_gone()

    def gone(self) -> bool:
        """The client went away already: a reset, or EOF with nothing left to read."""
        return self.exception() is not None or self.at_eof()


class _Closed(Exception):
    """The connection ends here (EOF, idle, a deadline); the reason is in the message."""

    def __init__(self, reason: str, notable: bool = True) -> None:
        super().__init__(reason)
        self.notable = notable


class _BadQuery(ProtocolError):
    """A frame that decoded but is not a valid query; request_id is its id, if it had a valid one."""

    def __init__(self, reason: str, request_id: int) -> None:
        super().__init__(reason)
        self.request_id = request_id


def error_frame(request_id: int, code: str, message: str) -> dict:
    """An error frame; id 0 when the request's id could not be read."""
    return {"t": "error", "id": request_id, "code": code, "message": message, "principal": None}


class ClientPort:
    """Serves client connections within ClientLimits; counts the connections it serves."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self.active = 0

    async def serve(self, reader: ClientReader, writer: asyncio.StreamWriter, session: ClientSession) -> None:
        """Serve one connection until the client leaves or breaks a rule (the caller closes the writer)."""
        if not isinstance(reader, ClientReader):  # a plain StreamReader would never interrupt a statement
            raise TypeError("the client port reads connections through a ClientReader (Listener reader_class)")
        peer = writer.get_extra_info("peername")
        if self.active >= self.limits.max_clients:
            log.warning("client_refused", peer=str(peer), reason="connection limit", limit=self.limits.max_clients)
            await _send(writer, error_frame(0, "limit", f"this node serves at most {self.limits.max_clients} client "
                                                        "connections at once; try again later"))
            return
        self.active += 1
        try:
            await self._loop(reader, writer, session)
        except _Closed as exc:
            if exc.notable:  # a client leaving is the normal end; limits and interrupted statements are logged
                log.info("client_connection_closed", peer=str(peer), reason=str(exc))
        except ProtocolError as exc:
            log.warning("client_frame_rejected", peer=str(peer), reason=str(exc))
            request_id = exc.request_id if isinstance(exc, _BadQuery) else 0
            await _send(writer, error_frame(request_id, "protocol", f"bad frame: {exc}; the connection is closed"))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass  # the client left, or the node is shutting down
        finally:
            self.active -= 1

    async def _loop(self, reader: ClientReader, writer, session: ClientSession) -> None:
        while True:
            first = await self._first_byte(reader, session)
            msg = await self._rest_of_frame(reader, first)
            answer = await self._run(reader, session, msg)
            if answer is None:  # the guard interrupted the statement, if it was still running
                raise _Closed("the client went away while its statement ran; the statement was interrupted")
            await _send(writer, answer, strict=True)

    async def _first_byte(self, reader: ClientReader, session: ClientSession) -> bytes:
        """Wait for the next frame to start; roll back a transaction left idle too long."""
        now = time.monotonic()
        idle_until = now + self.limits.idle_timeout
        txn_until = now + self.limits.idle_transaction_timeout
        while True:
            until = min(idle_until, txn_until) if session.holds_transaction() else idle_until
            try:
                # a read from what is buffered returns at once: the timer never fires then
                async with asyncio.timeout(max(0.0, until - time.monotonic())):
                    data = await reader.read(1)
            except TimeoutError:
                if session.holds_transaction() and time.monotonic() >= txn_until:
                    await session.abort_idle_transaction(self.limits.idle_transaction_timeout)
                    continue
                if time.monotonic() >= idle_until:
                    raise _Closed(f"idle for {self.limits.idle_timeout:g} s") from None
                continue
            if not data:
                raise _Closed("the client closed the connection", notable=False)
            return data

    async def _rest_of_frame(self, reader, first: bytes) -> dict:
        """The rest of a frame within the frame deadline and size limit; a validated query."""
        try:
            async with asyncio.timeout(self.limits.frame_deadline):  # a timer, where wait_for would add a task
                raw = await self._read_frame(reader, first)
        except TimeoutError:
            raise _Closed(f"a frame did not arrive whole within {self.limits.frame_deadline:g} s") from None
        msg = framing.decode_body(*raw, max_frame=self.limits.max_frame)
        request_id = msg.get("id")
        if type(request_id) is not int or not 0 <= request_id <= messages.MAX_INT:
            request_id = 0
        try:
            messages.validate(msg)
        except ProtocolError as exc:
            raise _BadQuery(str(exc), request_id) from None
        if msg["t"] == "login":  # a node with logins takes the login before this loop (Node._on_client)
            raise _BadQuery("this node runs with --insecure and has no logins: connect without a login and without TLS",
                            request_id)
        if msg["t"] != "query":
            raise _BadQuery(f"clients send query frames, not {msg['t']}", request_id)
        return msg

    async def _read_frame(self, reader, first: bytes) -> tuple[bytes, int, int]:
        header = first + await reader.readexactly(framing.HEADER.size - 1)
        length, flags, crc = framing.check_header(header, self.limits.max_frame)
        return await reader.readexactly(length), flags, crc

    async def _run(self, reader: ClientReader, session: ClientSession, msg: dict) -> dict | None:
        """Answer msg, interrupting it if the client goes away meanwhile (then None).

        The reader calls the guard's cancel when the connection ends; the
        statement runs in this task, so a round trip costs no task of its own.
        """
        timeout_ms = session.statement_timeout_ms or self.limits.statement_timeout_ms
        guard = StatementGuard(time.monotonic() + timeout_ms / 1000, self.limits.max_result_bytes, timeout_ms)
        if reader.gone():
            guard.cancel()
        reader.on_gone = guard.cancel
        token = CURRENT.set(guard)  # seen on the SQLite thread (principal._in_connection_thread copies the context)
        try:
            answer = await session.answer(msg)
        finally:
            CURRENT.reset(token)
            reader.on_gone = None
        return None if guard.cancelled else answer


async def _send(writer: asyncio.StreamWriter, frame: dict, strict: bool = False) -> None:
    """Write one frame; a result too large for a frame becomes a `limit` error frame."""
    try:
        data = framing.encode_frame(frame)
    except framing.FrameTooLarge as exc:
        data = framing.encode_frame(error_frame(frame.get("id", 0), "limit", f"the answer is too large to send: {exc}"))
    if writer.is_closing():
        if strict:
            raise ConnectionResetError("the connection is closed")
        return
    writer.write(data)
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        if strict:
            raise
