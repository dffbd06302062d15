"""Actor runtime helpers shared by every actor: task-group ownership and error unwrapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
