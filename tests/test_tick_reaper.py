"""The idle reaper and a tick (review 5): a PTO that allots in a tick is held until the
tick is over (for ``tick_ahead``: until its units land), so work beside the tick's physics
(``meanwhile``) that asks that PTO is not left waiting for a passivation that waits for
the tick (it hung for ever); once the tick is over the PTO is reaped as usual."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from engine_helpers import launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.views import SessionResult
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine

pytestmark = pytest.mark.anyio

IDLE = 0.001  # seconds: every actor is idle a moment after its last use


async def _reap_when_idle(engine: Engine) -> int:
    """Let the loop's clock pass the idle horizon of every actor used so far, then reap
    the PTOs as the background reaper would at that moment (a bound on the loop's clock,
    not a wait for background work)."""
    await anyio.sleep(3 * IDLE)  # (the loop's clock: the reaper's, never early by more)
    return engine._ptos.reap_idle()


@pytest.mark.parametrize("ahead", [False, True], ids=["tick", "tick_ahead"])
async def test_a_pto_reaped_beside_its_tick_is_asked_without_deadlock(
    tmp_path: Path, ahead: bool
) -> None:
    with anyio.fail_after(30):
        async with Engine.open(
            tmp_path,
            seed=7,
            world=WorldParams(size=8),
            clock=SimClock(),
            idle_timeout=IDLE,
            checkpointed=ahead,
        ) as engine:
            await engine.register_player("creator")
            await engine.register_player("alice", usd_obbba=100, tau_k=2.0)
            await launch(engine, "g1", offered=4, price=1, atu=100)
            await engine.buy_pts("alice", "g1", 4)  # funded: in progress, playable
            reaped: list[int] = []
            spent: list[int] = []

            async def meanwhile() -> None:
                reaped.append(await _reap_when_idle(engine))
                (info,) = await engine.spend_atu_many([("g1", 1)])
                assert not isinstance(info, Exception), info
                spent.append(info.atu_spent)

            plays = [("g1", "alice", 1.0)]
            if ahead:
                (locks,) = await engine.tick_ahead(1.0, plays, meanwhile=meanwhile)
                assert isinstance(locks, int), locks
                await engine.settle_ticks()
            else:
                (result,), _ = await engine.tick(1.0, plays, meanwhile=meanwhile)
                assert isinstance(result, SessionResult), result
            assert reaped == [0]  # held by its tick: not idle
            assert spent == [1]
            # The tick is over: the PTO is not held any more, and idle it is reaped.
            assert await _reap_when_idle(engine) == 1
            await engine._ptos.wait_passivations()
            assert engine._ptos.active("g1") is None
            assert (await engine.get_pto("g1")).atu_spent == 1
