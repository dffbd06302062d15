"""A tick's purchases beside its physics (``Engine.tick(meanwhile=...)``, the runner's
investors): the sessions are played on the PTOs as they were when the tick began, so a
PTO the purchases fund is played from the next tick, however many actors may be active
(with few, ``meanwhile`` runs before the allotments instead of beside the physics)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from engine_helpers import launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidState
from ublox_sim.core.records import IN_PROGRESS
from ublox_sim.core.views import SessionResult
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine

pytestmark = pytest.mark.anyio


async def _run(home: Path, cap: int) -> list[object]:
    async with Engine.open(
        home, seed=7, world=WorldParams(size=8), clock=SimClock(), max_active=cap
    ) as engine:
        await engine.register_player("creator")
        for name in ("alice", "bob"):
            await engine.register_player(name, usd_obbba=100, tau_k=2.0)
        for pto_id in ("g1", "g2", "g3"):
            await launch(engine, pto_id, offered=8, price=1)
        await engine.buy_pts("alice", "g3", 4)  # g3 funding: half sold

        async def purchases() -> None:
            await engine.buy_pts("bob", "g3", 4)  # the last shares: g3 funded

        first, _ = await engine.tick(1.0, [("g3", "alice", 1.0)], meanwhile=purchases)
        assert isinstance(first[0], InvalidState), first
        assert "funding" in str(first[0])
        assert (await engine.get_pto("g3")).status == IN_PROGRESS
        second, _ = await engine.tick(1.0, [("g3", "alice", 1.0), ("g3", "bob", 0.5)])
        assert all(isinstance(r, SessionResult) for r in second), second
        return [str(first[0])] + [(r.quality, r.tau_k_after) for r in second]  # type: ignore[union-attr]


async def test_a_pto_funded_beside_the_physics_is_played_from_the_next_tick(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(120):
        assert await _run(tmp_path / "a", 100) == await _run(tmp_path / "b", 1)
