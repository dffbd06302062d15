"""``WorldShards.ticked`` when things go wrong beside the physics: a failing physics
thread is never hidden by the failing work beside it (both surface), and a tick whose
shard lost or moved a world while it stepped refuses to yield outcomes for slots that
now hold another world; a world loaded meanwhile (appended) is stepped with the rest."""

from __future__ import annotations

import dataclasses
from contextlib import aclosing

import numpy as np
import pytest
from test_shard import _sessions
from test_shard_meanwhile import PARAMS, _same, _tick, _worlds

from ublox_sim.core.shard import Sessions, TickOutcome, WorldShards
from ublox_sim.core.world import new_world


async def _run(
    shards: WorldShards, sessions: Sessions, steps: int, meanwhile: object
) -> list[TickOutcome]:
    (shard,) = shards.shards
    got: list[TickOutcome] = []
    ticked = shards.ticked([(shard, sessions)], steps, meanwhile)  # type: ignore[arg-type]
    async with aclosing(ticked):
        async for _, outcome in ticked:
            got.append(outcome)
    return got


@pytest.mark.asyncio
async def test_physics_and_the_work_beside_it_failing_both_surface() -> None:
    shards = _worlds()
    before = {w: shards.arrays(w)["theta"] for w in shards.ids()}
    # A session coupled for more steps than its tick has: the physics thread refuses it.
    bad = dataclasses.replace(_sessions(5, 10, 4), steps=np.full(10, 9, dtype=np.int64))

    async def meanwhile() -> None:
        raise RuntimeError("creators failed")

    with pytest.raises(ExceptionGroup) as caught:
        await _run(shards, bad, 4, meanwhile)
    kinds = {type(e): str(e) for e in caught.value.exceptions}
    assert "more steps than its tick" in kinds[ValueError]
    assert kinds[RuntimeError] == "creators failed"
    for w, theta in before.items():
        assert shards.arrays(w)["theta"].tobytes() == theta.tobytes()


@pytest.mark.asyncio
async def test_physics_failing_alone_is_raised_as_itself() -> None:
    shards = _worlds()
    bad = dataclasses.replace(_sessions(5, 10, 4), steps=np.full(10, 9, dtype=np.int64))

    async def meanwhile() -> None:
        pass

    with pytest.raises(ValueError, match="more steps than its tick"):
        await _run(shards, bad, 4, meanwhile)


@pytest.mark.asyncio
async def test_a_world_dropped_while_stepping_is_refused_not_misread() -> None:
    shards = _worlds()
    before = {w: shards.arrays(w)["theta"] for w in shards.ids()}

    async def meanwhile() -> None:
        shards.remove("w1")  # w4 moves into slot 1, where sessions were given for w1

    with pytest.raises(RuntimeError, match="dropped or moved"):
        await _tick(shards, meanwhile)
    for w in shards.ids():
        assert shards.arrays(w)["theta"].tobytes() == before[w].tobytes()


@pytest.mark.asyncio
async def test_a_world_loaded_while_stepping_is_stepped_as_if_loaded_first() -> None:
    first, beside = _worlds(), _worlds()
    extra = new_world(PARAMS, np.random.default_rng(3))

    async def meanwhile() -> None:
        beside.put("w9", extra["theta"], extra["omega"])

    first.put("w9", extra["theta"], extra["omega"])  # the reference: loaded, then the tick
    (a,) = await _tick(first)
    (b,) = await _tick(beside, meanwhile)
    assert _same(a, b)
    for w in first.ids():
        assert first.arrays(w)["theta"].tobytes() == beside.arrays(w)["theta"].tobytes()


@pytest.mark.asyncio
async def test_an_interrupt_beside_a_failing_physics_goes_on_with_the_error_as_its_cause() -> None:
    shards = _worlds()
    bad = dataclasses.replace(_sessions(5, 10, 4), steps=np.full(10, 9, dtype=np.int64))

    async def meanwhile() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        await _run(shards, bad, 4, meanwhile)
    assert isinstance(caught.value.__cause__, ValueError)
