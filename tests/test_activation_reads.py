"""Activation reads: point reads of players coalesce into one query through the writer,
and a key that joins a queued read answers with that read's position (the rows hold
exactly the units submitted before it)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import aiosqlite
import pytest

from ublox_sim.core import events as ev
from ublox_sim.core.errors import ActorClosed, PersistenceError
from ublox_sim.core.records import Player
from ublox_sim.core.tasks import owned_task_group
from ublox_sim.store.backend import Committed, Unit
from ublox_sim.store.home import Home
from ublox_sim.store.sqlite import queries
from ublox_sim.store.sqlite.backend import SqliteBackend

AT = "2026-03-01T09:00:00+00:00"


def registered(player_id: str, cents: int) -> Unit:
    record = Player(
        player_id=player_id,
        position_x=1.0,
        position_y=1.0,
        phase=0.5,
        tau_k=1.0,
        resonance_freq=1.0,
        usd_obbba_balance=cents,
        created_at=AT,
    )
    return Unit(
        (
            ev.PlayerRegistered(
                at=AT, player_id=player_id, usd_obbba=Decimal(cents) / 100, record=record
            ),
        )
    )


def deposited(player_id: str, cents: int) -> Unit:
    return Unit((ev.Deposited(at=AT, player_id=player_id, amount=Decimal(cents) / 100),))


@asynccontextmanager
async def store(tmp_path: Path, players: int) -> AsyncIterator[SqliteBackend]:
    async with owned_task_group() as tg:
        backend = SqliteBackend(Home(tmp_path / "home"), flush_interval=0.05)
        await backend.start(tg)
        try:
            for n in range(players):
                await backend.commit(registered(f"p{n}", 100 * (n + 1)))
            yield backend
        finally:
            await backend.aclose()


class Gate:
    """A writer request that holds the queue until opened: what is queued meanwhile
    waits behind it, in order, whatever the event loop does."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, conn: aiosqlite.Connection) -> None:
        self.entered.set()
        await self.release.wait()


async def hold(backend: SqliteBackend) -> tuple[Gate, asyncio.Future[object]]:
    gate = Gate()
    done = await backend.db.call_soon(gate)
    await gate.entered.wait()
    return gate, done


@pytest.mark.anyio
async def test_concurrent_loads_share_one_query(tmp_path: Path) -> None:
    async with store(tmp_path, 20) as backend:
        gate, held = await hold(backend)
        ids = [f"p{n}" for n in range(20)] + ["nobody", "p3"]
        loads = [asyncio.ensure_future(backend.load_player_at(i)) for i in ids]
        await asyncio.sleep(0)  # every load queued or joined while the gate holds
        gate.release.set()
        await held
        results = await asyncio.gather(*loads)
        loader = backend._player_loader()
        assert loader.reads == 1
        positions = {position for _, position in results}
        assert positions == {20}  # the 20 registrations, all before the read
        balances = [None if p is None else p.usd_obbba_balance for p, _ in results]
        assert balances == [100 * (n + 1) for n in range(20)] + [None, 400]
        # Beyond one IN query's keys: still one read, every record found.
        many = await asyncio.gather(*(backend.load_player(f"p{n % 20}") for n in range(300)))
        assert [p.player_id for p in many if p is not None] == [f"p{n % 20}" for n in range(300)]


@pytest.mark.anyio
async def test_a_key_joining_a_queued_read_gets_that_reads_position(tmp_path: Path) -> None:
    async with store(tmp_path, 2) as backend:
        gate, held = await hold(backend)
        first = asyncio.ensure_future(backend.load_player_at("p0"))
        await asyncio.sleep(0)  # the read is queued: at position 2
        acked: asyncio.Future[Committed | BaseException] = asyncio.Future()
        await backend.submit(deposited("p1", 5), acked.set_result)  # position 3, after the read
        second = asyncio.ensure_future(backend.load_player_at("p1"))  # joins the read
        await asyncio.sleep(0)
        gate.release.set()
        await held
        (p0, at0), (p1, at1) = await first, await second
        assert backend._player_loader().reads == 1
        assert at0 == at1 == 2
        assert p0 is not None and p1 is not None
        # The row holds the units before the read's position and not the deposit after
        # it, whose position is later: a credit of it applies to this load.
        assert p1.usd_obbba_balance == 200
        ack = await acked
        assert isinstance(ack, Committed) and ack.position == 3 > at1
        again, at = await backend.load_player_at("p1")
        assert again is not None and again.usd_obbba_balance == 205 and at == 3


@pytest.mark.anyio
async def test_one_caller_cancelled_leaves_the_others_answered(tmp_path: Path) -> None:
    async with store(tmp_path, 2) as backend:
        gate, held = await hold(backend)
        leader = asyncio.ensure_future(backend.load_player_at("p0"))
        await asyncio.sleep(0)
        joiner = asyncio.ensure_future(backend.load_player_at("p1"))
        same_key = asyncio.ensure_future(backend.load_player("p0"))
        await asyncio.sleep(0)
        leader.cancel()
        gate.release.set()
        await held
        with pytest.raises(asyncio.CancelledError):
            await leader
        player, _ = await joiner
        assert player is not None and player.player_id == "p1"
        assert (await same_key) is not None


@pytest.mark.anyio
async def test_a_failed_read_fails_every_caller_of_it_and_the_next_read_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with store(tmp_path, 2) as backend:
        real = queries.records_by_key

        def broken(*args: object) -> Awaitable[object]:
            raise sqlite3.OperationalError("disk I/O error")

        gate, held = await hold(backend)
        loads = [asyncio.ensure_future(backend.load_player(i)) for i in ("p0", "p1")]
        await asyncio.sleep(0)
        monkeypatch.setattr(queries, "records_by_key", broken)
        gate.release.set()
        await held
        for load in loads:
            with pytest.raises(PersistenceError, match="disk I/O error"):
                await load
        monkeypatch.setattr(queries, "records_by_key", real)
        player = await backend.load_player("p1")
        assert player is not None and player.usd_obbba_balance == 200


@pytest.mark.anyio
async def test_loads_after_close_fail_instead_of_waiting(tmp_path: Path) -> None:
    async with store(tmp_path, 1) as backend:
        pass
    with pytest.raises(ActorClosed):
        await backend.load_player("p0")
