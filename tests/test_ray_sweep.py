"""Sweeps on Ray (issue 17): the tables of ``sweep --ray`` (a local instance) are
byte-identical to ``--jobs 1``'s; a Ray worker killed mid-cell (after a checkpoint) is
retried by Ray, the cell resumes from its checkpoint and the tables are still identical."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ray_marks import RAY_TESTS
from test_sweep import FESTIVAL, FIXED, GRID, tables

from ublox_sim.sim import sweep as S
from ublox_sim.sim.ray_executor import RayExecutor

if TYPE_CHECKING:
    from ray_cluster import RayCluster

# The session's cluster comes from one plugin, not imported here: a fixture imported
# into each module would be one cluster per module (and Ray keeps the first one's token
# for the process).
pytest_plugins = ("ray_cluster",)
pytestmark = RAY_TESTS
ROOT = Path(__file__).resolve().parents[1]

STALL_AT = 5  # the checkpoint after which the doomed attempt stops (FIXED: every 5 of 10)


def sweep_cli(out: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Ray keeps a token in ~/.ray; `--ray auto` looks in $RAY_TMPDIR/ray for a cluster.
    env = {**os.environ, "NO_COLOR": "1", "HOME": str(home), "RAY_TMPDIR": str(home)}
    env["RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S"] = env["RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S"] = (
        "1"
    )
    for name in ("UBLOX_HOME", "RAY_ADDRESS"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", "sweep", FESTIVAL, *GRID, *args, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serial")
    result = sweep_cli(base / "sweep", base, "--jobs", "1")
    assert result.returncode == 0, result.stderr
    return base / "sweep"


def test_a_sweep_on_a_local_ray_instance_gives_the_tables_of_jobs_1(
    serial: Path, tmp_path: Path
) -> None:
    result = sweep_cli(tmp_path / "sweep", tmp_path, "--ray", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert "sweep: 4 cells in" in result.stderr
    assert "Ray, a local instance of 2 CPU(s)" in result.stderr
    assert tables(tmp_path / "sweep") == tables(serial)
    for cell in (serial / "cells").iterdir():
        twin = tmp_path / "sweep" / "cells" / cell.name / "export.json"
        assert twin.read_bytes() == (cell / "export.json").read_bytes()


def stall_after_checkpoint(
    fn: S.CellFn, fifo: str, marker: str, target: str, cell: S.Cell
) -> S.CellResult:
    """On a Ray worker: the first attempt at cell ``target`` reports its process id
    through ``fifo`` once its checkpoint ``STALL_AT`` is committed, then waits to be
    killed; every other attempt (``marker`` exists) and cell just runs."""
    if cell.cell_id == target and not os.path.exists(marker):
        from ublox_sim.engine import Engine

        original = Engine.checkpoint

        async def checkpoint(self: Engine, version: int, run: object = None) -> None:
            await original(self, version, run)  # type: ignore[arg-type]
            if version == STALL_AT:
                Path(marker).touch()
                Path(fifo).write_text(str(os.getpid()), encoding="ascii")
                threading.Event().wait()  # the test kills this process

        Engine.checkpoint = checkpoint  # type: ignore[method-assign]
    return fn(cell)


class Stalling:
    """An executor that hands ``inner`` the sweep's function wrapped in
    ``stall_after_checkpoint``."""

    def __init__(self, inner: RayExecutor, fifo: Path, marker: Path, target: S.Cell) -> None:
        self.inner, self.jobs = inner, inner.jobs
        self.args = (str(fifo), str(marker), target.cell_id)

    def map(self, fn: S.CellFn, cells: Sequence[S.Cell]) -> Iterator[tuple[S.Cell, S.CellResult]]:
        return self.inner.map(functools.partial(stall_after_checkpoint, fn, *self.args), cells)


def read_within(path: Path, seconds: float) -> str:
    """What a writer puts in the FIFO ``path`` (opening it blocks until one comes)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(path.read_text("ascii")), daemon=True)
    reader.start()
    reader.join(seconds)
    assert got, f"nothing came through {path} in {seconds} s"
    return got[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_ray_worker_killed_mid_cell_is_retried_and_the_cell_resumes_to_the_same_tables(
    ray_cluster: RayCluster, serial: Path, tmp_path: Path
) -> None:
    cells = S.grid(
        FESTIVAL,
        [S.parse_set("world.coupling=0.5,2"), *(S.parse_set(f) for f in FIXED)],
        S.parse_seeds("1-2"),
    )
    target = cells[1]
    fifo, marker = tmp_path / "pid", tmp_path / "stalled"
    os.mkfifo(fifo)
    executor = Stalling(RayExecutor(ray_cluster.address), fifo, marker, target)
    finished: list[S.SweepResult] = []

    def run() -> None:
        try:
            finished.append(S.run_sweep(cells, tmp_path / "sweep", executor))
        finally:
            if not marker.exists():  # never stalled: unblock the reader, to fail below
                fifo.write_text("", encoding="ascii")

    sweeping = threading.Thread(target=run)
    sweeping.start()
    said = read_within(fifo, 180)
    assert said, f"the sweep ended without stalling: {finished}"
    pid = int(said)
    # That process alone: a Ray worker (its title says so) inside cell `target`.
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"), pid
    os.kill(pid, signal.SIGKILL)
    sweeping.join(300)
    assert finished, "the sweep did not finish"
    outcome = {r.cell: r.how for r in finished[0].results}
    assert outcome.pop(target) == "resumed"  # Ray's retry, from checkpoint STALL_AT
    assert set(outcome.values()) == {"ran"}
    assert tables(tmp_path / "sweep") == tables(serial)
    for cell in (serial / "cells").iterdir():
        twin = tmp_path / "sweep" / "cells" / cell.name / "export.json"
        assert twin.read_bytes() == (cell / "export.json").read_bytes()


def test_jobs_with_a_cluster_address_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = sweep_cli(tmp_path / "sweep", tmp_path, "--ray", "auto", "--jobs", "2")
    assert result.returncode == 2
    assert "the cluster's CPUs decide, not --jobs" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_an_address_without_a_cluster_exits_2_before_the_sweep_writes_anything(
    tmp_path: Path,
) -> None:
    # A Ray Client address nobody listens on (`auto` would find the session's cluster
    # among this machine's processes); Ray's 30 s connection timeout cut to 1 s.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # a free port, closed again
        address = f"ray://127.0.0.1:{probe.getsockname()[1]}"
    result = sweep_cli(tmp_path / "sweep", tmp_path, "--ray", address)
    assert result.returncode == 2, result.stderr
    assert f"error: --ray {address}: cannot connect (" in result.stderr
    assert not (tmp_path / "sweep").exists()
