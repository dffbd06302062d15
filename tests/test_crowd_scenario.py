"""scenarios/crowd.yaml, the 100,000-player day, stays valid and runs: here at a small
scale through ``--set`` overrides of its cohort counts (the full run is measured by hand,
see scenarios/README.md). Activation caps never change its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio

from ublox_sim.sim.runner import Members, Roster, plan, run_scenario
from ublox_sim.sim.scenario import cohort_id, load_scenario
from ublox_sim.store.home import Home
from ublox_sim.store.verify import verify_store

CROWD = Path(__file__).resolve().parents[1] / "scenarios" / "crowd.yaml"
# The file's behaviours and shapes, with 400 players, 8 PTOs and 6 ticks.
SMALL = ("cohorts.0.count=400", "pto_cohorts.0.count=8", "clock.ticks=6", "checkpoint_every=2")


def run_small(home: Path, *extra: str, stop_after_ticks: int | None = None) -> bytes:
    loaded = load_scenario(CROWD, overrides=(*SMALL, *extra))
    anyio.run(partial(run_scenario, loaded, Home.resolve(home), stop_after_ticks=stop_after_ticks))
    return (home / "export.json").read_bytes() if stop_after_ticks is None else b""


def test_the_file_is_the_100000_player_day() -> None:
    scenario = load_scenario(CROWD).scenario
    assert sum(c.count for c in scenario.cohorts) + len(scenario.players) == 100_000
    assert sum(c.count for c in scenario.pto_cohorts) + len(scenario.ptos) == 1_000
    assert scenario.clock.total_ticks == 24
    # Most of the crowd is idle in any hour.
    assert all(rule.probability <= 0.2 for rule in scenario.behaviours.investors)
    assert scenario.engine.max_active is not None and scenario.engine.max_active < 100_000


def test_the_small_crowd_runs_through_the_cli_and_verifies(tmp_path: Path) -> None:
    home = tmp_path / "crowd"
    args = [sys.executable, "-m", "ublox_sim", "run", str(CROWD), "--home", str(home), "--json"]
    for item in SMALL:
        args += ["--set", item]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=300, check=False, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["name"], report["ticks_run"], report["players"]) == ("crowd", 6, 400)
    assert report["outcomes"]["launch"] == 8
    assert report["outcomes"].get("buy", 0) > 0
    assert verify_store(home) == []
    export = json.loads((home / "export.json").read_text(encoding="utf-8"))
    assert export["run"]["finished"] is True
    assert "engine" not in export["run"]["scenario"]


def test_the_activation_cap_does_not_change_the_export(tmp_path: Path) -> None:
    wide = run_small(tmp_path / "wide")
    narrow = run_small(tmp_path / "narrow", "engine.max_active=2", "engine.idle_timeout=0.01")
    assert narrow == wide


def test_a_run_stopped_resumes_with_another_cap_to_the_same_export(tmp_path: Path) -> None:
    expected = run_small(tmp_path / "whole")
    home = tmp_path / "stopped"
    run_small(home, stop_after_ticks=3)
    loaded = load_scenario(CROWD, overrides=(*SMALL, "engine.max_active=3"))
    report = anyio.run(partial(run_scenario, loaded, Home.resolve(home), resume=True))
    assert report.resumed_from == 2  # the last checkpoint before the stop
    assert (home / "export.json").read_bytes() == expected


def test_the_plan_holds_cohorts_as_prefix_and_count_not_one_id_each() -> None:
    planned = plan(load_scenario(CROWD).scenario)
    crowd = planned.groups["u"]
    assert crowd.parts == (Members("u", 100_000),)
    assert (len(crowd), crowd[0], crowd[99_999]) == (100_000, "u-000001", "u-100000")
    assert "u-004200" in crowd and "u-4200" not in crowd and "u-100001" not in crowd
    first = next(planned.chunks(1000))
    assert [p.player_id for p in first] == [cohort_id("u", n, 100_000) for n in range(1, 1001)]
    assert {p.pto_id for p in planned.ptos} == {cohort_id("g", n, 1000) for n in range(1, 1001)}
    mixed = Roster((("alice", "bob"), Members("fan", 3)))
    assert [mixed[i] for i in range(len(mixed))] == [
        "alice",
        "bob",
        "fan-0001",
        "fan-0002",
        "fan-0003",
    ]
