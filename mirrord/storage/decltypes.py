"""The declared types of a query's result columns (what PEP 249's description reports).

Python's sqlite3 module does not expose `sqlite3_column_decltype`, so this
module asks SQLite itself through ctypes: it prepares the statement (never
steps it: nothing runs, nothing is read but the schema) on a read-only
connection of its own and reads each column's declared type, e.g.
`TIMESTAMP` for `SELECT created FROM orders`, None for an expression.

Why it is safe to open a second connection to the database in this process:
SQLite's POSIX locks are shared between the connections of one library
instance, and ctypes loads the very library the sqlite3 module uses; `load`
refuses (types unknown, None) unless exactly one libsqlite3 is mapped in the
process. Anything that fails here only costs the types: never the query.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from pathlib import Path

SQLITE_OK, SQLITE_OPEN_READONLY = 0, 0x00000001
CACHE_SIZE = 256

_lib: ctypes.CDLL | None = None
_loaded = False
_load_lock = threading.Lock()


def _mapped_sqlite_libraries() -> set[str]:
    try:
        with open("/proc/self/maps") as maps:
            return {line.split()[-1] for line in maps if "libsqlite3" in line}
    except OSError:
        return set()


def load() -> ctypes.CDLL | None:
    """The libsqlite3 the sqlite3 module uses, with the functions declared; None when that cannot be made sure."""
    global _lib, _loaded
    with _load_lock:
        if _loaded:
            return _lib
        _loaded = True
        import sqlite3  # noqa: F401 - map the module's library first

        if len(_mapped_sqlite_libraries()) != 1:
            return None
        try:
            lib = ctypes.CDLL(next(iter(_mapped_sqlite_libraries())))
        except OSError:
            return None
        if len(_mapped_sqlite_libraries()) != 1:
            return None
        lib.sqlite3_open_v2.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_char_p]
        lib.sqlite3_prepare_v2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                           ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_char_p)]
        lib.sqlite3_column_count.argtypes = [ctypes.c_void_p]
        lib.sqlite3_column_decltype.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.sqlite3_column_decltype.restype = ctypes.c_char_p
        lib.sqlite3_finalize.argtypes = [ctypes.c_void_p]
        lib.sqlite3_close_v2.argtypes = [ctypes.c_void_p]
        _lib = lib
        return lib


class DeclaredTypes:
    """Declared result-column types of statements on one database file, cached per statement text."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: ctypes.c_void_p | None = None
        self._cache: OrderedDict[str, list[str | None] | None] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def of(self, sql: str, columns: int) -> list[str | None] | None:
        """Each column's declared type (None for an expression); None when unknown."""
        with self._lock:
            if sql in self._cache:
                self._cache.move_to_end(sql)
                types = self._cache[sql]
            else:
                types = self._prepare(sql)
                self._cache[sql] = types
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return types if types is not None and len(types) == columns else None

    def schema_changed(self) -> None:
        """A statement may have changed the schema: forget what was read."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            lib, db, self._db = _lib, self._db, None
            if lib is not None and db is not None:
                lib.sqlite3_close_v2(db)

    def _prepare(self, sql: str) -> list[str | None] | None:
        lib = load()
        if lib is None or self._closed or not self._open(lib):
            return None
        stmt = ctypes.c_void_p()
        try:
            if lib.sqlite3_prepare_v2(self._db, sql.encode(), -1, ctypes.byref(stmt), None) != SQLITE_OK or not stmt:
                return None
            count = lib.sqlite3_column_count(stmt)
            return [_text(lib.sqlite3_column_decltype(stmt, i)) for i in range(count)]
        finally:
            if stmt:
                lib.sqlite3_finalize(stmt)

    def _open(self, lib: ctypes.CDLL) -> bool:
        if self._db is not None:
            return True
        db = ctypes.c_void_p()
        rc = lib.sqlite3_open_v2(str(self.path).encode(), ctypes.byref(db), SQLITE_OPEN_READONLY, None)
        if rc != SQLITE_OK:
            if db:
                lib.sqlite3_close_v2(db)
            return False
        self._db = db
        return True


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")
