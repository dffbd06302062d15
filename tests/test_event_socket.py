"""``serve_events`` behind a real uvicorn on loopback: replay with ``?since=``, then live;
a client that stops reading gets a bounded queue, then ``events_dropped`` with the right
count and the ``since`` that gives it exactly what it missed; hostile frames are ignored.

Every wait here is for a condition; the assertions count events, never time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidInput
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.server.event_socket import (
    StreamStats,
    parse_since,
    refuse_handshake,
    serve_events,
)
from ublox_sim.store.sqlite.writer import Statement

PARAMS = WorldParams(size=8)
LONG = "\U0001f3b5" * 60  # long player ids: big events fill socket buffers sooner


@dataclass
class Served:
    port: int
    streams: list[StreamStats] = field(default_factory=list)

    def url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws/events{query}"


@asynccontextmanager
async def served(engine: Engine, **options: Any) -> AsyncIterator[Served]:
    """A uvicorn in this event loop serving /ws/events with ``serve_events``. Its listening
    socket has a small send buffer (accepted sockets inherit it), as a server should."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    info = Served(sock.getsockname()[1])

    async def endpoint(websocket: WebSocket) -> None:
        stats = StreamStats()
        info.streams.append(stats)
        try:
            since = parse_since(websocket.query_params.get("since"))
        except InvalidInput as exc:
            await refuse_handshake(websocket, str(exc))
            return
        await serve_events(websocket, engine, since=since, stats=stats, **options)

    app = Starlette(routes=[WebSocketRoute("/ws/events", endpoint)])
    # log_config=None: uvicorn leaves logging alone, so its errors reach caplog.
    config = uvicorn.Config(app, log_config=None, lifespan="off", ws_ping_interval=None)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server._serve, [sock])  # _serve: no signal handlers in a test
        with anyio.fail_after(120):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
                await anyio.sleep(0.01)
        try:
            yield info
        finally:
            server.should_exit = True
    sock.close()


async def until(condition: Any, what: str) -> None:
    """Wait for a condition on the server's or engine's counters (the limit is a safety net)."""
    with anyio.move_on_after(60):
        while not condition():  # noqa: ASYNC110 (the counters have no event to wait on)
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"never happened: {what}")


