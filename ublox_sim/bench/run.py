"""Entry point behind ``ublox-sim bench``: run, print the tables, write the JSON."""

from __future__ import annotations

import json
import platform
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import cdt, hot, persistence, scale, simulation, simulation_ray

BENCHES: dict[str, tuple[Callable[[str], dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "persistence": (persistence.bench, persistence.show),
    "cdt": (cdt.bench, cdt.show),
    "simulation": (simulation.bench, simulation.show),
    # `bench simulation --ray`: the same stress scenario, physics-heavy, on Ray.
    "simulation_ray": (simulation_ray.bench, simulation_ray.show),
    "scale": (scale.bench, scale.show),
    "hot": (hot.bench, hot.show),
}
# ``all`` is the quick regular set; ``scale`` (a million players by default) runs alone.
ALL = ("persistence", "cdt", "simulation", "hot")


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def main(
    which: str,
    size: str,
    json_path: Path | None,
    say: Callable[[str], None] = print,
    players: int | None = None,
) -> dict[str, Any]:
    names = list(ALL) if which == "all" else [which]
    report: dict[str, Any] = {"size": size, "machine": machine()}
    for name in names:
        run, show = BENCHES[name]
        say(f"== {name} ({size}) ==")
        report[name] = scale.bench(size, players) if name == "scale" else run(size)
        say(show(report[name]))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        say(f"wrote {json_path}")
    return report
