"""Virtual actors (issue 13) against the real engine and a real SQLite home: one
activation however many first messages race, passivation racing with messages loses
nothing and applies nothing twice, worlds survive passivation (normal and checkpointed),
deadlines refund holders of inactive PTOs, a random workload stays verifiable with few
actors active, the last-share race holds with evictions, exports do not depend on
``max_active``, and the idle reaper passivates unused actors.

No test waits on wall-clock time: background work is awaited through
``passivate_all()`` or by polling ``active_actors()`` a bounded number of times."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, closing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from engine_helpers import launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidState, Refusal, SharesUnavailable, UbloxError
from ublox_sim.core.views import TokenInfo
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import MAX_ACTIVE_ENV, Engine
from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home
from ublox_sim.store.verify import verify_store

pytestmark = pytest.mark.anyio

SEED = 2025
TINY = WorldParams(size=8)
SCENARIOS = Path(__file__).parent.parent / "scenarios"


def open_engine(home: Path, **kwargs: Any) -> AbstractAsyncContextManager[Engine]:
    kwargs.setdefault("clock", SimClock())
    kwargs.setdefault("world", TINY)
    return Engine.open(home, seed=SEED, **kwargs)


def scalar(home: Path, query: str, args: tuple[object, ...] = ()) -> int:
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        (value,) = conn.execute(query, args).fetchone()
    return int(value)


def assert_money_conserved(home: Path) -> None:
    """Every deposited cent is in a balance or in the escrow of a live PTO."""
    deposits = scalar(
        home,
        "SELECT COALESCE(SUM(amount), 0) FROM transactions"
        " WHERE tx_type = 'deposit' AND currency = 'USD-OBBBA'",
    )
    balances = scalar(home, "SELECT COALESCE(SUM(usd_obbba_balance), 0) FROM players")
    held = scalar(
        home,
        "SELECT COALESCE(SUM(funding_raised), 0) FROM ptos"
        " WHERE status IN ('funding', 'in_progress')",
    )
    assert balances + held == deposits
    assert scalar(home, "SELECT COUNT(*) FROM players WHERE usd_obbba_balance < 0") == 0


async def balances(engine: Engine, ids: list[str]) -> dict[str, Decimal]:
    return {pid: (await engine.get_player(pid)).usd_obbba_balance for pid in ids}


# -- 1. one activation however many first messages race -----------------------------------


async def test_a_thousand_first_messages_to_one_player_make_one_activation(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with open_engine(tmp_path, max_active=100) as engine:
            await engine.register_player("p", usd_obbba=100)
            await engine.passivate_all()
            assert engine.active_actors()["player"] == 0
            before = engine._players.activations
            deposited: list[Decimal] = []

            async def read() -> None:
                assert (await engine.get_player("p")).player_id == "p"

            async def deposit() -> None:
                await engine.deposit("p", Decimal("0.01"))
                deposited.append(Decimal("0.01"))

            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(deposit if i % 2 else read)
            assert engine._players.activations - before == 1
            assert engine.active_actors()["player"] == 1
            assert len(deposited) == 500
            assert (await engine.get_player("p")).usd_obbba_balance == Decimal("105.00")
            await engine.passivate_all()
            assert (await engine.get_player("p")).usd_obbba_balance == Decimal("105.00")
    assert scalar(tmp_path, "SELECT usd_obbba_balance FROM players WHERE player_id='p'") == 10500
    assert verify_store(tmp_path) == []


# -- 2. passivation racing with messages ---------------------------------------------------


@pytest.mark.parametrize("max_active", [1, 2, 3])
async def test_passivation_racing_with_money_loses_nothing_and_doubles_nothing(
    tmp_path: Path, max_active: int
) -> None:
    """Deposits into ``a``, transfers ``b``->``a`` and ``a``->``c``, purchases by ``d``
    (refunded at the deadline), all at once with ``passivate_all`` looping and at most
    ``max_active`` actors of a kind: the exact cents expected, in memory and on disk."""
    ids = ["a", "b", "c", "d", "creator"]
    rounds = 120
    with anyio.fail_after(120):
        async with open_engine(tmp_path, max_active=max_active) as engine:
            await engine.register_player("creator")
            await engine.register_player("a", usd_obbba=10)
            await engine.register_player("b", usd_obbba=1000)
            await engine.register_player("c")
            await engine.register_player("d", usd_obbba=500)
            await launch(engine, "pto_x", offered=1000, price=1, deadline=timedelta(hours=1))
            await engine.passivate_all()
            done = anyio.Event()
            passivations = 0

            async def passivator() -> None:
                nonlocal passivations
                while not done.is_set():
                    await engine.passivate_all()
                    passivations += 1
                    await anyio.lowlevel.checkpoint()

            async def money(i: int) -> None:
                await engine.deposit("a", Decimal("0.07"))
                await engine.transfer("b", "a", Decimal("1.00"))
                await engine.transfer("a", "c", Decimal("0.50"))  # a always has 10.00+
                await engine.buy_pts("d", "pto_x", 1)

            async with anyio.create_task_group() as outer:
                outer.start_soon(passivator)
                async with anyio.create_task_group() as tg:
                    for i in range(rounds):
                        tg.start_soon(money, i)
                done.set()
            assert passivations > 0
            expected = {
                "a": Decimal("10.00")
                + rounds * (Decimal("0.07") + Decimal("1.00") - Decimal("0.50")),
                "b": Decimal("1000.00") - rounds * Decimal("1.00"),
                "c": rounds * Decimal("0.50"),
                "d": Decimal("500.00") - rounds * Decimal("1.00"),
                "creator": Decimal("0.00"),
            }
            assert await balances(engine, ids) == expected
            assert (await engine.get_pto("pto_x")).pts_sold == rounds
            # The deadline refunds d's 120 purchases exactly once, d active or not.
            await engine.passivate_all()
            assert await engine.advance(2) == ["pto_x"]
            assert await engine.fire_deadlines() == []
            expected["d"] = Decimal("500.00")
            assert await balances(engine, ids) == expected
            await engine.passivate_all()
            assert await balances(engine, ids) == expected
            assert await engine.store.verify() == []
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)
    async with open_engine(tmp_path, max_active=max_active) as again:
        assert await balances(again, ids) == expected


@pytest.mark.parametrize("checkpointed", [False, True])
async def test_two_hundred_senders_pay_one_player_pushed_out_all_the_time(
    tmp_path: Path, checkpointed: bool
) -> None:
    """With one player active at a time, every sender's activation evicts the target,
    whose credits arrive while it is passivating, inactive or being activated again."""
    senders = [f"s{i:03d}" for i in range(200)]
    with anyio.fail_after(120):
        async with open_engine(tmp_path, max_active=1, checkpointed=checkpointed) as engine:
            await engine.register_player("target", usd_obbba=1)
            registered = await engine.register_players([(s, 5, 1.0, None) for s in senders])
            assert not [r for r in registered if isinstance(r, UbloxError)]
            seen: list[Decimal] = []

            async def pay(i: int, sender: str) -> None:
                await engine.transfer(sender, "target", Decimal(i + 1) / 100)

            async def look() -> None:
                seen.append((await engine.get_player("target")).usd_obbba_balance)

            async with anyio.create_task_group() as tg:
                for i, sender in enumerate(senders):
                    tg.start_soon(pay, i, sender)
                    if i % 10 == 0:
                        tg.start_soon(look)
            total = sum(Decimal(i + 1) for i in range(200)) / 100
            assert (await engine.get_player("target")).usd_obbba_balance == Decimal(1) + total
            assert all(Decimal(1) <= b <= Decimal(1) + total for b in seen)
            assert engine._players.passivations >= 200
            for i, sender in enumerate(senders[:20]):
                expected = Decimal(5) - Decimal(i + 1) / 100
                assert (await engine.get_player(sender)).usd_obbba_balance == expected
            if checkpointed:
                await engine.checkpoint(1)
    async with open_engine(tmp_path, max_active=1) as again:
        assert (await again.get_player("target")).usd_obbba_balance == Decimal(1) + total
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)


@pytest.mark.parametrize("checkpointed", [False, True])
async def test_ptos_pushed_out_while_sold_built_played_and_failed(
    tmp_path: Path, checkpointed: bool
) -> None:
    """Six PTOs, one active at a time: concurrent purchases sell some out, ATU completes
    them (the payout reaches a creator who is not active), holders play, the rest fail
    at their deadline and refund; memory equals disk, and the store verifies."""
    buyers = [f"b{i:02d}" for i in range(12)]
    ptos = [f"g{i}" for i in range(6)]
    with anyio.fail_after(120):
        async with open_engine(tmp_path, max_active=1, checkpointed=checkpointed) as engine:
            await engine.register_player("creator")
            for b in buyers:
                await engine.register_player(b, usd_obbba=100)
            for i, pto_id in enumerate(ptos):
                offered = 12 if i % 2 == 0 else 500  # the even ones sell out
                await launch(
                    engine, pto_id, offered=offered, price=1, atu=20, deadline=timedelta(hours=5)
                )

            async with anyio.create_task_group() as tg:
                for pto_id in ptos:
                    for b in buyers:
                        tg.start_soon(engine.buy_pts, b, pto_id, 1)
            assert [(await engine.get_pto(p)).status for p in ptos] == [
                "in_progress",
                "funding",
            ] * 3
            await engine.passivate_all()
            async with anyio.create_task_group() as tg:
                for pto_id in ptos[::2]:
                    tg.start_soon(engine.spend_atu, pto_id, 20)
            assert (await engine.get_player("creator")).usd_obbba_balance == Decimal(36)
            # Completed PTOs still play out their hours (sessions in batches, one world each).
            results: list[object] = []

            async def play(pto_id: str) -> None:
                results.extend(await engine.play_many(pto_id, [(b, 0.5) for b in buyers]))

            async with anyio.create_task_group() as tg:
                for pto_id in ptos[::2]:
                    tg.start_soon(play, pto_id)
            assert len(results) == 36
            assert not [r for r in results if isinstance(r, UbloxError)], results
            await engine.passivate_all()
            assert await engine.advance(6) == ptos[1::2]
            assert await engine.fire_deadlines() == []
            for b in buyers:
                info = await engine.get_player(b)
                assert info.usd_obbba_balance == Decimal(100 - 3), b
            everyone = ["creator", *buyers]
            before = await views(engine, everyone, ptos)
            await engine.passivate_all()
            assert await views(engine, everyone, ptos) == before
            if checkpointed:
                await engine.checkpoint(1)
    async with open_engine(tmp_path, max_active=1) as again:
        assert await views(again, everyone, ptos) == before
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)


# -- 3. a world survives passivation -------------------------------------------------------


async def _step_and_passivate(engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    await engine.register_player("creator", usd_obbba=100)
    await launch(engine, "pto_w", offered=4, price=1)
    start = await engine.world("pto_w")
    await engine.advance(2)  # steps the world: the active PTO holds a dirty world
    stepped = await engine.world("pto_w")
    assert not np.array_equal(start["theta"], stepped["theta"])
    await engine.passivate_all()
    assert engine.active_actors()["pto"] == 0
    again = await engine.world("pto_w")
    for key in stepped:
        assert np.array_equal(stepped[key], again[key]), key
    return stepped, again


async def _same_steps_without_passivation(home: Path, **kwargs: Any) -> dict[str, Any]:
    async with open_engine(home, **kwargs) as engine:
        await engine.register_player("creator", usd_obbba=100)
        await launch(engine, "pto_w", offered=4, price=1)
        await engine.advance(2)
        await engine.advance(1)
        return await engine.world("pto_w")


async def test_a_passivated_world_comes_back_with_the_same_arrays(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with open_engine(tmp_path / "home", max_active=5) as engine:
            await _step_and_passivate(engine)
            # Stepping on from the reactivated world matches never having passivated.
            await engine.advance(1)
            await engine.passivate_all()
            onwards = await engine.world("pto_w")
        async with open_engine(tmp_path / "home", max_active=5) as reopened:
            assert all(
                np.array_equal(onwards[k], v) for k, v in (await reopened.world("pto_w")).items()
            )
    reference = await _same_steps_without_passivation(tmp_path / "ref", max_active=1000)
    for key in reference:
        assert np.array_equal(reference[key], onwards[key]), key
    assert verify_store(tmp_path / "home") == []


async def test_a_passivated_world_in_checkpointed_mode_survives_checkpoint_and_reopen(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with anyio.fail_after(60):
        async with open_engine(home, max_active=5, checkpointed=True) as engine:
            stepped, _ = await _step_and_passivate(engine)
            await engine.checkpoint(1)
        async with open_engine(home, max_active=5, checkpointed=True) as reopened:
            back = await reopened.world("pto_w")
            for key in stepped:
                assert np.array_equal(stepped[key], back[key]), key
            # A world stepped then passivated again, then checkpointed: still exact.
            await reopened.advance(1)
            onwards = await reopened.world("pto_w")
            await reopened.passivate_all()
            await reopened.checkpoint(2)
        async with open_engine(home, max_active=5, checkpointed=True) as third:
            final = await third.world("pto_w")
            for key in onwards:
                assert np.array_equal(onwards[key], final[key]), key
    reference = await _same_steps_without_passivation(
        tmp_path / "ref", max_active=1000, checkpointed=True
    )
    for key in reference:
        assert np.array_equal(reference[key], onwards[key]), key
    assert verify_store(home) == []


async def test_a_pto_passivated_while_a_checkpoint_writes_keeps_its_newer_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint snapshots the active PTO's world, then, while it writes, the PTO steps
    and is pushed out (its newer world parked by ``save_world``): the checkpoint must not
    drop that newer world when it forgets the held copies it wrote."""
    home = tmp_path / "home"

    async def setup(engine: Engine) -> None:
        await engine.register_player("creator", usd_obbba=100)
        for pto_id in ("pto_a", "pto_b"):
            await launch(engine, pto_id, offered=4, price=1)
        await engine.checkpoint(1)

    with anyio.fail_after(60):
        async with open_engine(home, max_active=1, checkpointed=True) as engine:
            await setup(engine)
            launched = await engine.world("pto_a")  # pto_a is the one active PTO
            db = engine.store.local.db
            commit_held = db.commit_held
            writing, resume = anyio.Event(), anyio.Event()

            async def paused(unit: Any) -> None:  # the checkpoint's write, held open
                writing.set()
                await resume.wait()
                await commit_held(unit)

            monkeypatch.setattr(db, "commit_held", paused)
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.checkpoint, 2)
                await writing.wait()  # pto_a's launch world is being written
                await engine.advance(1)  # steps pto_a; pto_b's activation pushes it out
                await engine.passivate_all()  # pto_a's stepped world is parked
                resume.set()
            live = await engine.world("pto_a")
            await engine.checkpoint(3)
        async with open_engine(home, max_active=1, checkpointed=True) as reopened:
            back = await reopened.world("pto_a")
        async with open_engine(tmp_path / "ref", max_active=1, checkpointed=True) as ref:
            await setup(ref)
            await ref.advance(1)
            reference = await ref.world("pto_a")
    assert not np.array_equal(launched["theta"], reference["theta"])
    for key in reference:
        assert np.array_equal(live[key], reference[key]), key
        assert np.array_equal(back[key], reference[key]), key
    assert verify_store(home) == []


