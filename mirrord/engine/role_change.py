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
  The waits are here (hand_over); what each outcome means is decided by
  core.role_statements.on_failover_outcome.

The partner statements, SET PARTNER '<endpoint>', SET WITNESS and the
session's settings (core.role_statements) come here as events too: the
statement executor feeds one and carry_out performs the actions in order; the
awaits they need (the probe of the mirror, the witness hearing a longer
TIMEOUT) are actions too, refusing the statement with their texts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

import structlog

from mirrord.core import messages, quorum, role_statements as rs, roles
from mirrord.engine import mirror_session, principal_session
from mirrord.engine.database import role_view
from mirrord.core.timing import timing
from mirrord.core.session import SessionConfig
from mirrord.core.types import ActionInDoubt, DatabaseStatus, Endpoint, NotPrincipal, ProtocolError, Role, StatementRefused
from mirrord.net import framing

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.engine.witness_link import WitnessConnection
    from mirrord.node_services import NodeServices

log = structlog.get_logger()


async def on_event(node: "NodeServices", database: "Database | None", event: roles.Event) -> None:
    """Feed an event to the role machine (core.roles) and carry out what it decides, in order.

    database None: it has no copy on this node yet (SET PARTNER on the mirror's side creates one).
    """
    for action in roles.handle(role_view(database, node.endpoint_url), event):
        await carry_out(node, database, action)


async def carry_out(node: "NodeServices", database: "Database | None", action: roles.Action | rs.StatementAction) -> None:
    """Do one action of core.roles: a role change asks the witness's record first when the action says so.

    A RefuseStatement raises StatementRefused: the actions after it are not carried out.
    """
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
        database.session.note_witness_synchronized(True)
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
        database.session.clear_reason()
        if database.principal is not None:
            database.principal.resume_serving()
        log.warning("manual_failover_did_not_happen", database=database.name, role="PRINCIPAL",
                    role_sequence=database.session.config.role_sequence, reason=action.why)
    elif isinstance(action, roles.AskForVote):
        # the statement's vote (forced); automatic failover's is asked by the witness link, at its ping, with its own timeout
        await request_promotion(node, database, database.witness_conn, forced=action.forced, timeout=database.session.config.timeout)
    else:
        await _carry_out_statement(node, database, action)


async def _carry_out_statement(node: "NodeServices", database: "Database", action: rs.StatementAction) -> None:
    """Do one action of a partner statement (core.role_statements)."""
    if isinstance(action, rs.PersistConfig):
        database.update_config(**action.as_dict())
    elif isinstance(action, rs.CreateMirrorCopy):
        await node.create_database(SessionConfig(action.db, role=Role.MIRROR, status=DatabaseStatus.RESTORING,
                                                 partner=action.partner))
    elif isinstance(action, rs.ProbeMirror):
        await _probe_mirror(node, database, action)
    elif isinstance(action, rs.StopOffNotice):
        await node.stop_partner_link(database)  # the off notice runs in the principal's link slot
    elif isinstance(action, rs.StartPartnerLink):
        node.start_partner_link(database)
    elif isinstance(action, rs.SendSettings):
        principal_session.send_settings(database)
    elif isinstance(action, rs.NoteSuspended):
        database.session.note_suspended()
    elif isinstance(action, rs.TellWitnessTimeout):
        await _tell_witness_timeout(database, action)
    elif isinstance(action, rs.StopWitnessLink):
        await node.stop_witness_link(database)
        database.session.note_witness_changed()  # no lease from the old one; the new one may believe the mirror synchronized
    elif isinstance(action, rs.StartWitnessLink):
        node.sync_witness_link(database)
    elif isinstance(action, rs.TellPartner):
        await _tell_partner(database, action)
    elif isinstance(action, rs.StopPartnerLink):
        await node.stop_partner_link(database)
        database.session.note_partner_lost()
        if database.principal is not None:
            database.principal.update_visible()  # commits stop waiting for the mirror
    elif isinstance(action, rs.StopInbound):
        await node.stop_inbound(database)
    elif isinstance(action, rs.StartOffNotice):
        node.start_off_notice(database)
    elif isinstance(action, rs.SessionRemovedByPartner):
        if action.was is Role.PRINCIPAL:
            log.warning("partner_removed_by_mirror", database=database.name, partner=action.partner, role="PRINCIPAL")
            database.session.note_partner_lost()
            database.session.clear_reason()
            if database.principal is not None:
                database.principal.update_visible()  # commits stop waiting for the mirror
        else:
            log.info("partner_removed_by_principal", database=database.name, status=database.session.config.status.value)
    elif isinstance(action, rs.ResumeSession):
        await principal_session.resume_session(node, database)
    elif isinstance(action, rs.RecordEvent):
        database.record_event(action.kind, action.detail, lsn=database.log.last_lsn)
    elif isinstance(action, rs.HandOver):
        await hand_over(node, database, action.role_sequence)
    elif isinstance(action, rs.StopServing):
        database.principal.stop_serving()
    elif isinstance(action, rs.StopServingInDoubt):
        database.principal.stop_serving()
        database.failover_in_doubt = True
        database.session.note_reason(action.why, time.strftime("%H:%M:%S"))
        log.warning("manual_failover_in_doubt", database=database.name, role_sequence=database.session.config.role_sequence)
    elif isinstance(action, rs.RefuseStatement):
        raise StatementRefused(action.text)
    elif isinstance(action, rs.StatementInDoubt):
        raise ActionInDoubt(action.text)


