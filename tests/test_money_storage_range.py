"""The money limit refuses operations (deposit, transfer, play's xUSD), not stored figures:
credits in flight together, refunds and creator payouts can leave a balance past it, and
such a store still exports, imports and verifies clean. Import, export and verify accept
any stored money figure in the storage range (0..2**63-1 cents, signed 64-bit); an
operation's single amount stays at the money limit."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from ublox_sim import Engine, SimClock
from ublox_sim.core.errors import InvalidAmount, InvalidInput
from ublox_sim.core.limits import MAX_CENTS, MAX_MONEY, STORED_MAX_CENTS
from ublox_sim.core.money import FLOAT_EXACT_CENTS, seed_money, to_cents, to_decimal
from ublox_sim.core.records import Player, from_seed, to_seed
from ublox_sim.store.sync import UbloxLocalStorage
from ublox_sim.store.verify import verify_store

pytestmark = pytest.mark.anyio


def round_trip(store: str, tmp_path: Path, player_id: str) -> int:
    """Export ``store``, import the file into a fresh home: the player's USD, in cents."""
    with UbloxLocalStorage(store=store) as storage:
        exported = storage.export_to_json(tmp_path / "export.json")
    with UbloxLocalStorage(store=tmp_path / "copy") as storage:
        assert storage.import_from_json(exported) == []
        player = storage.load_player(player_id)
    assert verify_store(tmp_path / "copy") == []
    assert player is not None
    return to_cents(player["usd_obbba_balance"], limit=STORED_MAX_CENTS)


async def test_concurrent_credits_past_the_limit_export_and_import(
    store: str, tmp_path: Path
) -> None:
    # The reviewer's limit1: two transfers in flight to one receiver and its own deposit
    # each pass the check against the balance they saw.
    async with Engine.open(store=store, clock=SimClock()) as engine:
        await engine.register_player("c", usd_obbba=MAX_MONEY - 1)
        await engine.register_player("a", usd_obbba=1)
        await engine.register_player("b", usd_obbba=1)
        await asyncio.gather(
            engine.transfer("a", "c", 1),
            engine.transfer("b", "c", 1),
            engine.deposit("c", 1),
            return_exceptions=True,
        )
        balance = (await engine.get_player("c")).usd_obbba_balance
        assert balance >= MAX_MONEY  # at least the deposit landed; maybe more
        assert await engine.store.verify() == []
    assert round_trip(store, tmp_path, "c") == balance * 100


async def test_a_refund_past_the_limit_exports_and_imports(store: str, tmp_path: Path) -> None:
    # The reviewer's limit2: a refund is never refused, whatever the balance it lands on.
    async with Engine.open(store=store, clock=SimClock()) as engine:
        await engine.register_player("maker", usd_obbba=1)
        await engine.register_player("buyer", usd_obbba=MAX_MONEY)
        await engine.launch_pto(
            pto_id="g",
            game_name="G",
            creator_id="maker",
            atu_required=5,
            pts_offered=10,
            price_per_pts=100,
            funding_deadline=timedelta(hours=1),
        )
        await engine.buy_pts("buyer", "g", 1)
        await engine.deposit("buyer", 100)  # back at the limit
        assert await engine.advance(2) == ["g"]  # failed: the buyer is refunded
        balance = (await engine.get_player("buyer")).usd_obbba_balance
        assert balance == MAX_MONEY + 100
        assert await engine.store.verify() == []
    assert round_trip(store, tmp_path, "buyer") == (MAX_CENTS + 100 * 100)


