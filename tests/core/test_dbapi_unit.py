"""The pure parts of mirrorctl.dbapi: URL, partner list, retry schedule, error mapping, decisions.

The driver is sans-I/O: its generators yield operations. `World` performs them
against scripted partners (roles, failures) with a clock that only moves when
the driver sleeps, so every failover path runs here in microseconds.
"""

from __future__ import annotations

import itertools

import pytest

from mirrorctl import dbapi
from mirrorctl.client import (CommitInDoubt, ConnectionLost, NotPrincipal, NotServing, QueryTimeout, Refused,
                              Result, ServerError, SqlError, TransactionAborted, Unreachable)
from mirrorctl.dbapi import errors
from mirrorctl.dbapi.driver import (Action, Connect, Disconnect, Driver, Failure, Kind, ResultSet, Send, Settings,
                                    Sleep, Token, classify, committed_from_status, decide, pump, settings_from,
                                    statement_kind, wire_params, UNSET)
from mirrorctl.dbapi.routing import PartnerList, RetrySchedule, normalize_address, parse_url
from mirrord.core.types import ProtocolError

# ------------------------------------------------------------------ URL and settings


@pytest.mark.parametrize("url, partners, db, options", [
    ("mirror://a:1433/shop", ("a:1433",), "shop", {}),
    ("mirror://a:1433,b:1434/shop", ("a:1433", "b:1434"), "shop", {}),
    ("MIRROR://10.0.0.1:1,10.0.0.1:1/x", ("10.0.0.1:1",), "x", {}),
    ("mirror://[::1]:1433/db", ("[::1]:1433",), "db", {}),
    ("mirror://a:1/db?failover_timeout=2.5&query_timeout=9", ("a:1",), "db", {"failover_timeout": 2.5, "query_timeout": 9.0}),
])
def test_parse_url(url, partners, db, options):
    target = parse_url(url)
    assert (target.partners, target.database, target.options) == (partners, db, options)


@pytest.mark.parametrize("url, words", [
    ("postgres://a:1/db", "mirror://"),
    ("mirror://a:1", "one database"),
    ("mirror://a:1/", "one database"),
    ("mirror://a:1/db/x", "one database"),
    ("mirror://a/db", "host:port"),
    ("mirror://a:0/db", "port"),
    ("mirror://a:1,/db", "host:port"),
    ("mirror://a:1/db?retries=3", "unknown option"),
    ("mirror://a:1/db?failover_timeout=-1", "> 0"),
    ("mirror://a:1/db?failover_timeout=soon", "> 0"),
    (None, "mirror://"),
])
def test_bad_urls_say_what_is_wrong(url, words):
    with pytest.raises(errors.InterfaceError, match=words.replace("+", r"\+")):
        parse_url(url)


def test_normalize_address_refuses_endpoint_urls():
    assert normalize_address(" b:5 ") == "b:5"
    with pytest.raises(ValueError):
        normalize_address("tcp://b:5022")


def test_keyword_settings_win_over_the_url():
    s = settings_from({"failover_timeout": 3.0, "connect_timeout": 1.0}, 7, UNSET, None, True)
    assert (s.failover_timeout, s.connect_timeout, s.query_timeout, s.autocommit) == (7.0, 1.0, None, True)
    assert settings_from({}, UNSET, UNSET, UNSET, False) == Settings()
    with pytest.raises(errors.InterfaceError):
        settings_from({}, 0, UNSET, UNSET, False)
    with pytest.raises(errors.InterfaceError):
        settings_from({}, UNSET, None, UNSET, False)  # only query_timeout may be unlimited


def test_module_globals():
    assert (dbapi.apilevel, dbapi.threadsafety, dbapi.paramstyle) == ("2.0", 1, "qmark")


# ------------------------------------------------------------------ errors


