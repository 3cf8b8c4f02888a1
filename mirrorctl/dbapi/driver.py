"""The failover-aware connection logic, shared by the blocking and the asyncio API.

How it works (sans-I/O, as h11): a `Driver` method is a generator that yields
I/O operations (`Connect`, `Send`, `Disconnect`, `Sleep`) and receives each
one's outcome: `Send` gets the `Result`, and a failure is thrown into the
generator at the yield (`ServerError`, `Unreachable`, `ProtocolError` from
mirrorctl.client). `run_blocking` and `run_async` in the two shells perform the
operations; everything that decides lives here and is tested with scripted
outcomes.

What it decides, after a statement fails (`decide`):

    the failure          in a statement outside a     first statement of a     later statement      COMMIT
                         transaction (autocommit)     transaction, or BEGIN    in a transaction
    ELSEWHERE            retry on the principal       retry (BEGIN again)      interrupted          interrupted
    LOST                 retry if a read, else        retry                    interrupted          in doubt
                         in doubt
    IN_DOUBT             in doubt                     in doubt                 in doubt             in doubt
    ABORTED              retry                        retry                    interrupted          interrupted
    STATEMENT            raise it (the connection and the transaction stay as they are)

ELSEWHERE: the node did nothing (not_principal, not_serving, unknown_database).
LOST: the connection dropped or no answer came, so whether the statement ran
is unknown; a transaction that had not committed is rolled back with the
connection. IN_DOUBT: the server logged a commit it could not acknowledge.
ABORTED: the node rolled back our transaction. "Retry" is safe because nothing
of the statement (or of the transaction, which had done nothing yet) remains:
the driver reconnects, to the principal wherever it is, within failover_timeout.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

from mirrorctl.client import ClientError, LoginFailed, Result, ServerError
from mirrorctl.dbapi import errors
from mirrorctl.dbapi import types as dbtypes
from mirrorctl.dbapi.routing import Backoff, PartnerList, RetrySchedule, Target, positive_seconds
from mirrorctl.dbapi.token import Token, token_of
from mirrord.core.types import ProtocolError

READ_WORDS = frozenset({"SELECT", "VALUES", "EXPLAIN"})
ELSEWHERE_CODES = frozenset({"not_principal", "not_serving", "unknown_database"})


# ------------------------------------------------------------------ tokens


def committed_from_status(row: dict) -> bool:
    """sp_transaction_status's row -> True (committed) / False (lost); OperationalError when it cannot tell."""
    status = row.get("status")
    if status == "COMMITTED":
        return True
    if status == "LOST":
        return False
    if status == "NOT_YET":
        raise errors.OperationalError(f"{row.get('node_role')} has not received LSN {row.get('lsn')} yet; ask the principal")
    raise errors.OperationalError(
        f"cannot tell: the log no longer goes back to LSN {row.get('lsn')} (status {status}); "
        "check the transaction's own rows")


# ------------------------------------------------------------------ statements and failures


class Kind(enum.Enum):
    """What a statement does to the transaction state."""

    READ = "read"
    WRITE = "write"  # anything that may change the database, or that we cannot tell
    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"


def statement_kind(sql: str) -> Kind:
    """Classify a statement by its first words (WITH counts as a write: it may be WITH … INSERT)."""
    words = sql.lstrip(" \t\r\n(;").split(None, 2)
    first = words[0].upper().rstrip(";") if words else ""
    if first in READ_WORDS:
        return Kind.READ
    if first == "BEGIN":
        return Kind.BEGIN
    if first in ("COMMIT", "END"):
        return Kind.COMMIT
    if first == "ROLLBACK":
        second = words[1].upper() if len(words) > 1 else ""
        return Kind.WRITE if second == "TO" or (second == "TRANSACTION" and len(words) > 2) else Kind.ROLLBACK
    return Kind.WRITE


class Failure(enum.Enum):
    """How a request failed, as far as the transaction is concerned."""

    ELSEWHERE = "elsewhere"
    LOST = "lost"
    IN_DOUBT = "in_doubt"
    ABORTED = "aborted"
    STATEMENT = "statement"


