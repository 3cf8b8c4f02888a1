"""The partner statements' role changes: what each role does when a statement is issued on it (pure, synchronous).

ALTER DATABASE … SET PARTNER { OFF | SUSPEND | RESUME | FAILOVER |
FORCE_SERVICE_ALLOW_DATA_LOSS } reaches these rules once `core.rules` allowed
it here (a refused statement changes nothing). Their rows are part of the one
table, `core.roles.TRANSITIONS` (listed in that module's docstring): this
module adds them when it is imported, as it is by any code holding one of its
events. Each rule says which role does what, what is persisted, who is told,
and in which order: the configuration is persisted before anyone is told.
The partner's side is here too: what a copy does when it hears the statement
issued on the other (SET PARTNER OFF, on the link or by an off notice; RESUME
issued on the mirror).

Manual failover's waits stay in the shell (mirrord.engine.role_change.hand_over):
the mirror hardens the end of log, the witness records the switch, the
mirror answers the failover frame. The shell feeds a FailoverOutcome after
each, and on_failover_outcome decides: nothing yet (the next wait), or what
the failover came to. Every text a statement is refused with is the rule's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from mirrord.core.roles import (TRANSITIONS, AskForVote, Promote, RoleView, Rule, StepDown, SuspendCause, SuspendSession,
                                is_partner)
from mirrord.core.types import Role

# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class PartnerOffIssued:
    """SET PARTNER OFF: the session ends on both partners; this copy keeps its role's data (standalone, or RESTORING)."""


@dataclass(frozen=True)
class SuspendIssued:
    """SET PARTNER SUSPEND, issued on this node (named: the principal's reason says where)."""

    node: str


@dataclass(frozen=True)
class ResumeIssued:
    """SET PARTNER RESUME, issued on this node."""


@dataclass(frozen=True)
class FailoverIssued:
    """SET PARTNER FAILOVER on the principal: hand the session over to its synchronized mirror."""


@dataclass(frozen=True)
class ForceServiceIssued:
    """SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror: serve here in a new role sequence (a recovery fork)."""


class WitnessSwitch(str, enum.Enum):
    """What the witness said when the principal asked it to record a manual failover's switch (w_switch)."""

    NOT_SET = "no witness"  # none is set: the mirror's answer settles the switch
    GONE = "gone"  # its link went away before the principal could ask
    SILENT = "silent"  # no answer within PARTNER TIMEOUT, or the link failed
    REFUSED = "refused"  # it holds a different role sequence
    RECORDED = "recorded"  # it recorded the mirror as principal of the next role sequence: the switch is decided


@dataclass(frozen=True)
class FailoverOutcome:
    """How far the principal's manual failover got, fed by the shell after each of its waits in turn.

    The waits: the mirror hardens the end of log (within PARTNER TIMEOUT), the
    witness records the switch (w_switch; when one is set), the mirror is sent
    `failover` and answers that it took over. A field is None until its wait
    is reached; the rule answers nothing while the failover may go on.
    """

    db: str
    end: int  # the end of log when commits stopped: the failover LSN
    hardened_lsn: int  # what the mirror hardened of it within the wait
    witness: WitnessSwitch | None = None
    witness_error: str = ""  # SILENT: what failed
    sent: bool | None = None  # the failover frame left for the mirror
    answered: bool | None = None  # the mirror answered that it took over


@dataclass(frozen=True)
class ForcedVoteFailed:
    """FORCE_SERVICE_ALLOW_DATA_LOSS's vote was not granted: the witness refused it, or its answer never came."""

    db: str
    answered: bool
    reason: str | None = None  # the witness's, when it refused
    timeout: float = 0.0  # how long its answer was waited for
    error: str = ""  # unanswered: what failed (the exception's class)


# ---- what a partner hears of the statement issued on the other


@dataclass(frozen=True)
class PartnerOffHeard:
    """The partner ran SET PARTNER OFF and says so on the session's link: its partner_off frame, or its refusal of this
    principal's hello (partner_off). The link that heard it ends by itself."""

    partner_role: Role  # the role of the partner that said it: the principal's link hears the mirror, and the reverse


