"""`ublox-sim serve` whose engine cannot open says why in one line and exits 1, as every
other command does, instead of uvicorn's traceback and its exit 3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from cluster_helpers import child_env

from ublox_sim.engine import Engine


@pytest.mark.asyncio
async def test_serve_on_a_home_another_engine_holds_says_so_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "game"
    async with Engine.open(home):
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "ublox_sim", "serve", "--home", str(home), "--port", "0"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                stdin=subprocess.DEVNULL,
                env=child_env(UBLOX_ADMIN_KEY="startup-admin-key-0123456789"),
            )
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {home} is already open by another engine or process"
        f" (lock {home / '.lock'}); close that one first"
    ]
    assert done.stdout == ""
