"""register_players: large units, but every refusal is its own player's."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from ublox_sim.core import limits
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import (
    AlreadyExists,
    InvalidAmount,
    InvalidId,
    UbloxError,
    UnitRejected,
)
from ublox_sim.core.views import PlayerInfo
from ublox_sim.engine import Engine
from ublox_sim.store.sqlite.writer import Statement
from ublox_sim.store.verify import verify_store


def ledger(home: Path) -> list[tuple[str, str, int]]:
    with closing(sqlite3.connect(home / "ublox.db")) as db:
        rows = db.execute("SELECT tx_type, to_player, amount FROM transactions ORDER BY tx_id")
        return [(str(t), str(p), int(a)) for t, p, a in rows]


@pytest.mark.asyncio
async def test_each_refusal_is_its_players_and_the_rest_register_in_order(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await engine.register_player("taken", usd_obbba=Decimal(1))
        results = await engine.register_players(
            [
                ("a", Decimal("10.50"), 1.0, None),
                ("a", Decimal(5), 1.0, None),  # twice in one call
                (" padded", Decimal(5), 1.0, None),
                ("taken", Decimal(5), 1.0, None),
                ("b", Decimal("-1"), 1.0, None),
                ("c", Decimal(0), 2.0, 1.5),
            ]
        )
        kinds = [type(r) for r in results]
        assert kinds == [
            PlayerInfo,
            AlreadyExists,
            InvalidId,
            AlreadyExists,
            InvalidAmount,
            PlayerInfo,
        ]
        assert (await engine.get_player("a")).usd_obbba_balance == Decimal("10.50")
        assert (await engine.get_player("c")).tau_k == 2.0
    # A starting balance is a deposit; none for zero; in the order given.
    assert ledger(tmp_path) == [("deposit", "taken", 100), ("deposit", "a", 1050)]
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_unit_the_database_rejects_is_retried_player_by_player(tmp_path: Path) -> None:
    """A row the database refuses (a trigger put there behind the engine's back: the
    store answers existence, so a taken id is refused before any unit) makes it reject
    the whole unit; only its player is refused, every other one registers."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await engine.store.db.submit(
            [
                Statement(
                    "CREATE TEMP TRIGGER no_ghost BEFORE INSERT ON players"
                    " WHEN NEW.player_id = 'ghost' BEGIN SELECT RAISE(ABORT, 'no ghost'); END"
                )
            ]
        )
        many = [(f"p{i:05d}", Decimal(1), 1.0, None) for i in range(limits.REGISTER_UNIT + 3)]
        many.insert(7, ("ghost", Decimal(2), 1.0, None))
        results = await engine.register_players(many)
        refused = [(i, r) for i, r in enumerate(results) if isinstance(r, UbloxError)]
        assert [i for i, _ in refused] == [7]
        assert isinstance(refused[0][1], UnitRejected)
        assert len(await engine.player_ids()) == len(many) - 1  # every "p...", not the ghost
        assert (await engine.get_player("p00000")).usd_obbba_balance == Decimal(1)
    rows = ledger(tmp_path)
    assert [p for _, p, _ in rows] == [pid for pid, *_ in many if pid != "ghost"]
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_one_by_one_and_in_bulk_give_the_same_players_whatever_the_batch(
    tmp_path: Path,
) -> None:
    ids = [f"p{n}" for n in range(5)]
    async with Engine.open(tmp_path / "one", seed=9, clock=SimClock()) as engine:
        one = [await engine.register_player(p, usd_obbba=Decimal(1)) for p in ids]
    async with Engine.open(tmp_path / "bulk", seed=9, clock=SimClock()) as engine:
        bulk = await engine.register_players([(p, Decimal(1), 1.0, None) for p in reversed(ids)])
    async with Engine.open(tmp_path / "other", seed=10, clock=SimClock()) as engine:
        other = await engine.register_player("p0", usd_obbba=Decimal(1))

    def drawn(info: PlayerInfo | UbloxError) -> tuple[str, float, float, float, float]:
        assert isinstance(info, PlayerInfo)
        return (info.player_id, info.position_x, info.position_y, info.phase, info.resonance_freq)

    assert [drawn(i) for i in one] == [drawn(i) for i in reversed(bulk)]
    assert drawn(other) != drawn(one[0])


@pytest.mark.asyncio
async def test_a_bulk_registration_logs_and_publishes_every_player_in_order(
    tmp_path: Path,
) -> None:
    count = 1000  # more than one multi-row log insert
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        await engine.register_player("first")
        async with engine.events(buffer=2 * count) as events:
            results = await engine.register_players(
                [(f"p{n}", Decimal(n % 3), 1.0, None) for n in range(count)]
            )
            assert all(isinstance(r, PlayerInfo) for r in results)
            heard = [events.receive_nowait() for _ in range(count)]
        assert engine.last_event_seq == heard[-1].seq
    assert [(e.kind, getattr(e, "player_id", None)) for e in heard] == [
        ("player_registered", f"p{n}") for n in range(count)
    ]
    with closing(sqlite3.connect(tmp_path / "ublox.db")) as db:
        logged = db.execute(
            "SELECT seq, json_extract(payload, '$.player_id') FROM event_log"
            " WHERE kind = 'player_registered' ORDER BY seq"
        ).fetchall()
    assert logged[1:] == [(e.seq, f"p{n}") for n, e in enumerate(heard)]
    assert logged[0][1] == "first"
    assert ledger(tmp_path) == [("deposit", f"p{n}", (n % 3) * 100) for n in range(count) if n % 3]
    assert verify_store(tmp_path) == []


def test_the_bulk_paths_draws_of_a_kind_are_the_draws_of_that_kind() -> None:
    from ublox_sim.core.draws import Draws

    draws = Draws(2**70 + 3)
    for kind in ("player", "pto", ""):
        of_kind = draws.of_kind(kind)
        for ident in ("p1", "Zoë", "x" * 64, ""):
            assert of_kind(ident) == draws.uniforms(kind, ident)
    assert draws.of_kind("player")("p1") != draws.of_kind("pto")("p1")
