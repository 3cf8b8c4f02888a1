"""The mirror's side of the link: accept the principal, harden its log, acknowledge.

The mirror reads whatever bytes have arrived, decodes every complete frame in
them, and hardens all the log records they carry with one fsync before one
acknowledgement: under load many principal frames share one disk flush.
Silence longer than PARTNER TIMEOUT, like a reset, ends the connection and the
session goes DISCONNECTED; the principal dials again when it can.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from mirrord.engine import checkmirror, page_repair
from mirrord.core.history import shared_history_end
from mirrord.core import leases, messages, redo_queue, roles
from mirrord.core.types import ProtocolError
from mirrord.engine.database import role_view
from mirrord.engine.monitor import monitor_of, note_connected, partner_report
from mirrord.net import framing
from mirrord.storage.fileutil import DISK_RESERVE_BYTES, NO_SPACE, disk_free
from mirrord.storage.log import MAX_PAGE_COUNT, LogRecord, _check_pages, check_page_size

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.node_services import EndpointServices

log = structlog.get_logger()

READ_CHUNK = 1 << 20


def refusal_for_hello(node: "EndpointServices", database: "Database | None", hello: dict) -> roles.RefuseHello | None:
    """Why this node will not mirror for the principal that said hello (core.roles decides), or None."""
    db = hello["db"]
    if database is None:
        return roles.RefuseHello(
            f"database {db} is not prepared on {node.name}: run ALTER DATABASE {db} SET PARTNER = "
            f"'{hello['from_endpoint']}' on {node.name} first")
    [answer] = roles.handle(role_view(database, node.endpoint_url),
                            roles.PartnerHello(db, node.name, hello["from_endpoint"], hello["role_sequence"]))
    if isinstance(answer, roles.RefuseHello):
        return answer
    return _room_refusal(node, database)


def _room_refusal(node: "EndpointServices", database: "Database") -> roles.RefuseHello | None:
    """The mirror serves its principal only with room to harden its log: under its log's limit, its disk's reserve free."""
    if (full := database.mirror.log_full_refusal()) is not None:
        database.session.note_reason(full, time.strftime("%H:%M:%S"))
        return roles.RefuseHello(f"{full}; it takes log again by itself once redo has caught up on {node.name}")
    free = disk_free(database.directory)
    if free < DISK_RESERVE_BYTES:
        why = f"mirror disk full ({free >> 20} MB free, {DISK_RESERVE_BYTES >> 20} MB needed): it cannot harden log"
        database.session.note_reason(why, time.strftime("%H:%M:%S"))
        return roles.RefuseHello(f"{why}; it takes log again by itself once space is freed on {node.name}")
    return None


class FailoverRequested(Exception):
    """The principal asked this mirror to take over (manual failover)."""

    def __init__(self, role_sequence: int, failover_lsn: int) -> None:
        super().__init__(role_sequence, failover_lsn)
        self.role_sequence, self.failover_lsn = role_sequence, failover_lsn


async def serve_principal(node: "EndpointServices", database: "Database", hello: dict, reader, writer) -> None:
    """Run the mirror's side of one connection from the principal, until it fails."""
    session = database.session
    await _hear(node, database, _settings(hello))
    await _hear(node, database, roles.PrincipalLinked(hello["role_sequence"]))
    mirror = database.mirror
    fork = _fork_found(database, hello)  # the log does not change before the welcome: one search serves both
    shared = roles.diverged_end(fork) if fork is not None else None
    if fork is not None:
        await _hear(node, database, fork)  # before the principal decides anything: what this copy loses is recorded
    welcome = {
        "t": "welcome", "db": database.name, "role_sequence": session.config.role_sequence,
        "hardened_lsn": mirror.hardened_lsn, "hardened_role_sequence": database.log.last_role_sequence,
        "redo_lsn": mirror.redo_lsn, "needs_seed": not mirror.path.exists(), "listen": node.listen_address,
    }
    diverged = _diverged_pages(database, shared)
    if diverged is not None:
        welcome["diverged_pages"] = diverged  # the principal can rewind this copy instead of copying it whole
        welcome["shared_lsn"] = shared  # ... sending the pages either side changed past it
    if database.logins is not None:
        welcome["logins"] = database.logins.wire()  # the principal adopts it if it is newer than its own
    framing.write_message(writer, welcome)
    session.hear(leases.AnsweredPrincipal(time.monotonic()))  # the welcome grants the principal its mirror lease
    if session.redo_error is not None:
        framing.write_message(writer, {"t": "suspend", "reason": session.redo_error})  # it outlives every reconnect
    await writer.drain()
    session.note_principal_linked(hello.get("listen") if isinstance(hello.get("listen"), str) else None)
    database.partner_writer = writer
    database.note_state()
    page_repair.send_requests(database)  # pages found damaged while the principal was away
    database.record_event("PARTNER_CONNECTED", f"the principal {hello['from_endpoint']} connected", lsn=mirror.hardened_lsn)
    log.info("principal_connected", database=database.name, role="MIRROR", role_sequence=session.config.role_sequence, lsn=mirror.hardened_lsn)
    reporter = RedoReporter(database, writer)
    mirror.on_redo_progress = reporter.progressed
    try:
        await _receive_loop(node, database, reader, writer)
    finally:
        reporter.close()
        if mirror.on_redo_progress == reporter.progressed:
            mirror.on_redo_progress = None
        database.partner_writer = None
        checkmirror.cancel_answers(database)  # no answer can reach the principal: redo must not stay held
        page_repair.link_lost(database)  # pages asked for are asked again on the next connection
        session.note_partner_lost()
        database.note_state()
        database.poke()  # a lost principal may mean automatic failover


