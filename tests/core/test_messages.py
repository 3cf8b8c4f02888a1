"""Message schemas: every type accepts its good shape and names the bad field."""

from __future__ import annotations

import pytest

from mirrord.core import messages as m
from mirrord.core.types import NotPrincipal, ProtocolError

GOOD = {
    "hello": dict(v=1, db="shop", from_node="a", from_endpoint="tcp://a:5022", role="PRINCIPAL",
                  role_sequence=3, end_lsn=10, safety="FULL", timeout=10, suspended=False),
    "welcome": dict(db="shop", role_sequence=3, hardened_lsn=9, hardened_role_sequence=3, redo_lsn=8,
                    needs_seed=False),
    "refuse": dict(reason="older role_sequence"),
    "log": dict(records=[[1, 3, b"x"]], end_lsn=1),
    "ack": dict(hardened_lsn=1, redo_lsn=0),
    "redo_progress": dict(redo_lsn=7, redo_queue=5 << 20),
    "ping": dict(seq=0),
    "pong": dict(seq=2**63 - 1),
    "seed_begin": dict(lsn=5, role_sequence=1, page_size=4096, size=8192),
    "seed_chunk": dict(offset=0, data=b"\x00" * 10),
    "seed_end": dict(crc=123),
    "settings": dict(safety="OFF", timeout=1, suspended=True),
    "partner_off": dict(),
    "partner_off_notice": dict(db="shop", from_endpoint="tcp://127.0.0.11:5022", role_sequence=3),
    "partner_off_done": dict(),
    "suspend": dict(reason="redo failed at LSN 12: disk I/O error"),
    "resume": dict(),
    "rewind_begin": dict(lsn=40, role_sequence=3, page_size=4096, db_size=12),
    "rewind_pages": dict(pages=[[1, b"\x00" * 4096]]),
    "rewind_end": dict(count=1),
    "query": dict(id=1, db=None, sql="SELECT 1", params=None),
    "result": dict(id=1, columns=["a"], rows=[[1]], rowcount=-1, lsn=None, role_sequence=2, message=None),
    "error": dict(id=1, code="refused", message="no", principal=None),
    "failover": dict(role_sequence=4, failover_lsn=10),
    "failover_done": dict(role_sequence=4),
    "checkmirror": dict(rid=1, lsn=40, mb_per_s=0),
    "checkmirror_result": dict(rid=1, lsn=40, page_size=4096, digests=b"\x00" * 16, error=""),
    "page_request": dict(rid=1, pages=[3, 7]),
    "page_answer": dict(rid=1, lsn=40, page_size=512, pages=[[3, b"\x00" * 512]], error=""),
    "page_suspect": dict(lsn=40, pages=[3]),
    "page_offer": dict(lsn=40, pages=[[3, b"\x00" * 512]]),
    "w_hello": dict(db="shop", from_endpoint="tcp://a:5022", role="PRINCIPAL", role_sequence=3,
                    partner="tcp://b:5022", synchronized=True, safety="FULL", timeout=10),
    "w_ping": dict(rid=1),
    "w_report": dict(rid=2, role_sequence=3, synchronized=False, safety="FULL"),
    "w_switch": dict(rid=3, role_sequence=3),
    "w_vote": dict(rid=4, role_sequence=3, hardened_lsn=10, forced=False),
    "w_state": dict(rid=4, role_sequence=4, principal="tcp://b:5022", mirror="tcp://a:5022",
                    mirror_synchronized=False, principal_connected=True, mirror_connected=False),
    "login": dict(user="sa", nonce=b"n" * 24),
    "challenge": dict(nonce=b"s" * 24, salt=b"\x00" * 16, n=16384, r=8, p=1),
    "proof": dict(proof=b"\x01" * 32),
    "login_ok": dict(signature=b"\x02" * 32),
    "logins": dict(table={"version": 1, "logins": []}),
}


