"""Lease rows locked by writers and by renewals, on real connections (issue #14): one
order for all (``pto_id``), so a renewal and a batch writing worlds cannot deadlock; a
renewal that PostgreSQL aborts all the same (a real deadlock, in another order) runs
again and its caller sees success; a claim names the holder that just took the lease,
not the one it replaced; a lost connection reaches callers as ``PersistenceError``.

Interleavings are driven step by step: a statement expected to block is started as a
task, and the test goes on once PostgreSQL shows its session waiting for a lock
(``blocked``), never after a sleep of a guessed length."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import PersistenceError, WorldLeased
from ublox_sim.engine import Engine
from ublox_sim.store.postgres.backend import SAVE_LEASED_WORLD, SAVE_OWN_WORLD, save_world
from ublox_sim.store.postgres.dialect import to_postgres
from ublox_sim.store.postgres.lease import WorldLeases
from ublox_sim.store.postgres.writer import LOCK_LEASES_SQL, PgWriter
from ublox_sim.store.sqlite.writer import Statement

pytestmark = pytest.mark.asyncio

PTOS = ("a", "b")
ARRAYS = {"theta": np.zeros(3)}


async def _store_with_leased_worlds(pg_url: str, holder: str = "A", expires: float = 0) -> None:
    """PTOs ``a`` and ``b`` with their worlds, both leases held by ``holder``."""
    import asyncpg  # type: ignore[import-untyped]
    from cluster_helpers import launch

    async with Engine.open(store=pg_url, clock=SimClock(), shared=False) as engine:
        await engine.register_player("creator", usd_obbba=10)
        for pto_id in PTOS:
            await launch(engine, pto_id)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("DELETE FROM world_leases")
        await conn.executemany(
            "INSERT INTO world_leases (pto_id, holder, expires) VALUES ($1, $2, $3)",
            [(p, holder, expires) for p in PTOS],
        )
    finally:
        await conn.close()


@asynccontextmanager
async def _connections(pg_url: str, n: int) -> AsyncIterator[list[Any]]:
    import asyncpg

    conns = [await asyncpg.connect(pg_url) for _ in range(n)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


async def blocked(observer: Any, pid: int) -> None:
    """Return once the session ``pid`` waits for a lock (an explicit wait on the server's
    own view; the short pause only paces the polling)."""
    for _ in range(6000):
        if await observer.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"session {pid} never waited for a lock")


async def _lockable(conn: Any, pto_id: str) -> bool:
    """Whether nobody else holds a lock on ``pto_id``'s lease row (asked without waiting)."""
    import asyncpg

    try:
        async with conn.transaction():
            # The lock an UPDATE of the row (a takeover, a renewal) takes.
            await conn.execute(
                "SELECT FROM world_leases WHERE pto_id = $1 FOR NO KEY UPDATE NOWAIT", pto_id
            )
    except asyncpg.LockNotAvailableError:
        return False
    return True


def _save_args(pto_id: str) -> list[object]:
    """SAVE_OWN_WORLD of ``pto_id``'s world by holder A, as ``conn.execute``'s arguments."""
    statement = save_world(f"{pto_id}_world_cdt", ARRAYS, "A", own=True)
    return [to_postgres(statement.sql), *statement.params]


async def test_a_batch_locks_its_lease_rows_in_order_before_its_world_writes(
    pg_url: str,
) -> None:
    """A batch writing world b then world a locks lease a first: while a is locked
    elsewhere, the batch waits without holding b (in the units' order it would hold b
    and wait for a, the half of a deadlock)."""
    await _store_with_leased_worlds(pg_url)
    writer = PgWriter(pg_url, lease_writes=frozenset({SAVE_OWN_WORLD, SAVE_LEASED_WORLD}))
    async with _connections(pg_url, 2) as (other, observer):
        await writer.connect()
        running = asyncio.create_task(writer.run())
        try:
            async with other.transaction():
                await other.execute("SELECT FROM world_leases WHERE pto_id = 'a' FOR UPDATE")
                units = [
                    await writer.enqueue([save_world(f"{p}_world_cdt", ARRAYS, "A", own=True)])
                    for p in ("b", "a")
                ]
                await blocked(observer, writer._conn.get_server_pid())
                b_free = await _lockable(observer, "b")
            # Lease b was free: the batch held no lock on it while it waited for a.
            assert b_free
            assert await asyncio.gather(*units) == [[], []]
        finally:
            await writer.aclose()
            await running


async def test_a_takeover_waits_for_a_background_write_back_in_flight(pg_url: str) -> None:
    """A stepped world's background write-back (``SAVE_LEASED_WORLD``, holder A) in a batch
    that has not committed yet (a later unit of it waits for a player row): its lease row
    is locked until the batch commits, so a takeover cannot commit in between and load
    the world without A's step; once the batch committed, the row holds the step."""
    await _store_with_leased_worlds(pg_url, expires=2e9)
    writer = PgWriter(pg_url, lease_writes=frozenset({SAVE_OWN_WORLD, SAVE_LEASED_WORLD}))
    step = save_world("a_world_cdt", {"theta": np.ones(3)}, "A")
    touch = Statement("UPDATE players SET tau_k = tau_k WHERE player_id = ?", ("creator",))
    async with _connections(pg_url, 2) as (other, observer):
        await writer.connect()
        running = asyncio.create_task(writer.run())
        try:
            async with other.transaction():
                await other.execute("SELECT FROM players WHERE player_id = 'creator' FOR UPDATE")
                units = [await writer.enqueue([step]), await writer.enqueue([touch])]
                await blocked(observer, writer._conn.get_server_pid())
                takeover_possible = await _lockable(observer, "a")
            assert not takeover_possible
            assert await asyncio.gather(*units) == [[], []]
            npz = await observer.fetchval(
                "SELECT npz FROM worlds WHERE world_cdt_id = 'a_world_cdt'"
            )
            assert bytes(npz) == step.params[1]
        finally:
            await writer.aclose()
            await running


