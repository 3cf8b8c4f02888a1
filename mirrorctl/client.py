"""Client library over the client port: send a statement, get a Result or an error.

How it works: a connection carries one request at a time. Each `query` frame
has a fresh, increasing id; the server answers with exactly one `result` or
`error` frame carrying that id. `_Exchange` is the pure part (build the query
frame, check and interpret the answer); `AsyncClient` (an asyncio protocol) and
`Client` (blocking sockets, for scripts and tests without an event loop) only
move bytes.

Why a timed-out or failed request closes the connection: its answer may still
arrive later and would be taken for the answer to the next request. Errors are
split so an application can react: `ServerError` (the server answered no, with
a code; `NotPrincipal` names where to go), `Unreachable` (connect failed,
connection lost, or no answer in time). Of the last, `OutcomeUnknown` is the
case where the statement had been sent: it may have run, and committed, on the
server (mirrorctl exit 4, "outcome unknown", never "unreachable"). It stays an
`Unreachable` too, so code that reconnects on any `Unreachable` goes on working.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from mirrord.core import logins as lg
from mirrord.core import messages
from mirrord.core.types import Endpoint, ProtocolError
from mirrord.net.framing import FrameDecoder, encode_frame
from mirrord.net.tls import TlsSetupError, client_context

STATUS_SQL = "SELECT * FROM sys.database_mirroring"


class ClientError(Exception):
    """Base of the errors this library raises."""


class ServerError(ClientError):
    """The server answered with an error frame."""

    def __init__(self, code: str, message: str, principal: str | None = None,
                 token: tuple[int, int] | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.principal = principal
        self.token = token  # (lsn, role sequence, seq) of an in-doubt commit, when the server knows it

    @classmethod
    def from_frame(cls, frame: dict) -> "ServerError":
        """The ServerError subclass for the frame's code."""
        kind = _BY_CODE.get(frame["code"], ServerError)
        lsn, role_sequence, seq = frame.get("lsn"), frame.get("role_sequence"), frame.get("seq")
        token = (lsn, role_sequence, seq if _is_count(seq) else 0) if _is_count(lsn) and _is_count(role_sequence) else None
        return kind(frame["code"], frame["message"], frame["principal"], token)


def _is_count(value: Any) -> bool:
    """An int 0..2**63-1, not a bool (fields beyond the schema are checked here)."""
    return type(value) is int and 0 <= value <= messages.MAX_INT


class Refused(ServerError):
    """The statement is not allowed now; nothing was changed."""


class LoginFailed(ServerError):
    """Wrong login name or password (the same error whether or not the login exists)."""


class PermissionDenied(Refused):
    """The login lacks the role or grant the statement needs; nothing was changed."""


class BadSyntax(ServerError):
    """The statement does not parse."""


class UnknownDatabase(ServerError):
    """The node does not host that database."""


class NotPrincipal(ServerError):
    """The node does not serve that database; `principal` says which node does, if known."""


class NotServing(ServerError):
    """The principal is not serving the database now (closing, or out of quorum); nothing was done."""


class CommitInDoubt(ServerError):
    """The commit was logged but not acknowledged; `token` resolves it later."""


class TransactionAborted(ServerError):
    """The node rolled back this connection's open transaction; ROLLBACK ends it."""


class IntegrityViolation(ServerError):
    """A constraint failed (UNIQUE, NOT NULL, CHECK, FOREIGN KEY)."""


class LogFull(ServerError):
    """The database refuses writes until the mirror catches up."""


class SqlError(ServerError):
    """SQLite rejected the SQL."""


_BY_CODE = {"login_failed": LoginFailed, "permission_denied": PermissionDenied, "refused": Refused, "syntax": BadSyntax, "unknown_database": UnknownDatabase,
            "not_principal": NotPrincipal, "log_full": LogFull, "sql": SqlError, "integrity": IntegrityViolation,
            "not_serving": NotServing, "in_doubt": CommitInDoubt, "transaction_aborted": TransactionAborted}


