"""The CDT coherence world: an H×W lattice of phase oscillators, stepped in vectorised numpy.

Each step: ``theta += dt·(omega + K·Σ₄ sin(theta_nb − theta))`` with periodic
neighbours (``np.roll``). Players in a session are oscillators too: each sits on
a cell, is pulled toward the cell's phase with strength ``player_coupling·tau_k``
and nudges the cell back with ``feedback·tau_k``. A player's coherence on a step
is ``(1 + cos(theta_cell − phase)) / 2``; a *phase lock* is coherence ≥ 0.95 held
for ``lock_steps`` steps in a row. Everything here is a pure function of its
inputs: the same arrays and parameters give bit-identical results.

``WorldParams`` is the one home of the physics constants and their defaults; each
field's bound is ``limits.WORLD[name]`` (``check_world`` holds a ``WorldParams`` to
them). A scenario's ``world:`` section (``sim.scenario.World``) takes its defaults from
here and turns into one with ``World.params()``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidInput
from .limits import EULER_COUPLING_DT, EULER_PLAYER_DT, EULER_SLACK, WORLD
from .records import DEFAULT_AMPLIFICATION

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
TWO_PI = 2.0 * np.pi


@dataclass(frozen=True, slots=True)
class WorldParams:
    """Physics constants; every one can be set per scenario."""

    size: int = 64
    coupling: float = 1.0  # K, between neighbouring cells
    dt: float = 0.1
    steps_per_hour: int = 4
    omega_mean: float = 1.0
    omega_spread: float = 0.1
    player_coupling: float = 0.2  # × tau_k, cell → player
    feedback: float = 0.02  # × tau_k, player → cell
    lock_threshold: float = 0.95
    lock_steps: int = 3
    amplification: float = DEFAULT_AMPLIFICATION

    def steps_for(self, hours: float) -> int:
        return max(1, round(hours * self.steps_per_hour))


WORLD_PARAM_NAMES = tuple(f.name for f in fields(WorldParams))


def check_world(params: object) -> WorldParams:
    """Every physics constant within its limit (``limits.WORLD``) and the lattice inside
    explicit Euler's stable range (``lattice_fault``), or ``InvalidInput``."""
    if not isinstance(params, WorldParams):
        raise InvalidInput(f"world must be WorldParams, got {type(params).__name__}")
    for name, limit in WORLD.items():
        limit.check(getattr(params, name), f"world.{name}")
    fault = lattice_fault(params)
    if fault is not None:
        raise InvalidInput(f"world.coupling × world.dt: {fault}")
    return params


def _beyond(product: float, bound: float) -> bool:
    return product > bound * (1 + EULER_SLACK)


def lattice_fault(params: WorldParams) -> str | None:
    """Why the lattice's explicit Euler step is unstable for these constants, or None.

    Linearised about any state, a step is ``δ += dt·K·Lδ`` with L the periodic
    4-neighbour Laplacian (weighted by cos of the phase differences, at most 1), whose
    eigenvalues reach −8 (the checkerboard mode). Euler keeps a mode of rate λ bounded
    only while dt·|λ| ≤ 2, so K·dt ≤ 0.25; past it the checkerboard mode grows every
    step and a stronger coupling destroys synchrony instead of building it."""
    product = params.coupling * params.dt
    if _beyond(product, EULER_COUPLING_DT):
        return (
            f"coupling × dt is {product:g} ({params.coupling:g} × {params.dt:g}); the lattice "
            f"is stepped with explicit Euler, stable only while coupling × dt ≤ "
            f"{EULER_COUPLING_DT:g} (lower dt, or raise steps_per_hour to keep the time scale)"
        )
    return None


def player_fault(params: WorldParams, tau_k: float) -> str | None:
    """Why a player of ``tau_k`` would make a session's Euler step unstable, or None.

    A player's phase φ and its cell's θ move as φ' = … + player_coupling·τ·sin(θ−φ) and
    θ' = … + feedback·τ·sin(φ−θ): their difference shrinks at the rate
    (player_coupling + feedback)·τ, which explicit Euler keeps stable only while
    that times dt ≤ 2. Players sharing a cell add their feedback to that cell, which no
    static bound covers (the scenario's README says so)."""
    rate = (params.player_coupling + params.feedback) * tau_k
    if _beyond(rate * params.dt, EULER_PLAYER_DT):
        return (
            f"(player_coupling + feedback) × tau_k × dt is {rate * params.dt:g} "
            f"(({params.player_coupling:g} + {params.feedback:g}) × {tau_k:g} × "
            f"{params.dt:g}); a player's phase is stepped with explicit Euler, stable only "
            f"while this is ≤ {EULER_PLAYER_DT:g}"
        )
    return None


def new_world(params: WorldParams, rng: np.random.Generator) -> dict[str, F64]:
    """Random phases, natural frequencies around ``omega_mean``."""
    shape = (params.size, params.size)
    theta = rng.uniform(0.0, TWO_PI, shape)
    omega = rng.normal(params.omega_mean, params.omega_spread, shape)
    return {"theta": theta, "omega": omega}


