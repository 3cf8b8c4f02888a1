"""The node's logins on disk, and how they reach the partners.

`DATA_DIR/logins.msgpack` holds the login table (`core.logins.LoginTable`:
verifiers, never passwords) and the node's secret for the salts of logins
that do not exist. It is written atomically before a change is acknowledged.
At the first start (no file yet) the table is made with one sysadmin, `sa`,
whose password comes from --admin-password-file or MIRRORD_ADMIN_PASSWORD;
later starts ignore those.

Why logins travel: in SQL Server, logins live in each instance and a failover
leaves the new principal's users "orphaned". Here the table is the cluster's:
a node sends it to its partners whenever it changes and on every partner
connection (the principal after `welcome`, the mirror in `welcome`), and a
node adopts a table whose order key (version, then content) is greater than
its own and passes it on. Whatever was changed on whichever partner, every
partner ends with the same table, so the logins work on the new principal
after a failover. Partners are authenticated by mutual TLS before anything
they send is read; a witness keeps its own logins (it serves no data).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

import msgpack
import structlog

from mirrord.core import logins as lg
from mirrord.core.types import ProtocolError
from mirrord.storage.fileutil import atomic_write_bytes

log = structlog.get_logger()

ADMIN_LOGIN = "sa"


class LoginSetupError(Exception):
    """The logins cannot be set up; the message says what to give."""


def admin_password(password_file: Path | None) -> str | None:
    """The first start's sa password: the file's first line, else MIRRORD_ADMIN_PASSWORD."""
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise LoginSetupError(f"--admin-password-file {password_file} cannot be read: {exc}") from None
        return lines[0] if lines else ""
    return os.environ.get("MIRRORD_ADMIN_PASSWORD")


class LoginStore:
    """The login table of one node, persisted, with a hook for passing changes on."""

    def __init__(self, path: Path, table: lg.LoginTable, secret: bytes) -> None:
        self.path, self.table, self.secret = path, table, secret
        self.on_change: Callable[[lg.LoginTable], None] | None = None

    @classmethod
    def open(cls, path: Path, password_file: Path | None) -> "LoginStore":
        """Load the table, or make it with sa at the first start; LoginSetupError if it cannot."""
        if path.exists():
            try:
                raw = msgpack.unpackb(path.read_bytes(), raw=False)
                return cls(path, lg.LoginTable.from_dict(raw["table"]), raw["secret"])
            except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
                raise LoginSetupError(f"{path} is damaged: {exc}; restore it from a partner's copy or a backup") from None
        password = admin_password(password_file)
        if password is None:
            raise LoginSetupError("first start: give the password of login sa with --admin-password-file FILE "
                                  "or MIRRORD_ADMIN_PASSWORD")
        if (why := lg.check_password(password)) is not None:
            raise LoginSetupError(f"the admin password is refused: {why}")
        table = lg.LoginTable(1, {ADMIN_LOGIN: lg.Login.with_password(ADMIN_LOGIN, password, _salt(), sysadmin=True)})
        store = cls(path, table, secrets.token_bytes(32))
        store._persist()
        return store

    def _persist(self) -> None:
        atomic_write_bytes(self.path, msgpack.packb({"table": self.table.to_dict(), "secret": self.secret}, use_bin_type=True))

    # ---------------------------------------------------------------- changes

    def change(self, how: Callable[[lg.LoginTable, bytes], lg.LoginTable]) -> None:
        """Apply how(table, fresh salt) (ValueError says why not), persist, pass on."""
        self._install(how(self.table, _salt()))

    def adopt(self, wire: object) -> bool:
        """A partner's table: taken if it orders after ours (ValueError if malformed)."""
        table = lg.LoginTable.from_dict(wire)
        if table.order_key() <= self.table.order_key():
            return False
        self._install(table)
        log.info("logins_adopted", version=table.version, logins=len(table.logins))
        return True

    def _install(self, table: lg.LoginTable) -> None:
        self.table = table
        self._persist()
        if self.on_change is not None:
            self.on_change(table)

    def adopt_from_peer(self, wire: object) -> None:
        """adopt() for a table a partner sent; ProtocolError (closing that connection) if malformed."""
        try:
            self.adopt(wire)
        except ValueError as exc:
            raise ProtocolError(f"the partner's login table is malformed: {exc}") from None

    def wire(self) -> dict:
        """The table as partners receive it."""
        return self.table.to_dict()

    # ---------------------------------------------------------------- logging in

    def challenge_for(self, user: str) -> tuple[lg.Login | None, bytes, int, int, int]:
        """The login (or None) and the salt and scrypt parameters to show, alike for unknown names."""
        login = self.table.get(user)
        if login is None:
            return None, lg.fake_salt(self.secret, user), lg.KDF_N, lg.KDF_R, lg.KDF_P
        return login, login.salt, login.n, login.r, login.p


def _salt() -> bytes:
    return secrets.token_bytes(lg.SALT_BYTES)
