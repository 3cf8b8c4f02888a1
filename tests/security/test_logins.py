"""Logins: the SCRAM-style exchange, the table, grants and what each statement needs (pure)."""

from __future__ import annotations

import pytest

from mirrord.core import logins as lg
from mirrord.core import statements as st
from mirrord.storage.login_store import LoginSetupError, LoginStore
from mirrorctl.client import LoginFailed, _LoginExchange
from mirrord.core.types import ProtocolError
from mirrord.net.framing import FrameDecoder

SALT = b"\x07" * 16


def _table(*extra: lg.Login) -> lg.LoginTable:
    sa = lg.Login.with_password("sa", "admin-password", SALT, sysadmin=True)
    return lg.LoginTable(1, {"sa": sa, **{x.name: x for x in extra}})


def _decode(frame: bytes) -> dict:
    d = FrameDecoder()
    d.feed(frame)
    return d.next_message()


def _server_side(table: lg.LoginTable, secret: bytes, login_frame: dict, server_nonce: bytes = b"s" * 24):
    """What mirrord.node._log_in does, without sockets: the challenge and a checker of the proof."""
    store = LoginStore.__new__(LoginStore)
    store.table, store.secret = table, secret
    login, salt, n, r, p = store.challenge_for(login_frame["user"])
    challenge = {"t": "challenge", "nonce": server_nonce, "salt": salt, "n": n, "r": r, "p": p}

    def check(proof_frame: dict):
        auth = lg.auth_message(login_frame["user"], login_frame["nonce"], server_nonce, salt, n, r, p)
        if login is None or not lg.proof_ok(login.stored_key, auth, proof_frame["proof"]):
            return {"t": "error", "id": 0, "code": "login_failed", "message": lg.LOGIN_FAILED, "principal": None}
        return {"t": "login_ok", "signature": lg.server_signature(login.server_key, auth)}

    return challenge, check


def _log_in(table, user, password, secret=b"k" * 32):
    client = _LoginExchange(user, password)
    challenge, check = _server_side(table, secret, _decode(client.first()))
    answer = check(_decode(client.answer(challenge)))
    client.finish(answer)
    return challenge


def test_the_right_password_logs_in_and_the_server_proves_itself():
    _log_in(_table(), "sa", "admin-password")


@pytest.mark.parametrize("user, password", [("sa", "wrong-password"), ("ghost", "admin-password"), ("sa", "")])
def test_wrong_credentials_get_one_error(user, password):
    with pytest.raises(LoginFailed) as info:
        _log_in(_table(), user, password)
    assert info.value.code == "login_failed" and info.value.message == lg.LOGIN_FAILED


def test_an_unknown_login_gets_a_challenge_shaped_like_a_real_one():
    real = _log_in(_table(), "sa", "admin-password")
    with pytest.raises(LoginFailed):
        _log_in(_table(), "ghost", "x" * 10)
    client = _LoginExchange("ghost", "pw")
    fake, _ = _server_side(_table(), b"k" * 32, _decode(client.first()))
    again, _ = _server_side(_table(), b"k" * 32, _decode(client.first()))
    assert set(fake) == set(real) and len(fake["salt"]) == len(real["salt"])
    assert (fake["n"], fake["r"], fake["p"]) == (real["n"], real["r"], real["p"])
    assert fake["salt"] == again["salt"]  # stable per name: asking twice does not tell it apart


def test_a_server_that_does_not_know_the_login_cannot_fake_login_ok():
    client = _LoginExchange("sa", "admin-password")
    challenge, _ = _server_side(_table(), b"k" * 32, _decode(client.first()))
    client.answer(challenge)
    with pytest.raises(ProtocolError, match="could not prove"):
        client.finish({"t": "login_ok", "signature": b"\x00" * 32})


def test_a_server_asking_for_a_huge_scrypt_is_refused():
    client = _LoginExchange("sa", "pw")
    with pytest.raises(ProtocolError, match="refuse to compute"):
        client.answer({"t": "challenge", "nonce": b"s" * 24, "salt": SALT, "n": 1 << 30, "r": 8, "p": 1})


