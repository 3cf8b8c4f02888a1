"""The client port's connection loop, with the limits that keep one client from holding the node.

How a connection goes. At most `max_clients` connections are served at once;
one more gets a `limit` error frame and is closed. Between statements the
connection may stay silent for `idle_timeout` seconds; once the first byte of a
frame has arrived, the whole frame must arrive within `frame_deadline` (a
client that sends a header a byte at a time, or a big frame slowly, is cut off)
and be at most `max_frame` bytes, checked on the header as soon as it is
here. A frame that fails any check gets an error frame (code `protocol`, with
the request id when it can be read) and the connection is closed; a statement
that fails gets an error frame and the connection goes on.

After the login (read through streams, client_listener), the port takes the
connection's transport over with a protocol of its own (`_Connection`): bytes
in, frames out. While a statement runs, the protocol watches for the client
going away: EOF with nothing left unread, or a reset, interrupts the statement
(`StatementGuard.cancel`) instead of letting it run on for nobody. Bytes that
arrive meanwhile wait as the start of the client's next frame. No task, timer
or stream read is made per statement: a request costs the connection's task
one wakeup and the answer's write. While the client holds an open transaction (and with it the
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
from typing import Protocol

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
    """The StreamReader of a client connection while it logs in; the client port then takes over what it holds.

    The login exchange reads through streams (client_listener); statements are
    read by the port's own protocol (`_Connection`), which gets the bytes this
    reader holds unread, and its EOF or reset, when it takes the connection over.
    """

    def take_buffered(self) -> bytes:
        """What arrived and was not read yet (the start of the client's first statement), removed from here."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


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
        """Serve one connection until the client leaves or breaks a rule (the caller closes the writer).

        The connection's transport is handed to a `_Connection` protocol for
        the statements: bytes in, frames out, without the stream layer's
        futures, timers and buffers per read (a third of the server's CPU per
        request on this port). What the reader holds goes with it.
        """
        if not isinstance(reader, ClientReader):  # its unread bytes must go with the connection
            raise TypeError("the client port reads connections through a ClientReader (Listener reader_class)")
        peer = writer.get_extra_info("peername")
        if self.active >= self.limits.max_clients:
            log.warning("client_refused", peer=str(peer), reason="connection limit", limit=self.limits.max_clients)
            await _send(writer, error_frame(0, "limit", f"this node serves at most {self.limits.max_clients} client "
                                                        "connections at once; try again later"))
            return
        self.active += 1
        connection = _Connection(self.limits, writer.transport, session)
        try:
            connection.take_over(reader)
            await connection.run()
        except _Closed as exc:
            if exc.notable:  # a client leaving is the normal end; limits and interrupted statements are logged
                log.info("client_connection_closed", peer=str(peer), reason=str(exc))
        except ProtocolError as exc:
            log.warning("client_frame_rejected", peer=str(peer), reason=str(exc))
            request_id = exc.request_id if isinstance(exc, _BadQuery) else 0
            connection.send(error_frame(request_id, "protocol", f"bad frame: {exc}; the connection is closed"))
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the client left, or the node is shutting down
        finally:
            connection.stop()
            self.active -= 1


class _Connection(asyncio.Protocol):
    """One client connection's statements, read from its transport: one at a time, in order.

    The protocol's callbacks (`data_received`, `eof_received`,
    `connection_lost`) note what happened and wake `run`, the connection's
    task, which reads frames from the buffer, answers them and keeps the
    deadlines. While a statement runs, bytes that arrive wait as the start of
    the client's next frame (reading pauses past READ_AHEAD of them); the
    client going away (EOF with nothing left unread, or a reset) cancels the
    statement's guard. One timer per connection keeps every deadline: it is
    moved only to an earlier one, and when it fires early `run` sets it again,
    so a request costs no timer of its own.
    """

    READ_AHEAD = 1 << 16

    def __init__(self, limits: ClientLimits, transport: asyncio.BaseTransport, session: ClientSession) -> None:
        self._limits, self._transport, self._session = limits, transport, session
        self._loop = asyncio.get_running_loop()
        self._decoder = framing.FrameDecoder(limits.max_frame)
        self._began: float | None = None  # when the first byte of a frame not yet whole arrived
        self._eof = False
        self._reset = False
        self._waiter: asyncio.Future | None = None  # run() waiting for bytes, EOF or a deadline
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._guard: StatementGuard | None = None  # of the statement running
        self._reading_paused = False
        self._writing_paused: asyncio.Future | None = None
        # as StreamReaderProtocol: a TCP connection stays half-open after EOF until the port closes it;
        # TLS cannot (asyncio warns when asked)
        self._keep_open_at_eof = transport.get_extra_info("sslcontext") is None

    # ---------------------------------------------------------------- the transport's side

    def take_over(self, reader: ClientReader) -> None:
        """Become the transport's protocol, with what the login's reader holds unread, its EOF or its reset."""
        leftover = reader.take_buffered()
        exc = reader.exception()
        eof = reader.at_eof()
        self._transport.set_protocol(self)
        if leftover:
            self.data_received(leftover)
        if exc is not None:
            self.connection_lost(exc)
        elif eof:
            self.eof_received()
        elif not self._transport.is_reading():  # the reader had paused it, full
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if not self._decoder.buffered():
            self._began = self._loop.time()
        self._decoder.feed(data)
        if self._guard is not None and self._decoder.buffered() >= self.READ_AHEAD and not self._reading_paused:
            self._reading_paused = True  # a client sending ahead of its answers waits for them
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        if self._guard is not None and not self._decoder.buffered():
            self._guard.cancel()  # an unread byte is the start of the client's next frame: not gone yet
        self._wake()
        return self._keep_open_at_eof

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._reset = True
            if self._guard is not None:
                self._guard.cancel()
        else:
            self.eof_received()
        self._eof = True
        if self._writing_paused is not None and not self._writing_paused.done():
            self._writing_paused.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        if self._writing_paused is None or self._writing_paused.done():
            self._writing_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writing_paused is not None and not self._writing_paused.done():
            self._writing_paused.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _wake_at(self, when: float) -> None:
        """Make sure run() is woken at `when` (or earlier: it checks and waits again)."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._on_timer), when

    def stop(self) -> None:
        """The connection's task ended: no timer is left behind (the caller closes the transport)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send(self, frame: dict) -> bool:
        """Write one frame; False if the connection is closing. A result too large becomes a `limit` error frame."""
        try:
            data = framing.encode_frame(frame)
        except framing.FrameTooLarge as exc:
            data = framing.encode_frame(error_frame(frame.get("id", 0), "limit", f"the answer is too large to send: {exc}"))
        if self._transport.is_closing():
            return False
        self._transport.write(data)
        return True

    # ---------------------------------------------------------------- the connection's task

    async def run(self) -> None:
        while True:
            msg = await self._next_frame()
            answer = await self._run(msg)
            if answer is None:  # the guard interrupted the statement, if it was still running
                raise _Closed("the client went away while its statement ran; the statement was interrupted")
            if not self.send(answer):
                raise ConnectionResetError("the connection is closed")
            if self._writing_paused is not None and not self._writing_paused.done():
                await self._writing_paused  # the client reads its answers slower than it gets them

    async def _wait(self, until: float) -> None:
        self._wake_at(until)
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _next_frame(self) -> dict:
        """The next query, within the idle and frame deadlines; roll back a transaction left idle too long."""
        now = self._loop.time()
        idle_until = now + self._limits.idle_timeout
        txn_until = now + self._limits.idle_transaction_timeout
        while True:
            msg = self._decoder.next_message()  # the header is checked as soon as it is here
            if msg is not None:
                self._began = self._loop.time() if self._decoder.buffered() else None
                return self._query(msg)
            if self._reset:
                raise ConnectionResetError("the client reset the connection")
            if self._eof:
                if self._decoder.buffered():
                    raise _Closed("the client closed the connection in the middle of a frame", notable=False)
                raise _Closed("the client closed the connection", notable=False)
            now = self._loop.time()
            if self._decoder.buffered():  # a frame has begun: the whole of it within the frame deadline
                until = (self._began if self._began is not None else now) + self._limits.frame_deadline
                if now >= until:
                    raise _Closed(f"a frame did not arrive whole within {self._limits.frame_deadline:g} s")
            else:
                holds = self._session.holds_transaction()
                if holds and now >= txn_until:
                    await self._session.abort_idle_transaction(self._limits.idle_transaction_timeout)
                    continue
                if now >= idle_until:
                    raise _Closed(f"idle for {self._limits.idle_timeout:g} s")
                until = min(idle_until, txn_until) if holds else idle_until
            await self._wait(until)

    def _query(self, msg: dict) -> dict:
        """msg checked as a query; _BadQuery (with its request id when it has a valid one) if it is not."""
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

    async def _run(self, msg: dict) -> dict | None:
        """Answer msg, interrupting it if the client goes away meanwhile (then None).

        The protocol's callbacks cancel the guard when the connection ends; the
        statement runs in this task, so a round trip costs no task of its own.
        """
        timeout_ms = self._session.statement_timeout_ms or self._limits.statement_timeout_ms
        guard = StatementGuard(time.monotonic() + timeout_ms / 1000, self._limits.max_result_bytes, timeout_ms)
        if self._reset or (self._eof and not self._decoder.buffered()):
            guard.cancel()  # it left before its statement started
        self._guard = guard
        token = CURRENT.set(guard)  # seen on the SQLite thread (principal._in_connection_thread copies the context)
        try:
            answer = await self._session.answer(msg)
        finally:
            CURRENT.reset(token)
            self._guard = None
            if self._reading_paused:
                self._reading_paused = False
                self._transport.resume_reading()
        return None if guard.cancelled else answer


async def _send(writer: asyncio.StreamWriter, frame: dict) -> None:
    """Write one frame on a connection the port did not take over (a refusal before its end)."""
    if writer.is_closing():
        return
    writer.write(framing.encode_frame(frame))
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        pass
