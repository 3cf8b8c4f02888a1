"""Which administrative statement may run now, and if not, why: pure.

`refusal(session, statement)` is asked before a statement changes anything.
It answers None (allowed) or a sentence that says what is wrong and what
would make the statement allowed. `session` is None when the node does not
host the database.
"""

from __future__ import annotations

from mirrord.core import statements as st
from mirrord.core.session import Session
from mirrord.core.types import DatabaseStatus, MirroringState, Role


def refusal(session: Session | None, stmt: object) -> str | None:
    """Why `stmt` may not run against `session` now, or None if it may."""
    check = _CHECKS.get(type(stmt))
    return check(session, stmt) if check else None


def _exists(session: Session | None, db: str) -> str | None:
    if session is None:
        return f"database {db} does not exist on this node"
    return None


def _create(session, stmt) -> str | None:
    if session is not None:
        return f"database {stmt.db} already exists on this node; DROP DATABASE {stmt.db} first to replace it"
    return None


def _drop(session, stmt) -> str | None:
    if (why := _exists(session, stmt.db)) is not None:
        return why
    if session.config.partner is not None:
        return (
            f"database {stmt.db} is in a mirroring session (role {session.role.value}, partner {session.config.partner}); "
            f"run ALTER DATABASE {stmt.db} SET PARTNER OFF first"
        )
    return None


def _set_partner(session, stmt) -> str | None:
    if session is None:
        return None  # the mirror side with no copy: it will be seeded automatically
    cfg = session.config
    if cfg.partner is not None:
        return (
            f"database {stmt.db} already has partner {cfg.partner} (role {cfg.role.value}); "
            f"run ALTER DATABASE {stmt.db} SET PARTNER OFF first"
        )
    if cfg.status is DatabaseStatus.ONLINE and cfg.role is Role.NONE:
        return None  # the principal side
    if cfg.status is DatabaseStatus.RESTORING:
        return None  # the mirror side, prepared by RESTORE … WITH NORECOVERY
    return f"database {stmt.db} is {cfg.status.value} with role {cfg.role.value}; it cannot start a session"


def _on_principal(session: Session | None, db: str, what: str) -> str | None:
    if (why := _exists(session, db)) is not None:
        return why
    if session.config.partner is None:
        return f"{what} needs a mirroring session; database {db} has no partner (run SET PARTNER first)"
    if session.role is not Role.PRINCIPAL:
        where = f" ({session.partner_listen})" if session.partner_listen else ""
        return f"{what} must be issued on the principal of {db}, {session.config.partner}{where}; this node is the {session.role.value.lower()}"
    return None


def _partner_action(session, stmt) -> str | None:
    action = stmt.action
    if action == "OFF":
        if (why := _exists(session, stmt.db)) is not None:
            return why
        if session.config.partner is None:
            return f"database {stmt.db} is not in a mirroring session; there is no partner to remove"
        return None
    if action in ("SUSPEND", "RESUME"):
        return _suspend_or_resume(session, stmt.db, action)
    if action == "FAILOVER":
        if (why := _on_principal(session, stmt.db, "SET PARTNER FAILOVER")) is not None:
            return why
        return manual_failover_refusal(session)
    if action == "FORCE_SERVICE_ALLOW_DATA_LOSS":
        return _forced_service_refusal(session, stmt.db)
    return f"unknown partner action {action}"


def _suspend_or_resume(session: Session | None, db: str, action: str) -> str | None:
    """SUSPEND and RESUME run on either partner; on the mirror they travel to the principal, which must be connected."""
    if (why := _exists(session, db)) is not None:
        return why
    if session.config.partner is None:
        return f"SET PARTNER {action} needs a mirroring session; database {db} has no partner (run SET PARTNER first)"
    if action == "SUSPEND" and session.config.suspended:
        return f"the session of {db} is SUSPENDED already; SET PARTNER RESUME resumes it"
    if action == "RESUME" and not session.config.suspended:
        return f"SET PARTNER RESUME needs a SUSPENDED session; {db} is {session.state.value}"
    if session.role is Role.MIRROR:
        if action == "RESUME" and session.redo_error is not None:
            return f"redo failed on this mirror ({session.redo_error}): fix the cause and restart the node, then RESUME"
        if not session.partner_connected:
            return (f"SET PARTNER {action} on the mirror is carried out by the principal, which is not connected "
                    f"({session.state.value}); issue it on the principal {session.config.partner}, or when it is back")
    return None


def manual_failover_refusal(session: Session) -> str | None:
    """Why SET PARTNER FAILOVER could not run on this session now (besides where it is issued), or None."""
    from mirrord.core.types import Safety

    if session.config.safety is not Safety.FULL or session.state is not MirroringState.SYNCHRONIZED:
        behind = max(0, session.end_of_log_lsn - session.hardened_lsn)
        return (
            "manual failover needs SAFETY FULL and SYNCHRONIZED; the session is "
            f"SAFETY {session.config.safety.value}, {session.state.value}, {behind} transactions behind "
            f"(mirror hardened LSN {session.hardened_lsn} of {session.end_of_log_lsn})"
        )
    if session.config.witness is not None and not session.witness_connected:
        # the witness records the switch before the mirror takes over (quorum.witness_backing_refusal)
        return (f"manual failover needs the witness {session.config.witness} connected, as it records the switch first; "
                "it is not connected (witness_state DISCONNECTED). Retry once it is, or SET WITNESS OFF first")
    return None


