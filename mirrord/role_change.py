"""Role switching on a node: promotion, stepping down, manual failover, forced service.

Each change persists the new role and role sequence *before* acting on it, so
a node killed half way comes back in the new role (I4). The orderings that
keep I1 and I2 (see `core.quorum`):

* promote: stop taking log from the old principal, finish redo of everything
  hardened (every acknowledged commit is hardened here), then open the copy as
  the principal database and serve, in the new role sequence;
* step down: stop serving first (waiting commits fail as in doubt), then
  become the mirror; the new principal decides where this copy resumes, or
  reseeds it, after a salvage copy of anything past the fork was kept;
* manual failover: refuse new statements (PENDING_FAILOVER), wait until the
  mirror hardened the end of log, record the switch on the witness, then
  tell the mirror, which promotes itself and answers; only then step down.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from mirrord.core import quorum, roles
from mirrord.core.timing import timing
from mirrord.core.types import ActionInDoubt, DatabaseStatus, Endpoint, NotPrincipal, Role, StatementRefused
from mirrord.net import framing

if TYPE_CHECKING:
    from mirrord.host import DatabaseHost
    from mirrord.net.witness_link import WitnessConnection
    from mirrord.node_services import NodeServices

log = structlog.get_logger()


def role_view(node: "NodeServices", host: "DatabaseHost") -> roles.RoleView:
    """What core.roles reads of this copy now."""
    s, cfg = host.session, host.session.config
    return roles.RoleView(role=cfg.role, role_sequence=cfg.role_sequence, endpoint=node.endpoint_url, partner=cfg.partner,
                          changing=s.failover_pending or s.failover_requested, redo_error=s.redo_error,
                          forced_fork=cfg.forced_fork, failover_in_doubt=host.failover_in_doubt)


async def on_event(node: "NodeServices", host: "DatabaseHost", event: roles.Event) -> None:
    """Feed an event to the role machine (core.roles) and carry out what it decides, in order."""
    for action in roles.handle(role_view(node, host), event):
        await carry_out(node, host, action)


async def carry_out(node: "NodeServices", host: "DatabaseHost", action: roles.Action) -> None:
    """Do one action of core.roles: a role change asks the witness's record first when the action says so."""
    if isinstance(action, roles.Promote):
        if action.needs_witness and (why := await witness_refusal(host, node.endpoint_url, action.role_sequence)) is not None:
            log.warning("manual_failover_refused", database=host.name, role_sequence=action.role_sequence, reason=why)
            return
        await promote(node, host, action.role_sequence, forced=action.forced, why=action.why)
    elif isinstance(action, roles.StepDown):
        if action.needs_witness and (why := await witness_refusal(host, action.claimant, action.role_sequence)) is not None:
            log.warning("step_down_refused", database=host.name, role_sequence=action.role_sequence,
                        partner=action.claimant, reason=why)
            return
        await step_down(node, host, action.role_sequence, action.why)
    elif isinstance(action, roles.AdoptRoleSequence):
        host.update_config(role_sequence=action.role_sequence)
    elif isinstance(action, roles.NoteWitnessSynchronized):
        host.session.witness_believes_synchronized = action.synchronized
    elif isinstance(action, roles.SuspendSession):
        host.update_config(suspended=True, forced_fork=False)
        log.warning("session_suspended", database=host.name, role_sequence=host.session.config.role_sequence, reason=action.why)
    elif isinstance(action, roles.ServeAgain):
        host.failover_in_doubt = False
        host.session.state_reason = None
        if host.principal is not None:
            host.principal.resume_serving()
        log.warning("manual_failover_did_not_happen", database=host.name, role="PRINCIPAL",
                    role_sequence=host.session.config.role_sequence, reason=action.why)


async def adopt_witness_state(node: "NodeServices", host: "DatabaseHost", msg: dict) -> None:
    """Act on what the witness says about the session (w_state, validated): a newer role sequence wins."""
    await on_event(node, host, roles.WitnessState(msg["role_sequence"], msg["principal"], forced=msg.get("forced") is True,
                                                  mirror_synchronized=msg["mirror_synchronized"]))


