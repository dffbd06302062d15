"""The real game server (``python -m ublox_sim serve``) driven over loopback HTTP and WebSocket.

Each test starts the server as a child process on a free port of 127.0.0.1 (see
``live_server.py``), talks to it with httpx and the ``websockets`` client, then stops
it with SIGINT or SIGTERM and checks what it left behind: exit code 0, a store that
``verify_store`` finds exact, and balances that match what the API answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import signal
import socket
import sqlite3
import ssl
import struct
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import OPERATOR, LiveServer, deadline_in, error_code
from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ublox_sim.server.models import DepositBody, NewPlayer, NewPTO
from ublox_sim.store.verify import verify_store

# One SSL context for every client: httpx would otherwise load the CA bundle per client.
SSL = ssl.create_default_context()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "home", tmp_path / "server.log")
    live.start()
    try:
        yield live
    finally:
        if live.proc is not None:
            live.stop(signal.SIGINT)


def http(server: LiveServer, *, connections: int = 20) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=15,
        trust_env=False,
        verify=SSL,
        limits=limits,
        headers=OPERATOR,
    )


async def stop(server: LiveServer, sig: signal.Signals = signal.SIGINT) -> int:
    """Stop the server off the event loop (the WebSocket readers keep running meanwhile)."""
    return await asyncio.to_thread(server.stop, sig)


def http_tracebacks(log: str) -> list[str]:
    """Unhandled exceptions of HTTP requests in the server's log (not WebSocket ones)."""
    blocks = log.split("Exception in ASGI application")[1:]
    return [b for b in blocks if "h11_impl" in b or "httptools_impl" in b]


def asgi_tracebacks(log: str) -> list[str]:
    return log.split("Exception in ASGI application")[1:]


def cents(value: str | float | int) -> int:
    amount = Decimal(str(value)) * 100
    assert amount == amount.to_integral_value(), value
    return int(amount)


# -- reading /ws/events -------------------------------------------------------------------


@dataclass
class EventReader:
    """Reads every message of one /ws/events connection in a background task.

    Its waits are bounded by the caller's ``asyncio.timeout``."""

    ws: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False
    news: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
                self.news.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.news.set()

    def kinds(self) -> list[str]:
        return [m["kind"] for m in self.messages]

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            if self.closed:
                raise AssertionError(f"the event stream closed first: {self.kinds()[-20:]}")
            self.news.clear()
            await self.news.wait()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        await self.until(lambda: any(predicate(m) for m in self.messages))
        return next(m for m in self.messages if predicate(m))

    async def wait_closed(self) -> None:
        while not self.closed:
            self.news.clear()
            await self.news.wait()

    async def wait_quiet(self, quiet: float = 0.5) -> None:
        """Until nothing new arrived for ``quiet`` seconds."""
        while not self.closed:
            self.news.clear()
            try:
                await asyncio.wait_for(self.news.wait(), quiet)
            except TimeoutError:
                return


@asynccontextmanager
async def events(server: LiveServer) -> AsyncIterator[EventReader]:
    # The server subscribes right after accepting, before it can handle anything else:
    # once connect() returns, every later event reaches this client.
    async with connect(server.ws_url, proxy=None, open_timeout=10, close_timeout=5) as ws:
        reader = EventReader(ws)
        task = asyncio.create_task(reader.run())
        try:
            yield reader
        finally:
            await ws.close()
            async with asyncio.timeout(120):
                await task


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(kind in it for kind in wanted)


async def post(client: httpx.AsyncClient, path: str, body: Any, status: int = 201) -> Any:
    r = await client.post(path, json=body)
    assert r.status_code == status, (path, body, r.status_code, r.text)
    return r.json()


async def get(client: httpx.AsyncClient, path: str) -> Any:
    r = await client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    return r.json()


def new_pto(pto_id: str, creator: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pto_id": pto_id,
        "game_name": f"Game {pto_id}",
        "creator_id": creator,
        "atu_required": 10,
        "pts_offered": 10,
        "price_per_pts": "2.50",
        "funding_deadline": deadline_in(7),
    }
    body.update(overrides)
    return body


def read_balances(home: Path) -> dict[str, tuple[int, int]]:
    """Balances in cents straight from the database the server left behind."""
    conn = sqlite3.connect(f"{(home / 'ublox.db').as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT player_id, usd_obbba_balance, xUSD_balance FROM players")
        return {pid: (int(usd), int(xusd)) for pid, usd, xusd in rows}
    finally:
        conn.close()