async def _tell_partner(database: "Database", action: rs.TellPartner) -> None:
    """A frame to the partner on the session's link, if it is up.

    A link that fails meanwhile is not the statement's failure: the rule that
    asked says how the partner learns otherwise (an off notice, a refused hello).
    """
    writer = database.partner_writer
    if writer is None or writer.is_closing():
        return
    msg: dict = {"t": action.kind}
    if action.reason is not None:
        msg["reason"] = action.reason
    framing.write_message(writer, msg)
    if action.before_closing:
        try:
            await writer.drain()  # out before the link is closed
        except (ConnectionError, OSError):
            pass


async def _probe_mirror(node: "NodeServices", database: "Database", action: rs.ProbeMirror) -> None:
    """Say hello to the mirror as its principal and hear its answer; StatementRefused, with the action's text, if none or no."""
    hello = node.hello(database)
    hello.update(role=Role.PRINCIPAL.value, role_sequence=action.role_sequence)
    try:
        reader, writer = await asyncio.wait_for(node.connect_endpoint(Endpoint.parse(action.endpoint)), 5)
    except (OSError, asyncio.TimeoutError) as exc:
        raise StatementRefused(action.unreachable(repr(exc))) from None
    try:
        framing.write_message(writer, hello)
        answer = messages.validate(await asyncio.wait_for(framing.read_message(reader), 5))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
        raise StatementRefused(action.unanswered(repr(exc))) from None
    finally:
        writer.close()
    if answer["t"] == "refuse":
        raise StatementRefused(action.refused(answer["reason"]))


async def _tell_witness_timeout(database: "Database", action: rs.TellWitnessTimeout) -> None:
    """The witness takes the longer TIMEOUT (w_report) or the statement is refused with the action's text, nothing changed."""
    cfg, conn = database.session.config, database.witness_conn
    if conn is None:
        raise StatementRefused(action.unheard())
    msg = {"t": "w_report", "role_sequence": cfg.role_sequence, "synchronized": database.session.witness_believes_synchronized,
           "safety": cfg.safety.value, "timeout": action.seconds}
    try:
        answer, _ = await conn.report(msg, cfg.timeout)  # its answer never lowers the belief it carried (roles.on_witness_state)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        raise StatementRefused(action.unheard()) from None
    if not answer.get("accepted"):
        raise StatementRefused(action.not_accepted(answer.get("role_sequence")))


async def adopt_witness_state(node: "NodeServices", database: "Database", msg: dict) -> None:
    """Act on what the witness says about the session (w_state, validated): a newer role sequence wins."""
    await on_event(node, database, roles.WitnessState(msg["role_sequence"], msg["principal"], forced=msg.get("forced") is True,
                                                  mirror_synchronized=msg["mirror_synchronized"]))


async def request_promotion(node: "NodeServices", database: "Database", conn: "WitnessConnection", *, forced: bool, timeout: float) -> bool:
    """Ask the witness to promote this mirror; promote if granted. True if granted."""
    s = database.session
    s.note_asking_witness(True)  # from here on, no log from the old principal
    await node.stop_inbound(database)
    try:
        try:
            answer = await conn.request(
                {"t": "w_vote", "role_sequence": s.config.role_sequence, "hardened_lsn": database.log.last_lsn, "forced": forced}, timeout)
        except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
            if not forced:
                raise  # automatic failover: the witness link it was asked on ends, and redials
            failed = rs.ForcedVoteFailed(database.name, answered=False, timeout=timeout, error=exc.__class__.__name__)
        else:
            if answer.get("granted"):
                await on_event(node, database, roles.VoteAnswered(True, answer["role_sequence"], forced=forced))
                return True
            if not forced:
                return False
            failed = rs.ForcedVoteFailed(database.name, answered=True, reason=answer.get("reason"))
        await on_event(node, database, failed)  # the statement is refused, or in doubt
        return False
    finally:
        s.note_asking_witness(False)


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
        # the new mirror (old principal) has at most the fork; the witness marked it behind; the old principal's
        # lease from this node's last answer may still run (Session.note_promoted)
        s.note_promoted(fork, forced=forced, from_record=from_record)
        try:
            await node.activate(database)
        except Exception as exc:  # noqa: BLE001 - the copy could not be opened: it must not stay PRINCIPAL
            why = f"promotion failed: the copy could not be opened ({exc})"
            log.critical("promotion_failed", database=database.name, role_sequence=role_sequence, error=repr(exc))
            database.record_event("PROMOTION_FAILED", why, lsn=fork)
            database.principal = None
            database.update_config(role=Role.MIRROR, status=DatabaseStatus.RESTORING, suspended=True)
            s.note_redo_failed(why, time.strftime("%H:%M:%S"))
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


