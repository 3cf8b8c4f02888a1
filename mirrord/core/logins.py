"""Logins, their proofs and what each may do: pure.

Passwords never cross the wire and are never stored. As in SCRAM-SHA-256
(RFC 5802/7677) with scrypt as the slow, salted KDF:

    salted    = scrypt(password, salt, n, r, p)          (client side only)
    ClientKey = HMAC(salted, "Client Key")     StoredKey = SHA-256(ClientKey)
    ServerKey = HMAC(salted, "Server Key")
    auth      = user, client nonce, server nonce, salt, n, r, p
    proof     = ClientKey XOR HMAC(StoredKey, auth)      (client -> server)
    signature = HMAC(ServerKey, auth)                    (server -> client)

The node keeps (salt, n, r, p, StoredKey, ServerKey) per login; it checks a
proof by recovering ClientKey and comparing SHA-256 of it with StoredKey in
constant time. A stolen login table does not let anyone log in (StoredKey is
a hash), and the server's signature proves to the client that the node knew
ServerKey. For a login that does not exist, the node answers with a salt
derived from its secret and the name, so both cases look alike until the one
`login_failed` error.

What a login may do (`access_refusal`): `sysadmin` may do everything;
otherwise per database a read grant (SELECT) or a write grant (WRITE, which
includes reading). Status views are open to any login (monitoring).

The table travels between partners (see mirrord/storage/login_store.py); versions
order it: a node adopts a table whose `order_key` is greater than its own, so
two partners that changed logins independently still converge on one table.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

KDF_N, KDF_R, KDF_P = 1 << 14, 8, 1
MAX_KDF_N, MAX_KDF_R, MAX_KDF_P = 1 << 20, 16, 4  # a client refuses to spend more on a server's say-so
KEY_BYTES = 32
SALT_BYTES = 16
NONCE_MIN, NONCE_MAX = 16, 64
LOGIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
SYSADMIN = "sysadmin"
READ, WRITE = "SELECT", "WRITE"
LOGIN_FAILED = "login failed: wrong login name or password"


# ------------------------------------------------------------------ SCRAM


def salted_password(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The slow step: scrypt of the password (ValueError if the parameters are out of bounds)."""
    if not (2 <= n <= MAX_KDF_N and n & (n - 1) == 0 and 1 <= r <= MAX_KDF_R and 1 <= p <= MAX_KDF_P):
        raise ValueError(f"scrypt parameters n={n} r={r} p={p} are out of bounds")
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20),
                          dklen=KEY_BYTES)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def derive_keys(salted: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of a salted password."""
    return hashlib.sha256(_hmac(salted, b"Client Key")).digest(), _hmac(salted, b"Server Key")


def auth_message(user: str, client_nonce: bytes, server_nonce: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """What both proofs sign: every value of the exchange, unambiguously framed."""
    return json.dumps([user, client_nonce.hex(), server_nonce.hex(), salt.hex(), n, r, p]).encode()


def client_proof(salted: bytes, auth: bytes) -> bytes:
    """ClientKey XOR HMAC(StoredKey, auth)."""
    client_key = _hmac(salted, b"Client Key")
    signature = _hmac(hashlib.sha256(client_key).digest(), auth)
    return bytes(a ^ b for a, b in zip(client_key, signature))


def proof_ok(stored_key: bytes, auth: bytes, proof: bytes) -> bool:
    """Does the proof show knowledge of the password behind stored_key? (constant time)"""
    if len(proof) != KEY_BYTES:
        return False
    signature = _hmac(stored_key, auth)
    client_key = bytes(a ^ b for a, b in zip(proof, signature))
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


def server_signature(server_key: bytes, auth: bytes) -> bytes:
    """The server's proof that it knew ServerKey."""
    return _hmac(server_key, auth)


def fake_salt(secret: bytes, user: str) -> bytes:
    """The salt shown for a login that does not exist: stable per name, unguessable."""
    return _hmac(secret, b"no such login:" + user.encode("utf-8"))[:SALT_BYTES]


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Login:
    """One login: its verifier (never the password) and its rights."""

    name: str
    salt: bytes
    n: int
    r: int
    p: int
    stored_key: bytes
    server_key: bytes
    sysadmin: bool = False
    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()

    @classmethod
    def with_password(cls, name: str, password: str, salt: bytes, **rights: Any) -> "Login":
        """A login whose verifier is derived from password and salt (the caller draws the salt)."""
        stored, server = derive_keys(salted_password(password, salt, KDF_N, KDF_R, KDF_P))
        return cls(name, salt, KDF_N, KDF_R, KDF_P, stored, server, **rights)

    def to_dict(self) -> dict:
        return {"name": self.name, "salt": self.salt, "n": self.n, "r": self.r, "p": self.p,
                "stored_key": self.stored_key, "server_key": self.server_key, "sysadmin": self.sysadmin,
                "read": sorted(self.read), "write": sorted(self.write)}

    @classmethod
    def from_dict(cls, d: Any) -> "Login":
        """Check every field (the table comes from disk or from a partner); ValueError if wrong."""
        if not isinstance(d, dict):
            raise ValueError("a login is a map")
        name = d.get("name")
        if not isinstance(name, str) or not LOGIN_NAME.fullmatch(name):
            raise ValueError(f"bad login name {name!r}")
        for key, size in (("salt", SALT_BYTES), ("stored_key", KEY_BYTES), ("server_key", KEY_BYTES)):
            if not isinstance(d.get(key), bytes) or len(d[key]) != size:
                raise ValueError(f"login {name}: {key} must be {size} bytes")
        n, r, p = d.get("n"), d.get("r"), d.get("p")
        if not all(type(v) is int for v in (n, r, p)) or not (2 <= n <= MAX_KDF_N and 1 <= r <= MAX_KDF_R and 1 <= p <= MAX_KDF_P):
            raise ValueError(f"login {name}: bad scrypt parameters")
        if type(d.get("sysadmin")) is not bool:
            raise ValueError(f"login {name}: sysadmin must be a bool")
        grants = {}
        for key in ("read", "write"):
            value = d.get(key)
            if not isinstance(value, list) or len(value) > 10_000 or not all(isinstance(x, str) and x for x in value):
                raise ValueError(f"login {name}: {key} must be a list of database names")
            grants[key] = frozenset(value)
        return cls(name, d["salt"], n, r, p, d["stored_key"], d["server_key"], d["sysadmin"], grants["read"], grants["write"])


@dataclass(frozen=True)
class LoginTable:
    """Every login of the cluster, with a version that orders tables."""

    version: int = 0
    logins: dict[str, Login] = field(default_factory=dict)

    def get(self, name: str) -> Login | None:
        return self.logins.get(name)

    def to_dict(self) -> dict:
        return {"version": self.version, "logins": [self.logins[k].to_dict() for k in sorted(self.logins)]}

    @classmethod
    def from_dict(cls, d: Any) -> "LoginTable":
        """Check and build (ValueError if anything is wrong)."""
        if not isinstance(d, dict) or type(d.get("version")) is not int or not 0 <= d["version"] < 1 << 62:
            raise ValueError("a login table is a map with an integer version")
        items = d.get("logins")
        if not isinstance(items, list) or len(items) > 10_000:
            raise ValueError("a login table has a list of at most 10000 logins")
        logins = {}
        for item in items:
            login = Login.from_dict(item)
            if login.name in logins:
                raise ValueError(f"login {login.name} appears twice")
            logins[login.name] = login
        if not any(login.sysadmin for login in logins.values()):
            raise ValueError("a login table needs at least one sysadmin")
        return cls(d["version"], logins)

    def order_key(self) -> tuple[int, str]:
        """Tables compare by version, then by content (so independent changes converge)."""
        return self.version, hashlib.sha256(repr(self.to_dict()).encode()).hexdigest()

    def _with(self, login: Login | None, name: str) -> "LoginTable":
        logins = dict(self.logins)
        if login is None:
            logins.pop(name, None)
        else:
            logins[name] = login
        return LoginTable(self.version + 1, logins)


# ------------------------------------------------------------------ changes


def check_password(password: str) -> str | None:
    """Why this password is refused, or None."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    return None


def create_login(table: LoginTable, name: str, password: str, salt: bytes) -> LoginTable:
    """CREATE LOGIN; ValueError saying why not."""
    if name in table.logins:
        raise ValueError(f"login {name} exists; ALTER LOGIN {name} WITH PASSWORD = '...' changes its password")
    if (why := check_password(password)) is not None:
        raise ValueError(why)
    return table._with(Login.with_password(name, password, salt), name)


def alter_password(table: LoginTable, name: str, password: str, salt: bytes) -> LoginTable:
    """ALTER LOGIN … WITH PASSWORD; keeps the rights."""
    old = _existing(table, name)
    if (why := check_password(password)) is not None:
        raise ValueError(why)
    new = Login.with_password(name, password, salt, sysadmin=old.sysadmin, read=old.read, write=old.write)
    return table._with(new, name)


def drop_login(table: LoginTable, name: str) -> LoginTable:
    """DROP LOGIN; the last sysadmin stays."""
    login = _existing(table, name)
    if login.sysadmin and sum(lg.sysadmin for lg in table.logins.values()) == 1:
        raise ValueError(f"{name} is the last sysadmin; ALTER SERVER ROLE sysadmin ADD MEMBER another login first")
    return table._with(None, name)


def set_sysadmin(table: LoginTable, name: str, member: bool) -> LoginTable:
    """ALTER SERVER ROLE sysadmin { ADD | DROP } MEMBER name."""
    login = _existing(table, name)
    if not member and login.sysadmin and sum(lg.sysadmin for lg in table.logins.values()) == 1:
        raise ValueError(f"{name} is the last sysadmin; add another member first")
    return table._with(replace(login, sysadmin=member), name)


def grant(table: LoginTable, name: str, right: str, db: str, granted: bool) -> LoginTable:
    """GRANT / REVOKE { SELECT | WRITE } ON DATABASE::db."""
    login = _existing(table, name)
    key = "read" if right == READ else "write"
    current: frozenset[str] = getattr(login, key)
    return table._with(replace(login, **{key: current | {db} if granted else current - {db}}), name)


def _existing(table: LoginTable, name: str) -> Login:
    login = table.get(name)
    if login is None:
        raise ValueError(f"login {name} does not exist; CREATE LOGIN {name} WITH PASSWORD = '...' first")
    return login


# ------------------------------------------------------------------ rights


def can_read(login: Login | None, db: str) -> bool:
    """None is a node run with --insecure: everyone may do everything."""
    return login is None or login.sysadmin or db in login.read or db in login.write


def can_write(login: Login | None, db: str) -> bool:
    return login is None or login.sysadmin or db in login.write


def access_refusal(login: Login | None, need: str, db: str | None) -> str | None:
    """Why this login may not do what needs `need` (sysadmin, SELECT, WRITE) on db, or None."""
    if login is None or login.sysadmin:
        return None
    if need == SYSADMIN:
        return (f"login {login.name} is not a sysadmin; this statement needs the sysadmin role "
                f"(ALTER SERVER ROLE sysadmin ADD MEMBER {login.name}, run by a sysadmin)")
    if need == READ and db is not None and can_read(login, db):
        return None
    if need == WRITE and db is not None and can_write(login, db):
        return None
    return f"login {login.name} has no {need} grant on database {db}; a sysadmin can GRANT {need} ON DATABASE::{db} TO {login.name}"


def statement_need(stmt: object, login_name: str | None) -> tuple[str, str | None] | None:
    """What a parsed statement (not plain SQL) needs: (SYSADMIN | SELECT, db), or None for anyone logged in."""
    from mirrord.core import statements as st

    if isinstance(stmt, (st.SelectSystemView, st.SetStatementTimeout, st.SetLockTimeout, st.SpWho)):
        return None  # status is for monitoring, a connection's own timeouts its own, sp_who filters by login: any login
    if isinstance(stmt, (st.UseDatabase, st.TransactionStatus, st.HelpAlert)):
        return READ, stmt.db
    if isinstance(stmt, st.AlterLogin) and stmt.name == login_name:
        return None  # a login may change its own password
    return SYSADMIN, None


_PASSWORD = re.compile(r"(?is)(PASSWORD\s*=\s*)N?'(?:[^']|'')*'?")


def redacted(sql: str) -> str:
    """SQL as it may be shown (EXEC sp_who) or logged: never a password."""
    return _PASSWORD.sub(r"\1'***'", sql)
