"""The lease holder killed (SIGKILL) while a play is being forwarded to it (#14 item 3).

The holder is a real ``ublox-sim serve`` process; the survivor runs in this process,
with its lease clock injected. The holder is stopped (SIGSTOP) before the play is sent,
so the forwarded request sits whole in its socket, unread, when it is killed: the
survivor's client gets a clear, retryable ``503 world_leased`` with ``Retry-After`` and
the play did not land. Once the holder's lease has expired (the injected clock moved by
the TTL, no sleep), the same request with the same ``Idempotency-Key`` is played by the
survivor, which takes the world over from the last committed state; retried again it
is replayed: the play lands once, never twice. ``/metrics`` counts the failed forward."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from cluster_helpers import child_env
from live_server import ADMIN_KEY, OPERATOR, deadline_in, free_port

from ublox_sim.core.clock import SimClock
from ublox_sim.server import ServerConfig, create_app
from ublox_sim.store.postgres.lease import DEFAULT_TTL

pytestmark = pytest.mark.anyio
PLAY = {"player_id": "buyer", "hours": 0.05}


@pytest.fixture
def holder(pg_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``ublox-sim serve`` on the database, once it says it serves; killed at the end."""
    port = free_port()
    env = child_env(UBLOX_ADMIN_KEY=ADMIN_KEY, UBLOX_HOME=str(tmp_path / "holder"))
    command = [sys.executable, "-m", "ublox_sim", "serve", "--store", pg_url]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--tick", "86400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # "serving" is printed once its engine is open
            if "ublox-sim serving" in line:
                break
        else:
            raise AssertionError(f"the holder did not start (exit {proc.wait()})")
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@contextlib.asynccontextmanager
async def _survivor(
    url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A server in this process on the same database (its client, its app)."""
    monkeypatch.setenv("UBLOX_STORE", url)
    monkeypatch.setenv("UBLOX_HOME", str(home))
    config = ServerConfig(
        admin_key=ADMIN_KEY,
        allowed_hosts=("testserver",),
        tick_seconds=None,
        advertise="http://survivor.invalid:1",
    )
    app = create_app(config=config)
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, app


async def _ok(response: httpx.Response, status: int = 201) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def _sessions(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM play_sessions"))
    finally:
        await conn.close()


async def test_a_holder_killed_while_a_play_is_forwarded_to_it(
    holder: tuple[subprocess.Popen[str], str],
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc, holder_url = holder
    async with _survivor(pg_url, tmp_path / "survivor", monkeypatch) as (survivor, app):
        server = app.state.server
        leases = server.engine.store.leases
        for pid, usd in (("maker", "0"), ("buyer", "100")):
            body = {"player_id": pid, "usd_obbba": usd}
            await _ok(await survivor.post("/api/players", json=body, headers=OPERATOR))
        pto = {
            "pto_id": "w",
            "game_name": "W",
            "creator_id": "maker",
            "atu_required": 100,
            "pts_offered": 10,
            "price_per_pts": "1",
            "funding_deadline": deadline_in(7),
        }
        await _ok(await survivor.post("/api/ptos", json=pto, headers=OPERATOR))
        buy = {"player_id": "buyer", "hours": 10}
        await _ok(await survivor.post("/api/ptos/w/shares", json=buy, headers=OPERATOR))
        async with httpx.AsyncClient(base_url=holder_url, trust_env=False, timeout=60) as direct:
            # The holder plays the world first: it holds its lease from now on.
            await _ok(await direct.post("/api/ptos/w/play", json=PLAY, headers=OPERATOR))
        assert await _sessions(pg_url) == 1
        # The survivor's lease clock, from now on moved by the test alone.
        clock = leases.clock = SimClock(datetime.now(UTC))

        # The forwarded request is sent whole, then the holder dies before reading it.
        sent = anyio.Event()
        request = server.forwarder.client.request

        async def trace(name: str, info: object) -> None:
            if name == "http11.receive_response_headers.started":
                sent.set()

        async def traced(*args: Any, **kwargs: Any) -> httpx.Response:
            return await request(*args, extensions={"trace": trace}, **kwargs)

        monkeypatch.setattr(server.forwarder.client, "request", traced)
        keyed = {**OPERATOR, "Idempotency-Key": "play-once"}
        proc.send_signal(signal.SIGSTOP)
        answers: list[httpx.Response] = []

        async def play() -> None:
            answers.append(await survivor.post("/api/ptos/w/play", json=PLAY, headers=keyed))

        async with anyio.create_task_group() as tg:
            tg.start_soon(play)
            await sent.wait()
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL

        (refused,) = answers
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "world_leased"
        assert 1 <= int(refused.headers["retry-after"]) <= DEFAULT_TTL
        assert await _sessions(pg_url) == 1  # it did not land
        assert server.forwarder.failed["connection_lost"] == 1
        metrics = (await survivor.get("/metrics")).text
        assert 'ublox_forward_failures_total{reason="connection_lost"} 1.0' in metrics

        # Within the TTL the world is the dead holder's; past it, the survivor's.
        clock.advance((DEFAULT_TTL + 0.1) / 3600)
        played = await _ok(await survivor.post("/api/ptos/w/play", json=PLAY, headers=keyed))
        assert "w" in leases.held
        again = await survivor.post("/api/ptos/w/play", json=PLAY, headers=keyed)
        assert again.status_code == 201 and again.json() == played
        assert again.headers["idempotent-replayed"] == "true"
        assert await _sessions(pg_url) == 2  # the holder's play and this one, once
        assert await server.engine.store.verify() == []
