"""Who may do what: the operator's key, players' signed tokens, expiry and revocation.

In-process (httpx over ASGI, the app's lifespan opened by the test), so each rule is
checked in milliseconds; the wall clock the tokens see is a number the test moves.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from ublox_sim.server import ServerConfig, create_app
from ublox_sim.server.auth import ADMIN_KEY_ENV, load_admin_key

KEY = "operator-key-for-tests-0123456789"
OP = {"Authorization": f"Bearer {KEY}"}


class Wall:
    """A wall clock the test moves: tokens expire without the test waiting."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def api(
    home: Path, wall: Callable[[], float] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    config = ServerConfig(
        admin_key=KEY,
        allowed_hosts=("testserver",),
        tick_seconds=None,
        **({"wall_time": wall} if wall else {}),
    )
    app = create_app(home, config=config)
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def deadline() -> str:
    return "2999-01-01T00:00:00Z"


async def world(client: httpx.AsyncClient) -> dict[str, str]:
    """Two players with money and tokens, one PTO of ada's that is funding."""
    for pid, usd in (("ada", "100"), ("bo", "100")):
        await ok(
            await client.post(
                "/api/players", json={"player_id": pid, "usd_obbba": usd}, headers=OP
            ),
            201,
        )
    tokens = {}
    for pid in ("ada", "bo"):
        issued = await ok(await client.post(f"/api/players/{pid}/tokens", headers=OP), 201)
        tokens[pid] = issued["token"]
    pto = {
        "pto_id": "cave",
        "game_name": "Cave",
        "creator_id": "ada",
        "atu_required": 1,
        "pts_offered": 10,
        "price_per_pts": "1",
        "funding_deadline": deadline(),
    }
    await ok(await client.post("/api/ptos", json=pto, headers=bearer(tokens["ada"])), 201)
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


async def balances(client: httpx.AsyncClient) -> dict[str, Any]:
    return {
        pid: (await ok(await client.get(f"/api/players/{pid}", headers=OP)))["usd_obbba_balance"]
        for pid in ("ada", "bo")
    }


@pytest.mark.anyio
async def test_a_player_cannot_buy_play_or_transfer_as_another_and_nothing_changes(
    tmp_path: Path,
) -> None:
    async with api(tmp_path / "home") as client:
        tokens = await world(client)
        as_bo = bearer(tokens["bo"])
        before = await balances(client)
        attempts = [
            ("/api/ptos/cave/shares", {"player_id": "ada", "hours": 1}),
            ("/api/ptos/cave/play", {"player_id": "ada", "hours": 1}),
            ("/api/players/ada/transfer", {"to_player": "bo", "amount": "5"}),
            ("/api/ptos/cave/atu", {"units": 1}),  # not bo's PTO
            ("/api/players/ada/deposit", {"amount": "5"}),  # operator only
            ("/api/players", {"player_id": "mallory"}),  # operator only
            ("/api/backups", {}),
        ]
        for path, body in attempts:
            r = await client.post(path, json=body, headers=as_bo)
            assert r.status_code == 403, (path, r.text)
            assert error(r) == "forbidden"
        for path in ("/api/players/ada", "/api/players/ada/transactions", "/api/export"):
            r = await client.get(path, headers=as_bo)
            assert r.status_code == 403, (path, r.text)
        assert await balances(client) == before
        # Launching a PTO as someone else is refused too.
        pto = {
            "pto_id": "fake",
            "game_name": "F",
            "creator_id": "ada",
            "atu_required": 0,
            "pts_offered": 1,
            "price_per_pts": "1",
            "funding_deadline": deadline(),
        }
        assert (await client.post("/api/ptos", json=pto, headers=as_bo)).status_code == 403
        assert (await client.get("/api/ptos/fake")).status_code == 404
        # What bo may do as itself works.
        await ok(
            await client.post(
                "/api/ptos/cave/shares", json={"player_id": "bo", "hours": 2}, headers=as_bo
            ),
            201,
        )
        sent = await ok(
            await client.post(
                "/api/players/bo/transfer", json={"to_player": "ada", "amount": "3"}, headers=as_bo
            )
        )
        assert sent["usd_obbba_balance"] == "95.00"


