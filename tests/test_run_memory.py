"""Runs too big for memory: one above the machine's physical memory is refused before
anything is created; one that runs out of memory on the way (a real address-space cap,
``RLIMIT_AS``) ends with one line naming the cause and the command that continues it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ublox_sim.core.shard import WorldShards
from ublox_sim.sim import scenario as S
from ublox_sim.sim.runner import physical_memory

ROOT = Path(__file__).resolve().parents[1]

WORLDS = """\
name: too_big
seed: 1
clock: {{ticks: 2}}
world: {{size: {size}}}
players: [{{id: a, usd_obbba: 1000000}}]
pto_cohorts:
  - {{prefix: g, count: {count}, creators: [a], atu_required: 1, pts_offered: 1,
      price_per_pts: 1, funding_deadline_hours: 1}}
"""


def run(
    tmp_path: Path, count: int, size: int, *, address_space: int | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = tmp_path / "worlds.yaml"
    path.write_text(WORLDS.format(count=count, size=size), encoding="utf-8")
    home = tmp_path / "home"

    def cap() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    result = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "run", str(path), "--home", str(home)],
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        preexec_fn=cap,
    )
    return result, home


def test_the_estimate_counts_every_world_array_and_a_shards_temporaries() -> None:
    loaded = S.parse_scenario(WORLDS.format(count=400, size=512))
    one = 512 * 512 * 8
    assert S.world_count(loaded.scenario) == 400
    assert S.world_memory(loaded.scenario) == one * (5 * 400 + 5 * 256)
    # The shard size the estimate assumes is WorldShards' own.
    assert WorldShards(loaded.scenario.world.params()).per_shard == S.SHARD_WORLDS


def test_worlds_beyond_physical_memory_are_refused_before_anything_is_created(
    tmp_path: Path,
) -> None:
    have = physical_memory()
    assert have is not None
    result, home = run(tmp_path, 100_000, 1024)  # ~3.8 TiB of arrays
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: the worlds need about 3,916.2 GiB (100,000 worlds of 1024×1024" in result.stderr
    assert f"this machine has {have / 2**30:,.1f} GiB of memory" in result.stderr
    assert not home.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS caps the address space on Linux")
def test_running_out_of_memory_ends_with_one_line_and_the_way_on(tmp_path: Path) -> None:
    # 40 worlds of 1024x1024 need ~1.6 GB of arrays: far past a 600 MB address space,
    # far inside any test machine's physical memory (so the up-front check lets it run).
    result, home = run(tmp_path, 40, 1024, address_space=600 * 2**20)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: out of memory (Unable to allocate"), lines[0]
    # Stopped in the set-up: the store kept nothing of the run, so it starts over.
    assert lines[0].endswith(
        f"before the first checkpoint; start it again with "
        f"`ublox-sim run {tmp_path / 'worlds.yaml'} --home {home}`"
    )
