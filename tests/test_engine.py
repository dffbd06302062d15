"""The Engine end to end: the seed story, refusals, the race for the last share,
random operation sequences, crashing actors, events, and reopening."""

from __future__ import annotations

import math
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from engine_helpers import launch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ublox_sim.actors.player import PlayerActor
from ublox_sim.actors.pto import PTOActor
from ublox_sim.core import events as ev
from ublox_sim.core.clock import SimClock
from ublox_sim.core.economy import compose_xusd
from ublox_sim.core.errors import (
    ActorBroken,
    ActorClosed,
    AlreadyExists,
    InsufficientFunds,
    InvalidAmount,
    InvalidId,
    InvalidInput,
    InvalidState,
    Refusal,
    SharesUnavailable,
    UbloxError,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
)
from ublox_sim.core.events import Subscription
from ublox_sim.core.money import to_decimal
from ublox_sim.core.views import PlayerInfo, PTOInfo, TokenInfo
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store

SEED = 2025
PARAMS = WorldParams(size=16)
TINY = WorldParams(size=8)
HARMONIC = "pto_harmonic_001"

Call = Callable[[Engine], Awaitable[object]]


def open_engine(
    home: Path, *, params: WorldParams = PARAMS, **kwargs: Any
) -> AbstractAsyncContextManager[Engine]:
    kwargs.setdefault("clock", SimClock())
    return Engine.open(home, seed=SEED, world=params, **kwargs)


@dataclass
class Snapshot:
    players: dict[str, PlayerInfo]
    ptos: dict[str, PTOInfo]
    tokens: dict[str, TokenInfo]


async def snapshot(engine: Engine) -> Snapshot:
    players = {pid: await engine.get_player(pid) for pid in (await engine.player_ids())}
    ptos = {pid: await engine.get_pto(pid) for pid in (await engine.pto_ids())}
    tokens: dict[str, TokenInfo] = {}
    for pto_id in ptos:
        for player_id in players:
            for token in await engine.tokens_of(player_id, pto_id):
                assert token.token_id not in tokens
                tokens[token.token_id] = token
                assert await engine.get_token(token.token_id) == token
    return Snapshot(players, ptos, tokens)


async def drain(subscription: Subscription) -> list[ev.Event]:
    """Every event already delivered to a subscription.

    Events are published by the writer right after it acknowledges their unit, before
    the awaiting caller resumes, so what a finished operation produced is already
    waiting: no need to wait for stragglers (and no clock to guess with).
    """
    received: list[ev.Event] = []
    while True:
        try:
            received.append(subscription.receive_nowait())
        except anyio.WouldBlock:
            return received


