"""A hot PTO: many buyers on one PTO against the same purchases spread over many PTOs.

Every contender runs ``buyers`` concurrent buyers (100 by default), each buying one
hour of PTS ``per_buyer`` times, one after the other, awaiting each purchase:

- ``engine_hot``: all buyers buy from one PTO, through ``Engine.buy_pts``;
- ``engine_spread``: buyer ``i`` buys from PTO ``i`` (as many PTOs as buyers);
- ``http_hot``: the buyers of ``engine_hot`` as HTTP clients of a real server
  (uvicorn on 127.0.0.1, in a child process), ``POST /api/ptos/{id}/shares`` with their
  own player token;
- ``http_noop``: the same requests to a benchmark-only route that goes through the same
  layers (guards, routing, the player token's check, body validation, ``acts_as``) and
  answers without calling the engine: what the HTTP stack costs before any purchase.

Plays of one world (``Engine.play``, ``POST /api/ptos/{id}/play``: a play steps its
world), ``players`` concurrent players (as many as the buyers), each playing one hour
``plays_per_player`` times, one after the other, awaiting each play:

- ``engine_plays_hot`` / ``http_plays_hot``: every player plays the one world;
- ``engine_plays_spread`` / ``http_plays_spread``: player ``i`` plays world ``i``.

The engine contenders each open a fresh store; registration, launches and one purchase
per buyer (activating every actor) are done before the clock starts. The HTTP contenders
share one server and one hot PTO, whose tokens accumulate over the rounds. The client is
a bare keep-alive HTTP/1.1 client (one connection per buyer), so the client's own cost
stays small beside the server's: both run on this machine's cores.

Ratios are taken within each round (``harness``): hot/spread through the Engine, and
hot/no-op through HTTP; for plays, hot/spread both ways.

    python -m ublox_sim.bench.hot serve HOME PORT   # the benchmark's server (used internally)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from ublox_sim import Engine, SimClock

from .harness import child_command, child_env, pairwise, run_rounds, summarise, table

SIZES = {
    # buyers (= players), purchases per buyer per run, rounds, plays per player per run
    "tiny": (10, 3, 3, 2),
    "quick": (100, 20, 3, 5),
    "full": (100, 50, 5, 15),
}
ADMIN_KEY = "bench-hot-operator-key-0123456789abcdef"
NOOP_PATH = "/api/ptos/{pto_id}/bench-noop"
START_TIMEOUT = 30.0
BALANCE = Decimal(1_000_000)
PRICE = Decimal("0.01")


# -- through the Engine ------------------------------------------------------------------


def run_engine(buyers: int, per_buyer: int, *, spread: bool) -> dict[str, float]:
    return anyio.run(_engine, buyers, per_buyer, spread)


async def _engine(buyers: int, per_buyer: int, spread: bool) -> dict[str, float]:
    names = [f"b{i}" for i in range(buyers)]
    ptos = [f"p{i}" for i in range(buyers if spread else 1)]

    def pto_of(i: int) -> str:
        return ptos[i] if spread else ptos[0]

    with tempfile.TemporaryDirectory() as home:
        async with Engine.open(home, seed=1, clock=SimClock()) as engine:
            await engine.register_players([(name, BALANCE, 1.0, None) for name in names])
            for pto_id in ptos:
                await engine.launch_pto(
                    pto_id=pto_id,
                    game_name="bench",
                    creator_id=names[0],
                    atu_required=10,
                    pts_offered=10**9,
                    price_per_pts=PRICE,
                    funding_deadline=timedelta(days=30),
                )
            for i, name in enumerate(names):  # activate every actor before timing
                await engine.buy_pts(name, pto_of(i), 1)

            async def buyer(i: int) -> None:
                for _ in range(per_buyer):
                    await engine.buy_pts(names[i], pto_of(i), 1)

            elapsed, per_commit = await _concurrently(engine, buyers, buyer)
            sold = (await engine.get_pto(ptos[0])).pts_sold
    expected = per_buyer + 1 if spread else buyers * (per_buyer + 1)
    assert sold == expected, f"{ptos[0]} sold {sold}, expected {expected}"
    return {"purchases_per_s": buyers * per_buyer / elapsed, "units_per_commit": per_commit}


async def _concurrently(
    engine: Engine, callers: int, call: Callable[[int], Coroutine[Any, Any, None]]
) -> tuple[float, float]:
    """``call(i)`` for every caller at once: the seconds they took, and the units per
    commit meanwhile (from the SQLite writer's counters; 0 on a store without them)."""
    db = getattr(engine.store, "db", None)
    commits, units = getattr(db, "commits", 0), getattr(db, "units_committed", 0)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(call, i)
    elapsed = time.perf_counter() - started
    commits = getattr(db, "commits", 0) - commits
    units = getattr(db, "units_committed", 0) - units
    return elapsed, units / commits if commits else 0.0


def run_engine_plays(players: int, per_player: int, *, spread: bool) -> dict[str, float]:
    return anyio.run(_engine_plays, players, per_player, spread)


async def _engine_plays(players: int, per_player: int, spread: bool) -> dict[str, float]:
    names = [f"b{i}" for i in range(players)]
    worlds = [f"w{i}" for i in range(players if spread else 1)]
    hours = per_player + 1  # each player's PTS: the warm-up play and the timed ones

    with tempfile.TemporaryDirectory() as home:
        async with Engine.open(home, seed=1, clock=SimClock()) as engine:
            await engine.register_players([(name, BALANCE, 1.0, None) for name in names])
            for pto_id in worlds:
                await engine.launch_pto(
                    pto_id=pto_id,
                    game_name="bench",
                    creator_id=names[0],
                    atu_required=10,
                    pts_offered=hours * (1 if spread else players),  # sold out: funded
                    price_per_pts=PRICE,
                    funding_deadline=timedelta(days=30),
                )
            for i, name in enumerate(names):
                await engine.buy_pts(name, worlds[i if spread else 0], hours)
            for i, name in enumerate(names):  # activate every actor before timing
                await engine.play(name, worlds[i if spread else 0], 1.0)

            async def player(i: int) -> None:
                for _ in range(per_player):
                    await engine.play(names[i], worlds[i if spread else 0], 1.0)

            elapsed, per_commit = await _concurrently(engine, players, player)
            played = sum(t.hours_played for t in await engine.tokens_of(names[-1], worlds[-1]))
    assert played == hours, f"{names[-1]} played {played} hours, expected {hours}"
    return {"plays_per_s": players * per_player / elapsed, "units_per_commit": per_commit}


# -- through HTTP ------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, body: object = None, token: str = ADMIN_KEY
    ) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        status = int(status_line.split()[1])
        return status, json.loads(payload) if payload else None

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class Server:
    """The benchmark's server (``python -m ublox_sim.bench.hot serve``) in a child process."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = child_env({k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
        env["UBLOX_ADMIN_KEY"] = ADMIN_KEY
        log = (self.home / "server.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                child_command("ublox_sim.bench.hot", "serve", str(self.home / "store")),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "port N" once the engine is open
        if not line.startswith(b"port "):
            self.stop()
            raise RuntimeError(f"the benchmark server did not start: {self.log()}")
        self.port = int(line.split()[1])

    def log(self) -> str:
        return (self.home / "server.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


async def _setup_http(port: int, buyers: int) -> dict[str, str]:
    """Players, their tokens and the hot PTO ``hot``; answers each buyer's token."""
    conn = await Connection.open(port)
    tokens: dict[str, str] = {}
    try:
        for i in range(buyers):
            name = f"b{i}"
            status, _ = await conn.request(
                "POST", "/api/players", {"player_id": name, "usd_obbba": str(BALANCE)}
            )
            assert status == 201, status
            status, issued = await conn.request(
                "POST", f"/api/players/{name}/tokens", {"ttl_seconds": 7 * 24 * 3600}
            )
            assert status == 201, (status, issued)
            tokens[name] = issued["token"]
        deadline = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        status, launched = await conn.request(
            "POST",
            "/api/ptos",
            {
                "pto_id": "hot",
                "game_name": "bench",
                "creator_id": "b0",
                "atu_required": 10,
                "pts_offered": 10**6,
                "price_per_pts": str(PRICE),
                "funding_deadline": deadline,
            },
        )
        assert status == 201, (status, launched)
    finally:
        await conn.close()
    return tokens


