"""Running scenarios through the CLI: every shipped scenario runs and verifies; the report and
export show the seed's numbers; runs are deterministic per seed and recorded; a run killed at
any instant verifies, resumes, and ends with the same export as an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home
from ublox_sim.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
ENV = {**os.environ, "NO_COLOR": "1"}

FESTIVAL_CUT = ("--set", "clock.ticks=30", "--set", "checkpoint_every=5")
STRESS_CUT = (
    "--set",
    "clock.ticks=2",
    "--set",
    "cohorts.0.count=500",
    "--set",
    "pto_cohorts.0.count=5",
)
CROWD_CUT = tuple(
    arg
    for item in ("clock.ticks=6", "cohorts.0.count=400", "pto_cohorts.0.count=8")
    for arg in ("--set", item)
)
# How each shipped scenario is run here (festival and stress cut short) and its ticks.
CUTS: dict[str, tuple[tuple[str, ...], int]] = {
    "harmonic_caverns": ((), 48),
    "festival": (FESTIVAL_CUT, 30),
    "stress": (STRESS_CUT, 2),
    "crowd": (CROWD_CUT, 6),
}
REPORT_KEYS = {"name", "seed", "ticks_run", "ptos", "top_players", "totals", "outcomes"}


def scenario_path(name: str) -> Path:
    return SCENARIOS / f"{name}.yaml"


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def run_row(home: Path) -> tuple[Any, ...] | None:
    db = home / "ublox.db"
    assert db.is_file()
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT name, seed, finished, tick, total_ticks, scenario FROM runs"
        ).fetchone()
    return None if row is None else tuple(row)


# Not state: the lock file holds the last opener's pid; SQLite's sidecars come and go.
TRANSIENT = {".lock", "ublox.db-wal", "ublox.db-shm"}


def snapshot(home: Path) -> dict[str, str]:
    """Every file under ``home`` with the hash of its bytes; the database by its content."""
    files = {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.name not in TRANSIENT
    }
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        dump = "\n".join(conn.iterdump())
    files["ublox.db"] = hashlib.sha256(dump.encode()).hexdigest()
    return files


@dataclass
class Run:
    home: Path
    result: subprocess.CompletedProcess[str]
    seconds: float

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.result.stdout)
        return data

    @property
    def export(self) -> bytes:
        return (self.home / "export.json").read_bytes()


class Runs:
    """Each CLI run once per module (a run costs 1.5 to 5 s)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.done: dict[str, Run] = {}

    def get(self, key: str, scenario: str, *args: str) -> Run:
        if key not in self.done:
            home = self.base / key
            started = time.perf_counter()
            result = cli("run", str(scenario_path(scenario)), "--home", str(home), *args)
            self.done[key] = Run(home, result, time.perf_counter() - started)
        return self.done[key]

    def shipped(self, name: str) -> Run:
        return self.get(name, name, *CUTS[name][0], "--json")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"))


# -- every shipped scenario ----------------------------------------------------------------------


def test_every_shipped_scenario_is_covered() -> None:
    assert {p.stem for p in SCENARIOS.glob("*.yaml")} == set(CUTS)


@pytest.mark.parametrize("name", sorted(CUTS))
def test_shipped_scenario_runs_and_verifies(runs: Runs, name: str) -> None:
    run = runs.shipped(name)
    assert run.result.returncode == 0, run.result.stderr
    assert verify_store(run.home) == []
    report = run.report
    assert REPORT_KEYS <= set(report)
    assert report["name"] == name
    ticks = CUTS[name][1]
    assert report["ticks_run"] == ticks
    assert report["total_ticks"] == ticks
    assert report["resumed_from"] is None
    export = json.loads(run.export)
    assert export["run"]["finished"] is True
    assert export["run"]["tick"] == ticks
    assert len(export["ptos"]) == len(report["ptos"]) >= 1
    row = run_row(run.home)
    assert row is not None
    assert row[:5] == (name, report["seed"], 1, ticks, ticks)


def test_json_report_of_harmonic_caverns(runs: Runs) -> None:
    report = runs.shipped("harmonic_caverns").report
    assert REPORT_KEYS <= set(report)
    assert (report["name"], report["seed"], report["ticks_run"]) == ("harmonic_caverns", 42, 48)
    # The story: five buys fund the PTO, alice builds it, everyone plays.
    [pto] = report["ptos"]
    assert pto["pto_id"] == "pto_harmonic_001"
    assert pto["status"] == "completed"
    assert pto["pts_sold"] == pto["pts_offered"] == 200
    assert pto["funding_raised"] == pto["funding_goal"] == "5000.00"
    assert pto["atu_spent"] == pto["atu_required"] == 500
    assert {k: report["outcomes"].get(k) for k in ("buy", "deposit", "transfer", "launch")} == {
        "buy": 5,
        "deposit": 1,
        "transfer": 1,
        "launch": 1,
    }
    assert not any(k.endswith(("_refused", "_invalid")) for k in report["outcomes"])
    players = {p["player_id"]: p for p in report["top_players"]}
    assert set(players) == {"alice", "bob", "carol", "dave", "erin"}
    assert all(float(p["xUSD_balance"]) > 0 for p in players.values())
    xusd = [float(p["xUSD_balance"]) for p in report["top_players"]]
    assert xusd == sorted(xusd, reverse=True)
    assert report["totals"]["players"]["count"] == 5
    assert report["totals"]["ptos"]["count"] == 1


