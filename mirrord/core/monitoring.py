"""What the Database Mirroring Monitor shows, computed from samples: pure.

How it works. The daemon samples each database every fraction of a second
(`Sample`: monotonic time and cumulative counters: transactions, bytes logged,
sent, hardened and redone, commits and the time they waited for the mirror).
`RateWindow` keeps the samples of the last few seconds and turns them into
per-second rates; a counter that goes backwards (a restart, a reseed) starts
the window again instead of producing a negative rate. `CommitClock` remembers
when each transaction was committed locally, coarsely, so the age of the oldest
unsent transaction is known. `figures()` combines one instant's queues with the
rates into the monitor's columns, `readiness()` asks the same rules the
statements ask whether each kind of failover could happen now, and
`AlertWatch` compares the figures with the thresholds set by
`sp_dbmmonitorchangealert`, reporting each crossing once.

Nothing here reads a clock: every time is passed in (`now`, monotonic seconds).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from mirrord.core.alerts import ALERTS, AlertKind, Thresholds, alert_refusal
from mirrord.core.quorum import MirrorView, automatic_failover_refusal, forced_service_refusal
from mirrord.core.rules import manual_failover_refusal
from mirrord.core.session import Session
from mirrord.core.types import MirroringState, Role

WINDOW_SECONDS = 10.0  # rates are averaged over this much history
CLOCK_GRANULARITY = 0.05  # commit times are kept to this resolution (seconds)
CLOCK_MAX_BUCKETS = 100_000  # about 80 minutes of continuous commits at full resolution
KB = 1024.0


# ------------------------------------------------------------------ samples and rates


@dataclass(frozen=True)
class Sample:
    """Cumulative counters of one database at one instant (monotonic seconds)."""

    now: float
    transactions: int = 0  # end of log LSN: every LSN is one committed transaction
    logged_bytes: int = 0
    sent_bytes: int = 0
    hardened_bytes: int = 0  # by the mirror
    redone_bytes: int = 0  # by the mirror's redo
    commits: int = 0  # commits that waited to be acknowledged
    commit_wait: float = 0.0  # seconds those commits waited, in total


_COUNTERS = ("transactions", "logged_bytes", "sent_bytes", "hardened_bytes", "redone_bytes", "commits", "commit_wait")


@dataclass(frozen=True)
class Rates:
    """Per-second rates over the window; None where there is not enough history."""

    transactions_per_s: float | None = None
    log_kb_per_s: float | None = None
    send_kb_per_s: float | None = None
    harden_kb_per_s: float | None = None
    redo_kb_per_s: float | None = None
    commit_delay_ms: float | None = None  # mean wait per commit; None when nothing committed


class RateWindow:
    """Samples over the last `span` seconds, and the rates they imply."""

    def __init__(self, span: float = WINDOW_SECONDS) -> None:
        if span <= 0:
            raise ValueError("the window span must be positive")
        self.span = span
        self._samples: deque[Sample] = deque()

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> None:
        """Take a sample; older ones than the span are dropped (one is kept as the base)."""
        if self._samples:
            last = self._samples[-1]
            if sample.now <= last.now:
                return  # the clock did not move: nothing to learn
            if any(getattr(sample, c) < getattr(last, c) for c in _COUNTERS):
                self._samples.clear()  # a counter restarted: rates from before would lie
        self._samples.append(sample)
        while len(self._samples) > 2 and self._samples[1].now <= sample.now - self.span:
            self._samples.popleft()

    def rates(self) -> Rates:
        """Rates between the oldest and the newest sample."""
        if len(self._samples) < 2:
            return Rates()
        first, last = self._samples[0], self._samples[-1]
        dt = last.now - first.now

        def per_s(name: str, scale: float = 1.0) -> float:
            return (getattr(last, name) - getattr(first, name)) / dt / scale

        commits = last.commits - first.commits
        delay = (last.commit_wait - first.commit_wait) / commits * 1000.0 if commits else None
        return Rates(
            transactions_per_s=per_s("transactions"),
            log_kb_per_s=per_s("logged_bytes", KB),
            send_kb_per_s=per_s("sent_bytes", KB),
            harden_kb_per_s=per_s("hardened_bytes", KB),
            redo_kb_per_s=per_s("redone_bytes", KB),
            commit_delay_ms=delay,
        )


# ------------------------------------------------------------------ commit times


class CommitClock:
    """When transactions were committed locally, to CLOCK_GRANULARITY.

    Buckets (first LSN, time): every LSN from a bucket's first to the next
    bucket's first was committed at or after that bucket's time. So the time a
    bucket gives for an LSN is never later than its commit: ages are at most
    one granularity too old, never too young.
    """

    def __init__(self, granularity: float = CLOCK_GRANULARITY, max_buckets: int = CLOCK_MAX_BUCKETS) -> None:
        self.granularity = granularity
        self._lsns: deque[int] = deque(maxlen=max_buckets)
        self._times: deque[float] = deque(maxlen=max_buckets)

    def __len__(self) -> int:
        return len(self._lsns)

    def note(self, first_lsn: int, now: float) -> None:
        """Transactions from first_lsn on were committed at now."""
        if self._lsns and first_lsn <= self._lsns[-1]:
            self.clear()  # the log went back (a fork was rolled back): forget the old times
        if self._times and now - self._times[-1] < self.granularity:
            return  # same bucket
        self._lsns.append(first_lsn)
        self._times.append(now)

    def committed_at(self, lsn: int) -> float | None:
        """The (lower bound of the) local commit time of lsn; None if not recorded."""
        i = bisect.bisect_right(self._lsns, lsn) - 1
        return self._times[i] if i >= 0 else None

    def forget_through(self, lsn: int) -> None:
        """Drop buckets wholly at or below lsn (the mirror hardened them)."""
        while len(self._lsns) > 1 and self._lsns[1] <= lsn + 1:
            self._lsns.popleft()
            self._times.popleft()

    def clear(self) -> None:
        self._lsns.clear()
        self._times.clear()


# ------------------------------------------------------------------ readiness


@dataclass(frozen=True)
class Readiness:
    """Could each kind of failover happen right now? None means yes; otherwise what is missing."""

    automatic: str | None
    manual: str | None
    forced: str | None


def readiness(session: Session) -> Readiness:
    """Ask the failover rules about this session as it stands now, with the statements' words.

    Automatic: if the principal were lost this instant, would the witness promote
    the mirror? Manual: would SET PARTNER FAILOVER be allowed? Forced: would
    FORCE_SERVICE_ALLOW_DATA_LOSS be allowed on the mirror?
    """
    cfg = session.config
    if cfg.partner is None or cfg.role not in (Role.PRINCIPAL, Role.MIRROR):
        none = "no mirroring session"
        return Readiness(none, none, none)
    return Readiness(_automatic(session), manual_failover_refusal(session), _forced(session))


def _automatic(session: Session) -> str | None:
    cfg = session.config
    if session.role is Role.PRINCIPAL:
        if not session.partner_connected:
            return "the mirror is not connected"
        was_synchronized = session.state is MirroringState.SYNCHRONIZED
    else:
        connected = session.partner_connected
        was_synchronized = session.caught_up if connected else session.principal_was_synchronized
    view = MirrorView(
        safety=cfg.safety, witness_set=cfg.witness is not None, witness_connected=session.witness_connected,
        principal_connected=False,  # as if the principal were lost now
        was_synchronized=was_synchronized, suspended=cfg.suspended,
        redo_error=session.redo_error if session.role is Role.MIRROR else None,
    )
    return automatic_failover_refusal(view)


def _forced(session: Session) -> str | None:
    principal_connected = True if session.role is Role.PRINCIPAL else session.partner_connected
    return forced_service_refusal(principal_connected, session.config.witness is not None, session.witness_connected,
                                  session.redo_error if session.role is Role.MIRROR else None)


# ------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Queues:
    """One instant's queues and positions, as this node knows them."""

    send_queue_bytes: int
    redo_queue_bytes: int
    unsent_transactions: int  # the principal's end of log minus the mirror's hardened LSN
    oldest_unsent_age: float | None  # seconds; None when unknown, 0 when nothing is unsent
    at_risk_bytes: int | None = None  # what forced service would lose, when it differs from the send queue


