"""The persistence actor: group commit, unit isolation, durable acks, real faults."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from ublox_sim.core.errors import (
    ActorClosed,
    PersistenceError,
    SchemaError,
    StoreFull,
    UnitRejected,
)
from ublox_sim.store.sqlite.writer import PersistenceActor, Statement, in_writer_thread

TX = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, timestamp)"
    " VALUES ('deposit', NULL, ?, ?, 'USD-OBBBA', '2025-12-12 16:56:32+00:00')"
)


def tx(to: str, amount: int) -> Statement:
    return Statement(TX, (to, amount))


def count(db: Path, where: str = "1") -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM transactions WHERE {where}").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.anyio
async def test_concurrent_units_are_group_committed_and_each_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db) as actor:
        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(actor.submit, [tx(f"p{i}", 100), tx(f"p{i}", 1)])
        assert actor.units_committed == 500
        assert actor.commits < 500, "concurrent units should share transactions"
    assert count(db) == 1000


@pytest.mark.anyio
async def test_a_bad_unit_fails_alone_and_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    outcomes: dict[str, str] = {}

    async def submit(name: str, unit: list[Statement]) -> None:
        try:
            await actor.submit(unit)
            outcomes[name] = "ok"
        except UnitRejected as exc:
            outcomes[name] = f"rejected: {exc}"

    async with PersistenceActor.open(db) as actor:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(submit, f"good{i}", [tx(f"good{i}", 5)])
            # Its first row is fine; its second breaks CHECK (amount >= 0): neither may land.
            tg.start_soon(submit, "bad", [tx("bad", 5), tx("bad", -1)])
    assert outcomes.pop("bad").startswith("rejected")
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == 20
    assert count(db, "to_player = 'bad'") == 0
    assert count(db, "to_player LIKE 'good%'") == 20


@pytest.mark.anyio
async def test_want_rowid_returns_the_new_ids_in_order(tmp_path: Path) -> None:
    async with PersistenceActor.open(tmp_path / "ublox.db") as actor:
        first = await actor.submit([Statement(TX, ("a", 1), want_rowid=True)])
        second = await actor.submit(
            [Statement(TX, ("b", 1), want_rowid=True), Statement(TX, ("c", 1), want_rowid=True)]
        )
    assert first == [1] and second == [2, 3]


@pytest.mark.anyio
async def test_a_full_database_fails_every_waiting_caller_and_acks_only_commits(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    acked: list[int] = []
    failed: list[int] = []

    async def submit(i: int) -> None:
        try:
            await actor.submit([Statement(TX, (f"p{i}" + "x" * 200, i))])
            acked.append(i)
        except StoreFull:
            failed.append(i)

    async with PersistenceActor.open(db) as actor:
        pages = await actor.fetchone("PRAGMA page_count")
        assert pages is not None
        # A real SQLITE_FULL: cap this connection's database a few pages above its size.
        await actor.call(lambda conn: conn.execute(f"PRAGMA max_page_count={pages[0] + 8}"))
        async with anyio.create_task_group() as tg:
            for i in range(400):
                tg.start_soon(submit, i)
        assert failed, "the cap should have been hit"
        assert acked, "some units fit before the cap"
        # Lift the cap: the actor goes on.
        await actor.call(lambda conn: conn.execute("PRAGMA max_page_count=1073741823"))
        await actor.submit([tx("after", 1)])
    assert count(db, "to_player LIKE 'p%'") == len(acked)
    assert count(db, "to_player = 'after'") == 1


@pytest.mark.anyio
async def test_shutdown_drains_queued_units_and_later_submits_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    acked = 0

    async def submit(i: int) -> None:
        nonlocal acked
        await actor.submit([tx(f"p{i}", 1)])
        acked += 1

    async with anyio.create_task_group() as tg:
        async with PersistenceActor.open(db) as actor:
            for i in range(300):
                tg.start_soon(submit, i)
            await anyio.wait_all_tasks_blocked()  # all enqueued; closing must commit them all
        with pytest.raises(ActorClosed):
            await actor.submit([tx("late", 1)])
        await actor.aclose()  # safe twice
    assert acked == 300
    assert count(db) == 300


LIMIT = 256 * 1024


def wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def idle_wal_size(actor: PersistenceActor, db: Path) -> int:
    """The WAL's size once the writer is idle: a read waits for every batch in flight and
    for the checkpoint that may follow it, so what we see depends on no timing."""
    await actor.fetchone("SELECT 1")
    await actor.checkpoints_settled()
    return wal_size(db)


# What one row appends to the WAL, at most (a 2 KiB page; a batch of 20 writes ~11).
ROW_BYTES = 2048


@pytest.mark.anyio
async def test_checkpoints_keep_the_wal_near_the_limit_each_time_it_has_appended_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, wal_limit_bytes=LIMIT) as actor:
        sizes = []
        for round_ in range(200):
            await actor.submit([tx(f"r{round_}-{i}", 1) for i in range(20)])
            # Settled, the WAL never holds more than the limit plus the batch that passed
            # it: that batch started a checkpoint, which copied every frame, and the next
            # commit rewound the file and cut it back to the limit.
            size = await idle_wal_size(actor, db)
            assert size <= LIMIT + 20 * ROW_BYTES, (round_, size)
            sizes.append(size)
        # Without checkpoints these 200 commits would leave ~5 MB of WAL.
        assert actor.checkpoints >= 8 and actor.checkpoints_blocked == 0
        assert max(sizes) > LIMIT  # the limit was passed, and each time brought back
    assert count(db) == 4000
    assert wal_size(db) == 0  # closing truncates it


@pytest.mark.anyio
async def test_acknowledgements_never_wait_for_a_checkpoint(tmp_path: Path) -> None:
    """A checkpoint held on its thread for as long as the test likes: the writer goes on
    committing and answering meanwhile (the checkpoint is not on the acks' path)."""
    db = tmp_path / "ublox.db"
    entered, release = threading.Event(), threading.Event()
    async with PersistenceActor.open(db, wal_limit_bytes=LIMIT) as actor:
        checkpoint = actor._checkpointer.passive

        def held_checkpoint() -> tuple[int, int, int]:
            entered.set()
            release.wait()
            return checkpoint()

        actor._checkpointer.passive = held_checkpoint  # type: ignore[method-assign]
        try:
            rounds = 0
            while not entered.is_set():  # until the WAL passed the limit
                await actor.submit([tx(f"a{rounds}-{i}", 1) for i in range(20)])
                rounds += 1
            for round_ in range(100):  # ~3 MB more, all acknowledged mid-checkpoint
                await actor.submit([tx(f"b{round_}-{i}", 1) for i in range(20)])
                assert actor.checkpoints == 0 and not release.is_set()
            assert await actor.fetchone(
                "SELECT COUNT(*) FROM transactions WHERE to_player LIKE 'b%'"
            ) == (2000,)
        finally:
            release.set()
        await actor.checkpoints_settled()
        assert actor.checkpoints == 1
    assert count(db) == 20 * rounds + 2000


@pytest.mark.anyio
async def test_after_a_checkpoint_the_wal_did_not_start_afresh_the_next_waits_a_limit(
    tmp_path: Path,
) -> None:
    """A checkpoint copies the frames the WAL held when it began; batches the writer
    committed while it ran are appended after them, so the WAL does not start afresh
    and stays past the limit. The next checkpoint then waits until another limit was
    appended, not for the next batch (under steady load that ran checkpoints back to
    back). Here the first checkpoint reports every frame copied and leaves the WAL as
    it is, as SQLite does when frames were appended meanwhile (that timing cannot be
    arranged from outside)."""
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, wal_limit_bytes=LIMIT) as actor:
        checkpoint = actor._checkpointer.passive
        actor._checkpointer.passive = lambda: (0, 0, 0)  # type: ignore[method-assign]
        rounds = 0
        while actor.checkpoints == 0:  # until the WAL passed the limit
            await actor.submit([tx(f"a{rounds}-{i}", 1) for i in range(20)])
            await actor.checkpoints_settled()
            rounds += 1
        actor._checkpointer.passive = checkpoint  # type: ignore[method-assign]
        after = await idle_wal_size(actor, db)
        assert LIMIT < after < 2 * LIMIT  # not started afresh
        sizes = []
        while (size := await idle_wal_size(actor, db)) <= after + LIMIT:
            assert actor.checkpoints == 1, (size, after)
            sizes.append(size)
            await actor.submit([tx(f"b{len(sizes)}-{i}", 1) for i in range(20)])
        assert sizes[-1] > after + LIMIT // 2  # batch after batch, no checkpoint
        # The batch that passed it started the next one, which (the writer idle) copied
        # every frame: the next commit starts the WAL afresh, cut back to the limit.
        assert (actor.checkpoints, actor.checkpoints_inline) == (2, 0)
        await actor.submit([tx("last", 1)])
        assert await idle_wal_size(actor, db) <= LIMIT
    assert count(db) == 20 * rounds + 20 * len(sizes) + 1


