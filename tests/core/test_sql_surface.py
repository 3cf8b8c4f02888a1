"""The allow-list of client SQL on the shared connections, checked against a real SQLite authorizer."""

from __future__ import annotations

import sqlite3

import pytest

from mirrord.core import sql_surface

ALLOWED = [
    "SELECT * FROM t", "INSERT INTO t VALUES (1)", "CREATE TABLE u(a)", "CREATE INDEX i ON t(a)",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", "CREATE VIEW v AS SELECT 1",
    "PRAGMA table_info(t)", "SELECT * FROM pragma_table_info('t')", "PRAGMA integrity_check", "PRAGMA quick_check(5)",
    "PRAGMA user_version", "PRAGMA user_version = 7", "PRAGMA application_id = 9", "PRAGMA page_count",
    "PRAGMA foreign_keys", "PRAGMA journal_size_limit", "PRAGMA index_list(t)", "SAVEPOINT s",
    "SELECT * FROM temp.sqlite_master", "CREATE VIRTUAL TABLE ft USING fts5(a)", "WITH r(x) AS (SELECT 1) SELECT x FROM r",
]
REFUSED = [
    ("PRAGMA writable_schema=ON", "not allowed"), ("PRAGMA query_only=ON", "not allowed"),
    ("PRAGMA max_page_count=1", "read but not set"), ("PRAGMA temp_store_directory='/tmp'", "not allowed"),
    ("PRAGMA foreign_keys=ON", "read but not set"), ("PRAGMA cache_size=10", "read but not set"),
    ("PRAGMA journal_mode=DELETE", "not allowed"), ("PRAGMA journal_mode", "not allowed"),
    ("PRAGMA wal_checkpoint(TRUNCATE)", "not allowed"), ("PRAGMA locking_mode=EXCLUSIVE", "not allowed"),
    ("PRAGMA synchronous=OFF", "read but not set"), ("PRAGMA case_sensitive_like=ON", "not allowed"),
    ("PRAGMA defer_foreign_keys=ON", "not allowed"), ("PRAGMA recursive_triggers=ON", "read but not set"),
    ("PRAGMA wal_autocheckpoint=1", "read but not set"), ("PRAGMA mmap_size=1000000", "not allowed"),
    ("CREATE TEMP TABLE x(a)", "TEMP"), ("CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", "TEMP"),
    ("CREATE TEMP VIEW v AS SELECT 1", "TEMP"), ("CREATE TRIGGER temp.tr2 AFTER INSERT ON t BEGIN SELECT 1; END", "TEMP"),
    ("CREATE TABLE temp.x(a)", "TEMP"), ("CREATE VIEW temp.v AS SELECT 1", "TEMP"),
    ("CREATE VIRTUAL TABLE temp.vt USING fts5(a)", "TEMP"),
    ("ATTACH 'x.db' AS x", "ATTACH"), ("VACUUM INTO 'copy.db'", "ATTACH"), ("VACUUM", "ATTACH"),
]


@pytest.fixture
def conn(tmp_path):
    c = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    c.execute("CREATE TABLE t(a)")
    reasons = []

    def authorize(action, arg1, arg2, dbname, source):
        why = sql_surface.refusal(action, arg1, arg2, dbname)
        if why is not None:
            reasons.append(why)
        return sqlite3.SQLITE_OK if why is None else sqlite3.SQLITE_DENY

    c.set_authorizer(authorize)
    yield c, reasons
    c.close()


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(conn, sql):
    conn[0].execute(sql).fetchall()


@pytest.mark.parametrize("sql,why", REFUSED)
def test_refused_with_reason(conn, tmp_path, sql, why):
    c, reasons = conn
    with pytest.raises(sqlite3.DatabaseError, match="not authorized|authorization denied"):
        c.execute(sql)
    assert any(why in r for r in reasons), reasons
    assert not (tmp_path / "copy.db").exists()
