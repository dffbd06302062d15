"""A unit of many purchases (``Engine.buy_many``) is written one statement per kind
(``rows._bulk_purchases``): the same rows, ids, log and published events as event by
event, and a refused unit still changes nothing."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from engine_helpers import launch

from ublox_sim.core import events as ev
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import UbloxError
from ublox_sim.core.records import PTSToken
from ublox_sim.core.views import TokenInfo
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Unit
from ublox_sim.store.sqlite import rows

TABLES = (
    "SELECT * FROM players ORDER BY player_id",
    "SELECT * FROM ptos ORDER BY pto_id",
    "SELECT rowid, * FROM pts_tokens ORDER BY rowid",
    "SELECT * FROM transactions ORDER BY tx_id",
    "SELECT seq, kind, at, payload FROM event_log ORDER BY seq",
)

# Several PTOs interleaved, one sold out (funded) inside the unit, a refusal for funds,
# fractional prices; then a buyer named twice (a second unit).
BUYS = [
    ("a", "x", 4),
    ("b", "y", 3),
    ("c", "x", 6),  # 6 x 1.25 from 5.00: refused for funds
    ("d", "x", 6),  # the last 6 shares of x: funds x
    ("e", "z", 1),
    ("f", "y", 2),
    ("a", "y", 2),  # a again: a new unit
    ("g", "x", 1),  # x is funded: refused
]


async def bought(home: Path, *, bulk: bool, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    with monkeypatch.context() as patch:
        if not bulk:
            patch.setattr(rows, "_is_purchases", lambda events: False)
        used: list[int] = []
        real = rows._bulk_purchases

        def counting(*args: object) -> object:
            used.append(1)
            return real(*args)  # type: ignore[arg-type]

        patch.setattr(rows, "_bulk_purchases", counting)
        async with Engine.open(home, seed=2, clock=SimClock()) as engine:
            usd = {"a": 100, "b": 100, "c": 5, "d": 100, "e": 3, "f": 9, "g": 50, "creator": 0}
            await engine.register_players([(p, Decimal(v), 1.0, None) for p, v in usd.items()])
            await launch(engine, "x", offered=10, price=Decimal("1.25"))
            await launch(engine, "y", offered=20, price=Decimal("0.35"))
            await launch(engine, "z", offered=5, price=3)
            async with engine.events(buffer=100) as events:
                results = await engine.buy_many(BUYS)
                heard: list[object] = []
                while True:
                    try:
                        heard.append(dataclasses.astuple(events.receive_nowait()))
                    except anyio.WouldBlock:  # all heard
                        break
        assert bool(used) == bulk
    outcome = [r.token_id if isinstance(r, TokenInfo) else type(r).__name__ for r in results]
    return [outcome, heard]


@pytest.mark.asyncio
async def test_purchases_written_by_kind_are_the_rows_and_events_of_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = await bought(tmp_path / "one", bulk=False, monkeypatch=monkeypatch)
    bulk = await bought(tmp_path / "bulk", bulk=True, monkeypatch=monkeypatch)
    assert one == bulk
    assert one[0] == [
        "x-pts-000001",
        "y-pts-000001",
        "InsufficientFunds",
        "x-pts-000002",
        "z-pts-000001",
        "y-pts-000002",
        "y-pts-000003",
        "InvalidState",
    ]
    assert len(one[1]) == 7  # six sales and one funding, each heard once
    with (
        closing(sqlite3.connect(tmp_path / "one" / "ublox.db")) as a,
        closing(sqlite3.connect(tmp_path / "bulk" / "ublox.db")) as b,
    ):
        for query in TABLES:
            assert a.execute(query).fetchall() == b.execute(query).fetchall(), query
        assert b.execute("SELECT status FROM ptos WHERE pto_id = 'x'").fetchone() == (
            "in_progress",
        )


def _sale(pto_id: str, holder: str, n: int, hours: int, sold: int, offered: int) -> ev.SharesBought:
    token = PTSToken(
        token_id=f"{pto_id}-pts-{n:06d}",
        game_id=pto_id,
        holder=holder,
        hours_committed=float(hours),
        purchase_price=100 * hours,
        tau_k_at_purchase=1.0,
        purchase_time="2026-01-01 00:00:00+00:00",
    )
    return ev.SharesBought(
        at=token.purchase_time,
        pto_id=pto_id,
        player_id=holder,
        token_id=token.token_id,
        hours=hours,
        price=Decimal(hours),
        pts_sold=sold,
        pts_offered=offered,
        token=token,
    )


def test_only_purchases_and_their_fundings_with_no_sale_after_a_funding_go_by_kind() -> None:
    at = "2026-01-01 00:00:00+00:00"
    funded = ev.PTOFunded(at=at, pto_id="x", funding_raised=Decimal(10))
    a, b = _sale("x", "a", 1, 4, 4, 10), _sale("y", "b", 1, 2, 2, 10)
    assert rows._is_purchases([a, b])
    assert rows._is_purchases([a, funded, b])
    assert not rows._is_purchases([a])  # one purchase: the plain rows
    assert not rows._is_purchases([a, funded, _sale("x", "c", 2, 1, 11, 10)])
    assert not rows._is_purchases([a, ev.Deposited(at=at, player_id="a", amount=Decimal(1))])
    assert not rows._is_purchases([a, dataclasses.replace(b, token=None)])


@pytest.mark.asyncio
async def test_a_refused_unit_of_purchases_by_kind_changes_nothing(tmp_path: Path) -> None:
    """A debit the balance's CHECK refuses (the store's row lower than the actor
    believed) refuses the whole unit: no token, sale, ledger or log row of any of its
    purchases, every buyer's money back."""
    async with Engine.open(tmp_path, seed=2, clock=SimClock()) as engine:
        usd = {"a": 100, "b": 100, "creator": 0}
        await engine.register_players([(p, Decimal(v), 1.0, None) for p, v in usd.items()])
        await launch(engine, "x", offered=10, price=1)
        await launch(engine, "y", offered=10, price=1)
        await engine.activate_players(["a", "b"])
        db = tmp_path / "ublox.db"

        def snapshot() -> list[object]:
            with closing(sqlite3.connect(db)) as conn:
                return [conn.execute(q).fetchall() for q in TABLES[1:]]

        before = snapshot()
        with closing(sqlite3.connect(db)) as conn:  # behind the actors' backs
            conn.execute("UPDATE players SET usd_obbba_balance = 0 WHERE player_id = 'b'")
            conn.commit()
        results = await engine.buy_many([("a", "x", 3), ("b", "y", 2)])
        assert all(isinstance(r, UbloxError) for r in results)
        assert snapshot() == before
        assert (await engine.get_player("a")).usd_obbba_balance == Decimal(100)