async def _receive_loop(node: "EndpointServices", database: "Database", reader, writer) -> None:
    decoder = framing.FrameDecoder()
    seed: dict | None = None
    counted = False
    while True:
        data = await _read_or_silence(reader, database.session.config.timeout)
        if not data:
            raise ConnectionError("the principal closed the connection")
        if not counted:  # SET PARTNER's probe says hello and leaves: only a link that talks counts as a connection
            note_connected(database)
            counted = True
        decoder.feed(data)
        records: list[LogRecord] = []
        while (msg := decoder.next_message()) is not None:
            msg = messages.validate(msg)
            seed = await _handle(node, database, msg, writer, records, seed)
        if records:
            if (full := database.mirror.log_full_refusal()) is not None:
                # as a full disk: nothing more is hardened, the principal goes on without us and redials;
                # hellos are refused until redo has emptied enough of the log
                database.session.note_reason(full, time.strftime("%H:%M:%S"))
                database.session.note_cannot_harden()
                log.warning("mirror_log_full", database=database.name, log_bytes=database.log.size_bytes,
                            limit=database.mirror.log_size_limit, redo_lsn=database.mirror.redo_lsn)
                raise ConnectionError(full)
            try:
                hardened = await database.mirror.harden(records, redo_now=False)
            except OSError as exc:
                if exc.errno not in NO_SPACE:
                    raise
                # the principal goes on without us (exposed, under the witness rule) and redials;
                # hellos are refused until there is room again, then it catches up by itself
                database.session.note_reason(f"mirror disk full ({exc.strerror}): it cannot harden log", time.strftime("%H:%M:%S"))
                database.session.note_cannot_harden()
                raise ConnectionError(f"disk full: cannot harden log ({exc.strerror})") from None
            try:
                framing.write_message(writer, {"t": "ack", "hardened_lsn": hardened, "redo_lsn": database.mirror.redo_lsn,
                                               "redo_queue": database.mirror.redo_queue_bytes})
            finally:
                database.mirror.redo_hardened()  # once the ack is on its way (MirrorDatabase.harden)
        await writer.drain()


