"""The group-commit writer: one asyncpg connection, one queue, units in submission order.

Every write and every read goes through one queue, in order (as SQLite's persistence
actor does), so a read sees exactly the units queued before it: that is what makes
``load_player_at``'s position exact. Consecutive units commit together in one
transaction (group commit). A unit that breaks a constraint is rolled back alone
(``UnitRejected``) and the others commit: the batch first runs without savepoints (the
common case, two round trips fewer per unit) and, if a unit is refused, runs again with a
SAVEPOINT around each unit. Futures
resolve, and commit hooks run, in queue order, only once the transaction is durable
(``synchronous_commit`` stays on). A batch that deadlocks with another process's (rows
locked in another order) was rolled back whole by PostgreSQL and runs again as two halves
(a single unit: again, up to CONFLICT_RETRIES times); any other failed commit fails every unit of its batch.

Lock order (several processes): a batch first takes the batch lock (below), so two
writers' batches never interleave; then, if it writes worlds under their leases
(``lease_writes``: statements whose first parameter is a world id), it locks those
worlds' lease rows FOR SHARE in ``pto_id`` order, in one statement, before any of its
rows: the order in which ``lease.WorldLeases`` locks several lease rows too, so a renewal
and a batch cannot deadlock. The locks belong to the batch's transaction, outside its
units' savepoints (a refused unit's rollback keeps them), and hold until it commits: a
takeover of one of those worlds waits for the batch, or, committed first, is seen by the
world writes, which then leave the row alone or refuse their unit.

Held mode (``hold=True``, checkpointed scenario runs): one transaction stays open from
start to ``commit_held``; each batch is a savepoint of it (asyncpg nests
``conn.transaction()`` as a SAVEPOINT), acknowledged once it ran, durable only when a
checkpoint commits everything held. A crash or a close without a checkpoint rolls the
held work back: the database reopens at the last checkpoint, never between two.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ...core.errors import ActorClosed, PersistenceError, UbloxError, UnitRejected
from ..sqlite import rows
from ..sqlite.writer import Statement
from .dialect import to_postgres
from .mode import SCHEMA_KEY

Row = tuple[Any, ...]
MAX_BATCH = 512  # units per transaction at most
# The transaction-scoped advisory lock every batch takes first (any constant of ours,
# and the store's schema: stores in two schemas of a database do not wait for each other).
BATCH_LOCK_SQL = f"SELECT pg_advisory_xact_lock(123343047, {SCHEMA_KEY})"
# The lease rows of a batch's worlds, in the one order every locker of lease rows uses.
LOCK_LEASES_SQL = (
    "SELECT FROM world_leases l JOIN ptos p ON p.pto_id = l.pto_id"
    " WHERE p.world_cdt_id = ANY($1::text[]) ORDER BY l.pto_id FOR SHARE OF l"
)
CONFLICT_RETRIES = 20  # runs of a batch that deadlocks with other writers, at most
# A committed unit: its rowids, and each hooked statement with the rowids made up to it.
_Outcome = tuple[list[int], list[tuple[Statement, list[int]]]]


@dataclass(eq=False)
class _Item:
    statements: Sequence[Statement] | None = None
    read: Callable[[Any], Awaitable[object]] | None = None
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def plain_row(row: Any) -> Row:
    """A row as SQLite gives it: PostgreSQL's SUM of BIGINT cents is NUMERIC (a Decimal),
    SQLite's an INTEGER; an integral Decimal becomes an int, any other a float."""
    return tuple(
        (int(v) if v == v.to_integral_value() else float(v)) if isinstance(v, Decimal) else v
        for v in row
    )


class _Refused(Exception):
    """A unit of an optimistic batch broke a constraint: the batch is rolled back."""


