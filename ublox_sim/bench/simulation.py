"""Simulation speed: ``scenarios/stress.yaml`` through the whole system against plain numpy.

- ``actor``: ``ublox-sim run scenarios/stress.yaml`` in a subprocess (10,000 players,
  100 PTOs with 64×64 worlds at full size) for a fixed number of ticks: every
  actor, every ledger row, every checkpoint. Player-ticks/s counts players × ticks
  over the time of the ticks (setup excluded, reported apart); peak RSS is the
  subprocess's own ``ru_maxrss``.
- ``baseline``: one plain vectorised numpy loop doing the same physics with no
  actors and no persistence: all worlds stacked in one array, each tick
  ``steps_per_hour`` lattice steps with every player coupled to its cell. This is
  the limit for this design.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ublox_sim.core.world import WorldParams, lattice_coupling

from .harness import pairwise, run_rounds, summarise, table

STRESS = Path(__file__).resolve().parent / "stress.yaml"  # scenarios/stress.yaml, shipped

SIZES = {
    # players, PTOs, ticks, rounds
    "tiny": (200, 4, 2, 3),
    "quick": (2000, 20, 4, 3),
    "full": (10_000, 100, 20, 3),
}


def run_actor(players: int, ptos: int, ticks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ublox-bench-sim-") as tmp:
        command = [
            sys.executable,
            "-m",
            "ublox_sim",
            "run",
            str(STRESS),
            "--home",
            str(Path(tmp) / "home"),
            "--json",
            "--set",
            f"clock.ticks={ticks}",
            "--set",
            f"cohorts.0.count={players}",
            "--set",
            f"pto_cohorts.0.count={ptos}",
        ]
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            proc.stderr.close()
            if proc.returncode != 0:
                raise RuntimeError(f"stress run failed ({proc.returncode}): {err[-2000:]}")
            out.seek(0)
            report = json.loads(out.read())
    tick_seconds = report["wall_seconds"] - report["setup_seconds"]
    return {
        "player_ticks_per_s": players * ticks / tick_seconds,
        "tick_seconds": tick_seconds,
        "setup_seconds": report["setup_seconds"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "sessions": float(report["outcomes"].get("play", 0)),
        "purchases": float(report["outcomes"].get("buy", 0)),
    }


def run_baseline(players: int, ptos: int, ticks: int) -> dict[str, float]:
    params = WorldParams()
    rng = np.random.default_rng(1)
    n, side = ptos, params.size
    theta = rng.uniform(0, 2 * np.pi, (n, side, side))
    omega = rng.normal(params.omega_mean, params.omega_spread, (n, side, side))
    world = rng.integers(0, n, players)
    cy, cx = rng.integers(0, side, players), rng.integers(0, side, players)
    phase = rng.uniform(0, 2 * np.pi, players)
    freq = rng.normal(1.0, 0.1, players)
    tau = rng.uniform(0.5, 10, players)
    quality = np.zeros(players)
    start = time.perf_counter()
    for _ in range(ticks):
        for _ in range(params.steps_per_hour):
            cell = theta[world, cy, cx]
            diff = cell - phase
            quality += (1 + np.cos(diff)) / 2
            nudge = np.zeros_like(theta)
            np.add.at(nudge, (world, cy, cx), params.feedback * tau * np.sin(-diff))
            coupling = np.stack([lattice_coupling(theta[k]) for k in range(n)])
            theta = theta + params.dt * (omega + params.coupling * coupling + nudge)
            phase = phase + params.dt * (freq + params.player_coupling * tau * np.sin(diff))
    elapsed = time.perf_counter() - start
    return {"player_ticks_per_s": players * ticks / elapsed, "tick_seconds": elapsed}


def bench(size: str = "full") -> dict[str, Any]:
    players, ptos, ticks, rounds = SIZES[size]
    results = run_rounds(
        {
            "baseline": lambda: run_baseline(players, ptos, ticks),
            "actor": lambda: run_actor(players, ptos, ticks),
        },
        rounds,
        warmup=False,
    )
    ratio = pairwise(results, "actor", "baseline", "player_ticks_per_s")
    return {
        "players": players,
        "ptos": ptos,
        "ticks": ticks,
        "rounds": rounds,
        "player_ticks_per_s": summarise(results, "actor", "player_ticks_per_s").median,
        "baseline_player_ticks_per_s": summarise(results, "baseline", "player_ticks_per_s").median,
        "ratio_vs_baseline": ratio.median,
        "ratio_vs_baseline_range": ratio.to_dict(),
        "peak_rss_mb": max(r["actor"]["peak_rss_mb"] for r in results),
        "setup_seconds": summarise(results, "actor", "setup_seconds").median,
        "tick_seconds": summarise(results, "actor", "tick_seconds").to_dict(),
        "sessions_per_run": results[0]["actor"]["sessions"],
        "purchases_per_run": results[0]["actor"]["purchases"],
    }


def show(report: Mapping[str, Any]) -> str:
    rng = report["ratio_vs_baseline_range"]
    rows = [
        [
            "actor (full system)",
            f"{report['player_ticks_per_s']:,.0f}",
            f"{report['peak_rss_mb']:.0f}",
        ],
        ["baseline (numpy only)", f"{report['baseline_player_ticks_per_s']:,.0f}", "-"],
    ]
    out = table(rows, ["simulation", "player-ticks/s", "peak RSS MB"])
    out += (
        f"\n{report['players']:,} players, {report['ptos']} PTOs, {report['ticks']} ticks; "
        f"actor/baseline {rng['median']:.3f}× ({rng['min']:.3f}–{rng['max']:.3f}); setup "
        f"{report['setup_seconds']:.1f} s apart; {report['sessions_per_run']:.0f} sessions and "
        f"{report['purchases_per_run']:.0f} purchases per run"
    )
    return out
