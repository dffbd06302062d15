"""Scenario runs with the ticks' physics in a worker process (``run --physics``): the
same bytes as the golden export; a worker SIGKILLed mid-run fails the run with a clear
``RuntimeFailure`` (no hang), and the run resumes from its last checkpoint to the same
bytes; the CLI's choice of where the physics runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio
import pytest

from ublox_sim.core.errors import RuntimeFailure
from ublox_sim.core.world import WorldParams
from ublox_sim.sim.process_shards import PhysicsStats, ProcessWorldShards
from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home

ROOT = Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "harmonic_caverns.export.json"
SCENARIO = ROOT / "scenarios" / "harmonic_caverns.yaml"  # 48 ticks, a checkpoint every 6


def test_a_worker_killed_mid_run_fails_the_run_and_it_resumes_to_the_golden_bytes(
    tmp_path: Path,
) -> None:
    loaded = load_scenario(SCENARIO)
    home = Home.resolve(tmp_path / "home")
    made: list[ProcessWorldShards] = []
    ticks = [0]

    def killing(params: WorldParams) -> ProcessWorldShards:
        worlds = ProcessWorldShards(params)

        def sent(pid: int) -> None:
            ticks[0] += 1
            if ticks[0] == 15:  # mid-tick, after the checkpoint of tick 12
                os.kill(pid, signal.SIGKILL)

        worlds.on_sent = sent
        made.append(worlds)
        return worlds

    with pytest.raises(RuntimeFailure, match=r"physics worker process .* killed by SIGKILL"):
        anyio.run(partial(run_scenario, loaded, home, worlds=killing))
    (killed,) = made
    assert killed.stats.pids and not Path(f"/proc/{killed.stats.pids[0]}").exists()
    stats = PhysicsStats()
    report = anyio.run(
        partial(
            run_scenario, loaded, home, resume=True, worlds=partial(ProcessWorldShards, stats=stats)
        )
    )
    assert report.resumed_from == 12
    assert (home.root / "export.json").read_bytes() == GOLDEN.read_bytes()
    assert stats.ticks == 48 - 12 and stats.peak_rss_kb > 0  # closed with the engine


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ublox_sim", "run", str(SCENARIO)]
    command += ["--home", str(tmp_path / "home"), "--json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("physics", ["thread", "process"])
def test_run_says_where_its_physics_ran(tmp_path: Path, physics: str) -> None:
    done = _run(tmp_path, "--physics", physics)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["physics"]
    assert figures["mode"] == physics and figures["main_peak_rss_kb"] > 0
    if physics == "process":
        assert figures["ticks"] == 48 and figures["worker_peak_rss_kb"] > 0
        (pid,) = figures["worker_pids"]
        assert not Path(f"/proc/{pid}").exists()


def test_physics_process_is_not_for_ray(tmp_path: Path) -> None:
    done = _run(tmp_path, "--physics", "process", "--ray")
    assert done.returncode != 0
    assert "--physics process is not for --ray" in done.stderr


def test_auto_takes_the_process_only_with_two_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from ublox_sim.cli import _physics_in_process

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not _physics_in_process("auto")
    assert _physics_in_process("process") and not _physics_in_process("thread")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
    assert _physics_in_process("auto")
