"""The system views a node answers: sys.database_mirroring (the status rows, also served on HTTP /status),
sys.database_mirroring_events, sys.database_snapshots, sys.dm_db_mirroring_auto_page_repair and
sys.database_mirroring_witnesses — their columns, and the rows of each from what the node holds now.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mirrord.core import events
from mirrord.core import page_repair as page_repair_core
from mirrord.core import redo_queue
from mirrord.core import statements as st
from mirrord.core.monitoring import FIGURE_COLUMNS
from mirrord.core.types import StatementRefused
from mirrord.engine.monitor import current_figures, positions, principal_redo_queue
from mirrord.engine.principal import StatementResult

if TYPE_CHECKING:
    from mirrord.engine.database import Database
    from mirrord.node_services import NodeServices


STATUS_COLUMNS = [
    "database", "role", "state", "safety", "partner", "witness", "witness_state", "role_sequence",
    "failover_lsn", "end_of_log_lsn", "hardened_lsn", "redo_lsn", "send_queue_bytes", "redo_queue_bytes",
    "timeout", "status", "partner_address", "fork_lsn", "lost_lsn_range", "lost_transactions", "salvage_path",
    "log_bytes", "log_bytes_sent_raw", "log_bytes_sent_wire",
    *FIGURE_COLUMNS, "partner_state", "warnings",  # the Database Mirroring Monitor's figures (mirrord.engine.monitor)
    "state_reason",  # why SUSPENDED or DISCONNECTED, when the state alone does not say
    "transport_security",  # "mutual TLS", or INSECURE for a node started with --insecure
    # DBCC CHECKMIRROR on this principal since it started: the last identical comparison, mismatches, the last outcome
    "last_verified_lsn", "last_verified_time", "checkmirror_mismatches", "last_checkmirror",
    # PARTNER REDO_QUEUE (core.redo_queue), in the reference's names: the limit in MB (NULL when UNLIMITED) and its
    # type; on the principal whether writes are held by it now, how often and how long they were, and how many gave up
    "mirroring_redo_queue", "mirroring_redo_queue_type", "redo_queue_held", "redo_queue_holds", "redo_queue_held_s",
    "redo_queue_timeouts",
]
EVENT_COLUMNS = events.COLUMNS
REPAIR_COLUMNS = page_repair_core.COLUMNS
SNAPSHOT_COLUMNS = ["name", "database", "lsn", "role_sequence", "created", "page_size", "page_count", "pages_saved",
                    "bytes_saved", "redo_lsn"]
WITNESS_COLUMNS = ["database", "principal", "mirror", "role_sequence", "safety", "mirror_synchronized", "principal_connected",
                   "mirror_connected", "forced"]  # forced: the record's role sequence began by forced service


def system_view(node: "NodeServices", stmt: st.SelectSystemView) -> StatementResult:
    """SELECT [columns] FROM sys.<view> [WHERE database = …]: the rows this node has now."""
    in_order = False
    if stmt.view == "database_mirroring":
        rows, columns = status_rows(node), STATUS_COLUMNS
    elif stmt.view == "database_mirroring_events":
        rows, columns, in_order = node.events.rows(stmt.database), EVENT_COLUMNS, True  # oldest first
    elif stmt.view == "database_snapshots":
        rows, columns = snapshot_rows(node), SNAPSHOT_COLUMNS
    elif stmt.view == "dm_db_mirroring_auto_page_repair":
        rows, columns, in_order = node.repairs.rows(stmt.database), REPAIR_COLUMNS, True  # oldest change first
    else:
        rows, columns = node.witness.rows(), WITNESS_COLUMNS
    if stmt.database is not None:
        rows = [r for r in rows if r["database"] == stmt.database]
    wanted = list(stmt.columns) if stmt.columns else columns
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        raise StatementRefused(f"sys.{stmt.view} has no column {', '.join(unknown)}; columns: {', '.join(columns)}")
    if not in_order:
        rows = sorted(rows, key=lambda r: r["database"])
    return StatementResult(wanted, [[r[c] for c in wanted] for r in rows], len(rows))


def snapshot_rows(node: "NodeServices") -> list[dict]:
    """The rows of sys.database_snapshots."""
    rows = []
    for name, (database, snap) in sorted(node.snapshots().items()):
        meta = snap.meta
        rows.append({"name": name, "database": database.name, "lsn": meta.lsn, "role_sequence": meta.role_sequence,
                     "created": meta.created, "page_size": meta.page_size, "page_count": meta.page_count,
                     "pages_saved": snap.pages_saved, "bytes_saved": snap.pages_saved * meta.page_size,
                     "redo_lsn": database.mirror.redo_lsn if database.mirror is not None else None})
    return rows


def status_rows(node: "NodeServices") -> list[dict]:
    """Every row of sys.database_mirroring on this node (the HTTP /status serves the same), by database name."""
    security = "mutual TLS" if node.tls is not None else "INSECURE (--insecure: no TLS, no logins)"
    # a database quarantined by a full disk is in both while it loads again: QUARANTINED until it is open
    rows = [status_row(h) for name, h in node.databases.items() if name not in node.quarantined]
    rows += [quarantined_row(name, why) for name, why in node.quarantined.items()]
    rows += [snapshot_row(name, database.name, snap.meta.lsn) for name, (database, snap) in node.snapshots().items()]
    return sorted(({**row, "transport_security": security} for row in rows), key=lambda r: r["database"])


def quarantined_row(name: str, why: str) -> dict:
    """The row of a database that failed to load: its name, QUARANTINED and why; nothing else is known."""
    row = dict.fromkeys(STATUS_COLUMNS)
    row.update(database=name, status="QUARANTINED", state_reason=why)
    return row


def snapshot_row(name: str, db: str, lsn: int) -> dict:
    """A database snapshot's row: ONLINE, in no mirroring session (as SQL Server shows one), saying what it shows."""
    row = dict.fromkeys(STATUS_COLUMNS)
    row.update(database=name, role="NONE", status="ONLINE", redo_lsn=lsn,
               state_reason=f"database snapshot of {db} as of LSN {lsn} (read-only)")
    return row


