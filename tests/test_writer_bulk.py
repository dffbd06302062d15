"""The writer's bulk paths: statements of many rows, multi-row INSERTs, submit_many, and a
bulk registration that writes exactly what one-by-one registration writes."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ublox_sim.core import events as ev
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import UnitRejected
from ublox_sim.engine import Engine
from ublox_sim.store.sqlite import rows
from ublox_sim.store.sqlite.writer import PersistenceActor, Statement, _multi_row

TX = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, timestamp)"
    " VALUES ('deposit', NULL, ?, ?, 'USD-OBBBA', '2025-12-12 16:56:32+00:00')"
)


def ledger(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM transactions ORDER BY tx_id").fetchall()


@pytest.mark.parametrize(
    "player_id",
    ["p1", "Zoë", 'a "quoted" one', "back\\slash", "tab\tless?", "日本語", "emoji 🎲", "x" * 64],
)
@pytest.mark.parametrize("usd", [Decimal(0), Decimal("0.01"), Decimal("1234.50"), Decimal(10**12)])
def test_the_registration_payload_template_is_byte_identical_to_the_events_payload(
    player_id: str, usd: Decimal
) -> None:
    event = ev.PlayerRegistered(at="2026-01-01 00:00:00+00:00", player_id=player_id, usd_obbba=usd)
    assert rows._TEMPLATE_FITS
    assert rows._registered_payload(event) == ev.payload(event)


@pytest.mark.parametrize(
    ("sql", "repeats"),
    [
        (TX, True),
        (rows._INSERT_PLAYER, True),
        ("INSERT INTO t (a, b) VALUES (?, 'it''s (not) a ? mark')", True),
        ("INSERT INTO t (a) VALUES (?1)", False),
        ("INSERT INTO t (a) VALUES (:a)", False),
        ("INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING", False),
        ("INSERT INTO t (a) SELECT ?", False),
        ("INSERT INTO t (a) VALUES (json_set(?, '$.x', 1))", False),
        ("UPDATE t SET a = ?", False),
    ],
)
def test_only_a_plain_one_row_insert_is_sent_as_multi_row_inserts(sql: str, repeats: bool) -> None:
    shape = _multi_row(sql)
    assert (shape is not None) == repeats
    if shape is not None:
        head, group, width = shape
        assert head + group == sql.rstrip() and width == group.count("?") - (
            1 if "? mark" in group else 0
        )


def test_a_statement_of_many_rows_is_refused_with_a_rowid_or_outside_dml() -> None:
    with pytest.raises(ValueError, match="rowid"):
        Statement("UPDATE transactions SET amount = ?", rows=[(1,)], want_rowid=True)
    with pytest.raises(ValueError, match="rowid"):
        Statement(TX, rows=[], want_rowid=True)
    with pytest.raises(ValueError, match="DML"):
        Statement.many("SELECT ?", [(1,)])


@pytest.mark.anyio
async def test_many_rows_land_in_order_numbered_consecutively_like_one_statement_each(
    tmp_path: Path,
) -> None:
    count = 1000  # several multi-row INSERTs, the last one short
    async with PersistenceActor.open(tmp_path / "many.db") as actor:
        await actor.submit([Statement.many(TX, [(f"p{i}", i + 1) for i in range(count)])])
        await actor.submit([Statement.many(TX, [])])  # nothing, and no error
    async with PersistenceActor.open(tmp_path / "one.db") as actor:
        for i in range(count):
            await actor.submit([Statement(TX, (f"p{i}", i + 1))])
    many, one = ledger(tmp_path / "many.db"), ledger(tmp_path / "one.db")
    assert len(many) == count and many == one
    assert [row[0] for row in many] == list(range(1, count + 1))


@pytest.mark.anyio
async def test_a_statement_of_many_rows_returns_its_last_rowid(tmp_path: Path) -> None:
    seen: list[Sequence[int]] = []
    async with PersistenceActor.open(tmp_path / "ublox.db") as actor:
        first = await actor.submit([Statement(TX, ("a", 1), want_rowid=True)])
        ids = await actor.submit(
            [
                Statement(TX, rows=[(f"p{i}", 1) for i in range(5000)], want_rowid=True),
                Statement(TX, rows=[("one", 1)], want_rowid=True, on_commit=seen.append),
            ]
        )
    assert first == [1] and ids == [5001, 5002] and seen == [[5001, 5002]]


@pytest.mark.anyio
async def test_a_bad_row_among_many_refuses_its_unit_alone(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    outcomes: dict[str, object] = {}

    async def submit(name: str, amounts: list[int]) -> None:
        try:
            unit = [Statement.many(TX, [(name, a) for a in amounts])]
            outcomes[name] = await actor.submit(unit)
        except UnitRejected as exc:
            outcomes[name] = exc

    async with PersistenceActor.open(db) as actor:
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "good", [1] * 300)
            tg.start_soon(submit, "bad", [1] * 299 + [-1])  # amount >= 0 fails the last row
            tg.start_soon(submit, "also_good", [2] * 300)
    assert isinstance(outcomes["bad"], UnitRejected)
    assert outcomes["good"] == [] and outcomes["also_good"] == []
    assert sorted({str(row[3]) for row in ledger(db)}) == ["also_good", "good"]
    assert len(ledger(db)) == 600


@pytest.mark.anyio
async def test_submit_many_answers_each_unit_on_its_own_in_order(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    units = [
        [Statement(TX, (f"u{i}", -1 if i == 3 else i), want_rowid=(i % 2 == 0))] for i in range(7)
    ]
    async with PersistenceActor.open(db, max_batch=4) as actor:  # spans two batches
        outcomes = await actor.submit_many(units)
        assert await actor.submit_many([]) == []
    assert isinstance(outcomes[3], UnitRejected)
    kept = [row[3] for row in ledger(db)]
    assert kept == [f"u{i}" for i in range(7) if i != 3]
    # Rowids for the units that asked, in commit order: u0 is row 1, u2 row 3, ...
    assert [outcomes[i] for i in (0, 2, 4, 6)] == [[1], [3], [4], [6]]
    assert [outcomes[i] for i in (1, 5)] == [[], []]


@pytest.mark.anyio
async def test_a_full_mailbox_admits_producers_in_turn_and_loses_none(tmp_path: Path) -> None:
    db = tmp_path / "ublox.db"
    async with PersistenceActor.open(db, mailbox_size=4, max_batch=2) as actor:
        async with anyio.create_task_group() as tg:
            for p in range(50):
                tg.start_soon(actor.submit, [Statement(TX, (f"p{p}", p))])
            tg.start_soon(actor.submit_many, [[Statement(TX, ("many", k))] for k in range(9)])
    assert len(ledger(db)) == 59


@pytest.mark.asyncio
async def test_a_bulk_registration_writes_and_publishes_what_one_by_one_does(
    tmp_path: Path,
) -> None:
    players = [("p0", Decimal(0)), ("Zoë", Decimal("12.34")), ('q"uote', Decimal(1000))]
    heard: dict[str, list[ev.Event]] = {}
    for how in ("one", "bulk"):
        async with Engine.open(tmp_path / how, seed=3, clock=SimClock()) as engine:
            async with engine.events(buffer=10) as events:
                if how == "one":
                    for pid, usd in players:
                        await engine.register_player(pid, usd_obbba=usd)
                else:
                    results = await engine.register_players(
                        [(p, usd, 1.0, None) for p, usd in players]
                    )
                    # Each result is the player as the store holds it.
                    assert results == [await engine.get_player(p) for p, _ in players]
                heard[how] = [events.receive_nowait() for _ in players]
    one, bulk = (tmp_path / "one" / "ublox.db", tmp_path / "bulk" / "ublox.db")
    with closing(sqlite3.connect(one)) as a, closing(sqlite3.connect(bulk)) as b:
        for query in (
            "SELECT * FROM players ORDER BY player_id",
            "SELECT * FROM transactions ORDER BY tx_id",
            "SELECT seq, kind, at, payload FROM event_log ORDER BY seq",
        ):
            assert a.execute(query).fetchall() == b.execute(query).fetchall(), query
    # The same events, numbered alike (seq), with their records.
    assert [dataclasses.astuple(e) for e in heard["one"]] == [
        dataclasses.astuple(e) for e in heard["bulk"]
    ]
    assert all(isinstance(e, ev.PlayerRegistered) and e.seq > 0 for e in heard["bulk"])


@pytest.mark.asyncio
async def test_the_bulk_player_builder_gives_the_same_player_or_error_as_one_by_one(
    tmp_path: Path,
) -> None:
    import numpy as np

    from ublox_sim.core.errors import UbloxError
    from ublox_sim.core.records import Player
    from ublox_sim.core.views import PlayerInfo
    from ublox_sim.engine import _BulkPlayers, _Chunk, _Claimed, _registered

    cases: list[tuple[object, object, object, object]] = [
        ("ok", Decimal(5), 1.0, None),
        ("int-tau", 5, 3, None),
        ("np", "7.25", np.float64(2.5), np.float64(1.5)),
        ("given-freq", 0, 99.5, 42.0),
        ("float-money", 0.5, 0.0, 100.0),
        ("", Decimal(1), 1.0, None),
        ("neg", Decimal(-1), 1.0, None),
        ("frac", Decimal("0.001"), 1.0, None),
        ("nan-tau", Decimal(1), float("nan"), None),
        ("big-tau", Decimal(1), 101.0, None),
        ("bool-tau", Decimal(1), True, None),
        ("bad-freq", Decimal(1), 1.0, -0.5),
        ("snan", Decimal("sNaN"), 1.0, None),
        ("list", [1], 1.0, None),
        (7, Decimal(1), 1.0, None),
        (" pad", Decimal(1), 1.0, None),
    ]
    async with Engine.open(tmp_path, seed=5, clock=SimClock()) as engine:
        now = engine._now()
        bulk = _BulkPlayers(engine, now)

        def outcome(make: Callable[..., Player], *args: object) -> object:
            try:
                return make(*args)
            except UbloxError as exc:
                return (type(exc), str(exc))

        def built(pid: str, usd: object, tau: float, freq: float | None) -> Player:
            """Checked, then built: the player; its event and result are what the
            one-by-one path makes of it."""
            chunk, claimed = _Chunk(), _Claimed()
            cents, checked_tau, checked_freq = bulk.check(pid, usd, tau, freq)  # type: ignore[arg-type]
            bulk.results.append(None)
            claimed.indexes.append(len(bulk.results) - 1)
            claimed.ids.append(pid)
            claimed.cents.append(cents)
            claimed.taus.append(checked_tau)
            claimed.freqs.append(checked_freq)
            bulk.build(claimed, 0, 1, chunk)
            (player,) = chunk.players
            assert chunk.events == [_registered(player)]
            assert bulk.answers(claimed)[-1] == PlayerInfo.of(player)
            return player

        for pid, usd, tau, freq in cases * 2:  # twice: the second time from the caches
            one = outcome(engine._new_player, pid, usd, tau, freq, None, None, now)
            fast = outcome(built, pid, usd, tau, freq)
            assert one == fast, (pid, usd, tau, freq)


@pytest.mark.anyio
async def test_a_writer_cancelled_mid_batch_answers_every_waiting_producer(
    tmp_path: Path,
) -> None:
    """No producer is left awaiting a batch's shared future when the writer stops."""
    from ublox_sim.core.errors import ActorBroken, ActorClosed

    outcomes: list[str] = []
    actor = PersistenceActor(tmp_path / "ublox.db")

    async def producer(i: int) -> None:
        try:
            await actor.submit([Statement(TX, (f"p{i}", 1))])
            outcomes.append("committed")
        except (ActorClosed, ActorBroken):
            outcomes.append("stopped")

    with anyio.fail_after(30):  # a hang guard, not a timing assertion
        async with anyio.create_task_group() as producers:
            async with anyio.create_task_group() as writer:
                await actor.start(writer)
                for i in range(300):
                    producers.start_soon(producer, i)
                await anyio.wait_all_tasks_blocked()  # every producer is waiting
                writer.cancel_scope.cancel()
    assert len(outcomes) == 300
    assert len(ledger(tmp_path / "ublox.db")) == outcomes.count("committed")


