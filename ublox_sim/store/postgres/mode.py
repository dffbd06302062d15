"""Shared or exclusive: how a process holds a PostgreSQL database (issue #14).

*Shared*, the default: several processes write the database at once (the rows' guards
decide races, world leases say who steps which world, the event log feeds every
process's bus). Each holds ``pg_try_advisory_lock_shared(WRITER_LOCK, <schema>)`` for
its life.

*Exclusive*: one process alone, which then needs neither the rereads nor the leases
(1.4-1.7x the throughput of one shared process, README "PostgreSQL"). It holds
``pg_try_advisory_lock(WRITER_LOCK, <schema>)``. A scenario run is always exclusive: it holds its
writes in one transaction between checkpoints, and its bytes depend on stepping every
world itself. ``migrate`` opens both ends exclusive; an import and a backup restore made
through a shared store take the exclusive lock for their own duration (``exclusively``).

The two exclude each other, both ways: a refusal is a ``StoreLocked`` saying which mode
holds the database and what to do. The lock is a session's: it goes when the process's
connection does (a clean close, or a ``kill -9``: the server sees the socket close).

Advisory locks belong to the whole database, so each is keyed by the store's schema too
(``SCHEMA_KEY``: a hash of ``current_schema()``, the first schema of the connection's
``search_path``, e.g. ``?search_path=NAME`` in the URL): stores in two schemas of one
database do not contend for their locks.

SQLite homes have one writer (``flock``), whatever is asked.
"""

from __future__ import annotations

import os
from typing import Any

from ...core.errors import InvalidInput, StoreLocked

CLUSTER_ENV = "UBLOX_CLUSTER"
# The advisory lock key of the database's writers (shared or exclusive): the first of
# two int4 keys, the second the store's schema (``SCHEMA_KEY``).
WRITER_LOCK = 0x75B10C6
# The second key of every advisory lock of ours: the store's schema (SQL, an int4).
SCHEMA_KEY = "hashtext(COALESCE(current_schema(), ''))"

# A two-key advisory lock shows its keys as classid and objid (oids: unsigned), objsubid 2.
_HOLDERS = f"""
SELECT mode, count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND classid::bigint = $1 AND objid::bigint = {SCHEMA_KEY}::bigint & 4294967295
  AND pid <> pg_backend_pid()
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY mode
"""

EXCLUSIVE_USES = (
    "a scenario run, migrate, an import or a backup restore, or a process opened with"
    f" shared=False, {CLUSTER_ENV}=0 or serve --exclusive"
)


def choose_shared(shared: bool | None, *, hold_commits: bool) -> bool:
    """Whether a process shares the database: ``shared`` if given, else ``$UBLOX_CLUSTER``
    (``1`` shared, ``0`` exclusive), else shared; a held (checkpointed) run is exclusive.
    ``InvalidInput`` for a held run asked to share, or another value of the variable."""
    if shared is None:
        text = os.environ.get(CLUSTER_ENV, "").strip()
        if text not in ("", "0", "1"):
            raise InvalidInput(f"{CLUSTER_ENV} must be 1 (shared) or 0 (exclusive), not {text!r}")
        # A held run cannot share, whatever the environment says to the processes.
        return not hold_commits and text != "0"
    if shared and hold_commits:
        raise InvalidInput(
            "a checkpointed scenario run holds its writes in one transaction between"
            " checkpoints and steps every world itself: it needs the database to itself"
            " (open it exclusive: shared=False)"
        )
    return shared


async def take_writer_lock(conn: Any, *, shared: bool, where: str) -> None:
    """This session's writer lock, shared or exclusive, or ``StoreLocked`` naming the
    mode that holds the database."""
    take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    if not await conn.fetchval(f"SELECT {take}($1, {SCHEMA_KEY})", WRITER_LOCK):
        raise StoreLocked(await refusal(conn, where, shared=shared))


async def take_exclusive_for(conn: Any, what: str, where: str) -> None:
    """A shared session's exclusive lock for ``what`` (an import, a restore): granted when
    no other process holds the database (a session's own shared lock does not conflict
    with it). Give it back with ``release_exclusive``."""
    if not await conn.fetchval(f"SELECT pg_try_advisory_lock($1, {SCHEMA_KEY})", WRITER_LOCK):
        raise StoreLocked(await refusal(conn, where, shared=False, what=what))


async def release_exclusive(conn: Any) -> None:
    await conn.fetchval(f"SELECT pg_advisory_unlock($1, {SCHEMA_KEY})", WRITER_LOCK)


async def refusal(conn: Any, where: str, *, shared: bool, what: str = "") -> str:
    """Why this session cannot have the writer lock: who holds it, and what to do."""
    held = {str(mode): int(n) for mode, n in await conn.fetch(_HOLDERS, WRITER_LOCK)}
    if held.get("ExclusiveLock"):
        return (
            f"another process holds {where} exclusively ({EXCLUSIVE_USES}): wait until it"
            " ends, or stop it; no process can open the database until then"
        )
    sharing = held.get("ShareLock", 0)
    if shared or not sharing:  # released meanwhile: the caller may simply try again
        return f"another process holds {where}; try again"
    who = "1 process shares" if sharing == 1 else f"{sharing} processes share"
    head = f"{who} {where} (shared mode, the default on PostgreSQL): "
    if what:
        return head + f"{what} needs the database to itself; stop them first"
    return head + (
        "this process opens it exclusive, which needs the database to itself; stop them"
        " first (a scenario run, a sweep and migrate always need it alone; an engine or a"
        " server asked for exclusive mode can share instead: leave out shared=False,"
        " UBLOX_CLUSTER=0 or --exclusive)"
    )