class RedoReporter:
    """Tells the principal how far redo got while a REDO_QUEUE limit is set (core.redo_queue).

    Its commits may be held until the redo queue drains, and then no log
    arrives to be acknowledged: without this, they would wait for the next
    pong. One `redo_progress` frame per REPORT_INTERVAL at most, however many
    records redo applies meanwhile; none at all without a limit.
    """

    def __init__(self, database: "Database", writer) -> None:
        self._database, self._writer = database, writer
        self._timer: asyncio.TimerHandle | None = None

    def progressed(self) -> None:
        """Redo went further: report it within REPORT_INTERVAL, if a limit is set."""
        if self._timer is not None or self._database.session.config.redo_queue_mb == redo_queue.UNLIMITED:
            return
        self._timer = asyncio.get_running_loop().call_later(redo_queue.REPORT_INTERVAL, self._send)

    def _send(self) -> None:
        self._timer = None
        mirror = self._database.mirror
        if mirror is None or self._writer.is_closing():
            return
        framing.write_message(self._writer, {"t": "redo_progress", "redo_lsn": mirror.redo_lsn,
                                             "redo_queue": mirror.redo_queue_bytes})

    def close(self) -> None:
        """The link ended: report nothing more on it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


SILENCE_GRACE = 0.1


async def _read_or_silence(reader, timeout: float) -> bytes:
    """The next bytes from the principal; TimeoutError only if it stayed silent for timeout.

    Why a second, short read: a timer that fires the moment this process
    resumes (SIGSTOP, a long pause) does not prove the principal silent. Bytes
    may be waiting in the socket, and behind TLS they reach the stream only
    after the decryption callback, one loop iteration after the timer; without
    this the mirror dropped a FAILOVER it already held.
    """
    try:
        async with asyncio.timeout(timeout):  # a timer, where wait_for would add a task per read
            return await reader.read(READ_CHUNK)
    except TimeoutError:
        async with asyncio.timeout(SILENCE_GRACE):
            return await reader.read(READ_CHUNK)


def _expect_open(opened: dict | None, begin: str, kind: str) -> None:
    """A seed's or a rewind's frames come between its begin and its end, and no other's."""
    if opened is None or opened.get("t") != begin:
        raise ProtocolError(f"{kind} without {begin}")


def _copy_installed(database: "Database", writer, lsn: int) -> None:
    """A seed or a rewind made this copy the principal's at lsn: acknowledge it."""
    if database.session.config.lost_lsn_to:
        database.update_config(lost_lsn_from=0, lost_lsn_to=0)  # rolled back; the salvage copy stays
    framing.write_message(writer, {"t": "ack", "hardened_lsn": lsn, "redo_lsn": lsn})


