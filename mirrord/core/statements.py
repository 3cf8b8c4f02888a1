"""The T-SQL-shaped administration dialect: text in, one frozen statement out.

How it works: a small regex tokenizer (words, [bracketed] identifiers,
'single-quoted' strings with '' escapes, numbers, punctuation; `--` and `/* */`
comments count as whitespace) feeds a recursive-descent parser. `parse` first
looks at the leading tokens only: a statement that does not start like one of
ours (`ALTER DATABASE`, `CREATE DATABASE`, `DROP DATABASE`, `ALTER ENDPOINT`,
`BACKUP`, `RESTORE`, `USE`, `SET STATEMENT_TIMEOUT`, `SELECT ... FROM sys.<view>`, `EXEC`, `DBCC`) is returned untouched
as `Sql` for SQLite, without tokenizing the rest, because big INSERTs pass here.

Why so strict once a statement is ours: an administrative statement that is
half understood is worse than one refused, so every deviation raises
`StatementSyntaxError` saying what was read so far, what was expected and what
was found. Database names become directory names, hence the narrow charset,
inside brackets too. Keywords are case-insensitive; identifiers keep their case,
except system view and column names, which are lower-cased as SQL Server's are.

Every statement renders back to canonical text with `to_sql()`, and
`parse(s.to_sql()) == s` (the tests check it on generated statements).
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, NoReturn

from mirrord.core.alerts import ALERTS, alert_refusal
from mirrord.core.names import DB_NAME, DB_NAME_RULE
from mirrord.core.redo_queue import MAX_REDO_QUEUE_MB, MIN_REDO_QUEUE_MB, UNLIMITED, limit_refusal
from mirrord.core.txn import REMEMBERED_TEXT, REMEMBERED_TEXTS, lock_timeout_refusal
from mirrord.core.types import Endpoint, Safety, StatementSyntaxError
from mirrord.core.values import INT64_MAX, check_int64

IDENTIFIER = DB_NAME  # the one rule for names (mirrord.core.names); endpoints and columns use it too
PARTNER_ACTIONS = ("FAILOVER", "FORCE_SERVICE_ALLOW_DATA_LOSS", "OFF", "RESUME", "SUSPEND")
SYSTEM_VIEWS = ("database_mirroring", "database_mirroring_witnesses", "database_mirroring_events",
                "dm_db_mirroring_auto_page_repair", "database_snapshots")
MIN_TIMEOUT, MAX_TIMEOUT = 1, 3600
_HOST = re.compile(r"[A-Za-z0-9._:-]+")
# Column names that cannot be written bare in a select list.
_RESERVED_COLUMNS = frozenset({"FROM"})


# ---------------------------------------------------------------- statements


def _quote(text: str) -> str:
    """Render a string literal, doubling quotes."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """Render an identifier, bracketed when it could be read as a keyword."""
    return f"[{name}]" if name.upper() in _RESERVED_COLUMNS else name


@dataclass(frozen=True)
class CreateDatabase:
    """CREATE DATABASE db"""

    db: str

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"CREATE DATABASE {self.db}"


@dataclass(frozen=True)
class CreateSnapshot:
    """CREATE DATABASE name AS SNAPSHOT OF db (on the mirror of db: a read-only view as of its redo LSN)"""

    name: str
    db: str  # the source database: the rules judge its session

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"CREATE DATABASE {self.name} AS SNAPSHOT OF {self.db}"


@dataclass(frozen=True)
class DropDatabase:
    """DROP DATABASE db"""

    db: str

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"DROP DATABASE {self.db}"


@dataclass(frozen=True)
class SetPartner:
    """ALTER DATABASE db SET PARTNER = 'tcp://host:port'"""

    db: str
    endpoint: Endpoint

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"ALTER DATABASE {self.db} SET PARTNER = {_quote(str(self.endpoint))}"


@dataclass(frozen=True)
class PartnerAction:
    """ALTER DATABASE db SET PARTNER { FAILOVER | FORCE_SERVICE_ALLOW_DATA_LOSS | OFF | RESUME | SUSPEND }"""

    db: str
    action: str

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"ALTER DATABASE {self.db} SET PARTNER {self.action}"


@dataclass(frozen=True)
class SetSafety:
    """ALTER DATABASE db SET PARTNER SAFETY { FULL | OFF }"""

    db: str
    safety: Safety

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"ALTER DATABASE {self.db} SET PARTNER SAFETY {self.safety.value}"


@dataclass(frozen=True)
class SetTimeout:
    """ALTER DATABASE db SET PARTNER TIMEOUT seconds"""

    db: str
    seconds: int

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"ALTER DATABASE {self.db} SET PARTNER TIMEOUT {self.seconds}"


@dataclass(frozen=True)
class SetRedoQueue:
    """ALTER DATABASE db SET PARTNER REDO_QUEUE { n MB | UNLIMITED } (mb 0: UNLIMITED; core.redo_queue)"""

    db: str
    mb: int

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        limit = "UNLIMITED" if self.mb == UNLIMITED else f"{self.mb} MB"
        return f"ALTER DATABASE {self.db} SET PARTNER REDO_QUEUE {limit}"


@dataclass(frozen=True)
class SetWitness:
    """ALTER DATABASE db SET WITNESS = 'tcp://host:port' | SET WITNESS OFF (endpoint None)"""

    db: str
    endpoint: Endpoint | None

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        target = "OFF" if self.endpoint is None else f"= {_quote(str(self.endpoint))}"
        return f"ALTER DATABASE {self.db} SET WITNESS {target}"


@dataclass(frozen=True)
class AlterEndpoint:
    """ALTER ENDPOINT name STATE = { STARTED | STOPPED }"""

    name: str
    started: bool

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"ALTER ENDPOINT {self.name} STATE = {'STARTED' if self.started else 'STOPPED'}"


@dataclass(frozen=True)
class BackupDatabase:
    """BACKUP DATABASE db TO DISK = 'path'"""

    db: str
    path: str

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"BACKUP DATABASE {self.db} TO DISK = {_quote(self.path)}"


@dataclass(frozen=True)
class RestoreDatabase:
    """RESTORE DATABASE db [FROM DISK = 'path'] WITH { NORECOVERY | RECOVERY }; no path: bring online."""

    db: str
    path: str | None
    recovery: bool

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        source = "" if self.path is None else f" FROM DISK = {_quote(self.path)}"
        mode = "RECOVERY" if self.recovery else "NORECOVERY"
        return f"RESTORE DATABASE {self.db}{source} WITH {mode}"


@dataclass(frozen=True)
class SelectSystemView:
    """SELECT * | col, ... FROM sys.view [WHERE database = 'x']; columns None means *."""

    view: str
    columns: tuple[str, ...] | None
    database: str | None

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        cols = "*" if self.columns is None else ", ".join(map(_ident, self.columns))
        where = "" if self.database is None else f" WHERE database = {_quote(self.database)}"
        return f"SELECT {cols} FROM sys.{self.view}{where}"


@dataclass(frozen=True)
class CheckMirror:
    """DBCC CHECKMIRROR ('db'): compare principal and mirror page by page at one LSN (core.checkmirror)."""

    db: str

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"DBCC CHECKMIRROR ({_quote(self.db)})"


@dataclass(frozen=True)
class UseDatabase:
    """USE db"""

    db: str

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"USE {self.db}"


@dataclass(frozen=True)
class TransactionStatus:
    """EXEC sp_transaction_status 'db', lsn, role_sequence: did a commit with this token survive?"""

    db: str
    lsn: int
    role_sequence: int

    def to_sql(self) -> str:
        return f"EXEC sp_transaction_status {_quote(self.db)}, {self.lsn}, {self.role_sequence}"


@dataclass(frozen=True)
class ChangeAlert:
    """EXEC sp_dbmmonitorchangealert 'db', alert_id, threshold, enabled: set a monitor warning threshold."""

    db: str
    alert_id: int
    threshold: int
    enabled: bool

    def to_sql(self) -> str:
        return f"EXEC sp_dbmmonitorchangealert {_quote(self.db)}, {self.alert_id}, {self.threshold}, {int(self.enabled)}"


@dataclass(frozen=True)
class HelpAlert:
    """EXEC sp_dbmmonitorhelpalert 'db' [, alert_id]: show the warning thresholds."""

    db: str
    alert_id: int | None = None

    def to_sql(self) -> str:
        which = "" if self.alert_id is None else f", {self.alert_id}"
        return f"EXEC sp_dbmmonitorhelpalert {_quote(self.db)}{which}"


@dataclass(frozen=True)
class DropAlert:
    """EXEC sp_dbmmonitordropalert 'db' [, alert_id]: remove one or every warning threshold."""

    db: str
    alert_id: int | None = None

    def to_sql(self) -> str:
        which = "" if self.alert_id is None else f", {self.alert_id}"
        return f"EXEC sp_dbmmonitordropalert {_quote(self.db)}{which}"


@dataclass(frozen=True)
class SetStatementTimeout:
    """SET STATEMENT_TIMEOUT ms: this connection's statements are interrupted after ms (0: the node's default)."""

    ms: int

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"SET STATEMENT_TIMEOUT {self.ms}"


@dataclass(frozen=True)
class SetLockTimeout:
    """SET LOCK_TIMEOUT ms: how long this connection's writes wait for a database's write lock (-1 forever, 0 not at all)."""

    ms: int

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        return f"SET LOCK_TIMEOUT {self.ms}"


@dataclass(frozen=True)
class SpWho:
    """EXEC sp_who [ 'login' | spid ]: client sessions, and who holds and waits for each database's write lock."""

    login: str | None = None
    spid: int | None = None

    def to_sql(self) -> str:
        """Canonical text of this statement."""
        arg = f" {_quote(self.login)}" if self.login is not None else f" {self.spid}" if self.spid is not None else ""
        return f"EXEC sp_who{arg}"


