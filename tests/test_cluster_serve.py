"""``ublox-sim serve --store URL`` four times on one PostgreSQL database (#14 item 3): any
process answers any request. Buyers spread over the four servers race for a PTO's ten
shares: exactly ten sold, every other buyer refused, balances exact on every server; a
token issued by one server is valid on the others; every server's ``/ws/events`` streams
every server's purchases, in the same (commit) order. Plays for one world sent to every
server are all played: the servers that do not hold its lease forward them to the one
that does (``serve --advertise``), which alone steps the world."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cluster_helpers import child_env
from live_server import ADMIN_KEY, OPERATOR, deadline_in, free_port
from websockets.asyncio.client import ClientConnection, connect

pytestmark = pytest.mark.anyio
SERVERS = 4
BUYERS = 400


def _serve(url: str, port: int, home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = child_env(UBLOX_ADMIN_KEY=ADMIN_KEY, UBLOX_HOME=str(home))
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ublox_sim",
                "serve",
                "--store",
                url,
                "--port",
                str(port),
                "--tick",
                "86400",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


@pytest.fixture
def servers(pg_url: str, tmp_path: Path) -> Iterator[list[str]]:
    ports = [free_port() for _ in range(SERVERS)]
    procs = [
        _serve(pg_url, port, tmp_path / f"home{k}", tmp_path / f"serve{k}.log")
        for k, port in enumerate(ports)
    ]
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(30) for proc in procs] == [0] * SERVERS
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.asynccontextmanager
async def _clients(servers: list[str]) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client of each server, once every one answers."""
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for url in servers:
            client = httpx.AsyncClient(base_url=url, timeout=60, trust_env=False)
            clients.append(await stack.enter_async_context(client))
            await _answering(client)
        yield clients


async def _answering(client: httpx.AsyncClient) -> None:
    """Wait until the server answers (it starts in the background)."""
    for _ in range(400):
        try:
            if (await client.get("/api/stats")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{client.base_url} did not start")


async def test_four_servers_sell_exactly_the_ten_shares(servers: list[str]) -> None:
    async with _clients(servers) as clients:
        first = clients[0]
        names = [f"b{i:03d}" for i in range(BUYERS)]
        players = [("maker", "0"), *((n, "50") for n in names)]
        registered = await asyncio.gather(  # spread over the servers too
            *(
                clients[i % SERVERS].post(
                    "/api/players", json={"player_id": pid, "usd_obbba": usd}, headers=OPERATOR
                )
                for i, (pid, usd) in enumerate(players)
            )
        )
        assert {r.status_code for r in registered} == {201}
        pto = {
            "pto_id": "race",
            "game_name": "Race",
            "creator_id": "maker",
            "atu_required": 10,
            "pts_offered": 10,
            "price_per_pts": "2.50",
            "funding_deadline": deadline_in(7),
        }
        assert (await first.post("/api/ptos", json=pto, headers=OPERATOR)).status_code == 201
        issued = (await first.post("/api/players/b000/tokens", headers=OPERATOR)).json()
        mine = {"Authorization": f"Bearer {issued['token']}"}
        for client in clients:  # a token of the first server, good on every one
            assert (await client.get("/api/players/b000", headers=mine)).status_code == 200

        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(
                    connect(u.replace("http", "ws") + "/ws/events", proxy=None, open_timeout=10)
                )
                for u in servers
            ]
            responses = await _buy_all(clients, names)
            streams = [await _until_funded(ws) for ws in sockets]
        # Every server streamed every server's purchases, in one (commit) order.
        assert all(stream == streams[0] for stream in streams), streams
        assert Counter(kind for _, kind, _ in streams[0])["shares_bought"] == 10
        assert [seq for seq, _, _ in streams[0]] == sorted(seq for seq, _, _ in streams[0])
        sold = [n for n, r in zip(names, responses, strict=True) if r.status_code == 201]
        assert sorted(p for _, kind, p in streams[0] if kind == "shares_bought") == sorted(sold)
        refused = Counter(r.json()["error"]["code"] for r in responses if r.status_code != 201)
        assert len(sold) == 10, refused
        assert set(refused) <= {"shares_unavailable", "invalid_state"}, refused
        for k, client in enumerate(clients):
            race = (await client.get("/api/ptos/race", headers=OPERATOR)).json()
            assert (race["pts_sold"], race["status"]) == (10, "in_progress")
            for n in names[k::37]:  # a sample of balances, read on every server
                player = (await client.get(f"/api/players/{n}", headers=OPERATOR)).json()
                assert player["usd_obbba_balance"] == ("47.50" if n in sold else "50.00")


