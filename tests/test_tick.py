"""``Engine.tick``: a tick's sessions are played during its own lattice steps (the rule in
ARCHITECTURE.md, "Ticks"), in one unit per world shard, and every actor learns them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from engine_helpers import launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidInput, InvalidState, UbloxError, UnknownPlayer
from ublox_sim.core.events import SessionPlayed
from ublox_sim.core.views import SessionResult
from ublox_sim.core.world import WorldParams, cell_of, play_steps, step_world
from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store

pytestmark = pytest.mark.anyio

TINY = WorldParams(size=8)


async def _setup(engine: Engine) -> None:
    await engine.register_player("creator")
    for name in ("alice", "bob"):
        await engine.register_player(name, usd_obbba=100, tau_k=2.0)
    for pto_id in ("g1", "g2", "g3"):  # g3 stays funding: not playable
        await launch(engine, pto_id, offered=8, price=1)
    for pto_id in ("g1", "g2"):
        await engine.buy_pts("alice", pto_id, 4)
        await engine.buy_pts("bob", pto_id, 4)


def _open(home: Path, **kwargs: Any) -> Any:
    return Engine.open(home, seed=7, world=TINY, clock=SimClock(), **kwargs)


async def test_worlds_take_the_ticks_steps_with_the_sessions_coupled_during_them(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with _open(tmp_path) as engine:
            await _setup(engine)
            worlds = {p: await engine.world(p) for p in ("g1", "g2", "g3")}
            alice = await engine.get_player("alice")
            bob = await engine.get_player("bob")
            units = engine.store.units_committed
            # Alice asks 3 hours in a 1-hour tick (12 steps > 4): coupled for 4, charged 3.
            plays = [("g1", "alice", 3.0), ("g1", "bob", 0.5), ("g3", "bob", 1.0)]
            results, failed = await engine.tick(1.0, plays)
            assert engine.store.units_committed == units + 1  # one shard, one unit
            assert failed == []
            assert isinstance(results[2], InvalidState)  # g3 is funding
            played = [r for r in results[:2] if isinstance(r, SessionResult)]
            assert len(played) == 2
            # g1 stepped 4 times with both players coupled (alice 4 steps, bob 2).
            cells = [cell_of(p.position_x, p.position_y, TINY.size) for p in (alice, bob)]
            ref = play_steps(
                worlds["g1"]["theta"],
                worlds["g1"]["omega"],
                TINY,
                cells_y=np.array([c[0] for c in cells]),
                cells_x=np.array([c[1] for c in cells]),
                phase=np.array([alice.phase, bob.phase]),
                freq=np.array([alice.resonance_freq, bob.resonance_freq]),
                tau_k=np.array([alice.tau_k, bob.tau_k]),
                steps=np.array([4, 2]),
                world_steps=4,
            )
            assert (await engine.world("g1"))["theta"].tobytes() == ref.theta.tobytes()
            assert [r.quality for r in played] == [float(q) for q in ref.quality]
            # Worlds nobody played (g2) or that cannot be played (g3) take the bare steps.
            for pto_id in ("g2", "g3"):
                bare = step_world(worlds[pto_id]["theta"], worlds[pto_id]["omega"], TINY, 4)
                assert (await engine.world(pto_id))["theta"].tobytes() == bare.tobytes()
            # Active actors learnt the outcome; the store agrees with them.
            after = await engine.get_player("alice")
            assert after.total_play_time == 3.0 and after.phase == float(ref.phase[0])
            assert after.xUSD_balance == played[0].xUSD_earned
            tokens = await engine.tokens_of("alice", "g1")
            assert sum(t.hours_played for t in tokens) == 3.0
            pto = await engine.get_pto("g1")
            assert pto.xUSD_pool == sum(r.xUSD_earned for r in played)
            await engine.passivate_all()
            assert await engine.get_player("alice") == after
    assert verify_store(tmp_path) == []


async def test_two_sessions_of_one_player_in_a_tick_chain_tau_k_and_refusals_are_per_session(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(60):
        async with _open(tmp_path) as engine:
            await _setup(engine)
            tau = (await engine.get_player("alice")).tau_k
            async with engine.events() as stream:
                results, _ = await engine.tick(
                    1.0,
                    [
                        ("g1", "alice", 1.0),
                        ("g2", "alice", 1.0),
                        ("g1", "ghost", 1.0),
                        ("g2", "bob", -1.0),
                        ("g2", "bob", 9.0),  # more than the 4 hours bob holds
                    ],
                )
                await engine.sync()
                sessions = []
                with anyio.move_on_after(5):
                    async for event in stream:
                        if isinstance(event, SessionPlayed):
                            sessions.append(event)
                        if len(sessions) == 2:
                            break
            first, second = results[0], results[1]
            assert isinstance(first, SessionResult) and isinstance(second, SessionResult)
            assert first.tau_k_after == 0.9 * tau + 0.1 * (10.0 * first.quality)
            assert second.tau_k_after == 0.9 * first.tau_k_after + 0.1 * (10.0 * second.quality)
            assert (await engine.get_player("alice")).tau_k == second.tau_k_after
            assert isinstance(results[2], UnknownPlayer)
            assert isinstance(results[3], InvalidInput)
            assert isinstance(results[4], InvalidState)
            assert [s.session_id for s in sessions] == [first.session_id, second.session_id]
            assert first.session_id + 1 == second.session_id
    assert verify_store(tmp_path) == []


async def test_a_tick_gives_the_same_bytes_with_one_active_actor(tmp_path: Path) -> None:
    """Which actors are active never changes a result (activation and passivation mid-tick)."""

    async def run(home: Path, cap: int) -> list[object]:
        async with _open(home, max_active=cap) as engine:
            await _setup(engine)
            out: list[object] = []
            for _ in range(3):
                results, _ = await engine.tick(
                    1.0, [("g1", "alice", 1.0), ("g1", "bob", 0.5), ("g2", "bob", 0.25)]
                )
                out += [
                    r if isinstance(r, UbloxError) else (r.quality, r.tau_k_after) for r in results
                ]
            out.append((await engine.world("g2"))["theta"].tobytes())
            out.append(await engine.get_player("bob"))
            return out

    with anyio.fail_after(120):
        assert await run(tmp_path / "a", 100) == await run(tmp_path / "b", 1)


async def test_a_ticks_unit_of_many_rows_writes_what_event_by_event_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite writes a tick's unit as one statement per SQL text (rows._tick_sessions):
    the same rows, ids and log as writing it event by event."""
    from ublox_sim.store.sqlite import rows

    async def run(home: Path) -> tuple[dict[str, Any], list[object]]:
        async with _open(home) as engine:
            await _setup(engine)
            seen: list[object] = []
            async with engine.events() as stream:
                for _ in range(2):
                    await engine.tick(
                        1.0, [("g1", "alice", 1.0), ("g1", "bob", 0.5), ("g2", "bob", 0.25)]
                    )
                await engine.sync()
                with anyio.move_on_after(5):
                    async for event in stream:
                        seen.append(event)
                        if sum(isinstance(e, SessionPlayed) for e in seen) == 6:
                            break
            return await engine.store.export_data(), seen

    written = rows._tick_sessions
    calls: list[int] = []

    def counted(*args: Any) -> list[Any]:
        calls.append(1)
        return written(*args)

    with anyio.fail_after(120):
        monkeypatch.setattr(rows, "_tick_sessions", counted)
        bulk = await run(tmp_path / "bulk")
        assert len(calls) == 2  # one unit per tick, written as many rows
        monkeypatch.setattr(rows, "_is_tick", lambda events: False)
        single = await run(tmp_path / "single")
    assert bulk == single
    assert [e.session_id for e in bulk[1] if isinstance(e, SessionPlayed)] == list(range(1, 7))