def test_the_proof_is_bound_to_the_nonces():
    table = _table()
    client = _LoginExchange("sa", "admin-password")
    login_frame = _decode(client.first())
    challenge, _ = _server_side(table, b"k" * 32, login_frame, server_nonce=b"a" * 24)
    proof = _decode(client.answer(challenge))
    _, check_other_session = _server_side(table, b"k" * 32, login_frame, server_nonce=b"b" * 24)
    assert check_other_session(proof)["t"] == "error"  # a recorded proof does not replay


def test_the_table_holds_no_password_and_round_trips():
    table = lg.create_login(_table(), "bob", "bob-password", SALT)
    wire = table.to_dict()
    assert b"bob-password" not in repr(wire).encode() and "bob-password" not in repr(wire)
    assert lg.LoginTable.from_dict(wire) == table
    assert table.version == 2


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d.update(version=-1), "version"),
    (lambda d: d["logins"][0].update(name="../x"), "bad login name"),
    (lambda d: d["logins"][0].update(salt=b"short"), "salt"),
    (lambda d: d["logins"][0].update(n=1 << 40), "scrypt"),
    (lambda d: d["logins"][0].update(sysadmin=False), "sysadmin"),
    (lambda d: d["logins"].append(dict(d["logins"][0])), "twice"),
    (lambda d: d["logins"][0].update(read="shop"), "read"),
])
def test_a_malformed_table_is_refused(mutate, why):
    wire = _table().to_dict()
    mutate(wire)
    with pytest.raises(ValueError, match=why):
        lg.LoginTable.from_dict(wire)


def test_changes_and_their_refusals():
    t = lg.create_login(_table(), "bob", "bob-password", SALT)
    with pytest.raises(ValueError, match="exists"):
        lg.create_login(t, "bob", "other-password", SALT)
    with pytest.raises(ValueError, match="8 to 1024"):
        lg.create_login(t, "eve", "short", SALT)
    with pytest.raises(ValueError, match="does not exist"):
        lg.drop_login(t, "eve")
    with pytest.raises(ValueError, match="last sysadmin"):
        lg.drop_login(t, "sa")
    with pytest.raises(ValueError, match="last sysadmin"):
        lg.set_sysadmin(t, "sa", False)
    t = lg.set_sysadmin(t, "bob", True)
    t = lg.set_sysadmin(t, "sa", False)
    assert not t.get("sa").sysadmin and t.get("bob").sysadmin
    t2 = lg.alter_password(t, "bob", "new-password", b"\x09" * 16)
    assert t2.get("bob").sysadmin and t2.get("bob").stored_key != t.get("bob").stored_key


def test_grants_decide_reads_and_writes():
    t = lg.create_login(_table(), "bob", "bob-password", SALT)
    bob = t.get("bob")
    assert not lg.can_read(bob, "shop") and not lg.can_write(bob, "shop")
    assert "GRANT SELECT ON DATABASE::shop TO bob" in lg.access_refusal(bob, lg.READ, "shop")
    bob = lg.grant(t, "bob", lg.READ, "shop", True).get("bob")
    assert lg.can_read(bob, "shop") and not lg.can_write(bob, "shop") and not lg.can_read(bob, "other")
    bob = lg.grant(lg.LoginTable(1, {"sa": t.get("sa"), "bob": bob}), "bob", lg.WRITE, "shop", True).get("bob")
    assert lg.can_write(bob, "shop") and lg.access_refusal(bob, lg.READ, "shop") is None
    revoked = lg.grant(lg.LoginTable(1, {"sa": t.get("sa"), "bob": bob}), "bob", lg.WRITE, "shop", False).get("bob")
    assert lg.can_read(revoked, "shop") and not lg.can_write(revoked, "shop")
    assert lg.can_write(None, "anything")  # an --insecure node has no logins