PLAYS_PATH = "/api/ptos/{pto_id}/play"


async def _setup_http_plays(port: int, names: list[str], hours: int) -> None:
    """The worlds ``world`` (every player) and ``w{i}`` (player i), each player holding
    ``hours`` of PTS in both (every world sold out: funded, playable)."""
    conn = await Connection.open(port)
    deadline = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    try:
        for pto_id, offered in [("world", hours * len(names))] + [
            (f"w{i}", hours) for i in range(len(names))
        ]:
            status, launched = await conn.request(
                "POST",
                "/api/ptos",
                {
                    "pto_id": pto_id,
                    "game_name": "bench",
                    "creator_id": names[0],
                    "atu_required": 10,
                    "pts_offered": offered,
                    "price_per_pts": str(PRICE),
                    "funding_deadline": deadline,
                },
            )
            assert status == 201, (status, launched)
        for i, name in enumerate(names):
            for pto_id in ("world", f"w{i}"):
                body = {"player_id": name, "hours": hours}
                status, bought = await conn.request("POST", f"/api/ptos/{pto_id}/shares", body)
                assert status == 201, (status, bought)
    finally:
        await conn.close()


def run_http(
    port: int, tokens: Mapping[str, str], per_buyer: int, path: str | Callable[[int], str]
) -> dict[str, float]:
    """``per_buyer`` requests by each client at once, ``path`` the same for all or client
    ``i``'s; answers the rate (``purchases_per_s``, whatever the requests are)."""
    return anyio.run(_http, port, tokens, per_buyer, path)


