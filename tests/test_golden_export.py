"""The same scenario and seed give the same export bytes as before the redesign.

The golden files were taken from main before issue 12 (see fixtures/golden/README.md):
restructuring the code must not change a single result. Each runs with the ticks' physics
on a thread and in a worker process (``run --physics``): the same bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
SCENARIOS = Path(__file__).parent.parent / "scenarios"


PHYSICS = pytest.mark.parametrize("physics", ["thread", "process"])


def run(tmp_path: Path, name: str, physics: str, *overrides: str) -> bytes:
    home = tmp_path / name
    args = [sys.executable, "-m", "ublox_sim", "run", str(SCENARIOS / f"{name}.yaml")]
    args += ["--home", str(home), "--physics", physics]
    for override in overrides:
        args += ["--set", override]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return (home / "export.json").read_bytes()


@PHYSICS
def test_harmonic_caverns_exports_the_golden_bytes(tmp_path: Path, physics: str) -> None:
    expected = (GOLDEN / "harmonic_caverns.export.json").read_bytes()
    assert run(tmp_path, "harmonic_caverns", physics) == expected


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        ("festival", "cdc2cc21019709ce94d10eaee7f05e9c3c1eb6779101255089ebf3c1f7fd0c98"),
        ("stress", "50a160189786abc9a8e962492c9a4edd3a000ed01dcfcab1eef35a0d26d5f022"),
    ],
)
@PHYSICS
def test_larger_scenarios_export_the_golden_digest(
    tmp_path: Path, name: str, digest: str, physics: str
) -> None:
    assert hashlib.sha256(run(tmp_path, name, physics, "clock.ticks=6")).hexdigest() == digest
