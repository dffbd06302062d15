"""The local store: ``ublox.db`` + ``cdt_states/`` + ``export.json`` + ``backups/`` in one home.

``LocalStore`` runs the persistence actor and the CDT flusher and offers the seed
notes' storage operations as coroutines, taking and giving the seed's dicts (money
in major units). Like the seed's, it writes what it is given: a store edited
through it alone can disagree with its ledger, and ``verify`` says so. The
``Engine`` is the layer that keeps the ledger true.

    async with LocalStore.open(home) as store:
        await store.save_player({"player_id": "alice", "usd_obbba_balance": 5000.0})

It holds the open store's pieces together and delegates each job: the folder and
its lock to ``home``, reads to ``sqlite.queries``, rows to ``sqlite.tables``, the
export format to ``export``, backups and restores to ``backup``, checks to ``verify``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from anyio.abc import TaskGroup
from numpy.typing import NDArray

from ..core.clock import WallClock
from ..core.errors import BackupExists, InvalidInput, StoreError
from ..core.ids import check_file_name, check_id
from ..core.logsetup import get_logger
from ..core.money import CURRENCIES, to_cents
from ..core.records import (
    PTO,
    RECORD_TYPES,
    Player,
    PlaySession,
    PTSToken,
    R,
    Transaction,
    from_seed,
    iso,
    metadata_json,
    to_seed,
)
from ..core.tasks import joined_or_owned
from . import backup
from .cdt import CdtStore
from .export import check_export_digest, export_store, export_text, parse_export, parse_run
from .home import (
    Home,
    lock_home,
    refuse_lost_database,
    reset_dir,
    unlock_home,
    world_id_for,
    write_text_atomic,
)
from .sqlite import queries, rows
from .sqlite.schema import TX_TYPES
from .sqlite.tables import insert_sql, to_row, upsert_sql
from .sqlite.writer import PersistenceActor, Statement, Synchronous
from .verify import Finding, store_findings

log = get_logger(__name__)

# What the store stamps rows with (``created_at``...): a clock's ``now`` (the Engine
# passes its scenario's simulated one).
Now = Callable[[], datetime]
wall_clock: Now = WallClock().now


S = TypeVar("S", bound="SeedOperations")


@asynccontextmanager
async def opened(store: S, task_group: TaskGroup | None) -> AsyncIterator[S]:
    """``store`` started in ``task_group`` (or a task group of its own), closed on exit."""
    async with joined_or_owned(task_group) as tg:
        await store.start(tg)
        try:
            yield store
        finally:
            await store.aclose()


class SeedOperations:
    """The seed notes' storage operations over a writer (``db``: ``submit`` a unit of
    statements, ``fetchone``/``fetchall`` SQLite's SQL) and a place for worlds: the SQLite
    home (``LocalStore``) and a PostgreSQL database (``postgres.local``) fill the hooks."""

    # SQLite's PersistenceActor or PostgreSQL's PgWriter: the same submit/fetch methods.
    db: Any
    clock: Now

    # -- what each store does its own way ----------------------------------------------

    @property
    def _where(self) -> str:
        """The store, as messages name it."""
        raise NotImplementedError

    def _default_export_path(self) -> Path:
        raise NotImplementedError

    async def _store_world(self, world_id: str, arrays: Mapping[str, NDArray[np.generic]]) -> None:
        """Make a world's arrays durable now (its row is already in)."""
        raise NotImplementedError

    async def _import(
        self, unit: list[Statement], worlds: Mapping[str, Mapping[str, NDArray[np.generic]]]
    ) -> None:
        """Write an import's rows (one unit) and worlds; the rows never point at a world
        that is not there."""
        raise NotImplementedError

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]:
        raise NotImplementedError

    async def flush(self) -> None:
        """Make every world written so far durable now."""
        raise NotImplementedError

    async def verify(self) -> list[Finding]:
        raise NotImplementedError

    async def start(self, tg: TaskGroup) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def create_backup(self, name: str | None = None) -> Path:
        raise NotImplementedError

    def list_backups(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def restore_backup(self, name: str, *, force: bool = False) -> list[str]:
        raise NotImplementedError

    # -- players, PTOs, tokens -------------------------------------------------

    async def save_player(self, player: Mapping[str, Any] | Player) -> None:
        record = from_seed(Player, player)
        check_id(record.player_id, "player_id")
        if not record.created_at:
            record.created_at = iso(self.clock())
        await self.db.submit([Statement(upsert_sql(Player), to_row(record))])

    async def load_player(self, player_id: str) -> dict[str, Any] | None:
        record = await queries.load_record(self.db, Player, player_id)
        return None if record is None else to_seed(record)

    async def save_pto(self, pto: Mapping[str, Any] | PTO) -> None:
        """Save a PTO; its arrays, passed as ``pto["cdt"]`` (name → ndarray), go to its ``.npz``."""
        arrays: Mapping[str, NDArray[np.generic]] | None = None
        if isinstance(pto, Mapping):
            arrays = pto.get("cdt")
            pto = {k: v for k, v in pto.items() if k != "cdt"}
        record = from_seed(PTO, pto)
        check_file_name(record.pto_id, "pto_id")
        if not record.launch_time:
            record.launch_time = iso(self.clock())
        if arrays is not None:
            if not isinstance(arrays, Mapping) or not all(
                isinstance(v, np.ndarray) and not v.dtype.hasobject for v in arrays.values()
            ):
                raise InvalidInput("pto['cdt'] must be a dict of name → numeric numpy array")
            record.world_cdt_id = record.world_cdt_id or world_id_for(record.pto_id)
            check_file_name(record.world_cdt_id, "world_cdt_id")
        await self.db.submit([Statement(upsert_sql(PTO), to_row(record))])
        if arrays is not None:
            # Only once the row is in: a rejected save must not replace the world.
            assert record.world_cdt_id is not None
            await self._store_world(record.world_cdt_id, arrays)

    async def load_pto(self, pto_id: str) -> dict[str, Any] | None:
        """The PTO as a seed dict, with ``"cdt"`` (its arrays) when it has a world."""
        record = await queries.load_record(self.db, PTO, pto_id)
        if record is None:
            return None
        data = to_seed(record)
        if record.world_cdt_id:
            data["cdt"] = await self.load_world(record.world_cdt_id)
        return data

    async def save_pts_token(self, token: Mapping[str, Any] | PTSToken) -> None:
        record = from_seed(PTSToken, token)
        check_id(record.token_id, "token_id")
        if not record.purchase_time:
            record.purchase_time = iso(self.clock())
        await self.db.submit([Statement(upsert_sql(PTSToken), to_row(record))])

    async def load_pts_token(self, token_id: str) -> dict[str, Any] | None:
        record = await queries.load_record(self.db, PTSToken, token_id)
        return None if record is None else to_seed(record)

    async def load_all(self, cls: type[R]) -> list[R]:
        return await queries.load_records(self.db, cls)

    # -- the ledger and sessions ----------------------------------------------

    async def log_transaction(
        self,
        tx_type: str,
        from_player: str | None,
        to_player: str | None,
        amount: float | int | str,
        currency: str,
        pto_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Append a ledger row (amount in major units). Returns its tx_id."""
        if tx_type not in TX_TYPES:
            raise InvalidInput(f"tx_type {tx_type!r} is not one of {', '.join(TX_TYPES)}")
        if currency not in CURRENCIES:
            raise InvalidInput(f"currency {currency!r} is not one of {', '.join(CURRENCIES)}")
        for party in (from_player, to_player):
            if party is not None:
                check_id(party, "party id")
        record = Transaction(
            tx_id=None,
            tx_type=tx_type,
            from_player=from_player,
            to_player=to_player,
            amount=to_cents(amount),
            currency=currency,
            pto_id=pto_id,
            timestamp=iso(self.clock()),
            metadata=metadata_json(metadata),
        )
        (tx_id,) = await self.db.submit(
            [Statement(insert_sql(Transaction), to_row(record), want_rowid=True)]
        )
        return int(tx_id)

    async def log_play_session(
        self,
        pto_id: str,
        player_id: str,
        duration: float,
        quality: float,
        xUSD_earned: float | int | str,
        phase_locks: int = 0,
    ) -> int:
        """Record a play session (xUSD in major units). Returns its session_id."""
        record = from_seed(
            PlaySession,
            {
                "session_id": None,
                "pto_id": pto_id,
                "player_id": player_id,
                "duration": duration,
                "quality": quality,
                "xUSD_earned": xUSD_earned,
                "timestamp": iso(self.clock()),
                "phase_locks": phase_locks,
            },
        )
        (session_id,) = await self.db.submit(
            [Statement(insert_sql(PlaySession), to_row(record), want_rowid=True)]
        )
        return int(session_id)

    # -- reads ---------------------------------------------------------------------

    async def get_global_stats(self) -> dict[str, dict[str, Any]]:
        """Counts and sums per table (money in major units)."""
        return await queries.global_stats(self.db)

    async def events_after(self, since: int, limit: int = 500) -> list[tuple[int, str, str]]:
        """Up to ``limit`` logged events with ``seq > since``, oldest first: (seq, kind, payload)."""
        return await queries.events_after(self.db, since, limit)

    async def event_log_span(self) -> tuple[int, int]:
        """(oldest retained seq, newest seq ever numbered); (0, n) when none is retained."""
        return await queries.event_log_span(self.db)

    async def run_status(self) -> dict[str, Any] | None:
        """The scenario run recorded in this store (name, tick, total_ticks, finished), if any."""
        return await queries.run_status(self.db)

    async def token_versions(self) -> dict[str, int]:
        """Every player's token version (players never issued a token are absent: 0)."""
        return await queries.token_versions(self.db)

    async def find_receipt(self, principal: str, key: str) -> tuple[str, int, str] | None:
        """An idempotency key's (fingerprint, status, response JSON), if it was stored."""
        return await queries.find_receipt(self.db, principal, key)

    async def transactions_of(
        self, player_id: str, *, after: int = 0, limit: int = 50
    ) -> list[Transaction]:
        """A player's ledger rows (either side), oldest first, ``tx_id > after``: one page."""
        return await queries.transactions_of(self.db, player_id, after=after, limit=limit)

    async def is_empty(self) -> bool:
        return await queries.is_empty(self.db)

    # -- export / import ---------------------------------------------------------------

    async def export_data(self) -> dict[str, Any]:
        """The whole store as a JSON-ready dict (money in major units, arrays encoded), with
        its content digest."""
        await self.flush()
        return await export_store(self.load_all, self.load_world, await queries.run_record(self.db))

    async def export_to_json(self, path: Path | str | None = None) -> Path:
        """Write the full export (default ``<home>/export.json``) atomically; return its path."""
        target = Path(path) if path is not None else self._default_export_path()
        text = export_text(await self.export_data())
        await anyio.to_thread.run_sync(write_text_atomic, target, text)
        return target

    async def import_from_json(self, path: Path | str, *, force: bool = False) -> list[str]:
        """Load an export into this (empty) home, as it is; return warnings.

        Refused, with nothing changed: a file that is not a ublox export, damage (an
        array or record that does not decode), and content that no longer matches the
        digest recorded when the export was written, unless ``force`` (the edit was
        intended). A ledger that disagrees with its balances is imported as it is and
        reported in the warnings (``verify`` says the same afterwards)."""
        try:
            text = await anyio.Path(path).read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read export {path}: {exc}") from exc
        if not await self.is_empty():
            raise InvalidInput(f"{self._where} is not empty: import only into a new store")
        warnings = check_export_digest(data, str(path), force=force)
        records, worlds = parse_export(data, str(path))
        run = parse_run(data, str(path))
        unit = [
            Statement(insert_sql(type(r)), to_row(r))
            for cls in RECORD_TYPES
            for r in records[cls.TABLE]
        ]
        if run is not None:  # a run still going: resumable here as it was there
            unit.append(rows.save_run(run))
        await self._import(unit, worlds)
        # What verify says about the imported store, word for word and every check of it
        # (the export's own ledger rule alone would miss sessions, tokens and worlds).
        warnings.extend(str(f) for f in await self.verify())
        log.info("store.imported", path=str(path), warnings=len(warnings))
        return warnings


class LocalStore(SeedOperations):
    """The seed's storage operations over the persistence actor and the CDT store."""

    db: PersistenceActor

    def __init__(
        self,
        home: Home,
        *,
        synchronous: Synchronous = "NORMAL",
        flush_interval: float = 0.5,
        clock: Now = wall_clock,
        hold_commits: bool = False,
    ) -> None:
        self.home = home
        self.synchronous: Synchronous = synchronous
        self.flush_interval = flush_interval
        self.clock = clock
        self.cdt = CdtStore(home.cdt_dir)
        self.hold_commits = hold_commits
        self.db = PersistenceActor(home.db, synchronous=synchronous, hold_commits=hold_commits)
        self._tg: TaskGroup | None = None
        self._flusher_scope: anyio.CancelScope | None = None
        self._lock_fd: int | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        home: Path | str | Home | None = None,
        *,
        task_group: TaskGroup | None = None,
        **options: Any,
    ) -> AsyncIterator[LocalStore]:
        """Open the store at ``home`` and close it (flushed and committed) on exit."""
        resolved = home if isinstance(home, Home) else Home.resolve(home)
        async with opened(cls(resolved, **options), task_group) as store:
            yield store

    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        try:
            try:
                self.home.root.mkdir(parents=True, exist_ok=True)
                self._lock_fd = lock_home(self.home)
                self.home.backups.mkdir(exist_ok=True)
                self.cdt.prepare()
                if self.home.restore_marker.exists():
                    await anyio.to_thread.run_sync(backup.finish_restore, self.home)
                refuse_lost_database(self.home)
                # Half-written world files of a killed writer; we hold the lock, so
                # nobody is writing one now.
                for leftover in self.home.cdt_dir.glob(".*.tmp"):
                    leftover.unlink(missing_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot use {self.home.root} as a store: {exc.strerror or exc} "
                    "(check that it exists, is writable and has space)"
                ) from exc
            await self.db.start(tg)
        except BaseException:
            # Nothing of a refused open may linger: not the lock, not the actor's mailbox.
            self.db.discard()
            self._closed = True
            unlock_home(self._lock_fd)
            self._lock_fd = None
            raise
        # Made here, not in the flusher task: a store closed before that task first runs
        # must still stop it (cancelled before it is entered, it cancels on entry).
        self._flusher_scope = anyio.CancelScope()
        tg.start_soon(self._run_flusher, self._flusher_scope, name="cdt-flusher")

    async def _run_flusher(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.cdt.run_flusher(self.flush_interval)

    async def aclose(self) -> None:
        """Flush dirty arrays, drain and commit queued writes, close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._flusher_scope is not None:
                self._flusher_scope.cancel()
            try:
                await self.cdt.flush()
            finally:
                try:
                    await self.db.aclose()
                finally:
                    unlock_home(self._lock_fd)
                    self._lock_fd = None

    async def flush(self) -> None:
        """Make every dirty world durable now."""
        await self.cdt.flush()

    async def _store_world(self, world_id: str, arrays: Mapping[str, NDArray[np.generic]]) -> None:
        # Flushed at once, so the row points at a missing or old file for as short as possible.
        self.cdt.mark_dirty(world_id, arrays)
        await self.cdt.flush()

    async def _import(
        self, unit: list[Statement], worlds: Mapping[str, Mapping[str, NDArray[np.generic]]]
    ) -> None:
        # Arrays first: the database must never point at a file that is not there.
        for world_id, arrays in worlds.items():
            self.cdt.mark_dirty(world_id, arrays)
        await self.cdt.flush()
        await self.db.submit(unit)

    @property
    def _where(self) -> str:
        return str(self.home.root)

    def _default_export_path(self) -> Path:
        return self.home.export_path

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]:
        version = await self.world_version(world_id)
        return await self.cdt.aload(world_id, version)

    async def world_version(self, world_id: str) -> int | None:
        return await queries.world_version(self.db, world_id)

    async def verify(self) -> list[Finding]:
        """Every check ``verify_store`` runs, on this open store, after the writes queued."""
        await self.cdt.flush()
        cdt_dir = self.home.cdt_dir
        return await self.db.read_sync(lambda conn: store_findings(conn, cdt_dir))

    # -- backups -----------------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path:
        """A consistent snapshot in ``backups/NAME/`` (default ``backup_YYYYmmdd_HHMMSS``)."""
        if name is None:
            name = backup.new_backup_name(self.home)
        target = self.home.backup_dir(name)
        if target.exists():
            raise BackupExists(f"backup {name!r} already exists")
        partial = self.home.backups / f".{name}.partial"
        await anyio.to_thread.run_sync(reset_dir, partial)
        try:
            # Hold the flusher while the database is copied, so the arrays copied
            # next are the ones the database snapshot knows.
            await self.cdt.flush()
            await self.db.backup_to(partial / "ublox.db")
            await anyio.to_thread.run_sync(
                backup.copy_cdt_and_seal, self.home.cdt_dir, partial, target
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, partial, True)
            raise
        log.info("store.backup_created", name=name, path=str(target))
        return target

    def list_backups(self) -> list[dict[str, Any]]:
        """Each backup's name, creation time (UTC ISO) and size in bytes, oldest first."""
        return backup.list_backups(self.home)

    async def restore_backup(self, name: str, *, force: bool = False) -> list[str]:
        """Replace the store with a checked backup; the old state is kept as ``pre_restore_*``.

        A backup is restored as it was made. Damage is refused (integrity, schema
        version, a missing or unloadable world file), and so is a file that no longer
        matches the sha256 recorded in ``backup.json`` when the backup was made, unless
        ``force`` (the edit was intended). What the backup itself holds (a ledger that
        disagrees with its balances, say) is returned as warnings, never refused.
        The database connection is closed for the swap and reopened after it.
        """
        source = self.home.backup_dir(name)
        warnings = await anyio.to_thread.run_sync(lambda: backup.check_backup(source, force=force))
        await self.create_backup(backup.safety_backup_name())
        await self.cdt.flush()
        await self.db.aclose()
        try:
            await anyio.to_thread.run_sync(backup.start_restore, self.home, name)
        finally:
            self.db = PersistenceActor(
                self.home.db, synchronous=self.synchronous, hold_commits=self.hold_commits
            )
            assert self._tg is not None
            await self.db.start(self._tg)
        # The warnings go back to the caller (the CLI prints them), not into the log twice.
        log.info("store.restored", name=name, warnings=len(warnings))
        return warnings


__all__ = ["LocalStore", "SeedOperations", "opened"]