def sql(home: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        return conn.execute(query, params).fetchall()


def scalar(home: Path, query: str, params: tuple[object, ...] = ()) -> Any:
    return sql(home, query, params)[0][0]


def tx_count(home: Path) -> int:
    return int(scalar(home, "SELECT COUNT(*) FROM transactions"))


def escrow_cents(home: Path, pto_id: str) -> int:
    """USD-OBBBA into the PTO minus out of it, from the ledger alone."""
    return int(
        scalar(
            home,
            "SELECT COALESCE(SUM(CASE WHEN to_player = ?1 THEN amount ELSE 0 END), 0)"
            " - COALESCE(SUM(CASE WHEN from_player = ?1 THEN amount ELSE 0 END), 0)"
            " FROM transactions WHERE currency = 'USD-OBBBA'",
            (pto_id,),
        )
    )


def assert_money_conserved(home: Path) -> None:
    """Every USD-OBBBA cent ever deposited is in a balance or in an escrow."""
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
    escrow = sum(escrow_cents(home, pto_id) for (pto_id,) in sql(home, "SELECT pto_id FROM ptos"))
    assert escrow == held
    assert balances + escrow == deposits
    assert scalar(home, "SELECT COUNT(*) FROM players WHERE usd_obbba_balance < 0") == 0
    assert scalar(home, "SELECT COUNT(*) FROM players WHERE xUSD_balance < 0") == 0


# -- the seed story ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_seed_story(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine:
        alice = await engine.register_player("alice", usd_obbba=Decimal("5000"))
        assert alice.usd_obbba_balance == Decimal("5000.00")
        assert alice.xUSD_balance == Decimal("0.00")
        await engine.register_player("creator")
        await engine.register_player("bob", usd_obbba=Decimal("49000"))
        pto = await launch(engine, HARMONIC, offered=2000, price=25, atu=500)
        assert pto.status == "funding"
        assert pto.funding_goal == Decimal("50000.00")
        assert pto.price_per_pts == Decimal("25.00")
        assert pto.world_cdt_id is not None

        async with engine.events() as events:
            token = await engine.buy_pts("alice", HARMONIC, 40)
            assert token.purchase_price == Decimal("1000.00")
            assert token.hours_committed == 40
            assert token.holder == "alice"
            assert token.pto_id == HARMONIC
            assert (await engine.get_player("alice")).usd_obbba_balance == Decimal("4000.00")
            pto = await engine.get_pto(HARMONIC)
            assert (pto.pts_sold, pto.funding_raised, pto.status) == (
                40,
                Decimal("1000.00"),
                "funding",
            )

            # Nobody plays a world that is still being funded.
            with pytest.raises(InvalidState):
                await engine.play("alice", HARMONIC, 5)
            assert (await engine.get_player("alice")).xUSD_balance == 0

            # Selling out starts the project.
            await engine.buy_pts("bob", HARMONIC, 1960)
            pto = await engine.get_pto(HARMONIC)
            assert pto.status == "in_progress"
            assert pto.pts_sold == pto.pts_offered == 2000
            assert pto.funding_raised == Decimal("50000.00")
            assert (await engine.get_player("bob")).usd_obbba_balance == 0
            with anyio.fail_after(60):
                seen = [await events.receive() for _ in range(3)]
            assert [e.kind for e in seen] == ["shares_bought", "shares_bought", "pto_funded"]
            funded = seen[2]
            assert isinstance(funded, ev.PTOFunded)
            assert funded.funding_raised == Decimal("50000.00")

        # Play 5 hours.
        result = await engine.play("alice", HARMONIC, 5)
        assert 0.0 <= result.quality <= 1.0
        assert result.hours == 5
        expected = to_decimal(compose_xusd(5, result.quality, 100))
        assert result.xUSD_earned == expected
        assert result.xUSD_earned == (Decimal(5) * Decimal(repr(result.quality)) * 100).quantize(
            Decimal("0.01")
        )
        assert result.tau_k_after == pytest.approx(0.9 * 1.0 + result.quality)
        alice = await engine.get_player("alice")
        assert alice.usd_obbba_balance == Decimal("4000.00")
        assert alice.xUSD_balance == expected
        assert alice.total_play_time == 5
        assert alice.quality_score == result.quality
        assert alice.phase_locks_count == result.phase_locks
        assert alice.memory_depth == result.memory_depth_added
        assert alice.tau_k == result.tau_k_after
        pto = await engine.get_pto(HARMONIC)
        assert pto.xUSD_pool == expected
        (token,) = await engine.tokens_of("alice", HARMONIC)
        assert token.hours_played == 5
        assert token.xUSD_accumulated == expected

        # The creator spends ATU; reaching atu_required pays the escrow.
        pto = await engine.spend_atu(HARMONIC, 200)
        assert (pto.status, pto.atu_spent) == ("in_progress", 200)
        assert (await engine.get_player("creator")).usd_obbba_balance == 0
        pto = await engine.spend_atu(HARMONIC, 300)
        assert (pto.status, pto.atu_spent) == ("completed", 500)
        assert pto.completion_time is not None
        assert (await engine.get_player("creator")).usd_obbba_balance == Decimal("50000.00")
        with pytest.raises(InvalidState):
            await engine.spend_atu(HARMONIC, 1)
        with pytest.raises(InvalidState):
            await engine.buy_pts("alice", HARMONIC, 1)
        # A completed world stays playable on the hours left.
        again = await engine.play("alice", HARMONIC, 1)
        assert (await engine.get_pto(HARMONIC)).xUSD_pool == expected + again.xUSD_earned
        stats = await engine.stats()
        assert stats["ptos"]["by_status"] == {"completed": 1}

    assert verify_store(tmp_path) == []
    assert escrow_cents(tmp_path, HARMONIC) == 0
    assert_money_conserved(tmp_path)
    kinds = sorted(
        (t, c) for t, c in sql(tmp_path, "SELECT tx_type, COUNT(*) FROM transactions GROUP BY 1")
    )
    assert kinds == [
        ("deposit", 2),
        ("investment", 2),
        ("pto_completion", 1),
        ("xusd_composition", 2),
    ]


@pytest.mark.asyncio
async def test_a_pto_not_sold_out_fails_at_its_deadline_and_refunds_exactly(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path) as engine:
        await engine.register_player("creator")
        await engine.register_player("alice", usd_obbba=Decimal("1000.50"))
        await engine.register_player("bob", usd_obbba=Decimal("300"))
        await launch(engine, "pto_sold", offered=2, price=Decimal("10.25"), atu=1)
        await launch(
            engine, "pto_late", offered=100, price=Decimal("12.35"), deadline=timedelta(hours=10)
        )
        await engine.buy_pts("alice", "pto_late", 10)
        await engine.buy_pts("bob", "pto_late", 3)
        await engine.buy_pts("bob", "pto_late", 2)
        await engine.buy_pts("alice", "pto_sold", 2)  # sold out: never fails
        before_refund = await snapshot(engine)
        assert before_refund.players["alice"].usd_obbba_balance == Decimal("1000.50") - Decimal(
            "123.50"
        ) - Decimal("20.50")
        assert before_refund.players["bob"].usd_obbba_balance == Decimal("300") - Decimal("61.75")

        async with engine.events() as events:
            assert await engine.advance(9) == []
            assert (await engine.get_pto("pto_late")).status == "funding"
            assert await engine.advance(1) == ["pto_late"]  # exactly at the deadline
            with anyio.fail_after(60):
                failed = await events.receive()
            assert isinstance(failed, ev.PTOFailed)
            assert failed.refunded == Decimal("185.25")
            assert failed.holders == 2
        late = await engine.get_pto("pto_late")
        assert late.status == "failed"
        assert (await engine.get_player("alice")).usd_obbba_balance == Decimal("1000.50") - Decimal(
            "20.50"
        )
        assert (await engine.get_player("bob")).usd_obbba_balance == Decimal("300.00")
        assert (await engine.get_pto("pto_sold")).status == "in_progress"
        # Later advances do not fail it twice.
        assert await engine.advance(24) == []
        refused: list[Call] = [
            lambda e: e.buy_pts("alice", "pto_late", 1),
            lambda e: e.play("alice", "pto_late", 1),
            lambda e: e.spend_atu("pto_late", 1),
        ]
        for call in refused:
            with pytest.raises(InvalidState):
                await call(engine)

    assert verify_store(tmp_path) == []
    assert escrow_cents(tmp_path, "pto_late") == 0
    refunds = sql(
        tmp_path,
        "SELECT from_player, to_player, amount FROM transactions WHERE tx_type = 'refund'"
        " ORDER BY to_player",
    )
    assert refunds == [("pto_late", "alice", 12350), ("pto_late", "bob", 6175)]
    assert_money_conserved(tmp_path)


@pytest.mark.asyncio
async def test_deposit_and_transfer_move_exact_cents(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine:
        await engine.register_player("alice", usd_obbba="0.10")
        await engine.register_player("bob")
        info = await engine.deposit("alice", 0.2)  # a float is read by its repr: 20 cents
        assert info.usd_obbba_balance == Decimal("0.30")
        sender = await engine.transfer("alice", "bob", Decimal("0.29"))
        assert sender.usd_obbba_balance == Decimal("0.01")
        assert (await engine.get_player("bob")).usd_obbba_balance == Decimal("0.29")
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)
    assert sql(
        tmp_path, "SELECT tx_type, from_player, to_player, amount FROM transactions ORDER BY tx_id"
    ) == [
        ("deposit", None, "alice", 10),
        ("deposit", None, "alice", 20),
        ("transfer", "alice", "bob", 29),
    ]


# -- refusals change nothing ----------------------------------------------------------

REFUSALS: list[tuple[str, Call, type[UbloxError]]] = [
    # overdrafts
    (
        "transfer overdraft",
        lambda e: e.transfer("bob", "alice", Decimal("50.01")),
        InsufficientFunds,
    ),
    ("buy overdraft", lambda e: e.buy_pts("bob", "g_fund", 3), InsufficientFunds),
    # unknown ids
    ("deposit to nobody", lambda e: e.deposit("nobody", 1), UnknownPlayer),
    ("transfer from nobody", lambda e: e.transfer("nobody", "alice", 1), UnknownPlayer),
    ("transfer to nobody", lambda e: e.transfer("alice", "nobody", 1), UnknownPlayer),
    ("buy by nobody", lambda e: e.buy_pts("nobody", "g_fund", 1), UnknownPlayer),
    ("buy unknown pto", lambda e: e.buy_pts("alice", "g_none", 1), UnknownPTO),
    ("play unknown pto", lambda e: e.play("alice", "g_none", 1), UnknownPTO),
    ("play by nobody", lambda e: e.play("nobody", "g_prog", 1), UnknownPlayer),
    ("spend unknown pto", lambda e: e.spend_atu("g_none", 1), UnknownPTO),
    ("get unknown pto", lambda e: e.get_pto("g_none"), UnknownPTO),
    ("get unknown player", lambda e: e.get_player("nobody"), UnknownPlayer),
    ("unknown token", lambda e: e.get_token("g_fund-pts-999999"), UnknownToken),
    ("launch by nobody", lambda e: launch(e, "g_new", creator="nobody"), UnknownPlayer),
    # hours
    ("buy 0 h", lambda e: e.buy_pts("alice", "g_fund", 0), InvalidInput),
    ("buy -3 h", lambda e: e.buy_pts("alice", "g_fund", -3), InvalidInput),
    ("buy 1.5 h", lambda e: e.buy_pts("alice", "g_fund", 1.5), InvalidInput),
    ("buy nan h", lambda e: e.buy_pts("alice", "g_fund", float("nan")), InvalidInput),
    ("buy inf h", lambda e: e.buy_pts("alice", "g_fund", float("inf")), InvalidInput),
    ("buy True h", lambda e: e.buy_pts("alice", "g_fund", True), InvalidInput),
    ("play 0 h", lambda e: e.play("alice", "g_prog", 0), InvalidInput),
    ("play -1 h", lambda e: e.play("alice", "g_prog", -1), InvalidInput),
    ("play nan h", lambda e: e.play("alice", "g_prog", float("nan")), InvalidInput),
    ("play inf h", lambda e: e.play("alice", "g_prog", float("inf")), InvalidInput),
    ("spend 0 atu", lambda e: e.spend_atu("g_prog", 0), InvalidInput),
    ("spend 1.5 atu", lambda e: e.spend_atu("g_prog", 1.5), InvalidInput),  # type: ignore[arg-type]
    ("advance -1 h", lambda e: e.advance(-1), InvalidInput),
    ("advance nan h", lambda e: e.advance(float("nan")), InvalidInput),
    ("advance inf h", lambda e: e.advance(float("inf")), InvalidInput),
    # amounts
    ("deposit negative", lambda e: e.deposit("alice", -1), InvalidAmount),
    ("deposit zero", lambda e: e.deposit("alice", 0), InvalidAmount),
    ("deposit nan", lambda e: e.deposit("alice", float("nan")), InvalidAmount),
    ("deposit Decimal nan", lambda e: e.deposit("alice", Decimal("NaN")), InvalidAmount),
    ("deposit inf", lambda e: e.deposit("alice", float("inf")), InvalidAmount),
    ("deposit sub-cent", lambda e: e.deposit("alice", Decimal("0.001")), InvalidAmount),
    ("deposit float sub-cent", lambda e: e.deposit("alice", 10.005), InvalidAmount),
    ("deposit text", lambda e: e.deposit("alice", "ten"), InvalidAmount),
    ("deposit bool", lambda e: e.deposit("alice", True), InvalidAmount),
    ("transfer sub-cent", lambda e: e.transfer("alice", "bob", 0.005), InvalidAmount),
    ("transfer negative", lambda e: e.transfer("alice", "bob", -5), InvalidAmount),
    ("register negative", lambda e: e.register_player("carol", usd_obbba=-5), InvalidAmount),
    ("register inf", lambda e: e.register_player("carol", usd_obbba=math.inf), InvalidAmount),
    ("register nan tau", lambda e: e.register_player("carol", tau_k=math.nan), InvalidInput),
    ("launch zero price", lambda e: launch(e, "g_new", price=0), InvalidAmount),
    ("launch sub-cent price", lambda e: launch(e, "g_new", price=Decimal("0.125")), InvalidAmount),
    ("launch no shares", lambda e: launch(e, "g_new", offered=0), InvalidInput),
    (
        "launch naive deadline",
        lambda e: e.launch_pto(
            pto_id="g_new",
            game_name="x",
            creator_id="creator",
            atu_required=1,
            pts_offered=1,
            price_per_pts=1,
            funding_deadline=datetime(2030, 1, 1),
        ),
        InvalidInput,
    ),
    # ids
    ("register duplicate", lambda e: e.register_player("alice", usd_obbba=5), AlreadyExists),
    ("register a pto's id", lambda e: e.register_player("g_fund"), AlreadyExists),
    ("launch duplicate", lambda e: launch(e, "g_fund"), AlreadyExists),
    ("launch a player's id", lambda e: launch(e, "alice"), AlreadyExists),
    ("register control chars", lambda e: e.register_player("bad\x00id"), InvalidId),
    ("register empty id", lambda e: e.register_player(""), InvalidId),
    ("launch path id", lambda e: launch(e, "../escape"), InvalidId),
    ("transfer to self", lambda e: e.transfer("alice", "alice", 1), InvalidInput),
    # states and shares
    ("buy beyond shares left", lambda e: e.buy_pts("alice", "g_fund", 9), SharesUnavailable),
    ("buy in progress", lambda e: e.buy_pts("alice", "g_prog", 1), InvalidState),
    ("play while funding", lambda e: e.play("alice", "g_fund", 1), InvalidState),
    ("play more than held", lambda e: e.play("alice", "g_prog", 3.5), InvalidState),
    ("play without shares", lambda e: e.play("bob", "g_prog", 1), InvalidState),
    ("spend atu while funding", lambda e: e.spend_atu("g_fund", 1), InvalidState),
]


async def refusal_fixture(engine: Engine) -> None:
    await engine.register_player("creator")
    await engine.register_player("alice", usd_obbba=100)
    await engine.register_player("bob", usd_obbba=50)
    await launch(engine, "g_fund", offered=10, price=25)
    await launch(engine, "g_prog", offered=3, price=5, atu=10)
    await engine.buy_pts("alice", "g_fund", 2)
    await engine.buy_pts("alice", "g_prog", 3)
    await engine.play("alice", "g_prog", 0.5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("call", "error"), [(c, e) for _, c, e in REFUSALS], ids=[n for n, _, _ in REFUSALS]
)
async def test_refusals_change_nothing(tmp_path: Path, call: Call, error: type[UbloxError]) -> None:
    async with open_engine(tmp_path, params=TINY) as engine:
        await refusal_fixture(engine)
        before = await snapshot(engine)
        stats = await engine.stats()
        with pytest.raises(error):
            await call(engine)
        assert await snapshot(engine) == before
        assert await engine.stats() == stats
        assert (await engine.player_ids()) == ["alice", "bob", "creator"]
        assert (await engine.pto_ids()) == ["g_fund", "g_prog"]
        # The engine goes on working after a refusal.
        assert (await engine.deposit("bob", 1)).usd_obbba_balance == Decimal("51.00")
    assert verify_store(tmp_path) == []
    assert tx_count(tmp_path) == stats["transactions"]["count"] + 1
    assert_money_conserved(tmp_path)


# -- the race for the last shares -------------------------------------------------------


@pytest.mark.asyncio
async def test_a_thousand_buyers_race_for_ten_shares(tmp_path: Path) -> None:
    buyers = [f"buyer{i:04d}" for i in range(1000)]
    with anyio.fail_after(60):
        async with open_engine(tmp_path, params=TINY) as engine:
            await engine.register_player("creator", usd_obbba=25)
            await launch(engine, "pto_race", offered=11, price=25)
            await engine.buy_pts("creator", "pto_race", 1)
            async with anyio.create_task_group() as tg:
                for buyer in buyers:
                    tg.start_soon(lambda b=buyer: engine.register_player(b, usd_obbba=100))

            won: list[TokenInfo] = []
            lost: list[BaseException] = []

            async def buy(player_id: str) -> None:
                try:
                    won.append(await engine.buy_pts(player_id, "pto_race", 1))
                except UbloxError as exc:
                    lost.append(exc)

            async with engine.events() as events:
                async with anyio.create_task_group() as tg:
                    for buyer in buyers:
                        tg.start_soon(buy, buyer)
                funded = [e for e in await drain(events) if isinstance(e, ev.PTOFunded)]

            assert len(won) == 10
            assert len(lost) == 990
            assert all(isinstance(exc, SharesUnavailable | InvalidState) for exc in lost)
            assert all(isinstance(exc, Refusal) for exc in lost)
            assert len(funded) == 1
            assert len({t.token_id for t in won}) == 10
            pto = await engine.get_pto("pto_race")
            assert pto.pts_sold == pto.pts_offered == 11
            assert pto.status == "in_progress"
            assert pto.funding_raised == Decimal("275.00")
            winners = {t.holder for t in won}
            for buyer in buyers:
                info = await engine.get_player(buyer)
                expected = Decimal("75.00") if buyer in winners else Decimal("100.00")
                assert info.usd_obbba_balance == expected
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)
    assert scalar(tmp_path, "SELECT COUNT(*) FROM pts_tokens WHERE game_id = 'pto_race'") == 11
    assert scalar(tmp_path, "SELECT pts_sold FROM ptos WHERE pto_id = 'pto_race'") == 11
    assert scalar(tmp_path, "SELECT COALESCE(SUM(usd_obbba_balance), 0) FROM players") + 27500 == (
        1000 * 10000 + 2500
    )


