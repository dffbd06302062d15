"""RayExecutor on a real Ray cluster (tests/ray_cluster.py), with small functions for
cells: every cell's result comes back once, a cell's error is that cell's, a killed
worker's task is retried, a local instance is started and stopped with the run."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from ray_cluster import ROOT, RayCluster, needs_ray, ray_cluster

from ublox_sim.core.errors import InvalidInput, RuntimeFailure
from ublox_sim.sim.ray_executor import CellLost, RayExecutor, run_on_worker

pytestmark = needs_ray
__all__ = ["ray_cluster"]  # the session fixture, imported for pytest to find


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def test_every_cell_comes_back_once_with_its_result(ray_cluster: RayCluster) -> None:
    results = dict(RayExecutor(ray_cluster.address).map(square, range(6)))
    assert results == {x: x * x for x in range(6)}


def test_a_cell_error_is_that_cells_and_the_others_finish(ray_cluster: RayCluster) -> None:
    executor = RayExecutor(ray_cluster.address, lost=lambda cell, why: f"lost {cell}: {why}")
    results = dict(executor.map(fail_on_three, range(5)))
    assert results.pop(3) == "lost 3: ValueError: three is not allowed"
    assert results == {0: 0, 1: 1, 2: 2, 4: 4}
    with pytest.raises(CellLost, match=r"^3: ValueError: three is not allowed"):
        dict(RayExecutor(ray_cluster.address).map(fail_on_three, [3]))


def stall_once(fifo: str, marker: str, x: int) -> int:
    """Cell 1's first attempt reports its worker's pid through ``fifo`` and waits to be
    killed; its retry (``marker`` exists) runs."""
    if x == 1 and not os.path.exists(marker):
        Path(marker).touch()
        with open(fifo, "w", encoding="ascii") as out:
            out.write(str(os.getpid()))
        threading.Event().wait()
    return x * 10


def read_within(path: Path, seconds: float) -> str:
    """What a writer puts in the FIFO ``path`` (opening it blocks until one comes)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(path.read_text("ascii")), daemon=True)
    reader.start()
    reader.join(seconds)
    assert got, f"nothing came through {path} in {seconds} s"
    return got[0]


def test_a_killed_workers_task_is_retried_and_the_map_completes(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    fifo, marker = tmp_path / "pid", tmp_path / "stalled"
    os.mkfifo(fifo)
    results: dict[int, int] = {}
    fn = functools.partial(stall_once, str(fifo), str(marker))
    mapping = threading.Thread(
        target=lambda: results.update(RayExecutor(ray_cluster.address).map(fn, range(4)))
    )
    mapping.start()
    pid = int(read_within(fifo, 120))
    # That process alone: a Ray worker (its title says so) running cell 1.
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"), pid
    os.kill(pid, signal.SIGKILL)
    mapping.join(120)
    assert not mapping.is_alive()
    assert results == {0: 0, 1: 10, 2: 20, 3: 30}
    assert not Path(f"/proc/{pid}").exists()


def test_a_local_instance_is_started_for_the_run_and_stopped_after_it(
    ray_cluster: RayCluster,
) -> None:
    # In a fresh process: nothing of Ray is left behind in it (its environment) or
    # after it (no process runs from the instance's folder).
    probe = (
        "import os, ray\n"  # importing Ray sets RAY_CLIENT_MODE: not the run's doing
        "from ublox_sim.sim.ray_executor import RayExecutor\n"
        "before = dict(os.environ)\n"
        "from test_ray_executor import square\n"
        "print(sorted(RayExecutor(num_cpus=2).map(square, range(3))))\n"
        "print(ray.is_initialized(), {k for k in os.environ if before.get(k) != os.environ[k]})\n"
    )
    temp = ray_cluster.temp_dir / "local"
    temp.mkdir()
    env = {**ray_cluster.env, "TMPDIR": str(temp)}
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key)
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[(0, 0), (1, 1), (2, 4)]", "False set()"]
    assert list(temp.iterdir()) == []  # its folder removed
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(temp) not in ps.stdout


def test_a_worker_with_another_ublox_sim_version_is_refused() -> None:
    with pytest.raises(RuntimeFailure, match=r"has ublox-sim .*, the driver 0\.0\.0"):
        run_on_worker(square, 2, "0.0.0")


def test_bad_settings_are_refused_before_ray_is_touched() -> None:
    with pytest.raises(InvalidInput, match="address is empty"):
        RayExecutor(" ")
    with pytest.raises(InvalidInput, match="CPUs: 0"):
        RayExecutor(num_cpus=0)