def test_every_type_has_a_good_example() -> None:
    assert set(GOOD) == set(m.SCHEMAS)
    assert m.CLIENT_TYPES | m.ENDPOINT_TYPES == set(m.SCHEMAS)


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_messages_pass_and_extra_keys_are_ignored(kind: str) -> None:
    msg = {"t": kind, **GOOD[kind], "future_field": object()}
    assert m.validate(msg) is msg


@pytest.mark.parametrize("kind,field", [(k, f) for k in sorted(GOOD) for f in GOOD[k]])
def test_missing_field_is_named(kind: str, field: str) -> None:
    msg = {"t": kind, **GOOD[kind]}
    del msg[field]
    with pytest.raises(ProtocolError, match=f"{kind} message: field '{field}' is missing"):
        m.validate(msg)


BAD = [
    ("checkmirror", "lsn", -1),
    ("checkmirror", "rid", "1"),
    ("checkmirror_result", "digests", "not bytes"),
    ("checkmirror_result", "digests", b"\x00" * ((1 << 22) * 8 + 1)),
    ("checkmirror_result", "page_size", True),
    ("checkmirror_result", "error", None),
    ("page_request", "pages", 3),
    ("page_request", "rid", -1),
    ("page_answer", "lsn", "40"),
    ("page_answer", "pages", None),
    ("page_answer", "error", None),
    ("page_suspect", "pages", {}),
    ("page_offer", "lsn", None),
    ("hello", "role_sequence", True),  # bool is not an int
    ("hello", "role_sequence", -1),
    ("hello", "end_lsn", 2**63),
    ("hello", "end_lsn", 1.0),
    ("hello", "safety", "HIGH"),
    ("hello", "suspended", 0),
    ("hello", "db", b"shop"),
    ("hello", "db", "x" * (64 * 1024 + 1)),
    ("hello", "db", "é" * (40 * 1024)),  # 80 KiB of UTF-8 in 40 Ki characters
    ("log", "records", {"a": 1}),
    ("seed_chunk", "data", "text"),
    ("query", "sql", None),
    ("query", "params", "x"),
    ("query", "db", 5),
    ("result", "columns", [1]),
    ("result", "rows", [1, 2]),
    ("result", "rowcount", -2),
    ("result", "lsn", "1"),
    ("error", "principal", 1),
    ("error", "id", False),
    ("redo_progress", "redo_queue", -1),
    ("redo_progress", "redo_lsn", True),
    ("ack", "redo_queue", 1.5),  # optional, checked when present
    ("settings", "redo_queue_mb", "10"),
    ("pong", "redo_queue", None),
]


@pytest.mark.parametrize("kind,field,value", BAD)
def test_bad_field_is_named(kind: str, field: str, value: object) -> None:
    msg = {"t": kind, **GOOD[kind], field: value}
    with pytest.raises(ProtocolError, match=f"{kind} message: field '{field}' must be"):
        m.validate(msg)


def test_sql_may_be_large() -> None:
    m.validate({"t": "query", **GOOD["query"], "sql": "x" * (1024 * 1024)})


@pytest.mark.parametrize("kind", ["nope", None, 3])
def test_unknown_type(kind: object) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        m.validate({"t": kind})


def test_constructors_build_valid_messages() -> None:
    assert m.validate(m.query(1, "SELECT 1", db="shop", params=[1]))["sql"] == "SELECT 1"
    assert m.validate(m.result(1, ["a"], [[1]], 1, lsn=4))["lsn"] == 4
    assert m.validate(m.error(2, "syntax", "bad"))["principal"] is None
    assert m.make("ping", seq=1) == {"t": "ping", "seq": 1}
    with pytest.raises(ProtocolError):
        m.make("ping", seq=-1)


def test_error_from_names_the_principal() -> None:
    frame = m.error_from(3, NotPrincipal("shop is a mirror here", principal="tcp://b:5022"))
    assert frame == {"t": "error", "id": 3, "code": "not_principal",
                     "message": "shop is a mirror here", "principal": "tcp://b:5022"}
