"""Every operation's rows, read back through the protocol; events numbered and published
in commit order."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ublox_sim.core import events as ev
from ublox_sim.core.money import USD, XUSD
from ublox_sim.core.records import PTO, Player, PlaySession, Transaction
from ublox_sim.store.backend import Backend, Unit

from . import workload as w
from .conftest import BackendFactory
from .workload import ALICE, BOB, CAROL, DAVE

pytestmark = pytest.mark.anyio


def ledger(rows: list[Transaction]) -> list[tuple[object, ...]]:
    return [
        (t.tx_type, t.from_player, t.to_player, t.amount, t.currency, t.pto_id, t.timestamp)
        for t in rows
    ]


async def all_ledger(backend: Backend) -> list[tuple[object, ...]]:
    return ledger(await backend.load_all(Transaction))


async def balance(backend: Backend, player_id: str) -> int:
    player = await backend.load_player(player_id)
    assert player is not None
    return player.usd_obbba_balance


async def new_pto(backend: Backend, pto: PTO) -> None:
    await backend.commit(w.launch(pto))


async def test_register_writes_the_record_and_its_opening_deposit(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        assert await backend.is_empty()
        registered = w.register(ALICE, 12_345)
        await backend.commit(Unit((registered,)))
        await backend.commit(Unit((w.register(BOB, 0),)))
        assert isinstance(registered, ev.PlayerRegistered)
        assert await backend.load_player(ALICE) == registered.record
        assert await backend.exists(ALICE)
        assert not await backend.exists("nobody")
        assert not await backend.is_empty()
        # A zero opening balance writes no ledger row.
        assert await all_ledger(backend) == [
            ("deposit", None, ALICE, 12_345, USD, None, registered.at)
        ]
        assert [p.player_id for p in await backend.load_all(Player)] == [ALICE, BOB]


async def test_deposit_and_transfer_move_balances_with_their_ledger_rows(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(ALICE, 10_000), w.register(BOB, 0))))
        dep = w.deposit(BOB, 2_550)
        tra = w.transfer(ALICE, BOB, 3_333)
        await backend.commit(Unit((dep,)))
        await backend.commit(Unit((tra,)))
        assert await balance(backend, ALICE) == 10_000 - 3_333
        assert await balance(backend, BOB) == 2_550 + 3_333
        rows = await all_ledger(backend)
        assert rows[1:] == [
            ("deposit", None, BOB, 2_550, USD, None, dep.at),
            ("transfer", ALICE, BOB, 3_333, USD, None, tra.at),
        ]
        # Either side of a transfer sees it in its page, oldest first.
        of_bob = await backend.transactions_of(BOB)
        assert [t.tx_type for t in of_bob] == ["deposit", "transfer"]
        assert await backend.transactions_of(BOB, after=of_bob[0].tx_id or 0) == of_bob[1:]
        assert await backend.transactions_of(BOB, limit=1) == of_bob[:1]
        assert [t.tx_type for t in await backend.transactions_of(ALICE)] == [
            "deposit",
            "transfer",
        ]


async def test_launch_buy_and_fund(backend_factory: BackendFactory, location: Path) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(DAVE), w.register(ALICE, 20_000))))
        pto = w.pto_record("pto-a", DAVE, offered=10, price=1_500)
        await new_pto(backend, pto)
        assert await backend.load_pto("pto-a") == pto
        assert await backend.exists("pto-a")
        assert await backend.load_tokens("pto-a") == []

        t1 = w.token(pto, ALICE, 1, 4)
        t2 = w.token(pto, ALICE, 2, 6)
        await backend.commit(Unit((w.buy(pto, t1, 4),)))
        after_one = await backend.load_pto("pto-a")
        assert after_one is not None
        assert (after_one.pts_sold, after_one.funding_raised, after_one.status) == (
            4,
            6_000,
            "funding",
        )
        await backend.commit(Unit((w.buy(pto, t2, 10), w.funded("pto-a", 15_000))))
        after = await backend.load_pto("pto-a")
        assert after == dataclasses.replace(
            pto, pts_sold=10, funding_raised=15_000, status="in_progress"
        )
        assert await backend.load_token(t1.token_id) == t1
        assert await backend.load_tokens("pto-a") == [t1, t2]
        assert await balance(backend, ALICE) == 20_000 - 15_000
        assert (await all_ledger(backend))[1:] == [
            ("investment", ALICE, "pto-a", 6_000, USD, "pto-a", t1.purchase_time),
            ("investment", ALICE, "pto-a", 9_000, USD, "pto-a", t2.purchase_time),
        ]


async def test_failure_refunds_every_holder_in_order(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(
            Unit((w.register(DAVE), w.register(BOB, 5_000), w.register(ALICE, 5_000)))
        )
        pto = w.pto_record("pto-b", DAVE, offered=10, price=500)
        await new_pto(backend, pto)
        await backend.commit(Unit((w.buy(pto, w.token(pto, BOB, 1, 2), 2),)))
        await backend.commit(Unit((w.buy(pto, w.token(pto, ALICE, 2, 3), 5),)))
        fail = w.failed("pto-b", ((ALICE, 1_500), (BOB, 1_000)))
        await backend.commit(Unit((fail,)))
        failed = await backend.load_pto("pto-b")
        assert failed is not None and failed.status == "failed"
        assert await balance(backend, ALICE) == 5_000
        assert await balance(backend, BOB) == 5_000
        assert (await all_ledger(backend))[-2:] == [
            ("refund", "pto-b", ALICE, 1_500, USD, "pto-b", fail.at),
            ("refund", "pto-b", BOB, 1_000, USD, "pto-b", fail.at),
        ]
        assert await backend.verify() == []


async def test_atu_and_completion_pay_the_creator(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(DAVE), w.register(ALICE, 10_000))))
        pto = w.pto_record("pto-a", DAVE, offered=2, price=1_000, atu_required=5)
        await new_pto(backend, pto)
        await backend.commit(
            Unit((w.buy(pto, w.token(pto, ALICE, 1, 2), 2), w.funded("pto-a", 2_000)))
        )
        await backend.commit(Unit((w.atu("pto-a", 3, 3, 5),)))
        mid = await backend.load_pto("pto-a")
        assert mid is not None and (mid.atu_spent, mid.status) == (3, "in_progress")
        done = w.completed("pto-a", DAVE, 2_000)
        await backend.commit(Unit((w.atu("pto-a", 2, 5, 5), done)))
        end = await backend.load_pto("pto-a")
        assert end is not None
        assert (end.atu_spent, end.status, end.completion_time) == (5, "completed", done.at)
        assert await balance(backend, DAVE) == 2_000
        assert (await all_ledger(backend))[-1] == (
            "pto_completion",
            "pto-a",
            DAVE,
            2_000,
            USD,
            "pto-a",
            done.at,
        )
        assert await backend.verify() == []


async def test_a_session_writes_player_tokens_pto_session_and_xusd(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(DAVE), w.register(ALICE, 10_000))))
        pto = w.pto_record("pto-a", DAVE, offered=4, price=1_000)
        await new_pto(backend, pto)
        t1, t2 = w.token(pto, ALICE, 1, 1), w.token(pto, ALICE, 2, 3)
        await backend.commit(Unit((w.buy(pto, t1, 1),)))
        await backend.commit(Unit((w.buy(pto, t2, 4), w.funded("pto-a", 4_000))))
        played = w.session(
            "pto-a",
            ALICE,
            hours=2.5,
            quality=0.8,
            xusd=20_000,
            shares=((t1.token_id, 1.0, 8_000), (t2.token_id, 1.5, 12_000)),
            locks=2,
            aci=0.6,
        )
        committed = await backend.commit(Unit((played, w.phase_lock("pto-a", ALICE, 2))))
        numbered = committed.events[0]
        assert isinstance(numbered, ev.SessionPlayed)

        player = await backend.load_player(ALICE)
        assert player is not None
        assert (
            player.xUSD_balance,
            player.total_play_time,
            player.phase_locks_count,
            player.memory_depth,
            player.quality_score,
            player.tau_k,
            player.phase,
            player.coherence,
        ) == (20_000, 2.5, 2, 1.25, 0.8, played.tau_k, 1.25, 0.75)
        assert player.usd_obbba_balance == 6_000
        tokens = {t.token_id: t for t in await backend.load_tokens("pto-a")}
        assert (tokens[t1.token_id].hours_played, tokens[t1.token_id].xUSD_accumulated) == (
            1.0,
            8_000,
        )
        assert (tokens[t2.token_id].hours_played, tokens[t2.token_id].xUSD_accumulated) == (
            1.5,
            12_000,
        )
        after = await backend.load_pto("pto-a")
        assert after is not None and (after.xUSD_pool, after.aci_coherence_score) == (20_000, 0.6)
        sessions: list[PlaySession] = await backend.load_all(PlaySession)
        assert len(sessions) == 1
        assert dataclasses.replace(sessions[0], session_id=None) == PlaySession(
            None, "pto-a", ALICE, 2.5, 0.8, 20_000, played.at, 2
        )
        assert numbered.session_id == sessions[0].session_id
        assert (await all_ledger(backend))[-1] == (
            "xusd_composition",
            None,
            ALICE,
            20_000,
            XUSD,
            "pto-a",
            played.at,
        )
        # The world's step moves only the PTO's coherence, and is not logged.
        step = await backend.commit(Unit((w.stepped("pto-a", 0.7),)))
        assert step.events[0].seq == 0
        stepped = await backend.load_pto("pto-a")
        assert stepped is not None and stepped.aci_coherence_score == 0.7
        assert await backend.verify() == []


async def test_events_are_numbered_logged_and_published_in_commit_order(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        _, newest_before = await backend.event_log_span()
        assert newest_before == 0
        async with backend.bus.subscribe(buffer=1000) as sub:
            game = await w.full_workload(backend)
            landed = [e for unit in game.committed for e in unit if e.logged]
            published = await w.published_through(sub, landed)
        seqs = [e.seq for e in landed]
        # Numbered from 1, with no gap, in the order the units and their events came.
        assert seqs == list(range(1, len(landed) + 1))
        # In each unit, its events in the unit's order.
        assert [e.kind for e in landed] == [
            *["player_registered"] * 4,
            "deposited",
            "transferred",
            "pto_launched",
            "pto_launched",
            "shares_bought",
            "shares_bought",
            "pto_funded",
            "shares_bought",
            "pto_failed",
            "session_played",
            "phase_lock",
            "atu_spent",
            "atu_spent",
            "pto_completed",
        ]
        assert w.as_published(published) == w.as_published(landed)
        assert all(e.seq == 0 for unit in game.committed for e in unit if not e.logged)
        assert await backend.event_log_span() == (1, len(landed))
        log = await backend.events_after(0)
        assert [(seq, kind) for seq, kind, _ in log] == [(e.seq, e.kind) for e in landed]
        # The log holds what was published (a session's id included), field for field.
        for (seq, _, payload), event in zip(log, landed, strict=True):
            assert ev.from_log(seq, payload) == json.loads(json.dumps(event.to_dict()))
        assert await backend.events_after(3, limit=2) == log[3:5]
        assert await backend.events_after(len(landed)) == []


async def test_numbers_continue_after_a_reopen(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        first = await backend.commit(Unit((w.register(ALICE, 100), w.deposit(ALICE, 1))))
    async with backend_factory.open(location) as backend:
        assert await backend.event_log_span() == (1, 2)
        again = await backend.commit(Unit((w.deposit(ALICE, 2), w.deposit(ALICE, 3))))
        assert [e.seq for e in first.events + again.events] == [1, 2, 3, 4]
        assert await balance(backend, ALICE) == 106


async def test_leaderboard_orders_by_xusd_then_id(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        # Registered out of id order, so that an order by insertion shows.
        for pid, xusd in (("zed", 500), ("mia", 0), ("amy", 500), ("kim", 900), ("bea", 0)):
            await backend.commit(Unit((w.register(pid, 0, xusd=xusd),)))
        board = await backend.leaderboard(10)
        assert [p.player_id for p in board] == ["kim", "amy", "zed", "bea", "mia"]
        assert [p.player_id for p in await backend.leaderboard(2)] == ["kim", "amy"]
        assert await backend.leaderboard(0) == []


async def test_ptos_past_deadline(backend_factory: BackendFactory, location: Path) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(DAVE),)))
        for pto_id, deadline in (("pto-d", w.at(120)), ("pto-c", w.at(60)), ("pto-e", w.at(0))):
            await new_pto(backend, w.pto_record(pto_id, DAVE, deadline=deadline))
        await backend.commit(Unit((w.funded("pto-e", 0),)))  # no longer funding
        assert await backend.ptos_past_deadline(w.at(30)) == []
        assert await backend.ptos_past_deadline(w.at(60)) == ["pto-c"]  # at it: past
        assert await backend.ptos_past_deadline(w.at(500)) == ["pto-c", "pto-d"]


async def test_stats_after_the_full_workload(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await w.full_workload(backend)
        stats = await backend.stats()
        assert stats["players"]["count"] == 4
        assert stats["players"]["usd_obbba_total"] == (89_000 + 51_000 + 30_000 + 10_000) / 100
        assert stats["players"]["xUSD_total"] == 100.0
        assert stats["ptos"]["count"] == 2
        assert stats["ptos"]["by_status"] == {"completed": 1, "failed": 1}
        assert stats["pts_tokens"]["count"] == 3
        assert stats["play_sessions"]["count"] == 1
        assert stats["transactions"]["volume"]["investment/USD-OBBBA"] == 110.0
        assert stats["transactions"]["count"] == len(await backend.load_all(Transaction))


async def test_the_full_workload_verifies_and_reads_back(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        game = await w.full_workload(backend)
        assert await backend.verify() == []
        balances = {p.player_id: p.usd_obbba_balance for p in await backend.load_all(Player)}
        assert balances == {ALICE: 89_000, BOB: 51_000, CAROL: 30_000, DAVE: 10_000}
        for token_id, bought in game.tokens.items():
            stored = await backend.load_token(token_id)
            assert stored is not None
            assert (stored.holder, stored.purchase_price) == (bought.holder, bought.purchase_price)
        assert [p.status for p in await backend.load_all(PTO)] == ["completed", "failed"]