@pytest.mark.asyncio
async def test_concurrent_transfers_and_buys_keep_the_ledger_true(tmp_path: Path) -> None:
    """Many players paying each other and buying at once, some overdrawing: every cent lands."""
    n = 60
    players = [f"p{i:02d}" for i in range(n)]
    rng = np.random.default_rng(7)
    with anyio.fail_after(120):
        async with open_engine(tmp_path, params=TINY) as engine:
            await engine.register_player("creator")
            for i, pid in enumerate(players):
                await engine.register_player(pid, usd_obbba=10 + i)
            await launch(engine, "pto_a", offered=40, price=3)
            await launch(engine, "pto_b", offered=500, price=2)
            refused: list[UbloxError] = []

            async def attempt(call: Awaitable[object]) -> None:
                try:
                    await call
                except Refusal as exc:
                    refused.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(600):
                    a, b = rng.choice(n, 2, replace=False)
                    kind = rng.integers(0, 3)
                    if kind == 0:
                        call: Awaitable[object] = engine.transfer(
                            players[a], players[b], int(rng.integers(1, 15))
                        )
                    else:
                        pto_id = "pto_a" if kind == 1 else "pto_b"
                        call = engine.buy_pts(players[a], pto_id, int(rng.integers(1, 4)))
                    tg.start_soon(attempt, call)
            assert refused, "the mix should overdraw or oversell somewhere"
            view = await snapshot(engine)
            total = sum(p.usd_obbba_balance for p in view.players.values())
            held = sum(p.funding_raised for p in view.ptos.values() if p.status != "failed")
            assert total + held == sum(Decimal(10 + i) for i in range(n))
            assert view.ptos["pto_a"].pts_sold <= 40
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)
    # Memory matched disk: every balance the engine showed is the committed one.
    for pid, info in view.players.items():
        cents = scalar(
            tmp_path, "SELECT usd_obbba_balance FROM players WHERE player_id = ?", (pid,)
        )
        assert to_decimal(cents) == info.usd_obbba_balance


