"""The FastAPI app on the Engine: nothing is opened until the server starts its lifespan.

``create_app`` builds the app from ``ServerConfig``; the Engine is opened in the
lifespan and closed on shutdown (uvicorn turns SIGINT/SIGTERM into a lifespan
shutdown, which drains the actors, commits and flushes). Without a scenario the game
lives in wall time: worlds step and deadlines fire every ``tick_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from ..core.clock import SimClock, WallClock
from ..core.errors import UbloxError
from ..core.logsetup import get_logger
from ..engine import DEFAULT_IDLE_TIMEOUT, Engine
from ..store.home import Home
from . import errors
from .auth import DEFAULT_TOKEN_TTL, Authority, load_admin_key
from .forward import Forwarder
from .guard import BodyGuard, HostGuard, MethodGuard, PlainErrors
from .idempotency import IdempotencyKeys
from .live import play_scenario, wall_ticks
from .metrics import Metrics
from .operation import ServerState
from .routes import router

log = get_logger(__name__)


# The names of this machine: `serve` always answers to them (beside --allowed-host), so
# the http://127.0.0.1:PORT/ it prints works whatever public names are configured.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """What an operator may set. Defaults are safe for a server on this machine only."""

    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS
    cors_origins: tuple[str, ...] = ()
    max_body: int = 1 << 20
    read_timeout: float = 10.0
    max_depth: int = 32
    token_ttl: int = DEFAULT_TOKEN_TTL
    tick_seconds: float | None = 1.0  # None: worlds do not step on the wall clock
    admin_key: str | None = None  # None: UBLOX_ADMIN_KEY or <home>/admin.key
    wall_time: Callable[[], float] = field(default=time.time)
    on_ready: Callable[[], None] | None = None  # called once the engine is open
    # Several processes on one database: where this server answers (``serve --advertise``),
    # recorded with its world leases so the others forward the plays of its worlds here.
    advertise: str | None = None
    # PostgreSQL: share the database with other processes (None: $UBLOX_CLUSTER, else
    # yes) or hold it alone (False: ``serve --exclusive``). A scenario's server is alone.
    shared: bool | None = None


_TAGS = [
    {"name": "players", "description": "players, their money and ledger"},
    {"name": "tokens", "description": "player tokens (issue, revoke)"},
    {"name": "ptos", "description": "PTOs, shares, ATU, play and world images"},
    {"name": "backups", "description": "backups and the export (operator)"},
    {"name": "stats", "description": "public totals"},
    {"name": "operations", "description": "health and metrics"},
]


def create_app(
    home: Path | str | None = None,
    *,
    scenario: Path | str | None = None,
    ticks_per_second: float = 2.0,
    seed: int | None = None,
    resume: bool = False,
    config: ServerConfig | None = None,
) -> Any:
    """The ASGI app (FastAPI behind the body, method and host guards)."""
    cfg = config or ServerConfig()
    game = _Game(Home.resolve(home), home, scenario, ticks_per_second, seed, resume, cfg)
    api = FastAPI(
        title="ublox-sim",
        version="1",
        lifespan=game.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        generate_unique_id_function=_operation_id,
        openapi_tags=_TAGS,
    )
    api.state.metrics = Metrics()
    errors.install(api)
    api.include_router(router)
    api.middleware("http")(_timing)
    return _Outer(_guarded(api, cfg), api)


def _operation_id(route: APIRoute) -> str:
    return route.name


@dataclass(frozen=True, slots=True)
class _Game:
    """What the lifespan opens: the Engine on ``home``, then the clock's task."""

    root: Home
    home: Path | str | None
    scenario: Path | str | None
    ticks_per_second: float
    seed: int | None
    resume: bool
    cfg: ServerConfig

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """``_serving``; an error of ours before it serves (the store locked, unreachable)
        is kept on ``app.state.startup_error`` for ``run.serve`` to raise as itself, so
        the CLI says it in one line instead of uvicorn's traceback and exit 3."""
        started = False
        try:
            async with self._serving(app):
                started = True
                yield
        except UbloxError as exc:
            if not started:
                app.state.startup_error = exc
            raise

    @asynccontextmanager
    async def _serving(self, app: FastAPI) -> AsyncIterator[None]:
        loaded = None
        params = None
        if self.scenario is not None:
            from ..sim.scenario import load_scenario

            loaded = load_scenario(self.scenario, seed=self.seed)
            params = loaded.scenario.world.params()
        clock: SimClock | WallClock = loaded.scenario.clock.sim_clock() if loaded else WallClock()
        key = self.cfg.admin_key or load_admin_key(self.root.root)[0]
        caps = loaded.scenario.engine if loaded else None  # a scenario's memory knobs
        async with Engine.open(
            self.home,
            clock=clock,
            # The scenario's seed (``self.seed`` already replaced it), as ``run`` plays it.
            seed=loaded.scenario.seed if loaded else self.seed,
            world=params,
            max_active=caps.max_active if caps else None,
            idle_timeout=caps.idle_timeout if caps else DEFAULT_IDLE_TIMEOUT,
            # A scenario's bytes need every world stepped here, by its ticks.
            shared=False if loaded is not None and self.cfg.shared is None else self.cfg.shared,
        ) as engine:
            metrics: Metrics = app.state.metrics
            metrics.attach(engine)
            versions = await engine.store.token_versions()
            authority = Authority(
                key, token_ttl=self.cfg.token_ttl, wall_time=self.cfg.wall_time, versions=versions
            )
            server = ServerState(engine, authority, IdempotencyKeys(engine.store), metrics)
            leases = getattr(engine.store, "leases", None)
            async with AsyncExitStack() as stack:
                if leases is not None:  # shared: forward plays to their world's holder
                    leases.address = self.cfg.advertise or ""
                    server.forwarder = metrics.forwarder = Forwarder(leases)
                    stack.push_async_callback(server.forwarder.aclose)
                app.state.server = server
                async with anyio.create_task_group() as tg:
                    if loaded is not None and isinstance(clock, SimClock):
                        server.run = {}
                        tg.start_soon(
                            play_scenario,
                            engine,
                            loaded,
                            clock,
                            self.ticks_per_second,
                            self.resume,
                            server.run,
                        )
                    elif self.cfg.tick_seconds is not None:
                        tg.start_soon(wall_ticks, engine, self.cfg.tick_seconds)
                    if self.cfg.on_ready is not None:
                        self.cfg.on_ready()
                    yield
                    tg.cancel_scope.cancel()
        log.info("server.engine_closed")


