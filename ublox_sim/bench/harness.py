"""Rounds, medians and pairwise ratios: how every benchmark here reports.

Each benchmark runs its contenders in alternating order for several rounds after
a warm-up, so slow drift of a shared, noisy machine hits all of them alike. A
ratio is computed inside each round (contender A's figure over B's from the same
round) and then summarised, never from two medians taken at different times.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def child_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` for a benchmark's child process (a server, a worker, a step
    in a fresh process), run with `child_env`: ``-P`` keeps the child's working directory
    off its ``sys.path``, so a checkout it happens to start in cannot shadow the package
    this process runs (installed from a wheel, editable, or a checkout on PYTHONPATH)."""
    return [sys.executable, "-P", "-m", module, *args]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (this process's environment by default) with PYTHONPATH set to this
    process's ``sys.path``: the child imports what this process imports, nothing else."""
    path = [entry or os.getcwd() for entry in sys.path]
    return {**(os.environ if base is None else base), "PYTHONPATH": os.pathsep.join(path)}


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}

    def show(self, fmt: str = ",.0f") -> str:
        return f"{self.median:{fmt}} ({self.low:{fmt}}–{self.high:{fmt}})"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rounds(
    contenders: Mapping[str, Callable[[], Mapping[str, float]]],
    rounds: int,
    *,
    warmup: bool = True,
) -> list[dict[str, Mapping[str, float]]]:
    """Run every contender once per round, alternating the order; return per-round results."""
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name]()
    results: list[dict[str, Mapping[str, float]]] = []
    for r in range(rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        results.append({name: contenders[name]() for name in order})
    return results


def summarise(
    results: Sequence[Mapping[str, Mapping[str, float]]], name: str, metric: str
) -> Summary:
    return Summary.of([r[name][metric] for r in results])


def pairwise(
    results: Sequence[Mapping[str, Mapping[str, float]]], a: str, b: str, metric: str
) -> Summary:
    """a/b of ``metric`` computed within each round."""
    return Summary.of([r[a][metric] / r[b][metric] for r in results])


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
