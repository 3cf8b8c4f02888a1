"""PEP 249 types: type objects, constructors, and the adapters both ways. Pure.

Parameters go over the wire as msgpack carries them and SQLite stores them
(`adapt`): integers (64-bit), floats, text, bytes, NULL. Richer Python values
become text in the forms SQLite's date functions read and that sort in order:
datetime as `YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]`, date `YYYY-MM-DD`, time
`HH:MM:SS[.ffffff]`; Decimal and UUID as their canonical strings. An integer
beyond 64 bits is a DataError here, before anything is sent: SQLite cannot
store it, and silently turning it into a float would lose digits.

Values come back converted by the declared type of their column (`convert`),
which the server reports with every result (`description`'s type_code is that
declared type, e.g. "DECIMAL(10,2)"): DATE -> date, DATETIME/TIMESTAMP ->
datetime, TIME -> time, DECIMAL/NUMERIC -> Decimal, UUID -> UUID. A value that
does not parse stays as stored. A column that is an expression has no
declared type: type_code None, values as stored.

Why Decimal round-trips only to 15 significant digits in a DECIMAL column:
SQLite gives DECIMAL NUMERIC affinity and stores "12.34" as the REAL 12.34; a
value needing more digits belongs in a TEXT column (then convert it yourself).
"""

from __future__ import annotations

import datetime
import time
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

MIN_INT, MAX_INT = -(2**63), 2**63 - 1


class DBAPITypeObject:
    """A PEP 249 type object: equal to every declared column type of its kind."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return other is self
        return isinstance(other, str) and type_object(other) is self

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<type object {self.name}>"


STRING = DBAPITypeObject("STRING")
BINARY = DBAPITypeObject("BINARY")
NUMBER = DBAPITypeObject("NUMBER")
DATETIME = DBAPITypeObject("DATETIME")
ROWID = DBAPITypeObject("ROWID")

_DATETIME_NAMES = ("DATE", "TIME", "DATETIME", "TIMESTAMP")


def _base(decltype: str) -> str:
    """'decimal(10, 2)' -> 'DECIMAL': the first word, as SQLite and Python's sqlite3 converters read it."""
    words = decltype.split("(", 1)[0].split()
    return words[0].upper() if words else ""


def type_object(decltype: str | None) -> DBAPITypeObject | None:
    """The type object a declared column type belongs to (SQLite's affinity rules; dates first)."""
    if decltype is None:
        return None
    upper, base = decltype.upper(), _base(decltype)
    if base in _DATETIME_NAMES:
        return DATETIME
    if base == "ROWID":
        return ROWID
    if "INT" in upper:
        return NUMBER
    if any(k in upper for k in ("CHAR", "CLOB", "TEXT")) or base == "UUID":
        return STRING
    if "BLOB" in upper or not upper.strip():
        return BINARY
    return NUMBER  # REAL, FLOAT, DOUBLE, and NUMERIC affinity: NUMERIC, DECIMAL, BOOLEAN...


# ------------------------------------------------------------------ constructors (PEP 249)

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> datetime.date:  # noqa: N802 - PEP 249's name
    return datetime.date.fromtimestamp(ticks)


def TimeFromTicks(ticks: float) -> datetime.time:  # noqa: N802 - PEP 249's name
    return datetime.time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:  # noqa: N802 - PEP 249's name
    return datetime.datetime.fromtimestamp(ticks)


# ------------------------------------------------------------------ parameters out


class OutOfRange(ValueError):
    """A value SQLite cannot store (the driver raises it as DataError)."""


class Unsupported(TypeError):
    """A parameter of a type with no adapter (the driver raises it as ProgrammingError)."""


SUPPORTED = "None, int (64-bit), float, str, bytes, bool, datetime, date, time, Decimal, UUID"


def adapt(value: Any) -> Any:
    """One parameter as the wire carries it; OutOfRange or Unsupported when it cannot be stored."""
    if value is None or isinstance(value, (str, float, bool)):
        return value
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise OutOfRange(f"integer {value} does not fit in 64 bits (SQLite's INTEGER); "
                            "store it as text, e.g. str(n), or as a Decimal")
        return int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    raise Unsupported(f"cannot send a {type(value).__name__} parameter; supported: {SUPPORTED}")


# ------------------------------------------------------------------ values in


def _decimal(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value) if isinstance(value, (int, str)) else value


def _uuid(value: Any) -> Any:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return uuid.UUID(value) if isinstance(value, str) else value


def _from_text(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda value: parse(value) if isinstance(value, str) else value


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "DATE": _from_text(datetime.date.fromisoformat),
    "DATETIME": _from_text(datetime.datetime.fromisoformat),
    "TIMESTAMP": _from_text(datetime.datetime.fromisoformat),
    "TIME": _from_text(datetime.time.fromisoformat),
    "DECIMAL": _decimal,
    "NUMERIC": _decimal,
    "UUID": _uuid,
}


def converter(decltype: str | None) -> Callable[[Any], Any] | None:
    """The conversion for values of a column of this declared type, or None (values as stored)."""
    return None if decltype is None else CONVERTERS.get(_base(decltype))


def convert_rows(rows: list[tuple], types: list[str | None] | None) -> list[tuple]:
    """Rows with each value converted by its column's declared type (unparseable values stay as stored)."""
    convs = [converter(t) for t in types] if types else []
    if not any(convs):
        return rows
    return [tuple(_safely(c, v) if c is not None and v is not None else v for c, v in zip(convs, row)) for row in rows]


def _safely(conv: Callable[[Any], Any], value: Any) -> Any:
    try:
        return conv(value)
    except (ValueError, TypeError, InvalidOperation):
        return value