# -- the story ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_full_story_over_http_with_live_events(server: LiveServer) -> None:
    async with asyncio.timeout(120):
        async with http(server) as client, events(server) as feed:
            creator = await post(
                client, "/api/players", {"player_id": "creator", "usd_obbba": "100"}
            )
            assert creator["usd_obbba_balance"] == "100.00"
            alice = await post(
                client,
                "/api/players",
                {"player_id": "alice", "usd_obbba": "50.00", "tau_k": 8.5},
            )
            assert (alice["usd_obbba_balance"], alice["xUSD_balance"]) == ("50.00", "0.00")
            await post(client, "/api/players", {"player_id": "bob", "usd_obbba": 30})

            deadline = (datetime.now().astimezone() + timedelta(days=3)).isoformat()
            pto = await post(
                client,
                "/api/ptos",
                new_pto(
                    "pto_story", "creator", game_name="Harmonic Caverns", funding_deadline=deadline
                ),
            )
            assert pto["status"] == "funding"
            assert (pto["funding_goal"], pto["funding_raised"]) == ("25.00", "0.00")
            # Stored in UTC to the second, whatever zone it was given in.
            assert pto["funding_deadline"].endswith("Z")
            assert datetime.fromisoformat(pto["funding_deadline"]) == datetime.fromisoformat(
                deadline
            ).replace(microsecond=0)

            token = await post(
                client, "/api/ptos/pto_story/shares", {"player_id": "alice", "hours": 6}
            )
            assert (token["holder"], token["hours_committed"], token["purchase_price"]) == (
                "alice",
                6.0,
                "15.00",
            )
            assert (await get(client, "/api/ptos/pto_story"))["status"] == "funding"
            await post(client, "/api/ptos/pto_story/shares", {"player_id": "bob", "hours": 4})
            funded = await get(client, "/api/ptos/pto_story")
            assert funded["status"] == "in_progress"
            assert (funded["pts_sold"], funded["funding_raised"]) == (10, "25.00")

            half = await post(client, "/api/ptos/pto_story/atu", {"units": 4}, status=200)
            assert (half["status"], half["atu_spent"]) == ("in_progress", 4)
            done = await post(client, "/api/ptos/pto_story/atu", {"units": 6}, status=200)
            assert (done["status"], done["atu_spent"]) == ("completed", 10)
            assert done["completion_time"]

            session = await post(
                client, "/api/ptos/pto_story/play", {"player_id": "alice", "hours": 2.5}
            )
            assert session["player_id"] == "alice" and session["hours"] == 2.5
            assert 0.0 <= session["quality"] <= 1.0
            earned = Decimal(session["xUSD_earned"])
            assert earned >= 0

            # Every step reached the live feed, in order.
            await feed.wait_for(lambda e: e["kind"] == "session_played")
            story = [
                "player_registered",
                "pto_launched",
                "shares_bought",
                "pto_funded",
                "atu_spent",
                "pto_completed",
                "session_played",
            ]
            assert is_subsequence(story, feed.kinds()), feed.kinds()
            counts = Counter(feed.kinds())
            assert counts["player_registered"] == 3 and counts["shares_bought"] == 2
            assert counts["atu_spent"] == 2 and counts["pto_funded"] == 1
            assert "events_dropped" not in counts
            by_kind = {e["kind"]: e for e in feed.messages}
            assert by_kind["pto_launched"]["game_name"] == "Harmonic Caverns"
            assert by_kind["pto_funded"]["funding_raised"] == "25.00"
            assert by_kind["pto_completed"]["payout"] == "25.00"
            assert by_kind["pto_completed"]["creator_id"] == "creator"
            assert by_kind["session_played"]["xUSD_earned"] == session["xUSD_earned"]

            # The read side.
            players = {
                pid: await get(client, f"/api/players/{pid}") for pid in ("creator", "alice", "bob")
            }
            assert players["creator"]["usd_obbba_balance"] == "125.00"  # the escrow paid out
            assert players["alice"]["usd_obbba_balance"] == "35.00"
            assert players["alice"]["xUSD_balance"] == session["xUSD_earned"]
            assert players["alice"]["total_play_time"] == 2.5
            assert players["bob"]["usd_obbba_balance"] == "20.00"

            top = await get(client, "/api/players?top=2")
            assert len(top) == 2
            everyone = await get(client, "/api/players")
            ranked = sorted(everyone, key=lambda p: (-Decimal(p["xUSD_balance"]), p["player_id"]))
            assert everyone == ranked and top == ranked[:2]

            stats = await get(client, "/api/stats")
            assert stats["players"]["count"] == 3
            assert stats["ptos"]["count"] == 1 and stats["ptos"]["by_status"] == {"completed": 1}
            assert stats["pts_tokens"]["count"] == 2
            assert stats["play_sessions"]["count"] == 1
            volume = stats["transactions"]["volume"]
            assert volume["deposit/USD-OBBBA"] == "180.00"
            assert volume["investment/USD-OBBBA"] == "25.00"
            assert volume["pto_completion/USD-OBBBA"] == "25.00"
            datetime.fromisoformat(stats["clock"]["now"])

            ptos = await get(client, "/api/ptos")
            assert [p["pto_id"] for p in ptos] == ["pto_story"]
            assert ptos[0] == await get(client, "/api/ptos/pto_story")

            r = await client.get("/api/ptos/pto_story/world.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.content.startswith(b"\x89PNG\r\n\x1a\n")
            width, height = struct.unpack(">II", r.content[16:24])
            assert width == height and width > 0

            backup = await post(client, "/api/backups", {"name": "story_backup"})
            assert backup["name"] == "story_backup"
            assert (server.home / "backups" / "story_backup").is_dir()  # no server path in the API
            unnamed = await client.post("/api/backups")  # no body: a generated name
            assert unnamed.status_code == 201, unnamed.text
            listed = await get(client, "/api/backups")
            names = {b["name"] for b in listed}
            assert {"story_backup", unnamed.json()["name"]} <= names
            assert all(b["size"] > 0 for b in listed)

            export = await get(client, "/api/export")
            assert {p["player_id"] for p in export["players"]} == {"creator", "alice", "bob"}
            assert [p["pto_id"] for p in export["ptos"]] == ["pto_story"]
            assert export["ptos"][0]["cdt"]  # the world's arrays travel with the export
            assert len(export["pts_tokens"]) == 2 and len(export["play_sessions"]) == 1
            types = Counter(t["tx_type"] for t in export["transactions"])
            assert types["deposit"] == 3 and types["investment"] == 2
            assert types["pto_completion"] == 1

            spec = await get(client, "/openapi.json")
            documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
            assert ("/api/players/{player_id}/transfer", "post") in documented
            for path, ops in spec["paths"].items():
                for method, op in ops.items():
                    assert op["operationId"] and op["tags"], (path, method)
                    assert "default" not in op["responses"], (path, method)
                    for status, response in op["responses"].items():
                        if status != "204":
                            assert response["content"], (path, method, status)

            # A clean shutdown while a WebSocket client is still connected.
            assert await stop(server, signal.SIGINT) == 0
            async with asyncio.timeout(120):
                await feed.wait_closed()

    assert http_tracebacks(server.output()) == []
    assert verify_store(server.home) == []
    balances = read_balances(server.home)
    assert balances["creator"] == (12500, 0)
    assert balances["alice"] == (3500, cents(session["xUSD_earned"]))
    assert balances["bob"] == (2000, 0)


# -- refusals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A request body sent as these bytes, not as JSON made from a value."""

    content: bytes


BUY = "/api/ptos/open/shares"
DEPOSIT = "/api/players/rich/deposit"
PAST = (datetime.now().astimezone() - timedelta(hours=1)).isoformat()
NAIVE = (datetime.now() + timedelta(days=1)).isoformat()

# (status, code or None for any, method, path, body). Set up: players maker (0), rich (100),
# poor (1.00); PTO "open" (5 PTS at 2.00, funding), PTO "sold" (its 1 PTS held by rich).
REFUSED: list[tuple[int, str | None, str, str, Any]] = [
    # 409: an economic rule said no.
    (409, "insufficient_funds", "POST", BUY, {"player_id": "poor", "hours": 1}),
    (409, "shares_unavailable", "POST", BUY, {"player_id": "rich", "hours": 6}),
    (409, "invalid_state", "POST", "/api/ptos/sold/shares", {"player_id": "rich", "hours": 1}),
    (409, "invalid_state", "POST", "/api/ptos/open/play", {"player_id": "rich", "hours": 1}),
    (409, "invalid_state", "POST", "/api/ptos/sold/play", {"player_id": "rich", "hours": 2}),
    (409, "invalid_state", "POST", "/api/ptos/sold/play", {"player_id": "poor", "hours": 1}),
    (409, "invalid_state", "POST", "/api/ptos/open/atu", {"units": 1}),
    (409, "already_exists", "POST", "/api/players", {"player_id": "rich", "usd_obbba": "5"}),
    (409, "already_exists", "POST", "/api/ptos", new_pto("open", "maker")),
    (409, "already_exists", "POST", "/api/ptos", new_pto("rich", "maker")),
    # 404: unknown players and PTOs in the path; 409: an unknown player named in the body.
    (404, "unknown_player", "GET", "/api/players/nobody", None),
    (404, "unknown_player", "POST", "/api/players/nobody/deposit", {"amount": "5"}),
    (404, "unknown_pto", "GET", "/api/ptos/nothing", None),
    (404, "unknown_pto", "GET", "/api/ptos/nothing/world.png", None),
    (404, "unknown_pto", "POST", "/api/ptos/nothing/shares", {"player_id": "rich", "hours": 1}),
    (409, "unknown_player", "POST", BUY, {"player_id": "nobody", "hours": 1}),
    (404, "unknown_pto", "POST", "/api/ptos/nothing/atu", {"units": 1}),
    (404, "unknown_pto", "POST", "/api/ptos/nothing/play", {"player_id": "rich", "hours": 1}),
    (409, "unknown_player", "POST", "/api/ptos/sold/play", {"player_id": "nobody", "hours": 1}),
    (409, "unknown_player", "POST", "/api/ptos", new_pto("orphan", "nobody")),
    # 422: bad JSON, missing or unknown fields, bad amounts and hours.
    (422, "invalid_input", "POST", BUY, Raw(b'{"player_id": "rich", "hours": ')),
    (422, "invalid_input", "POST", BUY, Raw(b"")),
    (422, "invalid_input", "POST", BUY, Raw(b"\xff\xfe")),
    (422, "invalid_input", "POST", BUY, Raw(b"null")),
    (422, "invalid_input", "POST", BUY, [1, 2]),
    (422, "invalid_input", "POST", BUY, {"player_id": "rich"}),
    (422, "invalid_input", "POST", BUY, {"player_id": "rich", "hours": 1, "bonus": 1}),
    (422, "invalid_input", "POST", BUY, {"player_id": "rich", "hours": 1.5}),
    (422, "invalid_input", "POST", BUY, {"player_id": "rich", "hours": 0}),
    (422, "invalid_input", "POST", BUY, {"player_id": "rich", "hours": -1}),
    (422, "invalid_input", "POST", BUY, {"player_id": "rich", "hours": "two"}),
    (422, "invalid_input", "POST", "/api/ptos/sold/play", {"player_id": "rich", "hours": 0}),
    (422, "invalid_input", "POST", "/api/ptos/sold/play", {"player_id": "rich", "hours": -0.5}),
    (422, "invalid_input", "POST", "/api/ptos/sold/atu", {"units": 0}),
    (422, "invalid_input", "POST", "/api/ptos/sold/atu", {"units": 2.5}),
    (422, "invalid_input", "POST", DEPOSIT, {"amount": "-5"}),
    (422, "invalid_input", "POST", DEPOSIT, {"amount": -5}),
    (422, "invalid_input", "POST", DEPOSIT, {"amount": "0.001"}),
    (422, "invalid_input", "POST", DEPOSIT, {"amount": 0.001}),
    (422, "invalid_input", "POST", DEPOSIT, {"amount": "0"}),
    (422, None, "POST", DEPOSIT, {"amount": "five"}),
    (422, None, "POST", DEPOSIT, {"amount": "NaN"}),
    (422, "invalid_input", "POST", DEPOSIT, {"amount": "5", "note": "x"}),
    (422, "invalid_input", "POST", DEPOSIT, {}),
    (422, "invalid_input", "POST", "/api/players", {"player_id": "neg", "usd_obbba": "-1"}),
    (422, "invalid_input", "POST", "/api/players", {"player_id": "dust", "usd_obbba": "0.005"}),
    (422, "invalid_input", "POST", "/api/players", {"player_id": " padded"}),
    (422, "invalid_input", "POST", "/api/players", {"player_id": ""}),
    (422, "invalid_input", "POST", "/api/players", {"player_id": "x", "tau_k": -1}),
    (422, "invalid_input", "POST", "/api/players", {"usd_obbba": "5"}),
    (409, "invalid_deadline", "POST", "/api/ptos", new_pto("late", "maker", funding_deadline=PAST)),
    (422, "invalid_input", "POST", "/api/ptos", new_pto("naive", "maker", funding_deadline=NAIVE)),
    (422, "invalid_input", "POST", "/api/ptos", new_pto("when", "maker", funding_deadline="soon")),
    (422, "invalid_input", "POST", "/api/ptos", new_pto("cheap", "maker", price_per_pts="0.001")),
    (422, "invalid_input", "POST", "/api/ptos", new_pto("empty", "maker", pts_offered=0)),
    (422, "invalid_input", "POST", "/api/ptos", new_pto("../escape", "maker")),
    (422, "invalid_input", "GET", "/api/players?top=many", None),
]


@pytest.mark.asyncio
async def test_refusals_have_status_codes_and_change_nothing(server: LiveServer) -> None:
    async with asyncio.timeout(120):
        async with http(server) as client:
            await post(client, "/api/players", {"player_id": "maker", "usd_obbba": "0"})
            await post(client, "/api/players", {"player_id": "rich", "usd_obbba": "100"})
            await post(client, "/api/players", {"player_id": "poor", "usd_obbba": "1.00"})
            await post(
                client, "/api/ptos", new_pto("open", "maker", pts_offered=5, price_per_pts=2)
            )
            await post(
                client, "/api/ptos", new_pto("sold", "maker", pts_offered=1, price_per_pts=1)
            )
            await post(client, "/api/ptos/sold/shares", {"player_id": "rich", "hours": 1})

            async def snapshot() -> Any:
                stats = await get(client, "/api/stats")
                del stats["clock"]
                return (
                    stats,
                    await get(client, "/api/players?top=1000"),
                    await get(client, "/api/ptos"),
                    await get(client, "/api/backups"),
                )

            before = await snapshot()
            async with events(server) as feed:
                for status, code, method, path, body in REFUSED:
                    case = (status, code, method, path, body)
                    if isinstance(body, Raw):
                        headers = {"content-type": "application/json"}
                        r = await client.request(
                            method, path, content=body.content, headers=headers
                        )
                    else:
                        r = await client.request(method, path, json=body)
                    assert r.status_code == status, (case, r.status_code, r.text)
                    assert r.headers["content-type"].startswith("application/json"), case
                    got = error_code(r)
                    assert code is None or got == code, (case, r.text)
                    assert await snapshot() == before, (case, "changed something")

                # Nothing above made an event: the first the feed sees is this deposit's.
                r = await client.post(DEPOSIT, json={"amount": "0.01"})
                assert r.status_code == 200 and r.json()["usd_obbba_balance"] == "99.01"
                first = await feed.wait_for(lambda e: True)
                assert (first["kind"], first["player_id"]) == ("deposited", "rich")
                assert feed.kinds() == ["deposited"]

        assert await stop(server) == 0
    assert http_tracebacks(server.output()) == []
    assert verify_store(server.home) == []


@pytest.mark.asyncio
async def test_backup_name_mistakes_are_client_errors(server: LiveServer) -> None:
    """A taken or unsafe backup name is the client's mistake (409/422), not a 503 outage."""
    async with asyncio.timeout(120):
        async with http(server) as client:
            await post(client, "/api/players", {"player_id": "p", "usd_obbba": "1"})
            await post(client, "/api/backups", {"name": "nightly"})
            before = await get(client, "/api/backups")
            r = await client.post("/api/backups", json={"name": "nightly"})
            assert r.status_code == 409, r.text
            error_code(r)
            r = await client.post("/api/backups", json={"name": "../outside"})
            assert r.status_code == 422, r.text
            error_code(r)
            assert await get(client, "/api/backups") == before
        assert await stop(server) == 0
    assert not (server.home.parent / "outside").exists()
    assert verify_store(server.home) == []


# -- load ---------------------------------------------------------------------------------

CLIENTS = 200
OPS_PER_CLIENT = 8  # a count, not a duration: the work done never depends on speed
PTOS = {  # pto_id: (pts_offered, price per PTS)
    "small": (40, "1.00"),
    "mid": (120, "0.50"),
    "pricey": (60, "3.00"),
    "huge": (100_000, "0.25"),  # never sells out: its world never opens
}
REFUSALS = {
    409: {"insufficient_funds", "shares_unavailable", "invalid_state", "unknown_player"},
    404: {"unknown_pto", "unknown_player"},
    422: {"invalid_input", "invalid_amount"},
}


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    bought: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def record(self, r: httpx.Response, what: str) -> None:
        self.statuses[r.status_code] += 1
        if r.is_success:
            return
        try:
            code = error_code(r)
        except (AssertionError, ValueError, KeyError, TypeError):
            code = None
        self.codes[f"{r.status_code} {code}"] += 1
        if code not in REFUSALS.get(r.status_code, set()):
            self.unexpected.append(f"{what}: {r.status_code} {r.text[:300]}")


@pytest.mark.asyncio
async def test_load_200_clients_buying_and_playing(server: LiveServer) -> None:
    rng = random.Random(2024)
    players = {f"c{i:03d}": "2.00" if i % 4 == 0 else "25.00" for i in range(CLIENTS)}
    deposits = {pid: cents(amount) for pid, amount in players.items()}
    tally = Tally()

    async with asyncio.timeout(600):  # a hang detector, not a speed limit
        async with http(server, connections=CLIENTS) as admin, events(server) as feed:
            await post(admin, "/api/players", {"player_id": "maker"})
            deposits["maker"] = 0
            for pto_id, (offered, price) in PTOS.items():
                await post(
                    admin,
                    "/api/ptos",
                    new_pto(pto_id, "maker", pts_offered=offered, price_per_pts=price),
                )

            async def sign_up(pid: str) -> None:
                await post(admin, "/api/players", {"player_id": pid, "usd_obbba": players[pid]})

            async with asyncio.TaskGroup() as tg:
                for pid in players:
                    tg.create_task(sign_up(pid))

            async def client_loop(pid: str, seed: int) -> None:
                own = random.Random(seed)
                held: set[str] = set()
                async with http(server, connections=1) as client:
                    for _ in range(OPS_PER_CLIENT):
                        roll = own.random()
                        if roll < 0.03:  # a mistake now and then, under load too
                            bad = own.choice(
                                [
                                    ("/api/ptos/none/shares", {"player_id": pid, "hours": 1}),
                                    ("/api/ptos/mid/shares", {"player_id": pid, "hours": 0.5}),
                                    ("/api/ptos/mid/play", {"player_id": "ghost", "hours": 1}),
                                    ("/api/ptos/huge/play", {"player_id": pid, "hours": 1}),
                                ]
                            )
                            r = await client.post(bad[0], json=bad[1])
                            tally.record(r, f"mistake {bad}")
                            assert r.status_code in (404, 409, 422), r.text
                        elif roll < 0.6 or not held - {"huge"}:
                            pto_id = own.choice(list(PTOS))
                            hours = own.randint(1, 3)
                            r = await client.post(
                                f"/api/ptos/{pto_id}/shares",
                                json={"player_id": pid, "hours": hours},
                            )
                            tally.record(r, f"buy {pid} {pto_id} {hours}")
                            if r.status_code == 201:
                                token = r.json()
                                assert token["hours_committed"] == hours
                                tally.bought.setdefault((pid, pto_id), []).append(
                                    (hours, cents(token["purchase_price"]))
                                )
                                held.add(pto_id)
                        elif roll < 0.9:
                            pto_id = own.choice(sorted(held - {"huge"}))
                            r = await client.post(
                                f"/api/ptos/{pto_id}/play",
                                json={"player_id": pid, "hours": own.choice([0.25, 0.5, 1.0])},
                            )
                            tally.record(r, f"play {pid} {pto_id}")
                            if r.status_code == 201:
                                tally.sessions.append(r.json())
                        else:
                            r = await client.get(f"/api/ptos/{own.choice(list(PTOS))}")
                            tally.record(r, "get pto")

            async with asyncio.TaskGroup() as tg:
                for n, pid in enumerate(players):
                    tg.create_task(client_loop(pid, rng.randrange(2**32) + n))

            # -- what the clients saw
            assert tally.unexpected == [], tally.unexpected[:10]
            assert not any(status >= 500 for status in tally.statuses), tally.statuses
            assert set(tally.statuses) <= {200, 201, 404, 409, 422}, tally.statuses
            assert tally.statuses[201] > CLIENTS, tally.statuses  # the load did real work
            assert tally.codes["409 shares_unavailable"] + tally.codes["409 invalid_state"] > 0
            assert tally.codes["409 insufficient_funds"] > 0, tally.codes
            assert tally.sessions, "no session was played"

            # -- the PTOs against every sale the clients were told about
            final_ptos = {p["pto_id"]: p for p in await get(admin, "/api/ptos")}
            funded = 0
            for pto_id, (offered, price) in PTOS.items():
                sales = [
                    sale
                    for (_, pto), items in tally.bought.items()
                    if pto == pto_id
                    for sale in items
                ]
                pto = final_ptos[pto_id]
                assert pto["pts_sold"] == sum(h for h, _ in sales) <= offered
                assert cents(pto["funding_raised"]) == sum(c for _, c in sales)
                assert all(c == h * cents(price) for h, c in sales)
                sold_out = pto["pts_sold"] == offered
                assert pto["status"] == ("in_progress" if sold_out else "funding")
                funded += sold_out
            assert final_ptos["small"]["status"] == "in_progress"  # some ran out of shares
            assert final_ptos["huge"]["status"] == "funding"

            # -- every player's money against what the clients were told
            escrow = sum(cents(p["funding_raised"]) for p in final_ptos.values())
            board = await get(admin, "/api/players?top=1000")
            assert {p["player_id"] for p in board} == set(deposits)
            assert all("usd_obbba_balance" not in p for p in board)  # public fields only
            everyone = {pid: await get(admin, f"/api/players/{pid}") for pid in deposits}
            earned: Counter[str] = Counter()
            for s in tally.sessions:
                earned[s["player_id"]] += cents(s["xUSD_earned"])
            broke = 0
            for pid, start in deposits.items():
                spent = sum(
                    c for (who, _), items in tally.bought.items() if who == pid for _, c in items
                )
                assert cents(everyone[pid]["usd_obbba_balance"]) == start - spent, pid
                assert cents(everyone[pid]["xUSD_balance"]) == earned[pid], pid
                broke += cents(everyone[pid]["usd_obbba_balance"]) < cents("0.25")
            assert broke > 0  # some players ran out of money
            total_usd = sum(cents(p["usd_obbba_balance"]) for p in everyone.values())
            assert total_usd + escrow == sum(deposits.values())  # money is only moved
            stats = await get(admin, "/api/stats")
            assert cents(stats["transactions"]["volume"]["deposit/USD-OBBBA"]) == sum(
                deposits.values()
            )
            assert cents(stats["play_sessions"]["xUSD_earned_total"]) == sum(earned.values())

            # -- the live feed saw every event (or was told how many it lost)
            r = await admin.post("/api/players/maker/deposit", json={"amount": "0.01"})
            assert r.status_code == 200
            deposits["maker"] += 1
            await feed.wait_for(lambda e: e["kind"] == "deposited" and e["player_id"] == "maker")
            expected = Counter(
                {
                    "player_registered": len(players) + 1,  # and the maker
                    "pto_launched": len(PTOS),
                    "shares_bought": sum(len(v) for v in tally.bought.values()),
                    "pto_funded": funded,
                    "session_played": len(tally.sessions),
                    "phase_lock": sum(1 for s in tally.sessions if s["phase_locks"] > 0),
                    "deposited": 1,
                }
            )
            seen = Counter(feed.kinds())
            dropped = sum(e["count"] for e in feed.messages if e["kind"] == "events_dropped")
            del seen["events_dropped"]
            assert seen.total() + dropped == expected.total()
            if not dropped:
                assert seen == expected

        assert await stop(server, signal.SIGINT) == 0

    assert http_tracebacks(server.output()) == []
    assert verify_store(server.home) == []
    on_disk = read_balances(server.home)
    assert {pid: usd for pid, (usd, _) in on_disk.items()} == {
        pid: cents(p["usd_obbba_balance"]) for pid, p in everyone.items()
    } | {"maker": deposits["maker"]}
    assert sum(usd for usd, _ in on_disk.values()) + escrow == sum(deposits.values())
    assert sum(x for _, x in on_disk.values()) == sum(earned.values())


# -- a slow WebSocket client ------------------------------------------------------------

LONG = "x" * 62  # ids at the 64-character limit: big events fill buffers sooner


def stalled_socket(port: int) -> socket.socket:
    """A TCP connection that takes almost nothing in before it stalls.

    A tiny receive buffer and the smallest MSS keep the kernel from absorbing
    megabytes on the server's side, so the server meets a full socket after a few
    hundred events instead of thousands: exactly what a slow client on a real
    network looks like to it, only sooner."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
    sock.settimeout(5)
    try:
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@pytest.mark.asyncio
async def test_a_client_that_never_reads_does_not_slow_the_engine(server: LiveServer) -> None:
    workers = 8
    players = [f"{i:02d}{LONG}" for i in range(workers)]
    produced = 1200

    async def deposits(client: httpx.AsyncClient, count: int) -> int:
        done = 0
        succeeded = 0

        async def worker(k: int) -> None:
            nonlocal done, succeeded
            while done < count:
                done += 1
                r = await client.post(f"/api/players/{players[k]}/deposit", json={"amount": "0.01"})
                assert r.status_code == 200, r.text
                succeeded += 1

        async with asyncio.TaskGroup() as tg:
            for k in range(workers):
                tg.create_task(worker(k))
        return succeeded

    # A hang detector, not a speed limit: the assertions below count, they never time.
    async with asyncio.timeout(300):
        async with http(server, connections=workers) as client:
            for pid in players:
                await post(client, "/api/players", {"player_id": pid, "usd_obbba": "1"})
            assert await deposits(client, 300) == 300

            sock = stalled_socket(server.port)
            async with (
                connect(
                    server.ws_url,
                    sock=sock,
                    proxy=None,
                    compression=None,
                    max_queue=1,
                    open_timeout=10,
                    close_timeout=2,
                ) as stuck,
                events(server) as live,
            ):
                # While the stuck client reads nothing, every operation completes, as
                # many as without it: its full buffer holds back no one but itself.
                assert await deposits(client, produced) == produced
                # A client that keeps reading lost nothing.
                await live.until(lambda: len(live.messages) >= produced)
                assert Counter(live.kinds()) == {"deposited": produced}

                # Now the stuck client reads what was buffered for it, then the news of
                # how many it lost and where to resume; the server then closes (1013).
                late = EventReader(stuck)
                reading = asyncio.create_task(late.run())
                try:
                    await late.wait_closed()
                finally:
                    await stuck.close()
                    async with asyncio.timeout(120):
                        await reading
                seen = late.messages
                kinds = late.kinds()
                assert kinds[-1] == "events_dropped", f"{len(seen)} events, none dropped"
                assert stuck.close_code == 1013
                at = len(seen) - 1
                notice = seen[at]
                assert notice["count"] > 0
                assert at + notice["count"] == produced  # every event delivered or counted
                assert all(e["kind"] == "deposited" for e in seen[:at])
                if at:
                    assert notice["since"] == seen[at - 1]["seq"]

                # Reconnecting with that since gives exactly what it missed, in order.
                since, count = notice["since"], notice["count"]
                async with connect(
                    f"{server.ws_url}?since={since}", proxy=None, open_timeout=10
                ) as again:
                    missed = [json.loads(await again.recv()) for _ in range(count)]
                assert [e["seq"] for e in missed] == list(range(since + 1, since + count + 1))
                assert {e["kind"] for e in missed} == {"deposited"}
                delivered = [e["seq"] for e in [*seen[:at], *missed]]
                assert delivered == [e["seq"] for e in live.messages]  # no gap, no repeat

        assert await stop(server) == 0
    assert verify_store(server.home) == []


@pytest.mark.skipif(sys.platform != "linux", reason="Linux reports SO_SNDBUF doubled")
def test_serve_binds_a_small_send_buffer_that_accepted_sockets_inherit() -> None:
    """Without it Linux autotunes each connection's send buffer up to megabytes, which a
    stalled WebSocket client would fill with thousands of stale events."""
    from ublox_sim.server.run import SEND_BUFFER, bind

    listener = bind("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()[:2]) as peer:
        accepted, _ = listener.accept()
        with accepted:
            # The kernel doubles the value for its bookkeeping; set means locked (no tuning).
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * SEND_BUFFER
        peer.close()


# -- shutdown and WebSocket hygiene -------------------------------------------------------


@pytest.mark.asyncio
async def test_websocket_clients_leaving_is_not_a_server_error(server: LiveServer) -> None:
    """Clients come and go (a closed browser tab); the server must not log a crash for it."""
    async with asyncio.timeout(120):
        async with http(server) as client:
            for n in range(3):
                async with events(server) as feed:
                    await post(client, "/api/players", {"player_id": f"p{n}", "usd_obbba": "1"})
                    await feed.wait_for(lambda e: e["kind"] == "player_registered")
            # One more stays connected through the shutdown.
            async with events(server) as feed:
                await post(client, "/api/players", {"player_id": "last"})
                await feed.wait_for(lambda e: e.get("player_id") == "last")
                assert await stop(server, signal.SIGINT) == 0
                async with asyncio.timeout(120):
                    await feed.wait_closed()
    assert verify_store(server.home) == []
    assert asgi_tracebacks(server.output()) == []


@pytest.mark.asyncio
async def test_sigterm_is_a_clean_shutdown_with_exit_code_0(server: LiveServer) -> None:
    async with asyncio.timeout(120):
        async with http(server) as client:
            await post(client, "/api/players", {"player_id": "maker", "usd_obbba": "10"})
            await post(client, "/api/players", {"player_id": "fan", "usd_obbba": "10"})
            await post(
                client, "/api/ptos", new_pto("term", "maker", pts_offered=4, price_per_pts="1")
            )
            await post(client, "/api/ptos/term/shares", {"player_id": "fan", "hours": 3})
        code = await stop(server, signal.SIGTERM)
    # Drained and committed: the sale is on disk and the ledger is exact.
    assert verify_store(server.home) == []
    assert read_balances(server.home)["fan"] == (700, 0)
    assert code == 0, f"exit code {code} after SIGTERM:\n{server.output()}"


# -- money moves once: Idempotency-Key ----------------------------------------------------


async def story_for_keys(client: httpx.AsyncClient) -> None:
    await post(client, "/api/players", {"player_id": "maker", "usd_obbba": "0"})
    await post(client, "/api/players", {"player_id": "buyer", "usd_obbba": "100"})
    await post(client, "/api/ptos", new_pto("keys", "maker", pts_offered=50, price_per_pts="1"))


@pytest.mark.asyncio
async def test_ten_concurrent_purchases_with_one_key_move_money_once(server: LiveServer) -> None:
    async with asyncio.timeout(120):
        async with http(server) as client:
            await story_for_keys(client)
            headers = {"Idempotency-Key": "buy-once-1"}
            body = {"player_id": "buyer", "hours": 3}
            responses = await asyncio.gather(
                *(
                    client.post("/api/ptos/keys/shares", json=body, headers=headers)
                    for _ in range(10)
                )
            )
            assert {r.status_code for r in responses} == {201}
            assert len({r.text for r in responses}) == 1  # every caller saw the same purchase
            assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 9
            buyer = await get(client, "/api/players/buyer")
            assert buyer["usd_obbba_balance"] == "97.00"
            assert (await get(client, "/api/ptos/keys"))["pts_sold"] == 3
            # The same key with another body is the client's mistake, and moves nothing.
            r = await client.post(
                "/api/ptos/keys/shares", json={"player_id": "buyer", "hours": 4}, headers=headers
            )
            assert r.status_code == 422 and error_code(r) == "idempotency_key_reused"
            # Every money-moving POST takes a key: a repeated deposit, transfer, play.
            for path, payload in (
                ("/api/players/buyer/deposit", {"amount": "5"}),
                ("/api/players/buyer/transfer", {"to_player": "maker", "amount": "2"}),
            ):
                first = await client.post(path, json=payload, headers={"Idempotency-Key": path})
                again = await client.post(path, json=payload, headers={"Idempotency-Key": path})
                assert first.status_code == again.status_code == 200, first.text
                assert first.json() == again.json()
                # The stored answer is the record itself, to the last bit of every float.
                assert first.json() == await get(client, "/api/players/buyer")
            assert (await get(client, "/api/players/buyer"))["usd_obbba_balance"] == "100.00"
        assert await stop(server) == 0
    assert verify_store(server.home) == []


@pytest.mark.asyncio
async def test_a_retry_after_kill_9_and_restart_returns_the_first_result(
    server: LiveServer,
) -> None:
    headers = {"Idempotency-Key": "purchase-before-the-crash"}
    body = {"player_id": "buyer", "hours": 7}
    async with asyncio.timeout(60):
        async with http(server) as client:
            await story_for_keys(client)
            first = await client.post("/api/ptos/keys/shares", json=body, headers=headers)
            assert first.status_code == 201, first.text
        await asyncio.to_thread(server.kill)  # SIGKILL: no shutdown, no flush
        await asyncio.to_thread(server.start)
        async with http(server) as client:
            again = await client.post("/api/ptos/keys/shares", json=body, headers=headers)
            assert again.status_code == 201, again.text
            assert again.json() == first.json()
            assert again.headers["idempotent-replayed"] == "true"
            assert (await get(client, "/api/players/buyer"))["usd_obbba_balance"] == "93.00"
            assert (await get(client, "/api/ptos/keys"))["pts_sold"] == 7
        assert await stop(server) == 0
    assert verify_store(server.home) == []


def test_the_dashboard_explains_an_empty_feed_and_atu_overshoot_and_shows_one_decimal_hours() -> (
    None
):
    """A static check of the served page (the browser test drives it): after a finished
    run the empty feed must not read as if nothing ever happened, a PTO with 75 / 60 ATU
    says why, and play time has one decimal everywhere."""
    page = (Path(__file__).parents[1] / "ublox_sim" / "static" / "dashboard.html").read_text()
    assert "No events yet since this page opened" in page
    assert "the last spend overshot" in page
    assert "minimumFractionDigits: 1, maximumFractionDigits: 1" in page
    assert "toFixed(2) / 100" not in page and "* 100) / 100" not in page


# -- the operations table ---------------------------------------------------------------------


def test_each_operation_of_the_table_is_one_documented_route(tmp_path: Path) -> None:
    """The OpenAPI document is generated from ``OPERATIONS`` and from nothing else: each
    entry is one path and method with its operationId, tag, status and error codes."""
    from ublox_sim.server import ServerConfig, create_app
    from ublox_sim.server.routes import OPERATIONS

    spec = create_app(tmp_path, config=ServerConfig(admin_key="k" * 32)).openapi()
    documented = {
        (path, method.upper()): op
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    assert len(documented) == len(OPERATIONS)
    for entry in OPERATIONS:
        op = documented[(entry.path, entry.method)]
        assert op["operationId"] == entry.name and op["tags"] == [entry.tag]
        assert set(op["responses"]) == {str(entry.status), *map(str, entry.errors)}, entry.name
        has_key = any(p["name"] == "Idempotency-Key" for p in op.get("parameters", []))
        assert has_key == (entry.receipt is not None), entry.name


def test_an_operation_that_could_not_run_is_refused_when_the_table_is_built() -> None:
    from ublox_sim.server.operation import Op

    async def nothing(c: Any) -> None:
        return None

    common: dict[str, Any] = {"method": "POST", "path": "/x/{player_id}", "doc": "", "tag": "t"}
    with pytest.raises(ValueError, match="needs acts_as"):
        Op(name="keyed", auth="caller", body=DepositBody, receipt="player", call=nothing, **common)
    with pytest.raises(ValueError, match="scopes keys by caller"):
        Op(
            name="anyone",
            body=DepositBody,
            acts_as=lambda c: c.id,
            receipt="player",
            call=nothing,
            **common,
        )
    with pytest.raises(ValueError, match="need a caller"):
        Op(name="self", acts_as=lambda c: c.id, call=nothing, **common)


def test_a_response_derived_from_a_view_gives_exact_money_and_rfc3339_times() -> None:
    """PTOOut is derived from PTOInfo: a Decimal becomes a two-decimal string, a store
    timestamp RFC 3339 UTC, a missing one null, and the status is held to its names."""
    from pydantic import ValidationError

    from ublox_sim.core.views import PTOInfo
    from ublox_sim.server.models import PTOOut

    view = PTOInfo(
        pto_id="p",
        game_name="G",
        creator_id="maker",
        description="",
        status="funding",
        atu_required=1,
        atu_spent=0,
        pts_offered=5,
        pts_sold=2,
        price_per_pts=Decimal("2.5"),
        funding_goal=Decimal("12.50"),
        funding_raised=Decimal("5"),
        launch_time="2026-01-01 10:00:00+01:00",
        funding_deadline=None,
        completion_time=None,
        aci_coherence_score=0.5,
        xUSD_pool=Decimal("0"),
        world_cdt_id=None,
        amplification=100.0,
    )
    out = PTOOut.of(view).model_dump(mode="json")
    assert list(out) == [f for f in PTOInfo.__dataclass_fields__]
    assert (out["price_per_pts"], out["funding_goal"], out["xUSD_pool"]) == (
        "2.50",
        "12.50",
        "0.00",
    )
    assert out["launch_time"] == "2026-01-01T09:00:00Z" and out["funding_deadline"] is None
    with pytest.raises(ValidationError):
        PTOOut.of(dataclasses.replace(view, status="bankrupt"))


@pytest.mark.parametrize(
    ("model", "field", "value", "what"),
    [
        (DepositBody, "amount", "-5.00", "a positive amount"),
        (DepositBody, "amount", -5, "a positive amount"),
        (DepositBody, "amount", 5.5, "a positive amount"),
        (DepositBody, "amount", True, "a positive amount"),
        (NewPlayer, "usd_obbba", "-1", "an amount of zero or more"),
        (NewPTO, "price_per_pts", "0.001", "a positive price"),
    ],
)
def test_a_refused_amount_is_one_problem_that_says_what_the_field_takes(
    model: type[BaseModel], field: str, value: object, what: str
) -> None:
    """Money fields are unions (a decimal string or a whole number): the client hears one
    problem naming what the field takes, not one per branch with a regex in it."""
    body: dict[str, object] = {"player_id": "p", field: value}
    if model is NewPTO:
        body = new_pto("g", "p", **{field: value})
    with pytest.raises(ValidationError) as refused:
        model.model_validate({k: v for k, v in body.items() if k in model.model_fields})
    problems = [e for e in refused.value.errors() if e["loc"] == (field,)]
    assert len(problems) == 1, refused.value.errors()
    message = problems[0]["msg"]
    assert message.startswith(f'must be {what}: a decimal string such as "5.00"')
    assert "pattern" not in message and "boolean" not in message
