"""Actors take their next message before the last unit is acknowledged; a unit that
fails meanwhile must never leave a decision built on it (see actors/player.py, pto.py).

Units are made to fail for real: an idempotency receipt whose key is already stored
makes the database reject the unit (a primary-key violation), and a full database
(``max_page_count``) refuses every write."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import StoreFull, UbloxError, UnitRejected
from ublox_sim.core.records import iso
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Receipt
from ublox_sim.store.sqlite.writer import run
from ublox_sim.store.verify import verify_store


def receipt(key: str, engine: Engine) -> Receipt:
    return Receipt("tester", key, "print", 201, iso(engine.clock.now()), "token")


async def taken_key(engine: Engine) -> Receipt:
    """A receipt whose key is stored already: any unit carrying it is rejected."""
    await engine.deposit("alice", 1, receipt=Receipt("tester", "k", "p", 200, "x", "player"))
    return receipt("k", engine)


def row(home: Path, sql: str) -> tuple[object, ...]:
    with closing(sqlite3.connect(home / "ublox.db")) as db:
        found = db.execute(sql).fetchone()
        assert found is not None
        return tuple(found)


async def setup(engine: Engine, offered: int = 100) -> None:
    await engine.register_player("alice", usd_obbba=Decimal(1000))
    await engine.register_player("bob", usd_obbba=Decimal(1000))
    await engine.launch_pto(
        pto_id="g1",
        game_name="G",
        creator_id="bob",
        atu_required=10,
        pts_offered=offered,
        price_per_pts=Decimal(1),
        funding_deadline=timedelta(hours=2),
    )


@pytest.mark.asyncio
async def test_the_last_share_waits_for_purchases_in_flight(tmp_path: Path) -> None:
    """Buy A (rejected by the database) and buy B (the rest, if A counted) race: B would
    have funded the PTO on A's shares; it must be decided again once A failed."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await setup(engine)
        bad = await taken_key(engine)
        outcomes: dict[str, object] = {}

        async def buy(name: str, player: str, hours: int, key: Receipt | None) -> None:
            try:
                outcomes[name] = await engine.buy_pts(player, "g1", hours, receipt=key)
            except UbloxError as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(buy, "a", "alice", 4, bad)
            await anyio.lowlevel.checkpoint()  # A is decided first
            tg.start_soon(buy, "b", "bob", 96, None)
        assert isinstance(outcomes["a"], UnitRejected)
        assert not isinstance(outcomes["b"], UbloxError)
        pto = await engine.get_pto("g1")
        assert (pto.pts_sold, pto.status) == (96, "funding")  # 4 shares still for sale
    assert row(tmp_path, "SELECT pts_sold, status FROM ptos") == (96, "funding")
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_deadline_refunds_only_acknowledged_purchases(tmp_path: Path) -> None:
    clock = SimClock()
    async with Engine.open(tmp_path, seed=1, clock=clock) as engine:
        await setup(engine)
        await engine.buy_pts("alice", "g1", 7)
        bad = await taken_key(engine)

        async def doomed_buy() -> None:
            with pytest.raises(UnitRejected):
                await engine.buy_pts("alice", "g1", 50, receipt=bad)

        async def deadline() -> list[str]:
            clock.advance(3)
            return await engine.fire_deadlines()

        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed_buy)
            await anyio.lowlevel.checkpoint()
            tg.start_soon(deadline)
        alice = await engine.get_player("alice")
        assert alice.usd_obbba_balance == Decimal(1001)  # 1,000 + the 1.00 deposit
    assert row(tmp_path, "SELECT SUM(amount) FROM transactions WHERE tx_type = 'refund'") == (700,)
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_token_numbers_never_repeat_after_a_failed_purchase_and_a_reopen(
    tmp_path: Path,
) -> None:
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await setup(engine, offered=1000)
        await engine.buy_pts("alice", "g1", 1)
        pages = (await engine.store.db.call(lambda c: run(c, "PRAGMA page_count")))[0][0]
        await engine.store.db.call(lambda c: run(c, f"PRAGMA max_page_count={pages}"))
        with pytest.raises(StoreFull):
            for _ in range(500):  # a real full database, a few purchases in
                await engine.buy_pts("alice", "g1", 1)
        await engine.store.db.call(lambda c: run(c, "PRAGMA max_page_count=1073741823"))
        await engine.buy_pts("alice", "g1", 1)
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        token = await engine.buy_pts("bob", "g1", 1)  # was a UNIQUE violation
        tokens = await engine.tokens_of("alice", "g1") + [token]
        ids = [t.token_id for t in tokens]
        assert len(set(ids)) == len(ids)
    assert verify_store(tmp_path) == []