@dataclass(frozen=True)
class OffNoticeHeard:
    """The principal ran SET PARTNER OFF while this mirror was away, and says so on a connection of its own (its off notice)."""

    sender: str  # the endpoint it says it is (its certificate covers it)
    role_sequence: int  # its role sequence when it ended the session


@dataclass(frozen=True)
class ResumeAskedByMirror:
    """The mirror asks its principal to resume the session (SET PARTNER RESUME there)."""


StatementEvent = Union[PartnerOffIssued, SuspendIssued, ResumeIssued, FailoverIssued, ForceServiceIssued, FailoverOutcome,
                       ForcedVoteFailed, PartnerOffHeard, OffNoticeHeard, ResumeAskedByMirror]


# ------------------------------------------------------------------ actions (with core.roles' Promote, StepDown, ...)


@dataclass(frozen=True)
class PersistConfig:
    """Persist these changes to the session's configuration (meta.json) before anything acts on them."""

    changes: tuple[tuple[str, object], ...]

    def as_dict(self) -> dict:
        """The changes as keyword arguments of the config's update."""
        return dict(self.changes)


@dataclass(frozen=True)
class TellPartner:
    """Send the partner a frame on the session's link, if it is up; nothing if not (the rule says who tells it later).

    before_closing: the link is closed next, so the frame is flushed first.
    """

    kind: str  # partner_off, suspend, resume
    reason: str | None = None
    before_closing: bool = False


@dataclass(frozen=True)
class StopPartnerLink:
    """The principal stops its link to the mirror: the partner is lost, commits stop waiting for it."""


@dataclass(frozen=True)
class StopInbound:
    """The mirror ends the principal's link (the connection it serves)."""


@dataclass(frozen=True)
class StartOffNotice:
    """Tell the old mirror SET PARTNER OFF ended the session, on connections of its own until it confirms (off_untold)."""


@dataclass(frozen=True)
class SessionRemovedByPartner:
    """Say that the partner ended the session; a principal's commits stop waiting for its mirror (partner: the old one)."""

    was: Role
    partner: str | None


@dataclass(frozen=True)
class ResumeSession:
    """RESUME on the principal: SUSPENDED cleared (persisted), the mirror told, then a fresh handshake agrees where to resume."""


@dataclass(frozen=True)
class RecordEvent:
    """Add an entry to the database's event history (kind, detail), at the end of log."""

    kind: str
    detail: str


@dataclass(frozen=True)
class HandOver:
    """The principal's manual failover: stop commits, then the waits whose results come back as FailoverOutcome."""

    role_sequence: int  # the mirror's, once it takes over


@dataclass(frozen=True)
class StopServing:
    """The principal stops serving now: no write waiting for its lock may commit here (its role has moved)."""


@dataclass(frozen=True)
class StopServingInDoubt:
    """A manual failover was sent and never confirmed: stop serving until the partner answers.

    It answers by welcoming this node as its principal (core.roles.on_partner_welcomed: serve again), or as the
    principal of the next role sequence (step down).
    """

    why: str


@dataclass(frozen=True)
class RefuseStatement:
    """The statement fails with this text (StatementRefused); what it changed before is said in the text."""

    text: str


@dataclass(frozen=True)
class StatementInDoubt:
    """The statement fails with this text (ActionInDoubt): whether it took effect is unknown, the text says how to find out."""

    text: str


StatementAction = Union[PersistConfig, TellPartner, StopPartnerLink, StopInbound, StartOffNotice, SessionRemovedByPartner,
                        ResumeSession, RecordEvent, HandOver, StopServing, StopServingInDoubt, RefuseStatement, StatementInDoubt,
                        Promote, StepDown, AskForVote, SuspendSession]


# ------------------------------------------------------------------ rules


def on_partner_off_as_principal(view: RoleView, event: PartnerOffIssued) -> list[StatementAction]:
    """SET PARTNER OFF on the principal: standalone here, persisted first (ended_by_off, off_untold), then the mirror told.

    The mirror may be away, or the frame lost with the link: it is told again
    on connections of its own until it confirms (StartOffNotice; off_untold
    survives a restart), and its hellos hear it meanwhile (on_partner_hello).
    """
    ended = (("partner", None), ("role", Role.NONE), ("suspended", False), ("ended_by_off", view.partner))
    return [PersistConfig(ended + (("off_untold", view.partner),)), TellPartner("partner_off", before_closing=True),
            StopPartnerLink(), StartOffNotice()]


