"""Explicit Euler's stability bound on the lattice (coupling × dt ≤ 0.25): derived in
``core.world.lattice_fault``, pinned here on the physics itself and enforced by
``check_world`` (so ``Engine.open``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ublox_sim.core.economy import tau_k_after
from ublox_sim.core.errors import InvalidInput
from ublox_sim.core.world import WorldParams, check_world, player_fault, step_world
from ublox_sim.sim.scenario import SESSION_TAU_K_CEILING


def checkerboard_growth(coupling: float, dt: float, steps: int = 200) -> float:
    """How much a tiny checkerboard ripple on a synchronised lattice grows (> 1) or
    shrinks (< 1) in ``steps`` Euler steps: the mode of the Laplacian's eigenvalue −8."""
    size = 8
    ripple = 1e-6 * (np.indices((size, size)).sum(axis=0) % 2 * 2 - 1)
    params = WorldParams(size=size, coupling=coupling, dt=dt)
    theta = step_world(1.0 + ripple, np.zeros((size, size)), params, steps)
    spread = np.angle(np.exp(1j * (theta - theta.mean())))
    return float(np.abs(spread).max() / 1e-6)


@pytest.mark.parametrize(("coupling", "dt"), [(2.4, 0.1), (1.0, 0.24), (1.0, 0.1)])
def test_inside_the_bound_a_ripple_dies_out(coupling: float, dt: float) -> None:
    assert checkerboard_growth(coupling, dt) < 1.0
    check_world(WorldParams(coupling=coupling, dt=dt))


@pytest.mark.parametrize(("coupling", "dt"), [(2.6, 0.1), (1.0, 0.26), (10.0, 0.1)])
def test_past_the_bound_a_ripple_grows_and_check_world_refuses(coupling: float, dt: float) -> None:
    assert checkerboard_growth(coupling, dt) > 1.0
    with pytest.raises(InvalidInput, match=r"coupling × dt ≤ 0\.25"):
        check_world(WorldParams(coupling=coupling, dt=dt))


def test_a_value_written_at_the_bound_is_accepted() -> None:
    """2.5 × 0.1 is 0.25000000000000006 in floating point: still the bound."""
    check_world(WorldParams(coupling=2.5, dt=0.1))


def test_the_player_bound_is_the_pairs_rate() -> None:
    params = WorldParams()
    assert player_fault(params, 10.0) is None
    fault = player_fault(dataclasses.replace(params, feedback=2.0), 10.0)
    assert fault is not None and "≤ 2" in fault


def test_sessions_never_raise_tau_k_past_the_ceiling() -> None:
    """The scenario loader bounds a run's tau_k by max(start, 10): a session at full
    quality from the ceiling stays there, from above it falls."""
    assert tau_k_after(SESSION_TAU_K_CEILING, 1.0) == pytest.approx(SESSION_TAU_K_CEILING)
    assert tau_k_after(50.0, 1.0) < 50.0
