"""Races decided by the database, deterministically: two engines in one process share
one PostgreSQL database (``shared``), one of them holding a stale actor (#14 item 3).
A stale actor's unit is refused as a ``Conflict`` by the rows' guards; the actor reloads
and decides again. The guards never fire with one writer (SQLite's goldens are pinned by
test_golden_export)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster_helpers import launch

from ublox_sim.actors.messages import CheckDeadline
from ublox_sim.core import events as ev
from ublox_sim.core.clock import SimClock
from ublox_sim.core.economy import tau_k_after
from ublox_sim.core.errors import (
    Conflict,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    UnitRejected,
    WorldLeased,
    conflict_of,
)
from ublox_sim.core.records import Transaction
from ublox_sim.core.world import step_world
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Unit
from ublox_sim.store.open import open_backend, resolve_store
from ublox_sim.store.postgres.backend import CLUSTER_ENV, PostgresBackend
from ublox_sim.store.postgres.lease import DEFAULT_TTL
from ublox_sim.store.sqlite.rows import TAU_K_STEP

pytestmark = pytest.mark.anyio
START = datetime(2030, 1, 1, tzinfo=UTC)
LEASE_TTL = timedelta(seconds=DEFAULT_TTL).total_seconds() / 3600  # in SimClock hours


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default: processes share a PostgreSQL database unless told otherwise."""
    monkeypatch.delenv(CLUSTER_ENV, raising=False)


@asynccontextmanager
async def _two(url: str) -> AsyncIterator[tuple[Engine, Engine]]:
    async with (
        Engine.open(store=url, seed=1, clock=SimClock(START)) as one,
        Engine.open(store=url, seed=1, clock=SimClock(START)) as two,
    ):
        yield one, two


def _lease_clock(*engines: Engine) -> SimClock:
    """The processes' lease clock (their wall clocks), moved by the test."""
    clock = SimClock(START)
    for engine in engines:
        assert engine.store.leases is not None  # type: ignore[attr-defined]
        engine.store.leases.clock = clock  # type: ignore[attr-defined]
    return clock


async def test_a_stale_pto_cannot_sell_what_another_process_sold(pg_url: str, shared: None) -> None:
    async with _two(pg_url) as (one, two):
        await one.register_player("creator")
        for name in ("x", "y"):
            await one.register_player(name, usd_obbba=20)
        await launch(one, "pto-a")
        assert (await one.get_pto("pto-a")).pts_sold == 0  # one's actor is active now
        await two.buy_pts("x", "pto-a", 10)  # sold out and funded, by the other process
        # one's PTO believes 10 shares are left: its unit is refused as a conflict, the
        # actor reloads, and the purchase is decided again (now a business refusal).
        with pytest.raises(InvalidState):
            await one.buy_pts("y", "pto-a", 1)
        assert one._ptos.active("pto-a").reloads >= 1  # type: ignore[union-attr]
        assert (await one.get_player("y")).usd_obbba_balance == 20
        pto = await one.get_pto("pto-a")
        assert (pto.pts_sold, pto.status, pto.funding_raised) == (10, "in_progress", 10)
        assert await one.store.verify() == []


async def test_a_stale_pto_sells_on_after_reloading(pg_url: str, shared: None) -> None:
    async with _two(pg_url) as (one, two):
        await one.register_player("creator")
        for name in ("x", "y"):
            await one.register_player(name, usd_obbba=20)
        await launch(one, "pto-b")
        await one.get_pto("pto-b")
        token = await two.buy_pts("x", "pto-b", 4)
        bought = await one.buy_pts("y", "pto-b", 6)  # decided again on 4 sold: funds it
        assert bought.token_id != token.token_id
        pto = await two.get_pto("pto-b")  # two's copy reloads for the read
        assert (pto.pts_sold, pto.status) == (10, "in_progress")
        assert await one.store.verify() == []


async def test_a_deadline_seen_by_two_processes_refunds_once(pg_url: str, shared: None) -> None:
    async with _two(pg_url) as (one, two):
        await one.register_player("creator")
        await one.register_player("x", usd_obbba=20)
        await launch(one, "pto-c")
        await one.buy_pts("x", "pto-c", 3)
        await two.get_pto("pto-c")  # two's copy: funding, 3 sold
        for engine in (one, two):
            engine.clock.advance(2)
        assert await one.fire_deadlines() == ["pto-c"]
        assert await two.fire_deadlines() == []  # nothing left past its deadline
        # two's stale actor decides the deadline itself: refused, reloaded, nothing to do.
        assert await two._ask_pto("pto-c", CheckDeadline(at=two._now())) is False
        refunds = [t for t in await one.store.load_all(Transaction) if t.tx_type == "refund"]
        assert [(t.to_player, t.amount) for t in refunds] == [("x", 300)]
        assert (await two.get_player("x")).usd_obbba_balance == 20
        assert await one.store.verify() == []


