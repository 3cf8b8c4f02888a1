"""What the node offers the parts below it, and a client connection's state.

The node (`mirrord.node`) is the top layer: it owns the endpoint, the client
port, the databases and the links, and imports every part. The parts under it —
the network links (`net/`), role changes, the statement executor — call back
into it through `NodeServices`, never by importing it, so the daemon's modules
form layers without an import cycle (tests/test_import_cycles.py): a part is
read knowing exactly what it may ask of the node.

The node's metrics are typed loosely here (`Any`): their class lives in the
monitor, which the links import, and naming it would tie the layers together.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mirrord.core.logins import redacted

if TYPE_CHECKING:
    from mirrord.core import roles
    from mirrord.core.page_repair import RepairHistory
    from mirrord.core.session import SessionConfig
    from mirrord.core.types import Endpoint
    from mirrord.engine.database import Database
    from mirrord.storage.login_store import LoginStore
    from mirrord.net.tls import TlsContexts
    from mirrord.node_config import NodeConfig
    from mirrord.storage.events import EventLog
    from mirrord.storage.snapshot import DatabaseSnapshot
    from mirrord.engine.witness import Witness


@dataclass
class ClientState:
    """One client connection: its current database and who logged in (None on an --insecure node)."""

    db: str | None = None
    statement_timeout_ms: int | None = None  # SET STATEMENT_TIMEOUT; None: the node's default
    login: str | None = None  # who logged in (None on an --insecure node)


class ClientOwner:
    """Identifies one connection's transactions to the principals, and what EXEC sp_who shows of it.

    A principal keeps owners as keys and reads only `spid` (lock_timeout errors)
    and `lock_timeout_ms` (SET LOCK_TIMEOUT); `running` and `last_statement` are sp_who's.
    The statement is kept as sent and redacted (no password) only when shown: the
    redaction's regular expression on every statement was 3.4 % of a principal's
    interpreter time at 1 client (py-spy --gil), for a view seldom read.
    """

    SHOWN = 1000  # characters of a statement sp_who shows

    def __init__(self, spid: int) -> None:
        self.spid = spid
        self.lock_timeout_ms: int | None = None  # SET LOCK_TIMEOUT; None: the node's default
        self._running: str | None = None  # the statement running now, as sent
        self._last = ""

    def note_running(self, sql: str) -> None:
        """A statement of this connection starts."""
        self._running = self._last = sql

    def note_done(self) -> None:
        """Its statement ended (answered, failed or interrupted)."""
        self._running = None

    @property
    def running(self) -> str | None:
        """The statement running now (sp_who), if any: its start, without a password."""
        return None if self._running is None else redacted(self._running[:self.SHOWN])

    @property
    def last_statement(self) -> str:
        """The last statement started (sp_who): its start, without a password."""
        return redacted(self._last[:self.SHOWN])


class EndpointServices(Protocol):
    """What the links (net/) ask of their node: its identity, dialing, and what a link's events call for."""

    name: str
    stopping: bool

    @property
    def endpoint_url(self) -> str: ...

    @property
    def listen_address(self) -> str: ...

    async def connect_endpoint(self, ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    def track_endpoint_writer(self, writer: asyncio.StreamWriter) -> None: ...

    def untrack_endpoint_writer(self, writer: asyncio.StreamWriter) -> None: ...

    def hello(self, database: Database) -> dict: ...

    def start_partner_link(self, database: Database) -> None: ...

    async def stop_partner_link(self, database: Database) -> None: ...

    # what a link's events call for: core.roles decides, mirrord.engine.role_change carries it out
    async def role_event(self, database: Database, event: roles.Event) -> None: ...

    async def adopt_witness_state(self, database: Database, msg: dict) -> None: ...

    async def request_promotion(self, database: Database, conn: Any, *, forced: bool, timeout: float) -> bool: ...


class NodeServices(EndpointServices, Protocol):
    """What role changes and statements ask of their node: its databases, settings, links and listeners."""

    config: NodeConfig
    metrics: Any  # mirrord.engine.monitor.NodeMetrics
    databases: dict[str, Database]
    quarantined: dict[str, str]  # database: why it failed to load
    loading_when_room: set[str]  # quarantined by a full disk, loaded again once there is room
    connections: dict[int, Any]  # spid: the client connection (EXEC sp_who)
    logins: LoginStore | None
    tls: TlsContexts | None
    witness: Witness
    events: EventLog
    repairs: RepairHistory

    snapshot_lock: asyncio.Lock  # a snapshot's name is checked, then taken: one at a time
    dropped_snapshots: dict[str, str]  # snapshot name: why it was dropped (what a client asking for it hears)

    @property
    def databases_dir(self) -> Path: ...

    def snapshots(self) -> dict[str, tuple[Database, DatabaseSnapshot]]: ...

    def snapshot_dropped(self, database: Database, name: str, why: str) -> None: ...

    async def activate(self, database: Database) -> None: ...

    async def deactivate(self, database: Database) -> None: ...

    async def create_database(self, config: SessionConfig, snapshot: tuple[Path, int, int] | None = None) -> Database: ...

    async def drop_database(self, database: Database) -> None: ...

    async def stop_inbound(self, database: Database) -> None: ...

    def start_off_notice(self, database: Database) -> None: ...

    def sync_witness_link(self, database: Database) -> None: ...

    async def stop_witness_link(self, database: Database) -> None: ...

    async def start_endpoint(self) -> None: ...

    async def stop_endpoint(self) -> None: ...
