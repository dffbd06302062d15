"""``WorldShards.ticked(..., meanwhile)``: the shards step on a worker thread while
``meanwhile`` runs on the loop, and the tick is exactly as if ``meanwhile`` had run
first: the same outcome and theta, bit for bit; a world it changed is stepped from what
it left; one that raises changes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing

import numpy as np
import pytest
from test_shard import _sessions

from ublox_sim.core.shard import TickOutcome, WorldShards
from ublox_sim.core.world import WorldParams, new_world

PARAMS = WorldParams(size=16)


def _worlds(n: int = 5) -> WorldShards:
    rng = np.random.default_rng(11)
    shards = WorldShards(PARAMS)
    for k in range(n):
        w = new_world(PARAMS, rng)
        shards.put(f"w{k}", w["theta"], w["omega"])
    return shards


async def _tick(
    shards: WorldShards, meanwhile: Callable[[], Awaitable[None]] | None = None
) -> list[TickOutcome]:
    (shard,) = shards.shards
    got: list[TickOutcome] = []
    # Sessions on every world but the first and the last (test_shard's helper).
    ticked = shards.ticked([(shard, _sessions(5, 30, 4))], 4, meanwhile)
    async with aclosing(ticked):
        async for _, outcome in ticked:
            got.append(outcome)
    return got


def _same(a: TickOutcome, b: TickOutcome) -> bool:
    names = ("quality", "coherence", "locks", "locked_steps", "phase", "aci")
    return all(getattr(a, n).tobytes() == getattr(b, n).tobytes() for n in names)


@pytest.mark.asyncio
async def test_stepping_beside_meanwhile_gives_the_same_bits() -> None:
    plain, beside = _worlds(), _worlds()
    ran: list[str] = []

    async def meanwhile() -> None:
        ran.append("yes")

    (a,) = await _tick(plain)
    (b,) = await _tick(beside, meanwhile)
    assert ran == ["yes"]
    assert _same(a, b)
    for w in plain.ids():
        assert plain.arrays(w)["theta"].tobytes() == beside.arrays(w)["theta"].tobytes()


@pytest.mark.asyncio
async def test_a_world_changed_meanwhile_is_stepped_from_what_it_left() -> None:
    first, beside = _worlds(), _worlds()
    moved = np.full((16, 16), 0.5)

    async def meanwhile() -> None:
        beside.set_theta("w2", moved)

    first.set_theta("w2", moved)  # the reference: the change, then the tick
    (a,) = await _tick(first)
    (b,) = await _tick(beside, meanwhile)
    assert _same(a, b)
    for w in first.ids():
        assert first.arrays(w)["theta"].tobytes() == beside.arrays(w)["theta"].tobytes()


@pytest.mark.asyncio
async def test_meanwhile_failing_leaves_the_worlds_as_they_were() -> None:
    shards = _worlds()
    before = {w: shards.arrays(w)["theta"] for w in shards.ids()}

    async def meanwhile() -> None:
        raise RuntimeError("creators failed")

    with pytest.raises(RuntimeError, match="creators failed"):
        await _tick(shards, meanwhile)
    for w, theta in before.items():
        assert shards.arrays(w)["theta"].tobytes() == theta.tobytes()