@pytest.mark.anyio
async def test_requests_without_valid_credentials_are_401(tmp_path: Path) -> None:
    wall = Wall()
    async with api(tmp_path / "home", wall) as client:
        tokens = await world(client)
        good = tokens["bo"]
        header, payload, signature = good.split(".")
        tampered = [
            f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
            f"{header}.{payload[:-2]}{'xy' if payload[-2:] != 'xy' else 'zz'}.{signature}",
            "not-a-token",
            KEY + "x",
        ]
        cases = [None, *(bearer(t) for t in tampered), {"Authorization": f"Basic {KEY}"}]
        for headers in cases:
            r = await client.post(
                "/api/ptos/cave/shares", json={"player_id": "bo", "hours": 1}, headers=headers
            )
            assert r.status_code == 401, (headers, r.text)
            assert error(r) == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        r = await client.get("/api/players/bo", headers=bearer(good))
        assert r.status_code == 200
        # An hour later (the default lifetime, on the wall clock) the token is expired.
        wall.now += 3600
        r = await client.get("/api/players/bo", headers=bearer(good))
        assert r.status_code == 401 and error(r) == "unauthorized"
        # A fresh token works; revoking makes every earlier token of bo's useless.
        fresh = (
            await ok(
                await client.post("/api/players/bo/tokens", json={"ttl_seconds": 60}, headers=OP),
                201,
            )
        )["token"]
        await ok(await client.get("/api/players/bo", headers=bearer(fresh)))
        r = await client.delete("/api/players/bo/tokens", headers=bearer(fresh))
        assert r.status_code == 204
        assert (await client.get("/api/players/bo", headers=bearer(fresh))).status_code == 401
        newer = (await ok(await client.post("/api/players/bo/tokens", headers=OP), 201))["token"]
        await ok(await client.get("/api/players/bo", headers=bearer(newer)))
        # Public reads need nothing.
        for path in (
            "/api/ptos",
            "/api/ptos/cave",
            "/api/stats",
            "/api/players",
            "/api/ptos/cave/world.png",
        ):
            assert (await client.get(path)).status_code == 200, path


@pytest.mark.anyio
async def test_revocation_survives_a_restart(tmp_path: Path) -> None:
    async with api(tmp_path / "home") as client:
        tokens = await world(client)
        assert (await client.delete("/api/players/bo/tokens", headers=OP)).status_code == 204
    async with api(tmp_path / "home") as client:
        assert (
            await client.get("/api/players/bo", headers=bearer(tokens["bo"]))
        ).status_code == 401
        assert (
            await client.get("/api/players/ada", headers=bearer(tokens["ada"]))
        ).status_code == 200


@pytest.mark.anyio
async def test_the_leaderboard_is_public_and_shows_no_usd_balances(tmp_path: Path) -> None:
    async with api(tmp_path / "home") as client:
        await world(client)
        board = await ok(await client.get("/api/players"))
        assert {row["player_id"] for row in board} == {"ada", "bo"}
        assert all(
            set(row) == {"player_id", "xUSD_balance", "total_play_time", "phase_locks_count"}
            for row in board
        )


@pytest.mark.anyio
async def test_a_player_reads_its_own_ledger_page_by_page(tmp_path: Path) -> None:
    async with api(tmp_path / "home") as client:
        tokens = await world(client)
        as_bo = bearer(tokens["bo"])
        for _ in range(3):
            await ok(
                await client.post(
                    "/api/ptos/cave/shares", json={"player_id": "bo", "hours": 1}, headers=as_bo
                ),
                201,
            )
        seen: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await ok(
                await client.get(
                    f"/api/players/bo/transactions?limit=2&after={after}", headers=as_bo
                )
            )
            seen += page["items"]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        assert [t["tx_type"] for t in seen] == ["deposit", "investment", "investment", "investment"]
        assert [t["amount"] for t in seen] == ["100.00", "1.00", "1.00", "1.00"]
        assert all(t["timestamp"].endswith("Z") for t in seen)
        assert (
            await client.get("/api/players/bo/transactions?limit=0", headers=as_bo)
        ).status_code == 422