async def _http(
    port: int, tokens: Mapping[str, str], per_buyer: int, path: str | Callable[[int], str]
) -> dict[str, float]:
    names = list(tokens)
    paths = [path if isinstance(path, str) else path(i) for i in range(len(names))]
    conns = [await Connection.open(port) for _ in names]
    try:

        async def buy(i: int) -> None:
            status, answer = await conns[i].request(
                "POST", paths[i], {"player_id": names[i], "hours": 1}, tokens[names[i]]
            )
            assert status == 201, (status, answer)

        async def buyer(i: int) -> None:
            for _ in range(per_buyer):
                await buy(i)

        for i in range(len(names)):  # warm: one request per connection, untimed
            await buy(i)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(len(names)):
                tg.start_soon(buyer, i)
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    return {"purchases_per_s": len(names) * per_buyer / elapsed}


def serve(home: str) -> None:
    """The benchmark's server: the real app plus the no-op route, on a free port."""
    from ublox_sim.server import routes
    from ublox_sim.server.app import ServerConfig
    from ublox_sim.server.models import BuyBody
    from ublox_sim.server.operation import Call, add_operations
    from ublox_sim.server.run import bind
    from ublox_sim.server.run import serve as run_server

    async def noop(c: Call[BuyBody]) -> dict[str, object]:
        return {"pto_id": c.id, "player_id": c.body.player_id, "hours": c.body.hours}

    # The purchase route's own layers (routes.as_player), without the engine.
    add_operations(
        routes.router,
        (
            routes.as_player(
                path=NOOP_PATH,
                name="bench_noop",
                doc="Benchmark only: a purchase's request, answered without the engine.",
                body=BuyBody,
                call=noop,
            ),
        ),
    )
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]

    def ready() -> None:
        print(f"port {port}", flush=True)

    run_server(
        Path(home),
        sock,
        config=ServerConfig(tick_seconds=None, admin_key=ADMIN_KEY),
        on_ready=ready,
    )


# -- the benchmark -----------------------------------------------------------------------


PLAYS = ("engine_plays_hot", "engine_plays_spread", "http_plays_hot", "http_plays_spread")


