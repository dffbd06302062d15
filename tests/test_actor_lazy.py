"""An actor's task is spawned with its first message (``Actor._launch``): one activated and
never asked stops at once when closed, one asked later answers as usual, and a message
sent after ``close`` is refused whether or not the task ever ran."""

from __future__ import annotations

import anyio
import pytest

from ublox_sim.actors.runtime import Actor, Ask
from ublox_sim.core.errors import ActorClosed


class Echo(Ask[int]):
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


class Doubler(Actor[Echo]):
    async def handle(self, message: Echo) -> object:
        return message.value * 2


@pytest.mark.asyncio
async def test_an_actor_never_asked_closes_without_a_task() -> None:
    async with anyio.create_task_group() as tg:
        idle, busy = Doubler("idle"), Doubler("busy")
        idle.start(tg)
        busy.start(tg)
        assert await busy.ask(Echo(21)) == 42
        for actor in (idle, busy):
            actor.close()
            await actor.wait_stopped()
            with pytest.raises(ActorClosed):
                await actor.ask(Echo(1))
        assert idle.broken is None and busy.broken is None


@pytest.mark.asyncio
async def test_told_messages_start_the_task_too() -> None:
    async with anyio.create_task_group() as tg:
        actor = Doubler("told")
        actor.start(tg)
        actor.tell_soon(Echo(1))
        await actor.tell(Echo(2))
        assert await actor.ask(Echo(3)) == 6
        actor.close()
        await actor.wait_stopped()
