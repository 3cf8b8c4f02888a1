"""One database hosted on this node: its session, log, and role-specific engine."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from mirrord.core.health import DatabaseFacts
from mirrord.core.page_repair import RepairHistory
from mirrord.core.quorum import AckRule, ack_rule
from mirrord.core.leases import next_timer
from mirrord.core.roles import RoleView
from mirrord.core.session import Session
from mirrord.core.types import Lsn, MirroringState, Role
from mirrord.engine.mirror import MirrorDatabase
from mirrord.engine.principal import PrincipalDatabase
from mirrord.storage.events import EventLog
from mirrord.storage.fileutil import atomic_write_json
from mirrord.storage.login_store import LoginStore
from mirrord.storage.log import DurableLog

log = structlog.get_logger()


@dataclass
class WireStats:
    """Bytes of log sent to the mirror, before and after lz4."""

    raw: int = 0
    wire: int = 0


@dataclass
class Database:
    """A database on this node, whatever its role."""

    name: str
    directory: Path
    session: Session
    log: DurableLog
    principal: PrincipalDatabase | None = None
    mirror: MirrorDatabase | None = None
    sender: asyncio.Task | None = None  # principal: the link streaming to the mirror
    inbound: asyncio.Task | None = None  # mirror: the connection from the principal
    partner_writer: asyncio.StreamWriter | None = None  # current link, to send settings
    principal_send_queue: int = 0  # mirror: the send queue the principal last reported
    wire: WireStats = field(default_factory=WireStats)
    last_state: MirroringState | None = None
    witness_link: asyncio.Task | None = None
    quorum_changed: asyncio.Event = field(default_factory=asyncio.Event)  # wakes the witness link
    # the one timer, armed at core.leases.next_timer's instant (a lease running out, serves_from, a silent principal)
    timer: asyncio.TimerHandle | None = None
    timer_due: float | None = None  # its instant (monotonic)
    failover_reply: asyncio.Future | None = None  # manual failover: the mirror's failover_done
    failover_in_doubt: bool = False  # a manual failover whose answer never came: not serving until the mirror says
    witness_conn: object | None = None  # the open WitnessConnection, if any
    role_change: asyncio.Lock = field(default_factory=asyncio.Lock)  # one promotion/step-down at a time
    on_witness_changed: object | None = None  # node callback: start/stop the witness link
    monitor: object | None = None  # mirrord.engine.monitor.DatabaseMonitor: rates, alerts, the partner's figures
    logins: "LoginStore | None" = None  # the node's login table, passed to and taken from the partner
    events: EventLog | None = None  # the node's event history (sys.database_mirroring_events)
    # DBCC CHECKMIRROR (mirrord/engine/checkmirror.py): the principal's checks waiting for the mirror's answer, by request
    # id; the mirror's hashing tasks; and the outcome of the last check (status columns, since this start)
    checkmirror_replies: dict[int, asyncio.Future] = field(default_factory=dict)
    checkmirror_tasks: set[asyncio.Task] = field(default_factory=set)
    checkmirror_started: float | None = None  # monotonic
    last_checkmirror: str | None = None
    last_verified_lsn: Lsn | None = None
    last_verified_time: str | None = None  # UTC
    checkmirror_mismatches: int = 0
    # automatic page repair (mirrord/engine/page_repair.py): the node's view rows; on the mirror the suspect pages
    # (page -> error type), the requests waiting for an answer (rid -> pages, redo LSN then, redo thread) and
    # where the scrubber is; on the principal the tasks reading pages for the mirror
    repair_history: RepairHistory | None = None
    repair_pages: dict[int, int] = field(default_factory=dict)
    repair_asked: dict[int, tuple] = field(default_factory=dict)
    repair_queued: set[int] = field(default_factory=set)  # answered: the images wait in redo for their LSN
    repair_tasks: set[asyncio.Task] = field(default_factory=set)
    repair_resumed: object | None = None  # the MirrorDatabase whose suspect_pages.json was taken up (page_repair._resume)
    repaired_pages: object | None = None  # node callback (database): counts a repair in the metrics
    scrub_next: int = 1
    scrub_passes: int = 0
    # the principal's side: the check a damaged page started (one at a time), when, and the error it saw
    principal_check: asyncio.Task | None = None
    principal_check_started: float = float("-inf")
    principal_damage_type: int = 2
    principal_scrub_seen: dict[int, tuple[int, float]] = field(default_factory=dict)  # page -> (checksum, when) of damage the scrubber reported

    def mirror_redo(self):
        """The mirror's running redo thread, None if there is none."""
        return self.mirror.redo_thread if self.mirror is not None else None

    def ack_rule(self) -> AckRule:
        """How this principal may acknowledge commits now."""
        return ack_rule(self.session.principal_view(), time.monotonic())

    def quorum_refusal(self) -> str | None:
        """Why this principal may not serve now (lost quorum), or None."""
        now = time.monotonic()
        if self.session.has_quorum(now):
            return None
        if now < self.session.serves_from:
            return (f"database {self.name} was promoted {self.session.config.timeout} s or less after this node last "
                    f"answered the old principal {self.session.config.partner}; it is served in "
                    f"{self.session.serves_from - now:.1f} s, once the lease that answer granted it has run out")
        return (
            f"database {self.name} has lost quorum here: neither the mirror {self.session.config.partner} "
            f"nor the witness {self.session.config.witness} answers; it is not served until one of them "
            "returns (the mirror may have been promoted meanwhile)"
        )

    def health_facts(self) -> DatabaseFacts:
        """What the HTTP health routes decide on (core.health)."""
        s, cfg = self.session, self.session.config
        return DatabaseFacts(role=cfg.role, status=cfg.status, state=s.state.value, role_sequence=cfg.role_sequence,
                             open=self.principal is not None, quorum_refusal=self.quorum_refusal())

    def poke(self) -> None:
        """Something the quorum depends on changed: re-evaluate now, and again when something next falls due."""
        self.quorum_changed.set()
        if self.principal is not None:
            self.principal.update_visible()
        self.arm_timer()

    def arm_timer(self) -> None:
        """Arm the one timer at the next instant something falls due without an event (core.leases.next_timer).

        It pokes then: commits waiting on a principal whose leases ran out fail as in doubt although no frame
        arrives, a principal promoted from the witness's record serves from serves_from, and the witness link
        wakes to ping (a mirror's principal silent for PARTNER TIMEOUT: PingDue). A lease renewed meanwhile
        makes that poke find nothing changed; it arms the timer again for the new instant.
        """
        now = time.monotonic()
        due = next_timer(self.session.role_view(), now)
        if due == self.timer_due and self.timer is not None:
            return  # armed for that instant already (most pokes change nothing that falls due)
        self.disarm_timer()
        if due is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a unit test's database): nothing can fall due
        self.timer, self.timer_due = loop.call_later(due - now, self._timer_fired), due

    def disarm_timer(self) -> None:
        """Cancel the timer (the database stops here, or it is armed anew)."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_due = None, None

    def _timer_fired(self) -> None:
        self.timer, self.timer_due = None, None
        self.poke()

    def persist(self) -> None:
        """Write the session config durably (before acting on it)."""
        atomic_write_json(self.directory / "meta.json", self.session.config.to_dict())

    def update_config(self, **changes) -> None:
        """Change, persist, then adopt the session config."""
        new = self.session.config.with_(**changes)
        atomic_write_json(self.directory / "meta.json", new.to_dict())
        self.session.config = new
        self.note_state()

    def keep_salvage_copy(self, fork_lsn: int) -> str:
        """Copy this diverged database as it stands at its last LSN, for the DBA to open; the copy's path."""
        salvage_dir = self.directory.parent.parent / "salvage"
        salvage_dir.mkdir(parents=True, exist_ok=True)
        end = self.log.last_lsn
        dest = salvage_dir / f"{self.name}-rs{self.log.last_role_sequence}-lsn{fork_lsn + 1}-{end}.sqlite"
        shutil.copyfile(self.directory / "db.sqlite", dest)
        return str(dest)

    def record_event(self, event: str, detail: str = "", lsn: Lsn | None = None) -> None:
        """Add an event of this database to the node's history, with its role, state and role sequence now."""
        if self.events is not None:
            s = self.session
            self.events.record(self.name, event, role=s.role.value, state=s.state.value,
                               role_sequence=s.config.role_sequence, lsn=lsn, detail=detail)

    def note_state(self) -> None:
        """Log a mirroring-state change once, with the LSNs that explain it (and record it in the history)."""
        state = self.session.state
        if state is not self.last_state:
            before, self.last_state = self.last_state, state
            was = "" if before is None else f"from {before.value}"
            why = self.session.state_reason
            self.record_event("STATE_CHANGE", "; ".join(x for x in (was, why) if x), lsn=self.log.last_lsn)
            log.info(
                "mirroring_state",
                database=self.name,
                role=self.session.role.value,
                role_sequence=self.session.config.role_sequence,
                state=state.value,
                lsn=self.log.last_lsn,
                hardened_lsn=self.session.hardened_lsn,
            )

    def queue_bytes(self, after: Lsn, upto: Lsn) -> int:
        """Log bytes in (after, upto], or 0 where the log no longer holds them."""
        if upto <= after:
            return 0
        first = self.log.first_lsn
        if first == 0:
            return 0
        try:
            return self.log.bytes_between(max(after, first - 1), upto)
        except (LookupError, ValueError, IndexError):
            return 0


def role_view(database: "Database | None", endpoint: str) -> RoleView:
    """What the role machine (core.roles) reads of a database's copy now; endpoint is this node's.

    None: the database has no copy on this node (yet), as SET PARTNER finds the mirror's side before it is seeded.
    """
    if database is None:
        return RoleView(role=Role.NONE, role_sequence=0, endpoint=endpoint, status=None)
    return replace(database.session.role_view(endpoint), failover_in_doubt=database.failover_in_doubt,
                   mirror_open=database.mirror is not None, witness_connected=database.witness_conn is not None)
