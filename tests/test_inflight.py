"""``runtime.InFlight``: a waiter for "no unit in flight" wakes when the last unit of a
busy stretch lands, even if more units were started after it began to wait (an actor
used to replace its event on each unit, leaving earlier waiters on one never set)."""

from __future__ import annotations

import anyio
import pytest

from ublox_sim.actors.runtime import InFlight


@pytest.mark.asyncio
async def test_a_waiter_wakes_when_the_last_unit_of_the_stretch_lands() -> None:
    flight = InFlight()
    woke = anyio.Event()

    async def waiter() -> None:
        await flight.wait()
        woke.set()

    async with anyio.create_task_group() as tg:
        flight.busy()  # unit 1
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        flight.busy()  # unit 2, decided while unit 1 is in flight
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        # Unit 1 lands; unit 2 is still in flight: the actor does not call idle() yet.
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        flight.idle()  # unit 2 lands: nothing in flight
        with anyio.fail_after(5):
            await woke.wait()


@pytest.mark.asyncio
async def test_waiting_when_idle_returns_at_once() -> None:
    flight = InFlight()
    with anyio.fail_after(5):
        await flight.wait()
    flight.busy()
    flight.idle()
    with anyio.fail_after(5):
        await flight.wait()
