"""World shards (core.shard): a tick over the stack is bit-identical to each world alone."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ublox_sim.core.shard import Sessions, Shard
from ublox_sim.core.world import WorldParams, new_world, order_parameter, play_steps, step_world

PARAMS = WorldParams(size=16)


def _shard(n: int, seed: int = 3) -> tuple[Shard, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    shard = Shard(PARAMS, capacity=1)
    worlds = [new_world(PARAMS, rng) for _ in range(n)]
    for k, w in enumerate(worlds):
        shard.put(f"w{k}", w["theta"], w["omega"])
    return shard, worlds


def _sessions(n_worlds: int, m: int, steps: int, seed: int = 5) -> Sessions:
    rng = np.random.default_rng(seed)
    # Worlds 0 and the last get none (the stack steps them bare); cells repeat on purpose.
    slot = np.sort(rng.integers(1, max(2, n_worlds - 1), m))
    return Sessions(
        slot=slot,
        cells_y=rng.integers(0, 4, m),
        cells_x=rng.integers(0, 4, m),
        phase=rng.uniform(0, 2 * np.pi, m),
        freq=rng.normal(1.0, 0.1, m),
        tau_k=rng.uniform(0.5, 10, m),
        steps=rng.integers(0, steps + 1, m),
    )


@pytest.mark.parametrize("steps", [0, 1, 4, 7])
def test_a_tick_is_bit_identical_to_each_world_alone(steps: int) -> None:
    shard, worlds = _shard(6)
    s = _sessions(6, 40, steps)
    out = shard.tick(steps, s)
    for k, w in enumerate(worlds):
        mine = s.slot == k
        alone = play_steps(
            w["theta"],
            w["omega"],
            PARAMS,
            cells_y=s.cells_y[mine],
            cells_x=s.cells_x[mine],
            phase=s.phase[mine],
            freq=s.freq[mine],
            tau_k=s.tau_k[mine],
            steps=s.steps[mine],
            world_steps=steps,
        )
        got = shard.arrays(f"w{k}")["theta"]
        assert got.tobytes() == alone.theta.tobytes(), k
        assert out.aci[k] == order_parameter(alone.theta)
        for name in ("quality", "coherence", "locks", "locked_steps", "phase"):
            assert getattr(out, name)[mine].tobytes() == getattr(alone, name).tobytes(), name
        if not mine.any():
            bare = step_world(w["theta"], w["omega"], PARAMS, steps)
            assert got.tobytes() == bare.tobytes()
    assert out.locks.sum() >= 0 and len(out.quality) == 40


def test_removing_a_world_moves_the_last_into_its_slot_and_keeps_every_array() -> None:
    shard, worlds = _shard(4)
    shard.remove("w1")
    assert shard.ids == ["w0", "w3", "w2"] and len(shard) == 3 and "w1" not in shard
    for k in (0, 2, 3):
        assert shard.arrays(f"w{k}")["theta"].tobytes() == worlds[k]["theta"].tobytes()
    with pytest.raises(ValueError, match="16x16"):
        shard.put("big", np.zeros((8, 8)), np.zeros((8, 8)))


def test_a_shard_pickles_with_its_used_slots_only_and_ticks_the_same() -> None:
    shard, _ = _shard(3)
    copy = pickle.loads(pickle.dumps(shard))
    assert copy.ids == shard.ids and copy.theta.shape[0] == 3
    s = _sessions(3, 10, 4)
    a, b = shard.tick(4, s), copy.tick(4, s)
    assert a.quality.tobytes() == b.quality.tobytes()
    assert shard.theta[:3].tobytes() == copy.theta[:3].tobytes()


def test_a_session_longer_than_its_tick_is_refused_and_changes_nothing() -> None:
    shard, _ = _shard(2)
    before = shard.theta.copy()
    one, half = np.array([0]), np.array([1.0])
    with pytest.raises(ValueError, match="more steps"):
        shard.tick(2, Sessions(one, one, one, half, half, half, np.array([3])))
    assert shard.theta.tobytes() == before.tobytes()
