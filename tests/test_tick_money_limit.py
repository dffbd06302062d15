"""A scenario's tick refuses a session whose xUSD could take its player past the money
limit, as ``Engine.play`` does, before the worlds step: the refused session composes
nothing and moves no world, the others of the tick play as usual."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_helpers import launch

from ublox_sim import BalanceLimit, Engine, SimClock
from ublox_sim.core.limits import MAX_MONEY
from ublox_sim.store.sync import UbloxLocalStorage

pytestmark = pytest.mark.anyio


async def _two_holders(home: Path) -> None:
    async with Engine.open(home, clock=SimClock(), seed=7) as engine:
        await engine.register_player("maker", usd_obbba=100)
        await engine.register_player("fan", usd_obbba=100)
        await launch(engine, "g", creator="maker", offered=10, price=1, atu=0, amplification=10**6)
        await engine.buy_pts("maker", "g", 5)
        await engine.buy_pts("fan", "g", 5)


async def test_a_tick_refuses_a_session_that_could_pass_the_limit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    await _two_holders(home)
    with UbloxLocalStorage(store=home) as storage:  # maker's xUSD a little under the limit
        player = storage.load_player("maker")
        assert player is not None
        storage.save_player({**player, "xUSD_balance": float(MAX_MONEY) - 1})
    async with Engine.open(home, clock=SimClock(), seed=7) as engine:
        results, _ = await engine.tick(1, [("g", "maker", 1), ("g", "fan", 1)])
        assert isinstance(results[0], BalanceLimit) and "xUSD" in str(results[0])
        assert not isinstance(results[1], Exception)
        maker = await engine.get_player("maker")
        assert maker.xUSD_balance == MAX_MONEY - 1 and maker.total_play_time == 0
        assert (await engine.stats())["play_sessions"]["count"] == 1


async def test_the_refused_session_moves_no_world(tmp_path: Path) -> None:
    """The world after a tick with the refused session equals the world after the same
    tick without it: the refusal comes before the physics."""
    worlds = []
    for with_refused in (True, False):
        home = tmp_path / f"home-{with_refused}"
        await _two_holders(home)
        with UbloxLocalStorage(store=home) as storage:
            player = storage.load_player("maker")
            assert player is not None
            storage.save_player({**player, "xUSD_balance": float(MAX_MONEY)})
        plays = [("g", "maker", 1.0), ("g", "fan", 1.0)] if with_refused else [("g", "fan", 1.0)]
        async with Engine.open(home, clock=SimClock(), seed=7) as engine:
            await engine.tick(1, plays)
            pto = await engine.get_pto("g")
            assert pto.world_cdt_id is not None
            world = await engine.store.load_world(pto.world_cdt_id)
            assert world is not None
            worlds.append(np.asarray(world["theta"]))
    assert worlds[0].tobytes() == worlds[1].tobytes()
