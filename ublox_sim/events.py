"""Domain events, published after the change they describe has committed.

``EventBus`` fans each event out to subscribers through bounded buffers. A slow
subscriber never slows the engine: when its buffer is full the event is dropped
for that subscriber alone, and the next event it does receive is preceded by an
``EventsDropped`` telling how many it missed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, ClassVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .views import as_json


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **as_json(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayerRegistered(Event):
    kind: ClassVar[str] = "player_registered"
    player_id: str
    usd_obbba: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposited(Event):
    kind: ClassVar[str] = "deposited"
    player_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class Transferred(Event):
    kind: ClassVar[str] = "transferred"
    from_id: str
    to_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOLaunched(Event):
    kind: ClassVar[str] = "pto_launched"
    pto_id: str
    game_name: str
    creator_id: str
    funding_goal: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class SharesBought(Event):
    kind: ClassVar[str] = "shares_bought"
    pto_id: str
    player_id: str
    token_id: str
    hours: int
    price: Decimal
    pts_sold: int
    pts_offered: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOFunded(Event):
    kind: ClassVar[str] = "pto_funded"
    pto_id: str
    funding_raised: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOFailed(Event):
    kind: ClassVar[str] = "pto_failed"
    pto_id: str
    refunded: Decimal
    holders: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AtuSpent(Event):
    kind: ClassVar[str] = "atu_spent"
    pto_id: str
    units: int
    atu_spent: int
    atu_required: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOCompleted(Event):
    kind: ClassVar[str] = "pto_completed"
    pto_id: str
    creator_id: str
    payout: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPlayed(Event):
    kind: ClassVar[str] = "session_played"
    pto_id: str
    player_id: str
    session_id: int
    hours: float
    quality: float
    xusd_earned: Decimal
    phase_locks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseLock(Event):
    kind: ClassVar[str] = "phase_lock"
    pto_id: str
    player_id: str
    locks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsDropped(Event):
    kind: ClassVar[str] = "events_dropped"
    count: int


@dataclass(eq=False)
class _Subscriber:
    send: MemoryObjectSendStream[Event]
    dropped: int = 0


@dataclass(eq=False)
class EventBus:
    """Fan-out of events to bounded per-subscriber buffers; publishing never blocks."""

    _subscribers: list[_Subscriber] = field(default_factory=list)
    published: int = 0

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in list(self._subscribers):
            try:
                if sub.dropped:
                    sub.send.send_nowait(EventsDropped(at=event.at, count=sub.dropped))
                    sub.dropped = 0
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                sub.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(sub)
                sub.send.close()

    def subscribe(self, buffer: int = 1000) -> Subscription:
        send, receive = anyio.create_memory_object_stream[Event](max(1, buffer))
        sub = _Subscriber(send)
        self._subscribers.append(sub)
        return Subscription(self, sub, receive)

    def unsubscribe(self, sub: _Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        sub.send.close()

    def close(self) -> None:
        """End every subscription (their iterators stop after the buffered events)."""
        for sub in self._subscribers:
            sub.send.close()
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


class Subscription:
    """An async iterator of events; use ``async with engine.events() as events:``."""

    def __init__(
        self, bus: EventBus, sub: _Subscriber, receive: MemoryObjectReceiveStream[Event]
    ) -> None:
        self._bus, self._sub, self._receive = bus, sub, receive

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        async for event in self._receive:
            yield event

    async def receive(self) -> Event:
        """The next event; raises ``anyio.EndOfStream`` once the engine closed."""
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._bus.unsubscribe(self._sub)
        self._receive.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
