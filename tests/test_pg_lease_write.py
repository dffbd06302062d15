"""A world written under a lease and a takeover of that lease, in both orders, on two
real connections: the write either lands before the takeover (which waits for it) or is
refused after it; never a step the new holder's copy lacks."""

from __future__ import annotations

from typing import Any

import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.engine import Engine
from ublox_sim.store.postgres.backend import SAVE_OWN_WORLD
from ublox_sim.store.postgres.dialect import to_postgres

pytestmark = pytest.mark.asyncio

WORLD = "w_world_cdt"
TAKE_OVER = "UPDATE world_leases SET holder = 'B', expires = 2e9 WHERE pto_id = 'w'"


async def _store_with_a_leased_world(pg_url: str) -> None:
    from cluster_helpers import launch

    async with Engine.open(store=pg_url, clock=SimClock(), shared=False) as engine:
        await engine.register_player("creator", usd_obbba=10)
        await launch(engine, "w")
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DELETE FROM world_leases")
        await conn.execute(
            "INSERT INTO world_leases (pto_id, holder, expires) VALUES ('w', 'A', 0)"
        )
    finally:
        await conn.close()


async def _save_as_a(conn: Any, npz: bytes) -> None:
    await conn.execute(to_postgres(SAVE_OWN_WORLD), WORLD, WORLD, "A", npz)


async def test_a_takeover_waits_for_the_holders_write_in_flight(pg_url: str) -> None:
    import asyncpg

    await _store_with_a_leased_world(pg_url)
    holder, taker = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
    try:
        async with holder.transaction():
            await _save_as_a(holder, b"A's step")
            # The holder's unit has not committed: a takeover must wait for it (here it
            # gives up at once instead of waiting, which shows it would have waited).
            await taker.execute("SET lock_timeout = '50ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await taker.execute(TAKE_OVER)
        await taker.execute(TAKE_OVER)  # once committed, the takeover goes ahead
        assert await taker.fetchval("SELECT npz FROM worlds WHERE world_cdt_id = $1", WORLD) == (
            b"A's step"
        )
    finally:
        await holder.close()
        await taker.close()


async def test_a_write_after_a_takeover_is_refused_and_changes_nothing(pg_url: str) -> None:
    import asyncpg

    await _store_with_a_leased_world(pg_url)
    holder, taker = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
    try:
        before = await taker.fetchval("SELECT npz FROM worlds WHERE world_cdt_id = $1", WORLD)
        async with holder.transaction():
            await holder.execute("SELECT 1")  # the holder's unit began before the takeover
            await taker.execute(TAKE_OVER)
            with pytest.raises(asyncpg.NotNullViolationError):
                await _save_as_a(holder, b"A's late step")
        after = await taker.fetchval("SELECT npz FROM worlds WHERE world_cdt_id = $1", WORLD)
        assert after == before
    finally:
        await holder.close()
        await taker.close()
