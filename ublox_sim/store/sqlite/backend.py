"""The SQLite backend: ``store.backend.Backend`` over one local home.

Rows go through the persistence actor (``writer``: one aiosqlite connection, group
commit); world arrays go to ``.npz`` files in the home (``store.cdt``), always written
before the row that names them. The home's lock makes this process the single writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Generic

import aiosqlite
from anyio.abc import TaskGroup

from ...core.clock import Clock
from ...core.errors import ActorClosed, InvalidInput
from ...core.events import EventBus
from ...core.records import PTO, Player, PTSToken, R, Record, Transaction
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
from ..home import Home
from ..local import LocalStore, wall_clock
from . import queries, rows
from .writer import Chained, PersistenceActor, Statement, Synchronous


class _Batch(Generic[R]):
    """The keys of one coalesced point read, and their callers' futures."""

    def __init__(self, position: int) -> None:
        self.position = position  # units submitted before the read's place in the queue
        self.waiting: dict[str, asyncio.Future[R | None]] = {}
        self.taken = False  # the read has started: later keys go to the next batch


class PointLoader(Generic[R]):
    """Point reads of one record type, coalesced: every key asked for while a read is
    queued in the writer joins that read, one ``IN (...)`` query.

    An activation is a point read through the writer's queue; one read per key would
    stop the write pipeline once per activation. The read is queued when its first key
    comes, so the position it answers with is the count of units submitted before *that*
    moment: a key that joins later reads the same rows, so those units, and only them,
    are in what it loads (units submitted after the read is queued run after it). Its
    credits of later units are applied by position, as for any load.
    """

    def __init__(self, db: PersistenceActor, cls: type[R], position: Callable[[], int]) -> None:
        self.db = db
        self.cls: type[R] = cls
        self._position = position
        self._batch: _Batch[R] | None = None
        self.reads = 0  # queries queued (one per batch), for tests and benchmarks

    async def load(self, key: str) -> tuple[R | None, int]:
        batch = self._batch
        if batch is None or batch.taken:
            batch = _Batch[R](self._position())
            self._batch = batch
            future = batch.waiting[key] = asyncio.get_running_loop().create_future()
            try:
                done = await self.db.call_soon(self._reader(batch))
            except BaseException as exc:  # closed or broken: the read will never run
                self._fail(batch, exc)
                raise
            done.add_done_callback(lambda outcome: self._settled(batch, outcome))
            self.reads += 1
        else:
            future = batch.waiting.get(key) or batch.waiting.setdefault(
                key, asyncio.get_running_loop().create_future()
            )
        # Shielded: one caller giving up must not cancel the answer of the others.
        return await asyncio.shield(future), batch.position

    def _reader(self, batch: _Batch[R]) -> Callable[[aiosqlite.Connection], Awaitable[None]]:
        async def read(conn: aiosqlite.Connection) -> None:
            batch.taken = True
            if self._batch is batch:
                self._batch = None
            found = await queries.records_by_key(conn, self.cls, list(batch.waiting))
            for key, future in batch.waiting.items():
                if not future.done():
                    future.set_result(found.get(key))

        return read

    def _settled(self, batch: _Batch[R], outcome: asyncio.Future[object]) -> None:
        """The writer answered the read: pass a failure (or the actor's closing before it
        ran) on to every caller still waiting."""
        if outcome.cancelled():
            self._fail(batch, ActorClosed("the store stopped before the read ran"))
        elif (error := outcome.exception()) is not None:
            self._fail(batch, error)

    def _fail(self, batch: _Batch[R], error: BaseException) -> None:
        batch.taken = True
        if self._batch is batch:
            self._batch = None
        for future in batch.waiting.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: its caller may have been cancelled


