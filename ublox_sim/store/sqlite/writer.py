"""The persistence actor: the one writer of ``ublox.db``.

Callers hand it *units of work* (every row of one economic operation). It batches
whatever is queued into one SQLite transaction (group commit; runs of one SQL text as
one step, a plain INSERT as multi-row INSERTs), and acknowledges each unit only after
that transaction committed. A unit is all-or-nothing: when a batch fails, it runs
again in one transaction with a SAVEPOINT per unit, so a unit the database refuses is
rolled back alone, fails only its own caller, and the others still share one COMMIT.
Only when the failure is not a unit's own (SQLite ended the transaction, the COMMIT
failed) are the units retried one by one, a transaction each.

Use it as ``async with PersistenceActor.open(path) as db: await db.submit(unit)``;
``submit_many`` queues several units at once, ``enqueue_with`` takes a callback
instead of awaiting (the backend's path: no future per unit).

The mailbox is a plain deque of batches and requests. A unit joins the batch forming
at its end; the batch is taken when a pipeline slot is free (``PIPELINE_DEPTH``), after
one more turn of the event loop, so the producers the last acknowledgement woke have
joined it. A batch has one future, shared by its producers (``_Shared``: one waiter
giving up does not cancel it for the others), and is one trip to the connection's
thread: BEGIN, its steps and COMMIT run in one function there (``_batch_on_thread``,
through aiosqlite's ``_execute``, its only way to run a function on its thread), and
a failure is rolled back there before anything else runs on the connection.

WAL checkpoints never stand between a commit and its acknowledgement. SQLite's
auto-checkpoint runs inside the committing call, so it is off. Once the ``-wal`` file
has grown past ``wal_limit_bytes``, the writer starts a PASSIVE checkpoint on a
connection and a worker thread of its own (``_Checkpointer``): it copies committed
frames into the database while the writer goes on committing, and waits for nobody.
When it has copied every frame, the next commit starts the WAL afresh and cuts the
file back to the limit (``journal_size_limit``), so the file's length tells what was
appended since. A writer that never pauses may never begin a transaction with every
frame copied (it appended during the copy): the next checkpoint is then due once
another limit was appended, not at the next batch (the WAL header's generation tells
the two cases apart). Past ``WAL_HARD_FACTOR`` times the limit it copies the last frames
itself, between two batches and after the acknowledgements of the one before
(``checkpoints_inline``: the one case where queued units wait for a checkpoint, and
only for the frames written since the last background pass).

Readers of other connections (the ``sqlite3`` shell, Datasette, another process's
``verify``) can hold a snapshot that the checkpoint must not overwrite: a PASSIVE
checkpoint copies what it can and reports the rest (``checkpoints_blocked``); the next
attempt comes once another ``wal_limit_bytes`` was appended. While a reader holds
that snapshot the WAL grows (SQLite cannot reuse frames a reader may still need); the
first attempt after it lets go copies everything.

The connection keeps sqlite3's legacy transaction control (``isolation_level=
"IMMEDIATE"``): a DML statement found outside a transaction opens one, so nothing
ever autocommits behind the writer's back (a control request's DML is committed when
the request returns, outside hold mode).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite
import anyio
from anyio.abc import TaskGroup

from ...core.errors import (
    ActorBroken,
    ActorClosed,
    PersistenceError,
    SchemaError,
    StoreFull,
    UnitRejected,
)
from ...core.logsetup import get_logger
from ...core.tasks import Reply, owned_task_group
from ..backend import Chain
from .schema import PRAGMAS, migrate

log = get_logger(__name__)

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL"]

PIPELINE_DEPTH = 2
# Each checkpoint stalls the batches that arrive meanwhile: about 10 ms of fsyncs plus
# the copy of the pages written since the last one (measured here: 2 MiB 11 ms, 8 MiB
# 21 ms, 32 MiB 45-95 ms). 32 MiB keeps the acknowledgements that wait for one under
# 1% with 100 producers writing one-row units (~2.5 KB of WAL a row): ack p99 2.7-4.7
# ms against 16-24 ms with 8 or 16 MiB (benchmarks/persistence.py, actor_ckpt).
WAL_LIMIT_BYTES = 32 * 1024 * 1024
# Past this many times the limit, the writer copies the last frames itself (_catch_up).
WAL_HARD_FACTOR = 4
_SQLITE_FULL = 13
_SQLITE_CONSTRAINT = 19


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement with its parameters. ``want_rowid`` returns its lastrowid.

    ``on_commit`` (with ``want_rowid``) is called once the unit committed, in commit
    order, with the unit's rowids up to and including this statement's: that is how
    an event learns its sequence number and is published in exactly the order of
    the log (see events.py)."""

    sql: str
    params: Sequence[object] = ()
    want_rowid: bool = False
    on_commit: Callable[[Sequence[int]], None] | None = field(default=None, compare=False)
    # Many parameter rows: the statement runs once per row, all in one run (``params``
    # is then unused). A bulk producer hands over thousands of rows as one statement
    # instead of thousands of statements. With ``want_rowid`` (an INSERT), the rowid is
    # the last row's: on the one writer the rows are numbered consecutively.
    rows: Sequence[Sequence[object]] | None = None

    def __post_init__(self) -> None:
        if self.rows is not None:
            if self.want_rowid and not (self.rows and self.sql.lstrip()[:6].upper() == "INSERT"):
                raise ValueError("only an INSERT of one row or more returns a rowid (its last)")
            if not _covered(self.sql):
                raise ValueError(f"a statement of many rows must be DML: {self.sql[:40]!r}")

    @classmethod
    def many(cls, sql: str, rows: Sequence[Sequence[object]]) -> Statement:
        """``sql`` run once for each of ``rows`` (one executemany)."""
        return cls(sql, rows=rows)


Unit = Sequence[Statement]


class Chained(list[Statement]):
    """A unit of a ``Chain`` (``store.backend``): committed only if no earlier unit of
    the chain was refused. The chain is marked once a transaction that refused one of
    its units committed (a rerun that failed as a whole marks nothing)."""

    __slots__ = ("chain",)

    def __init__(self, statements: Iterable[Statement], chain: Chain) -> None:
        super().__init__(statements)
        self.chain = chain


def _chain(unit: Unit) -> Chain | None:
    return unit.chain if isinstance(unit, Chained) else None


def _chain_broken() -> sqlite3.IntegrityError:
    return sqlite3.IntegrityError("not run: an earlier unit of its chain was refused")


# Rows come back as SQLite gives them: typed by the query, not by us.
Row = tuple[Any, ...]


# What a unit's producer hears: its rowids, or why it was not committed.
Outcome = list[int] | BaseException
UnitDone = Callable[[Outcome], None]


class _Shared(asyncio.Future[None]):
    """A batch's one future, awaited by every producer in it: one waiter giving up must
    not cancel it for the others, so ``cancel`` refuses (a cancelled waiter gets its
    CancelledError once the batch is answered, a commit's time later)."""

    def cancel(self, msg: object = None) -> bool:
        return False


