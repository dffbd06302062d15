"""Scale: a store of N players, registered, reopened and used, against N/100 and raw SQLite.

    ublox-sim bench scale [--quick] [--players N]

For N players (default 1,000,000; ``--quick`` 100,000) and for N/100 in the same run,
each step in a fresh process (so RSS is the step's own):

* register: ``Engine.register_players`` in lists of 5,000, against raw ``executemany``
  of the same rows (a player row plus its opening deposit, same ``synchronous``) into a
  store with the same schema, and against the same plus each player's event-log row,
  which the store also writes;
* open + first 1,000 operations: the time from ``Engine.open`` to the completion of the
  first 1,000 random operations (deposits, transfers, reads) over 10,000 of the players,
  work deferred to background tasks included; RSS after the open and at the end;
* the burst's operation rate, and how many actors are active at the end.

The figures that must not depend on N are reported as ratios to the N/100 store's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from .harness import child_command, child_env

SIZES = {"tiny": 20_000, "quick": 100_000, "full": 1_000_000}
CHUNK = 5_000
CHOSEN = 10_000
FIRST = 1_000
BURST = 10_000
WORKERS = 100
CREATED_AT = "2026-01-01 00:00:00+00:00"


def pid(n: int) -> str:
    return f"p{n:07d}"


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


# -- the steps, each run in its own process -------------------------------------------


async def register(home: Path, players: int) -> dict[str, Any]:
    from ublox_sim import Engine, SimClock

    started = time.perf_counter()
    async with Engine.open(home, seed=1, clock=SimClock()) as engine:
        for first in range(0, players, CHUNK):
            batch = [
                (pid(n), Decimal(1000), 1.0, None)
                for n in range(first, min(players, first + CHUNK))
            ]
            results = await engine.register_players(batch)
            refused = [r for r in results if isinstance(r, Exception)]
            if refused:
                raise RuntimeError(f"registration refused: {refused[0]}")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rate": players / seconds}


def raw(db: Path, players: int, logged: bool = False) -> dict[str, Any]:
    """The same rows through sqlite3's executemany: the ceiling registration is held to.

    ``logged``: each player's event-log row too (kind, time, the JSON payload the store
    writes; the table's retention trigger fires as it does for the store), which the
    store writes and the issue's baseline does not: the second ratio says what it costs."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    for first in range(0, players, CHUNK):
        ids = [pid(n) for n in range(first, min(players, first + CHUNK))]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO players (player_id, position_x, position_y, phase, tau_k,"
            " resonance_freq, usd_obbba_balance, created_at) VALUES (?, 1.0, 1.0, 0.5, 1.0,"
            " 1.0, 100000, ?)",
            [(p, CREATED_AT) for p in ids],
        )
        conn.executemany(
            "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency,"
            " timestamp) VALUES ('deposit', NULL, ?, 100000, 'USD-OBBBA', ?)",
            [(p, CREATED_AT) for p in ids],
        )
        if logged:
            conn.executemany(
                "INSERT INTO event_log (kind, at, payload) VALUES ('player_registered', ?, ?)",
                [
                    (
                        CREATED_AT,
                        # The store's payload, made the cheapest way (plain ASCII ids).
                        f'{{"kind":"player_registered","at":"{CREATED_AT}",'
                        f'"player_id":"{p}","usd_obbba":"1000.00"}}',
                    )
                    for p in ids
                ],
            )
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return {"seconds": seconds, "rate": players / seconds}