def classify(exc: BaseException) -> Failure:
    """The Failure of an exception thrown by a Send."""
    if isinstance(exc, ServerError):
        if exc.code in ELSEWHERE_CODES:
            return Failure.ELSEWHERE
        if exc.code == "in_doubt":
            return Failure.IN_DOUBT
        if exc.code == "transaction_aborted":
            return Failure.ABORTED
        return Failure.STATEMENT
    return Failure.LOST  # Unreachable (lost, timed out) or a malformed answer


class Action(enum.Enum):
    """What to do after a failure."""

    RETRY = "retry"
    INTERRUPTED = "interrupted"
    IN_DOUBT = "in_doubt"
    RAISE = "raise"


def decide(failure: Failure, kind: Kind, *, in_transaction: bool, first_in_transaction: bool) -> Action:
    """The table in the module docstring."""
    if failure is Failure.STATEMENT:
        return Action.RAISE
    if failure is Failure.IN_DOUBT:
        return Action.IN_DOUBT
    if kind is Kind.BEGIN:
        return Action.RETRY
    if kind is Kind.COMMIT:
        return Action.IN_DOUBT if failure is Failure.LOST else Action.INTERRUPTED
    if not in_transaction:
        if failure is Failure.LOST and kind is not Kind.READ:
            return Action.IN_DOUBT
        return Action.RETRY
    return Action.RETRY if first_in_transaction else Action.INTERRUPTED


# ------------------------------------------------------------------ I/O operations


@dataclass(frozen=True)
class Connect:
    """Open a client connection to address (replacing any current one)."""

    address: str
    timeout: float


@dataclass(frozen=True)
class Send:
    """Run one statement on the current connection; the outcome is a Result."""

    sql: str
    db: str | None
    params: Any
    timeout: float | None
    many: list | None = None  # executemany: the parameter sets, run in one round trip


@dataclass(frozen=True)
class Disconnect:
    """Close the current connection, if any."""


@dataclass(frozen=True)
class Sleep:
    """Wait before the next round of connection attempts."""

    seconds: float


Op = Connect | Send | Disconnect | Sleep
Steps = Generator[Op, Any, Any]


# ------------------------------------------------------------------ results


@dataclass
class ResultSet:
    """A cursor's view of one statement's answer: rows, description, fetch position."""

    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    rowcount: int = -1
    lastrowid: int | None = None
    position: int = 0
    types: list[str | None] | None = None  # declared column types, when the server reported them

    @classmethod
    def of(cls, result: Result | None) -> "ResultSet":
        """The ResultSet of a server Result (None: a statement with no answer of its own), values converted."""
        if result is None:
            return cls()
        types = getattr(result, "types", None)
        rows = dbtypes.convert_rows([tuple(r) for r in result.rows], types)
        return cls(list(result.columns), rows, result.rowcount, result.lastrowid, types=types)

    @property
    def description(self) -> tuple[tuple, ...] | None:
        """PEP 249 description: (name, type_code, None × 5) per column; None for a statement without columns.

        type_code is the column's declared type ("VARCHAR(20)"), equal to its
        type object (`== STRING`); None for an expression, which has none.
        """
        if not self.columns:
            return None
        types = self.types or [None] * len(self.columns)
        return tuple((name, code, None, None, None, None, None) for name, code in zip(self.columns, types))

    def fetch(self, size: int | None) -> list[tuple]:
        """The next size rows (all remaining when size is None)."""
        end = len(self.rows) if size is None else min(len(self.rows), self.position + max(size, 0))
        chunk, self.position = self.rows[self.position:end], end
        return chunk


