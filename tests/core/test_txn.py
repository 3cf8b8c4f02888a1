"""The pure decisions of deferred transactions: statement classes, lock timeouts, error texts, sp_who rows."""

from __future__ import annotations

import pytest

from mirrord.core import statements as st
from mirrord.core.txn import (SP_WHO_COLUMNS, Holding, SessionFacts, TxnWord, batchable, classify, shares_commit, lock_timeout_message,
                              lock_timeout_refusal, serialization_message, shorten, sp_who_row, wait_seconds)
from mirrord.core.types import StatementSyntaxError


@pytest.mark.parametrize("sql, word", [
    ("BEGIN", TxnWord.BEGIN), ("begin transaction;", TxnWord.BEGIN), ("BEGIN DEFERRED TRANSACTION", TxnWord.BEGIN),
    ("  /* c */ -- d\n begin", TxnWord.BEGIN),
    ("BEGIN IMMEDIATE", TxnWord.BEGIN_WRITE), ("BEGIN EXCLUSIVE TRANSACTION", TxnWord.BEGIN_WRITE),
    ("BEGIN FOO", TxnWord.BEGIN_WRITE),  # SQLite judges it on the writer
    ("COMMIT", TxnWord.COMMIT), ("end transaction", TxnWord.COMMIT), ("COMMIT;", TxnWord.COMMIT),
    ("ROLLBACK", TxnWord.ROLLBACK), ("ROLLBACK TRANSACTION", TxnWord.ROLLBACK),
    ("ROLLBACK TO sp1", TxnWord.OTHER), ("ROLLBACK TRANSACTION TO SAVEPOINT sp1", TxnWord.OTHER),
    ("COMMIT now", TxnWord.OTHER),
    ("SELECT * FROM t", TxnWord.READ), ("select*from t", TxnWord.READ), ("VALUES (1)", TxnWord.READ),
    ("EXPLAIN QUERY PLAN SELECT 1", TxnWord.READ), ("-- why\nSELECT 1", TxnWord.READ),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", TxnWord.READ),  # tried on the reader, which refuses the write
    ("INSERT INTO t VALUES (1)", TxnWord.OTHER), ("SAVEPOINT a", TxnWord.OTHER), ("PRAGMA table_info(t)", TxnWord.OTHER),
    ("", TxnWord.OTHER), ("(SELECT 1)", TxnWord.OTHER), ("SELECTED", TxnWord.OTHER),
])
def test_classify(sql, word):
    assert classify(sql) is word


@pytest.mark.parametrize("ms, ok", [(-2, False), (-1, True), (0, True), (1, True), (86_400_000, True), (86_400_001, False)])
def test_lock_timeout_range(ms, ok):
    assert (lock_timeout_refusal(ms) is None) is ok


def test_wait_seconds():
    assert (wait_seconds(-1), wait_seconds(0), wait_seconds(1500)) == (None, 0, 1.5)


def test_shorten_flattens_and_cuts():
    assert shorten("UPDATE t\n   SET v = 1") == "UPDATE t SET v = 1"
    cut = shorten("x" * 200, 20)
    assert len(cut) == 20 and cut.endswith("…")


def test_lock_timeout_message_names_the_holder():
    text = lock_timeout_message("shop", 250, Holding(57, 3.25, "UPDATE t SET v = 1 WHERE id = 2"))
    assert "write lock of database shop was not free within 250 ms" in text
    assert "session 57 (EXEC sp_who shows it), for 3.2 s" in text or "for 3.3 s" in text
    assert "'UPDATE t SET v = 1 WHERE id = 2'" in text and "Nothing of this statement ran" in text
    assert "without waiting (LOCK_TIMEOUT 0)" in lock_timeout_message("shop", 0, Holding(57, 0.1, "BEGIN IMMEDIATE"))
    assert "mirrord itself" in lock_timeout_message("shop", 10, Holding(None, 1.0, "role change"))
    assert "no one any more" in lock_timeout_message("shop", 10, None)


def test_serialization_message_says_roll_back_and_retry():
    text = serialization_message("shop", 7, 9)
    assert text.startswith("could not serialize access") and "LSN 7" in text and "end of log 9" in text
    assert "ROLLBACK, then run the transaction again" in text