async def burst(home: Path, players: int) -> dict[str, Any]:
    from ublox_sim import Engine, SimClock, UbloxError

    rng = random.Random(7)
    chosen = [pid(n) for n in rng.sample(range(players), min(CHOSEN, players))]
    plan = []
    for _ in range(BURST):
        kind = rng.random()
        a, b = rng.sample(chosen, 2)
        plan.append(("deposit" if kind < 0.4 else "transfer" if kind < 0.8 else "read", a, b))
    done = 0
    first_done: float | None = None
    started = time.perf_counter()
    async with Engine.open(home, seed=1, clock=SimClock()) as engine:
        opened = time.perf_counter() - started
        rss_open = rss_mb()
        queue = iter(plan)

        async def worker() -> None:
            nonlocal done, first_done
            for kind, a, b in queue:
                try:
                    if kind == "deposit":
                        await engine.deposit(a, Decimal("1.00"))
                    elif kind == "transfer":
                        await engine.transfer(a, b, Decimal("0.01"))
                    else:
                        await engine.get_player(a)
                except UbloxError:
                    pass  # a refusal is an answer too
                done += 1
                if done == FIRST:
                    first_done = time.perf_counter() - started

        burst_started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        burst_seconds = time.perf_counter() - burst_started
        active = engine.active_actors() if hasattr(engine, "active_actors") else None
    return {
        "open_seconds": opened,
        "open_plus_first_seconds": first_done,
        "rss_after_open_mb": rss_open,
        "rss_end_mb": rss_mb(),
        "ops_per_second": BURST / burst_seconds,
        "active_actors": active,
    }


# -- the driver ---------------------------------------------------------------------


def _step(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        child_command("ublox_sim.bench.scale", *args),
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench scale {args[0]} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def one_size(players: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ublox-scale-") as tmp:
        home, empty, logged = (Path(tmp) / name for name in ("home", "empty", "logged"))
        # Empty stores: the schema for the raw baselines.
        _step("register", str(empty), "0")
        _step("register", str(logged), "0")
        registered = _step("register", str(home), str(players))
        ceiling = _step("raw", str(empty / "ublox.db"), str(players))
        with_log = _step("raw_logged", str(logged / "ublox.db"), str(players))
        used = _step("burst", str(home), str(players))
    return {
        "players": players,
        "register": registered,
        "raw": ceiling,
        "raw_logged": with_log,
        "register_vs_raw": registered["rate"] / ceiling["rate"],
        "register_vs_raw_logged": registered["rate"] / with_log["rate"],
        **used,
    }


def bench(size: str, players: int | None = None) -> dict[str, Any]:
    n = players or SIZES[size]
    big, small = one_size(n), one_size(max(1_000, n // 100))
    return {
        "big": big,
        "small": small,
        "open_plus_first_ratio": big["open_plus_first_seconds"] / small["open_plus_first_seconds"],
        "ops_ratio": big["ops_per_second"] / small["ops_per_second"],
    }


def show(report: dict[str, Any]) -> str:
    rows = [
        ("players", "{:,}"),
        ("register rate /s", "{:,.0f}"),
        ("vs raw executemany", "{:.2f}×"),
        ("vs raw + event-log rows", "{:.2f}×"),
        ("open + first 1,000 ops, s", "{:.3f}"),
        ("RSS after open, MB", "{:.0f}"),
        ("RSS at the end, MB", "{:.0f}"),
        ("ops/s (burst of 10,000)", "{:,.0f}"),
        ("active actors at the end", "{}"),
    ]

    def values(r: dict[str, Any]) -> list[Any]:
        return [
            r["players"],
            r["register"]["rate"],
            r["register_vs_raw"],
            r["register_vs_raw_logged"],
            r["open_plus_first_seconds"],
            r["rss_after_open_mb"],
            r["rss_end_mb"],
            r["ops_per_second"],
            r["active_actors"],
        ]

    big, small = values(report["big"]), values(report["small"])
    lines = [f"{'':28} {'N':>14} {'N/100':>14}"]
    for (name, fmt), a, b in zip(rows, big, small, strict=True):
        lines.append(f"{name:28} {fmt.format(a):>14} {fmt.format(b):>14}")
    lines.append(
        f"open+first ratio N vs N/100: {report['open_plus_first_ratio']:.2f}×, "
        f"op rate ratio: {report['ops_ratio']:.2f}×"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    step, where, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if step == "register":
        out = asyncio.run(register(where, count))
    elif step == "raw":
        out = raw(where, count)
    elif step == "raw_logged":
        out = raw(where, count, logged=True)
    else:
        out = asyncio.run(burst(where, count))
    print(json.dumps(out))
