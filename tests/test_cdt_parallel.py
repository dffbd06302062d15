"""World files written on several threads at once, superseded versions pruned off the loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ublox_sim.store import cdt as cdt_module
from ublox_sim.store.cdt import CdtStore

pytestmark = pytest.mark.anyio


async def test_a_checkpoints_worlds_are_written_in_parallel_and_old_versions_pruned(
    tmp_path: Path,
) -> None:
    store = CdtStore(tmp_path / "cdt")
    rng = np.random.default_rng(1)
    ids = [f"w{k}" for k in range(6)]
    for version in (1, 2):
        arrays = {w: {"theta": rng.random((16, 16)), "omega": rng.random((16, 16))} for w in ids}
        for w in ids:
            store.mark_dirty(w, arrays[w], version=version)
        written = await store.flush()
        assert len(written) == 6
    store.mark_dirty("other", {"theta": np.zeros(2)}, version=1)  # not pruned: not named
    await store.flush()
    await store.aprune(ids, 2)
    names = sorted(p.name for p in store.files())
    assert names == sorted([f"{w}.v2.npz" for w in ids] + ["other.v1.npz"])
    for w in ids:
        assert store.load(w, 2)["theta"].tobytes() == arrays[w]["theta"].tobytes()
    assert cdt_module.WRITERS >= 1 and store.files_written == 13


async def test_opening_a_store_removes_world_files_its_database_does_not_name(
    tmp_path: Path,
) -> None:
    # A process killed between a checkpoint's commit and its pruning leaves the older
    # version beside the new one (and one killed mid-checkpoint, a newer uncommitted one):
    # the next open keeps only what the database names.
    import shutil
    import sqlite3
    from contextlib import closing

    from ublox_sim import Engine
    from ublox_sim.sim.runner import run_scenario
    from ublox_sim.sim.scenario import load_scenario
    from ublox_sim.store.cdt import world_file_name
    from ublox_sim.store.home import Home

    scenarios = Path(__file__).resolve().parent.parent / "scenarios"
    home = Home.resolve(tmp_path / "home")
    await run_scenario(load_scenario(scenarios / "harmonic_caverns.yaml"), home)
    with closing(sqlite3.connect(home.db)) as conn:
        named = {world_file_name(w, v) for w, v in conn.execute("SELECT * FROM cdt_files")}
    assert named
    first = sorted(named)[0]
    world, _, version = first.removesuffix(".npz").rpartition(".v")
    older = home.cdt_dir / world_file_name(world, int(version) - 1)
    newer = home.cdt_dir / world_file_name(world, int(version) + 1)
    for stray in (older, newer):
        shutil.copy(home.cdt_dir / first, stray)
    unrelated = home.cdt_dir / "not-a-world.txt"
    unrelated.write_text("kept")

    async with Engine.open(home.root):
        pass
    left = {p.name for p in home.cdt_dir.iterdir() if p.suffix == ".npz"}
    assert left == named
    assert unrelated.read_text() == "kept"