def test_exception_hierarchy_is_pep_249():
    E = errors
    assert issubclass(E.Warning, Exception) and issubclass(E.Error, Exception)
    assert not issubclass(E.Warning, E.Error)
    for cls in (E.InterfaceError, E.DatabaseError):
        assert issubclass(cls, E.Error)
    for cls in (E.DataError, E.OperationalError, E.IntegrityError, E.InternalError, E.ProgrammingError, E.NotSupportedError):
        assert issubclass(cls, E.DatabaseError)
    for cls in (E.NoPrincipal, E.TransactionInterrupted, E.InDoubt):
        assert issubclass(cls, E.OperationalError)
    assert not issubclass(E.InDoubt, E.TransactionInterrupted)


@pytest.mark.parametrize("code, message, expected", [
    ("syntax", "ALTER DATABASE: expected", errors.ProgrammingError),
    ("sql", "no such table: t", errors.ProgrammingError),
    ("sql", 'near "SELEC": syntax error', errors.ProgrammingError),
    ("sql", "string or blob too big", errors.DataError),
    ("sql", "datatype mismatch", errors.IntegrityError),
    ("sql", "database is locked", errors.OperationalError),
    ("integrity", "UNIQUE constraint failed: t.id", errors.IntegrityError),
    ("unknown_database", "database x does not exist", errors.ProgrammingError),
    ("internal", "internal error", errors.InternalError),
    ("refused", "manual failover needs SAFETY FULL", errors.OperationalError),
    ("refused", "not allowed on a mirrored database: mirrord manages…", errors.NotSupportedError),
    ("log_full", "the log is full", errors.OperationalError),
    ("not_principal", "mirror", errors.OperationalError),
    ("not_serving", "closing", errors.OperationalError),
    ("transaction_aborted", "rolled back", errors.TransactionInterrupted),
    ("in_doubt", "in doubt", errors.InDoubt),
    ("something_new", "?", errors.DatabaseError),
])
def test_error_mapping(code, message, expected):
    assert errors.error_class(code, message) is expected
    exc = errors.from_server(code, message, "b:1")
    assert type(exc) is expected and (exc.code, exc.principal, str(exc)) == (code, "b:1", message)


# ------------------------------------------------------------------ partner list and backoff


def test_partner_list_order_and_learning():
    p = PartnerList(["a:1"])
    assert p.candidates() == ["a:1"]
    assert not p.learn_principal("tcp://b:5022")  # an endpoint URL is not a client address
    assert not p.learn_principal(None)
    assert p.learn_principal("b:1")
    assert p.candidates() == ["b:1", "a:1"]
    p.served("b:1")
    p.learn_partner("a:1")  # already known: no duplicate
    p.learn_partner("c:1")
    assert p.known == ["a:1", "b:1", "c:1"]
    assert p.candidates() == ["b:1", "a:1", "c:1"]
    p.lost("b:1")
    assert p.candidates() == ["a:1", "b:1", "c:1"]
    with pytest.raises(errors.InterfaceError):
        PartnerList([])


def test_backoff_grows_to_the_cap_and_stops_at_the_deadline():
    backoff = RetrySchedule(timeout=3.0, first=0.1, factor=2, cap=1.0).start(now=100.0)
    now, delays = 100.0, []
    while (d := backoff.delay(now)) is not None:
        delays.append(d)
        now += d
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 0.5])
    assert now == pytest.approx(103.0) and backoff.remaining(now) == 0


# ------------------------------------------------------------------ classification and decisions


@pytest.mark.parametrize("sql, kind", [
    ("SELECT 1", Kind.READ), ("  select * from t", Kind.READ), ("(SELECT 1)", Kind.READ), ("VALUES (1)", Kind.READ),
    ("EXPLAIN QUERY PLAN SELECT 1", Kind.READ), ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Kind.WRITE),
    ("INSERT INTO t VALUES (1)", Kind.WRITE), ("PRAGMA user_version", Kind.WRITE), ("", Kind.WRITE),
    ("BEGIN", Kind.BEGIN), ("begin immediate", Kind.BEGIN), ("COMMIT", Kind.COMMIT), ("END TRANSACTION", Kind.COMMIT),
    ("commit;", Kind.COMMIT), ("ROLLBACK", Kind.ROLLBACK), ("ROLLBACK TRANSACTION", Kind.ROLLBACK),
    ("ROLLBACK TO sp1", Kind.WRITE), ("ROLLBACK TRANSACTION TO SAVEPOINT sp1", Kind.WRITE),
])
def test_statement_kind(sql, kind):
    assert statement_kind(sql) is kind