# -- 4. deadlines refund holders of PTOs that are not active ------------------------------


@pytest.mark.parametrize("fire", ["advance", "fire_deadlines"])
async def test_deadline_refunds_reach_active_and_passive_holders_once(
    tmp_path: Path, fire: str
) -> None:
    clock = SimClock()
    ids = ["x", "y", "z"]
    with anyio.fail_after(60):
        async with open_engine(tmp_path, clock=clock, max_active=2) as engine:
            await engine.register_player("creator")
            for pid in ids:
                await engine.register_player(pid, usd_obbba=50)
            await launch(engine, "pto_d", offered=100, price=3, deadline=timedelta(hours=2))
            await launch(engine, "pto_e", offered=100, price=2, deadline=timedelta(days=9))
            await engine.buy_pts("x", "pto_d", 2)
            await engine.buy_pts("y", "pto_d", 5)
            await engine.buy_pts("y", "pto_e", 1)
            await engine.buy_pts("z", "pto_e", 3)
            await engine.passivate_all()
            assert engine.active_actors() == {"player": 0, "pto": 0}
            await engine.get_player("y")  # one holder active, the other not
            if fire == "advance":
                assert await engine.advance(3) == ["pto_d"]
            else:
                clock.advance(3)
                assert await engine.fire_deadlines() == ["pto_d"]
            assert await engine.fire_deadlines() == []
            expected = {"x": Decimal("50.00"), "y": Decimal("48.00"), "z": Decimal("44.00")}
            assert await balances(engine, ids) == expected
            assert (await engine.get_pto("pto_d")).status == "failed"
            assert (await engine.get_pto("pto_e")).status == "funding"
            await engine.passivate_all()
            assert await engine.fire_deadlines() == []
            assert await balances(engine, ids) == expected
    assert scalar(tmp_path, "SELECT COUNT(*) FROM transactions WHERE tx_type = 'refund'") == 2
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)
    async with open_engine(tmp_path, clock=clock, max_active=2) as again:
        assert await again.fire_deadlines() == []
        assert await balances(again, ids) == expected


