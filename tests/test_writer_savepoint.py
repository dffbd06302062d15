"""A refused unit in a group commit is rolled back alone, to its own SAVEPOINT, inside the
batch's one transaction: the other units still share one COMMIT (issue 15, item 3)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import aiosqlite
import pytest

from ublox_sim.core.errors import UnitRejected
from ublox_sim.store.sqlite.writer import PersistenceActor, Statement, Unit

TX = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, timestamp)"
    " VALUES ('deposit', NULL, ?, ?, 'USD-OBBBA', '2025-12-12 16:56:32+00:00')"
)


def ledger(db: Path) -> list[tuple[int, str, int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT tx_id, to_player, amount FROM transactions ORDER BY tx_id"
        ).fetchall()


async def trace_statements(actor: PersistenceActor) -> list[str]:
    """Every statement the writer's own connection runs from now on, as SQLite sees it."""
    seen: list[str] = []

    async def install(conn: aiosqlite.Connection) -> None:
        await conn.set_trace_callback(lambda sql: seen.append(sql.strip().upper()))

    await actor.call(install)
    return seen


def purchases(count: int, refused: set[int], seen: list[Sequence[int]]) -> list[Unit]:
    """One unit per purchase: a debit and a credit row, the credit's rowid wanted with a
    commit hook; a refused one breaks CHECK (amount >= 0) in its second row, so its first
    row must be undone with it."""
    return [
        [
            Statement(TX, (f"buyer{i}", 100 + i)),
            Statement(
                TX, (f"pto{i}", -1 if i in refused else i), want_rowid=True, on_commit=seen.append
            ),
        ]
        for i in range(count)
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("refused", [{37}, {0, 50, 99}, set(range(0, 100, 2))])
async def test_a_batch_with_refused_units_commits_the_others_in_one_transaction(
    tmp_path: Path, refused: set[int]
) -> None:
    db = tmp_path / "ublox.db"
    hooked: list[Sequence[int]] = []
    async with PersistenceActor.open(db) as actor:
        await actor.submit([Statement(TX, ("before", 1))])  # the table is not empty
        statements = await trace_statements(actor)
        commits = actor.commits
        outcomes = await actor.submit_many(purchases(100, refused, hooked))
        assert actor.commits - commits == 1
        assert actor.units_committed == 1 + 100 - len(refused)
    # One COMMIT for the whole batch (the failed first pass rolled back, the rerun with a
    # savepoint per unit committed), none per unit.
    assert statements.count("COMMIT") == 1
    assert statements.count("SAVEPOINT U") == 100
    assert statements.count("ROLLBACK TO U") == len(refused)
    kept = [i for i in range(100) if i not in refused]
    # The refused left nothing, not even their first row; the rest are exact, in log
    # order, numbered without a gap after the row before them.
    rows = ledger(db)
    expected = [("before", 1)]
    for i in kept:
        expected += [(f"buyer{i}", 100 + i), (f"pto{i}", i)]
    assert [(name, amount) for _, name, amount in rows] == expected
    assert [tx_id for tx_id, _, _ in rows] == list(range(1, len(expected) + 1))
    for i in refused:
        assert isinstance(outcomes[i], UnitRejected), outcomes[i]
        assert "CHECK constraint failed" in str(outcomes[i])
    # Each kept unit's credit rowid, and its hook called once, in commit order.
    credit_ids = [3 + 2 * n for n in range(len(kept))]
    assert [outcomes[i] for i in kept] == [[rowid] for rowid in credit_ids]
    assert hooked == [[rowid] for rowid in credit_ids]


@pytest.mark.anyio
async def test_the_next_batch_after_a_rerun_numbers_on_without_a_gap(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db) as actor:
        first = await actor.submit_many(
            [[Statement(TX, ("a", a), want_rowid=True)] for a in (1, -1, 2)]
        )
        later = await actor.submit([Statement(TX, ("b", 3), want_rowid=True)])
    assert first[0] == [1] and isinstance(first[1], UnitRejected) and first[2] == [2]
    assert later == [3]
    assert [row[1:] for row in ledger(db)] == [("a", 1), ("a", 2), ("b", 3)]


@pytest.mark.anyio
async def test_in_hold_mode_a_refused_unit_is_rolled_back_alone_inside_the_held_transaction(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, hold_commits=True) as actor:
        await actor.submit([Statement(TX, ("held", 1))])
        statements = await trace_statements(actor)
        outcomes = await actor.submit_many(
            [
                [Statement(TX, (f"u{i}", 10)), Statement(TX, (f"u{i}", -1 if i == 2 else i))]
                for i in range(5)
            ]
        )
        assert isinstance(outcomes[2], UnitRejected)
        assert [outcomes[i] for i in (0, 1, 3, 4)] == [[], [], [], []]
        assert "COMMIT" not in statements  # held: nothing durable before the checkpoint
        assert ledger(db) == []
        await actor.commit_held([Statement(TX, ("checkpoint", 1))])
    names = [name for _, name, _ in ledger(db)]
    assert names == ["held", "u0", "u0", "u1", "u1", "u3", "u3", "u4", "u4", "checkpoint"]
