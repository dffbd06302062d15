"""``Engine.tick_ahead`` (a checkpointed run): the next tick is decided and stepped while
the last tick's unit is in flight, from what that unit will leave (tokens' hours, the
players' tau_k, phase and xUSD, the PTOs and their hours left), and gives the same bytes
as ticks that wait; a unit that fails fails the run at its next step, and no checkpoint
commits after it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from engine_helpers import launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import PersistenceError, StoreFull, UbloxError
from ublox_sim.core.events import SessionPlayed
from ublox_sim.core.records import PLAYABLE
from ublox_sim.core.views import SessionResult
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Unit
from ublox_sim.store.sqlite.writer import run
from ublox_sim.store.verify import verify_store

pytestmark = pytest.mark.anyio

# Alice's 4 hours on g1 run out in the second tick (3 + 2 asked: 1 left, refused);
# a tick's tau_k, phase and xUSD move from the last tick's; g3's deadline passes after
# the first tick (a deadline owed, fired beside the second tick's physics).
TICKS = [
    [("g1", "alice", 3.0), ("g2", "bob", 1.5), ("g1", "bob", 0.5)],
    [("g1", "alice", 2.0), ("g2", "bob", 1.0), ("g1", "bob", 1.5), ("g2", "alice", 0.25)],
    [("g1", "alice", 1.0), ("g2", "bob", 1.5), ("g1", "bob", 0.5), ("g2", "alice", 0.5)],
]


def _open(home: Path) -> Any:
    return Engine.open(home, seed=7, world=WorldParams(size=8), clock=SimClock(), checkpointed=True)


async def _setup(engine: Engine) -> None:
    await engine.register_player("creator")
    for name in ("alice", "bob", "carol"):
        await engine.register_player(name, usd_obbba=100, tau_k=2.0)
    for pto_id in ("g1", "g2"):
        await launch(engine, pto_id, offered=8, price=1)
        await engine.buy_pts("alice", pto_id, 4)
        await engine.buy_pts("bob", pto_id, 4)
    await launch(engine, "g3", offered=8, price=1, deadline=timedelta(hours=1))
    await engine.buy_pts("carol", "g3", 2)  # refunded when the deadline fires
    await engine.checkpoint(0)


def _outcome(result: object) -> object:
    if isinstance(result, UbloxError):
        return type(result).__name__
    return result.phase_locks if isinstance(result, SessionResult) else result


async def _waiting(home: Path) -> tuple[list[list[object]], dict[str, dict[str, float]]]:
    """The ticks as ``Engine.tick`` plays them: each waits for its unit and deadlines."""
    async with _open(home) as engine:
        await _setup(engine)
        outcomes = []
        hours: dict[str, dict[str, float]] = {}
        for k, plays in enumerate(TICKS):
            results, _ = await engine.tick(1.0, plays)
            outcomes.append([_outcome(r) for r in results])
            if k == 0:
                hours = await engine.store.open_hours(sorted(PLAYABLE))
        await engine.checkpoint(1)
        await engine.export_json(home / "export.json")
    return outcomes, hours


async def _ahead(
    engine: Engine,
    outcomes: list[list[object]],
    reads: list[str],
    hours_after_first: dict[str, dict[str, float]],
) -> None:
    for k, plays in enumerate(TICKS):
        if k == 1:
            assert not reads  # tick 0's sessions landed nowhere yet: from memory
            assert await engine.open_hours(sorted(PLAYABLE)) == hours_after_first
            assert not reads
        outcomes.append([_outcome(r) for r in await engine.tick_ahead(1.0, plays)])
        if k == 0:
            reads.clear()  # (the first tick read the PTOs: none was known)


async def test_the_next_tick_is_decided_before_the_last_ones_unit_lands_same_bytes(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(120):  # (a hang guard: a tick waiting for a landing held back)
        expected, hours_after_first = await _waiting(tmp_path / "waits")
        home = tmp_path / "ahead"
        async with _open(home) as engine:
            await _setup(engine)
            # The tick units' acknowledgements are held back until the test lets them go:
            # the rows are written, but the engine does not know it.
            held: list[Callable[[], None]] = []
            submit = engine.store.submit

            async def holding(unit: Unit, done: Callable[[object], None]) -> None:
                if any(type(e) is SessionPlayed for e in unit.events):

                    def later(outcome: object) -> None:
                        held.append(lambda: done(outcome))

                    await submit(unit, later)
                else:
                    await submit(unit, done)

            engine.store.submit = holding  # type: ignore[method-assign]
            reads: list[str] = []
            for name in ("open_hours", "load_all"):
                read = getattr(engine.store, name)

                def spy(*args: Any, _read: Any = read, _name: str = name) -> Any:
                    reads.append(_name)
                    return _read(*args)

                setattr(engine.store, name, spy)
            outcomes = []
            try:
                await _ahead(engine, outcomes, reads, hours_after_first)
                await engine.store.commit(Unit(()))  # the writer is past every tick unit
                # Every tick was decided and stepped before the engine heard of a landing.
                assert len(held) == len(TICKS)
                # The PTOs came from their actors; the deadlines owed read the store beside.
                assert "load_all" not in reads
            finally:  # (else the engine's close would wait for them for ever)
                for release in held:
                    release()
            await engine.settle_ticks()
            await engine.checkpoint(1)
            await engine.export_json(home / "export.json")
        assert outcomes == expected
        assert outcomes[1][0] == "InvalidState"  # alice's hours ran out: tick 0 counted
        assert (home / "export.json").read_bytes() == (
            tmp_path / "waits" / "export.json"
        ).read_bytes()
        assert verify_store(home) == []


async def test_a_tick_unit_that_fails_fails_the_run_and_no_checkpoint_commits_after_it(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(120):
        async with _open(tmp_path) as engine:
            await _setup(engine)
            db = engine.store.db  # a real full database: no page more
            pages = (await db.call(lambda c: run(c, "PRAGMA page_count")))[0][0]
            await db.call(lambda c: run(c, f"PRAGMA max_page_count={pages}"))
            plays = [("g1", "alice", 0.01), ("g1", "bob", 0.01), ("g2", "bob", 0.01)]
            with pytest.raises((StoreFull, PersistenceError)):
                for _ in range(2000):  # each tick writes rows: the database fills
                    await engine.tick_ahead(0.1, plays)
                await engine.settle_ticks()
            # Loud from then on: the next tick, settling and a checkpoint all say so.
            with pytest.raises((StoreFull, PersistenceError)):
                await engine.tick_ahead(0.1, plays)
            with pytest.raises((StoreFull, PersistenceError)):
                await engine.settle_ticks()
            await db.call(lambda c: run(c, "PRAGMA max_page_count=1073741823"))
            with pytest.raises((StoreFull, PersistenceError)):
                await engine.checkpoint(1)
    # What reached the disk is checkpoint 0's: no tick's row.
    async with _open(tmp_path) as engine:
        assert (await engine.stats())["players"]["total_play_time"] == 0
    assert verify_store(tmp_path) == []