@pytest.mark.anyio
async def test_the_admin_key_never_appears_in_logs_exports_or_errors(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with api(tmp_path / "home") as client:
            await world(client)
            texts = []
            for headers in (OP, {"Authorization": f"Bearer {KEY}x"}, {"Authorization": KEY}):
                for r in (
                    await client.post(
                        "/api/players/nobody/deposit", json={"amount": "x"}, headers=headers
                    ),
                    await client.get("/api/players/nobody", headers=headers),
                    await client.post(
                        "/api/ptos",
                        content=b"{",
                        headers={**headers, "content-type": "application/json"},
                    ),
                ):
                    texts.append(r.text)
            export = await client.get("/api/export", headers=OP)
            assert export.status_code == 200
            texts.append(export.text)
            backup = await ok(await client.post("/api/backups", headers=OP), 201)
    assert all(KEY not in text for text in texts)
    assert KEY not in json.dumps(logs, default=str)
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert backup["name"]


def test_the_admin_key_file_is_created_once_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    key, path, created = load_admin_key(tmp_path / "home")
    assert created and path == tmp_path / "home" / "admin.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, _, created_again = load_admin_key(tmp_path / "home")
    assert (again, created_again) == (key, False)
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-the-environment-123456")
    assert load_admin_key(tmp_path / "home")[0] == "from-the-environment-123456"


async def funded_cave(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    """bo owns all of cave's PTS and ada spent its ATU: cave is playable."""
    await ok(
        await client.post(
            "/api/ptos/cave/shares",
            json={"player_id": "bo", "hours": 10},
            headers=bearer(tokens["bo"]),
        ),
        201,
    )
    await ok(
        await client.post("/api/ptos/cave/atu", json={"units": 1}, headers=bearer(tokens["ada"]))
    )


@pytest.mark.anyio
async def test_a_play_shorter_than_a_hundredth_of_an_hour_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with api(tmp_path / "home") as client:
        tokens = await world(client)
        await funded_cave(client, tokens)
        as_bo = bearer(tokens["bo"])
        before = await ok(await client.get("/api/players/bo", headers=OP))
        for hours in (5e-324, 1e-10, 0.0099):
            r = await client.post(
                "/api/ptos/cave/play", json={"player_id": "bo", "hours": hours}, headers=as_bo
            )
            assert r.status_code == 422 and error(r) == "invalid_input", (hours, r.text)
        assert await ok(await client.get("/api/players/bo", headers=OP)) == before
        stats = await ok(await client.get("/api/stats"))
        assert stats["play_sessions"]["count"] == 0
        # 0.01 h itself is the shortest play.
        await ok(
            await client.post(
                "/api/ptos/cave/play", json={"player_id": "bo", "hours": 0.01}, headers=as_bo
            ),
            201,
        )


@pytest.mark.anyio
async def test_stats_give_sums_of_hours_to_two_decimals_without_float_noise(
    tmp_path: Path,
) -> None:
    async with api(tmp_path / "home") as client:
        tokens = await world(client)
        await funded_cave(client, tokens)
        for _ in range(3):  # 0.1 + 0.1 + 0.1 == 0.30000000000000004 in floats
            await ok(
                await client.post(
                    "/api/ptos/cave/play",
                    json={"player_id": "bo", "hours": 0.1},
                    headers=bearer(tokens["bo"]),
                ),
                201,
            )
        r = await client.get("/api/stats")
        stats = r.json()
        assert stats["players"]["total_play_time"] == 0.3
        assert stats["play_sessions"]["duration_total"] == 0.3
        assert stats["pts_tokens"]["hours_played_total"] == 0.3
        assert "0000000" not in r.text


@pytest.mark.anyio
async def test_a_refused_request_is_not_stored_so_a_retry_with_its_key_runs_again(
    tmp_path: Path,
) -> None:
    """Only successes are stored under an Idempotency-Key: a refusal moved nothing, and
    the retry after the cause is fixed (here a deposit) must succeed, not replay it."""
    async with api(tmp_path / "home") as client:
        tokens = await world(client)
        send = {
            "headers": {**bearer(tokens["bo"]), "Idempotency-Key": "transfer-1"},
            "json": {"to_player": "ada", "amount": "150"},
        }
        r = await client.post("/api/players/bo/transfer", **send)
        assert r.status_code == 409 and error(r) == "insufficient_funds", r.text
        await ok(await client.post("/api/players/bo/deposit", json={"amount": "100"}, headers=OP))
        sent = await ok(await client.post("/api/players/bo/transfer", **send))
        assert sent["usd_obbba_balance"] == "50.00"
        # Now it is stored: a further retry replays the success and moves nothing.
        again = await ok(await client.post("/api/players/bo/transfer", **send))
        assert again == sent
        assert await balances(client) == {"ada": "250.00", "bo": "50.00"}
