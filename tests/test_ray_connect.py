"""A Ray address nothing answers at fails at once with one clear line (Ray itself retried
a missing GCS for minutes, logging every attempt), before anything is created."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ray_marks import RAY_TESTS

from ublox_sim.core.errors import InvalidInput
from ublox_sim.sim.ray_executor import RayExecutor

pytestmark = RAY_TESTS

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A port nothing listens on: one the system just gave out, closed again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_connecting_to_a_dead_address_fails_at_once(scheme: str) -> None:
    address = f"{scheme}127.0.0.1:{closed_port()}"
    with pytest.raises(InvalidInput, match=r"cannot connect \(nothing answers at 127\.0\.0\.1"):
        with RayExecutor(address):
            pass


def test_run_on_a_dead_address_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    address = f"127.0.0.1:{closed_port()}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ublox_sim",
            "run",
            str(ROOT / "scenarios" / "harmonic_caverns.yaml"),
            "--home",
            str(home),
            "--ray",
            address,
        ],
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --ray {address}: cannot connect (nothing answers at {address}: "
        "Connection refused); is the Ray cluster up there (`ray start --head`)?"
    ]
    assert not home.exists()
