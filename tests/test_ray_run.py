"""A scenario on Ray (issue 17): the export of ``run --ray`` (its world shards in Ray
actors) is byte-identical to a local run's; a shard actor's worker killed mid-run (after a
checkpoint) is noticed, the run resumes in-process from that checkpoint and ends with the
same export."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import numpy as np
import pytest
from ray_marks import RAY_TESTS

from ublox_sim.core.shard import Sessions, Shard, TickOutcome, WorldShards
from ublox_sim.core.world import WorldParams, new_world
from ublox_sim.sim.ray_executor import RayExecutor, _ray
from ublox_sim.sim.ray_shards import RayOutcome, RayRun, ShardPool, run_on_ray
from ublox_sim.sim.runner import RunReport, run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home

if TYPE_CHECKING:
    from ray_cluster import RayCluster

pytest_plugins = ("ray_cluster",)
pytestmark = RAY_TESTS
ROOT = Path(__file__).resolve().parents[1]

# Five worlds, sessions every tick, checkpoints at 4, 8 and 12; PTOs with a 3-hour
# deadline fail and refund their holders, the others are funded, built and completed.
SMALL = """
name: ray_small
seed: 7
clock: {start: "2026-01-01T00:00:00Z", tick_hours: 1, ticks: 12}
checkpoint_every: 4
world: {size: 16, steps_per_hour: 4}
cohorts:
  - prefix: fan
    count: 40
    usd_obbba: {dist: uniform, low: 500, high: 3000}
    tau_k: {dist: uniform, low: 1, high: 9}
pto_cohorts:
  - {prefix: game, count: 5, creators: fan, atu_required: 40, pts_offered: 200,
     price_per_pts: 5, funding_deadline_hours: {dist: choice, values: [3, 30]}}
behaviours:
  investors: [{who: fan, probability: 0.3, hours: 10}]
  players: [{who: fan, probability: 0.5, hours: {dist: uniform, low: 0.5, high: 2}}]
  creators: {atu_per_tick: 50}
"""
KILL_AFTER = 5  # ticks: after the checkpoint of tick 4, before the end (12)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def serial(scenario: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The export of the scenario run in one process, without Ray."""
    home = Home.resolve(tmp_path_factory.mktemp("serial") / "home")
    report = anyio.run(lambda: run_scenario(load_scenario(scenario), home))
    assert report.outcomes["play"] > 0
    assert {p["status"] for p in report.ptos} == {"completed", "failed"}  # refunds too
    return (home.root / "export.json").read_bytes()


def test_run_on_a_local_ray_instance_exports_the_bytes_of_a_local_run(
    scenario: Path, serial: bytes, tmp_path: Path
) -> None:
    env = {**os.environ, "NO_COLOR": "1", "HOME": str(tmp_path)}
    for name in ("UBLOX_HOME", "RAY_ADDRESS"):
        env.pop(name, None)
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "run", str(scenario), "--home", str(home),
         "--ray", "--ray-workers", "2", "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (home / "export.json").read_bytes() == serial


def test_a_killed_shard_worker_is_noticed_and_the_run_resumes_to_the_same_export(
    ray_cluster: RayCluster, scenario: Path, serial: bytes, tmp_path: Path
) -> None:
    pools: list[ShardPool] = []
    killed: list[int] = []

    def kill_a_shard(done: int, total: int) -> None:
        # Told after each tick (and its checkpoint): the first actor's worker, once.
        if done == KILL_AFTER and not killed:
            pid = pools[0].pids[0]
            assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"), pid
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    home = Home.resolve(tmp_path / "home")
    outcome = RayOutcome()

    async def run() -> RunReport:
        return await run_on_ray(
            load_scenario(scenario),
            home,
            RayRun(ray_cluster.address, workers=2),
            on_pool=pools.append,
            outcome=outcome,
            progress=kill_a_shard,
        )

    report = anyio.run(run)
    assert killed, "the run ended before the kill"
    assert outcome.shipping.losses == 1
    assert report.resumed_from == 4  # the last checkpoint before the kill
    assert len(set(outcome.pids)) == 2 and killed[0] not in outcome.pids  # restarted
    assert (home.root / "export.json").read_bytes() == serial


def test_ray_workers_without_ray_is_refused(scenario: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "run", str(scenario), "--home",
         str(tmp_path / "home"), "--ray-workers", "2"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--ray-workers needs --ray" in result.stderr
    assert not (tmp_path / "home").exists()


def _ticks(worlds: WorldShards, seed: int) -> list[tuple[Shard, Sessions]]:
    """Sessions on every shard's worlds (several per world, cells repeated), unsorted."""
    rng = np.random.default_rng(seed)
    work = []
    for shard in worlds.shards:
        m = 3 * len(shard)
        work.append(
            (
                shard,
                Sessions(
                    slot=rng.integers(0, len(shard), m),
                    cells_y=rng.integers(0, 3, m),
                    cells_x=rng.integers(0, 3, m),
                    phase=rng.uniform(0, 2 * np.pi, m),
                    freq=rng.normal(1.0, 0.1, m),
                    tau_k=rng.uniform(0.5, 10, m),
                    steps=rng.integers(0, 5, m),
                ),
            )
        )
    return work


async def _step(worlds: WorldShards, seed: int, commit: int) -> list[TickOutcome]:
    """A tick whose first ``commit`` shards stand (the next one's body raises)."""
    got = []
    with contextlib.suppress(LookupError):
        ticked = worlds.ticked(_ticks(worlds, seed), 4)
        async with contextlib.aclosing(ticked):
            async for k, outcome in ticked:
                if k == commit:
                    raise LookupError("this unit is refused")
                got.append(outcome)
    return got


def test_ray_shards_step_and_undo_as_local_shards_do(ray_cluster: RayCluster) -> None:
    """Seven worlds in shards of at most 3 (three units a tick), spread over 2 actors: the
    same outcomes and arrays, bit for bit, as local shards; a tick whose second unit is
    refused keeps the first shard's step and puts the others back; a removed world's slot
    is taken by the last, on the driver as in the actor."""
    params = WorldParams(size=8)
    rng = np.random.default_rng(11)
    arrays = {f"w{k}": new_world(params, rng) for k in range(7)}
    with RayExecutor(ray_cluster.address) as cluster:
        pool = ShardPool(_ray(), 2, float(cluster.jobs), 0)
        try:
            remote, local = pool.worlds(params), WorldShards(params)
            for worlds in (remote, local):
                worlds.per_shard = 3
                for world_id, w in arrays.items():
                    worlds.put(world_id, w["theta"], w["omega"])
                worlds.remove("w1")
            assert [s.ids for s in remote.shards] == [s.ids for s in local.shards]
            assert len(remote.shards) == 3
            for seed, commit in ((1, 3), (2, 1), (3, 3)):
                ours = anyio.run(_step, remote, seed, commit)
                theirs = anyio.run(_step, local, seed, commit)
                assert len(ours) == len(theirs) == commit
                for a, b in zip(ours, theirs, strict=True):
                    for name in TickOutcome.__slots__:
                        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
                for world_id in local.ids():
                    for name, value in local.arrays(world_id).items():
                        assert remote.arrays(world_id)[name].tobytes() == value.tobytes()
            assert pool.shipping.ticks == 3
        finally:
            pool.close()
