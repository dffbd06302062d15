"""Simulation speed: ``scenarios/stress.yaml`` through the whole system against its own physics.

- ``system``: ``ublox-sim run scenarios/stress.yaml`` in a subprocess (10,000 players,
  100 PTOs with 64×64 worlds at full size) for a fixed number of ticks: every actor,
  every ledger row, every checkpoint. Player-ticks/s counts players × ticks over the
  ticks' own wall time (the run's ``tick_seconds``: setup, checkpoints and the final
  export are reported apart); the run's physics is where ``run`` puts it by default (a
  worker process when 2 CPUs are usable: ``run --physics``); peak RSS is the run's own
  ``ru_maxrss`` plus its physics worker's (each told in ``run --json``: the shared world
  blocks are counted in both); the tick p99 is over the run's per-tick wall times.
- ``physics``: the bare physics of the SAME run: the run records every shard tick
  (``UBLOX_SIM_TAPE``: the worlds as first seen, then per tick the sessions' cells,
  phases, tau_k and steps) and the bench replays it, worlds stacked as the run steps
  them (``core.shard.replay``), timing the ticks only. It must end with the run's final
  theta, bit for bit (read from the run's world files): the bench fails otherwise. This
  is the limit for this design; the ratio is what the bookkeeping (actors, ledger,
  store) costs on top.

Smaller sizes make the PTOs fund quickly (smaller offers, more investors), so that
their ticks play sessions too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ublox_sim.core.shard import replay
from ublox_sim.core.world import WorldParams

from .harness import Summary, table

STRESS = Path(__file__).resolve().parent / "stress.yaml"  # scenarios/stress.yaml, shipped

FAST_FUNDING = (
    "pto_cohorts.0.pts_offered={dist: uniform, low: 20, high: 60}",
    "behaviours.investors.0.probability=0.2",
)

SIZES: dict[str, tuple[int, int, int, int, tuple[str, ...]]] = {
    # players, PTOs, ticks, rounds, extra --set
    "tiny": (200, 4, 3, 3, FAST_FUNDING),
    "quick": (2000, 20, 6, 3, FAST_FUNDING),
    "full": (10_000, 100, 20, 3, ()),
}


def _final_thetas(home: Path) -> dict[str, np.ndarray]:
    """Each world's newest checkpointed file in the run's home."""
    newest: dict[str, tuple[int, Path]] = {}
    for path in (home / "cdt_states").glob("*.npz"):
        match = re.fullmatch(r"(.+?)(?:\.v(\d+))?\.npz", path.name)
        assert match is not None
        version = int(match.group(2) or -1)
        if version >= newest.get(match.group(1), (-2, path))[0]:
            newest[match.group(1)] = (version, path)
    out = {}
    for world_id, (_, path) in newest.items():
        with np.load(path, allow_pickle=False) as data:
            out[world_id] = data["theta"]
    return out


def run_pair(players: int, ptos: int, ticks: int, extra: tuple[str, ...]) -> dict[str, Any]:
    """The system's run, then its physics replayed; the final thetas must agree."""
    with tempfile.TemporaryDirectory(prefix="ublox-bench-sim-") as tmp:
        home = Path(tmp) / "home"
        tape = Path(tmp) / "tape.npz"
        command = [sys.executable, "-m", "ublox_sim", "run", str(STRESS)]
        command += ["--home", str(home), "--json"]
        for item in (
            f"clock.ticks={ticks}",
            f"checkpoint_every={ticks}",
            f"cohorts.0.count={players}",
            f"pto_cohorts.0.count={ptos}",
            *extra,
        ):
            command += ["--set", item]
        env = {**os.environ, "UBLOX_SIM_TAPE": str(tape)}
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            proc.stderr.close()
            if proc.returncode != 0:
                raise RuntimeError(f"stress run failed ({proc.returncode}): {err[-2000:]}")
            out.seek(0)
            report = json.loads(out.read())
        final, physics_seconds, played = replay(str(tape), WorldParams())
        files = _final_thetas(home)
        if set(files) != set(final) or any(files[w].tobytes() != final[w].tobytes() for w in final):
            raise AssertionError("the replayed physics did not end with the run's final theta")
    worker = report.get("physics", {})
    # (RUSAGE of the run is the larger of it and its worker, not their sum.)
    peak_kb = worker.get("main_peak_rss_kb", usage.ru_maxrss) + worker.get("worker_peak_rss_kb", 0)
    ticks_run = report["tick_seconds"]
    tick_seconds = sum(ticks_run)
    sessions = int(report["outcomes"].get("play", 0))
    if played != sessions:
        raise AssertionError(f"replayed {played} sessions, the run played {sessions}")
    return {
        "system": {
            "player_ticks_per_s": players * ticks / tick_seconds,
            "tick_seconds": tick_seconds,
            "tick_p99_ms": 1000 * float(np.percentile(ticks_run, 99)),
            "setup_seconds": report["setup_seconds"],
            "outside_ticks_seconds": report["wall_seconds"]
            - report["setup_seconds"]
            - tick_seconds,
            "peak_rss_mb": peak_kb / 1024,
            "physics_mode": worker.get("mode", "thread"),
            "worker_step_seconds": worker.get("step_seconds"),
            "worker_step_cpu_seconds": worker.get("step_cpu_seconds"),
            "sessions": sessions,
            "purchases": int(report["outcomes"].get("buy", 0)),
        },
        "physics": {
            "player_ticks_per_s": players * ticks / physics_seconds,
            "tick_seconds": physics_seconds,
        },
    }