# -- 5. a random workload with few actors active ------------------------------------------


async def views(engine: Engine, players: list[str], ptos: list[str]) -> list[object]:
    """Every player's and PTO's view, and every token, as the engine answers them."""
    seen: list[object] = [await engine.get_player(p) for p in players]
    for pto_id in ptos:
        seen.append(await engine.get_pto(pto_id))
        for p in players:
            seen.extend(await engine.tokens_of(p, pto_id))
    return seen


async def test_a_random_workload_with_ten_active_actors_verifies(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    players = [f"p{i:02d}" for i in range(40)]
    ptos = [f"g{i}" for i in range(4)]
    succeeded: dict[str, int] = {}
    refused: list[UbloxError] = []

    async def attempt(kind: str, call: Awaitable[object]) -> None:
        try:
            await call
            succeeded[kind] = succeeded.get(kind, 0) + 1
        except Refusal as exc:
            refused.append(exc)

    with anyio.fail_after(120):
        async with open_engine(tmp_path, max_active=10) as engine:
            await engine.register_player("creator", usd_obbba=10)
            for i, pto_id in enumerate(ptos):
                await launch(engine, pto_id, offered=6 + 4 * i, price=1 + i, atu=30)
            registered: list[str] = []
            for batch in range(12):
                async with anyio.create_task_group() as tg:
                    for _ in range(25):
                        kind = str(
                            rng.choice(["register", "deposit", "transfer", "buy", "atu", "play"])
                        )
                        call: Awaitable[object]
                        if kind == "register" or len(registered) < 2:
                            unused = [p for p in players if p not in registered]
                            if not unused:
                                continue
                            pid = unused[0]
                            registered.append(pid)
                            kind = "register"
                            call = engine.register_player(pid, usd_obbba=int(rng.integers(5, 60)))
                        elif kind == "deposit":
                            call = engine.deposit(
                                str(rng.choice(registered)), int(rng.integers(1, 9))
                            )
                        elif kind == "transfer":
                            a, b = rng.choice(len(registered), 2, replace=False)
                            cents = Decimal(int(rng.integers(1, 900))) / 100
                            call = engine.transfer(registered[a], registered[b], cents)
                        elif kind == "buy":
                            hours = int(rng.integers(1, 4))
                            call = engine.buy_pts(
                                str(rng.choice(registered)), str(rng.choice(ptos)), hours
                            )
                        elif kind == "atu":
                            call = engine.spend_atu(str(rng.choice(ptos)), int(rng.integers(1, 8)))
                        else:
                            hours = float(rng.choice([0.5, 1.0]))
                            call = engine.play(
                                str(rng.choice(registered)), str(rng.choice(ptos)), hours
                            )
                        tg.start_soon(attempt, kind, call)
                if batch % 3 == 2:
                    await engine.advance(1)
                if batch % 4 == 3:
                    # What the actors hold in memory is what a fresh activation reads.
                    before = await views(engine, registered, ptos)
                    await engine.passivate_all()
                    assert await views(engine, registered, ptos) == before
            before = await views(engine, registered, ptos)
            await engine.passivate_all()
            assert await views(engine, registered, ptos) == before
            assert engine.active_actors()["player"] <= 10
            assert engine._players.passivations > 0
            assert await engine.store.verify() == []
    # Every kind of operation happened at least once (and some were refused).
    assert set(succeeded) == {"register", "deposit", "transfer", "buy", "atu", "play"}, succeeded
    assert refused
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)