def test_harmonic_caverns_export_shows_the_seeds_numbers(runs: Runs) -> None:
    run = runs.shipped("harmonic_caverns")
    export = json.loads(run.export)
    alice_tokens = sorted(
        (t for t in export["pts_tokens"] if t["holder"] == "alice"), key=lambda t: t["token_id"]
    )
    first = alice_tokens[0]
    assert first["game_id"] == "pto_harmonic_001"
    assert first["hours_committed"] == 40.0
    assert first["purchase_price"] == 1000.0
    investments = [
        t
        for t in export["transactions"]
        if t["tx_type"] == "investment" and t["from_player"] == "alice"
    ]
    assert investments, export["transactions"][:10]
    assert investments[0]["amount"] == 1000.0
    assert investments[0]["currency"] == "USD-OBBBA"
    assert investments[0]["pto_id"] == "pto_harmonic_001"
    deposits = {
        t["to_player"]: t["amount"]
        for t in export["transactions"]
        if t["tx_type"] == "deposit" and t["timestamp"].startswith("2025-12-12 16:00")
    }
    assert deposits == {
        "alice": 5000.0,
        "bob": 2000.0,
        "carol": 1500.0,
        "dave": 1000.0,
        "erin": 800.0,
    }


# -- determinism and the runs table -----------------------------------------------------------


def test_same_scenario_and_seed_give_identical_export_bytes(runs: Runs) -> None:
    first = runs.shipped("harmonic_caverns")
    again = runs.get("harmonic-again", "harmonic_caverns")  # the human report this time
    assert again.result.returncode == 0, again.result.stderr
    assert "harmonic_caverns (seed 42)" in again.result.stdout
    assert "operations:" in again.result.stdout
    assert first.export == again.export


def test_another_seed_gives_another_export(runs: Runs) -> None:
    first = runs.shipped("harmonic_caverns")
    other = runs.get("harmonic-seed-43", "harmonic_caverns", "--seed", "43", "--json")
    assert other.result.returncode == 0, other.result.stderr
    assert other.report["seed"] == 43
    assert verify_store(other.home) == []
    assert first.export != other.export
    assert json.loads(other.export)["run"]["seed"] == 43


def test_the_run_is_recorded_with_its_resolved_scenario(runs: Runs) -> None:
    row = run_row(runs.shipped("harmonic_caverns").home)
    assert row is not None
    name, seed, finished, tick, total, scenario = row
    assert (name, seed, finished, tick, total) == ("harmonic_caverns", 42, 1, 48, 48)
    recorded = json.loads(scenario)
    assert recorded["seed"] == 42
    assert recorded["clock"]["ticks"] == 48
    assert [p["id"] for p in recorded["players"]] == ["alice", "bob", "carol", "dave", "erin"]

    # --set and --seed are recorded as resolved.
    row = run_row(runs.shipped("festival").home)
    assert row is not None
    recorded = json.loads(row[5])
    assert (recorded["clock"]["ticks"], recorded["checkpoint_every"]) == (30, 5)
    other = runs.get("harmonic-seed-43", "harmonic_caverns", "--seed", "43", "--json")
    row = run_row(other.home)
    assert row is not None
    assert row[1] == 43
    assert json.loads(row[5])["seed"] == 43


# -- crash and resume ------------------------------------------------------------------------------


def _wait_for_checkpoint(
    home: Path, proc: subprocess.Popen[bytes], tick: int, deadline: float
) -> None:
    """Until the run's checkpoint row says ``tick`` or later, or the process ends."""
    db = home / "ublox.db"
    while proc.poll() is None and time.monotonic() < deadline:
        if db.is_file():
            try:
                with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
                    row = conn.execute("SELECT MAX(tick) FROM runs").fetchone()
                    if row is not None and row[0] is not None and row[0] >= tick:
                        return
            except sqlite3.Error:
                pass
        time.sleep(0.01)


