"""PEP 249 on a real node: every adapted type round-trips, description has the declared types, executemany."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest

from mirrorctl import dbapi

DB = "shop"
ROW = (
    1,
    datetime.datetime(2026, 11, 30, 18, 15, 42, 123456),
    datetime.datetime(2026, 11, 30, 18, 15, 42, tzinfo=datetime.timezone.utc),
    datetime.date(2026, 11, 30),
    datetime.time(18, 15, 42, 5),
    Decimal("1234.56"),
    uuid.uuid4(),
    b"\x00\xff\x00binary",
    2**63 - 1,
    "text",
)
COLUMNS = "(id INTEGER PRIMARY KEY, ts TIMESTAMP, tz DATETIME, d DATE, t TIME, price DECIMAL(10,2), u UUID, b BLOB, big BIGINT, s VARCHAR(20))"


def test_types_round_trip_and_executemany_on_a_real_node(cluster):
    a = cluster["a"]
    a.query(f"CREATE DATABASE {DB}")
    a.query(f"CREATE TABLE items{COLUMNS}", db=DB)
    with dbapi.connect(f"mirror://{a.address}/{DB}") as conn:
        cur = conn.cursor()
        cur.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ROW)
        cur.execute("SELECT * FROM items")
        assert cur.fetchone() == ROW  # every value comes back as the Python type it went in as
        names = [c[0] for c in cur.description]
        codes = [c[1] for c in cur.description]
        assert names == ["id", "ts", "tz", "d", "t", "price", "u", "b", "big", "s"]
        assert codes == ["INTEGER", "TIMESTAMP", "DATETIME", "DATE", "TIME", "DECIMAL(10,2)", "UUID", "BLOB", "BIGINT", "VARCHAR(20)"]
        assert codes[1] == dbapi.DATETIME and codes[5] == dbapi.NUMBER and codes[7] == dbapi.BINARY and codes[9] == dbapi.STRING
        cur.execute("SELECT count(*) AS n, max(d) AS latest FROM items")
        assert [c[1] for c in cur.description] == [None, None]  # expressions have no declared type

        with pytest.raises(dbapi.DataError, match="64 bits"):
            cur.execute("INSERT INTO items(id, big) VALUES (?, ?)", [2, 2**63])

        cur.executemany("INSERT INTO items(id, d) VALUES (?, ?)", [(i, datetime.date(2026, 1, i)) for i in range(10, 31)])
        assert cur.rowcount == 21
        conn.commit()
        with pytest.raises(dbapi.IntegrityError):  # the batch stops at the first error, nothing of it stays
            cur.executemany("INSERT INTO items(id) VALUES (?)", [(100,), (10,), (101,)])
        conn.rollback()
        cur.execute("SELECT count(*) FROM items WHERE id >= 100")
        assert cur.fetchone() == (0,)
    with dbapi.connect(f"mirror://{a.address}/{DB}") as conn:
        cur = conn.execute("SELECT d FROM items WHERE id BETWEEN 10 AND 30 ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [datetime.date(2026, 1, i) for i in range(10, 31)]  # the first batch committed
