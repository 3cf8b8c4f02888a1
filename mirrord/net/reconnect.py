"""The redial loop every node-to-node link runs: the partner link and the witness links.

One connection at a time: dial and serve it until it fails (`connect_once`
returns or raises), say what was lost, then wait `core.backoff.reconnect_delay`
(jittered) and dial again, while `should_run` says the link is still wanted.
A connection that came up resets the backoff. A refusal (the peer answered
no: a configuration problem) waits the longest delay. A bug in one connection
is logged with its traceback and the link dials again: it never dies silently.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

import structlog

from mirrord.core.backoff import reconnect_delay
from mirrord.core.types import ProtocolError


class EndpointState(Protocol):
    """The node, as far as this loop needs it (so this module imports nothing above it)."""

    async def wait_endpoint_started(self) -> None: ...

log = structlog.get_logger()

NETWORK_ERRORS = (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError, ConnectionError)
REFUSED_ATTEMPT = 32  # a refusal waits the longest delay


class LinkRefused(Exception):
    """The peer answered `refuse`: a configuration problem, not a network one."""


@dataclass(frozen=True)
class Link:
    """What differs between links: the loop itself is `run_link`."""

    name: str  # "partner" or "witness": events partner_link_lost, witness_link_failed...
    should_run: Callable[[], bool]
    connect_once: Callable[[], Awaitable[None]]  # one connection, served until it fails
    connected: Callable[[], bool]  # whether the connection that just failed had come up
    on_lost: Callable[[], None]  # the state to reset after each connection
    on_refused: Callable[[LinkRefused], None]
    context: Callable[[], dict]  # fields for the log events (database, role, ...)


async def run_link(node: EndpointState, link: Link, rand: Callable[[], float] = random.random) -> None:
    """Keep the link up while it is wanted (until cancelled)."""
    attempt = 0
    while link.should_run():
        try:
            await link.connect_once()
            attempt = 0
        except asyncio.CancelledError:
            raise
        except LinkRefused as exc:
            link.on_refused(exc)
            attempt = REFUSED_ATTEMPT
        except NETWORK_ERRORS as exc:
            if link.connected() or attempt == 0:
                log.warning(f"{link.name}_link_lost", error=repr(exc), **link.context())
        except Exception:  # a bug must end this connection, never the link: log it and dial again
            log.exception(f"{link.name}_link_failed", **link.context())
        finally:
            link.on_lost()
        await node.wait_endpoint_started()
        await asyncio.sleep(reconnect_delay(attempt, rand()))
        attempt += 1