class Unreachable(ClientError):
    """The server could not be reached or stopped answering."""


class ConnectionLost(Unreachable, ConnectionError):
    """The connection dropped while a request was in flight."""


class QueryTimeout(Unreachable, TimeoutError):
    """No answer within the timeout; the connection was closed."""


class OutcomeUnknown(Unreachable):
    """The statement was sent and its answer never came: it may or may not have run (and committed)."""


class AnswerLost(OutcomeUnknown, ConnectionLost):
    """The connection dropped after the statement was sent, before its answer."""


class AnswerTimeout(OutcomeUnknown, QueryTimeout):
    """The statement was sent and no answer came within the timeout; the connection was closed."""


@dataclass
class Result:
    """Rows and metadata of a successful statement."""

    columns: list[str]
    rows: list[list]
    rowcount: int
    lsn: int | None = None
    role_sequence: int | None = None
    message: str | None = None
    lastrowid: int | None = None
    types: list[str | None] | None = None  # each column's declared type, when the server knows it
    seq: int | None = None  # with lsn and role_sequence, the commit token: its place among the statements one commit holds

    def as_dicts(self) -> list[dict]:
        """Rows as {column: value} dicts."""
        return [dict(zip(self.columns, row)) for row in self.rows]


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' or 'tcp://host:port' -> (host, port); ValueError if malformed."""
    endpoint = Endpoint.parse(address)
    return endpoint.host, endpoint.port


@dataclass(frozen=True)
class Credentials:
    """How a connection proves itself: the CA that signed the node's certificate, and a login.

    Anything not given (None) comes from the environment, as libpq takes
    PGPASSWORD: MIRRORCTL_TLS_CA, MIRRORCTL_USER, MIRRORCTL_PASSWORD. No CA
    means plaintext (a node started with --insecure); no user means no login;
    an empty string means "none", whatever the environment says.
    """

    tls_ca: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def resolve(cls, user: str | None, password: str | None, tls_ca: str | None) -> "Credentials":
        """Arguments first, then the environment."""
        env = os.environ.get
        return cls(tls_ca if tls_ca is not None else env("MIRRORCTL_TLS_CA") or None,
                   user if user is not None else env("MIRRORCTL_USER") or None,
                   password if password is not None else env("MIRRORCTL_PASSWORD"))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for tls_ca (cached per file), or None for plaintext."""
        if not self.tls_ca:
            return None
        try:
            return _context_for(self.tls_ca)
        except TlsSetupError as exc:
            raise Unreachable(str(exc)) from None


_CONTEXTS: dict[str, ssl.SSLContext] = {}


def _context_for(ca_file: str) -> ssl.SSLContext:
    ctx = _CONTEXTS.get(ca_file)
    if ctx is None:
        ctx = _CONTEXTS[ca_file] = client_context(ca_file)
    return ctx


@functools.lru_cache(maxsize=16)
def _salted(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt is slow on purpose; a process that reconnects with the same login pays it once per salt."""
    return lg.salted_password(password, salt, n, r, p)


