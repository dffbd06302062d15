"""The PostgreSQL backend: ``store.backend.Backend`` over one database, through asyncpg.

Rows are SQLite's (``store.sqlite.rows``, translated by ``dialect``) written by the
group-commit ``writer``; reads are SQLite's queries (``store.sqlite.queries``) through the
same writer, in queue order. World arrays are rows (``worlds.npz``: the same ``.npz``
bytes SQLite keeps in files), written in the transaction of the unit that carries them,
so a refused unit leaves its worlds as they were. Several processes share a database by
default; one may hold it alone instead (``mode``: a session advisory lock, shared or
exclusive, held by the writer's connection).

Backups are in-process snapshots (binary COPY of every table in one REPEATABLE READ
transaction) into ``backup_root``. Held commits (scenario mode): see ``writer``.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import asyncpg  # type: ignore[import-untyped]
import numpy as np
from anyio.abc import TaskGroup
from numpy.typing import NDArray

from ...core.clock import WALL_CLOCK, Clock
from ...core.errors import (
    ActorClosed,
    BackupError,
    BackupExists,
    CorruptCdtFile,
    InvalidBackupName,
    InvalidInput,
    NoSuchBackup,
    PersistenceError,
    WorldLeased,
)
from ...core.events import EventBus
from ...core.records import PTO, Player, PTSToken, Record, Transaction, iso
from ..backend import (
    Arrays,
    Checkpoint,
    Committed,
    Done,
    RunRecord,
    Unit,
    WorldWrite,
    commit_through,
)
from ..backup import list_backup_folders
from ..cdt import read_npz
from ..export import export_store, export_text
from ..home import WORLD_SUFFIX, write_text_atomic
from ..sqlite import queries, rows
from ..sqlite.writer import Statement
from ..verify import CHECKS, Finding, relational_findings
from .dialect import to_postgres
from .lease import WorldLeases
from .mode import (
    CLUSTER_ENV,
    WRITER_LOCK,
    choose_shared,
    release_exclusive,
    take_exclusive_for,
    take_writer_lock,
)
from .notify import EventFeed
from .schema import MIGRATIONS, migrate, same_tables
from .url import masked
from .writer import PgWriter, plain_row

SAVE_WORLD = (
    "INSERT INTO worlds (world_cdt_id, npz) VALUES (?, ?)"
    " ON CONFLICT (world_cdt_id) DO UPDATE SET npz = excluded.npz"
)
# Several processes: a world's row is not replaced while another process holds the
# world's lease (a process whose lease was taken over writes nothing more, even a stale
# copy on passivation).
# A background write-back (``world_changed``, passivation) of a PTO's world: only by
# its lease holder (a stalled ex-holder's copy is skipped even once the new holder has
# released the lease); a world without a PTO has no lease and is written. The writer
# locks the lease row first, until the batch commits (``writer``, ``lease_writes``): a
# takeover cannot commit between this check and the write.
SAVE_LEASED_WORLD = SAVE_WORLD + (
    " WHERE EXISTS (SELECT 1 FROM world_leases l JOIN ptos p ON p.pto_id = l.pto_id"
    " WHERE p.world_cdt_id = excluded.world_cdt_id AND l.holder = ?)"
    " OR NOT EXISTS (SELECT 1 FROM ptos p WHERE p.world_cdt_id = excluded.world_cdt_id)"
)
# A world written through the API (a unit's worlds, ``save_world``, a checkpoint) is
# written unless another process holds its lease (a world nobody leases: one without a
# PTO, or one just launched, is written). The backend claimed the lease first
# (``PostgresBackend._lease_worlds``); if another process holds it at commit all the
# same, the NULL breaks ``npz NOT NULL`` and the unit is refused whole, never dropped.
# The world's lease row is locked FOR SHARE until the unit commits, whoever holds it (a
# MATERIALIZED CTE: in a subquery the holder test would be pushed below the lock and our
# own row left unlocked): a takeover (an UPDATE of that row) then waits for this unit and
# loads the world after it; a takeover committed first is read here (READ COMMITTED
# rechecks a locked row's newest version) and refuses the unit. Without the lock a stalled
# ex-holder's step could land after the new holder loaded the world, and be overwritten
# by its next save (tests/test_pg_lease_write.py). Through the writer the row is locked
# already, with the batch's other lease rows, in their one order (``writer``).
SAVE_OWN_WORLD = (
    "WITH lease AS MATERIALIZED (SELECT l.holder FROM world_leases l JOIN ptos p"
    " ON p.pto_id = l.pto_id WHERE p.world_cdt_id = ? FOR SHARE OF l)"
    " INSERT INTO worlds (world_cdt_id, npz) SELECT ?, CASE WHEN"
    " NOT EXISTS (SELECT 1 FROM lease WHERE lease.holder <> ?)"
    " THEN CAST(? AS BYTEA) END"
    " ON CONFLICT (world_cdt_id) DO UPDATE SET npz = excluded.npz"
)


def _published_by_the_feed(event: object) -> None:
    """A shared store's own events reach its bus through its ``EventFeed``."""


