"""Schemas of every wire message, and the check every received frame passes.

How it works: `SCHEMAS` maps each message type ("t") to its fields, and each
field to a small checker function. `validate(msg)` runs the checkers and raises
`ProtocolError` naming the type and the field; it returns the message itself so
callers can write `msg = validate(read())`. Extra keys are ignored, so a newer
peer may add fields without breaking an older one; missing or mistyped ones
are refused, so no handler ever sees a half-formed message. `OPTIONAL` fields
may be left out, but are checked like the others when present.

Why so strict on numbers: msgpack happily carries bools where ints are
expected (True == 1 in Python) and ints of any size; an LSN of True or 2**70
must not reach the core. Database names follow the one rule of
`core.names` on the wire too (they become directory names). Strings are bounded (64 KiB, SQL text 16 MiB) so a
peer cannot make us hold large junk in names or reasons.

`ENDPOINT_TYPES` and `CLIENT_TYPES` let a listener refuse messages meant for
the other port. The small constructors build the common messages.
"""

from __future__ import annotations

from typing import Any, Callable

from mirrord.core.checkmirror import DIGEST_BYTES, MAX_PAGES
from mirrord.core.names import DB_NAME_RULE, is_db_name
from mirrord.core.types import MirrordError, ProtocolError

PROTOCOL_VERSION = 1
MAX_INT = 2**63 - 1
MAX_STR = 64 * 1024
MAX_SQL = 16 * 1024 * 1024

Checker = Callable[[Any], str | None]  # returns what was expected, or None if fine


# ------------------------------------------------------------------ checkers


def _int(value: Any) -> str | None:
    """An int 0..2**63-1 (bool refused)."""
    if type(value) is int and 0 <= value <= MAX_INT:
        return None
    return "an int 0..2**63-1"


def _rowcount(value: Any) -> str | None:
    """An int -1..2**63-1: -1 is DB-API's "not known" (DDL, SELECT)."""
    if type(value) is int and -1 <= value <= MAX_INT:
        return None
    return "an int -1..2**63-1"


def _utf8_len_within(text: str, limit: int) -> bool:
    """True if text encodes to at most limit UTF-8 bytes; encodes only when in doubt."""
    if len(text) * 4 <= limit:
        return True
    return len(text) <= limit and len(text.encode("utf-8", "surrogatepass")) <= limit


def _text(limit: int, label: str) -> Checker:
    """A str of at most `limit` UTF-8 bytes."""

    def check(value: Any) -> str | None:
        if isinstance(value, str) and _utf8_len_within(value, limit):
            return None
        return label

    return check


_str = _text(MAX_STR, "a string of at most 64 KiB")
_sql = _text(MAX_SQL, "a string of at most 16 MiB")


def _db(value: Any) -> str | None:
    """A database name by the one rule (mirrord.core.names): it becomes a directory name."""
    return None if is_db_name(value) else f"a database name of {DB_NAME_RULE}"


def _bool(value: Any) -> str | None:
    """A bool."""
    return None if isinstance(value, bool) else "a bool"


def _bytes(value: Any) -> str | None:
    """Binary data."""
    return None if isinstance(value, bytes) else "bytes"


def _list(value: Any) -> str | None:
    """A list (msgpack arrays decode as lists)."""
    return None if isinstance(value, list) else "a list"


def _str_list(value: Any) -> str | None:
    """A list of bounded strings."""
    if isinstance(value, list) and all(_str(v) is None for v in value):
        return None
    return "a list of strings"


def _rows(value: Any) -> str | None:
    """A list of lists."""
    if isinstance(value, list) and all(isinstance(r, list) for r in value):
        return None
    return "a list of lists"


def _params(value: Any) -> str | None:
    """SQL parameters: positional list, named dict, or None."""
    return None if value is None or isinstance(value, (list, dict)) else "a list, a map or nil"


MAX_MANY = 100_000


def _many(value: Any) -> str | None:
    """executemany's parameter sets: a list of at most MAX_MANY lists or maps."""
    if isinstance(value, list) and len(value) <= MAX_MANY and all(isinstance(p, (list, dict)) for p in value):
        return None
    return f"a list of at most {MAX_MANY} lists or maps"


def _optional(check: Checker) -> Checker:
    """The checked type, or None."""

    def optional(value: Any) -> str | None:
        expected = check(value)
        return None if value is None or expected is None else f"{expected} or nil"

    return optional


def _one_of(*choices: str) -> Checker:
    """One of the given strings."""

    def one_of(value: Any) -> str | None:
        return None if value in choices and isinstance(value, str) else " or ".join(map(repr, choices))

    return one_of


_safety = _one_of("FULL", "OFF")

MAX_FIGURES = 32


