"""``UbloxLocalStorage``: the seed's synchronous storage API, for scripts.

It runs a ``LocalStore`` on an anyio blocking portal (an event loop in a worker
thread), so plain code can call it without async. Closing is optional, as with the
seed's: a storage still open when the interpreter exits is closed (flushed and
committed) by an exit hook.

    with UbloxLocalStorage() as storage:          # $UBLOX_STORE, or ~/.ublox / $UBLOX_HOME
        storage.save_player({"player_id": "alice", "usd_obbba_balance": 5000.0})
        storage.load_player("alice")

``UbloxLocalStorage(store="postgresql://user@host/db")`` runs the same operations on a
PostgreSQL database (``store.open`` says which specs name which store).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..core.errors import InvalidInput
from ..core.records import PTO, Player, PTSToken
from .home import Home
from .local import LocalStore, SeedOperations
from .open import PgStore, StoreSpec, default_backup_root, resolve_store
from .sqlite.writer import Synchronous
from .verify import Finding


class UbloxLocalStorage:
    """Synchronous facade over ``LocalStore`` (a home) or ``PgLocalStore`` (a PostgreSQL
    database) with the seed notes' method names."""

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        store: StoreSpec = None,
        synchronous: Synchronous = "NORMAL",
        backup_root: Path | None = None,
        shared: bool | None = None,
    ) -> None:
        # ``shared`` (PostgreSQL): None shares the database with other processes unless
        # $UBLOX_CLUSTER=0; False holds it alone (``store.postgres.mode``).
        where = resolve_store(store, home=home)
        # The home, or None for a database (``store`` names it, password masked).
        self.home: Home | None = where if isinstance(where, Home) else None
        self.store = where
        portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("asyncio")
        self._portal = portal_cm.__enter__()
        # One portal task enters and exits the store's task group, as anyio requires.
        opened: AbstractAsyncContextManager[SeedOperations]
        if isinstance(where, PgStore):
            from .postgres.local import PgLocalStore

            root = backup_root or default_backup_root(where)
            opened = PgLocalStore.open(where.url, backup_root=root, shared=shared)
        else:
            opened = LocalStore.open(where, synchronous=synchronous)
        store_cm = self._portal.wrap_async_context_manager(opened)
        try:
            self._store: SeedOperations = store_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        # Why a finalizer: the portal's event loop runs in a daemon thread. Left to the
        # garbage collector at interpreter exit, the portal's cleanup would ask that
        # thread to stop after Python had already frozen it, and wait forever. A
        # finalizer runs at exit (atexit, while the thread still runs) or when the
        # storage is collected, whichever comes first, and never twice; it holds the
        # context managers, not ``self``, so it does not keep the storage alive.
        self._finalizer = weakref.finalize(self, _close, store_cm, portal_cm)

    @property
    def home_path(self) -> Path:
        if self.home is None:
            raise InvalidInput(f"{self.store} is a database, not a home folder")
        return self.home.root

    def close(self) -> None:
        """Flush, commit and close. Safe to call twice."""
        self._finalizer()

    def __enter__(self) -> UbloxLocalStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # The seed's operations, one line each.

    def save_player(self, player: Mapping[str, Any] | Player) -> None:
        self._portal.call(self._store.save_player, player)

    def load_player(self, player_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._portal.call(self._store.load_player, player_id)
        return result

    def save_pto(self, pto: Mapping[str, Any] | PTO) -> None:
        self._portal.call(self._store.save_pto, pto)

    def load_pto(self, pto_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._portal.call(self._store.load_pto, pto_id)
        return result

    def save_pts_token(self, token: Mapping[str, Any] | PTSToken) -> None:
        self._portal.call(self._store.save_pts_token, token)

    def load_pts_token(self, token_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._portal.call(self._store.load_pts_token, token_id)
        return result

    def log_transaction(
        self,
        tx_type: str,
        from_player: str | None,
        to_player: str | None,
        amount: float | int | str,
        currency: str,
        pto_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        tx_id: int = self._portal.call(
            self._store.log_transaction,
            tx_type,
            from_player,
            to_player,
            amount,
            currency,
            pto_id,
            metadata,
        )
        return tx_id

    def log_play_session(
        self, pto_id: str, player_id: str, duration: float, quality: float, xUSD_earned: float
    ) -> int:
        session_id: int = self._portal.call(
            self._store.log_play_session, pto_id, player_id, duration, quality, xUSD_earned
        )
        return session_id

    def create_backup(self, name: str | None = None) -> Path:
        return self._portal.call(self._store.create_backup, name)

    def list_backups(self) -> list[dict[str, Any]]:
        return self._store.list_backups()

    def restore_backup(self, name: str, *, force: bool = False) -> list[str]:
        """Restore backup ``name``; returns warnings (see ``LocalStore.restore_backup``)."""
        warnings: list[str] = self._portal.call(
            lambda: self._store.restore_backup(name, force=force)
        )
        return warnings

    def get_global_stats(self) -> dict[str, dict[str, Any]]:
        return self._portal.call(self._store.get_global_stats)

    def export_to_json(self, path: Path | str | None = None) -> Path:
        return self._portal.call(self._store.export_to_json, path)

    def import_from_json(self, path: Path | str, *, force: bool = False) -> list[str]:
        """Import an export; returns warnings (see ``LocalStore.import_from_json``)."""
        warnings: list[str] = self._portal.call(
            lambda: self._store.import_from_json(path, force=force)
        )
        return warnings

    def verify(self) -> list[Finding]:
        """What ``verify`` finds in the store (empty: all consistent)."""
        findings: list[Finding] = self._portal.call(self._store.verify)
        return findings

    def flush(self) -> None:
        self._portal.call(self._store.flush)


def _close(
    store_cm: AbstractContextManager[SeedOperations],
    portal_cm: AbstractContextManager[BlockingPortal],
) -> None:
    try:
        store_cm.__exit__(None, None, None)
    finally:
        portal_cm.__exit__(None, None, None)