@pytest.mark.asyncio
async def test_concurrent_claims_on_one_id_give_it_to_exactly_one(tmp_path: Path) -> None:
    async with open_engine(tmp_path, params=TINY) as engine:
        await engine.register_player("creator")
        outcomes: list[str] = []

        async def register() -> None:
            try:
                await engine.register_player("same", usd_obbba=1)
                outcomes.append("player")
            except AlreadyExists:
                outcomes.append("refused")

        async def claim_as_pto() -> None:
            try:
                await launch(engine, "same")
                outcomes.append("pto")
            except AlreadyExists:
                outcomes.append("refused")

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(register if i % 2 else claim_as_pto)
        assert len(outcomes) == 60
        assert outcomes.count("refused") == 59
        winners = set(await engine.player_ids()) & set(await engine.pto_ids())
        assert winners == set()
        assert "same" in (await engine.player_ids()) or "same" in (await engine.pto_ids())
    assert verify_store(tmp_path) == []
    assert (
        scalar(tmp_path, "SELECT COUNT(*) FROM players WHERE player_id = 'same'")
        + scalar(tmp_path, "SELECT COUNT(*) FROM ptos WHERE pto_id = 'same'")
        == 1
    )
    assert_money_conserved(tmp_path)


@pytest.mark.asyncio
async def test_a_flood_of_transfers_to_one_player_is_visible_at_once(tmp_path: Path) -> None:
    """200 senders pay one player at once (more credits than its mailbox holds): as soon
    as every transfer returned, the receiver's balance shows all of them."""
    senders = [f"s{i:03d}" for i in range(200)]
    with anyio.fail_after(120):
        async with open_engine(tmp_path, params=TINY) as engine:
            await engine.register_player("sink")
            for pid in senders:
                await engine.register_player(pid, usd_obbba=Decimal("1.01"))
            async with anyio.create_task_group() as tg:
                for pid in senders:
                    tg.start_soon(engine.transfer, pid, "sink", Decimal("1.01"))
            sink = await engine.get_player("sink")
            assert sink.usd_obbba_balance == Decimal("202.00")
            # And the money is really there: the sink can spend all of it.
            await launch(engine, "pto_sink", creator="sink", offered=1, price=Decimal("202.00"))
            token = await engine.buy_pts("sink", "pto_sink", 1)
            assert token.purchase_price == Decimal("202.00")
            assert (await engine.get_player("sink")).usd_obbba_balance == 0
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)


@pytest.mark.asyncio
async def test_one_player_playing_two_worlds_at_once_gets_both_sessions(tmp_path: Path) -> None:
    """Two concurrent, valid sessions of one player in two different worlds (two requests
    of a game server, say) must both be played; neither is the caller's fault."""
    with anyio.fail_after(120):
        async with open_engine(tmp_path, params=TINY) as engine:
            await engine.register_player("creator")
            await engine.register_player("alice", usd_obbba=100)
            for pto_id in ("pto_one", "pto_two"):
                await launch(engine, pto_id, offered=4, price=1)
                await engine.buy_pts("alice", pto_id, 4)
            results: dict[str, object] = {}

            async def play(pto_id: str) -> None:
                try:
                    results[pto_id] = await engine.play("alice", pto_id, 1)
                except UbloxError as exc:
                    results[pto_id] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(play, "pto_one")
                tg.start_soon(play, "pto_two")
            failures = {k: repr(v) for k, v in results.items() if isinstance(v, UbloxError)}
            alice = await engine.get_player("alice")
    # Whatever happened, nothing was half-written.
    assert verify_store(tmp_path) == []
    assert failures == {}
    assert alice.total_play_time == 2


