"""Every process's events, in every process (several processes on one PostgreSQL
database): ``engine.events()`` and ``/ws/events`` carry what all of them committed.

The event log is the outbox. An insert into ``event_log`` notifies channel
``ublox_events`` (a statement trigger, migration 5); PostgreSQL delivers notifications
at commit, in commit order. On each, the feed reads the log after the last ``seq`` it
published and publishes those rows on the process's bus, in ``seq`` order, which is
commit order: ``seq`` comes from the ``counters`` row, locked until its unit commits. So
events of one PTO (of anything) arrive in the order they committed, whichever process
committed them. In shared mode the store publishes nothing itself (its own events come
back through the feed too, so one order holds for all).

Events read back from the log are of the types a local store publishes (``Deposited``,
``SharesBought``...: ``engine.events()`` does not change with the backend), with the
fields their JSON holds: the store-only ones (``Event.internal``: a full record, a
session's physics) keep their empty defaults. ``to_dict()`` gives back the stored dict.
A kind this version does not know (a newer process's) arrives as a ``LoggedEvent``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ...core import events as ev

CHANNEL = "ublox_events"
PAGE = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedEvent(ev.Event):
    """An event of any process, as the log holds it (``events.from_log``)."""

    kind = "logged"
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)


def logged_event(seq: int, payload: str) -> ev.Event:
    """The event a row of the log records, typed as it was published (see the module
    docstring)."""
    fields = ev.from_log(seq, payload)
    cls = ev.KINDS.get(fields["kind"])
    if cls is None:
        return LoggedEvent(at=str(fields["at"]), seq=seq, fields=fields)
    # Fields this version does not know (a newer process's, in a rolling upgrade) are
    # left out, as a reader of an older schema ignores them; one it needs and the row
    # lacks leaves the event untyped rather than stopping the feed.
    known, decimals = _fields_of(cls)
    values = {k: v for k, v in fields.items() if k in known}
    for name in decimals:
        if name in values:
            values[name] = Decimal(values[name])  # as_json wrote it as its exact string
    try:
        return cls(**values)
    except TypeError:
        return LoggedEvent(at=str(fields["at"]), seq=seq, fields=fields)


def _fields_of(cls: type[ev.Event]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The names of ``cls``'s fields, and those of its Decimal fields."""
    found = _FIELDS.get(cls)
    if found is None:
        every = dataclasses.fields(cls)
        found = _FIELDS[cls] = (
            frozenset(f.name for f in every),
            tuple(f.name for f in every if f.type in ("Decimal", Decimal)),
        )
    return found


_FIELDS: dict[type[ev.Event], tuple[frozenset[str], tuple[str, ...]]] = {}


class EventFeed:
    """Publishes the log's new rows on ``bus`` whenever a commit notifies."""

    def __init__(self, dsn: str, bus: ev.EventBus) -> None:
        self.dsn = dsn
        self.bus = bus
        self.last = 0
        self._conn: Any = None
        self._wake = asyncio.Event()
        self._reading = asyncio.Lock()  # one query at a time on the connection
        self._closed = False

    async def start(self) -> None:
        """Listen first, then read where the log is: nothing falls between the two."""
        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.add_listener(CHANNEL, self._notified)
        self.last = int(
            await self._conn.fetchval("SELECT value FROM counters WHERE name = 'event_log'")
        )

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            await self._drain()

    async def _drain(self) -> None:
        async with self._reading:
            if self._conn is not None:
                await self._read_all()

    async def _read_all(self) -> None:
        while True:
            rows = await self._conn.fetch(
                "SELECT seq, payload FROM event_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                self.last,
                PAGE,
            )
            for seq, payload in rows:
                self.bus.publish(logged_event(int(seq), str(payload)))
                self.last = int(seq)
            if len(rows) < PAGE:
                return

    async def aclose(self) -> None:
        """Publish what committed so far, then stop."""
        if self._conn is None or self._closed:
            return
        self._closed = True
        try:
            await self._drain()
        finally:
            self._wake.set()
            async with self._reading:
                conn, self._conn = self._conn, None
                await conn.close()
