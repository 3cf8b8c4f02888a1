"""A commit token: what names a commit across failovers (its LSN and role sequence).

Its own module so that the errors (an in-doubt commit carries its token) and the
driver both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Token:
    """A commit token: the commit's LSN and the role sequence it was logged in."""

    lsn: int
    role_sequence: int

    def status_sql(self, database: str) -> str:
        """The statement any partner answers with this token's fate (COMMITTED, LOST, NOT_YET, UNKNOWN)."""
        quoted = database.replace("'", "''")
        return f"EXEC sp_transaction_status '{quoted}', {self.lsn}, {self.role_sequence}"

    def __str__(self) -> str:
        return f"LSN {self.lsn}, role sequence {self.role_sequence}"


def token_of(lsn: int | None, epoch: int | None) -> Token | None:
    """The token of a commit the server reported, if it reported one."""
    return Token(lsn, epoch) if lsn is not None and epoch is not None else None
