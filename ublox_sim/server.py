"""An async game server on the Engine: JSON API, live events over WebSocket, a dashboard.

Install with ``pip install 'ublox-sim[server]'`` and run ``ublox-sim serve``. The
Engine is opened in the app's lifespan (never at import) and closed on shutdown:
uvicorn turns SIGINT/SIGTERM into a lifespan shutdown, which drains the actors,
commits and flushes. This module is also the pattern to copy into your own server.

Errors are JSON ``{"error": {"code": ..., "message": ...}}``: 422 for invalid input
(bad body, bad amount or id), 404 for unknown players/PTOs/tokens, 409 for a
refusal (insufficient funds, no shares left, wrong PTO state, id taken), 503 when
the engine is closing or its store failed. Never a 500 for a user's mistake.

``/ws/events`` streams public domain events as JSON objects, one per message, each
with its sequence number ``seq``; ``?since=N`` replays what was missed first. A
client that falls behind never slows the engine: it gets ``{"kind":
"events_dropped", "count": C, "since": N}`` and reconnects with ``?since=N``
(see event_socket.py).
"""

from __future__ import annotations

import math
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from .clock import SimClock, WallClock
from .engine import Engine
from .errors import (
    InvalidInput,
    Refusal,
    RuntimeFailure,
    StoreError,
    UbloxError,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
)
from .event_socket import parse_since, serve_events
from .heatmap import world_png as draw_world
from .logsetup import get_logger
from .views import as_json, leaderboard

log = get_logger(__name__)


# -- request bodies (the Engine's parameter names) --------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Money = Decimal | int | str


class NewPlayer(_Body):
    player_id: str
    usd_obbba: Money = 0
    tau_k: float = Field(default=1.0, ge=0, le=100)
    resonance_freq: float | None = Field(default=None, ge=0, le=100)


class AmountBody(_Body):
    amount: Money


class NewPTO(_Body):
    pto_id: str
    game_name: str
    creator_id: str
    atu_required: int
    pts_offered: int
    price_per_pts: Money
    funding_deadline: datetime = Field(description="ISO 8601 with a time zone")
    description: str = ""
    amplification: float = 100.0


class BuyBody(_Body):
    player_id: str
    hours: int


class AtuBody(_Body):
    units: int


class PlayBody(_Body):
    player_id: str
    hours: float


class BackupBody(_Body):
    name: str | None = None


BODIES: dict[str, type[_Body]] = {
    "NewPlayer": NewPlayer,
    "AmountBody": AmountBody,
    "NewPTO": NewPTO,
    "BuyBody": BuyBody,
    "AtuBody": AtuBody,
    "PlayBody": PlayBody,
    "BackupBody": BackupBody,
}


# -- errors ------------------------------------------------------------------------------


def error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, UnknownPlayer | UnknownPTO | UnknownToken):
        status = 404
    elif isinstance(exc, Refusal):
        status = 409
    elif isinstance(exc, InvalidInput):
        status = 422
    elif isinstance(exc, RuntimeFailure | StoreError):
        status = 503
    else:
        status = 500
    code = getattr(exc, "code", "internal_error")
    return JSONResponse({"error": {"code": code, "message": str(exc)}}, status_code=status)