class ConnectionBase:
    """What the blocking and the asyncio connection share: the read-only views of their Driver."""

    _driver: "Driver"

    @property
    def last_token(self) -> "Token | None":
        """The commit token of the last transaction this connection committed that changed the database."""
        return self._driver.last_token

    @property
    def principal(self) -> str | None:
        """The client address of the partner this connection talks to now."""
        return self._driver.address

    @property
    def partners(self) -> list[str]:
        """Every partner address known: the URL's, then failover partners learned from the principal."""
        return list(self._driver.partners.known)

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the principal."""
        return self._driver.in_transaction


class CursorBase:
    """What the blocking and the asyncio cursor share: the last statement's answer and its PEP 249 attributes."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.arraysize = 1
        self._results = ResultSet()
        self._closed = False

    @property
    def description(self) -> tuple[tuple, ...] | None:
        """(name, None × 6) per column of the last statement's rows; None if it returned no columns."""
        return self._results.description

    @property
    def rowcount(self) -> int:
        """Rows changed by the last INSERT/UPDATE/DELETE; -1 when not known (SELECT, DDL)."""
        return self._results.rowcount

    @property
    def lastrowid(self) -> int | None:
        """rowid of the row the last INSERT added, else None."""
        return self._results.lastrowid


# ------------------------------------------------------------------ the driver


@dataclass
class Settings:
    """A connection's settings."""

    failover_timeout: float = 30.0
    connect_timeout: float = 5.0
    query_timeout: float | None = 30.0
    autocommit: bool = False


UNSET: Any = object()


def settings_from(url_options: dict[str, float], failover_timeout: Any, connect_timeout: Any,
                  query_timeout: Any, autocommit: bool) -> Settings:
    """Settings from keyword arguments (which win) and the URL's options; InterfaceError if invalid."""
    base = Settings()

    def pick(name: str, given: Any, default: float | None) -> float | None:
        if given is UNSET:
            return url_options.get(name, default)
        if given is None and name == "query_timeout":
            return None  # wait for answers without limit
        return positive_seconds(name, given)

    return Settings(
        failover_timeout=pick("failover_timeout", failover_timeout, base.failover_timeout),
        connect_timeout=pick("connect_timeout", connect_timeout, base.connect_timeout),
        query_timeout=pick("query_timeout", query_timeout, base.query_timeout),
        autocommit=bool(autocommit),
    )


def wire_params(params: Any) -> list | dict | None:
    """Parameters as the wire carries them: a list (qmark) or a dict (named), each value adapted (types.adapt)."""
    if params is None:
        return None
    if isinstance(params, (str, bytes)):
        raise errors.ProgrammingError("parameters must be a sequence or a mapping, not a string")
    try:
        if isinstance(params, dict) or (not isinstance(params, Sequence) and hasattr(params, "keys")):
            return {key: dbtypes.adapt(params[key]) for key in params.keys()}
        if isinstance(params, Sequence):
            return [dbtypes.adapt(value) for value in params]
    except dbtypes.OutOfRange as exc:
        raise errors.DataError(str(exc)) from None
    except dbtypes.Unsupported as exc:
        raise errors.ProgrammingError(str(exc)) from None
    raise errors.ProgrammingError(f"parameters must be a sequence or a mapping, got {type(params).__name__}")


def wire_many(seq_of_params: Any) -> list:
    """executemany's parameter sets as the wire carries them (every set checked before anything is sent)."""
    if isinstance(seq_of_params, (str, bytes)) or not hasattr(seq_of_params, "__iter__"):
        raise errors.ProgrammingError("executemany needs a sequence of parameter sequences or mappings")
    many = [wire_params(params) for params in seq_of_params]
    if any(params is None for params in many):
        raise errors.ProgrammingError("executemany: each parameter set must be a sequence or a mapping, not None")
    return many


