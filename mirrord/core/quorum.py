"""Quorum: who may serve, who may be promoted, what the witness records. Pure.

Why no two nodes ever acknowledge writes in one role sequence (invariant I2)
---------------------------------------------------------------------------
A principal acknowledges a commit in exactly two ways (see `ack_rule`):

* MIRROR: the mirror hardened it. A mirror hardens log only from a principal
  of its own role sequence, and stops taking log from it before it asks the
  witness to promote it. Once promoted it has a higher role sequence and
  refuses the old one. So after a promotion the old principal can harden
  nothing more, and acknowledge nothing more this way.
* LOCAL (exposed, or SAFETY OFF): only after the witness durably recorded that
  the mirror is *not* synchronized (`WitnessRecord.mirror_synchronized`). The
  witness never grants an automatic failover to an unsynchronized mirror, so a
  principal acknowledging alone can't have a promoted rival. Forced service is
  the documented exception: it may lose those commits (and reports them).

Each role sequence has at most one principal because the witness grants one
promotion per sequence: a grant increments the sequence it holds, so a second
request for the old one is refused (`decide_vote`).

Leases only add promptness: the principal stops serving once it has heard from
neither partner nor witness for `lease` seconds (a ping it *sent* at s and
that was answered keeps it alive until s + lease), while the witness votes only
after it has heard nothing from the principal for the full timeout, counted
from a later instant (the receipt r >= s). With lease < timeout the old
principal has stopped accepting writes before the mirror can be promoted.

All time is passed in (`now`, monotonic seconds); nothing here reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from mirrord.core.timing import LEASE_FRACTION, timing
from mirrord.core.types import Endpoint, RoleSequence, Lsn, Safety

__all__ = ["LEASE_FRACTION"]  # re-exported: the lease's share of TIMEOUT is a quorum fact too (core.timing holds it)


class AckRule(str, enum.Enum):
    """How the principal may acknowledge a commit right now."""

    MIRROR = "MIRROR"  # after the mirror hardened it
    LOCAL = "LOCAL"  # after the local commit (exposed, SAFETY OFF, or no session)
    BLOCKED = "BLOCKED"  # not yet: the witness must first learn the mirror is behind, or quorum is lost


@dataclass(frozen=True)
class PrincipalView:
    """What a principal knows when it decides how to acknowledge and whether to serve."""

    safety: Safety
    has_partner: bool
    suspended: bool
    mirror_connected: bool
    mirror_caught_up: bool
    witness_set: bool
    witness_believes_synchronized: bool  # the witness's last acknowledged record
    mirror_lease_until: float  # monotonic; 0 when never
    witness_lease_until: float
    # monotonic: a mirror promoted soon after it last answered the old principal serves only from here,
    # once every lease it granted that principal has run out (old_principal_lease_end)
    serves_from: float = 0.0
    # the mirror is a round trip behind at most and catching up (session.closing): commits wait for it already
    mirror_closing: bool = False

    def has_quorum(self, now: float) -> bool:
        """May serve: no witness (partners decide alone), or a live lease from mirror or witness."""
        return has_quorum(now, self.serves_from, self.has_partner, self.witness_set,
                          self.mirror_lease_until, self.witness_lease_until)


def has_quorum(now: float, serves_from: float, has_partner: bool, witness_set: bool,
               mirror_lease_until: float, witness_lease_until: float) -> bool:
    """PrincipalView.has_quorum from its five facts: Session.has_quorum asks it before every statement,
    where building a view was 4 % of a busy principal's interpreter time."""
    if now < serves_from:
        return False
    if not has_partner or not witness_set:
        return True
    return now < mirror_lease_until or now < witness_lease_until


def ack_rule(view: PrincipalView, now: float) -> AckRule:
    """How commits are acknowledged now (see the module docstring)."""
    if not view.has_quorum(now):
        return AckRule.BLOCKED
    if not view.has_partner or view.suspended or view.safety is Safety.OFF:
        return AckRule.LOCAL if not _witness_must_hear_first(view) else AckRule.BLOCKED
    if view.mirror_connected and (view.mirror_caught_up or view.mirror_closing):
        return AckRule.MIRROR
    return AckRule.BLOCKED if _witness_must_hear_first(view) else AckRule.LOCAL


def _witness_must_hear_first(view: PrincipalView) -> bool:
    # Going on alone is safe only once the witness refuses to promote the mirror.
    return view.has_partner and view.witness_set and view.witness_believes_synchronized


def lease_until(sent_at: float, timeout: float) -> float:
    """The lease an answered ping, sent at sent_at, grants the principal."""
    return sent_at + timing(timeout).lease


