"""A writer for ``test_pg_snapshot.py``: ``python pg_snapshot_writer.py URL``.

An embedded engine on the shared database deposits and transfers in a loop among
``w-0``..``w-3`` (registered by the test), printing the number of operations done after
each one; it runs until the test kills it (each operation is one atomic unit)."""

from __future__ import annotations

import sys

import anyio

from ublox_sim.engine import Engine

PLAYERS = [f"w-{i}" for i in range(4)]


async def main(url: str) -> None:
    async with Engine.open(store=url, seed=3) as engine:
        done = 0
        while True:
            a, b = PLAYERS[done % 4], PLAYERS[(done + 1) % 4]
            await engine.deposit(a, "1.00")
            await engine.transfer(a, b, "0.75")
            done += 1
            print(done, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