@pytest.mark.parametrize("exc, failure", [
    (NotPrincipal("not_principal", "mirror", "b:1"), Failure.ELSEWHERE),
    (NotServing("not_serving", "closing"), Failure.ELSEWHERE),
    (ServerError("unknown_database", "no db"), Failure.ELSEWHERE),
    (CommitInDoubt("in_doubt", "x", None, (5, 2)), Failure.IN_DOUBT),
    (TransactionAborted("transaction_aborted", "x"), Failure.ABORTED),
    (SqlError("sql", "no such table"), Failure.STATEMENT),
    (Refused("refused", "no"), Failure.STATEMENT),
    (ServerError("integrity", "UNIQUE"), Failure.STATEMENT),
    (ConnectionLost("reset"), Failure.LOST),
    (QueryTimeout("no answer"), Failure.LOST),
    (Unreachable("refused"), Failure.LOST),
    (ProtocolError("bad frame"), Failure.LOST),
])
def test_classify(exc, failure):
    assert classify(exc) is failure


def expected_action(failure: Failure, kind: Kind, in_txn: bool, first: bool) -> Action:
    """The module docstring's table, written out independently."""
    if failure is Failure.STATEMENT:
        return Action.RAISE
    if failure is Failure.IN_DOUBT:
        return Action.IN_DOUBT
    if kind is Kind.BEGIN:
        return Action.RETRY
    if kind is Kind.COMMIT:
        return {Failure.LOST: Action.IN_DOUBT}.get(failure, Action.INTERRUPTED)
    if not in_txn:
        return Action.IN_DOUBT if (failure is Failure.LOST and kind is not Kind.READ) else Action.RETRY
    return Action.RETRY if first else Action.INTERRUPTED


@pytest.mark.parametrize("failure, kind, in_txn, first",
                         list(itertools.product(Failure, Kind, (False, True), (False, True))))
def test_decide_every_case(failure, kind, in_txn, first):
    assert decide(failure, kind, in_transaction=in_txn, first_in_transaction=first) is expected_action(failure, kind, in_txn, first)


def test_in_doubt_only_where_a_commit_may_have_happened():
    """A statement that cannot commit is never reported in doubt: only COMMIT, or an autocommit write."""
    for failure, kind, in_txn, first in itertools.product(Failure, Kind, (False, True), (False, True)):
        action = decide(failure, kind, in_transaction=in_txn, first_in_transaction=first)
        if action is Action.IN_DOUBT and failure is not Failure.IN_DOUBT:
            assert failure is Failure.LOST and (kind is Kind.COMMIT or (not in_txn and kind is not Kind.READ))


# ------------------------------------------------------------------ small pure pieces


def test_result_set_fetching():
    rs = ResultSet.of(Result(["a", "b"], [[1, 2], [3, 4], [5, 6]], -1, lastrowid=None))
    assert rs.description == (("a",) + (None,) * 6, ("b",) + (None,) * 6)
    assert rs.fetch(1) == [(1, 2)] and rs.fetch(5) == [(3, 4), (5, 6)] and rs.fetch(None) == []
    assert ResultSet.of(Result([], [], 3, 9, 1, lastrowid=7)).description is None
    assert ResultSet.of(None).rowcount == -1


def test_wire_params():
    assert wire_params((1, "a")) == [1, "a"] and wire_params({"x": 1}) == {"x": 1} and wire_params(None) is None
    for bad in ("abc", b"abc", 5):
        with pytest.raises(errors.ProgrammingError):
            wire_params(bad)


def test_token_and_status_row():
    token = Token(12, 3)
    assert token.status_sql("o'shop") == "EXEC sp_transaction_status 'o''shop', 12, 3"
    assert committed_from_status({"status": "COMMITTED"}) is True
    assert committed_from_status({"status": "LOST"}) is False
    for status in ("NOT_YET", "UNKNOWN"):
        with pytest.raises(errors.OperationalError):
            committed_from_status({"status": status, "lsn": 12})


