"""The local store: ``ublox.db`` + ``cdt_states/`` + ``export.json`` + ``backups/`` in one home.

``LocalStore`` runs the persistence actor and the CDT flusher and offers the seed
notes' storage operations as coroutines, taking and giving the seed's dicts (money
in major units). Like the seed's, it writes what it is given: a store edited
through it alone can disagree with its ledger, and ``verify`` says so. The
``Engine`` is the layer that keeps the ledger true.

    async with LocalStore.open(home) as store:
        await store.save_player({"player_id": "alice", "usd_obbba_balance": 5000.0})
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import math
import os
import shutil
import sqlite3
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskGroup
from numpy.typing import NDArray

from ..actors.runtime import owned_task_group
from ..core.errors import (
    BackupError,
    BackupExists,
    CorruptCdtFile,
    InvalidBackupName,
    InvalidId,
    InvalidInput,
    InvalidState,
    SchemaError,
    StoreError,
    StoreLocked,
)
from ..core.ids import check_file_name, check_id
from ..core.logsetup import get_logger
from ..core.money import to_cents
from ..core.records import (
    PTO,
    RECORD_TYPES,
    Player,
    PlaySession,
    PTSToken,
    R,
    Record,
    Transaction,
    columns,
    from_row,
    from_seed,
    insert_sql,
    iso,
    metadata_json,
    select_sql,
    to_row,
    to_seed,
    upsert_sql,
)
from .cdt import CdtStore, fsync_dir, load_npz
from .sqlite.schema import CURRENCIES, SCHEMA_VERSION, TX_TYPES
from .sqlite.writer import PersistenceActor, Row, Statement, Synchronous, in_writer_thread
from .verify import Finding, database_findings, store_findings

log = get_logger(__name__)

EXPORT_FORMAT = "ublox-export"
# 2: a content digest, arrays byte-shuffled and deflated, one record per line.
EXPORT_VERSION = 2
EXPORT_VERSIONS = (1, 2)
Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Home:
    """The layout of a store folder."""

    root: Path

    @classmethod
    def resolve(cls, home: Path | str | None = None) -> Home:
        """The argument, else ``$UBLOX_HOME``, else ``~/.ublox``."""
        if home is None:
            home = os.environ.get("UBLOX_HOME") or Path.home() / ".ublox"
        return cls(Path(home).expanduser().absolute())

    @property
    def db(self) -> Path:
        return self.root / "ublox.db"

    @property
    def cdt_dir(self) -> Path:
        return self.root / "cdt_states"

    @property
    def export_path(self) -> Path:
        return self.root / "export.json"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def restore_marker(self) -> Path:
        return self.root / "restore-in-progress.json"

    def backup_dir(self, name: str) -> Path:
        try:
            check_file_name(name, "backup name")
        except InvalidId as exc:
            raise InvalidBackupName(str(exc)) from exc
        return self.backups / name


def world_id_for(pto_id: str) -> str:
    return f"{pto_id}_world_cdt"


class LocalStore:
    """The seed's storage operations over the persistence actor and the CDT store."""

    def __init__(
        self,
        home: Home,
        *,
        synchronous: Synchronous = "NORMAL",
        flush_interval: float = 0.5,
        clock: Clock = wall_clock,
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
        if task_group is not None:
            store = cls(resolved, **options)
            await store.start(task_group)
            try:
                yield store
            finally:
                await store.aclose()
            return
        async with owned_task_group() as tg:
            store = cls(resolved, **options)
            await store.start(tg)
            try:
                yield store
            finally:
                await store.aclose()

    async def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        try:
            try:
                self.home.root.mkdir(parents=True, exist_ok=True)
                self._lock_fd = lock_home(self.home)
                self.home.backups.mkdir(exist_ok=True)
                self.cdt.prepare()
                if self.home.restore_marker.exists():
                    await anyio.to_thread.run_sync(_finish_restore, self.home)
                _refuse_lost_database(self.home)
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
        tg.start_soon(self._run_flusher, name="cdt-flusher")

    async def _run_flusher(self) -> None:
        with anyio.CancelScope() as scope:
            self._flusher_scope = scope
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

    # -- players, PTOs, tokens -------------------------------------------------

    async def save_player(self, player: Mapping[str, Any] | Player) -> None:
        record = from_seed(Player, player)
        check_id(record.player_id, "player_id")
        if not record.created_at:
            record.created_at = iso(self.clock())
        await self.db.submit([Statement(upsert_sql(Player), to_row(record))])

    async def load_player(self, player_id: str) -> dict[str, Any] | None:
        record = await self._load(Player, player_id)
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
            # Only once the row is in: a rejected save must not replace the world. Flushed
            # at once, so the row points at a missing or old file for as short as possible.
            assert record.world_cdt_id is not None
            self.cdt.mark_dirty(record.world_cdt_id, arrays)
            await self.cdt.flush()

    async def load_pto(self, pto_id: str) -> dict[str, Any] | None:
        """The PTO as a seed dict, with ``"cdt"`` (its arrays) when it has a world."""
        record = await self._load(PTO, pto_id)
        if record is None:
            return None
        data = to_seed(record)
        if record.world_cdt_id:
            data["cdt"] = await self.load_world(record.world_cdt_id)
        return data

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]:
        version = await self.world_version(world_id)
        return await self.cdt.aload(world_id, version)

    async def world_version(self, world_id: str) -> int | None:
        row = await self.db.fetchone(
            "SELECT version FROM cdt_files WHERE world_cdt_id = ?", (world_id,)
        )
        return None if row is None else int(row[0])

    async def save_pts_token(self, token: Mapping[str, Any] | PTSToken) -> None:
        record = from_seed(PTSToken, token)
        check_id(record.token_id, "token_id")
        if not record.purchase_time:
            record.purchase_time = iso(self.clock())
        await self.db.submit([Statement(upsert_sql(PTSToken), to_row(record))])

    async def load_pts_token(self, token_id: str) -> dict[str, Any] | None:
        record = await self._load(PTSToken, token_id)
        return None if record is None else to_seed(record)

    async def _load(self, cls: type[R], key: str) -> R | None:
        row = await self.db.fetchone(f"{select_sql(cls)} WHERE {cls.KEY} = ?", (key,))
        return None if row is None else from_row(cls, row)

    async def load_all(self, cls: type[R]) -> list[R]:
        rows = await self.db.fetchall(f"{select_sql(cls)} ORDER BY {cls.KEY}")
        return [from_row(cls, row) for row in rows]

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
        return tx_id

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
        return session_id

    # -- stats -------------------------------------------------------------------

    async def get_global_stats(self) -> dict[str, dict[str, Any]]:
        """Counts and sums per table (money in major units)."""

        async def one(sql: str) -> Row:
            row = await self.db.fetchone(sql)
            assert row is not None  # aggregates always give one row
            return row

        (n, usd, xusd, play, locks) = await one(
            "SELECT COUNT(*), COALESCE(SUM(usd_obbba_balance),0), COALESCE(SUM(xUSD_balance),0),"
            " COALESCE(SUM(total_play_time),0), COALESCE(SUM(phase_locks_count),0) FROM players"
        )
        players = {
            "count": n,
            "usd_obbba_total": usd / 100,
            "xUSD_total": xusd / 100,
            "total_play_time": play,
            "phase_locks_total": locks,
        }
        (n, raised, pool, atu) = await one(
            "SELECT COUNT(*), COALESCE(SUM(funding_raised),0), COALESCE(SUM(xUSD_pool),0),"
            " COALESCE(SUM(atu_spent),0) FROM ptos"
        )
        by_status = {
            s: c
            for s, c in await self.db.fetchall("SELECT status, COUNT(*) FROM ptos GROUP BY status")
        }
        ptos = {
            "count": n,
            "by_status": by_status,
            "funding_raised_total": raised / 100,
            "xUSD_pool_total": pool / 100,
            "atu_spent_total": atu,
        }
        (n, hours, played, paid) = await one(
            "SELECT COUNT(*), COALESCE(SUM(hours_committed),0), COALESCE(SUM(hours_played),0),"
            " COALESCE(SUM(purchase_price),0) FROM pts_tokens"
        )
        tokens = {
            "count": n,
            "hours_committed_total": hours,
            "hours_played_total": played,
            "purchase_price_total": paid / 100,
        }
        volume = {
            f"{t}/{c}": v / 100
            for t, c, v in await self.db.fetchall(
                "SELECT tx_type, currency, SUM(amount) FROM transactions GROUP BY tx_type, currency"
            )
        }
        (n,) = await one("SELECT COUNT(*) FROM transactions")
        transactions = {"count": n, "volume": volume}
        (n, duration, earned, quality) = await one(
            "SELECT COUNT(*), COALESCE(SUM(duration),0), COALESCE(SUM(xUSD_earned),0),"
            " COALESCE(AVG(quality),0) FROM play_sessions"
        )
        sessions = {
            "count": n,
            "duration_total": duration,
            "xUSD_earned_total": earned / 100,
            "quality_mean": quality,
        }
        return {
            "players": players,
            "ptos": ptos,
            "pts_tokens": tokens,
            "transactions": transactions,
            "play_sessions": sessions,
        }

    # -- export / import -------------------------------------------------------

    # -- the event log (see events.py; retention in schema.EVENT_RETENTION) ----------

    async def events_after(self, since: int, limit: int = 500) -> list[tuple[int, str, str]]:
        """Up to ``limit`` logged events with ``seq > since``, oldest first: (seq, kind, payload)."""
        rows = await self.db.fetchall(
            "SELECT seq, kind, payload FROM event_log WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, limit),
        )
        return [(int(seq), str(kind), str(payload)) for seq, kind, payload in rows]

    async def event_log_span(self) -> tuple[int, int]:
        """(oldest retained seq, newest seq ever numbered); (0, n) when none is retained."""
        row = await self.db.fetchone(
            "SELECT (SELECT COALESCE(MIN(seq), 0) FROM event_log),"
            " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'event_log'), 0)"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def run_status(self) -> dict[str, Any] | None:
        """The scenario run recorded in this store (name, tick, total_ticks, finished), if any."""
        row = await self.db.fetchone("SELECT name, tick, total_ticks, finished FROM runs")
        if row is None:
            return None
        name, tick, total, finished = row
        return {"name": name, "tick": tick, "total_ticks": total, "finished": bool(finished)}

    async def export_data(self) -> dict[str, Any]:
        """The whole store as a JSON-ready dict (money in major units, arrays base64), with
        its content digest."""
        await self.cdt.flush()
        data: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "schema_version": SCHEMA_VERSION,
        }
        for cls in RECORD_TYPES:
            records = await self.load_all(cls)  # type: ignore[type-var]
            data[cls.TABLE] = [to_seed(r) for r in records]
        for pto in data["ptos"]:
            if pto["world_cdt_id"]:
                arrays = await self.load_world(pto["world_cdt_id"])
                pto["cdt"] = {name: encode_array(a) for name, a in sorted(arrays.items())}
        run = await self.db.fetchone(
            "SELECT name, seed, scenario, tick, total_ticks, finished FROM runs WHERE run_id = 1"
        )
        if run is not None:
            name, seed, scenario, tick, total, finished = run
            data["run"] = {
                "name": name,
                "seed": seed,
                "scenario": json.loads(str(scenario)),
                "tick": tick,
                "total_ticks": total,
                "finished": bool(finished),
            }
        # Recorded in every export, the file's and the HTTP API's: import checks it.
        data["digest"] = export_digest(data)
        return data

    async def export_to_json(self, path: Path | str | None = None) -> Path:
        """Write the full export (default ``<home>/export.json``) atomically; return its path."""
        target = Path(path) if path is not None else self.home.export_path
        text = export_text(await self.export_data())
        await anyio.to_thread.run_sync(_write_text_atomic, target, text)
        return target

    # -- the game server's bookkeeping ------------------------------------------

    async def token_versions(self) -> dict[str, int]:
        """Every player's token version (players never issued a token are absent: 0)."""
        rows = await self.db.fetchall("SELECT player_id, version FROM player_token_versions")
        return {str(pid): int(version) for pid, version in rows}

    async def find_receipt(self, principal: str, key: str) -> tuple[str, int, str] | None:
        """An idempotency key's (fingerprint, status, response JSON), if it was stored."""
        row = await self.db.fetchone(
            "SELECT fingerprint, status, response FROM idempotency_keys"
            " WHERE principal = ? AND key = ?",
            (principal, key),
        )
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]))

    async def transactions_of(
        self, player_id: str, *, after: int = 0, limit: int = 50
    ) -> list[Transaction]:
        """A player's ledger rows (either side), oldest first, ``tx_id > after``: one page."""
        rows = await self.db.fetchall(
            "SELECT tx_id, tx_type, from_player, to_player, amount, currency, pto_id,"
            " timestamp, metadata FROM transactions"
            " WHERE tx_id > ? AND (from_player = ? OR to_player = ?)"
            " ORDER BY tx_id LIMIT ?",
            (after, player_id, player_id, limit),
        )
        return [Transaction(*row) for row in rows]

    async def verify(self) -> list[Finding]:
        """Every check ``verify_store`` runs, on this open store, after the writes queued."""
        await self.cdt.flush()
        cdt_dir = self.home.cdt_dir
        return await self.db.call(
            lambda conn: in_writer_thread(conn, lambda c: store_findings(c, cdt_dir))
        )

    async def is_empty(self) -> bool:
        for table in ("players", "ptos", "transactions"):
            if await self.db.fetchone(f"SELECT 1 FROM {table} LIMIT 1") is not None:
                return False
        return True

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
            raise InvalidInput(f"{self.home.root} is not empty: import only into a new home")
        warnings = check_export_digest(data, str(path), force=force)
        records, worlds = parse_export(data, str(path))
        # Arrays first: the database must never point at a file that is not there.
        for world_id, arrays in worlds.items():
            self.cdt.mark_dirty(world_id, arrays)
        await self.cdt.flush()
        unit = [
            Statement(insert_sql(type(r)), to_row(r))
            for cls in RECORD_TYPES
            for r in records[cls.TABLE]
        ]
        await self.db.submit(unit)
        # What verify says about the imported store, word for word and every check of it
        # (the export's own ledger rule alone would miss sessions, tokens and worlds).
        warnings.extend(str(f) for f in await self.verify())
        log.info("store.imported", path=str(path), warnings=len(warnings))
        return warnings

    # -- backups -----------------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path:
        """A consistent snapshot in ``backups/NAME/`` (default ``backup_YYYYmmdd_HHMMSS``)."""
        if name is None:
            name = f"backup_{wall_clock():%Y%m%d_%H%M%S}"
            while self.home.backups.joinpath(name).exists():
                name = f"{name}_1" if name.count("_") == 2 else _bump(name)
        target = self.home.backup_dir(name)
        if target.exists():
            raise BackupExists(f"backup {name!r} already exists")
        partial = self.home.backups / f".{name}.partial"
        await anyio.to_thread.run_sync(_reset_dir, partial)
        try:
            # Hold the flusher while the database is copied, so the arrays copied
            # next are the ones the database snapshot knows.
            await self.cdt.flush()
            await self.db.backup_to(partial / "ublox.db")
            await anyio.to_thread.run_sync(_copy_cdt_and_seal, self.home.cdt_dir, partial, target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, partial, True)
            raise
        log.info("store.backup_created", name=name, path=str(target))
        return target

    def list_backups(self) -> list[dict[str, Any]]:
        """Each backup's name, creation time (UTC ISO) and size in bytes, oldest first."""
        return list_backups(self.home)

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
        warnings = await anyio.to_thread.run_sync(lambda: check_backup(source, force=force))
        await self.create_backup(f"pre_restore_{wall_clock():%Y%m%d_%H%M%S_%f}")
        await self.cdt.flush()
        await self.db.aclose()
        try:
            await anyio.to_thread.run_sync(_start_restore, self.home, name)
        finally:
            self.db = PersistenceActor(
                self.home.db, synchronous=self.synchronous, hold_commits=self.hold_commits
            )
            assert self._tg is not None
            await self.db.start(self._tg)
        # The warnings go back to the caller (the CLI prints them), not into the log twice.
        log.info("store.restored", name=name, warnings=len(warnings))
        return warnings


