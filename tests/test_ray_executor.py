"""RayExecutor on a real Ray cluster (tests/ray_cluster.py), with small functions for
cells: every cell's result comes back once, a cell's error is that cell's, a local
instance is started and stopped with the run and leaves nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ray_marks import RAY_TESTS

from ublox_sim.core.errors import InvalidInput, RuntimeFailure
from ublox_sim.sim.ray_executor import RayExecutor, run_on_worker
from ublox_sim.sim.sweep import Cell, CellResult

if TYPE_CHECKING:
    from ray_cluster import RayCluster

# The session's cluster comes from one plugin, not imported here: a fixture imported
# into each module would be one cluster per module (and Ray keeps the first one's token
# for the process).
pytest_plugins = ("ray_cluster",)
pytestmark = RAY_TESTS
ROOT = Path(__file__).resolve().parents[1]

CELLS = [Cell("x.yaml", (("k", "v"),), seed) for seed in range(5)]


def square(cell: Cell) -> CellResult:
    if cell.seed == 3:
        raise ValueError("three is not allowed")
    return CellResult(cell, rows=[{"tick": 0, "x": cell.seed**2}])


def test_every_cell_comes_back_once_a_raising_cell_as_its_failure(
    ray_cluster: RayCluster,
) -> None:
    results = dict(RayExecutor(ray_cluster.address).map(square, CELLS))
    assert sorted(results, key=Cell.sort_key) == CELLS
    assert {c.seed: r.rows for c, r in results.items() if r.ok} == {
        s: [{"tick": 0, "x": s * s}] for s in (0, 1, 2, 4)
    }
    failed = results[CELLS[3]]
    assert (failed.cell, failed.how, failed.error) == (
        CELLS[3],
        "error",
        "ValueError: three is not allowed",
    )


def probe(code: str, env: dict[str, str]) -> list[str]:
    """Lines ``code`` prints, run in a fresh process from the checkout."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_local_instance_is_started_for_the_run_and_stopped_after_it(
    ray_cluster: RayCluster,
) -> None:
    # In a fresh process: nothing of Ray is left behind in it (its environment) or
    # after it (its folder, and so no process running from it).
    code = (
        "import os, ray\n"  # importing Ray sets RAY_CLIENT_MODE: not the run's doing
        "from ublox_sim.sim.ray_executor import RayExecutor\n"
        "from test_ray_executor import CELLS, square\n"
        "before = dict(os.environ)\n"
        "results = RayExecutor(num_cpus=2).map(square, CELLS[:3])\n"
        "print(sorted(c.seed for c, r in results if r.ok))\n"
        "print(ray.is_initialized(), {k for k in os.environ if before.get(k) != os.environ[k]})\n"
    )
    temp = ray_cluster.temp_dir / "local"
    temp.mkdir()
    env = {**ray_cluster.env, "TMPDIR": str(temp)}
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key)
    assert probe(code, env) == ["[0, 1, 2]", "False set()"]
    assert list(temp.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(temp) not in ps.stdout


def test_a_worker_with_another_ublox_sim_version_is_refused() -> None:
    with pytest.raises(RuntimeFailure, match=r"has ublox-sim .*, the driver 0\.0\.0"):
        run_on_worker(square, CELLS[0], "0.0.0", str(ROOT))


def test_bad_settings_are_refused_before_ray_is_touched() -> None:
    with pytest.raises(InvalidInput, match="address is empty"):
        RayExecutor(" ")
    with pytest.raises(InvalidInput, match="CPUs: 0"):
        RayExecutor(num_cpus=0)