# ------------------------------------------------------------------ the driver against scripted partners


class Partner:
    """A scripted node: its role for the database, and failures to throw at chosen statements."""

    def __init__(self, role="PRINCIPAL", partner=None, up=True, has_db=True, status="ONLINE"):
        self.role, self.partner, self.up, self.has_db, self.status = role, partner, up, has_db, status
        self.failures: list[tuple[str, BaseException]] = []  # (sql prefix, exception), used once each
        self.lsn, self.role_sequence = 10, 1
        self.committed: list[int] = []

    def fail(self, prefix: str, exc: BaseException) -> None:
        self.failures.append((prefix, exc))


class World:
    """Performs the driver's operations against Partners; time moves only when the driver sleeps."""

    def __init__(self, **partners: Partner):
        self.partners = partners
        self.now = 0.0
        self.current: str | None = None
        self.ops: list = []

    def clock(self) -> float:
        return self.now

    def perform(self, op):
        self.ops.append(op)
        if isinstance(op, Sleep):
            assert op.seconds > 0
            self.now += op.seconds
        elif isinstance(op, Disconnect):
            self.current = None
        elif isinstance(op, Connect):
            self.now += 0.001
            node = self.partners.get(op.address)
            if node is None or not node.up:
                raise Unreachable(f"cannot connect to {op.address}")
            self.current = op.address
        else:
            return self._send(op)

    def _send(self, op: Send):
        assert self.current is not None, "Send without a connection"
        node = self.partners[self.current]
        if not node.up:
            raise ConnectionLost("connection lost")
        if op.sql.startswith("SELECT role, status, partner_address FROM sys.database_mirroring"):
            rows = [[node.role, node.status, node.partner]] if node.has_db else []
            return Result(["role", "status", "partner_address"], rows, len(rows))
        for i, (prefix, exc) in enumerate(node.failures):
            if op.sql.startswith(prefix):
                del node.failures[i]
                raise exc
        if op.sql.startswith("EXEC sp_transaction_status"):
            lsn = int(op.sql.split(",")[1])
            status = "COMMITTED" if lsn in node.committed else "LOST"
            return Result(["status"], [[status]], 1)
        if node.role == "MIRROR":
            raise NotPrincipal("not_principal", "this is the mirror", node.partner)
        if op.sql == "COMMIT" or op.sql.startswith("INSERT") and op.db == "auto":
            node.lsn += 1
            node.committed.append(node.lsn)
            return Result([], [], -1, node.lsn, node.role_sequence)
        if op.sql.startswith("SELECT"):
            return Result(["x"], [[1]], -1)
        return Result([], [], 1)

    def driver(self, url="mirror://a:1/shop", **settings) -> Driver:
        target = parse_url(url)
        return Driver(target, Settings(**settings), self.clock, rand=lambda: 1.0)  # no jitter: delays exact

    def run(self, steps):
        return pump(steps, self.perform)

    def sent(self, address: str | None = None) -> list[str]:
        return [op.sql for op in self.ops if isinstance(op, Send) and not op.sql.startswith("SELECT role")]


def one_transaction(world: World, drv: Driver, sql="INSERT INTO t VALUES (1)"):
    world.run(drv.execute(sql))
    world.run(drv.commit())


def test_connect_follows_the_mirror_to_the_principal_and_learns_the_failover_partner():
    world = World(**{"a:1": Partner("MIRROR", partner="b:1"), "b:1": Partner("PRINCIPAL", partner="a:1")})
    drv = world.driver("mirror://a:1/shop")
    world.run(drv.open())
    assert drv.address == "b:1" and drv.partners.known == ["a:1", "b:1"]
    one_transaction(world, drv)
    assert world.sent() == ["BEGIN", "INSERT INTO t VALUES (1)", "COMMIT"]
    assert drv.last_token == Token(11, 1)