async def request_promotion(node: "NodeServices", host: "DatabaseHost", conn: "WitnessConnection", *, forced: bool, timeout: float) -> bool:
    """Ask the witness to promote this mirror; promote if granted. True if granted."""
    s = host.session
    s.failover_requested = True  # from here on, no log from the old principal
    await node.stop_inbound(host)
    try:
        try:
            answer = await conn.request(
                {"t": "w_vote", "role_sequence": s.config.role_sequence, "hardened_lsn": host.log.last_lsn, "forced": forced}, timeout)
        except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
            if not forced:
                raise
            # the witness may have recorded the vote and lost only its answer: then its record names this
            # node, and the role machine promotes it as forced when it hears that (core.roles)
            raise ActionInDoubt(
                f"forced service on {host.name}: the witness did not answer the vote within {timeout:g} s "
                f"({exc.__class__.__name__}); whether it granted it is unknown. If its record names this node, this "
                "node becomes the principal as soon as it hears so: check sys.database_mirroring (role) before "
                "trying again") from None
        if answer.get("granted"):
            await promote(node, host, answer["role_sequence"], forced=forced, why="witness vote granted")
            return True
        if forced:
            raise StatementRefused(f"the witness refused forced service: {answer.get('reason')}")
        return False
    finally:
        s.failover_requested = False


async def witness_refusal(host: "DatabaseHost", claimant: str, role_sequence: int) -> str | None:
    """Why the witness does not (yet) back `claimant` as principal of `role_sequence`; None if it does, or no witness is set.

    Without a witness the authenticated partner's word is the record, as between
    the reference's partners; with one, the record decides (`quorum.witness_backing_refusal`).
    """
    cfg = host.session.config
    if cfg.witness is None:
        return None
    conn = host.witness_conn
    if conn is None:
        return f"a witness is set ({cfg.witness}) and not connected: the role change waits until the witness's record confirms it"
    try:
        answer = await conn.request({"t": "w_ping"}, cfg.timeout)
    except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
        return f"the witness {cfg.witness} did not answer ({exc!r}): the role change waits until its record confirms it"
    return quorum.witness_backing_refusal(answer["role_sequence"], answer["principal"], claimant, role_sequence)


async def step_down_for_partner(node: "NodeServices", host: "DatabaseHost", role_sequence: int, partner: str) -> None:
    """The partner says it is principal of a newer role sequence: step down, if the witness's record agrees."""
    await on_event(node, host, roles.PartnerIsPrincipal(role_sequence, partner))


async def promote_for_failover(node: "NodeServices", host: "DatabaseHost", role_sequence: int) -> None:
    """The principal asked for a manual failover: promote, if the witness recorded the switch first."""
    await on_event(node, host, roles.FailoverAsked(role_sequence))


async def promote(node: "NodeServices", host: "DatabaseHost", role_sequence: int, *, forced: bool, why: str) -> None:
    """This mirror becomes the principal in role sequence `role_sequence`.

    Shielded: it is often started from a link task that it stops itself, and a
    promotion cancelled half way would leave the database in neither role.
    """
    await asyncio.shield(asyncio.ensure_future(_promote(node, host, role_sequence, forced=forced, why=why)))


