"""A physics-heavy scenario on Ray: ``ublox-sim bench simulation --ray``.

The same run (``scenarios/stress.yaml`` cut to few players and many large worlds: 200
worlds of 128×128 at full size) three ways, in this process, alternating their order
each round: single-process (``run_scenario``), and with its world shards in the actors
of a local Ray instance, 1 and 2 shard actors (``run_on_ray``, as ``run --ray`` does).
One instance of the machine's CPUs (2 at least) serves the whole bench, warmed up by a
small run of each kind before the rounds: its start is not counted. Each run must end
with the same export, byte for byte: the bench fails otherwise.

Player-ticks/s counts players × ticks over the ticks' own wall time (the run's
``tick_seconds``; setup, checkpoints and the export apart); the speed-up is taken within
each round against that round's single-process run. Shipping: per tick, the time the
driver waited for all its shards minus the longest shard's own step (requests out,
outcomes back, Ray's scheduling), and the bytes of arrays each way. The machine's load
(1-minute average) is read before and after each round: the machine is shared.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from ublox_sim.sim.ray_executor import RayExecutor
from ublox_sim.sim.ray_shards import RayOutcome, RayRun, run_on_ray
from ublox_sim.sim.runner import RunReport, run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home

from .harness import Summary, table
from .simulation import STRESS

SIZES: dict[str, tuple[int, int, int, int, int]] = {
    # players, worlds, world side, ticks, rounds
    "tiny": (200, 8, 32, 3, 1),
    "quick": (1000, 50, 128, 4, 1),
    "full": (500, 200, 128, 16, 3),
}
HOW = ("single process", "Ray, 1 worker", "Ray, 2 workers")


def overrides(players: int, worlds: int, side: int, ticks: int) -> list[str]:
    return [
        f"clock.ticks={ticks}",
        f"checkpoint_every={ticks}",
        f"cohorts.0.count={players}",
        f"pto_cohorts.0.count={worlds}",
        f"world.size={side}",
        # Funded and built within a tick or two, so that the ticks play sessions.
        "pto_cohorts.0.pts_offered={dist: uniform, low: 2, high: 6}",
        "pto_cohorts.0.atu_required={dist: uniform, low: 10, high: 40}",
        "behaviours.investors.0.probability=0.5",
    ]


def one_run(
    size: str, workers: int | None, tmp: Path
) -> tuple[RunReport, bytes, RayOutcome | None]:
    players, worlds, side, ticks, _ = SIZES[size]
    loaded = load_scenario(STRESS, overrides=overrides(players, worlds, side, ticks))
    home = Home.resolve(tmp / f"home-{workers or 0}-{time.monotonic_ns()}")
    outcome = RayOutcome() if workers else None
    run: Callable[[], Any]
    if workers is None:

        def run() -> Any:
            return run_scenario(loaded, home)
    else:
        assert outcome is not None
        ray = RayRun(None, workers=workers)

        def run() -> Any:
            return run_on_ray(loaded, home, ray, outcome=outcome)

    report: RunReport = anyio.run(run)
    return report, (home.root / "export.json").read_bytes(), outcome


def bench(size: str = "full") -> dict[str, Any]:
    players, worlds, side, ticks, rounds = SIZES[size]
    rows: list[dict[str, dict[str, float]]] = []
    loads: list[float] = []
    sessions = 0
    cpus = max(2, os.cpu_count() or 1)
    with (
        tempfile.TemporaryDirectory(prefix="ublox-bench-ray-") as tmp,
        RayExecutor(None, num_cpus=cpus),  # the bench's local instance: its runs use it
    ):
        for workers in (None, 1, 2):  # warm-up: imports, first calls, Ray's own workers
            one_run("tiny", workers, Path(tmp))
        for r in range(rounds):
            loads.append(os.getloadavg()[0])
            order: list[int | None] = [None, 1, 2] if r % 2 == 0 else [2, 1, None]
            got: dict[str, dict[str, float]] = {}
            exports: set[bytes] = set()
            for workers in order:
                run, export, outcome = one_run(size, workers, Path(tmp))
                exports.add(export)
                tick_seconds = sum(run.tick_seconds)
                figures = {"player_ticks_per_s": players * ticks / tick_seconds}
                if outcome is not None:
                    figures.update(outcome.shipping.per_tick())
                got[HOW[workers or 0]] = figures
                sessions = int(run.outcomes.get("play", 0))
            if len(exports) != 1:
                raise AssertionError("the runs on Ray did not export the single-process bytes")
            rows.append(got)
            loads.append(os.getloadavg()[0])

    def of(how: str, key: str) -> Summary:
        return Summary.of([row[how][key] for row in rows])

    report: dict[str, Any] = {
        "players": players,
        "worlds": worlds,
        "world_side": side,
        "ticks": ticks,
        "rounds": rounds,
        "sessions_per_run": sessions,
        "load_1min": Summary.of(loads).to_dict(),
        "cpus": os.cpu_count(),
        "same_export": True,
    }
    for how in HOW:
        entry: dict[str, Any] = {"player_ticks_per_s": of(how, "player_ticks_per_s").to_dict()}
        if how != HOW[0]:
            entry["speedup"] = Summary.of(
                [row[how]["player_ticks_per_s"] / row[HOW[0]]["player_ticks_per_s"] for row in rows]
            ).to_dict()
            for key in ("wait_ms", "longest_step_ms", "shipping_ms", "kb_out", "kb_back"):
                entry[key] = of(how, key).median
        report[how] = entry
    return report


def show(report: Mapping[str, Any]) -> str:
    rows = []
    for how in HOW:
        entry = report[how]
        pts = entry["player_ticks_per_s"]
        speedup = entry.get("speedup")
        rows.append(
            [
                how,
                f"{pts['median']:,.0f} ({pts['min']:,.0f}–{pts['max']:,.0f})",
                "1"
                if speedup is None
                else f"{speedup['median']:.2f}× ({speedup['min']:.2f}–{speedup['max']:.2f})",
                "-" if speedup is None else f"{entry['shipping_ms']:.1f}",
                "-" if speedup is None else f"{entry['kb_out']:.1f} / {entry['kb_back']:.1f}",
            ]
        )
    out = table(
        rows, ["run", "player-ticks/s", "speed-up", "shipping ms/tick", "KB/tick out / back"]
    )
    load = report["load_1min"]
    out += (
        f"\n{report['players']:,} players, {report['worlds']} worlds of "
        f"{report['world_side']}×{report['world_side']}, {report['ticks']} ticks, "
        f"{report['sessions_per_run']:,} sessions per run, {report['rounds']} round(s); same "
        f"export bytes every way; {report['cpus']} CPUs, load (1 min) {load['min']:.1f}–"
        f"{load['max']:.1f}"
    )
    return out
