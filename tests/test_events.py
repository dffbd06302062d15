"""The event log: every domain event is numbered in commit order and stored with its
operation; what was published live is exactly what the log replays; retention is by
sequence number; only public fields leave through ``public``."""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ublox_sim.core import events as ev
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InsufficientFunds, InvalidState
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home
from ublox_sim.store.sqlite.schema import EVENT_RETENTION
from ublox_sim.store.sqlite.writer import prepare_database

PARAMS = WorldParams(size=16, steps_per_hour=4)
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def rows(home: Path, query: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        return conn.execute(query).fetchall()


async def logged(engine: Engine) -> list[dict[str, Any]]:
    return [ev.from_log(seq, payload) for seq, _, payload in await engine.store.events_after(0)]


async def story(engine: Engine) -> None:
    """Every kind of event once or more, refusals in between."""
    await engine.register_player("ada", usd_obbba=Decimal("5000"), tau_k=8.0)
    await engine.register_player("bo", usd_obbba=Decimal("120.50"))
    await engine.register_player("cy")
    await engine.deposit("cy", Decimal("10"))
    await engine.transfer("ada", "cy", Decimal("2.25"))
    await engine.launch_pto(
        pto_id="pto_a",
        game_name="A",
        creator_id="ada",
        atu_required=10,
        pts_offered=8,
        price_per_pts=5,
        funding_deadline=timedelta(days=3),
    )
    await engine.launch_pto(
        pto_id="pto_b",
        game_name="B",
        creator_id="ada",
        atu_required=10,
        pts_offered=100,
        price_per_pts=5,
        funding_deadline=timedelta(hours=2),
    )
    with pytest.raises(InsufficientFunds):
        await engine.buy_pts("cy", "pto_b", 50)
    await engine.buy_pts("bo", "pto_a", 8)
    with pytest.raises(InvalidState):  # sold out
        await engine.buy_pts("ada", "pto_a", 1)
    await engine.buy_pts("cy", "pto_b", 2)
    await engine.play_many("pto_a", [("bo", 2.0)])
    await engine.spend_atu("pto_a", 4)
    await engine.spend_atu("pto_a", 6)
    await engine.advance(3)  # pto_b misses its deadline: refunds


async def collect(subscription: ev.Subscription, until_seq: int) -> list[ev.Event]:
    received: list[ev.Event] = []
    with anyio.fail_after(120):
        while not received or received[-1].seq < until_seq:
            received.append(await subscription.receive())
    return received


@pytest.mark.anyio
async def test_every_event_is_numbered_in_commit_order_and_replays_as_published(
    tmp_path: Path,
) -> None:
    async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as engine:
        async with engine.events() as live:
            await story(engine)
            published = await collect(live, engine.last_event_seq)
        replayed = await logged(engine)

    kinds = Counter(e.kind for e in published)
    assert set(kinds) >= set(ev.KINDS) - {"phase_lock"}  # locks depend on the physics
    # Numbers 1, 2, 3, ... with no gap: refused operations took none.
    assert [e.seq for e in published] == list(range(1, len(published) + 1))
    assert [e.to_dict() for e in published] == replayed
    # The session's event names the session row it came with.
    (session,) = [e for e in published if isinstance(e, ev.SessionPlayed)]
    assert rows(tmp_path, "SELECT session_id FROM play_sessions") == [(session.session_id,)]
    assert session.session_id > 0


@pytest.mark.anyio
async def test_each_event_is_stored_with_its_operation(tmp_path: Path) -> None:
    """One event row per fact, in the same transaction: the log agrees with the tables."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as engine:
        await story(engine)
    count = Counter(kind for (kind,) in rows(tmp_path, "SELECT kind FROM event_log"))
    tx = Counter(t for (t,) in rows(tmp_path, "SELECT tx_type FROM transactions"))
    assert count["player_registered"] == len(rows(tmp_path, "SELECT 1 FROM players"))
    assert count["pto_launched"] == len(rows(tmp_path, "SELECT 1 FROM ptos"))
    assert (
        count["shares_bought"]
        == tx["investment"]
        == len(rows(tmp_path, "SELECT 1 FROM pts_tokens"))
    )
    assert count["session_played"] == len(rows(tmp_path, "SELECT 1 FROM play_sessions"))
    assert count["transferred"] == tx["transfer"]
    assert count["pto_completed"] == tx["pto_completion"]
    assert count["pto_failed"] == 1 and tx["refund"] == 1
    # Deposits: the explicit one, plus the starting balances of ada and bo.
    assert count["deposited"] + 2 == tx["deposit"]


@pytest.mark.anyio
async def test_sequence_numbers_continue_after_a_restart(tmp_path: Path) -> None:
    async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as engine:
        await engine.register_player("ada", usd_obbba=1)
        await engine.deposit("ada", 1)
        assert engine.last_event_seq == 2
    async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as engine:
        assert engine.last_event_seq == 2
        async with engine.events() as live:
            await engine.deposit("ada", 1)
            (event,) = await collect(live, 3)
        assert event.seq == 3
        assert [e["seq"] for e in await logged(engine)] == [1, 2, 3]


def test_retention_keeps_the_last_events_by_sequence_number(tmp_path: Path) -> None:
    path = tmp_path / "ublox.db"
    prepare_database(path)
    extra = 25
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO event_log (kind, at, payload) VALUES ('deposited', 'now', '{}')",
            [()] * (EVENT_RETENTION + extra),
        )
        conn.execute("COMMIT")
        low, high, n = conn.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM event_log").fetchone()
    assert (low, high, n) == (extra + 1, EVENT_RETENTION + extra, EVENT_RETENTION)


@pytest.mark.anyio
async def test_a_slow_subscriber_is_told_how_many_it_lost_and_where_to_resume(
    tmp_path: Path,
) -> None:
    async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as engine:
        await engine.register_player("ada")  # seq 1
        async with engine.events(buffer=3) as slow:
            for _ in range(10):
                await engine.deposit("ada", 1)  # seqs 2..11: 3 fit, 7 lost
            first = [await slow.receive() for _ in range(3)]
            await engine.deposit("ada", 1)  # seq 12
            notice, after = await slow.receive(), await slow.receive()
            assert slow.peak <= slow.bound == 3
    assert [e.seq for e in first] == [2, 3, 4]
    assert isinstance(notice, ev.EventsDropped)
    assert (notice.count, notice.since) == (7, 4)
    assert after.seq == 12


def test_public_events_never_carry_a_players_usd_obbba_amounts() -> None:
    at = "2026-01-01 00:00:00+00:00"
    private = [
        ev.PlayerRegistered(at=at, seq=1, player_id="ada", usd_obbba=Decimal("5000")),
        ev.Deposited(at=at, seq=2, player_id="ada", amount=Decimal("7")),
        ev.Transferred(at=at, seq=3, from_id="ada", to_id="bo", amount=Decimal("1")),
    ]
    for event in private:
        shown = event.public_dict()
        assert not {"usd_obbba", "amount"} & set(shown), shown
        assert shown["seq"] == event.seq and shown["kind"] == event.kind
        assert ev.public(event.to_dict()) == shown
    session = ev.SessionPlayed(
        at=at,
        seq=4,
        pto_id="w",
        player_id="ada",
        session_id=1,
        hours=1.0,
        quality=0.5,
        xUSD_earned=Decimal("50"),
        phase_locks=1,
    )
    assert session.public_dict() == session.to_dict()  # xUSD and locks are public


@pytest.mark.anyio
async def test_a_scenario_run_logs_the_same_events_every_time(tmp_path: Path) -> None:
    """Same scenario and seed: the same event log, byte for byte (and the export, see test_run)."""
    logs = []
    for name in ("one", "two"):
        home = Home.resolve(tmp_path / name)
        loaded = load_scenario(SCENARIOS / "harmonic_caverns.yaml")
        await run_scenario(loaded, home)
        logs.append(rows(home.root, "SELECT seq, kind, at, payload FROM event_log ORDER BY seq"))
    assert logs[0] == logs[1]
    assert len(logs[0]) > 10


@pytest.mark.anyio
async def test_the_servers_stats_say_when_its_scenario_has_finished(tmp_path: Path) -> None:
    """The dashboard shows "finished" from this field, not "live" forever."""
    import httpx

    from ublox_sim.server import create_app

    app = create_app(
        tmp_path, scenario=SCENARIOS / "harmonic_caverns.yaml", ticks_per_second=float("inf")
    )
    seen: list[dict[str, Any]] = []
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for _ in range(100_000):  # a bound, not a time limit: the scenario is 48 ticks
                run = (await client.get("/api/stats")).json()["run"]
                seen.append(run)
                if run["finished"]:
                    break
                await anyio.sleep(0.01)
    assert seen[-1] == {"name": "harmonic_caverns", "tick": 48, "total_ticks": 48, "finished": True}
    assert not seen[0]["finished"]
