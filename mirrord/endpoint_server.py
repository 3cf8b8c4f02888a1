"""The mirroring endpoint's side of a node: who may connect, and what each connection is served.

A connection opens with one frame: a partner's `hello` (the principal's link to
this mirror: mirrord/engine/mirror_session.py serves it), a partner's `w_hello` (this node is its
witness: mirrord/engine/witness.py), or a `partner_off_notice` (SET PARTNER OFF ran on
the principal while this mirror was away). Under TLS the peer's certificate
must cover the endpoint it claims, or it is refused with the reason.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from mirrord.engine import role_change
from mirrord.core import messages, role_statements
from mirrord.core.types import Endpoint, ProtocolError, Role
from mirrord.engine import mirror_session
from mirrord.net import framing
from mirrord.net.tls import cert_hosts, peer_covers

if TYPE_CHECKING:
    from mirrord.node_services import NodeServices

log = structlog.get_logger()

HELLO_TIMEOUT = 10.0  # a peer that has not said who it is by then is cut off


async def serve_connection(node: "NodeServices", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection to the endpoint: a partner's hello, a witness link (w_hello), or a SET PARTNER OFF notice."""
    peer = writer.get_extra_info("peername")
    node.track_endpoint_writer(writer)
    try:
        hello = messages.validate(await asyncio.wait_for(framing.read_message(reader), HELLO_TIMEOUT))
        if hello["t"] in ("hello", "w_hello", "partner_off_notice"):
            impostor = impostor_refusal(node, writer, hello["from_endpoint"])
            if impostor is not None:
                log.warning("peer_refused", peer=str(peer), database=hello["db"], reason=impostor)
                framing.write_message(writer, {"t": "refuse", "reason": impostor})
                await writer.drain()
                return
        if hello["t"] == "w_hello":
            await node.witness.serve(node.name, hello, reader, writer)
            return
        if hello["t"] == "partner_off_notice":
            await _serve_off_notice(node, hello, writer)
            return
        if hello["t"] != "hello":
            raise ProtocolError(f"first frame must be hello, w_hello or partner_off_notice, got {hello['t']}")
        await _serve_hello(node, hello, reader, writer)
    except ProtocolError as exc:
        log.warning("endpoint_frame_rejected", peer=str(peer), reason=str(exc))
    except mirror_session.PartnerRemoved:
        if (database := node.databases.get(hello["db"])) is not None:
            await role_change.on_event(node, database, role_statements.PartnerOffHeard(Role.PRINCIPAL))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        log.info("endpoint_connection_closed", peer=str(peer), reason=repr(exc))
    except asyncio.CancelledError:
        pass
    except Exception:  # a bug must close the connection, not the daemon
        log.exception("endpoint_connection_failed", peer=str(peer))
    finally:
        writer.close()
        node.untrack_endpoint_writer(writer)


async def _serve_hello(node: "NodeServices", hello: dict, reader, writer) -> None:
    """A principal's link to this mirror: refused with the reason, or served until it ends."""
    database = node.databases.get(hello["db"])
    if database is not None and hello["role"] == Role.PRINCIPAL.value:
        # a principal it deposes steps down first (core.roles), and answers the hello as the mirror
        await role_change.step_down_for_partner(node, database, hello["role_sequence"], hello["from_endpoint"])
    refusal = mirror_session.refusal_for_hello(node, database, hello)
    if refusal is not None:
        log.warning("hello_refused", database=hello["db"], reason=refusal.reason)
        refuse = {"t": "refuse", "reason": refusal.reason}
        if database is not None:
            refuse.update(role_sequence=database.session.config.role_sequence, role=database.session.role.value)
        if refusal.partner_off:
            refuse["partner_off"] = True
        framing.write_message(writer, refuse)
        await writer.drain()
        return
    # A new connection from the principal replaces the old. Loop: several can arrive at
    # once (a thawed node accepts every connection its backlog held), and another may
    # have taken the slot while this one waited for the previous to end.
    while database.inbound is not None and database.inbound is not asyncio.current_task():
        await node.stop_inbound(database)
    database.inbound = asyncio.current_task()
    try:
        await mirror_session.serve_principal(node, database, hello, reader, writer)
    except mirror_session.FailoverRequested as req:
        database.inbound = None
        await role_change.promote_for_failover(node, database, req.role_sequence)
        if database.session.role is Role.PRINCIPAL and database.session.config.role_sequence == req.role_sequence:  # else refused: say nothing
            framing.write_message(writer, {"t": "failover_done", "role_sequence": req.role_sequence})
            await writer.drain()
    finally:
        if database.inbound is asyncio.current_task():
            database.inbound = None


async def _serve_off_notice(node: "NodeServices", notice: dict, writer) -> None:
    """SET PARTNER OFF ran on our principal while we were away: end the session here too, then confirm.

    Confirmed also when there is nothing to end (no longer its mirror): the
    sender only needs to know it may stop telling.
    """
    database = node.databases.get(notice["db"])
    if database is not None:
        await role_change.on_event(node, database, role_statements.OffNoticeHeard(notice["from_endpoint"], notice["role_sequence"]))
    framing.write_message(writer, {"t": "partner_off_done"})
    await writer.drain()


def impostor_refusal(node: "NodeServices", writer: asyncio.StreamWriter, claimed_endpoint: str) -> str | None:
    """Why a peer may not speak as claimed_endpoint, or None: its verified certificate must cover that host."""
    if node.tls is None:
        return None
    try:
        host = Endpoint.parse(claimed_endpoint).host
    except ValueError:
        return f"the claimed endpoint {claimed_endpoint!r} is not tcp://host:port"
    peercert = writer.get_extra_info("peercert")
    if peer_covers(peercert, host):
        return None
    return (f"the peer claims to be {claimed_endpoint} but its certificate covers only "
            f"{', '.join(cert_hosts(peercert)) or 'no host'}; reissue its certificate with --host {host}")
