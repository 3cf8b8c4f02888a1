"""A small, deterministic simulation of one mirroring session's quorum, driving `mirrord.core.quorum` and
the role machine's rules of `mirrord.core.roles` (what a partner does on the witness's record and on its
partner's claim to a newer role sequence).

What it models
--------------
* Three processes for one database: partners "A" and "B" (A starts as principal, B as mirror, role
  sequence 1, SAFETY FULL, mirror synchronized) and the witness "W".
* Abstract time: `now` only moves when the test calls `advance`; the processes act in `tick`s, at
  most `STEP` x timeout apart. Messages are delivered at once over a link that is live (not cut, and
  neither end killed or frozen); there is no delay, loss or reordering on a live link.
* Partners persist role, role sequence and their log (a list of commit ids; LSN = index + 1).
  Leases, "last heard from the principal", "was synchronized" and the principal's belief about the
  witness record are volatile: a killed partner loses them (restart: no lease, belief "the witness
  thinks the mirror synchronized" until told otherwise, the mirror's failover clock restarted). The witness persists its
  `WitnessRecord`; on restart it has heard from no partner, and, as `mirrord.engine.witness` does, it counts
  the principal as seen only once it has heard from it since that start (`met`), and votes without
  it only after a full timeout of its own uptime (`decide_vote(..., witness_uptime=...)`).
* Each tick: partners ping the witness (the witness renews the principal's lease with
  `lease_until(sent, timeout)` only for its recorded principal at its sequence; every principal first
  reports "synchronized or not" with `apply_principal_report` (the witness refuses a deposed one); a
  partner behind the
  witness's sequence takes the mirror role; a principal ahead of it is adopted with
  `adopt_principal_claim`); the partners exchange pings (the lower sequence yields to a higher-sequence
  principal; the mirror of the same sequence rolls back to the common prefix, hardens at most
  `SHIP` records, renews the principal's mirror lease and notes whether it is synchronized); a mirror
  that has not heard from the principal for a timeout asks the witness for a vote when
  `automatic_failover_refusal` allows; principals report again; then every partner that believes itself principal tries one commit and
  acknowledges it as `ack_rule` says (MIRROR: the mirror of its sequence hardens it; LOCAL; BLOCKED:
  written while it has quorum but never acknowledged; nothing at all without quorum).
* Operator actions: manual failover (when the principal is SAFETY FULL, connected to its synchronized
  mirror of the same sequence; the witness is told with `apply_manual_failover` if reachable), forced
  service on the mirror (when `forced_service_refusal` allows; a forced `VoteRequest`), SAFETY changes
  (applied to both partners at once; the principal reports them to the witness).

Checked on the way (raising `Violation`): two principals in one role sequence, or a promotion to a
sequence already used; two nodes acknowledging in one role sequence; an automatic failover granted
while the witness recorded the mirror unsynchronized or SAFETY OFF; an acknowledgement without quorum;
an acknowledged commit missing from a newly promoted principal's log, unless it was acknowledged before
a forced-service fork (those are the reported `forced_loss()`); two partners that may serve (have
quorum) at one instant; this holds with forced service too, as the witness is always set.

What it leaves out
------------------
Message delay/loss/reordering on live links, lost vote answers, clock skew, hard errors (the mirror
acts only after a full timeout of silence), SUSPEND/RESUME (a demoted partner rejoins and rolls back at
once), SYNCHRONIZING details beyond "hardens SHIP records per ping", the witness being removed or
added, SQL, pages, redo, and more than one database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirrord.core import quorum, roles
from mirrord.core.quorum import AckRule, MirrorView, PrincipalView, VoteRequest, WitnessRecord
from mirrord.core.types import Role, Safety

DB = "shop"
PARTNERS = ("A", "B")
NODES = ("A", "B", "W")
PRINCIPAL, MIRROR = "PRINCIPAL", "MIRROR"
STEP = 0.25  # longest stretch between ticks, as a fraction of the timeout
SHIP = 3  # log records a mirror hardens per ping when it is behind


class Violation(AssertionError):
    """An invariant of DESIGN.md section 2 does not hold."""


@dataclass
class Partner:
    name: str
    role: str
    seq: int
    log: list[int] = field(default_factory=list)  # durable
    mirror_lease_until: float = 0.0  # volatile from here on
    witness_lease_until: float = 0.0
    believes_synchronized: bool = True  # principal: what it thinks the witness recorded
    last_heard_principal: float = 0.0  # mirror
    was_synchronized: bool = False  # mirror


@dataclass(frozen=True)
class Commit:
    node: str
    seq: int
    cid: int
    rule: AckRule
    acked: bool
    at: float


def other(name: str) -> str:
    return "B" if name == "A" else "A"


class Sim:
    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self.now = 0.0
        self.safety = Safety.FULL
        self.p = {"A": Partner("A", PRINCIPAL, 1), "B": Partner("B", MIRROR, 1, was_synchronized=True)}
        self.record = WitnessRecord(DB, 1, "A", "B", True, Safety.FULL, timeout)  # the witness learns the session's TIMEOUT
        self.heard = {"A": 0.0, "B": 0.0}  # witness: last time it heard each partner
        self.w_started = 0.0  # witness: its last (re)start
        self.met = set(PARTNERS)  # witness: the partners it heard from since that start (volatile)
        self.dead: set[str] = set()
        self.frozen: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.commits: list[Commit] = []
        self.ackers: dict[int, set[str]] = {}
        self.principals: dict[int, set[str]] = {1: {"A"}}
        self.forced_seqs: set[int] = set()
        self.fork_mark = 0  # commits with cid <= fork_mark were acknowledged before a forced-service fork
        self.history: list[str] = []  # role changes, for failure messages and scenario tests
        self.tick()

    # ------------------------------------------------------------------ network

    def up(self, n: str) -> bool:
        return n not in self.dead and n not in self.frozen

    def live(self, x: str, y: str) -> bool:
        return self.up(x) and self.up(y) and frozenset((x, y)) not in self.cut

    def principal_seen(self) -> bool:
        p = self.record.principal
        return p in self.met and self.now - self.heard[p] < self.timeout

    def witness_uptime(self) -> float:
        """What the witness passes decide_vote: infinite once it heard the principal since its start."""
        return float("inf") if self.record.principal in self.met else self.now - self.w_started

    # ------------------------------------------------------------------ events

    def apply(self, event: tuple) -> None:
        """One event of the random tests, followed by a tick (`advance` ticks as it goes)."""
        kind, *args = event
        if kind == "advance":
            self.advance(args[0] * self.timeout)
            return
        if kind in ("manual_failover", "force_service"):
            getattr(self, kind)()
        elif kind == "safety":
            self.safety = args[0]
        else:
            getattr(self, kind)(*args)
        self.tick()

    def cut_link(self, x: str, y: str) -> None:
        self.cut.add(frozenset((x, y)))

    def isolate(self, n: str) -> None:
        """Cut both links of n at the same instant."""
        for o in NODES:
            if o != n:
                self.cut_link(n, o)

    def heal(self, x: str, y: str) -> None:
        self.cut.discard(frozenset((x, y)))

    def freeze(self, n: str) -> None:
        self.frozen.add(n)

    def thaw(self, n: str) -> None:
        self.frozen.discard(n)

    def kill(self, n: str) -> None:
        self.dead.add(n)

    def restart(self, n: str) -> None:
        if n not in self.dead:
            return
        self.dead.discard(n)
        if n == "W":
            self.w_started, self.met = self.now, set()
            return
        old = self.p[n]
        self.p[n] = Partner(n, old.role, old.seq, old.log, last_heard_principal=self.now)

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self.now < end:
            self.now = min(end, self.now + STEP * self.timeout)
            self.tick()

    def manual_failover(self) -> bool:
        """SET PARTNER FAILOVER on the principal, if its preconditions hold now."""
        for name in PARTNERS:
            pr, m = self.p[name], self.p[other(name)]
            if not (self.up(name) and pr.role == PRINCIPAL and self.safety is Safety.FULL and self.live(name, m.name)
                    and m.role == MIRROR and m.seq == pr.seq and m.log == pr.log):
                continue
            if not self.live(name, "W"):
                continue  # the witness records the switch first (rules.manual_failover_refusal)
            new = quorum.apply_manual_failover(self.record, name, pr.seq)
            if new is None:
                continue
            self.record = new
            pr.role, pr.seq, pr.last_heard_principal, pr.was_synchronized = MIRROR, pr.seq + 1, self.now, False
            pr.mirror_lease_until = pr.witness_lease_until = 0.0
            if self.live(m.name, "W"):  # the mirror promotes once the witness's record confirms it (promote_for_failover)
                self._promote(m.name, pr.seq, "manual", witness_told=True)
            return True
        return False

    def force_service(self) -> bool:
        """SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror, if allowed now."""
        for name in PARTNERS:
            m = self.p[name]
            if not self.up(name) or m.role != MIRROR:
                continue
            principal_connected = self.now - m.last_heard_principal < self.timeout
            if quorum.forced_service_refusal(principal_connected, True, self.live(name, "W")) is None:
                return self._request_vote(name, forced=True)
        return False

    # ------------------------------------------------------------------ one tick

    def tick(self) -> None:
        for n in PARTNERS:
            if self.live(n, "W") and self.p[n].role == PRINCIPAL:
                self._report(n)  # a deposed principal may speak before it learns: the witness must refuse
        for n in PARTNERS:
            if self.live(n, "W"):
                self._exchange_with_witness(n)
        if self.live("A", "B"):
            self._exchange_partners()
        for n in PARTNERS:
            m = self.p[n]
            if self.up(n) and m.role == MIRROR and self.now - m.last_heard_principal >= self.timeout:
                view = MirrorView(self.safety, True, self.live(n, "W"), False, m.was_synchronized, False)
                if quorum.automatic_failover_refusal(view) is None:
                    self._request_vote(n, forced=False)
        for n in PARTNERS:
            if self.up(n) and self.p[n].role == PRINCIPAL:
                self._report(n)
        for n in PARTNERS:
            if self.up(n) and self.p[n].role == PRINCIPAL:
                self._commit(n)
        self._check_tick()

    def _exchange_with_witness(self, n: str) -> None:
        me, rec = self.p[n], self.record
        self.heard[n] = self.now
        self.met.add(n)
        if me.seq < rec.role_sequence:
            # the real rules (core.roles, as role_change.adopt_witness_state feeds them): promote when the
            # record names this node (a manual failover it could not confirm at the time), else step down / move on
            event = roles.WitnessState(rec.role_sequence, rec.principal, forced=rec.forced,
                                       mirror_synchronized=rec.mirror_synchronized)
            for action in roles.handle(self._role_view(n), event):
                if isinstance(action, roles.Promote):
                    self._promote(n, action.role_sequence, "recorded", witness_told=True)
                elif isinstance(action, (roles.StepDown, roles.AdoptRoleSequence)):
                    self._demote(me, action.role_sequence)
                else:
                    raise Violation(f"{n} in sequence {me.seq} hearing the witness record {rec}: unexpected {action}")
        elif me.seq > rec.role_sequence and me.role == PRINCIPAL:
            self.record = quorum.adopt_principal_claim(rec, DB, n, other(n), me.seq, self._synchronized(n), self.safety,
                                                       self.timeout)
            if self.record != rec:
                me.believes_synchronized = self.record.mirror_synchronized
        rec = self.record
        if me.role == PRINCIPAL and rec.principal == n and rec.role_sequence == me.seq:
            me.witness_lease_until = quorum.lease_until(self.now, self.timeout)

    def _exchange_partners(self) -> None:
        a, b = self.p["A"], self.p["B"]
        if a.seq != b.seq:
            lo, hi = sorted((a, b), key=lambda x: x.seq)
            if hi.role != PRINCIPAL:
                return
            if lo.role == PRINCIPAL:
                # the real rule (core.roles.on_partner_principal): step down, once the witness's record agrees
                [action] = roles.handle(self._role_view(lo.name), roles.PartnerIsPrincipal(hi.seq, hi.name))
                assert isinstance(action, roles.StepDown) and action.needs_witness, action
                backed = self.live(lo.name, "W") and quorum.witness_backing_refusal(
                    self.record.role_sequence, self.record.principal, action.claimant, action.role_sequence) is None
                if not backed:
                    return  # role_change.carry_out: the witness's record does not back the claim yet
            self._demote(lo, hi.seq)
        if a.role == b.role:
            return
        pr, m = (a, b) if a.role == PRINCIPAL else (b, a)
        common = 0
        while common < min(len(m.log), len(pr.log)) and m.log[common] == pr.log[common]:
            common += 1
        m.log = pr.log[: min(len(pr.log), common + SHIP)]  # roll back past the fork, then harden
        pr.mirror_lease_until = quorum.lease_until(self.now, self.timeout)
        m.last_heard_principal = self.now
        m.was_synchronized = m.log == pr.log and self.safety is Safety.FULL

    def _role_view(self, n: str) -> roles.RoleView:
        """What core.roles reads of partner n (endpoints are the partners' names here)."""
        me = self.p[n]
        return roles.RoleView(Role(me.role), me.seq, endpoint=n, partner=other(n))

    def _synchronized(self, n: str) -> bool:
        """The principal's view: its mirror of the same sequence is connected and caught up, SAFETY FULL."""
        pr, m = self.p[n], self.p[other(n)]
        return (self.safety is Safety.FULL and self.live(n, m.name) and m.role == MIRROR
                and m.seq == pr.seq and m.log == pr.log)

    def _report(self, n: str) -> None:
        me, want = self.p[n], self._synchronized(n)
        if self.live(n, "W") and (new := quorum.apply_principal_report(self.record, n, me.seq, want, self.safety)) is not None:
            self.record, me.believes_synchronized = new, want

    def _request_vote(self, n: str, forced: bool) -> bool:
        me, before = self.p[n], self.record
        req = VoteRequest(DB, n, me.seq, len(me.log), forced)
        vote, after = quorum.decide_vote(before, req, self.principal_seen(), self.witness_uptime())
        if not vote.granted:
            return False
        if not forced and not (before.mirror_synchronized and before.safety is Safety.FULL):
            raise Violation(f"automatic failover granted to {n} though the witness recorded {before}")
        self.record = after
        if forced:
            self.forced_seqs.add(vote.role_sequence)
            self.fork_mark = len(self.commits)
        self._promote(n, vote.role_sequence, "forced" if forced else "automatic", witness_told=True)
        return True

    def _promote(self, n: str, seq: int, how: str, witness_told: bool) -> None:
        me = self.p[n]
        if seq <= max(self.principals):
            raise Violation(f"{how} failover to {n} reuses role sequence {seq} (highest so far {max(self.principals)})")
        me.role, me.seq = PRINCIPAL, seq
        me.believes_synchronized = self.record.mirror_synchronized if witness_told else True
        me.witness_lease_until = quorum.lease_until(self.now, self.timeout) if witness_told else 0.0
        me.mirror_lease_until = 0.0
        self.history.append(f"t={self.now:.2f} {how}: {n} principal in sequence {seq}")
        self.principals.setdefault(seq, set()).add(n)
        if len(self.principals[seq]) > 1:
            raise Violation(f"two principals in role sequence {seq}: {self.principals[seq]}")
        lost = [c for c in self.commits if c.acked and c.cid > self.fork_mark and c.cid not in me.log]
        if lost:
            raise Violation(f"{how} failover to {n} (sequence {seq}) loses acknowledged commits {lost}")

    def _demote(self, me: Partner, seq: int) -> None:
        me.role, me.seq, me.was_synchronized, me.last_heard_principal = MIRROR, seq, False, self.now
        me.mirror_lease_until = me.witness_lease_until = 0.0

    def view(self, n: str) -> PrincipalView:
        pr, m = self.p[n], self.p[other(n)]
        connected = self.live(n, m.name) and m.role == MIRROR and m.seq == pr.seq
        return PrincipalView(self.safety, True, False, connected, connected and m.log == pr.log, True,
                             pr.believes_synchronized, pr.mirror_lease_until, pr.witness_lease_until)

    def _commit(self, n: str) -> None:
        me, view = self.p[n], self.view(n)
        rule = quorum.ack_rule(view, self.now)
        if not view.has_quorum(self.now):
            if rule is not AckRule.BLOCKED:
                raise Violation(f"{n} may acknowledge ({rule}) without quorum at t={self.now}")
            return
        cid = len(self.commits) + 1
        me.log.append(cid)
        if rule is AckRule.MIRROR:
            m = self.p[other(n)]
            assert self.live(n, m.name) and m.role == MIRROR and m.seq == me.seq and m.log == me.log[:-1]
            m.log = list(me.log)  # the mirror of this sequence hardens it
        acked = rule is not AckRule.BLOCKED
        self.commits.append(Commit(n, me.seq, cid, rule, acked, self.now))
        if acked:
            self.ackers.setdefault(me.seq, set()).add(n)
            if len(self.ackers[me.seq]) > 1:
                raise Violation(f"two nodes acknowledged in role sequence {me.seq}: {self.ackers[me.seq]}")

    def _check_tick(self) -> None:
        for n in PARTNERS:
            me = self.p[n]
            if me.role == PRINCIPAL:
                self.principals.setdefault(me.seq, set()).add(n)
                if len(self.principals[me.seq]) > 1:
                    raise Violation(f"two principals in role sequence {me.seq}: {self.principals[me.seq]}")
        serving = [n for n in PARTNERS if self.up(n) and self.p[n].role == PRINCIPAL and self.view(n).has_quorum(self.now)]
        if len(serving) > 1:
            raise Violation(f"two partners may serve at t={self.now}: {serving}; {self.history}")

    # ------------------------------------------------------------------ reporting

    def current_principal(self) -> Partner | None:
        live = [self.p[n] for n in PARTNERS if self.p[n].role == PRINCIPAL]
        return max(live, key=lambda x: x.seq) if live else None

    def forced_loss(self) -> list[Commit]:
        """Acknowledged commits the current principal does not have: the loss forced service reports."""
        cur = self.current_principal()
        return [c for c in self.commits if c.acked and cur is not None and c.cid not in cur.log]
