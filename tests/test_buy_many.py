"""Engine.buy_many: each PTO decides its purchases in one message (``BuyBatch``) and all
of them go to the store as ONE unit in the list's order (see ``Engine._buy_segment``).

Held to what one purchase at a time gives: refusals per purchase and in the list's
order (checks, then funds, then shares), the last share funding the PTO inside the
batch, a buyer named twice reserving in the list's order, ledger rows in the list's
order, and a buyer buying elsewhere at the same time never overselling a PTO."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from engine_helpers import launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import (
    InsufficientFunds,
    InvalidInput,
    Refusal,
    UbloxError,
    UnknownPlayer,
    UnknownPTO,
)
from ublox_sim.core.records import FUNDING, IN_PROGRESS, Transaction
from ublox_sim.core.views import TokenInfo
from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store


async def players(engine: Engine, usd: dict[str, int]) -> None:
    await engine.register_players([(name, Decimal(v), 1.0, None) for name, v in usd.items()])


@pytest.mark.asyncio
async def test_purchases_of_several_ptos_are_decided_and_refused_as_one_by_one(
    tmp_path: Path,
) -> None:
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await players(engine, {"a": 100, "b": 100, "c": 5, "d": 100, "creator": 0})
        await launch(engine, "x", offered=10, price=1)
        await launch(engine, "y", offered=10, price=1)
        results = await engine.buy_many(
            [
                ("a", "x", 4),
                ("b", "y", 3),
                ("c", "x", 6),  # 6.00 from 5.00: refused for funds
                ("d", "x", 6),  # the last 6 shares: funds x
                ("a", "y", 0),  # invalid hours
                ("a", "nowhere", 1),  # UnknownPTO
                ("ghost", "y", 1),  # UnknownPlayer
                ("a", "x", 1),  # a again (a new unit): x is funded, refused
                ("a", "y", 2),
            ]
        )
        kinds = [type(r) for r in results]
        assert kinds[0] is TokenInfo and kinds[1] is TokenInfo and kinds[3] is TokenInfo
        assert isinstance(results[2], InsufficientFunds)
        assert isinstance(results[4], InvalidInput)
        assert isinstance(results[5], UnknownPTO)
        assert isinstance(results[6], UnknownPlayer)
        assert isinstance(results[7], Refusal)
        assert isinstance(results[8], TokenInfo)
        x, y = await engine.get_pto("x"), await engine.get_pto("y")
        assert (x.status, x.pts_sold, x.funding_raised) == (IN_PROGRESS, 10, Decimal(10))
        assert (y.status, y.pts_sold, y.funding_raised) == (FUNDING, 5, Decimal(5))
        balances = {p: (await engine.get_player(p)).usd_obbba_balance for p in "abcd"}
        assert balances == {"a": 94, "b": 97, "c": 5, "d": 94}
        ledger = [
            (t.from_player, t.pto_id, t.amount)
            for t in await engine.store.load_all(Transaction)
            if t.tx_type == "investment"
        ]
        assert ledger == [("a", "x", 400), ("b", "y", 300), ("d", "x", 600), ("a", "y", 200)]
        tokens = [t.token_id for t in await engine.tokens_of("a", "x")]
        assert tokens == ["x-pts-000001"]
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_buyer_named_twice_reserves_in_the_lists_order(tmp_path: Path) -> None:
    """5.00 for two purchases of 3.00 in two PTOs: the first in the list lands."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await players(engine, {"a": 5, "creator": 0})
        await launch(engine, "x", offered=10, price=3)
        await launch(engine, "y", offered=10, price=3)
        first, second = await engine.buy_many([("a", "y", 1), ("a", "x", 1)])
        assert isinstance(first, TokenInfo) and first.pto_id == "y"
        assert isinstance(second, InsufficientFunds)
        assert (await engine.get_player("a")).usd_obbba_balance == Decimal(2)
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_buyers_one_at_a_time_beside_a_batch_never_oversell(tmp_path: Path) -> None:
    """A batch and single purchases racing for the last shares of one PTO: exactly the
    shares offered are sold, every cent accounted for."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        names = [f"p{i:02d}" for i in range(30)]
        await players(engine, {**dict.fromkeys(names, 10), "creator": 0})
        await launch(engine, "x", offered=10, price=1)
        singles: list[TokenInfo | UbloxError] = []

        async def single(name: str) -> None:
            try:
                singles.append(await engine.buy_pts(name, "x", 1))
            except UbloxError as exc:
                singles.append(exc)

        async with anyio.create_task_group() as tg:
            for name in names[20:]:
                tg.start_soon(single, name)
            batch = await engine.buy_many([(name, "x", 1) for name in names[:20]])
        sold = [r for r in [*batch, *singles] if isinstance(r, TokenInfo)]
        assert len(sold) == 10
        assert all(isinstance(r, TokenInfo | Refusal) for r in [*batch, *singles])
        pto = await engine.get_pto("x")
        assert (pto.pts_sold, pto.funding_raised, pto.status) == (10, Decimal(10), IN_PROGRESS)
        left = [(await engine.get_player(n)).usd_obbba_balance for n in names]
        assert sum(left) == 30 * 10 - 10
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_spend_atu_many_answers_each_in_order(tmp_path: Path) -> None:
    """Engine.spend_atu_many: one answer or refusal each; the spends reach the ledger in
    the list's order and completing a PTO pays its creator as spend_atu does."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await players(engine, {"a": 100, "creator": 0})
        for pto_id in ("x", "y"):
            await launch(engine, pto_id, offered=10, price=1, atu=20)
            assert isinstance((await engine.buy_many([("a", pto_id, 10)]))[0], TokenInfo)
        results = await engine.buy_many([]) + await engine.spend_atu_many(
            [("y", 5), ("nowhere", 1), ("x", 0), ("x", 20), ("y", 5)]
        )
        assert isinstance(results[1], UnknownPTO)
        assert isinstance(results[2], InvalidInput)
        x = results[3]
        assert not isinstance(x, UbloxError) and x.status == "completed"
        y = results[4]
        assert not isinstance(y, UbloxError) and y.atu_spent == 10
        assert (await engine.get_player("creator")).usd_obbba_balance == Decimal(10)
        completion = [
            t.pto_id
            for t in await engine.store.load_all(Transaction)
            if t.tx_type == "pto_completion"
        ]
        assert completion == ["x"]
    assert verify_store(tmp_path) == []
