"""The PEP 249 exception hierarchy, and which of it each server error code is.

How it maps: the server answers an error frame with a code (see
mirrord.core.types); `error_class(code, message)` picks the DB-API class. The
failover cases get their own OperationalError subclasses so an application can
tell them apart without parsing messages:

    NoPrincipal             no partner served the database within failover_timeout
    TransactionInterrupted  the principal changed (or went away) during a transaction
                            that had not been committed: nothing of it committed
    InDoubt                 COMMIT was sent and no acknowledgement came back: it may or
                            may not have committed; `token` (when known) resolves it

Pure: no I/O, nothing but the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mirrorctl.dbapi.token import Token


class Warning(Exception):  # noqa: A001 - the name PEP 249 prescribes
    """Important warnings (PEP 249); mirrord raises none today."""


class Error(Exception):
    """Base of every error this driver raises (PEP 249)."""

    def __init__(self, message: str, code: str | None = None, principal: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # the server's error code, if the server answered
        self.principal = principal  # where the server said the principal is, if it said


class InterfaceError(Error):
    """The driver was misused: a closed cursor or connection, a malformed URL."""


class DatabaseError(Error):
    """An error of the database (PEP 249)."""


class DataError(DatabaseError):
    """A value the database cannot hold (too big, out of range)."""


class OperationalError(DatabaseError):
    """The database's operation failed: no principal, connection lost, log full, refused now."""


class IntegrityError(DatabaseError):
    """A constraint failed (UNIQUE, NOT NULL, CHECK, FOREIGN KEY)."""


class InternalError(DatabaseError):
    """The server hit an internal error."""


class ProgrammingError(DatabaseError):
    """Bad SQL: a syntax error, no such table, wrong parameters, unknown database."""


class NotSupportedError(DatabaseError):
    """Something a mirrored database does not allow (managed PRAGMAs, ATTACH)."""


class NoPrincipal(OperationalError):
    """No partner in the list served the database before failover_timeout ran out."""


class TransactionInterrupted(OperationalError):
    """The transaction was rolled back by a failover or a lost connection; nothing of it committed.

    The connection is usable: the next statement starts a new transaction on
    whichever partner is principal then.
    """


class InDoubt(OperationalError):
    """COMMIT was sent but not acknowledged: the transaction may or may not have committed.

    `token` is its commit token (LSN, role sequence) when the server reported
    one; `Connection.transaction_committed(token)` then tells the outcome. With
    no token, only the application can tell (e.g. by looking for a unique key
    the transaction wrote).
    """

    def __init__(self, message: str, token: "Token | None" = None, code: str | None = None,
                 principal: str | None = None) -> None:
        super().__init__(message, code, principal)
        self.token = token


# Server codes (mirrord.core.types and the principal's SQL errors) -> DB-API class.
_BY_CODE: dict[str, type[Error]] = {
    "syntax": ProgrammingError,
    "sql": ProgrammingError,
    "unknown_database": ProgrammingError,
    "integrity": IntegrityError,
    "internal": InternalError,
    "refused": OperationalError,
    "permission_denied": OperationalError,
    "login_failed": OperationalError,
    "log_full": OperationalError,
    "not_principal": OperationalError,
    "not_serving": OperationalError,
    "transaction_aborted": TransactionInterrupted,
    "in_doubt": InDoubt,
    "lock_timeout": OperationalError,  # as sqlite3's "database is locked": retry later
    "redo_queue_full": OperationalError,  # held by PARTNER REDO_QUEUE until its lock timeout; nothing ran: retry later
    "serialization": OperationalError,  # as psycopg's SerializationFailure: roll back, run the transaction again
}

# SQLite messages under code "sql" that PEP 249 files elsewhere (sqlite3 does the same).
_SQL_MESSAGES: tuple[tuple[str, type[Error]], ...] = (
    ("too big", DataError),
    ("datatype mismatch", IntegrityError),
    ("database is locked", OperationalError),
    ("disk i/o error", OperationalError),
    ("database or disk is full", OperationalError),
)
_NOT_SUPPORTED = "not allowed on a mirrored database"


def error_class(code: str, message: str) -> type[Error]:
    """The DB-API exception class for a server error code (and, for SQL errors, its message)."""
    if code == "sql":
        lowered = message.lower()
        for words, kind in _SQL_MESSAGES:
            if words in lowered:
                return kind
    if code == "refused" and _NOT_SUPPORTED in message:
        return NotSupportedError
    return _BY_CODE.get(code, DatabaseError)


def from_server(code: str, message: str, principal: str | None = None) -> Error:
    """The DB-API exception for a server error (an in-doubt one without its token: see driver)."""
    return error_class(code, message)(message, code=code, principal=principal)