def _forced_service_refusal(session: Session | None, db: str) -> str | None:
    from mirrord.core.quorum import forced_service_refusal

    if (why := _exists(session, db)) is not None:
        return why
    if session.role is not Role.MIRROR or session.config.partner is None:
        return f"FORCE_SERVICE_ALLOW_DATA_LOSS must be issued on the mirror; this node is {session.role.value} for {db}"
    return forced_service_refusal(session.partner_connected, session.config.witness is not None, session.witness_connected,
                                  session.redo_error)


def _safety_or_timeout(session, stmt) -> str | None:
    what = {st.SetSafety: "SET PARTNER SAFETY", st.SetTimeout: "SET PARTNER TIMEOUT"}.get(type(stmt), "SET PARTNER REDO_QUEUE")
    return _on_principal(session, stmt.db, what)


def _witness(session, stmt) -> str | None:
    what = "SET WITNESS OFF" if stmt.endpoint is None else "SET WITNESS"
    if (why := _on_principal(session, stmt.db, what)) is not None:
        return why
    if stmt.endpoint is None:
        return None if session.config.witness is not None else f"database {stmt.db} has no witness to remove"
    if str(stmt.endpoint) == session.config.partner:
        return f"{stmt.endpoint} is the mirror of {stmt.db}; the witness must be a third node"
    return None


def _backup(session, stmt) -> str | None:
    if (why := _exists(session, stmt.db)) is not None:
        return why
    if session.config.status is not DatabaseStatus.ONLINE:
        return f"database {stmt.db} is {session.config.status.value} here (a mirror copy); back it up on the principal"
    return None


def _restore(session, stmt) -> str | None:
    if stmt.path is not None:
        if session is not None:
            return f"database {stmt.db} already exists on this node; DROP DATABASE {stmt.db} first to restore over it"
        return None
    if (why := _exists(session, stmt.db)) is not None:
        return why
    cfg = session.config
    if cfg.status is not DatabaseStatus.RESTORING:
        return f"database {stmt.db} is already ONLINE; RESTORE … WITH RECOVERY applies to a RESTORING copy"
    if cfg.partner is not None:
        return (
            f"database {stmt.db} is still the mirror in a session with {cfg.partner}; "
            f"run ALTER DATABASE {stmt.db} SET PARTNER OFF first"
        )
    if not stmt.recovery:
        return f"database {stmt.db} is already RESTORING; use WITH RECOVERY to bring it online"
    return None


def _check_mirror(session, stmt) -> str | None:
    if (why := _exists(session, stmt.db)) is not None:
        return why
    cfg = session.config
    if cfg.role is not Role.PRINCIPAL or cfg.partner is None:
        where = f"; issue it on the principal {cfg.partner}" if cfg.role is Role.MIRROR else " (it has no mirror)"
        return f"DBCC CHECKMIRROR compares the principal with its mirror: this node is {cfg.role.value} for {stmt.db}{where}"
    if cfg.suspended or not session.partner_connected:
        return (f"DBCC CHECKMIRROR needs the mirror connected and the session not SUSPENDED; {stmt.db} is {session.state.value}"
                + (" (SET PARTNER RESUME first)" if cfg.suspended else ""))
    return None


def _create_snapshot(session, stmt) -> str | None:
    """A database snapshot is how a mirror is read (the reference): made on the mirror, of a copy redo is filling."""
    if session is None:
        return f"database {stmt.db} does not exist on this node; a snapshot is made on the mirror of the database"
    cfg = session.config
    if cfg.role is not Role.MIRROR or cfg.status is not DatabaseStatus.RESTORING:
        where = "read it directly here" if cfg.status is DatabaseStatus.ONLINE else "a snapshot needs a mirror's copy"
        return (f"CREATE DATABASE … AS SNAPSHOT OF {stmt.db} is issued on the mirror of {stmt.db}; this node is "
                f"{cfg.role.value} ({cfg.status.value}) for it: {where}")
    if session.redo_error is not None:
        return f"redo failed on this mirror ({session.redo_error}): fix the cause and restart the node, then create the snapshot"
    return None


_CHECKS = {
    st.CreateDatabase: _create,
    st.CreateSnapshot: _create_snapshot,
    st.DropDatabase: _drop,
    st.SetPartner: _set_partner,
    st.PartnerAction: _partner_action,
    st.SetSafety: _safety_or_timeout,
    st.SetTimeout: _safety_or_timeout,
    st.SetRedoQueue: _safety_or_timeout,  # a setting of the session, set on the principal; the mirror adopts it
    st.SetWitness: _witness,
    st.BackupDatabase: _backup,
    st.RestoreDatabase: _restore,
    st.CheckMirror: _check_mirror,
}