class _Batch:
    """Units queued together and committed in one transaction, answered through one
    future (``done``): each unit's outcome is ``outcomes[i]``. A producer that queued a
    callback instead (``enqueue_with``) has it scheduled on the loop, in order."""

    __slots__ = ("callbacks", "done", "outcomes", "units", "with_callbacks")

    def __init__(self) -> None:
        self.units: list[Unit] = []
        self.callbacks: list[UnitDone | None] = []
        self.with_callbacks = False  # any of them (else answering is one set_result)
        self.outcomes: list[Outcome] = []
        self.done = _Shared()

    def answer(self, outcomes: list[Outcome]) -> None:
        if self.done.done():
            return
        self.outcomes = outcomes
        if self.with_callbacks:
            call_soon = self.done.get_loop().call_soon
            for callback, outcome in zip(self.callbacks, outcomes, strict=True):
                if callback is not None:
                    call_soon(callback, outcome)
        self.done.set_result(None)

    def fail(self, error: BaseException) -> None:
        self.answer([error] * len(self.units))


@dataclass(eq=False, slots=True)
class _Pending(Reply):
    """A queued request other than a write: a function run against the connection."""

    control: Callable[[aiosqlite.Connection], Awaitable[object]] | None = None


def translate(exc: sqlite3.Error, what: str) -> PersistenceError | UnitRejected:
    """Turn a driver error into ours, keeping the cause chained by the caller."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_CONSTRAINT or isinstance(exc, sqlite3.IntegrityError):
        return UnitRejected(f"{what} rejected by the database: {exc}")
    if code == _SQLITE_FULL:
        return StoreFull(f"{what} not committed: the database or disk is full ({exc})")
    return PersistenceError(f"{what} not committed: {exc}")


async def run(conn: aiosqlite.Connection, sql: str) -> list[Row]:
    """Execute and fetch every row in one trip. A statement left open with unread rows
    (``PRAGMA journal_mode`` returns one) holds a read snapshot, and the writer can then
    never restart the WAL: ``execute_fetchall`` steps it to the end on the thread."""
    return [tuple(row) for row in await conn.execute_fetchall(sql)]


async def run_with(conn: aiosqlite.Connection, stmt: Statement) -> None:
    await conn.execute_fetchall(stmt.sql, stmt.params)


# A statement's commit hook, the unit it belongs to and how many rowids it may see.
Hook = tuple[Callable[[Sequence[int]], None], int, int]

# The statements before which sqlite3's legacy transaction control opens a transaction
# when none is open (CPython checks the first keyword; comments before it are not
# skipped here, so such a statement is merely sent alone).
_NET_COVERS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


_COVERED: dict[str, bool] = {}


def _covered(sql: str) -> bool:
    known = _COVERED.get(sql)
    if known is None:
        known = sql.lstrip()[:7].upper().startswith(_NET_COVERS)
        if len(_COVERED) < 4096:  # SQL texts are few; a producer of unique texts is not cached
            _COVERED[sql] = known
    return known


# A plain ``INSERT INTO t (cols) VALUES (...)`` whose one VALUES group holds bare ``?``
# parameters and literals: a run of it can be sent as multi-row INSERTs.
_ONE_ROW_INSERT = re.compile(
    r"(?is)^\s*INSERT\s+INTO\s+[\w.\"]+\s*\([^()]*\)\s*VALUES\s*"
    r"(\((?:[^()'?:@$]|'[^']*'|\?(?![\d:@$\w]))*\))\s*$"
)
_MULTI: dict[str, tuple[str, str, int] | None] = {}
# Rows per multi-row INSERT: enough to make the per-statement cost vanish, few enough
# that a statement's text stays short (and within any host-parameter limit below).
MULTI_ROWS = 4096


def _multi_row(sql: str) -> tuple[str, str, int] | None:
    """(head, VALUES group, parameters per row) if ``sql`` can repeat its VALUES group."""
    if sql in _MULTI:
        return _MULTI[sql]
    match = _ONE_ROW_INSERT.match(sql)
    found = None
    if match is not None:
        group = match.group(1)
        width = re.sub(r"'[^']*'", "", group).count("?")
        found = (sql[: match.start(1)], group, width) if width else None
    if len(_MULTI) < 4096:
        _MULTI[sql] = found
    return found


def _insert_rows(
    cursor: sqlite3.Cursor, sql: str, rows: list[Sequence[object]], limit: int
) -> None:
    """Run ``sql`` once per row, as multi-row INSERTs where it can (see ``_multi_row``).

    The same rows in the same order, in one statement per ``MULTI_ROWS``: SQLite numbers
    and checks them (AUTOINCREMENT, constraints, triggers) row by row exactly as it
    would for one statement each, and a failure fails the batch either way. It is what
    makes a bulk insert cheap from Python: ``executemany`` binds, steps and resets one
    row at a time and takes the GIL back after each row, which a busy event loop
    delays; a multi-row INSERT does so once per statement."""
    shape = _multi_row(sql) if len(rows) > 1 else None
    if shape is None:
        cursor.executemany(sql, rows)
        return
    head, group, width = shape
    per = max(1, min(MULTI_ROWS, limit // max(1, width)))
    texts: dict[int, str] = {}
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        text = texts.get(len(chunk))
        if text is None:
            text = texts[len(chunk)] = head + ", ".join([group] * len(chunk))
        cursor.execute(text, list(chain.from_iterable(chunk)))


@dataclass(eq=False, slots=True)
class _Step:
    """One call on the connection's queue: a run of one SQL text (``executemany``), a
    statement whose rowid is wanted, or a statement the net does not cover (alone)."""

    sql: str
    params: list[Sequence[object]]
    unit: int
    want_rowid: bool = False
    on_commit: Callable[[Sequence[int]], None] | None = None
    covered: bool = True
    many: bool = False  # a statement of many rows whose (last) rowid is wanted

    def send(self, conn: aiosqlite.Connection, cursor: aiosqlite.Cursor) -> Awaitable[object]:
        if self.want_rowid:
            return conn.execute_insert(self.sql, self.params[0])
        if not self.covered:
            return conn.execute_fetchall(self.sql, self.params[0])
        return cursor.executemany(self.sql, self.params)


def _plan(units: Sequence[Unit]) -> list[_Step]:
    """The units' statements in order; runs of one SQL text become one executemany."""
    steps: list[_Step] = []
    run_: _Step | None = None
    for index, unit in enumerate(units):
        for stmt in unit:
            if (
                run_ is not None
                and stmt.rows is None
                and not stmt.want_rowid
                and run_.sql == stmt.sql
            ):
                run_.params.append(stmt.params)  # the common case: the run goes on
                continue
            covered = _covered(stmt.sql)
            if stmt.rows is not None and stmt.want_rowid:
                run_ = None
                steps.append(
                    _Step(stmt.sql, list(stmt.rows), index, True, stmt.on_commit, many=True)
                )
            elif stmt.rows is not None:
                if not stmt.rows:
                    continue
                if run_ is not None and run_.sql == stmt.sql:
                    run_.params.extend(stmt.rows)
                else:
                    run_ = _Step(stmt.sql, list(stmt.rows), index)
                    steps.append(run_)
            elif stmt.want_rowid or not covered:
                run_ = None
                steps.append(
                    _Step(
                        stmt.sql,
                        [stmt.params],
                        index,
                        stmt.want_rowid,
                        stmt.on_commit if stmt.want_rowid else None,
                        covered,
                    )
                )
            elif run_ is not None and run_.sql == stmt.sql:
                run_.params.append(stmt.params)
            else:
                run_ = _Step(stmt.sql, [stmt.params], index)
                steps.append(run_)
    return steps


