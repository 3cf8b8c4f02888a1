"""The monitor at the edge: sample every database, warn on thresholds, serve /metrics.

How it works. `run_sampler` wakes every SAMPLE_INTERVAL and, for each
database, reads the positions and counters the engines keep (end of log,
hardened and redo LSNs, bytes sent, commits and their waits), turns LSN
progress into byte counters with the log's own index, and feeds a
`core.monitoring.RateWindow`. `current_figures` combines that with the live
queues and the failover rules; `sys.database_mirroring` and /metrics show it.

What one partner cannot see it learns from the other: the principal puts its
own figures (oldest unsent transaction, rate of new transactions, commit delay,
end of log) in every ping, and the mirror its redo rate in every pong.

Prometheus: a registry per node, gauges set from the event loop after each
sample, served at /metrics by the node's HTTP server (mirrord/httpapi.py), in
the same loop.
"""

from __future__ import annotations

import asyncio
import math
import platform
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mirrord.core.monitoring import (
    FIGURE_COLUMNS,
    AlertWatch,
    Queues,
    RateWindow,
    Sample,
    figures,
    readiness,
)
from mirrord.core.alerts import ALERTS
from mirrord.core.types import MirroringState, Role, Safety

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.engine.witness import Witness

log = structlog.get_logger()

SAMPLE_INTERVAL = 0.5
# principal figures a mirror shows from its principal's pings; mirror figures the principal shows from pongs
FROM_PRINCIPAL = ("oldest_unsent_transaction_s", "new_transactions_per_s", "log_rate_kb_s", "transaction_delay_ms")
FROM_MIRROR = ("redo_rate_kb_s",)


@dataclass
class DatabaseMonitor:
    """Monitoring state of one database on this node."""

    window: RateWindow = field(default_factory=RateWindow)
    alerts: AlertWatch = field(default_factory=AlertWatch)
    positions: tuple[int, int, int] | None = None  # (end, hardened, redo) LSNs at the last sample
    logged: int = 0
    hardened: int = 0
    redone: int = 0
    remote: dict = field(default_factory=dict)  # the partner's last report
    remote_at: float = 0.0  # when it arrived (monotonic)
    connects: int = 0  # partner connections established since this process started
    counted_connects: int = 0
    role_sequence: int | None = None  # role sequence at the last sample
    queues: Queues | None = None  # the exact queues behind the last figures (Prometheus wants bytes, not KB)
    exported: dict = field(default_factory=dict)  # counter name -> the source value last added to it

    def adopt_report(self, report: object) -> None:
        """The partner's figures, from a ping or pong (already validated)."""
        if isinstance(report, dict):
            self.remote, self.remote_at = report, time.monotonic()


def monitor_of(database: "Database") -> DatabaseMonitor:
    """The database's monitor, made on first use."""
    if database.monitor is None:
        database.monitor = DatabaseMonitor()
    return database.monitor


def note_connected(database: "Database") -> None:
    """A partner connection was established (counts reconnects)."""
    monitor_of(database).connects += 1


# ------------------------------------------------------------------ sampling


def positions(database: "Database") -> tuple[int, int, int]:
    """(end of log, hardened, redo) LSNs of a database: the one reading of them, for the monitor and the status row.

    A mirror hardened its whole log; a principal knows its mirror's positions
    from acks (never past its own end of log); a database in no session is
    all at its end.
    """
    s, end = database.session, database.log.last_lsn
    if database.mirror is not None:
        return end, end, database.mirror.redo_lsn
    if s.config.partner is None:
        return end, end, end
    return end, min(s.hardened_lsn, end), min(s.redo_lsn, s.hardened_lsn, end)


def principal_redo_queue(database: "Database", redo: int, hardened: int) -> int:
    """The mirror's redo queue as its principal knows it, in bytes.

    This log no longer holds what the mirror hardened (the principal truncates
    it), so the bytes in (redo, hardened] counted here fall short; the mirror
    reports its own count with every ack, pong and redo_progress frame. The
    larger of the two: the report is exact but a moment old.
    """
    counted = database.queue_bytes(redo, hardened)
    return max(counted, database.session.redo_queue_bytes) if database.session.partner_connected else counted