async def test_a_creator_payout_past_the_limit_exports_and_imports(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    async with Engine.open(home, clock=SimClock()) as engine:
        await engine.register_player("maker", usd_obbba=MAX_MONEY)
        await engine.register_player("buyer", usd_obbba=1000)
        await engine.launch_pto(
            pto_id="h",
            game_name="H",
            creator_id="maker",
            atu_required=1,
            pts_offered=10,
            price_per_pts=100,
            funding_deadline=timedelta(hours=10),
        )
        await engine.buy_pts("buyer", "h", 10)
        await engine.spend_atu("h", 1)  # completed: the escrow goes to the creator
        assert (await engine.get_player("maker")).usd_obbba_balance == MAX_MONEY + 1000
    assert round_trip(home, tmp_path, "maker") == MAX_CENTS + 1000 * 100


@pytest.mark.parametrize(
    "cents",
    [
        MAX_CENTS + 1,
        FLOAT_EXACT_CENTS - 1,
        FLOAT_EXACT_CENTS,
        FLOAT_EXACT_CENTS + 7,
        STORED_MAX_CENTS,
    ],
)
def test_a_stored_figure_in_the_storage_range_reads_back_exactly(cents: int) -> None:
    seed = to_seed(Player("p", usd_obbba_balance=cents))
    assert seed["usd_obbba_balance"] == seed_money(cents)
    # a float where it reads back exactly (the goldens' shape), exact text past that
    assert isinstance(seed["usd_obbba_balance"], float) == (cents < FLOAT_EXACT_CENTS)
    assert from_seed(Player, seed).usd_obbba_balance == cents


def test_a_stored_figure_past_the_storage_range_is_refused_by_name() -> None:
    with pytest.raises(InvalidAmount, match=r"usd_obbba_balance.*largest amount a store holds"):
        from_seed(Player, {"player_id": "p", "usd_obbba_balance": "92233720368547758.08"})


async def test_an_operation_amount_stays_at_the_money_limit(tmp_path: Path) -> None:
    with pytest.raises(InvalidAmount, match="exceeds the limit of 10000000000000"):
        to_cents(to_decimal(MAX_CENTS + 1))
    async with Engine.open(tmp_path / "home", clock=SimClock()) as engine:
        await engine.register_player("p")
        with pytest.raises(InvalidInput, match="limit of 10000000000000"):
            await engine.deposit("p", to_decimal(MAX_CENTS + 1))
        assert (await engine.get_player("p")).usd_obbba_balance == 0


def test_an_export_past_the_storage_range_names_the_figure(tmp_path: Path) -> None:
    with UbloxLocalStorage(store=tmp_path / "home") as storage:
        storage.save_player({"player_id": "p", "usd_obbba_balance": to_decimal(STORED_MAX_CENTS)})
        exported = storage.export_to_json(tmp_path / "export.json")
    text = exported.read_text(encoding="utf-8")
    assert '"92233720368547758.07"' in text
    edited = text.replace('"92233720368547758.07"', '"92233720368547758.08"')
    (tmp_path / "edited.json").write_text(edited, encoding="utf-8")
    with UbloxLocalStorage(store=tmp_path / "copy") as storage:
        with pytest.raises(InvalidInput, match=r"players\[0\]: usd_obbba_balance"):
            storage.import_from_json(tmp_path / "edited.json", force=True)
        assert storage.load_player("p") is None  # nothing imported


def test_sqlite_verify_flags_a_balance_outside_the_storage_range(tmp_path: Path) -> None:
    with UbloxLocalStorage(store=tmp_path / "home") as storage:
        storage.save_player({"player_id": "p"})
    assert verify_store(tmp_path / "home") == []
    # Only an edit can store one: STRICT tables hold 64-bit integers only, and a negative
    # figure needs the CHECK bypassed (SQLite's integrity check then names it).
    with sqlite3.connect(tmp_path / "home" / "ublox.db") as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("UPDATE players SET xUSD_balance = -5 WHERE player_id = 'p'")
    conn.close()
    assert [f.check for f in verify_store(tmp_path / "home")] == ["integrity"]


async def test_postgres_verify_flags_a_balance_outside_the_storage_range(pg_url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    async with Engine.open(store=pg_url, clock=SimClock()) as engine:
        await engine.register_player("p")
    conn = await asyncpg.connect(pg_url)
    try:  # an edit: the CHECK dropped, a negative balance written
        await conn.execute("ALTER TABLE players DROP CONSTRAINT players_xusd_balance_check")
        await conn.execute("UPDATE players SET xUSD_balance = -5 WHERE player_id = 'p'")
    finally:
        await conn.close()
    async with Engine.open(store=pg_url, clock=SimClock()) as engine:
        findings = [f for f in await engine.store.verify() if f.check == "range"]
    assert [f.subject for f in findings] == ["player p"]
    assert "xUSD_balance -5 is not whole cents in the storage range" in findings[0].message
