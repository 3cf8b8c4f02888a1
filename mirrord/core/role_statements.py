"""The partner statements' role changes: what each role does when a statement is issued on it (pure, synchronous).

ALTER DATABASE … SET PARTNER { OFF | SUSPEND | RESUME | FAILOVER |
FORCE_SERVICE_ALLOW_DATA_LOSS }, SET PARTNER = '<endpoint>', SET WITNESS and
the session's settings (SET PARTNER SAFETY, TIMEOUT, REDO_QUEUE) reach these
rules once `core.rules` allowed them here (a refused statement changes nothing). Their rows are part of the one
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

from mirrord.core import redo_queue
from mirrord.core.roles import TRANSITIONS, AskForVote, Promote, RoleView, Rule, StepDown, is_partner, same_endpoint
from mirrord.core.types import DatabaseStatus, Role, Safety

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


# ---- starting a session, and the session's settings (issued on the principal; its mirror adopts them)


@dataclass(frozen=True)
class PartnerSet:
    """SET PARTNER = '<endpoint>': start a session with that partner, issued first where the mirror's copy is to be
    (RESTORING, or none yet: it is created), then on the principal's ONLINE database."""

    db: str
    endpoint: str  # the partner's, tcp://host:port


@dataclass(frozen=True)
class WitnessSet:
    """SET WITNESS = '<endpoint>', or SET WITNESS OFF (None)."""

    endpoint: str | None


@dataclass(frozen=True)
class SafetySet:
    """SET PARTNER SAFETY { FULL | OFF }."""

    safety: Safety


@dataclass(frozen=True)
class TimeoutSet:
    """SET PARTNER TIMEOUT seconds."""

    seconds: int


@dataclass(frozen=True)
class RedoQueueSet:
    """SET PARTNER REDO_QUEUE { n MB | UNLIMITED } (mb 0: UNLIMITED, core.redo_queue)."""

    mb: int
    log_size_limit: int  # this node's log size limit, bytes: the redo queue lives in the mirror's log, whose limit it shares


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
                       ForcedVoteFailed, PartnerSet, WitnessSet, SafetySet, TimeoutSet, RedoQueueSet, PartnerOffHeard,
                       OffNoticeHeard, ResumeAskedByMirror]


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
class StartPartnerLink:
    """The principal starts its link to the mirror: the handshake, then the log streamed (it redials until stopped)."""


@dataclass(frozen=True)
class StopOffNotice:
    """Stop telling an old mirror of an earlier SET PARTNER OFF (the off notice, in the principal's link slot): a new
    session supersedes it."""


@dataclass(frozen=True)
class SendSettings:
    """Tell the mirror the session's settings as persisted (a `settings` frame, if the link is up), then re-evaluate what
    they decide here: the quorum (the witness link reports a new TIMEOUT, a shorter one too), the commits waiting for
    the mirror, the writers the redo queue holds."""


@dataclass(frozen=True)
class NoteSuspended:
    """The session is SUSPENDED here: the mirror takes no more log, so it stops counting as caught up (else RESUME would
    find it SYNCHRONIZED before it has the log written meanwhile: Session.note_suspended)."""


@dataclass(frozen=True)
class StopWitnessLink:
    """Stop the link to the witness and forget what it granted: its lease ends, and the mirror counts as synchronized
    (as the witness believes it) until the new witness answers."""


@dataclass(frozen=True)
class StartWitnessLink:
    """Start the link to the witness the persisted configuration names."""


@dataclass(frozen=True)
class CreateMirrorCopy:
    """Create the database on this node, RESTORING, as the mirror of partner (its configuration persisted first):
    it is seeded when the principal connects."""

    db: str
    partner: str


@dataclass(frozen=True)
class ProbeMirror:
    """Before the principal commits to a session: dial the mirror and say hello as its principal in role_sequence.

    It changes nothing there (the hello is answered and the connection closed).
    The statement is refused with one of these texts when the mirror cannot be
    reached, does not answer or refuses: nothing after it is carried out.
    """

    endpoint: str
    role_sequence: int

    def unreachable(self, error: str) -> str:
        """The refusal when the endpoint cannot be dialed (error: what failed)."""
        return f"cannot reach the mirror's endpoint {self.endpoint}: {error}; start it, or check the address"

    def unanswered(self, error: str) -> str:
        """The refusal when the hello got no answer (error: what failed)."""
        return f"the mirror's endpoint {self.endpoint} did not answer: {error}"

    @staticmethod
    def refused(reason: str) -> str:
        """The refusal when the mirror refused the hello, saying why."""
        return f"the mirror refused: {reason}"


@dataclass(frozen=True)
class TellWitnessTimeout:
    """Ask the witness to take a longer TIMEOUT (w_report) before this principal adopts it.

    A longer TIMEOUT lengthens the principal's lease: the witness must wait as
    long before it votes, so it hears first (a shorter one is safe to adopt at
    once, and reaches it by the witness link's report). The statement is
    refused, nothing changed, when the witness cannot hear it or does not accept it.
    """

    seconds: int
    witness: str

    def unheard(self) -> str:
        """The refusal when the witness is not connected, or does not answer."""
        return (f"PARTNER TIMEOUT can be raised only while the witness {self.witness} hears it first (it must wait as "
                "long before it votes); nothing changed. Try again when witness_state is CONNECTED")

    @staticmethod
    def not_accepted(role_sequence: object) -> str:
        """The refusal when the witness answered no (it holds another role sequence)."""
        return f"the witness did not accept the new TIMEOUT (it holds role sequence {role_sequence}); nothing changed"


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