def take_sample(database: "Database", now: float) -> None:
    """Turn the engines' positions and counters into one Sample of the rate window."""
    mon = monitor_of(database)
    end, hardened, redo = positions(database)
    if mon.positions is not None:
        prev_end, prev_hardened, prev_redo = mon.positions
        mon.logged += database.queue_bytes(prev_end, end)
        mon.hardened += database.queue_bytes(prev_hardened, hardened)
        mon.redone += database.queue_bytes(prev_redo, redo)
    mon.positions = (end, hardened, redo)
    principal = database.principal
    commits, wait = (principal.commits, principal.commit_wait) if principal is not None else (0, 0.0)
    sent = database.wire.raw if database.mirror is None else mon.hardened
    mon.window.add(Sample(now, transactions=end, logged_bytes=mon.logged, sent_bytes=sent,
                          hardened_bytes=mon.hardened, redone_bytes=mon.redone, commits=commits, commit_wait=wait))


def current_figures(database: "Database", now: float) -> dict:
    """The monitor columns of sys.database_mirroring for this database, now."""
    mon = monitor_of(database)
    s, cfg = database.session, database.session.config
    end, hardened, redo = positions(database)
    rates = mon.window.rates()
    remote = mon.remote
    if database.mirror is not None:
        principal_end = _num(remote.get("end_of_log_lsn"))
        age = _num(remote.get("oldest_unsent_transaction_s"))
        if age:  # it keeps ageing while we wait for the next report
            age += max(0.0, now - mon.remote_at)
        # while disconnected nothing is queued for this mirror, but the principal's last report
        # is still the best guess of what forced service would lose
        queues = Queues(database.principal_send_queue if s.partner_connected else 0, database.queue_bytes(redo, hardened),
                        int(principal_end) - hardened if principal_end is not None else 0, age,
                        at_risk_bytes=database.principal_send_queue)
        live = remote if s.partner_connected else {}  # a lost principal's rates are history, not current
        rates = replace(rates, transactions_per_s=_num(live.get("new_transactions_per_s")),
                        log_kb_per_s=_num(live.get("log_rate_kb_s")),
                        commit_delay_ms=_num(live.get("transaction_delay_ms")))
    else:
        queues = Queues(database.queue_bytes(hardened, end), principal_redo_queue(database, redo, hardened), end - hardened,
                        _oldest_unsent_age(database, hardened, end, now))
        if s.partner_connected and "redo_rate_kb_s" in remote:
            rates = replace(rates, redo_kb_per_s=_num(remote.get("redo_rate_kb_s")))
    mon.queues = queues
    sending = s.partner_connected and not cfg.suspended
    out = figures(cfg.role, cfg.safety is Safety.FULL, queues, rates, readiness(s), sending)
    out["partner_state"] = "CONNECTED" if s.partner_connected else ("DISCONNECTED" if cfg.partner else None)
    out["warnings"] = mon.alerts.warnings()
    return out


def _oldest_unsent_age(database: "Database", hardened: int, end: int, now: float) -> float | None:
    if end <= hardened:
        return 0.0
    if database.principal is None:
        return None
    clock = database.principal.commit_clock
    clock.forget_through(hardened)
    at = clock.committed_at(hardened + 1)
    return None if at is None else max(0.0, now - at)


