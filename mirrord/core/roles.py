"""Role changes: for each event a database's copy hears, what its role does next (pure, synchronous).

A copy of a database is PRINCIPAL, MIRROR or NONE (standalone) in a role
sequence. Twelve kinds of event can change its role or its session's state
without a statement, and TRANSITIONS lists, for each role and event, the rule
that decides (the partner statements' rows, from core.role_statements, and the
leases' and links', from core.leases, follow):

    role        event                 rule                     what it may do
    PRINCIPAL   WitnessState          on_witness_state         step down (newer principal recorded);
                                                               note whether the witness holds the mirror synchronized
    PRINCIPAL   PartnerIsPrincipal    on_partner_principal     step down, once the witness's record agrees
    PRINCIPAL   PartnerWelcomed       on_partner_welcomed      after forced service, suspend the session;
                                                               after a manual failover left in doubt, serve again
    MIRROR      WitnessState          on_witness_state         promote (this node recorded as principal);
                                                               adopt a newer role sequence
    MIRROR      FailoverAsked         on_failover_asked        promote, once the witness's record agrees
    MIRROR      VoteAnswered          on_vote_answered         promote (the witness granted the vote it asked for)
    MIRROR      RedoFailed            on_redo_failed           suspend the session on both partners, saying why
    PRINCIPAL   MirrorSuspended       on_mirror_suspended      suspend the session here too
    NONE        WitnessState          on_witness_state         adopt a newer role sequence
    any         PartnerHello          on_partner_hello         serve the principal's link (a mirror of it, in its
                                                               role sequence or a newer one); else refuse, saying why
    MIRROR      PrincipalLinked       on_principal_linked      adopt the principal's newer role sequence
    MIRROR      ForkFound             on_fork_found            diverged: keep a salvage copy, then record and report the loss
    MIRROR      SettingsFromPrincipal on_settings_from_principal  persist the principal's settings that differ;
                                                               refuse settings no session can have
    MIRROR      PingDue               on_ping_due              the principal lost: ask the witness for a vote
                                                               (automatic failover), when it may

    the partner statements and the session's settings (core.role_statements), once core.rules allowed them here:
    PRINCIPAL   PartnerOffIssued      on_partner_off_as_principal  persist standalone, then tell the mirror (and
                                                               again on an off notice of its own until it confirms)
    MIRROR      PartnerOffIssued      on_partner_off_as_mirror persist standalone, then tell the principal
    PRINCIPAL   SuspendIssued         on_suspend_issued        suspend the session: persisted, then the mirror told
    MIRROR      SuspendIssued         on_suspend_issued        ask the principal to suspend the session
    PRINCIPAL   ResumeIssued          on_resume_issued         resume: persisted, the mirror told, a new handshake
    MIRROR      ResumeIssued          on_resume_issued         ask the principal to resume the session
    PRINCIPAL   FailoverIssued        on_failover_issued       hand over to the mirror (manual failover)
    PRINCIPAL   FailoverOutcome       on_failover_outcome      what the hand-over's waits came to: refused with
                                                               nothing changed; in doubt, stop serving; decided
                                                               (witness's record or mirror's answer), step down
    MIRROR      ForceServiceIssued    on_force_service_issued  a forced vote from the witness; without one, promote
    MIRROR      ForcedVoteFailed      on_forced_vote_failed    refused by the witness, saying why; unanswered: in doubt
    any         PartnerSet            on_partner_set           no copy here: create it, the mirror; RESTORING: persist
                                                               the mirror; ONLINE: probe the mirror, persist the
                                                               principal, then start its link
    PRINCIPAL   WitnessSet            on_witness_set           stop the old witness's link, persist, tell the mirror,
                                                               start the new one's
    PRINCIPAL   SafetySet             on_safety_set            persist, then tell the mirror
    PRINCIPAL   TimeoutSet            on_timeout_set           a longer one: the witness accepts it first; persist,
                                                               then tell the mirror
    PRINCIPAL   RedoQueueSet          on_redo_queue_set        refused if the log fills first; persist, tell the mirror
    and what the partner hears of them:
    PRINCIPAL   PartnerOffHeard       on_partner_off_heard     the mirror ended the session: persist standalone
    MIRROR      PartnerOffHeard       on_partner_off_heard     the principal ended it: persist standalone (RESTORING)
    MIRROR      OffNoticeHeard        on_off_notice_heard      the same, told later: from its principal, not older
    PRINCIPAL   ResumeAskedByMirror   on_resume_asked_by_mirror  resume, if still SUSPENDED

    leases and links (core.leases): what keeps a principal serving, and what ends it:
    PRINCIPAL   MirrorAnswered        on_mirror_answered       renew the mirror lease, from when the answered ping was sent
    any         WitnessAnswered       on_witness_answered      renew the witness lease, when the answer names this node principal
    any         WitnessLinked         on_witness_linked        the witness is CONNECTED
    any         WitnessLinkLost       on_witness_link_lost     the witness lease ends at once; DISCONNECTED
    any         EndpointStopped       on_endpoint_stopped      links closed on purpose: both leases end
    MIRROR      AnsweredPrincipal     on_answered_principal    note when this mirror answered its principal (welcome, pong)

A principal's hello arrives as events, in order: PartnerIsPrincipal (a
principal it deposes steps down), PartnerHello (answered in the role that
leaves), then, once the link is served, SettingsFromPrincipal, PrincipalLinked
and ForkFound if the hello names the principal's fork. Anything not in the
table changes nothing. Time comes in with the events that need it (the
instant a ping was sent, an answer given); no rule reads a clock, and
core.leases.next_timer says when something next falls due without an event.
The rules return actions; the shell carries them out in order
(mirrord.engine.role_change, mirrord.engine.mirror_session for those of the
principal's link, mirrord.engine.database.hear for the leases') — persisting
the new configuration before it tells anyone
(mirrord.engine.database.Database.update_config) — and asks `promotion_due` /
`step_down_due` again at the instant it acts, under the database's role-change
lock, since the role may have moved on while it waited for the witness.

The words are the reference's and SQL Server's: the role sequence counts the
role switches (failovers and forced service) of a session, as
`mirroring_role_sequence` in sys.database_mirroring (`role_sequence` everywhere in
the code); a mirror that loses its principal "forms a quorum with the
witness server and promotes itself" (reference/role-change-and-failover.txt),
and the witness's record names the principal of the latest role sequence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Union

from mirrord.core import quorum, redo_queue
from mirrord.core.statements import MAX_TIMEOUT, MIN_TIMEOUT
from mirrord.core.types import DatabaseStatus, Endpoint, Role, Safety


@dataclass(frozen=True)
class RoleView:
    """What the rules read of a database's copy on this node."""

    role: Role
    role_sequence: int
    endpoint: str  # this node's endpoint URL
    partner: str | None = None  # the partner's endpoint URL, as configured
    changing: bool = False  # a failover of our own is under way (manual, or a vote we asked for): it switches roles itself
    redo_error: str | None = None  # a mirror whose redo failed cannot open its copy
    forced_fork: bool = False  # a principal whose role sequence began by forced service, not yet rejoined by its partner
    failover_in_doubt: bool = False  # a principal whose manual failover was sent and never confirmed: not serving
    # a mirror asking the witness for a vote (automatic failover or forced service): it takes no log meanwhile
    asking_witness: bool = False
    mirror_open: bool = True  # a MIRROR whose mirror engine runs (hardening, redo): it can take log
    ended_by_off: str | None = None  # SET PARTNER OFF ran here, ending the session with this endpoint
    # the session's settings as this copy holds them (a mirror adopts its principal's)
    safety: Safety = Safety.FULL
    timeout: int = 10
    redo_queue_mb: int = redo_queue.UNLIMITED
    suspended: bool = False
    witness: str | None = None
    witness_connected: bool = False  # this node's link to the witness is up
    partner_connected: bool = False  # a mirror: its principal's link is up
    principal_was_synchronized: bool = False  # a mirror: the principal's state when it last heard from it
    lost_lsn_to: int = 0  # the end of the loss this copy recorded when it last diverged (0: none)
    salvage_path: str | None = None  # where it kept its salvage copy then
    status: DatabaseStatus | None = DatabaseStatus.ONLINE  # RESTORING: a mirror's copy; None: no copy here (yet)
    # the instants core.leases.next_timer reads (monotonic seconds, the shell's clock)
    mirror_lease_until: float = 0.0  # a principal: its mirror lease ends (0: none)
    witness_lease_until: float = 0.0  # a principal: its witness lease ends (0: none)
    serves_from: float = 0.0  # a principal promoted from the witness's record: not serving before
    principal_answered_at: float = float("-inf")  # a mirror: when it last answered its principal (welcome, pong)


# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class WitnessState:
    """The witness's record of the session (w_state): the principal of its latest role sequence."""

    role_sequence: int
    principal: str
    forced: bool = False  # that role sequence began by forced service
    mirror_synchronized: bool = False


@dataclass(frozen=True)
class PartnerIsPrincipal:
    """The partner speaks as principal of a role sequence (its hello, or its refusal of ours).

    The shell raises it only for the configured partner (the links know whom
    they dialed, and a hello's sender is checked against the partner setting).
    """

    role_sequence: int
    partner: str


@dataclass(frozen=True)
class PartnerWelcomed:
    """The partner welcomed this node as its principal in role_sequence (the link's handshake)."""

    role_sequence: int


@dataclass(frozen=True)
class FailoverAsked:
    """The principal asks this mirror to take over (manual failover) in a new role sequence."""

    role_sequence: int


@dataclass(frozen=True)
class VoteAnswered:
    """The witness answered this mirror's vote request (automatic failover, or forced service)."""

    granted: bool
    role_sequence: int  # the new role sequence if granted, the witness's current one if not
    forced: bool = False


@dataclass(frozen=True)
class RedoFailed:
    """The mirror's redo could not apply a record: its copy cannot be served (mirroring-states.txt: SUSPENDED)."""

    why: str


@dataclass(frozen=True)
class MirrorSuspended:
    """The mirror asks its principal to suspend the session (its redo failed), saying why."""

    reason: str