class _LoginExchange:
    """The client side of the login exchange (see mirrord.core.logins), without I/O."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.nonce = secrets.token_bytes(24)
        self._auth: bytes | None = None
        self._server_key: bytes | None = None

    def first(self) -> bytes:
        """The login frame."""
        return encode_frame({"t": "login", "user": self.user, "nonce": self.nonce})

    def answer(self, frame: dict) -> bytes:
        """The proof frame for the node's challenge; LoginFailed if the node said no."""
        self._check(frame, "challenge")
        salt, n, r, p = frame["salt"], frame["n"], frame["r"], frame["p"]
        try:
            salted = _salted(self.password, salt, n, r, p)
        except ValueError as exc:
            raise ProtocolError(f"the node asked for a password hash we refuse to compute: {exc}") from None
        self._auth = lg.auth_message(self.user, self.nonce, frame["nonce"], salt, n, r, p)
        self._server_key = lg.derive_keys(salted)[1]
        return encode_frame({"t": "proof", "proof": lg.client_proof(salted, self._auth)})

    def finish(self, frame: dict) -> None:
        """Check login_ok and that the node proved it knows the login (ProtocolError if not)."""
        self._check(frame, "login_ok")
        if not hmac.compare_digest(frame["signature"], lg.server_signature(self._server_key, self._auth)):
            raise ProtocolError("the node could not prove it knows this login: it is not the node it claims to be")

    @staticmethod
    def _check(frame: dict, expected: str) -> None:
        messages.validate(frame)
        if frame["t"] == "error":
            raise ServerError.from_frame(frame)
        if frame["t"] != expected:
            raise ProtocolError(f"expected {expected} during login, got {frame['t']!r}")


class _Exchange:
    """The pure request/answer bookkeeping of one connection."""

    def __init__(self) -> None:
        self._last_id = 0

    def request(self, sql: str, db: str | None, params: Any, many: list | None = None) -> tuple[int, bytes]:
        """A new id and the encoded query frame."""
        self._last_id += 1
        return self._last_id, encode_frame(messages.query(self._last_id, sql, db, params, many))

    @staticmethod
    def answer(request_id: int, frame: dict) -> Result:
        """The Result of an answer frame; ServerError or ProtocolError otherwise."""
        messages.validate(frame)
        if frame["t"] not in ("result", "error"):
            raise ProtocolError(f"expected a result or error frame, got {frame['t']!r}")
        if frame["t"] == "error" and frame["id"] == 0:
            raise ServerError.from_frame(frame)  # about the connection, not one request (a limit, a bad frame)
        if frame["id"] != request_id:
            raise ProtocolError(f"answer carries id {frame['id']}, expected {request_id}")
        if frame["t"] == "error":
            raise ServerError.from_frame(frame)
        lastrowid, types, seq = frame.get("lastrowid"), frame.get("types"), frame.get("seq")
        if not (isinstance(types, list) and len(types) == len(frame["columns"])
                and all(t is None or isinstance(t, str) for t in types)):
            types = None  # beyond the schema: an older server sends none, and a malformed list is ignored
        return Result(frame["columns"], frame["rows"], frame["rowcount"], frame["lsn"], frame["role_sequence"],
                      frame["message"], lastrowid if type(lastrowid) is int else None, types,
                      seq if _is_count(seq) else None)  # beyond the schema: an older server sends none


def status_sql(db: str | None) -> str:
    """The status query, optionally for one database."""
    if db is None:
        return STATUS_SQL
    return f"{STATUS_SQL} WHERE database = '{db.replace(chr(39), chr(39) * 2)}'"


