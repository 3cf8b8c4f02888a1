"""PEP 249 types: type objects, constructors, adapters out and converters in, executemany as one Send."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest

from mirrorctl import dbapi
from mirrorctl.client import Result
from mirrorctl.dbapi import errors
from mirrorctl.dbapi.driver import ResultSet, Send, wire_many, wire_params
from mirrorctl.dbapi.types import adapt, convert_rows, type_object
from tests.core.test_dbapi_unit import Partner, World

NOW = datetime.datetime(2026, 11, 30, 18, 15, 42, 123456)
VALUES = [  # (python value, declared type, what goes on the wire)
    (NOW, "TIMESTAMP", "2026-11-30 18:15:42.123456"),
    (NOW.replace(tzinfo=datetime.timezone.utc), "DATETIME", "2026-11-30 18:15:42.123456+00:00"),
    (NOW.date(), "DATE", "2026-11-30"),
    (NOW.time(), "TIME", "18:15:42.123456"),
    (Decimal("12.34"), "DECIMAL(10,2)", "12.34"),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "UUID", "12345678-1234-5678-1234-567812345678"),
    (b"\x00\xffcafe", "BLOB", b"\x00\xffcafe"),
    (2**63 - 1, "INTEGER", 2**63 - 1),
    (-(2**63), "BIGINT", -(2**63)),
    ("text", "VARCHAR(20)", "text"),
    (1.5, "REAL", 1.5),
    (None, "DATE", None),
]


@pytest.mark.parametrize("value,decltype,wire", VALUES)
def test_each_value_goes_out_adapted_and_comes_back_converted(value, decltype, wire):
    assert adapt(value) == wire
    assert convert_rows([(wire,)], [decltype]) == [(value,)]


def test_decimal_back_from_sqlite_numeric_affinity():
    """SQLite stores DECIMAL text as a number: 12.34 (REAL) and 10 (INTEGER) come back as equal Decimals."""
    assert convert_rows([(12.34,), (10,), ("1.000000000000000000001",)], ["NUMERIC"]) == \
        [(Decimal("12.34"),), (Decimal(10),), (Decimal("1.000000000000000000001"),)]


def test_values_that_do_not_parse_stay_as_stored():
    assert convert_rows([("not a date", "xyz", b"\x01")], ["DATE", "UUID", "UUID"]) == [("not a date", "xyz", b"\x01")]
    assert convert_rows([("2026-11-30",)], [None]) == [("2026-11-30",)]  # an expression: no declared type


def test_bytes_like_parameters_are_bytes():
    assert adapt(bytearray(b"ab")) == b"ab" and adapt(memoryview(b"cd")) == b"cd" and adapt(dbapi.Binary(b"x")) == b"x"


@pytest.mark.parametrize("big", [2**63, -(2**63) - 1, 10**40])
def test_integers_beyond_64_bits_are_a_data_error_before_sending(big):
    with pytest.raises(errors.DataError, match="does not fit in 64 bits"):
        wire_params([big])
    with pytest.raises(errors.DataError):
        wire_params({"n": big})
    with pytest.raises(errors.DataError):
        wire_many([[1], [big]])  # no set is sent when one is bad


@pytest.mark.parametrize("bad", [object(), [1, 2], {"a": 1}, complex(1, 2)])
def test_parameters_of_other_types_are_a_programming_error(bad):
    with pytest.raises(errors.ProgrammingError, match="cannot send"):
        wire_params([bad])


@pytest.mark.parametrize("decltype,kind", [
    ("INTEGER", dbapi.NUMBER), ("BIGINT", dbapi.NUMBER), ("REAL", dbapi.NUMBER), ("DOUBLE PRECISION", dbapi.NUMBER),
    ("DECIMAL(10,2)", dbapi.NUMBER), ("NUMERIC", dbapi.NUMBER), ("BOOLEAN", dbapi.NUMBER),
    ("TEXT", dbapi.STRING), ("VARCHAR(20)", dbapi.STRING), ("NCHAR(3)", dbapi.STRING), ("CLOB", dbapi.STRING),
    ("UUID", dbapi.STRING), ("BLOB", dbapi.BINARY), ("", dbapi.BINARY),
    ("DATE", dbapi.DATETIME), ("time", dbapi.DATETIME), ("TIMESTAMP", dbapi.DATETIME), ("DATETIME", dbapi.DATETIME),
])
def test_declared_types_compare_equal_to_their_type_object(decltype, kind):
    assert type_object(decltype) is kind
    assert decltype == kind and kind == decltype
    others = {dbapi.STRING, dbapi.BINARY, dbapi.NUMBER, dbapi.DATETIME, dbapi.ROWID} - {kind}
    assert all(decltype != other for other in others)


def test_constructors():
    assert dbapi.Date(2026, 11, 30) == datetime.date(2026, 11, 30)
    assert dbapi.Time(18, 15, 0) == datetime.time(18, 15)
    assert dbapi.Timestamp(2026, 11, 30, 18, 15) == datetime.datetime(2026, 11, 30, 18, 15)
    assert dbapi.DateFromTicks(0) == datetime.date.fromtimestamp(0)
    assert dbapi.TimestampFromTicks(86400.5) == datetime.datetime.fromtimestamp(86400.5)
    assert isinstance(dbapi.TimeFromTicks(0), datetime.time)
    assert dbapi.Binary(b"ab") == b"ab"


def test_description_carries_the_declared_types():
    rs = ResultSet.of(Result(["d", "n", "e"], [["2026-11-30", 1.5, 3]], -1, types=["DATE", "DECIMAL", None]))
    assert [col[:2] for col in rs.description] == [("d", "DATE"), ("n", "DECIMAL"), ("e", None)]
    assert rs.description[0][1] == dbapi.DATETIME and rs.description[1][1] == dbapi.NUMBER
    assert rs.fetch(None) == [(datetime.date(2026, 11, 30), Decimal("1.5"), 3)]


def test_executemany_is_one_send():
    world = World(**{"a:1": Partner("PRINCIPAL")})
    drv = world.driver("mirror://a:1/shop")
    world.run(drv.open())
    world.run(drv.execute("INSERT INTO t VALUES (?)", None, wire_many([[1], [2], [3]])))
    sends = [op for op in world.ops if isinstance(op, Send) and not op.sql.startswith("SELECT role")]
    assert [(op.sql, op.many) for op in sends] == [("BEGIN", None), ("INSERT INTO t VALUES (?)", [[1], [2], [3]])]
    with pytest.raises(errors.ProgrammingError):
        world.run(drv.execute("COMMIT", None, [[1]]))