def on_partner_off_as_mirror(view: RoleView, event: PartnerOffIssued) -> list[StatementAction]:
    """SET PARTNER OFF on the mirror: the session ends here, persisted first; the principal is told now if connected,
    or by the refusal of its next hello (ended_by_off). The copy stays RESTORING."""
    ended = (("partner", None), ("role", Role.NONE), ("suspended", False), ("ended_by_off", view.partner))
    return [PersistConfig(ended), TellPartner("partner_off", before_closing=True), StopInbound()]


def on_suspend_issued(view: RoleView, event: SuspendIssued) -> list[StatementAction]:
    """SUSPEND: the principal's settings are the session's, so the principal suspends; a mirror asks it to (its link is up:
    core.rules), and adopts SUSPENDED from the settings the principal sends back."""
    if view.role is Role.MIRROR:
        return [TellPartner("suspend", reason=f"SET PARTNER SUSPEND on the mirror {event.node}"),
                RecordEvent("SUSPEND", "SET PARTNER SUSPEND on this mirror: asked the principal")]
    why = "SET PARTNER SUSPEND on this principal"
    return [SuspendSession(why, SuspendCause.STATEMENT), RecordEvent("SUSPEND", why)]


def on_resume_issued(view: RoleView, event: ResumeIssued) -> list[StatementAction]:
    """RESUME: the principal resumes the session; a mirror asks it to."""
    if view.role is Role.MIRROR:
        return [TellPartner("resume"), RecordEvent("RESUME", "SET PARTNER RESUME on this mirror: asked the principal")]
    return [ResumeSession(), RecordEvent("RESUME", "SET PARTNER RESUME on this principal")]


def on_failover_issued(view: RoleView, event: FailoverIssued) -> list[StatementAction]:
    """SET PARTNER FAILOVER: hand the session over to the mirror, in the next role sequence."""
    return [HandOver(view.role_sequence + 1)]


def on_failover_outcome(view: RoleView, event: FailoverOutcome) -> list[StatementAction]:
    """What a manual failover comes to, judged against the session as the statement found it (view).

    Refused or abandoned, nothing changed: the mirror did not harden the end
    of log in time, the witness did not record the switch, or the link closed
    before the failover left. Decided: the witness recorded the switch, or the
    mirror answered that it took over: stop serving, then step down. In doubt:
    sent, unanswered, and no witness decided it: the mirror may have promoted
    itself and lost only its answer, so serving on could make two principals;
    stop serving until the partner says (on_partner_welcomed, or a newer principal).
    """
    if event.hardened_lsn < event.end:
        return [RefuseStatement(f"manual failover abandoned: the mirror hardened only up to LSN {event.hardened_lsn} of "
                                f"{event.end} within PARTNER TIMEOUT ({view.timeout} s); nothing changed")]
    if event.witness is None:
        return []  # the witness is asked next
    if event.witness is WitnessSwitch.GONE:
        return [RefuseStatement(f"manual failover abandoned: the witness {view.witness} went away; nothing changed")]
    if event.witness is WitnessSwitch.SILENT:
        return [RefuseStatement(f"manual failover abandoned: the witness did not answer ({event.witness_error}); "
                                "nothing changed")]
    if event.witness is WitnessSwitch.REFUSED:
        return [RefuseStatement("manual failover refused by the witness (it holds a different role sequence)")]
    if event.sent is None:
        return []  # the mirror is sent the failover next
    if not event.answered and event.witness is not WitnessSwitch.RECORDED:
        if not event.sent:
            return [RefuseStatement("manual failover abandoned: the connection to the mirror closed before the failover "
                                    "was sent; nothing changed. Retry once it is SYNCHRONIZED again")]
        why = ("a manual failover was sent and never confirmed: its outcome is unknown, so this node does not "
               f"serve {event.db} until the partner answers (it becomes the mirror if the failover happened, "
               "and serves again if not)")
        return [StopServingInDoubt(why), RefuseStatement(why)]
    # decided by the witness's record (the mirror takes over once its witness tells it), or by the mirror's answer
    return [StopServing(), StepDown(view.role_sequence + 1, f"manual failover to {view.partner}")]


