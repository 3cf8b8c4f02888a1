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
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from mirrord.core.monitoring import (
    FIGURE_COLUMNS,
    AlertWatch,
    Queues,
    RateWindow,
    Sample,
    figures,
    readiness,
)
from mirrord.core.types import MirroringState, Role, Safety

if TYPE_CHECKING:
    from mirrord.host import DatabaseHost
    from mirrord.node import Node

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
    epoch: int | None = None  # role sequence at the last sample

    def adopt_report(self, report: object) -> None:
        """The partner's figures, from a ping or pong (already validated)."""
        if isinstance(report, dict):
            self.remote, self.remote_at = report, time.monotonic()


def monitor_of(host: "DatabaseHost") -> DatabaseMonitor:
    """The host's monitor, made on first use."""
    if host.monitor is None:
        host.monitor = DatabaseMonitor()
    return host.monitor


def note_connected(host: "DatabaseHost") -> None:
    """A partner connection was established (counts reconnects)."""
    monitor_of(host).connects += 1


# ------------------------------------------------------------------ sampling


def _positions(host: "DatabaseHost") -> tuple[int, int, int]:
    """(end of log, hardened, redo) LSNs as status_row reads them."""
    s, end = host.session, host.log.last_lsn
    if host.mirror is not None:
        return end, end, host.mirror.redo_lsn
    if s.config.partner is None:
        return end, end, end
    return end, min(s.hardened_lsn, end), min(s.redo_lsn, s.hardened_lsn, end)


def take_sample(host: "DatabaseHost", now: float) -> None:
    """Turn the engines' positions and counters into one Sample of the rate window."""
    mon = monitor_of(host)
    end, hardened, redo = _positions(host)
    if mon.positions is not None:
        prev_end, prev_hardened, prev_redo = mon.positions
        mon.logged += host.queue_bytes(prev_end, end)
        mon.hardened += host.queue_bytes(prev_hardened, hardened)
        mon.redone += host.queue_bytes(prev_redo, redo)
    mon.positions = (end, hardened, redo)
    principal = host.principal
    commits, wait = (principal.commits, principal.commit_wait) if principal is not None else (0, 0.0)
    sent = host.wire.raw if host.mirror is None else mon.hardened
    mon.window.add(Sample(now, transactions=end, logged_bytes=mon.logged, sent_bytes=sent,
                          hardened_bytes=mon.hardened, redone_bytes=mon.redone, commits=commits, commit_wait=wait))


def current_figures(host: "DatabaseHost", now: float) -> dict:
    """The monitor columns of sys.database_mirroring for this database, now."""
    mon = monitor_of(host)
    s, cfg = host.session, host.session.config
    end, hardened, redo = _positions(host)
    rates = mon.window.rates()
    remote = mon.remote
    if host.mirror is not None:
        principal_end = _num(remote.get("end_of_log_lsn"))
        age = _num(remote.get("oldest_unsent_transaction_s"))
        if age:  # it keeps ageing while we wait for the next report
            age += max(0.0, now - mon.remote_at)
        # while disconnected nothing is queued for this mirror, but the principal's last report
        # is still the best guess of what forced service would lose
        queues = Queues(host.principal_send_queue if s.partner_connected else 0, host.queue_bytes(redo, hardened),
                        int(principal_end) - hardened if principal_end is not None else 0, age,
                        at_risk_bytes=host.principal_send_queue)
        live = remote if s.partner_connected else {}  # a lost principal's rates are history, not current
        rates = replace(rates, transactions_per_s=_num(live.get("new_transactions_per_s")),
                        log_kb_per_s=_num(live.get("log_rate_kb_s")),
                        commit_delay_ms=_num(live.get("transaction_delay_ms")))
    else:
        queues = Queues(host.queue_bytes(hardened, end), host.queue_bytes(redo, hardened), end - hardened,
                        _oldest_unsent_age(host, hardened, end, now))
        if s.partner_connected and "redo_rate_kb_s" in remote:
            rates = replace(rates, redo_kb_per_s=_num(remote.get("redo_rate_kb_s")))
    sending = s.partner_connected and not cfg.suspended
    out = figures(cfg.role, cfg.safety is Safety.FULL, queues, rates, readiness(s), sending)
    out["partner_state"] = "CONNECTED" if s.partner_connected else ("DISCONNECTED" if cfg.partner else None)
    out["warnings"] = mon.alerts.warnings()
    return out


def _oldest_unsent_age(host: "DatabaseHost", hardened: int, end: int, now: float) -> float | None:
    if end <= hardened:
        return 0.0
    if host.principal is None:
        return None
    clock = host.principal.commit_clock
    clock.forget_through(hardened)
    at = clock.committed_at(hardened + 1)
    return None if at is None else max(0.0, now - at)


