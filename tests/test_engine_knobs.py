"""``max_active`` and ``idle_timeout``: one rule each (``core.limits``), the same for
``Engine.open`` and for a scenario's ``engine:`` key. A bad value is an ``InvalidInput``
naming the parameter, raised before anything is opened."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ublox_sim.core import limits
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidInput
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import MAX_ACTIVE_ENV, Engine
from ublox_sim.sim.scenario import ScenarioError, parse_scenario

pytestmark = pytest.mark.anyio

VALUES: list[object] = [
    True,
    False,
    2.5,
    5.0,
    "5",
    0,
    -3,
    1,
    10**7,
    10**7 + 1,
    1e-300,
    300,
    10**6,
    10**6 + 1,
    math.inf,
    math.nan,
    "1",
]


def yaml_value(value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf"
    return json.dumps(value)  # JSON is YAML: true, 2.5, "5", null


def scenario_accepts(key: str, value: object) -> bool:
    text = f"name: s\nseed: 1\nclock: {{ticks: 2}}\nengine:\n  {key}: {yaml_value(value)}\n"
    try:
        parse_scenario(text, "s.yaml")
    except ScenarioError:
        return False
    return True


async def engine_accepts(home: Path, key: str, value: object) -> bool:
    try:
        async with Engine.open(
            home, seed=1, clock=SimClock(), world=WorldParams(size=8), **{key: value}
        ):
            return True
    except InvalidInput as exc:
        assert str(exc).startswith(f"{key} must be "), exc
        assert not home.exists(), "a refused open created the home"
        return False


@pytest.mark.parametrize("key", ["max_active", "idle_timeout"])
@pytest.mark.parametrize("value", VALUES, ids=repr)
async def test_the_engine_and_the_scenario_apply_one_rule(
    tmp_path: Path, key: str, value: object
) -> None:
    limit = limits.MAX_ACTIVE if key == "max_active" else limits.IDLE_TIMEOUT
    try:
        limit.check(value)
        valid = True
    except InvalidInput:
        valid = False
    assert await engine_accepts(tmp_path / "home", key, value) is valid
    assert scenario_accepts(key, value) is valid


@pytest.mark.parametrize(("text", "said"), [("0", "between 1 and 1e7"), ("x", "a whole number")])
async def test_a_bad_max_active_from_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, said: str
) -> None:
    monkeypatch.setenv(MAX_ACTIVE_ENV, text)
    with pytest.raises(InvalidInput, match=f"^{MAX_ACTIVE_ENV} must be {said}"):
        async with Engine.open(tmp_path / "home", seed=1, clock=SimClock()):
            pass
    assert not (tmp_path / "home").exists()
