"""Client-side bounds that need no node: parameters, settings, statement parsing, result budgets, the guard."""

from __future__ import annotations

import sqlite3
import time

import pytest

from mirrord.core import statements as st
from mirrord.core.types import DataError, LimitExceeded, StatementSyntaxError, StatementTimeout
from mirrord.core.values import INT64_MAX, INT64_MIN, MAX_PARAMS, check_params
from mirrord.net.client_port import ClientLimits, limits_from_settings
from mirrord.storage.statement_guard import CURRENT, ClientGone, StatementGuard, fetch_bounded, run_guarded


@pytest.mark.parametrize("params", [None, [], [1, 2.5, "x", b"y", None, True], [INT64_MAX, INT64_MIN], {"a": 1}])
def test_params_accepted(params):
    check_params(params)


@pytest.mark.parametrize("params,what", [
    ([INT64_MAX + 1], "parameter 1"), ([2**64 - 1], "64-bit"), ({"big": INT64_MIN - 1}, "'big'"),
    ([[1]], "list"), ({"m": {}}, "dict"), ("text", "a list"), ({b"k": 1}, "string names"),
    ([0] * (MAX_PARAMS + 1), "binds at most"),
])
def test_params_refused_with_a_data_error(params, what):
    with pytest.raises(DataError, match=what):
        check_params(params)


def test_set_statement_timeout_parses_and_round_trips():
    assert st.parse("SET STATEMENT_TIMEOUT 250") == st.SetStatementTimeout(250)
    assert st.parse("set statement_timeout 0;") == st.SetStatementTimeout(0)
    assert st.parse(st.SetStatementTimeout(9).to_sql()) == st.SetStatementTimeout(9)
    with pytest.raises(StatementSyntaxError, match="0..86400000"):
        st.parse("SET STATEMENT_TIMEOUT 86400001")
    with pytest.raises(DataError):
        st.parse("SET STATEMENT_TIMEOUT " + "9" * 40)
    assert isinstance(st.parse("SET x = 1"), st.Sql)  # not ours: SQLite says what it thinks


def test_limit_settings():
    limits = limits_from_settings({"max_clients": 5, "client_idle_timeout": 1.5, "client_max_frame_kb": 64,
                                   "max_result_mb": 2, "statement_timeout_ms": 10, "idle_transaction_timeout": 3})
    assert limits == ClientLimits(max_clients=5, idle_timeout=1.5, max_frame=64 << 10, max_result_bytes=2 << 20,
                                  statement_timeout_ms=10, idle_transaction_timeout=3.0)
    assert limits_from_settings({}) == ClientLimits()
    for bad in ({"max_clients": 0}, {"max_clients": 1.5}, {"max_clients": True}, {"client_idle_timeout": "1"},
                {"client_max_frame_kb": 65537}, {"statement_timeout_ms": -1}):
        with pytest.raises(ValueError):
            limits_from_settings(bad)


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:")
    yield c
    c.close()


ROWS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {}) SELECT x, 'r' || x FROM n"


def test_result_budget(conn):
    assert len(fetch_bounded(conn.execute(ROWS.format(1000)), 1 << 20)) == 1000
    with pytest.raises(LimitExceeded, match="larger than this node's limit of 1 MiB"):
        fetch_bounded(conn.execute(ROWS.format(1_000_000)), 1 << 20)


def _guarded(conn, guard, sql):
    token = CURRENT.set(guard)
    try:
        return run_guarded(conn, sql, None, lambda exc: exc)
    finally:
        CURRENT.reset(token)


def test_no_single_value_outgrows_the_budget(conn):
    guard = StatementGuard(None, 1 << 20)
    with pytest.raises(sqlite3.Error, match="too big"):  # 100 MB, built inside SQLite before any fetch
        _guarded(conn, guard, "SELECT zeroblob(100000000)")
    assert _guarded(conn, guard, "SELECT length(zeroblob(1000))")[1] == [[1000]]
    assert conn.execute("SELECT length(zeroblob(2000000))").fetchone() == (2000000,)  # the limit is the statement's only


def test_guard_timeout_and_cancel(conn):
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    started = time.monotonic()
    with pytest.raises(StatementTimeout, match="50 ms"):
        _guarded(conn, StatementGuard(time.monotonic() + 0.05, 1 << 20, 50), forever)
    assert time.monotonic() - started < 5
    gone = StatementGuard(None, 1 << 20)
    gone.cancel()
    with pytest.raises(ClientGone):
        _guarded(conn, gone, forever)
    _, rows = _guarded(conn, StatementGuard(time.monotonic() + 10, 1 << 20), "SELECT 1")
    assert rows == [[1]]  # and the progress handler is cleared afterwards:
    assert conn.execute("SELECT count(*) FROM (" + ROWS.format(100000) + ")").fetchone() == (100000,)
