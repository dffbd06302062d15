"""`run`'s options checked before anything runs, and the Ctrl-C hint giving back every
option that matters (followed literally, it finishes the run with its metrics)."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ublox_sim.sim.scenario import ScenarioError, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
HARMONIC = str(ROOT / "scenarios" / "harmonic_caverns.yaml")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("UBLOX_HOME", None)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_metrics_in_a_missing_folder_is_refused_before_the_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    target = tmp_path / "no" / "such" / "m.csv"
    result = cli("run", HARMONIC, "--home", str(home), "--metrics", str(target))
    assert result.returncode == 2, result.stderr
    assert f"error: --metrics {target}: {target.parent} does not exist" in result.stderr
    assert not home.exists()


def test_resume_without_the_file_refuses_seed_and_set(tmp_path: Path) -> None:
    """Without the file a resume runs the recorded scenario: --seed and --set were ignored
    (exit 0) while with the file a mismatch is refused."""
    home = tmp_path / "home"
    result = cli("run", "--resume", "--home", str(home), "--seed", "99", "--set", "world.size=8")
    assert result.returncode == 2, result.stderr
    assert "--seed and --set change a scenario: to resume, give its file" in result.stderr
    assert not home.exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param(
            "clock.ticks=",
            "base.yaml:3 (after --set 'clock.ticks='): clock: give exactly one of ticks or "
            "duration_hours",
            id="section-check",
        ),
        pytest.param(
            "cohorts.0.usd_obbba.dist=normal",
            "base.yaml:17 (after --set 'cohorts.0.usd_obbba.dist=normal'): "
            "cohorts[0].usd_obbba.mean: required key is missing",
            id="sibling-keys",
        ),
    ],
)
def test_a_problem_an_override_caused_in_the_file_names_the_override(
    override: str, expected: str
) -> None:
    from test_scenario import BASE

    with pytest.raises(ScenarioError) as info:
        parse_scenario(BASE, "base.yaml", overrides=[override])
    assert info.value.problems[0].startswith(expected), info.value.problems


def test_the_ctrl_c_hint_keeps_metrics_and_following_it_finishes_the_run(
    tmp_path: Path,
) -> None:
    home, table = tmp_path / "cut", tmp_path / "m.csv"
    # Long enough that a SIGINT sent at the first checkpoint lands mid-run, short enough
    # that the resume finishes in a second or two on a world of 8x8.
    options = ("--set", "clock.ticks=400", "--set", "world.size=8", "--seed", "5")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ublox_sim",
            "-v",
            "run",
            HARMONIC,
            "--home",
            str(home),
            *options,
            "--metrics",
            str(table),
        ],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # -v logs each checkpoint: interrupt once one is durable
        if "run.checkpoint" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    (message,) = [line for line in err.splitlines() if line.startswith("interrupted at tick ")]
    hint = message.split("continue with `")[1].rstrip("`")
    assert hint == shlex.join(
        [
            "ublox-sim",
            "run",
            HARMONIC,
            *options[:4],
            "--seed",
            "5",
            "--resume",
            "--home",
            str(home),
            "--metrics",
            str(table),
        ]
    )
    assert not table.exists()
    again = cli(*shlex.split(hint)[1:])
    assert again.returncode == 0, again.stderr
    with table.open(encoding="utf-8") as f:
        ticks = {row["tick"] for row in csv.DictReader(f)}
    assert {"0", "400"} <= ticks
