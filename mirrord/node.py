"""The mirrord daemon: its databases' lifecycle (load, quarantine, activate, create, drop), their links, and the
entry point. Who may connect to the endpoint and what it serves is endpoint_server.py; the clients' side is
client_listener.py; the settings and the command line are node_config.py.

Layout on disk, under --data-dir:

    databases/<db>/meta.json   the session config (role, partner, safety, SUSPENDED, role sequence)
    databases/<db>/db.sqlite   the database (principal) or page store (mirror)
    databases/<db>/log/        the durable log
    databases/<db>/redo_lsn    db.sqlite (without a WAL) durably holds the log up to this LSN:
                               the mirror's redo LSN; the principal's last complete checkpoint
    events/events.jsonl        the node's event history (+ events.1.jsonl; mirrord/storage/events.py)

Everything a node knows about its sessions is on disk before it acts on it, so
a node killed at any instant comes back with its roles and rejoins by itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tomllib
from pathlib import Path

import structlog

from mirrord import endpoint_server
from mirrord.engine import checkmirror, page_repair, role_change
from mirrord import config as settings
from mirrord.client_listener import ClientListener
from mirrord.core import logins as lg
from mirrord.core import leases, roles
from mirrord.core.names import db_name_refusal, inside, is_db_name
from mirrord.core.page_repair import RepairHistory
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import DatabaseStatus, Endpoint, Role
from mirrord.engine.database import Database
from mirrord.httpapi import HttpServer, NodeView
from mirrord.storage.login_store import LoginSetupError, LoginStore
from mirrord.engine.mirror import CHECKSUMS_FILE, SNAPSHOTS_DIR, MirrorDatabase
from mirrord.version import installed_version
from mirrord.engine.monitor import NodeMetrics, run_sampler
from mirrord.net import framing
from mirrord.net.client_port import ClientPort, ClientReader
from mirrord.engine.principal_session import run_off_notice, run_partner_link
from mirrord.net.tls import Listener, TlsContexts, TlsSetupError
from mirrord.engine.witness_link import run_witness_link
from mirrord.node_config import NodeConfig, configure_logging, parse_args
from mirrord.engine.principal import PrincipalDatabase
from mirrord.statements_exec import StatementExecutor
from mirrord.storage import snapshot as snapfiles
from mirrord.storage.events import EventLog
from mirrord.storage.fileutil import DISK_RESERVE_BYTES, atomic_write_bytes, disk_free, is_disk_full
from mirrord.storage.log import DurableLog
from mirrord.views import status_rows
from mirrord.engine.witness import Witness

log = structlog.get_logger()

PROTOCOL_VERSION = 1
LOAD_RETRY_SECONDS = 2.0  # a database a full disk kept from loading at start tries again this often


class Node:
    """A mirrord node."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.databases: dict[str, Database] = {}
        # databases that failed to load at start, and why: shown in status, never served, the rest run
        self.quarantined: dict[str, str] = {}
        self.stopping = False
        self.tls = TlsContexts.load(config.tls_dir, config.name) if config.tls_dir is not None else None
        # logins come with TLS: a password proof over plaintext would still leave every query readable
        self.logins = (LoginStore.open(config.data_dir / "logins.msgpack", config.admin_password_file)
                       if self.tls is not None else None)
        if self.logins is not None:
            self.logins.on_change = self._send_logins
        self._endpoint_server: Listener | None = None
        self._client_server: Listener | None = None
        self._endpoint_started = asyncio.Event()
        self._endpoint_writers: set[asyncio.StreamWriter] = set()
        self._stopped = asyncio.Event()
        self.executor = StatementExecutor(self)
        self.clients = ClientListener(self.executor, ClientPort(config.limits), self.logins, lambda: self.databases.values())
        self.connections = self.clients.connections  # by spid: EXEC sp_who
        self.events = EventLog(config.data_dir / "events", config.name, max_events=config.event_history_max_events,
                               max_age_seconds=config.event_history_max_age_days * 86400.0)
        self.witness = Witness(config.data_dir / "witness", events=self.events)
        self.metrics = NodeMetrics(config.name, installed_version())
        self.http = HttpServer(NodeView(
            name=config.name, registry=self.metrics.registry,
            facts=lambda db: h.health_facts() if (h := self.databases.get(db)) is not None else None,
            status_rows=lambda db: [r for r in status_rows(self) if db in (None, r["database"])],
            up=lambda: (self.serving_clients, len(self.databases), self.quarantined)))
        self._sampler: asyncio.Task | None = None
        self._checker: asyncio.Task | None = None  # scheduled DBCC CHECKMIRROR
        self._load_retries: set[asyncio.Task] = set()  # databases quarantined by a full disk, loaded again once there is room
        self._background: set[asyncio.Task] = set()  # role events from callbacks (a redo failure), until they end
        self.loading_when_room: set[str] = set()  # their names
        self._scrubber: asyncio.Task | None = None  # the mirror's page scrubber
        self.repairs = RepairHistory()  # sys.dm_db_mirroring_auto_page_repair
        # database snapshots: one CREATE/DROP of a snapshot at a time (names are checked, then taken), and the
        # snapshots dropped since this start with why, so that a query on one hears why it is gone
        self.snapshot_lock = asyncio.Lock()
        self.dropped_snapshots: dict[str, str] = {}

    # ---------------------------------------------------------------- addresses

    @property
    def endpoint_url(self) -> str:
        """This node's mirroring endpoint, as partners name it."""
        return str(self.config.endpoint)

    @property
    def listen_address(self) -> str:
        """This node's client address, host:port."""
        return f"{self.config.listen.host}:{self.config.listen.port}"

    @property
    def serving_clients(self) -> bool:
        """Up: every database loaded and the client port open (what /health reports)."""
        return self._client_server is not None and not self.stopping

    @property
    def databases_dir(self) -> Path:
        return self.config.data_dir / "databases"

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load every database, then open the endpoint and the client port."""
        self.events.record(None, "NODE_STARTED", detail=f"endpoint {self.endpoint_url}, client port {self.listen_address}")
        self.databases_dir.mkdir(parents=True, exist_ok=True)
        self.config.backups.mkdir(parents=True, exist_ok=True)
        for meta in sorted(self.databases_dir.glob("*/meta.json")):
            try:
                await self._load(meta.parent)
            except Exception as exc:  # noqa: BLE001 - one bad database must not keep the others down
                await self._quarantine(meta.parent, exc)
        if self.tls is None:
            log.warning("insecure_mode", reason="started with --insecure: no TLS, no peer authentication, no logins; "
                        "anyone who can reach the ports can read, write and administer", hint="restart with --tls-dir DIR")
        await self.start_endpoint()
        self._client_server = await Listener.start(self.config.listen.host, self.config.listen.port,
                                                   self.tls and self.tls.client_server, self.clients.on_client, "client",
                                                   reader_class=ClientReader)
        if self.config.metrics is not None:
            await self.http.start(self.config.metrics.host, self.config.metrics.port)
        self._sampler = asyncio.create_task(run_sampler(lambda: self.databases, self.witness, self.metrics), name="monitor-sampler")
        if self.config.checkmirror_interval > 0:
            self._checker = asyncio.create_task(
                checkmirror.run_schedule(lambda: self.databases.values(), self.config.checkmirror_interval,
                                         self.config.checkmirror_rate_mb, self.metrics.count_checkmirror),
                name="checkmirror-schedule")
        if self.config.page_scrub_rate_mb > 0:
            self._scrubber = asyncio.create_task(
                page_repair.run_scrubber(lambda: self.databases.values(), self.config.page_scrub_rate_mb, lambda database: checkmirror.check(
                    database, self.config.checkmirror_rate_mb, self.metrics.count_checkmirror)), name="page-scrubber")
        log.info("node_started", endpoint=self.endpoint_url, listen=self.listen_address, databases=sorted(self.databases))

    async def _load(self, directory: Path) -> None:
        from mirrord.storage.fileutil import read_json

        config = SessionConfig.from_dict(read_json(directory / "meta.json"))
        if not is_db_name(config.db) or config.db != directory.name:
            raise ValueError(f"meta.json names {config.db!r}, not a valid database name equal to its directory's")
        await self._serve(Database(config.db, directory, Session(config), self.open_log(directory)))

    async def _serve(self, database: Database) -> None:
        """Wire a loaded or created database to this node's services, list it, and start its role."""
        database.on_witness_changed = self.sync_witness_link
        database.events = self.events
        database.logins = self.logins
        database.repair_history = self.repairs
        database.repaired_pages = self.metrics.count_page_repaired
        self.databases[database.name] = database
        await self.activate(database)

    async def _quarantine(self, directory: Path, exc: Exception) -> None:
        """A database that failed to load: close what was opened, remember why, serve the others."""
        name = directory.name
        database = self.databases.pop(name, None)
        if database is not None:
            await self.deactivate(database)
        why = f"failed to load at start: {exc}"
        if is_disk_full(exc):
            # not the database's fault: it loads by itself once there is room (a restart while full, a power cut)
            why += f" (the disk is full: loading is retried every {LOAD_RETRY_SECONDS:g} s until there is room)"
            task = asyncio.create_task(self._load_when_room(directory), name=f"load-retry-{name}")
            self.loading_when_room.add(name)
            task.add_done_callback(lambda _, name=name: self.loading_when_room.discard(name))
            self._load_retries.add(task)
            task.add_done_callback(self._load_retries.discard)
        self.quarantined[name] = why
        log.error("database_quarantined", database=name, reason=why, directory=str(directory))

    async def _load_when_room(self, directory: Path) -> None:
        """Load a database quarantined by a full disk again, every few seconds, until it loads or fails otherwise."""
        name = directory.name
        while not self.stopping:
            await asyncio.sleep(LOAD_RETRY_SECONDS)
            if disk_free(directory) < DISK_RESERVE_BYTES:
                continue
            try:
                await self._load(directory)
            except Exception as exc:  # noqa: BLE001 - as at start: this database only
                database = self.databases.pop(name, None)
                if database is not None:
                    await self.deactivate(database)
                if is_disk_full(exc):
                    continue
                self.quarantined[name] = f"failed to load: {exc}"
                log.error("database_quarantined", database=name, reason=self.quarantined[name], directory=str(directory))
                return
            self.quarantined.pop(name, None)
            log.warning("database_loaded_after_disk_full", database=name, role=self.databases[name].session.role.value)
            return

    def _send_logins(self, table: lg.LoginTable) -> None:
        """Pass a changed login table to every connected partner (they adopt it and pass it on)."""
        frame = {"t": "logins", "table": table.to_dict()}
        for database in self.databases.values():
            if database.partner_writer is not None:
                try:
                    framing.write_message(database.partner_writer, frame)
                except ConnectionResetError:
                    pass  # that link is closing; the next connection carries the table

    # ---------------------------------------------------------------- database snapshots

    def snapshots(self) -> dict[str, tuple[Database, "snapfiles.DatabaseSnapshot"]]:
        """Every database snapshot on this node by name, with the database it shows."""
        found = {}
        for database in self.databases.values():
            if database.mirror is not None:
                for name, snap in list(database.mirror.snapshots.items()):  # one step: redo may drop one meanwhile
                    found[name] = (database, snap)
        return found

    def snapshot_dropped(self, database: Database, name: str, why: str) -> None:
        """A snapshot was dropped (by DROP DATABASE, a promotion, a reseed, a failed save): remember, record, log."""
        self.dropped_snapshots[name] = why
        database.record_event("SNAPSHOT_DROPPED", f"database snapshot {name} of {database.name} dropped: {why}",
                          lsn=database.mirror.redo_lsn if database.mirror is not None else database.log.last_lsn)
        log.warning("snapshot_dropped", database=database.name, snapshot=name, reason=why)

    def _drop_snapshot_files(self, database: Database) -> None:
        """The copy is about to be opened by SQLite (a promotion, RESTORE … WITH RECOVERY): its snapshots go first."""
        cfg = database.session.config
        if cfg.role is Role.PRINCIPAL:
            why = f"{database.name} became the principal here (role sequence {cfg.role_sequence}): a snapshot is of a mirror's copy"
        else:
            why = f"{database.name} was brought ONLINE here (RESTORE … WITH RECOVERY): a snapshot is of a mirror's copy"
        for name in snapfiles.remove_all(database.directory / SNAPSHOTS_DIR):
            self.snapshot_dropped(database, name, why)

    def open_log(self, directory: Path) -> DurableLog:
        """A database's durable log, with segments small enough to truncate well below the size limit."""
        segment = max(64 << 10, min(16 << 20, self.config.log_size_limit // 8))
        return DurableLog(directory / "log", segment_bytes=segment)

    async def activate(self, database: Database) -> None:
        """Start the engine the database's role and status call for."""
        cfg = database.session.config
        if cfg.status is DatabaseStatus.ONLINE:
            self._drop_snapshot_files(database)  # before SQLite writes the copy (a crash after the promotion, too)
            # a copy that was a mirror's page store is brought up to the end of log by principal.open()
            (database.directory / CHECKSUMS_FILE).unlink(missing_ok=True)  # SQLite writes it now, not redo: checksums go stale
            principal = PrincipalDatabase(
                database.directory, database.session, database.log, log_size_limit=self.config.log_size_limit,
                ack_rule=database.ack_rule, quorum_refusal=database.quorum_refusal, lock_timeout_ms=self.config.limits.lock_timeout_ms,
            )
            await principal.open()
            principal.on_commit = lambda seconds, db=database.name: self.metrics.observe_commit(db, seconds)
            database.principal = principal
            page_repair.note_opened(database)  # a damaged page 1 open() put back from the log
            if cfg.role is Role.PRINCIPAL and cfg.partner is not None:
                self.start_partner_link(database)
            elif cfg.partner is None:
                self.start_off_notice(database)
        else:
            database.mirror = MirrorDatabase(database.directory, database.session, database.log, log_size_limit=self.config.log_size_limit)
            database.mirror.on_failure = lambda why: self._in_background(
                self.role_event(database, roles.RedoFailed(why)), f"redo-failed-{database.name}")
            database.mirror.on_snapshot_dropped = lambda name, why: self.snapshot_dropped(database, name, why)
            if database.mirror.path.exists():
                database.mirror.start()
        self.start_witness_link(database)
        database.note_state()

    def start_witness_link(self, database: Database) -> None:
        """Start (once) the partner's link to the session's witness, if one is set."""
        cfg = database.session.config
        if cfg.witness is None or cfg.partner is None or not self.endpoint_started:
            return
        if database.witness_link is None or database.witness_link.done():
            database.witness_link = asyncio.create_task(run_witness_link(self, database), name=f"witness-link-{database.name}")

    async def stop_witness_link(self, database: Database) -> None:
        """Stop the partner's link to the witness, if any."""
        task, database.witness_link = database.witness_link, None
        await _cancel(task)
        database.session.hear(leases.WitnessLinkLost())  # closed on purpose: its lease ends with it, as on any loss

    def start_partner_link(self, database: Database) -> None:
        """Start (once) the principal's link to its mirror."""
        if database.sender is None or database.sender.done():
            database.sender = asyncio.create_task(run_partner_link(self, database), name=f"partner-link-{database.name}")

    def start_off_notice(self, database: Database) -> None:
        """Start (once) telling the old mirror of a SET PARTNER OFF run here (in the principal's link slot)."""
        if database.session.config.off_untold is not None and self.endpoint_started and (database.sender is None or database.sender.done()):
            database.sender = asyncio.create_task(run_off_notice(self, database), name=f"partner-off-notice-{database.name}")

    async def stop_partner_link(self, database: Database) -> None:
        """Stop the principal's link to its mirror, if any."""
        task, database.sender = database.sender, None
        await _cancel(task)

    async def stop_inbound(self, database: Database) -> None:
        """Close the mirror's connection from its principal, if any."""
        task, database.inbound = database.inbound, None
        await _cancel(task)

    async def deactivate(self, database: Database) -> None:
        """Stop everything running for a database (before dropping it)."""
        await self.stop_witness_link(database)
        await self._stop_engines(database)
        database.disarm_timer()  # nothing falls due for a database no longer served here

    async def _stop_engines(self, database: Database) -> None:
        """Stop the role-specific engine and partner links, keeping the witness link."""
        await self.stop_partner_link(database)
        await self.stop_inbound(database)
        if database.principal is not None:
            await database.principal.close()
            database.principal = None
        if database.mirror is not None:
            database.mirror.stop()
            database.mirror = None

    async def stop(self) -> None:
        """Clean shutdown: stop listening, stop links, close databases."""
        if self.stopping:
            return
        self.stopping = True
        log.info("node_stopping")
        await _cancel(self._sampler)
        await _cancel(self._checker)
        for task in list(self._load_retries):
            await _cancel(task)
        await _cancel(self._scrubber)
        await self.http.stop()
        if self._client_server is not None:
            self._client_server.close()
        await self.stop_endpoint()
        for database in list(self.databases.values()):
            try:
                await self.deactivate(database)
            except Exception as exc:  # noqa: BLE001 - the others must still close; the log holds what was committed
                log.error("database_close_failed", database=database.name, error=repr(exc))
            database.log.close()
        self._stopped.set()

    # ---------------------------------------------------------------- endpoint

    async def start_endpoint(self) -> None:
        """Open the mirroring endpoint (ALTER ENDPOINT … STATE = STARTED)."""
        if self._endpoint_server is None:
            self._endpoint_server = await Listener.start(self.config.endpoint.host, self.config.endpoint.port,
                                                         self.tls and self.tls.endpoint_server,
                                                         lambda r, w: endpoint_server.serve_connection(self, r, w), "endpoint")
        self._endpoint_started.set()
        for database in self.databases.values():
            if database.session.role is Role.PRINCIPAL and database.session.config.partner is not None:
                self.start_partner_link(database)
            self.start_off_notice(database)
            self.start_witness_link(database)

    async def stop_endpoint(self) -> None:
        """Close the endpoint and every node-to-node connection (STATE = STOPPED)."""
        self._endpoint_started.clear()
        server, self._endpoint_server = self._endpoint_server, None
        if server is not None:
            server.close()
        for database in self.databases.values():
            await self.stop_partner_link(database)
            await self.stop_inbound(database)
            await self.stop_witness_link(database)
            database.session.hear(leases.EndpointStopped())  # links closed on purpose: no lease outlives them
            database.poke()
        for writer in list(self._endpoint_writers):
            writer.close()

    @property
    def endpoint_started(self) -> bool:
        return self._endpoint_started.is_set()

    async def wait_endpoint_started(self) -> None:
        await self._endpoint_started.wait()

    def track_endpoint_writer(self, writer: asyncio.StreamWriter) -> None:
        self._endpoint_writers.add(writer)

    def untrack_endpoint_writer(self, writer: asyncio.StreamWriter) -> None:
        self._endpoint_writers.discard(writer)

    async def connect_endpoint(self, ep: Endpoint):
        """Dial another node's endpoint from this node's endpoint address.

        Binding the source address makes a link between two nodes one pair of
        addresses, so it can be cut (and watched) per pair.
        """
        if self.tls is None:
            return await asyncio.open_connection(ep.host, ep.port, local_addr=(self.config.endpoint.host, 0))
        # the peer's certificate must cover the database we dialed: the configured partner or witness
        return await asyncio.open_connection(ep.host, ep.port, local_addr=(self.config.endpoint.host, 0),
                                             ssl=self.tls.endpoint_client, server_hostname=ep.host,
                                             ssl_handshake_timeout=endpoint_server.HELLO_TIMEOUT)

    async def adopt_witness_state(self, database: Database, msg: dict) -> None:
        """What the witness says about a session (see role_change.adopt_witness_state)."""
        await role_change.adopt_witness_state(self, database, msg)

    async def request_promotion(self, database: Database, conn, *, forced: bool, timeout: float) -> bool:
        """Ask the witness to promote this mirror (see role_change.request_promotion)."""
        return await role_change.request_promotion(self, database, conn, forced=forced, timeout=timeout)

    async def role_event(self, database: Database, event: roles.Event) -> None:
        """An event for the role machine (core.roles) from a link; role_change carries out what it decides."""
        await role_change.on_event(self, database, event)

    def _in_background(self, work, name: str) -> None:
        """Run work (from a callback that cannot await) as a task kept until it ends; a failure is logged."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background_task_failed", task=name, error=repr(t.exception()))
        task.add_done_callback(done)

    def sync_witness_link(self, database: Database) -> None:
        """Start or stop the witness link after the session's witness setting changed."""
        if database.session.config.witness is not None:
            self.start_witness_link(database)
        elif database.witness_link is not None:
            asyncio.ensure_future(self.stop_witness_link(database))

    def hello(self, database: Database) -> dict:
        """The principal's opening message on a link to its mirror."""
        cfg = database.session.config
        hello = {
            "t": "hello", "v": PROTOCOL_VERSION, "db": database.name, "from_node": self.name,
            "from_endpoint": self.endpoint_url, "role": cfg.role.value, "role_sequence": cfg.role_sequence,
            "end_lsn": database.log.last_lsn, "safety": cfg.safety.value, "timeout": cfg.timeout,
            "suspended": cfg.suspended, "listen": self.listen_address,
            "failover_lsn": cfg.failover_lsn, "witness": cfg.witness or "", "redo_queue_mb": cfg.redo_queue_mb,
        }
        fork_role_sequence = database.log.role_sequence_at(cfg.failover_lsn) if cfg.failover_lsn else None
        if fork_role_sequence is not None:  # a rejoining copy finds where its history parts from ours (core.history)
            hello["failover_role_sequence"] = fork_role_sequence
        return hello

    # ---------------------------------------------------------------- databases

    def database_dir(self, db: str) -> Path:
        """databases/<db>; ValueError unless db follows the name rule and the path stays inside."""
        if (why := db_name_refusal(db)) is not None:
            raise ValueError(why)
        return inside(self.databases_dir, db)

    async def create_database(self, config: SessionConfig, snapshot: tuple[Path, int, int] | None = None) -> Database:
        """Create the directory and meta of a new database and activate it.

        snapshot: (file, lsn, role_sequence) of a database image to start from (RESTORE).
        """
        directory = self.database_dir(config.db)
        if directory.exists():
            shutil.rmtree(directory)  # leftovers of an interrupted CREATE/DROP
        directory.mkdir(parents=True)
        database = Database(config.db, directory, Session(config), self.open_log(directory))
        if snapshot is not None:
            image, lsn, role_sequence = snapshot
            os.replace(image, directory / "db.sqlite")
            database.log.reset(lsn + 1, role_sequence)
            atomic_write_bytes(directory / "redo_lsn", str(lsn).encode())
        database.persist()
        await self._serve(database)
        return database

    async def drop_database(self, database: Database) -> None:
        """Remove a database and its files."""
        await self.deactivate(database)
        database.log.close()
        del self.databases[database.name]
        trash = database.directory.with_name(f".dropped-{database.name}-{os.getpid()}")
        os.replace(database.directory, trash)  # one atomic step; the rest is cleanup
        shutil.rmtree(trash, ignore_errors=True)


CANCEL_RETRY = 0.05


async def _cancel(task: asyncio.Task | None) -> None:
    """Cancel a link task and wait for it, unless it is the caller itself (a role change it started).

    Why cancel again until it ends: Python 3.11's asyncio.wait_for swallows a
    cancel that arrives just as the awaited thing completes, and a link loop
    then carries on forever (a witness link kept pinging, so ALTER ENDPOINT …
    STOPPED never returned).
    """
    if task is None or task is asyncio.current_task():
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_RETRY)
    if not task.cancelled():
        task.exception()  # retrieved: the link's own failure was logged where it happened


# -------------------------------------------------------------------- main

def loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The event loop's error handler: a TLS connection the peer reset is a closed connection, not a failure.

    uvloop's SSL protocol, on data arriving for a transport the peer's reset has
    just closed, reports "Fatal error on SSL protocol" with a RuntimeError ("the
    handler is closed") or a connection error, through the loop's handler, with a
    traceback. The connection is gone either way and its reader sees it end;
    anything else goes to the default handler, traceback and all.
    """
    exc = context.get("exception")
    message = str(context.get("message", ""))
    if message.startswith(("Fatal error on SSL", "Fatal error on transport")) and (
            isinstance(exc, ConnectionError) or (isinstance(exc, RuntimeError) and "handler is closed" in str(exc))):
        log.info("connection_closed_under_tls", reason=message.splitlines()[0], error=repr(exc))
        return
    loop.default_exception_handler(context)


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGTERM or SIGINT."""
    node = Node(config)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(node.stop()))
    try:
        await node.start()
    except BaseException:
        try:  # close what was opened (SQLite threads would keep the process alive), then fail at once
            await asyncio.wait_for(node.stop(), 10)
        except Exception as exc:  # noqa: BLE001 - the start's own error is the one to report
            log.warning("cleanup_after_failed_start", error=repr(exc))
        raise
    await node._stopped.wait()
    log.info("node_stopped")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run a node, or `mirrord certs …`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["certs"]:
        from mirrord import certs

        return certs.main(argv[1:])
    args = parse_args(argv)
    try:
        values, sources = NodeConfig.merged(args)
        node_config = NodeConfig._validated(values)
        if args.print_config:
            print(settings.render_toml(values, sources), end="")
            return 0
        if node_config.tls_dir is not None:
            TlsContexts.load(node_config.tls_dir, node_config.name)  # refuse here, before logging starts, with the reason
            node_config.data_dir.mkdir(parents=True, exist_ok=True)
            LoginStore.open(node_config.data_dir / "logins.msgpack", node_config.admin_password_file)  # sa, at the first start
    except (ValueError, OSError, tomllib.TOMLDecodeError, TlsSetupError, LoginSetupError) as exc:
        print(f"mirrord: bad configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(node_config.name, node_config.log_level)
    import uvloop

    try:
        uvloop.run(serve(node_config))
    except Exception as exc:  # noqa: BLE001 - reported as one line, never a traceback on stderr
        log.error("node_failed_to_start", error=str(exc) or repr(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
