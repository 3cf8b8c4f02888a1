"""The principal's link to its mirror: handshake, seeding, log streaming, acks, pings.

The principal dials the mirror's endpoint (after any failure, again, with
jittered backoff: net/reconnect.py) and says `hello` with its end of log and role sequence. The mirror
answers `welcome` with what it has hardened; the principal resumes from the
next LSN, or sends a snapshot first when the mirror has no copy or the log it
needs is gone. Then three loops share the connection until one fails:

* ship: every record after the mirror's hardened LSN, batched (whatever was
  captured while the previous frame was in flight goes in the next one),
  lz4-compressed; never waits for acks, so commits group naturally;
* acks: the mirror's hardened LSN releases waiting commits;
* ping: keeps silence detectable on both sides within PARTNER TIMEOUT.

A refused or reset connection is a hard error and counts at once; silence
counts after the timeout. Either way the session goes DISCONNECTED and the
principal runs exposed: commits stop waiting for the mirror.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from mirrord.core import leases, messages, role_statements, roles
from mirrord.core.timing import timing
from mirrord.core.types import Endpoint, ProtocolError, Role
from mirrord.engine import checkmirror, page_repair
from mirrord.engine.monitor import monitor_of, note_connected, partner_report
from mirrord.net import framing
from mirrord.net.reconnect import Link, LinkRefused, run_link
from mirrord.storage.fileutil import sqlite_page_size

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.node_services import EndpointServices

log = structlog.get_logger()

SHIP_BATCH_BYTES = 1 << 20
SEED_CHUNK = 1 << 20
REWIND_BATCH = 128  # pages per rewind frame
TRUNCATE_EVERY_ACKS = 64


class PartnerRefused(LinkRefused):
    """The mirror answered `refuse`: a configuration problem, not a network one."""



async def run_partner_link(node: "EndpointServices", database: "Database") -> None:
    """Keep a link to the mirror up while this node is the principal and streams log."""

    def refused(exc: LinkRefused) -> None:
        log.warning("partner_refused", database=database.name, reason=str(exc), partner=database.session.config.partner)
        database.session.note_reason(str(exc), time.strftime("%H:%M:%S"))

    await run_link(node, Link(
        name="partner", should_run=lambda: _should_stream(node, database), connect_once=lambda: _one_connection(node, database),
        connected=lambda: database.session.partner_connected, on_lost=lambda: _lost(database), on_refused=refused,
        context=lambda: {"database": database.name, "role": database.session.role.value, "lsn": database.log.last_lsn}))


def _should_stream(node: "EndpointServices", database: "Database") -> bool:
    return database.session.role is Role.PRINCIPAL and database.session.config.partner is not None and not node.stopping


def _lost(database: "Database") -> None:
    was = database.session.partner_connected
    database.partner_writer = None
    database.session.note_partner_lost()
    if database.failover_reply is not None and not database.failover_reply.done():
        database.failover_reply.set_exception(ConnectionError("the mirror connection closed during failover"))
    checkmirror.link_lost(database)
    page_repair.cancel_answers(database)
    database.poke()  # exposed (after the witness heard), or out of quorum
    if was:
        database.note_state()


async def _one_connection(node: "EndpointServices", database: "Database") -> None:
    cfg = database.session.config
    ep = Endpoint.parse(cfg.partner)
    timeout = cfg.timeout
    reader, writer = await asyncio.wait_for(node.connect_endpoint(ep), timeout)
    node.track_endpoint_writer(writer)
    try:
        # The welcome's lease counts from the hello's sending, as a pong's from its ping's: the mirror
        # answered later, and waits a full silence from its answer before serving as principal
        # (quorum.old_principal_lease_end). Counted from the welcome's arrival instead, a principal
        # frozen between the two would serve past that.
        sent_at = time.monotonic()
        framing.write_message(writer, node.hello(database))
        welcome = messages.validate(await asyncio.wait_for(framing.read_message(reader), timeout))
        if welcome["t"] == "refuse":
            if welcome.get("partner_off") is True:
                await node.role_event(database, role_statements.PartnerOffHeard(Role.MIRROR))  # the link loop then stops by itself
            await _maybe_step_down(node, database, welcome)
            raise PartnerRefused(welcome["reason"])
        if welcome["t"] != "welcome":
            raise ProtocolError(f"expected welcome, got {welcome['t']}")
        was_suspended = cfg.suspended
        await node.role_event(database, roles.PartnerWelcomed(cfg.role_sequence))  # SUSPENDED after forced service, ...
        if database.session.config.suspended and not was_suspended:
            framing.write_message(writer, settings_message(database))  # the mirror hears it before the resume point
        hardened = await _agree_resume_point(database, welcome, reader, writer)
        listen = welcome.get("listen") if isinstance(welcome.get("listen"), str) else None
        database.session.note_partner_connected(hardened, listen=listen, redo=welcome["redo_lsn"])
        database.session.hear(leases.MirrorAnswered(sent_at))  # the welcome grants the mirror lease
        database.partner_writer = writer
        framing.write_message(writer, settings_message(database))  # whatever changed during the handshake
        if database.logins is not None:
            if isinstance(welcome.get("logins"), dict):
                database.logins.adopt_from_peer(welcome["logins"])
            framing.write_message(writer, {"t": "logins", "table": database.logins.wire()})
        database.poke()
        database.note_state()
        note_connected(database)
        database.record_event("PARTNER_CONNECTED", f"the mirror {cfg.partner} connected; it has hardened LSN {hardened}", lsn=hardened)
        log.info("partner_connected", database=database.name, role="PRINCIPAL", role_sequence=cfg.role_sequence, hardened_lsn=hardened, lsn=database.log.last_lsn)
        await _run_loops(node, database, reader, writer, hardened + 1)
    finally:
        writer.close()
        node.untrack_endpoint_writer(writer)


async def _maybe_step_down(node: "EndpointServices", database: "Database", refuse: dict) -> None:
    """The partner refused us because it is principal of a newer role sequence."""
    role_sequence, partner = refuse.get("role_sequence"), database.session.config.partner
    if refuse.get("role") == "PRINCIPAL" and isinstance(role_sequence, int) and not isinstance(role_sequence, bool) and partner is not None:
        await node.role_event(database, roles.PartnerIsPrincipal(role_sequence, partner))


async def resume_session(node: "EndpointServices", database: "Database") -> None:
    """RESUME (issued here, or on the mirror): clear SUSPENDED, then a fresh handshake agrees the resume point.

    A diverged old principal is reseeded in that handshake.
    """
    database.update_config(suspended=False)
    database.session.clear_reason()
    send_settings(database)
    await node.stop_partner_link(database)
    database.session.note_partner_lost()
    database.poke()
    node.start_partner_link(database)


async def run_off_notice(node: "EndpointServices", database: "Database") -> None:
    """Tell the old mirror that SET PARTNER OFF ended the session here, until it confirms.

    Redials like any link (its backoff), across restarts (off_untold is
    persisted), and stops once the mirror answered or a new session began.
    """

    def should_run() -> bool:
        return database.session.config.off_untold is not None and database.session.config.partner is None and not node.stopping

    def refused(exc: LinkRefused) -> None:
        log.warning("partner_off_notice_refused", database=database.name, reason=str(exc), mirror=database.session.config.off_untold)

    await run_link(node, Link(
        name="partner_off_notice", should_run=should_run, connect_once=lambda: _tell_off_once(node, database),
        connected=lambda: False, on_lost=lambda: None, on_refused=refused,
        context=lambda: {"database": database.name, "mirror": database.session.config.off_untold}))


async def _tell_off_once(node: "EndpointServices", database: "Database") -> None:
    cfg = database.session.config
    endpoint = cfg.off_untold
    reader, writer = await asyncio.wait_for(node.connect_endpoint(Endpoint.parse(endpoint)), cfg.timeout)
    node.track_endpoint_writer(writer)
    try:
        framing.write_message(writer, {"t": "partner_off_notice", "db": database.name, "from_endpoint": node.endpoint_url,
                                       "role_sequence": cfg.role_sequence})
        answer = messages.validate(await asyncio.wait_for(framing.read_message(reader), cfg.timeout))
        if answer["t"] == "refuse":
            raise LinkRefused(answer["reason"])
        if answer["t"] != "partner_off_done":
            raise ProtocolError(f"expected partner_off_done, got {answer['t']}")
        if database.session.config.off_untold == endpoint:
            database.update_config(off_untold=None)
        log.info("partner_off_told", database=database.name, mirror=endpoint)
    finally:
        writer.close()
        node.untrack_endpoint_writer(writer)


def suspended_by_mirror(database: "Database", reason: str) -> None:
    """The mirror cannot go on (redo failed, SUSPEND issued there): the session is SUSPENDED here too."""
    database.session.note_reason(f"the mirror suspended the session: {reason[:500]}", time.strftime("%H:%M:%S"))
    if database.session.config.suspended:
        send_settings(database)  # the mirror did not hear it yet
        return
    log.warning("suspended_by_mirror", database=database.name, reason=reason[:500], role="PRINCIPAL")
    suspend_session(database)
    database.record_event("SUSPEND", f"asked by the mirror: {reason[:500]}", lsn=database.log.last_lsn)


def suspend_session(database: "Database") -> None:
    """Suspend the session on this principal, as its mirror asked: persisted first, then the mirror told; commits stop
    waiting for it. (SET PARTNER SUSPEND here is core.role_statements.on_suspend_issued's actions.)"""
    database.update_config(suspended=True)
    database.session.note_suspended()
    send_settings(database)


def send_settings(database: "Database") -> None:
    """Tell the mirror the session's settings (if the link is up), and re-evaluate the quorum and waiting commits."""
    if database.partner_writer is not None and not database.partner_writer.is_closing():
        framing.write_message(database.partner_writer, settings_message(database))
    database.poke()  # the witness may need to hear of it; commits may stop (or start) waiting for the mirror


def settings_message(database: "Database") -> dict:
    """The session settings the mirror adopts from its principal."""
    cfg = database.session.config
    return {"t": "settings", "safety": cfg.safety.value, "timeout": cfg.timeout, "suspended": cfg.suspended, "witness": cfg.witness or "",
            "redo_queue_mb": cfg.redo_queue_mb}


def diverged(database: "Database", hardened: int, hardened_role_sequence: int) -> bool:
    """The mirror holds log that is not in this principal's history."""
    end = database.log.last_lsn
    if hardened > end:
        return True
    if hardened and hardened >= database.log.first_lsn > 0:
        return database.log.role_sequence_at(hardened) != hardened_role_sequence
    return False


async def _agree_resume_point(database: "Database", welcome: dict, reader, writer) -> int:
    """Decide where the mirror resumes; seed it first when it must be.

    A mirror whose log left our history (an old principal past the fork) is
    reseeded: its copy was salvaged by itself before this, and a full copy is
    the simplest rewind that is certainly right. While SUSPENDED (after forced
    service) nothing is sent: RESUME reconnects and lands here again.
    """
    hardened, end = welcome["hardened_lsn"], database.log.last_lsn
    if hardened > end and welcome["hardened_role_sequence"] == database.session.config.role_sequence:
        # The mirror holds more of this very role sequence than we do. Only synced
        # records are shipped, so only a damaged log here explains it: reseeding the
        # mirror from this shorter copy would throw acknowledged commits away.
        # (Our role sequence, not our log's last record's: a principal promoted at
        # the fork that has written nothing yet ends its log in the old one, and an
        # old principal's records past that fork are diverged, not ahead of us.)
        raise PartnerRefused(
            f"the mirror holds log up to LSN {hardened} in role sequence {welcome['hardened_role_sequence']}, this principal only "
            f"up to {end}: it is not reseeded from the shorter copy. Fail over to it (FORCE_SERVICE_ALLOW_DATA_LOSS on "
            "the mirror loses nothing of its log), or SET PARTNER OFF here to keep this copy")
    is_diverged = diverged(database, hardened, welcome["hardened_role_sequence"])
    if is_diverged and database.session.config.suspended:
        log.warning("mirror_diverged_awaiting_resume", database=database.name, mirror_lsn=hardened, fork_lsn=database.session.config.failover_lsn)
        return min(hardened, end)
    log_gone = hardened < end and (database.log.first_lsn == 0 or database.log.first_lsn > hardened + 1)
    if is_diverged and not welcome["needs_seed"] and isinstance(welcome.get("diverged_pages"), list):
        rewound = await _rewind(database, reader, writer, welcome["diverged_pages"], welcome.get("shared_lsn"))
        if rewound is not None:
            return rewound
    if welcome["needs_seed"] or log_gone or is_diverged:
        return await _seed(database, reader, writer)
    return hardened


async def _rewind(database: "Database", reader, writer, diverged: list, shared: int | None) -> int | None:
    """pg_rewind's idea: send only the pages either side changed since the fork; None when the log no longer says which.

    A page neither side wrote past the shared history is the same in both
    copies; every other page gets our image, from a snapshot at lsn. The
    shared history ends at our fork, or before it when the mirror went on in a
    newer role sequence than our record there (it says where: core.history).
    """
    fork = database.session.config.failover_lsn
    if shared is not None and 0 <= shared < fork:
        fork = shared  # our own records past it are not the mirror's either
    if not all(type(p) is int and 1 <= p <= 0xFFFFFFFE for p in diverged):
        raise ProtocolError("welcome: diverged_pages must be page numbers")
    tmp = database.directory / "rewind-snapshot.tmp"
    lsn, role_sequence = await _pinging(database, writer, database.principal.snapshot_to(tmp))
    try:
        ours = await _pinging(database, writer, asyncio.to_thread(database.log.pages_touched, fork + 1, lsn))
        if ours is None:
            return None  # the log no longer reaches the fork: a full copy
        page_size = _page_size(tmp)
        db_size = tmp.stat().st_size // page_size
        pages = sorted(p for p in ours.union(diverged) if p <= db_size)
        log.info("rewinding_mirror", database=database.name, fork_lsn=fork, lsn=lsn, pages=len(pages), of_pages=db_size, role_sequence=role_sequence)
        framing.write_message(writer, {"t": "rewind_begin", "lsn": lsn, "role_sequence": role_sequence, "page_size": page_size, "db_size": db_size})
        with open(tmp, "rb") as f:
            for i in range(0, len(pages), REWIND_BATCH):
                batch = [[p, os.pread(f.fileno(), page_size, (p - 1) * page_size)] for p in pages[i:i + REWIND_BATCH]]
                framing.write_message(writer, {"t": "rewind_pages", "pages": batch}, compress=True)
                await writer.drain()
        framing.write_message(writer, {"t": "rewind_end", "count": len(pages)})
        await writer.drain()
        return await _wait_ack(database, reader, lsn)
    finally:
        # off the event loop: freeing a large file's blocks takes long enough to stall every commit
        await asyncio.to_thread(tmp.unlink, missing_ok=True)


async def _pinging(database: "Database", writer, work):
    """Await work (a snapshot, say) while pinging the mirror, so that it does not take our silence for a loss.

    The link's ping loop starts only after the handshake; a snapshot of a large
    database can take longer than PARTNER TIMEOUT. Its pongs wait in the socket
    and are read past later.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=timing(database.session.config.timeout).ping_interval)
            if done:
                return task.result()
            framing.write_message(writer, {"t": "ping", "seq": 0})
            await writer.drain()
    finally:
        if not task.done():
            task.cancel()


async def _wait_ack(database: "Database", reader, lsn: int) -> int:
    """Wait for the mirror to acknowledge a copy installed at lsn."""
    timeout = timing(database.session.config.timeout).slow_answer
    while True:
        msg = messages.validate(await asyncio.wait_for(framing.read_message(reader), timeout))
        if msg["t"] == "ack" and msg["hardened_lsn"] >= lsn:
            return lsn


async def _seed(database: "Database", reader, writer) -> int:
    """Send a consistent snapshot of the database; return the LSN it is at."""
    tmp = database.directory / "seed-snapshot.tmp"
    lsn, role_sequence = await _pinging(database, writer, database.principal.snapshot_to(tmp))
    try:
        size = tmp.stat().st_size
        log.info("seeding_mirror", database=database.name, lsn=lsn, bytes=size, role_sequence=role_sequence)
        framing.write_message(writer, {"t": "seed_begin", "lsn": lsn, "role_sequence": role_sequence, "page_size": _page_size(tmp), "size": size})
        crc = 0
        with open(tmp, "rb") as f:
            offset = 0
            while True:
                # reading, checksumming and compressing a chunk take milliseconds: off the event
                # loop, where every commit's acknowledgement waits its turn
                frame, chunk_len, crc = await asyncio.to_thread(_seed_frame, f, offset, crc)
                if not chunk_len:
                    break
                framing.write_frame(writer, frame)
                offset += chunk_len
                await writer.drain()
        framing.write_message(writer, {"t": "seed_end", "crc": crc})
        await writer.drain()
        return await _wait_ack(database, reader, lsn)
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)


def _seed_frame(f, offset: int, crc: int) -> tuple[bytes, int, int]:
    """The next seed_chunk frame from f (worker thread): (frame, chunk length, running crc); length 0 at the end."""
    chunk = f.read(SEED_CHUNK)
    if not chunk:
        return b"", 0, crc
    frame = framing.encode_frame({"t": "seed_chunk", "offset": offset, "data": chunk}, compress=True)
    return frame, len(chunk), zlib.crc32(chunk, crc)


def _page_size(path: Path) -> int:
    return sqlite_page_size(path) or 4096


async def _run_loops(node: "EndpointServices", database: "Database", reader, writer, next_lsn: int) -> None:
    pings: dict[int, float] = {}
    tasks = [
        asyncio.create_task(_ship(database, writer, next_lsn)),
        asyncio.create_task(_read_acks(node, database, reader, pings)),
        asyncio.create_task(_ping(database, writer, pings)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # re-raise the failure that ended the link
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ship(database: "Database", writer, next_lsn: int) -> None:
    principal = database.principal
    while True:
        # only what is synced here: the mirror must never hold a record a power cut could take from its principal
        if database.session.config.suspended or next_lsn > principal.synced_lsn:
            principal.new_log.clear()
            if database.session.config.suspended or next_lsn > principal.synced_lsn:
                await principal.new_log.wait()
                continue
        upto = principal.synced_lsn
        records = [r for r in database.log.read_from(next_lsn, SHIP_BATCH_BYTES) if r.lsn <= upto]
        msg = {"t": "log", "records": [r.to_wire() for r in records], "end_lsn": database.log.last_lsn, **_principal_view(database)}
        frame, raw = framing.encode_frame_sized(msg, compress=True)
        writer.write(frame)
        database.session.note_sent(records[-1].lsn, whole_log=records[-1].lsn >= database.log.last_lsn)
        database.wire.raw += raw
        database.wire.wire += len(frame)
        next_lsn = records[-1].lsn + 1
        await writer.drain()


def _principal_view(database: "Database") -> dict:
    """What the mirror shows of the principal's side (the session adopts the principal's state)."""
    s = database.session
    return {"synchronized": s.caught_up, "send_queue": database.queue_bytes(s.hardened_lsn, database.log.last_lsn)}


async def _read_acks(node: "EndpointServices", database: "Database", reader, pings: dict[int, float]) -> None:
    acks = 0
    while True:
        async with asyncio.timeout(database.session.config.timeout):  # a timer, where wait_for would add a task per frame
            msg = messages.validate(await framing.read_message(reader))
        if msg["t"] == "ack":
            was_caught_up = database.session.caught_up
            database.session.note_ack(msg["hardened_lsn"], msg["redo_lsn"])
            database.session.note_redo_progress(None, msg.get("redo_queue"))
            database.principal.update_visible()
            database.note_state()
            if database.session.caught_up and not was_caught_up:
                # the witness must hear the mirror is synchronized now; set on every ack instead, it woke the
                # witness link for a w_ping after each one, a witness round trip per commit batch
                database.quorum_changed.set()
            acks += 1
            if acks % TRUNCATE_EVERY_ACKS == 0:
                database.principal.truncate_log()
        elif msg["t"] == "pong":
            if "monitor" in msg:
                monitor_of(database).adopt_report(msg["monitor"])
            redo = msg.get("redo_lsn")
            database.session.note_redo_progress(redo if isinstance(redo, int) and not isinstance(redo, bool) else None,
                                                msg.get("redo_queue"))
            if "redo_queue" in msg:
                database.principal.redo_queue_changed()
            sent_at = pings.pop(msg["seq"], None)
            if sent_at is not None:
                database.session.hear(leases.MirrorAnswered(sent_at))  # a pong renews the mirror lease
        elif msg["t"] == "redo_progress":  # while a REDO_QUEUE limit is set (core.redo_queue)
            database.session.note_redo_progress(msg["redo_lsn"], msg["redo_queue"])
            database.principal.redo_queue_changed()
        elif msg["t"] == "suspend":
            await node.role_event(database, roles.MirrorSuspended(msg["reason"]))
        elif msg["t"] == "resume":  # a task of its own: it restarts this very link
            asyncio.ensure_future(node.role_event(database, role_statements.ResumeAskedByMirror()))
        elif msg["t"] == "partner_off":
            await node.role_event(database, role_statements.PartnerOffHeard(Role.MIRROR))
            raise ConnectionError("the mirror ended the session (SET PARTNER OFF)")
        elif msg["t"] == "checkmirror_result":
            checkmirror.answered(database, msg)
        elif msg["t"] == "page_offer":
            page_repair.principal_offered(database, msg)  # the mirror's images of pages damaged here
        elif msg["t"] == "page_request":
            page_repair.start_answer(database, database.partner_writer, msg)  # read in a task: acks go on meanwhile
        elif msg["t"] == "failover_done":
            if database.failover_reply is not None and not database.failover_reply.done():
                database.failover_reply.set_result(msg["role_sequence"])
        elif msg["t"] == "logins":
            if database.logins is not None:
                database.logins.adopt_from_peer(msg["table"])
        elif msg["t"] != "settings":
            raise ProtocolError(f"unexpected {msg['t']} from the mirror")


async def _ping(database: "Database", writer, pings: dict[int, float]) -> None:
    seq = 0
    while True:
        await asyncio.sleep(timing(database.session.config.timeout).ping_interval)
        seq += 1
        pings[seq] = time.monotonic()  # a pong renews the mirror lease from this instant
        if len(pings) > 64:
            pings.pop(min(pings))
        framing.write_message(writer, {"t": "ping", "seq": seq, "end_lsn": database.log.last_lsn, **_principal_view(database),
                                       "monitor": partner_report(database)})
        await writer.drain()