async def test_a_renewal_waits_for_a_batch_that_locked_first_and_both_succeed(
    pg_url: str,
) -> None:
    """The writer's order (its lease rows locked first, sorted) against a renewal of the
    same leases: the renewal waits for the batch, whatever order the batch writes its
    worlds in, and nothing is aborted."""
    await _store_with_leased_worlds(pg_url)
    leases = WorldLeases(pg_url, ttl=5, clock=SimClock(), holder="A")
    await leases.start()
    async with _connections(pg_url, 2) as (batch, observer):
        try:
            async with batch.transaction():
                worlds = sorted(f"{p}_world_cdt" for p in ("b", "a"))
                await batch.execute(LOCK_LEASES_SQL, worlds)
                renewal = asyncio.create_task(leases.acquire(["b", "a"]))
                await blocked(observer, leases._conn.get_server_pid())
                for pto_id in ("b", "a"):  # the units' order, not the lock order
                    await batch.execute(*_save_args(pto_id))
            held, _ = await renewal
            assert held == {"a", "b"}
            assert leases.conflicts_retried == 0
        finally:
            await leases.aclose()


async def test_a_renewal_aborted_by_a_real_deadlock_runs_again_and_succeeds(
    pg_url: str,
) -> None:
    """The old order (a batch locking lease b, then a) against a renewal (a, then b): a
    real deadlock. PostgreSQL aborts one side: the renewal, most likely (its session
    checks for deadlocks first: after 3 s, the batch's after 60 s), which runs again and
    its caller sees success; but whichever it aborts, the batch retries too, as the
    writer does, so both complete and one side (or more, if they meet again) was retried.
    """
    import asyncpg

    await _store_with_leased_worlds(pg_url)
    admin = await asyncpg.connect(pg_url)
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(f"ALTER DATABASE {database} SET deadlock_timeout = '3s'")
    await admin.close()
    leases = WorldLeases(pg_url, ttl=5, clock=SimClock(), holder="A")
    await leases.start()
    async with _connections(pg_url, 2) as (batch, observer):
        try:
            await batch.execute("SET deadlock_timeout = '60s'")
            renewal: asyncio.Task[Any] | None = None
            batch_retried = 0
            for _ in range(10):  # a bound on retries, not on time
                try:
                    async with batch.transaction():
                        await batch.execute(*_save_args("b"))  # locks lease b (no pre-lock)
                        if renewal is None:
                            renewal = asyncio.create_task(leases.acquire(["a", "b"]))
                            # the renewal holds a and waits for b
                            await blocked(observer, leases._conn.get_server_pid())
                        await batch.execute(*_save_args("a"))  # waits for a: the cycle
                    break
                except asyncpg.DeadlockDetectedError:
                    batch_retried += 1
            else:
                raise AssertionError("the batch met a deadlock on every try")
            assert renewal is not None
            held, _ = await renewal
            assert held == {"a", "b"}
            assert batch_retried + leases.conflicts_retried >= 1, "no side was aborted"
        finally:
            await leases.aclose()


@pytest.mark.parametrize("meanwhile", ["take over", "release"])
async def test_a_claim_answers_with_the_lease_as_it_is_after_it_waited(
    pg_url: str, meanwhile: str
) -> None:
    """A claim of an expired lease that waits for another process's takeover (or
    release) of it: refused naming the new holder (or granted, the lease being free),
    never naming the expired holder it read before it waited."""
    await _store_with_leased_worlds(pg_url, holder="dead", expires=0)
    leases = WorldLeases(pg_url, ttl=5, clock=SimClock(), holder="A")
    await leases.start()
    change = (
        "UPDATE world_leases SET holder = 'B', expires = 2e9 WHERE pto_id = 'a'"
        if meanwhile == "take over"
        else "DELETE FROM world_leases WHERE pto_id = 'a'"
    )
    async with _connections(pg_url, 2) as (other, observer):
        try:
            async with other.transaction():
                await other.execute(change)
                claim = asyncio.create_task(leases.claim("a"))
                await blocked(observer, leases._conn.get_server_pid())
            if meanwhile == "take over":
                with pytest.raises(WorldLeased) as refused:
                    await claim
                assert refused.value.holder == "B"
            else:
                await claim  # nobody holds it now: the write may go ahead
                assert "a" not in leases.held
        finally:
            await leases.aclose()


async def test_a_lost_connection_is_a_persistence_error_and_the_next_call_reconnects(
    pg_url: str,
) -> None:
    """The leases' session ended by the server and the database closed to connections:
    the caller gets a ``PersistenceError`` (not asyncpg's own); once the database takes
    connections again, the next call reconnects and works."""
    await _store_with_leased_worlds(pg_url, holder="dead", expires=0)
    leases = WorldLeases(pg_url, ttl=5, clock=SimClock(), holder="A")
    await leases.start()
    base, database = pg_url.rsplit("/", 1)
    # The database's connections are switched off from another database (not from itself).
    async with _connections(f"{base}/postgres", 1) as (admin,):
        try:
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            await admin.fetchval("SELECT pg_terminate_backend($1)", leases._conn.get_server_pid())
            with pytest.raises(PersistenceError, match="world leases"):
                await leases.acquire(["a"])
            with pytest.raises(PersistenceError, match="world leases"):
                await leases.holders()
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            held, taken = await leases.acquire(["a"])
            assert held == taken == {"a"}
        finally:
            await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await leases.aclose()
    async with _connections(pg_url, 1) as (conn,):
        assert await conn.fetchval("SELECT count(*) FROM world_leases WHERE holder = 'A'") == 0
