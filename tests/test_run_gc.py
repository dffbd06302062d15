"""A scenario run leaves the process's garbage collector as it found it (``run_scenario``
freezes the heap its setup left and collects the young generation less often, for the
ticks only)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ublox_sim.sim.runner import _setup_frozen, run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@pytest.fixture
def collector() -> Iterator[tuple[int, int, int]]:
    threshold = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    yield threshold
    gc.set_threshold(*threshold)
    gc.unfreeze()


@pytest.mark.anyio
async def test_a_run_puts_the_collector_back(tmp_path: Path, collector: tuple[int, ...]) -> None:
    seen: list[tuple[int, tuple[int, ...]]] = []
    loaded = load_scenario(SCENARIOS / "harmonic_caverns.yaml")
    report = await run_scenario(
        loaded,
        Home.resolve(tmp_path / "home"),
        progress=lambda tick, total: seen.append((gc.get_freeze_count(), gc.get_threshold())),
        freeze_heap=True,
    )
    assert report.ticks_run == len(seen) > 0
    assert all(frozen > 0 and threshold[0] == 10_000 for frozen, threshold in seen)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == collector


@pytest.mark.anyio
async def test_an_embedded_run_leaves_the_collector_alone(
    tmp_path: Path, collector: tuple[int, ...]
) -> None:
    seen: list[tuple[int, tuple[int, ...]]] = []
    loaded = load_scenario(SCENARIOS / "harmonic_caverns.yaml")
    await run_scenario(
        loaded,
        Home.resolve(tmp_path / "home"),
        progress=lambda tick, total: seen.append((gc.get_freeze_count(), gc.get_threshold())),
    )
    assert seen and all(entry == (0, collector) for entry in seen)


def test_objects_frozen_before_stay_frozen(collector: tuple[int, ...]) -> None:
    gc.freeze()
    assert gc.get_freeze_count() > 0
    with _setup_frozen():
        assert gc.get_threshold()[0] == 10_000
    assert gc.get_freeze_count() > 0  # not unfrozen (reference counting frees some)
    assert gc.get_threshold() == collector


def test_a_failing_run_puts_it_back_too(collector: tuple[int, ...]) -> None:
    with pytest.raises(KeyError), _setup_frozen():
        raise KeyError("a tick failed")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == collector
