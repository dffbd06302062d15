"""Embedding: the Engine inside a real ASGI app served by a real server on loopback.

The host (uvicorn + Starlette) owns the event loop, the engine lives in the app's
lifespan, and requests call it concurrently. After the server shuts down, the
store it left behind must verify clean.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import (
    InvalidInput,
    Refusal,
    SharesUnavailable,
    UbloxError,
    UnknownPlayer,
    UnknownPTO,
)
from ublox_sim.core.views import as_json
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store

PARAMS = WorldParams(size=8)


def error_response(exc: UbloxError) -> JSONResponse:
    if isinstance(exc, UnknownPlayer | UnknownPTO):
        status = 404
    elif isinstance(exc, Refusal):
        status = 409
    elif isinstance(exc, InvalidInput):
        status = 422
    else:
        status = 500
    return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=status)


def make_app(home: Path) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Engine.open(home, seed=3, clock=SimClock(), world=PARAMS) as engine:
            app.state.engine = engine
            yield

    def engine_of(request: Request) -> Engine:
        engine: Engine = request.app.state.engine
        return engine

    async def register(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            info = await engine_of(request).register_player(
                body["player_id"], usd_obbba=Decimal(str(body.get("usd_obbba", "0")))
            )
        except UbloxError as exc:
            return error_response(exc)
        return JSONResponse(as_json(info), status_code=201)

    async def launch(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            info = await engine_of(request).launch_pto(
                pto_id=body["pto_id"],
                game_name=body["game_name"],
                creator_id=body["creator_id"],
                atu_required=int(body["atu_required"]),
                pts_offered=int(body["pts_offered"]),
                price_per_pts=Decimal(str(body["price_per_pts"])),
                funding_deadline=timedelta(hours=float(body["deadline_hours"])),
            )
        except UbloxError as exc:
            return error_response(exc)
        return JSONResponse(as_json(info), status_code=201)

    async def buy(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            token = await engine_of(request).buy_pts(
                body["player_id"], request.path_params["pto_id"], body["hours"]
            )
        except UbloxError as exc:
            return error_response(exc)
        return JSONResponse(as_json(token), status_code=201)

    async def get_player(request: Request) -> JSONResponse:
        try:
            info = await engine_of(request).get_player(request.path_params["player_id"])
        except UbloxError as exc:
            return error_response(exc)
        return JSONResponse(as_json(info))

    async def get_pto(request: Request) -> JSONResponse:
        try:
            info = await engine_of(request).get_pto(request.path_params["pto_id"])
        except UbloxError as exc:
            return error_response(exc)
        return JSONResponse(as_json(info))

    return Starlette(
        routes=[
            Route("/players", register, methods=["POST"]),
            Route("/players/{player_id}", get_player, methods=["GET"]),
            Route("/ptos", launch, methods=["POST"]),
            Route("/ptos/{pto_id}", get_pto, methods=["GET"]),
            Route("/ptos/{pto_id}/buy", buy, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


class ServerThread:
    """uvicorn serving ``app`` on a loopback socket, in a thread with its own event loop."""

    def __init__(self, app: Starlette) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
            ws="none",
            http="h11",
            loop="asyncio",
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.thread.start()
        with anyio.fail_after(120):
            while not self.server.started:
                if not self.thread.is_alive():
                    raise RuntimeError(f"the server stopped while starting: {self.error!r}")
                await anyio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        # Joined off the event loop, bounded: a server that does not stop fails the test.
        await anyio.to_thread.run_sync(self.thread.join, 15)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("the server did not shut down within 15 s")


@pytest.mark.asyncio
async def test_engine_embedded_in_a_starlette_app_served_by_uvicorn(tmp_path: Path) -> None:
    server = ServerThread(make_app(tmp_path))
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            with anyio.fail_after(120):
                r = await client.post("/players", json={"player_id": "creator"})
                assert r.status_code == 201, r.text
                r = await client.post(
                    "/ptos",
                    json={
                        "pto_id": "pto_web",
                        "game_name": "Web Caverns",
                        "creator_id": "creator",
                        "atu_required": 10,
                        "pts_offered": 20,
                        "price_per_pts": "2.50",
                        "deadline_hours": 48,
                    },
                )
                assert r.status_code == 201, r.text
                assert r.json()["funding_goal"] == "50.00"

                # Fifty players sign up concurrently, then race for twenty shares.
                players = [f"web{i:02d}" for i in range(50)]
                statuses: dict[str, int] = {}

                async def sign_up(pid: str) -> None:
                    r = await client.post("/players", json={"player_id": pid, "usd_obbba": "10"})
                    statuses[pid] = r.status_code

                async with anyio.create_task_group() as tg:
                    for pid in players:
                        tg.start_soon(sign_up, pid)
                assert set(statuses.values()) == {201}

                bought: dict[str, int] = {}
                errors: dict[str, str] = {}

                async def buy(pid: str) -> None:
                    r = await client.post("/ptos/pto_web/buy", json={"player_id": pid, "hours": 1})
                    bought[pid] = r.status_code
                    if r.status_code != 201:
                        errors[pid] = r.json()["error"]

                async with anyio.create_task_group() as tg:
                    for pid in players:
                        tg.start_soon(buy, pid)
                assert sorted(bought.values()).count(201) == 20
                assert set(errors.values()) <= {SharesUnavailable.code, "invalid_state"}
                assert len(errors) == 30

                r = await client.get("/ptos/pto_web")
                assert r.json()["status"] == "in_progress"
                assert r.json()["pts_sold"] == 20
                assert r.json()["funding_raised"] == "50.00"
                # (Concurrent reads: sequential requests on one loopback connection each wait
                # out Nagle's algorithm against delayed ACKs, some 40 ms apiece.)
                balances: dict[str, str] = {}

                async def balance(pid: str) -> None:
                    r = await client.get(f"/players/{pid}")
                    assert r.status_code == 200
                    balances[pid] = r.json()["usd_obbba_balance"]

                async with anyio.create_task_group() as tg:
                    for pid in players:
                        tg.start_soon(balance, pid)
                for pid in players:
                    expected = "7.50" if bought[pid] == 201 else "10.00"
                    assert balances[pid] == expected

                # Refusals travel as clear HTTP errors and change nothing.
                r = await client.post("/players", json={"player_id": "web00", "usd_obbba": "1"})
                assert (r.status_code, r.json()["error"]) == (409, "already_exists")
                r = await client.post("/ptos/pto_web/buy", json={"player_id": "nobody", "hours": 1})
                assert r.status_code == 404
                r = await client.post(
                    "/ptos/pto_web/buy", json={"player_id": "web00", "hours": 1.5}
                )
                assert (r.status_code, r.json()["error"]) == (422, "invalid_input")
                r = await client.get("/players/nobody")
                assert (r.status_code, r.json()["error"]) == (404, "unknown_player")
                r = await client.post("/players", json={"player_id": "poor", "usd_obbba": "-1"})
                assert (r.status_code, r.json()["error"]) == (422, "invalid_amount")
    finally:
        await server.stop()
    assert server.error is None
    assert not server.thread.is_alive()

    # The lifespan closed the engine: the store is complete, consistent and released.
    assert verify_store(tmp_path) == []
    async with Engine.open(tmp_path, seed=3, clock=SimClock(), world=PARAMS) as engine:
        assert len(await engine.player_ids()) == 51
        pto = await engine.get_pto("pto_web")
        assert pto.pts_sold == 20 and pto.status == "in_progress"
        winners = [p for p in players if bought[p] == 201]
        for pid in winners:
            assert (await engine.get_player(pid)).usd_obbba_balance == Decimal("7.50")


@pytest.mark.asyncio
async def test_engine_runs_inside_a_hosts_own_task_group(tmp_path: Path) -> None:
    """``task_group=tg``: the actors live in the host's task group, next to its own tasks."""
    ticks: list[int] = []

    async def host_task(stop: anyio.Event) -> None:
        while not stop.is_set():
            ticks.append(1)
            await anyio.sleep(0.001)

    stop = anyio.Event()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(host_task, stop)
            async with Engine.open(
                tmp_path, seed=3, clock=SimClock(), world=PARAMS, task_group=tg
            ) as engine:
                await engine.register_player("alice", usd_obbba=10)
                await engine.deposit("alice", Decimal("0.05"))
                assert (await engine.get_player("alice")).usd_obbba_balance == Decimal("10.05")
            stop.set()
    assert ticks
    assert verify_store(tmp_path) == []
