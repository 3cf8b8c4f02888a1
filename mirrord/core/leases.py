"""Leases and links: what a copy notes when its partner or the witness answers, or a link ends (pure, synchronous).

A principal serves while a lease lasts (core.quorum: `PrincipalView.has_quorum`):
an answer to a ping it *sent* at s keeps it alive until `quorum.lease_until(s,
TIMEOUT)`, from the mirror (its welcome, its pongs) or from the witness (an
answer naming this node principal). A mirror notes when it last answered its
principal: a promotion learned from the witness's record waits until the lease
that answer granted has run out (`quorum.old_principal_lease_end`). These rows
are part of the one table, `core.roles.TRANSITIONS` (listed in that module's
docstring); this module adds them when it is imported, as `core.role_statements`
adds its own:

    role        event              rule                  what it notes
    PRINCIPAL   MirrorAnswered     on_mirror_answered    the mirror lease, from when the answered ping was sent
    any         WitnessAnswered    on_witness_answered   the witness lease, when the answer names this node principal
                                                         (a mirror too: the record promoting it comes in the same answer)
    any         WitnessLinked      on_witness_linked     the witness is connected
    any         WitnessLinkLost    on_witness_link_lost  the witness lease ends at once; the witness is disconnected
    any         EndpointStopped    on_endpoint_stopped   both leases end: links closed on purpose outlive no lease
    MIRROR      AnsweredPrincipal  on_answered_principal when this mirror answered its principal (welcome, pong)

Time comes in with the events, read by the shell on its monotonic clock: the
instant a ping was sent, or an answer given; the rules read no clock, and a
lease only grows while its link lasts (the shell keeps the later of two).
`next_timer(view, now)` says when something next falls due without an event
(a lease running out, `serves_from`, a mirror's principal silent for PARTNER
TIMEOUT), all derived from `core.timing`, in the manner of aioquic's
`get_timer`: the shell arms one timer at that instant and re-evaluates then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from mirrord.core import quorum
from mirrord.core.roles import TRANSITIONS, RoleView, Rule
from mirrord.core.timing import timing
from mirrord.core.types import Role

# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class MirrorAnswered:
    """The mirror answered this principal (its welcome, or a pong) for what was sent at sent_at (monotonic)."""

    sent_at: float


@dataclass(frozen=True)
class WitnessAnswered:
    """The witness answered a ping or request sent at sent_at (monotonic); names_this_node: its record names this node principal."""

    sent_at: float
    names_this_node: bool


@dataclass(frozen=True)
class WitnessLinked:
    """The link to the witness is up: the witness answered its hello."""


@dataclass(frozen=True)
class WitnessLinkLost:
    """The link to the witness ended: an error, silence, or stopped on purpose."""


@dataclass(frozen=True)
class EndpointStopped:
    """ALTER ENDPOINT … STATE = STOPPED (or the node stopping): every node-to-node link was closed on purpose."""


@dataclass(frozen=True)
class AnsweredPrincipal:
    """This mirror answered its principal (the welcome, a pong) at `at` (monotonic): that answer grants it a mirror lease."""

    at: float


Event = Union[MirrorAnswered, WitnessAnswered, WitnessLinked, WitnessLinkLost, EndpointStopped, AnsweredPrincipal]


# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class RenewMirrorLease:
    """The principal's mirror lease lasts until `until` at least (monotonic)."""

    until: float


@dataclass(frozen=True)
class RenewWitnessLease:
    """The principal's witness lease lasts until `until` at least (monotonic)."""

    until: float


@dataclass(frozen=True)
class EndMirrorLease:
    """The mirror lease ends now."""


@dataclass(frozen=True)
class EndWitnessLease:
    """The witness lease ends now."""


@dataclass(frozen=True)
class NoteWitnessLink:
    """The witness is connected, or not (the partner's WITNESS state CONNECTED / DISCONNECTED)."""

    connected: bool