@dataclass(frozen=True)
class Sql:
    """Anything else: SQLite SQL, passed on untouched."""

    text: str

    def to_sql(self) -> str:
        """The text as given."""
        return self.text


Statement = (
    CreateDatabase | CreateSnapshot | DropDatabase | SetPartner | PartnerAction | SetSafety | SetTimeout | SetRedoQueue
    | SetWitness | AlterEndpoint | BackupDatabase | RestoreDatabase | SelectSystemView
    | UseDatabase | TransactionStatus | ChangeAlert | HelpAlert | DropAlert | SetStatementTimeout | CheckMirror
    | SetLockTimeout | SpWho | Sql
)


# ----------------------------------------------------------------- tokenizer


class _Token(NamedTuple):
    kind: str  # word, bracket, string, number, punct, bad, end
    text: str

    def describe(self) -> str:
        """How an error message shows this token."""
        if self.kind == "end":
            return "end of statement"
        shown = self.text if len(self.text) <= 40 else self.text[:40] + "..."
        if self.kind == "bad":
            return f"unterminated {shown}"
        if self.kind == "string":
            return f"string {shown}"
        return f"'{shown}'"


_END = _Token("end", "")
# Order matters: strings before words (N'x'), good forms before their
# unterminated ("bad") forms, a single character last.
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
    |(?P<string>[Nn]?'(?:[^']|'')*')
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<bracket>\[[^\]]*\])
    |(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<bad>[Nn]?'.*|\[.*|/\*.*)
    |(?P<punct>.)
    """,
    re.S | re.X,
)


def _tokens(text: str) -> Iterator[_Token]:
    """Tokens of text, lazily, then an endless run of end tokens."""
    for match in _TOKEN.finditer(text):
        if match.lastgroup != "ws":
            yield _Token(match.lastgroup, match.group())
    while True:
        yield _END


def _is_word(tok: _Token, *words: str) -> bool:
    """True when tok is one of the given keywords (case-insensitive)."""
    return tok.kind == "word" and tok.text.upper() in words


def _name_of(tok: _Token) -> str | None:
    """The identifier a word or bracket token spells, or None."""
    if tok.kind == "word":
        return tok.text
    if tok.kind == "bracket":
        return tok.text[1:-1]
    return None


# -------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over lazy tokens, remembering what it read for errors."""

    def __init__(self, text: str) -> None:
        self._toks = _tokens(text)
        self._tok = next(self._toks)
        self._seen: list[str] = []

    def peek(self) -> _Token:
        """The current token."""
        return self._tok

    def advance(self, shown: str, glue: bool = False) -> _Token:
        """Consume the current token; `shown` is how error contexts print it (glued: no space)."""
        tok, self._tok = self._tok, next(self._toks)
        if glue and self._seen:
            self._seen[-1] += shown
        else:
            self._seen.append(shown)
        return tok

    def fail(self, expected: str) -> NoReturn:
        """Raise a syntax error: what was read, what was expected, what was found."""
        self.refuse(f"expected {expected}; found {self._tok.describe()}")

    def refuse(self, reason: str) -> NoReturn:
        """Raise a syntax error with the context read so far."""
        raise StatementSyntaxError(f"{' '.join(self._seen)}: {reason}")

    def keyword(self, *choices: str, expected: str | None = None) -> str:
        """Consume one of the keywords; return it upper-cased (a near miss is named in the error)."""
        if not _is_word(self._tok, *choices):
            hint = _nearest(self._tok, choices)
            self.fail((expected or _one_of(choices)) + (f" (did you mean {hint}?)" if hint else ""))
        word = self._tok.text.upper()
        self.advance(word)
        return word

    def accept(self, word: str) -> bool:
        """Consume the keyword if it is next."""
        if _is_word(self._tok, word):
            self.advance(word)
            return True
        return False

    def punct(self, char: str, expected: str | None = None) -> None:
        """Consume a punctuation character."""
        if self._tok != _Token("punct", char):
            self.fail(expected or char)
        self.advance(char)

    def identifier(self, what: str) -> str:
        """Consume an identifier (bare or bracketed) with our charset."""
        name = _name_of(self._tok)
        if name is None:
            self.fail(what)
        if not IDENTIFIER.fullmatch(name):
            self.fail(f"{what} of {DB_NAME_RULE}")
        self.advance(self._tok.text)
        return name

    def string(self, what: str, secret: bool = False) -> str:
        """Consume a string literal; return its value (a secret one shows as '***' in errors)."""
        tok = self._tok
        if tok.kind != "string":
            self.fail(what)
        self.advance("'***'" if secret else tok.text)
        body = tok.text[2:-1] if tok.text[0] in "Nn" else tok.text[1:-1]
        return body.replace("''", "'")

    def integer(self, what: str) -> int:
        """Consume a whole number of at most 64 bits (DataError beyond: never a 4,301-digit int())."""
        tok = self._tok
        if tok.kind != "number" or not (tok.text.isascii() and tok.text.isdigit()):
            self.fail(what)
        shown = tok.text if len(tok.text) <= 40 else f"a {len(tok.text)}-digit number"
        if len(tok.text.lstrip("0")) > 19:
            check_int64(INT64_MAX + 1, f"{what} ({shown})")
        value = check_int64(int(tok.text), f"{what} ({shown})")
        self.advance(tok.text)
        return value

    def end(self) -> None:
        """Accept an optional ';' and require the end of the text."""
        if self._tok == _Token("punct", ";"):
            self.advance(";")
        if self._tok.kind != "end":
            self.fail("end of statement")


def _nearest(tok: _Token, keywords: tuple[str, ...] | list[str]) -> str | None:
    """The keyword a mistyped word most likely meant (DATABSE -> DATABASE), or None."""
    if tok.kind != "word":
        return None
    close = difflib.get_close_matches(tok.text.upper(), list(keywords), n=1, cutoff=0.75)
    return close[0] if close else None


def _one_of(choices: tuple[str, ...]) -> str:
    """'A, B or C'."""
    if len(choices) == 1:
        return choices[0]
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _endpoint(p: _Parser) -> Endpoint:
    """Consume 'tcp://host:port'."""
    text = p.string("'tcp://host:port'")
    if not text.lower().startswith("tcp://"):
        p.refuse(f"endpoint {_quote(text)} must be of the form 'tcp://host:port'")
    try:
        endpoint = Endpoint.parse(text)
    except ValueError as exc:
        p.refuse(str(exc))  # already quotes the text
    if not _HOST.fullmatch(endpoint.host):
        p.refuse(f"bad endpoint {_quote(text)}: host must be a name or an IP address")
    return endpoint


def _path(p: _Parser) -> str:
    """Consume a non-empty file path string."""
    path = p.string("'path'")
    if not path or "\x00" in path:
        p.refuse("the path must be non-empty and contain no NUL character")
    return path


# ------------------------------------------------------------ statement rules


def _partner(p: _Parser, db: str) -> Statement:
    """After ALTER DATABASE db SET PARTNER."""
    tok = p.peek()
    if tok == _Token("punct", "="):
        p.advance("=")
        return SetPartner(db, _endpoint(p))
    expected = "= 'tcp://host:port', " + ", ".join(PARTNER_ACTIONS) + ", SAFETY, TIMEOUT or REDO_QUEUE"
    word = p.keyword(*PARTNER_ACTIONS, "SAFETY", "TIMEOUT", "REDO_QUEUE", expected=expected)
    if word == "SAFETY":
        return SetSafety(db, Safety(p.keyword("FULL", "OFF")))
    if word == "TIMEOUT":
        return SetTimeout(db, _timeout(p))
    if word == "REDO_QUEUE":
        return SetRedoQueue(db, _redo_queue(p))
    return PartnerAction(db, word)


def _timeout(p: _Parser) -> int:
    """Consume the PARTNER TIMEOUT seconds and check their range."""
    seconds = p.integer(f"whole seconds {MIN_TIMEOUT}..{MAX_TIMEOUT}")
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        p.refuse(f"timeout must be {MIN_TIMEOUT}..{MAX_TIMEOUT} seconds; found {seconds}")
    return seconds


def _redo_queue(p: _Parser) -> int:
    """Consume [=] { n MB | UNLIMITED } after REDO_QUEUE; return the MB, 0 for UNLIMITED."""
    if p.peek() == _Token("punct", "="):
        p.advance("=")
    if p.accept("UNLIMITED"):
        return UNLIMITED
    mb = p.integer(f"a size in MB {MIN_REDO_QUEUE_MB}..{MAX_REDO_QUEUE_MB}, or UNLIMITED")
    p.keyword("MB", expected="MB (the redo queue limit is given in megabytes)")
    if (why := limit_refusal(mb)) is not None:
        p.refuse(why)
    return mb


def _witness(p: _Parser, db: str) -> SetWitness:
    """After ALTER DATABASE db SET WITNESS."""
    if p.accept("OFF"):
        return SetWitness(db, None)
    p.punct("=", expected="= 'tcp://host:port' or OFF")
    return SetWitness(db, _endpoint(p))


def _alter_database(p: _Parser) -> Statement:
    """ALTER DATABASE db SET { PARTNER ... | WITNESS ... }."""
    db = p.identifier("a database name")
    p.keyword("SET")
    if p.keyword("PARTNER", "WITNESS") == "PARTNER":
        return _partner(p, db)
    return _witness(p, db)


def _alter_endpoint(p: _Parser) -> "AlterEndpoint | EndpointSecurity":
    """ALTER ENDPOINT name STATE = STARTED | STOPPED, or … FOR DATABASE_MIRRORING (…)."""
    name = p.identifier("an endpoint name")
    if p.keyword("STATE", "FOR") == "FOR":
        return _endpoint_security(p, name)
    p.punct("=")
    return AlterEndpoint(name, p.keyword("STARTED", "STOPPED") == "STARTED")


def _backup(p: _Parser) -> BackupDatabase:
    """BACKUP DATABASE db TO DISK = 'path'."""
    p.keyword("DATABASE")
    db = p.identifier("a database name")
    p.keyword("TO")
    p.keyword("DISK")
    p.punct("=")
    return BackupDatabase(db, _path(p))


def _restore(p: _Parser) -> RestoreDatabase:
    """RESTORE DATABASE db [FROM DISK = 'path'] WITH NORECOVERY | RECOVERY."""
    p.keyword("DATABASE")
    db = p.identifier("a database name")
    path = None
    if _is_word(p.peek(), "FROM"):
        p.advance("FROM")
        p.keyword("DISK")
        p.punct("=")
        path = _path(p)
        p.keyword("WITH", expected="WITH NORECOVERY or WITH RECOVERY (WITH is required: it "
                  "says whether the copy stays RESTORING or comes online)")
        return RestoreDatabase(db, path, p.keyword("NORECOVERY", "RECOVERY") == "RECOVERY")
    p.keyword("WITH", expected="FROM DISK = 'path' or WITH RECOVERY")
    p.keyword("RECOVERY", expected="RECOVERY (NORECOVERY needs FROM DISK = 'path')")
    return RestoreDatabase(db, None, True)


def _select(p: _Parser) -> SelectSystemView:
    """SELECT * | col, ... FROM sys.view [WHERE database = 'x']."""
    columns = _select_list(p)
    p.keyword("FROM")
    if (_name_of(p.peek()) or "").lower() != "sys":
        p.fail("sys")
    p.advance("sys")
    if p.peek() != _Token("punct", "."):
        p.fail(".")
    p.advance(".", glue=True)
    view = (_name_of(p.peek()) or "").lower()
    if view not in SYSTEM_VIEWS:
        p.fail("a system view: " + _one_of(SYSTEM_VIEWS))
    p.advance(view, glue=True)
    return SelectSystemView(view, columns, _where(p))


def _select_list(p: _Parser) -> tuple[str, ...] | None:
    """'*' (None) or a comma-separated list of column names, lower-cased."""
    if p.peek() == _Token("punct", "*"):
        p.advance("*")
        return None
    if _is_word(p.peek(), "FROM"):
        p.fail("* or column names")
    columns = [p.identifier("* or a column name").lower()]
    while p.peek() == _Token("punct", ","):
        p.advance(",")
        columns.append(p.identifier("a column name").lower())
    return tuple(columns)


def _where(p: _Parser) -> str | None:
    """Optional WHERE database = 'x' (or database_name); then the end."""
    database = None
    if p.accept("WHERE"):
        column = (_name_of(p.peek()) or "").lower()
        if column not in ("database", "database_name"):
            p.fail("database or database_name")
        p.advance(column)
        p.punct("=")
        database = p.string("'database name'")
        if not IDENTIFIER.fullmatch(database):
            p.refuse(f"{_quote(database)} is not a valid database name")
    p.end()
    return database


DBCC_COMMANDS = ("CHECKMIRROR",)


def _dbcc(p: _Parser) -> CheckMirror:
    """DBCC CHECKMIRROR ( 'db' | db )."""
    p.keyword(*DBCC_COMMANDS, expected="a DBCC command: " + _one_of(DBCC_COMMANDS))
    p.punct("(")
    db = p.string("'database name'") if p.peek().kind == "string" else p.identifier("a database name")
    if not IDENTIFIER.fullmatch(db):
        p.refuse(f"{_quote(db)} is not a valid database name")
    p.punct(")")
    return CheckMirror(db)


PROCEDURES = ("sp_transaction_status", "sp_dbmmonitorchangealert", "sp_dbmmonitorhelpalert", "sp_dbmmonitordropalert",
              "sp_who")


def _exec(p: _Parser) -> Statement:
    """EXEC <procedure> 'db', arguments...: one of PROCEDURES."""
    name = p.identifier("a procedure name")
    procedure = name.lower()
    if procedure not in PROCEDURES:
        p.refuse(f"unknown procedure {name}; the procedures are: {', '.join(PROCEDURES)}")
    if procedure == "sp_who":
        return _sp_who(p)
    db = p.string("'database name'")
    if not IDENTIFIER.fullmatch(db):
        p.refuse(f"{_quote(db)} is not a valid database name")
    if procedure == "sp_transaction_status":
        p.punct(",")
        lsn = p.integer("a commit LSN")
        p.punct(",")
        return TransactionStatus(db, lsn, p.integer("a role sequence"))
    if procedure == "sp_dbmmonitorchangealert":
        return _change_alert(p, db)
    alert_id = None
    if p.peek() == _Token("punct", ","):
        p.advance(",")
        alert_id = _alert_id(p)
    return (HelpAlert if procedure == "sp_dbmmonitorhelpalert" else DropAlert)(db, alert_id)


def _sp_who(p: _Parser) -> SpWho:
    """After EXEC sp_who: nothing, a login 'name', or a session id."""
    tok = p.peek()
    if tok.kind == "string":
        return SpWho(login=p.string("a login name"))
    if tok.kind == "number":
        return SpWho(spid=p.integer("a session id (spid)"))
    return SpWho()


def _alert_id(p: _Parser) -> int:
    """An alert_id, 1..4, as the reference numbers them."""
    alert_id = p.integer("an alert_id: " + _alert_ids())
    if alert_id not in ALERTS:
        p.refuse(f"alert_id must be {_alert_ids()}; found {alert_id}")
    return alert_id


def _alert_ids() -> str:
    return _one_of(tuple(f"{k} ({a.name}, {a.unit})" for k, a in ALERTS.items()))


def _change_alert(p: _Parser, db: str) -> ChangeAlert:
    """After EXEC sp_dbmmonitorchangealert 'db': , alert_id, threshold, enabled."""
    p.punct(",")
    alert_id = _alert_id(p)
    p.punct(",")
    threshold = p.integer(f"a threshold in {ALERTS[alert_id].unit} (a whole number)")
    p.punct(",")
    enabled = p.integer("enabled: 1 (on) or 0 (off)")
    if (why := alert_refusal(alert_id, threshold, enabled)) is not None:
        p.refuse(why)
    return ChangeAlert(db, alert_id, threshold, bool(enabled))


MAX_STATEMENT_TIMEOUT_MS = 86_400_000  # a day


def _lock_timeout(p: _Parser) -> SetLockTimeout:
    """After SET LOCK_TIMEOUT: milliseconds, -1 to wait forever, 0 not to wait (T-SQL's meanings)."""
    negative = p.peek() == _Token("punct", "-")
    if negative:
        p.advance("-")
    ms = p.integer("milliseconds: -1 (wait forever), 0 (do not wait) or a positive number")
    ms = -ms if negative else ms
    if (why := lock_timeout_refusal(ms)) is not None:
        p.refuse(why)
    return SetLockTimeout(ms)


def _statement_timeout(p: _Parser) -> SetStatementTimeout:
    """After SET STATEMENT_TIMEOUT: milliseconds, 0 for the node's default."""
    ms = p.integer(f"milliseconds 0..{MAX_STATEMENT_TIMEOUT_MS} (0: the node's default)")
    if ms > MAX_STATEMENT_TIMEOUT_MS:
        p.refuse(f"STATEMENT_TIMEOUT must be 0..{MAX_STATEMENT_TIMEOUT_MS} ms; found {ms}")
    return SetStatementTimeout(ms)


Rule = Callable[["_Parser"], Statement]


def _database_rule(make: Callable[[str], Statement]) -> Rule:
    """A rule for `<VERB> DATABASE db` statements."""

    def rule(p: _Parser) -> Statement:
        return make(p.identifier("a database name"))

    return rule


def _create_database(p: _Parser) -> "CreateDatabase | CreateSnapshot":
    """CREATE DATABASE db, or CREATE DATABASE name AS SNAPSHOT OF db."""
    name = p.identifier("a database name")
    if not p.accept("AS"):
        return CreateDatabase(name)
    p.keyword("SNAPSHOT")
    p.keyword("OF")
    return CreateSnapshot(name, p.identifier("the name of the database to snapshot"))


# Leading keywords -> rule; each rule runs after these are consumed.
_RULES: dict[tuple[str, ...], Rule] = {
    ("ALTER", "DATABASE"): _alter_database,
    ("ALTER", "ENDPOINT"): _alter_endpoint,
    ("CREATE", "DATABASE"): _create_database,
    ("DROP", "DATABASE"): _database_rule(DropDatabase),
    ("BACKUP",): _backup,
    ("RESTORE",): _restore,
    ("USE",): _database_rule(UseDatabase),
    ("SELECT",): _select,
    ("EXEC",): _exec,
    ("EXECUTE",): _exec,
    ("SET", "STATEMENT_TIMEOUT"): _statement_timeout,
    ("DBCC",): _dbcc,
    ("SET", "LOCK_TIMEOUT"): _lock_timeout,
}


# What may follow these words in SQLite's own statements: never taken for a typo of ours.
_SQLITE_AFTER = {"ALTER": {"TABLE"}, "CREATE": {"TABLE", "INDEX", "VIEW", "TRIGGER", "VIRTUAL", "TEMP", "TEMPORARY", "UNIQUE"},
                 "DROP": {"TABLE", "INDEX", "VIEW", "TRIGGER"}}


def _rule_for(text: str) -> tuple[tuple[str, ...], Rule] | None:
    """The admin rule the text starts with, or None for plain SQL.

    A second word that is a near miss of ours (ALTER DATABSE) is a syntax error
    naming it and the keyword it resembles: passed on to SQLite it would only
    earn a confusing "no database selected".
    """
    tokens = list(itertools.islice(_tokens(text), 2))
    first, second = (t.text.upper() if t.kind == "word" else "" for t in tokens)
    ours = sorted({k[1] for k in _RULES if len(k) == 2 and k[0] == first})
    if ours and (first, second) not in _RULES and second not in _SQLITE_AFTER.get(first, ()):
        hint = _nearest(tokens[1], ours)
        if hint is not None:
            raise StatementSyntaxError(f"{first}: unexpected word {tokens[1].text}; did you mean {first} {hint}?")
    for key in ((first, second), (first,)):
        if key in _RULES:
            if key == ("SELECT",) and not _selects_system_view(text):
                return None
            return key, _RULES[key]
    return None


_SYS_HINT = re.compile(r"\bsys\b", re.I)


def _selects_system_view(text: str) -> bool:
    """True when a SELECT reads FROM/JOIN sys.<something>."""
    if not _SYS_HINT.search(text):
        return False  # cheap exit: most SELECTs never mention sys
    window: list[_Token] = []
    for tok in _tokens(text):
        if tok.kind == "end":
            return False
        window = (window + [tok])[-3:]
        if (len(window) == 3 and _is_word(window[0], "FROM", "JOIN")
                and (_name_of(window[1]) or "").lower() == "sys"
                and window[2] == _Token("punct", ".")):
            return True
    return False


# Texts found to be plain SQL, newest last (at most REMEMBERED_TEXTS of up to REMEMBERED_TEXT characters):
# an application sends the same few again and again, and telling them from ours took 8 us each time.
# Only plain SQL is remembered: an admin statement's text may hold a password.
_PLAIN_SQL: dict[str, None] = {}


def parse(text: str) -> Statement:
    """Parse one statement; raise StatementSyntaxError if an admin statement is malformed."""
    short = len(text) <= REMEMBERED_TEXT
    if short and text in _PLAIN_SQL:
        return Sql(text)
    found = _rule_for(text)
    if found is None:
        if short:
            if len(_PLAIN_SQL) >= REMEMBERED_TEXTS:
                del _PLAIN_SQL[next(iter(_PLAIN_SQL))]
            _PLAIN_SQL[text] = None
        return Sql(text)
    key, rule = found
    p = _Parser(text)
    for word in key:
        p.keyword(word)
    statement = rule(p)
    if not isinstance(statement, SelectSystemView):
        p.end()  # the SELECT rule already checked the end after its WHERE
    return statement


# ------------------------------------------------------------------ logins
# CREATE/ALTER/DROP LOGIN, GRANT/REVOKE { SELECT | WRITE } ON DATABASE::db, ALTER SERVER ROLE sysadmin.
# A password is never part of a repr (statements are logged by type, and errors may show a repr).


@dataclass(frozen=True)
class CreateLogin:
    """CREATE LOGIN name WITH PASSWORD = 'password'"""

    name: str
    password: str = field(repr=False)

    def to_sql(self) -> str:
        return f"CREATE LOGIN {self.name} WITH PASSWORD = {_quote(self.password)}"


@dataclass(frozen=True)
class AlterLogin:
    """ALTER LOGIN name WITH PASSWORD = 'password'"""

    name: str
    password: str = field(repr=False)

    def to_sql(self) -> str:
        return f"ALTER LOGIN {self.name} WITH PASSWORD = {_quote(self.password)}"


@dataclass(frozen=True)
class DropLogin:
    """DROP LOGIN name"""

    name: str

    def to_sql(self) -> str:
        return f"DROP LOGIN {self.name}"


@dataclass(frozen=True)
class GrantDatabase:
    """GRANT { SELECT | WRITE } ON DATABASE::db TO login, or REVOKE … FROM login (granted False)."""

    right: str
    db: str
    login: str
    granted: bool = True

    def to_sql(self) -> str:
        verb, prep = ("GRANT", "TO") if self.granted else ("REVOKE", "FROM")
        return f"{verb} {self.right} ON DATABASE::{self.db} {prep} {self.login}"


@dataclass(frozen=True)
class ServerRoleMember:
    """ALTER SERVER ROLE sysadmin { ADD | DROP } MEMBER login"""

    login: str
    add: bool

    def to_sql(self) -> str:
        return f"ALTER SERVER ROLE sysadmin {'ADD' if self.add else 'DROP'} MEMBER {self.login}"


@dataclass(frozen=True)
class EndpointSecurity:
    """ALTER ENDPOINT name FOR DATABASE_MIRRORING (AUTHENTICATION = …, ENCRYPTION = …): the reference's options."""

    name: str
    authentication: str | None = None  # CERTIFICATE or WINDOWS
    encryption: str | None = None  # REQUIRED, SUPPORTED or DISABLED

    def to_sql(self) -> str:
        opts = [f"{k} = {v}" for k, v in (("AUTHENTICATION", self.authentication), ("ENCRYPTION", self.encryption)) if v]
        return f"ALTER ENDPOINT {self.name} FOR DATABASE_MIRRORING ({', '.join(opts)})"


def _endpoint_security(p: _Parser, name: str) -> EndpointSecurity:
    """After ALTER ENDPOINT name FOR: DATABASE_MIRRORING ( option = value [, …] )."""
    p.keyword("DATABASE_MIRRORING")
    p.punct("(")
    values: dict[str, str] = {}
    while True:
        option = p.keyword("AUTHENTICATION", "ENCRYPTION")
        if option in values:
            p.refuse(f"{option} is given twice")
        p.punct("=")
        if option == "AUTHENTICATION":
            values[option] = p.keyword("CERTIFICATE", "WINDOWS")
            if values[option] == "CERTIFICATE" and _name_of(p.peek()) is not None:
                p.identifier("a certificate name")  # the reference names one; ours is the node's --tls-dir certificate
        else:
            values[option] = p.keyword("REQUIRED", "SUPPORTED", "DISABLED")
            if p.accept("ALGORITHM"):
                p.keyword("AES")
        if p.peek() != _Token("punct", ","):
            break
        p.advance(",")
    p.punct(")", expected=", or )")
    return EndpointSecurity(name, values.get("AUTHENTICATION"), values.get("ENCRYPTION"))


LOGIN_STATEMENTS = (CreateLogin, AlterLogin, DropLogin, GrantDatabase, ServerRoleMember)


def _login_with_password(make: Callable[[str, str], Statement]) -> Rule:
    def rule(p: _Parser) -> Statement:
        name = p.identifier("a login name")
        p.keyword("WITH")
        p.keyword("PASSWORD")
        p.punct("=")
        return make(name, p.string("'password'", secret=True))

    return rule


def _grant_rule(granted: bool) -> Rule:
    def rule(p: _Parser) -> GrantDatabase:
        right = p.keyword("SELECT", "WRITE")
        p.keyword("ON")
        p.keyword("DATABASE")
        p.punct(":", expected="DATABASE::db")
        p.punct(":", expected="DATABASE::db")
        db = p.identifier("a database name")
        p.keyword("TO" if granted else "FROM")
        return GrantDatabase(right, db, p.identifier("a login name"), granted)

    return rule


def _server_role(p: _Parser) -> ServerRoleMember:
    p.keyword("ROLE")
    p.keyword("SYSADMIN", expected="sysadmin (the only server role)")
    add = p.keyword("ADD", "DROP") == "ADD"
    p.keyword("MEMBER")
    return ServerRoleMember(p.identifier("a login name"), add)


_RULES.update({
    ("CREATE", "LOGIN"): _login_with_password(CreateLogin),
    ("ALTER", "LOGIN"): _login_with_password(AlterLogin),
    ("DROP", "LOGIN"): lambda p: DropLogin(p.identifier("a login name")),
    ("GRANT",): _grant_rule(True),
    ("REVOKE",): _grant_rule(False),
    ("ALTER", "SERVER"): _server_role,
})
