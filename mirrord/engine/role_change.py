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
from mirrord.engine import mirror_session, principal_session
from mirrord.engine.database import role_view
from mirrord.core.timing import timing
from mirrord.core.types import ActionInDoubt, DatabaseStatus, Endpoint, NotPrincipal, Role, StatementRefused
from mirrord.net import framing

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.engine.witness_link import WitnessConnection
    from mirrord.node_services import NodeServices

log = structlog.get_logger()


async def on_event(node: "NodeServices", database: "Database", event: roles.Event) -> None:
    """Feed an event to the role machine (core.roles) and carry out what it decides, in order."""
    for action in roles.handle(role_view(database, node.endpoint_url), event):
        await carry_out(node, database, action)


async def carry_out(node: "NodeServices", database: "Database", action: roles.Action) -> None:
    """Do one action of core.roles: a role change asks the witness's record first when the action says so."""
    if isinstance(action, roles.Promote):
        if action.needs_witness and (why := await witness_refusal(database, node.endpoint_url, action.role_sequence)) is not None:
            log.warning("manual_failover_refused", database=database.name, role_sequence=action.role_sequence, reason=why)
            return
        await promote(node, database, action.role_sequence, forced=action.forced, why=action.why, from_record=action.from_record)
    elif isinstance(action, roles.StepDown):
        if action.needs_witness and (why := await witness_refusal(database, action.claimant, action.role_sequence)) is not None:
            log.warning("step_down_refused", database=database.name, role_sequence=action.role_sequence,
                        partner=action.claimant, reason=why)
            return
        await step_down(node, database, action.role_sequence, action.why)
    elif isinstance(action, roles.AdoptRoleSequence):
        database.update_config(role_sequence=action.role_sequence)
    elif isinstance(action, roles.NoteWitnessSynchronized):
        database.session.witness_believes_synchronized = action.synchronized
    elif isinstance(action, roles.SuspendSession):
        if action.cause is roles.SuspendCause.REDO_FAILED:
            mirror_session.mirror_cannot_go_on(database, action.why)
        elif action.cause is roles.SuspendCause.MIRROR_ASKED:
            principal_session.suspended_by_mirror(database, action.why)
        else:
            database.update_config(suspended=True, forced_fork=False)
            log.warning("session_suspended", database=database.name, role_sequence=database.session.config.role_sequence, reason=action.why)
    elif isinstance(action, roles.ServeAgain):
        database.failover_in_doubt = False
        database.session.state_reason = None
        if database.principal is not None:
            database.principal.resume_serving()
        log.warning("manual_failover_did_not_happen", database=database.name, role="PRINCIPAL",
                    role_sequence=database.session.config.role_sequence, reason=action.why)


async def adopt_witness_state(node: "NodeServices", database: "Database", msg: dict) -> None:
    """Act on what the witness says about the session (w_state, validated): a newer role sequence wins."""
    await on_event(node, database, roles.WitnessState(msg["role_sequence"], msg["principal"], forced=msg.get("forced") is True,
                                                  mirror_synchronized=msg["mirror_synchronized"]))


async def request_promotion(node: "NodeServices", database: "Database", conn: "WitnessConnection", *, forced: bool, timeout: float) -> bool:
    """Ask the witness to promote this mirror; promote if granted. True if granted."""
    s = database.session
    s.failover_requested = True  # from here on, no log from the old principal
    await node.stop_inbound(database)
    try:
        try:
            answer = await conn.request(
                {"t": "w_vote", "role_sequence": s.config.role_sequence, "hardened_lsn": database.log.last_lsn, "forced": forced}, timeout)
        except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
            if not forced:
                raise
            # the witness may have recorded the vote and lost only its answer: then its record names this
            # node, and the role machine promotes it as forced when it hears that (core.roles)
            raise ActionInDoubt(
                f"forced service on {database.name}: the witness did not answer the vote within {timeout:g} s "
                f"({exc.__class__.__name__}); whether it granted it is unknown. If its record names this node, this "
                "node becomes the principal as soon as it hears so: check sys.database_mirroring (role) before "
                "trying again") from None
        if answer.get("granted"):
            await on_event(node, database, roles.VoteAnswered(True, answer["role_sequence"], forced=forced))
            return True
        if forced:
            raise StatementRefused(f"the witness refused forced service: {answer.get('reason')}")
        return False
    finally:
        s.failover_requested = False


async def witness_refusal(database: "Database", claimant: str, role_sequence: int) -> str | None:
    """Why the witness does not (yet) back `claimant` as principal of `role_sequence`; None if it does, or no witness is set.

    Without a witness the authenticated partner's word is the record, as between
    the reference's partners; with one, the record decides (`quorum.witness_backing_refusal`).
    """
    cfg = database.session.config
    if cfg.witness is None:
        return None
    conn = database.witness_conn
    if conn is None:
        return f"a witness is set ({cfg.witness}) and not connected: the role change waits until the witness's record confirms it"
    try:
        answer = await conn.request({"t": "w_ping"}, cfg.timeout)
    except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
        return f"the witness {cfg.witness} did not answer ({exc!r}): the role change waits until its record confirms it"
    return quorum.witness_backing_refusal(answer["role_sequence"], answer["principal"], claimant, role_sequence)