async def messages(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    with anyio.fail_after(120):
        return [json.loads(await ws.recv()) for _ in range(count)]


def open_engine(home: Path) -> Any:
    return Engine.open(home, seed=3, clock=SimClock(), world=PARAMS)


# -- a client that stops reading: a raw socket with tiny buffers ----------------------------


class StalledClient:
    """A WebSocket client on a plain blocking socket that reads only when told to.

    A tiny receive buffer and MSS keep the kernel from absorbing much for it."""

    def __init__(self, port: int, query: str = "") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
        self.sock.settimeout(60)  # a safety net: a hung test fails instead of hanging
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws/events{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        return chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._take(8))
        return first & 0x0F, self._take(length)

    def read_until_closed(self) -> tuple[list[dict[str, Any]], int]:
        """Every text message, then the close code."""
        got: list[dict[str, Any]] = []
        while True:
            opcode, payload = self.frame()
            if opcode == 0x1:
                got.append(json.loads(payload))
            elif opcode == 0x8:
                (code,) = struct.unpack(">H", payload[:2])
                return got, code

    def close(self) -> None:
        self.sock.close()


async def deposits(engine: Engine, players: list[str], count: int) -> int:
    """``count`` deposits spread over the players, the players concurrently, each player's
    one after another (so a group commit holds at most one event per player: fewer than
    the stream's bound, and it is the socket that stalls); returns how many completed."""
    done = 0

    async def each(player_id: str, times: int) -> None:
        nonlocal done
        for _ in range(times):
            await engine.deposit(player_id, Decimal("0.01"))
            done += 1

    async with anyio.create_task_group() as tg:
        for k, player_id in enumerate(players):
            tg.start_soon(each, player_id, len(range(k, count, len(players))))
    return done


@pytest.mark.anyio
async def test_a_stalled_client_gets_a_bounded_queue_then_the_count_and_the_since_to_resume(
    tmp_path: Path,
) -> None:
    bound = 16
    async with open_engine(tmp_path) as engine:
        players = [f"{n}{LONG}" for n in range(8)]
        for pid in players:
            await engine.register_player(pid)
        # Without a client: how many operations a batch completes.
        alone = await deposits(engine, players, 300)

        async with served(engine, buffer=bound, send_timeout=0.5) as server:
            client = await anyio.to_thread.run_sync(StalledClient, server.port)
            try:
                await until(lambda: server.streams and server.streams[0].bound, "subscribed")
                stats = server.streams[0]
                start = engine.last_event_seq
                # While the client reads nothing, the engine does the same work as alone,
                # batch after batch, until the server has given up queueing for it.
                batches = 0
                while not (stats.stalled or engine.events_dropped):
                    assert await deposits(engine, players, 300) == alone
                    batches += 1
                    assert batches < 40, "the socket buffers never filled"
                assert await deposits(engine, players, 300) == alone  # and after that too
                last = engine.last_event_seq
                assert last - start == 300 * (batches + 1)
                assert stats.peak <= stats.bound == bound
                # The server has the news ready, counted up to the last event.
                await until(
                    lambda: (
                        stats.behind_since is not None
                        and stats.dropped == last - stats.behind_since
                    ),
                    "the notice composed",
                )

                # It reads again: what was already on the way, then the news, then a close.
                got, code = await anyio.to_thread.run_sync(client.read_until_closed)
            finally:
                client.close()
            assert stats.peak <= bound
            notice = got[-1]
            delivered = got[:-1]
            assert code == 1013
            assert notice["kind"] == "events_dropped"
            assert [e["seq"] for e in delivered] == list(
                range(start + 1, start + 1 + len(delivered))
            )
            assert notice["since"] == (delivered[-1]["seq"] if delivered else start)
            assert notice["count"] == last - notice["since"] > 0
            assert all(e["kind"] == "deposited" and "amount" not in e for e in delivered)

            # Reconnecting with since: exactly the events it missed, then live.
            async with connect(server.url(f"?since={notice['since']}"), proxy=None) as ws:
                missed = await messages(ws, notice["count"])
                assert [e["seq"] for e in missed] == list(range(notice["since"] + 1, last + 1))
                await engine.deposit(players[0], 1)
                (fresh,) = await messages(ws, 1)
                assert fresh["seq"] == last + 1


@pytest.mark.anyio
async def test_since_replays_what_was_missed_then_goes_live_without_gaps_or_repeats(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path) as engine, served(engine) as server:
        await engine.register_player("ada", usd_obbba=5)
        for _ in range(4):
            await engine.deposit("ada", 1)  # seqs 2..5
        async with connect(server.url("?since=2"), proxy=None) as ws:
            replayed = await messages(ws, 3)
            await engine.deposit("ada", 1)
            (live,) = await messages(ws, 1)
        assert [e["seq"] for e in [*replayed, live]] == [3, 4, 5, 6]
        assert {e["kind"] for e in [*replayed, live]} == {"deposited"}
        # Without since: live only.
        async with connect(server.url(), proxy=None) as ws:
            await until(lambda: len(server.streams) == 2 and server.streams[1].bound, "subscribed")
            await engine.deposit("ada", 1)
            (only,) = await messages(ws, 1)
        assert only["seq"] == 7
        # since=0 replays everything, the registration without its balance.
        async with connect(server.url("?since=0"), proxy=None) as ws:
            everything = await messages(ws, 7)
        assert everything[0]["kind"] == "player_registered"
        assert "usd_obbba" not in everything[0]
    # Replayed and live events alike carry RFC 3339 UTC times, as REST does.
    rfc3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
    assert all(rfc3339.fullmatch(e["at"]) for e in [*replayed, live, only, *everything])


@pytest.mark.anyio
async def test_a_since_older_than_the_log_says_how_many_events_expired(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine, served(engine) as server:
        await engine.register_player("ada")
        for _ in range(5):
            await engine.deposit("ada", 1)  # seqs 2..6
        # As retention would have done: the oldest four are gone.
        await engine.store.db.submit([Statement("DELETE FROM event_log WHERE seq <= 4")])
        async with connect(server.url("?since=1"), proxy=None) as ws:
            expired, *rest = await messages(ws, 3)
        assert (expired["kind"], expired["count"], expired["since"]) == ("events_expired", 3, 1)
        assert [e["seq"] for e in rest] == [5, 6]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query", ["?since=-1", "?since=abc", "?since=1e3", "?since=%201%20", "?since=" + "9" * 19]
)
async def test_a_since_that_is_not_a_whole_number_is_refused_at_the_handshake(
    tmp_path: Path, query: str
) -> None:
    async with open_engine(tmp_path) as engine, served(engine) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url(query), proxy=None):
                pass
        answer = refused.value.response
        assert answer.status_code == 400
        error = json.loads(answer.body)["error"]
        assert error["code"] == "invalid_since"
        assert error["message"].startswith("since must be a whole number from 0 to ")


@pytest.mark.anyio
async def test_a_since_ahead_of_the_log_is_closed_with_1008(tmp_path: Path) -> None:
    """A store restored from an older backup numbers events again from its own last one."""
    async with open_engine(tmp_path) as engine, served(engine) as server:
        await engine.register_player("ada")
        async with connect(server.url("?since=99"), proxy=None) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1008


@pytest.mark.anyio
async def test_binary_and_text_frames_from_the_client_are_ignored(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine, served(engine) as server:
        await engine.register_player("ada")
        async with connect(server.url(), proxy=None) as ws:
            await until(lambda: server.streams and server.streams[0].bound, "subscribed")
            await ws.send(b"\x00\xff binary")
            await ws.send("not json {")
            await ws.send(json.dumps({"kind": "subscribe"}))
            await until(lambda: server.streams[0].ignored == 3, "frames read")
            await engine.deposit("ada", 1)
            (event,) = await messages(ws, 1)
        assert event["kind"] == "deposited"
        await until(lambda: server.streams[0].client_left, "the close seen")
        assert server.streams[0].close_code is None  # the client closed, not the server


@pytest.mark.anyio
async def test_a_client_that_vanishes_while_behind_is_not_a_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_engine(tmp_path) as engine:
        players = [f"{n}{LONG}" for n in range(4)]
        for pid in players:
            await engine.register_player(pid)
        async with served(engine, buffer=8, send_timeout=0.2) as server:
            client = await anyio.to_thread.run_sync(StalledClient, server.port)
            await until(lambda: server.streams and server.streams[0].bound, "subscribed")
            stats = server.streams[0]
            while stats.behind_since is None:
                await deposits(engine, players, 200)
            # Gone without a close frame (a reset), while the server waits to tell it.
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            await until(lambda: stats.client_left or stats.close_code is not None, "noticed")
            assert await deposits(engine, players, 50) == 50  # the engine goes on
    assert "Exception in ASGI application" not in caplog.text