StatementAction = Union[PersistConfig, TellPartner, StopPartnerLink, StartPartnerLink, StopOffNotice, SendSettings,
                        NoteSuspended, StopWitnessLink, StartWitnessLink, CreateMirrorCopy, ProbeMirror, TellWitnessTimeout, StopInbound,
                        StartOffNotice, SessionRemovedByPartner, ResumeSession, RecordEvent, HandOver, StopServing,
                        StopServingInDoubt, RefuseStatement, StatementInDoubt, Promote, StepDown, AskForVote]


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
    return [PersistConfig((("suspended", True),)), NoteSuspended(), SendSettings(), RecordEvent("SUSPEND", why)]


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


def on_partner_set(view: RoleView, event: PartnerSet) -> list[StatementAction]:
    """SET PARTNER '<endpoint>': where there is no copy yet, one is created as the mirror; a RESTORING copy becomes the
    mirror, persisted; an ONLINE database becomes the principal, once the mirror accepted its hello, persisted before
    its link to the mirror starts (in role sequence 1 at least: the session's first)."""
    if same_endpoint(view.endpoint, event.endpoint):
        return [RefuseStatement(f"{event.endpoint} is this node's own endpoint; name the other partner's endpoint")]
    if view.status is None:
        return [CreateMirrorCopy(event.db, event.endpoint)]
    new_session = (("partner", event.endpoint), ("ended_by_off", None), ("off_untold", None))  # an earlier OFF is over
    if view.status is DatabaseStatus.RESTORING:
        return [PersistConfig((("role", Role.MIRROR),) + new_session)]
    role_sequence = max(view.role_sequence, 1)
    return [ProbeMirror(event.endpoint, role_sequence), StopOffNotice(),
            PersistConfig((("role", Role.PRINCIPAL), ("role_sequence", role_sequence)) + new_session), StartPartnerLink()]


def on_witness_set(view: RoleView, event: WitnessSet) -> list[StatementAction]:
    """SET WITNESS: the old witness's link ends first, then the new witness is persisted, the mirror told (it keeps the
    session's witness too), and the new witness's link started; SET WITNESS OFF starts none."""
    start = [StartWitnessLink()] if event.endpoint is not None else []
    return [StopWitnessLink(), PersistConfig((("witness", event.endpoint),)), SendSettings()] + start


def on_safety_set(view: RoleView, event: SafetySet) -> list[StatementAction]:
    """SET PARTNER SAFETY: persisted, then the mirror told; commits wait for the mirror (FULL) or not (OFF) from now on."""
    return [PersistConfig((("safety", event.safety),)), SendSettings()]


def on_timeout_set(view: RoleView, event: TimeoutSet) -> list[StatementAction]:
    """SET PARTNER TIMEOUT: a longer one is accepted by the witness first (TellWitnessTimeout); then persisted, the
    mirror told, and the witness link reports it."""
    ask = [TellWitnessTimeout(event.seconds, view.witness)] if view.witness is not None and event.seconds > view.timeout else []
    return ask + [PersistConfig((("timeout", event.seconds),)), SendSettings()]


def on_redo_queue_set(view: RoleView, event: RedoQueueSet) -> list[StatementAction]:
    """SET PARTNER REDO_QUEUE: refused when the log would fill before the limit held anything back; else persisted, then
    the mirror told (it reports redo progress while a limit is set), and held writers go if they now may."""
    if event.mb != redo_queue.UNLIMITED:
        if (why := redo_queue.limit_over_log_refusal(event.mb, event.log_size_limit)) is not None:
            return [RefuseStatement(why)]
    return [PersistConfig((("redo_queue_mb", event.mb),)), SendSettings()]


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
    (Role.NONE, PartnerSet): on_partner_set,  # the status decides (core.rules: no partner yet)
    (Role.MIRROR, PartnerSet): on_partner_set,
    (Role.PRINCIPAL, PartnerSet): on_partner_set,
    (Role.PRINCIPAL, WitnessSet): on_witness_set,
    (Role.PRINCIPAL, SafetySet): on_safety_set,
    (Role.PRINCIPAL, TimeoutSet): on_timeout_set,
    (Role.PRINCIPAL, RedoQueueSet): on_redo_queue_set,
    (Role.PRINCIPAL, PartnerOffHeard): on_partner_off_heard,
    (Role.MIRROR, PartnerOffHeard): on_partner_off_heard,
    (Role.MIRROR, OffNoticeHeard): on_off_notice_heard,
    (Role.PRINCIPAL, ResumeAskedByMirror): on_resume_asked_by_mirror,
}
TRANSITIONS.update(STATEMENT_TRANSITIONS)  # one table: core.roles.handle answers these events too
