"""What the HTTP health routes answer, decided from a database's facts.

Load balancers (HAProxy, a Kubernetes probe) ask one question per node by
HTTP status alone: 200 means "send traffic here", anything else "don't". The
routes mean what Patroni's routes of the same name mean, with a database
parameter because a mirrord node plays a different role per database:

    route               200 when                                      Patroni's
    /principal?db=X     X is PRINCIPAL here, open and serving writes  /primary (alias here)
    /mirror?db=X        X is the MIRROR here (RESTORING, redoing)      /replica (alias here)
    /health             the node is up with its databases loaded     /health

Why "serving" and not just the role: a principal that lost quorum keeps its
role but refuses writes (it may already have been replaced); a balancer must
stop sending it writes at once. A standalone database (role NONE) is never a
principal here: two standalone copies of one database can both be open, and a
balancer must never see two writers.

Everything here is pure: the edge (mirrord/httpapi.py) gathers the facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirrord.core.types import DatabaseStatus, Role

OK, BAD_REQUEST, NOT_FOUND, UNAVAILABLE = 200, 400, 404, 503


@dataclass(frozen=True)
class DatabaseFacts:
    """What the routes need to know about one database on this node."""

    role: Role
    status: DatabaseStatus
    state: str
    role_sequence: int
    open: bool  # the principal engine is open (not mid promotion or restart)
    quorum_refusal: str | None  # why a principal may not serve now, or None


@dataclass(frozen=True)
class Answer:
    """An HTTP status and a JSON body that says why."""

    status: int
    body: dict | list


def _missing_db(route: str) -> Answer:
    return Answer(BAD_REQUEST, {"error": f"give the database: GET /{route}?db=NAME"})


def principal_answer(db: str | None, facts: DatabaseFacts | None) -> Answer:
    """/principal?db=X: 200 only where X is served as principal (writes go here)."""
    if not db:
        return _missing_db("principal")
    if facts is None:
        return Answer(UNAVAILABLE, {"database": db, "principal": False, "reason": f"database {db} is not on this node"})
    body = {"database": db, "role": facts.role.value, "state": facts.state, "role_sequence": facts.role_sequence}
    if facts.role is not Role.PRINCIPAL:
        return Answer(UNAVAILABLE, {**body, "principal": False, "reason": f"{db} is {facts.role.value} here"})
    if facts.status is not DatabaseStatus.ONLINE or not facts.open:
        return Answer(UNAVAILABLE, {**body, "principal": False, "reason": f"{db} is opening as the principal here"})
    if facts.quorum_refusal is not None:
        return Answer(UNAVAILABLE, {**body, "principal": False, "reason": facts.quorum_refusal})
    return Answer(OK, {**body, "principal": True})


def mirror_answer(db: str | None, facts: DatabaseFacts | None) -> Answer:
    """/mirror?db=X: 200 where X is the mirror (the copy a failover would promote)."""
    if not db:
        return _missing_db("mirror")
    if facts is None:
        return Answer(UNAVAILABLE, {"database": db, "mirror": False, "reason": f"database {db} is not on this node"})
    body = {"database": db, "role": facts.role.value, "state": facts.state, "role_sequence": facts.role_sequence}
    if facts.role is not Role.MIRROR:
        return Answer(UNAVAILABLE, {**body, "mirror": False, "reason": f"{db} is {facts.role.value} here"})
    return Answer(OK, {**body, "mirror": True})


def health_answer(node: str, loaded: bool, databases: int, quarantined: dict[str, str] | None = None) -> Answer:
    """/health: 200 once the node is up with its databases loaded (Patroni: the server is running).

    A database that failed to load is quarantined and listed with why; the
    node still serves the others, so it stays 200 (a liveness probe must not
    restart a node over one database; /principal?db=X answers for that one).
    """
    body = {"node": node, "databases": databases, "quarantined": dict(quarantined or {})}
    if not loaded:
        return Answer(UNAVAILABLE, {**body, "state": "starting"})
    return Answer(OK, {**body, "state": "running"})
