"""What the tests of several processes on one PostgreSQL database share: the environment
of their child processes and a PTO launched in one line."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from ublox_sim.engine import Engine
from ublox_sim.store.postgres.backend import CLUSTER_ENV

ROOT = Path(__file__).parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """A child process's environment: the default mode (shared: no $UBLOX_CLUSTER), this
    checkout first on PYTHONPATH, no proxy (the children talk on loopback), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop(CLUSTER_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


async def launch(
    engine: Engine,
    pto_id: str,
    *,
    shares: int = 10,
    atu_required: int = 5,
    price: str = "1.00",
    deadline: timedelta = timedelta(hours=1),
) -> None:
    """``creator``'s PTO ``pto_id`` offering ``shares`` PTS at ``price``."""
    await engine.launch_pto(
        pto_id=pto_id,
        game_name=pto_id,
        creator_id="creator",
        atu_required=atu_required,
        pts_offered=shares,
        price_per_pts=price,
        funding_deadline=deadline,
    )