def _num(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def partner_report(database: "Database") -> dict:
    """What this partner tells the other in pings (principal) and pongs (mirror)."""
    now = time.monotonic()
    figs = current_figures(database, now)
    keys = FROM_MIRROR if database.mirror is not None else FROM_PRINCIPAL
    report = {k: figs.get(k) for k in keys}
    if database.mirror is None:
        report["end_of_log_lsn"] = database.log.last_lsn  # the mirror counts the transactions forced service would lose
    return report


def check_alerts(database: "Database", figs: dict) -> None:
    """Log each threshold crossing (and its clearing) once, as a structured event."""
    cfg = database.session.config
    for change in monitor_of(database).alerts.check(figs, cfg.alerts):
        fields = dict(database=database.name, role=cfg.role.value, alert_id=change.alert.alert_id, alert=change.alert.name,
                      value=change.value, threshold=change.threshold, unit=change.alert.unit)
        if change.cleared:
            log.info("mirroring_alert_cleared", **fields)
            database.record_event("ALERT_CLEARED", f"{change.alert.name} back within {change.threshold} {change.alert.unit} "
                                               f"(alert {change.alert.alert_id})")
        else:
            log.warning("mirroring_alert", **fields, warning=change.describe())
            database.record_event("ALERT", change.describe())
    figs["warnings"] = monitor_of(database).alerts.warnings()


async def run_sampler(databases: Callable[[], dict[str, "Database"]], witness: "Witness",
                      metrics: "NodeMetrics | None") -> None:
    """Sample every database (the node's, as they are now), check alerts and update the gauges, until cancelled."""
    while True:
        now = time.monotonic()
        for database in list(databases().values()):
            try:
                take_sample(database, now)
                figs = current_figures(database, now)
                check_alerts(database, figs)
                if metrics is not None:
                    metrics.update(database, figs)
            except Exception:  # a monitor must never take the node down; say what failed
                log.exception("monitor_sample_failed", database=database.name)
        if metrics is not None:
            metrics.forget_missing(set(databases()))
            metrics.update_witness(witness)
        await asyncio.sleep(SAMPLE_INTERVAL)


# ------------------------------------------------------------------ Prometheus


# Each numeric column of sys.database_mirroring as a Prometheus gauge in base units
# (bytes, seconds): column -> (metric name without the mirrord_ prefix, factor).
# Queue sizes are exported exactly (from the queues, not the rounded KB).
BASE_UNIT_GAUGES: dict[str, tuple[str, float]] = {
    "send_queue_kb": ("send_queue_bytes", 1024.0),
    "oldest_unsent_transaction_s": ("oldest_unsent_transaction_seconds", 1.0),
    "send_rate_kb_s": ("send_rate_bytes_per_second", 1024.0),
    "new_transactions_per_s": ("new_transactions_per_second", 1.0),
    "log_rate_kb_s": ("log_rate_bytes_per_second", 1024.0),
    "redo_queue_kb": ("redo_queue_bytes", 1024.0),
    "redo_rate_kb_s": ("redo_rate_bytes_per_second", 1024.0),
    "transaction_delay_ms": ("transaction_delay_seconds", 0.001),
    "mirror_commit_overhead_ms": ("mirror_commit_overhead_seconds", 0.001),
    "time_to_send_s": ("time_to_send_seconds", 1.0),
    "time_to_restore_s": ("time_to_restore_seconds", 1.0),
    "estimated_failover_s": ("estimated_failover_seconds", 1.0),
    "forced_loss_bytes": ("forced_loss_bytes", 1.0),
    "forced_loss_transactions": ("forced_loss_transactions", 1.0),
    "forced_loss_age_s": ("forced_loss_age_seconds", 1.0),
}
NUMERIC_FIGURES = [c for c in FIGURE_COLUMNS if not c.endswith("_failover")]
assert set(BASE_UNIT_GAUGES) == set(NUMERIC_FIGURES), "every numeric column has its base-unit gauge"
FAILOVER_KINDS = ("automatic", "manual", "forced")
# Commit latency buckets (seconds): a local commit takes ~1 ms, SAFETY FULL adds a round trip and an fsync
COMMIT_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """This node's Prometheus registry: gauges per (node, database), counters of events."""

    def __init__(self, node_name: str, version: str = "unknown") -> None:
        self.node = node_name
        self.registry = r = CollectorRegistry()
        labels = ["node", "database"]
        self.figures = {column: Gauge(f"mirrord_{name}", f"sys.database_mirroring column {column}, in base units", labels, registry=r)
                        for column, (name, _) in BASE_UNIT_GAUGES.items()}
        self.role = Gauge("mirrord_role", "1 for the database's current role on this node", labels + ["role"], registry=r)
        self.state = Gauge("mirrord_state", "1 for the current mirroring state", labels + ["state"], registry=r)
        self.role_sequence = Gauge("mirrord_role_sequence", "the session's role sequence", labels, registry=r)
        self.partner_connected = Gauge("mirrord_partner_connected", "1 when the partner is connected", labels, registry=r)
        self.witness_connected = Gauge("mirrord_witness_connected", "1 when the witness is connected", labels, registry=r)
        self.failover_ready = Gauge("mirrord_failover_ready", "1 when this kind of failover could happen now", labels + ["kind"], registry=r)
        self.warnings = Gauge("mirrord_alerts_over_threshold", "warning thresholds crossed now", labels, registry=r)
        self.failovers = Counter("mirrord_failovers", "role changes of the session seen by this node (role sequence increments)", labels, registry=r)
        self.refused = Counter("mirrord_refused_writes", "SQL statements refused by this node (not principal, quorum lost, log full...)", labels + ["reason"], registry=r)
        self.reconnects = Counter("mirrord_reconnects", "partner connections re-established after the first", labels, registry=r)
        # counters left to rate(): the monitor's own rates are 10 s averages of the same figures
        self.log_sent = Counter("mirrord_log_sent_bytes", "log bytes sent to the mirror (before compression)", labels, registry=r)
        self.log_hardened = Counter("mirrord_log_hardened_bytes", "log bytes hardened on the mirror", labels, registry=r)
        self.log_redone = Counter("mirrord_log_redone_bytes", "log bytes redone into the mirror's copy", labels, registry=r)
        self.commits = Counter("mirrord_commits", "commits acknowledged to clients by this principal", labels, registry=r)
        self.commit_latency = Histogram("mirrord_commit_latency_seconds", "from a committing statement's arrival to its acknowledgement",
                                        labels, buckets=COMMIT_LATENCY_BUCKETS, registry=r)
        Gauge("mirrord_build_info", "1; the labels say which mirrord runs here", ["node", "version", "python"],
              registry=r).labels(node_name, version, platform.python_version()).set(1)
        self.alert_threshold = Gauge("mirrord_alert_threshold", "an enabled sp_dbmmonitorchangealert threshold, in the base "
                                     "unit of the gauge it watches (alert_id 1: seconds, 2 and 3: bytes, 4: seconds)",
                                     labels + ["alert_id"], registry=r)
        self.witnessed = Gauge("mirrord_witness_sessions", "mirroring sessions this node witnesses", ["node"], registry=r)
        self.witness_partners = Gauge("mirrord_witness_partner_connections", "partners connected to this witness now", ["node", "database"], registry=r)
        self.witness_votes = Counter("mirrord_witness_votes", "promotion votes this witness cast", ["node", "database", "outcome"], registry=r)
        self.checkmirror_runs = Counter("mirrord_checkmirror_runs", "DBCC CHECKMIRROR comparisons completed (statement or schedule)",
                                        labels + ["result"], registry=r)
        self.checkmirror_mismatches = Counter("mirrord_checkmirror_mismatches", "DBCC CHECKMIRROR comparisons that found differing pages",
                                              labels, registry=r)
        self.pages_repaired = Counter("mirrord_pages_repaired", "damaged pages of this node's copy repaired from the partner",
                                      labels, registry=r)
        # PARTNER REDO_QUEUE flow control (core.redo_queue), on the principal
        self.redo_queue_limit = Gauge("mirrord_redo_queue_limit_bytes", "PARTNER REDO_QUEUE, NaN when UNLIMITED", labels, registry=r)
        self.redo_queue_held = Gauge("mirrord_redo_queue_held", "1 while writes wait for the mirror's redo queue to drain",
                                     labels, registry=r)
        self.redo_queue_holds = Counter("mirrord_redo_queue_holds", "times writes began to wait on the redo queue limit",
                                        labels, registry=r)
        self.redo_queue_held_seconds = Counter("mirrord_redo_queue_held_seconds", "seconds writes waited on the redo queue limit",
                                               labels, registry=r)
        self.redo_queue_timeouts = Counter("mirrord_redo_queue_timeouts", "writes refused (redo_queue_full) after waiting "
                                           "their lock timeout on the redo queue limit", labels, registry=r)
        self._known: set[str] = set()
        # per database, the commit counter's and latency histogram's labelled series: `labels()` per commit
        # (a lock and a key built each time) was 2.8 % of a principal's interpreter time at 1 client
        self._commit_series: dict[str, tuple[Any, Any]] = {}
        self._witness_exported: dict = {}

    def count_refused(self, database: str, reason: str) -> None:
        self.refused.labels(self.node, database, reason).inc()

    def update(self, database: "Database", figs: dict) -> None:
        """Set every gauge of one database from its figures; count failovers and reconnects."""
        db, s, mon = database.name, database.session, monitor_of(database)
        self._known.add(db)
        for column, gauge in self.figures.items():
            value = figs.get(column)
            gauge.labels(self.node, db).set(math.nan if value is None else value * BASE_UNIT_GAUGES[column][1])
        if mon.queues is not None:  # exact bytes, where the column is rounded KB
            self.figures["send_queue_kb"].labels(self.node, db).set(mon.queues.send_queue_bytes)
            self.figures["redo_queue_kb"].labels(self.node, db).set(mon.queues.redo_queue_bytes)
        for name, counter, value in (("sent", self.log_sent, database.wire.raw), ("hardened", self.log_hardened, mon.hardened),
                                     ("redone", self.log_redone, mon.redone)):
            counter.labels(self.node, db).inc(_advance(mon.exported, name, value))
        self.commits.labels(self.node, db)  # the series exists from the start, at 0
        self._export_thresholds(db, s.config.alerts)
        for role in Role:
            self.role.labels(self.node, db, role.value).set(1 if s.role is role else 0)
        for state in MirroringState:
            self.state.labels(self.node, db, state.value).set(1 if s.state is state else 0)
        self.role_sequence.labels(self.node, db).set(s.config.role_sequence)
        self.partner_connected.labels(self.node, db).set(1 if s.partner_connected else 0)
        self.witness_connected.labels(self.node, db).set(1 if s.witness_connected else 0)
        for kind in FAILOVER_KINDS:
            self.failover_ready.labels(self.node, db, kind).set(1 if figs[f"{kind}_failover"] == "READY" else 0)
        self.warnings.labels(self.node, db).set(len(monitor_of(database).alerts.crossed))
        self._count_events(database)
        self._export_redo_queue(database)

    def _export_redo_queue(self, database: "Database") -> None:
        db, p, limit = database.name, database.principal, database.session.config.redo_queue_mb
        self.redo_queue_limit.labels(self.node, db).set(limit << 20 if limit else math.nan)
        self.redo_queue_held.labels(self.node, db).set(1 if p is not None and p.redo_queue_holding else 0)
        exported = monitor_of(database).exported
        for name, counter, value in (("holds", self.redo_queue_holds, p.redo_queue_holds if p else 0),
                                     ("held_s", self.redo_queue_held_seconds, p.redo_queue_held_s if p else 0.0),
                                     ("timeouts", self.redo_queue_timeouts, p.redo_queue_timeouts if p else 0)):
            counter.labels(self.node, db).inc(_advance(exported, f"redo_queue_{name}", value))

    def _count_events(self, database: "Database") -> None:
        mon, db, role_sequence = monitor_of(database), database.name, database.session.config.role_sequence
        if mon.role_sequence is not None and mon.role_sequence >= 1 and role_sequence > mon.role_sequence:
            self.failovers.labels(self.node, db).inc(role_sequence - mon.role_sequence)
        else:
            self.failovers.labels(self.node, db)  # the series exists from the start, at 0
        mon.role_sequence = role_sequence
        reconnects = max(0, mon.connects - 1)
        if reconnects > mon.counted_connects:
            self.reconnects.labels(self.node, db).inc(reconnects - mon.counted_connects)
            mon.counted_connects = reconnects
        else:
            self.reconnects.labels(self.node, db)

    def _export_thresholds(self, db: str, alerts: tuple[tuple[int, int, bool], ...]) -> None:
        """The enabled thresholds, so Prometheus alert rules compare each figure with the DBA's own threshold."""
        enabled = {alert_id: threshold for alert_id, threshold, on in alerts if on and alert_id in ALERTS}
        for alert_id in ALERTS:
            if alert_id in enabled:
                kind = ALERTS[alert_id]
                base = enabled[alert_id] * kind.scale * BASE_UNIT_GAUGES[kind.figure][1]
                self.alert_threshold.labels(self.node, db, str(alert_id)).set(base)
            elif (self.node, db, str(alert_id)) in self.alert_threshold._metrics:  # noqa: SLF001 - no public "has labels"
                self.alert_threshold.remove(self.node, db, str(alert_id))

    def count_checkmirror(self, database: str, identical: bool) -> None:
        """One completed DBCC CHECKMIRROR comparison."""
        self.checkmirror_runs.labels(self.node, database, "identical" if identical else "different").inc()
        counter = self.checkmirror_mismatches.labels(self.node, database)
        if not identical:
            counter.inc()

    def count_page_repaired(self, database: str) -> None:
        """One damaged page of this node's copy repaired (automatic page repair)."""
        self.pages_repaired.labels(self.node, database).inc()

    def observe_commit(self, database: str, seconds: float) -> None:
        """One acknowledged commit and its latency (called by the principal, in the event loop)."""
        series = self._commit_series.get(database)
        if series is None:
            series = self._commit_series[database] = (self.commits.labels(self.node, database),
                                                      self.commit_latency.labels(self.node, database))
        series[0].inc()
        series[1].observe(seconds)

    def update_witness(self, witness: "Witness") -> None:
        """The witness's sessions, connected partners and votes."""
        records = witness.records
        self.witnessed.labels(self.node).set(len(records))
        for db in records:
            self.witness_partners.labels(self.node, db).set(len(witness.sessions[db].connected))
        for (db, granted), count in list(witness.votes.items()):
            outcome = "granted" if granted else "refused"
            self.witness_votes.labels(self.node, db, outcome).inc(_advance(self._witness_exported, (db, outcome), count))

    def forget_missing(self, databases: set[str]) -> None:
        """Drop the series of databases that no longer exist here."""
        for db in [db for db in self._commit_series if db not in databases]:
            del self._commit_series[db]  # a database made again under that name gets series of its own
        for db in self._known - databases:
            for metric in (*self.figures.values(), self.role, self.state, self.role_sequence, self.partner_connected,
                           self.witness_connected, self.failover_ready, self.warnings, self.failovers, self.refused, self.reconnects,
                           self.log_sent, self.log_hardened, self.log_redone, self.commits, self.commit_latency,
                           self.alert_threshold, self.checkmirror_runs, self.checkmirror_mismatches,
                           self.pages_repaired, self.redo_queue_limit, self.redo_queue_held, self.redo_queue_holds,
                           self.redo_queue_held_seconds, self.redo_queue_timeouts):
                for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public "labels matching"
                    if labels[:2] == (self.node, db):
                        metric.remove(*labels)
        self._known &= databases


def _advance(exported: dict, key: object, value: float) -> float:
    """How much to add to a counter whose source now reads value (a source that restarted counts from 0)."""
    last = exported.get(key, 0)
    exported[key] = value
    return value - last if value >= last else value