async def test_a_shared_player_counts_what_another_process_did(pg_url: str, shared: None) -> None:
    async with _two(pg_url) as (one, two):
        for name in ("a", "b"):
            await one.register_player(name, usd_obbba=20)
        assert (await one.get_player("a")).usd_obbba_balance == 20  # one's copy
        await two.transfer("a", "b", 15)
        with pytest.raises(InsufficientFunds):  # not decided on one's stale 20
            await one.transfer("a", "b", 10)
        await two.deposit("a", 30)
        await one.transfer("a", "b", 30)  # 35 now, though one never saw the deposit
        assert (await two.get_player("a")).usd_obbba_balance == 5
        assert (await one.get_player("b")).usd_obbba_balance == 65
        assert await one.store.verify() == []


@pytest.mark.parametrize("backend_kind", ["sqlite", "postgresql"])
async def test_a_stale_session_or_debit_is_a_conflict_on_both_backends(
    backend_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    spec = request.getfixturevalue("pg_url") if backend_kind == "postgresql" else tmp_path / "h"
    async with Engine.open(store=spec, seed=1, clock=SimClock(START)) as engine:
        await engine.register_player("creator")
        await engine.register_player("p", usd_obbba=5)
        await launch(engine, "pto-d", shares=1)
        await engine.buy_pts("p", "pto-d", 1)
        at = engine._now()
        # A session decided on a tau_k the row does not hold (1.0): its guard refuses it.
        stale = ev.SessionPlayed(
            at=at,
            pto_id="pto-d",
            player_id="p",
            session_id=0,
            hours=1.0,
            quality=0.5,
            xUSD_earned=Decimal("0"),
            phase_locks=0,
            tau_k=tau_k_after(2.0, 0.5),
        )
        overdraft = ev.Transferred(at=at, from_id="p", to_id="creator", amount=Decimal("9"))
        for event in (stale, overdraft):
            with pytest.raises(UnitRejected) as refused:
                await engine.store.commit(Unit((event,)))
            assert isinstance(conflict_of(refused.value), Conflict)
        fresh = ev.Transferred(at=at, from_id="p", to_id="nobody", amount=Decimal("1"))
        with pytest.raises(UnitRejected) as refused:  # a business refusal stays one
            await engine.store.commit(Unit((fresh,)))
        assert not isinstance(conflict_of(refused.value), Conflict)
        assert await engine.store.verify() == []


def test_the_session_guard_computes_tau_k_exactly_as_the_economy() -> None:
    a, b, c = TAU_K_STEP
    draw = random.Random(14)
    for _ in range(10_000):
        tau, quality = draw.uniform(0, 20), draw.random()
        assert a * tau + b * (c * quality) == tau_k_after(tau, quality)


def test_open_backend_shares_a_database_unless_told_otherwise(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def shared(**options: Any) -> bool:
        backend = open_backend(resolve_store(pg_url), **options)
        assert isinstance(backend, PostgresBackend)
        return backend.shared

    monkeypatch.delenv(CLUSTER_ENV, raising=False)
    assert shared()
    assert not shared(shared=False)
    assert not shared(hold_commits=True)  # a scenario run holds the database alone
    monkeypatch.setenv(CLUSTER_ENV, "0")
    assert not shared()
    assert shared(shared=True)
    monkeypatch.setenv(CLUSTER_ENV, "1")
    assert shared()
    assert not shared(hold_commits=True)
    with pytest.raises(InvalidInput, match="needs the database to itself"):
        shared(shared=True, hold_commits=True)
    monkeypatch.setenv(CLUSTER_ENV, "yes")
    with pytest.raises(InvalidInput, match=r"UBLOX_CLUSTER must be 1 \(shared\) or 0"):
        shared()
    with pytest.raises(InvalidInput, match="only a PostgreSQL store is shared"):
        open_backend(tmp_path / "home", shared=True)


async def test_a_completion_seen_by_two_processes_pays_once_and_sessions_play(
    pg_url: str, shared: None
) -> None:
    async with _two(pg_url) as (one, two):
        await one.register_player("creator")
        await one.register_player("x", usd_obbba=20)
        await launch(one, "pto-e", shares=4)
        await one.buy_pts("x", "pto-e", 4)  # funded
        for engine in (one, two):  # both copies: in progress, no ATU spent
            assert (await engine.get_pto("pto-e")).atu_spent == 0
        lease_clock = _lease_clock(one, two)
        session = await two.play("x", "pto-e", 1.0)  # tau_k moves in two's process...
        lease_clock.advance(LEASE_TTL)  # (two's lease on the world runs out)
        again = await one.play("x", "pto-e", 1.0)  # ...and one's player starts from it
        assert again.session_id == session.session_id + 1
        assert (await one.spend_atu("pto-e", 5)).status == "completed"
        with pytest.raises(InvalidState):  # two's copy was in progress: decided again
            await two.spend_atu("pto-e", 1)
        payouts = [
            t for t in await one.store.load_all(Transaction) if t.tx_type == "pto_completion"
        ]
        assert [(t.to_player, t.amount) for t in payouts] == [("creator", 400)]
        assert (await two.get_player("creator")).usd_obbba_balance == 4
        assert await one.store.verify() == []


async def test_a_world_is_stepped_by_its_lease_holder_and_taken_over_after_the_ttl(
    pg_url: str, shared: None
) -> None:
    lease_clock = SimClock(START)  # the processes' wall clocks, moved by the test
    async with _two(pg_url) as (one, two):
        for engine in (one, two):
            assert engine.store.leases is not None  # type: ignore[attr-defined]
            engine.store.leases.clock = lease_clock  # type: ignore[attr-defined]
        await one.register_player("creator")
        await launch(one, "pto-w")
        world_id = (await one.get_pto("pto-w")).world_cdt_id
        await two.get_pto("pto-w")  # two's copy of the world: as launched
        await one.advance(1)
        await two.advance(1)  # one holds the lease: two steps nothing
        assert one.store.leases.held == {"pto-w"}  # type: ignore[attr-defined]
        assert two.store.leases.held == frozenset()  # type: ignore[attr-defined]

        # one stops ticking (as if killed): its lease runs out after the TTL, not before.
        one_world = await one.world("pto-w")
        await one.store._flush_worlds()  # type: ignore[attr-defined]
        lease_clock.advance(4.9 / 3600)
        await two.advance(1)
        assert two.store.leases.held == frozenset()  # type: ignore[attr-defined]
        lease_clock.advance(0.2 / 3600)
        committed = await two.store.load_world(world_id)
        np.testing.assert_array_equal(committed["theta"], one_world["theta"])
        await two.advance(1)
        assert two.store.leases.held == {"pto-w"}  # type: ignore[attr-defined]
        # Stepped from the last committed state, not from two's stale copy.
        steps = round(1 * two.params.steps_per_hour)
        expected = step_world(committed["theta"], committed["omega"], two.params, steps)
        np.testing.assert_array_equal((await two.world("pto-w"))["theta"], expected)
        await one.advance(1)  # back again: two holds it now
        assert one.store.leases.held == frozenset()  # type: ignore[attr-defined]


async def test_every_process_sees_every_process_events_in_commit_order(
    pg_url: str, shared: None
) -> None:
    async with _two(pg_url) as (one, two):
        async with one.events() as seen_by_one, two.events() as seen_by_two:
            await one.register_player("creator")
            await two.register_player("x", usd_obbba=20)
            await launch(one, "pto-f", shares=2)
            await two.buy_pts("x", "pto-f", 1)
            await one.buy_pts("x", "pto-f", 1)  # funds it
            last = (await one.store.event_log_span())[1]
            streams = []
            for seen in (seen_by_one, seen_by_two):
                events = []
                async for event in seen:
                    events.append(event)
                    if event.seq == last:
                        break
                streams.append([(e.seq, e.to_dict()["kind"]) for e in events])
        assert streams[0] == streams[1]
        assert [kind for _, kind in streams[0]] == [
            "player_registered",
            "player_registered",
            "pto_launched",
            "shares_bought",
            "shares_bought",
            "pto_funded",
        ]
        assert [seq for seq, _ in streams[0]] == list(range(1, last + 1))


async def _funded(engine: Engine, pto_id: str, *buyers: str) -> None:
    """A PTO in progress whose shares the buyers hold (2 each)."""
    await engine.register_player("creator")
    for name in buyers:
        await engine.register_player(name, usd_obbba=20)
    await launch(engine, pto_id, shares=2 * len(buyers))
    for name in buyers:
        await engine.buy_pts(name, pto_id, 2)


async def _world_row(engine: Engine, world_id: str) -> np.ndarray:
    await engine.store.flush_worlds()  # type: ignore[attr-defined]
    return (await engine.store.load_world(world_id))["theta"]


async def test_a_play_on_a_world_another_process_holds_is_refused_and_changes_nothing(
    pg_url: str, shared: None
) -> None:
    async with _two(pg_url) as (one, two):
        lease_clock = _lease_clock(one, two)
        await _funded(one, "pto-p", "x", "y")
        world_id = (await one.get_pto("pto-p")).world_cdt_id
        assert world_id is not None
        await one.play("x", "pto-p", 1.0)  # one takes the world's lease
        before = (await two.get_player("y"), await two.get_pto("pto-p"))
        theta = await _world_row(one, world_id)
        lease_clock.advance(LEASE_TTL / 2)
        with pytest.raises(WorldLeased) as refused:
            await two.play("y", "pto-p", 1.0)
        assert refused.value.holder == one.store.leases.holder  # type: ignore[attr-defined]
        assert refused.value.retry_after == pytest.approx(DEFAULT_TTL / 2)
        assert "retry in 2.5 s" in str(refused.value)
        with pytest.raises(WorldLeased):  # a batch too, whole
            await two.play_many("pto-p", [("y", 1.0), ("x", 1.0)])
        assert (await two.get_player("y"), await two.get_pto("pto-p")) == before
        np.testing.assert_array_equal(await _world_row(two, world_id), theta)
        holders = await one.store.leases.holders()  # type: ignore[attr-defined]
        assert holders == {"pto-p": (one.store.leases.holder, START.timestamp() + DEFAULT_TTL)}  # type: ignore[attr-defined]
        assert await one.store.verify() == []


async def test_an_expired_lease_is_taken_by_a_play_from_the_last_committed_state(
    pg_url: str, shared: None, tmp_path: Path
) -> None:
    async with Engine.open(store=tmp_path / "alone", seed=1, clock=SimClock(START)) as alone:
        await _funded(alone, "pto-t", "x")
        expected = [await alone.play("x", "pto-t", 1.0) for _ in range(2)]
        expected_world = await alone.world("pto-t")
    async with _two(pg_url) as (one, two):
        lease_clock = _lease_clock(one, two)
        await _funded(one, "pto-t", "x")
        await two.get_pto("pto-t")  # two's copy of the world: as launched
        first = await one.play("x", "pto-t", 1.0)
        # A holder's worlds reach the row by its background flush: the takeover starts
        # from the last flushed state. Wait for it (a holder that lived on would have).
        await one.store.flush_worlds()  # type: ignore[attr-defined]
        lease_clock.advance(LEASE_TTL)  # one stops renewing: its lease runs out
        second = await two.play("x", "pto-t", 1.0)  # takes it, reloads the world
        assert [first, second] == expected  # as one process would have played them
        assert two.store.leases.held == {"pto-t"}  # type: ignore[attr-defined]
        world_id = (await two.get_pto("pto-t")).world_cdt_id
        assert world_id is not None
        np.testing.assert_array_equal(await _world_row(two, world_id), expected_world["theta"])
        with pytest.raises(WorldLeased):  # and now one is refused
            await one.play("x", "pto-t", 1.0)
        assert await one.store.verify() == []


async def test_two_processes_never_both_step_one_world(pg_url: str, shared: None) -> None:
    async with _two(pg_url) as (one, two):
        lease_clock = _lease_clock(one, two)
        await _funded(one, "pto-s", "x")
        world_id = (await one.get_pto("pto-s")).world_cdt_id
        assert world_id is not None
        launched = (await two.world("pto-s"))["theta"]  # two's copy, active
        steps = round(1 * one.params.steps_per_hour)

        await one.advance(1)  # one takes the lease and steps
        await two.advance(1)  # two steps nothing
        with pytest.raises(WorldLeased):
            await two.play("x", "pto-s", 1.0)
        omega = (await one.world("pto-s"))["omega"]
        by_one = step_world(launched, omega, one.params, steps)
        np.testing.assert_array_equal(await _world_row(one, world_id), by_one)
        np.testing.assert_array_equal((await two.world("pto-s"))["theta"], by_one)  # reread

        lease_clock.advance(LEASE_TTL)  # one stalls past its lease; two takes the world
        await two.advance(1)
        by_two = step_world(by_one, omega, two.params, steps)
        np.testing.assert_array_equal(await _world_row(two, world_id), by_two)

        # one has not noticed yet: its copy (by_one) reaches the row neither directly
        # (refused loudly, naming two) nor when it passivates, and it steps nothing more.
        with pytest.raises(WorldLeased):
            await one.store.save_world(world_id, {"theta": by_one, "omega": omega})
        await one.passivate_all()
        await one.advance(1)
        assert one.store.leases.held == frozenset()  # type: ignore[attr-defined]
        with pytest.raises(WorldLeased):
            await one.play("x", "pto-s", 1.0)
        np.testing.assert_array_equal(await _world_row(one, world_id), by_two)
        np.testing.assert_array_equal((await one.world("pto-s"))["theta"], by_two)
        assert await one.store.verify() == []