async def step_down_for_partner(node: "NodeServices", database: "Database", role_sequence: int, partner: str) -> None:
    """The partner says it is principal of a newer role sequence: step down, if the witness's record agrees."""
    await on_event(node, database, roles.PartnerIsPrincipal(role_sequence, partner))


async def promote_for_failover(node: "NodeServices", database: "Database", role_sequence: int) -> None:
    """The principal asked for a manual failover: promote, if the witness recorded the switch first."""
    await on_event(node, database, roles.FailoverAsked(role_sequence))


async def promote(node: "NodeServices", database: "Database", role_sequence: int, *, forced: bool, why: str,
                  from_record: bool = False) -> None:
    """This mirror becomes the principal in role sequence `role_sequence`.

    Shielded: it is often started from a link task that it stops itself, and a
    promotion cancelled half way would leave the database in neither role.
    """
    await asyncio.shield(asyncio.ensure_future(_promote(node, database, role_sequence, forced=forced, why=why,
                                                        from_record=from_record)))


async def _promote(node: "NodeServices", database: "Database", role_sequence: int, *, forced: bool, why: str,
                   from_record: bool) -> None:
    async with database.role_change:
        view = role_view(database, node.endpoint_url)
        if not roles.promotion_due(view, role_sequence):
            return  # the role moved on while this waited: nothing to do
        if (refused := roles.promotion_refusal(view)) is not None:
            log.error("promotion_refused", database=database.name, role_sequence=role_sequence, reason=refused)
            database.record_event("PROMOTION_FAILED", f"to role sequence {role_sequence} ({why}) refused: {refused}")
            if forced:  # a statement: its client hears why
                raise StatementRefused(f"{database.name} cannot become principal here: {refused}")
            return
        started = time.monotonic()
        await node.stop_inbound(database)
        fork = database.log.last_lsn
        database.update_config(
            role=Role.PRINCIPAL, status=DatabaseStatus.ONLINE, role_sequence=role_sequence, failover_lsn=fork,
            forced_fork=forced, suspended=False, lost_lsn_from=0, lost_lsn_to=0,
        )
        if database.mirror is not None:
            database.mirror.stop()  # node.activate finishes redo before it opens the copy
            database.mirror = None
        s = database.session
        s.note_partner_lost()
        if from_record and s.config.witness is not None:  # the old principal may hold a lease from this node's last answer
            s.serves_from = quorum.old_principal_lease_end(s.principal_answered_at, s.config.timeout)
        s.hardened_lsn = fork  # the new mirror (old principal) has at most this in our history
        s.witness_believes_synchronized = False  # the witness marked the new mirror unsynchronized
        try:
            await node.activate(database)
        except Exception as exc:  # noqa: BLE001 - the copy could not be opened: it must not stay PRINCIPAL
            why = f"promotion failed: the copy could not be opened ({exc})"
            log.critical("promotion_failed", database=database.name, role_sequence=role_sequence, error=repr(exc))
            database.record_event("PROMOTION_FAILED", why, lsn=fork)
            database.principal = None
            database.update_config(role=Role.MIRROR, status=DatabaseStatus.RESTORING, suspended=True)
            s.redo_error = why
            s.note_reason(why, time.strftime("%H:%M:%S"))
            await node.activate(database)
            if forced:
                raise StatementRefused(f"{database.name} cannot become principal here: {why}") from None
        if database.principal is not None:
            database.record_event("FORCED_SERVICE" if forced else "PROMOTED",
                              f"{why}; a new role sequence from fork LSN {fork}"
                              + ("; anything the old principal holds past it is lost unless salvaged when it returns" if forced else ""),
                              lsn=fork)
        log.warning(
            "promoted_to_principal", database=database.name, role="PRINCIPAL", role_sequence=role_sequence, failover_lsn=fork,
            lsn=database.log.last_lsn, forced=forced, reason=why, seconds=round(time.monotonic() - started, 3),
        )


async def step_down(node: "NodeServices", database: "Database", role_sequence: int, why: str) -> None:
    """This principal learned of a newer principal: stop serving, become its mirror (shielded, as promote)."""
    await asyncio.shield(asyncio.ensure_future(_step_down(node, database, role_sequence, why)))