# -- random operation sequences -----------------------------------------------------------

PLAYER_IDS = ["p0", "p1", "p2"]
PTO_IDS = ["g0", "g1"]
GOOD_AMOUNTS = st.integers(min_value=1, max_value=20_000).map(lambda c: Decimal(c).scaleb(-2))
# Zero is fine for a starting balance, refused for a deposit or a transfer.
BAD_AMOUNTS = st.sampled_from([Decimal(0), Decimal("-1"), Decimal("0.001"), math.nan, math.inf])
AMOUNTS = st.one_of(GOOD_AMOUNTS, GOOD_AMOUNTS, GOOD_AMOUNTS, BAD_AMOUNTS)
PLAYER = st.sampled_from(["p0", "p1", "p2", "p0", "p1", "ghost"])
PTO_ID = st.sampled_from(["g0", "g0", "g1", "nope"])

LAUNCH = st.tuples(
    st.just("launch"),
    st.sampled_from([*PTO_IDS, "p2"]),
    PLAYER,
    st.integers(min_value=1, max_value=6),  # pts offered
    st.integers(min_value=1, max_value=4000),  # price in cents
    st.integers(min_value=0, max_value=4),  # atu required
    st.integers(min_value=1, max_value=30),  # deadline in hours
)
BUY = st.tuples(st.just("buy"), PLAYER, PTO_ID, st.sampled_from([1, 1, 1, 1, 2, 2, 3, 0, -1, 1.5]))
SPEND = st.tuples(st.just("spend_atu"), PTO_ID, st.sampled_from([1, 1, 2, 3, 0]))
PLAY = st.tuples(
    st.just("play"), PLAYER, PTO_ID, st.sampled_from([0.5, 1, 2.25, 7, 0, -1, math.nan])
)
# Most sessions are ones that can be played (hypothesis likes the edge cases a lot).
PLAY_LIKELY = st.tuples(
    st.just("play"), st.sampled_from(["p1", "p0"]), st.just("g0"), st.sampled_from([0.5, 1, 1.25])
)
# Buying, playing and spending ATU are weighted up so that sequences reach every status.
OPERATIONS = st.one_of(
    st.tuples(st.just("register"), st.sampled_from([*PLAYER_IDS, "g0"]), AMOUNTS),
    st.tuples(st.just("deposit"), PLAYER, AMOUNTS),
    st.tuples(st.just("transfer"), PLAYER, PLAYER, AMOUNTS),
    LAUNCH,
    BUY,
    BUY,
    BUY,
    SPEND,
    SPEND,
    PLAY,
    PLAY_LIKELY,
    PLAY_LIKELY,
    st.tuples(st.just("advance"), st.sampled_from([1, 0, 1, 2, 5, 13])),
)

# Players with money and one cheap, small PTO with a late deadline first, so that most
# random operations have something to act on and sequences reach every status.
PRELUDE = st.tuples(
    *(
        st.tuples(
            st.just("register"),
            st.just(pid),
            st.integers(min_value=5_000, max_value=20_000).map(lambda c: Decimal(c).scaleb(-2)),
        )
        for pid in PLAYER_IDS
    ),
    st.tuples(
        st.just("launch"),
        st.just("g0"),
        st.just("p0"),
        st.integers(min_value=1, max_value=4),
        st.integers(min_value=1, max_value=1000),
        st.integers(min_value=0, max_value=4),
        st.integers(min_value=20, max_value=60),
    ),
    # Often sells g0 out at once (in progress), sometimes only partly, sometimes too many.
    st.tuples(st.just("buy"), st.just("p1"), st.just("g0"), st.integers(min_value=1, max_value=4)),
).map(list)


@dataclass
class ModelPTO:
    creator: str
    offered: int
    price: int
    atu_required: int
    deadline: float
    status: str = "funding"
    sold: int = 0
    raised: int = 0
    atu_spent: int = 0
    paid: dict[str, int] = field(default_factory=dict)
    hours_left: dict[str, float] = field(default_factory=dict)


@dataclass
class Model:
    """What the economy should look like, kept by hand beside the engine."""

    usd: dict[str, int] = field(default_factory=dict)
    xusd: dict[str, int] = field(default_factory=dict)
    ptos: dict[str, ModelPTO] = field(default_factory=dict)
    now: float = 0.0


def model_cents(amount: object, *, allow_zero: bool) -> int | None:
    """The cents an amount means, or None when it must be refused."""
    value = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(str(amount))
    if not value.is_finite() or value < 0 or (value * 100) % 1 != 0:
        return None
    cents = int(value * 100)
    return None if cents == 0 and not allow_zero else cents


def expect(model: Model, op: tuple[Any, ...]) -> type[UbloxError] | None:
    """The error the operation must raise in the model's state, or None if it succeeds."""
    kind = op[0]
    taken = set(model.usd) | set(model.ptos)
    if kind == "register":
        _, pid, amount = op
        if model_cents(amount, allow_zero=True) is None:
            return InvalidAmount
        return AlreadyExists if pid in taken else None
    if kind == "deposit":
        _, pid, amount = op
        if model_cents(amount, allow_zero=False) is None:
            return InvalidAmount
        return None if pid in model.usd else UnknownPlayer
    if kind == "transfer":
        _, a, b, amount = op
        cents = model_cents(amount, allow_zero=False)
        if cents is None:
            return InvalidAmount
        if a not in model.usd or b not in model.usd:
            return UnknownPlayer
        if a == b:
            return InvalidInput
        return InsufficientFunds if cents > model.usd[a] else None
    if kind == "launch":
        _, gid, creator, *_ = op
        if creator not in model.usd:
            return UnknownPlayer
        return AlreadyExists if gid in taken else None
    if kind == "buy":
        _, pid, gid, hours = op
        if not isinstance(hours, int) or hours <= 0:
            return InvalidInput
        if gid not in model.ptos:
            return UnknownPTO
        if pid not in model.usd:
            return UnknownPlayer
        pto = model.ptos[gid]
        if pto.status != "funding":
            return InvalidState
        if hours > pto.offered - pto.sold:
            return SharesUnavailable
        return InsufficientFunds if hours * pto.price > model.usd[pid] else None
    if kind == "spend_atu":
        _, gid, units = op
        if units < 1:
            return InvalidInput
        if gid not in model.ptos:
            return UnknownPTO
        return None if model.ptos[gid].status == "in_progress" else InvalidState
    if kind == "play":
        _, pid, gid, hours = op
        if not hours > 0:
            return InvalidInput
        if gid not in model.ptos:
            return UnknownPTO
        if pid not in model.usd:
            return UnknownPlayer
        pto = model.ptos[gid]
        if pto.status not in ("in_progress", "completed"):
            return InvalidState
        return None if hours <= pto.hours_left.get(pid, 0.0) + 1e-9 else InvalidState
    assert kind == "advance"
    return None