class PgWriter:
    def __init__(
        self,
        dsn: str,
        *,
        queue_size: int = 10_000,
        hold: bool = False,
        lease_writes: frozenset[str] = frozenset(),
    ) -> None:
        self.dsn = dsn
        self.hold = hold
        # The SQL of statements that write a world (first parameter) under its lease: a
        # batch locks those worlds' lease rows first (the module docstring).
        self.lease_writes = lease_writes
        self._held: Any = None  # the open held transaction (hold mode)
        self._lost: PersistenceError | None = None  # held work the database dropped
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(queue_size)
        self._conn: Any = None
        self._closed = False
        self._stopped: asyncio.Event | None = None
        self.units_committed = 0
        self.conflicts_retried = 0  # batches run again after a deadlock with another writer
        self.on_batch_committed: Callable[[float, int], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def connect(self) -> Any:
        self._conn = await asyncpg.connect(self.dsn)
        return self._conn

    # -- the queue -------------------------------------------------------------

    async def enqueue(self, statements: Sequence[Statement]) -> asyncio.Future[Any]:
        if self._closed:
            raise ActorClosed("the store is closed")
        item = _Item(statements=statements)
        await self._queue.put(item)
        return item.future

    async def commit_held(self, statements: Sequence[Statement]) -> None:
        """Hold mode: run ``statements`` in the held transaction and commit it all (a
        checkpoint); a new held transaction begins. Outside hold mode, one unit."""
        if not self.hold:
            await self.submit(statements)
            return

        async def commit(conn: Any) -> None:
            if self._lost is not None:
                raise self._lost
            try:
                async with conn.transaction():  # a savepoint: refused, the held work stays
                    unit = _UnitRun()
                    for statement in statements:
                        await unit.run(conn, statement)
                await self._held.commit()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                if not conn.is_in_transaction():
                    self._lost = PersistenceError(
                        "the checkpoint could not commit; the run's work since the previous"
                        f" checkpoint is lost: resume from it ({exc})"
                    )
                    raise self._lost from exc
                raise PersistenceError(f"the checkpoint was refused: {exc}") from exc
            await self._begin_held(conn)

        await self.run_read(commit)

    async def _begin_held(self, conn: Any) -> None:
        self._held = conn.transaction()
        await self._held.start()

    async def submit(self, statements: Sequence[Statement]) -> list[int]:
        """Commit one unit; return the ids its ``want_rowid`` statements made (as SQLite's
        ``PersistenceActor.submit``)."""
        ids: list[int] = await (await self.enqueue(statements))
        return ids

    async def run_read(self, read: Callable[[Any], Awaitable[object]]) -> Any:
        if self._closed:
            raise ActorClosed("the store is closed")
        item = _Item(read=read)
        await self._queue.put(item)
        return await item.future

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        query = to_postgres(sql)

        async def read(conn: Any) -> Row | None:
            row = await conn.fetchrow(query, *params)
            return None if row is None else plain_row(row)

        result: Row | None = await self.run_read(read)
        return result

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        query = to_postgres(sql)

        async def read(conn: Any) -> list[Row]:
            return [plain_row(r) for r in await conn.fetch(query, *params)]

        result: list[Row] = await self.run_read(read)
        return result

    async def aclose(self) -> None:
        """Drain the queue (every unit queued commits or fails), then close."""
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)
        if self._stopped is not None:
            await self._stopped.wait()
        if self._conn is not None:
            await self._conn.close()

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        self._stopped = asyncio.Event()
        try:
            if self.hold:
                await self._begin_held(self._conn)
            stop = False
            while not stop:
                first = await self._queue.get()
                if first is None:
                    break
                batch: list[_Item] = [first]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                await self._process(batch)
        except BaseException as exc:
            self._fail_all(exc)
            raise
        finally:
            self._stopped.set()

    def _fail_all(self, exc: BaseException) -> None:
        self._closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item.future.done():
                item.future.set_exception(ActorClosed(f"the store stopped: {exc!r}"))

    async def _process(self, batch: list[_Item]) -> None:
        """Units in runs (one transaction each), reads between them, in order."""
        run: list[_Item] = []
        for item in batch:
            if item.statements is not None:
                run.append(item)
                continue
            if run:
                await self._commit(run)
                run = []
            assert item.read is not None
            try:
                result = await item.read(self._conn)
            except asyncpg.PostgresError as exc:
                _settle(item.future, error=PersistenceError(f"read failed: {exc}"))
            except UbloxError as exc:  # the read's own refusal (a restore's, StoreLocked)
                _settle(item.future, error=exc)  # the connection is as good as before
            else:
                _settle(item.future, result)  # its caller may have been cancelled
        if run:
            await self._commit(run)

    async def _commit(self, units: list[_Item]) -> None:
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                outcomes = await self._attempt(units)
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # Another process's transaction locked the same rows in another order:
                # PostgreSQL rolled this one back whole (in hold mode, to the batch's
                # savepoint). Nothing was acknowledged: run the batch again.
                attempt += 1
                if attempt < CONFLICT_RETRIES and self._conn.is_in_transaction() == self.hold:
                    self.conflicts_retried += 1
                    if len(units) > 1:
                        # Fewer rows locked at once: two halves, one after the other (acks
                        # stay in queue order).
                        half = len(units) // 2
                        await self._commit(units[:half])
                        await self._commit(units[half:])
                        return
                    await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                    continue
                self._fail(units, exc)
                return
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                self._fail(units, exc)
                return
        committed = 0
        for item, outcome in zip(units, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _settle(item.future, error=outcome)
                continue
            ids, hooked = outcome
            for statement, so_far in hooked:
                if statement.on_commit is not None:
                    statement.on_commit(so_far)
            committed += 1
            _settle(item.future, ids)
        self.units_committed += committed
        if self.on_batch_committed is not None:
            self.on_batch_committed(time.perf_counter() - started, len(units))

    async def _attempt(self, units: list[_Item]) -> list[_Outcome | BaseException]:
        try:
            # Optimistic: the whole batch in one transaction, no savepoint per unit (each
            # costs two round trips). A refused unit rolls it all back...
            return await self._transaction(units, savepoints=False)
        except _Refused:
            # ...and the batch runs again with a savepoint per unit, so that only the
            # refused ones are left out. Nothing was acknowledged or published yet.
            return await self._transaction(units, savepoints=True)

    def _fail(self, units: list[_Item], exc: BaseException) -> None:
        if self.hold and self._lost is None and not self._conn.is_in_transaction():
            self._lost = PersistenceError(
                f"the work held since the last checkpoint is lost: resume from it ({exc})"
            )
        for item in units:
            if not item.future.done():
                item.future.set_exception(PersistenceError(f"group commit failed: {exc}"))

    async def _transaction(
        self, units: list[_Item], *, savepoints: bool
    ) -> list[_Outcome | BaseException]:
        """Run ``units`` in one transaction and commit it; return each unit's outcome.

        Without savepoints, the first refused unit raises ``_Refused`` (all rolled back)."""
        conn = self._conn
        outcomes: list[_Outcome | BaseException] = []
        async with conn.transaction():
            if not self.hold:
                # Batches of every process sharing the database, one at a time: a batch
                # locks many rows (players, PTOs, the counters) and two batches locking
                # them in other orders would deadlock. Nothing is lost to this order:
                # every unit that numbers an event waits for the counter row anyway.
                await conn.execute(BATCH_LOCK_SQL)
                worlds = self._leased_worlds(units)
                if worlds:
                    await conn.execute(LOCK_LEASES_SQL, worlds)
            if not savepoints:
                try:
                    return await self._run_batch(conn, units)
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    raise _Refused(str(exc)) from exc
            for item in units:
                assert item.statements is not None
                try:
                    async with conn.transaction():  # a SAVEPOINT
                        unit = _UnitRun()
                        for statement in item.statements:
                            await unit.run(conn, statement)
                        outcomes.append(unit.outcome)
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    outcomes.append(UnitRejected(f"unit of work rejected by the database: {exc}"))
        return outcomes

    def _leased_worlds(self, units: list[_Item]) -> list[str]:
        """The worlds ``units`` write under their leases, sorted (the lock order)."""
        if not self.lease_writes:
            return []
        return sorted(
            {
                str(statement.params[0])
                for item in units
                for statement in item.statements or ()
                if statement.sql in self.lease_writes
            }
        )

    async def _run_batch(self, conn: Any, units: list[_Item]) -> list[_Outcome | BaseException]:
        """Every unit's statements in order, a run of consecutive identical statements
        (no rowid wanted, no hook: one-row units, bulk registration) sent as one
        ``executemany``: measured against per-row execution and against COPY into a
        staging table, see benchmarks/persistence_pg.py. A refused row fails the call,
        and the batch then runs unit by unit under savepoints."""
        outcomes: list[_Outcome | BaseException] = []
        run_sql: str | None = None
        run: list[Sequence[object]] = []

        async def send() -> None:
            if len(run) == 1:
                await conn.execute(run_sql, *run[0])
            elif run:
                await conn.executemany(run_sql, run)
            run.clear()

        for item in units:
            assert item.statements is not None
            unit = _UnitRun()
            for statement in item.statements:
                if _plain_statement(statement):
                    sql = to_postgres(statement.sql)
                    if sql != run_sql:
                        await send()
                        run_sql = sql
                    if statement.rows is None:
                        run.append(statement.params)
                    else:  # a statement of many rows (bulk registration): one run
                        run.extend(statement.rows)
                    continue
                await send()
                await unit.run(conn, statement)
            outcomes.append(unit.outcome)
        await send()
        return outcomes


def _plain_statement(statement: Statement) -> bool:
    return (
        not statement.want_rowid
        and statement.on_commit is None
        and statement.sql != rows._INSERT_SESSION_EVENT
    )


class _UnitRun:
    """One unit's statements as they run: its rowids, and each hooked statement with the
    rowids made up to it."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.hooked: list[tuple[Statement, list[int]]] = []
        self.last_session = 0

    @property
    def outcome(self) -> _Outcome:
        return self.ids, self.hooked

    async def run(self, conn: Any, statement: Statement) -> None:
        if statement.rows is not None:
            await self._run_many(conn, statement)
            return
        params = list(statement.params)
        if statement.sql == rows._INSERT_SESSION_EVENT:
            # SQLite fills the session id in with json_set from sqlite_sequence; the
            # session was inserted just before, in this unit: its id is known here.
            payload = json.loads(str(params[2]))
            payload["session_id"] = self.last_session
            params[2] = json.dumps(payload, separators=(",", ":"))
            sql = to_postgres(rows._INSERT_EVENT, want_rowid=True)
        else:
            sql = to_postgres(statement.sql, want_rowid=statement.want_rowid)
        if statement.want_rowid:
            rowid = await _last_id(conn, sql, params)
            self.ids.append(rowid)
            if sql.startswith("INSERT INTO play_sessions"):
                self.last_session = int(rowid)
        else:
            await conn.execute(sql, *params)
        if statement.on_commit is not None:
            self.hooked.append((statement, list(self.ids)))

    async def _run_many(self, conn: Any, statement: Statement) -> None:
        """A statement of many rows, as SQLite's writer runs it: one rowid, the last row's,
        and the hook (if any) with the rowids up to it. The rows are numbered
        consecutively: one writer per database, or the batch's advisory lock."""
        assert statement.rows is not None
        sql = to_postgres(statement.sql, want_rowid=statement.want_rowid)
        if not statement.want_rowid:
            await conn.executemany(sql, statement.rows)
        else:
            last = 0
            for row in statement.rows:
                last = await _last_id(conn, sql, row)
            self.ids.append(last)
        if statement.on_commit is not None:
            self.hooked.append((statement, list(self.ids)))


async def _last_id(conn: Any, sql: str, params: Sequence[Any]) -> int:
    """The last id a ``RETURNING`` insert made: a multi-row ``VALUES`` statement (a bulk
    registration's log rows) returns one per row, and ``fetchval`` would give the first."""
    return max(int(row[0]) for row in await conn.fetch(sql, *params))


def _settle(
    future: asyncio.Future[Any], result: object = None, error: BaseException | None = None
) -> None:
    """Answer ``future`` unless its waiter was cancelled (a cancelled caller, e.g. a
    client that went away, must not stop the writer)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