async def _handle(node: "EndpointServices", database: "Database", msg: dict, writer, records: list,
                  seed: dict | None) -> dict | None:
    kind = msg["t"]
    if kind == "log":
        batch = [LogRecord.from_wire(r) for r in msg["records"]]
        database.mirror.check_records(batch)  # before anything of this read is hardened: a bad record changes nothing
        records.extend(batch)
        _adopt_principal_view(database, msg)
    elif kind == "ping":
        _adopt_principal_view(database, msg)
        framing.write_message(writer, {"t": "pong", "seq": msg["seq"], "redo_lsn": database.mirror.redo_lsn,
                                       "redo_queue": database.mirror.redo_queue_bytes, "monitor": partner_report(database)})
        database.session.hear(leases.AnsweredPrincipal(time.monotonic()))  # a pong renews the principal's mirror lease
    elif kind == "settings":
        await _hear(node, database, _settings(msg))
    elif kind == "seed_begin":
        _check_seed(msg)
        database.mirror.seed_begin()
        return msg
    elif kind == "seed_chunk":
        _expect_open(seed, "seed_begin", kind)
        await asyncio.to_thread(database.mirror.seed_chunk, msg["offset"], msg["data"], seed["size"])  # it syncs now and then
    elif kind == "seed_end":
        _expect_open(seed, "seed_begin", kind)
        await database.mirror.seed_end(seed["lsn"], seed["role_sequence"], seed["size"], msg["crc"])
        _copy_installed(database, writer, seed["lsn"])
        page_repair.copy_replaced(database, whole=True)
        return None
    elif kind == "rewind_begin":
        check_page_size("rewind_begin", msg["page_size"])
        if not 1 <= msg["db_size"] <= MAX_PAGE_COUNT:
            raise ProtocolError(f"rewind_begin: db_size {msg['db_size']} is not in 1..{MAX_PAGE_COUNT}")
        await asyncio.to_thread(database.mirror.rewind_begin, msg["page_size"])
        return msg
    elif kind == "rewind_pages":
        _expect_open(seed, "rewind_begin", kind)
        pages = _check_pages(seed["lsn"], seed["page_size"], msg["pages"], MAX_PAGE_COUNT)
        if any(pgno > seed["db_size"] for pgno, _ in pages):
            raise ProtocolError(f"rewind page beyond the database's {seed['db_size']} pages")
        await asyncio.to_thread(database.mirror.rewind_pages, pages)
    elif kind == "rewind_end":
        _expect_open(seed, "rewind_begin", kind)
        await database.mirror.rewind_end(seed["lsn"], seed["role_sequence"], seed["db_size"], msg["count"])
        _copy_installed(database, writer, seed["lsn"])
        page_repair.copy_replaced(database, whole=False)  # after the ack: the principal reads requests again then
        return None
    elif kind == "logins":
        if database.logins is not None:
            database.logins.adopt_from_peer(msg["table"])
    elif kind == "checkmirror":
        checkmirror.start_answer(database, writer, msg)  # holds redo at its LSN now; hashes in a task of its own
    elif kind == "page_answer":
        page_repair.answered(database, msg)  # each image goes to redo, which writes it at its LSN
    elif kind == "page_suspect":
        page_repair.suspected(database, msg)
    elif kind == "partner_off":
        raise PartnerRemoved()
    elif kind == "failover":
        if msg["role_sequence"] != database.session.config.role_sequence + 1 or msg["failover_lsn"] != database.log.last_lsn + len(records):
            raise ProtocolError(f"failover to role sequence {msg['role_sequence']} at LSN {msg['failover_lsn']} does not match this mirror")
        if records:
            await database.mirror.harden(records)
            records.clear()
        raise FailoverRequested(msg["role_sequence"], msg["failover_lsn"])
    else:
        raise ProtocolError(f"unexpected {kind} from the principal")
    return seed


def _check_seed(msg: dict) -> None:
    """A snapshot is a whole SQLite file: a valid page size, whole pages, at most SQLite's page count."""
    page_size, size = msg["page_size"], msg["size"]
    check_page_size("seed_begin", page_size)
    if size % page_size or size // page_size > MAX_PAGE_COUNT:
        raise ProtocolError(f"seed_begin: size {size} is not a whole number of pages up to SQLite's maximum page count")


class PartnerRemoved(Exception):
    """The principal ended the session (SET PARTNER OFF)."""


def _adopt_principal_view(database: "Database", msg: dict) -> None:
    synchronized = msg.get("synchronized")
    send_queue = msg.get("send_queue")
    if isinstance(send_queue, int) and not isinstance(send_queue, bool):
        database.principal_send_queue = send_queue
    end = msg.get("end_lsn")
    database.session.note_principal_view(synchronized if isinstance(synchronized, bool) else None,
                                         database.mirror.hardened_lsn if isinstance(end, int) and not isinstance(end, bool) else None)
    if "monitor" in msg:
        monitor_of(database).adopt_report(msg["monitor"])
    database.note_state()


def _fork_found(database: "Database", hello: dict) -> roles.ForkFound | None:
    """What the role machine compares when the hello names the principal's fork (its failover LSN); None if it does not."""
    fork = hello.get("failover_lsn")
    if not isinstance(fork, int) or isinstance(fork, bool):
        return None
    log_ = database.log
    end = log_.last_lsn
    shared = shared_history_end(fork, hello.get("failover_role_sequence"), log_.first_lsn, end, log_.role_sequence_at)
    return roles.ForkFound(hello["role_sequence"], fork, shared, end, log_.last_role_sequence,
                           has_copy=database.mirror is not None and database.mirror.path.exists())


def _diverged_pages(database: "Database", shared: int | None) -> list[int] | None:
    """Pages this copy changed past the history it shares with the principal, when its log still says which."""
    end = database.log.last_lsn
    if shared is None:
        return None
    if database.mirror is None or not database.mirror.path.exists() or database.mirror.redo_lsn < end:
        return None  # the page store must be this copy at its end of log
    touched = database.log.pages_touched(shared + 1, end)
    return sorted(touched) if touched is not None else None