def bench(size: str = "full") -> dict[str, Any]:
    buyers, per_buyer, rounds, plays = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            tokens = anyio.run(_setup_http, server.port, buyers)
            # Every round plays the worlds ``plays`` hours more (and once to warm up).
            anyio.run(_setup_http_plays, server.port, list(tokens), 2 * rounds * (plays + 1))
            hot_path = "/api/ptos/hot/shares"
            noop_path = NOOP_PATH.format(pto_id="hot")
            world_path = PLAYS_PATH.format(pto_id="world")

            def own_world(i: int) -> str:
                return PLAYS_PATH.format(pto_id=f"w{i}")

            contenders: dict[str, Callable[[], Mapping[str, float]]] = {
                "engine_hot": lambda: run_engine(buyers, per_buyer, spread=False),
                "engine_spread": lambda: run_engine(buyers, per_buyer, spread=True),
                "http_hot": lambda: run_http(server.port, tokens, per_buyer, hot_path),
                "http_noop": lambda: run_http(server.port, tokens, per_buyer, noop_path),
                "engine_plays_hot": lambda: run_engine_plays(buyers, plays, spread=False),
                "engine_plays_spread": lambda: run_engine_plays(buyers, plays, spread=True),
                "http_plays_hot": lambda: run_http(server.port, tokens, plays, world_path),
                "http_plays_spread": lambda: run_http(server.port, tokens, plays, own_world),
            }
            results = run_rounds(contenders, rounds)
        finally:
            server.stop()
    # The HTTP client counts its requests as purchases, plays included.
    rates = {
        name: summarise(
            results, name, "plays_per_s" if name.startswith("engine_plays") else "purchases_per_s"
        ).to_dict()
        for name in contenders
    }
    engine_ratio = pairwise(results, "engine_hot", "engine_spread", "purchases_per_s")
    http_ratio = pairwise(results, "http_hot", "http_noop", "purchases_per_s")
    engine_plays = pairwise(results, "engine_plays_hot", "engine_plays_spread", "plays_per_s")
    http_plays = pairwise(results, "http_plays_hot", "http_plays_spread", "purchases_per_s")
    return {
        "plays_per_player": plays,
        "engine_plays_hot_per_s": rates["engine_plays_hot"]["median"],
        "engine_plays_spread_per_s": rates["engine_plays_spread"]["median"],
        "http_plays_hot_per_s": rates["http_plays_hot"]["median"],
        "http_plays_spread_per_s": rates["http_plays_spread"]["median"],
        "ratio_engine_plays_hot_vs_spread": engine_plays.median,
        "ratio_engine_plays_hot_vs_spread_range": engine_plays.to_dict(),
        "ratio_http_plays_hot_vs_spread": http_plays.median,
        "ratio_http_plays_hot_vs_spread_range": http_plays.to_dict(),
        "buyers": buyers,
        "purchases_per_buyer": per_buyer,
        "rounds": rounds,
        "engine_hot_purchases_per_s": rates["engine_hot"]["median"],
        "engine_spread_purchases_per_s": rates["engine_spread"]["median"],
        "http_hot_purchases_per_s": rates["http_hot"]["median"],
        "http_noop_requests_per_s": rates["http_noop"]["median"],
        "ratio_engine_hot_vs_spread": engine_ratio.median,
        "ratio_engine_hot_vs_spread_range": engine_ratio.to_dict(),
        "ratio_http_hot_vs_noop": http_ratio.median,
        "ratio_http_hot_vs_noop_range": http_ratio.to_dict(),
        "units_per_commit": {
            name: summarise(results, name, "units_per_commit").median
            for name in ("engine_hot", "engine_spread", "engine_plays_hot", "engine_plays_spread")
        },
        "rates": rates,
    }


def show(report: Mapping[str, Any]) -> str:
    rates = report["rates"]
    per_commit = report["units_per_commit"]
    rows = [
        [
            name,
            f"{rates[name]['median']:,.0f} ({rates[name]['min']:,.0f}–{rates[name]['max']:,.0f})",
            f"{per_commit[name]:.1f}" if name in per_commit else "-",
        ]
        for name in ("engine_hot", "engine_spread", "http_hot", "http_noop", *PLAYS)
        if name in rates
    ]
    out = table(
        rows, ["hot PTO / world", "purchases/s (no-op: requests/s, plays: plays/s)", "units/commit"]
    )
    engine, http = (
        report["ratio_engine_hot_vs_spread_range"],
        report["ratio_http_hot_vs_noop_range"],
    )
    out += (
        f"\n{report['buyers']} concurrent buyers, {report['purchases_per_buyer']} purchases each"
        f" per run; engine hot/spread {_range(engine)}; HTTP hot/no-op {_range(http)}"
    )
    if "ratio_engine_plays_hot_vs_spread_range" in report:
        out += (
            f"\n{report['buyers']} concurrent players, {report['plays_per_player']} plays each per"
            f" run; engine plays hot/spread {_range(report['ratio_engine_plays_hot_vs_spread_range'])};"
            f" HTTP plays hot/spread {_range(report['ratio_http_plays_hot_vs_spread_range'])}"
        )
    return out


def _range(ratio: Mapping[str, float]) -> str:
    return f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})"


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    else:
        print(json.dumps(bench(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