def _num(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def partner_report(host: "DatabaseHost") -> dict:
    """What this partner tells the other in pings (principal) and pongs (mirror)."""
    now = time.monotonic()
    figs = current_figures(host, now)
    keys = FROM_MIRROR if host.mirror is not None else FROM_PRINCIPAL
    report = {k: figs.get(k) for k in keys}
    if host.mirror is None:
        report["end_of_log_lsn"] = host.log.last_lsn  # the mirror counts the transactions forced service would lose
    return report


def check_alerts(host: "DatabaseHost", figs: dict) -> None:
    """Log each threshold crossing (and its clearing) once, as a structured event."""
    cfg = host.session.config
    for change in monitor_of(host).alerts.check(figs, cfg.alerts):
        fields = dict(database=host.name, role=cfg.role.value, alert_id=change.alert.alert_id, alert=change.alert.name,
                      value=change.value, threshold=change.threshold, unit=change.alert.unit)
        if change.cleared:
            log.info("mirroring_alert_cleared", **fields)
        else:
            log.warning("mirroring_alert", **fields, warning=change.describe())
    figs["warnings"] = monitor_of(host).alerts.warnings()


async def run_sampler(node: "Node", metrics: "NodeMetrics | None") -> None:
    """Sample every database, check alerts and update the gauges, until cancelled."""
    while True:
        now = time.monotonic()
        for host in list(node.databases.values()):
            try:
                take_sample(host, now)
                figs = current_figures(host, now)
                check_alerts(host, figs)
                if metrics is not None:
                    metrics.update(host, figs)
            except Exception:  # a monitor must never take the node down; say what failed
                log.exception("monitor_sample_failed", database=host.name)
        if metrics is not None:
            metrics.forget_missing(set(node.databases))
        await asyncio.sleep(SAMPLE_INTERVAL)


# ------------------------------------------------------------------ Prometheus


NUMERIC_FIGURES = [c for c in FIGURE_COLUMNS if not c.endswith("_failover")]
FAILOVER_KINDS = ("automatic", "manual", "forced")


class NodeMetrics:
    """This node's Prometheus registry: gauges per (node, database), counters of events."""

    def __init__(self, node_name: str) -> None:
        self.node = node_name
        self.registry = CollectorRegistry()
        labels = ["node", "database"]
        self.figures = {name: Gauge(f"mirrord_{name}", f"sys.database_mirroring column {name}", labels, registry=self.registry)
                        for name in NUMERIC_FIGURES}
        self.role = Gauge("mirrord_role", "1 for the database's current role on this node", labels + ["role"], registry=self.registry)
        self.state = Gauge("mirrord_state", "1 for the current mirroring state", labels + ["state"], registry=self.registry)
        self.role_sequence = Gauge("mirrord_role_sequence", "the session's role sequence", labels, registry=self.registry)
        self.partner_connected = Gauge("mirrord_partner_connected", "1 when the partner is connected", labels, registry=self.registry)
        self.witness_connected = Gauge("mirrord_witness_connected", "1 when the witness is connected", labels, registry=self.registry)
        self.failover_ready = Gauge("mirrord_failover_ready", "1 when this kind of failover could happen now", labels + ["kind"], registry=self.registry)
        self.warnings = Gauge("mirrord_alerts_over_threshold", "warning thresholds crossed now", labels, registry=self.registry)
        self.failovers = Counter("mirrord_failovers", "role changes of the session seen by this node (role sequence increments)", labels, registry=self.registry)
        self.refused = Counter("mirrord_refused_writes", "SQL statements refused by this node (not principal, quorum lost, log full...)", labels + ["reason"], registry=self.registry)
        self.reconnects = Counter("mirrord_reconnects", "partner connections re-established after the first", labels, registry=self.registry)
        self._known: set[str] = set()

    def count_refused(self, database: str, reason: str) -> None:
        self.refused.labels(self.node, database, reason).inc()

    def update(self, host: "DatabaseHost", figs: dict) -> None:
        """Set every gauge of one database from its figures; count failovers and reconnects."""
        db, s = host.name, host.session
        self._known.add(db)
        for name, gauge in self.figures.items():
            value = figs.get(name)
            gauge.labels(self.node, db).set(math.nan if value is None else value)
        for role in Role:
            self.role.labels(self.node, db, role.value).set(1 if s.role is role else 0)
        for state in MirroringState:
            self.state.labels(self.node, db, state.value).set(1 if s.state is state else 0)
        self.role_sequence.labels(self.node, db).set(s.config.epoch)
        self.partner_connected.labels(self.node, db).set(1 if s.partner_connected else 0)
        self.witness_connected.labels(self.node, db).set(1 if s.witness_connected else 0)
        for kind in FAILOVER_KINDS:
            self.failover_ready.labels(self.node, db, kind).set(1 if figs[f"{kind}_failover"] == "READY" else 0)
        self.warnings.labels(self.node, db).set(len(monitor_of(host).alerts.crossed))
        self._count_events(host)

    def _count_events(self, host: "DatabaseHost") -> None:
        mon, db, epoch = monitor_of(host), host.name, host.session.config.epoch
        if mon.epoch is not None and mon.epoch >= 1 and epoch > mon.epoch:
            self.failovers.labels(self.node, db).inc(epoch - mon.epoch)
        else:
            self.failovers.labels(self.node, db)  # the series exists from the start, at 0
        mon.epoch = epoch
        reconnects = max(0, mon.connects - 1)
        if reconnects > mon.counted_connects:
            self.reconnects.labels(self.node, db).inc(reconnects - mon.counted_connects)
            mon.counted_connects = reconnects
        else:
            self.reconnects.labels(self.node, db)

    def forget_missing(self, databases: set[str]) -> None:
        """Drop the series of databases that no longer exist here."""
        for db in self._known - databases:
            for metric in (*self.figures.values(), self.role, self.state, self.role_sequence, self.partner_connected,
                           self.witness_connected, self.failover_ready, self.warnings, self.failovers, self.refused, self.reconnects):
                for labels in list(metric._metrics):  # noqa: SLF001 - prometheus_client has no public "labels matching"
                    if labels[:2] == (self.node, db):
                        metric.remove(*labels)
        self._known &= databases