def _figures(value: Any) -> str | None:
    """Monitor figures: a map of at most 32 short names to finite numbers or nil."""
    if (isinstance(value, dict) and len(value) <= MAX_FIGURES
            and all(isinstance(k, str) and 0 < len(k) <= 64 for k in value)
            and all(v is None or (type(v) in (int, float) and _finite(v)) for v in value.values())):
        return None
    return "a map of at most 32 names to numbers or nil"


def _finite(v: int | float) -> bool:
    return -MAX_INT <= v <= MAX_INT  # also false for NaN

def _sized_bytes(low: int, high: int) -> Checker:
    def check(value: Any) -> str | None:
        return None if isinstance(value, bytes) and low <= len(value) <= high else f"{low}..{high} bytes"

    return check


_nonce = _sized_bytes(16, 64)
_digests = _sized_bytes(0, MAX_PAGES * DIGEST_BYTES)  # one per page (core.checkmirror)


def _login_name(value: Any) -> str | None:
    """A login name as the client sent it (the lookup decides whether it exists)."""
    return None if isinstance(value, str) and 0 < len(value) <= 128 else "a string of 1..128 characters"


def _map(value: Any) -> str | None:
    return None if isinstance(value, dict) else "a map"


# ------------------------------------------------------------------- schemas

SCHEMAS: dict[str, dict[str, Checker]] = {
    # mirroring endpoint, node <-> node
    "hello": {"v": _int, "db": _db, "from_node": _str, "from_endpoint": _str, "role": _str,
              "role_sequence": _int, "end_lsn": _int, "safety": _safety, "timeout": _int,
              "suspended": _bool},
    "welcome": {"db": _db, "role_sequence": _int, "hardened_lsn": _int, "hardened_role_sequence": _int,
                "redo_lsn": _int, "needs_seed": _bool},
    "refuse": {"reason": _str},
    "log": {"records": _list, "end_lsn": _int},  # records: LogRecord.from_wire checks them
    "ack": {"hardened_lsn": _int, "redo_lsn": _int},
    # mirror -> principal, while a REDO_QUEUE limit is set: redo got this far, leaving this many bytes to redo
    # (at most one per core.redo_queue.REPORT_INTERVAL, so held commits resume without waiting for a ping)
    "redo_progress": {"redo_lsn": _int, "redo_queue": _int},
    "ping": {"seq": _int},
    "pong": {"seq": _int},
    "seed_begin": {"lsn": _int, "role_sequence": _int, "page_size": _int, "size": _int},
    "seed_chunk": {"offset": _int, "data": _bytes},
    "seed_end": {"crc": _int},
    # rewind of a diverged old principal: only the pages either side changed since the fork
    "rewind_begin": {"lsn": _int, "role_sequence": _int, "page_size": _int, "db_size": _int},
    "rewind_pages": {"pages": _list},  # [[pgno, image], ...]: checked as a log record's pages are
    "rewind_end": {"count": _int},
    "settings": {"safety": _safety, "timeout": _int, "suspended": _bool},
    "partner_off": {},
    # first frame on a fresh connection: SET PARTNER OFF ran on this principal while the mirror was away
    "partner_off_notice": {"db": _db, "from_endpoint": _str, "role_sequence": _int},
    "partner_off_done": {},
    "suspend": {"reason": _str},  # mirror -> principal: the mirror cannot go on (redo failed), or SUSPEND ran there
    "resume": {},  # mirror -> principal: SET PARTNER RESUME ran on the mirror
    "failover": {"role_sequence": _int, "failover_lsn": _int},  # manual failover: principal -> mirror
    "failover_done": {"role_sequence": _int},
    # DBCC CHECKMIRROR (core.checkmirror): principal -> mirror, and the mirror's page digests back
    "checkmirror": {"rid": _int, "lsn": _int, "mb_per_s": _int},  # mb_per_s: the pace of the hash, 0 unlimited
    "checkmirror_result": {"rid": _int, "lsn": _int, "page_size": _int, "digests": _digests, "error": _str},
    # automatic page repair (core.page_repair): mirror -> principal, the principal's images back, and the
    # principal's DBCC CHECKMIRROR telling the mirror which pages differed
    "page_request": {"rid": _int, "pages": _list},
    "page_answer": {"rid": _int, "lsn": _int, "page_size": _int, "pages": _list, "error": _str},
    "page_suspect": {"lsn": _int, "pages": _list},
    "page_offer": {"lsn": _int, "pages": _list},  # mirror -> principal: its images of pages damaged on the principal
    # witness link, partner <-> witness (replies are w_state, matched by rid)
    "w_hello": {"db": _db, "from_endpoint": _str, "role": _str, "role_sequence": _int, "partner": _str,
                "synchronized": _bool, "safety": _safety, "timeout": _int},
    "w_ping": {"rid": _int},
    "w_report": {"rid": _int, "role_sequence": _int, "synchronized": _bool, "safety": _safety},
    "w_switch": {"rid": _int, "role_sequence": _int},
    "w_vote": {"rid": _int, "role_sequence": _int, "hardened_lsn": _int, "forced": _bool},
    "w_state": {"rid": _int, "role_sequence": _int, "principal": _str, "mirror": _str,
                "mirror_synchronized": _bool, "principal_connected": _bool, "mirror_connected": _bool},
    # client port
    "query": {"id": _int, "db": _optional(_str), "sql": _sql, "params": _params},
    "result": {"id": _int, "columns": _str_list, "rows": _rows, "rowcount": _rowcount,
               "lsn": _optional(_int), "role_sequence": _optional(_int), "message": _optional(_str)},
    "error": {"id": _int, "code": _str, "message": _str, "principal": _optional(_str)},
    # client port, the login exchange before any query (core.logins)
    "login": {"user": _login_name, "nonce": _nonce},
    "challenge": {"nonce": _nonce, "salt": _sized_bytes(16, 16), "n": _int, "r": _int, "p": _int},
    "proof": {"proof": _sized_bytes(32, 32)},
    "login_ok": {"signature": _sized_bytes(32, 32)},
    # mirroring endpoint: the cluster's login table, between partners (core.logins.LoginTable checks it)
    "logins": {"table": _map},
}

