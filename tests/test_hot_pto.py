"""A hot PTO: many purchases queued for one PTO at once (see actors/pto.py, player.py).

The PTO decides each purchase against its pending state (acknowledged + in flight)
and reserves an active buyer's funds directly (``Players.reserve_now``), so queued
purchases reach the store together. These tests hold it to the rules: the pending
state follows the acknowledged one through committed and refused units, refusals are
per purchase, money stays exact, and nothing is oversold.

Units are made to fail for real, as in test_pipelining: an idempotency receipt whose
key is already stored makes the database reject the unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InsufficientFunds, UbloxError, UnitRejected
from ublox_sim.core.records import iso
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Receipt
from ublox_sim.store.verify import verify_store


async def launch(engine: Engine, offered: int, price: Decimal = Decimal(1)) -> None:
    await engine.launch_pto(
        pto_id="hot",
        game_name="G",
        creator_id="maker",
        atu_required=10,
        pts_offered=offered,
        price_per_pts=price,
        funding_deadline=timedelta(hours=2),
    )


async def buyers(engine: Engine, count: int, usd: int) -> list[str]:
    names = [f"b{i:02d}" for i in range(count)]
    await engine.register_player("maker", usd_obbba=Decimal(10_000))
    await engine.register_players([(name, Decimal(usd), 1.0, None) for name in names])
    return names


async def taken_key(engine: Engine) -> Receipt:
    """A receipt whose key is stored already: any unit carrying it is rejected."""
    await engine.deposit("maker", 1, receipt=Receipt("tester", "k", "p", 200, "x", "player"))
    return Receipt("tester", "k", "print", 201, iso(engine.clock.now()), "token")


@pytest.mark.asyncio
async def test_queued_purchases_with_refused_units_leave_exact_money_and_shares(
    tmp_path: Path,
) -> None:
    """40 buyers, three purchases each, queued on one PTO; every third unit the database
    rejects. The rejected ones change nothing, the rest all land, and the PTO's pending
    state is its acknowledged state again once quiet, so the last shares sell exactly."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        names = await buyers(engine, 40, 100)
        await launch(engine, offered=400)
        bad = await taken_key(engine)
        for name in names:  # every buyer active: the PTO reserves directly
            await engine.get_player(name)
        outcomes: dict[tuple[str, int], object] = {}

        async def buyer(i: int, name: str) -> None:
            for k in range(3):
                refused = (i + k) % 3 == 0
                try:
                    outcomes[name, k] = await engine.buy_pts(
                        name, "hot", 1 + k, receipt=bad if refused else None
                    )
                except UbloxError as exc:
                    outcomes[name, k] = exc

        async with anyio.create_task_group() as tg:
            for i, name in enumerate(names):
                tg.start_soon(buyer, i, name)

        sold = {name: 0 for name in names}
        for (name, k), outcome in outcomes.items():
            if isinstance(outcome, UbloxError):
                assert isinstance(outcome, UnitRejected), outcome
            else:
                sold[name] += 1 + k
        assert sum(isinstance(o, UnitRejected) for o in outcomes.values()) == 40
        for name in names:
            assert (await engine.get_player(name)).usd_obbba_balance == Decimal(100 - sold[name])
        total = sum(sold.values())
        pto = await engine.get_pto("hot")
        assert (pto.pts_sold, pto.funding_raised, pto.status) == (total, Decimal(total), "funding")

        actor = engine._ptos.active("hot")
        assert actor is not None and actor.quiet()
        assert actor._pending == actor.state
        assert actor._pending_tokens == actor.tokens

        # The rest sells exactly: the last share funds the PTO, one more is refused.
        left = 400 - total
        await engine.buy_pts("maker", "hot", left)
        assert (await engine.get_pto("hot")).status == "in_progress"
        with pytest.raises(UbloxError):
            await engine.buy_pts("maker", "hot", 1)
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_buyer_short_of_funds_is_refused_per_purchase(tmp_path: Path) -> None:
    """Five purchases of 3.00 queued at once by a buyer holding 10.00: three land, two are
    refused for funds, and the balance ends at exactly 1.00."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await buyers(engine, 1, 10)
        await launch(engine, offered=100, price=Decimal(3))
        await engine.get_player("b00")
        outcomes: list[object] = []

        async def buy() -> None:
            try:
                outcomes.append(await engine.buy_pts("b00", "hot", 1))
            except UbloxError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(buy)
        refused = [o for o in outcomes if isinstance(o, UbloxError)]
        assert len(refused) == 2 and all(isinstance(o, InsufficientFunds) for o in refused)
        assert (await engine.get_player("b00")).usd_obbba_balance == Decimal(1)
        assert len(await engine.tokens_of("b00", "hot")) == 3
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_purchase_and_a_transfer_in_flight_never_overdraw(tmp_path: Path) -> None:
    """A reservation made directly on the buyer's actor counts the transfer it has in
    flight, and the other way round: of 6.00 sent and 6.00 spent from 10.00, one is
    refused, whatever the order they are taken in."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await buyers(engine, 2, 10)
        await launch(engine, offered=100, price=Decimal(6))
        await engine.get_player("b00")
        refused: list[UbloxError] = []

        async def attempt(which: str) -> None:
            try:
                if which == "buy":
                    await engine.buy_pts("b00", "hot", 1)
                else:
                    await engine.transfer("b00", "b01", Decimal(6))
            except UbloxError as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "transfer")
            tg.start_soon(attempt, "buy")
        assert len(refused) == 1 and isinstance(refused[0], InsufficientFunds)
        assert (await engine.get_player("b00")).usd_obbba_balance == Decimal(4)
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_an_inactive_buyer_is_activated_by_its_purchase(tmp_path: Path) -> None:
    """A buyer whose actor is passivated has nothing to reserve on: the PTO asks it, which
    activates it from its row, and the purchase lands the same."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await buyers(engine, 1, 10)
        await launch(engine, offered=100)
        await engine.buy_pts("b00", "hot", 2)
        await engine.passivate_all()
        assert engine.active_actors() == {"player": 0, "pto": 0}
        await engine.buy_pts("b00", "hot", 3)
        assert (await engine.get_player("b00")).usd_obbba_balance == Decimal(5)
        assert (await engine.get_pto("hot")).pts_sold == 5
    assert verify_store(tmp_path) == []


def test_bench_hot_runs_at_its_tiniest(tmp_path: Path) -> None:
    """`ublox-sim bench hot`: every figure is reported (no speed asserted)."""
    out = tmp_path / "hot.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "bench", "hot", "--size", "tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "engine hot/spread" in proc.stdout and "HTTP hot/no-op" in proc.stdout
    assert "engine plays hot/spread" in proc.stdout and "HTTP plays hot/spread" in proc.stdout
    report = json.loads(out.read_text())["hot"]
    for key in (
        "engine_hot_purchases_per_s",
        "engine_spread_purchases_per_s",
        "http_hot_purchases_per_s",
        "http_noop_requests_per_s",
        "ratio_engine_hot_vs_spread",
        "ratio_http_hot_vs_noop",
        "engine_plays_hot_per_s",
        "engine_plays_spread_per_s",
        "http_plays_hot_per_s",
        "http_plays_spread_per_s",
        "ratio_engine_plays_hot_vs_spread",
        "ratio_http_plays_hot_vs_spread",
    ):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["rounds"] >= 3 and report["buyers"] == 10
    assert report["units_per_commit"]["engine_plays_hot"] >= 1.0
