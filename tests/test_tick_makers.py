"""The tick path makes its events and results without their frozen ``__init__``
(``engine._maker``): what it makes equals what the class makes, field for field, so a
field added or moved in the class cannot shift the values silently."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from ublox_sim import engine
from ublox_sim.core import events as ev
from ublox_sim.core.views import SessionResult


def test_the_ticks_makers_make_what_their_classes_make() -> None:
    session = ev.SessionPlayed(
        at="2026-01-01T00:00:00",
        pto_id="p",
        player_id="u",
        session_id=0,
        hours=1.5,
        quality=0.25,
        xUSD_earned=Decimal("0.37"),
        phase_locks=2,
        tau_k=1.75,
        phase=0.5,
        coherence=0.3,
        memory_depth_added=0.125,
        aci=0.2,
        shares=(("t1", 1.5, 37),),
    )
    lock = ev.PhaseLock(at="2026-01-01T00:00:00", pto_id="p", player_id="u", locks=2)
    result = SessionResult(
        session_id=4,
        pto_id="p",
        player_id="u",
        hours=1.5,
        quality=0.25,
        xUSD_earned=Decimal("0.37"),
        phase_locks=2,
        memory_depth_added=0.125,
        tau_k_after=1.75,
    )
    for made, maker in (
        (session, engine._session_played),
        (lock, engine._phase_lock),
        (result, engine._session_result),
    ):
        values = [getattr(made, f.name) for f in dataclasses.fields(made)]
        twin = maker(*values)
        assert type(twin) is type(made)
        assert twin == made
