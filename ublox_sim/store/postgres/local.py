"""The seed's storage operations (``store.local.SeedOperations``) on a PostgreSQL database:
what ``UbloxLocalStorage(store="postgresql://...")`` runs.

Rows go through the backend's writer, worlds are rows of ``worlds`` (the same ``.npz``
bytes), backups are the backend's REPEATABLE READ snapshots. An import is one unit,
its worlds included: all of it lands or none.

Like the engine, the facade shares the database with other processes by default
(``shared=False`` for one alone: ``store.postgres.mode``); an import and a restore take
it alone for their own duration (``StoreLocked`` while other processes share it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskGroup
from numpy.typing import NDArray

from ...core.errors import InvalidInput
from .. import backup
from ..local import Now, SeedOperations, opened, wall_clock
from ..sqlite.writer import Statement
from ..verify import Finding
from .backend import PostgresBackend, save_world
from .url import masked

# SQLite's AUTOINCREMENT moves past ids inserted as they are; the counters that stand for
# it here must too, or the next transaction or session numbered after an import would
# take an imported one's number (and be refused).
_COUNTERS_PAST_IMPORTED = [
    Statement(
        f"UPDATE counters SET value = GREATEST(value, (SELECT COALESCE(MAX({key}), 0) FROM"
        f" {table})) WHERE name = '{table}'"
    )
    for table, key in (("transactions", "tx_id"), ("play_sessions", "session_id"))
]


class PgLocalStore(SeedOperations):
    """One PostgreSQL database, with the seed's operations (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        backup_root: Path | None = None,
        clock: Now = wall_clock,
        shared: bool | None = None,
        **_sqlite_only: Any,  # synchronous, flush_interval: PostgreSQL commits durably
    ) -> None:
        self.url = url
        self.clock = clock
        self.backend = PostgresBackend(url, backup_root=backup_root, shared=shared)
        self.db = self.backend.db

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, *, task_group: TaskGroup | None = None, **options: Any
    ) -> AsyncIterator[PgLocalStore]:
        async with opened(cls(url, **options), task_group) as store:
            yield store

    async def start(self, tg: TaskGroup) -> None:
        await self.backend.start(tg)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.backend.aclose()

    # -- the hooks -------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return masked(self.url)

    def _default_export_path(self) -> Path:
        raise InvalidInput(
            f"{self._where} is a database, not a home folder: give the export's path"
        )

    async def _store_world(self, world_id: str, arrays: Mapping[str, NDArray[np.generic]]) -> None:
        # What it is given, as its records' upserts: the facade holds no world lease.
        await self.db.submit([save_world(world_id, arrays)])

    async def _import(
        self, unit: list[Statement], worlds: Mapping[str, Mapping[str, NDArray[np.generic]]]
    ) -> None:
        saves = [save_world(w, a) for w, a in worlds.items()]
        async with self.backend.exclusively("an import"):
            await self.db.submit([*saves, *unit, *_COUNTERS_PAST_IMPORTED])

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]:
        return await self.backend.load_world(world_id)

    async def flush(self) -> None:
        await self.backend.flush_worlds()

    async def verify(self) -> list[Finding]:
        return await self.backend.verify()

    # -- backups -----------------------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path:
        return await self.backend.create_backup(name)

    def list_backups(self) -> list[dict[str, Any]]:
        return self.backend.list_backups()

    async def restore_backup(self, name: str, *, force: bool = False) -> list[str]:
        """Replace every row with backup ``name``'s, after a ``pre_restore_*`` snapshot of
        the current ones; returns what ``verify`` says of the restored store. (``force``
        is SQLite's: a PostgreSQL snapshot carries no file checksums to accept.)"""
        self.backend.check_backup(name)
        async with self.backend.exclusively("a backup restore"):
            await self.create_backup(backup.safety_backup_name())
            await self.backend.restore_backup(name)
        return [str(f) for f in await self.verify()]


__all__ = ["PgLocalStore"]
