"""Domain events: one type per fact, used for persistence, state and the event stream.

An actor decides a command with the pure rules (``economy``) and returns events; the
store turns a unit of events into rows (``store.sqlite.rows``) and commits them in
one transaction; on the acknowledgement the actor applies them to its state and the
events are published, in commit order, on the ``EventBus``. An event carries every
figure its rows need: fields named in ``internal`` (a full record, the physics of a
session) are for the store and the actors, and stay out of the event's JSON.

Every logged event is written to the ``event_log`` table in the same transaction as
the operation it describes; the table's AUTOINCREMENT key is its sequence number
``seq``, so numbers follow commit order, have no gaps and survive restarts.

``EventBus`` fans each event out to subscribers through bounded buffers. A slow
subscriber never slows the engine: when its buffer is full the event is dropped
for that subscriber alone, and the next event it does receive is preceded by an
``EventsDropped`` telling how many it missed and the ``since`` to replay them with
(``LocalStore.events_after``).

What is public: ``public_dict()`` leaves out a player's USD-OBBBA amounts
(starting balance, deposits, transfers), which reveal private balances; PTO
figures (prices, funding, payouts) are public on ``GET /api/ptos`` anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .records import PTO, Player, PTSToken
from .views import as_json

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    # Fields left out of the public stream (see the module docstring).
    private: ClassVar[tuple[str, ...]] = ()
    # Fields for the store and the actors only: never in the JSON (see the module docstring).
    # They default to empty so an event read back from the log (or built by a test) needs
    # only its public fields; the store refuses a unit whose events lack them.
    internal: ClassVar[tuple[str, ...]] = ()
    # Whether the fact goes to the event log and the stream (a world's step does not).
    logged: ClassVar[bool] = True
    at: str
    # The event's number in the log; 0 until its unit committed.
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        fields = as_json(self)
        for name in self.internal:
            del fields[name]
        return {"kind": self.kind, **fields}

    def public_dict(self) -> dict[str, Any]:
        return public(self.to_dict())


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayerRegistered(Event):
    private: ClassVar[tuple[str, ...]] = ("usd_obbba",)
    kind: ClassVar[str] = "player_registered"
    internal: ClassVar[tuple[str, ...]] = ("record",)
    player_id: str
    usd_obbba: Decimal
    record: Player | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposited(Event):
    private: ClassVar[tuple[str, ...]] = ("amount",)
    kind: ClassVar[str] = "deposited"
    player_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class Transferred(Event):
    private: ClassVar[tuple[str, ...]] = ("amount",)
    kind: ClassVar[str] = "transferred"
    from_id: str
    to_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOLaunched(Event):
    kind: ClassVar[str] = "pto_launched"
    internal: ClassVar[tuple[str, ...]] = ("record",)
    pto_id: str
    game_name: str
    creator_id: str
    funding_goal: Decimal
    record: PTO | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SharesBought(Event):
    kind: ClassVar[str] = "shares_bought"
    internal: ClassVar[tuple[str, ...]] = ("token",)
    pto_id: str
    player_id: str
    token_id: str
    hours: int
    price: Decimal
    pts_sold: int
    pts_offered: int
    token: PTSToken | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOFunded(Event):
    kind: ClassVar[str] = "pto_funded"
    pto_id: str
    funding_raised: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class PTOFailed(Event):
    kind: ClassVar[str] = "pto_failed"
    internal: ClassVar[tuple[str, ...]] = ("refunds",)
    pto_id: str
    refunded: Decimal
    holders: int
    # (holder, cents) in holder order: one refund each, in the ledger in this order.
    refunds: tuple[tuple[str, int], ...] = ()


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
    internal: ClassVar[tuple[str, ...]] = (
        "tau_k",
        "phase",
        "coherence",
        "memory_depth_added",
        "aci",
        "shares",
    )
    pto_id: str
    player_id: str
    session_id: int
    hours: float
    quality: float
    xUSD_earned: Decimal
    phase_locks: int
    # The player's physics after the session, and the world's coherence after its steps.
    tau_k: float = 0.0
    phase: float = 0.0
    coherence: float = 0.0
    memory_depth_added: float = 0.0
    aci: float = 0.0
    # (token_id, hours, xUSD cents) the session was played on.
    shares: tuple[tuple[str, float, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseLock(Event):
    kind: ClassVar[str] = "phase_lock"
    pto_id: str
    player_id: str
    locks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorldStepped(Event):
    """A world moved on ``steps`` lattice steps; its coherence is now ``aci``. Not logged."""

    kind: ClassVar[str] = "world_stepped"
    logged: ClassVar[bool] = False
    pto_id: str
    aci: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsDropped(Event):
    """Not logged: ``count`` events after ``since`` did not reach this subscriber."""

    kind: ClassVar[str] = "events_dropped"
    count: int
    since: int


KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        PlayerRegistered,
        Deposited,
        Transferred,
        PTOLaunched,
        SharesBought,
        PTOFunded,
        PTOFailed,
        AtuSpent,
        PTOCompleted,
        SessionPlayed,
        PhaseLock,
    )
}


def public(event: dict[str, Any]) -> dict[str, Any]:
    """An event as a JSON dict (live or read back from the log) without private fields."""
    cls = KINDS.get(event.get("kind", ""))
    if cls is None or not cls.private:
        return event
    return {k: v for k, v in event.items() if k not in cls.private}


def payload(event: Event) -> str:
    """The JSON stored in ``event_log.payload``: every field but ``seq`` (the row's key).

    Byte for byte ``json.dumps`` of ``to_dict()`` without ``seq`` (compact separators),
    written field by field: no dict per event (thousands per tick). A value of a type
    other than str, exact int or float, Decimal or None is handed to ``json.dumps``."""
    cls = type(event)
    keys = _PAYLOAD_KEYS.get(cls) or _payload_keys(cls)
    parts = ['{"kind":', _encode(cls.kind)]
    for name, key in keys:
        parts.append(key)
        value = getattr(event, name)
        kind = type(value)
        if kind is str:
            parts.append(_encode(value))
        elif kind is float and _FINITE(value):
            parts.append(_float_repr(value))
        elif kind is int:
            parts.append(_int_repr(value))
        elif value is None:
            parts.append("null")
        elif isinstance(value, Decimal):
            parts.append(_encode(str(value)))
        else:
            parts.append(json.dumps(value, separators=(",", ":")))
    parts.append("}")
    return "".join(parts)


# What ``json.dumps`` writes for a str (ensure_ascii), an int and a finite float.
_encode = json.encoder.encode_basestring_ascii
_int_repr = int.__repr__
_float_repr = float.__repr__
_FINITE = math.isfinite
# Per event class: its payload's fields after ``kind`` (``to_dict``'s order, without
# ``seq`` and the internal ones), each with its ``,"name":`` text.
_PAYLOAD_KEYS: dict[type, tuple[tuple[str, str], ...]] = {}


def _payload_keys(cls: type[Event]) -> tuple[tuple[str, str], ...]:
    names = [
        f.name for f in dataclasses.fields(cls) if f.name != "seq" and f.name not in cls.internal
    ]
    keys = _PAYLOAD_KEYS[cls] = tuple((n, f",{_encode(n)}:") for n in names)
    return keys


def numbered(event: E, seq: int, session_id: int | None = None) -> E:
    """``dataclasses.replace(event, seq=seq)`` (and ``session_id``, for a session), as
    the store numbers each committed event: thousands per tick. ``replace`` goes through
    the frozen ``__init__`` (``object.__setattr__`` per field, after checking the
    names); this sets the slots directly, with a function made once per class.

    A ``session_id`` for a class without that field is a caller's mistake (``replace``
    would refuse it too): ``TypeError``, not silently dropped."""
    cls = type(event)
    copy = _NUMBERING.get(cls) or _numbering(cls)
    if session_id is not None and cls not in _WITH_SESSION:
        raise TypeError(f"{cls.__name__} has no session_id to number")
    made: E = copy(event, seq, session_id)
    return made


_NUMBERING: dict[type, Callable[[Any, int, int | None], Any]] = {}
_WITH_SESSION: set[type] = set()  # the classes (numbered so far) with a session_id


def _numbering(cls: type[Event]) -> Callable[[Any, int, int | None], Any]:
    # Made as ``dataclasses`` makes ``__init__``: the text of one function per class.
    names = [f.name for f in dataclasses.fields(cls)]
    if "session_id" in names:
        _WITH_SESSION.add(cls)
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = ["def copy(event, seq, session_id):", "    made = new(cls)"]
    for k, name in enumerate(names):
        scope[f"set{k}"] = getattr(cls, name).__set__
        value = f"event.{name}"
        if name == "seq":
            value = "seq"
        elif name == "session_id":
            value = f"event.{name} if session_id is None else session_id"
        lines.append(f"    set{k}(made, {value})")
    lines.append("    return made")
    exec("\n".join(lines), scope)  # the names are the class's own fields
    copy: Callable[[Any, int, int | None], Any] = scope["copy"]
    _NUMBERING[cls] = copy
    return copy


def from_log(seq: int, stored: str) -> dict[str, Any]:
    """A logged event as the same dict ``Event.to_dict()`` gave when it was published."""
    fields: dict[str, Any] = json.loads(stored)
    kind = fields.pop("kind")
    at = fields.pop("at")
    return {"kind": kind, "at": at, "seq": seq, **fields}


@dataclass(eq=False)
class _Subscriber:
    send: MemoryObjectSendStream[Event]
    dropped: int = 0
    # The last event this subscriber was given, and the most it ever had waiting.
    last_seq: int = 0
    peak: int = 0


@dataclass(eq=False)
class EventBus:
    """Fan-out of events to bounded per-subscriber buffers; publishing never blocks."""

    _subscribers: list[_Subscriber] = field(default_factory=list)
    published: int = 0
    # The sequence number of the newest event published, and events lost by slow
    # subscribers (all of them, ever: a metric).
    last_seq: int = 0
    dropped_total: int = 0

    def publish(self, event: Event) -> None:
        self.published += 1
        self.last_seq = max(self.last_seq, event.seq)
        for sub in list(self._subscribers):
            try:
                if sub.dropped:
                    sub.send.send_nowait(
                        EventsDropped(at=event.at, count=sub.dropped, since=sub.last_seq)
                    )
                    sub.dropped = 0
                sub.send.send_nowait(event)
                sub.last_seq = event.seq
                sub.peak = max(sub.peak, sub.send.statistics().current_buffer_used)
            except anyio.WouldBlock:
                sub.dropped += 1
                self.dropped_total += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(sub)
                sub.send.close()

    def subscribe(self, buffer: int = 1000) -> Subscription:
        send, receive = anyio.create_memory_object_stream[Event](max(1, buffer))
        sub = _Subscriber(send, last_seq=self.last_seq)
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

    @property
    def bound(self) -> int:
        """How many events may wait for this subscriber before it loses some."""
        return int(self._receive.statistics().max_buffer_size)

    @property
    def lost(self) -> int:
        """Events lost since this subscriber last received one (its ``EventsDropped`` is
        queued only with the next event that fits)."""
        return self._sub.dropped

    def receive_nowait(self) -> Event:
        """The next event if one is waiting; raises ``anyio.WouldBlock`` if none is."""
        return self._receive.receive_nowait()

    @property
    def peak(self) -> int:
        """The most events that ever waited for this subscriber at once (at most ``bound``)."""
        return self._sub.peak

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
