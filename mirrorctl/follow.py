"""`mirrorctl -S a,b,...`: one blocking connection that follows the principal.

The partner list and what answers teach about it are the DB-API driver's
(`mirrorctl.dbapi.routing.PartnerList`): try the addresses in order; an answer
"not principal, the principal is X" sends the same statement to X next. A
statement is sent again only when it certainly did nothing: the connection
could not be opened, or the node refused it as not the principal. A
connection lost after the statement was sent is reported, never retried: a
write could run twice.
"""

from __future__ import annotations

from mirrorctl.client import Client, NotPrincipal, Result, Unreachable
from mirrorctl.dbapi.routing import PartnerList, normalize_address


def partner_address(text: str) -> str:
    """'host:port' from 'host:port' or 'tcp://host:port'; ValueError if malformed."""
    stripped = text[len("tcp://"):] if text.lower().startswith("tcp://") else text
    return normalize_address(stripped)


class PrincipalFollower:
    """Sends statements to whichever listed node serves them, keeping one connection."""

    def __init__(self, servers: list[str], connect_timeout: float, auth: dict | None = None) -> None:
        self.partners = PartnerList([partner_address(s) for s in servers])
        self.connect_timeout = connect_timeout
        self.auth = auth or {}  # user, password, tls_ca for Client.connect
        self.address: str | None = None  # where the open connection goes
        self._client: Client | None = None

    def query(self, sql: str, db: str | None, timeout: float) -> Result:
        """Run one statement where it is served; ServerError or Unreachable as Client raises them."""
        tried: list[str] = []
        failures: list[str] = []
        while (address := next((a for a in self._order() if a not in tried), None)) is not None:
            tried.append(address)
            try:
                client = self._connect(address)
            except Unreachable as exc:
                failures.append(str(exc))
                self.partners.lost(address)
                continue
            try:
                result = client.query(sql, db=db, timeout=timeout)
            except NotPrincipal as exc:
                if self.partners.learn_principal(exc.principal) and self.partners.hint not in tried:
                    continue  # refused untouched: the same statement goes to the principal it named
                raise
            except Unreachable:
                self.close()
                raise
            self.partners.served(address)
            return result
        raise Unreachable("; ".join(failures) or "no server to try")

    def _order(self) -> list[str]:
        """The open connection first (it keeps USE db), unless an answer named the principal."""
        order = self.partners.candidates()
        if self.address is not None and self.partners.hint is None and self.address in order:
            order.remove(self.address)
            order.insert(0, self.address)
        return order

    def _connect(self, address: str) -> Client:
        if self._client is not None and self.address == address:
            return self._client
        self.close()
        self._client, self.address = Client.connect(address, timeout=self.connect_timeout, **self.auth), address
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client, self.address = None, None