def bench(size: str = "full") -> dict[str, Any]:
    players, ptos, ticks, rounds, extra = SIZES[size]
    results = [run_pair(players, ptos, ticks, extra) for _ in range(rounds)]

    def of(side: str, key: str) -> Summary:
        return Summary.of([r[side][key] for r in results])

    ratio = Summary.of(
        [r["system"]["player_ticks_per_s"] / r["physics"]["player_ticks_per_s"] for r in results]
    )
    return {
        "players": players,
        "ptos": ptos,
        "ticks": ticks,
        "rounds": rounds,
        "system_player_ticks_per_s": of("system", "player_ticks_per_s").median,
        "physics_player_ticks_per_s": of("physics", "player_ticks_per_s").median,
        "ratio_vs_physics": ratio.median,
        "ratio_vs_physics_range": ratio.to_dict(),
        "tick_p99_ms": of("system", "tick_p99_ms").median,
        "peak_rss_mb": max(r["system"]["peak_rss_mb"] for r in results),
        "setup_seconds": of("system", "setup_seconds").median,
        "outside_ticks_seconds": of("system", "outside_ticks_seconds").median,
        "system_tick_seconds": of("system", "tick_seconds").to_dict(),
        "physics_tick_seconds": of("physics", "tick_seconds").to_dict(),
        "sessions_per_run": results[0]["system"]["sessions"],
        "physics_mode": results[0]["system"]["physics_mode"],
        "worker_step_seconds": [r["system"]["worker_step_seconds"] for r in results],
        "worker_step_cpu_seconds": [r["system"]["worker_step_cpu_seconds"] for r in results],
        "purchases_per_run": results[0]["system"]["purchases"],
        "final_theta_identical": True,
    }


def show(report: Mapping[str, Any]) -> str:
    rng = report["ratio_vs_physics_range"]
    rows = [
        [
            "system (actors, ledger, store)",
            f"{report['system_player_ticks_per_s']:,.0f}",
            f"{report['tick_p99_ms']:.0f}",
            f"{report['peak_rss_mb']:.0f}",
        ],
        ["physics of the same run", f"{report['physics_player_ticks_per_s']:,.0f}", "-", "-"],
    ]
    out = table(rows, ["simulation", "player-ticks/s", "tick p99 ms", "peak RSS MB"])
    out += (
        f"\n{report['players']:,} players, {report['ptos']} PTOs, {report['ticks']} ticks; "
        f"system/physics {rng['median']:.3f}× ({rng['min']:.3f}–{rng['max']:.3f}): ticks "
        f"{report['system_tick_seconds']['median']:.2f} s against physics "
        f"{report['physics_tick_seconds']['median']:.2f} s (medians), same final "
        f"theta bit for bit; {report['sessions_per_run']:,} sessions and "
        f"{report['purchases_per_run']:,} purchases per run; setup "
        f"{report['setup_seconds']:.1f} s and checkpoints + export "
        f"{report['outside_ticks_seconds']:.1f} s apart; the run's physics in a "
        f"{report.get('physics_mode', 'thread')}"
    )
    if report.get("physics_mode") == "process":
        walls, cpus = report["worker_step_seconds"], report["worker_step_cpu_seconds"]
        out += " (its steps' wall/CPU s per run: " + ", ".join(
            f"{w:.2f}/{c:.2f}" for w, c in zip(walls, cpus, strict=True)
        )
        out += "; peak RSS is the run's + its worker's)"
    else:
        out += " (peak RSS of the run)"
    return out
