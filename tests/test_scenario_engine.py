"""The scenario's ``engine:`` section (memory knobs): validated like every other key,
errors naming file, line and key, and left out of the run's recorded identity."""

from __future__ import annotations

import pytest

from ublox_sim.sim.scenario import ScenarioError, parse_scenario

BASE = """\
name: s
seed: 1
clock: {ticks: 2}
engine:
  max_active: 500
  idle_timeout: 30
"""


def problems(text: str, *overrides: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "s.yaml", overrides=overrides)
    return caught.value.problems


def test_the_engine_section_is_read() -> None:
    engine = parse_scenario(BASE, "s.yaml").scenario.engine
    assert (engine.max_active, engine.idle_timeout) == (500, 30.0)


def test_without_the_section_the_engine_keeps_its_defaults() -> None:
    engine = parse_scenario("name: s\nseed: 1\nclock: {ticks: 2}\n").scenario.engine
    assert (engine.max_active, engine.idle_timeout) == (None, 300.0)


@pytest.mark.parametrize(
    ("line", "text", "said"),
    [
        (
            5,
            BASE.replace("500", "0"),
            "engine.max_active: must be between 1 and 1e7 (got 0)",
        ),
        (5, BASE.replace("500", "2.5"), "engine.max_active: Input should be a valid integer"),
        (5, BASE.replace("500", "100000000"), "engine.max_active: must be between 1 and 1e7"),
        (
            6,
            BASE.replace("30", "-1"),
            "engine.idle_timeout: must be greater than 0 and at most 1e6 (got -1)",
        ),
        (6, BASE.replace("30", ".inf"), "engine.idle_timeout: must be greater than 0"),
        (
            5,
            BASE.replace("max_active", "max_actve"),
            "engine.max_actve: unknown key; did you mean `max_active`?",
        ),
    ],
)
def test_a_bad_engine_value_names_file_line_and_key(line: int, text: str, said: str) -> None:
    [problem] = problems(text)
    assert problem.startswith(f"s.yaml:{line}: {said}"), problem


def test_a_bad_engine_value_from_set_says_set() -> None:
    [problem] = problems(BASE, "engine.max_active=-3")
    assert problem.startswith("--set: engine.max_active: must be between 1 and 1e7"), problem