FIGURE_COLUMNS = [
    "send_queue_kb", "oldest_unsent_transaction_s", "send_rate_kb_s", "new_transactions_per_s", "log_rate_kb_s",
    "redo_queue_kb", "redo_rate_kb_s", "transaction_delay_ms", "mirror_commit_overhead_ms",
    "time_to_send_s", "time_to_restore_s", "estimated_failover_s",
    "automatic_failover", "manual_failover", "forced_failover",
    "forced_loss_bytes", "forced_loss_transactions", "forced_loss_age_s",
]


def estimate_seconds(queue_bytes: int, rate_kb_s: float | None) -> float | None:
    """How long a queue takes to drain at a rate: 0 when empty, None when it is not draining."""
    if queue_bytes <= 0:
        return 0.0
    if not rate_kb_s or rate_kb_s <= 0:
        return None
    return queue_bytes / KB / rate_kb_s


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _ready(why: str | None) -> str:
    return "READY" if why is None else f"NO: {why}"


def figures(role: Role, safety_full: bool, queues: Queues, rates: Rates, ready: Readiness, sending: bool = True) -> dict:
    """The monitor's columns for one database (see FIGURE_COLUMNS).

    sending: log can flow now (partner connected, not SUSPENDED); when it cannot,
    the current send rate is 0 whatever the window remembers, and the time to
    send is unknown.
    """
    send_rate = rates.send_kb_per_s if role is Role.PRINCIPAL else rates.harden_kb_per_s
    if not sending:
        send_rate = 0.0
    delay = rates.commit_delay_ms
    return {
        "send_queue_kb": round(queues.send_queue_bytes / KB, 1),
        "oldest_unsent_transaction_s": _round(queues.oldest_unsent_age),
        "send_rate_kb_s": _round(send_rate),
        "new_transactions_per_s": _round(rates.transactions_per_s),
        "log_rate_kb_s": _round(rates.log_kb_per_s),
        "redo_queue_kb": round(queues.redo_queue_bytes / KB, 1),
        "redo_rate_kb_s": _round(rates.redo_kb_per_s),
        "transaction_delay_ms": _round(delay, 2),
        # the reference's alert 4: average delay per transaction, which only waiting for the mirror adds
        "mirror_commit_overhead_ms": _round(delay, 2) if safety_full else 0.0,
        "time_to_send_s": _round(estimate_seconds(queues.send_queue_bytes, send_rate)),
        "time_to_restore_s": _round(estimate_seconds(queues.redo_queue_bytes, rates.redo_kb_per_s)),
        "estimated_failover_s": _round(estimate_seconds(queues.redo_queue_bytes, rates.redo_kb_per_s)),
        "automatic_failover": _ready(ready.automatic),
        "manual_failover": _ready(ready.manual),
        "forced_failover": _ready(ready.forced),
        "forced_loss_bytes": queues.send_queue_bytes if queues.at_risk_bytes is None else queues.at_risk_bytes,
        "forced_loss_transactions": max(0, queues.unsent_transactions),
        "forced_loss_age_s": _round(queues.oldest_unsent_age),
    }


