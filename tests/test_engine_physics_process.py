"""An embedded engine that asks for it (``Engine.open(worlds=ProcessWorldShards)``) steps
its ticks in a worker process: the same results as the thread, worlds read and written by
its PTOs (plays, passivation) between ticks, and the worker stopped when the engine closes.
An engine that does not ask keeps the thread: a library spawns no process unasked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from test_tick import _open, _setup

from ublox_sim.core.errors import UbloxError
from ublox_sim.core.shard import WorldShards
from ublox_sim.sim.process_shards import ProcessWorldShards

pytestmark = pytest.mark.anyio


async def _ticks(home: Path, **kwargs: Any) -> tuple[list[object], WorldShards]:
    async with _open(home, **kwargs) as engine:
        await _setup(engine)
        out: list[object] = []
        for k in range(3):
            results, _ = await engine.tick(
                1.0, [("g1", "alice", 1.0), ("g1", "bob", 0.5), ("g2", "bob", 0.25)]
            )
            out += [r if isinstance(r, UbloxError) else (r.quality, r.tau_k_after) for r in results]
            if k == 1:  # a play between ticks: its PTO steps its world on the loop
                played = await engine.play("alice", "g2", 0.5)
                out.append(played.quality)
        out.append((await engine.world("g1"))["theta"].tobytes())
        out.append(await engine.get_player("bob"))
        worlds = engine.worlds
    return out, worlds


async def test_an_engine_asking_for_the_process_gets_the_threads_results_and_closes_it(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(120):
        thread, default = await _ticks(tmp_path / "thread")
        process, worlds = await _ticks(tmp_path / "process", worlds=ProcessWorldShards)
    assert type(default) is WorldShards
    assert isinstance(worlds, ProcessWorldShards)
    assert process == thread
    assert worlds.stats.ticks == 3 and worlds.stats.peak_rss_kb > 0  # stopped at close
    (pid,) = worlds.stats.pids
    assert worlds.pid is None and not Path(f"/proc/{pid}").exists()
