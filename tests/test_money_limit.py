"""A credit made on request (deposit, transfer, play's xUSD) that would take a balance past
the money limit (``limits.MAX_MONEY``) is refused by name (``BalanceLimit``, HTTP 409) and
changes nothing, on both backends. What a store holds past it (concurrent credits,
refunds, payouts) still exports and imports: ``tests/test_money_storage_range.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from api_client import operator_api
from engine_helpers import launch

from ublox_sim import BalanceLimit, Engine, SimClock
from ublox_sim.core.limits import MAX_CENTS, MAX_MONEY
from ublox_sim.core.money import to_decimal
from ublox_sim.store.sync import UbloxLocalStorage
from ublox_sim.store.verify import verify_store

pytestmark = pytest.mark.anyio
LIMIT = "10000000000000:"  # how the refusal names the limit (as to_cents does)


async def ledger(engine: Engine, player_id: str) -> int:
    return len(await engine.store.transactions_of(player_id))


async def test_a_deposit_past_the_limit_is_refused_by_name_and_changes_nothing(
    store: str,
) -> None:
    async with Engine.open(store=store, clock=SimClock()) as engine:
        await engine.register_player("rich", usd_obbba=MAX_MONEY)
        with pytest.raises(BalanceLimit, match=f"limit of {LIMIT}"):
            await engine.deposit("rich", "0.01")
        await engine.register_player("almost", usd_obbba=MAX_MONEY - 1)
        assert (await engine.deposit("almost", 1)).usd_obbba_balance == MAX_MONEY  # up to it
        with pytest.raises(BalanceLimit):
            await engine.deposit("almost", MAX_MONEY)
        for who in ("rich", "almost"):
            assert (await engine.get_player(who)).usd_obbba_balance == MAX_MONEY
        assert await ledger(engine, "rich") == 1  # the opening deposit only
        assert await ledger(engine, "almost") == 2


async def test_a_transfer_into_a_full_balance_is_refused_and_changes_nothing(
    store: str,
) -> None:
    async with Engine.open(store=store, clock=SimClock()) as engine:
        await engine.register_player("full", usd_obbba=MAX_MONEY)
        await engine.register_player("payer", usd_obbba=10)
        with pytest.raises(BalanceLimit, match=f"transfer to 'full'.*limit of {LIMIT}"):
            await engine.transfer("payer", "full", "0.01")
        assert (await engine.get_player("payer")).usd_obbba_balance == 10
        assert (await engine.get_player("full")).usd_obbba_balance == MAX_MONEY
        assert await ledger(engine, "payer") == 1


async def test_concurrent_deposits_cannot_pass_the_limit_together(tmp_path: Path) -> None:
    # Deposits in flight count: two that fit alone but not together, sent at once.
    half = MAX_CENTS // 2 + 1
    async with Engine.open(tmp_path / "home", clock=SimClock()) as engine:
        await engine.register_player("p")
        results = await asyncio.gather(
            *(engine.deposit("p", to_decimal(half)) for _ in range(2)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(refused) == 1 and isinstance(refused[0], BalanceLimit), results
        assert (await engine.get_player("p")).usd_obbba_balance == to_decimal(half)
    assert verify_store(tmp_path / "home") == []


async def test_max_deposits_stop_at_the_limit_and_the_export_imports(tmp_path: Path) -> None:
    # The outside tester's repro: repeated deposits of the largest amount once went past
    # the limit (to 2**63 cents, where SQL failed) and the export no longer imported.
    async with Engine.open(tmp_path / "home", clock=SimClock()) as engine:
        await engine.register_player("rich")
        await engine.deposit("rich", MAX_MONEY)
        for _ in range(3):
            with pytest.raises(BalanceLimit):
                await engine.deposit("rich", MAX_MONEY)
    with UbloxLocalStorage(store=tmp_path / "home") as storage:
        exported = storage.export_to_json(tmp_path / "export.json")
    with UbloxLocalStorage(store=tmp_path / "copy") as storage:
        assert storage.import_from_json(exported) == []
        player = storage.load_player("rich")
        assert player is not None and player["usd_obbba_balance"] == float(MAX_MONEY)


async def test_http_deposits_stop_at_the_limit_with_a_409(store: str) -> None:
    async with operator_api(store) as http:
        assert (await http.post("/api/players", json={"player_id": "p"})).status_code == 201
        largest = "999999999999.99"  # the largest amount one request may carry
        for _ in range(10):
            r = await http.post("/api/players/p/deposit", json={"amount": largest})
            assert r.status_code == 200, r.text
        before = r.json()["usd_obbba_balance"]
        r = await http.post("/api/players/p/deposit", json={"amount": largest})
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "balance_limit" and LIMIT in error["message"]
        r = await http.get("/api/players/p")
        assert r.json()["usd_obbba_balance"] == before


async def test_a_play_whose_xusd_would_pass_the_limit_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with Engine.open(home, clock=SimClock()) as engine:
        await engine.register_player("maker", usd_obbba=100)
        await launch(engine, "g", creator="maker", offered=10, price=1, atu=0, amplification=10**6)
        await engine.buy_pts("maker", "g", 10)
    with UbloxLocalStorage(store=home) as storage:  # a balance of xUSD at the limit
        player = storage.load_player("maker")
        assert player is not None
        storage.save_player({**player, "xUSD_balance": float(MAX_MONEY)})
    async with Engine.open(home, clock=SimClock()) as engine:
        with pytest.raises(BalanceLimit, match="xUSD"):
            await engine.play("maker", "g", 1)
        player = await engine.get_player("maker")
        assert player.xUSD_balance == MAX_MONEY and player.total_play_time == 0
        assert (await engine.stats())["play_sessions"]["count"] == 0