async def _queued(calls: Iterable[Awaitable[object]]) -> list[object]:
    """Queue every call on the connection's thread now, in order, then wait for all.

    Tasks take their first step in the order they were created (asyncio runs ready
    callbacks first in, first out), and that first step puts the call on aiosqlite's
    queue. Raises the first failure once every call has finished: the ones queued
    behind it have run too, so the caller rolls back whatever is open.
    """
    calls = list(calls)
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _send_steps(
    conn: aiosqlite.Connection, cursor: aiosqlite.Cursor, lead: Sequence[str], steps: list[_Step]
) -> list[object]:
    """Send ``lead`` (BEGIN or SAVEPOINT) and the steps; return the steps' results."""
    results: list[object] = []
    calls: list[Awaitable[object]] = [conn.execute_fetchall(sql) for sql in lead]
    for step in steps:
        if step.covered:
            calls.append(step.send(conn, cursor))
            continue
        # Everything before it succeeded, so the batch's transaction is open.
        results.extend(await _queued(calls))
        calls = []
        results.append(await step.send(conn, cursor))
    results.extend(await _queued(calls))
    return results[len(lead) :]


def _rowids(
    units: Sequence[Unit], steps: list[_Step], results: list[object]
) -> tuple[list[list[int]], list[Hook]]:
    rowids: list[list[int]] = [[] for _ in units]
    hooks: list[Hook] = []
    for step, result in zip(steps, results, strict=True):
        if not step.want_rowid:
            continue
        row = result if isinstance(result, tuple | sqlite3.Row) else None
        rowids[step.unit].append(int(row[0] or 0) if row is not None else 0)
        if step.on_commit is not None:
            hooks.append((step.on_commit, step.unit, len(rowids[step.unit])))
    return rowids, hooks


@dataclass(eq=False)
class _Held:
    """Hold mode: whether the open transaction holds acknowledged work."""

    work: bool = False


class HeldWorkLost(sqlite3.OperationalError):
    """SQLite rolled back the held transaction (as it may on FULL or IOERR) before this
    batch ran: starting a fresh one would commit later work on top of a gap."""


async def _run_batch(
    conn: aiosqlite.Connection,
    units: Sequence[Unit],
    held: _Held | None,
) -> tuple[list[list[int]], list[Hook]]:
    """Run the batch as one transaction (in hold mode: one savepoint of the held one), in
    one trip to the connection's thread: BEGIN, one call per step, COMMIT.

    On error the transaction (or the batch's savepoint) is rolled back there and the
    error re-raised for the actor to sort out.
    """
    steps = _plan(units)
    db = conn._conn  # the sqlite3 connection, used only on its thread (below)
    # aiosqlite's one way to run a function on its thread (no public one): a batch is
    # then one trip through the event loop, not one per statement.
    results: list[object] = await conn._execute(  # type: ignore[no-untyped-call]
        _batch_on_thread, db, steps, None if held is None else held.work
    )
    if held is not None:
        held.work = True
    return _rowids(units, steps, results)


def _open_on_thread(db: sqlite3.Connection, held_work: bool | None, lead: tuple[str, ...]) -> str:
    """Begin a batch's transaction (in hold mode: its savepoint of the held one) and
    return the statement that ends it. ``held_work`` is None outside hold mode, else
    whether the held transaction already holds acknowledged work; ``lead`` is what
    opens a transaction outside hold mode (nothing when its first statement does)."""
    if held_work is None:
        end = "COMMIT"
    else:
        lead, end = ("SAVEPOINT batch",), "RELEASE batch"
        if not db.in_transaction:
            # The batch before may have failed there: if SQLite dropped the held
            # transaction, this one must not begin anew.
            if held_work:
                raise HeldWorkLost("the held transaction was rolled back by the database")
            lead = ("BEGIN IMMEDIATE", *lead)
    for sql in lead:
        db.execute(sql)
    return end


def _steps_on_thread(db: sqlite3.Connection, steps: list[_Step], results: list[object]) -> None:
    """Run ``steps`` in the open transaction, appending what each one returns."""
    cursor = db.cursor()
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    try:
        for step in steps:
            if step.many:
                _insert_rows(cursor, step.sql, step.params, limit)
                results.append(db.execute("SELECT last_insert_rowid()").fetchone())
            elif step.want_rowid:
                cursor.execute(step.sql, step.params[0])
                results.append((cursor.lastrowid,))
            elif not step.covered:
                results.append(cursor.execute(step.sql, step.params[0]).fetchall())
            else:
                _insert_rows(cursor, step.sql, step.params, limit)
                results.append(None)
    finally:
        cursor.close()


def _batch_on_thread(
    db: sqlite3.Connection, steps: list[_Step], held_work: bool | None
) -> list[object]:
    """The batch, on the connection's thread. ``held_work`` is None outside hold mode,
    else whether the held transaction already holds acknowledged work."""
    # A first statement the net covers opens the transaction itself (BEGIN IMMEDIATE,
    # as the connection's isolation_level says).
    lead: tuple[str, ...] = () if steps and steps[0].covered else ("BEGIN IMMEDIATE",)
    results: list[object] = []
    try:
        end = _open_on_thread(db, held_work, lead)
        _steps_on_thread(db, steps, results)
        db.execute(end)
    except sqlite3.Error:
        _undo_on_thread(db, held_work is not None)
        raise
    return results


async def _run_each(
    conn: aiosqlite.Connection, units: Sequence[Unit], held: _Held | None
) -> list[tuple[list[int], list[Hook]] | sqlite3.Error]:
    """Run ``units`` again in one transaction (in hold mode: one savepoint of the held
    one), each planned alone under a savepoint of its own: a unit the database refuses
    is rolled back to it, alone, and the others commit with one COMMIT. Returns each
    unit's rowids and hooks, or the error that refused it.

    Raises (everything rolled back) when the failure is not the unit's own: SQLite
    ended the whole transaction (``OR ROLLBACK``, FULL, IOERR), or the COMMIT failed."""
    plans = [_plan([unit]) for unit in units]
    chains = [_chain(unit) for unit in units]
    found: list[list[object] | sqlite3.Error] = await conn._execute(  # type: ignore[no-untyped-call]
        _each_on_thread, conn._conn, plans, None if held is None else held.work, chains
    )
    if held is not None:
        held.work = True
    outcomes: list[tuple[list[int], list[Hook]] | sqlite3.Error] = []
    for unit, steps, result in zip(units, plans, found, strict=True):
        if isinstance(result, sqlite3.Error):
            outcomes.append(result)
            continue
        (ids,), hooks = _rowids([unit], steps, result)
        outcomes.append((ids, hooks))
    return outcomes


