"""The monitor's warning thresholds, as the reference numbers them: pure, imports nothing of ours.

`sp_dbmmonitorchangealert 'db', alert_id, threshold, enabled` sets one; the
statement parser checks the arguments with `alert_refusal`, the monitor
(core.monitoring) compares the figures with them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlertKind:
    """One of the reference's warning thresholds (sp_dbmmonitorchangealert alert_id)."""

    alert_id: int
    name: str
    unit: str
    figure: str  # the column it watches
    scale: float = 1.0  # figure / scale is compared with the threshold


ALERTS: dict[int, AlertKind] = {
    1: AlertKind(1, "oldest unsent transaction", "minutes", "oldest_unsent_transaction_s", 60.0),
    2: AlertKind(2, "unsent log", "KB", "send_queue_kb"),
    3: AlertKind(3, "unrestored log", "KB", "redo_queue_kb"),
    4: AlertKind(4, "mirror commit overhead", "ms", "mirror_commit_overhead_ms"),
}
MAX_THRESHOLD = 2**31 - 1  # an int, as in the reference


def alert_refusal(alert_id: int, threshold: int, enabled: int) -> str | None:
    """Why these sp_dbmmonitorchangealert arguments are not acceptable, or None."""
    if alert_id not in ALERTS:
        ids = ", ".join(f"{k} ({a.name}, {a.unit})" for k, a in ALERTS.items())
        return f"alert_id must be one of {ids}; found {alert_id}"
    if not 0 <= threshold <= MAX_THRESHOLD:
        return f"threshold must be 0..{MAX_THRESHOLD} {ALERTS[alert_id].unit}; found {threshold}"
    if enabled not in (0, 1):
        return f"enabled must be 1 (on) or 0 (off); found {enabled}"
    return None


Thresholds = tuple[tuple[int, int, bool], ...]  # (alert_id, threshold, enabled), one per alert_id


def thresholds_from_json(value: object) -> Thresholds:
    """Thresholds read back from meta.json; malformed entries are dropped."""
    out: dict[int, tuple[int, int, bool]] = {}
    if isinstance(value, (list, tuple)):
        for item in value:
            if (isinstance(item, (list, tuple)) and len(item) == 3 and all(type(v) is int for v in item[:2])
                    and isinstance(item[2], bool) and alert_refusal(item[0], item[1], int(item[2])) is None):
                out[item[0]] = (item[0], item[1], item[2])
    return tuple(sorted(out.values()))