async def apply(engine: Engine, model: Model, op: tuple[Any, ...]) -> None:
    """Run one operation on the engine, check it against the model, and update the model."""
    expected = expect(model, op)
    kind = op[0]
    if expected is not None:
        with pytest.raises(expected):
            match op:
                case ("register", pid, amount):
                    await engine.register_player(pid, usd_obbba=amount)
                case ("deposit", pid, amount):
                    await engine.deposit(pid, amount)
                case ("transfer", a, b, amount):
                    await engine.transfer(a, b, amount)
                case ("launch", gid, creator, offered, price, atu, hours):
                    await launch(
                        engine,
                        gid,
                        creator=creator,
                        offered=offered,
                        price=to_decimal(price),
                        atu=atu,
                        deadline=timedelta(hours=hours),
                    )
                case ("buy", pid, gid, hours):
                    await engine.buy_pts(pid, gid, hours)
                case ("spend_atu", gid, units):
                    await engine.spend_atu(gid, units)
                case ("play", pid, gid, hours):
                    await engine.play(pid, gid, hours)
        return
    if kind == "register":
        _, pid, amount = op
        info = await engine.register_player(pid, usd_obbba=amount)
        model.usd[pid] = model_cents(amount, allow_zero=True) or 0
        model.xusd[pid] = 0
        assert info.usd_obbba_balance == to_decimal(model.usd[pid])
    elif kind == "deposit":
        _, pid, amount = op
        model.usd[pid] += model_cents(amount, allow_zero=False) or 0
        assert (await engine.deposit(pid, amount)).usd_obbba_balance == to_decimal(model.usd[pid])
    elif kind == "transfer":
        _, a, b, amount = op
        cents = model_cents(amount, allow_zero=False) or 0
        model.usd[a] -= cents
        model.usd[b] += cents
        assert (await engine.transfer(a, b, amount)).usd_obbba_balance == to_decimal(model.usd[a])
    elif kind == "launch":
        _, gid, creator, offered, price, atu, hours = op
        info = await launch(
            engine,
            gid,
            creator=creator,
            offered=offered,
            price=to_decimal(price),
            atu=atu,
            deadline=timedelta(hours=hours),
        )
        assert info.funding_goal == to_decimal(offered * price)
        model.ptos[gid] = ModelPTO(creator, offered, price, atu, model.now + hours)
    elif kind == "buy":
        _, pid, gid, hours = op
        pto = model.ptos[gid]
        token = await engine.buy_pts(pid, gid, hours)
        assert token.purchase_price == to_decimal(hours * pto.price)
        model.usd[pid] -= hours * pto.price
        pto.sold += hours
        pto.raised += hours * pto.price
        pto.paid[pid] = pto.paid.get(pid, 0) + hours * pto.price
        pto.hours_left[pid] = pto.hours_left.get(pid, 0.0) + hours
        if pto.sold == pto.offered:
            pto.status = "in_progress"
    elif kind == "spend_atu":
        _, gid, units = op
        pto = model.ptos[gid]
        info = await engine.spend_atu(gid, units)
        pto.atu_spent += units
        if pto.atu_spent >= pto.atu_required:
            pto.status = "completed"
            model.usd[pto.creator] += pto.raised
        assert info.status == pto.status
    elif kind == "play":
        _, pid, gid, hours = op
        result = await engine.play(pid, gid, hours)
        assert 0.0 <= result.quality <= 1.0
        earned = compose_xusd(hours, result.quality, 100.0)
        assert result.xUSD_earned == to_decimal(earned)
        model.xusd[pid] += earned
        model.ptos[gid].hours_left[pid] -= hours
    elif kind == "advance":
        _, hours = op
        failed = await engine.advance(hours)
        model.now += hours
        expected_failed = []
        for gid, pto in sorted(model.ptos.items()):
            if pto.status == "funding" and model.now >= pto.deadline:
                pto.status = "failed"
                expected_failed.append(gid)
                for holder, cents in pto.paid.items():
                    model.usd[holder] += cents
        assert failed == expected_failed


async def check_model(engine: Engine, model: Model) -> None:
    assert (await engine.player_ids()) == sorted(model.usd)
    assert (await engine.pto_ids()) == sorted(model.ptos)
    for pid, cents in model.usd.items():
        info = await engine.get_player(pid)
        assert info.usd_obbba_balance == to_decimal(cents), pid
        assert info.xUSD_balance == to_decimal(model.xusd[pid]), pid
    for gid, pto in model.ptos.items():
        info = await engine.get_pto(gid)
        assert (info.status, info.pts_sold, info.atu_spent) == (pto.status, pto.sold, pto.atu_spent)
        assert info.funding_raised == to_decimal(pto.raised)
        assert info.pts_sold <= info.pts_offered


