"""What client SQL may do on the principal's shared SQLite connections: an allow-list.

Why an allow-list. Every client's statements run on a few connections mirrord
shares (one writer, a few readers), and capture relies on the journal mode, on
who checkpoints, and on every page living in the one database file. So a
client may not change anything that belongs to a connection rather than to
the database: a setting made by one client would change what every other
client's statements see or do (`PRAGMA query_only=ON` once blocked every
writer; a `CREATE TEMP TRIGGER` saw other clients' rows and could abort their
inserts; `writable_schema` corrupted a database). Hence:

* a PRAGMA is allowed only when it is listed: either it only reports
  (`QUERY_PRAGMAS`, with or without a table/index name), or it sets something
  that is part of the database file and so shipped to the mirror like any
  write (`DATABASE_PRAGMAS`: user_version, application_id);
* TEMP objects are refused: they live in the shared connection, not the
  database, and would be visible to, and act on, other clients' statements;
* ATTACH and DETACH (which VACUUM and VACUUM INTO use too) are refused: every
  page must live in the one file, and no client names files on the node.

`refusal(action, arg1, arg2)` is the whole decision (pure); the principal's
SQLite authorizer calls it and reports the reason with the error.
"""

from __future__ import annotations

import sqlite3

# PRAGMAs that only report; the argument, if any, names a table, an index or a count.
QUERY_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
    "collation_list", "compile_options", "function_list", "module_list", "pragma_list", "database_list",
    "page_size", "page_count", "freelist_count", "max_page_count", "encoding", "schema_version", "data_version",
    "foreign_keys", "recursive_triggers", "auto_vacuum", "cache_size", "synchronous", "busy_timeout",
    "wal_autocheckpoint", "journal_size_limit", "temp_store", "secure_delete", "cell_size_check",
})
# PRAGMAs that set something stored in the database file (captured and shipped like a write).
DATABASE_PRAGMAS = frozenset({"user_version", "application_id"})
# PRAGMAs whose argument is a name to look at, not a new setting.
_NAMED_QUERIES = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})
_READS = frozenset({sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION})
_TEMP_OBJECTS = frozenset({
    sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW, sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_DROP_TEMP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW,
})


def refusal(action: int, arg1: str | None, arg2: str | None, dbname: str | None = None) -> str | None:
    """Why client SQL may not perform this authorizer action, or None if it may."""
    if action == sqlite3.SQLITE_PRAGMA:
        return _pragma_refusal((arg1 or "").lower(), arg2)
    # `CREATE TRIGGER temp.x ON main_table` reports CREATE_TRIGGER in main, then a write to the temp schema
    if action in _TEMP_OBJECTS or (dbname == "temp" and action not in _READS):
        return ("TEMP tables, views, indexes and triggers are refused: they would live in a connection every "
                "client shares, and act on other clients' statements; use a regular table")
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return ("ATTACH, DETACH and VACUUM are refused: every page of a mirrored database lives in its one file, "
                "and clients name no files on the node")
    return None


def _pragma_refusal(name: str, arg: str | None) -> str | None:
    if name in DATABASE_PRAGMAS:
        return None
    if name in QUERY_PRAGMAS and (arg is None or name in _NAMED_QUERIES):
        return None
    allowed = ", ".join(sorted(QUERY_PRAGMAS | DATABASE_PRAGMAS))
    if name in QUERY_PRAGMAS:
        return (f"PRAGMA {name} may be read but not set: connections are shared by every client, and mirrord "
                f"manages their settings")
    return f"PRAGMA {name} is not allowed on a mirrored database; the allowed PRAGMAs are: {allowed}"