# -- 6. the last-share race with evictions ------------------------------------------------


async def test_a_thousand_buyers_race_for_ten_shares_with_two_active(tmp_path: Path) -> None:
    """Losers are refused by the PTO before their actor is asked; the ten winners (each
    reserving, then settled) cannot all be active at once with ``max_active=2``."""
    buyers = [f"buyer{i:04d}" for i in range(1000)]
    with anyio.fail_after(90):
        async with open_engine(tmp_path, max_active=2) as engine:
            await engine.register_player("creator", usd_obbba=25)
            await launch(engine, "pto_race", offered=11, price=25)
            await engine.buy_pts("creator", "pto_race", 1)
            registered = await engine.register_players([(b, 100, 1.0, None) for b in buyers])
            assert not [r for r in registered if isinstance(r, UbloxError)]
            before = engine._players.passivations
            won: list[TokenInfo] = []
            lost: list[BaseException] = []

            async def buy(player_id: str) -> None:
                try:
                    won.append(await engine.buy_pts(player_id, "pto_race", 1))
                except UbloxError as exc:
                    lost.append(exc)

            async with anyio.create_task_group() as tg:
                for buyer in buyers:
                    tg.start_soon(buy, buyer)
            assert engine._players.passivations - before >= 10 - 2
            assert len(won) == 10
            assert len(lost) == 990
            assert all(isinstance(exc, SharesUnavailable | InvalidState) for exc in lost)
            pto = await engine.get_pto("pto_race")
            assert pto.pts_sold == pto.pts_offered == 11
            assert pto.status == "in_progress"
            winners = {t.holder for t in won}
            assert len(winners) == 10
            for buyer in buyers:
                info = await engine.get_player(buyer)
                expected = Decimal("75.00") if buyer in winners else Decimal("100.00")
                assert info.usd_obbba_balance == expected, buyer
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)
    assert scalar(tmp_path, "SELECT COUNT(*) FROM pts_tokens WHERE game_id = 'pto_race'") == 11


