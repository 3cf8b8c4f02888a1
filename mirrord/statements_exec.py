"""Carrying out statements: parse, ask the rules, then act (persisting first).

Every administrative statement goes through `core.rules.refusal` before it
touches anything, so a refused statement changes nothing. SQL goes to the
principal engine of the database, or is refused with the principal's address.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import structlog

from mirrord.core import events
from mirrord.core import logins as lg
from mirrord.core import redo_queue
from mirrord.core import snapshots as snap_core
from mirrord.core import statements as st
from mirrord.core.alerts import ALERTS
from mirrord.core.monitoring import set_threshold
from mirrord.core.names import db_name_refusal
from mirrord.core.values import check_params
from mirrord.core.rules import refusal
from mirrord.core.session import SessionConfig
from mirrord.core.txn import SP_WHO_COLUMNS, SessionFacts, TxnWord, classify, sp_who_row
from mirrord.core.types import (
    DatabaseStatus,
    DiskFull,
    LoginFailed,
    LogFull,
    PermissionDenied,
    NotPrincipal,
    NotServing,
    Role,
    StatementRefused,
    UnknownDatabase,
)
from mirrord.node_services import ClientState
from mirrord.engine.role_change import forced_service, on_event
from mirrord.core import role_statements
from mirrord.engine.principal import PageDamaged, StatementResult
from mirrord import views
from mirrord.storage import backups
from mirrord.storage.fileutil import NO_SPACE
from mirrord.storage.snapshot import SnapshotGone
from mirrord.storage.snapshot_reader import SnapshotReaders, run_snapshot_query
from mirrord.engine.write_lock import spid_of

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.node_services import NodeServices

log = structlog.get_logger()

ALERT_COLUMNS = ["database", "alert_id", "alert", "threshold", "unit", "enabled", "current_value", "over_threshold"]



def _message(text: str) -> StatementResult:
    result = StatementResult([], [], -1)
    result.message = text  # type: ignore[attr-defined]
    return result


class StatementExecutor:
    """Runs one statement from a client against the node."""

    def __init__(self, node: "NodeServices") -> None:
        self.node = node

    async def run(self, state: ClientState, owner: object, sql: str, db: str | None, params: Any) -> StatementResult:
        """Parse and run sql; raise a MirrordError subclass when it is refused."""
        stmt = st.parse(sql)
        login = self._login(state)
        if isinstance(stmt, st.Sql):
            check_params(params)  # 64-bit integers, bindable scalars: a `data` error, never an OverflowError
            target = db or state.db
            if target is not None and (found := self.node.snapshots().get(target)) is not None:
                return await self._snapshot_sql(login, found, stmt.text, params)
            if not lg.can_write(login, target or ""):
                if not lg.can_read(login, target or ""):
                    raise PermissionDenied(lg.access_refusal(login, lg.READ, target))
                return await self._sql(owner, stmt.text, target, params, read_only=lg.access_refusal(login, lg.WRITE, target))
            return await self._sql(owner, stmt.text, target, params)
        need = lg.statement_need(stmt, state.login)
        if need is not None and (why := lg.access_refusal(login, *need)) is not None:
            raise PermissionDenied(why)
        if isinstance(stmt, st.LOGIN_STATEMENTS):
            return self._login_statement(stmt)
        if isinstance(stmt, st.UseDatabase):
            if stmt.db not in self.node.snapshots():
                self._database(stmt.db)
            state.db = stmt.db
            return _message(f"database context changed to {stmt.db}")
        if isinstance(stmt, st.SelectSystemView):
            return views.system_view(self.node, stmt)
        if isinstance(stmt, st.SetStatementTimeout):
            state.statement_timeout_ms = stmt.ms or None
            shown = f"{stmt.ms} ms" if stmt.ms else "the node's default"
            return _message(f"statement timeout of this connection: {shown}")
        if isinstance(stmt, st.SetLockTimeout):
            owner.lock_timeout_ms = stmt.ms  # node_services.ClientOwner: the principals read it when a write waits
            shown = {-1: "wait forever", 0: "do not wait"}.get(stmt.ms, f"{stmt.ms} ms")
            return _message(f"lock timeout of this connection: {shown}")
        if isinstance(stmt, st.SpWho):
            return self._sp_who(state, stmt)
        if isinstance(stmt, st.AlterEndpoint):
            return await self._alter_endpoint(stmt)
        if isinstance(stmt, st.EndpointSecurity):
            return self._endpoint_security(stmt)
        if isinstance(stmt, st.TransactionStatus):
            return self._transaction_status(stmt)
        if isinstance(stmt, (st.ChangeAlert, st.HelpAlert, st.DropAlert)):
            return self._alert_statement(stmt)
        if isinstance(stmt, (st.CreateDatabase, st.DropDatabase, st.CreateSnapshot)):
            async with self.node.snapshot_lock:  # a snapshot's name is checked, then taken: one at a time
                return await self._database_statement(stmt)
        return await self._admin(stmt)

    async def _database_statement(self, stmt) -> StatementResult:
        """CREATE/DROP DATABASE, of a database or a snapshot: the names of both share one space, as in SQL Server."""
        snapshots = self.node.snapshots()
        name = stmt.name if isinstance(stmt, st.CreateSnapshot) else stmt.db
        if isinstance(stmt, st.DropDatabase) and name in snapshots:
            return await self._drop_snapshot(*snapshots[name], name)
        if isinstance(stmt, st.CreateDatabase) and name in snapshots:
            raise StatementRefused(f"{name} is a database snapshot on this node; DROP DATABASE {name} first to reuse the name")
        if isinstance(stmt, st.DropDatabase):
            database = self.node.databases.get(name)
            mine = sorted(n for n, (h, _) in snapshots.items() if h is database) if database is not None else []
            if (why := snap_core.drop_source_refusal(name, mine)) is not None:
                raise StatementRefused(why)
        if isinstance(stmt, st.CreateSnapshot):
            source = self.node.databases.get(stmt.db)
            if (why := refusal(source.session if source else None, stmt)) is not None:
                raise StatementRefused(why)
            taken = [*self.node.databases, *self.node.quarantined]
            if (why := snap_core.name_refusal(name, taken, snapshots)) is not None:
                raise StatementRefused(why)
        return await self._admin(stmt)

    async def _admin(self, stmt) -> StatementResult:
        """An administrative statement on a database: the rules first, then its handler."""
        database = self.node.databases.get(stmt.db)
        why = refusal(database.session if database else None, stmt)
        if why is not None:
            raise StatementRefused(why)
        handler = self.ADMIN[type(stmt)]
        try:
            result = await handler(self, database, stmt)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            # Settings are persisted before they are adopted (update_config): a full disk leaves them as they were.
            raise DiskFull(f"the disk of this node is full ({exc.strerror}): {type(stmt).__name__} could not be "
                           "recorded and did not take effect; try again once space is freed") from None
        log.info("statement_done", database=stmt.db, statement=type(stmt).__name__, detail=result.message)
        return result

    async def run_many(self, state: ClientState, owner: object, sql: str, db: str | None, many: list) -> StatementResult:
        """executemany: run sql once per parameter set, in order, stopping at the first error (which is raised).

        The rows changed add up; the last set's result gives the rest. Each set
        runs as `run` would run it: inside the client's transaction when one is
        open (the driver opens one unless in autocommit), else each commits.
        """
        total, result = 0, StatementResult([], [], -1)
        for params in many:
            result = await self.run(state, owner, sql, db, params)
            total += max(result.rowcount, 0)
        result.rowcount = total if many else -1
        return result

    def _sp_who(self, state: ClientState, stmt: st.SpWho) -> StatementResult:
        """EXEC sp_who: a row per session and database it holds or waits for; a sysadmin sees all, others their own login's."""
        login = self._login(state)
        everyone = login is None or login.sysadmin  # --insecure: no logins, everyone sees everything
        rows = []
        for spid, conn in sorted(self.node.connections.items()):
            if not everyone and conn.state.login != state.login:
                continue
            if (stmt.spid is not None and spid != stmt.spid) or (stmt.login is not None and conn.state.login != stmt.login):
                continue
            rows.extend(sp_who_row(f) for f in self._session_facts(conn))
        return StatementResult(SP_WHO_COLUMNS, rows, len(rows))

    def _session_facts(self, conn) -> list[SessionFacts]:
        """What one connection holds and waits for, database by database (one row without a transaction)."""
        owner, now = conn.owner, time.monotonic()
        running = owner.running is not None
        facts = []
        for database in self.node.databases.values():
            principal = database.principal
            if principal is None:
                continue
            kind = principal.transaction_of(owner)
            lock = principal.write_lock
            waiting = lock.waiting(owner)
            if waiting is not None:
                holder = lock.holder
                blk = (spid_of(holder.owner) or 0) if holder is not None else 0  # 0: mirrord itself, or released
                facts.append(SessionFacts(owner.spid, conn.state.login, database.name, kind, blk, now - waiting.since,
                                          running, owner.last_statement))
            elif kind is not None:
                holder = lock.holder
                held = now - holder.since if holder is not None and holder.owner is owner else 0.0
                facts.append(SessionFacts(owner.spid, conn.state.login, database.name, kind, None, held, running,
                                          owner.last_statement))
        return facts or [SessionFacts(owner.spid, conn.state.login, conn.state.db, None, None, 0.0, running,
                                      owner.last_statement)]

    def _login(self, state: ClientState) -> "lg.Login | None":
        """The connection's login as the table has it now (a dropped login is out at its next statement)."""
        if self.node.logins is None:
            return None  # --insecure: no logins
        login = self.node.logins.table.get(state.login or "")
        if login is None:
            raise LoginFailed(f"login {state.login} no longer exists; reconnect with another login")
        return login

    # ---------------------------------------------------------------- logins

    def _login_statement(self, stmt) -> StatementResult:
        """CREATE/ALTER/DROP LOGIN, GRANT/REVOKE, ALTER SERVER ROLE: change the table, persist, pass it on."""
        store = self.node.logins
        if store is None:
            raise StatementRefused("this node runs with --insecure and has no logins; restart it with --tls-dir DIR")
        if isinstance(stmt, st.CreateLogin):
            how, done = (lambda t, salt: lg.create_login(t, stmt.name, stmt.password, salt)), f"login {stmt.name} created"
        elif isinstance(stmt, st.AlterLogin):
            how, done = (lambda t, salt: lg.alter_password(t, stmt.name, stmt.password, salt)), f"password of {stmt.name} changed"
        elif isinstance(stmt, st.DropLogin):
            how, done = (lambda t, salt: lg.drop_login(t, stmt.name)), f"login {stmt.name} dropped"
        elif isinstance(stmt, st.GrantDatabase):
            how = lambda t, salt: lg.grant(t, stmt.login, stmt.right, stmt.db, stmt.granted)  # noqa: E731
            done = f"{stmt.right} on {stmt.db} {'granted to' if stmt.granted else 'revoked from'} {stmt.login}"
        else:
            how = lambda t, salt: lg.set_sysadmin(t, stmt.login, stmt.add)  # noqa: E731
            done = f"{stmt.login} {'added to' if stmt.add else 'dropped from'} sysadmin"
        try:
            store.change(how)
        except ValueError as exc:
            raise StatementRefused(str(exc)) from None
        log.info("statement_done", statement=type(stmt).__name__, detail=done, logins_version=store.table.version)
        return _message(f"{done}; login table version {store.table.version}, passed on to the partners")

    def _database(self, db: str | None) -> "Database":
        if db is None:
            raise StatementRefused("no database selected: pass -d DB, or run USE db first")
        if (why := db_name_refusal(db)) is not None:
            raise UnknownDatabase(why)
        database = self.node.databases.get(db)
        if db in self.node.quarantined:  # also while one quarantined by a full disk is loaded again: not open yet
            hint = ("it loads by itself once there is room" if db in self.node.loading_when_room
                    else "fix or remove its directory and restart the node")
            raise StatementRefused(f"database {db} is quarantined on this node: {self.node.quarantined[db]}; {hint}")
        if database is None and db in self.node.dropped_snapshots:
            raise UnknownDatabase(f"database snapshot {db} was dropped on this node ({self.node.name}): "
                                  f"{self.node.dropped_snapshots[db]}")
        if database is None:
            raise UnknownDatabase(f"database {db} does not exist on this node ({self.node.name})")
        return database

    # ---------------------------------------------------------------- SQL

    async def _sql(self, owner: object, sql: str, db: str | None, params: Any, read_only: str | None = None) -> StatementResult:
        """Run SQL on the principal; read_only, when set, is why this login may not write (reads only)."""
        database = self._database(db)
        try:
            return await self._sql_on(database, owner, sql, db, params, read_only)
        except (NotPrincipal, StatementRefused, LogFull) as exc:
            self.node.metrics.count_refused(database.name, exc.code)
            raise
        except PageDamaged as exc:  # the statement failed, the session goes on; the page is fetched from the mirror
            from mirrord.engine import page_repair
            from mirrord.engine.checkmirror import check

            page_repair.principal_damaged(database, exc.io_error, lambda: check(
                database, self.node.config.checkmirror_rate_mb, self.node.metrics.count_checkmirror))
            raise

    async def _sql_on(self, database: "Database", owner: object, sql: str, db: str, params: Any,
                      read_only: str | None = None) -> StatementResult:
        if database.principal is None:
            cfg = database.session.config
            if cfg.role is Role.MIRROR:
                principal = database.session.partner_listen or cfg.partner
                raise NotPrincipal(
                    f"database {db} is the mirror on {self.node.name}; send SQL to the principal, {principal}",
                    principal=principal,
                )
            if cfg.role is Role.PRINCIPAL:
                # promotion or restart: the role is decided, the copy is still being opened (redo finishing)
                raise NotServing(f"database {db} is opening as the principal on {self.node.name} "
                                 "(role change or restart in progress); retry in a moment")
            raise StatementRefused(f"database {db} is RESTORING; RESTORE DATABASE {db} WITH RECOVERY brings it online")
        if read_only:
            return await database.principal.execute_read_only(sql, params, read_only, owner)
        return await database.principal.execute(owner, sql, params)

    # ---------------------------------------------------------------- databases

    async def _do_CreateDatabase(self, database, stmt) -> StatementResult:
        await self.node.create_database(SessionConfig(stmt.db))
        return _message(f"database {stmt.db} created")

    async def _do_DropDatabase(self, database, stmt) -> StatementResult:
        await self.node.drop_database(database)
        return _message(f"database {stmt.db} dropped")

    # ---------------------------------------------------------------- database snapshots

    async def _do_CreateSnapshot(self, database, stmt) -> StatementResult:
        started = time.monotonic()
        if database.mirror is None:
            raise StatementRefused(f"{stmt.db} has no mirror copy being redone here; a snapshot is made of one")
        async with database.role_change:  # no promotion or step-down stops the copy's redo half way through
            if database.mirror is None or database.session.config.role is not Role.MIRROR:
                raise StatementRefused(f"{stmt.db} stopped being the mirror here; a snapshot is made of a mirror's copy")
            try:
                meta = await asyncio.to_thread(database.mirror.create_snapshot, stmt.name, events.utc_text(time.time()))
            except RuntimeError as exc:
                raise StatementRefused(str(exc)) from None
        ms = (time.monotonic() - started) * 1000
        self.node.dropped_snapshots.pop(stmt.name, None)
        detail = (f"database snapshot {stmt.name} of {stmt.db} as of LSN {meta.lsn}: {meta.page_count} pages of "
                  f"{meta.page_size} bytes, none copied")
        database.record_event("SNAPSHOT_CREATED", detail, lsn=meta.lsn)
        return _message(f"{detail} (in {ms:.0f} ms); query it with -d {stmt.name}")

    async def _drop_snapshot(self, database, snap, name: str) -> StatementResult:
        if database.mirror is None or name not in database.mirror.snapshots:
            raise UnknownDatabase(f"database snapshot {name} does not exist on this node")
        await asyncio.to_thread(database.mirror.drop_snapshot, name, "DROP DATABASE")
        self.node.snapshot_dropped(database, name, "DROP DATABASE")
        log.info("statement_done", database=database.name, statement="DropDatabase", detail=f"database snapshot {name} dropped")
        return _message(f"database snapshot {name} of {database.name} dropped")

    async def _snapshot_sql(self, login, found, sql: str, params: Any) -> StatementResult:
        """SQL on a database snapshot: reads only, as of its LSN; a login reads it if it may read the database."""
        database, snap = found
        name, meta = snap.meta.name, snap.meta
        if not lg.can_read(login, database.name) and not lg.can_read(login, name):
            raise PermissionDenied(lg.access_refusal(login, lg.READ, database.name))
        if classify(sql) in (TxnWord.BEGIN, TxnWord.COMMIT, TxnWord.ROLLBACK):
            return StatementResult([], [], -1)  # nothing changes a snapshot: every statement reads the same data
        try:
            columns, rows, types = await run_snapshot_query(SnapshotReaders.of(snap), sql, params)
        except SnapshotGone:
            why = self.node.dropped_snapshots.get(name, "it was dropped, or its database is changing role")
            raise NotServing(f"database snapshot {name} is no longer served here: {why}") from None
        except StatementRefused as exc:
            if "read-only" in exc.message:
                raise StatementRefused(snap_core.READ_ONLY_REFUSAL.format(name=name, db=database.name, lsn=meta.lsn)) from None
            raise
        result = StatementResult(columns, rows, -1)
        result.types = types
        return result

    # ---------------------------------------------------------------- partner

    async def _do_SetPartner(self, database, stmt) -> StatementResult:
        url, status = str(stmt.endpoint), database.session.config.status if database is not None else None
        await on_event(self.node, database, role_statements.PartnerSet(stmt.db, url))
        if status is None:
            return _message(f"{stmt.db} is the mirror of {url}; it will be seeded when the principal connects")
        if status is DatabaseStatus.RESTORING:
            return _message(f"{stmt.db} is the mirror of {url}")
        return _message(f"{stmt.db} is the principal; mirroring to {url}")

    async def _do_PartnerAction(self, database, stmt) -> StatementResult:
        return await self.PARTNER_ACTIONS[stmt.action](self, database)

    async def _partner_off(self, database: "Database") -> StatementResult:
        was, old = database.session.role, database.session.config.partner
        await on_event(self.node, database, role_statements.PartnerOffIssued())
        if was is Role.PRINCIPAL:
            return _message(f"mirroring of {database.name} removed; it is a standalone database (the mirror {old} is told "
                            "now, or as soon as it can be reached)")
        return _message(f"mirroring of {database.name} removed on both partners; the copy stays RESTORING until RESTORE DATABASE {database.name} WITH RECOVERY")

    async def _partner_suspend(self, database: "Database") -> StatementResult:
        was = database.session.role
        await on_event(self.node, database, role_statements.SuspendIssued(self.node.name))
        if was is Role.MIRROR:  # the principal's settings are the session's: it suspends, we adopt
            return _message(f"mirroring of {database.name} SUSPENDED by the principal at the mirror's request")
        return _message(f"mirroring of {database.name} SUSPENDED; the log grows until RESUME")

    async def _partner_resume(self, database: "Database") -> StatementResult:
        was = database.session.role
        await on_event(self.node, database, role_statements.ResumeIssued())
        if was is Role.MIRROR:
            return _message(f"mirroring of {database.name}: RESUME sent to the principal, which resumes the session")
        return _message(f"mirroring of {database.name} resumed")

    async def _partner_failover(self, database: "Database") -> StatementResult:
        await on_event(self.node, database, role_statements.FailoverIssued())  # refused, in doubt, or stepped down
        s = database.session
        return _message(f"manual failover of {database.name} complete: the principal is now "
                        f"{s.partner_listen or s.config.partner}; this node is the mirror")

    async def _partner_force_service_allow_data_loss(self, database: "Database") -> StatementResult:
        await forced_service(self.node, database)
        cfg = database.session.config
        return _message(
            f"forced service: {database.name} is principal here in role sequence {cfg.role_sequence}, a new recovery fork from LSN {cfg.failover_lsn}; "
            "anything the old principal held past that is lost unless salvaged when it returns"
        )

    async def _do_CheckMirror(self, database, stmt) -> StatementResult:
        from mirrord.engine.checkmirror import check
        from mirrord.core.checkmirror import ROW_COLUMNS

        verdict = await check(database, self.node.config.checkmirror_rate_mb, self.node.metrics.count_checkmirror)
        row = verdict.row()
        result = StatementResult(ROW_COLUMNS, [[row[c] for c in ROW_COLUMNS]], 1)
        result.message = verdict.message()  # type: ignore[attr-defined]
        return result

    async def _do_SetSafety(self, database, stmt) -> StatementResult:
        await on_event(self.node, database, role_statements.SafetySet(stmt.safety))
        return _message(f"{database.name}: SAFETY {stmt.safety.value}")

    async def _do_SetTimeout(self, database, stmt) -> StatementResult:
        await on_event(self.node, database, role_statements.TimeoutSet(stmt.seconds))  # a longer one: the witness hears first
        return _message(f"{database.name}: PARTNER TIMEOUT {stmt.seconds} s")

    async def _do_SetRedoQueue(self, database, stmt) -> StatementResult:
        await on_event(self.node, database, role_statements.RedoQueueSet(stmt.mb, self.node.config.log_size_limit))
        limit, kind = redo_queue.shown_limit(stmt.mb)
        return _message(f"{database.name}: PARTNER REDO_QUEUE {'UNLIMITED' if limit is None else f'{limit} {kind}'}")

    async def _do_SetWitness(self, database, stmt) -> StatementResult:
        url = str(stmt.endpoint) if stmt.endpoint is not None else None
        await on_event(self.node, database, role_statements.WitnessSet(url))
        if url is None:
            return _message(f"{database.name}: witness removed; automatic failover is no longer possible")
        return _message(f"{database.name}: witness {url} set")

    # ---------------------------------------------------------------- endpoint

    async def _alter_endpoint(self, stmt) -> StatementResult:
        if stmt.name.lower() != self.node.config.endpoint_name.lower():
            raise StatementRefused(f"this node has no endpoint named {stmt.name}; its endpoint is {self.node.config.endpoint_name}")
        if stmt.started:
            await self.node.start_endpoint()
            return _message(f"endpoint {stmt.name} STARTED on {self.node.endpoint_url}")
        await self.node.stop_endpoint()
        return _message(f"endpoint {stmt.name} STOPPED; every mirroring connection of this node is closed")

    def _endpoint_security(self, stmt) -> StatementResult:
        """The reference's AUTHENTICATION/ENCRYPTION: mirrord's endpoint is certificate-authenticated and encrypted, only."""
        if stmt.name.lower() != self.node.config.endpoint_name.lower():
            raise StatementRefused(f"this node has no endpoint named {stmt.name}; its endpoint is {self.node.config.endpoint_name}")
        if stmt.authentication == "WINDOWS":
            raise StatementRefused("AUTHENTICATION = WINDOWS is not available: endpoints authenticate with certificates "
                                   "signed by the cluster's CA (AUTHENTICATION = CERTIFICATE)")
        if stmt.encryption in ("SUPPORTED", "DISABLED"):
            raise StatementRefused(f"ENCRYPTION = {stmt.encryption} is not offered: the endpoint's mutual TLS 1.3 always "
                                   "encrypts (TLS 1.3 has no authenticated-only mode), so REQUIRED is the only setting; "
                                   "a node without TLS is one started with --insecure")
        if self.node.tls is None:
            raise StatementRefused(f"this node was started with --insecure: its endpoint has no certificate and no "
                                   f"encryption; restart it with --tls-dir DIR for AUTHENTICATION = CERTIFICATE, ENCRYPTION = REQUIRED")
        return _message(f"endpoint {stmt.name}: AUTHENTICATION = CERTIFICATE, ENCRYPTION = REQUIRED (mutual TLS 1.3), "
                        "as it already was")

    # ---------------------------------------------------------------- backup / restore

    async def _do_BackupDatabase(self, database, stmt) -> StatementResult:
        base = self.node.config.backups
        try:
            backups.resolve(base, stmt.path, "BACKUP")  # refused before the snapshot is taken
        except backups.BackupPathRefused as exc:
            raise StatementRefused(str(exc)) from None
        tmp = database.directory / "backup-snapshot.tmp"
        try:
            lsn, role_sequence = await database.principal.snapshot_to(tmp)
            dest = await asyncio.to_thread(backups.write_backup, tmp, base, stmt.path, database.name, lsn, role_sequence)
        except backups.BackupPathRefused as exc:
            raise StatementRefused(str(exc)) from None
        except OSError as exc:
            raise StatementRefused(f"cannot write the backup {stmt.path!r}: {exc.strerror or exc}") from None
        finally:
            # off the event loop: freeing a large file's blocks takes long enough to stall every commit
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
        return _message(f"database {database.name} backed up to {dest} at LSN {lsn}")

    async def _do_RestoreDatabase(self, database, stmt) -> StatementResult:
        if stmt.path is None:
            return await self._recover(database)
        tmp = self.node.databases_dir / f".restore-{stmt.db}.tmp"
        try:
            header = await asyncio.to_thread(backups.read_backup, self.node.config.backups, stmt.path, tmp)
        except backups.BackupPathRefused as exc:
            tmp.unlink(missing_ok=True)
            raise StatementRefused(str(exc)) from None
        except (OSError, backups.BackupDamaged) as exc:
            tmp.unlink(missing_ok=True)
            raise StatementRefused(f"cannot restore from {stmt.path!r}: {exc}") from None
        status = DatabaseStatus.ONLINE if stmt.recovery else DatabaseStatus.RESTORING
        config = SessionConfig(stmt.db, status=status, role_sequence=header["role_sequence"])
        await self.node.create_database(config, snapshot=(tmp, header["lsn"], header["role_sequence"]))
        state = "ONLINE" if stmt.recovery else "RESTORING (WITH NORECOVERY: ready to be a mirror)"
        return _message(f"database {stmt.db} restored from {stmt.path} at LSN {header['lsn']}; {state}")

    async def _recover(self, database: "Database") -> StatementResult:
        if not (database.directory / "db.sqlite").exists():
            raise StatementRefused(f"database {database.name} has no copy yet (it was never seeded); nothing to recover")
        await self.node.deactivate(database)
        database.update_config(status=DatabaseStatus.ONLINE, role=Role.NONE)
        await self.node.activate(database)
        return _message(f"database {database.name} is ONLINE at LSN {database.log.last_lsn}")

    # ---------------------------------------------------------------- transaction tokens

    def _transaction_status(self, stmt) -> StatementResult:
        """Did the commit with token (lsn, role sequence) survive in this node's history?

        COMMITTED: this node's log holds that LSN from that role sequence.
        LOST: it holds that LSN from another role sequence (a fork replaced it),
        or it is a principal whose log ends before it, or it is an old principal
        whose log past the fork is diverged (lost_lsn_range). NOT_YET: a mirror that
        has not received it (ask the principal). UNKNOWN: the log no longer
        goes back that far.
        """
        database = self._database(stmt.db)
        cfg = database.session.config
        end = database.log.last_lsn
        role_sequence = database.log.role_sequence_at(stmt.lsn) if 0 < stmt.lsn <= end else None
        if cfg.lost_lsn_to and cfg.lost_lsn_from <= stmt.lsn <= cfg.lost_lsn_to:
            status = "LOST"  # still in this copy's log, but not in the session's history: the new principal forked before it
        elif stmt.lsn > end or stmt.lsn < 1:
            status = "NOT_YET" if database.session.role is Role.MIRROR else "LOST"
        elif role_sequence is None:
            status = "UNKNOWN"
        else:
            status = "COMMITTED" if role_sequence == stmt.role_sequence else "LOST"
        columns = ["database", "lsn", "role_sequence", "status", "node_role", "current_role_sequence", "end_of_log_lsn"]
        row = [stmt.db, stmt.lsn, stmt.role_sequence, status, database.session.role.value, database.session.config.role_sequence, end]
        return StatementResult(columns, [row], 1)

    # ---------------------------------------------------------------- monitor alerts

    def _alert_statement(self, stmt) -> StatementResult:
        """sp_dbmmonitorchangealert / helpalert / dropalert: this node's warning thresholds for a database."""
        database = self._database(stmt.db)
        current = database.session.config.alerts
        if isinstance(stmt, st.ChangeAlert):
            database.update_config(alerts=set_threshold(current, stmt.alert_id, stmt.threshold, stmt.enabled))
            alert = ALERTS[stmt.alert_id]
            state = "enabled" if stmt.enabled else "disabled"
            log.info("statement_done", database=stmt.db, statement="ChangeAlert", alert_id=stmt.alert_id, threshold=stmt.threshold, enabled=stmt.enabled)
            return _message(f"{stmt.db}: alert {stmt.alert_id} ({alert.name}) threshold {stmt.threshold} {alert.unit}, {state}, on {self.node.name}")
        if isinstance(stmt, st.DropAlert):
            kept = tuple(t for t in current if stmt.alert_id is not None and t[0] != stmt.alert_id)
            database.update_config(alerts=kept)
            which = "every alert" if stmt.alert_id is None else f"alert {stmt.alert_id}"
            return _message(f"{stmt.db}: {which} dropped on {self.node.name}")
        figs = views.status_row(database)
        rows = []
        for alert_id, threshold, enabled in current:
            if stmt.alert_id is not None and alert_id != stmt.alert_id:
                continue
            alert = ALERTS[alert_id]
            raw = figs.get(alert.figure)
            value = None if raw is None else round(raw / alert.scale, 2)
            rows.append([stmt.db, alert_id, alert.name, threshold, alert.unit, enabled, value,
                         bool(enabled and value is not None and value > threshold)])
        return StatementResult(ALERT_COLUMNS, rows, len(rows))

    # ---------------------------------------------------------------- status


    # Every administrative statement on a database, and what carries it out once core.rules allowed it
    # (the statements of the connection itself — USE, SET …_TIMEOUT, logins, views — are answered in run).
    ADMIN: dict[type, Callable[..., Awaitable[StatementResult]]] = {
        st.CreateDatabase: _do_CreateDatabase,
        st.DropDatabase: _do_DropDatabase,
        st.CreateSnapshot: _do_CreateSnapshot,
        st.SetPartner: _do_SetPartner,
        st.PartnerAction: _do_PartnerAction,
        st.CheckMirror: _do_CheckMirror,
        st.SetSafety: _do_SetSafety,
        st.SetTimeout: _do_SetTimeout,
        st.SetRedoQueue: _do_SetRedoQueue,
        st.SetWitness: _do_SetWitness,
        st.BackupDatabase: _do_BackupDatabase,
        st.RestoreDatabase: _do_RestoreDatabase,
    }
    # ALTER DATABASE … SET PARTNER { OFF | SUSPEND | RESUME | FAILOVER | FORCE_SERVICE_ALLOW_DATA_LOSS }
    PARTNER_ACTIONS: dict[str, Callable[..., Awaitable[StatementResult]]] = {
        "OFF": _partner_off,
        "SUSPEND": _partner_suspend,
        "RESUME": _partner_resume,
        "FAILOVER": _partner_failover,
        "FORCE_SERVICE_ALLOW_DATA_LOSS": _partner_force_service_allow_data_loss,
    }