# Fields a message may carry or leave out; checked only when present.
OPTIONAL: dict[str, dict[str, Checker]] = {
    "ping": {"monitor": _figures},  # the principal's monitor figures the mirror cannot see itself
    "pong": {"monitor": _figures,  # the mirror's redo rate
             "redo_queue": _int},  # the mirror's redo queue in bytes (core.redo_queue)
    "ack": {"redo_queue": _int},
    "settings": {"redo_queue_mb": _int},  # PARTNER REDO_QUEUE, 0 UNLIMITED (left out by an older principal)
    "hello": {"redo_queue_mb": _int,
              "failover_role_sequence": _int},  # the role sequence of the principal's record at its failover LSN (core.history)
    "w_report": {"timeout": _int},
    "w_state": {"forced": _bool},  # the record's role sequence began by forced service  # the principal's PARTNER TIMEOUT (the witness waits that long before a vote)
    "refuse": {"partner_off": _bool},  # the partner ended this session (SET PARTNER OFF): end it here too
    "welcome": {"diverged_pages": _list,  # a diverged old principal: pages its log changed past the fork
                "shared_lsn": _int,  # ... and the last LSN it shares with the principal's history (core.history)
                "logins": _map},  # the mirror's login table (mirrord.storage.login_store)
    "query": {"many": _many},  # executemany: the statement once per parameter set, in one round trip
}

CLIENT_TYPES = frozenset({"query", "result", "error", "login", "challenge", "proof", "login_ok"})
ENDPOINT_TYPES = frozenset(SCHEMAS) - CLIENT_TYPES


def validate(msg: dict) -> dict:
    """Check msg against its type's schema; return it, or raise ProtocolError."""
    kind = msg.get("t")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    for name, check in schema.items():
        if name not in msg:
            raise ProtocolError(f"{kind} message: field {name!r} is missing")
        expected = check(msg[name])
        if expected is not None:
            raise ProtocolError(f"{kind} message: field {name!r} must be {expected}; "
                                f"got {type(msg[name]).__name__}")
    for name, check in OPTIONAL.get(kind, {}).items():
        if name in msg and (expected := check(msg[name])) is not None:
            raise ProtocolError(f"{kind} message: field {name!r} must be {expected}")
    return msg


# -------------------------------------------------------------- constructors


def make(kind: str, **fields: Any) -> dict:
    """Build a message of the given type and validate it (a local check of our own sends)."""
    return validate({"t": kind, **fields})


def query(id: int, sql: str, db: str | None = None, params: list | dict | None = None,
          many: list | None = None) -> dict:
    """A client query (with many: run once per parameter set, params unused)."""
    frame = {"t": "query", "id": id, "db": db, "sql": sql, "params": params}
    if many is not None:
        frame["many"] = many
    return frame


def result(id: int, columns: list[str], rows: list[list], rowcount: int,
           lsn: int | None = None, role_sequence: int | None = None, message: str | None = None) -> dict:
    """The answer to a query that succeeded."""
    return {"t": "result", "id": id, "columns": columns, "rows": rows, "rowcount": rowcount,
            "lsn": lsn, "role_sequence": role_sequence, "message": message}


def error(id: int, code: str, message: str, principal: str | None = None) -> dict:
    """The answer to a query that failed."""
    return {"t": "error", "id": id, "code": code, "message": message, "principal": principal}


def error_from(id: int, exc: MirrordError) -> dict:
    """The error frame for a MirrordError (its details may name the principal)."""
    principal = exc.details.get("principal")
    return error(id, exc.code, exc.message, None if principal is None else str(principal))