def old_principal_lease_end(last_answered: float, timeout: float) -> float:
    """When a promoted mirror may serve: once the lease its last answer to the old principal granted is over.

    The old principal counts that lease from when it sent its ping, on its own clock; the mirror answered
    later. A full silence after the answer, on the mirror's clock, outlasts it within the design's clock
    bound, as the witness's silence outlasts the witness's lease. It applies to a promotion learned from
    the witness's record: the vote's answer was lost, the request timed out, and the old principal
    reconnected and was answered before the mirror heard of its promotion (found by the simulator with
    lost messages). It applies to forced service too: the old principal may be up and still hold that
    lease (a SAFETY OFF principal acknowledges on it alone; found by the simulator, seed 11 in a
    million steps). A mirror promoted on its automatic vote's answer took no log from the old principal
    since it asked (role_change.request_promotion), the witness granted it only for a mirror it records
    synchronized (so that principal acknowledges nothing alone), and waiting there would slow every
    failover on a hard error.
    """
    return last_answered + timing(timeout).silence


# --------------------------------------------------------------------- witness


@dataclass(frozen=True)
class WitnessRecord:
    """What the witness keeps, durably, per database."""

    db: str
    role_sequence: RoleSequence
    principal: str  # mirroring endpoint of the principal
    mirror: str
    mirror_synchronized: bool
    safety: Safety = Safety.FULL
    timeout: int = 10  # the principal's PARTNER TIMEOUT, as it last told the witness: how long silence must last
    # this role sequence began by forced service: the promoted mirror starts a recovery fork (and the
    # old principal rejoins SUSPENDED) even if it learns of its promotion from the record, not the vote's answer
    forced: bool = False

    def to_dict(self) -> dict:
        """JSON-able."""
        d = self.__dict__.copy()
        d["safety"] = self.safety.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WitnessRecord":
        """Inverse of to_dict."""
        return cls(d["db"], d["role_sequence"], d["principal"], d["mirror"], d["mirror_synchronized"], Safety(d.get("safety", "FULL")),
                   int(d.get("timeout", 10)), d.get("forced") is True)


@dataclass(frozen=True)
class VoteRequest:
    """A mirror asking the witness to promote it to principal."""

    db: str
    requester: str  # the mirror's endpoint
    role_sequence: RoleSequence  # the sequence the mirror is in now
    hardened_lsn: Lsn
    forced: bool = False  # FORCE_SERVICE_ALLOW_DATA_LOSS: synchronization not required


@dataclass(frozen=True)
class Vote:
    """The witness's answer: granted with the new role sequence, or refused with why."""

    granted: bool
    role_sequence: RoleSequence
    reason: str


def decide_vote(record: WitnessRecord, req: VoteRequest, principal_seen: bool,
                witness_uptime: float = float("inf"), principal_answered_ago: float = float("inf")) -> tuple[Vote, WitnessRecord]:
    """Grant at most one promotion per role sequence, never to a mirror known to be behind.

    A witness that (re)started less than a TIMEOUT ago and has not seen the
    principal since cannot know it has been silent that long: its "not seen"
    only means "not connected yet". It votes once it has been up for a full
    TIMEOUT, like a witness that saw the principal go silent (the caller passes
    an infinite uptime once it has seen the principal since its start).

    Forced service also waits until the witness's last answer to the principal
    (`principal_answered_ago` seconds ago) is a full silence old: the witness stops
    seeing a partner the moment its connection ends, but a principal that has not
    noticed yet (frozen, busy) still holds the lease that answer granted, and under
    forced service it may be acknowledging alone (found by the simulator: seed 1, a
    million steps). An automatic vote needs no such wait: it is granted only for a
    mirror recorded synchronized, and such a principal acknowledges nothing alone.
    """
    refusal = _vote_refusal(record, req, principal_seen)
    if refusal is None and witness_uptime < record.timeout:
        refusal = (f"the witness started {witness_uptime:.1f} s ago: it votes only after a full PARTNER TIMEOUT "
                   f"({record.timeout} s) without the principal")
    silence = timing(record.timeout).silence
    if refusal is None and req.forced and principal_answered_ago < silence:
        refusal = (f"the witness answered the principal {record.principal} {principal_answered_ago:.1f} s ago, and that "
                   f"answer lets it serve a while yet; forced service is possible in {silence - principal_answered_ago:.1f} s")
    if refusal is not None:
        return Vote(False, record.role_sequence, refusal), record
    new = replace(
        record,
        role_sequence=record.role_sequence + 1,
        principal=req.requester,
        mirror=record.principal,
        mirror_synchronized=False,  # the old principal is not a synchronized mirror until it catches up
        forced=req.forced,
    )
    return Vote(True, new.role_sequence, "granted"), new