async def hand_over(node: "NodeServices", database: "Database", role_sequence: int) -> None:
    """SET PARTNER FAILOVER on the principal (core.role_statements.HandOver): stop commits, then wait in turn.

    After each wait the rule (on_failover_outcome) says whether the failover
    goes on or what it came to; its outcome is judged against the session as
    the statement found it. A step down closes this principal, which takes the
    write lock: it runs once the lock is left.
    """
    view = role_view(database, node.endpoint_url)
    s, principal = database.session, database.principal
    s.note_failover_pending(True)
    database.note_state()
    database.record_event("MANUAL_FAILOVER", f"SET PARTNER FAILOVER to {view.partner}", lsn=database.log.last_lsn)
    after_lock: list = []
    try:
        await principal.mark_transactions_aborted()
        async with principal.write_lock:  # nothing commits from here on
            actions = await _failover_waits(database, view, database.log.last_lsn, role_sequence)
            split = next((i for i, a in enumerate(actions) if isinstance(a, roles.StepDown)), len(actions))
            actions, after_lock = actions[:split], actions[split:]
            for action in actions:
                await carry_out(node, database, action)
    finally:
        s.note_failover_pending(False)
        database.failover_reply = None
    for action in after_lock:
        await carry_out(node, database, action)


async def _failover_waits(database: "Database", view: roles.RoleView, end: int, role_sequence: int) -> list:
    """Each wait of the hand-over in turn, until the rule decides what the failover comes to."""
    outcome = rs.FailoverOutcome(database.name, end, await _wait_mirror_hardened(database, view, end))
    if actions := roles.handle(view, outcome):
        return actions
    witness, error = await _ask_witness_to_switch(database, view)
    outcome = dataclasses.replace(outcome, witness=witness, witness_error=error)
    if actions := roles.handle(view, outcome):
        return actions
    sent, answered = await _send_failover(database, view, end, role_sequence)
    return roles.handle(view, dataclasses.replace(outcome, sent=sent, answered=answered))


async def _wait_mirror_hardened(database: "Database", view: roles.RoleView, end: int) -> int:
    """What the mirror hardened of the log up to end, waiting at most PARTNER TIMEOUT, and not once it is lost."""
    s = database.session
    deadline = time.monotonic() + view.timeout
    while s.hardened_lsn < end and time.monotonic() <= deadline and s.partner_connected:
        await asyncio.sleep(0.005)  # acks arrive on the link task
    return s.hardened_lsn


async def _ask_witness_to_switch(database: "Database", view: roles.RoleView) -> tuple[rs.WitnessSwitch, str]:
    """Ask the witness to record the mirror as principal of the next role sequence (w_switch), when one is set."""
    if view.witness is None:
        return rs.WitnessSwitch.NOT_SET, ""
    if database.witness_conn is None:
        return rs.WitnessSwitch.GONE, ""
    try:
        answer = await database.witness_conn.request({"t": "w_switch", "role_sequence": view.role_sequence}, view.timeout)
    except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
        return rs.WitnessSwitch.SILENT, repr(exc)
    return (rs.WitnessSwitch.RECORDED if answer.get("accepted") else rs.WitnessSwitch.REFUSED), ""


async def _send_failover(database: "Database", view: roles.RoleView, end: int, role_sequence: int) -> tuple[bool, bool]:
    """Send the mirror `failover` and wait for its answer: (sent, answered)."""
    reply = asyncio.get_running_loop().create_future()
    database.failover_reply = reply  # the link's reader answers it, or fails it when the link closes
    sent = False
    try:
        if database.partner_writer is None:
            raise ConnectionResetError("the mirror is not connected")
        framing.write_message(database.partner_writer, {"t": "failover", "role_sequence": role_sequence, "failover_lsn": end})
        sent = True
        await asyncio.wait_for(reply, timing(view.timeout).slow_answer)
    except (asyncio.TimeoutError, ConnectionError):
        return sent, False
    return True, True


async def forced_service(node: "NodeServices", database: "Database") -> None:
    """FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror: start a new recovery fork here (core.role_statements decides how)."""
    s = database.session
    s.note_asking_witness(True)  # from here on, no log from the old principal, and no hello is served
    try:
        await on_event(node, database, rs.ForceServiceIssued())
    finally:
        s.note_asking_witness(False)
