"""The path of an acknowledgement through the persistence actor: what the writer's thread
does per batch, and who runs first once a batch is answered (store/sqlite/writer.py,
ARCHITECTURE.md "The writer's thread and the event loop on two cores")."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from ublox_sim.store.sqlite import writer
from ublox_sim.store.sqlite.writer import PersistenceActor, Statement, run

TX = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, timestamp)"
    " VALUES ('investment', ?, ?, ?, 'USD-OBBBA', 't')"
)


def ledger(i: int) -> Statement:
    return Statement(TX, (f"p{i % 97}", f"q{i % 13}", i))


@pytest.mark.anyio
async def test_the_statement_journal_stays_in_memory_and_a_refused_row_still_undoes_its_statement(
    tmp_path: Path,
) -> None:
    """A batch's multi-row INSERT keeps the pages it changes in a statement journal; on
    disk that was a temporary file written and deleted at every COMMIT (a third of the
    thread's time). In memory it must still undo a statement that fails halfway: the
    unit whose row breaks a CHECK is refused alone, the rows before it in the same
    INSERT are gone, and the other units of its batch commit."""
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db) as actor:
        assert await actor.call(lambda conn: run(conn, "PRAGMA temp_store")) == [(2,)]
        good = [[ledger(i) for i in range(k * 50, k * 50 + 50)] for k in range(3)]
        bad = [ledger(1000 + i) for i in range(40)] + [
            Statement(TX, ("p", "q", -1))  # amount >= 0 is a CHECK: refused
        ]
        async with anyio.create_task_group() as tg:
            outcomes: list[object] = []

            async def send() -> None:
                outcomes.extend(await actor.submit_many([good[0], bad, good[1], good[2]]))

            tg.start_soon(send)
    assert [isinstance(o, BaseException) for o in outcomes] == [False, True, False, False]
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT COUNT(*), MIN(amount), MAX(amount) FROM transactions"
        ).fetchone() == (
            150,
            0,
            149,
        )


@pytest.mark.anyio
async def test_the_next_batch_reaches_the_thread_before_the_producers_of_the_one_before_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches in flight: once the first has committed, the second (waiting for the
    connection) is sent to the thread before the first's producers run again, so the
    thread works while the loop acknowledges; and the order of commits stays the order
    of the queue."""
    events: list[str] = []
    first_on_thread = threading.Event()
    release_first = threading.Event()
    sent = writer._run_batch
    on_thread = writer._batch_on_thread

    async def run_batch(conn: object, units: list[list[Statement]], held: object) -> object:
        events.append(f"sent {len(units)}")
        return await sent(conn, units, held)  # type: ignore[arg-type]

    def batch_on_thread(db: sqlite3.Connection, steps: list[object], held: object) -> object:
        if not first_on_thread.is_set():
            first_on_thread.set()
            release_first.wait()
        return on_thread(db, steps, held)  # type: ignore[arg-type]

    monkeypatch.setattr(writer, "_run_batch", run_batch)
    monkeypatch.setattr(writer, "_batch_on_thread", batch_on_thread)
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db) as actor:

        async def first() -> None:
            await actor.submit([ledger(1)])
            events.append("first acknowledged")

        async def second() -> None:
            await actor.submit_many([[ledger(2)], [ledger(3)]])
            events.append("second acknowledged")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(first_on_thread.wait)
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()  # the second batch waits for the connection
            assert events == ["sent 1"]
            release_first.set()
    assert events == ["sent 1", "sent 2", "first acknowledged", "second acknowledged"]
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT amount FROM transactions ORDER BY tx_id")] == [
            1,
            2,
            3,
        ]
