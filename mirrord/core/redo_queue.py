"""The redo queue limit (ALTER DATABASE db SET PARTNER REDO_QUEUE): when commits on the principal wait. Pure.

The redo queue is the log the mirror has hardened but not yet redone, in
bytes. A failover (any kind) first redoes all of it, so its size divided by the
mirror's redo rate is the part of the failover time that grows with load. With
a limit set, the principal's writers wait (flow control) while the queue the
mirror last reported is over the limit, so that part stays near
limit ÷ redo rate. SQL Server's `mirroring_redo_queue` ("when the maximum is
reached, the log is temporarily stalled on the principal as the mirror server
catches up. This feature limits failover time"); UNLIMITED is the default.

The rules, in `must_wait`:

* only while the mirror is redoing what it is sent: SYNCHRONIZING or
  SYNCHRONIZED. A DISCONNECTED or SUSPENDED session (and a principal without a
  partner) does not wait on the limit: the mirror takes no log, the principal
  runs exposed as it would without a limit, and the redo queue cannot grow;
* whatever the SAFETY: the limit bounds failover time, which SAFETY OFF (forced
  service) needs bounded as much as FULL does;
* strictly over the limit: a queue exactly at the limit lets commits go.

A write held here has not run: it waits at most its lock timeout, then fails
with `RedoQueueFull` (nothing changed; safe to retry).
"""

from __future__ import annotations

from mirrord.core.types import MirroringState

MB = 1 << 20
UNLIMITED = 0  # the persisted value of REDO_QUEUE UNLIMITED (SessionConfig.redo_queue_mb)
MIN_REDO_QUEUE_MB, MAX_REDO_QUEUE_MB = 1, 1 << 20  # 1 MB .. 1 TB
# How often, at most, a mirror with a limit set tells its principal how far redo got (a "redo_progress"
# frame): often enough that held commits resume soon after the queue drains, never one frame per record.
REPORT_INTERVAL = 0.05  # seconds
REDOING_STATES = frozenset({MirroringState.SYNCHRONIZING, MirroringState.SYNCHRONIZED})


def must_wait(limit_mb: int, redo_queue_bytes: int, state: MirroringState) -> bool:
    """True if the principal's writers must wait: a limit is set, the mirror is redoing, and its queue is over the limit."""
    if limit_mb == UNLIMITED or state not in REDOING_STATES:
        return False
    return redo_queue_bytes > limit_mb * MB


def limit_refusal(mb: int) -> str | None:
    """Why a REDO_QUEUE size cannot be set (None if it can)."""
    if not MIN_REDO_QUEUE_MB <= mb <= MAX_REDO_QUEUE_MB:
        return (f"REDO_QUEUE must be {MIN_REDO_QUEUE_MB}..{MAX_REDO_QUEUE_MB} MB, or UNLIMITED; found {mb} MB "
                "(UNLIMITED turns the limit off)")
    return None


def limit_over_log_refusal(mb: int, log_size_limit: int) -> str | None:
    """Why REDO_QUEUE mb cannot be set under a log size limit of log_size_limit bytes (None if it can).

    The redo queue lives in the mirror's log, which has the same kind of size
    limit as the principal's: a redo queue limit at or past it could never hold
    writes back before the log is full.
    """
    if mb * MB >= log_size_limit:
        return (f"REDO_QUEUE {mb} MB is not below the log size limit ({log_size_limit >> 20} MB, --log-size-limit-mb): "
                "the log would be full before the limit held anything back. Choose a smaller limit, or UNLIMITED")
    return None


def shown_limit(limit_mb: int) -> tuple[int | None, str]:
    """(mirroring_redo_queue, mirroring_redo_queue_type) as sys.database_mirroring shows them: (None, UNLIMITED) or (n, MB)."""
    return (None, "UNLIMITED") if limit_mb == UNLIMITED else (limit_mb, "MB")


def held_message(db: str, waited_ms: int, redo_queue_bytes: int, limit_mb: int) -> str:
    """The error of a write that waited its lock timeout for the redo queue to drain."""
    return (f"the mirror's redo queue of {db} ({redo_queue_bytes / MB:.1f} MB) stayed over its limit (REDO_QUEUE "
            f"{limit_mb} MB) for {waited_ms} ms, this connection's lock timeout: the statement was not run, nothing "
            "changed. Retry once the mirror has caught up (see redo_queue_kb in sys.database_mirroring), raise the limit "
            f"(ALTER DATABASE {db} SET PARTNER REDO_QUEUE UNLIMITED), or SET LOCK_TIMEOUT longer")
