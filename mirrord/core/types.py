"""Names of the mirroring world, in the reference's own words.

Every other module speaks in these types. They are plain enums and frozen
dataclasses: no I/O, no clock, nothing of ours imported.

LSNs are integers: one log record per committed transaction, numbered from 1
and never reused, across restarts and checkpoints. LSN 0 means "nothing". The
role sequence is an integer that every role change increments; each log
record carries the role sequence it was written in, so a history is a list of
(role sequence, first LSN) forks, as PostgreSQL timelines are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Lsn = int
RoleSequence = int

NO_LSN: Lsn = 0


class Role(str, enum.Enum):
    """The role a node plays for one database."""

    PRINCIPAL = "PRINCIPAL"
    MIRROR = "MIRROR"
    NONE = "NONE"  # standalone database, or a copy no longer in a session


class MirroringState(str, enum.Enum):
    """Mirroring state of a database (reference: mirroring-states.txt)."""

    SYNCHRONIZING = "SYNCHRONIZING"
    SYNCHRONIZED = "SYNCHRONIZED"
    SUSPENDED = "SUSPENDED"
    PENDING_FAILOVER = "PENDING_FAILOVER"
    DISCONNECTED = "DISCONNECTED"
    NONE = "NONE"  # not mirrored


class Safety(str, enum.Enum):
    """Transaction safety: FULL is synchronous (high-safety), OFF asynchronous."""

    FULL = "FULL"
    OFF = "OFF"


class WitnessState(str, enum.Enum):
    """Witness connection state as one partner sees it."""

    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    UNKNOWN = "UNKNOWN"  # no witness set


class DatabaseStatus(str, enum.Enum):
    """Whether a database copy can be opened for SQL."""

    ONLINE = "ONLINE"
    RESTORING = "RESTORING"  # a mirror's copy, or restored WITH NORECOVERY


class MirrordError(Exception):
    """Base of every error that is reported to a client with a code."""

    code = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class StatementRefused(MirrordError):
    """A statement that is not allowed now; nothing was changed."""

    code = "refused"


class LoginFailed(MirrordError):
    """Wrong login name or password (one error for both), or the login is gone."""

    code = "login_failed"


class PermissionDenied(StatementRefused):
    """The login lacks the role or grant the statement needs; nothing was changed."""

    code = "permission_denied"


class StatementSyntaxError(MirrordError):
    """A statement that does not parse."""

    code = "syntax"


class UnknownDatabase(MirrordError):
    """The statement names a database this node does not host."""

    code = "unknown_database"


class NotPrincipal(MirrordError):
    """SQL sent to a database this node does not serve; names the principal."""

    code = "not_principal"


class LogFull(MirrordError):
    """The log reached its size limit because the mirror has not hardened it."""

    code = "log_full"


class RedoQueueFull(MirrordError):
    """A write waited its lock timeout while the mirror's redo queue was over REDO_QUEUE; it did not run."""

    code = "redo_queue_full"


class DiskFull(MirrordError):
    """The disk holding the database has no room for what the statement would log; nothing was done."""

    code = "disk_full"


class NotServing(StatementRefused):
    """The database is not served on this node right now (closing, or out of quorum); nothing was done."""

    code = "not_serving"


class ActionInDoubt(MirrordError):
    """An action was sent and its answer never came: it may or may not have taken effect (a forced vote)."""

    code = "in_doubt"


class CommitInDoubt(MirrordError):
    """A commit is in this node's log but could not be acknowledged: it may or may not survive.

    details carry its token (lsn, role_sequence), which sp_transaction_status resolves.
    """

    code = "in_doubt"


class TransactionAborted(StatementRefused):
    """The client's open transaction was rolled back by the node (role change, SET PARTNER OFF)."""

    code = "transaction_aborted"


class ProtocolError(Exception):
    """A peer sent a malformed or unexpected frame; the connection is closed."""


@dataclass(frozen=True)
class Endpoint:
    """A mirroring endpoint address, written tcp://host:port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Endpoint":
        """Parse 'tcp://host:port' (or 'host:port'); raise ValueError if malformed."""
        raw = text.strip()
        if raw.lower().startswith("tcp://"):
            raw = raw[6:]
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"endpoint {text!r} is not of the form tcp://host:port")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"endpoint {text!r}: port must be 1..65535")
        return cls(host.strip("[]"), port)

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class DataError(MirrordError):
    """A value out of range: an integer beyond 64 bits, a parameter SQLite cannot store; nothing was done."""

    code = "data"


class StatementTimeout(MirrordError):
    """The statement ran longer than the connection's STATEMENT_TIMEOUT and was interrupted (its effects undone)."""

    code = "timeout"


class LimitExceeded(MirrordError):
    """A resource limit of the client port (result size, connections, frame size); nothing was done."""

    code = "limit"