class Driver:
    """One logical connection to a mirrored database: transaction state, where the principal is, retries."""

    def __init__(self, target: Target, settings: Settings, clock: Callable[[], float],
                 rand: Callable[[], float] = random.random) -> None:
        self.target = target
        self.random = rand  # jitter of the backoff between connection rounds
        self.database = target.database
        self.settings = settings
        self.partners = PartnerList(target.partners)
        self.schedule = RetrySchedule(settings.failover_timeout)
        self.clock = clock
        self.address: str | None = None  # where the current connection goes
        self.in_transaction = False
        self.statements_in_transaction = 0
        self.last_token: Token | None = None
        self.interrupted: str | None = None  # why the open transaction was lost, until the app hears it
        self.closed = False
        self._avoided: list[str] = []  # addresses that just failed a statement: tried last until one serves

    # ---------------------------------------------------------------- statements

    def open(self) -> Steps:
        """Find the principal now (connect() does, so a bad URL or no principal shows at once)."""
        self._check_open()
        if self.address is None:
            yield from self._connect(self.schedule.start(self.clock()))

    def execute(self, sql: str, params: Any = None, many: list | None = None) -> Steps:
        """Run one statement in the connection's transaction (once per parameter set with many); returns a ResultSet."""
        self._check_open()
        kind = statement_kind(sql)
        if many is not None:
            if kind is not Kind.READ and kind is not Kind.WRITE:
                raise errors.ProgrammingError("executemany runs a statement, not BEGIN, COMMIT or ROLLBACK")
            kind = Kind.WRITE  # a batch is never re-sent after a lost answer: part of it may have run
        if kind is Kind.COMMIT:
            yield from self.commit()
            return ResultSet()
        if kind is Kind.ROLLBACK:
            yield from self.rollback()
            return ResultSet()
        self._raise_if_interrupted()
        if kind is Kind.BEGIN:
            if self.in_transaction:
                raise errors.ProgrammingError("a transaction is already open on this connection; commit() or rollback() first")
            yield from self._begin(sql)
            return ResultSet()
        implicit = not self.settings.autocommit or self.in_transaction
        result = yield from self._statement(sql, params, kind, transactional=implicit, many=many)
        return ResultSet.of(result)

    def commit(self) -> Steps:
        """COMMIT the open transaction (nothing to do without one)."""
        self._check_open()
        self._raise_if_interrupted()
        if not self.in_transaction:
            return None
        try:
            result = yield Send("COMMIT", self.database, None, self.settings.query_timeout)
        except (ClientError, ProtocolError) as exc:
            yield from self._after_failure(exc, Kind.COMMIT)
            raise AssertionError("unreachable: _after_failure raises for a COMMIT")  # pragma: no cover
        self._end_transaction()
        self._note_commit(result)
        return None

    def rollback(self) -> Steps:
        """ROLLBACK the open transaction; a lost connection has rolled it back already."""
        self._check_open()
        self.interrupted = None  # the application knows now: nothing of the transaction stands
        if not self.in_transaction:
            return None
        try:
            yield Send("ROLLBACK", self.database, None, self.settings.query_timeout)
        except (ClientError, ProtocolError) as exc:
            if classify(exc) is not Failure.STATEMENT:
                yield from self._drop()
        self._end_transaction()
        self.interrupted = None
        return None

    def transaction_committed(self, token: Token) -> Steps:
        """Ask the principal whether the commit with this token survived: True, False, or OperationalError."""
        self._check_open()
        if not isinstance(token, Token):
            raise errors.ProgrammingError(f"expected a Token, got {type(token).__name__}")
        result = yield from self._statement(token.status_sql(self.database), None, Kind.READ, transactional=False)
        rows = result.as_dicts()
        if len(rows) != 1:
            raise errors.InterfaceError(f"sp_transaction_status answered {len(rows)} rows, expected 1")
        return committed_from_status(rows[0])

    def close(self) -> Steps:
        """Close the connection; an open transaction is rolled back by the server."""
        if not self.closed:
            self.closed = True
            self.in_transaction = False
            yield Disconnect()

    # ---------------------------------------------------------------- the retry loop

    def _statement(self, sql: str, params: Any, kind: Kind, *, transactional: bool, many: list | None = None) -> Steps:
        """Send one statement, reconnecting and retrying while the decision table allows."""
        backoff: Backoff | None = None
        while True:
            if self.address is None:
                backoff = backoff or self.schedule.start(self.clock())
                yield from self._connect(backoff)
            if transactional and not self.in_transaction:
                backoff = yield from self._begin("BEGIN", backoff)
            first = self.statements_in_transaction == 0
            try:
                result = yield Send(sql, self.database, params, self.settings.query_timeout, many)
            except (ClientError, ProtocolError) as exc:
                backoff = backoff or self.schedule.start(self.clock())
                yield from self._after_failure(exc, kind, first=first, backoff=backoff)
                continue
            if self.in_transaction:
                self.statements_in_transaction += 1
            else:
                self._note_commit(result)
            return result

    def _begin(self, sql: str, backoff: Backoff | None = None) -> Generator[Op, Any, Backoff | None]:
        """Open a transaction on the principal; BEGIN changes nothing, so any failure is retried.

        backoff: the running retries of the statement that needs the transaction (one deadline for both).
        """
        while True:
            if self.address is None:
                backoff = backoff or self.schedule.start(self.clock())
                yield from self._connect(backoff)
            try:
                yield Send(sql, self.database, None, self.settings.query_timeout)
            except (ClientError, ProtocolError) as exc:
                backoff = backoff or self.schedule.start(self.clock())
                yield from self._after_failure(exc, Kind.BEGIN, first=True, backoff=backoff)
                continue
            self.in_transaction = True
            self.statements_in_transaction = 0
            return backoff

    def _after_failure(self, exc: BaseException, kind: Kind, *, first: bool = False, backoff: Backoff | None = None) -> Steps:
        """Act on a failed Send: return to retry, raise otherwise (see decide)."""
        failure = classify(exc)
        action = decide(failure, kind, in_transaction=self.in_transaction, first_in_transaction=first)
        if action is Action.RAISE:
            raise self._mapped(exc) from exc
        where = self.address
        if isinstance(exc, ServerError):
            self.partners.learn_principal(exc.principal)
        yield from self._drop()
        self.in_transaction, self.statements_in_transaction = False, 0
        self.interrupted = None
        if action is Action.IN_DOUBT:
            token = token_of(*exc.token) if isinstance(exc, ServerError) and exc.token else None
            raise errors.InDoubt(_in_doubt_message(where, exc, token), token=token,
                                 code=getattr(exc, "code", None)) from exc
        if action is Action.INTERRUPTED:
            raise errors.TransactionInterrupted(
                f"the transaction was rolled back, nothing of it committed ({where}: {_reason(exc)}); "
                "the next statement starts a new transaction on the principal", code=getattr(exc, "code", None),
            ) from exc
        if where is not None:
            self.partners.lost(where)
            if where not in self._avoided:
                self._avoided.append(where)
        delay = backoff.delay(self.clock(), self.random()) if backoff is not None else None
        if delay is None:
            raise errors.NoPrincipal(
                f"no partner served {self.database} within failover_timeout ({self.settings.failover_timeout:g} s); "
                f"last: {where}: {_reason(exc)}", code=getattr(exc, "code", None)) from exc
        yield Sleep(delay)

    # ---------------------------------------------------------------- finding the principal

    def _connect(self, backoff: Backoff) -> Steps:
        """Connect to the partner that serves the database, in rounds, until the backoff runs out."""
        while True:
            reasons: dict[str, str] = {}
            while (address := self._next_candidate(reasons)) is not None:
                reasons[address] = yield from self._try_partner(address, backoff)
                if reasons[address] == "":
                    self._avoided.clear()
                    return None
            if reasons and all(r.startswith("has no database") for r in reasons.values()):
                raise errors.ProgrammingError(f"no partner has a database {self.database}: " + _listing(reasons))
            delay = backoff.delay(self.clock(), self.random())
            if delay is None:
                raise errors.NoPrincipal(
                    f"no partner served {self.database} within failover_timeout "
                    f"({self.settings.failover_timeout:g} s): " + _listing(reasons))
            yield Sleep(delay)

    def _next_candidate(self, tried: dict[str, str]) -> str | None:
        """The next address to try in this round: learned hints first, recently failed ones last."""
        order = self.partners.candidates()
        order = [a for a in order if a not in self._avoided] + [a for a in order if a in self._avoided]
        return next((a for a in order if a not in tried), None)

    def _try_partner(self, address: str, backoff: Backoff) -> Generator[Op, Any, str]:
        """Connect and ask for the database's role; '' if it serves it, else why not."""
        timeout = max(0.05, min(self.settings.connect_timeout, backoff.remaining(self.clock()) or 0.05))
        try:
            yield Connect(address, timeout)
            self.address = address
            result = yield Send(_probe_sql(self.database), None, None, timeout)
        except LoginFailed as exc:  # the credentials, not the partner: trying others would only repeat it
            yield from self._drop()
            raise errors.OperationalError(f"{address}: {exc.message}", code=exc.code) from None
        except (ClientError, ProtocolError) as exc:
            yield from self._drop()
            self.partners.lost(address)
            return _reason(exc) or "no answer"
        rows = result.as_dicts() if isinstance(result, Result) else []
        if not rows:
            yield from self._drop()
            return f"has no database {self.database}"
        role, status, partner = rows[0].get("role"), rows[0].get("status"), rows[0].get("partner_address")
        if role == "PRINCIPAL" or (role == "NONE" and status == "ONLINE"):
            self.partners.served(address)
            self.partners.learn_partner(partner)
            return ""
        yield from self._drop()
        if role == "MIRROR":
            self.partners.learn_principal(partner)
            return f"is the mirror (principal: {partner or 'unknown'})"
        return f"is {role} {status}"

    # ---------------------------------------------------------------- helpers

    def _drop(self) -> Steps:
        """Close the connection; a transaction still open is lost with it."""
        if self.address is None:
            return None
        self.address = None
        if self.in_transaction and self.statements_in_transaction:
            self.interrupted = "the connection to the principal was closed during the transaction"
        self.in_transaction, self.statements_in_transaction = False, 0
        yield Disconnect()

    def _end_transaction(self) -> None:
        self.in_transaction = False
        self.statements_in_transaction = 0

    def _note_commit(self, result: Any) -> None:
        if isinstance(result, Result) and (token := token_of(result.lsn, result.role_sequence, result.seq)) is not None:
            self.last_token = token

    def _mapped(self, exc: BaseException) -> errors.Error:
        if isinstance(exc, ServerError):
            return errors.from_server(exc.code, exc.message, exc.principal)
        return errors.OperationalError(_reason(exc))

    def _check_open(self) -> None:
        if self.closed:
            raise errors.InterfaceError("the connection is closed")

    def _raise_if_interrupted(self) -> None:
        if self.interrupted is not None:
            why, self.interrupted = self.interrupted, None
            raise errors.TransactionInterrupted(
                f"the transaction was rolled back, nothing of it committed ({why}); "
                "the next statement starts a new transaction on the principal")


def _probe_sql(database: str) -> str:
    quoted = database.replace("'", "''")
    return f"SELECT role, status, partner_address FROM sys.database_mirroring WHERE database = '{quoted}'"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ServerError):
        return f"[{exc.code}] {exc.message}"
    return str(exc) or type(exc).__name__


def _listing(reasons: dict[str, str]) -> str:
    return "; ".join(f"{address} {why}" for address, why in reasons.items()) or "no partner to try"


def _in_doubt_message(where: str | None, exc: BaseException, token: Token | None) -> str:
    how = (f"its token is {token}: connection.transaction_committed(token) tells whether it committed"
           if token is not None else
           "no commit token came back: check for the transaction's own rows (e.g. a unique key it wrote)")
    return f"the outcome of the commit is in doubt ({where}: {_reason(exc)}); {how}"




def pump(steps: Steps, perform: Callable[[Op], Any]) -> Any:
    """Run a driver generator with a blocking perform(op); return its value.

    A ClientError or ProtocolError from perform is thrown into the generator
    at the yield, where the driver decides what it means.
    """
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        try:
            reply = perform(op)
        except (ClientError, ProtocolError) as exc:
            error = exc
