"""Scenarios that validated but could not run (an outside modeller's findings): each is
now refused at validation with FILE:LINE: key, naming the rule, and nothing is created.

The base scenario and the helpers are test_scenario's (its line numbers are named here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scenario import BASE, edit, expect_refused, first_variant

from ublox_sim.sim.scenario import ScenarioError, parse_scenario

PTO_COHORT = "\n".join(
    [
        "pto_cohorts:",  # 31
        "  - prefix: game",  # 32
        "    count: 3",  # 33
        "    creators: fan",  # 34
        "    atu_required: 10",  # 35
        "    pts_offered: 10",  # 36
        "    price_per_pts: 5",  # 37
        "    funding_deadline_hours: 3",  # 38
    ]
)


# -- ids: players and PTOs share one namespace ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        pytest.param(
            edit(19, "  - id: alice").replace("pto: g1", "pto: alice"),
            19,
            "ptos[0].id",
            "PTO id 'alice' is already the id of a player ({path}:10: players[0].id); "
            "players and PTOs share one namespace",
            id="pto-eq-player",
        ),
        pytest.param(
            edit(19, "  - id: fan-0003").replace("pto: g1", "pto: fan-0003"),
            19,
            "ptos[0].id",
            "PTO id 'fan-0003' is also an id the player cohort 'fan' generates "
            "({path}:15: cohorts[0].prefix)",
            id="pto-eq-player-cohort-member",
        ),
        pytest.param(
            edit(19, "  - id: game-0002").replace("pto: g1", "pto: game-0002") + PTO_COHORT,
            19,
            "ptos[0].id",
            "PTO id 'game-0002' is also an id the PTO cohort 'game' generates "
            "({path}:32: pto_cohorts[0].prefix)",
            id="pto-eq-pto-cohort-member",
        ),
        pytest.param(
            edit(12, "  - id: game-0003").replace("player: bob", "player: alice") + PTO_COHORT,
            12,
            "players[1].id",
            "player id 'game-0003' is also an id the PTO cohort 'game' generates "
            "({path}:32: pto_cohorts[0].prefix)",
            id="player-eq-pto-cohort-member",
        ),
        pytest.param(
            BASE + PTO_COHORT.replace("prefix: game", "prefix: fan"),
            32,
            "pto_cohorts[0].prefix",
            "prefix 'fan' is already the prefix of a player cohort ({path}:15: cohorts[0].prefix)",
            id="pto-cohort-prefix-eq-player-cohort",
        ),
        pytest.param(
            # Not only a cohort's first id: the check used to look at fan-0001 alone.
            edit(12, "  - id: fan-0002").replace("player: bob", "player: alice"),
            12,
            "players[1].id",
            "player id 'fan-0002' is also an id the player cohort 'fan' generates",
            id="player-eq-later-cohort-member",
        ),
        pytest.param(
            BASE + PTO_COHORT + "\n" + "\n".join(PTO_COHORT.splitlines()[1:]),
            39,
            "pto_cohorts[1].prefix",
            "prefix 'game' is already the prefix of a PTO cohort ({path}:32:",
            id="two-pto-cohorts-one-prefix",
        ),
    ],
)
def test_id_given_twice_is_refused_naming_both_places(
    tmp_path: Path, request: pytest.FixtureRequest, text: str, line: int, key: str, fragment: str
) -> None:
    fragment = fragment.replace("{path}", str(tmp_path / "scenario.yaml"))
    expect_refused(
        tmp_path, text, line=line, key=key, fragment=fragment, via_cli=first_variant(request)
    )


# -- the world's explicit Euler steps stay stable -------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        pytest.param(
            edit(8, "  size: 8\n  coupling: 5"),
            9,
            "world.coupling",
            "coupling × dt is 0.5 (5 × 0.1); the lattice is stepped with explicit Euler, "
            "stable only while coupling × dt ≤ 0.25",
            id="coupling",
        ),
        pytest.param(
            edit(8, "  size: 8\n  dt: 0.3"), 9, "world.dt", "coupling × dt ≤ 0.25", id="dt"
        ),
        pytest.param(
            edit(8, "  size: 8\n  feedback: 2"),
            9,
            "world.feedback",
            "(player_coupling + feedback) × tau_k × dt is 2.2 ((0.2 + 2) × 10 × 0.1)",
            id="feedback-at-the-session-ceiling",
        ),
        pytest.param(
            # A player starting at tau_k 100 is the largest here: 0.22 × 100 × 0.1.
            edit(11, "    usd_obbba: 100\n    tau_k: 100"),
            7,
            "world",
            "is 2.2 ((0.2 + 0.02) × 100 × 0.1)",
            id="a-players-tau_k",
        ),
    ],
)
def test_unstable_euler_step_is_refused(
    tmp_path: Path, request: pytest.FixtureRequest, text: str, line: int, key: str, fragment: str
) -> None:
    expect_refused(
        tmp_path, text, line=line, key=key, fragment=fragment, via_cli=first_variant(request)
    )


def test_a_coupling_override_past_the_bound_names_the_set() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(BASE, "base.yaml", overrides=["world.coupling=3"])
    assert info.value.problems[0].startswith("--set: world.coupling: coupling × dt is 0.3")
    parse_scenario(BASE, "base.yaml", overrides=["world.coupling=2.5"])  # at the bound


# -- a PTO launches inside the run ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        pytest.param(
            edit(25, "    funding_deadline_hours: 3\n    launch_at: 4"),
            26,
            "ptos[0].launch_at",
            "launch_at 4 h is after the run ends (4 h)",
            id="explicit",
        ),
        pytest.param(
            BASE + PTO_COHORT + "\n    launch_at: {dist: uniform, low: 4, high: 9}",
            39,
            "pto_cohorts[0].launch_at",
            "launch_at draws 4 h at the earliest, after the run ends (4 h): none of these PTOs "
            "would launch",
            id="drawn",
        ),
        pytest.param(
            BASE + PTO_COHORT + "\n    launch_at: {dist: choice, values: [6, 5]}",
            39,
            "pto_cohorts[0].launch_at",
            "draws 5 h at the earliest",
            id="choice",
        ),
    ],
)
def test_launch_after_the_run_ends_is_refused(
    tmp_path: Path, request: pytest.FixtureRequest, text: str, line: int, key: str, fragment: str
) -> None:
    expect_refused(
        tmp_path, text, line=line, key=key, fragment=fragment, via_cli=first_variant(request)
    )


def test_a_launch_in_the_last_tick_is_accepted() -> None:
    parse_scenario(edit(25, "    funding_deadline_hours: 3\n    launch_at: 3.5"))
    # A drawn launch that can fall inside a run cut short is kept (scenarios/README.md).
    parse_scenario(BASE + PTO_COHORT + "\n    launch_at: {dist: choice, values: [0, 24]}")


# -- a normal's mean inside its clip -------------------------------------------------------


@pytest.mark.parametrize(
    ("dist", "fragment"),
    [
        pytest.param(
            "{dist: normal, mean: 50, sd: 2, min: 0, max: 10}",
            "mean 50 is outside [min, max]: every draw would be clipped to max 10",
            id="above-max",
        ),
        pytest.param(
            "{dist: normal, mean: 1, sd: 2, min: 5}",
            "mean 1 is outside [min, max]: every draw would be clipped to min 5",
            id="below-min",
        ),
    ],
)
def test_normal_mean_outside_its_clip_is_refused(
    tmp_path: Path, request: pytest.FixtureRequest, dist: str, fragment: str
) -> None:
    text = edit(17, f"    usd_obbba: 10\n    tau_k: {dist}")
    expect_refused(
        tmp_path,
        text,
        line=18,
        key="cohorts[0].tau_k",
        fragment=fragment,
        via_cli=first_variant(request),
    )


def test_normal_mean_at_an_end_is_accepted() -> None:
    parse_scenario(edit(17, "    tau_k: {dist: normal, mean: 10, sd: 2, min: 0, max: 10}"))


def test_a_scenario_without_players_checks_its_world() -> None:
    """The largest tau_k is the session ceiling then (the fuzz test found a crash here)."""
    with pytest.raises(ScenarioError, match=r"× 10 × 0\.1"):
        parse_scenario("name: x\nseed: 1\nclock: {ticks: 2}\nworld: {feedback: 2}\n")