async def _body(request: Request, model: type[_Body]) -> Any:
    try:
        raw = await request.json()
    except ValueError as exc:
        raise InvalidInput(f"the body is not JSON: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(problems) from exc


def _decimal(value: Money) -> Decimal | int:
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError as exc:
            raise InvalidInput(f"not an amount: {value!r}") from exc
    return value


Handler = Callable[[Request], Awaitable[Any]]


def endpoint(fn: Handler, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: JSON out, our errors mapped to their status codes."""

    async def wrapped(request: Request) -> Response:
        try:
            result = await fn(request)
        except UbloxError as exc:
            return error_response(exc)
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=status)

    return wrapped


# -- the app -----------------------------------------------------------------------------


def create_app(
    home: Path | str | None = None,
    *,
    scenario: Path | str | None = None,
    ticks_per_second: float = 2.0,
    seed: int | None = None,
) -> Starlette:
    """The Starlette app. Nothing is opened until the server starts its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loaded = None
        if scenario is not None:
            from .scenario import load_scenario

            loaded = load_scenario(scenario, seed=seed)
        clock: SimClock | WallClock = (
            SimClock(loaded.scenario.clock.start) if loaded else WallClock()
        )
        params = None
        if loaded is not None:
            from .runner import world_params

            params = world_params(loaded.scenario)
        app.state.run = None
        async with Engine.open(home, clock=clock, seed=seed, world=params) as engine:
            app.state.engine = engine
            async with anyio.create_task_group() as tg:
                if loaded is not None and isinstance(clock, SimClock):
                    tg.start_soon(_live_scenario, app, engine, loaded, clock, ticks_per_second)
                yield
                tg.cancel_scope.cancel()
        log.info("server.engine_closed")

    def engine_of(request: Request) -> Engine:
        engine: Engine = request.app.state.engine
        return engine

    async def stats(request: Request) -> Any:
        engine = engine_of(request)
        data: dict[str, Any] = dict(await engine.stats())
        data["clock"] = {"now": engine.clock.now().isoformat()}
        # The scenario this server plays (or the run recorded in its store), so a
        # dashboard can say "finished" rather than "live".
        data["run"] = request.app.state.run or await engine.store.run_status()
        return data

    async def create_player(request: Request) -> Any:
        body: NewPlayer = await _body(request, NewPlayer)
        info = await engine_of(request).register_player(
            body.player_id,
            usd_obbba=_decimal(body.usd_obbba),
            tau_k=body.tau_k,
            resonance_freq=body.resonance_freq,
        )
        return as_json(info)

    async def list_players(request: Request) -> Any:
        engine = engine_of(request)
        try:
            top = int(request.query_params.get("top", "10"))
        except ValueError as exc:
            raise InvalidInput("top must be a whole number") from exc
        players = [engine.peek_player(pid) for pid in engine.player_ids()]
        return leaderboard(players, max(0, min(top, 1000)))

    async def get_player(request: Request) -> Any:
        return as_json(await engine_of(request).get_player(request.path_params["player_id"]))

    async def deposit(request: Request) -> Any:
        body: AmountBody = await _body(request, AmountBody)
        info = await engine_of(request).deposit(
            request.path_params["player_id"], _decimal(body.amount)
        )
        return as_json(info)

    async def create_pto(request: Request) -> Any:
        body: NewPTO = await _body(request, NewPTO)
        if body.funding_deadline.tzinfo is None:
            raise InvalidInput("funding_deadline needs a time zone, e.g. 2026-01-01T00:00:00Z")
        info = await engine_of(request).launch_pto(
            pto_id=body.pto_id,
            game_name=body.game_name,
            creator_id=body.creator_id,
            atu_required=body.atu_required,
            pts_offered=body.pts_offered,
            price_per_pts=_decimal(body.price_per_pts),
            funding_deadline=body.funding_deadline,
            description=body.description,
            amplification=body.amplification,
        )
        return as_json(info)

    async def list_ptos(request: Request) -> Any:
        return [as_json(p) for p in await engine_of(request).list_ptos()]

    async def get_pto(request: Request) -> Any:
        return as_json(await engine_of(request).get_pto(request.path_params["pto_id"]))

    async def buy(request: Request) -> Any:
        body: BuyBody = await _body(request, BuyBody)
        token = await engine_of(request).buy_pts(
            body.player_id, request.path_params["pto_id"], body.hours
        )
        return as_json(token)

    async def atu(request: Request) -> Any:
        body: AtuBody = await _body(request, AtuBody)
        return as_json(
            await engine_of(request).spend_atu(request.path_params["pto_id"], body.units)
        )

    async def play(request: Request) -> Any:
        body: PlayBody = await _body(request, PlayBody)
        result = await engine_of(request).play(
            body.player_id, request.path_params["pto_id"], body.hours
        )
        return as_json(result)

    async def world_png(request: Request) -> Any:
        arrays = await engine_of(request).world(request.path_params["pto_id"])
        image = await anyio.to_thread.run_sync(lambda: draw_world(arrays["theta"]))
        return Response(image, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def create_backup(request: Request) -> Any:
        raw = await request.body()
        body = await _body(request, BackupBody) if raw.strip() else BackupBody()
        path = await engine_of(request).backup(body.name)
        return {"name": path.name, "path": str(path)}

    async def list_backups(request: Request) -> Any:
        return engine_of(request).store.list_backups()

    async def export(request: Request) -> Any:
        return await engine_of(request).store.export_data()

    async def openapi(request: Request) -> Any:
        return openapi_document()

    async def dashboard(request: Request) -> Response:
        page = files("ublox_sim").joinpath("static/dashboard.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def events(websocket: WebSocket) -> None:
        try:
            since = parse_since(websocket.query_params.get("since"))
        except InvalidInput:
            await websocket.close(code=1008, reason="since must be a whole number ≥ 0")
            return
        await serve_events(websocket, websocket.app.state.engine, since=since)

    routes = [
        Route("/", dashboard),
        Route("/openapi.json", endpoint(openapi)),
        Route("/api/stats", endpoint(stats)),
        Route("/api/players", endpoint(create_player, 201), methods=["POST"]),
        Route("/api/players", endpoint(list_players), methods=["GET"]),
        Route("/api/players/{player_id}", endpoint(get_player)),
        Route("/api/players/{player_id}/deposit", endpoint(deposit), methods=["POST"]),
        Route("/api/ptos", endpoint(create_pto, 201), methods=["POST"]),
        Route("/api/ptos", endpoint(list_ptos), methods=["GET"]),
        Route("/api/ptos/{pto_id}", endpoint(get_pto)),
        Route("/api/ptos/{pto_id}/shares", endpoint(buy, 201), methods=["POST"]),
        Route("/api/ptos/{pto_id}/atu", endpoint(atu), methods=["POST"]),
        Route("/api/ptos/{pto_id}/play", endpoint(play, 201), methods=["POST"]),
        Route("/api/ptos/{pto_id}/world.png", endpoint(world_png)),
        Route("/api/backups", endpoint(create_backup, 201), methods=["POST"]),
        Route("/api/backups", endpoint(list_backups), methods=["GET"]),
        Route("/api/export", endpoint(export)),
        WebSocketRoute("/ws/events", events),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _live_scenario(
    app: Starlette, engine: Engine, loaded: Any, clock: SimClock, ticks_per_second: float
) -> None:
    """Play a scenario in the server in simulated time, ``ticks_per_second`` ticks a second."""
    from .runner import Runner

    runner = Runner(engine, loaded.scenario, clock)
    run = {"name": loaded.scenario.name, "tick": 0, "total_ticks": runner.total, "finished": False}
    app.state.run = run
    if await engine.store.is_empty():
        await runner.setup()
    for tick in range(runner.total):
        await runner.tick(tick)
        run["tick"] = tick + 1
        await anyio.sleep(1.0 / ticks_per_second if math.isfinite(ticks_per_second) else 0)
    run["finished"] = True
    log.info("server.scenario_finished", ticks=runner.total)


# -- OpenAPI -------------------------------------------------------------------------------

_ROUTES: list[tuple[str, str, str | None, str]] = [
    ("get", "/api/stats", None, "Counts and totals of the store"),
    ("post", "/api/players", "NewPlayer", "Register a player (a starting balance is a deposit)"),
    ("get", "/api/players", None, "Top players by xUSD (?top=N)"),
    ("get", "/api/players/{player_id}", None, "One player"),
    ("post", "/api/players/{player_id}/deposit", "AmountBody", "Deposit USD-OBBBA"),
    ("post", "/api/ptos", "NewPTO", "Launch a PTO"),
    ("get", "/api/ptos", None, "Every PTO"),
    ("get", "/api/ptos/{pto_id}", None, "One PTO"),
    ("post", "/api/ptos/{pto_id}/shares", "BuyBody", "Buy PTS (hours)"),
    ("post", "/api/ptos/{pto_id}/atu", "AtuBody", "Spend Agential Time Units"),
    ("post", "/api/ptos/{pto_id}/play", "PlayBody", "Play a session in the PTO's world"),
    ("get", "/api/ptos/{pto_id}/world.png", None, "Heatmap of the world's coherence field"),
    ("post", "/api/backups", "BackupBody", "Create a backup"),
    ("get", "/api/backups", None, "List backups"),
    ("get", "/api/export", None, "The full JSON export"),
]


def openapi_document() -> dict[str, Any]:
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    paths: dict[str, Any] = {}
    for method, path, body, summary in _ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {
                "200": {"description": "OK"},
                "404": {
                    "description": "unknown id",
                    "content": {"application/json": {"schema": error}},
                },
                "409": {
                    "description": "refused (no change)",
                    "content": {"application/json": {"schema": error}},
                },
                "422": {
                    "description": "invalid input",
                    "content": {"application/json": {"schema": error}},
                },
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if body:
            op["requestBody"] = {
                "required": body != "BackupBody",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                },
            }
        paths.setdefault(path, {})[method] = op
    schemas = {
        name: model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, model in BODIES.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ublox-sim", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def serve(
    home: Path | None,
    host: str,
    port: int,
    scenario: Path | None,
    ticks_per_second: float,
    seed: int | None,
) -> None:
    """Run the server until SIGINT/SIGTERM (then the lifespan drains and commits)."""
    import uvicorn

    app = create_app(home, scenario=scenario, ticks_per_second=ticks_per_second, seed=seed)
    # uvicorn re-raises the signal once its graceful shutdown is done; for SIGTERM
    # that default action would turn a clean, committed shutdown into exit -15.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on")
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["create_app", "openapi_document", "serve"]