def npz_bytes(arrays: Arrays) -> bytes:
    """The arrays as SQLite's world files hold them (``np.savez_compressed``)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def npz_arrays(data: bytes, world_id: str = "") -> dict[str, NDArray[np.generic]]:
    """A world row's arrays, refusing pickles and damage as SQLite's files are
    (``CorruptCdtFile``, named ``worlds/WORLD_ID``)."""
    return read_npz(io.BytesIO(data), Path("worlds") / world_id)


def save_world(
    world_id: str, arrays: Arrays, holder: str | None = None, *, own: bool = False
) -> Statement:
    """The world's row; with a ``holder`` (shared), not replaced under another process's
    lease: skipped (a background write-back) or, ``own``, the unit refused."""
    if holder is None:
        return Statement(SAVE_WORLD, (world_id, npz_bytes(arrays)))
    if own:
        return Statement(SAVE_OWN_WORLD, (world_id, world_id, holder, npz_bytes(arrays)))
    return Statement(SAVE_LEASED_WORLD, (world_id, npz_bytes(arrays), holder))


class PostgresBackend:
    """One PostgreSQL database, written by this process, alone or beside others (see the
    module docstring and ``mode``)."""

    def __init__(
        self,
        dsn: str,
        *,
        hold_commits: bool = False,
        bus: EventBus | None = None,
        backup_root: Path | None = None,
        clock: Clock = WALL_CLOCK,
        shared: bool | None = None,
    ) -> None:
        self.dsn = dsn
        self.backup_root = backup_root
        self.clock = clock  # not for backups: named and stamped in wall time, as SQLite's
        # Several processes write this database (the actors are caches and the rows'
        # guards decide races), unless ``shared=False``, $UBLOX_CLUSTER=0 or a held run.
        self.shared = choose_shared(shared, hold_commits=hold_commits)
        self.leases = WorldLeases(dsn) if self.shared else None  # who steps which world
        # Shared: every process's events reach the bus through the log, in commit order.
        self.bus = bus if bus is not None else EventBus()
        self.feed = EventFeed(dsn, self.bus) if self.shared else None
        self.hold_commits = hold_commits
        lease_writes = (
            frozenset({SAVE_OWN_WORLD, SAVE_LEASED_WORLD}) if self.shared else frozenset()
        )
        self.db = PgWriter(dsn, hold=hold_commits, lease_writes=lease_writes)
        self._submitted = 0
        self._dirty_worlds: dict[str, Arrays] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        try:
            conn = await self.db.connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise PersistenceError(f"cannot open the store {masked(self.dsn)}: {exc}") from exc
        try:
            await take_writer_lock(conn, shared=self.shared, where=masked(self.dsn))
            await migrate(conn)
            if self.leases is not None:
                await self.leases.start()
            if self.feed is not None:
                await self.feed.start()
        except BaseException:
            await conn.close()
            raise
        tg.start_soon(self.db.run)
        if self.feed is not None:
            tg.start_soon(self.feed.run)
        self._started = True

    async def aclose(self) -> None:
        if self.db.closed:
            return
        if self._started:
            await self._flush_worlds()
        if self.feed is not None:
            await self.feed.aclose()
        if self.leases is not None:
            await self.leases.aclose()  # survivors take this process's worlds at once
        await self.db.aclose()  # closing the connection releases the advisory lock

    @asynccontextmanager
    async def exclusively(self, what: str) -> AsyncIterator[None]:
        """``what`` (an import, a restore) needs the database to itself: a shared store
        takes the exclusive lock for its duration, or raises ``StoreLocked`` when another
        process shares the database (an exclusive store has it already)."""
        if not self.shared:
            yield
            return
        where = masked(self.dsn)
        # Shielded both ways: a caller cancelled while the writer takes or releases the
        # lock would otherwise leave it held by this process's session for its life.
        with anyio.CancelScope(shield=True):
            await self.db.run_read(lambda conn: take_exclusive_for(conn, what, where))
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.db.run_read(release_exclusive)

    @property
    def closed(self) -> bool:
        return self.db.closed

    @property
    def units_committed(self) -> int:
        return self.db.units_committed

    def on_batch_committed(self, hook: Callable[[float, int], None] | None) -> None:
        self.db.on_batch_committed = hook

    # -- writes ----------------------------------------------------------------------

    async def submit(self, unit: Unit, done: Done) -> None:
        try:
            await self._lease_worlds(w.world_id for w in unit.worlds)
        except WorldLeased as exc:
            done(exc)  # refused before anything was queued: nothing changed
            return
        publish = _published_by_the_feed if self.feed is not None else self.bus.publish
        statements, landed = rows.unit_statements(unit, publish)
        # The worlds in the unit's own transaction (a savepoint): all or nothing.
        statements.extend(self._world_row(w.world_id, w.arrays, own=True) for w in unit.worlds)
        for world in unit.worlds:
            self._dirty_worlds.pop(world.world_id, None)
        self._submitted += 1
        position = self._submitted

        def acked(future: asyncio.Future[object]) -> None:
            if future.cancelled():
                done(ActorClosed("the store stopped before the unit committed"))
            elif (error := future.exception()) is not None:
                done(error)
            else:
                done(Committed(tuple(landed), position))

        # No await between the count and the queue: positions follow the queue's order.
        (await self.db.enqueue(statements)).add_done_callback(acked)

    async def submit_many(self, units: Sequence[Unit], done: Done) -> None:
        """The units in order, each committed or refused on its own. Unlike SQLite's writer,
        the queue here is an ``asyncio.Queue``: when it is full, another producer's unit
        may be queued between two of these (positions still follow the queue's order)."""
        for unit in units:
            await self.submit(unit, done)

    async def commit(self, unit: Unit) -> Committed:
        return await commit_through(self.submit, unit)

    def _world_row(self, world_id: str, arrays: Arrays, *, own: bool = False) -> Statement:
        holder = None if self.leases is None else self.leases.holder
        return save_world(world_id, arrays, holder, own=own)

    async def _lease_worlds(self, world_ids: Iterable[str], *, recheck: bool = False) -> None:
        """Shared: before PTO worlds are written through the API, the lease of each this
        process does not hold (``recheck``: each) is claimed (``WorldLeases.claim``):
        renewed, taken if expired, left alone if nobody holds it; ``WorldLeased`` (naming
        the live holder, nothing changed) if another process does. A world written
        through the documented API is never dropped silently: a lease lost meanwhile
        refuses the unit at commit (``SAVE_OWN_WORLD``)."""
        if self.leases is None:
            return
        for world_id in world_ids:
            pto_id = world_id.removesuffix(WORLD_SUFFIX)
            if pto_id != world_id and (recheck or pto_id not in self.leases.held):
                await self.leases.claim(pto_id)

    async def save_world(self, world_id: str, arrays: Arrays) -> None:
        self._dirty_worlds.pop(world_id, None)
        await self._lease_worlds([world_id], recheck=True)
        await self.db.submit([self._world_row(world_id, arrays, own=True)])

    def world_changed(self, world_id: str, arrays: Arrays) -> None:
        if self.hold_commits:
            return  # as SQLite's: a held run's worlds become durable with its checkpoints
        self._dirty_worlds[world_id] = {k: np.array(v, copy=True) for k, v in arrays.items()}
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_worlds())

    async def flush_worlds(self) -> None:
        """Write every world changed in the background now, including one the background
        flush has taken but not yet written (so, on return, every change is in the row)."""
        if self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
        await self._flush_worlds()

    async def _flush_worlds(self) -> None:
        while self._dirty_worlds:
            world_id, arrays = next(iter(self._dirty_worlds.items()))
            del self._dirty_worlds[world_id]
            await self.db.submit([self._world_row(world_id, arrays)])

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """The given worlds, the run record and the worlds' versions in one unit; in held
        mode it also commits everything held (worlds launched or saved since the last
        checkpoint are rows of the held transaction already)."""
        await self._lease_worlds((w.world_id for w in checkpoint.worlds), recheck=True)
        unit = [self._world_row(w.world_id, w.arrays, own=True) for w in checkpoint.worlds]
        for world in checkpoint.worlds:
            self._dirty_worlds.pop(world.world_id, None)
        if checkpoint.run is not None:
            unit.append(rows.save_run(checkpoint.run))
        unit.extend(
            rows.set_world_version(w.world_id, checkpoint.version) for w in checkpoint.worlds
        )
        await self.db.commit_held(unit)

    # -- point reads -------------------------------------------------------------------

    @property
    def _reader(self) -> Any:
        # queries.* are typed for SQLite's PersistenceActor; the writer answers the same
        # fetchone/fetchall (SQLite's SQL, translated). See the report: a Reader protocol.
        return cast(Any, self.db)

    async def load_player(self, player_id: str) -> Player | None:
        return await queries.load_record(self._reader, Player, player_id)

    async def load_player_at(self, player_id: str) -> tuple[Player | None, int]:
        # The read is queued behind every unit submitted so far and before any later one.
        position = self._submitted
        return await self.load_player(player_id), position

    async def load_pto(self, pto_id: str) -> PTO | None:
        return await queries.load_record(self._reader, PTO, pto_id)

    async def load_token(self, token_id: str) -> PTSToken | None:
        return await queries.load_record(self._reader, PTSToken, token_id)

    async def load_tokens(self, pto_id: str) -> list[PTSToken]:
        return await queries.load_tokens(self._reader, pto_id)

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]:
        if self.leases is not None:
            # Shared: the row is the truth. This process's unwritten copy goes first, and
            # is kept only if it still holds the lease (``SAVE_LEASED_WORLD``).
            await self._flush_worlds()
        pending = self._dirty_worlds.get(world_id)
        if pending is not None:
            return {k: np.array(v, copy=True) for k, v in pending.items()}
        return await _read_world(self.db, world_id)

    async def exists(self, ident: str) -> bool:
        return await queries.exists(self._reader, ident)

    async def load_all(self, cls: type[Record]) -> list[Any]:
        return await queries.load_records(self._reader, cls)

    async def ptos_past_deadline(self, at: str) -> list[str]:
        return await queries.ptos_past_deadline(self._reader, at)

    async def player_ids(self) -> list[str]:
        return await queries.ids(self._reader, "players", "player_id")

    async def pto_ids(self) -> list[str]:
        return await queries.ids(self._reader, "ptos", "pto_id")

    async def taken(self, idents: Sequence[str]) -> set[str]:
        return await queries.taken(self._reader, idents)

    async def open_hours(self, statuses: Sequence[str]) -> dict[str, dict[str, float]]:
        return await queries.open_hours(self._reader, statuses)

    # -- aggregates and pages --------------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]:
        return await queries.global_stats(self._reader)

    async def leaderboard(self, top: int) -> list[Player]:
        return await queries.leaderboard(self._reader, top)

    async def transactions_of(
        self, player_id: str, *, after: int = 0, limit: int = 50
    ) -> list[Transaction]:
        return await queries.transactions_of(self._reader, player_id, after=after, limit=limit)

    async def events_after(self, since: int, limit: int = 500) -> list[tuple[int, str, str]]:
        return await queries.events_after(self._reader, since, limit)

    async def event_log_span(self) -> tuple[int, int]:
        # SQLite reads its AUTOINCREMENT counter from sqlite_sequence; here, the counter.
        row = await self.db.fetchone(
            "SELECT (SELECT COALESCE(MIN(seq), 0) FROM event_log),"
            " (SELECT value FROM counters WHERE name = 'event_log')"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    # -- the game server's bookkeeping ---------------------------------------------

    async def find_receipt(self, principal: str, key: str) -> tuple[str, int, str] | None:
        return await queries.find_receipt(self._reader, principal, key)

    async def token_versions(self) -> dict[str, int]:
        return await queries.token_versions(self._reader)

    async def set_token_version(self, player_id: str, version: int) -> None:
        await self.db.submit([rows.set_token_version(player_id, version)])

    # -- scenario runs ---------------------------------------------------------------

    async def run_record(self) -> RunRecord | None:
        return await queries.run_record(self._reader)

    async def run_status(self) -> dict[str, Any] | None:
        return await queries.run_status(self._reader)

    async def is_empty(self) -> bool:
        return await queries.is_empty(self._reader)

    # -- maintenance -----------------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path:
        """A consistent snapshot of every table in ``backup_root/NAME/``: one binary COPY
        per table, all inside one REPEATABLE READ transaction, queued behind every write
        submitted before (pg_dump is the operator's tool; this is the API's)."""
        root = self._backup_root()
        # Named and stamped in wall time, as SQLite's: the store's clock may be simulated.
        if name is None:
            name = "backup_" + WALL_CLOCK.now().strftime("%Y%m%d_%H%M%S_%f")
        if not _BACKUP_NAME.fullmatch(name):
            raise InvalidInput(f"invalid backup name {name!r}")
        target = root / name
        if target.exists():
            raise BackupExists(f"backup {name!r} already exists")
        partial = root / f".{name}.partial"
        await anyio.to_thread.run_sync(_fresh_dir, partial)

        async def snapshot(conn: Any) -> int:
            if self.hold_commits:
                # The writer's connection is inside the held transaction: a connection of
                # its own snapshots what is durable, the last checkpoint.
                other = await asyncpg.connect(self.dsn)
                try:
                    return await _snapshot(other, partial)
                finally:
                    await other.close()
            return await _snapshot(conn, partial)

        try:
            version = await self.db.run_read(snapshot)
            manifest = {
                "name": name,
                "created": iso(WALL_CLOCK.now()),
                "schema_version": version,
                "tables": list(BACKUP_TABLES),
            }
            await anyio.to_thread.run_sync(_seal, partial, target, manifest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, partial, True)
            raise
        return target

    def list_backups(self) -> list[dict[str, Any]]:
        """Each backup's name, creation time (UTC ISO), size in bytes and path, oldest
        first: SQLite's listing, shape and rules (``backup.list_backup_folders``: a
        damaged or foreign manifest does not fail it)."""
        return [] if self.backup_root is None else list_backup_folders(self.backup_root)

    def check_backup(self, name: str) -> dict[str, Any]:
        """Backup ``name``'s manifest; ``NoSuchBackup`` if there is no such backup."""
        if not _BACKUP_NAME.fullmatch(name):
            raise InvalidBackupName(f"invalid backup name {name!r}")
        manifest_path = self._backup_root() / name / "backup.json"
        if not manifest_path.is_file():
            raise NoSuchBackup(f"no backup at {self._backup_root() / name}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            int(manifest["schema_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(
                f"backup {name!r} has a damaged manifest ({manifest_path}): {exc!r}"
            ) from exc
        return cast(dict[str, Any], manifest)

    async def restore_backup(self, name: str) -> None:
        """Replace every table's rows with the backup's, in one transaction, alone on the
        database (``exclusively``: other processes' caches would not survive it)."""
        manifest = self.check_backup(name)
        if self.hold_commits:
            raise InvalidInput("a checkpointed run's store is restored while no run holds it")
        source = self._backup_root() / name
        await self._flush_worlds()

        async def restore(conn: Any) -> None:
            async with conn.transaction():
                version = int(await conn.fetchval("SELECT MAX(version) FROM schema_migrations"))
                if not same_tables(int(manifest["schema_version"]), version):
                    raise InvalidInput(
                        f"backup {name!r} has schema version {manifest['schema_version']},"
                        f" the database {version}"
                    )
                await conn.execute(f"TRUNCATE {', '.join(BACKUP_TABLES)}")
                for table in BACKUP_TABLES:
                    await conn.copy_to_table(table, source=str(source / table), format="binary")

        async with self.exclusively("a backup restore"):
            await self.db.run_read(restore)

    def _backup_root(self) -> Path:
        if self.backup_root is None:
            raise InvalidInput("this PostgreSQL store has no backup folder (backup_root)")
        self.backup_root.mkdir(parents=True, exist_ok=True)
        return self.backup_root

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Any]:
        """A reader (``fetchone``/``fetchall``, SQLite's SQL) of one consistent state:
        export and verify read everything through it, so they see one state even while
        other processes write. Every unit this process queued before is committed first;
        then one REPEATABLE READ, read-only transaction on a connection of its own (the
        writer goes on meanwhile). A held run's reads go through its writer instead, in
        the held transaction (exclusive: nobody else writes)."""
        await self._flush_worlds()
        if self.hold_commits:
            yield self.db
            return
        await self.db.run_read(_nothing)  # a barrier: this process's earlier units landed
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield _SnapshotReader(conn)
        finally:
            await conn.close()

    async def export_data(self) -> dict[str, Any]:
        async with self.snapshot() as reader:

            async def load_all(cls: type[Record]) -> list[Any]:
                return await queries.load_records(reader, cls)

            async def load_world(world_id: str) -> dict[str, NDArray[np.generic]]:
                return await _read_world(reader, world_id)

            return await export_store(load_all, load_world, await queries.run_record(reader))

    async def export_to_json(self, path: Path | str | None = None) -> Path:
        if path is None:
            raise ValueError("a PostgreSQL store has no home folder: name the export's path")
        target = Path(path)
        text = export_text(await self.export_data())
        await anyio.to_thread.run_sync(write_text_atomic, target, text)
        return target

    async def verify(self) -> list[Finding]:
        """SQLite's checks (``store.verify``): the schema version, then the same relational
        queries (ledger, escrow, tokens, sessions), then every PTO's world present and
        loadable, all read from one snapshot (``snapshot``). Foreign keys and page
        integrity are PostgreSQL's own to enforce."""
        async with self.snapshot() as db:
            row = await db.fetchone("SELECT MAX(version) FROM schema_migrations")
            version = None if row is None else row[0]
            if version != len(MIGRATIONS):  # PostgreSQL's own numbered migrations
                expected = len(MIGRATIONS)
                return [
                    Finding(
                        "schema", "schema_migrations", f"version {version}, expected {expected}"
                    )
                ]
            results = {
                name: await db.fetchall(sql, params) for name, (sql, params) in CHECKS.items()
            }
            findings = relational_findings(results)
            references = await db.fetchall(
                "SELECT pto_id, world_cdt_id FROM ptos WHERE world_cdt_id IS NOT NULL"
                " ORDER BY pto_id"
            )
            for pto_id, world_id in references:
                try:
                    await _read_world(db, str(world_id))
                except CorruptCdtFile as exc:
                    findings.append(
                        Finding("cdt", f"pto {pto_id}", exc.reason + f" (world {world_id})")
                    )
            return findings


async def _nothing(conn: Any) -> None:
    """A read that reads nothing: queued, it waits for every unit queued before it."""


class _SnapshotReader:
    """SQLite's SQL, translated, on one connection inside its open transaction."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        row = await self.conn.fetchrow(to_postgres(sql), *params)
        return None if row is None else plain_row(row)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return [plain_row(r) for r in await self.conn.fetch(to_postgres(sql), *params)]


async def _read_world(reader: Any, world_id: str) -> dict[str, NDArray[np.generic]]:
    row = await reader.fetchone("SELECT npz FROM worlds WHERE world_cdt_id = ?", (world_id,))
    if row is None:
        raise CorruptCdtFile(Path("worlds") / world_id, "no such row")
    return npz_arrays(bytes(row[0]), world_id)


# Every table, parents before children (COPY checks foreign keys row by row).
BACKUP_TABLES = (
    "players",
    "ptos",
    "pts_tokens",
    "transactions",
    "play_sessions",
    "runs",
    "cdt_files",
    "worlds",
    "player_token_versions",
    "idempotency_keys",
    "event_log",
    "counters",
)
_BACKUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def read_run_record(dsn: str) -> RunRecord | None:
    """The run recorded in the database, read without opening the store (to resume a run
    without its scenario file; not from inside an event loop). ``InvalidInput`` if the
    database cannot be read."""

    async def read() -> RunRecord | None:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise InvalidInput(f"nothing to resume in {masked(dsn)}: {exc}") from exc
        try:
            row = await conn.fetchrow(to_postgres(queries.SELECT_RUN))
        except asyncpg.UndefinedTableError:
            return None  # no store was ever opened there
        finally:
            await conn.close()
        return None if row is None else queries.run_record_of(tuple(row))

    return anyio.run(read)


async def _snapshot(conn: Any, into: Path) -> int:
    """Every table, one binary COPY each, in one REPEATABLE READ transaction; returns the
    schema version."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = int(await conn.fetchval("SELECT MAX(version) FROM schema_migrations"))
        for table in BACKUP_TABLES:
            await conn.copy_from_table(table, output=str(into / table), format="binary")
    return version


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _seal(partial: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest last, then move the folder into place (a backup is whole or absent)."""
    (partial / "backup.json").write_text(json.dumps(manifest, indent=2))
    partial.rename(target)


__all__ = ["CLUSTER_ENV", "WRITER_LOCK", "PostgresBackend", "WorldWrite"]
