"""The CDT lattice: synchronisation, determinism, players' sessions, and worlds on disk."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from ublox_sim.core import limits as L
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidInput
from ublox_sim.core.world import (
    TWO_PI,
    WORLD_PARAM_NAMES,
    SessionPhysics,
    WorldParams,
    cell_of,
    check_world,
    new_world,
    order_parameter,
    play_steps,
    step_world,
)
from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store

SMALL = WorldParams(size=16)


def one_player(
    theta: np.ndarray,
    omega: np.ndarray,
    params: WorldParams,
    *,
    cell: tuple[int, int],
    phase: float,
    freq: float,
    tau_k: float = 1.0,
    steps: int,
) -> SessionPhysics:
    return play_steps(
        theta,
        omega,
        params,
        cells_y=np.array([cell[0]], dtype=np.int64),
        cells_x=np.array([cell[1]], dtype=np.int64),
        phase=np.array([phase]),
        freq=np.array([freq]),
        tau_k=np.array([tau_k]),
        steps=np.array([steps], dtype=np.int64),
    )


# -- the lattice ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_strong_coupling_synchronises(seed: int) -> None:
    params = dataclasses.replace(SMALL, coupling=2.0, omega_spread=0.01)
    world = new_world(params, np.random.default_rng(seed))
    start = order_parameter(world["theta"])
    assert start < 0.3  # random phases start incoherent
    theta = step_world(world["theta"], world["omega"], params, 400)
    end = order_parameter(theta)
    assert end > 0.9
    assert end > start + 0.5


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_zero_coupling_with_spread_frequencies_stays_incoherent(seed: int) -> None:
    params = dataclasses.replace(SMALL, coupling=0.0, omega_spread=1.0)
    world = new_world(params, np.random.default_rng(seed))
    for steps in (100, 400):
        theta = step_world(world["theta"], world["omega"], params, steps)
        assert order_parameter(theta) < 0.3


def test_zero_coupling_is_free_rotation() -> None:
    params = dataclasses.replace(SMALL, coupling=0.0)
    world = new_world(params, np.random.default_rng(5))
    theta = step_world(world["theta"], world["omega"], params, 10)
    expected = np.mod(world["theta"] + 10 * params.dt * world["omega"], TWO_PI)
    np.testing.assert_allclose(theta, expected, atol=1e-9)


def test_step_world_keeps_phases_in_range_and_does_not_mutate_inputs() -> None:
    world = new_world(SMALL, np.random.default_rng(2))
    theta0 = world["theta"].copy()
    theta = step_world(world["theta"], world["omega"], SMALL, 50)
    assert np.array_equal(world["theta"], theta0)
    assert theta.shape == (16, 16) and theta.dtype == np.float64
    assert np.all((theta >= 0) & (theta < TWO_PI))


def test_order_parameter_bounds() -> None:
    assert order_parameter(np.full((8, 8), 1.234)) == pytest.approx(1.0)
    # Two antiphase halves cancel.
    half = np.zeros((8, 8))
    half[:4] = np.pi
    assert order_parameter(half) == pytest.approx(0.0, abs=1e-12)


def test_same_seed_gives_bit_identical_worlds() -> None:
    a = new_world(SMALL, np.random.default_rng(1234))
    b = new_world(SMALL, np.random.default_rng(1234))
    c = new_world(SMALL, np.random.default_rng(1235))
    for name in ("theta", "omega"):
        assert np.array_equal(a[name], b[name])
        assert a[name].tobytes() == b[name].tobytes()
    assert not np.array_equal(a["theta"], c["theta"])
    ta = step_world(a["theta"], a["omega"], SMALL, 200)
    tb = step_world(b["theta"], b["omega"], SMALL, 200)
    assert ta.tobytes() == tb.tobytes()

    def session(world: dict[str, np.ndarray]) -> SessionPhysics:
        return play_steps(
            world["theta"],
            world["omega"],
            SMALL,
            cells_y=np.array([1, 5, 5], dtype=np.int64),
            cells_x=np.array([2, 7, 7], dtype=np.int64),
            phase=np.array([0.1, 2.0, 4.0]),
            freq=np.array([1.0, 1.1, 0.9]),
            tau_k=np.array([1.0, 5.0, 0.5]),
            steps=np.array([20, 7, 0], dtype=np.int64),
        )

    sa, sb = session(a), session(b)
    for field in dataclasses.fields(sa):
        assert getattr(sa, field.name).tobytes() == getattr(sb, field.name).tobytes()


# -- sessions -------------------------------------------------------------------------


def test_a_player_in_phase_with_its_cell_scores_near_one_and_locks() -> None:
    # A uniform, coupled world: every cell turns at the same speed, in phase.
    params = dataclasses.replace(SMALL, coupling=1.0)
    theta = np.full((16, 16), 0.7)
    omega = np.full((16, 16), 1.0)
    result = one_player(theta, omega, params, cell=(3, 4), phase=0.7, freq=1.0, steps=40)
    assert result.quality[0] == pytest.approx(1.0, abs=1e-9)
    assert result.coherence[0] == pytest.approx(1.0, abs=1e-9)
    # One unbroken lock: counted once, when the streak reaches lock_steps.
    assert result.locks[0] == 1
    assert result.locked_steps[0] == 40 - (params.lock_steps - 1)
    assert result.locked_steps[0] <= 40


def test_an_antiphase_player_scores_low_and_never_locks() -> None:
    params = dataclasses.replace(SMALL, coupling=1.0, player_coupling=0.0, feedback=0.0)
    theta = np.full((16, 16), 0.0)
    omega = np.full((16, 16), 1.0)
    result = one_player(theta, omega, params, cell=(0, 0), phase=np.pi, freq=1.0, steps=30)
    assert result.quality[0] == pytest.approx(0.0, abs=1e-9)
    assert result.locks[0] == 0
    assert result.locked_steps[0] == 0


def test_coupling_pulls_a_player_towards_its_cell() -> None:
    """A player slightly out of phase with a strong tau_k is pulled in and ends up locked."""
    params = dataclasses.replace(SMALL, coupling=1.0, player_coupling=0.5)
    theta = np.full((16, 16), 1.0)
    omega = np.full((16, 16), 1.0)
    result = one_player(theta, omega, params, cell=(2, 2), phase=2.0, freq=1.0, tau_k=5.0, steps=80)
    assert result.coherence[0] > 0.99
    assert result.locks[0] >= 1
    assert 0.0 <= result.quality[0] <= 1.0


def test_play_steps_quality_in_range_and_memory_bounded() -> None:
    world = new_world(SMALL, np.random.default_rng(9))
    rng = np.random.default_rng(10)
    n = 50
    steps = rng.integers(0, 60, n).astype(np.int64)
    result = play_steps(
        world["theta"],
        world["omega"],
        SMALL,
        cells_y=rng.integers(0, 16, n).astype(np.int64),
        cells_x=rng.integers(0, 16, n).astype(np.int64),
        phase=rng.uniform(0, TWO_PI, n),
        freq=rng.normal(1.0, 0.1, n),
        tau_k=rng.uniform(0, 10, n),
        steps=steps,
    )
    assert np.all((result.quality >= 0) & (result.quality <= 1))
    assert np.all(result.locked_steps <= steps)
    assert np.all(result.locks >= 0)
    # A lock needs lock_steps locked steps of its own.
    assert np.all(result.locks * SMALL.lock_steps <= steps)
    assert np.all(result.locked_steps >= result.locks)
    # A player with no steps played nothing.
    idle = steps == 0
    assert np.all(result.quality[idle] == 0) and np.all(result.locks[idle] == 0)
    assert np.all((result.theta >= 0) & (result.theta < TWO_PI))
    assert np.all((result.phase >= 0) & (result.phase < TWO_PI))


def test_play_steps_with_no_players_steps_nothing() -> None:
    world = new_world(SMALL, np.random.default_rng(4))
    empty_i = np.zeros(0, dtype=np.int64)
    empty_f = np.zeros(0)
    result = play_steps(
        world["theta"],
        world["omega"],
        SMALL,
        cells_y=empty_i,
        cells_x=empty_i,
        phase=empty_f,
        freq=empty_f,
        tau_k=empty_f,
        steps=empty_i,
    )
    assert result.quality.shape == (0,)
    assert np.array_equal(result.theta, np.mod(world["theta"], TWO_PI))


def test_cell_of_wraps_positions() -> None:
    assert cell_of(3.7, 5.2, 16) == (5, 3)
    assert cell_of(16.0, 0.0, 16) == (0, 0)


# -- worlds on disk -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_world_loads_back_bit_identical_after_reopen(tmp_path: Path) -> None:
    params = WorldParams(size=12)
    async with Engine.open(tmp_path, seed=11, clock=SimClock(), world=params) as engine:
        await engine.register_player("alice", usd_obbba=100)
        await engine.launch_pto(
            pto_id="pto_w",
            game_name="World",
            creator_id="alice",
            atu_required=1,
            pts_offered=2,
            price_per_pts=1,
            funding_deadline=timedelta(days=1),
        )
        launched = await engine.world("pto_w")
        # Change the world: step it, and play in it.
        await engine.buy_pts("alice", "pto_w", 2)
        await engine.advance(3)
        await engine.play("alice", "pto_w", 1.5)
        before = await engine.world("pto_w")
    assert not np.array_equal(before["theta"], launched["theta"])
    assert np.array_equal(before["omega"], launched["omega"])
    assert verify_store(tmp_path) == []

    async with Engine.open(tmp_path, seed=11, clock=SimClock(), world=params) as engine:
        after = await engine.world("pto_w")
    assert sorted(after) == sorted(before) == ["omega", "theta"]
    for name in before:
        assert after[name].dtype == np.float64
        assert after[name].shape == (12, 12)
        assert np.array_equal(after[name], before[name])
        assert after[name].tobytes() == before[name].tobytes()


@pytest.mark.asyncio
async def test_same_seed_same_pto_id_gives_the_same_world(tmp_path: Path) -> None:
    worlds = []
    for run in ("a", "b"):
        async with Engine.open(
            tmp_path / run, seed=42, clock=SimClock(), world=WorldParams(size=8)
        ) as engine:
            await engine.register_player("c", usd_obbba=0)
            await engine.launch_pto(
                pto_id="pto_same",
                game_name="Same",
                creator_id="c",
                atu_required=1,
                pts_offered=1,
                price_per_pts=1,
                funding_deadline=timedelta(days=1),
            )
            worlds.append(await engine.world("pto_same"))
    assert worlds[0]["theta"].tobytes() == worlds[1]["theta"].tobytes()
    assert worlds[0]["omega"].tobytes() == worlds[1]["omega"].tobytes()


# -- the parameters: one definition, one table of bounds ------------------------------


def test_every_world_parameter_has_its_one_bound_and_a_default_inside_it() -> None:
    assert set(WORLD_PARAM_NAMES) == set(L.WORLD)
    defaults = WorldParams()
    assert check_world(defaults) is defaults
    for name in WORLD_PARAM_NAMES:
        assert L.WORLD[name].contains(getattr(defaults, name)), name


@pytest.mark.parametrize("name", WORLD_PARAM_NAMES)
def test_check_world_refuses_a_parameter_past_its_bound_naming_it(name: str) -> None:
    limit = L.WORLD[name]
    past = limit.max + 1 if not limit.integer else int(limit.max) + 1
    with pytest.raises(InvalidInput, match=rf"world\.{name} must be"):
        check_world(dataclasses.replace(WorldParams(), **{name: past}))


def test_check_world_refuses_what_is_not_world_params() -> None:
    with pytest.raises(InvalidInput, match="world must be WorldParams, got dict"):
        check_world({"size": 8})


def test_a_scenario_world_section_is_world_params_with_the_same_defaults_and_bounds() -> None:
    from ublox_sim.sim.scenario import Within, World

    assert World().params() == WorldParams()
    for name, info in World.model_fields.items():
        assert info.default == getattr(WorldParams(), name), name
        (within,) = [m for m in info.metadata if isinstance(m, Within)]
        assert within.limit is L.WORLD[name], name
    # The lock rule's constants are not a scenario's to set: they keep their defaults.
    assert set(WORLD_PARAM_NAMES) - set(World.model_fields) == {"lock_threshold", "lock_steps"}
    changed = World(size=8, dt=0.05, amplification=250.0).params()
    assert changed == dataclasses.replace(WorldParams(), size=8, dt=0.05, amplification=250.0)


def test_the_amplification_default_is_the_seeds_in_one_place() -> None:
    from ublox_sim.core.records import DEFAULT_AMPLIFICATION, PTO
    from ublox_sim.sim.scenario import World

    assert DEFAULT_AMPLIFICATION == 100.0  # 5 h × 0.85 × 100 = 425 xUSD, as the seed says
    assert WorldParams().amplification == DEFAULT_AMPLIFICATION
    assert PTO("p", "g", "c").amplification == DEFAULT_AMPLIFICATION
    assert World().amplification == DEFAULT_AMPLIFICATION
