"""Two game servers on one PostgreSQL database (#14 item 3): a token issued by one is
valid on the other, a revocation on one counts on the other, and an Idempotency-Key's
retry on the other process replays instead of paying twice (also when both run it at
once). Both apps run in this process, each with its own engine and actors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ublox_sim.server import ServerConfig, create_app
from ublox_sim.store.postgres.backend import CLUSTER_ENV

pytestmark = pytest.mark.anyio
KEY = "cluster-admin-key-0123456789"  # every process is given the same key
OP = {"Authorization": f"Bearer {KEY}"}


@asynccontextmanager
async def _servers(
    url: str, root: Path, monkeypatch: pytest.MonkeyPatch, count: int = 2
) -> AsyncIterator[list[httpx.AsyncClient]]:
    monkeypatch.setenv("UBLOX_STORE", url)
    monkeypatch.delenv(CLUSTER_ENV, raising=False)  # the default: shared
    async with AsyncExitStack() as stack:
        clients = []
        for k in range(count):
            # Nothing shared through the file system: the store is $UBLOX_STORE's database.
            monkeypatch.setenv("UBLOX_HOME", str(root / f"process-{k}"))
            config = ServerConfig(admin_key=KEY, allowed_hosts=("testserver",), tick_seconds=None)
            app = create_app(config=config)
            await stack.enter_async_context(app.api.router.lifespan_context(app.api))
            transport = httpx.ASGITransport(app=app)
            client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            clients.append(await stack.enter_async_context(client))
        yield clients


async def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


async def _setup(client: httpx.AsyncClient) -> None:
    for pid, usd in (("maker", "0"), ("buyer", "100")):
        body = {"player_id": pid, "usd_obbba": usd}
        await _ok(await client.post("/api/players", json=body, headers=OP), 201)
    pto = {
        "pto_id": "keys",
        "game_name": "Keys",
        "creator_id": "maker",
        "atu_required": 10,
        "pts_offered": 50,
        "price_per_pts": "1",
        "funding_deadline": "2999-01-01T00:00:00Z",
    }
    await _ok(await client.post("/api/ptos", json=pto, headers=OP), 201)


async def test_a_token_issued_by_one_process_is_valid_on_another_and_revoked_on_all(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _servers(pg_url, tmp_path, monkeypatch) as (one, two):
        await _setup(one)
        issued = await _ok(await one.post("/api/players/buyer/tokens", headers=OP), 201)
        mine = {"Authorization": f"Bearer {issued['token']}"}
        for client in (one, two):
            await _ok(await client.get("/api/players/buyer", headers=mine))
        await _ok(await two.delete("/api/players/buyer/tokens", headers=OP), 204)
        for client in (one, two):
            r = await client.get("/api/players/buyer", headers=mine)
            assert r.status_code == 401, r.text


async def test_a_key_retried_on_another_process_moves_money_once(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _servers(pg_url, tmp_path, monkeypatch) as (one, two):
        await _setup(one)
        body = {"player_id": "buyer", "hours": 3}
        first = await one.post(
            "/api/ptos/keys/shares", json=body, headers={**OP, "Idempotency-Key": "k-1"}
        )
        retry = await two.post(
            "/api/ptos/keys/shares", json=body, headers={**OP, "Idempotency-Key": "k-1"}
        )
        assert first.status_code == retry.status_code == 201, retry.text
        assert first.json() == retry.json()
        assert retry.headers.get("idempotent-replayed") == "true"
        # Both processes at once, with another key: one unit commits, the other replays.
        both = await asyncio.gather(
            *(
                c.post("/api/ptos/keys/shares", json=body, headers={**OP, "Idempotency-Key": "k-2"})
                for c in (one, two)
            )
        )
        assert [r.status_code for r in both] == [201, 201], [r.text for r in both]
        assert both[0].json() == both[1].json()
        for client in (one, two):
            buyer = await _ok(await client.get("/api/players/buyer", headers=OP))
            assert buyer["usd_obbba_balance"] == "94.00"
            assert (await _ok(await client.get("/api/ptos/keys", headers=OP)))["pts_sold"] == 6


async def test_a_play_on_a_world_another_process_steps_is_a_503_with_retry_after(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _servers(pg_url, tmp_path, monkeypatch) as (one, two):
        await _setup(one)
        buy = {"player_id": "buyer", "hours": 50}
        await _ok(await one.post("/api/ptos/keys/shares", json=buy, headers=OP), 201)  # funded
        play = {"player_id": "buyer", "hours": 1.0}
        await _ok(await one.post("/api/ptos/keys/play", json=play, headers=OP), 201)
        played = (await _ok(await two.get("/api/players/buyer", headers=OP)))["total_play_time"]
        r = await two.post("/api/ptos/keys/play", json=play, headers={**OP, "Idempotency-Key": "p"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "world_leased"
        assert 1 <= int(r.headers["retry-after"]) <= 5  # the lease's TTL at most
        buyer = await _ok(await two.get("/api/players/buyer", headers=OP))
        assert buyer["total_play_time"] == played  # nothing changed