async def _timing(request: Request, call_next: Any) -> Response:
    started = time.perf_counter()
    response: Response = await call_next(request)
    route = request.scope.get("route")
    path = getattr(route, "path", "unmatched")
    metrics: Metrics = request.app.state.metrics
    metrics.http_latency.labels(request.method, path).observe(time.perf_counter() - started)
    return response


def _guarded(api: FastAPI, cfg: ServerConfig) -> Any:
    """``api`` behind the guards, outermost last: host, (CORS,) body, method."""
    # The router's own routes: FastAPI wraps an included router into one entry.
    app: Any = MethodGuard(api, lambda: [*router.routes, *api.router.routes[:1]])
    app = BodyGuard(
        app,
        max_body=cfg.max_body,
        read_timeout=cfg.read_timeout,
        max_depth=cfg.max_depth,
        allowed_origins=frozenset(cfg.cors_origins),
    )
    if cfg.cors_origins:
        app = CORSMiddleware(
            app,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
        app = PlainErrors(app)
    return HostGuard(app, cfg.allowed_hosts)


class _Outer:
    """The guarded ASGI app; ``.api`` is the FastAPI app inside (state, openapi())."""

    def __init__(self, app: Any, api: FastAPI) -> None:
        self.app = app
        self.api = api

    @property
    def state(self) -> Any:
        return self.api.state

    def openapi(self) -> dict[str, Any]:
        return self.api.openapi()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.api(scope, receive, send)
            return
        await self.app(scope, receive, send)