def _each_on_thread(
    db: sqlite3.Connection,
    plans: list[list[_Step]],
    held_work: bool | None,
    chains: list[Chain | None],
) -> list[list[object] | sqlite3.Error]:
    """``_run_each`` on the connection's thread: each unit between ``SAVEPOINT u`` and
    ``RELEASE u``, a failed one rolled back to it and its error kept; a unit of a chain
    refused before it is not run (and refused)."""
    found: list[list[object] | sqlite3.Error] = []
    broken: list[Chain] = []  # marked only once this transaction ends as it should
    try:
        end = _open_on_thread(db, held_work, ("BEGIN IMMEDIATE",))
        for steps, chain in zip(plans, chains, strict=True):
            if chain is not None and (chain.refused or chain in broken):
                found.append(_chain_broken())
                continue
            results: list[object] = []
            db.execute("SAVEPOINT u")
            try:
                _steps_on_thread(db, steps, results)
            except sqlite3.Error as exc:
                if not db.in_transaction:
                    raise  # SQLite ended the transaction: every unit's work is gone
                db.execute("ROLLBACK TO u")
                db.execute("RELEASE u")
                found.append(exc)
                if chain is not None:
                    broken.append(chain)
                continue
            db.execute("RELEASE u")
            found.append(results)
        db.execute(end)
    except sqlite3.Error:
        _undo_on_thread(db, held_work is not None)
        raise
    for chain in broken:
        chain.refused = True
    return found


def _undo_on_thread(db: sqlite3.Connection, hold: bool) -> None:
    """Roll the failed batch back. In hold mode, to its savepoint; if that is gone, SQLite
    dropped the held transaction: roll back whatever is open (the actor then sees the
    held work lost)."""
    try:
        if hold and db.in_transaction:
            try:
                db.execute("ROLLBACK TO batch")
                db.execute("RELEASE batch")
                return
            except sqlite3.Error as exc:
                log.debug("persistence.savepoint_gone", error=str(exc))
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:  # SQLite may already have rolled back on its own
        log.debug("persistence.rollback_failed", error=str(exc))


class _Checkpointer:
    """A connection of its own for PASSIVE checkpoints, used from a worker thread (one
    checkpoint at a time): it copies committed WAL frames into the database file while
    the writer's connection goes on committing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def passive(self) -> tuple[int, int, int]:
        """(busy, frames in the WAL, frames copied), as ``PRAGMA wal_checkpoint`` says."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Read to the end: a statement left with a row unread would hold a read snapshot,
        # and the writer could never start the WAL afresh.
        ((busy, frames, copied),) = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return int(busy), int(frames), int(copied)

    def passive_in(self, wal: Path) -> tuple[bytes | None, tuple[int, int, int]]:
        """``passive()``, with the WAL's generation read just before it: the writer can
        start the WAL afresh only after this checkpoint copied every frame, so a
        different generation later means it did."""
        return _wal_generation(wal), self.passive()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _wal_generation(wal: Path) -> bytes | None:
    """The WAL header's checkpoint sequence number and salts (bytes 12-23 of the file,
    https://www.sqlite.org/fileformat.html#wal_file_format): SQLite changes them each
    time it starts the WAL afresh. None if there is no WAL yet."""
    try:
        with open(wal, "rb") as file:
            return file.read(24)[12:]
    except FileNotFoundError:
        return None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# The actor that owns a connection, for in_writer_thread (kept for callers written
# before it read through its own connection).
_OWNERS: weakref.WeakKeyDictionary[aiosqlite.Connection, PersistenceActor] = (
    weakref.WeakKeyDictionary()
)