@dataclass(frozen=True)
class PartnerHello:
    """A node says hello to this copy as its principal: it asks this copy to mirror it (the principal's link).

    The shell feeds PartnerIsPrincipal first (a principal the hello deposes
    steps down then), so the hello is answered in the role that leaves.
    """

    db: str
    node: str  # this node's name: a refusal says where
    sender: str  # the endpoint the sender says it is (its certificate covers it)
    role_sequence: int


@dataclass(frozen=True)
class PrincipalLinked:
    """The principal's link is this mirror's now: its hello was accepted and any older link has ended."""

    role_sequence: int


@dataclass(frozen=True)
class ForkFound:
    """The new principal's hello says where its role sequence began (its failover LSN, the fork).

    `shared_end` is the last LSN whose record this copy shares with the new
    principal's history (core.history.shared_history_end): whatever this copy
    holds past it is not in that history.
    """

    role_sequence: int  # the new principal's
    fork_lsn: int
    shared_end: int
    log_end: int  # this copy's last LSN
    log_role_sequence: int  # the role sequence of this copy's newest record
    has_copy: bool  # its page store exists: a salvage copy can be kept


@dataclass(frozen=True)
class SettingsFromPrincipal:
    """The principal's settings (in its hello, or a `settings` frame): a mirror's session settings are its principal's."""

    safety: str
    timeout: int
    suspended: bool
    redo_queue_mb: int | None = None  # None: left out (an older principal), unchanged
    witness: str | None = None  # "" no witness; None: not said


@dataclass(frozen=True)
class PingDue:
    """The mirror's link to the witness is about to ping it: at every ping interval, and at once when woken.

    The principal's link ending wakes it, whether by a hard error or by
    silence past PARTNER TIMEOUT (mirror_session: both end the link the same
    way); the witness, not the mirror, waits out the TIMEOUT before it votes.
    """


Event = Union[WitnessState, PartnerIsPrincipal, PartnerWelcomed, FailoverAsked, VoteAnswered, RedoFailed, MirrorSuspended,
              PartnerHello, PrincipalLinked, ForkFound, SettingsFromPrincipal, PingDue]


# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Promote:
    """Become the principal of `role_sequence` (forced: a recovery fork, the old principal's extra log is lost)."""

    role_sequence: int
    forced: bool
    why: str
    needs_witness: bool = False  # only once the witness's record names this node principal of role_sequence
    # learned from the witness's record, not from a vote's answer or a hand-over: this mirror may have answered
    # the old principal since it asked (its request timed out, the principal reconnected), so it serves only once
    # the lease that answer granted has run out (quorum.old_principal_lease_end)
    from_record: bool = False


@dataclass(frozen=True)
class StepDown:
    """Stop serving and become the mirror of the principal of `role_sequence`."""

    role_sequence: int
    why: str
    needs_witness: bool = False  # only once the witness's record names the new principal (claimant)
    claimant: str = ""


@dataclass(frozen=True)
class AdoptRoleSequence:
    """Remember a newer role sequence without changing role (a mirror of the new principal, or a copy outside it)."""

    role_sequence: int


@dataclass(frozen=True)
class NoteWitnessSynchronized:
    """The witness records the mirror synchronized (automatic failover needs it): nothing is acknowledged alone.

    There is no "not synchronized" counterpart: no answer lowers the belief (on_witness_state)."""


class SuspendCause(str, enum.Enum):
    """Why a session is suspended without a statement; the shell says so in its own way for each."""

    FORCED_REJOIN = "forced rejoin"  # the old principal rejoined after forced service: its lost transactions are reported first
    REDO_FAILED = "redo failed"  # this mirror's redo failed: the principal is told now and at every connection
    MIRROR_ASKED = "mirror asked"  # the mirror's redo failed and it said so


@dataclass(frozen=True)
class SuspendSession:
    """SUSPENDED: no log flows until RESUME."""

    why: str
    cause: SuspendCause = SuspendCause.FORCED_REJOIN


@dataclass(frozen=True)
class ServeAgain:
    """Serve again: the role change that stopped this principal serving did not happen."""

    why: str


@dataclass(frozen=True)
class RefuseHello:
    """Refuse the principal's hello, saying why: it redials (partner_off: SET PARTNER OFF ended the session here, end it there)."""

    reason: str
    partner_off: bool = False


@dataclass(frozen=True)
class ServePrincipal:
    """Take the principal's link, once there is room to harden its log (the shell measures the log's limit and the disk)."""

    role_sequence: int


@dataclass(frozen=True)
class KeepSalvageCopy:
    """Keep a copy of this database as redo leaves it, for the DBA: its transactions past shared_lsn are not in the new history."""

    shared_lsn: int


@dataclass(frozen=True)
class ReportLoss:
    """Record (persisted) and report that LSN lost_from..lost_to of this copy are not in the new principal's history.

    salvaged: a salvage copy was kept just before (KeepSalvageCopy); otherwise none is recorded.
    """

    lost_from: int
    lost_to: int
    role_sequence: int  # the new principal's
    fork_lsn: int  # where its role sequence began
    salvaged: bool


@dataclass(frozen=True)
class AdoptSettings:
    """Persist the principal's settings that differ from this copy's, as (name, value) pairs of the session's config."""

    changes: tuple[tuple[str, object], ...]

    def as_dict(self) -> dict:
        """The changes as keyword arguments of the config's update."""
        return dict(self.changes)


@dataclass(frozen=True)
class RefuseSettings:
    """The principal sent settings no session can have: a protocol error, the link ends and nothing changes."""

    why: str


@dataclass(frozen=True)
class AskForVote:
    """Ask the witness to promote this mirror: its answer comes back as VoteAnswered.

    forced: FORCE_SERVICE_ALLOW_DATA_LOSS, the synchronization not required (its
    client hears a refusal, or that the answer was lost); else automatic
    failover, asked by the witness link at its ping.
    """

    forced: bool = False


Action = Union[Promote, StepDown, AdoptRoleSequence, NoteWitnessSynchronized, SuspendSession, ServeAgain,
               RefuseHello, ServePrincipal, KeepSalvageCopy, ReportLoss, AdoptSettings, RefuseSettings, AskForVote]


# ------------------------------------------------------------------ rules


