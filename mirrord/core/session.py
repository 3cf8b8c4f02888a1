"""The mirroring session of one database, as one node sees it: pure and synchronous.

A `Session` holds what the node has persisted about the session (`SessionConfig`:
role, partner, witness, safety, timeout, SUSPENDED, role sequence) and what it
currently observes (is the partner connected, has the mirror caught up, the
LSNs). The mirroring state is *derived* from those facts, never stored, so it
cannot drift from them:

    no partner            -> NONE
    failover under way    -> PENDING_FAILOVER   (principal only)
    suspended             -> SUSPENDED          (persists across restarts)
    partner not connected -> DISCONNECTED
    mirror caught up once -> SYNCHRONIZED       (until the connection is lost)
    otherwise             -> SYNCHRONIZING

`refusal(session, statement)` decides whether an administrative statement may
run now; it returns the reason it may not (saying what would make it allowed),
or None. The node calls it before changing anything, so a refused statement
changes nothing.

The quorum rules (witness, automatic failover) build on these same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mirrord.core import leases
from mirrord.core.alerts import thresholds_from_json
from mirrord.core.quorum import PrincipalView, has_quorum, old_principal_lease_end
from mirrord.core.roles import RoleView, handle
from mirrord.core.types import (
    DatabaseStatus,
    RoleSequence,
    Lsn,
    MirroringState,
    NO_LSN,
    Role,
    Safety,
    WitnessState,
)

DEFAULT_TIMEOUT = 10


@dataclass(frozen=True)
class SessionConfig:
    """What a node persists about one database and its session (meta.json)."""

    db: str
    role: Role = Role.NONE
    status: DatabaseStatus = DatabaseStatus.ONLINE
    partner: str | None = None  # the partner's mirroring endpoint, tcp://host:port
    witness: str | None = None
    safety: Safety = Safety.FULL
    timeout: int = DEFAULT_TIMEOUT
    redo_queue_mb: int = 0  # PARTNER REDO_QUEUE: 0 is UNLIMITED (core.redo_queue)
    suspended: bool = False
    role_sequence: RoleSequence = 0  # +1 at every role change; each log record carries the one it was written in
    failover_lsn: Lsn = NO_LSN  # where this node's role sequence began (the fork point of the last role change)
    forced_fork: bool = False  # this principal was made by forced service; suspend when the old one returns
    lost_lsn_from: Lsn = NO_LSN  # a diverged old principal: its log past the fork, first..last
    lost_lsn_to: Lsn = NO_LSN
    salvage_path: str | None = None  # copy of the diverged database, kept for the DBA
    # SET PARTNER OFF ran here: the partner's next hello hears so (either role)
    ended_by_off: str | None = None
    # SET PARTNER OFF ran on this principal: the old mirror's endpoint, until it confirmed (partner_off_notice)
    off_untold: str | None = None
    # monitor warning thresholds (sp_dbmmonitorchangealert): (alert_id, threshold, enabled), per node
    alerts: tuple[tuple[int, int, bool], ...] = ()

    def to_dict(self) -> dict:
        """A JSON-able dict."""
        d = self.__dict__.copy()
        for key in ("role", "status", "safety"):
            d[key] = d[key].value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SessionConfig":
        """Inverse of to_dict; unknown keys are ignored (a newer version wrote them)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "role_sequence" not in d and "epoch" in d:
            known["role_sequence"] = d["epoch"]  # meta.json written before the role sequence had one name
        known["role"] = Role(known.get("role", Role.NONE))
        known["status"] = DatabaseStatus(known.get("status", DatabaseStatus.ONLINE))
        known["safety"] = Safety(known.get("safety", Safety.FULL))
        known["alerts"] = thresholds_from_json(known.get("alerts", ()))
        return cls(**known)

    def with_(self, **changes) -> "SessionConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class Session:
    """One database's session: persisted config plus what is observed now."""

    config: SessionConfig
    partner_connected: bool = False
    caught_up: bool = False  # the mirror holds every acknowledged commit, and commits wait for it (see note_ack)
    # principal: the mirror answered for a frame that held the whole log when it was sent: it is a round trip
    # behind at most, and commits wait for it from here on (quorum.ack_rule), so it can catch up under load
    closing: bool = False
    # principal: the end of the first frame, of those sent since the mirror was last more than a frame behind,
    # that held the whole log when it was sent
    tail_sent_lsn: Lsn = NO_LSN
    acknowledged_lsn: Lsn = NO_LSN  # principal: the commits acknowledged to clients end here (visible_lsn)
    failover_pending: bool = False
    witness_connected: bool = False
    partner_listen: str | None = None  # the partner's client address, for "the principal is X"
    principal_was_synchronized: bool = False  # mirror: the principal's state when last heard from
    # principal: the witness's record. Until the witness says otherwise, assume it may
    # believe the mirror synchronized, so nothing is acknowledged alone (see core.quorum).
    witness_believes_synchronized: bool = True
    witness_lease_until: float = 0.0  # principal: monotonic instant its witness lease ends
    mirror_lease_until: float = 0.0
    # mirror: when it last answered the principal (welcome, pong), granting it a mirror lease (monotonic)
    principal_answered_at: float = float("-inf")
    serves_from: float = 0.0  # principal: not before (quorum.old_principal_lease_end), monotonic
    failover_requested: bool = False  # mirror: a vote request is under way; take no log meanwhile
    end_of_log_lsn: Lsn = NO_LSN
    hardened_lsn: Lsn = NO_LSN  # on the principal: what the mirror acknowledged
    redo_lsn: Lsn = NO_LSN
    redo_queue_bytes: int = 0  # on the principal: the mirror's redo queue as it last reported it (core.redo_queue)
    # why the session is SUSPENDED or DISCONNECTED when the state alone does not say
    # (a full disk, a failed redo, a mirror this principal must not reseed), with since when
    state_reason: str | None = None
    redo_error: str | None = None  # mirror: redo stopped on this error; the copy cannot be opened until it is fixed
    notes: list[str] = field(default_factory=list)

    @property
    def db(self) -> str:
        return self.config.db

    @property
    def role(self) -> Role:
        return self.config.role

    @property
    def state(self) -> MirroringState:
        """The mirroring state, derived from the facts (see the module docstring)."""
        if self.config.partner is None:
            return MirroringState.NONE
        if self.failover_pending:
            return MirroringState.PENDING_FAILOVER
        if self.config.suspended:
            return MirroringState.SUSPENDED
        if not self.partner_connected:
            return MirroringState.DISCONNECTED
        if self.caught_up:
            return MirroringState.SYNCHRONIZED
        return MirroringState.SYNCHRONIZING

    @property
    def witness_state(self) -> WitnessState:
        """CONNECTED/DISCONNECTED as this partner sees the witness; UNKNOWN with none set."""
        if self.config.witness is None:
            return WitnessState.UNKNOWN
        return WitnessState.CONNECTED if self.witness_connected else WitnessState.DISCONNECTED

    def note_sent(self, lsn: Lsn, whole_log: bool) -> None:
        """The principal sent a frame ending at `lsn`; `whole_log`: nothing more was in its log then.

        The first such frame counts (under steady load the latest one is never acknowledged before the
        next is sent); a frame that could not take the whole log means the mirror is further behind again.
        """
        if not whole_log:
            self.tail_sent_lsn = NO_LSN
        elif self.tail_sent_lsn == NO_LSN:
            self.tail_sent_lsn = lsn

    def note_ack(self, hardened: Lsn, redo: Lsn) -> None:
        """The mirror acknowledged log hardened up to `hardened`.

        Caught up (SYNCHRONIZED) means the mirror holds every commit acknowledged so far and every later
        one waits for it, so that the witness may promote it without a loss. Reaching the end of the log
        at the instant an ack arrives does that, but under steady load with a round trip longer than the
        time between commits that instant never comes (found by the simulator): so once the mirror holds
        a frame that was the whole log when sent (`closing`), commits wait for it (quorum.ack_rule), and
        it is caught up as soon as it holds what was acknowledged before that.
        """
        self.hardened_lsn = max(self.hardened_lsn, hardened)
        self.redo_lsn = max(self.redo_lsn, redo)
        if self.config.suspended:
            return
        if self.tail_sent_lsn > NO_LSN and self.hardened_lsn >= self.tail_sent_lsn:
            self.closing = True
        if self.hardened_lsn >= self.end_of_log_lsn or (self.closing and self.hardened_lsn >= self.acknowledged_lsn):
            self.caught_up = True

    def note_reason(self, why: str, since: str) -> None:
        """Say why the session is not mirroring (kept while the condition lasts, from its first instant)."""
        if self.state_reason is None or not self.state_reason.startswith(why):
            self.state_reason = f"{why} (since {since})"

    def note_suspended(self) -> None:
        """SUSPEND: the mirror takes no more log, so it stops being caught up.

        Otherwise the flag outlives the suspension: the instant RESUME clears it,
        before the mirror has the log written meanwhile, the session would read
        SYNCHRONIZED and the principal could tell the witness so (which would let
        it promote a mirror that lacks those commits).
        """
        self._restart_catch_up(False)

    def note_partner_lost(self) -> None:
        """The partner connection failed (hard error or timeout)."""
        if self.partner_connected:
            self.principal_was_synchronized = self.caught_up
        self.redo_queue_bytes = 0  # stale once the link is gone; the next connection reports it anew
        self.partner_connected = False
        self._restart_catch_up(False)
        self.end_mirror_lease()

    def note_stepped_down(self) -> None:
        """This principal became the mirror of a newer principal it has not heard from yet.

        What `note_partner_lost` keeps as "the principal was synchronized" was its
        own mirror's state. Left True, it asked the witness for a vote every ping,
        and each request cut the new principal's connection while it was being set
        up (found by the nemesis, seed 20261123, round 132).
        """
        self.note_partner_lost()
        self.principal_was_synchronized = False
        self.end_witness_lease()

    def note_partner_connected(self, hardened: Lsn, listen: str | None = None, redo: Lsn | None = None) -> None:
        """A partner connection was established and agreed to resume after `hardened` (listen: the partner's client
        address, if it said; redo: how far its redo got, never past `hardened`)."""
        self.partner_connected = True
        self.partner_listen = listen
        if redo is not None:
            self.redo_lsn = min(redo, hardened)
        if not self.config.suspended:
            self.state_reason = None
        self.hardened_lsn = hardened
        self._restart_catch_up(hardened >= self.end_of_log_lsn)

    # ---- the data path's positions

    def note_log_end(self, lsn: Lsn) -> None:
        """This copy's log ends at lsn (the principal's captured log, the mirror's hardened one)."""
        self.end_of_log_lsn = lsn

    def note_acknowledged(self, lsn: Lsn) -> None:
        """The principal acknowledged commits up to lsn: what its mirror must hold to be caught up (note_ack)."""
        self.acknowledged_lsn = lsn

    def note_redone(self, lsn: Lsn) -> None:
        """The mirror's redo applied its log up to lsn."""
        self.redo_lsn = lsn

    # ---- what the pure machines read of this session, and the one way lease and link events reach it

    def role_view(self, endpoint: str = "") -> RoleView:
        """What the role machine (core.roles) reads of the session alone: enough for core.leases' rules and
        next_timer, which compare no endpoint and read nothing of the engines (engine.database.role_view adds those)."""
        cfg = self.config
        return RoleView(role=cfg.role, role_sequence=cfg.role_sequence, endpoint=endpoint, partner=cfg.partner,
                        changing=self.failover_pending or self.failover_requested, redo_error=self.redo_error,
                        forced_fork=cfg.forced_fork, asking_witness=self.failover_requested,
                        ended_by_off=cfg.ended_by_off, safety=cfg.safety, timeout=cfg.timeout,
                        redo_queue_mb=cfg.redo_queue_mb, suspended=cfg.suspended, witness=cfg.witness,
                        witness_connected=self.witness_connected, partner_connected=self.partner_connected,
                        principal_was_synchronized=self.principal_was_synchronized,
                        lost_lsn_to=cfg.lost_lsn_to, salvage_path=cfg.salvage_path, status=cfg.status,
                        mirror_lease_until=self.mirror_lease_until, witness_lease_until=self.witness_lease_until,
                        serves_from=self.serves_from, principal_answered_at=self.principal_answered_at)

    def reports_mirror_synchronized(self) -> bool:
        """What a principal tells the witness about its mirror: linked, caught up, not SUSPENDED, SAFETY FULL.

        The witness grants automatic failover only to a mirror it records so (quorum.decide_vote).
        """
        cfg = self.config
        return self.partner_connected and self.caught_up and not cfg.suspended and cfg.safety is Safety.FULL

    def principal_view(self) -> PrincipalView:
        """The facts the quorum core (core.quorum) needs about this copy as principal."""
        cfg = self.config
        return PrincipalView(
            safety=cfg.safety, has_partner=cfg.partner is not None, suspended=cfg.suspended,
            mirror_connected=self.partner_connected, mirror_caught_up=self.caught_up,
            witness_set=cfg.witness is not None,
            witness_believes_synchronized=self.witness_believes_synchronized,
            mirror_lease_until=self.mirror_lease_until, witness_lease_until=self.witness_lease_until,
            serves_from=self.serves_from, mirror_closing=self.closing,
        )

    def has_quorum(self, now: float) -> bool:
        """principal_view().has_quorum(now) without building the view: asked before every statement."""
        cfg = self.config
        return has_quorum(now, self.serves_from, cfg.partner is not None, cfg.witness is not None,
                          self.mirror_lease_until, self.witness_lease_until)

    def hear(self, event: leases.Event) -> None:
        """A lease or link event: the role machine's rows (core.leases) decide, and each action is noted here in
        order. Every answer, loss and deliberate close of a link comes this way, so no lease is set anywhere else."""
        for action in handle(self.role_view(), event):
            if isinstance(action, leases.RenewMirrorLease):
                self.renew_mirror_lease(action.until)
            elif isinstance(action, leases.RenewWitnessLease):
                self.renew_witness_lease(action.until)
            elif isinstance(action, leases.EndMirrorLease):
                self.end_mirror_lease()
            elif isinstance(action, leases.EndWitnessLease):
                self.end_witness_lease()
            elif isinstance(action, leases.NoteWitnessLink):
                self.note_witness_link(action.connected)
            elif isinstance(action, leases.NotePrincipalAnswered):
                self.note_principal_answered(action.at)
            else:
                raise AssertionError(f"{action!r} is not an action of a lease or a link")

    # ---- leases and links (core.leases decides; hear notes its actions here)

    def renew_mirror_lease(self, until: float) -> None:
        """The mirror lease lasts until `until` at least: a lease only grows while its link lasts."""
        self.mirror_lease_until = max(self.mirror_lease_until, until)

    def renew_witness_lease(self, until: float) -> None:
        """The witness lease lasts until `until` at least."""
        self.witness_lease_until = max(self.witness_lease_until, until)

    def end_mirror_lease(self) -> None:
        """The mirror lease ends now."""
        self.mirror_lease_until = 0.0

    def end_witness_lease(self) -> None:
        """The witness lease ends now."""
        self.witness_lease_until = 0.0

    def note_witness_link(self, connected: bool) -> None:
        """The link to the witness is up, or not (WITNESS CONNECTED / DISCONNECTED)."""
        self.witness_connected = connected

    def note_principal_answered(self, at: float) -> None:
        """A mirror answered its principal at `at`, granting it a lease (quorum.old_principal_lease_end)."""
        self.principal_answered_at = at

    def note_witness_synchronized(self, synchronized: bool) -> None:
        """What the principal holds the witness to believe of its mirror: synchronized, or known to be behind."""
        self.witness_believes_synchronized = synchronized

    def note_witness_changed(self) -> None:
        """Another witness (or none): no lease from the old one, and, until the new one answers, it may believe the
        mirror synchronized, so nothing is acknowledged alone (core.quorum)."""
        self.witness_believes_synchronized = True
        self.end_witness_lease()

    def note_principal_linked(self, listen: str | None) -> None:
        """A mirror took its principal's link (listen: the principal's client address, if it said)."""
        self.partner_connected = True
        if self.redo_error is None:
            self.state_reason = None
        self.partner_listen = listen

    def note_principal_view(self, synchronized: bool | None, hardened: Lsn | None) -> None:
        """A mirror adopts its principal's view of the session: synchronized or not, and what this mirror hardened."""
        if synchronized is not None:
            self.caught_up = synchronized
        if hardened is not None:
            self.hardened_lsn = hardened

    def note_cannot_harden(self) -> None:
        """A mirror that could not harden what it was sent (a full disk, its log's limit) lacks it: no failover to it."""
        self.caught_up = False

    def note_redo_progress(self, redo: Lsn | None, redo_queue: int | None) -> None:
        """A principal hears how far its mirror's redo got (never past what it hardened) and its redo queue."""
        if redo is not None:
            self.redo_lsn = max(self.redo_lsn, min(redo, self.hardened_lsn))
        if redo_queue is not None:
            self.redo_queue_bytes = redo_queue

    def note_redo_error(self, why: str) -> None:
        """Redo stopped on this error: the copy cannot be opened until it is fixed (the role machine hears RedoFailed)."""
        self.redo_error = why

    def note_redo_failed(self, why: str, since: str) -> None:
        """Redo stopped on this error, and the session says why from now on."""
        self.note_redo_error(why)
        self.note_reason(why, since)

    def clear_reason(self) -> None:
        """The condition state_reason explained has ended."""
        self.state_reason = None

    def note_asking_witness(self, asking: bool) -> None:
        """A mirror asks the witness for a vote (automatic failover, forced service): it takes no log meanwhile."""
        self.failover_requested = asking

    def note_failover_pending(self, pending: bool) -> None:
        """A principal's manual failover is under way (PENDING_FAILOVER), or over."""
        self.failover_pending = pending

    def note_promoted(self, fork: Lsn, *, forced: bool, from_record: bool) -> None:
        """A mirror became principal at fork: the new mirror (the old principal) has at most the fork of our history,
        and the witness marked it unsynchronized.

        With a witness set, a promotion learned from the witness's record or forced serves only once the lease
        this node's last answer granted the old principal is over (quorum.old_principal_lease_end): learned from
        the record, the answer may have come after the vote was asked; forced, the old principal may still be up
        (a SAFETY OFF principal acknowledges on its mirror lease alone; found by the simulator, seed 11 in a
        million steps). A mirror promoted on its own vote's answer took no log since it asked.
        """
        if (from_record or forced) and self.config.witness is not None:
            self.serves_from = old_principal_lease_end(self.principal_answered_at, self.config.timeout)
        self.note_partner_lost()
        self.hardened_lsn = fork
        self.witness_believes_synchronized = False

    def _restart_catch_up(self, caught_up: bool) -> None:
        """Catching up starts over (note_ack): closing and the frame it counts from go together."""
        self.caught_up = caught_up
        self.closing, self.tail_sent_lsn = False, NO_LSN
