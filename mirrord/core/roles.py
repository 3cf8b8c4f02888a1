"""Role changes: for each event a database's copy hears, what its role does next (pure, synchronous).

A copy of a database is PRINCIPAL, MIRROR or NONE (standalone) in a role
sequence. Seven kinds of event can change its role or its session's state
without a statement, and TRANSITIONS lists, for each role and event, the rule
that decides:

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

Anything not in the table changes nothing. The rules return actions; the shell
(mirrord.engine.role_change) carries them out in order — persisting the new
configuration before it tells anyone (mirrord.engine.database.Database.update_config)
— and asks `promotion_due` / `step_down_due` again at the instant it acts,
under the database's role-change lock, since the role may have moved on while
it waited for the witness.

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

from mirrord.core.types import Role


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


Event = Union[WitnessState, PartnerIsPrincipal, PartnerWelcomed, FailoverAsked, VoteAnswered, RedoFailed, MirrorSuspended]


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
    """The witness's view of whether the mirror is synchronized (automatic failover needs it)."""

    synchronized: bool


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


Action = Union[Promote, StepDown, AdoptRoleSequence, NoteWitnessSynchronized, SuspendSession, ServeAgain]


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
    if event.role_sequence == view.role_sequence and view.role is Role.PRINCIPAL and event.principal == view.endpoint:
        return [NoteWitnessSynchronized(event.mirror_synchronized)]
    return []


def on_partner_principal(view: RoleView, event: PartnerIsPrincipal) -> list[Action]:
    """A principal hears its own partner claim a newer role sequence: it steps down if the witness agrees.

    Without a witness the authenticated partner's word is the record, as
    between the reference's partners; with one, the record decides.
    """
    if view.role is Role.PRINCIPAL and event.role_sequence > view.role_sequence and view.partner is not None:
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


Rule = Callable[[RoleView, Event], list[Action]]

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