# -- 7. the export does not depend on max_active -------------------------------------------

# Harmonic Caverns sells out, is built (ATU, payout) and played (sessions in batches);
# the small festival fails PTOs at their deadline (refunds to holders of all kinds).
SCENARIO_RUNS = {
    "harmonic_caverns": ("world.size=8", "clock.ticks=20", "checkpoint_every=5"),
    "festival": (
        "cohorts.0.count=40",
        "pto_cohorts.0.count=5",
        "clock.ticks=30",
        "checkpoint_every=7",
        "world.size=8",
    ),
}


async def _export(
    home: Path, name: str, max_active: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv(MAX_ACTIVE_ENV, str(max_active))
    loaded = load_scenario(SCENARIOS / f"{name}.yaml", overrides=SCENARIO_RUNS[name])
    await run_scenario(loaded, Home(home))
    raw = (home / "export.json").read_bytes()
    return {"bytes": raw, "data": json.loads(raw)}


@pytest.mark.parametrize("name", sorted(SCENARIO_RUNS))
async def test_same_seed_same_export_with_many_or_one_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    with anyio.fail_after(120):
        large = await _export(tmp_path / "large", name, 100_000, monkeypatch)
        small = await _export(tmp_path / "small", name, 1, monkeypatch)
    kinds = {t["tx_type"] for t in large["data"]["transactions"]}
    if name == "festival":
        assert "refund" in kinds
    else:
        assert large["data"]["play_sessions"]
        assert {"investment", "pto_completion", "xusd_composition"} <= kinds, kinds
    assert small["bytes"] == large["bytes"]


# -- 8. the idle reaper --------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], *, turns: int = 3000) -> None:
    """Poll ``condition`` between short sleeps; a bound on turns, never on time."""
    for _ in range(turns):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_an_idle_actor_is_passivated_and_comes_back_the_same(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        async with open_engine(tmp_path, idle_timeout=1.0) as engine:
            await engine.register_player("creator", usd_obbba=40)
            await launch(engine, "pto_i", offered=10, price=2)
            token = await engine.buy_pts("creator", "pto_i", 3)
            await engine.advance(1)
            player = await engine.get_player("creator")
            pto = await engine.get_pto("pto_i")
            world = await engine.world("pto_i")
            assert engine.active_actors() == {"player": 1, "pto": 1}
            activations = (engine._players.activations, engine._ptos.activations)
            passivated = (engine._players.passivations, engine._ptos.passivations)
            await wait_until(lambda: engine.active_actors() == {"player": 0, "pto": 0})
            # Out of the active set at once; passivated once its work is released.
            await wait_until(
                lambda: (
                    (engine._players.passivations, engine._ptos.passivations)
                    == (passivated[0] + 1, passivated[1] + 1)
                )
            )
            assert await engine.get_player("creator") == player
            assert await engine.get_pto("pto_i") == pto
            assert await engine.tokens_of("creator", "pto_i") == [token]
            back = await engine.world("pto_i")
            assert all(np.array_equal(world[k], back[k]) for k in world)
            assert (engine._players.activations, engine._ptos.activations) == (
                activations[0] + 1,
                activations[1] + 1,
            )
    assert verify_store(tmp_path) == []