@pytest.mark.parametrize("facts, status, cmd, blk, open_tran", [
    (SessionFacts(51, "sa", "shop", "write", None, 2.0, False, "INSERT"), "sleeping", "AWAITING COMMAND (HOLDS WRITE LOCK)", 0, 1),
    (SessionFacts(52, "bob", "shop", None, 51, 1.5, True, "INSERT"), "suspended", "LOCK WAIT", 51, 0),
    (SessionFacts(53, "bob", "shop", "read", None, 0.0, True, "SELECT"), "runnable", "EXECUTING", 0, 1),
    (SessionFacts(54, None, None, None, None, 0.0, False, ""), "sleeping", "AWAITING COMMAND", 0, 0),
])
def test_sp_who_row(facts, status, cmd, blk, open_tran):
    row = dict(zip(SP_WHO_COLUMNS, sp_who_row(facts)))
    assert (row["spid"], row["status"], row["cmd"], row["blk"], row["open_tran"]) == (facts.spid, status, cmd, blk, open_tran)
    assert row["loginame"] == (facts.login or "") and row["dbname"] == (facts.db or "")


@pytest.mark.parametrize("sql, parsed", [
    ("SET LOCK_TIMEOUT -1", st.SetLockTimeout(-1)), ("set lock_timeout 0;", st.SetLockTimeout(0)),
    ("SET LOCK_TIMEOUT 1500", st.SetLockTimeout(1500)),
    ("EXEC sp_who", st.SpWho()), ("exec SP_WHO 52", st.SpWho(spid=52)), ("EXECUTE sp_who 'bob'", st.SpWho(login="bob")),
])
def test_parse(sql, parsed):
    assert st.parse(sql) == parsed
    assert st.parse(parsed.to_sql()) == parsed


@pytest.mark.parametrize("sql, why", [
    ("SET LOCK_TIMEOUT -2", "LOCK_TIMEOUT must be -1"), ("SET LOCK_TIMEOUT", "expected milliseconds"),
    ("SET LOCK_TIMEOUT 99999999999", "LOCK_TIMEOUT must be"), ("EXEC sp_who 1 2", "expected end of statement"),
])
def test_parse_refusals(sql, why):
    with pytest.raises(StatementSyntaxError, match=why):
        st.parse(sql)


@pytest.mark.parametrize("sql, ok", [
    ("INSERT INTO t VALUES (1)", True), ("  -- c\n update t set v = 1", True), ("CREATE TABLE u(x)", True),
    ("DELETE FROM t", True), ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", True), ("PRAGMA user_version = 3", True),
    ("BEGIN IMMEDIATE", False), ("begin exclusive transaction", False), ("SAVEPOINT sp1", False),
    ("RELEASE sp1", False), ("ROLLBACK TO sp1", False), ("/* x */ COMMIT", False), ("END", False), ("", False),
    ("   ", False), ("-- only a comment", False),
])
def test_batchable_keeps_transaction_statements_out_of_a_batch(sql, ok):
    assert batchable(sql) is ok


@pytest.mark.parametrize("sql, ok", [
    ("INSERT INTO t VALUES (1)", True), ("  -- c\n update t set v = 1", True), ("DELETE FROM t", True),
    ("replace into t values (1)", True), ("/* x */ INSERT OR ROLLBACK INTO t VALUES (1)", True),
    ("CREATE TABLE u(x)", False), ("PRAGMA user_version = 3", False), ("VACUUM", False), ("DROP TABLE t", False),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False), ("BEGIN", False), ("SAVEPOINT a", False), ("", False),
])
def test_only_row_changes_share_a_commit(sql, ok):
    assert shares_commit(sql) is ok


def test_classifications_are_remembered_for_short_texts_only():
    from mirrord.core import txn

    text = "INSERT INTO remembered_t VALUES (1)"
    assert txn.batchable(text) and txn.shares_commit(text) and txn.classify(text) is txn.TxnWord.OTHER
    assert txn.classify(text) is txn.TxnWord.OTHER  # the same answer, from the cache
    long = "INSERT INTO t VALUES ('" + "x" * txn.REMEMBERED_TEXT + "')"
    assert txn.batchable(long) and txn.classify(long) is txn.TxnWord.OTHER  # answered, not remembered
    for fn in (txn.classify, txn.batchable, txn.shares_commit):
        cached = fn.__wrapped__  # functools.wraps: the function itself, for a cross-check
        for sql in ("BEGIN", "COMMIT", "SELECT 1", "SAVEPOINT a", "-- c\nUPDATE t SET a = 1", long):
            assert fn(sql) == cached(sql), (fn.__name__, sql)
