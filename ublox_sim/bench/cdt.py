"""CDT arrays: what ``np.savez_compressed`` costs, and what background flushing costs a tick.

1. Flush speed: one world (theta, omega) of 64×64 and 256×256 written with the
   store's atomic writer (compressed) and with plain ``np.savez`` to a temporary
   file with the same fsync, for MB/s and bytes.
2. Tick time: a loop that steps W worlds per tick (vectorised physics, as a PTO
   actor does) and marks them dirty, with the store's background flusher on versus
   off; tick-time p50/p99 compared round by round.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from ublox_sim.core.world import WorldParams, new_world, step_world
from ublox_sim.store.cdt import CdtStore, write_npz_atomic

from .harness import pairwise, percentile, run_rounds, summarise, table

SIZES = {
    # flush repeats, worlds stepped per tick, ticks per round, rounds
    "tiny": (2, 4, 20, 3),
    "quick": (5, 20, 60, 3),
    "full": (15, 40, 200, 5),
}


def _write_plain(path: Path, arrays: Mapping[str, np.ndarray]) -> int:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def flush_speed(folder: Path, side: int, repeats: int) -> dict[str, float]:
    arrays = new_world(WorldParams(size=side), np.random.default_rng(side))
    raw = sum(a.nbytes for a in arrays.values())
    timings: dict[str, list[float]] = {"compressed": [], "plain": []}
    sizes: dict[str, int] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        sizes["compressed"] = write_npz_atomic(folder / f"w{side}.npz", arrays)
        timings["compressed"].append(time.perf_counter() - start)
        start = time.perf_counter()
        sizes["plain"] = _write_plain(folder / f"w{side}-plain.npz", arrays)
        timings["plain"].append(time.perf_counter() - start)
    comp = float(np.median(timings["compressed"]))
    plain = float(np.median(timings["plain"]))
    return {
        "array_bytes": raw,
        "compressed_bytes": sizes["compressed"],
        "plain_bytes": sizes["plain"],
        "size_ratio_vs_savez": sizes["compressed"] / sizes["plain"],
        "compressed_mb_per_s": raw / comp / 1e6,
        "plain_mb_per_s": raw / plain / 1e6,
        "time_ratio_vs_savez": comp / plain,
    }


def tick_times(folder: Path, worlds: int, ticks: int, flushing: bool) -> dict[str, float]:
    params = WorldParams()
    state = [new_world(params, np.random.default_rng(i)) for i in range(worlds)]
    durations: list[float] = []

    async def main() -> None:
        store = CdtStore(folder / f"cdt-{flushing}-{time.monotonic_ns()}")
        async with anyio.create_task_group() as tg:
            if flushing:
                tg.start_soon(store.run_flusher, 0.05)
            for _ in range(ticks):
                start = time.perf_counter()
                for i, world in enumerate(state):
                    world["theta"] = step_world(world["theta"], world["omega"], params, 4)
                    if flushing:
                        store.mark_dirty(f"w{i}", world)
                durations.append((time.perf_counter() - start) * 1000)
                await anyio.lowlevel.checkpoint()  # a tick boundary: let the flusher's task run
            tg.cancel_scope.cancel()
        if flushing:
            await store.flush()

    anyio.run(main, backend="asyncio")
    return {
        "tick_p50_ms": percentile(durations, 0.5),
        "tick_p99_ms": percentile(durations, 0.99),
    }


def bench(size: str = "full") -> dict[str, Any]:
    repeats, worlds, ticks, rounds = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="ublox-bench-cdt-") as tmp:
        folder = Path(tmp)
        flush = {side: flush_speed(folder, side, repeats) for side in (64, 256)}
        results = run_rounds(
            {
                "off": lambda: tick_times(folder, worlds, ticks, False),
                "on": lambda: tick_times(folder, worlds, ticks, True),
            },
            rounds,
        )
    p99 = pairwise(results, "on", "off", "tick_p99_ms")
    p50 = pairwise(results, "on", "off", "tick_p50_ms")
    return {
        "flush": {str(k): v for k, v in flush.items()},
        "worlds_per_tick": worlds,
        "ticks_per_round": ticks,
        "rounds": rounds,
        "tick_p50_ms_off": summarise(results, "off", "tick_p50_ms").median,
        "tick_p99_ms_off": summarise(results, "off", "tick_p99_ms").median,
        "tick_p50_ms_on": summarise(results, "on", "tick_p50_ms").median,
        "tick_p99_ms_on": summarise(results, "on", "tick_p99_ms").median,
        "tick_p99_ratio_flush_on_vs_off": p99.median,
        "tick_p99_ratio_range": p99.to_dict(),
        "tick_p50_ratio_flush_on_vs_off": p50.median,
    }


def show(report: Mapping[str, Any]) -> str:
    rows = [
        [
            f"{side}×{side}",
            f"{f['compressed_mb_per_s']:.1f}",
            f"{f['plain_mb_per_s']:.1f}",
            f"{f['compressed_bytes']:,}",
            f"{f['plain_bytes']:,}",
            f"{f['size_ratio_vs_savez']:.2f}",
        ]
        for side, f in report["flush"].items()
    ]
    out = table(
        rows, ["world", "savez_compressed MB/s", "savez MB/s", "bytes", "savez bytes", "size ratio"]
    )
    rng = report["tick_p99_ratio_range"]
    out += (
        f"\ntick time ({report['worlds_per_tick']} worlds of 64×64, 4 steps): "
        f"p50 {report['tick_p50_ms_off']:.2f} → {report['tick_p50_ms_on']:.2f} ms, "
        f"p99 {report['tick_p99_ms_off']:.2f} → {report['tick_p99_ms_on']:.2f} ms with flushing on; "
        f"p99 ratio on/off {rng['median']:.2f}× ({rng['min']:.2f}–{rng['max']:.2f})"
    )
    return out