def _settings(msg: dict) -> roles.SettingsFromPrincipal:
    """The settings a principal's hello or `settings` frame carries."""
    witness = msg.get("witness")
    return roles.SettingsFromPrincipal(msg["safety"], msg["timeout"], msg["suspended"], redo_queue_mb=msg.get("redo_queue_mb"),
                                       witness=witness if isinstance(witness, str) else None)


async def _hear(node: "EndpointServices", database: "Database", event: roles.Event) -> None:
    """Feed an event of the principal's link to the role machine (core.roles); carry out what it decides, in order."""
    salvage: str | None = None  # the salvage copy KeepSalvageCopy kept, for ReportLoss to record
    for action in roles.handle(role_view(database, node.endpoint_url), event):
        if isinstance(action, roles.AdoptSettings):
            _adopt_settings(database, action.as_dict())
        elif isinstance(action, roles.RefuseSettings):
            raise ProtocolError(action.why)
        elif isinstance(action, roles.AdoptRoleSequence):
            database.update_config(role_sequence=action.role_sequence)
        elif isinstance(action, roles.KeepSalvageCopy):
            await database.mirror.wait_redone()  # the copy as redo leaves it: every record this node hardened
            salvage = await asyncio.to_thread(database.keep_salvage_copy, action.shared_lsn)
        elif isinstance(action, roles.ReportLoss):
            _report_loss(database, action, salvage if action.salvaged else None)
        else:
            raise AssertionError(f"{action!r} is not an action of the principal's link")


def _report_loss(database: "Database", loss: roles.ReportLoss, path: str | None) -> None:
    """Persist the lost range (and the salvage copy's path) before the welcome: the principal rewinds or reseeds after."""
    fork, end = loss.lost_from - 1, loss.lost_to
    database.update_config(lost_lsn_from=loss.lost_from, lost_lsn_to=end, salvage_path=path)
    database.record_event("DATA_LOSS", f"the new principal (role sequence {loss.role_sequence}) shares this copy's history up to LSN "
                      f"{fork} (its fork: LSN {loss.fork_lsn}): LSN {fork + 1}-{end} "
                      f"({end - fork} transactions) of this copy are not in its history; salvage copy: {path or 'none'}", lsn=fork)
    log.warning("diverged_from_new_principal", database=database.name, fork_lsn=fork, lost_from=fork + 1, lost_to=end,
                transactions=end - fork, salvage_path=path, role="MIRROR", role_sequence=loss.role_sequence)


def _adopt_settings(database: "Database", changes: dict) -> None:
    """Persist the principal's settings (core.roles chose which differ), then what follows from each."""
    database.update_config(**changes)
    if changes.get("suspended"):
        database.session.note_suspended()  # as on the principal: not caught up until it catches up again
    if "suspended" in changes:
        database.record_event("SUSPEND" if changes["suspended"] else "RESUME", "adopted from the principal", lsn=database.log.last_lsn)
    if "witness" in changes and database.on_witness_changed is not None:
        database.on_witness_changed(database)  # the witness link starts or stops with the persisted setting


def mirror_cannot_go_on(database: "Database", why: str) -> None:
    """This mirror cannot go on (redo failed): SUSPEND the session on both partners, with the reason.

    The principal is told now if it is connected, and at every connection until
    the cause is fixed (a restart redoes from the persisted redo LSN again).
    """
    database.session.note_reason(why, time.strftime("%H:%M:%S"))
    if not database.session.config.suspended:
        try:
            database.update_config(suspended=True)
        except OSError as exc:  # no room even for meta.json: suspended until restart, when redo runs again
            log.error("suspend_not_persisted", database=database.name, error=repr(exc))
            database.session.config = database.session.config.with_(suspended=True)
    database.session.note_suspended()
    database.note_state()
    if database.partner_writer is not None:
        framing.write_message(database.partner_writer, {"t": "suspend", "reason": why})