async def run_sequence(home: Path, ops: list[tuple[Any, ...]]) -> Model:
    model = Model()
    async with open_engine(home, params=TINY) as engine:
        for op in ops:
            await apply(engine, model, op)
            await check_model(engine, model)
        before = await snapshot(engine)
    assert verify_store(home) == []
    assert_money_conserved(home)
    assert (
        scalar(home, "SELECT COUNT(*) FROM ptos WHERE pts_sold > pts_offered OR pts_sold < 0") == 0
    )
    async with open_engine(home, params=TINY) as engine:
        after = await snapshot(engine)
        for pid in before.players:
            assert await engine.get_player(pid) == before.players[pid]
        for gid in before.ptos:
            assert await engine.get_pto(gid) == before.ptos[gid]
        for token_id, token in before.tokens.items():
            assert await engine.get_token(token_id) == token
        await check_model(engine, model)
    assert after == before
    assert verify_store(home) == []
    return model


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(prelude=PRELUDE, ops=st.lists(OPERATIONS, min_size=15, max_size=50))
def test_random_operation_sequences_keep_every_invariant(
    prelude: list[tuple[Any, ...]], ops: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as directory:

        async def main() -> Model:
            with anyio.fail_after(60):
                return await run_sequence(Path(directory), [*prelude, *ops])

        model = anyio.run(main)
    for status in sorted({pto.status for pto in model.ptos.values()}):
        event(f"reached {status}")


def test_a_scripted_sequence_through_every_lifecycle() -> None:
    """The same machinery on a fixed script that surely visits every state."""
    ops: list[tuple[Any, ...]] = [
        ("register", "p0", Decimal("100")),
        ("register", "p1", Decimal("50")),
        ("register", "p2", Decimal("0")),
        ("launch", "g0", "p2", 3, 1000, 2, 5),
        ("launch", "g1", "p2", 4, 500, 1, 3),
        ("buy", "p0", "g0", 2),
        ("play", "p0", "g0", 1),  # refused: still funding
        ("buy", "p1", "g0", 2),  # refused: one share left
        ("buy", "p1", "g0", 1),  # sells out
        ("buy", "p1", "g1", 1),
        ("play", "p0", "g0", 1.5),
        ("spend_atu", "g0", 1),
        ("advance", 2),
        ("advance", 1),  # g1 fails: refund p1
        ("transfer", "p0", "p1", Decimal("0.01")),
        ("transfer", "p0", "p0", Decimal("1")),  # refused
        ("spend_atu", "g0", 1),  # completes: pays the creator
        ("play", "p1", "g0", 1),
        ("play", "p1", "g0", 0.5),  # refused: nothing left
        ("deposit", "ghost", Decimal("1")),  # refused
        ("register", "g0", Decimal("1")),  # refused: a PTO's id
    ]
    with tempfile.TemporaryDirectory() as directory:
        model = anyio.run(run_sequence, Path(directory), ops)
    assert {pto.status for pto in model.ptos.values()} == {"completed", "failed"}


# -- an actor that crashes ------------------------------------------------------------


async def boom(*args: object, **kwargs: object) -> object:
    raise RuntimeError("boom")


async def crash_fixture(engine: Engine) -> None:
    await engine.register_player("creator")
    await engine.register_player("alice", usd_obbba=100)
    await launch(engine, "pto_crash", offered=4, price=5, atu=10)
    await engine.buy_pts("alice", "pto_crash", 4)
    await engine.play("alice", "pto_crash", 1)
    await engine.spend_atu("pto_crash", 3)


def in_group(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(in_group(inner, kind) for inner in exc.exceptions)
    return False


def boom_in(exc: BaseException) -> bool:
    if isinstance(exc, RuntimeError) and str(exc) == "boom":
        return True
    if isinstance(exc, ActorBroken):
        return isinstance(exc.__cause__, RuntimeError) and str(exc.__cause__) == "boom"
    if isinstance(exc, BaseExceptionGroup):
        return any(boom_in(inner) for inner in exc.exceptions)
    return False


@pytest.mark.asyncio
async def test_a_pto_actor_that_raises_breaks_loudly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    caller_saw: list[BaseException] = []
    with anyio.fail_after(120):
        with pytest.raises((ActorBroken, RuntimeError, BaseExceptionGroup)) as block:
            async with open_engine(tmp_path, params=TINY) as engine:
                await crash_fixture(engine)
                before = await snapshot(engine)
                world = await engine.world("pto_crash")
                rows = (await engine.stats())["transactions"]["count"]
                monkeypatch.setattr(PTOActor, "_spend_atu", boom)
                try:
                    await engine.spend_atu("pto_crash", 7)
                except ActorBroken as exc:
                    caller_saw.append(exc)
    assert boom_in(block.value), block.value
    assert len(caller_saw) == 1
    assert isinstance(caller_saw[0].__cause__, RuntimeError)
    assert str(caller_saw[0].__cause__) == "boom"

    monkeypatch.undo()
    assert verify_store(tmp_path) == []
    assert tx_count(tmp_path) == rows
    with anyio.fail_after(120):
        async with open_engine(tmp_path, params=TINY) as engine:
            assert await snapshot(engine) == before
            reopened = await engine.world("pto_crash")
            assert reopened["theta"].tobytes() == world["theta"].tobytes()
            # The reopened engine works: the spend that crashed can be made now.
            assert (await engine.spend_atu("pto_crash", 7)).status == "completed"
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)


@pytest.mark.asyncio
async def test_a_player_actor_that_raises_mid_session_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    caller_saw: list[BaseException] = []
    with anyio.fail_after(120):
        with pytest.raises((ActorBroken, RuntimeError, BaseExceptionGroup)) as block:
            async with open_engine(tmp_path, params=TINY) as engine:
                await crash_fixture(engine)
                before = await snapshot(engine)
                world = await engine.world("pto_crash")
                rows = (await engine.stats())["transactions"]["count"]
                sessions = (await engine.stats())["play_sessions"]["count"]
                monkeypatch.setattr(PlayerActor, "_session_events", lambda self, s: boom_now())
                try:
                    await engine.play("alice", "pto_crash", 2)
                except ActorBroken as exc:
                    caller_saw.append(exc)
                # Either the caller got ActorBroken, or the host's scope was cancelled before
                # the answer came back; either way the error must leave the block.
                await anyio.sleep(1)
                pytest.fail("the engine's block went on after an actor crashed")
    assert boom_in(block.value), block.value
    for exc in caller_saw:  # the crash itself, or the PTO actor cancelled with the group
        assert boom_in(exc) or isinstance(exc.__cause__, anyio.get_cancelled_exc_class())

    monkeypatch.undo()
    assert verify_store(tmp_path) == []
    assert tx_count(tmp_path) == rows
    assert scalar(tmp_path, "SELECT COUNT(*) FROM play_sessions") == sessions
    with anyio.fail_after(120):
        async with open_engine(tmp_path, params=TINY) as engine:
            assert await snapshot(engine) == before
            reopened = await engine.world("pto_crash")
            assert reopened["theta"].tobytes() == world["theta"].tobytes()
            result = await engine.play("alice", "pto_crash", 2)
            assert (await engine.get_player("alice")).xUSD_balance == (
                before.players["alice"].xUSD_balance + result.xUSD_earned
            )
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_crash_after_the_commit_keeps_the_committed_unit_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PTO actor crashes after a session's unit committed: the caller hears ActorBroken,
    and the reopened store holds the whole session (balances, token, pool, ledger row)."""
    with anyio.fail_after(120):
        with pytest.raises((ActorBroken, RuntimeError, BaseExceptionGroup)) as block:
            async with open_engine(tmp_path, params=TINY) as engine:
                await crash_fixture(engine)
                before = await snapshot(engine)
                monkeypatch.setattr(PTOActor, "_world_changed", lambda self: boom_now())
                try:
                    await engine.play("alice", "pto_crash", 2)
                except ActorBroken as exc:
                    assert boom_in(exc)
                await anyio.sleep(1)
                pytest.fail("the engine's block went on after an actor crashed")
    assert boom_in(block.value), block.value
    monkeypatch.undo()
    assert verify_store(tmp_path) == []
    with anyio.fail_after(120):
        async with open_engine(tmp_path, params=TINY) as engine:
            after = await snapshot(engine)
    alice, was = after.players["alice"], before.players["alice"]
    assert alice.total_play_time == was.total_play_time + 2
    earned = alice.xUSD_balance - was.xUSD_balance
    assert after.ptos["pto_crash"].xUSD_pool == before.ptos["pto_crash"].xUSD_pool + earned
    (token,) = after.tokens.values()
    assert token.hours_played == 3
    assert token.xUSD_accumulated == alice.xUSD_balance
    assert_money_conserved(tmp_path)


def boom_now() -> None:
    raise RuntimeError("boom")


# -- events -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_events_arrive_in_commit_order(tmp_path: Path) -> None:
    async with open_engine(tmp_path, params=TINY) as engine:
        async with engine.events() as events:
            await engine.register_player("creator")
            await engine.register_player("alice", usd_obbba=100)
            await launch(engine, "pto_ev", offered=3, price=10)
            await engine.buy_pts("alice", "pto_ev", 1)
            await engine.buy_pts("alice", "pto_ev", 2)
            result = await engine.play("alice", "pto_ev", 2)
            await engine.spend_atu("pto_ev", 100)
            expected = [
                "player_registered",
                "player_registered",
                "pto_launched",
                "shares_bought",
                "shares_bought",
                "pto_funded",
                "session_played",
                *(["phase_lock"] if result.phase_locks else []),
                "atu_spent",
                "pto_completed",
            ]
            with anyio.fail_after(60):
                got = [await events.receive() for _ in expected]
            assert [e.kind for e in got] == expected
            assert await drain(events) == []
        registered, launched, first, second, funded, played = got[1:7]
        assert isinstance(registered, ev.PlayerRegistered)
        assert (registered.player_id, registered.usd_obbba) == ("alice", Decimal("100.00"))
        assert isinstance(launched, ev.PTOLaunched)
        assert launched.funding_goal == Decimal("30.00")
        assert isinstance(first, ev.SharesBought) and isinstance(second, ev.SharesBought)
        assert (first.pts_sold, second.pts_sold) == (1, 3)
        assert second.price == Decimal("20.00")
        assert isinstance(funded, ev.PTOFunded)
        assert funded.funding_raised == Decimal("30.00")
        assert isinstance(played, ev.SessionPlayed)
        assert played.session_id == result.session_id
        assert played.xUSD_earned == result.xUSD_earned
        completed = got[-1]
        assert isinstance(completed, ev.PTOCompleted)
        assert completed.payout == Decimal("30.00")
        assert completed.to_dict()["payout"] == "30.00"


@pytest.mark.asyncio
async def test_a_subscriber_that_never_reads_does_not_block_and_learns_what_it_missed(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path, params=TINY) as engine:
        await engine.register_player("alice")
        async with engine.events(buffer=2) as slow, engine.events() as fast:
            with anyio.fail_after(60):
                for _ in range(20):
                    await engine.deposit("alice", 1)
            assert [e.kind for e in await drain(fast)] == ["deposited"] * 20
            first = await drain(slow)
            assert [e.kind for e in first] == ["deposited", "deposited"]
            await engine.deposit("alice", 2)
            with anyio.fail_after(60):
                dropped = await slow.receive()
                latest = await slow.receive()
            assert isinstance(dropped, ev.EventsDropped)
            assert dropped.count == 18
            assert isinstance(latest, ev.Deposited)
            assert latest.amount == Decimal("2.00")
        assert (await engine.get_player("alice")).usd_obbba_balance == Decimal("22.00")


@pytest.mark.asyncio
async def test_subscriptions_end_when_the_engine_closes(tmp_path: Path) -> None:
    async with open_engine(tmp_path, params=TINY) as engine:
        subscription = engine.events()
        await engine.register_player("alice")
    received = []
    with anyio.fail_after(60):
        async for event in subscription:
            received.append(event.kind)
    assert received == ["player_registered"]
    await subscription.aclose()


# -- reopening ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_state_survives_close_and_reopen_exactly(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine:
        await engine.register_player("creator", usd_obbba=Decimal("0.01"))
        for name, money in (("alice", "5000"), ("bob", "123.45"), ("carol", "77.77")):
            await engine.register_player(name, usd_obbba=Decimal(money), tau_k=2.5)
        await launch(engine, "pto_done", offered=3, price=Decimal("1.11"), atu=5)
        await launch(engine, "pto_live", offered=5, price=Decimal("2.50"), atu=50)
        await launch(
            engine, "pto_open", offered=50, price=Decimal("3"), deadline=timedelta(hours=30)
        )
        await launch(
            engine, "pto_dead", offered=50, price=Decimal("4"), deadline=timedelta(hours=2)
        )
        await engine.buy_pts("alice", "pto_done", 2)
        await engine.buy_pts("bob", "pto_done", 1)
        await engine.buy_pts("alice", "pto_live", 5)
        await engine.buy_pts("carol", "pto_open", 3)
        await engine.buy_pts("bob", "pto_dead", 2)
        await engine.play("alice", "pto_done", 1.5)
        await engine.play("bob", "pto_done", 1)
        await engine.play("alice", "pto_live", 2.25)
        await engine.spend_atu("pto_done", 5)
        await engine.spend_atu("pto_live", 7)
        await engine.transfer("alice", "carol", Decimal("0.99"))
        assert await engine.advance(3) == ["pto_dead"]
        before = await snapshot(engine)
        worlds = {pid: await engine.world(pid) for pid in (await engine.pto_ids())}
        stats = await engine.stats()
    assert {p.pto_id: p.status for p in before.ptos.values()} == {
        "pto_dead": "failed",
        "pto_done": "completed",
        "pto_live": "in_progress",
        "pto_open": "funding",
    }
    assert verify_store(tmp_path) == []

    async with open_engine(tmp_path) as engine:
        assert await snapshot(engine) == before
        assert await engine.stats() == stats
        for pto_id, arrays in worlds.items():
            again = await engine.world(pto_id)
            for name in arrays:
                assert again[name].tobytes() == arrays[name].tobytes()
        # Life goes on after a reopen: new tokens get fresh ids, deadlines still fire.
        token = await engine.buy_pts("alice", "pto_open", 1)
        assert token.token_id not in before.tokens
        assert await engine.advance(30) == ["pto_open"]
        assert (await engine.get_player("carol")).usd_obbba_balance == before.players[
            "carol"
        ].usd_obbba_balance + Decimal("9.00")
        with pytest.raises(AlreadyExists):
            await engine.register_player("alice")
        after = await snapshot(engine)
    assert verify_store(tmp_path) == []
    assert_money_conserved(tmp_path)

    async with open_engine(tmp_path) as engine:
        assert await snapshot(engine) == after


@pytest.mark.asyncio
async def test_a_closed_engine_refuses_calls(tmp_path: Path) -> None:
    async with open_engine(tmp_path, params=TINY) as engine:
        await engine.register_player("alice", usd_obbba=1)
    calls: list[Call] = [
        lambda e: e.get_player("alice"),
        lambda e: e.deposit("alice", 1),
        lambda e: e.register_player("bob"),
        lambda e: e.stats(),
        lambda e: e.advance(1),
    ]
    for call in calls:
        with pytest.raises(ActorClosed):
            await call(engine)
    assert verify_store(tmp_path) == []
