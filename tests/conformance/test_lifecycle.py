"""Opening, the single-writer lock, the metrics a server reads, closing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ublox_sim.core.errors import StoreLocked
from ublox_sim.store.backend import Backend, Unit

from . import workload as w
from .conftest import BackendFactory
from .workload import ALICE, BOB

pytestmark = pytest.mark.anyio


async def test_a_fresh_store_is_empty_and_a_written_one_is_not(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        assert isinstance(backend, Backend)
        assert not backend.closed
        assert await backend.is_empty()
        assert await backend.event_log_span() == (0, 0)
        assert await backend.run_record() is None
        assert await backend.run_status() is None
        await backend.commit(Unit((w.register(ALICE),)))
    assert backend.closed
    async with backend_factory.open(location) as backend:
        assert not await backend.is_empty()


async def test_one_writer_at_a_time(backend_factory: BackendFactory, location: Path) -> None:
    """One writer, or (a shared PostgreSQL store) several that see each other's writes."""
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(ALICE),)))
        if backend_factory.several_writers:
            async with backend_factory.open(location) as other:
                assert await other.exists(ALICE)
                await other.commit(Unit((w.register(BOB),)))
            assert await backend.exists(BOB)
        else:
            with pytest.raises(StoreLocked):
                async with backend_factory.open(location):
                    pass
        assert await backend.exists(ALICE)  # the first one is unharmed
    async with backend_factory.open(location) as backend:  # released on close
        assert await backend.exists(ALICE)


async def test_units_committed_and_the_batch_hook(
    backend_factory: BackendFactory, location: Path
) -> None:
    batches: list[tuple[float, int]] = []
    async with backend_factory.open(location) as backend:
        start = backend.units_committed
        backend.on_batch_committed(lambda seconds, units: batches.append((seconds, units)))
        futures = [await w.queued(backend, Unit((w.register(f"p{i}", 1),))) for i in range(5)]
        for future in futures:
            await future
        await backend.commit(Unit((w.register(BOB),)))
        assert backend.units_committed == start + 6
        assert sum(units for _, units in batches) == 6
        assert all(seconds >= 0 for seconds, _ in batches)
        backend.on_batch_committed(None)
        await backend.commit(Unit((w.deposit(BOB, 1),)))
        assert sum(units for _, units in batches) == 6


async def test_a_changed_world_is_written_back_by_close(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.save_world("w-1", w.world(1))
        backend.world_changed("w-1", w.world(2))
    async with backend_factory.open(location) as backend:
        got = await backend.load_world("w-1")
        assert all(np.array_equal(got[k], v) for k, v in w.world(2).items())