class _Link(asyncio.Protocol):
    """The connection under an AsyncClient: frames decoded as they arrive, handed to the request waiting for one.

    Why not asyncio streams: a StreamReader's two readexactly per answer, with its
    waiter and feed machinery, and wait_for's task per request cost the driver a
    fifth of its CPU; here the answer is decoded in data_received and handed
    straight to its waiter, under one timer (benchmarks/client_port_bench.py
    --driver, TLS: 152 -> 124 us per request at 1 client, 95 -> 88 at 32). Frames that
    come unasked (an error about the connection, sent before the server closes
    it) wait in order for the next request, as they did in the stream's buffer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder()
        self._frames: collections.deque[dict] = collections.deque()  # decoded, not yet asked for
        self._waiter: asyncio.Future | None = None
        self._failure: Exception | None = None  # the connection ended, or sent a bad frame: every later wait raises it
        self._paused: asyncio.Future | None = None  # the transport's buffer is over its high-water mark
        self.closed = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._decoder.feed(data)
        try:
            while (msg := self._decoder.next_message()) is not None:
                self._frames.append(msg)
        except ProtocolError as exc:
            self._fail(exc)
            self.transport.close()
        self._wake()

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("the server closed the connection"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc if exc is not None else ConnectionResetError("the server closed the connection"))
        self.resume_writing()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None:
            if not self._paused.done():
                self._paused.set_result(None)
            self._paused = None

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or (not self._frames and self._failure is None):
            return
        self._waiter = None
        if waiter.done():  # its request timed out or was cancelled
            return
        if self._frames:
            waiter.set_result(self._frames.popleft())
        else:
            waiter.set_exception(self._failure)

    def next_frame(self) -> asyncio.Future:
        """A future for the next frame (done at once if one is here); OSError or ProtocolError once the link failed."""
        fut = self._loop.create_future()
        if self._frames:
            fut.set_result(self._frames.popleft())
        elif self._failure is not None:
            fut.set_exception(self._failure)
        else:
            self._waiter = fut
        return fut

    def write(self, frame: bytes) -> None:
        """Hand a frame to the transport; ConnectionResetError if the connection is closing."""
        if self.transport.is_closing():
            raise self._failure if isinstance(self._failure, OSError) else ConnectionResetError("the connection is closed")
        self.transport.write(frame)

    @property
    def writing_paused(self) -> bool:
        return self._paused is not None

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark (a large executemany to a slow reader)."""
        if self._paused is not None:
            await self._paused


