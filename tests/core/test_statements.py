"""The admin dialect: table of valid statements, table of errors, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.core import statements as s
from mirrord.core.statements import parse
from mirrord.core.types import Endpoint, Safety, StatementSyntaxError

EP = Endpoint("b.example", 5022)

VALID = [
    ("CREATE DATABASE shop", s.CreateDatabase("shop")),
    ("create database [Shop_2];", s.CreateDatabase("Shop_2")),
    ("DROP DATABASE shop", s.DropDatabase("shop")),
    ("ALTER DATABASE shop SET PARTNER = 'tcp://b.example:5022'", s.SetPartner("shop", EP)),
    ("alter database shop set partner=N'TCP://b.example:5022';", s.SetPartner("shop", EP)),
    ("ALTER DATABASE shop\n  SET PARTNER\tFAILOVER", s.PartnerAction("shop", "FAILOVER")),
    ("ALTER DATABASE shop SET PARTNER force_service_allow_data_loss",
     s.PartnerAction("shop", "FORCE_SERVICE_ALLOW_DATA_LOSS")),
    ("ALTER DATABASE shop SET PARTNER OFF", s.PartnerAction("shop", "OFF")),
    ("ALTER DATABASE shop SET PARTNER RESUME", s.PartnerAction("shop", "RESUME")),
    ("ALTER DATABASE shop SET PARTNER SUSPEND", s.PartnerAction("shop", "SUSPEND")),
    ("ALTER DATABASE shop SET PARTNER SAFETY FULL", s.SetSafety("shop", Safety.FULL)),
    ("ALTER DATABASE shop SET PARTNER SAFETY off", s.SetSafety("shop", Safety.OFF)),
    ("ALTER DATABASE shop SET PARTNER TIMEOUT 1", s.SetTimeout("shop", 1)),
    ("ALTER DATABASE shop SET PARTNER TIMEOUT 3600", s.SetTimeout("shop", 3600)),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE 100 MB", s.SetRedoQueue("shop", 100)),
    ("alter database shop set partner redo_queue = 1 mb;", s.SetRedoQueue("shop", 1)),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE = 1048576 MB", s.SetRedoQueue("shop", 1 << 20)),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE UNLIMITED", s.SetRedoQueue("shop", 0)),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE = unlimited", s.SetRedoQueue("shop", 0)),
    ("ALTER DATABASE shop SET WITNESS = 'tcp://b.example:5022'", s.SetWitness("shop", EP)),
    ("ALTER DATABASE shop SET WITNESS OFF", s.SetWitness("shop", None)),
    ("ALTER ENDPOINT Mirroring STATE = STARTED", s.AlterEndpoint("Mirroring", True)),
    ("ALTER ENDPOINT Mirroring STATE=stopped", s.AlterEndpoint("Mirroring", False)),
    ("BACKUP DATABASE shop TO DISK = '/tmp/it''s.bak'", s.BackupDatabase("shop", "/tmp/it's.bak")),
    ("RESTORE DATABASE shop FROM DISK = 'a.bak' WITH NORECOVERY",
     s.RestoreDatabase("shop", "a.bak", False)),
    ("RESTORE DATABASE shop FROM DISK = 'a.bak' WITH RECOVERY",
     s.RestoreDatabase("shop", "a.bak", True)),
    ("RESTORE DATABASE shop WITH RECOVERY", s.RestoreDatabase("shop", None, True)),
    ("SELECT * FROM sys.database_mirroring", s.SelectSystemView("database_mirroring", None, None)),
    ("select Role, state from SYS.[Database_Mirroring] where database = 'shop';",
     s.SelectSystemView("database_mirroring", ("role", "state"), "shop")),
    ("SELECT * FROM sys.database_mirroring_witnesses WHERE database_name='x'",
     s.SelectSystemView("database_mirroring_witnesses", None, "x")),
    ("USE shop", s.UseDatabase("shop")),
    ("-- pick one\nUSE /* really */ shop ;", s.UseDatabase("shop")),
    ("CREATE TABLE t (x INTEGER)", s.Sql("CREATE TABLE t (x INTEGER)")),
    ("select * from t where s = 'FROM sys.x'", s.Sql("select * from t where s = 'FROM sys.x'")),
    ("SELECT sys FROM t", s.Sql("SELECT sys FROM t")),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", s.Sql("BEGIN; INSERT INTO t VALUES (1); COMMIT;")),
    ("ALTER TABLE t ADD COLUMN y", s.Sql("ALTER TABLE t ADD COLUMN y")),
    ("", s.Sql("")),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, 100, 1", s.ChangeAlert("shop", 2, 100, True)),
    ("execute SP_DBMMONITORCHANGEALERT N'shop',1,0,0;", s.ChangeAlert("shop", 1, 0, False)),
    ("EXEC sp_dbmmonitorchangealert 'shop', 4, 2147483647, 1", s.ChangeAlert("shop", 4, 2**31 - 1, True)),
    ("EXEC sp_dbmmonitorhelpalert 'shop'", s.HelpAlert("shop")),
    ("EXEC sp_dbmmonitorhelpalert 'shop', 3", s.HelpAlert("shop", 3)),
    ("EXEC sp_dbmmonitordropalert 'shop'", s.DropAlert("shop")),
    ("EXEC sp_dbmmonitordropalert 'shop', 1 ;", s.DropAlert("shop", 1)),
]


@pytest.mark.parametrize("text,expected", VALID)
def test_parse_valid(text: str, expected: s.Statement) -> None:
    assert parse(text) == expected


ERRORS = [
    ("ALTER DATABASE shop SET PARTNER FOO",
     "ALTER DATABASE shop SET PARTNER: expected = 'tcp://host:port', FAILOVER, "
     "FORCE_SERVICE_ALLOW_DATA_LOSS, OFF, RESUME, SUSPEND, SAFETY, TIMEOUT or REDO_QUEUE; found 'FOO'"),
    # the redo queue limit (core.redo_queue): a size in MB, or UNLIMITED; anything else refused with why
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE 0 MB", "REDO_QUEUE must be 1..1048576 MB, or UNLIMITED; found 0 MB"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE 1048577 MB", "REDO_QUEUE must be 1..1048576 MB, or UNLIMITED; found 1048577"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE 10", "expected MB (the redo queue limit is given in megabytes)"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE 10 GB", "expected MB (the redo queue limit is given in megabytes); found 'GB'"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE -5 MB", "expected a size in MB 1..1048576, or UNLIMITED"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE 1.5 MB", "expected a size in MB 1..1048576, or UNLIMITED"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE", "expected a size in MB 1..1048576, or UNLIMITED"),
    ("ALTER DATABASE shop SET PARTNER REDO_QUEUE UNLIMITED 5", "expected end of statement"),
    ("ALTER DATABASE shop SET PARTNER TIMEOUT 0", "must be 1..3600 seconds; found 0"),
    ("ALTER DATABASE shop SET PARTNER TIMEOUT 3601", "must be 1..3600 seconds; found 3601"),
    ("ALTER DATABASE shop SET PARTNER TIMEOUT 2.5", "expected whole seconds 1..3600; found '2.5'"),
    ("ALTER DATABASE shop SET PARTNER TIMEOUT -1", "found '-'"),
    ("ALTER DATABASE shop SET PARTNER SAFETY HIGH", "expected FULL or OFF; found 'HIGH'"),
    ("ALTER DATABASE shop SET PARTNER = 'b:5022'", "'b:5022' must be of the form 'tcp://host:port'"),
    ("ALTER DATABASE shop SET PARTNER = 'tcp://b:99999'", "'tcp://b:99999'"),
    ("ALTER DATABASE shop SET PARTNER = 'tcp://b c:1'", "host must be"),
    ("ALTER DATABASE shop SET PARTNER = tcp", "expected 'tcp://host:port'; found 'tcp'"),
    ("ALTER DATABASE shop SET WITNESS ON", "expected = 'tcp://host:port' or OFF; found 'ON'"),
    ("ALTER DATABASE shop SET RECOVERY FULL", "expected PARTNER or WITNESS; found 'RECOVERY'"),
    ("ALTER DATABASE [my shop] SET PARTNER OFF", "database name of letters"),
    ("ALTER DATABASE 1shop SET PARTNER OFF", "found '1'"),
    ("CREATE DATABASE " + "a" * 129, "at most 128"),
    ("CREATE DATABASE", "CREATE DATABASE: expected a database name; found end of statement"),
    ("DROP DATABASE a b", "DROP DATABASE a: expected end of statement; found 'b'"),
    ("USE a; USE b", "expected end of statement; found 'USE'"),
    ("ALTER ENDPOINT e STATE = PAUSED", "expected STARTED or STOPPED; found 'PAUSED'"),
    ("BACKUP LOG shop", "BACKUP: expected DATABASE; found 'LOG'"),
    ("BACKUP DATABASE shop TO DISK = ''", "non-empty"),
    ("BACKUP DATABASE shop TO DISK = 'x", "unterminated 'x"),
    ("RESTORE DATABASE shop FROM DISK = 'a'", "WITH is required"),
    ("RESTORE DATABASE shop WITH NORECOVERY", "NORECOVERY needs FROM DISK"),
    ("RESTORE DATABASE shop", "expected FROM DISK = 'path' or WITH RECOVERY"),
    ("SELECT * FROM sys.tables", "expected a system view"),
    ("SELECT FROM sys.database_mirroring", "expected * or column names"),
    ("SELECT * FROM sys.database_mirroring WHERE role = 'x'", "expected database or database_name"),
    ("SELECT * FROM sys.database_mirroring WHERE database = 'a b'", "not a valid database name"),
    ("SELECT * FROM sys.database_mirroring ORDER BY role", "expected end of statement"),
    ("SELECT a FROM t JOIN sys.database_mirroring", "expected sys; found 't'"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 5, 1, 1", "alert_id must be 1 (oldest unsent transaction, minutes), 2 (unsent log, KB)"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 0, 1, 1", "found 0"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, -1, 1", "expected a threshold in KB (a whole number); found '-'"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, 2147483648, 1", "threshold must be 0..2147483647 KB; found 2147483648"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, 1.5, 1", "expected a threshold in KB"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, 10, 2", "enabled must be 1 (on) or 0 (off); found 2"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, 10", "expected ,; found end of statement"),
    ("EXEC sp_dbmmonitorchangealert 'shop', 2, 10, 1, 1", "expected end of statement"),
    ("EXEC sp_dbmmonitorchangealert 'a b', 2, 10, 1", "not a valid database name"),
    ("EXEC sp_dbmmonitorhelpalert 'shop', 9", "alert_id must be"),
    ("EXEC sp_dbmmonitordropalert shop", "expected 'database name'"),
    ("EXEC sp_dbmmonitorresults 'shop'", "unknown procedure sp_dbmmonitorresults; the procedures are: sp_transaction_status, "
     "sp_dbmmonitorchangealert"),
]


@pytest.mark.parametrize("text,message", ERRORS)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(StatementSyntaxError) as info:
        parse(text)
    assert message in str(info.value)


def test_restore_without_with_says_why() -> None:
    with pytest.raises(StatementSyntaxError, match="required"):
        parse("RESTORE DATABASE shop FROM DISK = 'a'")


def test_sql_text_is_untouched() -> None:
    text = "  INSERT INTO t VALUES ('[x]', 'it''s')  ;\n"
    assert parse(text) == s.Sql(text)


# ---------------------------------------------------------------- properties

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True)
hosts = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)
endpoints = st.builds(Endpoint, hosts, st.integers(1, 65535))
paths = st.text(min_size=1).filter(lambda p: "\x00" not in p)
columns = st.lists(names, min_size=1, max_size=5).map(lambda cs: tuple(c.lower() for c in cs))

statements = st.one_of(
    st.builds(s.CreateDatabase, names),
    st.builds(s.DropDatabase, names),
    st.builds(s.UseDatabase, names),
    st.builds(s.SetPartner, names, endpoints),
    st.builds(s.PartnerAction, names, st.sampled_from(s.PARTNER_ACTIONS)),
    st.builds(s.SetSafety, names, st.sampled_from(Safety)),
    st.builds(s.SetTimeout, names, st.integers(1, 3600)),
    st.builds(s.SetRedoQueue, names, st.just(0) | st.integers(1, 1 << 20)),
    st.builds(s.SetWitness, names, st.none() | endpoints),
    st.builds(s.AlterEndpoint, names, st.booleans()),
    st.builds(s.BackupDatabase, names, paths),
    st.builds(s.RestoreDatabase, names, paths, st.booleans()),
    st.builds(s.RestoreDatabase, names, st.none(), st.just(True)),
    st.builds(s.SelectSystemView, st.sampled_from(s.SYSTEM_VIEWS),
              st.none() | columns, st.none() | names),
)


@settings(max_examples=150, deadline=None)
@given(statements)
def test_round_trip(statement: s.Statement) -> None:
    assert parse(statement.to_sql()) == statement


@settings(max_examples=100, deadline=None)
@given(statements, st.sampled_from([str.lower, str.upper, lambda t: t + " ;\n"]))
def test_round_trip_with_noise(statement: s.Statement, mangle) -> None:
    text = mangle(statement.to_sql())
    if mangle in (str.lower, str.upper):
        # Only keywords are case-insensitive; compare on what case cannot change.
        assert type(parse(text)) is type(statement)
    else:
        assert parse(text) == statement


prefixes = st.sampled_from(["ALTER DATABASE ", "CREATE DATABASE ", "DROP DATABASE ",
                            "ALTER ENDPOINT ", "BACKUP ", "RESTORE ", "USE ",
                            "SELECT * FROM sys.", "ALTER DATABASE x SET PARTNER ", ""])


@settings(max_examples=500, deadline=None)
@given(prefixes, st.text())
def test_parse_raises_only_syntax_errors(prefix: str, tail: str) -> None:
    try:
        parse(prefix + tail)
    except StatementSyntaxError as exc:
        assert ": " in exc.message  # always says where it was


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["ALTER", "DATABASE", "SET", "PARTNER", "WITNESS", "=", "'tcp://a:1'",
                                 "OFF", "[x]", "x", "SAFETY", "TIMEOUT", "5", ";", "RESTORE", "WITH",
                                 "FROM", "DISK", "SELECT", "*", "sys", ".", "database_mirroring",
                                 "WHERE", "database", "'y'", "'", "[", "/*", "--"]), max_size=12))
def test_parse_token_soup(words: list[str]) -> None:
    try:
        parse(" ".join(words))
    except StatementSyntaxError:
        pass


alert_statements = st.one_of(
    st.builds(s.ChangeAlert, names, st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans()),
    st.builds(s.HelpAlert, names, st.none() | st.integers(1, 4)),
    st.builds(s.DropAlert, names, st.none() | st.integers(1, 4)),
)


@settings(max_examples=150, deadline=None)
@given(alert_statements)
def test_alert_statements_round_trip(statement: s.Statement) -> None:
    assert parse(statement.to_sql()) == statement
    assert parse(statement.to_sql().upper().replace(statement.db.upper(), statement.db)) == statement


@pytest.mark.parametrize("text,word,keyword", [
    ("ALTER DATABSE shop SET PARTNER OFF", "DATABSE", "ALTER DATABASE"),
    ("alter databse shop set partner off", "databse", "ALTER DATABASE"),
    ("CREATE DATABAS shop", "DATABAS", "CREATE DATABASE"),
    ("DROP DATBASE shop", "DATBASE", "DROP DATABASE"),
    ("ALTER ENDPONT mirroring STATE = STARTED", "ENDPONT", "ALTER ENDPOINT"),
    ("ALTER DATABASE shop SET PARTNR OFF", "'PARTNR'", "PARTNER"),
    ("ALTER DATABASE shop SET PARTNER SAFTY FULL", "'SAFTY'", "SAFETY"),
    ("ALTER ENDPOINT mirroring STATE = STARTD", "'STARTD'", "STARTED"),
])
def test_a_typo_names_the_unexpected_word_and_the_nearest_keyword(text: str, word: str, keyword: str) -> None:
    with pytest.raises(StatementSyntaxError) as info:
        parse(text)
    assert word in str(info.value) and f"did you mean {keyword}?" in str(info.value)


@pytest.mark.parametrize("text", ["ALTER TABLE t ADD COLUMN x", "CREATE TABLE t(x)", "CREATE INDEX i ON t(x)",
                                  "DROP TABLE t", "CREATE TEMP TABLE t(x)", "DROP VIEW v", "CREATE UNIQUE INDEX i ON t(x)"])
def test_sqlite_statements_are_not_taken_for_typos(text: str) -> None:
    assert parse(text) == s.Sql(text)


def test_plain_sql_texts_are_remembered_and_nothing_else_is():
    from mirrord.core import statements as stm
    from mirrord.core.txn import REMEMBERED_TEXT, REMEMBERED_TEXTS

    plain = "SELECT * FROM remembered_t WHERE id = ?"
    assert stm.parse(plain) == stm.Sql(plain) and plain in stm._PLAIN_SQL
    assert stm.parse(plain) == stm.Sql(plain)
    secret = "CREATE LOGIN remembered WITH PASSWORD = 'not kept'"
    assert isinstance(stm.parse(secret), stm.CreateLogin)
    assert secret not in stm._PLAIN_SQL  # an admin statement's text may hold a password
    long = "SELECT '" + "x" * REMEMBERED_TEXT + "'"
    assert stm.parse(long) == stm.Sql(long) and long not in stm._PLAIN_SQL
    for i in range(REMEMBERED_TEXTS + 10):
        stm.parse(f"SELECT {i}")
    assert len(stm._PLAIN_SQL) <= REMEMBERED_TEXTS
    view = "SELECT * FROM sys.database_mirroring"
    assert not isinstance(stm.parse(view), stm.Sql) and view not in stm._PLAIN_SQL