@pytest.mark.asyncio
async def test_a_unit_of_purchases_by_kind_for_a_buyer_that_does_not_exist_is_refused(
    tmp_path: Path,
) -> None:
    """The ledger rows go unchecked: the token's foreign key refuses the unknown buyer,
    and the unit with it."""
    async with Engine.open(tmp_path, seed=2, clock=SimClock()) as engine:
        await engine.register_players([(p, Decimal(100), 1.0, None) for p in ("a", "creator")])
        await launch(engine, "x", offered=10, price=1)
        unit = Unit((_sale("x", "a", 1, 1, 1, 10), _sale("x", "ghost", 2, 1, 2, 10)))
        assert rows._is_purchases(unit.events)
        with pytest.raises(UbloxError):
            await engine.store.commit(unit)
        with closing(sqlite3.connect(tmp_path / "ublox.db")) as conn:
            assert conn.execute("SELECT count(*) FROM pts_tokens").fetchone() == (0,)
            assert conn.execute(
                "SELECT count(*) FROM transactions WHERE tx_type = 'investment'"
            ).fetchone() == (0,)
            assert conn.execute("SELECT pts_sold FROM ptos").fetchone() == (0,)


@pytest.mark.asyncio
@pytest.mark.parametrize("max_active", [2, 100])
async def test_usd_balances_are_each_players_usd_balance(tmp_path: Path, max_active: int) -> None:
    """Read at once (``Runner.investors``), whatever few actors may stay active: the same
    figures as one ``usd_balance`` each, an unknown id left out."""
    async with Engine.open(tmp_path, seed=2, clock=SimClock(), max_active=max_active) as engine:
        usd = {"a": Decimal("1.25"), "b": Decimal(0), "c": Decimal(7), "creator": Decimal(0)}
        await engine.register_players([(p, v, 1.0, None) for p, v in usd.items()])
        await launch(engine, "x", offered=10, price=1)
        await engine.buy_pts("c", "x", 2)
        asked = ["c", "ghost", "a", "b", "a"]
        balances = await engine.usd_balances(asked)
        assert balances == {"a": 125, "b": 0, "c": 500}
        assert balances == {p: b for p in asked if (b := await engine.usd_balance(p)) is not None}


@pytest.mark.asyncio
async def test_usd_balances_on_a_shared_postgresql_store(pg_url: str) -> None:
    async with Engine.open(store=pg_url, clock=SimClock()) as engine:
        assert engine.store.shared
        await engine.register_players([("a", Decimal("2.50"), 1.0, None), ("b", 3, 1.0, None)])
        assert await engine.usd_balances(["b", "nobody", "a"]) == {"b": 300, "a": 250}


def test_bulk_purchase_inserts_run_as_one_prepared_statement_not_multi_row_inserts() -> None:
    """A tick's few hundred purchases: ``executemany`` of one cached statement, not a
    multi-row INSERT whose text (and compiled statement in the cache) changes with the
    count of rows every tick."""
    from ublox_sim.store.sqlite.writer import _multi_row

    for sql in (rows._INSERT_TOKENS, rows._INSERT_INVESTMENT, rows._INSERT_EVENTS):
        assert _multi_row(sql) is None, sql
    assert rows._INSERT_EVENTS.replace("?1, ?2, ?3", "?, ?, ?") == rows._INSERT_EVENT
