"""Where to send a database's statements: the partner list, and how long to keep trying.

How it works, as the reference's "Connect Clients to a Database Mirroring
Session": the application names an initial partner (and optionally more) in
the URL. The client tries the initial partner first, then the others. An
answer "not principal, the principal is X" puts X first in the next round; the
principal it reaches tells it its failover partner (the partner_address column
of sys.database_mirroring), which joins the list, so a client given one address
still finds the new principal after a failover. Between rounds it waits with a
growing, jittered backoff, for at most failover_timeout seconds per operation.

Pure: no sockets, no clock; callers pass `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from mirrorctl.dbapi.errors import InterfaceError
from mirrord.core.backoff import jittered
from mirrord.core.types import Endpoint

SCHEME = "mirror://"
URL_OPTIONS = ("failover_timeout", "connect_timeout", "query_timeout", "tls_ca")


@dataclass(frozen=True)
class Target:
    """What a URL names: the partners' client addresses, the database, and options."""

    partners: tuple[str, ...]
    database: str
    options: dict[str, float] = field(default_factory=dict)
    user: str | None = field(default=None)
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None

    def credentials(self) -> dict:
        """user, password, tls_ca for Client.connect (None: from the environment there)."""
        return {"user": self.user, "password": self.password, "tls_ca": self.tls_ca}


def normalize_address(text: str) -> str:
    """'host:port' (IPv6 as '[::1]:port'); ValueError if malformed or a tcp:// endpoint URL."""
    if "://" in text:
        raise ValueError(f"{text!r}: a partner is a client address host:port, not a URL")
    endpoint = Endpoint.parse(text)
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


def parse_url(url: str) -> Target:
    """Parse 'mirror://[user:password@]host:port[,host:port...]/db[?failover_timeout=30&tls_ca=FILE...]'.

    InterfaceError if malformed; the user and password are percent-decoded, and
    an error message never shows the password.
    """
    if not isinstance(url, str) or not url.lower().startswith(SCHEME):
        raise InterfaceError(f"connection URL {url!r} must start with {SCHEME} (mirror://host:port[,host:port]/db)")
    rest, _, query = url[len(SCHEME):].partition("?")
    userinfo, at, after = rest.partition("/")[0].rpartition("@")
    user = password = None
    if at:
        rest = rest[len(userinfo) + 1:]
        name, colon, secret = userinfo.partition(":")
        user, password = unquote(name), unquote(secret) if colon else None
        url = f"{SCHEME}{name}:***@{rest}" + (f"?{query}" if query else "")  # shown in errors from here on
        if not user:
            raise InterfaceError(f"connection URL {url!r}: the login name before '@' is empty")
    hosts, slash, database = rest.partition("/")
    if not slash or not database or "/" in database:
        raise InterfaceError(f"connection URL {url!r} must name one database: mirror://host:port/db")
    partners: list[str] = []
    for part in hosts.split(","):
        try:
            address = normalize_address(part)
        except ValueError as exc:
            raise InterfaceError(f"connection URL {url!r}: {exc}") from None
        if address not in partners:
            partners.append(address)
    options = _options(url, query)
    tls_ca = options.pop("tls_ca", None)
    return Target(tuple(partners), database, options, user, password, tls_ca)  # type: ignore[arg-type]


def _options(url: str, query: str) -> dict:
    options: dict = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in URL_OPTIONS:
            raise InterfaceError(f"connection URL {url!r}: unknown option {key!r}; options: {', '.join(URL_OPTIONS)}")
        if key == "tls_ca":
            if not value:
                raise InterfaceError(f"connection URL {url!r}: tls_ca needs the path of the CA certificate")
            options[key] = value
        else:
            options[key] = positive_seconds(key, value)
    return options


def positive_seconds(name: str, value: object) -> float:
    """A timeout setting as float seconds > 0; InterfaceError otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise InterfaceError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


class PartnerList:
    """The addresses to try, in order, and what answers taught about them."""

    def __init__(self, partners: tuple[str, ...] | list[str]) -> None:
        if not partners:
            raise InterfaceError("at least one partner address is needed")
        self.known: list[str] = list(partners)  # the URL's, then learned failover partners
        self.hint: str | None = None  # where the last answer said the principal is
        self.current: str | None = None  # the last address that served as principal

    def candidates(self) -> list[str]:
        """One round of addresses to try: the hint, the last principal, then the list in order."""
        order = [a for a in (self.hint, self.current) if a is not None] + self.known
        return list(dict.fromkeys(order))

    def learn_principal(self, address: str | None) -> bool:
        """An answer named the principal (not_principal, or a mirror's status); True if usable."""
        usable = self._usable(address)
        if usable is not None:
            self.hint = usable
            self._remember(usable)
        return usable is not None

    def learn_partner(self, address: str | None) -> None:
        """The principal named its failover partner: keep it in the list."""
        usable = self._usable(address)
        if usable is not None:
            self._remember(usable)

    def served(self, address: str) -> None:
        """address serves the database now."""
        self.current = address
        self.hint = None

    def lost(self, address: str) -> None:
        """address stopped serving: no longer tried first (it stays in the list)."""
        if self.current == address:
            self.current = None
        if self.hint == address:
            self.hint = None

    def _remember(self, address: str) -> None:
        if address not in self.known:
            self.known.append(address)

    @staticmethod
    def _usable(address: str | None) -> str | None:
        """A client address, or None: a tcp:// endpoint URL names the mirroring port, not the client port."""
        if not address:
            return None
        try:
            return normalize_address(address)
        except ValueError:
            return None


@dataclass(frozen=True)
class RetrySchedule:
    """Backoff between connection rounds: first, first*factor, ... up to cap, within timeout seconds."""

    timeout: float
    first: float = 0.05
    factor: float = 2.0
    cap: float = 1.0

    def start(self, now: float) -> "Backoff":
        """The backoff of one operation that starts waiting at now."""
        return Backoff(self, now + self.timeout, self.first)


@dataclass
class Backoff:
    """The running state of one operation's retries."""

    schedule: RetrySchedule
    deadline: float
    next_delay: float

    def delay(self, now: float, rand: float = 1.0) -> float | None:
        """How long to wait before the next round, or None when the deadline has passed.

        rand (0..1) spreads the wait over [d/2, d] (mirrord.core.backoff.jittered):
        clients cut by one failover must not all redial in lockstep.
        """
        left = self.deadline - now
        if left <= 0:
            return None
        wait = min(jittered(self.next_delay, rand), left)
        self.next_delay = min(self.next_delay * self.schedule.factor, self.schedule.cap)
        return wait

    def remaining(self, now: float) -> float:
        """Seconds left until the deadline (0 when passed)."""
        return max(0.0, self.deadline - now)
