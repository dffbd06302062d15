"""core/draws.py: per-entity uniforms from a keyed hash, the same on every call."""

from __future__ import annotations

import math
import statistics

from ublox_sim.core.draws import Draws, normal


def test_the_same_seed_and_id_give_the_same_draws_and_others_differ() -> None:
    a, b = Draws(1), Draws(1)
    assert a.uniforms("player", "p1") == b.uniforms("player", "p1")
    assert a.uniforms("player", "p1") != a.uniforms("player", "p2")
    assert a.uniforms("player", "p1") != a.uniforms("world", "p1")
    assert a.uniforms("player", "p1") != Draws(2).uniforms("player", "p1")


def test_a_long_entropy_is_accepted() -> None:
    big = Draws(2**600 + 5)
    assert big.uniforms("player", "x") == Draws(2**600 + 5).uniforms("player", "x")
    assert big.uniforms("player", "x") != Draws(5).uniforms("player", "x")


def test_uniforms_lie_in_the_unit_interval_and_look_uniform() -> None:
    draws = Draws(7)
    values = [u for n in range(4000) for u in draws.uniforms("player", f"p{n}")]
    assert all(0.0 <= u < 1.0 for u in values)
    assert abs(statistics.fmean(values) - 0.5) < 0.01
    assert abs(statistics.pvariance(values) - 1 / 12) < 0.005


def test_normal_has_the_mean_and_spread_asked_for() -> None:
    draws = Draws(3)
    values = []
    for n in range(4000):
        _, _, _, u1, u2 = draws.uniforms("player", f"p{n}")
        values.append(normal(u1, u2, 10.0, 2.0))
    assert all(math.isfinite(v) for v in values)
    assert abs(statistics.fmean(values) - 10.0) < 0.15
    assert abs(statistics.pstdev(values) - 2.0) < 0.1
    assert normal(0.0, 0.0, 1.0, 1.0) == 1.0  # u1 = 0 is 1 - u1 = 1: log is 0, not -inf
