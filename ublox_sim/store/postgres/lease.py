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
Lock order: every statement here that locks several lease rows locks them in ``pto_id``
order (COLLATE "C"), as the writer does before a batch's world writes (``writer``), so
they cannot deadlock with each other; a statement PostgreSQL aborts all the same
(another order elsewhere: a DBA's session, an older process) runs again, a few times
(``CONFLICT_RETRIES``). Any other failure of the connection (dropped, the server shut
down) reaches the caller as ``PersistenceError``; the next call reconnects.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ...core.clock import Clock, WallClock
from ...core.errors import PersistenceError, WorldLeased
from .url import masked

DEFAULT_TTL = 5.0
TTL_ENV = "UBLOX_LEASE_TTL"
CONFLICT_RETRIES = 8  # runs of a lease statement PostgreSQL aborted (deadlock), at most
# Seconds ``aclose`` waits for the release and the goodbye on a connection that may not
# answer (a host gone dark): the leases expire by themselves.
CLOSE_TIMEOUT = 2.0

# Rows are inserted, or locked then renewed, in the order the SELECT gives them (the
# INSERT takes them one by one; a conflicting row is locked even when the WHERE below
# leaves it as it is): sorted, as every other locker of several lease rows sorts them.
_ACQUIRE = """
INSERT INTO world_leases (pto_id, holder, expires, address)
SELECT p, $2, $3, $5 FROM unnest($1::text[]) AS p ORDER BY p COLLATE "C"
ON CONFLICT (pto_id) DO UPDATE
SET holder = excluded.holder, expires = excluded.expires, address = excluded.address
WHERE world_leases.holder = excluded.holder OR world_leases.expires <= $4
RETURNING pto_id
"""

# A claim: the lease of one PTO renewed if ours, taken if expired. When it is not
# (another's, or nobody's), ``_HOLDER`` reads it again in a statement of its own: in the
# same statement the read would use the snapshot taken before the UPDATE waited for a
# concurrent takeover or release, and name a holder that has just been replaced.
_CLAIM = """
UPDATE world_leases SET holder = $2, expires = $3, address = $5
WHERE pto_id = $1 AND (holder = $2 OR expires <= $4)
RETURNING holder, expires
"""
_HOLDER = "SELECT holder, expires FROM world_leases WHERE pto_id = $1"
# A clean close: our rows, locked in order before they go.
_RELEASE = """
DELETE FROM world_leases WHERE pto_id IN (
    SELECT pto_id FROM world_leases WHERE holder = $1 ORDER BY pto_id FOR UPDATE
)
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
        self._started = False
        self._lock = asyncio.Lock()
        self.conflicts_retried = 0  # statements run again after PostgreSQL aborted them

    async def start(self) -> None:
        self._conn = await self._connect()
        self._started = True

    async def _connect(self) -> Any:
        try:
            return await asyncpg.connect(self.dsn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise PersistenceError(
                f"the world leases cannot connect to {masked(self.dsn)}: {exc}"
            ) from exc

    async def _fetch(self, query: str, *args: object, reconnect: bool = True) -> list[Any]:
        """One statement on the leases' connection (one at a time: actors renewing their
        worlds and servers looking up a holder's address share it). Run again when
        PostgreSQL aborts it for a deadlock or a serialization failure (it changed
        nothing then), up to ``CONFLICT_RETRIES`` times with a short random pause; any
        other failure is a ``PersistenceError``, and the next call reconnects (unless
        ``reconnect`` is False: then a lost connection is a ``PersistenceError``)."""
        async with self._lock:
            assert self._started, "start() first"
            attempt = 0
            while True:
                attempt += 1
                try:
                    if self._conn is None or self._conn.is_closed():
                        if not reconnect:
                            raise PersistenceError("the world leases' connection is lost")
                        self._conn = await self._connect()
                    timeout = None if reconnect else CLOSE_TIMEOUT
                    rows: list[Any] = await self._conn.fetch(query, *args, timeout=timeout)
                    return rows
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                    if attempt >= CONFLICT_RETRIES:
                        raise PersistenceError(
                            f"a world lease statement was aborted {attempt} times in a row"
                            f" by PostgreSQL ({exc}); nothing was changed"
                        ) from exc
                    self.conflicts_retried += 1
                    await asyncio.sleep(random.uniform(0, 0.005 * attempt))
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    asyncpg.InternalClientError,  # a session the server ended, mid-call
                ) as exc:
                    if not isinstance(exc, asyncpg.PostgresError) and self._conn is not None:
                        # The connection is unusable: the next call makes a new one.
                        self._conn.terminate()
                        self._conn = None
                    raise PersistenceError(
                        f"the world leases' connection to {masked(self.dsn)} failed: {exc}"
                    ) from exc

    async def acquire(self, pto_ids: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
        """Take or renew the leases of ``pto_ids`` that are free, expired or ours.

        Returns (held now, newly taken: held now and not held before)."""
        now = self.clock.now().timestamp()
        rows = await self._fetch(
            _ACQUIRE, sorted(set(pto_ids)), self.holder, now + self.ttl, now, self.address
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
        rows = await self._fetch(_HOLDER, pto_id)
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
        if await self._fetch(_CLAIM, pto_id, self.holder, now + self.ttl, now, self.address):
            self.held = self.held | {pto_id}
            return
        self.held = self.held - {pto_id}
        rows = await self._fetch(_HOLDER, pto_id)
        if not rows:
            return  # nobody holds it (never leased, or released meanwhile)
        holder, expires = str(rows[0][0]), float(rows[0][1])
        if holder == self.holder or expires <= now:  # freed and retaken meanwhile: again
            return await self.claim(pto_id)
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
        """Release this process's leases (others take its worlds at once) and disconnect.
        If the connection is lost, or the database cannot be reached, the leases are left
        to expire (after ``ttl`` seconds, as a killed process's): closing never connects
        again (asyncpg's connect waits 60 s for a host that does not answer) and never
        waits long for a connection that does not answer (``CLOSE_TIMEOUT``)."""
        if not self._started:
            return
        try:
            await self._fetch(_RELEASE, self.holder, reconnect=False)
        except (PersistenceError, TimeoutError):
            pass  # the rows expire: survivors take the worlds after the TTL
        finally:
            self._started = False
            self.held = frozenset()
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=CLOSE_TIMEOUT)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    conn.terminate()
