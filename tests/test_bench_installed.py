"""`ublox-sim bench` from an installed wheel, not a checkout (issue #15 item 4).

The wheel is built from a copy of the source (so the checkout gets no build/ or egg-info)
with the venv's own setuptools and no index (no network), installed into a folder of its
own, and run from a directory outside the checkout with only that folder on PYTHONPATH:
the benchmark code, the stress scenario it plays and the `ublox-sim run` child process it
starts must all come from the wheel. The build must print no warning (a deprecated
pyproject form would).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from test_bench import REQUIRED

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: the package, its metadata, and scenarios/ (bench/stress.yaml links
# into it).
SOURCES = ("pyproject.toml", "README.md", "ublox_sim", "scenarios")
# A Python warning as setuptools prints one (SetuptoolsDeprecationWarning: ...), not the
# "warning: byte-compiling is disabled" lines that PYTHONDONTWRITEBYTECODE=1 brings.
PY_WARNING = re.compile(r"\b\w*Warning\b")


def _pip(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _wheel(tmp_path: Path) -> Path:
    src, dist = tmp_path / "src", tmp_path / "dist"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=skip)
        else:
            shutil.copy2(path, src / name)
    log = _pip(
        *("wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index"),
        *("-w", str(dist), str(src)),
        cwd=tmp_path,
    )
    assert not PY_WARNING.findall(log), [line for line in log.splitlines() if "Warning" in line]
    (wheel,) = dist.glob("ublox_sim-*.whl")
    return wheel


def test_bench_runs_from_an_installed_wheel_outside_the_checkout(tmp_path: Path) -> None:
    site = tmp_path / "site"
    wheel = _wheel(tmp_path)
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    shipped = site / "ublox_sim" / "bench" / "stress.yaml"
    assert not shipped.is_symlink()
    assert shipped.read_bytes() == (ROOT / "scenarios" / "stress.yaml").read_bytes()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "NO_COLOR": "1"}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, cwd=elsewhere, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    # The package the bench below runs is the wheel's, not the checkout's editable install.
    where = run("-c", "import ublox_sim.bench.run as m; print(m.__file__)").strip()
    assert Path(where) == site / "ublox_sim" / "bench" / "run.py"

    out = elsewhere / "bench.json"
    stdout = run("-m", "ublox_sim", "bench", "simulation", "--size", "tiny", "--json", str(out))
    assert "== simulation (tiny) ==" in stdout
    report = json.loads(out.read_text())
    assert report["size"] == "tiny"
    for key in REQUIRED["simulation"]:
        value = report["simulation"][key]
        assert isinstance(value, float | int) and value > 0, (key, value)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["bench.json"]