def on_witness_state(view: RoleView, event: WitnessState) -> list[Action]:
    """The witness's record wins over what this copy believes: a newer role sequence decides the roles."""
    if view.changing:
        return []  # our own failover switches roles itself
    if event.role_sequence > view.role_sequence:
        if event.principal == view.endpoint:
            if view.role is Role.MIRROR:
                # forced as recorded: a forced vote whose answer this mirror never got is still a recovery fork
                return [Promote(event.role_sequence, forced=event.forced, why="the witness records this node as principal",
                                from_record=True)]
            return []  # a principal already, or no longer in the session: nothing to take over
        if view.role is Role.PRINCIPAL:
            return [StepDown(event.role_sequence, f"the witness records {event.principal} as principal")]
        return [AdoptRoleSequence(event.role_sequence)]
    if (event.role_sequence == view.role_sequence and view.role is Role.PRINCIPAL and event.principal == view.endpoint
            and event.mirror_synchronized):
        # Only ever towards "synchronized": this answer may be to a request sent before a later "synchronized"
        # report the witness has already recorded, and a principal believing "not synchronized" acknowledges
        # alone. Only the acceptance of its latest report lowers the belief (witness_link._report_if_changed).
        return [NoteWitnessSynchronized()]
    return []


def on_partner_principal(view: RoleView, event: PartnerIsPrincipal) -> list[Action]:
    """A principal hears its own partner claim a newer role sequence: it steps down if the witness agrees.

    Without a witness the authenticated partner's word is the record, as
    between the reference's partners; with one, the record decides.
    """
    if view.role is Role.PRINCIPAL and event.role_sequence > view.role_sequence and is_partner(view, event.partner):
        return [StepDown(event.role_sequence, f"the partner {event.partner} is principal in role sequence {event.role_sequence}",
                         needs_witness=True, claimant=event.partner)]
    return []


def on_partner_welcomed(view: RoleView, event: PartnerWelcomed) -> list[Action]:
    """The mirror accepted this principal in its own role sequence: what that settles."""
    if view.role is not Role.PRINCIPAL or event.role_sequence != view.role_sequence:
        return []
    actions: list[Action] = []
    if view.forced_fork:
        # reference (forced service): the old principal rejoins as the mirror and the session is SUSPENDED
        actions.append(SuspendSession("the partner rejoined after forced service"))
    if view.failover_in_doubt:
        actions.append(ServeAgain("the partner welcomed this node as its principal in its role sequence: "
                                  "the manual failover did not happen"))
    return actions


def on_failover_asked(view: RoleView, event: FailoverAsked) -> list[Action]:
    """The principal handed over (manual failover): take over once the witness recorded the switch."""
    if view.role is Role.MIRROR and event.role_sequence > view.role_sequence:
        return [Promote(event.role_sequence, forced=False, why="manual failover", needs_witness=True)]
    return []


def on_vote_answered(view: RoleView, event: VoteAnswered) -> list[Action]:
    """The witness granted the vote: this mirror "forms a quorum with the witness and promotes itself"."""
    if view.role is Role.MIRROR and event.granted and event.role_sequence > view.role_sequence:
        why = "FORCE_SERVICE_ALLOW_DATA_LOSS, the witness granted the vote" if event.forced else "witness vote granted"
        return [Promote(event.role_sequence, forced=event.forced, why=why)]
    return []  # refused (the caller says why), or the role moved on while the answer was on its way


def on_redo_failed(view: RoleView, event: RedoFailed) -> list[Action]:
    """A mirror that cannot redo suspends the session (both partners), so no failover goes to a copy that cannot open."""
    return [SuspendSession(event.why, SuspendCause.REDO_FAILED)] if view.role is Role.MIRROR else []


def on_mirror_suspended(view: RoleView, event: MirrorSuspended) -> list[Action]:
    """The principal's side of a mirror that cannot go on: suspended here too, commits stop waiting for it."""
    return [SuspendSession(event.reason, SuspendCause.MIRROR_ASKED)] if view.role is Role.PRINCIPAL else []