async def _step_down(node: "NodeServices", database: "Database", role_sequence: int, why: str) -> None:
    async with database.role_change:
        cfg = database.session.config
        if not roles.step_down_due(role_view(database, node.endpoint_url), role_sequence):
            return  # the role moved on while this waited: nothing to do
        database.failover_in_doubt = False  # settled: the partner is principal
        new_principal = database.session.partner_listen or cfg.partner
        if database.principal is not None:
            database.principal.fail_waiters(NotPrincipal(
                f"{database.name}: this node is no longer the principal ({why}); the outcome of this commit is in doubt: "
                "check it on the new principal", principal=new_principal))
        await node.stop_partner_link(database)
        if database.principal is not None:
            # SQLite checkpoints, and redo_lsn says how far the file got: the whole log, or (a full
            # disk) less, and redo as the mirror replays the rest from the log
            await database.principal.close()
            database.principal = None
        database.update_config(role=Role.MIRROR, status=DatabaseStatus.RESTORING, role_sequence=role_sequence, forced_fork=False)
        database.session.note_stepped_down()
        await node.activate(database)
        database.record_event("STEPPED_DOWN", why, lsn=database.log.last_lsn)
        log.warning("stepped_down_to_mirror", database=database.name, role="MIRROR", role_sequence=role_sequence, lsn=database.log.last_lsn, reason=why)


async def manual_failover(node: "NodeServices", database: "Database") -> str:
    """SET PARTNER FAILOVER on the principal; returns where the principal is now."""
    s, cfg = database.session, database.session.config
    principal = database.principal
    s.failover_pending = True
    database.note_state()
    database.record_event("MANUAL_FAILOVER", f"SET PARTNER FAILOVER to {cfg.partner}", lsn=database.log.last_lsn)
    decided = False  # once the witness recorded the switch, it is final
    try:
        await principal.mark_transactions_aborted()
        async with principal.write_lock:  # nothing commits from here on
            end = database.log.last_lsn
            await _wait_mirror_hardened(database, end)
            if cfg.witness is not None:
                if database.witness_conn is None:
                    raise StatementRefused(f"manual failover abandoned: the witness {cfg.witness} went away; nothing changed")
                try:
                    answer = await database.witness_conn.request({"t": "w_switch", "role_sequence": cfg.role_sequence}, cfg.timeout)
                except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
                    raise StatementRefused(f"manual failover abandoned: the witness did not answer ({exc!r}); nothing changed") from None
                if not answer.get("accepted"):
                    raise StatementRefused("manual failover refused by the witness (it holds a different role sequence)")
                decided = True
            reply = asyncio.get_running_loop().create_future()
            database.failover_reply = reply
            sent = False
            try:
                if database.partner_writer is None:
                    raise ConnectionResetError("the mirror is not connected")
                framing.write_message(database.partner_writer, {"t": "failover", "role_sequence": cfg.role_sequence + 1, "failover_lsn": end})
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
                    database.failover_in_doubt = True
                    why = ("a manual failover was sent and never confirmed: its outcome is unknown, so this node does not "
                           f"serve {database.name} until the partner answers (it becomes the mirror if the failover happened, "
                           "and serves again if not)")
                    s.note_reason(why, time.strftime("%H:%M:%S"))
                    log.warning("manual_failover_in_doubt", database=database.name, role_sequence=cfg.role_sequence)
                    raise StatementRefused(why) from None
            principal.stop_serving()  # the role has moved: no write waiting for this lock may commit here
    finally:
        s.failover_pending = False
        database.failover_reply = None
    new_principal = s.partner_listen or cfg.partner
    await step_down(node, database, cfg.role_sequence + 1, f"manual failover to {cfg.partner}")
    return new_principal


async def _wait_mirror_hardened(database: "Database", end: int) -> None:
    s, cfg = database.session, database.session.config
    deadline = time.monotonic() + cfg.timeout
    while s.hardened_lsn < end:
        if time.monotonic() > deadline or not s.partner_connected:
            raise StatementRefused(
                f"manual failover abandoned: the mirror hardened only up to LSN {s.hardened_lsn} of {end} "
                f"within PARTNER TIMEOUT ({cfg.timeout} s); nothing changed"
            )
        await asyncio.sleep(0.005)  # acks arrive on the link task


async def forced_service(node: "NodeServices", database: "Database") -> None:
    """FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror: start a new recovery fork here."""
    cfg = database.session.config
    if cfg.witness is not None:
        if database.witness_conn is None:
            raise StatementRefused("a witness is set and this mirror cannot reach it; forced service needs mirror and witness connected")
        await request_promotion(node, database, database.witness_conn, forced=True, timeout=cfg.timeout)
        return
    database.session.failover_requested = True
    try:
        await promote(node, database, cfg.role_sequence + 1, forced=True, why="FORCE_SERVICE_ALLOW_DATA_LOSS")
    finally:
        database.session.failover_requested = False


def endpoint_matches(a: str | None, b: str | None) -> bool:
    """Two endpoint texts name the same endpoint."""
    try:
        return a is not None and b is not None and Endpoint.parse(a) == Endpoint.parse(b)
    except ValueError:
        return False