async def _promote(node: "NodeServices", host: "DatabaseHost", role_sequence: int, *, forced: bool, why: str) -> None:
    async with host.role_change:
        view = role_view(node, host)
        if not roles.promotion_due(view, role_sequence):
            return  # the role moved on while this waited: nothing to do
        if (refused := roles.promotion_refusal(view)) is not None:
            log.error("promotion_refused", database=host.name, role_sequence=role_sequence, reason=refused)
            host.record_event("PROMOTION_FAILED", f"to role sequence {role_sequence} ({why}) refused: {refused}")
            if forced:  # a statement: its client hears why
                raise StatementRefused(f"{host.name} cannot become principal here: {refused}")
            return
        started = time.monotonic()
        await node.stop_inbound(host)
        fork = host.log.last_lsn
        host.update_config(
            role=Role.PRINCIPAL, status=DatabaseStatus.ONLINE, role_sequence=role_sequence, failover_lsn=fork,
            forced_fork=forced, suspended=False, lost_lsn_from=0, lost_lsn_to=0,
        )
        if host.mirror is not None:
            host.mirror.stop()  # node.activate finishes redo before it opens the copy
            host.mirror = None
        s = host.session
        s.note_partner_lost()
        s.hardened_lsn = fork  # the new mirror (old principal) has at most this in our history
        s.witness_believes_synchronized = False  # the witness marked the new mirror unsynchronized
        try:
            await node.activate(host)
        except Exception as exc:  # noqa: BLE001 - the copy could not be opened: it must not stay PRINCIPAL
            why = f"promotion failed: the copy could not be opened ({exc})"
            log.critical("promotion_failed", database=host.name, role_sequence=role_sequence, error=repr(exc))
            host.record_event("PROMOTION_FAILED", why, lsn=fork)
            host.principal = None
            host.update_config(role=Role.MIRROR, status=DatabaseStatus.RESTORING, suspended=True)
            s.redo_error = why
            s.note_reason(why, time.strftime("%H:%M:%S"))
            await node.activate(host)
            if forced:
                raise StatementRefused(f"{host.name} cannot become principal here: {why}") from None
        if host.principal is not None:
            host.record_event("FORCED_SERVICE" if forced else "PROMOTED",
                              f"{why}; a new role sequence from fork LSN {fork}"
                              + ("; anything the old principal holds past it is lost unless salvaged when it returns" if forced else ""),
                              lsn=fork)
        log.warning(
            "promoted_to_principal", database=host.name, role="PRINCIPAL", role_sequence=role_sequence, failover_lsn=fork,
            lsn=host.log.last_lsn, forced=forced, reason=why, seconds=round(time.monotonic() - started, 3),
        )


async def step_down(node: "NodeServices", host: "DatabaseHost", role_sequence: int, why: str) -> None:
    """This principal learned of a newer principal: stop serving, become its mirror (shielded, as promote)."""
    await asyncio.shield(asyncio.ensure_future(_step_down(node, host, role_sequence, why)))


async def _step_down(node: "NodeServices", host: "DatabaseHost", role_sequence: int, why: str) -> None:
    async with host.role_change:
        cfg = host.session.config
        if not roles.step_down_due(role_view(node, host), role_sequence):
            return  # the role moved on while this waited: nothing to do
        host.failover_in_doubt = False  # settled: the partner is principal
        new_principal = host.session.partner_listen or cfg.partner
        if host.principal is not None:
            host.principal.fail_waiters(NotPrincipal(
                f"{host.name}: this node is no longer the principal ({why}); the outcome of this commit is in doubt: "
                "check it on the new principal", principal=new_principal))
        await node.stop_partner_link(host)
        if host.principal is not None:
            # SQLite checkpoints, and redo_lsn says how far the file got: the whole log, or (a full
            # disk) less, and redo as the mirror replays the rest from the log
            await host.principal.close()
            host.principal = None
        host.update_config(role=Role.MIRROR, status=DatabaseStatus.RESTORING, role_sequence=role_sequence, forced_fork=False)
        host.session.note_stepped_down()
        await node.activate(host)
        host.record_event("STEPPED_DOWN", why, lsn=host.log.last_lsn)
        log.warning("stepped_down_to_mirror", database=host.name, role="MIRROR", role_sequence=role_sequence, lsn=host.log.last_lsn, reason=why)


