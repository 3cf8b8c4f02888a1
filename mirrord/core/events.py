"""The event history of a node: what happened to its sessions, one record per event.

A node records an event where the decision was taken (a role change, a
mirroring state derived anew, SUSPEND/RESUME, an alert, a connection made),
never by polling. Each record says when (UTC), where (node, database), what
(`event`, one of EVENTS), the node's role, mirroring state and role sequence
at that instant, an LSN where one explains it, and a readable `detail`.

This module is pure: the record type, its one-line JSON form and the checks
applied when it is read back (a file is outside input: a torn or edited line
is skipped, never trusted), the retention rule (newest `max_events` within
`max_age_seconds`), and the merge of several nodes' histories by time that
`mirrorctl history` prints. Files, fsync and clocks are in
`mirrord.storage.events`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterable

# What can happen, and when a node records it.
EVENTS = {
    "NODE_STARTED": "the node started and loaded its databases",
    "STATE_CHANGE": "the mirroring state of a database changed (detail: why, when the state alone does not say)",
    "PROMOTED": "this mirror became the principal (automatic, manual or forced failover)",
    "PROMOTION_FAILED": "a promotion was refused or failed; the copy stays the mirror",
    "STEPPED_DOWN": "this principal became the mirror of a newer principal",
    "MANUAL_FAILOVER": "SET PARTNER FAILOVER was issued on this principal",
    "FORCED_SERVICE": "FORCE_SERVICE_ALLOW_DATA_LOSS started a new recovery fork here",
    "DATA_LOSS": "the loss report of forced service: this old principal's log past the fork, and its salvage copy",
    "SUSPEND": "SET PARTNER SUSPEND (or a suspension asked by the mirror)",
    "RESUME": "SET PARTNER RESUME",
    "PARTNER_CONNECTED": "the partner connection was (re)established",
    "WITNESS_CONNECTED": "this partner's connection to the witness was (re)established",
    "WITNESS_PARTNER_CONNECTED": "witness: a partner connected",
    "WITNESS_PARTNER_LOST": "witness: a partner's connection ended",
    "WITNESS_RECORD": "witness: the recorded principal or role sequence changed",
    "WITNESS_VOTE": "witness: a vote for promotion was granted",
    "ALERT": "a monitor threshold (sp_dbmmonitorchangealert) was passed",
    "ALERT_CLEARED": "a monitor value fell back under its threshold",
    "CHECKMIRROR_MISMATCH": "DBCC CHECKMIRROR found pages that differ between principal and mirror",
    "PAGE_REPAIR": "a damaged page was repaired from the partner",
    "SNAPSHOT_CREATED": "CREATE DATABASE … AS SNAPSHOT OF made a database snapshot of this mirror's copy",
    "SNAPSHOT_DROPPED": "a database snapshot was dropped (detail: why: DROP DATABASE, a promotion, a reseed, a failed save)",
}
COLUMNS = ["time", "node", "database", "event", "role", "state", "role_sequence", "lsn", "detail"]
MAX_DETAIL = 2000  # characters; a reason quoting a long error stays readable and a line stays small
MAX_NAME = 200

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_AGE_DAYS = 30


@dataclass(frozen=True)
class MirroringEvent:
    """One row of sys.database_mirroring_events."""

    time: str  # UTC, ISO 8601 with milliseconds: 2026-11-30T21:04:05.123Z (sorts as text)
    node: str
    database: str | None
    event: str
    role: str | None = None
    state: str | None = None
    role_sequence: int | None = None
    lsn: int | None = None
    detail: str = ""
    seq: int = 0  # order among one node's events of the same millisecond

    def row(self) -> dict:
        """The view's columns."""
        return {c: getattr(self, c) for c in COLUMNS}


def utc_text(epoch_seconds: float) -> str:
    """The `time` of an event recorded at this Unix time."""
    stamp = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def seconds_of(text: str) -> float:
    """Inverse of utc_text; ValueError if it is not one."""
    if not (isinstance(text, str) and len(text) == 24 and text.endswith("Z")):
        raise ValueError(f"not a UTC time: {text!r}")
    return datetime.strptime(text[:-1] + "+0000", "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def make(now: float, node: str, database: str | None, event: str, *, role: str | None = None,
         state: str | None = None, role_sequence: int | None = None, lsn: int | None = None,
         detail: str = "", seq: int = 0) -> MirroringEvent:
    """A new event (ValueError for an unknown kind: a programming error, caught by the tests)."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    return MirroringEvent(utc_text(now), node, database, event, role, state, role_sequence, lsn, detail, seq)


def to_line(ev: MirroringEvent) -> bytes:
    """The record as one JSON line (what the history file holds)."""
    return json.dumps(asdict(ev), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _text(d: dict, key: str, limit: int, optional: bool) -> str | None:
    value = d.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{key} must be text of at most {limit} characters")
    return value


def _count(d: dict, key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise ValueError(f"{key} must be a whole number 0..2^63-1")
    return value


def from_line(line: bytes) -> MirroringEvent:
    """A record read back from a history file; ValueError if any field is not what to_line writes."""
    try:
        d = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON line: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    seconds_of(d.get("time"))
    event = _text(d, "event", MAX_NAME, False)
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    seq = _count(d, "seq")
    return MirroringEvent(
        time=d["time"], node=_text(d, "node", MAX_NAME, False), database=_text(d, "database", MAX_NAME, True),
        event=event, role=_text(d, "role", MAX_NAME, True), state=_text(d, "state", MAX_NAME, True),
        role_sequence=_count(d, "role_sequence"), lsn=_count(d, "lsn"),
        detail=_text(d, "detail", MAX_DETAIL, False), seq=0 if seq is None else seq,
    )


def retained(events: Iterable[MirroringEvent], max_events: int, max_age_seconds: float, now: float) -> list[MirroringEvent]:
    """The events a node keeps: no older than max_age_seconds, the newest max_events of those, oldest first."""
    oldest = utc_text(now - max_age_seconds)
    kept = [ev for ev in events if ev.time >= oldest]
    return kept[-max_events:] if max_events > 0 else []


def merged(histories: Iterable[Iterable[dict]]) -> list[dict]:
    """Several nodes' rows as one history, by time (then node, then each node's own order)."""
    rows = [(row, i) for history in histories for i, row in enumerate(history)]
    rows.sort(key=lambda ri: (str(ri[0].get("time") or ""), str(ri[0].get("node") or ""), ri[1]))
    return [row for row, _ in rows]
