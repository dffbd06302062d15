"""A hot world's players, for the kill test of tests/test_hot_plays.py:
``python -m hot_plays_worker HOME PLAYERS`` (with ``tests/`` on the path).

Sets up ``PLAYERS`` players holding PTS of the world ``hot`` (``setup``), prints
``ready``, then every player plays half an hour again and again, all at once (the PTO
pipelines them), printing ``acked PLAYER SESSION_ID`` as each play is answered; then
``done``, and it waits to be killed (it never closes the engine)."""

from __future__ import annotations

import sys
from datetime import timedelta
from decimal import Decimal

import anyio

from ublox_sim.core.clock import SimClock
from ublox_sim.engine import Engine

HOURS = 10  # each player's PTS


async def setup(engine: Engine, count: int) -> list[str]:
    """``count`` players, each holding ``HOURS`` of the world ``hot`` (funded: playable)."""
    names = [f"p{i:02d}" for i in range(count)]
    await engine.register_player("maker", usd_obbba=Decimal(10_000))
    await engine.register_players([(name, Decimal(1_000), 1.0, None) for name in names])
    await engine.launch_pto(
        pto_id="hot",
        game_name="G",
        creator_id="maker",
        atu_required=10,
        pts_offered=count * HOURS,
        price_per_pts=Decimal(1),
        funding_deadline=timedelta(hours=2),
    )
    for name in names:
        await engine.buy_pts(name, "hot", HOURS)
    return names


async def main(home: str, count: int) -> None:
    async with Engine.open(home, seed=1, clock=SimClock()) as engine:
        names = await setup(engine, count)
        print("ready", flush=True)

        async def player(name: str) -> None:
            for _ in range(2 * HOURS):
                played = await engine.play(name, "hot", 0.5)
                print(f"acked {name} {played.session_id}", flush=True)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(player, name)
        print("done", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