def on_force_service_issued(view: RoleView, event: ForceServiceIssued) -> list[StatementAction]:
    """FORCE_SERVICE_ALLOW_DATA_LOSS: with a witness, only through its vote (it records the new role sequence, so the
    old principal cannot serve in it); without one, this mirror promotes itself, forced."""
    if view.witness is not None:
        if not view.witness_connected:
            return [RefuseStatement("a witness is set and this mirror cannot reach it; forced service needs mirror and "
                                    "witness connected")]
        return [AskForVote(forced=True)]
    return [Promote(view.role_sequence + 1, forced=True, why="FORCE_SERVICE_ALLOW_DATA_LOSS")]


def on_forced_vote_failed(view: RoleView, event: ForcedVoteFailed) -> list[StatementAction]:
    """Forced service not granted: refused, saying the witness's reason; or in doubt, since the witness may have recorded
    the vote and lost only its answer (then its record names this node, and on_witness_state promotes it, forced)."""
    if event.answered:
        return [RefuseStatement(f"the witness refused forced service: {event.reason}")]
    return [StatementInDoubt(
        f"forced service on {event.db}: the witness did not answer the vote within {event.timeout:g} s ({event.error}); "
        "whether it granted it is unknown. If its record names this node, this node becomes the principal as soon as it "
        "hears so: check sys.database_mirroring (role) before trying again")]


def on_partner_off_heard(view: RoleView, event: PartnerOffHeard) -> list[StatementAction]:
    """The partner ended the session: so does this copy, persisted first. A principal stays a standalone database
    (not SUSPENDED); a mirror keeps its copy RESTORING until RESTORE … WITH RECOVERY."""
    if view.role is event.partner_role:
        return []  # heard on a link of a role this copy no longer has (a role change ended it): not its session's word
    # not SUSPENDED either way: a copy recovered and mirrored again starts a session of its own, as after its own OFF
    ended = PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False)))
    return [ended, SessionRemovedByPartner(view.role, view.partner)]


def on_off_notice_heard(view: RoleView, event: OffNoticeHeard) -> list[StatementAction]:
    """The old principal's off notice ends this mirror's session with it, not one with another principal or a newer one.

    The notice is confirmed whatever this decides: its sender only needs to know it may stop telling.
    """
    if view.partner is None or event.role_sequence < view.role_sequence or not is_partner(view, event.sender):
        return []
    return [StopInbound(), PersistConfig((("partner", None), ("role", Role.NONE), ("suspended", False))),
            SessionRemovedByPartner(Role.MIRROR, view.partner)]


def on_resume_asked_by_mirror(view: RoleView, event: ResumeAskedByMirror) -> list[StatementAction]:
    """The mirror's RESUME is carried out by its principal, if the session is still SUSPENDED."""
    return [ResumeSession()] if view.suspended else []


STATEMENT_TRANSITIONS: dict[tuple[Role, type], Rule] = {
    (Role.PRINCIPAL, PartnerOffIssued): on_partner_off_as_principal,
    (Role.MIRROR, PartnerOffIssued): on_partner_off_as_mirror,
    (Role.PRINCIPAL, SuspendIssued): on_suspend_issued,
    (Role.MIRROR, SuspendIssued): on_suspend_issued,
    (Role.PRINCIPAL, ResumeIssued): on_resume_issued,
    (Role.MIRROR, ResumeIssued): on_resume_issued,
    (Role.PRINCIPAL, FailoverIssued): on_failover_issued,
    (Role.PRINCIPAL, FailoverOutcome): on_failover_outcome,
    (Role.MIRROR, ForceServiceIssued): on_force_service_issued,
    (Role.MIRROR, ForcedVoteFailed): on_forced_vote_failed,
    (Role.PRINCIPAL, PartnerOffHeard): on_partner_off_heard,
    (Role.MIRROR, PartnerOffHeard): on_partner_off_heard,
    (Role.MIRROR, OffNoticeHeard): on_off_notice_heard,
    (Role.PRINCIPAL, ResumeAskedByMirror): on_resume_asked_by_mirror,
}
TRANSITIONS.update(STATEMENT_TRANSITIONS)  # one table: core.roles.handle answers these events too
