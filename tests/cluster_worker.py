"""One process of a cluster test (``tests/test_cluster_processes.py``): an embedded engine
on the shared PostgreSQL database (``$UBLOX_CLUSTER=1``), told what to do by argv.

    python cluster_worker.py URL buy PTO_ID PLAYER...
    python cluster_worker.py URL move PLAYER_A PLAYER_B ROUNDS
    python cluster_worker.py URL deadline

It prints ``ready`` once its engine is open and waits for a line on stdin (so that every
process starts its load at once), then prints one JSON line per outcome and ``done``.
"""

from __future__ import annotations

import json
import sys

import anyio

from ublox_sim.core.errors import UbloxError
from ublox_sim.engine import Engine


def _say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


async def _outcome(name: str, call: object) -> None:
    try:
        result = await call  # type: ignore[misc]
    except UbloxError as exc:
        _say({"op": name, "error": exc.code})
    else:
        _say({"op": name, "ok": repr(result)[:80]})


async def main(url: str, what: str, args: list[str]) -> None:
    async with Engine.open(store=url, seed=7) as engine:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        async with anyio.create_task_group() as tg:
            if what == "buy":
                pto_id, players = args[0], args[1:]
                for player in players:
                    tg.start_soon(_outcome, f"buy {player}", engine.buy_pts(player, pto_id, 1))
            elif what == "move":
                a, b, rounds = args[0], args[1], int(args[2])
                for _ in range(rounds):
                    tg.start_soon(_outcome, "deposit", engine.deposit(a, 1))
                    tg.start_soon(_outcome, "a->b", engine.transfer(a, b, 3))
                    tg.start_soon(_outcome, "b->a", engine.transfer(b, a, 2))
            elif what == "deadline":
                failed = await engine.fire_deadlines()
                _say({"op": "deadline", "failed": failed})
            else:
                raise SystemExit(f"unknown command {what!r}")
    print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:])
