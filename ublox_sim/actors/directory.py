"""The actors directory: virtual actors, active only while they are used.

Every player and PTO exists in the store; an actor for it exists only while it is
*active*. ``get(id)`` returns the active actor or activates one from the store, exactly
once however many first messages race for it (a dict of activations in progress).
Actors beyond ``max_active`` (least recently used first) and actors idle for
``idle_timeout`` seconds of the event loop's monotonic clock (never the simulated
clock) are *passivated* in the background: the actor stops taking messages, finishes
its mailbox, waits until nothing it submitted is unacknowledged (and, for a player,
no reservation is open), lets the owner release it (a PTO writes or parks its world),
and is dropped. A message that arrives meanwhile waits for the passivation to end and
then reactivates the actor (``ask`` retries a message the closed mailbox refused, which
it never delivered). An id *held* (``hold``/``unhold``: a tick that allots on it, until
the tick is over) is neither reaped nor evicted: its passivation would wait for the
holder, and a message the holder waits for would wait for the passivation.

``max_active`` counts one kind: the engine has one directory per kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from ..core.errors import ActorClosed, UbloxError
from ..core.logsetup import get_logger
from .runtime import Actor, Ask

log = get_logger(__name__)

R = TypeVar("R")


A = TypeVar("A", bound=Actor[Any])


class Directory(Generic[A]):
    """The active actors of one kind (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        *,
        load: Callable[[str], Awaitable[A | None]],
        unknown: Callable[[str], UbloxError],
        release: Callable[[A], Awaitable[None]],
        tg: TaskGroup,
        max_active: int,
        idle_timeout: float,
    ) -> None:
        # max_active and idle_timeout are checked by their one entry, ``Engine.open``.
        self.kind = kind
        self._load = load
        self._unknown = unknown
        self._release = release
        self._tg = tg
        self.max_active = max_active
        self.idle_timeout = idle_timeout
        self._active: OrderedDict[str, A] = OrderedDict()  # least recently used first
        self._used: dict[str, float] = {}
        self._activating: dict[str, asyncio.Future[A]] = {}
        self._passivating: dict[str, tuple[anyio.Event, A]] = {}
        self._held: dict[str, int] = {}  # id -> holds (``hold``)
        self._closed = False
        self.activations = 0
        self.passivations = 0

    # -- lookups -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._active)

    def actors(self) -> Iterator[A]:
        return iter(list(self._active.values()))

    def active(self, ident: str) -> A | None:
        """The active actor for ``ident``, without activating (or touching) it."""
        return self._active.get(ident) if isinstance(ident, str) else None

    def current(self, ident: str) -> A | None:
        """The active actor, or the one passivating (still finishing its work)."""
        actor = self._active.get(ident)
        if actor is None and (passivating := self._passivating.get(ident)) is not None:
            actor = passivating[1]
        return actor

    async def get(self, ident: str) -> A:
        """The single active actor for ``ident``, activated from the store if need be."""
        if not isinstance(ident, str):  # an id from a hostile caller: no such actor
            raise self._unknown(ident)
        while True:
            if self._closed:
                raise ActorClosed("the engine is closed")
            actor = self._active.get(ident)
            if actor is not None:
                self._active.move_to_end(ident)
                self._used[ident] = asyncio.get_running_loop().time()
                return actor
            passivating = self._passivating.get(ident)
            if passivating is not None:
                await passivating[0].wait()
                continue
            pending = self._activating.get(ident)
            if pending is not None:
                try:
                    return await asyncio.shield(pending)
                except asyncio.CancelledError:
                    if pending.cancelled():
                        continue  # the activating caller was cancelled: try again
                    raise
            return await self._activate(ident)

    async def get_many(self, idents: Iterable[str]) -> None:
        """Activate those of ``idents`` that are not active, all at once (their loads
        start together, so a loader that coalesces point reads makes one query of
        them); an unknown id is skipped, ``get`` refuses it later."""
        missing = [i for i in dict.fromkeys(idents) if self._active.get(i) is None]
        if not missing:
            return

        async def one(ident: str) -> None:
            with contextlib.suppress(UbloxError):
                await self.get(ident)

        # Plain asyncio tasks (a third of an anyio spawn's cost), each waited for.
        for outcome in await asyncio.gather(*map(one, missing), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _activate(self, ident: str) -> A:
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._activating[ident] = future
        try:
            actor = await self._load(ident)
            if actor is None:
                raise self._unknown(ident)
            if self._closed:
                raise ActorClosed("the engine is closed")
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._activating[ident]
        actor.start(self._tg)
        self._active[ident] = actor
        self._used[ident] = asyncio.get_running_loop().time()
        self.activations += 1
        future.set_result(actor)
        self._evict()
        return actor

    async def ask(
        self,
        ident: str,
        message: Ask[R],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109
        handled: anyio.Event | None = None,
    ) -> R:
        """Ask ``ident``'s actor, activating it; a message its passivation refused is
        sent again to the next activation (the refused one was never delivered)."""
        while True:
            actor = await self.get(ident)
            try:
                return await actor.ask(message, timeout=timeout, handled=handled)
            except ActorClosed:
                if actor.passivated and not self._closed:
                    continue
                raise

    # -- passivation ---------------------------------------------------------------

    def hold(self, idents: Iterable[str]) -> None:
        """Keep ``idents``' actors from being reaped or evicted until ``unhold`` (a hold
        taken before the actor is asked covers every message it handles meanwhile; an
        actor already passivating ends its passivation as usual)."""
        for ident in idents:
            self._held[ident] = self._held.get(ident, 0) + 1

    def unhold(self, idents: Iterable[str]) -> None:
        """End a ``hold`` of ``idents``; actors past ``max_active`` are evicted now."""
        for ident in idents:
            left = self._held[ident] - 1
            if left:
                self._held[ident] = left
            else:
                del self._held[ident]
        if not self._closed:
            self._evict()

    def _evict(self) -> None:
        over = len(self._active) - self.max_active
        if over > 0:  # the least recently used first, held ones left active
            unheld = (i for i in self._active if i not in self._held)
            for ident in list(itertools.islice(unheld, over)):
                self._start_passivation(ident)

    def reap_idle(self) -> int:
        """Passivate every actor idle for ``idle_timeout`` and not held; returns how many."""
        horizon = asyncio.get_running_loop().time() - self.idle_timeout
        idle = [
            ident
            for ident in self._active
            if self._used[ident] <= horizon and ident not in self._held
        ]
        for ident in idle:
            self._start_passivation(ident)
        return len(idle)

    def _start_passivation(self, ident: str) -> None:
        actor = self._active.pop(ident)
        del self._used[ident]
        finished = anyio.Event()
        self._passivating[ident] = (finished, actor)
        actor.passivated = True
        self._tg.start_soon(self._passivate, ident, actor, finished)

    async def _passivate(self, ident: str, actor: A, finished: anyio.Event) -> None:
        try:
            with anyio.CancelScope(shield=True):
                actor.close()
                await actor.wait_stopped()
                if actor.broken is None:
                    await actor.wait_quiet()
                    await self._release(actor)
                self.passivations += 1
        except Exception as exc:  # a store failure: the actor is dropped all the same
            log.error("directory.passivation_failed", kind=self.kind, id=ident, error=str(exc))
        finally:
            del self._passivating[ident]
            finished.set()

    async def passivate_all(self) -> None:
        """Passivate every active actor and wait until none is left (tests, shutdown)."""
        for ident in list(self._active):
            self._start_passivation(ident)
        await self.wait_passivations()

    async def wait_passivations(self) -> None:
        """Wait until no passivation is in progress."""
        while self._passivating:
            await next(iter(self._passivating.values()))[0].wait()

    async def close(self) -> list[A]:
        """Refuse new activations, let passivations end; returns the actors still active
        (the engine drains them in its own order)."""
        self._closed = True
        await self.wait_passivations()
        actors = list(self._active.values())
        self._active.clear()
        self._used.clear()
        return actors
