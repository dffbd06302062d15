"""A bulk registration on PostgreSQL numbers its events as its log rows are numbered.

Its log rows go in multi-row INSERTs; PostgreSQL returns one ``seq`` per row, and taking
the first as the statement's last numbered every published event too low (an exclusive
store publishes from its units, so its subscribers heard the wrong numbers)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.views import PlayerInfo
from ublox_sim.engine import Engine


@pytest.mark.asyncio
@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
async def test_a_bulk_registration_publishes_the_seqs_its_log_rows_hold(
    pg_url: str, shared: bool
) -> None:
    import asyncpg  # type: ignore[import-untyped]

    count = 300  # several log rows in one multi-row statement
    async with Engine.open(store=pg_url, seed=1, clock=SimClock(), shared=shared) as engine:
        await engine.register_player("first")
        async with engine.events(buffer=2 * count) as events:
            results = await engine.register_players(
                [(f"p{n}", Decimal(n % 3), 1.0, None) for n in range(count)]
            )
            assert all(isinstance(r, PlayerInfo) for r in results)
            heard = []  # a shared store publishes through its log, so "first" may come late
            while not heard or getattr(heard[-1], "player_id", None) != f"p{count - 1}":
                event = await events.receive()
                if getattr(event, "player_id", None) != "first":
                    heard.append(event)
        assert engine.last_event_seq == heard[-1].seq
    conn = await asyncpg.connect(pg_url)
    try:
        logged = await conn.fetch(
            "SELECT seq, payload::json->>'player_id' AS player FROM event_log"
            " WHERE kind = 'player_registered' ORDER BY seq"
        )
    finally:
        await conn.close()
    assert [(row["seq"], row["player"]) for row in logged[1:]] == [
        (e.seq, getattr(e, "player_id", None)) for e in heard
    ]
    assert [getattr(e, "player_id", None) for e in heard] == [f"p{n}" for n in range(count)]