def database_lost(home: Home) -> bool:
    """True when ublox.db is missing or empty but world files remain beside it."""
    if home.db.exists() and home.db.stat().st_size > 0:
        return False
    return home.cdt_dir.is_dir() and any(home.cdt_dir.glob("*.npz"))


def _refuse_lost_database(home: Home) -> None:
    """An empty or missing ublox.db beside world files is a lost database, not a new store:
    opening it would make every balance look gone without a word."""
    if database_lost(home):
        raise SchemaError(
            f"{home.db} is missing or empty but {home.cdt_dir} holds worlds: the database "
            "was lost; restore a backup (`ublox-sim backup restore NAME`) or move the folder away"
        )


# -- one writer per home --------------------------------------------------------------


def lock_home(home: Home) -> int:
    """Take the home's OS lock (``flock`` on ``.lock``) or raise StoreLocked at once.

    The kernel drops the lock when its holder dies, so a killed process never
    blocks the next open; a second opener (another process, or another Engine in
    this one: each open is its own file description) is refused.
    """
    path = home.root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"{home.root} is already open by another engine or process (lock {path}); "
            "close that one first"
        ) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock_home(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- helpers that run in worker threads --------------------------------------------


ARRAY_ENCODING = "shuffle+zlib+base64"


def shuffle_bytes(array: NDArray[np.generic]) -> bytes:
    """The array's bytes as byte planes: byte 0 of every item, then byte 1, ..."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize).T.tobytes()


def unshuffle_bytes(raw: bytes, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    """The inverse of ``shuffle_bytes``: a fresh, writable array."""
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def encode_array(array: NDArray[np.generic]) -> dict[str, Any]:
    """An array as JSON: its bytes byte-shuffled, deflated and base64-encoded.

    Byte-shuffling (all first bytes, then all second bytes, ...) puts the float64
    exponents side by side, where deflate finds them alike; the mantissas stay as
    they are. Lossless: decoding gives the same bytes."""
    return {
        "dtype": array.dtype.str,
        # (not np.ascontiguousarray(array).shape: that makes a 0-d array 1-d)
        "shape": list(array.shape),
        "encoding": ARRAY_ENCODING,
        "data": base64.b64encode(zlib.compress(shuffle_bytes(array), 9)).decode("ascii"),
    }


def decode_array(data: Mapping[str, Any], where: str) -> NDArray[np.generic]:
    """The inverse of ``encode_array``; also reads release 0.1.0's plain base64."""
    try:
        dtype = np.dtype(str(data["dtype"]))
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        shape = tuple(int(n) for n in data["shape"])
        if any(n < 0 for n in shape):
            raise ValueError(f"negative dimension in {shape}")
        raw = base64.b64decode(str(data["data"]), validate=True)
        encoding = data.get("encoding")
        size = math.prod(shape) * dtype.itemsize
        if encoding == ARRAY_ENCODING:
            inflater = zlib.decompressobj()
            # Never inflate more than the shape says: a doctored size is not a memory bomb.
            raw = inflater.decompress(raw, size + 1)
            if len(raw) != size or not inflater.eof or inflater.unused_data:
                raise ValueError(f"the data does not hold {shape} × {dtype.str}")
            return unshuffle_bytes(raw, dtype, shape)
        if encoding is not None:
            raise ValueError(f"unknown encoding {encoding!r}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise InvalidInput(f"{where}: bad array: {exc}") from exc


def export_digest(data: Mapping[str, Any]) -> str:
    """sha256 over an export's content (everything but the digest), independent of layout."""
    content = {k: v for k, v in data.items() if k != "digest"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_export_digest(data: object, where: str, *, force: bool) -> list[str]:
    """Refuse an export edited since it was written (unless ``force``); return warnings."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"{where} is not a ublox export (missing format: {EXPORT_FORMAT})")
    recorded = data.get("digest")
    if recorded is None and _export_predates_digests(data):
        return [
            f"export {where} records no content digest: it was written before digests "
            f"were recorded (export version {data.get('version')}), so it could not be "
            "checked for edits since"
        ]
    if recorded is None:
        # Every export of a format that records a digest has one: deleting it is an
        # edit, not an old file (else deleting it would be how to slip an edit past).
        message = (
            f"export {where} (export version {data.get('version')!r}) has lost the content "
            "digest that every export of its format records (edited by hand?)"
        )
    elif recorded == export_digest(data):
        return []
    else:
        message = (
            f"export {where} differs from the content digest recorded in it when it was "
            "written (edited by hand?)"
        )
    if not force:
        raise InvalidInput(
            f"{message}; if the edit was intended, import it with force=True "
            f"(`ublox-sim import {where} --force`)"
        )
    return [f"{message}; imported anyway (force)"]


# What the last release before digests (0.1.0) wrote: export version 1 of a schema-2 store.
PRE_DIGEST_EXPORT_VERSION = 1
PRE_DIGEST_SCHEMA_VERSION = 2


def _export_predates_digests(data: Mapping[str, Any]) -> bool:
    """True only for an export whose format says it was written before digests existed:
    version 1, of a schema no newer than 0.1.0's, with none of version 2's encoded arrays
    (a file relabelled "version": 1 to shed its digest is not one)."""
    if data.get("version") != PRE_DIGEST_EXPORT_VERSION:
        return False
    schema = data.get("schema_version")
    if not isinstance(schema, int) or schema > PRE_DIGEST_SCHEMA_VERSION:
        return False
    ptos = data.get("ptos")
    for pto in ptos if isinstance(ptos, list) else []:
        cdt = pto.get("cdt") if isinstance(pto, dict) else None
        for spec in cdt.values() if isinstance(cdt, dict) else []:
            if isinstance(spec, dict) and "encoding" in spec:
                return False
    return True


def export_text(data: Mapping[str, Any]) -> str:
    """The export as JSON text: one key per line, and one record per line.

    A record per line keeps it readable (and ``grep``-able, and diffable) at about
    30% less than an indented tree."""
    lines = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, list) and value:
            items = ",\n".join("  " + _compact(item) for item in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {_compact(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_export(
    data: object, where: str
) -> tuple[dict[str, list[Record]], dict[str, dict[str, NDArray[np.generic]]]]:
    """Validate an export's shape and turn it into records and world arrays."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"{where} is not a ublox export (missing format: {EXPORT_FORMAT})")
    if data.get("version") not in EXPORT_VERSIONS:
        raise InvalidInput(f"{where}: export version {data.get('version')!r} is not supported")
    records: dict[str, list[Record]] = {}
    worlds: dict[str, dict[str, NDArray[np.generic]]] = {}
    for cls in RECORD_TYPES:
        items = data.get(cls.TABLE, [])
        if not isinstance(items, list):
            raise InvalidInput(f"{where}: {cls.TABLE} must be a list")
        parsed: list[Record] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidInput(f"{where}: {cls.TABLE}[{index}] must be an object")
            item = dict(item)
            cdt = item.pop("cdt", None)
            try:
                record: Record = from_seed(cls, item)  # type: ignore[type-var]
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {cls.TABLE}[{index}]: {exc}") from exc
            if isinstance(record, PTO) and cdt is not None:
                if not record.world_cdt_id or not isinstance(cdt, dict):
                    raise InvalidInput(f"{where}: ptos[{index}].cdt without a world_cdt_id")
                check_file_name(record.world_cdt_id, "world_cdt_id")
                worlds[record.world_cdt_id] = {
                    name: decode_array(spec, f"{where}: ptos[{index}].cdt.{name}")
                    for name, spec in cdt.items()
                }
            parsed.append(record)
        records[cls.TABLE] = parsed
    return records, worlds


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _bump(name: str) -> str:
    stem, _, n = name.rpartition("_")
    return f"{stem}_{int(n) + 1}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_cdt_and_seal(cdt_dir: Path, partial: Path, target: Path) -> None:
    dest = partial / "cdt_states"
    dest.mkdir()
    for path in sorted(cdt_dir.glob("*.npz")):
        if not path.name.startswith(".") and not path.is_symlink():
            shutil.copy2(path, dest / path.name)
    files = [partial / "ublox.db", *sorted(dest.iterdir())]
    manifest = {
        "created": iso(wall_clock()),
        "schema_version": SCHEMA_VERSION,
        # What restore checks the copy against: an edit by hand is not damage a
        # check can see, so the content as it was made is recorded here.
        "sha256": {path.relative_to(partial).as_posix(): file_sha256(path) for path in files},
    }
    (partial / "backup.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in (*files, partial / "backup.json"):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(dest)
    fsync_dir(partial)
    os.replace(partial, target)
    fsync_dir(target.parent)


def list_backups(home: Home) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    if not home.backups.is_dir():
        return result
    for path in sorted(home.backups.iterdir()):
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        try:
            created = json.loads((path / "backup.json").read_text())["created"]
        except (OSError, ValueError, KeyError, TypeError):
            created = iso(datetime.fromtimestamp(path.stat().st_mtime, UTC))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        result.append({"name": path.name, "created": created, "size": size, "path": str(path)})
    result.sort(key=lambda b: (b["created"], b["name"]))
    return result


# What a restore or an import refuses: damage. Everything else a store can hold.
DAMAGE_CHECKS = ("schema", "integrity")


def backup_predates_digests(manifest_schema: int, db_schema: int) -> bool:
    """A backup without sha256 digests is an old one only if both its manifest and its
    database say it was made by a schema no newer than release 0.1.0's (2), the last
    that recorded none: a manifest relabelled to shed its digests is not one."""
    return max(manifest_schema, db_schema) <= PRE_DIGEST_SCHEMA_VERSION


def check_backup(source: Path, *, force: bool = False) -> list[str]:
    """Refuse a backup that is missing, damaged or edited since it was made; return warnings.

    Damage (not a database, integrity, schema version, a missing or unloadable world
    file) is always refused. A file whose sha256 no longer matches ``backup.json`` is
    refused unless ``force``. Findings about the content (ledger, escrow, tokens) are
    returned as warnings: a backup is a faithful copy, not a judgement of the store."""
    if source.is_symlink() or not source.is_dir():
        raise BackupError(f"no backup at {source}")
    db = source / "ublox.db"
    if not db.is_file() or db.is_symlink():
        raise BackupError(f"backup {source.name!r} has no ublox.db")
    try:
        manifest = json.loads((source / "backup.json").read_text(encoding="utf-8"))
        schema = int(manifest["schema_version"])
        recorded = manifest.get("sha256")
        if recorded is not None and not (
            isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())
        ):
            raise ValueError("sha256 must map file names to hex digests")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Every backup is sealed with its manifest last: without it, it is incomplete.
        raise BackupError(
            f"backup {source.name!r} is incomplete or damaged (backup.json: {exc})"
        ) from exc
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            db_schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
            findings = database_findings(conn)
            damaged = [f for f in findings if f.check in DAMAGE_CHECKS]
            world_ids = [] if damaged else _world_files(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"backup {source.name!r} is not a usable database: {exc}") from exc
    if damaged:
        raise BackupError(f"backup {source.name!r} failed its check: {damaged[0]}")
    for name in world_ids:
        try:
            load_npz(source / "cdt_states" / name)
        except CorruptCdtFile as exc:
            raise BackupError(f"backup {source.name!r}: {exc}") from exc
    warnings: list[str] = []
    if recorded is None and backup_predates_digests(schema, db_schema):
        warnings.append(
            f"backup {source.name!r} records no sha256 digests: it was made before digests "
            f"were recorded (schema version {schema}), so its files could not be checked "
            "for edits since"
        )
    elif recorded is None:
        # Every backup made since digests exist records them: one without is an edit
        # (deleting the digests would otherwise be how to slip an edited file past).
        message = (
            f"backup {source.name!r}: {source / 'backup.json'} has lost the sha256 digests "
            f"that every backup of schema version {max(schema, db_schema)} records "
            "(edited by hand?)"
        )
        if not force:
            raise BackupError(
                f"{message}; if the edit was intended, restore it with force=True "
                f"(`ublox-sim backup restore {source.name} --force`)"
            )
        warnings.append(f"{message}; restored anyway (force)")
    else:
        for edited in _edited_files(source, recorded, ["ublox.db", *world_ids]):
            message = (
                f"backup {source.name!r}: {edited} differs from the sha256 recorded in "
                f"{source / 'backup.json'} when the backup was made (edited by hand?)"
            )
            if not force:
                raise BackupError(
                    f"{message}; if the edit was intended, restore it with force=True "
                    f"(`ublox-sim backup restore {source.name} --force`)"
                )
            warnings.append(f"{message}; restored anyway (force)")
    warnings.extend(str(f) for f in findings)
    return warnings


def _world_files(conn: sqlite3.Connection) -> list[str]:
    """The world files (relative to ``cdt_states/``) a database points at."""
    versions = dict(conn.execute("SELECT world_cdt_id, version FROM cdt_files").fetchall())
    names: list[str] = []
    for (world_id,) in conn.execute(
        "SELECT world_cdt_id FROM ptos WHERE world_cdt_id IS NOT NULL ORDER BY world_cdt_id"
    ):
        try:
            check_file_name(str(world_id), "world_cdt_id")
        except InvalidId as exc:
            raise BackupError(f"a world id in the backup's database is unusable: {exc}") from exc
        version = versions.get(world_id)
        names.append(f"{world_id}.npz" if version is None else f"{world_id}.v{version}.npz")
    return names


def _edited_files(source: Path, recorded: Mapping[str, str], names: list[str]) -> list[str]:
    """The backup's files that are not byte for byte what was recorded when it was made."""
    edited = []
    for name in dict.fromkeys(names):
        rel = name if name == "ublox.db" else f"cdt_states/{name}"
        want = recorded.get(rel)
        if want is None or file_sha256(source / rel) != want:
            edited.append(rel)
    return edited


def _start_restore(home: Home, name: str) -> None:
    # The marker makes the swap restartable: if we die half way, the next open
    # finishes it from the (untouched) backup instead of leaving a mixed store.
    _write_text_atomic(home.restore_marker, json.dumps({"backup": name}))
    _finish_restore(home)


def _finish_restore(home: Home) -> None:
    try:
        name = json.loads(home.restore_marker.read_text())["backup"]
        source = home.backup_dir(name)
    except (OSError, ValueError, KeyError, TypeError, BackupError) as exc:
        raise StoreError(
            f"{home.restore_marker} is unreadable ({exc}); restore a backup by hand"
        ) from exc
    tmp_db = home.root / "ublox.db.restore-tmp"
    shutil.copyfile(source / "ublox.db", tmp_db)
    with open(tmp_db, "rb") as handle:
        os.fsync(handle.fileno())
    for suffix in ("-wal", "-shm"):
        Path(f"{home.db}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_db, home.db)
    tmp_cdt = home.root / "cdt_states.restore-tmp"
    shutil.rmtree(tmp_cdt, ignore_errors=True)
    shutil.copytree(source / "cdt_states", tmp_cdt)
    old = home.root / "cdt_states.old"
    shutil.rmtree(old, ignore_errors=True)
    if home.cdt_dir.exists():
        os.replace(home.cdt_dir, old)
    os.replace(tmp_cdt, home.cdt_dir)
    fsync_dir(home.root)
    shutil.rmtree(old, ignore_errors=True)
    home.restore_marker.unlink()
    fsync_dir(home.root)


def restore_lost_store(home: Home, name: str, *, force: bool = False) -> list[str]:
    """Restore backup NAME into a home whose database was lost, where no store can open.

    The same checks as ``LocalStore.restore_backup``; the world files found beside
    the lost database are kept in ``lost_worlds_<time>/`` rather than thrown away.
    """
    fd = lock_home(home)
    try:
        if not database_lost(home):
            raise InvalidState(f"{home.db} is not lost; restore through an open store")
        warnings = check_backup(home.backup_dir(name), force=force)
        kept = home.root / f"lost_worlds_{wall_clock():%Y%m%d_%H%M%S_%f}"
        shutil.copytree(home.cdt_dir, kept)
        fsync_dir(home.root)
        _start_restore(home, name)
    finally:
        unlock_home(fd)
    log.info("store.restored_lost", name=name, kept=str(kept), warnings=len(warnings))
    return warnings


__all__ = [
    "Home",
    "LocalStore",
    "check_backup",
    "columns",
    "database_lost",
    "list_backups",
    "restore_lost_store",
    "world_id_for",
]