@pytest.mark.parametrize("sql, need", [
    ("SELECT * FROM sys.database_mirroring", None),
    ("SET STATEMENT_TIMEOUT 500", None),
    ("USE shop", (lg.READ, "shop")),
    ("EXEC sp_transaction_status 'shop', 1, 1", (lg.READ, "shop")),
    ("EXEC sp_dbmmonitorhelpalert 'shop'", (lg.READ, "shop")),
    ("EXEC sp_dbmmonitorchangealert 'shop', 1, 5, 1", (lg.SYSADMIN, None)),
    ("CREATE DATABASE x", (lg.SYSADMIN, None)),
    ("DROP DATABASE x", (lg.SYSADMIN, None)),
    ("ALTER DATABASE x SET PARTNER FAILOVER", (lg.SYSADMIN, None)),
    ("ALTER ENDPOINT mirroring STATE = STOPPED", (lg.SYSADMIN, None)),
    ("BACKUP DATABASE x TO DISK = '/tmp/x'", (lg.SYSADMIN, None)),
    ("CREATE LOGIN eve WITH PASSWORD = 'eve-password'", (lg.SYSADMIN, None)),
    ("ALTER LOGIN sa WITH PASSWORD = 'new-password'", (lg.SYSADMIN, None)),
    ("ALTER LOGIN bob WITH PASSWORD = 'new-password'", None),  # one's own
    ("GRANT WRITE ON DATABASE::x TO bob", (lg.SYSADMIN, None)),
    ("ALTER SERVER ROLE sysadmin ADD MEMBER bob", (lg.SYSADMIN, None)),
])
def test_what_each_statement_needs(sql, need):
    assert lg.statement_need(st.parse(sql), "bob") == need


@pytest.mark.parametrize("sql", [
    "CREATE LOGIN bob WITH PASSWORD = 'pa''ss word'", "ALTER LOGIN bob WITH PASSWORD = N'x'", "DROP LOGIN [bob]",
    "GRANT SELECT ON DATABASE::shop TO bob", "REVOKE WRITE ON DATABASE :: shop FROM bob",
    "alter server role SYSADMIN drop member bob;",
])
def test_login_statements_parse_and_render(sql):
    stmt = st.parse(sql)
    assert isinstance(stmt, st.LOGIN_STATEMENTS) and st.parse(stmt.to_sql()) == stmt


def test_a_password_never_shows_in_a_repr_or_a_syntax_error():
    stmt = st.parse("CREATE LOGIN bob WITH PASSWORD = 'hunter2-secret'")
    assert "hunter2" not in repr(stmt)
    with pytest.raises(Exception) as info:
        st.parse("CREATE LOGIN bob WITH PASSWORD = 'hunter2-secret' extra")
    assert "hunter2" not in str(info.value)


def test_the_store_makes_sa_at_first_start_only(tmp_path, monkeypatch):
    path = tmp_path / "logins.msgpack"
    monkeypatch.delenv("MIRRORD_ADMIN_PASSWORD", raising=False)
    with pytest.raises(LoginSetupError, match="--admin-password-file"):
        LoginStore.open(path, None)
    monkeypatch.setenv("MIRRORD_ADMIN_PASSWORD", "short")
    with pytest.raises(LoginSetupError, match="8 to 1024"):
        LoginStore.open(path, None)
    monkeypatch.setenv("MIRRORD_ADMIN_PASSWORD", "first-password")
    store = LoginStore.open(path, None)
    assert store.table.get("sa").sysadmin and b"first-password" not in path.read_bytes()
    monkeypatch.setenv("MIRRORD_ADMIN_PASSWORD", "second-password")
    again = LoginStore.open(path, None)  # later starts ignore it
    assert again.table == store.table and again.secret == store.secret
    pw = tmp_path / "pw"
    pw.write_text("from-the-file\n")
    assert LoginStore.open(tmp_path / "other.msgpack", pw).table.get("sa") is not None