def _vote_refusal(record: WitnessRecord, req: VoteRequest, principal_seen: bool) -> str | None:
    if req.role_sequence != record.role_sequence:
        return f"the request is for role sequence {req.role_sequence}; the witness is at {record.role_sequence}"
    if req.requester != record.mirror:
        return f"{req.requester} is not the mirror of {record.db} (the mirror is {record.mirror})"
    if principal_seen:
        return f"the witness is still connected to the principal {record.principal}"
    if req.forced:
        return None
    if record.safety is not Safety.FULL:
        return "automatic failover needs SAFETY FULL"
    if not record.mirror_synchronized:
        return "the witness knows the mirror is not synchronized (the principal ran exposed)"
    return None


def apply_principal_report(record: WitnessRecord, sender: str, role_sequence: RoleSequence, synchronized: bool, safety: Safety,
                           timeout: int | None = None) -> WitnessRecord | None:
    """The principal tells the witness whether its mirror is synchronized (and its TIMEOUT); None if not accepted."""
    if sender != record.principal or role_sequence != record.role_sequence:
        return None
    return replace(record, mirror_synchronized=synchronized, safety=safety, timeout=timeout or record.timeout)


def apply_manual_failover(record: WitnessRecord, sender: str, role_sequence: RoleSequence) -> WitnessRecord | None:
    """The principal hands the role to its synchronized mirror; None if not accepted."""
    if sender != record.principal or role_sequence != record.role_sequence:
        return None
    return replace(record, role_sequence=role_sequence + 1, principal=record.mirror, mirror=record.principal, mirror_synchronized=False,
                   forced=False)


def adopt_principal_claim(record: WitnessRecord | None, db: str, sender: str, partner: str, role_sequence: RoleSequence, synchronized: bool,
                          safety: Safety, timeout: int = 10) -> WitnessRecord:
    """A principal introduces itself: a new session, or a role sequence the witness missed."""
    if record is None or role_sequence > record.role_sequence:
        return WitnessRecord(db, role_sequence, sender, partner, synchronized, safety, timeout)
    if sender == record.principal and role_sequence == record.role_sequence and timeout != record.timeout:
        return replace(record, timeout=timeout)  # the principal's TIMEOUT, as it stands now
    return record


def witness_backing_refusal(record_role_sequence: RoleSequence, record_principal: str, claimant: str, role_sequence: RoleSequence) -> str | None:
    """Why the witness's record does not back `claimant` as principal of `role_sequence`, or None.

    Where a witness is set, every role change goes through its record first (a
    granted vote, a manual failover's `w_switch`, forced service's vote). So a
    partner's word alone never makes a principal step down or a mirror promote:
    the node asks the witness, and acts only if the record names the claimant
    principal of that role sequence or a later one. A partner saying otherwise is
    mistaken or is not who it seems; a witness out of reach means "not yet".
    """
    if record_role_sequence < role_sequence:
        return (f"the witness records role sequence {record_role_sequence}, older than the {role_sequence} claimed: "
                "the witness never recorded that role change")
    if not _same_endpoint(record_principal, claimant):
        return (f"the witness records {record_principal} as principal in role sequence {record_role_sequence}, "
                f"not {claimant}")
    return None


def _same_endpoint(a: str, b: str) -> bool:
    try:
        return Endpoint.parse(a) == Endpoint.parse(b)
    except ValueError:
        return a == b


# --------------------------------------------------------------------- mirror


@dataclass(frozen=True)
class MirrorView:
    """What a mirror knows when it decides whether to ask for automatic failover."""

    safety: Safety
    witness_set: bool
    witness_connected: bool
    principal_connected: bool
    was_synchronized: bool  # the principal's state when the mirror last heard from it
    suspended: bool
    redo_error: str | None = None  # redo failed here: this copy cannot be opened as the principal


def automatic_failover_refusal(view: MirrorView) -> str | None:
    """Why this mirror may not ask the witness for automatic failover now, or None."""
    if view.principal_connected:
        return "the principal is connected"
    if view.redo_error is not None:
        return f"redo failed on the mirror ({view.redo_error}); its copy cannot be opened"
    if not view.witness_set:
        return "no witness is set (automatic failover needs a witness)"
    if view.safety is not Safety.FULL:
        return "automatic failover needs SAFETY FULL"
    if view.suspended:
        return "the session is SUSPENDED"
    if not view.was_synchronized:
        return "the mirror was not SYNCHRONIZED when it lost the principal"
    if not view.witness_connected:
        return "the witness is not connected"
    return None


def forced_service_refusal(principal_connected: bool, witness_set: bool, witness_connected: bool,
                           redo_error: str | None = None) -> str | None:
    """Why FORCE_SERVICE_ALLOW_DATA_LOSS may not run on this mirror now, or None."""
    if principal_connected:
        return "the principal is connected; use SET PARTNER FAILOVER on the principal instead"
    if redo_error is not None:
        return f"redo failed on this mirror ({redo_error}); its copy cannot be opened as the principal"
    if witness_set and not witness_connected:
        return "a witness is set and this mirror cannot reach it; forced service needs mirror and witness connected"
    return None
