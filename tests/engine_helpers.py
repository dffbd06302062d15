"""Small helpers the engine's tests share (imported as ``engine_helpers``: pytest puts
``tests/`` on the path, as for ``live_server``)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from ublox_sim.core.views import PTOInfo
from ublox_sim.engine import Engine


async def launch(
    engine: Engine,
    pto_id: str,
    *,
    creator: str = "creator",
    offered: int = 10,
    price: Decimal | int = 25,
    atu: int = 100,
    deadline: timedelta = timedelta(days=30),
    amplification: float | None = None,
) -> PTOInfo:
    """Launch ``pto_id`` (game ``Game <id>``) by ``creator`` with these terms (the
    engine's default amplification unless one is given)."""
    return await engine.launch_pto(
        pto_id=pto_id,
        game_name=f"Game {pto_id}",
        creator_id=creator,
        atu_required=atu,
        pts_offered=offered,
        price_per_pts=price,
        funding_deadline=deadline,
        **({} if amplification is None else {"amplification": amplification}),
    )
