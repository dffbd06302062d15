"""World leases: each world is stepped by one process at a time (several processes, one
PostgreSQL database; SQLite's single-writer flock makes this moot there).

A lease is a row of ``world_leases``: the PTO, the holding process and an expiry, in
seconds of the lease clock (``core.clock``'s ``Clock``, the wall clock unless a test
injects one; never the database's ``now()``, so a takeover is tested without waiting).
``acquire`` takes every lease that is free, expired or already ours, renewing ours, in
one statement, and answers which it holds; a holder renews on each tick (the engine's
``advance``), so its leases outlive it by at most ``ttl`` seconds: a process killed
with ``kill -9`` loses its worlds to the next survivor that ticks after that. A world
newly taken over is stepped from the last committed state: the engine has its actor
reload (``PTOActor.mark_stale``). A clean close releases every lease at once.

A play (a session) steps the world too, so it needs the lease as well (``take``, asked
by the PTO actor): free, expired or ours, it takes or renews it; held by another live
process, the play is refused with ``WorldLeased`` (HTTP 503 with ``Retry-After``) and
changes nothing. A server (``serve --advertise URL``) records in its leases where it
answers HTTP (``address``), so a server that gets ``WorldLeased`` forwards the play to
the holder instead (``server.forward``); an embedded engine has no address and the
refusal reaches its caller. A world's row is replaced only by its holder (``SAVE_LEASED_WORLD``),
so a process whose lease was taken over cannot overwrite the new holder's steps.

The leases have their own connection, so a renewal never waits behind the write queue.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ...core.clock import Clock, WallClock
from ...core.errors import WorldLeased

DEFAULT_TTL = 5.0
TTL_ENV = "UBLOX_LEASE_TTL"

_ACQUIRE = """
INSERT INTO world_leases (pto_id, holder, expires, address)
SELECT unnest($1::text[]), $2, $3, $5
ON CONFLICT (pto_id) DO UPDATE
SET holder = excluded.holder, expires = excluded.expires, address = excluded.address
WHERE world_leases.holder = excluded.holder OR world_leases.expires <= $4
RETURNING pto_id
"""

# The lease of one PTO after a claim: renewed if ours, taken if expired, as it is if a
# live other's; no row if nobody holds it.
_CLAIM = """
WITH claimed AS (
    UPDATE world_leases SET holder = $2, expires = $3, address = $5
    WHERE pto_id = $1 AND (holder = $2 OR expires <= $4)
    RETURNING holder, expires
)
SELECT holder, expires FROM claimed
UNION ALL
SELECT holder, expires FROM world_leases WHERE pto_id = $1 AND NOT EXISTS (SELECT FROM claimed)
"""


def default_ttl() -> float:
    """``$UBLOX_LEASE_TTL`` seconds, else 5."""
    text = os.environ.get(TTL_ENV)
    if text is None:
        return DEFAULT_TTL
    ttl = float(text)
    if not ttl > 0:
        raise ValueError(f"{TTL_ENV} must be a positive number of seconds, got {text!r}")
    return ttl


class WorldLeases:
    """This process's leases on one database (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        ttl: float | None = None,
        clock: Clock | None = None,
        holder: str | None = None,
        address: str = "",
    ) -> None:
        self.dsn = dsn
        self.ttl = default_ttl() if ttl is None else ttl
        if not self.ttl > 0:
            raise ValueError(f"a lease's ttl must be positive, got {self.ttl}")
        self.clock: Clock = clock or WallClock()
        self.holder = holder or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.held: frozenset[str] = frozenset()
        # Where this process answers HTTP ('' for none), recorded with each lease it takes
        # or renews: another server forwards the plays of its worlds there.
        self.address = address
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.dsn)

    async def _fetch(self, query: str, *args: object) -> list[Any]:
        """One statement on the leases' connection (one at a time: actors renewing their
        worlds and servers looking up a holder's address share it)."""
        async with self._lock:
            assert self._conn is not None, "start() first"
            rows: list[Any] = await self._conn.fetch(query, *args)
            return rows

    async def acquire(self, pto_ids: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
        """Take or renew the leases of ``pto_ids`` that are free, expired or ours.

        Returns (held now, newly taken: held now and not held before)."""
        now = self.clock.now().timestamp()
        rows = await self._fetch(
            _ACQUIRE, list(pto_ids), self.holder, now + self.ttl, now, self.address
        )
        held = frozenset(str(r[0]) for r in rows)
        before = self.held
        lost = frozenset(pto_ids) - held  # asked for, not granted: another process's now
        self.held = (before - lost) | held
        return held, held - before

    async def take(self, pto_id: str) -> bool:
        """A play's lease: take or renew it (True when newly taken: the world must be
        reloaded from the last committed state), or raise ``WorldLeased`` naming the live
        process that holds it and when to retry. Nothing is changed then."""
        held, taken = await self.acquire([pto_id])
        if pto_id in held:
            return pto_id in taken
        rows = await self._fetch(
            "SELECT holder, expires FROM world_leases WHERE pto_id = $1", pto_id
        )
        row = rows[0] if rows else None
        if row is None:  # released between the two statements: free now
            return await self.take(pto_id)
        wait = float(row[1]) - self.clock.now().timestamp()
        raise WorldLeased(pto_id, str(row[0]), max(wait, 0.0))

    async def claim(self, pto_id: str) -> None:
        """Before writing the world of ``pto_id`` through the API: renew the lease if it
        is ours, take it if it expired; nothing if nobody holds it (a world just launched:
        whoever steps it first takes it); ``WorldLeased`` if another live process does."""
        now = self.clock.now().timestamp()
        rows = await self._fetch(_CLAIM, pto_id, self.holder, now + self.ttl, now, self.address)
        if not rows:
            return
        holder, expires = str(rows[0][0]), float(rows[0][1])
        if holder == self.holder:
            self.held = self.held | {pto_id}
            return
        self.held = self.held - {pto_id}
        raise WorldLeased(pto_id, holder, max(expires - now, 0.0))

    async def address_of(self, pto_id: str) -> str:
        """Where the world's live holder answers HTTP: '' when nobody holds the lease, it
        has expired, it is ours, or its holder advertises no address."""
        rows = await self._fetch(
            "SELECT address FROM world_leases WHERE pto_id = $1 AND holder <> $2 AND expires > $3",
            pto_id,
            self.holder,
            self.clock.now().timestamp(),
        )
        return str(rows[0][0]) if rows else ""

    async def holders(self) -> dict[str, tuple[str, float]]:
        """Every lease: pto_id -> (holder, expiry)."""
        rows = await self._fetch("SELECT pto_id, holder, expires FROM world_leases")
        return {str(p): (str(h), float(e)) for p, h, e in rows}

    async def aclose(self) -> None:
        """Release this process's leases (others take its worlds at once) and disconnect."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            async with self._lock:
                await conn.execute("DELETE FROM world_leases WHERE holder = $1", self.holder)
        finally:
            self.held = frozenset()
            await conn.close()
