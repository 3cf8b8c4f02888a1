"""A partner's link to the witness: pings, reports, votes, and learning of role changes.

Both partners of a session with a witness keep one connection to it. Every
request carries a request id (rid) and every answer is a `w_state` with the
same rid, so pings, reports and votes share the connection.

* The principal's answered pings renew its witness lease (core.leases,
  WitnessAnswered: `quorum.lease_until` from the instant the ping was *sent*);
  the link's end ends it (WitnessLinkLost). It reports whether its mirror is
  synchronized whenever that changes, and acknowledges commits alone only
  after the witness accepted "not synchronized" (`quorum.ack_rule`).
* The mirror asks for a vote when the role machine says so (core.roles, PingDue:
  `quorum.automatic_failover_refusal`), and is promoted when the vote is granted.
* Either partner, on seeing a higher role sequence in a `w_state`, adopts it:
  a principal steps down, a mirror named principal is promoted.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING

import structlog

from mirrord.core import leases, messages, roles
from mirrord.engine.database import role_view
from mirrord.core.types import Endpoint, ProtocolError, Role, Safety
from mirrord.net import framing
from mirrord.core.timing import timing
from mirrord.net.reconnect import Link, LinkRefused, run_link

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.node_services import EndpointServices

log = structlog.get_logger()


class WitnessConnection:
    """One open connection to the witness, with request/answer matching."""

    def __init__(self, node: "EndpointServices", database: "Database", reader, writer) -> None:
        self.node, self.database, self.reader, self.writer = node, database, reader, writer
        self._rids = itertools.count(1)
        self._pending: dict[int, tuple[float, asyncio.Future]] = {}
        self._reports_sent = 0

    async def report(self, msg: dict, timeout: float) -> tuple[dict, bool]:
        """Send a w_report and wait for its answer; also say whether it is still the latest report sent.

        The witness records reports in the order they are sent on this connection, so only the latest one's
        acceptance says what it holds now: a TIMEOUT statement's report may cross the ping loop's.
        """
        self._reports_sent += 1
        mine = self._reports_sent
        answer = await self.request(msg, timeout)  # sent before its first await: the count orders the sends
        return answer, mine == self._reports_sent

    async def request(self, msg: dict, timeout: float) -> dict:
        """Send a request and wait for its w_state answer."""
        rid = next(self._rids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (time.monotonic(), fut)
        framing.write_message(self.writer, {**msg, "rid": rid})
        await self.writer.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)

    async def read_answers(self) -> None:
        """Route every w_state to its request; apply what it says about the session."""
        timeout = self.database.session.config.timeout
        while True:
            msg = messages.validate(await asyncio.wait_for(framing.read_message(self.reader), timeout))
            if msg["t"] != "w_state":
                raise ProtocolError(f"unexpected {msg['t']} from the witness")
            sent_at, fut = self._pending.get(msg["rid"], (None, None))
            if sent_at is not None:  # the witness naming us principal is a lease, also for a mirror it just promoted
                self.database.session.hear(leases.WitnessAnswered(sent_at, msg["principal"] == self.node.endpoint_url))
            if fut is not None and not fut.done():
                fut.set_result(msg)  # before acting on it: the requester may hold locks a role change needs
            await self.node.adopt_witness_state(self.database, msg)


async def run_witness_link(node: "EndpointServices", database: "Database") -> None:
    """Keep a link to the witness while the session has one."""

    def should_run() -> bool:
        cfg = database.session.config
        return cfg.witness is not None and cfg.partner is not None and not node.stopping

    def lost() -> None:
        witness_lost(database)

    def refused(exc: LinkRefused) -> None:
        log.warning("witness_refused", database=database.name, reason=str(exc), witness=database.session.config.witness)

    await run_link(node, Link(
        name="witness", should_run=should_run, connect_once=lambda: _one_connection(node, database),
        connected=lambda: database.session.witness_connected, on_lost=lost, on_refused=refused,
        context=lambda: {"database": database.name, "role": database.session.role.value}))


def witness_lost(database: "Database") -> None:
    """The connection to the witness ended: the principal's witness lease ends with it (core.leases.on_witness_link_lost).

    The witness stops seeing a partner the moment its connection ends (engine/witness.py), so it may grant
    the mirror's vote at once; a lease kept until it ran out let an old principal serve alongside the new one
    after a reset that reached both of its links (found by the simulator). Its mirror's lease still counts.
    """
    database.witness_conn = None
    database.session.hear(leases.WitnessLinkLost())
    database.poke()


async def _one_connection(node: "EndpointServices", database: "Database") -> None:
    cfg = database.session.config
    ep = Endpoint.parse(cfg.witness)
    reader, writer = await asyncio.wait_for(node.connect_endpoint(ep), cfg.timeout)
    node.track_endpoint_writer(writer)
    conn = WitnessConnection(node, database, reader, writer)
    try:
        sent_at = time.monotonic()
        hello = _hello(node, database)
        if hello["synchronized"]:
            database.session.note_witness_synchronized(True)  # it may adopt that and the answer be lost (see _report_if_changed)
        framing.write_message(writer, hello)
        first = messages.validate(await asyncio.wait_for(framing.read_message(reader), cfg.timeout))
        if first["t"] == "refuse":
            raise ConnectionError(f"the witness refused: {first['reason']}")
        if first["t"] != "w_state":
            raise ProtocolError(f"expected w_state from the witness, got {first['t']}")
        database.session.hear(leases.WitnessAnswered(sent_at, first["principal"] == node.endpoint_url))
        await node.adopt_witness_state(database, first)
        database.witness_conn = conn
        database.session.hear(leases.WitnessLinked())
        database.poke()
        database.record_event("WITNESS_CONNECTED", f"the witness {cfg.witness}")
        log.info("witness_connected", database=database.name, witness=cfg.witness, role=database.session.role.value, role_sequence=database.session.config.role_sequence)
        reader_task = asyncio.create_task(conn.read_answers())
        try:
            await _drive(node, database, conn, reader_task)
        finally:
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)
    finally:
        writer.close()
        node.untrack_endpoint_writer(writer)


def _hello(node: "EndpointServices", database: "Database") -> dict:
    cfg = database.session.config
    return {
        "t": "w_hello", "db": database.name, "from_endpoint": node.endpoint_url, "role": cfg.role.value,
        "role_sequence": cfg.role_sequence, "partner": cfg.partner or "", "synchronized": database.session.reports_mirror_synchronized(),
        "safety": cfg.safety.value, "timeout": cfg.timeout,
    }


async def _drive(node: "EndpointServices", database: "Database", conn: WitnessConnection, reader_task: asyncio.Task) -> None:
    """Ping, report and request votes until the connection fails."""
    reported: tuple[int, bool, Safety] | None = None
    refusals = 0  # consecutive refused votes: retry fast at first (the witness may lag the loss by ms)
    while True:
        if reader_task.done():
            reader_task.result()
            raise ConnectionError("the witness connection closed")
        timeout = database.session.config.timeout
        role = database.session.role
        if role is Role.PRINCIPAL:
            reported = await _report_if_changed(database, conn, reported, timeout)
        elif role is Role.MIRROR:
            asked = await _maybe_request_failover(node, database, conn, timeout)
            if asked is False:
                refusals += 1
                if refusals <= 20:
                    await asyncio.sleep(0.05)
                    continue
            else:
                refusals = 0
        await conn.request({"t": "w_ping"}, timeout)
        database.poke()  # a lease may have been renewed: re-evaluate, and re-arm the timer for its end (Database.arm_timer)
        database.quorum_changed.clear()
        try:
            await asyncio.wait_for(database.quorum_changed.wait(), timing(timeout).ping_interval)
        except asyncio.TimeoutError:
            pass


async def _report_if_changed(database: "Database", conn: WitnessConnection, reported, timeout: float):
    cfg = database.session.config
    want = (cfg.role_sequence, database.session.reports_mirror_synchronized(), cfg.safety, cfg.timeout)
    if want == reported and database.session.witness_believes_synchronized == want[1]:
        return reported
    if want[1]:
        # The witness may record "synchronized" and its answer be lost: from the moment this report is
        # sent, the principal must act as if it had (commits stop going on alone when the mirror is lost,
        # since the witness may promote it). Only an accepted "not synchronized" lets it go on alone.
        database.session.note_witness_synchronized(True)
    answer, latest = await conn.report({"t": "w_report", "role_sequence": cfg.role_sequence, "synchronized": want[1],
                                        "safety": cfg.safety.value, "timeout": cfg.timeout}, timeout)
    if answer.get("accepted") and latest:
        database.session.note_witness_synchronized(want[1])
        database.poke()  # commits blocked on "the witness must hear first" may go on
        return want
    return None  # refused, or another report followed it: report again


async def _maybe_request_failover(node: "EndpointServices", database: "Database", conn: WitnessConnection, timeout: float) -> bool | None:
    """Ask the witness for automatic failover when core.roles says so: None if not asked, else whether it was granted."""
    if roles.handle(role_view(database, node.endpoint_url), roles.PingDue()) != [roles.AskForVote()]:
        return None
    return await node.request_promotion(database, conn, forced=False, timeout=timeout)
