"""Events built the way the actors build them, and the workloads the suite runs.

Nothing here knows a backend: every function returns events or drives the protocol
(``store.backend.Backend``), so the same workload runs on SQLite and on any other
backend, in this process or in a subprocess that is killed (``crash_workload``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from ublox_sim.core import events as ev
from ublox_sim.core.money import to_decimal
from ublox_sim.core.records import PTO, Player, PTSToken, iso
from ublox_sim.store.backend import (
    Backend,
    Checkpoint,
    Committed,
    Receipt,
    RunRecord,
    Unit,
    WorldWrite,
)
from ublox_sim.store.home import world_id_for

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def at(minutes: float = 0) -> str:
    return iso(T0 + timedelta(minutes=minutes))


def world(seed: int, size: int = 4) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {
        "theta": rng.uniform(0.0, 2 * np.pi, (size, size)),
        "omega": rng.normal(1.0, 0.1, (size, size)),
    }


# -- one builder per event, as the engine and the actors build them ------------------------


def register(player_id: str, cents: int = 0, *, when: str | None = None, xusd: int = 0) -> ev.Event:
    created = when or at()
    record = Player(
        player_id=player_id,
        position_x=1.5,
        position_y=2.5,
        phase=0.25,
        tau_k=1.0,
        resonance_freq=1.0,
        usd_obbba_balance=cents,
        xUSD_balance=xusd,
        created_at=created,
    )
    return ev.PlayerRegistered(
        at=created, player_id=player_id, usd_obbba=to_decimal(cents), record=record
    )


def deposit(player_id: str, cents: int, when: str | None = None) -> ev.Event:
    return ev.Deposited(at=when or at(1), player_id=player_id, amount=to_decimal(cents))


def transfer(source: str, target: str, cents: int, when: str | None = None) -> ev.Event:
    return ev.Transferred(at=when or at(2), from_id=source, to_id=target, amount=to_decimal(cents))


def pto_record(
    pto_id: str,
    creator: str,
    *,
    offered: int = 10,
    price: int = 1000,
    atu_required: int = 5,
    deadline: str | None = None,
    launched: str | None = None,
) -> PTO:
    return PTO(
        pto_id=pto_id,
        game_name=f"Game {pto_id}",
        creator_id=creator,
        description="conformance",
        atu_required=atu_required,
        pts_offered=offered,
        price_per_pts=price,
        funding_goal=offered * price,
        launch_time=launched or at(3),
        funding_deadline=deadline or at(24 * 60),
        world_cdt_id=world_id_for(pto_id),
        amplification=100.0,
    )


def launch(pto: PTO, seed: int = 1) -> Unit:
    """The engine's launch: the PTO's row and its world, in one unit."""
    launched = ev.PTOLaunched(
        at=pto.launch_time,
        pto_id=pto.pto_id,
        game_name=pto.game_name,
        creator_id=pto.creator_id,
        funding_goal=to_decimal(pto.funding_goal),
        record=dataclasses.replace(pto),
    )
    assert pto.world_cdt_id is not None
    return Unit((launched,), worlds=(WorldWrite(pto.world_cdt_id, world(seed)),))


def token(pto: PTO, holder: str, number: int, hours: int, when: str | None = None) -> PTSToken:
    return PTSToken(
        token_id=f"{pto.pto_id}-pts-{number:06d}",
        game_id=pto.pto_id,
        holder=holder,
        hours_committed=float(hours),
        purchase_price=hours * pto.price_per_pts,
        tau_k_at_purchase=1.0,
        purchase_time=when or at(4 + number),
    )


def buy(pto: PTO, bought: PTSToken, pts_sold_after: int) -> ev.Event:
    hours = int(bought.hours_committed)
    return ev.SharesBought(
        at=bought.purchase_time,
        pto_id=pto.pto_id,
        player_id=bought.holder,
        token_id=bought.token_id,
        hours=hours,
        price=to_decimal(bought.purchase_price),
        pts_sold=pts_sold_after,
        pts_offered=pto.pts_offered,
        token=dataclasses.replace(bought),
    )


def funded(pto_id: str, raised: int, when: str | None = None) -> ev.Event:
    return ev.PTOFunded(at=when or at(20), pto_id=pto_id, funding_raised=to_decimal(raised))


def failed(pto_id: str, refunds: tuple[tuple[str, int], ...], when: str | None = None) -> ev.Event:
    return ev.PTOFailed(
        at=when or at(30),
        pto_id=pto_id,
        refunded=to_decimal(sum(c for _, c in refunds)),
        holders=len(refunds),
        refunds=refunds,
    )


def atu(pto_id: str, units: int, after: int, required: int, when: str | None = None) -> ev.Event:
    return ev.AtuSpent(
        at=when or at(40), pto_id=pto_id, units=units, atu_spent=after, atu_required=required
    )


def completed(pto_id: str, creator: str, payout: int, when: str | None = None) -> ev.Event:
    return ev.PTOCompleted(
        at=when or at(41), pto_id=pto_id, creator_id=creator, payout=to_decimal(payout)
    )


def session(
    pto_id: str,
    player_id: str,
    *,
    hours: float,
    quality: float,
    xusd: int,
    shares: tuple[tuple[str, float, int], ...],
    locks: int = 0,
    aci: float = 0.4,
    when: str | None = None,
) -> ev.SessionPlayed:
    return ev.SessionPlayed(
        at=when or at(35),
        pto_id=pto_id,
        player_id=player_id,
        session_id=0,
        hours=hours,
        quality=quality,
        xUSD_earned=to_decimal(xusd),
        phase_locks=locks,
        tau_k=0.9 + 0.1 * 10 * quality,
        phase=1.25,
        coherence=0.75,
        memory_depth_added=hours * 0.5,
        aci=aci,
        shares=shares,
    )


def phase_lock(pto_id: str, player_id: str, locks: int, when: str | None = None) -> ev.Event:
    return ev.PhaseLock(at=when or at(35), pto_id=pto_id, player_id=player_id, locks=locks)


def stepped(pto_id: str, aci: float, when: str | None = None) -> ev.Event:
    return ev.WorldStepped(at=when or at(36), pto_id=pto_id, aci=aci)


def receipt(principal: str, key: str, response: str) -> Receipt:
    return Receipt(
        principal=principal,
        key=key,
        fingerprint=f"fp-{key}",
        status=201 if response == "token" else 200,
        at=at(50),
        response=response,  # type: ignore[arg-type]
    )


RUN = RunRecord(
    name="conformance",
    seed=7,
    scenario='{"name":"conformance"}',
    started_at=at(),
    tick=3,
    total_ticks=10,
    state='{"rng":1}',
    finished=False,
)


# -- the workload of every event type ------------------------------------------------------


@dataclass
class Game:
    """What ``full_workload`` wrote, for the tests to check against."""

    pto_a: PTO
    pto_b: PTO
    tokens: dict[str, PTSToken]
    committed: list[tuple[ev.Event, ...]]


ALICE, BOB, CAROL, DAVE = "alice", "bob", "carol", "dave"


async def full_workload(backend: Backend) -> Game:
    """Every event type, as a game plays them: afterwards verify() must be clean.

    alice 1000.00, bob 500.00, carol 0 then +300.00, dave (a creator) 0; alice sends bob
    50.00; dave launches pto-a (10 PTS at 10.00) and pto-b (10 PTS at 5.00); alice buys
    6 h of pto-a, bob 4 h (which funds it); carol buys 2 h of pto-b, which fails and
    refunds her; alice plays 2 h on pto-a (100.00 xUSD, a phase lock), its world steps,
    its ATU are spent and it completes, paying dave the 100.00 escrow."""
    committed: list[tuple[ev.Event, ...]] = []

    async def commit(unit: Unit) -> None:
        committed.append((await backend.commit(unit)).events)

    for pid, cents in ((ALICE, 100_000), (BOB, 50_000), (CAROL, 0), (DAVE, 0)):
        await commit(Unit((register(pid, cents),)))
    await commit(Unit((deposit(CAROL, 30_000),)))
    await commit(Unit((transfer(ALICE, BOB, 5_000),)))
    pto_a = pto_record("pto-a", DAVE, offered=10, price=1000)
    pto_b = pto_record("pto-b", DAVE, offered=10, price=500, deadline=at(30))
    await commit(launch(pto_a, seed=1))
    await commit(launch(pto_b, seed=2))
    a1 = token(pto_a, ALICE, 1, 6)
    a2 = token(pto_a, BOB, 2, 4)
    b1 = token(pto_b, CAROL, 1, 2)
    await commit(Unit((buy(pto_a, a1, 6),)))
    await commit(Unit((buy(pto_a, a2, 10), funded("pto-a", 10_000))))
    await commit(Unit((buy(pto_b, b1, 2),)))
    await commit(Unit((failed("pto-b", ((CAROL, 1_000),)),)))
    played = session(
        "pto-a",
        ALICE,
        hours=2.0,
        quality=0.5,
        xusd=10_000,
        shares=((a1.token_id, 2.0, 10_000),),
        locks=1,
        aci=0.4,
    )
    await commit(Unit((played, phase_lock("pto-a", ALICE, 1))))
    await commit(
        Unit((stepped("pto-a", 0.45),), worlds=(WorldWrite(world_id_for("pto-a"), world(11)),))
    )
    await commit(Unit((atu("pto-a", 3, 3, 5),)))
    await commit(Unit((atu("pto-a", 2, 5, 5), completed("pto-a", DAVE, 10_000))))
    return Game(pto_a, pto_b, {t.token_id: t for t in (a1, a2, b1)}, committed)


# -- what a killed process runs (see conftest: each backend says how it is killed) ---------


async def queued(backend: Backend, unit: Unit) -> asyncio.Future[Committed]:
    """Submit ``unit`` and return a future of its outcome (the protocol calls back)."""
    future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()

    def done(outcome: Committed | BaseException) -> None:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    await backend.submit(unit, done)
    return future


async def crash_workload(backend: Backend, scenario: str, report: Callable[[str], None]) -> None:
    """``acked``: units (a player and its deposit) submitted back to back, each reported
    ``acked <id>`` once its future resolved; runs until killed.
    ``held``: in held mode, one unit then a checkpoint (``checkpointed``), then another
    unit (``acked held-b``) that no checkpoint covers; then waits to be killed."""
    if scenario == "acked":
        number = 0
        while True:
            pid = f"c{number:06d}"
            unit = Unit((register(pid, 0), deposit(pid, 100)))
            future = await queued(backend, unit)

            def done(f: Any, pid: str = pid) -> None:
                if not f.cancelled() and f.exception() is None:
                    report(f"acked {pid}")

            future.add_done_callback(done)
            number += 1
            if number % 64 == 0:
                await future  # keep the queue bounded; acks keep flowing
            await anyio.lowlevel.checkpoint()  # a backend that never yields can still be killed
    elif scenario == "held":
        await backend.commit(Unit((register("held-a", 500),)))
        await backend.checkpoint(Checkpoint(1, (WorldWrite("w-held", world(5)),), RUN))
        report("checkpointed")
        await backend.commit(Unit((register("held-b", 700),)))
        report("acked held-b")
    else:
        raise ValueError(scenario)


async def published_through(sub: Any, landed: list[ev.Event]) -> list[ev.Event]:
    """What ``sub`` delivers of the events from ``landed[0]`` on, once the last one of
    ``landed`` arrived (a bounded wait on that event, never a sleep), then whatever else
    is already buffered.

    The contract: every logged event is published once, numbered, in commit order, at or
    after its commit. One process's backend publishes at commit; a shared PostgreSQL
    store's events reach its bus through the event log's feed, a little later, so a
    subscriber may also still receive events committed just before it subscribed (their
    numbers are below ``landed[0]``'s: left out here)."""
    published: list[ev.Event] = []
    if landed:
        with anyio.fail_after(10):
            while not published or published[-1].seq < landed[-1].seq:
                published.append(await sub.receive())
    while True:
        try:
            published.append(sub.receive_nowait())
        except anyio.WouldBlock:
            break
    first = landed[0].seq if landed else 0
    return [e for e in published if e.seq >= first]


def as_published(events: list[ev.Event]) -> list[tuple[int, dict[str, Any]]]:
    """What a subscriber is promised of each event: its number and its fields, without
    the ``internal`` ones (a full record...: for the store and the actors of the process
    that decided it; an event read back from the log has them empty)."""
    return [(e.seq, e.to_dict()) for e in events]