def test_partners_converge_on_one_table(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRRORD_ADMIN_PASSWORD", "admin-password")
    a, b = LoginStore.open(tmp_path / "a", None), LoginStore.open(tmp_path / "b", None)
    a.change(lambda t, salt: lg.create_login(t, "alice", "alice-password", salt))
    b.change(lambda t, salt: lg.create_login(t, "bob", "bob-password", salt))  # same version, other content
    took_a, took_b = b.adopt(a.wire()), a.adopt(b.wire())
    assert took_a != took_b  # exactly one side adopts the other's
    assert a.table == b.table
    assert not a.adopt(b.wire()) and not b.adopt(a.wire())  # and then nothing moves
    assert LoginStore.open(tmp_path / "a", None).table == a.table  # persisted
    with pytest.raises(ValueError):
        a.adopt({"version": 99, "logins": []})


def test_the_dbapi_url_carries_login_and_ca_and_never_shows_the_password():
    from mirrorctl.dbapi.errors import InterfaceError
    from mirrorctl.dbapi.routing import parse_url

    t = parse_url("mirror://app:p%40ss%3Aw0rd@a:1433,b:1433/shop?tls_ca=/etc/ca.crt&failover_timeout=5")
    assert (t.partners, t.database, t.options) == (("a:1433", "b:1433"), "shop", {"failover_timeout": 5.0})
    assert t.credentials() == {"user": "app", "password": "p@ss:w0rd", "tls_ca": "/etc/ca.crt"}
    assert "p@ss" not in repr(t)
    assert parse_url("mirror://a:1/db").credentials() == {"user": None, "password": None, "tls_ca": None}
    for bad in ("mirror://app:hunter2@a/db", "mirror://:hunter2@a:1/db", "mirror://app:hunter2@a:1/db?tls_ca="):
        with pytest.raises(InterfaceError) as info:
            parse_url(bad)
        assert "hunter2" not in str(info.value)


def test_client_credentials_come_from_arguments_then_the_environment(monkeypatch):
    from mirrorctl.client import Credentials

    monkeypatch.setenv("MIRRORCTL_USER", "env-user")
    monkeypatch.setenv("MIRRORCTL_PASSWORD", "env-password")
    monkeypatch.setenv("MIRRORCTL_TLS_CA", "/env/ca.crt")
    assert Credentials.resolve(None, None, None) == Credentials("/env/ca.crt", "env-user", "env-password")
    assert Credentials.resolve("me", "mine", "/my/ca.crt") == Credentials("/my/ca.crt", "me", "mine")
    none = Credentials.resolve("", "", "")  # explicitly none, whatever the environment says
    assert not none.user and none.ssl_context() is None


def test_mirrorctl_takes_the_login_flags():
    from mirrorctl.cli import _parse_args, auth_args

    args = _parse_args(["-S", "h:1", "-U", "bob", "-P", "pw", "--tls-ca", "/ca.crt", "status"])
    assert auth_args(args) == {"user": "bob", "password": "pw", "tls_ca": "/ca.crt"}
    args = _parse_args(["-S", "h:1", "status"])
    assert auth_args(args) == {"user": None, "password": None, "tls_ca": None}  # then the environment decides


@pytest.mark.parametrize("sql", [
    "CREATE LOGIN bob WITH PASSWORD = 'hunter2-secret'",
    "alter login bob with password=N'hunter2-secret'",
    "CREATE LOGIN bob WITH PASSWORD = 'hunter2-''quoted''-secret'",
    "CREATE LOGIN bob WITH PASSWORD = 'hunter2-unterminated",
])
def test_logged_sql_never_carries_a_password(sql):
    from mirrord.core.logins import redacted

    assert "hunter2" not in redacted(sql) and "***" in redacted(sql)


def test_sp_who_shows_a_statement_without_its_password_and_only_its_start():
    from mirrord.node_services import ClientOwner

    owner = ClientOwner(51)
    owner.note_running("CREATE LOGIN bob WITH PASSWORD = 'hunter2-secret'")
    assert "hunter2" not in owner.running and "hunter2" not in owner.last_statement and "***" in owner.running
    owner.note_done()
    assert owner.running is None and "***" in owner.last_statement
    owner.note_running("SELECT '" + "x" * 5000 + "'")
    assert len(owner.running) == len(owner.last_statement) == ClientOwner.SHOWN