@dataclass(frozen=True)
class NotePrincipalAnswered:
    """This mirror last answered its principal at `at` (monotonic)."""

    at: float


Action = Union[RenewMirrorLease, RenewWitnessLease, EndMirrorLease, EndWitnessLease, NoteWitnessLink, NotePrincipalAnswered]


# ------------------------------------------------------------------ rules


def on_mirror_answered(view: RoleView, event: MirrorAnswered) -> list[Action]:
    """An answered ping keeps the principal serving for a lease counted from when it was sent (core.quorum)."""
    return [RenewMirrorLease(quorum.lease_until(event.sent_at, view.timeout))]


def on_witness_answered(view: RoleView, event: WitnessAnswered) -> list[Action]:
    """The witness naming this node principal is a lease from when the ping was sent, also for a mirror it just promoted.

    The witness votes for no one else until it has heard nothing from this
    node for a full TIMEOUT counted from its answer, later than the sending.
    """
    return [RenewWitnessLease(quorum.lease_until(event.sent_at, view.timeout))] if event.names_this_node else []


def on_witness_linked(view: RoleView, event: WitnessLinked) -> list[Action]:
    """The witness answered the link's hello: CONNECTED."""
    return [NoteWitnessLink(True)]


def on_witness_link_lost(view: RoleView, event: WitnessLinkLost) -> list[Action]:
    """The connection to the witness ended: the principal's witness lease ends with it.

    The witness stops seeing a partner the moment its connection ends (engine/witness.py), so it may grant
    the mirror's vote at once; a lease kept until it ran out let an old principal serve alongside the new one
    after a reset that reached both of its links (found by the simulator). Its mirror's lease still counts.
    """
    return [EndWitnessLease(), NoteWitnessLink(False)]


def on_endpoint_stopped(view: RoleView, event: EndpointStopped) -> list[Action]:
    """Links closed on purpose: no lease outlives them (the partners may act on the closing at once, as on a reset)."""
    return [EndMirrorLease(), EndWitnessLease()]


def on_answered_principal(view: RoleView, event: AnsweredPrincipal) -> list[Action]:
    """The mirror's answer grants its principal a lease: note when, for a promotion learned from the record."""
    return [NotePrincipalAnswered(event.at)]


# ------------------------------------------------------------------ time


def next_timer(view: RoleView, now: float) -> float | None:
    """The first instant after `now` at which something falls due for this copy without an event; None if nothing will.

    A principal: `serves_from` (it may serve from then), and, with a partner
    and a witness set (has_quorum reads its leases only then), the end of each
    lease. A mirror linked to its principal, with a witness set: the instant
    its principal has been silent for PARTNER TIMEOUT, counted from its last
    answer (it answers every ping): the link ends then and PingDue follows.
    """
    due: list[float] = []
    if view.role is Role.PRINCIPAL:
        due.append(view.serves_from)
        if view.partner is not None and view.witness is not None:
            due += [view.mirror_lease_until, view.witness_lease_until]
    elif view.role is Role.MIRROR and view.partner_connected and view.witness is not None:
        due.append(view.principal_answered_at + timing(view.timeout).silence)
    future = [t for t in due if t > now]
    return min(future) if future else None


LEASE_TRANSITIONS: dict[tuple[Role, type], Rule] = {
    (Role.PRINCIPAL, MirrorAnswered): on_mirror_answered,
    **{(role, WitnessAnswered): on_witness_answered for role in Role},
    **{(role, WitnessLinked): on_witness_linked for role in Role},
    **{(role, WitnessLinkLost): on_witness_link_lost for role in Role},
    **{(role, EndpointStopped): on_endpoint_stopped for role in Role},
    (Role.MIRROR, AnsweredPrincipal): on_answered_principal,
}

TRANSITIONS.update(LEASE_TRANSITIONS)  # one table: core.roles.handle answers these events too