async def _buy_all(clients: list[httpx.AsyncClient], names: list[str]) -> list[httpx.Response]:
    return await asyncio.gather(
        *(
            clients[i % SERVERS].post(
                "/api/ptos/race/shares", json={"player_id": n, "hours": 1}, headers=OPERATOR
            )
            for i, n in enumerate(names)
        )
    )


async def _until_funded(ws: ClientConnection) -> list[tuple[int, str, str]]:
    """(seq, kind, player) of every event up to the PTO's funding."""
    seen: list[tuple[int, str, str]] = []
    async with asyncio.timeout(60):
        while not seen or seen[-1][1] != "pto_funded":
            event = json.loads(await ws.recv())
            seen.append((event["seq"], event["kind"], event.get("player_id", "")))
    return seen


PLAYERS = 12


async def test_plays_for_one_world_are_answered_by_every_server(
    servers: list[str], pg_url: str
) -> None:
    """Only the world's lease holder steps it; the other servers forward its plays there
    and relay the answers, so every play sent to any server is played (none is a 503)."""
    async with _clients(servers) as clients:
        first = clients[0]
        names = [f"p{i:02d}" for i in range(PLAYERS)]
        for pid, usd in (("maker", "0"), *((n, "20") for n in names)):
            body = {"player_id": pid, "usd_obbba": usd}
            assert (
                await first.post("/api/players", json=body, headers=OPERATOR)
            ).status_code == 201
        pto = {
            "pto_id": "world",
            "game_name": "World",
            "creator_id": "maker",
            "atu_required": 10,
            "pts_offered": 4 * PLAYERS,
            "price_per_pts": "1",
            "funding_deadline": deadline_in(7),
        }
        assert (await first.post("/api/ptos", json=pto, headers=OPERATOR)).status_code == 201
        for n in names:  # every share sold: the PTO is funded, its world is played
            buy = {"player_id": n, "hours": 4}
            assert (
                await first.post("/api/ptos/world/shares", json=buy, headers=OPERATOR)
            ).status_code == 201
        issued = (await first.post("/api/players/p00/tokens", headers=OPERATOR)).json()
        as_p00 = {"Authorization": f"Bearer {issued['token']}"}

        async def play(k: int, n: str) -> httpx.Response:
            headers = as_p00 if n == "p00" else OPERATOR  # a player's own token too
            body = {"player_id": n, "hours": 1.0}
            return await clients[k % SERVERS].post(
                "/api/ptos/world/play", json=body, headers=headers
            )

        # Each player plays twice, each time on another server, all at once.
        plays = [(i + j, n) for i, n in enumerate(names) for j in (0, 1)]
        answers = await asyncio.gather(*(play(k, n) for k, n in plays))
        assert [r.status_code for r in answers] == [201] * len(plays), [
            r.text for r in answers if r.status_code != 201
        ]
        # An Idempotency-Key retried on every server: played once, replayed three times.
        keyed = {**OPERATOR, "Idempotency-Key": "play-once"}
        body = {"player_id": "p01", "hours": 1.0}
        once = [await c.post("/api/ptos/world/play", json=body, headers=keyed) for c in clients]
        assert [r.status_code for r in once] == [201] * SERVERS, [r.text for r in once]
        assert all(r.json() == once[0].json() for r in once)
        assert [r.headers.get("idempotent-replayed") for r in once].count("true") == SERVERS - 1

        for client in clients:  # the same state, read on every server
            for n in names:
                player = (await client.get(f"/api/players/{n}", headers=OPERATOR)).json()
                assert player["total_play_time"] == (3.0 if n == "p01" else 2.0), player
        holders = await _lease_holders(pg_url)
        assert list(holders) == ["world"]  # stepped by one process
    assert _verify(pg_url) == ""


async def _lease_holders(url: str) -> dict[str, str]:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT pto_id, address FROM world_leases")
    finally:
        await conn.close()
    return {str(p): str(a) for p, a in rows}


def _verify(url: str) -> str:
    """``ublox-sim verify --store URL``'s complaints ('' when clean), beside the servers."""
    done = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "verify", "--store", url],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


@pytest.mark.parametrize("url", ["ftp://host:1", "http://", "http://host:1/api", "host:1"])
def test_a_bad_advertised_address_exits_2_before_anything_is_made(url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "serve", "--home", str(home), "--advertise", url],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"--advertise must be http://HOST[:PORT] or https://..., got {url!r}" in done.stderr
    assert not home.exists()
