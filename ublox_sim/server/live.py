"""Time in a served game: the wall clock's ticks, or a scenario played in simulated time."""

from __future__ import annotations

import math
from typing import Any

import anyio

from ..core.clock import SimClock
from ..core.errors import UbloxError
from ..core.logsetup import get_logger
from ..engine import Engine

log = get_logger(__name__)


async def wall_ticks(engine: Engine, tick_seconds: float) -> None:
    """Every ``tick_seconds`` of wall time: each world steps once and deadlines fire.

    With a wall clock ``advance`` moves no clock; it steps the worlds by the hours
    given and fails the PTOs whose funding deadline has passed (refunding holders)."""
    hours = 1.0 / engine.params.steps_per_hour
    while True:
        await anyio.sleep(tick_seconds)
        try:
            await engine.advance(hours)
        except UbloxError as exc:
            # A failed tick (a full disk, one world that cannot step) must not take the
            # server down; requests report the store's state themselves (503).
            log.warning("server.tick_failed", error=str(exc))


async def play_scenario(
    engine: Engine,
    loaded: Any,
    clock: SimClock,
    ticks_per_second: float,
    resume: bool,
    progress: dict[str, Any],
) -> None:
    """Play a scenario in simulated time, ``ticks_per_second`` ticks a second.

    ``progress`` (name, tick, total_ticks, finished) is updated as it goes."""
    from ..sim.runner import Runner

    runner = Runner(engine, loaded.scenario, clock)
    progress.update(name=loaded.scenario.name, tick=0, total_ticks=runner.total, finished=False)
    if not resume:
        await runner.setup()
    for tick in range(runner.total):
        await runner.tick(tick)
        progress["tick"] = tick + 1
        await anyio.sleep(1.0 / ticks_per_second if math.isfinite(ticks_per_second) else 0)
    progress["finished"] = True
    log.info("server.scenario_finished", ticks=runner.total)