def test_the_fast_maker_takes_only_a_frozen_slotted_dataclass_and_makes_equal_values() -> None:
    from ublox_sim.core.records import Player
    from ublox_sim.core.views import PlayerInfo
    from ublox_sim.engine import _maker

    values = ("p", Decimal(1), Decimal(0), 1.0, 2.0, 0.5, 0.0, 3.0, 4.0, 0.0, 0.0, 0, 0.0, "t")
    made = _maker(PlayerInfo)(*values)  # a twin that takes PlayerInfo as its class
    assert made == PlayerInfo(*values) and type(made) is PlayerInfo
    assert hash(made) == hash(PlayerInfo(*values)) and repr(made) == repr(PlayerInfo(*values))
    assert dataclasses.replace(made, tau_k=2.0) == dataclasses.replace(
        PlayerInfo(*values), tau_k=2.0
    )
    event = _maker(ev.PlayerRegistered)("t", 3, "p", Decimal(1), None)  # slot by slot
    assert event == ev.PlayerRegistered(at="t", seq=3, player_id="p", usd_obbba=Decimal(1))
    assert type(event) is ev.PlayerRegistered
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.seq = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.tau_k = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):  # one value per field, no fewer and no more
        _maker(PlayerInfo)(*values[:-1])
    with pytest.raises(TypeError):
        _maker(PlayerInfo)(*values, "extra")
    with pytest.raises(TypeError, match="not a plain frozen slotted dataclass"):
        _maker(Player)  # mutable: its own __init__ is already cheap


