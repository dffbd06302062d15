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