async def manual_failover(node: "NodeServices", host: "DatabaseHost") -> str:
    """SET PARTNER FAILOVER on the principal; returns where the principal is now."""
    s, cfg = host.session, host.session.config
    principal = host.principal
    s.failover_pending = True
    host.note_state()
    host.record_event("MANUAL_FAILOVER", f"SET PARTNER FAILOVER to {cfg.partner}", lsn=host.log.last_lsn)
    decided = False  # once the witness recorded the switch, it is final
    try:
        await principal.mark_transactions_aborted()
        async with principal.write_lock:  # nothing commits from here on
            end = host.log.last_lsn
            await _wait_mirror_hardened(host, end)
            if cfg.witness is not None:
                if host.witness_conn is None:
                    raise StatementRefused(f"manual failover abandoned: the witness {cfg.witness} went away; nothing changed")
                try:
                    answer = await host.witness_conn.request({"t": "w_switch", "role_sequence": cfg.role_sequence}, cfg.timeout)
                except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
                    raise StatementRefused(f"manual failover abandoned: the witness did not answer ({exc!r}); nothing changed") from None
                if not answer.get("accepted"):
                    raise StatementRefused("manual failover refused by the witness (it holds a different role sequence)")
                decided = True
            reply = asyncio.get_running_loop().create_future()
            host.failover_reply = reply
            sent = False
            try:
                if host.partner_writer is None:
                    raise ConnectionResetError("the mirror is not connected")
                framing.write_message(host.partner_writer, {"t": "failover", "role_sequence": cfg.role_sequence + 1, "failover_lsn": end})
                sent = True
                await asyncio.wait_for(reply, timing(cfg.timeout).slow_answer)
            except (asyncio.TimeoutError, ConnectionError):
                if not sent and not decided:  # the link closed before the frame left: nothing happened anywhere
                    raise StatementRefused("manual failover abandoned: the connection to the mirror closed before the "
                                           "failover was sent; nothing changed. Retry once it is SYNCHRONIZED again") from None
                # decided: the witness recorded the switch, and the mirror takes over once its witness tells it
                if not decided:
                    # The mirror may have promoted itself and lost only its answer: serving on
                    # could make two principals. Serve again only once the mirror says it did not.
                    principal.stop_serving()
                    host.failover_in_doubt = True
                    why = ("a manual failover was sent and never confirmed: its outcome is unknown, so this node does not "
                           f"serve {host.name} until the partner answers (it becomes the mirror if the failover happened, "
                           "and serves again if not)")
                    s.note_reason(why, time.strftime("%H:%M:%S"))
                    log.warning("manual_failover_in_doubt", database=host.name, role_sequence=cfg.role_sequence)
                    raise StatementRefused(why) from None
            principal.stop_serving()  # the role has moved: no write waiting for this lock may commit here
    finally:
        s.failover_pending = False
        host.failover_reply = None
    new_principal = s.partner_listen or cfg.partner
    await step_down(node, host, cfg.role_sequence + 1, f"manual failover to {cfg.partner}")
    return new_principal


async def _wait_mirror_hardened(host: "DatabaseHost", end: int) -> None:
    s, cfg = host.session, host.session.config
    deadline = time.monotonic() + cfg.timeout
    while s.hardened_lsn < end:
        if time.monotonic() > deadline or not s.partner_connected:
            raise StatementRefused(
                f"manual failover abandoned: the mirror hardened only up to LSN {s.hardened_lsn} of {end} "
                f"within PARTNER TIMEOUT ({cfg.timeout} s); nothing changed"
            )
        await asyncio.sleep(0.005)  # acks arrive on the link task


async def forced_service(node: "NodeServices", host: "DatabaseHost") -> None:
    """FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror: start a new recovery fork here."""
    cfg = host.session.config
    if cfg.witness is not None:
        if host.witness_conn is None:
            raise StatementRefused("a witness is set and this mirror cannot reach it; forced service needs mirror and witness connected")
        await request_promotion(node, host, host.witness_conn, forced=True, timeout=cfg.timeout)
        return
    host.session.failover_requested = True
    try:
        await promote(node, host, cfg.role_sequence + 1, forced=True, why="FORCE_SERVICE_ALLOW_DATA_LOSS")
    finally:
        host.session.failover_requested = False


def endpoint_matches(a: str | None, b: str | None) -> bool:
    """Two endpoint texts name the same endpoint."""
    try:
        return a is not None and b is not None and Endpoint.parse(a) == Endpoint.parse(b)
    except ValueError:
        return False