def test_one_address_is_enough_to_reach_the_new_principal_after_a_failover():
    world = World(**{"a:1": Partner("PRINCIPAL", partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver("mirror://a:1/shop")
    one_transaction(world, drv)
    assert drv.partners.known == ["a:1", "b:1"]  # learned from the principal
    world.partners["a:1"].up = False  # SIGKILL of the principal...
    world.partners["b:1"].role = "PRINCIPAL"  # ...and b took over
    one_transaction(world, drv, "INSERT INTO t VALUES (2)")  # no error for the application
    assert drv.address == "b:1"
    assert world.partners["b:1"].committed == [11]


def test_a_principal_that_is_not_serving_is_tried_after_the_other_partner():
    """An isolated old principal still says PRINCIPAL, but refuses: the driver must not loop on it."""
    world = World(**{"a:1": Partner("PRINCIPAL", partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver("mirror://a:1,b:1/shop", failover_timeout=10)
    world.run(drv.open())
    a = world.partners["a:1"]
    for _ in range(3):
        a.fail("BEGIN", NotServing("not_serving", "out of quorum"))
    world.partners["b:1"].role = "PRINCIPAL"
    one_transaction(world, drv)
    assert drv.address == "b:1" and world.partners["b:1"].committed == [11]


def test_not_principal_answer_is_followed_without_an_error():
    world = World(**{"a:1": Partner("PRINCIPAL", partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver("mirror://a:1/shop", autocommit=True)
    world.run(drv.open())
    world.partners["a:1"].role, world.partners["a:1"].partner = "MIRROR", "b:1"  # manual failover
    world.partners["b:1"].role = "PRINCIPAL"
    rs = world.run(drv.execute("SELECT x FROM t"))
    assert rs.rows == [(1,)] and drv.address == "b:1"


def test_commit_lost_in_flight_is_in_doubt_without_a_token_then_the_next_transaction_works():
    world = World(**{"a:1": Partner(partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver()
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.partners["a:1"].fail("COMMIT", ConnectionLost("reset by peer"))
    with pytest.raises(errors.InDoubt, match="in doubt") as info:
        world.run(drv.commit())
    assert info.value.token is None and "unique key" in str(info.value)
    assert not drv.in_transaction and drv.address is None
    one_transaction(world, drv, "INSERT INTO t VALUES (2)")
    assert drv.last_token == Token(11, 1)


def test_server_in_doubt_carries_the_token_and_resolves():
    world = World(**{"a:1": Partner(partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver()
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.partners["a:1"].fail("COMMIT", CommitInDoubt("in_doubt", "lost quorum; in doubt", "b:1", (11, 1)))
    with pytest.raises(errors.InDoubt) as info:
        world.run(drv.commit())
    assert info.value.token == Token(11, 1) and "transaction_committed" in str(info.value)
    world.partners["a:1"].up = False
    world.partners["b:1"].role = "PRINCIPAL"
    world.partners["b:1"].committed = [11]
    assert world.run(drv.transaction_committed(info.value.token)) is True
    assert world.run(drv.transaction_committed(Token(12, 1))) is False


def test_first_statement_of_a_transaction_is_retried_later_ones_interrupt():
    world = World(**{"a:1": Partner(partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver()
    a = world.partners["a:1"]
    a.fail("INSERT INTO t VALUES (1)", ConnectionLost("reset"))  # first statement: redone with a new BEGIN
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    assert world.sent() == ["BEGIN", "INSERT INTO t VALUES (1)", "BEGIN", "INSERT INTO t VALUES (1)"]
    a.fail("INSERT INTO t VALUES (2)", NotServing("not_serving", "closing"))
    with pytest.raises(errors.TransactionInterrupted, match="nothing of it committed"):
        world.run(drv.execute("INSERT INTO t VALUES (2)"))
    assert not drv.in_transaction
    one_transaction(world, drv, "INSERT INTO t VALUES (3)")  # a fresh transaction, no action needed
    assert a.committed == [11]


def test_transaction_aborted_by_the_node_interrupts_and_commit_never_claims_success():
    world = World(**{"a:1": Partner(partner="b:1")})
    drv = world.driver()
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.partners["a:1"].fail("INSERT", TransactionAborted("transaction_aborted", "rolled back by a role change"))
    with pytest.raises(errors.TransactionInterrupted):
        world.run(drv.execute("INSERT INTO t VALUES (2)"))
    world.run(drv.commit())  # nothing open: a no-op, not a false success of the lost transaction
    assert world.partners["a:1"].committed == []


def test_connection_lost_between_statements_is_reported_at_the_next_one():
    world = World(**{"a:1": Partner(partner="b:1")})
    drv = world.driver()
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.run(drv._drop())  # e.g. a status probe failed and dropped the connection
    with pytest.raises(errors.TransactionInterrupted):
        world.run(drv.execute("INSERT INTO t VALUES (2)"))
    one_transaction(world, drv, "INSERT INTO t VALUES (3)")


def test_autocommit_write_lost_is_in_doubt_read_is_retried():
    world = World(**{"a:1": Partner(partner="b:1"), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver(autocommit=True)
    world.partners["a:1"].fail("SELECT x", ConnectionLost("reset"))
    assert world.run(drv.execute("SELECT x FROM t")).rows == [(1,)]
    world.partners["a:1"].fail("INSERT", QueryTimeout("no answer within 30 s"))
    with pytest.raises(errors.InDoubt):
        world.run(drv.execute("INSERT INTO t VALUES (1)"))
    assert world.sent().count("BEGIN") == 0


def test_autocommit_write_token_is_recorded():
    world = World(**{"a:1": Partner()})
    drv = Driver(parse_url("mirror://a:1/auto"), Settings(autocommit=True), world.clock)
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    assert drv.last_token == Token(11, 1)
    world.run(drv.execute("SELECT x FROM t"))  # a read leaves the last write's token
    assert drv.last_token == Token(11, 1)


def test_rollback_on_a_lost_connection_is_quietly_done():
    world = World(**{"a:1": Partner()})
    drv = world.driver()
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.partners["a:1"].fail("ROLLBACK", ConnectionLost("reset"))
    world.run(drv.rollback())
    assert not drv.in_transaction and drv.interrupted is None


def test_statement_errors_are_mapped_and_keep_the_transaction():
    world = World(**{"a:1": Partner()})
    drv = world.driver()
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.partners["a:1"].fail("INSERT", ServerError("integrity", "UNIQUE constraint failed: t.id"))
    with pytest.raises(errors.IntegrityError):
        world.run(drv.execute("INSERT INTO t VALUES (1)"))
    assert drv.in_transaction and drv.address == "a:1"


def test_no_principal_within_failover_timeout():
    world = World(**{"a:1": Partner(up=False), "b:1": Partner("MIRROR", partner="a:1")})
    drv = world.driver("mirror://a:1,b:1/shop", failover_timeout=5)
    with pytest.raises(errors.NoPrincipal, match="a:1 cannot connect.*b:1 is the mirror") as info:
        world.run(drv.open())
    assert 5.0 <= world.now < 5.2, world.now
    sleeps = [op.seconds for op in world.ops if isinstance(op, Sleep)]
    assert sleeps[:3] == pytest.approx([0.05, 0.1, 0.2]) and max(sleeps) <= 1.0
    assert "failover_timeout (5 s)" in str(info.value)


def test_a_database_no_partner_has_is_a_programming_error_at_once():
    world = World(**{"a:1": Partner(has_db=False), "b:1": Partner(has_db=False)})
    drv = world.driver("mirror://a:1,b:1/nope")
    with pytest.raises(errors.ProgrammingError, match="no partner has a database nope"):
        world.run(drv.open())
    assert world.now < 0.01


def test_restoring_copy_is_not_a_principal():
    world = World(**{"a:1": Partner("NONE", status="RESTORING"), "b:1": Partner()})
    drv = world.driver("mirror://a:1,b:1/shop")
    world.run(drv.open())
    assert drv.address == "b:1"


def test_explicit_begin_commit_rollback_statements_keep_the_state_consistent():
    world = World(**{"a:1": Partner()})
    drv = world.driver(autocommit=True)
    world.run(drv.execute("BEGIN"))
    assert drv.in_transaction
    with pytest.raises(errors.ProgrammingError, match="already open"):
        world.run(drv.execute("BEGIN"))
    world.run(drv.execute("INSERT INTO t VALUES (1)"))
    world.run(drv.execute("COMMIT"))
    assert not drv.in_transaction and drv.last_token == Token(11, 1)
    world.run(drv.execute("ROLLBACK"))  # nothing open: nothing sent
    assert world.sent() == ["BEGIN", "INSERT INTO t VALUES (1)", "COMMIT"]


def test_a_closed_connection_refuses_use():
    world = World(**{"a:1": Partner()})
    drv = world.driver()
    world.run(drv.close())
    with pytest.raises(errors.InterfaceError):
        world.run(drv.execute("SELECT 1"))


def test_the_asyncio_pump_runs_the_same_driver():
    import asyncio

    from mirrorctl.dbapi.aio import pump_async

    world = World(**{"a:1": Partner("MIRROR", partner="b:1"), "b:1": Partner(partner="a:1")})
    drv = world.driver("mirror://a:1/shop")

    async def perform(op):
        return world.perform(op)

    async def scenario():
        await pump_async(drv.execute("INSERT INTO t VALUES (1)"), perform)
        world.partners["b:1"].fail("COMMIT", ConnectionLost("reset"))
        with pytest.raises(errors.InDoubt):
            await pump_async(drv.commit(), perform)
        await pump_async(drv.execute("INSERT INTO t VALUES (2)"), perform)
        await pump_async(drv.commit(), perform)

    asyncio.run(scenario())
    assert drv.address == "b:1" and drv.last_token == Token(11, 1)


def test_one_deadline_per_call_even_when_the_principal_keeps_refusing():
    """An old principal that answers the probe but refuses every BEGIN: NoPrincipal after failover_timeout, not later."""
    world = World(**{"a:1": Partner(partner="b:1"), "b:1": Partner(up=False)})
    drv = world.driver("mirror://a:1,b:1/shop", failover_timeout=3)
    world.run(drv.open())
    for _ in range(1000):
        world.partners["a:1"].fail("BEGIN", NotServing("not_serving", "out of quorum"))
    with pytest.raises(errors.NoPrincipal, match="out of quorum"):
        world.run(drv.execute("INSERT INTO t VALUES (1)"))
    assert 3.0 <= world.now < 3.2, world.now


def test_error_frames_carry_the_token_beyond_the_schema():
    from mirrorctl.client import _Exchange

    base = {"t": "error", "id": 1, "code": "in_doubt", "message": "in doubt", "principal": None}
    assert ServerError.from_frame({**base, "lsn": 12, "role_sequence": 3}).token == (12, 3, 0)  # an older server: no seq
    assert ServerError.from_frame({**base, "lsn": 12, "role_sequence": 3, "seq": 2}).token == (12, 3, 2)
    assert ServerError.from_frame({**base, "lsn": 12, "role_sequence": 3, "seq": -1}).token == (12, 3, 0)
    from mirrorctl.dbapi.token import token_of
    assert token_of(*ServerError.from_frame({**base, "lsn": 12, "role_sequence": 3, "seq": 2}).token) == Token(12, 3, 2)
    assert isinstance(ServerError.from_frame(base), CommitInDoubt)
    for lsn, role_sequence in ((True, 3), (12, None), (-1, 3), (12, "3"), (2**63, 1)):
        assert ServerError.from_frame({**base, "lsn": lsn, "role_sequence": role_sequence}).token is None
    answer = {"t": "result", "id": 1, "columns": [], "rows": [], "rowcount": 1, "lsn": 4, "role_sequence": 1, "message": None}
    assert _Exchange.answer(1, {**answer, "lastrowid": 9}).lastrowid == 9
    assert _Exchange.answer(1, {**answer, "seq": 3}).seq == 3  # its place in a commit shared with others
    assert _Exchange.answer(1, answer).seq is None and _Exchange.answer(1, {**answer, "seq": "3"}).seq is None
    assert _Exchange.answer(1, {**answer, "lastrowid": "9"}).lastrowid is None
    assert _Exchange.answer(1, answer).lastrowid is None  # an older server