@pytest.fixture
def killed_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_killed_run_verifies_and_resumes_to_the_same_export(
    runs: Runs, tmp_path: Path, killed_processes: list[subprocess.Popen[bytes]]
) -> None:
    reference = runs.shipped("festival")
    assert reference.result.returncode == 0, reference.result.stderr
    expected = reference.export
    festival = str(scenario_path("festival"))
    # Killed once its checkpoint of tick 5, 10 or 15 is written, plus up to a tick's time:
    # mid-run whatever the machine's speed (a kill at a fixed time after the start missed
    # the whole run on a fast machine), at a different place of a tick each time.
    rng = random.Random(20251212)
    per_tick = reference.seconds / 30
    instants = [(tick, rng.uniform(0.0, per_tick)) for tick in (5, 10, 15)]
    killed_mid_run = 0
    for n, (after, instant) in enumerate(instants):
        home = tmp_path / f"killed-{n}"
        with (tmp_path / f"killed-{n}.stderr").open("wb") as stderr:
            started = time.monotonic()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ublox_sim",
                    "run",
                    festival,
                    "--home",
                    str(home),
                    *FESTIVAL_CUT,
                ],
                env=ENV,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            killed_processes.append(proc)
            _wait_for_checkpoint(home, proc, after, started + 120)
            time.sleep(instant)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

        assert verify_store(home) == [], f"kill {instant:.2f} s after tick {after}"
        with closing(sqlite3.connect(home / "ublox.db")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        row = run_row(home)
        assert row is not None, f"kill {instant:.2f} s after tick {after} left no run"
        _, _, finished, tick, total, _ = row
        assert total == 30
        assert tick % 5 == 0  # reopened exactly at a checkpoint
        if proc.returncode == -signal.SIGKILL and not finished:
            killed_mid_run += 1
            assert not (home / "export.json").exists()

        result = cli("run", festival, "--home", str(home), "--resume", *FESTIVAL_CUT, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["resumed_from"] == tick
        assert report["ticks_run"] == 30 - tick
        assert (home / "export.json").read_bytes() == expected, (
            f"kill {instant:.2f} s after tick {after}"
        )
        assert verify_store(home) == []
        row = run_row(home)
        assert row is not None
        assert row[2:5] == (1, 30, 30)
    assert killed_mid_run >= 1, instants


def test_resume_without_the_scenario_argument(runs: Runs, tmp_path: Path) -> None:
    reference = runs.shipped("harmonic_caverns")
    home = tmp_path / "stopped"
    loaded = load_scenario(scenario_path("harmonic_caverns"))
    stopped = anyio.run(partial(run_scenario, loaded, Home.resolve(home), stop_after_ticks=20))
    assert stopped.ticks_run == 20
    assert not (home / "export.json").exists()
    assert verify_store(home) == []
    checkpoint = 20 - 20 % loaded.scenario.checkpoint_every
    row = run_row(home)
    assert row is not None
    assert row[2:4] == (0, checkpoint)

    result = cli("run", "--resume", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resumed_from"] == checkpoint
    assert report["ticks_run"] == 48 - checkpoint
    assert (home / "export.json").read_bytes() == reference.export
    assert verify_store(home) == []


def test_resume_on_an_empty_home_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = cli("run", "--resume", "--home", str(missing))
    assert result.returncode == 2, result.stderr
    assert "nothing to resume" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("run", str(scenario_path("harmonic_caverns")), "--resume", "--home", str(empty))
    assert result.returncode == 2, result.stderr
    assert "nothing to resume" in result.stderr
    assert not (empty / "export.json").exists()
    if (empty / "ublox.db").exists():
        assert run_row(empty) is None


def test_run_without_scenario_or_resume_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("run", "--home", str(tmp_path / "h"))
    assert result.returncode == 2
    assert "give a SCENARIO file" in result.stderr
    assert not (tmp_path / "h").exists()


def test_new_run_into_a_home_with_a_run_exits_2_and_changes_nothing(runs: Runs) -> None:
    used = runs.get("harmonic-seed-43", "harmonic_caverns", "--seed", "43", "--json")
    assert used.result.returncode == 0, used.result.stderr
    before = snapshot(used.home)
    assert "export.json" in before

    harmonic = str(scenario_path("harmonic_caverns"))
    result = cli("run", harmonic, "--home", str(used.home), "--seed", "43")
    assert result.returncode == 2, result.stderr
    # The run is finished: nothing to resume, so the message does not offer --resume.
    assert "holds a finished run of harmonic_caverns; use a new --home" in result.stderr
    assert snapshot(used.home) == before

    # Resuming it with another scenario (here: another seed) is refused too.
    result = cli("run", harmonic, "--home", str(used.home), "--resume", "--seed", "7")
    assert result.returncode == 2, result.stderr
    assert "is not the scenario of the run" in result.stderr
    assert snapshot(used.home) == before
    assert verify_store(used.home) == []
