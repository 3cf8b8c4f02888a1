"""Values from clients, checked before SQLite sees them.

SQLite stores integers in 64 bits and Python's sqlite3 raises OverflowError (not
an sqlite3.Error) for anything wider, which once reached the client as an
`internal` error with a traceback in the node's log. Every parameter is checked
here first: a scalar SQLite can bind, an integer within 64 bits, at most
SQLite's number of host parameters. A refusal is a `data` error that names the
parameter and says what is allowed.
"""

from __future__ import annotations

from typing import Any

from mirrord.core.types import DataError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_PARAMS = 32766  # SQLITE_MAX_VARIABLE_NUMBER's default
_SCALARS = (type(None), bool, int, float, str, bytes)


def check_int64(value: int, what: str) -> int:
    """value if it fits SQLite's 64-bit integer, else DataError naming what it is."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise DataError(f"{what} is out of range: integers are 64-bit, {INT64_MIN}..{INT64_MAX}")
    return value


def check_params(params: Any) -> None:
    """Raise DataError unless params are None, or a list / str-keyed map of bindable scalars."""
    if params is None:
        return
    if isinstance(params, dict):
        items = list(params.items())
    elif isinstance(params, list):
        items = list(enumerate(params, start=1))
    else:
        raise DataError("parameters must be a list (positional) or a map (named)")
    if len(items) > MAX_PARAMS:
        raise DataError(f"{len(items)} parameters; SQLite binds at most {MAX_PARAMS}")
    for key, value in items:
        what = f"parameter {key!r}" if isinstance(key, str) else f"parameter {key}"
        if not isinstance(key, (int, str)):
            raise DataError("named parameters must have string names")
        if type(value) not in _SCALARS:
            raise DataError(f"{what} is a {type(value).__name__}; parameters are null, integers, reals, text or blobs")
        if type(value) is int:
            check_int64(value, what)
