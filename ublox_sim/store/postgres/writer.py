"""The group-commit writer: one asyncpg connection, one queue, units in submission order.

Every write and every read goes through one queue, in order (as SQLite's persistence
actor does), so a read sees exactly the units queued before it: that is what makes
``load_player_at``'s position exact. Consecutive units commit together in one
transaction (group commit). A unit that breaks a constraint is rolled back alone
(``UnitRejected``) and the others commit: the batch first runs without savepoints (the
common case, two round trips fewer per unit) and, if a unit is refused, runs again with a
SAVEPOINT around each unit. Futures
resolve, and commit hooks run, in queue order, only once the transaction is durable
(``synchronous_commit`` stays on). A failed commit fails every unit of its batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ...core.errors import ActorClosed, PersistenceError, UnitRejected
from ..sqlite import rows
from ..sqlite.writer import Statement
from .dialect import to_postgres

Row = tuple[Any, ...]
MAX_BATCH = 512  # units per transaction at most
DEADLOCK_RETRIES = 20  # a batch the database rolled back (deadlock) runs again


@dataclass(eq=False)
class _Item:
    statements: Sequence[Statement] | None = None
    read: Callable[[Any], Awaitable[object]] | None = None
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Refused(Exception):
    """A unit of an optimistic batch broke a constraint: the batch is rolled back."""


class PgWriter:
    def __init__(self, dsn: str, *, queue_size: int = 10_000) -> None:
        self.dsn = dsn
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(queue_size)
        self._conn: Any = None
        self._closed = False
        self._stopped: asyncio.Event | None = None
        self.units_committed = 0
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

    async def submit(self, statements: Sequence[Statement]) -> None:
        await (await self.enqueue(statements))

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
            return None if row is None else tuple(row)

        result: Row | None = await self.run_read(read)
        return result

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        query = to_postgres(sql)

        async def read(conn: Any) -> list[Row]:
            return [tuple(r) for r in await conn.fetch(query, *params)]

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
            else:
                _settle(item.future, result)  # its caller may have been cancelled
        if run:
            await self._commit(run)

    async def _commit(self, units: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            for attempt in range(DEADLOCK_RETRIES):
                try:
                    outcomes = await self._attempt(units)
                    break
                except asyncpg.TransactionRollbackError:
                    # Several processes: another one's batch locked rows in another order
                    # (deadlock) and the database rolled this one back whole. Nothing was
                    # acknowledged or published yet: run it again.
                    if attempt == DEADLOCK_RETRIES - 1:
                        raise
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            for item in units:
                if not item.future.done():
                    item.future.set_exception(PersistenceError(f"group commit failed: {exc}"))
            return
        committed = 0
        for item, outcome in zip(units, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _settle(item.future, error=outcome)
                continue
            for statement, ids in outcome:
                if statement.on_commit is not None:
                    statement.on_commit(ids)
            committed += 1
            _settle(item.future, None)
        self.units_committed += committed
        if self.on_batch_committed is not None:
            self.on_batch_committed(time.perf_counter() - started, len(units))

    async def _attempt(
        self, units: list[_Item]
    ) -> list[list[tuple[Statement, list[int]]] | BaseException]:
        try:
            # Optimistic: the whole batch in one transaction, no savepoint per unit
            # (each costs two round trips). A refused unit rolls it all back...
            return await self._transaction(units, savepoints=False)
        except _Refused:
            # ...and the batch runs again with a savepoint per unit, so that only the
            # refused ones are left out. Nothing was acknowledged or published yet.
            return await self._transaction(units, savepoints=True)

    async def _transaction(
        self, units: list[_Item], *, savepoints: bool
    ) -> list[list[tuple[Statement, list[int]]] | BaseException]:
        """Run ``units`` in one transaction and commit it; return each unit's outcome.

        Without savepoints, the first refused unit raises ``_Refused`` (all rolled back)."""
        conn = self._conn
        outcomes: list[list[tuple[Statement, list[int]]] | BaseException] = []
        async with conn.transaction():
            for item in units:
                assert item.statements is not None
                try:
                    if savepoints:
                        async with conn.transaction():  # a SAVEPOINT
                            outcomes.append(await self._run_unit(conn, item.statements))
                    else:
                        outcomes.append(await self._run_unit(conn, item.statements))
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    if not savepoints:
                        raise _Refused(str(exc)) from exc
                    outcomes.append(UnitRejected(f"unit of work rejected by the database: {exc}"))
        return outcomes

    async def _run_unit(
        self, conn: Any, statements: Sequence[Statement]
    ) -> list[tuple[Statement, list[int]]]:
        """Run one unit's statements; return each hooked statement with its rowids."""
        ids: list[int] = []
        hooked: list[tuple[Statement, list[int]]] = []
        last_session = 0
        for statement in statements:
            params = list(statement.params)
            if statement.sql == rows._INSERT_SESSION_EVENT:
                # SQLite fills the session id in with json_set from sqlite_sequence; the
                # session was inserted just before, in this unit: its id is known here.
                payload = json.loads(str(params[2]))
                payload["session_id"] = last_session
                params[2] = json.dumps(payload, separators=(",", ":"))
                sql = to_postgres(rows._INSERT_EVENT, want_rowid=True)
            else:
                sql = to_postgres(statement.sql, want_rowid=statement.want_rowid)
            if statement.want_rowid:
                rowid = await conn.fetchval(sql, *params)
                ids.append(int(rowid))
                if sql.startswith("INSERT INTO play_sessions"):
                    last_session = int(rowid)
            else:
                await conn.execute(sql, *params)
            if statement.on_commit is not None:
                hooked.append((statement, list(ids)))
        return hooked


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