def _expire(answer: asyncio.Future) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class AsyncClient:
    """An asyncio connection to a node's client port."""

    def __init__(self, link: _Link) -> None:
        self._link = link
        self._exchange = _Exchange()
        self._lock = asyncio.Lock()  # one request in flight
        self._closed = False
        self._sent = False  # the request in flight was handed to the transport

    @classmethod
    async def connect(cls, address: str, timeout: float = 5.0, *, user: str | None = None,
                      password: str | None = None, tls_ca: str | None = None) -> "AsyncClient":
        """Connect to 'host:port' (or tcp://host:port) and log in; Unreachable, or ServerError login_failed."""
        host, port = parse_address(address)
        creds = Credentials.resolve(user, password, tls_ca)
        ctx = creds.ssl_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, link = await loop.create_connection(
                    lambda: _Link(loop), host, port, **({} if ctx is None else {"ssl": ctx, "server_hostname": host}))
        except OSError as exc:  # TimeoutError is one
            raise Unreachable(f"cannot connect to {host}:{port}: {str(exc) or 'timed out'}") from exc
        client = cls(link)
        if creds.user:
            await client._log_in(_LoginExchange(creds.user, creds.password or ""), timeout)
        return client

    async def _log_in(self, exchange: _LoginExchange, timeout: float) -> None:
        async def steps() -> None:
            self._link.write(exchange.first())
            self._link.write(exchange.answer(await self._link.next_frame()))
            exchange.finish(await self._link.next_frame())

        try:
            async with asyncio.timeout(timeout):
                await steps()
        except TimeoutError:
            await self.close()
            raise QueryTimeout(f"the login was not answered within {timeout} s") from None
        except OSError as exc:
            await self.close()
            raise ConnectionLost(f"connection lost while logging in: {exc}") from exc
        except (ServerError, ProtocolError):
            await self.close()
            raise

    async def query(self, sql: str, db: str | None = None, params: Any = None,
                    timeout: float | None = None, many: list | None = None) -> Result:
        """Run one statement (once per parameter set with many); ServerError on an error answer, Unreachable if the link fails."""
        async with self._lock:
            if self._closed:
                raise ConnectionLost("the connection is closed")
            request_id, frame = self._exchange.request(sql, db, params, many)
            self._sent = False
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            try:
                self._link.write(frame)
                self._sent = True  # from here the server may have the whole statement
                if self._link.writing_paused:
                    async with asyncio.timeout_at(deadline):
                        await self._link.drain()
                answer = self._link.next_frame()
                # one timer per request, not a timeout context: the answer's future fails when it fires
                timer = None if deadline is None else loop.call_at(deadline, _expire, answer)
                try:
                    msg = await answer
                finally:
                    if timer is not None:
                        timer.cancel()
                return self._exchange.answer(request_id, msg)
            except TimeoutError:
                await self.close()
                raise (AnswerTimeout(f"the statement was sent and no answer came within {timeout} s")
                       if self._sent else QueryTimeout(f"the statement could not be sent within {timeout} s")) from None
            except OSError as exc:
                await self.close()
                if self._sent:
                    raise AnswerLost(f"the connection was lost after the statement was sent: {exc}") from exc
                raise ConnectionLost(f"connection lost: {exc}") from exc
            except ProtocolError:
                await self.close()
                raise

    async def status(self, db: str | None = None) -> list[dict]:
        """Rows of sys.database_mirroring as dicts (optionally one database)."""
        return (await self.query(status_sql(db))).as_dicts()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._link.transport.close()
        await self._link.closed

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Client:
    """A blocking connection to a node's client port (plain sockets, no event loop)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._exchange = _Exchange()
        self._closed = False

    @classmethod
    def connect(cls, address: str, timeout: float = 5.0, *, user: str | None = None,
                password: str | None = None, tls_ca: str | None = None) -> "Client":
        """Connect to 'host:port' (or tcp://host:port) and log in; Unreachable, or ServerError login_failed."""
        host, port = parse_address(address)
        creds = Credentials.resolve(user, password, tls_ca)
        ctx = creds.ssl_context()
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unreachable(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except OSError as exc:
                sock.close()
                raise Unreachable(f"TLS with {host}:{port} failed: {exc}") from exc
        client = cls(sock)
        if creds.user:
            client._log_in(_LoginExchange(creds.user, creds.password or ""), timeout)
        return client

    def _log_in(self, exchange: _LoginExchange, timeout: float) -> None:
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(exchange.first())
            self._sock.sendall(exchange.answer(self._receive()))
            exchange.finish(self._receive())
        except socket.timeout:
            self.close()
            raise QueryTimeout(f"the login was not answered within {timeout} s") from None
        except (ServerError, ProtocolError, ConnectionLost):
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"connection lost while logging in: {exc}") from exc

    def query(self, sql: str, db: str | None = None, params: Any = None,
              timeout: float | None = None, many: list | None = None) -> Result:
        """Run one statement (once per parameter set with many); ServerError on an error answer, Unreachable if the link fails."""
        if self._closed:
            raise ConnectionLost("the connection is closed")
        request_id, frame = self._exchange.request(sql, db, params, many)
        sent = False  # sendall returned: the whole frame is on its way (before, the server cannot run it)
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(frame)
            sent = True
            return self._exchange.answer(request_id, self._receive())
        except socket.timeout:
            self.close()
            if sent:
                raise AnswerTimeout(f"the statement was sent and no answer came within {timeout} s") from None
            raise QueryTimeout(f"the statement could not be sent within {timeout} s") from None
        except ProtocolError:
            self.close()
            raise
        except (ConnectionLost, OSError) as exc:
            self.close()
            if sent:
                raise AnswerLost(f"the connection was lost after the statement was sent: {exc}") from exc
            if isinstance(exc, ConnectionLost):
                raise
            raise ConnectionLost(f"connection lost: {exc}") from exc

    def _receive(self) -> dict:
        """Block until one whole frame has arrived."""
        while (frame := self._decoder.next_message()) is None:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionLost("the server closed the connection")
            self._decoder.feed(data)
        return frame

    def status(self, db: str | None = None) -> list[dict]:
        """Rows of sys.database_mirroring as dicts (optionally one database)."""
        return self.query(status_sql(db)).as_dicts()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