# ------------------------------------------------------------------ alerts




def set_threshold(current: Thresholds, alert_id: int, threshold: int, enabled: bool) -> Thresholds:
    """The thresholds with one alert set (replacing any earlier setting of it), sorted by id."""
    if (why := alert_refusal(alert_id, threshold, int(enabled))) is not None:
        raise ValueError(why)
    kept = [t for t in current if t[0] != alert_id]
    return tuple(sorted(kept + [(alert_id, threshold, bool(enabled))]))


@dataclass(frozen=True)
class Crossing:
    """A figure went over its threshold (or, cleared, came back under it)."""

    alert: AlertKind
    value: float
    threshold: int
    cleared: bool = False

    def describe(self) -> str:
        """How a warning reads in status."""
        return f"{self.alert.name} {self.value:g} {self.alert.unit} > {self.threshold} {self.alert.unit} (alert {self.alert.alert_id})"


def over(alert: AlertKind, figures_: dict, threshold: int) -> float | None:
    """The figure in the alert's unit if it exceeds the threshold, else None."""
    raw = figures_.get(alert.figure)
    if raw is None:
        return None
    value = round(raw / alert.scale, 2)
    return value if value > threshold else None


@dataclass
class AlertWatch:
    """Which alerts are over their thresholds now; reports each crossing once."""

    crossed: dict[int, Crossing] = field(default_factory=dict)

    def check(self, figures_: dict, thresholds: Thresholds) -> list[Crossing]:
        """Compare; return what changed since the last check (new crossings and clearings)."""
        now: dict[int, Crossing] = {}
        for alert_id, threshold, enabled in thresholds:
            alert = ALERTS.get(alert_id)
            if alert is None or not enabled:
                continue
            value = over(alert, figures_, threshold)
            if value is not None:
                now[alert_id] = Crossing(alert, value, threshold)
        changes = [c for k, c in sorted(now.items()) if k not in self.crossed]
        changes += [Crossing(c.alert, c.value, c.threshold, cleared=True)
                    for k, c in sorted(self.crossed.items()) if k not in now]
        self.crossed = now
        return changes

    def warnings(self) -> str | None:
        """The status column: every alert over its threshold now, or None."""
        if not self.crossed:
            return None
        return "; ".join(c.describe() for _, c in sorted(self.crossed.items()))