@pytest.mark.anyio
async def test_a_reader_holding_a_snapshot_delays_the_checkpoint_not_the_writer(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, wal_limit_bytes=LIMIT) as actor:
        await actor.submit([tx("first", 1)])
        reader = sqlite3.connect(db, isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM transactions").fetchone() == (1,)
            rounds = 0
            while wal_size(db) <= 3 * LIMIT:  # below the writer's own catch-up (4x)
                await actor.submit([tx(f"r{rounds}-{i}", 1) for i in range(20)])
                await actor.checkpoints_settled()
                rounds += 1
            # Every write was acknowledged while the snapshot was held. The checkpoint
            # could not copy past it each time, and was tried once per LIMIT appended,
            # not per batch.
            assert actor.checkpoints == 0
            assert 1 <= actor.checkpoints_blocked <= wal_size(db) // LIMIT < rounds // 4
            assert reader.execute("SELECT COUNT(*) FROM transactions").fetchone() == (1,)
        finally:
            reader.close()  # ends the snapshot
        # The first attempt after the reader let go copies everything, and the WAL
        # comes back to the limit.
        blocked = actor.checkpoints_blocked
        while await idle_wal_size(actor, db) > LIMIT:
            await actor.submit([tx("after", 1) for _ in range(20)])
        assert (actor.checkpoints, actor.checkpoints_blocked) == (1, blocked)
    assert count(db, "to_player LIKE 'r%'") == rounds * 20


@pytest.mark.anyio
async def test_in_hold_mode_the_wal_is_emptied_after_the_held_commits(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, wal_limit_bytes=LIMIT, hold_commits=True) as actor:
        for round_ in range(60):
            for i in range(5):
                await actor.submit([tx(f"r{round_}-{i}-{j}", 1) for j in range(20)])
            await actor.commit_held([tx(f"checkpoint{round_}", 1)])
            # The held commit is one transaction: the WAL holds it whole until the
            # checkpoint it starts has copied it and the next commit rewinds the file.
            assert await idle_wal_size(actor, db) <= LIMIT + 120 * ROW_BYTES
        assert actor.checkpoints >= 2
    assert count(db) == 60 * 101


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_is_refused_with_advice(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    db.write_bytes(b"this is not sqlite" * 200)
    with pytest.raises(SchemaError, match="not a usable ublox database"):
        async with PersistenceActor.open(db):
            pass
    assert db.read_bytes().startswith(b"this is not sqlite")


WRITER = textwrap.dedent(
    """
    import sys, anyio
    from ublox_sim.store.sqlite.writer import PersistenceActor, Statement
    TX = {tx!r}

    async def main():
        async with PersistenceActor.open(sys.argv[1]) as actor:
            async def producer(p):
                i = 0
                while True:
                    await actor.submit([Statement(TX, (f"w{{p}}-{{i}}", 1))])
                    print(f"w{{p}}-{{i}}", flush=True)
                    i += 1
            async with anyio.create_task_group() as tg:
                for p in range(20):
                    tg.start_soon(producer, p)

    anyio.run(main)
    """
).format(tx=TX)


def test_no_acknowledged_unit_is_lost_when_the_writer_is_killed(tmp_path: Path) -> None:
    for attempt in range(3):
        db = tmp_path / f"ublox{attempt}.db"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        acked: list[str] = []
        # The kill comes after a count of acknowledgements, not after a time.
        target = 300 + attempt * 700
        while len(acked) < target:
            line = proc.stdout.readline()
            if not line:
                break  # the writer died on its own: its stderr says why
            if line.startswith("w"):
                acked.append(line.strip())
        proc.send_signal(signal.SIGKILL)
        # Through the same reader as readline(): communicate() would read the pipe under
        # it and miss the acknowledgements already buffered.
        rest = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        acked.extend(line for line in rest.splitlines() if line.startswith("w"))
        assert len(acked) >= target, err
        conn = sqlite3.connect(db)
        stored = {row[0] for row in conn.execute("SELECT to_player FROM transactions")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        missing = [a for a in acked if a not in stored]
        assert not missing, f"acknowledged but lost: {missing[:5]}"


@pytest.mark.anyio
async def test_batches_in_flight_together_make_one_checkpoint_attempt_not_two(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    # One unit per batch, with many queued: the actor keeps two batches in flight, and
    # both may find a checkpoint due when they are answered; one runs at a time.
    async with PersistenceActor.open(db, wal_limit_bytes=LIMIT, max_batch=1) as actor:
        await actor.submit([tx("first", 1)])
        reader = sqlite3.connect(db, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM transactions").fetchall()

            async def producer(p: int) -> None:
                for i in range(20):
                    await actor.submit([tx(f"p{p}-{i}", 1) for _ in range(10)])

            async with anyio.create_task_group() as tg:
                for p in range(20):
                    tg.start_soon(producer, p)
            await actor.checkpoints_settled()
            assert actor.checkpoints == 0
            assert 1 <= actor.checkpoints_blocked <= wal_size(db) // LIMIT
        finally:
            reader.close()
    assert count(db, "to_player LIKE 'p%'") == 20 * 20 * 10


@pytest.mark.anyio
async def test_a_batch_after_the_database_dropped_held_work_does_not_begin_anew(
    tmp_path: Path,
) -> None:
    """If SQLite rolled the held transaction back (FULL, IOERR), the next batch must fail:
    beginning a fresh transaction would later commit its work on top of the gap, and the
    lost units would look acknowledged."""
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, hold_commits=True) as actor:
        await actor.submit([tx("held", 1)])  # acknowledged, held, not yet durable
        # What SQLite does on its own after SQLITE_FULL, done behind the writer's back.
        await actor.call(lambda conn: conn.execute_fetchall("ROLLBACK"))
        with pytest.raises(PersistenceError, match="dropped 1 uncommitted units"):
            await actor.submit([tx("after", 1)])
        with pytest.raises(PersistenceError):
            await actor.commit_held([tx("checkpoint", 1)])
    assert count(db) == 0


def or_rollback(to: str) -> Statement:
    """A row that breaks CHECK (amount >= 0) with ROLLBACK resolution: SQLite then ends the
    whole transaction itself, as it may on FULL or IOERR, with statements still queued."""
    return Statement(TX.replace("INSERT INTO", "INSERT OR ROLLBACK INTO"), (to, -1))


@pytest.mark.anyio
async def test_statements_queued_behind_a_transaction_sqlite_rolled_back_never_commit_alone(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    outcomes: dict[str, str] = {}

    async def submit(name: str, unit: list[Statement]) -> None:
        try:
            await actor.submit(unit)
            outcomes[name] = "ok"
        except UnitRejected:
            outcomes[name] = "rejected"

    with capture_logs() as logs:
        async with PersistenceActor.open(db) as actor:
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(submit, f"good{i}", [tx(f"good{i}", 1), tx(f"good{i}", 2)])
                tg.start_soon(submit, "bad", [tx("bad", 5), or_rollback("bad")])
                for i in range(30, 60):
                    tg.start_soon(submit, f"good{i}", [tx(f"good{i}", 1), tx(f"good{i}", 2)])
    # The bad unit (31st of 61) failed inside a batch of at least 40: units were queued
    # behind it, and they ran after SQLite had ended the transaction.
    failed = [e["units"] for e in logs if e["event"] == "persistence.batch_failed_retrying"]
    assert len(failed) == 1 and failed[0] >= 40, failed
    assert outcomes.pop("bad") == "rejected"
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == 60
    # Each acknowledged unit exactly once: none committed on its own before the retry.
    conn = sqlite3.connect(db)
    try:
        rows = dict(conn.execute("SELECT to_player, COUNT(*) FROM transactions GROUP BY 1"))
    finally:
        conn.close()
    assert rows == {f"good{i}": 2 for i in range(60)}


@pytest.mark.anyio
async def test_in_hold_mode_a_transaction_sqlite_rolled_back_fails_everything_after_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    errors: list[BaseException] = []

    async def submit(unit: list[Statement]) -> None:
        try:
            await actor.submit(unit)
        except PersistenceError as exc:
            errors.append(exc)

    async with PersistenceActor.open(db, hold_commits=True) as actor:
        await actor.submit([tx("held", 1)])
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(submit, [tx(f"before{i}", 1)])
            tg.start_soon(submit, [or_rollback("bad")])
            for i in range(10):
                tg.start_soon(submit, [tx(f"after{i}", 1)])
        assert len(errors) == 21, "every unit of the batch shares the lost transaction's fate"
        with pytest.raises(PersistenceError, match="uncommitted units"):
            await actor.submit([tx("later", 1)])
        with pytest.raises(PersistenceError):
            await actor.commit_held([tx("checkpoint", 1)])
    assert count(db) == 0


CTE_INSERT = (
    "WITH amounts(a) AS (SELECT ?) INSERT INTO transactions"
    " (tx_type, from_player, to_player, amount, currency, timestamp)"
    " SELECT 'deposit', NULL, ?, a, 'USD-OBBBA', '2025-12-12 16:56:32+00:00' FROM amounts"
)


@pytest.mark.anyio
async def test_a_statement_that_does_not_start_with_its_verb_stays_inside_its_unit(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db) as actor:
        # The CTE insert is sent alone (no implicit transaction covers it); the bad row
        # after it must still take it back.
        with pytest.raises(UnitRejected):
            await actor.submit([Statement(CTE_INSERT, (3, "cte")), tx("cte", -1)])
        await actor.submit([tx("x", 1), Statement(CTE_INSERT, (3, "cte")), tx("y", 1)])
    assert count(db, "to_player = 'cte'") == 1
    assert count(db) == 3


@pytest.mark.anyio
async def test_commit_hooks_run_in_commit_order_with_their_units_rowids(tmp_path: Path) -> None:
    seen: list[tuple[str, list[int]]] = []
    results: dict[str, list[int]] = {}

    def hook(name: str) -> Callable[[Sequence[int]], None]:
        return lambda ids: seen.append((name, list(ids)))

    async def submit(name: str) -> None:
        results[name] = await actor.submit(
            [
                tx(name, 1),
                Statement(TX, (name, 2), want_rowid=True),
                tx(name, 3),
                Statement(TX, (name, 4), want_rowid=True, on_commit=hook(name)),
            ]
        )

    async with PersistenceActor.open(tmp_path / "ublox.db") as actor:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(submit, f"u{i}")
    # Each unit's four rows are consecutive; its wanted rowids are its 2nd and 4th.
    for name, ids in results.items():
        assert ids[1] == ids[0] + 2, (name, ids)
    assert [ids for _, ids in seen] == sorted(ids for _, ids in seen)
    assert {name: ids for name, ids in seen} == results


@pytest.mark.anyio
async def test_read_sync_sees_every_write_queued_before_it(tmp_path: Path) -> None:
    def total(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(SUM(amount), 0) FROM transactions").fetchone()[0])

    async with PersistenceActor.open(tmp_path / "ublox.db") as actor:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(actor.submit, [tx(f"p{i}", i)])
            await anyio.wait_all_tasks_blocked()  # all queued before the read
            assert await actor.read_sync(total) == sum(range(50))
        # Written for sqlite3 and run inside call(): the older spelling still works.
        assert await actor.call(lambda conn: in_writer_thread(conn, total)) == sum(range(50))
        with pytest.raises(PersistenceError, match="readonly"):
            await actor.read_sync(lambda conn: conn.execute("DELETE FROM transactions"))
        assert await actor.read_sync(total) == sum(range(50))


@pytest.mark.anyio
async def test_units_are_answered_in_the_order_queued_even_when_a_batch_is_retried(
    tmp_path: Path,
) -> None:
    answered: list[int] = []
    futures = []
    # Small batches, so a second one waits for the connection while the first (holding
    # the bad unit) is retried unit by unit.
    async with PersistenceActor.open(tmp_path / "ublox.db", max_batch=16) as actor:
        for i in range(200):
            unit = [tx("bad", 5), tx("bad", -1)] if i == 50 else [tx(f"u{i}", 1)]
            future = await actor.enqueue(unit)
            future.add_done_callback(lambda _, i=i: answered.append(i))
            futures.append(future)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(outcomes[50], UnitRejected)
    assert answered == list(range(200))
    assert count(tmp_path / "ublox.db") == 199