async def in_writer_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Deprecated: use ``PersistenceActor.read_sync(fn)``; inside ``call``, this does the same.

    Runs ``fn`` on a read-only connection of its own in a worker thread (aiosqlite has no
    public way to run a function on its thread), at this point of the writer's queue.
    """
    owner = _OWNERS.get(conn)
    if owner is None:
        raise PersistenceError("in_writer_thread takes the connection of a running writer")
    return await owner._read_now(fn)


def prepare_database(path: Path, page_size: int = 2048) -> int:
    """Create or migrate the database (blocking). Returns the schema version found.

    A new database gets ``page_size`` (it cannot change once in WAL mode). Every
    table and index takes at least one page, so 2 KiB pages keep a one-PTO store
    under 100 KB; measured here, bulk inserts run as fast as with 4 KiB pages
    (1 KiB pages cost about a third of the throughput).
    """
    new = not path.exists() or path.stat().st_size == 0
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise SchemaError(f"cannot open {path}: {exc}") from exc
    try:
        if new:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        for pragma in PRAGMAS:
            conn.execute(pragma)
        try:
            return migrate(conn)
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise SchemaError(
            f"{path} is not a usable ublox database ({exc}); restore a backup "
            "(`ublox-sim backup restore NAME`) or move the file away"
        ) from exc
    finally:
        conn.close()


class PersistenceActor:
    """Owns the aiosqlite connection; serialises every write and read through one mailbox."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "NORMAL",
        mailbox_size: int = 4096,
        max_batch: int = 2048,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        checkpoint_busy_ms: int = 50,
        hold_commits: bool = False,
    ) -> None:
        self.path = path
        self.synchronous: Synchronous = synchronous
        self.max_batch = max_batch
        self.wal_limit_bytes = wal_limit_bytes
        # Kept for callers of earlier releases: PASSIVE checkpoints never wait for readers.
        self.checkpoint_busy_ms = checkpoint_busy_ms
        # Hold mode (scenario runs): units are applied inside one open transaction and
        # acknowledged at once; only commit_held() makes them durable, all together.
        self.hold_commits = hold_commits
        self._held_units = 0
        self._held = _Held()
        self._lost: PersistenceError | None = None
        self._wal_path = Path(f"{path}-wal")
        # The -wal size at which the next checkpoint is due: wal_limit_bytes once the WAL
        # started afresh, else wal_limit_bytes further on than it was (see
        # _checkpoint_now); and, after a complete checkpoint, the WAL's generation then,
        # to notice the writer's next commit starting it afresh (_checkpoint_if_due).
        self._checkpoint_due_at = wal_limit_bytes
        self._wal_generation: bytes | None = None
        # Set while a checkpoint runs (one at a time), and its own connection.
        self._checkpointing: anyio.Event | None = None
        self._checkpointer = _Checkpointer(path)
        # The mailbox: batches forming (units join the last one) and control requests,
        # in order; ``_queued`` counts what it holds against ``mailbox_size``, and
        # producers beyond that wait their turn in ``_blocked`` (first come, first served).
        self.mailbox_size = max(1, mailbox_size)
        self._mailbox: deque[_Batch | _Pending] = deque()
        self._queued = 0
        self._blocked: deque[tuple[asyncio.Future[None], int]] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the writer, waiting for work
        self._input_closed = False
        self._inflight: set[_Batch] = set()
        self._conn: aiosqlite.Connection | None = None
        # The batches' executemany cursor: one for the connection's life, so no cursor
        # is ever finalised on the event loop's thread.
        self._cursor: aiosqlite.Cursor | None = None
        self._busy_timeout_ms = 0  # the connection's own (reported, never changed)
        # A batch, from BEGIN to COMMIT, and a checkpoint have the connection to
        # themselves: nothing else may be queued between their calls.
        # asyncio's own Lock and Semaphore (the writer runs on asyncio only): free, they
        # are taken without a turn of the event loop, where anyio's take one each (a
        # checkpoint), and every turn between the producers' last unit and the thread's
        # start, or its COMMIT and the acknowledgements, is a turn the thread or the
        # producers wait for.
        self._writing = asyncio.Lock()
        self._broken: BaseException | None = None
        self._closed = False
        self._stopped = anyio.Event()
        self._slots = asyncio.Semaphore(PIPELINE_DEPTH)
        self._dispatched = False  # a batch was dispatched since the last _wait_idle
        self._batches: TaskGroup
        self.commits = 0
        self.units_committed = 0
        self.checkpoints = 0  # completed: the WAL was emptied
        self.checkpoints_blocked = 0  # a checkpoint could not copy every frame (a snapshot)
        self.checkpoints_inline = 0  # copies the writer made itself, between batches
        self._catch_up_due = False
        # Called after each committed batch with (seconds, units): a server's metrics.
        self.on_batch_committed: Callable[[float, int], None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path | str, *, task_group: TaskGroup | None = None, **options: object
    ) -> AsyncIterator[PersistenceActor]:
        """Open (creating or migrating) the database and run the actor until exit."""
        actor = cls(Path(path), **options)  # type: ignore[arg-type]
        if task_group is not None:
            await actor.start(task_group)
            try:
                yield actor
            finally:
                await actor.aclose()
            return
        async with owned_task_group() as tg:
            await actor.start(tg)
            try:
                yield actor
            finally:
                await actor.aclose()

    async def start(self, tg: TaskGroup) -> None:
        try:
            await anyio.to_thread.run_sync(prepare_database, self.path)
            self._conn = await self._connect()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_connections()
            self._close_input()
            self._closed = True
            self._stopped.set()
            raise
        tg.start_soon(self._run, name="persistence-actor")

    async def _connect(self) -> aiosqlite.Connection:
        # Legacy transaction control is the net under queued statements (see the module
        # docstring); every transaction the writer means to have it begins explicitly.
        conn = await aiosqlite.connect(self.path, isolation_level="IMMEDIATE")
        try:
            # After a checkpoint copied every frame, the next commit starts the WAL
            # afresh and cuts the file to this size: its length then tells how much was
            # appended since, past the limit (see _checkpoint_if_due).
            limit = f"PRAGMA journal_size_limit={int(self.wal_limit_bytes)}"
            # A statement inside a transaction that writes several b-trees keeps the
            # pages it changes in a statement journal, to undo itself alone; past 64 KiB
            # SQLite spills that journal to a temporary file, written and then closed at
            # every COMMIT. A multi-row INSERT of 100 ledger rows changes ~235 pages, so
            # each batch wrote ~470 KB to a file it then deleted: a third of the
            # thread's time (1.05 -> 0.69 ms a 100-row batch, measured with py-spy and
            # thread_time). In memory, the journal lives as long as its statement.
            memory = "PRAGMA temp_store=MEMORY"
            for pragma in (*PRAGMAS, f"PRAGMA synchronous={self.synchronous}", limit, memory):
                await run(conn, pragma)
            ((self._busy_timeout_ms,),) = await run(conn, "PRAGMA busy_timeout")
            self._cursor = await conn.cursor()
        except BaseException:
            await conn.close()
            raise
        _OWNERS[conn] = self
        return conn

    def discard(self) -> None:
        """Release an actor that was never started (its owner failed to open)."""
        if not self._closed:
            self._closed = True
            self._close_input()
            self._stopped.set()

    async def aclose(self) -> None:
        """Drain the mailbox, commit, checkpoint, close. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close_input()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    def _close_input(self) -> None:
        """No more requests: the writer drains what is queued, then stops."""
        self._input_closed = True
        self._wake()
        while self._blocked:
            future, _ = self._blocked.popleft()
            if not future.done():
                future.set_exception(ActorClosed("the persistence actor is closed"))

    @property
    def closed(self) -> bool:
        return self._closed

    # -- requests --------------------------------------------------------------------

    async def submit(self, unit: Unit) -> list[int]:
        """Commit one unit of work; return the rowids its ``want_rowid`` statements made.

        Returns only after the transaction holding the unit committed. Raises
        UnitRejected (this unit broke a constraint; others went on), StoreFull or
        PersistenceError (nothing of the unit was written), ActorClosed/ActorBroken.
        """
        await self._admit(1)
        batch, index = self._put(unit, None)
        await batch.done  # the batch's one future, shared by its producers
        outcome = batch.outcomes[index]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def submit_many(self, units: Sequence[Unit]) -> list[Outcome]:
        """Commit several units queued together (nothing of another producer's between
        them; a long list spans batches). Each is still all-or-nothing on its own: the
        result holds each unit's rowids, or the error that refused it (not raised).
        Raises only ActorClosed/ActorBroken, when none of them was queued."""
        if not units:
            return []
        await self._admit(len(units))
        placed = [self._put(unit, None) for unit in units]
        for batch in dict.fromkeys(batch for batch, _ in placed):
            await batch.done  # batches are answered in order; each is awaited anyway
        return [batch.outcomes[index] for batch, index in placed]

    async def enqueue_with(self, unit: Unit, done: UnitDone) -> None:
        """Queue one unit (waiting only for mailbox room); ``done(rowids or error)`` is
        called on the event loop once its batch committed or failed, in commit order
        and after the commit hooks of the batch ran. No future per unit."""
        await self._admit(1)
        self._put(unit, done)

    async def enqueue_many_with(self, units: Sequence[Unit], done: Sequence[UnitDone]) -> None:
        """``enqueue_with`` for several units at once, queued together."""
        if len(units) != len(done):
            raise ValueError("one callback per unit")
        if units:
            await self._admit(len(units))
            for unit, callback in zip(units, done, strict=True):
                self._put(unit, callback)

    async def enqueue(self, unit: Unit) -> asyncio.Future[object]:
        """Queue one unit (waiting only for mailbox room) and return a future of its own
        that resolves as ``submit`` returns (``enqueue_with`` needs no future)."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        await self.enqueue_with(unit, done)
        return future

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Read through the writer's connection, after every write queued before it."""

        async def read(conn: aiosqlite.Connection) -> list[Row]:
            return [tuple(row) for row in await conn.execute_fetchall(sql, params)]

        return await self.call(read)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def call(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``await fn(conn)`` in the actor, between batches, and return its result.

        ``conn`` is the writer's aiosqlite connection (legacy transaction control: a DML
        statement opens a transaction, which the writer commits once ``fn`` returns,
        outside hold mode)."""
        return await (await self.call_soon(fn))  # type: ignore[return-value]  # fn's own result

    async def call_soon(
        self, fn: Callable[[aiosqlite.Connection], Awaitable[object]]
    ) -> asyncio.Future[object]:
        """Queue ``call(fn)`` (waiting only for mailbox room) and return the future that
        resolves with ``fn``'s result: it runs at this point of the queue whatever
        becomes of the caller, and the future fails with ``ActorClosed`` if the actor
        stops first."""
        pending = _Pending(control=fn)
        await self._admit(1)
        self._mailbox.append(pending)
        self._wake()
        return pending.done

    async def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run blocking ``fn(connection)`` between batches, in a worker thread, on a
        read-only connection of its own; return its result.

        For code written against ``sqlite3`` (``verify``): it sees every write queued
        before it, as committed (in hold mode: up to the last ``commit_held``), and
        nothing queued after it runs until it returns."""

        async def read(conn: aiosqlite.Connection) -> T:
            return await self._read_now(fn)

        return await self.call(read)

    async def _read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        uri = f"{self.path.resolve().as_uri()}?mode=ro"

        def work() -> T:
            reader = sqlite3.connect(uri, uri=True)
            try:
                return fn(reader)
            finally:
                reader.close()

        return await anyio.to_thread.run_sync(work)

    async def commit_held(self, unit: Unit) -> None:
        """Hold mode: add ``unit`` to the held transaction and commit it all (a checkpoint)."""

        async def commit(conn: aiosqlite.Connection) -> None:
            if self._lost is not None:
                raise self._lost
            if not conn.in_transaction:
                if self._held.work:
                    self._lost = PersistenceError(
                        "the database dropped the work held since the last checkpoint; "
                        "resume from it"
                    )
                    raise self._lost
                await conn.execute_fetchall("BEGIN IMMEDIATE")
            assert self._cursor is not None
            try:
                await _send_steps(conn, self._cursor, (), _plan([unit]))
                await conn.execute_fetchall("COMMIT")
                self._held.work = False
            except sqlite3.Error:
                if conn.in_transaction:
                    await conn.execute_fetchall("ROLLBACK")
                if self._held_units:
                    self._lost = PersistenceError(
                        "the checkpoint could not commit; the run's work since the previous "
                        "checkpoint is lost: resume from it"
                    )
                raise
            self._held_units = 0

        await self.call(commit)

    async def backup_to(self, target: Path) -> None:
        """Online-backup the database to ``target`` (a consistent snapshot)."""

        async def backup(conn: aiosqlite.Connection) -> None:
            dest = sqlite3.connect(target, check_same_thread=False)
            try:
                await conn.backup(dest)
            finally:
                dest.close()

        await self.call(backup)

    # -- the mailbox ---------------------------------------------------------------

    async def _admit(self, count: int) -> None:
        """Wait for room for ``count`` units (or one request) in the mailbox, taking turns
        with producers already waiting, and reserve it. Raises if the actor stopped."""
        if self._broken is not None:
            raise ActorBroken("the persistence actor crashed") from self._broken
        if self._input_closed:
            raise ActorClosed("the persistence actor is closed")
        if not self._blocked and (self._queued + count <= self.mailbox_size or not self._queued):
            self._queued += count
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._blocked.append((turn, count))
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._queued -= count  # admitted, but its producer gave up
                self._admit_waiting()
            else:
                self._blocked = deque(b for b in self._blocked if b[0] is not turn)
            if self._broken is not None:
                raise ActorBroken("the persistence actor crashed") from self._broken
            raise

    def _admit_waiting(self) -> None:
        while self._blocked:
            turn, count = self._blocked[0]
            if turn.done():
                self._blocked.popleft()
                continue
            if self._queued and self._queued + count > self.mailbox_size:
                return
            self._blocked.popleft()
            self._queued += count
            turn.set_result(None)

    def _put(self, unit: Unit, callback: UnitDone | None) -> tuple[_Batch, int]:
        """Add an admitted unit to the batch forming at the mailbox's end (or a new one)."""
        mailbox = self._mailbox
        tail = mailbox[-1] if mailbox else None
        if type(tail) is not _Batch or len(tail.units) >= self.max_batch:
            tail = _Batch()
            mailbox.append(tail)
            self._wake()
        index = len(tail.units)
        tail.units.append(unit)
        tail.callbacks.append(callback)
        if callback is not None:
            tail.with_callbacks = True
        return tail, index

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _take(self) -> _Batch | _Pending | None:
        """The next batch or request; None once the input is closed and all is taken.

        A batch is taken when a pipeline slot is free, and after one more turn of the
        event loop: producers already woken (by the acknowledgement of the batch before)
        join it first, so the batch is formed when the loop has nothing else to do."""
        mailbox = self._mailbox
        while not mailbox:
            if self._input_closed:
                return None
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        head = mailbox[0]
        if type(head) is _Batch:
            await self._slots.acquire()
            if mailbox[-1] is head and len(head.units) < self.max_batch:
                await asyncio.sleep(0)
        item = mailbox.popleft()
        self._queued -= len(item.units) if type(item) is _Batch else 1
        if self._blocked:
            self._admit_waiting()
        return item

    # -- the actor loop --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as self._batches:
                while True:
                    item = await self._take()
                    if item is None:
                        break
                    if type(item) is _Batch:
                        self._dispatch(item)
                    else:
                        assert isinstance(item, _Pending)
                        await self._control(item)
                await self._wait_idle()
                await self.checkpoints_settled()
        except BaseException as exc:
            self._broken = exc
            failure = ActorBroken("the persistence actor crashed")
            failure.__cause__ = exc
            for batch in list(self._inflight):
                batch.fail(failure)
            raise
        finally:
            # Anyone still queued (crash or cancellation) hears about it.
            self._close_input()
            while self._mailbox:
                leftover = self._mailbox.popleft()
                closed = ActorClosed("the persistence actor stopped")
                if type(leftover) is _Batch:
                    leftover.fail(closed)
                else:
                    assert isinstance(leftover, _Pending)
                    leftover.finish(error=closed)
            with anyio.CancelScope(shield=True):
                await self._close_connections()
            self._stopped.set()

    def _dispatch(self, batch: _Batch) -> None:
        """Hand a batch (its pipeline slot taken by ``_take``) to the writer thread
        without waiting for its commit.

        Up to ``PIPELINE_DEPTH`` batches are in flight: the next is gathered while one
        runs, and queues its statements as soon as the one before has its COMMIT
        answered, before that one acknowledges its callers, so the thread works while the
        event loop answers. ``_writing`` keeps the two batches' calls apart and in order.
        """
        self._dispatched = True
        self._inflight.add(batch)

        async def commit() -> None:
            try:
                await self._commit(batch)
            except BaseException as exc:
                # Cancelled (the actor is stopping) or crashed before answering: nobody
                # may be left waiting on the batch's future.
                failure: ActorBroken | ActorClosed = ActorBroken("the persistence actor crashed")
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    failure = ActorClosed("the persistence actor stopped")
                failure.__cause__ = exc
                batch.fail(failure)
                raise
            finally:
                self._inflight.discard(batch)
                self._slots.release()

        self._batches.start_soon(commit)

    async def _wait_idle(self) -> None:
        """Wait until no batch is in flight (before a read or a control request)."""
        for _ in range(PIPELINE_DEPTH):
            await self._slots.acquire()
        for _ in range(PIPELINE_DEPTH):
            self._slots.release()

    async def _control(self, item: _Pending) -> None:
        if self._dispatched:
            # Consecutive control requests wait once: a request runs inline, so
            # after the first nothing is in flight until the next batch.
            await self._wait_idle()
            self._dispatched = False
        assert item.control is not None and self._conn is not None
        try:
            result = await item.control(self._conn)
        except sqlite3.Error as exc:
            error = translate(exc, "request")
            error.__cause__ = exc
            item.finish(error=error)
        except Exception as exc:
            item.finish(error=exc)
        else:
            item.finish(result)
        await self._close_open_transaction(self._conn)
        # A control request may have committed (commit_held): same rule as a batch.
        self._checkpoint_if_due()

    async def _commit(self, batch: _Batch) -> None:
        conn = self._conn
        assert conn is not None
        outcomes: list[Outcome] = [[] for _ in batch.units]
        hooks: list[Hook] = []
        async with self._writing:
            # Retries of a failed batch's units run before the next batch takes the
            # connection: units commit, and are answered, in the order they were queued.
            await self._attempt(conn, batch.units, range(len(batch.units)), outcomes, hooks)
        # A batch waiting for the connection was woken by the lock's release, before the
        # producers this answer wakes (the loop runs callbacks first in, first out): it
        # queues its statements first, so the thread works while the loop acknowledges.
        batch.answer(outcomes)
        # After the replies (their callbacks are scheduled, so they run after these), so
        # each actor resumes (and applies its state) before any subscriber hears of the
        # change; in execution order, which is commit order.
        for hook, index, seen in hooks:
            ids = outcomes[index]
            assert isinstance(ids, list)
            hook(ids[:seen])
        self._checkpoint_if_due()
        if self._catch_up_due and self._checkpointing is None:
            await self._catch_up(conn)

    async def _catch_up(self, conn: aiosqlite.Connection) -> None:
        """The safety valve under writes without a pause: the background checkpoints
        copy frames, but SQLite starts the WAL afresh only when a write transaction
        begins with every frame copied, which a writer that never pauses rarely sees.
        Past ``WAL_HARD_FACTOR`` times the limit, the writer copies the few frames
        appended since the last background pass itself, between two batches (after
        this one's acknowledgements), so the next commit rewinds the file. Units queued
        meanwhile wait for that copy: counted in ``checkpoints_inline``."""
        self._catch_up_due = False
        if self._lost is not None:
            return
        # Until this one is done, the next attempt is a limit further on (a batch in
        # flight behind this one must not start another).
        self._checkpoint_due_at = _file_size(self._wal_path) + self.wal_limit_bytes
        async with self._writing:
            if conn.in_transaction or self._conn is None:
                return
            try:
                ((busy, frames, copied),) = await run(conn, "PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("persistence.checkpoint_failed", error=str(exc))
                return
        self.checkpoints_inline += 1
        if busy or copied < frames:  # a reader's snapshot: try again a limit further on
            self.checkpoints_blocked += 1
            self._checkpoint_due_at = _file_size(self._wal_path) + self.wal_limit_bytes
        else:
            self._checkpoint_due_at = self.wal_limit_bytes

    async def _attempt(
        self,
        conn: aiosqlite.Connection,
        units: Sequence[Unit],
        which: Sequence[int],
        outcomes: list[Outcome],
        hooks: list[Hook],
    ) -> None:
        """Commit the units ``which``, or on failure each alone; note what became of them."""
        # Checked here, not before waiting: the batch ahead may have lost held work.
        if self._lost is not None:
            for index in which:
                outcomes[index] = self._lost
            return
        which = self._unbroken(units, which, outcomes)
        if not which:
            return
        started = time.perf_counter()
        held = self._held if self.hold_commits else None
        try:
            # Shielded: the thread runs the batch to its end whatever becomes of this task,
            # so its producers hear what it did, not that the actor stopped.
            with anyio.CancelScope(shield=True):
                rowids, found = await _run_batch(conn, [units[index] for index in which], held)
        except sqlite3.Error as exc:
            self._note_if_held_work_lost(conn, exc)
            if len(which) > 1 and self._lost is None:
                log.debug("persistence.batch_failed_retrying", units=len(which), error=str(exc))
                if await self._attempt_each(conn, units, which, outcomes, hooks):
                    return
                # Not a unit's own failure: each alone, in a transaction of its own.
                for index in which:
                    await self._attempt(conn, units, [index], outcomes, hooks)
                return
            # One unit, or a held transaction that is gone: every caller in the batch
            # hears why, none is left waiting.
            error: PersistenceError | UnitRejected = self._lost or translate(exc, "unit of work")
            if error.__cause__ is None:
                error.__cause__ = exc
            log.warning("persistence.unit_failed", units=len(which), error=str(exc))
            for index in which:
                outcomes[index] = error
                if (chain := _chain(units[index])) is not None:
                    chain.refused = True
            return
        self._committed(started, len(which))
        for index, ids in zip(which, rowids, strict=True):
            outcomes[index] = ids
        hooks.extend((hook, which[local], seen) for hook, local, seen in found)

    @staticmethod
    def _unbroken(
        units: Sequence[Unit], which: Sequence[int], outcomes: list[Outcome]
    ) -> list[int]:
        """``which`` less the units of a chain refused before them (refused here)."""
        kept: list[int] = []
        for index in which:
            chain = _chain(units[index])
            if chain is not None and chain.refused:
                error = translate(_chain_broken(), "unit of work")
                outcomes[index] = error
            else:
                kept.append(index)
        return kept

    def _committed(self, started: float, units: int) -> None:
        self.commits += 1
        self.units_committed += units
        if self.on_batch_committed is not None:
            self.on_batch_committed(time.perf_counter() - started, units)
        if self.hold_commits:
            self._held_units += units

    async def _attempt_each(
        self,
        conn: aiosqlite.Connection,
        units: Sequence[Unit],
        which: Sequence[int],
        outcomes: list[Outcome],
        hooks: list[Hook],
    ) -> bool:
        """Run the failed batch ``which`` again in one transaction, a savepoint per unit
        (``_run_each``): the refused units are rolled back alone, the others commit
        together. False if the failure was not a unit's own (nothing was written)."""
        started = time.perf_counter()
        held = self._held if self.hold_commits else None
        try:
            with anyio.CancelScope(shield=True):  # as in _attempt
                found = await _run_each(conn, [units[index] for index in which], held)
        except sqlite3.Error as exc:
            self._note_if_held_work_lost(conn, exc)
            log.debug("persistence.savepoint_rerun_failed", units=len(which), error=str(exc))
            return False
        kept = 0
        for index, result in zip(which, found, strict=True):
            if isinstance(result, sqlite3.Error):
                error = translate(result, "unit of work")
                error.__cause__ = result
                log.warning("persistence.unit_failed", units=1, error=str(result))
                outcomes[index] = error
                continue
            ids, unit_hooks = result
            outcomes[index] = ids
            hooks.extend((hook, index, seen) for hook, _, seen in unit_hooks)
            kept += 1
        self._committed(started, kept)
        return True

    # -- WAL checkpoints, off the acknowledgements' path -------------------------------

    def _checkpoint_if_due(self) -> None:
        """Start a checkpoint in the background once the writer has appended
        ``wal_limit_bytes`` to the WAL since the last complete one.

        The checkpoint is PASSIVE and runs on a connection and a thread of its own: it
        copies committed frames into the database while the writer goes on committing,
        and never waits for (nor makes wait) a writer or a reader. Once it has copied
        every frame, the writer's next commit starts the WAL afresh and cuts the file
        down to ``wal_limit_bytes`` (``journal_size_limit``), so past that size the
        file's length is what was appended since; it is read without a trip to any
        thread. No acknowledgement ever waits for a checkpoint: a commit's only extra
        cost is, once per checkpoint, SQLite rewinding the WAL.
        """
        if self._checkpointing is not None or self._lost is not None or self._conn is None:
            return
        size = _file_size(self._wal_path)
        if size <= self._checkpoint_due_at:
            if size <= self.wal_limit_bytes or self._wal_generation is None:
                return
            if _wal_generation(self._wal_path) == self._wal_generation:
                return  # not started afresh: wal_limit_bytes more must be appended first
            # Started afresh (and cut back to the limit) since the last checkpoint: past
            # the limit, the file's length is what was appended since.
            self._wal_generation = None
            self._checkpoint_due_at = self.wal_limit_bytes
        if size > self.wal_limit_bytes * WAL_HARD_FACTOR and not self.hold_commits:
            self._catch_up_due = True  # see _catch_up
            return
        self._checkpointing = anyio.Event()
        self._batches.start_soon(self._checkpoint_now, self._checkpointing)

    async def _checkpoint_now(self, finished: anyio.Event) -> None:
        generation = None
        try:
            generation, (busy, frames, copied) = await anyio.to_thread.run_sync(
                self._checkpointer.passive_in, self._wal_path
            )
            done = busy == 0 and frames >= 0 and copied >= frames
        except sqlite3.Error as exc:
            # A failed checkpoint loses nothing: the WAL keeps the data. Try again after
            # another wal_limit_bytes rather than after every batch.
            log.warning("persistence.checkpoint_failed", error=str(exc))
            done = False
        finally:
            self._checkpointing = None
            finished.set()
        if done:
            self.checkpoints += 1
            # Every frame up to the checkpoint's start is copied, but the WAL starts
            # afresh only at a commit that finds every frame copied: a writer that went
            # on committing meanwhile (it never pauses under load) appends after the
            # frames it wrote during the copy. The next checkpoint is then due once
            # another wal_limit_bytes was appended, as after a blocked one; not at the
            # next batch, which ran checkpoints back to back (~50 per 125 MB instead of
            # ~4), each a core's worth of copying and two fsyncs beside the writer and
            # the loop (ack p99 6-7 ms instead of 2-2.5 ms, -20% rows/s, measured at
            # load ~2). If the next commit does start the WAL afresh, its generation
            # changes and the limit counts from there (_checkpoint_if_due).
            self._checkpoint_due_at = _file_size(self._wal_path) + self.wal_limit_bytes
            self._wal_generation = generation
        else:
            self.checkpoints_blocked += 1
            self._checkpoint_due_at = _file_size(self._wal_path) + self.wal_limit_bytes
            # A reader's snapshot, or the writer's own transaction that began before the
            # copy ended: PASSIVE cannot tell which, and neither is a fault.
            log.info(
                "persistence.checkpoint_partial",
                wal_bytes=self._checkpoint_due_at - self.wal_limit_bytes,
                retry_at=self._checkpoint_due_at,
            )

    async def checkpoints_settled(self) -> None:
        """Wait until no checkpoint is running (for tests, benchmarks and closing)."""
        running = self._checkpointing
        if running is not None:
            await running.wait()

    async def _close_open_transaction(self, conn: aiosqlite.Connection | None) -> None:
        """Outside hold mode no transaction outlives a request: commit what a control
        request's own DML opened (the net's, where autocommit used to commit it)."""
        if conn is None or self.hold_commits or not conn.in_transaction:
            return
        log.debug("persistence.control_left_transaction_open")
        try:
            await conn.execute_fetchall("COMMIT")
        except sqlite3.Error as exc:
            log.warning("persistence.control_commit_failed", error=str(exc))
            if conn.in_transaction:
                await conn.execute_fetchall("ROLLBACK")

    def _note_if_held_work_lost(self, conn: aiosqlite.Connection, exc: sqlite3.Error) -> None:
        if self.hold_commits and not conn.in_transaction and self._held_units:
            # SQLite rolled the whole held transaction back (it may on FULL or IOERR):
            # everything since the last checkpoint is gone, so memory is now ahead of
            # disk. Refuse all further work rather than go on from a false state.
            kind = StoreFull if isinstance(translate(exc, ""), StoreFull) else PersistenceError
            self._lost = kind(
                f"the database dropped {self._held_units} uncommitted units since the last "
                f"checkpoint ({exc}); stop and resume from the checkpoint"
            )
            self._lost.__cause__ = exc

    async def _close_connections(self) -> None:
        try:
            self._checkpointer.close()
        except sqlite3.Error as exc:
            log.warning("persistence.checkpointer_close_failed", error=str(exc))
        conn, self._conn = self._conn, None
        cursor, self._cursor = self._cursor, None
        if conn is not None:
            if cursor is not None:
                await cursor.close()
            if conn.in_transaction:
                # Hold mode: work after the last checkpoint is dropped, by design; the
                # run resumes from that checkpoint.
                log.info("persistence.dropping_uncheckpointed_work", units=self._held_units)
                try:
                    await conn.execute_fetchall("ROLLBACK")
                except sqlite3.Error as exc:
                    log.warning("persistence.rollback_failed", error=str(exc))
            try:
                await run(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("persistence.final_checkpoint_failed", error=str(exc))
            await conn.close()
