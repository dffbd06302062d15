"""One process of a cluster test (``tests/test_cluster_processes.py``): an embedded engine
on a PostgreSQL database it shares with others (the default), told what to do by argv.

    python cluster_worker.py URL buy PTO_ID PLAYER...
    python cluster_worker.py URL move PLAYER_A PLAYER_B ROUNDS
    python cluster_worker.py URL deadline
    python cluster_worker.py URL load PLAYER...   (until a second line on stdin)
    python cluster_worker.py URL hold             (the database, shared, until a line)
    python cluster_worker.py URL hold-exclusive   (the database, alone, until a line)

It prints ``ready`` once its engine is open and waits for a line on stdin (so that every
process starts its load at once), then prints one JSON line per outcome and ``done``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import signal
import sys

import anyio

from ublox_sim.core.errors import Conflict, UbloxError, WorldLeased
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


def _dump_tasks() -> None:
    """SIGUSR1: every task's stack to stderr (a test that hangs shows where)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def main(url: str, what: str, args: list[str]) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    faulthandler.register(signal.SIGUSR2)  # threads' stacks, even with the loop stuck
    shared = False if what == "hold-exclusive" else None
    async with Engine.open(store=url, seed=7, shared=shared) as engine:
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
            elif what == "load":
                await _load(engine, args)
                tg.cancel_scope.cancel()
            elif what in ("hold", "hold-exclusive"):
                pass  # it held the database open until told to go
            elif what == "deadline":
                failed = await engine.fire_deadlines()
                _say({"op": "deadline", "failed": failed})
            else:
                raise SystemExit(f"unknown command {what!r}")
    print("done", flush=True)


async def _load(engine: Engine, players: list[str]) -> None:
    """Deposits, purchases and plays by ``players`` and the wall clock's ticks (worlds
    stepped under their leases, deadlines fired) until stdin says stop. Every write is
    printed once acknowledged; so is every change of the worlds this process holds."""
    leases = engine.store.leases  # type: ignore[attr-defined]

    async def tick() -> None:
        held: frozenset[str] = frozenset()
        hours = 1.0 / engine.params.steps_per_hour
        while True:
            await engine.advance(hours)
            if leases.held != held:
                held = frozenset(leases.held)
                _say({"op": "held", "ptos": sorted(held)})
            await anyio.sleep(0.05)

    async def play(player: str) -> None:
        while True:
            await engine.deposit(player, 1)
            _say({"op": "deposit", "player": player})
            try:
                token = await engine.buy_pts(player, "big", 1)
            except Conflict:  # lost the race every retry: refused, nothing written
                _say({"op": "buy_conflict", "player": player})
                continue
            _say({"op": "buy", "token": token.token_id})
            if "arena" in leases.held:  # plays go to the process stepping the world
                try:
                    session = await engine.play(player, "arena", 0.01)
                except WorldLeased:  # the lease moved on since: refused, nothing written
                    continue
                _say({"op": "play", "session": session.session_id})

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        for player in players:
            tg.start_soon(play, player)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:])