class SqliteBackend:
    """One SQLite home, opened by one process (see the module docstring)."""

    chains = True  # it keeps a unit's ``Chain`` (the writer refuses a broken chain's rest)

    def __init__(
        self,
        home: Home,
        *,
        synchronous: Synchronous = "NORMAL",
        flush_interval: float = 0.5,
        clock: Clock | None = None,
        hold_commits: bool = False,
        bus: EventBus | None = None,
    ) -> None:
        self.local = LocalStore(
            home,
            synchronous=synchronous,
            flush_interval=flush_interval,
            clock=clock.now if clock is not None else wall_clock,
            hold_commits=hold_commits,
        )
        self.bus = bus if bus is not None else EventBus()
        self.hold_commits = hold_commits
        # Held mode: worlds of acknowledged units, until a checkpoint writes them.
        self._held_worlds: dict[str, Arrays] = {}
        # Units submitted so far: every read and write passes through the writer's one
        # queue in order, so a read stamped with this count saw exactly those units.
        self._submitted = 0
        self._players: PointLoader[Player] | None = None
        self._ptos: PointLoader[PTO] | None = None

    # -- what is SQLite's own (the server's metrics, the seed's facade) --------------

    @property
    def home(self) -> Home:
        return self.local.home

    @property
    def db(self) -> PersistenceActor:
        return self.local.db

    @property
    def closed(self) -> bool:
        return self.local.db.closed

    @property
    def units_committed(self) -> int:
        return self.local.db.units_committed

    def on_batch_committed(self, hook: Callable[[float, int], None] | None) -> None:
        self.local.db.on_batch_committed = hook

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        await self.local.start(tg)
        # A process killed between a checkpoint's commit and its pruning (or while it
        # wrote the files of a checkpoint that never committed) left world files the
        # database does not point at: each world keeps only the version it names.
        versions = await queries.world_versions(self.local.db)
        if versions:
            await self.local.cdt.aprune_to(versions)

    async def aclose(self) -> None:
        await self.local.aclose()

    # -- writes ------------------------------------------------------------------

    async def submit(self, unit: Unit, done: Done) -> None:
        await self.submit_many((unit,), done)

    async def submit_many(self, units: Sequence[Unit], done: Done) -> None:
        befores = [await self._write_worlds(unit) for unit in units]
        statements: list[list[Statement]] = []
        callbacks: list[Callable[[list[int] | BaseException], None]] = []
        for unit, before in zip(units, befores, strict=True):
            stmts, landed = rows.unit_statements(
                unit, self.bus.publish, bulk_sessions=True, bulk_purchases=True
            )
            self._submitted += 1
            statements.append(stmts if unit.chain is None else Chained(stmts, unit.chain))
            callbacks.append(self._acked(landed, self._submitted, before, done))
        # No await between the count and the queue (the writer's queue is first come,
        # first served even when full), so positions follow the queue's order.
        await self.local.db.enqueue_many_with(statements, callbacks)

    def _acked(
        self, landed: list[Any], position: int, before: dict[str, Arrays | None], done: Done
    ) -> Callable[[list[int] | BaseException], None]:
        def acked(outcome: list[int] | BaseException) -> None:
            if isinstance(outcome, BaseException):
                self._restore_worlds(before)
                done(outcome)
            else:
                # The commit hooks ran before this callback: ``landed`` is numbered.
                done(Committed(tuple(landed), position))

        return acked

    async def _write_worlds(self, unit: Unit) -> dict[str, Arrays | None]:
        """Make the unit's worlds readable before its rows commit, and return what each
        was before (None: no world yet), to put back if the unit is refused.

        The file first: the database must never point at a world not on disk. Held runs
        keep the arrays in memory until the checkpoint writes every world, versioned."""
        before: dict[str, Arrays | None] = {}
        cdt = self.local.cdt
        for world in unit.worlds:
            world_id = world.world_id
            if self.hold_commits:
                before[world_id] = self._held_worlds.get(world_id)
                self._held_worlds[world_id] = {k: v.copy() for k, v in world.arrays.items()}
                continue
            exists = cdt.is_dirty(world_id) or cdt.path_for(world_id).exists()
            before[world_id] = await cdt.aload(world_id) if exists else None
            cdt.mark_dirty(world_id, world.arrays)
        if unit.worlds and not self.hold_commits:
            await cdt.flush()
        return before

    def _restore_worlds(self, before: dict[str, Arrays | None]) -> None:
        """A refused unit leaves its worlds as they were (an unwritten one: no file)."""
        cdt = self.local.cdt
        for world_id, arrays in before.items():
            if self.hold_commits:
                if arrays is None:
                    self._held_worlds.pop(world_id, None)
                else:
                    self._held_worlds[world_id] = arrays
            elif arrays is None:
                cdt.forget(world_id)
                cdt.remove(world_id)
            else:
                cdt.mark_dirty(world_id, arrays)  # written back by the flusher

    async def commit(self, unit: Unit) -> Committed:
        return await commit_through(self.submit, unit)

    async def save_world(self, world_id: str, arrays: Arrays) -> None:
        if self.hold_commits:
            # Its file stays at the last checkpoint; the next one writes these arrays.
            self._held_worlds[world_id] = {k: v.copy() for k, v in arrays.items()}
            return
        self.local.cdt.mark_dirty(world_id, arrays)
        await self.local.cdt.flush()

    def world_changed(self, world_id: str, arrays: Arrays) -> None:
        if not self.hold_commits:
            self.local.cdt.mark_dirty(world_id, arrays)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        version = checkpoint.version
        cdt = self.local.cdt
        # Held worlds (launched or saved since the last checkpoint) go with the ones given.
        # Taken at once, with the caller's snapshot of the given ones: each held copy seen
        # now is superseded by (or is) what this checkpoint writes.
        seen = dict(self._held_worlds)
        given = {w.world_id for w in checkpoint.worlds}
        worlds = [
            *checkpoint.worlds,
            *(WorldWrite(w, seen[w]) for w in sorted(seen) if w not in given),
        ]
        for world in worlds:
            cdt.mark_dirty(world.world_id, world.arrays, version=version)
        await cdt.flush()
        unit: list[Statement] = []
        if checkpoint.run is not None:
            unit.append(rows.save_run(checkpoint.run))
        unit.extend(rows.set_world_version(w.world_id, version) for w in worlds)
        await self.local.db.commit_held(unit)
        for world in worlds:
            # One rule for every world: a held copy is dropped only if it is the very one
            # seen above. One saved meanwhile (a PTO passivated during the write, a unit
            # acknowledged) is newer than what was written: the next checkpoint writes it.
            if self._held_worlds.get(world.world_id) is seen.get(world.world_id):
                self._held_worlds.pop(world.world_id, None)
        # Superseded versions go on a worker thread, not on the event loop.
        await cdt.aprune([w.world_id for w in worlds], version)

    # -- point reads ---------------------------------------------------------------

    def _player_loader(self) -> PointLoader[Player]:
        if self._players is None:
            self._players = PointLoader(self.local.db, Player, lambda: self._submitted)
        return self._players

    def _pto_loader(self) -> PointLoader[PTO]:
        if self._ptos is None:
            self._ptos = PointLoader(self.local.db, PTO, lambda: self._submitted)
        return self._ptos

    async def load_player(self, player_id: str) -> Player | None:
        return (await self._player_loader().load(player_id))[0]

    async def load_player_at(self, player_id: str) -> tuple[Player | None, int]:
        return await self._player_loader().load(player_id)

    async def load_pto(self, pto_id: str) -> PTO | None:
        return (await self._pto_loader().load(pto_id))[0]

    async def load_token(self, token_id: str) -> PTSToken | None:
        return await queries.load_record(self.local.db, PTSToken, token_id)

    async def load_tokens(self, pto_id: str) -> list[PTSToken]:
        return await queries.load_tokens(self.local.db, pto_id)

    async def load_world(self, world_id: str) -> dict[str, Any]:
        held = self._held_worlds.get(world_id)
        if held is not None:  # acknowledged, not yet written by a checkpoint
            return {k: v.copy() for k, v in held.items()}
        return await self.local.load_world(world_id)

    async def exists(self, ident: str) -> bool:
        return await queries.exists(self.local.db, ident)

    async def load_all(self, cls: type[Record]) -> list[Any]:
        return await self.local.load_all(cls)

    async def ptos_past_deadline(self, at: str) -> list[str]:
        return await queries.ptos_past_deadline(self.local.db, at)

    async def player_ids(self) -> list[str]:
        return await queries.ids(self.local.db, "players", "player_id")

    async def pto_ids(self) -> list[str]:
        return await queries.ids(self.local.db, "ptos", "pto_id")

    async def taken(self, idents: Sequence[str]) -> set[str]:
        return await queries.taken_at_once(self.local.db, idents)

    async def open_hours(self, statuses: Sequence[str]) -> dict[str, dict[str, float]]:
        return await queries.open_hours(self.local.db, statuses)

    # -- aggregates and pages ----------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]:
        return await self.local.get_global_stats()

    async def leaderboard(self, top: int) -> list[Player]:
        return await queries.leaderboard(self.local.db, top)

    async def transactions_of(
        self, player_id: str, *, after: int = 0, limit: int = 50
    ) -> list[Transaction]:
        return await self.local.transactions_of(player_id, after=after, limit=limit)

    async def events_after(self, since: int, limit: int = 500) -> list[tuple[int, str, str]]:
        return await self.local.events_after(since, limit)

    async def event_log_span(self) -> tuple[int, int]:
        return await self.local.event_log_span()

    # -- the game server's bookkeeping -------------------------------------------

    async def find_receipt(self, principal: str, key: str) -> tuple[str, int, str] | None:
        return await self.local.find_receipt(principal, key)

    async def token_versions(self) -> dict[str, int]:
        return await self.local.token_versions()

    async def set_token_version(self, player_id: str, version: int) -> None:
        await self.local.db.submit([rows.set_token_version(player_id, version)])

    # -- scenario runs -------------------------------------------------------------

    async def run_record(self) -> RunRecord | None:
        return await queries.run_record(self.local.db)

    async def run_status(self) -> dict[str, Any] | None:
        return await self.local.run_status()

    async def is_empty(self) -> bool:
        return await self.local.is_empty()

    # -- maintenance ---------------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path:
        return await self.local.create_backup(name)

    def list_backups(self) -> list[dict[str, Any]]:
        return self.local.list_backups()

    async def export_data(self) -> dict[str, Any]:
        return await self.local.export_data()

    async def export_to_json(self, path: Path | str | None = None) -> Path:
        return await self.local.export_to_json(path)

    async def verify(self) -> list[Any]:
        return await self.local.verify()


def read_run_record(home: Home) -> RunRecord | None:
    """The run recorded in ``home``, read without opening the store (to resume a run
    without its scenario file). ``InvalidInput`` if there is no readable store."""
    if not home.db.is_file():
        raise InvalidInput(f"nothing to resume in {home.root}: no store there")
    conn = sqlite3.connect(f"{home.db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(queries.SELECT_RUN).fetchone()
    except sqlite3.Error as exc:
        raise InvalidInput(f"nothing to resume in {home.root}: {exc}") from exc
    finally:
        conn.close()
    return None if row is None else queries.run_record_of(row)