def on_partner_hello(view: RoleView, event: PartnerHello) -> list[Action]:
    """Mirror the principal that said hello, or refuse it, saying why (the refusals the principal reports).

    Only a mirror mirrors, of its own partner, in its role sequence or a newer
    one (the principal's role changed while it was away), and not while it
    asks the witness to promote it: log taken then could reach a copy the
    witness is making principal. A copy where SET PARTNER OFF ended the
    session with this principal tells it to end it too.
    """
    if view.partner is None and view.ended_by_off is not None and same_endpoint(view.ended_by_off, event.sender):
        return [RefuseHello(f"SET PARTNER OFF ended the mirroring of {event.db} on {event.node}; end it on the principal too",
                            partner_off=True)]
    here = f"database {event.db} on {event.node}"
    if view.role is not Role.MIRROR or not view.mirror_open:
        return [RefuseHello(f"{here} is not a mirror (role {view.role.value}, role sequence {view.role_sequence})")]
    if view.asking_witness:
        return [RefuseHello(f"{here} is asking the witness to fail over; it takes no log meanwhile")]
    if not is_partner(view, event.sender):
        return [RefuseHello(f"{here} mirrors {view.partner}, not {event.sender}")]
    if event.role_sequence < view.role_sequence:
        return [RefuseHello(f"hello from role sequence {event.role_sequence}, older than this node's {view.role_sequence}")]
    return [ServePrincipal(event.role_sequence)]


def on_principal_linked(view: RoleView, event: PrincipalLinked) -> list[Action]:
    """A principal of a newer role sequence (a failover while this mirror was away): its role sequence is the session's."""
    return [AdoptRoleSequence(event.role_sequence)] if event.role_sequence > view.role_sequence else []


def diverged_end(event: ForkFound) -> int | None:
    """The last LSN this copy shares with the new principal, when it holds log past it (it diverged); None if it did not.

    A copy whose newest record is of the principal's role sequence or a newer
    one went on in that history, not beside it.
    """
    if event.role_sequence <= event.log_role_sequence or event.log_end <= event.shared_end:
        return None
    return event.shared_end


def on_fork_found(view: RoleView, event: ForkFound) -> list[Action]:
    """Before the new principal decides anything (rewind or reseed), record what this copy loses, and salvage it.

    Its history diverged from ours after its fork, or before it when this copy
    went on in a newer role sequence than the principal's record there
    (core.history): whatever this copy holds past the shared part is lost,
    reported with the copy kept for the DBA, once (a reconnection finds it recorded).
    """
    shared = diverged_end(event)
    if shared is None or event.role_sequence < view.role_sequence:
        return []  # nothing past the shared history, or a principal this copy has moved on from: nothing lost to it
    if view.lost_lsn_to == event.log_end and view.salvage_path:
        return []  # recorded at an earlier connection
    salvage: list[Action] = [KeepSalvageCopy(shared)] if event.has_copy else []
    return salvage + [ReportLoss(shared + 1, event.log_end, event.role_sequence, event.fork_lsn, salvaged=event.has_copy)]


def on_settings_from_principal(view: RoleView, event: SettingsFromPrincipal) -> list[Action]:
    """The principal's safety, timeout, REDO_QUEUE, witness and SUSPENDED flag become this mirror's, persisted.

    They outlive a role change, so the mirror keeps them too. A mirror whose
    redo failed stays SUSPENDED until it is fixed, whatever the principal says.
    """
    if event.safety not in (Safety.FULL.value, Safety.OFF.value) or not MIN_TIMEOUT <= event.timeout <= MAX_TIMEOUT:
        return [RefuseSettings(f"bad settings from the principal: safety {event.safety!r}, timeout {event.timeout!r}")]
    changes: list[tuple[str, object]] = []
    if event.safety != view.safety.value:
        changes.append(("safety", Safety(event.safety)))
    if event.timeout != view.timeout:
        changes.append(("timeout", event.timeout))
    limit = view.redo_queue_mb if event.redo_queue_mb is None else event.redo_queue_mb
    if limit != redo_queue.UNLIMITED and redo_queue.limit_refusal(limit) is not None:
        return [RefuseSettings(f"bad settings from the principal: redo_queue_mb {limit!r}")]
    if limit != view.redo_queue_mb:
        changes.append(("redo_queue_mb", limit))
    if event.suspended != view.suspended and not (view.suspended and view.redo_error is not None):
        changes.append(("suspended", event.suspended))
    if event.witness is not None and (event.witness or None) != view.witness:
        changes.append(("witness", event.witness or None))
    return [AdoptSettings(tuple(changes))] if changes else []


