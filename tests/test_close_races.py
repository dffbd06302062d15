"""Closing the engine while work is in flight (issue 13's review): buyers whose purchase
committed hear so, and an ``advance`` the close interrupts raises a plain ``ActorClosed``.

The interleavings are forced, not hoped for: the store's acknowledgements are held back,
or a step is paused, until the close has reached the point under test."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from engine_helpers import launch

from ublox_sim.actors.pto import PTOActor
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import ActorClosed
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Unit
from ublox_sim.store.verify import verify_store

pytestmark = pytest.mark.anyio

BUYERS = 20


async def test_buyers_in_flight_at_close_hear_their_committed_purchase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Purchases are submitted but not yet acknowledged when ``aclose`` starts. Their
    acknowledgements are released only once the close closes the players' directory or
    waits for a PTO to be quiet, whichever comes first: the players (holding the
    reservations the acknowledgements settle) must still be there."""
    heard: Counter[str] = Counter()
    with anyio.fail_after(60):
        async with Engine.open(
            tmp_path, seed=7, clock=SimClock(), world=WorldParams(size=8)
        ) as engine:
            await engine.register_players(
                [("creator", 0, 1.0, None)] + [(f"b{i:02d}", 10, 1.0, None) for i in range(BUYERS)]
            )
            await launch(engine, "pto_a", offered=1000, price=1)
            held: list[Callable[[], None]] = []
            released = False
            submitted = anyio.Event()

            def release() -> None:
                nonlocal released
                released = True
                for done in held:
                    done()
                held.clear()

            submit = engine.store.submit

            async def holding(unit: Unit, done: Callable[[Any], None]) -> None:
                def later(result: Any) -> None:
                    if released:
                        done(result)
                    else:
                        held.append(lambda: done(result))

                await submit(unit, later)
                submitted.set()

            close_players = engine._players.close

            async def closing_players() -> list[Any]:
                actors = await close_players()
                release()  # what a late acknowledgement meets if PTOs were not waited for
                return actors

            wait_quiet = PTOActor.wait_quiet

            async def quiet_pto(self: PTOActor) -> None:
                release()
                await wait_quiet(self)

            monkeypatch.setattr(engine.store, "submit", holding)
            monkeypatch.setattr(engine._players, "close", closing_players)
            monkeypatch.setattr(PTOActor, "wait_quiet", quiet_pto)

            async def buy(player_id: str) -> None:
                try:
                    await engine.buy_pts(player_id, "pto_a", 1)
                    heard["sold"] += 1
                except Exception as exc:  # what each buyer hears is the test's subject
                    heard[type(exc).__name__] += 1

            async with anyio.create_task_group() as tg:
                for i in range(BUYERS):
                    tg.start_soon(buy, f"b{i:02d}")
                await submitted.wait()
                await engine.aclose()
    assert set(heard) <= {"sold", "ActorClosed"}, heard
    assert heard["sold"] >= 1
    assert sum(heard.values()) == BUYERS
    async with Engine.open(tmp_path, seed=7, clock=SimClock(), world=WorldParams(size=8)) as again:
        assert (await again.get_pto("pto_a")).pts_sold == heard["sold"]
    assert verify_store(tmp_path) == []


async def test_an_advance_the_close_interrupts_raises_a_plain_actor_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first PTO's step is paused, the engine closes, the step goes on: every step
    left meets the closed engine, and ``advance`` says so once, not as a group."""
    outcome: list[BaseException] = []
    with anyio.fail_after(60):
        async with Engine.open(
            tmp_path, seed=7, clock=SimClock(), world=WorldParams(size=8), max_active=1
        ) as engine:
            await engine.register_player("creator", usd_obbba=10)
            for pto_id in ("pto_a", "pto_b", "pto_c"):
                await launch(engine, pto_id, offered=4, price=1)
            stepping, resume = anyio.Event(), anyio.Event()
            ask = engine._ptos.ask

            async def paused(ident: str, message: Any, **kwargs: Any) -> Any:
                stepping.set()
                await resume.wait()
                return await ask(ident, message, **kwargs)

            monkeypatch.setattr(engine._ptos, "ask", paused)

            async def advance() -> None:
                try:
                    await engine.advance(1)
                except BaseException as exc:  # its type is what is under test
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(advance)
                await stepping.wait()
                await engine.aclose()
                resume.set()
    assert len(outcome) == 1
    assert type(outcome[0]) is ActorClosed, repr(outcome[0])
