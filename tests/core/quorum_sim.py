"""A small, deterministic simulation of one mirroring session's quorum, driving the real core: each partner
holds the engine's own `mirrord.core.session.Session` and changes it only through the methods the engine
calls (note_ack, note_sent, note_partner_lost, note_promoted, note_stepped_down, hear, ...), reads it through
the views the engine reads (`Session.principal_view`, `Session.role_view`, `reports_mirror_synchronized`),
and decides with `mirrord.core.quorum`, the role machine's rules of `mirrord.core.roles` (what a partner does
on the witness's record, on its partner's claim to a newer role sequence and on the answer to its vote) and
`mirrord.core.leases` (the leases an answer renews, the witness lease a reset ends, when a mirror last
answered its principal). What stays the simulator's own is what the engine's shell does around them: the
network, the log, the links' silence timers, and the order in which a node acts.

What it models
--------------
* Three processes for one database: partners "A" and "B" (A starts as principal, B as mirror, role
  sequence 1, SAFETY FULL, mirror synchronized) and the witness "W".
* Abstract time: `now` only moves when the test calls `advance`; the processes act in `tick`s, at
  most `STEP` x timeout apart.
* **Messages.** The processes talk only by messages: pings to the witness and its answers (the record,
  and the lease the ping earns), the principal's reports, vote requests and answers, the log shipped to
  the mirror and its acknowledgements. With `Network()` (the default) a message is handled the moment it
  is sent, so an exchange is atomic, as the explorer wants. `Network(max_delay, drop, duplicate)` makes a
  faulty network (the random runs use one): each message is delayed up to `max_delay` x timeout, lost
  with probability `drop` (a connection broken and made again) and delivered twice with probability
  `duplicate` (sent again after a reconnect). Messages on one link (one direction of a pair) arrive in the
  order sent, as on a TCP connection; messages on different links overtake each other freely. A message
  to a frozen process waits in its buffer and is handled when it thaws (with its old content: a witness
  frozen for a while answers pings sent long ago); a cut link or a dead receiver loses what is in flight.
* **Clocks.** Each process measures time with its own clock, running at a rate within `1 ± drift` of
  real time (the design's bound, `DRIFT_BOUND`: a lease of LEASE_FRACTION x TIMEOUT on the principal's
  clock must end before a full TIMEOUT of silence on the witness's; with 0.8 that holds for drift up to
  0.111). Leases,
  "last heard" and the witness's uptime are read on the clock of the process that keeps them.
* Partners persist their session's config (role, role sequence, safety) and their log (a list of commit
  ids; LSN = index + 1). Everything else the session observes is volatile: a killed partner restarts with
  `Session(config)` as the engine does (no lease, no link, belief "the witness thinks the mirror
  synchronized" until told otherwise, nothing known of the principal's state), and loses its commits
  waiting for the mirror. A partner link is up from the first answer over it (the principal's welcome,
  the mirror's accepted hello) until a hard error or a full TIMEOUT of silence on either end (the
  readers' timeouts), as the engine's links; leases are what decide whether a principal may serve. The
  witness is the engine's own `mirrord.core.witnessing.Witnessing`: it persists its `WitnessRecord`; on
  restart it has heard from no partner, counts the principal as seen only once it has heard from it
  since that start (`met`), votes without it only after a full timeout of its own uptime, and grants a
  forced vote only once its last answer to the principal is a TIMEOUT old.
* A message to a dead process over a live link is refused at once (a hard error): the principal takes
  its mirror for disconnected then, not after the lease; `reset` breaks the partners' connection with a
  hard error on both ends (the mirror may then ask for a vote at once). Silence (a cut link, a frozen process) is only
  noticed when leases and "last heard" run out.
* Each tick, every process that is up: a principal reports "synchronized or not" with
  `apply_principal_report` (the witness refuses a deposed one; the principal believes the new record
  only once the witness answered); partners ping the witness (the answer carries the record: a partner
  behind its sequence follows `core.roles`; the principal it names renews its lease as
  `core.leases.on_witness_answered` says, from `sent` on its own clock; a principal ahead of it is adopted with
  `adopt_principal_claim`); the principal ships its log to the other partner (a partner of a lower
  sequence yields to a higher-sequence principal; the mirror of the same sequence rolls back to the
  common prefix, hardens at most `SHIP` records and answers with what it holds, which renews the
  principal's mirror lease and releases commits waiting for it); a mirror whose principal's link ended
  asks the witness for a vote when `core.roles.on_ping_due` allows (promoted when the answer arrives
  within a timeout, or by the record if it did not: it takes no log and ignores the record while it
  waits, and pings before it asks again, as the witness link does); then every principal tries one
  commit, acknowledged as `ack_rule` says (MIRROR: once the mirror of its sequence answers that it
  hardened it, or locally once the witness heard the mirror is behind; LOCAL; BLOCKED: written while
  it has quorum but never acknowledged; nothing at all without quorum).
* Operator actions: manual failover (when the principal is SAFETY FULL, connected to its synchronized
  mirror of the same sequence; the witness is told with `apply_manual_failover` if reachable, and
  `core.role_statements.on_failover_outcome` says what its answer comes to), forced service on the mirror
  (when `forced_service_refusal` allows; `on_force_service_issued` asks for a forced `VoteRequest`), SAFETY changes
  (applied to both partners at once; the principal reports them to the witness). These exchanges are
  atomic even on a faulty network, and so is a principal asking the witness whether it backs a
  partner's claim to a newer sequence.

Checked on the way (raising `Violation`): two principals in one role sequence, or a promotion to a
sequence already used; two nodes acknowledging in one role sequence; an automatic failover granted
while the witness recorded the mirror unsynchronized or SAFETY OFF; an acknowledgement without quorum;
an acknowledged commit missing from a newly promoted principal's log, unless it was acknowledged before
a forced-service fork (those are the reported `forced_loss()`); two partners that may serve (have
quorum, each by its own clock) at one real instant; this holds with forced service too, as the witness
is always set.

What it leaves out
------------------
Hard errors other than the principal's refused connection to a dead mirror (the mirror acts only after
a full timeout of silence), SUSPEND/RESUME (a demoted partner
rejoins and rolls back at once), SYNCHRONIZING details beyond "hardens SHIP records per message", the
witness being removed or added, SQL, pages, redo, and more than one database.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field, replace

from mirrord.core import leases, quorum, role_statements as rs, roles
from mirrord.core.quorum import AckRule, PrincipalView, VoteRequest, WitnessRecord
from mirrord.core.session import Session, SessionConfig
from mirrord.core.witnessing import Witnessing
from mirrord.core.types import Role, Safety

DB = "shop"
PARTNERS = ("A", "B")
NODES = ("A", "B", "W")
PRINCIPAL, MIRROR = Role.PRINCIPAL, Role.MIRROR
STEP = 0.25  # longest stretch between ticks, as a fraction of the timeout
SHIP = 3  # log records a mirror hardens per shipped message when it is behind
# The design's bound on clock rates, 1 ± this: a lease of LEASE_FRACTION x TIMEOUT on the fastest-ending
# principal clock must end before a TIMEOUT of silence on the quickest witness clock,
# (1 - d) / (1 + d) >= LEASE_FRACTION; 0.111 for 0.8.
DRIFT_BOUND = (1 - quorum.LEASE_FRACTION) / (1 + quorum.LEASE_FRACTION)


class Violation(AssertionError):
    """An invariant of DESIGN.md section 2 does not hold."""


@dataclass(frozen=True)
class Network:
    """How messages travel: at once (the default), or late, lost and doubled (see the module docstring)."""

    max_delay: float = 0.0  # in timeouts
    drop: float = 0.0
    duplicate: float = 0.0

    @property
    def instant(self) -> bool:
        return self.max_delay == 0 and self.drop == 0 and self.duplicate == 0


# Round trips up to 0.6 of a timeout, longer than the time between commits (a tick): under steady load the
# mirror is then never at the principal's end of log when an ack arrives, and the session reaches
# SYNCHRONIZED only through `closing` (session.note_ack; with round trips this long it stayed SYNCHRONIZING
# before that rule).
FAULTY = Network(max_delay=0.3, drop=0.05, duplicate=0.05)


@dataclass(order=True)
class Message:
    at: float  # real time it arrives
    n: int  # send order, for ties
    src: str = field(compare=False)
    dst: str = field(compare=False)
    kind: str = field(compare=False)
    body: dict = field(compare=False)


@dataclass
class Partner:
    """One partner: the real `core.session.Session` the engine keeps for the database, and what the engine keeps
    beside it (the log, commits waiting for the mirror, reports sent, its links' silence timers).

    The session holds the persisted config (role, role sequence, safety) and every observed fact the rules
    read: leases, what the principal knows of its mirror (hardened, caught up, closing) and believes of the
    witness, whether its partner's link is up, what a mirror last heard of its principal's state, when it last
    answered it, a vote under way, and when a new principal may serve. Times are on this partner's clock.
    """

    name: str
    session: Session
    log: list[int] = field(default_factory=list)  # durable
    waiting: list[int] = field(default_factory=list)  # principal: commits waiting for the mirror
    reports: int = 0  # principal: reports sent to the witness (an answer counts only for the latest)
    last_heard_principal: float = 0.0  # mirror: its receive loop's silence timer (mirror_session._read_or_silence)
    last_heard_mirror: float = 0.0  # principal: its ack reader's silence timer (principal_session._read_acks)
    vote_asked_until: float = 0.0  # mirror: the vote request's answer is waited for until then (role_change)

    @property
    def role(self) -> Role:
        return self.session.config.role

    @property
    def seq(self) -> int:
        return self.session.config.role_sequence


def new_session(name: str, role: Role, seq: int, safety: Safety, timeout: float) -> Session:
    """A partner's session as the engine opens it: the persisted config, nothing observed yet."""
    return Session(SessionConfig(DB, role=role, partner=other(name), witness="W", safety=safety, timeout=timeout,
                                 role_sequence=seq))


@dataclass
class Commit:
    node: str
    seq: int
    cid: int
    rule: AckRule  # how it was acknowledged (or would have been)
    acked: bool
    at: float


def other(name: str) -> str:
    return "B" if name == "A" else "A"


class Sim:
    def __init__(self, timeout: float = 1.0, network: Network = Network(), drift: float = 0.0, seed: int = 0) -> None:
        if drift >= DRIFT_BOUND:
            raise ValueError(f"drift {drift} is past the bound the design assumes ({DRIFT_BOUND:.3f})")
        self.timeout = timeout
        self.network = network
        self.serve_after_old_leases = True  # the rule of quorum.old_principal_lease_end (a test turns it off)
        self.believe_reports_when_sent = True  # witness_link._report_if_changed's rule (a test turns it off)
        self.drop_witness_lease_on_reset = True  # witness_link's `lost` (a test turns it off)
        self.rng = random.Random(seed)
        self.rate = {n: 1.0 + self.rng.uniform(-drift, drift) if drift else 1.0 for n in NODES}
        self.now = 0.0
        self.safety = Safety.FULL
        self.p = {"A": Partner("A", new_session("A", PRINCIPAL, 1, self.safety, timeout)),
                  "B": Partner("B", new_session("B", MIRROR, 1, self.safety, timeout))}
        self.p["A"].session.note_partner_connected(0)  # linked, the mirror at the (empty) end of log: caught up
        self.p["B"].session.note_principal_linked(None)
        self.p["B"].session.note_principal_view(True, 0)  # the principal said so in its first frame
        # the witness: the engine's own core.witnessing (its record, who it sees, has met, last answered), on its clock;
        # it learns the session's TIMEOUT with the record
        self.w = Witnessing(WitnessRecord(DB, 1, "A", "B", True, Safety.FULL, timeout), started=0.0)
        for n in PARTNERS:
            self.w.note_connected(n, timeout, 0.0)
        self.wait_out_witness_leases = True  # quorum.decide_vote's principal_answered_ago (a test turns it off)
        self.dead: set[str] = set()
        self.frozen: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.inflight: list[Message] = []  # a heap by arrival
        self.last_arrival: dict[tuple[str, str], float] = {}  # per link: messages keep their order
        self.sent = 0
        self.commits: list[Commit] = []
        self.ackers: dict[int, set[str]] = {}
        self.principals: dict[int, set[str]] = {1: {"A"}}
        self.forced_seqs: set[int] = set()
        self.fork_mark = 0  # commits with cid <= fork_mark were acknowledged before a forced-service fork
        self.history: list[str] = []  # role changes, for failure messages and scenario tests
        self.tick()

    # ------------------------------------------------------------------ clocks and network

    def clock(self, n: str) -> float:
        """What process n's clock reads now (rates differ within the drift; the origin does not matter)."""
        return self.rate[n] * self.now

    def up(self, n: str) -> bool:
        return n not in self.dead and n not in self.frozen

    def live(self, x: str, y: str) -> bool:
        return self.up(x) and self.up(y) and frozenset((x, y)) not in self.cut

    def send(self, src: str, dst: str, kind: str, **body) -> None:
        """Send a message; on the instant network it is handled before send returns."""
        if frozenset((src, dst)) in self.cut:
            return
        if dst in self.dead:
            if kind == "ship":  # a hard error (connection refused) counts at once: the mirror is gone
                self.p[src].session.note_partner_lost()
            return
        if self.network.instant:
            if dst not in self.frozen:
                self._handle(Message(self.now, 0, src, dst, kind, body))
            return
        if self.rng.random() < self.network.drop:
            return
        for _ in range(2 if self.rng.random() < self.network.duplicate else 1):
            at = max(self.now + self.rng.uniform(0, self.network.max_delay) * self.timeout,
                     self.last_arrival.get((src, dst), 0.0))
            self.last_arrival[(src, dst)] = at
            self.sent += 1
            heapq.heappush(self.inflight, Message(at, self.sent, src, dst, kind, body))

    def _deliver_until(self, end: float) -> None:
        """Handle every message arriving by `end`, each at its arrival time; a frozen receiver's wait."""
        held: list[Message] = []
        while self.inflight and self.inflight[0].at <= end:
            msg = heapq.heappop(self.inflight)
            if frozenset((msg.src, msg.dst)) in self.cut or msg.dst in self.dead:
                continue  # the connection broke: what was in flight is lost
            if msg.dst in self.frozen:
                held.append(msg)
                continue
            self.now = max(self.now, msg.at)
            self._handle(msg)
        for msg in held:  # handled once it thaws, in order, after what is due then
            msg.at = max(msg.at, end)
            heapq.heappush(self.inflight, msg)

    def _handle(self, msg: Message) -> None:
        if msg.dst == "W":
            self._witness_hears(msg.src)  # any message on a partner's connection, as engine/witness.py counts them
        getattr(self, f"_on_{msg.kind}")(msg.src, msg.dst, **msg.body)

    def _witness_hears(self, n: str) -> None:
        now = self.clock("W")
        if n in self.w.connected:
            self.w.note_heard(n, now)
        else:  # its connection opened: the hello
            self.w.note_connected(n, self.timeout, now)
        self.w.note_answered(n, now)  # it answers every request (engine/witness.py notes it as it does)

    @property
    def record(self) -> WitnessRecord:
        """The witness's record."""
        return self.w.record

    @record.setter
    def record(self, new: WitnessRecord) -> None:
        self.w.adopt(new)  # (persisted at once: the witness writes it before it answers)

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
            self.set_safety(args[0])
        else:
            getattr(self, kind)(*args)
        self.tick()

    def set_safety(self, safety: Safety) -> None:
        """ALTER DATABASE SET PARTNER SAFETY on the principal, adopted by the mirror at once (atomic here)."""
        self.safety = safety
        for me in self.p.values():
            me.session.config = me.session.config.with_(safety=safety)

    def cut_link(self, x: str, y: str) -> None:
        self.cut.add(frozenset((x, y)))

    def isolate(self, n: str) -> None:
        """Cut both links of n at the same instant."""
        for o in NODES:
            if o != n:
                self.cut_link(n, o)

    def heal(self, x: str, y: str) -> None:
        self.cut.discard(frozenset((x, y)))

    def reset(self, x: str = "A", y: str = "B") -> None:
        """A connection breaks with a hard error (a reset, an endpoint stopped): both ends learn at once, what
        was in flight between them is lost, and they may reconnect at once.

        Between the partners: the principal takes its mirror for gone; the mirror may ask for a vote at once
        (it keeps whether the principal was synchronized, as session.note_partner_lost does). Between a
        partner and the witness: the witness no longer sees it, at once (as mirrord.engine.witness drops a
        partner whose connection ended), so it may grant a vote at once; the partner drops its witness
        lease (witness_link's `lost`), as the witness may already have voted against it."""
        self.inflight = [m for m in self.inflight if {m.src, m.dst} != {x, y}]
        heapq.heapify(self.inflight)
        if "W" in (x, y):
            n = y if x == "W" else x
            if self.up("W"):
                self.w.note_lost(n)
            if self.up(n) and self.drop_witness_lease_on_reset:
                self._hear(n, leases.WitnessLinkLost())  # the real rule: the lease ends at once
            return
        for n in PARTNERS:
            if self.up(n):
                self.p[n].session.note_partner_lost()  # both links' readers fail at once (a hard error)

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
            self.w = Witnessing(self.w.record, started=self.clock("W"))  # the record is durable; the rest is not
            return
        old = self.p[n]  # what it persisted: the session's config and the log; nothing observed
        self.p[n] = Partner(n, Session(old.session.config), old.log, last_heard_principal=self.clock(n))
        self.p[n].session.note_log_end(len(old.log))

    def advance(self, dt: float) -> None:
        end = self.now + dt
        while self.now < end:
            step_end = min(end, self.now + STEP * self.timeout)
            self._deliver_until(step_end)
            self.now = step_end
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
            self._witness_hears(name)  # its request
            # the real rule (core.role_statements.on_failover_outcome): refused with nothing changed, or, the witness
            # having recorded the switch, stop serving and step down (the mirror's answer is not needed then)
            switch = rs.WitnessSwitch.REFUSED if new is None else rs.WitnessSwitch.RECORDED
            outcome = rs.FailoverOutcome("db", len(pr.log), len(m.log), switch, sent=True, answered=False)
            actions = roles.handle(self._role_view(name), outcome)
            if new is None:
                assert [type(a) for a in actions] == [rs.RefuseStatement], actions
                continue
            assert actions == [rs.StopServing(), roles.StepDown(pr.seq + 1, f"manual failover to {m.name}")], actions
            self.record = new
            self._step_down(pr, actions[1].role_sequence)
            if self.live(m.name, "W"):  # the mirror promotes once the witness's record confirms it (promote_for_failover)
                self._witness_hears(m.name)  # the confirming ping (role_change.witness_refusal)
                self._promote(m.name, pr.seq, "manual", witness_told=True)
            return True
        return False

    def force_service(self) -> bool:
        """SET PARTNER FORCE_SERVICE_ALLOW_DATA_LOSS on the mirror, if allowed now; the vote is atomic."""
        for name in PARTNERS:
            m = self.p[name]
            if not self.up(name) or m.role != MIRROR:
                continue
            if quorum.forced_service_refusal(m.session.partner_connected, True, self.live(name, "W")) is None:
                # the real rule (core.role_statements.on_force_service_issued): with a witness, only through its vote
                view = replace(self._role_view(name), witness_connected=True)
                assert roles.handle(view, rs.ForceServiceIssued()) == [roles.AskForVote(forced=True)]
                self._witness_hears(name)  # its vote request
                vote = self._decide_vote(name, m.seq, len(m.log), forced=True)
                for action in roles.handle(self._role_view(name), roles.VoteAnswered(vote.granted, vote.role_sequence, forced=True)):
                    assert isinstance(action, roles.Promote) and action.forced, action
                    self._promote(name, action.role_sequence, "forced", witness_told=True)
                return vote.granted
        return False

    # ------------------------------------------------------------------ one tick

    def tick(self) -> None:
        for n in PARTNERS:
            if self.up(n):
                self._notice_silence(n)
        for n in PARTNERS:
            if self.up(n) and self.p[n].role == PRINCIPAL:
                self._report(n)  # a deposed principal may speak before it learns: the witness must refuse
        for n in PARTNERS:
            if self.up(n):
                me = self.p[n]
                self.send(n, "W", "w_ping", role=me.role, seq=me.seq, sent=self.clock(n), synchronized=self._synchronized(n))
        for n in PARTNERS:
            if self.up(n) and self.p[n].role == PRINCIPAL:
                self._ship(n)
        for n in PARTNERS:
            m = self.p[n]
            if not (self.up(n) and m.role == MIRROR):
                continue
            if m.session.failover_requested and self.clock(n) >= m.vote_asked_until:
                # role_change.request_promotion: no answer in time; the witness link pings next (and may learn
                # from the record that the vote was granted) before it asks again
                m.session.note_asking_witness(False)
                continue
            if not m.session.partner_connected and not m.session.failover_requested:
                # the real rule (core.roles.on_ping_due), fed by the witness link: only while the witness is reachable
                asks = self.live(n, "W") and roles.handle(self._role_view(n), roles.PingDue()) == [roles.AskForVote()]
                # on a faulty network timers are jittered (half the ticks), as the real links' are: in lockstep
                # with the principal's, a mirror asking every tick would drop every reconnection it gets
                jittered = self.network.instant or self.rng.random() < 0.5
                if asks and jittered:
                    # role_change.request_promotion: from here until the answer (or its timeout), no log from
                    # the old principal, so no lease renewed for it
                    m.vote_asked_until = self.clock(n) + self.timeout
                    m.session.note_asking_witness(True)
                    self.send(n, "W", "vote", seq=m.seq, hardened=len(m.log))
        for n in PARTNERS:
            if self.up(n) and self.p[n].role == PRINCIPAL:
                self._report(n)
        for n in PARTNERS:
            if self.up(n) and self.p[n].role == PRINCIPAL:
                self._release_waiting(n)
                self._commit(n)
        self._check_tick()

    def _notice_silence(self, n: str) -> None:
        """A partner link silent for a full TIMEOUT ends (the readers' timeouts on both ends): session.note_partner_lost."""
        me = self.p[n]
        heard = me.last_heard_mirror if me.role == PRINCIPAL else me.last_heard_principal
        if me.session.partner_connected and self.clock(n) - heard >= self.timeout:
            me.session.note_partner_lost()

    # --- the witness's side

    def _on_w_ping(self, n: str, _w: str, role: str, seq: int, sent: float, synchronized: bool) -> None:
        rec, adopted = self.record, False
        if role == PRINCIPAL and seq > rec.role_sequence:
            self.record = quorum.adopt_principal_claim(rec, DB, n, other(n), seq, synchronized, self.safety, self.timeout)
            adopted = self.record != rec
        self.send("W", n, "w_state", record=self.record, sent=sent, adopted=adopted)

    def _on_w_report(self, n: str, _w: str, seq: int, synchronized: bool, safety: Safety, number: int) -> None:
        if (new := quorum.apply_principal_report(self.record, n, seq, synchronized, safety)) is not None:
            self.record = new
            self.send("W", n, "w_report_ok", seq=seq, synchronized=synchronized, number=number)

    def _on_vote(self, n: str, _w: str, seq: int, hardened: int) -> None:
        vote = self._decide_vote(n, seq, hardened, forced=False)
        self.send("W", n, "vote_answer", granted=vote.granted, seq=vote.role_sequence)

    def _decide_vote(self, n: str, seq: int, hardened: int, forced: bool) -> quorum.Vote:
        before = self.record
        if not self.wait_out_witness_leases:
            self.w.answered.clear()  # a test turns the rule off: no answer of the witness counts as a lease
        vote, after = self.w.vote(VoteRequest(DB, n, seq, hardened, forced), self.clock("W"))
        if vote.granted:
            if not forced and not (before.mirror_synchronized and before.safety is Safety.FULL):
                raise Violation(f"automatic failover granted to {n} though the witness recorded {before}")
            self.record = after
            if forced:
                self.forced_seqs.add(vote.role_sequence)
                self.fork_mark = len(self.commits)
        return vote

    # --- a partner's side

    def _on_w_state(self, _w: str, n: str, record: WitnessRecord, sent: float, adopted: bool) -> None:
        me = self.p[n]
        if me.seq < record.role_sequence:
            # the real rules (core.roles, as role_change.adopt_witness_state feeds them): promote when the
            # record names this node (a vote whose answer was lost, a manual failover it could not confirm),
            # else step down / move on
            event = roles.WitnessState(record.role_sequence, record.principal, forced=record.forced,
                                       mirror_synchronized=record.mirror_synchronized)
            for action in roles.handle(self._role_view(n), event):
                if isinstance(action, roles.Promote):
                    self._promote(n, action.role_sequence, "recorded", witness_told=True, forced=action.forced)
                elif isinstance(action, roles.StepDown):
                    self._step_down(me, action.role_sequence)
                elif isinstance(action, roles.AdoptRoleSequence):
                    self._adopt_role_sequence(me, action.role_sequence)
                else:
                    raise Violation(f"{n} in sequence {me.seq} hearing the witness record {record}: unexpected {action}")
        # the real rule (core.leases.on_witness_answered): the witness naming this node principal is a lease
        names_me = record.principal == n and record.role_sequence == me.seq
        self._hear(n, leases.WitnessAnswered(sent, names_this_node=names_me))
        if me.role == PRINCIPAL and names_me and adopted and record.mirror_synchronized:
            me.session.note_witness_synchronized(True)  # core.roles.on_witness_state: an answer never lowers the belief

    def _on_w_report_ok(self, _w: str, n: str, seq: int, synchronized: bool, number: int) -> None:
        me = self.p[n]
        if me.role == PRINCIPAL and me.seq == seq and number == me.reports:  # the answer to its latest report
            me.session.note_witness_synchronized(synchronized)

    def _on_vote_answer(self, _w: str, n: str, granted: bool, seq: int) -> None:
        me = self.p[n]
        if not me.session.failover_requested:
            return  # role_change.request_promotion gave up waiting: nobody reads this answer
        me.session.note_asking_witness(False)
        for action in roles.handle(self._role_view(n), roles.VoteAnswered(granted, seq)):  # the real rule
            assert isinstance(action, roles.Promote), action
            self._promote(n, action.role_sequence, "automatic", witness_told=True)

    def _ship(self, n: str) -> None:
        me = self.p[n]
        s = me.session
        # the frame holds the whole log when the mirror lacks no more than a frame's worth (session.note_sent)
        s.note_sent(len(me.log), whole_log=len(me.log) - s.hardened_lsn <= SHIP)
        self.send(n, other(n), "ship", seq=me.seq, log=tuple(me.log), sent=self.clock(n), synchronized=s.caught_up)

    def _on_ship(self, src: str, n: str, seq: int, log: tuple[int, ...], sent: float, synchronized: bool) -> None:
        me = self.p[n]
        if seq < me.seq:
            return  # a principal of an older sequence: this partner ships to it in turn, and it yields then
        if seq > me.seq:
            if me.role == PRINCIPAL:
                # the real rule (core.roles.on_partner_principal): step down, once the witness's record agrees
                [action] = roles.handle(self._role_view(n), roles.PartnerIsPrincipal(seq, src))
                assert isinstance(action, roles.StepDown) and action.needs_witness, action
                backed = self.live(n, "W") and quorum.witness_backing_refusal(
                    self.record.role_sequence, self.record.principal, action.claimant, action.role_sequence) is None
                if not backed:
                    return  # role_change.carry_out: the witness's record does not back the claim yet
                self._step_down(me, seq)
            else:
                [action] = roles.handle(self._role_view(n), roles.PrincipalLinked(seq))  # the real rule
                self._adopt_role_sequence(me, action.role_sequence)
        if me.role != MIRROR or me.session.failover_requested:
            return  # core.roles.on_partner_hello: no log while it asks the witness for a vote
        s = me.session
        if not s.partner_connected:
            s.note_principal_linked(None)  # the principal's hello, welcomed
        common = 0
        while common < min(len(me.log), len(log)) and me.log[common] == log[common]:
            common += 1
        me.log = list(log[: min(len(log), common + SHIP)])  # roll back past the fork, then harden
        s.note_log_end(len(me.log))
        me.last_heard_principal = self.clock(n)
        s.note_principal_view(synchronized, len(me.log))  # mirror_session._adopt_principal_view
        s.hear(leases.AnsweredPrincipal(self.clock(n)))  # the real rule: its answer grants the principal a lease
        self.send(n, src, "ship_ack", seq=seq, hardened=len(me.log), sent=sent)

    def _on_ship_ack(self, _m: str, n: str, seq: int, hardened: int, sent: float) -> None:
        me = self.p[n]
        if me.role != PRINCIPAL or me.seq != seq:
            return
        s = me.session
        me.last_heard_mirror = self.clock(n)
        if not s.partner_connected:
            s.note_partner_connected(hardened)  # the welcome: linked, resuming after what the mirror holds
        else:
            s.note_ack(hardened, 0)  # what it holds is a prefix of this log
        s.hear(leases.MirrorAnswered(sent))  # the real rule: a lease from when the answered frame was sent
        done = [cid for cid in me.waiting if me.log.index(cid) < s.hardened_lsn]
        if done:
            me.waiting = [cid for cid in me.waiting if cid not in done]
            for cid in done:
                self._acknowledge(self.commits[cid - 1])

    def _role_view(self, n: str) -> roles.RoleView:
        """What core.roles reads of partner n: its session's view (endpoints are the partners' names here)."""
        return self.p[n].session.role_view(endpoint=n)

    def _hear(self, n: str, event: leases.Event) -> None:
        """A lease or link event of partner n: its session hears it (core.leases decides)."""
        self.p[n].session.hear(event)

    def _synchronized(self, n: str) -> bool:
        """What partner n tells the witness about its mirror (its pings and reports)."""
        me = self.p[n]
        return me.role == PRINCIPAL and me.session.reports_mirror_synchronized()

    def _report(self, n: str) -> None:
        me = self.p[n]
        synchronized = self._synchronized(n)
        if synchronized and self.believe_reports_when_sent:
            me.session.note_witness_synchronized(True)  # the witness may record it before its answer arrives, if ever
        me.reports += 1
        self.send(n, "W", "w_report", seq=me.seq, synchronized=synchronized, safety=self.safety, number=me.reports)

    def _promote(self, n: str, seq: int, how: str, witness_told: bool, forced: bool = False) -> None:
        """role_change._promote: the config first (persisted), then the session notes the promotion."""
        me = self.p[n]
        if seq <= max(self.principals):
            raise Violation(f"{how} failover to {n} reuses role sequence {seq} (highest so far {max(self.principals)})")
        s = me.session
        forced = forced or how == "forced"
        kept = s.serves_from
        s.config = s.config.with_(role=PRINCIPAL, role_sequence=seq, forced_fork=forced, suspended=False)
        s.note_promoted(len(me.log), forced=forced, from_record=how == "recorded")
        if not self.serve_after_old_leases:
            s.serves_from = kept  # a test turns the rule off
        s.note_log_end(len(me.log))
        s.note_acknowledged(len(me.log))  # a new principal's own log counts as acknowledged
        me.waiting = []
        if witness_told:  # the witness's answer promoting it names it principal: a lease from now (the real rule)
            self._hear(n, leases.WitnessAnswered(self.clock(n), names_this_node=True))
        self.history.append(f"t={self.now:.2f} {how}: {n} principal in sequence {seq}")
        self.principals.setdefault(seq, set()).add(n)
        if len(self.principals[seq]) > 1:
            raise Violation(f"two principals in role sequence {seq}: {self.principals[seq]}")
        lost = [c for c in self.commits if c.acked and c.cid > self.fork_mark and c.cid not in me.log]
        if lost:
            raise Violation(f"{how} failover to {n} (sequence {seq}) loses acknowledged commits {lost}")

    def _step_down(self, me: Partner, seq: int) -> None:
        """role_change._step_down: its waiting commits fail (never acknowledged), the config, then the session."""
        me.waiting = []
        me.session.config = me.session.config.with_(role=MIRROR, role_sequence=seq, forced_fork=False)
        me.session.note_stepped_down()
        me.last_heard_principal = self.clock(me.name)

    @staticmethod
    def _adopt_role_sequence(me: Partner, seq: int) -> None:
        """role_change.carry_out's AdoptRoleSequence: the config alone."""
        me.session.config = me.session.config.with_(role_sequence=seq)

    def view(self, n: str) -> PrincipalView:
        return self.p[n].session.principal_view()

    def _commit(self, n: str) -> None:
        me, view = self.p[n], self.view(n)
        rule = quorum.ack_rule(view, self.clock(n))
        if not view.has_quorum(self.clock(n)):
            if rule is not AckRule.BLOCKED:
                raise Violation(f"{n} may acknowledge ({rule}) without quorum at t={self.now}")
            return
        cid = len(self.commits) + 1
        me.log.append(cid)
        me.session.note_log_end(len(me.log))
        commit = Commit(n, me.seq, cid, rule, False, self.now)
        self.commits.append(commit)
        if rule is AckRule.MIRROR:
            me.waiting.append(cid)  # the mirror's answer releases it
        elif rule is AckRule.LOCAL:
            self._acknowledge(commit)
        self._ship(n)  # the principal ships what it captured at once

    def _release_waiting(self, n: str) -> None:
        """Commits waiting for a mirror that went away are acknowledged once the principal may go on alone."""
        me, view = self.p[n], self.view(n)
        if me.waiting and not view.mirror_connected and quorum.ack_rule(view, self.clock(n)) is AckRule.LOCAL:
            for cid in me.waiting:
                commit = self.commits[cid - 1]
                commit.rule = AckRule.LOCAL  # how it was acknowledged in the end: alone
                self._acknowledge(commit)
            me.waiting = []

    def _acknowledge(self, commit: Commit) -> None:
        commit.acked = True
        me = self.p[commit.node]
        if commit.cid in me.log:
            me.session.note_acknowledged(max(me.session.acknowledged_lsn, me.log.index(commit.cid) + 1))
        self.ackers.setdefault(commit.seq, set()).add(commit.node)
        if len(self.ackers[commit.seq]) > 1:
            raise Violation(f"two nodes acknowledged in role sequence {commit.seq}: {self.ackers[commit.seq]}")

    def _check_tick(self) -> None:
        for n in PARTNERS:
            me = self.p[n]
            if me.role == PRINCIPAL:
                self.principals.setdefault(me.seq, set()).add(n)
                if len(self.principals[me.seq]) > 1:
                    raise Violation(f"two principals in role sequence {me.seq}: {self.principals[me.seq]}")
        serving = [n for n in PARTNERS if self.up(n) and self.p[n].role == PRINCIPAL and self.view(n).has_quorum(self.clock(n))]
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