def status_row(database: "Database") -> dict:
    """One row of sys.database_mirroring for a database."""
    s, cfg = database.session, database.session.config
    end, hardened, redo = positions(database)
    if database.mirror is not None:
        send_queue = database.principal_send_queue if s.partner_connected else 0
        redo_queue_bytes = database.queue_bytes(redo, hardened)
    else:
        send_queue = database.queue_bytes(hardened, end) if cfg.partner else 0
        redo_queue_bytes = principal_redo_queue(database, redo, hardened) if cfg.partner else 0
    limit, limit_type = redo_queue.shown_limit(cfg.redo_queue_mb)
    p = database.principal
    return {
        "database": database.name,
        "role": cfg.role.value,
        "state": s.state.value,
        "state_reason": s.state_reason,
        "safety": cfg.safety.value,
        "partner": cfg.partner,
        "witness": cfg.witness,
        "witness_state": s.witness_state.value,
        "role_sequence": cfg.role_sequence,
        "failover_lsn": min(hardened, end),
        "end_of_log_lsn": end,
        "hardened_lsn": hardened,
        "redo_lsn": redo,
        "send_queue_bytes": send_queue,
        "redo_queue_bytes": redo_queue_bytes,
        "timeout": cfg.timeout,
        "status": cfg.status.value,
        "partner_address": s.partner_listen,
        "fork_lsn": cfg.failover_lsn,
        "lost_lsn_range": f"{cfg.lost_lsn_from}-{cfg.lost_lsn_to}" if cfg.lost_lsn_to else None,
        "lost_transactions": cfg.lost_lsn_to - cfg.lost_lsn_from + 1 if cfg.lost_lsn_to else 0,
        "salvage_path": cfg.salvage_path,
        "log_bytes": database.log.size_bytes,
        "log_bytes_sent_raw": database.wire.raw,
        "log_bytes_sent_wire": database.wire.wire,
        "last_verified_lsn": database.last_verified_lsn,
        "last_verified_time": database.last_verified_time,
        "checkmirror_mismatches": database.checkmirror_mismatches,
        "last_checkmirror": database.last_checkmirror,
        "mirroring_redo_queue": limit,
        "mirroring_redo_queue_type": limit_type,
        "redo_queue_held": p.redo_queue_holding if p is not None else False,
        "redo_queue_holds": p.redo_queue_holds if p is not None else 0,
        "redo_queue_held_s": round(p.redo_queue_held_s, 3) if p is not None else 0.0,
        "redo_queue_timeouts": p.redo_queue_timeouts if p is not None else 0,
        **current_figures(database, time.monotonic()),
    }