def lattice_coupling(theta: F64) -> F64:
    """Σ over the four neighbours of sin(theta_nb − theta), periodic boundaries.

    On the last two axes: a stack of worlds (n, H, W) gives each world's own sum,
    elementwise the same operations as for that world alone (``core.shard``)."""
    return (
        np.sin(np.roll(theta, 1, -2) - theta)
        + np.sin(np.roll(theta, -1, -2) - theta)
        + np.sin(np.roll(theta, 1, -1) - theta)
        + np.sin(np.roll(theta, -1, -1) - theta)
    )


def step_world(theta: F64, omega: F64, params: WorldParams, steps: int) -> F64:
    """Advance the lattice ``steps`` steps with no players; returns the new theta."""
    for _ in range(steps):
        theta = theta + params.dt * (omega + params.coupling * lattice_coupling(theta))
    return np.mod(theta, TWO_PI)


def order_parameter(theta: F64) -> float:
    """|mean(exp(i·theta))|: 1 when every cell is in phase, ~0 when incoherent."""
    return float(min(1.0, abs(np.exp(1j * theta).mean())))


@dataclass(frozen=True, slots=True)
class SessionPhysics:
    """What a batch of players did during one stretch of world steps (arrays per player)."""

    theta: F64
    phase: F64
    quality: F64
    coherence: F64  # on the last step played
    locks: I64
    locked_steps: I64


def coupled_steps(
    theta: F64,
    omega: F64,
    params: WorldParams,
    *,
    flat: I64,
    phase: F64,
    freq: F64,
    tau_k: F64,
    steps: I64,
    world_steps: int,
) -> tuple[F64, F64, F64, F64, I64, I64]:
    """The lattice loop of every play: ``world_steps`` steps of ``theta`` (one world
    ``(S, S)`` or a stack ``(n, S, S)``: elementwise the same operations, ``core.shard``)
    with each player coupled to its cell (``flat``: its index in ``theta.reshape(-1)``)
    for its own ``steps``; the nudges on one cell are summed in the players' order.

    Returns theta and the players' phases (neither wrapped), the sum of each player's
    coherence over its steps, its coherence on its last step, its locks and locked steps.
    """
    n = len(phase)
    phase = phase.astype(np.float64, copy=True)
    total = np.zeros(n)
    streak = np.zeros(n, dtype=np.int64)
    locks = np.zeros(n, dtype=np.int64)
    locked = np.zeros(n, dtype=np.int64)
    coherence = np.zeros(n)
    pull = params.player_coupling * tau_k
    push = params.feedback * tau_k
    for step in range(world_steps):
        active = steps > step
        cell = theta.reshape(-1)[flat]
        diff = cell - phase
        now = (1.0 + np.cos(diff)) / 2.0
        coherence = np.where(active, now, coherence)
        total += np.where(active, now, 0.0)
        hit = active & (now >= params.lock_threshold)
        streak = np.where(hit, streak + 1, np.where(active, 0, streak))
        locked += hit & (streak >= params.lock_steps)
        locks += hit & (streak == params.lock_steps)
        # Players and world move together: the lattice step plus the players' nudge.
        nudge = np.zeros(theta.size)
        np.add.at(nudge, flat, np.where(active, push * np.sin(-diff), 0.0))
        theta = theta + params.dt * (
            omega + params.coupling * lattice_coupling(theta) + nudge.reshape(theta.shape)
        )
        phase = phase + np.where(active, params.dt * (freq + pull * np.sin(diff)), 0.0)
    return theta, phase, total, coherence, locks, locked


def play_steps(
    theta: F64,
    omega: F64,
    params: WorldParams,
    *,
    cells_y: I64,
    cells_x: I64,
    phase: F64,
    freq: F64,
    tau_k: F64,
    steps: I64,
    world_steps: int | None = None,
) -> SessionPhysics:
    """Step the world with players coupled to their cells, each for its own number of steps.

    All players move together on each step (one array operation per step, not one
    per player); a player whose ``steps`` ran out stops coupling and scoring. The
    world takes ``world_steps`` steps (default: the longest session's); a tick of a
    scenario gives its own (``core.shard``: each player's ``steps`` is at most that).
    A one-world case of ``coupled_steps``, as a shard's tick is the many-world one.
    """
    if world_steps is None:
        world_steps = int(steps.max(initial=0))
    theta, phase, total, coherence, locks, locked = coupled_steps(
        theta,
        omega,
        params,
        flat=cells_y * theta.shape[-1] + cells_x,
        phase=phase,
        freq=freq,
        tau_k=tau_k,
        steps=steps,
        world_steps=world_steps,
    )
    quality = np.divide(total, steps, out=np.zeros(len(phase)), where=steps > 0)
    return SessionPhysics(
        theta=np.mod(theta, TWO_PI),
        phase=np.mod(phase, TWO_PI),
        quality=np.clip(quality, 0.0, 1.0),
        coherence=coherence,
        locks=locks,
        locked_steps=locked,
    )


def cell_of(x: float, y: float, size: int) -> tuple[int, int]:
    """The lattice cell (row, column) a player's position maps to."""
    return int(np.floor(y)) % size, int(np.floor(x)) % size