def on_ping_due(view: RoleView, event: PingDue) -> list[Action]:
    """A mirror that finds the principal unavailable asks the witness to promote it, when automatic failover may.

    Reference: the mirror "communicates with the witness server and receives
    confirmation that the witness also cannot see" the principal, then "forms a
    quorum with the witness server and promotes itself"; the conditions are
    quorum.automatic_failover_refusal's (SAFETY FULL, a witness, synchronized
    when the principal was lost, not SUSPENDED, redo not failed). The witness
    link feeds this event, so the witness is connected; a mirror whose engine
    is not open (a role change under way) has nothing to promote.
    """
    view_of_mirror = quorum.MirrorView(view.safety, view.witness is not None, True, view.partner_connected,
                                       view.principal_was_synchronized, view.suspended, view.redo_error)
    if quorum.automatic_failover_refusal(view_of_mirror) is not None or not view.mirror_open:
        return []
    return [AskForVote()]


def same_endpoint(a: str, b: str) -> bool:
    """Two endpoint texts name the same endpoint (tcp://host:port, however spelled)."""
    try:
        return Endpoint.parse(a) == Endpoint.parse(b)
    except ValueError:
        return False


def is_partner(view: RoleView, endpoint: str) -> bool:
    """The endpoint is this copy's configured partner."""
    return view.partner is not None and (endpoint == view.partner or same_endpoint(view.partner, endpoint))


Rule = Callable[[RoleView, Event], list[Action]]

# The partner statements' rows are core.role_statements.STATEMENT_TRANSITIONS, and the leases' and links'
# core.leases.LEASE_TRANSITIONS, added here when those modules are imported (their events are their own, so
# whoever feeds one has imported it); the docstring lists them all.
TRANSITIONS: dict[tuple[Role, type], Rule] = {
    (Role.PRINCIPAL, WitnessState): on_witness_state,
    (Role.PRINCIPAL, PartnerIsPrincipal): on_partner_principal,
    (Role.PRINCIPAL, PartnerWelcomed): on_partner_welcomed,
    (Role.MIRROR, WitnessState): on_witness_state,
    (Role.MIRROR, FailoverAsked): on_failover_asked,
    (Role.MIRROR, VoteAnswered): on_vote_answered,
    (Role.MIRROR, RedoFailed): on_redo_failed,
    (Role.PRINCIPAL, MirrorSuspended): on_mirror_suspended,
    (Role.NONE, WitnessState): on_witness_state,
    (Role.PRINCIPAL, PartnerHello): on_partner_hello,
    (Role.MIRROR, PartnerHello): on_partner_hello,
    (Role.NONE, PartnerHello): on_partner_hello,
    (Role.MIRROR, PrincipalLinked): on_principal_linked,
    (Role.MIRROR, ForkFound): on_fork_found,
    (Role.MIRROR, SettingsFromPrincipal): on_settings_from_principal,
    (Role.MIRROR, PingDue): on_ping_due,
}


def handle(view: RoleView, event: Event) -> list[Action]:
    """What the copy does on event: the rule of TRANSITIONS for its role and the event, or nothing."""
    rule = TRANSITIONS.get((view.role, type(event)))
    return rule(view, event) if rule is not None else []


# ------------------------------------------------------------------ checks at the instant of acting


def promotion_due(view: RoleView, role_sequence: int) -> bool:
    """Is it still this copy's turn to become principal of role_sequence (a mirror, the sequence newer)?"""
    return view.role is Role.MIRROR and role_sequence > view.role_sequence


def promotion_refusal(view: RoleView) -> str | None:
    """Why this mirror cannot become principal although it is its turn; None if it can.

    Never a PRINCIPAL that cannot open: a mirror whose redo failed stays a
    mirror, SUSPENDED, saying why.
    """
    return view.redo_error


def step_down_due(view: RoleView, role_sequence: int) -> bool:
    """Must this copy still step down for a principal of role_sequence (a principal, the sequence newer)?"""
    return view.role is Role.PRINCIPAL and role_sequence > view.role_sequence
