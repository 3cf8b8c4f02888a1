"""The node's HTTP server: health routes for load balancers, /status and /metrics.

One aiohttp server in the node's event loop (`--metrics HOST:PORT`, also
`--http`). The decisions are `core.health`'s; this module only gathers each
database's facts, calls it and writes the answer. Routes:

    GET /principal?db=X   200 where X is served as principal, else 503 (alias /primary)
    GET /mirror?db=X      200 where X is the mirror, else 503 (alias /replica)
    GET /health           200 once the node is up with its databases loaded
    GET /status[?db=X]    the rows of sys.database_mirroring as JSON (= mirrorctl status --json)
    GET /metrics          Prometheus text format

Any other path is 404 and any other method 405 (aiohttp's own answers): a
balancer that asks the wrong question must not read "yes".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mirrord.core.health import Answer, DatabaseFacts, health_answer, mirror_answer, principal_answer

log = structlog.get_logger()


@dataclass(frozen=True)
class NodeView:
    """What the routes read from the node (callables, so this module imports nothing above it)."""

    name: str
    facts: Callable[[str], DatabaseFacts | None]  # a database's facts, None when it is not here
    status_rows: Callable[[str | None], list[dict]]  # sys.database_mirroring rows, all or one database
    up: Callable[[], tuple[bool, int, dict[str, str]]]  # (loaded and client port open, databases, quarantined: why)
    registry: CollectorRegistry


def _json(answer: Answer) -> web.Response:
    return web.json_response(answer.body, status=answer.status, dumps=lambda v: json.dumps(v, default=str))


@web.middleware
async def _no_tracebacks(request: web.Request, handler) -> web.StreamResponse:
    """A bug in a route is logged here and answered 500 with one line: never a traceback to the client."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # aiohttp's own answers (404, 405)
    except Exception:
        log.exception("http_route_failed", path=request.path)
        return web.json_response({"error": "internal error; see the node's log (http_route_failed)"}, status=500)


class HttpServer:
    """The routes above on HOST:PORT, served from the node's event loop."""

    def __init__(self, view: NodeView) -> None:
        self.view = view
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[_no_tracebacks])
        app.router.add_get("/principal", self._principal)
        app.router.add_get("/primary", self._principal)
        app.router.add_get("/mirror", self._mirror)
        app.router.add_get("/replica", self._mirror)
        app.router.add_get("/health", self._health)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (raises OSError when the address is taken)."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        log.info("http_started", address=f"{host}:{port}")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _facts(self, db: str | None) -> DatabaseFacts | None:
        return self.view.facts(db) if db else None

    async def _principal(self, request: web.Request) -> web.Response:
        db = request.query.get("db")
        return _json(principal_answer(db, self._facts(db)))

    async def _mirror(self, request: web.Request) -> web.Response:
        db = request.query.get("db")
        return _json(mirror_answer(db, self._facts(db)))

    async def _health(self, request: web.Request) -> web.Response:
        loaded, databases, quarantined = self.view.up()
        return _json(health_answer(self.view.name, loaded, databases, quarantined))

    async def _status(self, request: web.Request) -> web.Response:
        return _json(Answer(200, self.view.status_rows(request.query.get("db"))))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.view.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
