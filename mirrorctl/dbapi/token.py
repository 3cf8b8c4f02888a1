"""A commit token: what names a commit across failovers (its LSN and role sequence, and the statement's place in it).

Its own module so that the errors (an in-doubt commit carries its token) and the
driver both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Token:
    """A commit token: the commit's LSN, the role sequence it was logged in, and the statement's place in it.

    Several connections' autocommit statements may share one commit (the
    server runs them in one transaction, a SAVEPOINT each): `seq` tells them
    apart. Whether the commit survived depends on (lsn, role_sequence) alone.
    """

    lsn: int
    role_sequence: int
    seq: int = 0

    def status_sql(self, database: str) -> str:
        """The statement any partner answers with this token's fate (COMMITTED, LOST, NOT_YET, UNKNOWN)."""
        quoted = database.replace("'", "''")
        return f"EXEC sp_transaction_status '{quoted}', {self.lsn}, {self.role_sequence}"

    def __str__(self) -> str:
        shared = f", statement {self.seq}" if self.seq else ""
        return f"LSN {self.lsn}, role sequence {self.role_sequence}{shared}"


def token_of(lsn: int | None, role_sequence: int | None, seq: int | None = None) -> Token | None:
    """The token of a commit the server reported, if it reported one (an older server sends no seq)."""
    return Token(lsn, role_sequence, seq or 0) if lsn is not None and role_sequence is not None else None
