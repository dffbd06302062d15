"""``events.numbered``: the store's fast ``dataclasses.replace`` numbering a committed
event; a session id is set on a session and refused for a class without one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ublox_sim.core import events as ev


def _session() -> ev.SessionPlayed:
    return ev.SessionPlayed(
        at="2026-01-01T00:00:00",
        pto_id="p",
        player_id="u",
        session_id=0,
        hours=1.0,
        quality=0.5,
        xUSD_earned=Decimal("0.12"),
        phase_locks=0,
        tau_k=1.0,
        phase=0.0,
        coherence=0.5,
        memory_depth_added=0.0,
        aci=0.1,
        shares=(),
    )


def test_a_session_is_numbered_with_its_id() -> None:
    got = ev.numbered(_session(), 7, 3)
    assert (got.seq, got.session_id) == (7, 3)


def test_an_event_without_a_session_id_refuses_one_instead_of_dropping_it() -> None:
    lock = ev.PhaseLock(at="2026-01-01T00:00:00", pto_id="p", player_id="u", locks=2)
    assert ev.numbered(lock, 5).seq == 5
    with pytest.raises(TypeError, match="PhaseLock has no session_id"):
        ev.numbered(lock, 5, 9)
