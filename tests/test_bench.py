"""`ublox-sim bench` at its tiniest size: keeps the benchmarks from rotting (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REQUIRED = {
    "persistence": [
        "actor_rows_per_s",
        "raw_100_rows_per_s",
        "raw_1000_rows_per_s",
        "submit_many_rows_per_s",
        "naive_rows_per_s",
        "actor_vs_raw_100",
        "actor_vs_raw_1000",
        "submit_many_vs_raw_1000",
        "actor_vs_naive_context",
        "ack_p50_ms",
        "ack_p99_ms",
        "ack_max_ms",
    ],
    "cdt": ["tick_p99_ratio_flush_on_vs_off"],
    "simulation": [
        "system_player_ticks_per_s",
        "physics_player_ticks_per_s",
        "ratio_vs_physics",
        "tick_p99_ms",
        "peak_rss_mb",
        "sessions_per_run",
    ],
}


def test_bench_all_runs_and_reports_every_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "bench", "all", "--size", "tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    for section in ("== persistence", "== cdt", "== simulation", "actor/raw@100", "system/physics"):
        assert section in proc.stdout
    report = json.loads(out.read_text())
    for section, keys in REQUIRED.items():
        for key in keys:
            value = report[section][key]
            assert isinstance(value, float | int) and value > 0, (section, key, value)
    persistence = report["persistence"]
    # Sanity, not speed: the figures must agree with each other.
    assert persistence["ranges"]["actor_vs_raw_100"]["median"] == persistence["actor_vs_raw_100"]
    assert persistence["detail"]["actor"]["rows_per_s"]["min"] <= persistence["actor_rows_per_s"]
    assert report["persistence"]["rounds"] >= 3 and report["simulation"]["rounds"] >= 3
    assert report["simulation"]["peak_rss_mb"] < 24 * 1024
    # The physics replayed the run's own sessions and ended with its theta (else it fails).
    assert report["simulation"]["final_theta_identical"] is True
    assert report["cdt"]["flush"]["256"]["array_bytes"] == 2 * 256 * 256 * 8


BENCH = [sys.executable, "-m", "ublox_sim", "bench"]


def test_bench_scale_runs_at_its_tiniest(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [*BENCH, "scale", "--players", "2000", "--size", "tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "vs raw executemany" in proc.stdout
    report = json.loads(out.read_text())["scale"]
    for size in ("big", "small"):
        r = report[size]
        assert r["register"]["rate"] > 0 and r["raw"]["rate"] > 0
        assert r["open_plus_first_seconds"] > 0 and r["rss_after_open_mb"] > 0
    assert (report["big"]["players"], report["small"]["players"]) == (2000, 1000)
