"""The client listener's side of a node: each client connection logs in, then sends statements.

A connection is a ClientConnection: its state (current database, login,
statement timeout) and the owner that identifies its transactions to the
principals and what EXEC sp_who shows of it. The login exchange is core.logins'
(SCRAM-style proofs; nobody unauthenticated sends more than a small frame); the
statements go to the node's StatementExecutor and come back as result or error
frames; the client port (net/client_port.py) bounds what one client may hold.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import TYPE_CHECKING, Callable, Iterable

import structlog

from mirrord.core import logins as lg
from mirrord.core import messages
from mirrord.core.types import MirrordError, ProtocolError
from mirrord.net import framing
from mirrord.net.client_port import ClientPort, ClientReader
from mirrord.node_services import ClientOwner, ClientState
from mirrord.engine.principal import PrincipalDatabase

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.storage.login_store import LoginStore
    from mirrord.statements_exec import StatementExecutor

log = structlog.get_logger()

LOGIN_TIMEOUT = 10.0  # a client that has not finished logging in by then is cut off
LOGIN_FRAME_LIMIT = 4096  # the login frames are small; nobody unauthenticated gets to send more


class ClientConnection:
    """One client connection as the client port sees it (net.client_port.ClientSession)."""

    def __init__(self, listener: "ClientListener") -> None:
        self.listener = listener
        self.state = ClientState()
        self.owner = ClientOwner(next(listener.spids))  # identifies this connection's open transactions

    @property
    def statement_timeout_ms(self) -> int | None:
        return self.state.statement_timeout_ms

    async def answer(self, msg: dict) -> dict:
        self.owner.note_running(msg["sql"])
        try:
            return await self.listener.answer(self.state, self.owner, msg)
        finally:
            self.owner.note_done()

    def holds_transaction(self) -> bool:
        return any(p.holds_transaction(self.owner) for p in self._principals())

    async def abort_idle_transaction(self, seconds: float) -> None:
        for principal in self._principals():
            await principal.abort_idle_transaction(self.owner, seconds)

    async def close(self) -> None:
        """The client left: roll back its open transaction, if any."""
        self.listener.connections.pop(self.owner.spid, None)
        for principal in self._principals():
            await principal.abort_transaction(self.owner)

    def _principals(self) -> list[PrincipalDatabase]:
        return [h.principal for h in self.listener.databases() if h.principal is not None]


class ClientListener:
    """The node's client port: connections, their logins and their statements."""

    def __init__(self, executor: "StatementExecutor", port: ClientPort, logins: "LoginStore | None",
                 databases: Callable[[], Iterable["Database"]]) -> None:
        self.executor, self.port, self.logins, self.databases = executor, port, logins, databases
        self.spids = itertools.count(51)  # session ids, as SQL Server numbers user sessions (from 51)
        self.connections: dict[int, ClientConnection] = {}  # by spid: EXEC sp_who

    async def on_client(self, reader: ClientReader, writer: asyncio.StreamWriter) -> None:
        connection = ClientConnection(self)
        self.connections[connection.owner.spid] = connection
        try:
            if self.logins is not None:
                connection.state.login = await asyncio.wait_for(self._log_in(reader, writer), LOGIN_TIMEOUT)
                if connection.state.login is None:
                    return
            await self.port.serve(reader, writer, connection)
        except ProtocolError as exc:  # during the login exchange (the client port logs its own)
            log.warning("client_frame_rejected", reason=str(exc))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError, asyncio.TimeoutError):
            pass  # the client left while logging in, or the node is shutting down
        finally:
            await connection.close()
            writer.close()

    async def _log_in(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """The server side of the login exchange (core.logins); the login name, or None after login_failed."""
        peer = writer.get_extra_info("peername")
        first = messages.validate(await framing.read_message(reader, LOGIN_FRAME_LIMIT))
        if first["t"] != "login":
            await self._login_failed(writer, "log in first: this node requires a login (mirrorctl -U LOGIN -P PASSWORD, "
                                             "or Client.connect(..., user=, password=))",
                                     first["id"] if first["t"] == "query" else 0)  # answers the query it got
            return None
        user, client_nonce = first["user"], first["nonce"]
        login, salt, n, r, p = self.logins.challenge_for(user)
        server_nonce = secrets.token_bytes(24)
        framing.write_message(writer, {"t": "challenge", "nonce": server_nonce, "salt": salt, "n": n, "r": r, "p": p})
        await writer.drain()
        answer = messages.validate(await framing.read_message(reader, LOGIN_FRAME_LIMIT))
        if answer["t"] != "proof":
            raise ProtocolError(f"expected the login proof, got {answer['t']}")
        auth = lg.auth_message(user, client_nonce, server_nonce, salt, n, r, p)
        if login is None or not lg.proof_ok(login.stored_key, auth, answer["proof"]):
            log.warning("login_failed", login=user[:128], peer=str(peer))
            await self._login_failed(writer, lg.LOGIN_FAILED)
            return None
        framing.write_message(writer, {"t": "login_ok", "signature": lg.server_signature(login.server_key, auth)})
        await writer.drain()
        return user

    @staticmethod
    async def _login_failed(writer: asyncio.StreamWriter, message: str, request_id: int = 0) -> None:
        framing.write_message(writer, {"t": "error", "id": request_id, "code": "login_failed", "message": message,
                                       "principal": None})
        await writer.drain()

    async def answer(self, state: ClientState, owner: object, msg: dict) -> dict:
        try:
            if "many" in msg:
                result = await self.executor.run_many(state, owner, msg["sql"], msg["db"], msg["many"])
            else:
                result = await self.executor.run(state, owner, msg["sql"], msg["db"], msg["params"])
        except MirrordError as exc:
            return _error(msg["id"], exc)
        except Exception as exc:  # report, log, keep serving
            log.exception("statement_failed", sql=lg.redacted(msg["sql"][:200]))
            return {"t": "error", "id": msg["id"], "code": "internal", "message": f"internal error: {exc!r}", "principal": None}
        return {
            "t": "result", "id": msg["id"], "columns": result.columns, "rows": result.rows,
            "rowcount": result.rowcount, "lsn": result.lsn, "role_sequence": result.role_sequence, "message": getattr(result, "message", None),
            "seq": getattr(result, "seq", None),  # the token's third part (its place in a shared commit), beyond the schema
            "lastrowid": result.lastrowid,  # beyond the schema: older clients ignore it
            "types": getattr(result, "types", None),  # declared column types (PEP 249 description), beyond the schema
        }


def _error(request_id: int, exc: MirrordError) -> dict:
    """The error frame; an in-doubt commit also carries its token (lsn, role_sequence, seq), beyond the schema."""
    principal = exc.details.get("principal")
    frame = {"t": "error", "id": request_id, "code": exc.code, "message": exc.message,
             "principal": None if principal is None else str(principal)}
    for key in ("lsn", "role_sequence", "seq"):
        if isinstance(exc.details.get(key), int):
            frame[key] = exc.details[key]
    return frame
