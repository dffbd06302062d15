"""A world written through the Backend API on a shared PostgreSQL store (issue #14) is
never dropped silently: the writer claims the world's lease, a world another live
process holds is refused with ``WorldLeased``, and a lease lost after the claim refuses
the unit at commit. Each refusal changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
from conformance import workload as w

from ublox_sim.actors.runtime import owned_task_group
from ublox_sim.core.errors import UnitRejected, WorldLeased
from ublox_sim.store.backend import Unit, WorldWrite
from ublox_sim.store.home import world_id_for
from ublox_sim.store.postgres.backend import PostgresBackend

pytestmark = pytest.mark.anyio

WORLD = world_id_for("pto-a")


@asynccontextmanager
async def _shared(url: str) -> AsyncIterator[PostgresBackend]:
    async with owned_task_group() as tg:
        backend = PostgresBackend(url, shared=True)
        await backend.start(tg)
        try:
            yield backend
        finally:
            await backend.aclose()


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)


async def test_a_world_held_elsewhere_is_refused_loudly(pg_url: str) -> None:
    async with _shared(pg_url) as one, _shared(pg_url) as two:
        await one.commit(Unit((w.register(w.DAVE),)))
        await one.commit(w.launch(w.pto_record("pto-a", w.DAVE), seed=9))
        assert one.leases is not None and two.leases is not None
        assert await one.leases.holders() == {}  # a launch takes no lease
        await two.save_world(WORLD, w.world(10))  # nobody holds it: written, no lease taken
        assert await one.leases.holders() == {}
        await one.leases.take("pto-a")  # as a play or a tick does
        await one.save_world(WORLD, w.world(10))
        _, newest = await one.event_log_span()

        with pytest.raises(WorldLeased):
            await two.save_world(WORLD, w.world(11))
        with pytest.raises(WorldLeased):
            await two.commit(
                Unit((w.stepped("pto-a", 0.3),), worlds=(WorldWrite(WORLD, w.world(11)),))
            )
        # two believes it holds the lease (a stale belief): the commit refuses the unit.
        two.leases.held = two.leases.held | {"pto-a"}
        with pytest.raises(UnitRejected):
            await two.commit(
                Unit((w.deposit(w.DAVE, 5),), worlds=(WorldWrite(WORLD, w.world(11)),))
            )
        assert _same(await two.load_world(WORLD), w.world(10))
        assert await two.event_log_span() == (1, newest)  # nothing of the refused units
        dave = await two.load_player(w.DAVE)
        assert dave is not None and dave.usd_obbba_balance == 0

        await one.aclose()  # a clean close releases one's lease: two may write now
        await two.save_world(WORLD, w.world(12))
        assert _same(await two.load_world(WORLD), w.world(12))
        assert await two.verify() == []