@pytest.mark.parametrize("limit", [7, 40, None])
@pytest.mark.asyncio
async def test_bulk_registration_rows_are_one_by_ones_whatever_the_parameter_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """The multi-row INSERTs split where the SQLite's parameter limit says (7: one player
    a statement; 40: a few), and a record that does not start at zero takes every
    column bound: the same rows and events as one statement per player."""
    from ublox_sim.core.records import Player
    from ublox_sim.store.backend import Unit

    if limit is not None:
        monkeypatch.setattr(rows, "_variable_limit", lambda: limit)
    at = "2026-01-01 00:00:00+00:00"
    players = [
        Player(f"p{n}", 1.0 + n, 2.0, 0.5, 0.0, 1.0, 3.0, n * 100, 0, 0.0, 0.0, 0, 0.0, at)
        for n in range(13)
    ]
    worn = dataclasses.replace(players[0], player_id="worn", xUSD_balance=7, memory_depth=0.5)
    heard: dict[str, list[ev.Event]] = {}
    for how in ("one", "bulk", "worn-one", "worn-bulk"):
        chosen = players if how in ("one", "bulk") else [*players[1:4], worn]
        events = [
            ev.PlayerRegistered(at=at, player_id=p.player_id, usd_obbba=Decimal(1), record=p)
            for p in chosen
        ]
        async with Engine.open(tmp_path / how, seed=3, clock=SimClock()) as engine:
            async with engine.events(buffer=20) as stream:
                if how.endswith("one"):
                    for event in events:
                        await engine.store.commit(Unit((event,)))
                else:
                    await engine.store.commit(Unit(tuple(events)))
                heard[how] = [stream.receive_nowait() for _ in events]
    for one, bulk in (("one", "bulk"), ("worn-one", "worn-bulk")):
        a_db, b_db = tmp_path / one / "ublox.db", tmp_path / bulk / "ublox.db"
        with closing(sqlite3.connect(a_db)) as a, closing(sqlite3.connect(b_db)) as b:
            for query in (
                "SELECT * FROM players ORDER BY player_id",
                "SELECT * FROM transactions ORDER BY tx_id",
                "SELECT seq, kind, at, payload FROM event_log ORDER BY seq",
            ):
                assert a.execute(query).fetchall() == b.execute(query).fetchall(), query
        assert [dataclasses.astuple(e) for e in heard[one]] == [
            dataclasses.astuple(e) for e in heard[bulk]
        ]
    with closing(sqlite3.connect(tmp_path / "worn-bulk" / "ublox.db")) as db:
        assert db.execute(
            "SELECT xUSD_balance, memory_depth FROM players WHERE player_id = 'worn'"
        ).fetchall() == [(7, 0.5)]
