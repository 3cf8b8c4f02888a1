"""TLS for both ports, and who a peer is.

A node started with `--tls-dir DIR` reads `DIR/ca.crt` (one or more trusted
CAs), `DIR/<name>.crt` and `DIR/<name>.key` (made by `mirrord certs`).

* Mirroring endpoint: mutual TLS 1.3. Each side presents its certificate and
  requires the other's, signed by a trusted CA. The dialing side checks the
  certificate covers the host it dialed (the configured partner or witness);
  the accepting side checks the certificate covers the host of the endpoint
  the first frame claims (`peer_covers`), so a node holding a valid
  certificate for its own address still cannot speak as another node.
* Client port: TLS 1.3 with the node's certificate; clients check it against
  their `--tls-ca` and prove who they are by logging in (see `core.logins`).

`Listener` accepts connections itself and runs each TLS handshake with
`connect_accepted_socket`, so that a peer failing it is logged with its
address and the reason (asyncio's server-side handshake drops it silently),
and a handshake that does not finish is cut after HANDSHAKE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import structlog

log = structlog.get_logger()

HANDSHAKE_TIMEOUT = 10.0


class TlsSetupError(Exception):
    """The TLS files cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class TlsContexts:
    """The three contexts a secured node needs."""

    endpoint_server: ssl.SSLContext  # accepts peers: requires a certificate from our CA
    endpoint_client: ssl.SSLContext  # dials peers: presents ours, checks theirs and its host
    client_server: ssl.SSLContext    # the client port: presents ours, clients log in instead

    @classmethod
    def load(cls, directory: Path, name: str) -> "TlsContexts":
        """Read DIR/ca.crt, DIR/<name>.crt and DIR/<name>.key; TlsSetupError if unusable."""
        ca, crt, key = directory / "ca.crt", directory / f"{name}.crt", directory / f"{name}.key"
        for path in (ca, crt, key):
            if not path.is_file():
                raise TlsSetupError(f"{path} is missing; make it with 'mirrord certs "
                                    f"{'ca' if path == ca else 'node'} --dir {directory}"
                                    f"{'' if path == ca else f' --name {name} --host HOST'}'")
        try:
            return cls(_server(ca, crt, key, mutual=True), _dialer(ca, crt, key), _server(ca, crt, key, mutual=False))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TlsSetupError(f"the TLS files in {directory} cannot be used: {exc}") from None


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose == ssl.PROTOCOL_TLS_SERVER else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _server(ca: Path, crt: Path, key: Path, *, mutual: bool) -> ssl.SSLContext:
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    if mutual:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _dialer(ca: Path, crt: Path, key: Path) -> ssl.SSLContext:
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are its defaults
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(ca)
    return ctx


def client_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """What a client uses to reach a node's client port: the node's certificate must chain to ca_file."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"the CA file {ca_file} cannot be used: {exc}") from None
    return ctx


# ------------------------------------------------------------------ identity (pure)


def cert_hosts(peercert: dict | None) -> list[str]:
    """The DNS names and IP addresses a verified peer certificate (ssl's getpeercert() dict) covers."""
    if not peercert:
        return []
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]


def peer_covers(peercert: dict | None, host: str) -> bool:
    """Does the verified certificate name this host? An IP only by an IP entry (compared as
    addresses), a DNS name only by a DNS entry (without case), as in hostname checking."""
    try:
        want_ip = ipaddress.ip_address(host)
    except ValueError:
        want_ip = None
    for kind, value in (peercert or {}).get("subjectAltName", ()):
        if kind == "IP Address" and want_ip is not None:
            try:
                if ipaddress.ip_address(value.strip()) == want_ip:
                    return True
            except ValueError:
                continue
        elif kind == "DNS" and want_ip is None and value.lower() == host.lower():
            return True
    return False


# ------------------------------------------------------------------ listening

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """A TCP listener whose connections are handed over as streams, after the TLS handshake if ctx is set."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext | None, handler: Handler, port_name: str,
                 reader_class: type[asyncio.StreamReader] = asyncio.StreamReader) -> None:
        self._sock, self._ctx, self._handler, self._port_name = sock, ctx, handler, port_name
        self._reader_class = reader_class  # the client port's readers watch for the client going away
        # asyncio holds tasks weakly: without these references a connection's task can be
        # garbage-collected mid-await ("Task was destroyed but it is pending"), closing it
        self._connections: set[asyncio.Task] = set()
        self._task = asyncio.create_task(self._accept_loop(), name=f"accept-{port_name}")

    @classmethod
    async def start(cls, host: str, port: int, ctx: ssl.SSLContext | None, handler: Handler, port_name: str,
                    reader_class: type[asyncio.StreamReader] = asyncio.StreamReader) -> "Listener":
        """Listen on host:port (OSError if it cannot); connections are read through reader_class."""
        sock = socket.create_server((host, port), backlog=128)
        sock.setblocking(False)
        return cls(sock, ctx, handler, port_name, reader_class)

    def close(self) -> None:
        """Stop accepting (connections already handed over carry on)."""
        self._task.cancel()
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of descriptors, say: keep the listener
                log.warning("accept_failed", port=self._port_name, reason=str(exc))
                await asyncio.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # commits wait on small frames
            task = asyncio.create_task(self._connection(sock, addr))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _connection(self, sock: socket.socket, addr) -> None:
        loop = asyncio.get_running_loop()
        reader = self._reader_class(limit=1 << 16)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            kwargs = {} if self._ctx is None else {"ssl": self._ctx, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, **kwargs)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            log.warning("tls_handshake_refused", port=self._port_name, peer=_peer(addr), reason=str(exc) or type(exc).__name__)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._handler(reader, writer)


def _peer(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
