"""Task groups and replies: the concurrency every layer shares (actors, the writer, the store).

asyncio only: aiosqlite needs it, so the engine runs on it (under anyio's API).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup


@asynccontextmanager
async def owned_task_group() -> AsyncIterator[TaskGroup]:
    """A task group whose lone failure surfaces as itself, not as an ExceptionGroup.

    anyio wraps every failure in a task group in an ExceptionGroup. A caller of
    ``async with Engine.open(...)`` expects the SchemaError or InsufficientFunds it
    caused, so a group holding exactly one exception is unwrapped (its traceback kept).
    """
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        inner = _sole(group)
        if inner is None:
            raise
        raise inner from inner.__cause__


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return None


@asynccontextmanager
async def joined_or_owned(task_group: TaskGroup | None) -> AsyncIterator[TaskGroup]:
    """The host's task group when one is given (embedding), else one of our own
    (``owned_task_group``) that ends when the block does."""
    if task_group is not None:
        yield task_group
        return
    async with owned_task_group() as tg:
        yield tg


@dataclass(eq=False, slots=True)
class Reply:
    """The way back of a request: a bare asyncio future (the engine runs on asyncio, as
    aiosqlite requires), several times cheaper than an Event plus a cancel scope.
    Actors' asks and the persistence actor's units both answer through it."""

    done: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def finish(self, result: object = None, error: BaseException | None = None) -> None:
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(result)
