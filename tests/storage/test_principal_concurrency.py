"""Transactions that don't block each other, on one principal in-process (no network).

A read transaction runs on a snapshot of its own beside writers; its first write
takes the write lock and is refused if others committed since its snapshot; a
writer queues for the lock at most its lock timeout and then hears who holds it.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from mirrord.core.quorum import AckRule
from mirrord.core.session import Session, SessionConfig
from mirrord.core.types import LimitExceeded, NotServing, PermissionDenied, Role, TransactionAborted
from mirrord.engine.principal import MAX_TRANSACTION_READERS, IntegrityError, PrincipalDatabase, SerializationFailure
from mirrord.storage.log import DurableLog
from mirrord.engine.write_lock import LockTimeout


class Owner:
    """What node.ClientOwner gives a principal: a session id and a lock timeout."""

    def __init__(self, spid: int, lock_timeout_ms: int | None = None) -> None:
        self.spid = spid
        self.lock_timeout_ms = lock_timeout_ms


@pytest.fixture
async def p(tmp_path: Path):
    session = Session(SessionConfig(db="shop", role=Role.PRINCIPAL))
    principal = PrincipalDatabase(tmp_path, session, DurableLog(tmp_path / "log", 1 << 20), log_size_limit=1 << 30,
                                  ack_rule=lambda: AckRule.LOCAL, quorum_refusal=lambda: None, lock_timeout_ms=5000)
    await principal.open()
    await principal.execute(object(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", None)
    await principal.execute(object(), "INSERT INTO t VALUES (1, 'one')", None)
    yield principal
    await principal.close()


async def _count(p: PrincipalDatabase, owner: object) -> int:
    return (await p.execute(owner, "SELECT count(*) FROM t", None)).rows[0][0]


async def test_a_read_transaction_does_not_block_writers_and_keeps_its_snapshot(p):
    reader, writer = Owner(51), Owner(52, lock_timeout_ms=0)  # the writer would fail at once if the lock were held
    await p.execute(reader, "BEGIN", None)
    assert await _count(p, reader) == 1
    assert p.transaction_of(reader) == "read" and not p.write_lock.locked()
    result = await p.execute(writer, "INSERT INTO t VALUES (2, 'two')", None)
    assert result.lsn is not None
    assert await _count(p, reader) == 1  # its snapshot: the insert is not in it
    assert await _count(p, object()) == 2
    await p.execute(reader, "COMMIT", None)
    assert p.transaction_of(reader) is None and not p.holds_transaction(reader)
    assert await _count(p, reader) == 2


async def test_two_read_transactions_and_a_writer_side_by_side(p):
    a, b, w = Owner(51), Owner(52), Owner(53)
    for o in (a, b):
        await p.execute(o, "BEGIN", None)
        assert await _count(p, o) == 1
    await p.execute(w, "BEGIN", None)
    await p.execute(w, "INSERT INTO t VALUES (2, 'two')", None)
    assert p.transaction_of(w) == "write" and p.write_lock.holder.owner is w
    assert await _count(p, w) == 2  # its own write, on the writer
    assert [await _count(p, a), await _count(p, b)] == [1, 1]
    await p.execute(w, "COMMIT", None)
    assert [await _count(p, a), await _count(p, b)] == [1, 1]
    await p.execute(a, "ROLLBACK", None)
    await p.execute(b, "COMMIT", None)
    assert await _count(p, a) == 2


async def test_a_read_transaction_that_writes_after_another_commit_is_refused_and_rolled_back(p):
    a, w = Owner(51), Owner(52)
    await p.execute(a, "BEGIN", None)
    assert await _count(p, a) == 1
    await p.execute(w, "INSERT INTO t VALUES (2, 'two')", None)
    with pytest.raises(SerializationFailure, match="could not serialize access.*ROLLBACK, then run the transaction again"):
        await p.execute(a, "UPDATE t SET v = 'changed' WHERE id = 1", None)
    assert not p.write_lock.locked() and p.transaction_of(a) is None
    with pytest.raises(TransactionAborted):
        await p.execute(a, "SELECT 1", None)
    await p.execute(a, "ROLLBACK", None)
    assert (await p.execute(a, "SELECT v FROM t WHERE id = 1", None)).rows == [["one"]]  # nothing of it ran


async def test_a_read_transaction_that_writes_with_nothing_committed_since_moves_to_the_writer(p):
    a = Owner(51)
    await p.execute(a, "BEGIN", None)
    assert await _count(p, a) == 1
    await p.execute(a, "INSERT INTO t VALUES (2, 'two')", None)
    assert p.transaction_of(a) == "write"
    assert await _count(p, a) == 2  # reads after the first write see it
    assert await _count(p, object()) == 1  # nobody else does before the commit
    result = await p.execute(a, "COMMIT", None)
    assert result.lsn is not None and not p.write_lock.locked()
    assert await _count(p, object()) == 2


async def test_a_transaction_that_writes_first_never_meets_a_serialization_failure(p):
    a, w = Owner(51), Owner(52)
    await p.execute(a, "BEGIN", None)
    await p.execute(w, "INSERT INTO t VALUES (2, 'two')", None)  # between its BEGIN and its first statement
    await p.execute(a, "INSERT INTO t VALUES (3, 'three')", None)
    await p.execute(a, "COMMIT", None)
    assert await _count(p, object()) == 3


async def test_lock_timeout_names_the_holder_and_nothing_of_the_waiter_runs(p):
    holder = Owner(51)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    await p.execute(holder, "UPDATE t SET v = 'held' WHERE id = 1", None)
    with pytest.raises(LockTimeout, match=r"without waiting .*session 51 .*for \d+\.\d s; its last statement: "
                                          r"\"UPDATE t SET v = 'held' WHERE id = 1\""):
        await p.execute(Owner(52, lock_timeout_ms=0), "INSERT INTO t VALUES (5, 'no')", None)
    with pytest.raises(LockTimeout, match="within 50 ms: it is held by session 51") as err:
        await p.execute(Owner(53, lock_timeout_ms=50), "INSERT INTO t VALUES (6, 'no')", None)
    assert err.value.code == "lock_timeout"
    forever = Owner(54, lock_timeout_ms=-1)
    waiting = asyncio.create_task(p.execute(forever, "INSERT INTO t VALUES (7, 'yes')", None))
    while p.write_lock.waiting(forever) is None:
        await asyncio.sleep(0)  # until it queues (no timing: a state)
    await p.execute(holder, "COMMIT", None)
    assert (await waiting).lsn is not None
    assert (await p.execute(object(), "SELECT id FROM t ORDER BY id", None)).rows == [[1], [7]]


def _count_hops(p: PrincipalDatabase) -> list[int]:
    """The size of every batch the writer task runs from now on."""
    hops: list[int] = []
    run = p._run_batch_and_capture

    def counted(conn, statements):
        hops.append(len(statements))
        return run(conn, statements)

    p._run_batch_and_capture = counted
    return hops


async def _queued(p: PrincipalDatabase, owners: list[Owner]) -> None:
    while any(p.write_lock.waiting(o) is None for o in owners):
        await asyncio.sleep(0)  # until every one is queued, as sp_who would show it (a state, no timing)


async def test_queued_writes_of_many_clients_run_in_one_hop_each_with_its_own_outcome_and_token(p):
    holder = Owner(51)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    await p.execute(holder, "INSERT INTO t VALUES (2, 'held')", None)
    hops = _count_hops(p)
    owners = [Owner(60 + i) for i in range(5)]
    statements = ["INSERT INTO t VALUES (10, 'a')",
                  "INSERT INTO t VALUES (1, 'duplicate')",  # its constraint error is its own
                  "UPDATE t SET v = 'none' WHERE id = 999",  # commits nothing: no record, no token
                  "INSERT INTO t VALUES (11, 'b')",
                  "INSERT INTO t VALUES (12, 'c')"]
    tasks = [asyncio.create_task(p.execute(o, sql, None)) for o, sql in zip(owners, statements)]
    await _queued(p, owners)
    await p.execute(holder, "COMMIT", None)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert hops == [5]  # one hop for all of them
    assert isinstance(outcomes[1], IntegrityError) and "UNIQUE" in outcomes[1].message
    assert outcomes[2].rowcount == 0 and outcomes[2].lsn is None
    tokens = [(outcomes[i].lsn, outcomes[i].role_sequence, outcomes[i].seq) for i in (0, 3, 4)]
    first = tokens[0][0]
    # one SQLite transaction, a SAVEPOINT each: one record, each its own place in it, in queue order
    assert tokens == [(first, tokens[0][1], 0), (first, tokens[0][1], 1), (first, tokens[0][1], 2)]
    assert p.end_lsn == first and p.synced_lsn >= first
    assert p.log.get(first).role_sequence == tokens[0][1]
    assert outcomes[0].lastrowid == 10 and outcomes[4].lastrowid == 12
    rows = (await p.execute(object(), "SELECT id, v FROM t ORDER BY id", None)).rows
    assert rows == [[1, "one"], [2, "held"], [10, "a"], [11, "b"], [12, "c"]]


async def _run_queued_together(p: PrincipalDatabase, statements: list[str], first_spid: int) -> list:
    """Queue statements of as many clients behind a held write lock, then let them run in one hop."""
    holder = Owner(first_spid - 1)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    await p.execute(holder, "DELETE FROM t WHERE id = -1", None)  # holds the lock, changes nothing
    hops = _count_hops(p)
    owners = [Owner(first_spid + i) for i in range(len(statements))]
    tasks = [asyncio.create_task(p.execute(o, sql, None)) for o, sql in zip(owners, statements)]
    await _queued(p, owners)
    await p.execute(holder, "COMMIT", None)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert hops == [len(statements)]
    return outcomes


async def test_row_changes_queued_together_share_one_commit_and_a_failing_one_changes_nothing(p):
    before = p.end_lsn
    outcomes = await _run_queued_together(p, [
        "INSERT INTO t VALUES (20, 'a')",
        "INSERT INTO t VALUES (21, 'x'), (1, 'duplicate')",  # fails at its second row: its first is undone too
        "UPDATE t SET v = 'seen' WHERE id = 20",  # sees the row of the statement before it
        "INSERT INTO t VALUES (22, 'c')",
    ], first_spid=70)
    assert isinstance(outcomes[1], IntegrityError)
    assert outcomes[2].rowcount == 1
    ok = [outcomes[i] for i in (0, 2, 3)]
    assert {r.lsn for r in ok} == {before + 1} == {p.end_lsn}  # one commit, one record
    assert [r.seq for r in ok] == [0, 1, 2]
    rows = (await p.execute(object(), "SELECT id, v FROM t ORDER BY id", None)).rows
    assert rows == [[1, "one"], [20, "seen"], [22, "c"]]


async def test_a_statement_that_ends_the_shared_transaction_fails_alone_and_the_others_commit(p):
    outcomes = await _run_queued_together(p, [
        "INSERT INTO t VALUES (30, 'a')",
        "INSERT INTO t VALUES (31, 'b')",
        "INSERT OR ROLLBACK INTO t VALUES (1, 'duplicate')",  # rolls back the whole transaction it is in
        "INSERT INTO t VALUES (32, 'c')",
    ], first_spid=80)
    assert isinstance(outcomes[2], IntegrityError)
    tokens = [(outcomes[i].lsn, outcomes[i].role_sequence, outcomes[i].seq) for i in (0, 1, 3)]
    assert all(lsn is not None for lsn, _, _ in tokens) and len(set(tokens)) == 3
    rows = (await p.execute(object(), "SELECT id FROM t ORDER BY id", None)).rows
    assert rows == [[1], [30], [31], [32]]
    assert p.synced_lsn >= max(lsn for lsn, _, _ in tokens) == p.end_lsn


async def test_a_schema_statement_in_a_batch_keeps_a_transaction_of_its_own(p):
    before = p.end_lsn
    outcomes = await _run_queued_together(p, [
        "INSERT INTO t VALUES (40, 'a')",  # alone before the CREATE: a commit of its own
        "CREATE TABLE u(x)",
        "INSERT INTO u VALUES (41)",
        "INSERT INTO t VALUES (42, 'c')",
    ], first_spid=90)
    assert [(r.lsn, r.seq) for r in outcomes] == [(before + 1, 0), (before + 2, 0), (before + 3, 0), (before + 3, 1)]
    assert (await p.execute(object(), "SELECT x FROM u", None)).rows == [[41]]


async def test_a_queued_write_whose_client_left_never_runs_and_others_still_do(p):
    holder, leaving, staying = Owner(51), Owner(52), Owner(53)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    gone = asyncio.create_task(p.execute(leaving, "INSERT INTO t VALUES (20, 'gone')", None))
    kept = asyncio.create_task(p.execute(staying, "INSERT INTO t VALUES (21, 'kept')", None))
    await _queued(p, [leaving, staying])
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert p.write_lock.waiting(leaving) is None and p.write_lock.waiting(staying) is not None
    await p.execute(holder, "COMMIT", None)
    assert (await kept).lsn is not None
    assert (await p.execute(object(), "SELECT id FROM t ORDER BY id", None)).rows == [[1], [21]]
    assert not p.write_lock.locked() and not p.write_lock.waiters


async def test_a_queued_write_past_its_lock_timeout_leaves_the_queue_and_the_rest_run(p):
    holder, hasty, patient = Owner(51), Owner(52, lock_timeout_ms=30), Owner(53, lock_timeout_ms=-1)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    await p.execute(holder, "UPDATE t SET v = 'held' WHERE id = 1", None)
    waits = asyncio.create_task(p.execute(patient, "INSERT INTO t VALUES (31, 'patient')", None))
    with pytest.raises(LockTimeout, match="within 30 ms: it is held by session 51"):
        await p.execute(hasty, "INSERT INTO t VALUES (30, 'hasty')", None)
    assert p.write_lock.waiting(hasty) is None and p.write_lock.waiting(patient) is not None
    await p.execute(holder, "COMMIT", None)
    assert (await waits).lsn is not None
    assert (await p.execute(object(), "SELECT id FROM t ORDER BY id", None)).rows == [[1], [31]]


async def test_lock_timeouts_of_queued_writes_run_out_each_at_its_own_deadline_whatever_the_order_they_queued_in(p):
    # one timer serves the queue: a shorter timeout queued behind a longer one must still run out first,
    # and the timer, once fired, must be armed again for the next deadline
    holder, slow, quick, middle = Owner(51), Owner(52), Owner(53, lock_timeout_ms=40), Owner(54, lock_timeout_ms=120)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    waits = asyncio.create_task(p.execute(slow, "INSERT INTO t VALUES (50, 'slow')", None))  # the server's 5000 ms
    await _queued(p, [slow])
    loop = asyncio.get_running_loop()
    started = loop.time()
    quick_one = asyncio.create_task(p.execute(quick, "INSERT INTO t VALUES (51, 'quick')", None))
    middle_one = asyncio.create_task(p.execute(middle, "INSERT INTO t VALUES (52, 'middle')", None))
    with pytest.raises(LockTimeout, match="within 40 ms"):
        await quick_one
    quick_after = loop.time() - started
    with pytest.raises(LockTimeout, match="within 120 ms"):
        await middle_one
    middle_after = loop.time() - started
    assert 0.039 <= quick_after < middle_after and middle_after >= 0.119
    assert middle_after < 2.5, "each ran out near its own deadline, not at the 5 s one queued first"
    assert p.write_lock.waiting(slow) is not None and not waits.done()
    await p.execute(holder, "COMMIT", None)
    assert (await waits).lsn is not None
    assert (await p.execute(object(), "SELECT id FROM t ORDER BY id", None)).rows == [[1], [50]]


async def test_queued_writes_hear_not_serving_when_the_database_closes_and_nothing_of_them_runs(p):
    holder, queued = Owner(51), Owner(52)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    waits = asyncio.create_task(p.execute(queued, "INSERT INTO t VALUES (40, 'never')", None))
    await _queued(p, [queued])
    await p.close()
    with pytest.raises(NotServing, match="was not run"):
        await waits
    assert not p.write_lock.waiters and p._write_task.done()


async def test_read_transactions_beyond_the_bound_are_refused_and_autocommit_reads_go_on(p):
    owners = [Owner(100 + i) for i in range(MAX_TRANSACTION_READERS)]
    for o in owners:
        await p.execute(o, "BEGIN", None)
        await _count(p, o)
    extra = Owner(99)
    await p.execute(extra, "BEGIN", None)
    with pytest.raises(LimitExceeded, match="End idle transactions"):
        await _count(p, extra)
    assert await _count(p, object()) == 1
    await p.execute(owners[0], "COMMIT", None)
    assert await _count(p, extra) == 1  # the reader owners[0] let go is reused


async def test_idle_and_abandoned_read_transactions_are_rolled_back(p):
    idle, gone = Owner(51), Owner(52)
    for o in (idle, gone):
        await p.execute(o, "BEGIN", None)
        await _count(p, o)
        assert p.holds_transaction(o)
    await p.abort_idle_transaction(idle, 60)
    await p.abort_transaction(gone)
    assert not p.holds_transaction(idle) and not p.holds_transaction(gone)
    with pytest.raises(TransactionAborted, match="held a read snapshot idle for more than 60 s"):
        await _count(p, idle)
    await p.execute(idle, "ROLLBACK", None)
    assert await _count(p, gone) == 1  # the client that went away: nothing pending for a new one with its owner


async def test_begin_inside_a_deferred_transaction_is_an_error(p):
    a = Owner(51)
    await p.execute(a, "BEGIN", None)
    with pytest.raises(Exception, match="cannot start a transaction within a transaction"):
        await p.execute(a, "BEGIN", None)
    await p.execute(a, "ROLLBACK", None)


async def test_a_read_only_login_holds_read_transactions_and_never_writes(p):
    viewer, why = Owner(51), "login viewer has no WRITE grant"
    await p.execute_read_only("BEGIN", None, why, viewer)
    assert (await p.execute_read_only("SELECT count(*) FROM t", None, why, viewer)).rows == [[1]]
    await p.execute(object(), "INSERT INTO t VALUES (2, 'two')", None)
    assert (await p.execute_read_only("SELECT count(*) FROM t", None, why, viewer)).rows == [[1]]  # its snapshot
    for sql in ("INSERT INTO t VALUES (3, 'no')", "WITH x AS (SELECT 3) INSERT INTO t(id) SELECT * FROM x"):
        with pytest.raises(PermissionDenied, match="no WRITE grant"):
            await p.execute_read_only(sql, None, why, viewer)
    assert p.transaction_of(viewer) == "read" and not p.write_lock.locked()
    await p.execute_read_only("COMMIT", None, why, viewer)
    assert p.transaction_of(viewer) is None
    assert (await p.execute_read_only("SELECT count(*) FROM t", None, why, viewer)).rows == [[2]]


async def test_a_client_leaving_as_its_write_times_out_leaves_no_unretrieved_error(p):
    holder, leaving = Owner(51), Owner(52)
    await p.execute(holder, "BEGIN IMMEDIATE", None)
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        gone = asyncio.create_task(p.execute(leaving, "INSERT INTO t VALUES (60, 'gone')", None))
        await _queued(p, [leaving])
        [write] = p._write_queue
        p._expire(write)  # its lock timeout fails it (as the queue's timer does) ...
        gone.cancel()  # ... and its client leaves in the same instant, before its task has run
        with pytest.raises(asyncio.CancelledError):
            await gone
        del write, gone
        gc.collect()
        assert not [c for c in unhandled if "never retrieved" in c.get("message", "")], unhandled
    finally:
        loop.set_exception_handler(None)
        await p.execute(holder, "ROLLBACK", None)
