"""Plots (issue 16): `ublox-sim plot` draws a run's and a sweep's figures as PNG and SVG
images of the stated size; importing the module loads no matplotlib."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ublox_sim.sim.plot import SIZE

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
FESTIVAL = str(ROOT / "scenarios" / "festival.yaml")
ENV = {**os.environ, "NO_COLOR": "1", "MPLBACKEND": "TkAgg"}  # the plot must not use it
ENV.pop("UBLOX_HOME", None)
SMALL = tuple(
    arg
    for item in (
        "clock.ticks=8",
        "cohorts.0.count=60",
        "pto_cohorts.0.count=4",
        "world.size=16",
        "pto_cohorts.0.price_per_pts=5",
        "pto_cohorts.0.launch_at=0",
    )
    for arg in ("--set", item)
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_images(written: list[Path], names: set[str]) -> None:
    assert {p.name for p in written} == {f"{n}.{ext}" for n in names for ext in ("png", "svg")}
    for path in written:
        assert path.stat().st_size > 1000, path
        if path.suffix == ".png":
            assert png_size(path) == SIZE, path
        else:
            root = ET.parse(path).getroot()
            assert root.tag.endswith("svg")


def test_a_runs_figures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = cli("run", FESTIVAL, "--home", str(home), *SMALL, "--metrics", str(tmp_path / "m.csv"))
    assert ran.returncode == 0, ran.stderr
    result = cli("plot", str(home))
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    assert all(p.parent == home / "plots" for p in written)
    check_images(written, {"aci_over_time", "funding_curves", "xusd_distribution"})


def test_a_sweeps_figures_go_where_asked(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    ran = cli("sweep", FESTIVAL, "--seeds", "1-2", "--set", "world.coupling=0.5,2", *SMALL,
              "--jobs", "1", "--out", str(out))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = cli("plot", str(out), "--out", str(tmp_path / "figures"))
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    assert all(p.parent == tmp_path / "figures" for p in written)
    names = {p.stem for p in written}
    assert {"sweep_aci_mean", "sweep_xusd_gini", "sweep_funding_raised_cents_mean"} <= names
    check_images(written, names)


def test_plotting_a_folder_without_metrics_says_what_it_needs(tmp_path: Path) -> None:
    result = cli("plot", str(tmp_path))
    assert result.returncode == 2
    assert "neither a sweep's folder (sweep.json) nor a run's home with metrics" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_importing_the_plot_module_loads_no_matplotlib() -> None:
    probe = "import sys, ublox_sim.sim.plot; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "False")


def test_a_one_seed_sweep_plots_without_an_interval(tmp_path: Path) -> None:
    from ublox_sim.sim import sweep as S
    from ublox_sim.sim.plot import plot_sweep

    results = [
        S.CellResult(
            S.Cell("x.yaml", (("world.coupling", k),), 1),
            rows=[
                {"tick": 1, "entity": "global", "players_active": 3},
                {"tick": 1, "entity": "p1", "aci": aci},
            ],
        )
        for k, aci in (("0.5", 0.25), ("2", 0.5))
    ]
    S.write_tables(tmp_path, results)
    (tmp_path / "sweep.json").write_text('{"parameters": ["world.coupling"]}', encoding="utf-8")
    summary = (tmp_path / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert "0.5,aci_mean,1,0.25,," in summary  # n = 1: no interval, empty low and high
    written = plot_sweep(tmp_path, tmp_path / "plots")
    check_images(written, {"sweep_aci_mean", "sweep_last_tick_players_active"})
