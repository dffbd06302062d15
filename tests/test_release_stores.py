"""Stores written by earlier releases keep opening, migrating if needed, and verify clean.

Each folder under ``tests/fixtures/stores/`` was written by the release its name
gives (``v0.1.0``: a harmonic_caverns run; ``v0.1.0-seed``: the seed's demo story
with a backup). Add one folder per release; never edit one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
RELEASE_STORES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def test_there_is_a_store_from_every_release_so_far() -> None:
    assert {"v0.1.0", "v0.1.0-seed"} <= set(RELEASE_STORES)


@pytest.mark.parametrize("name", RELEASE_STORES)
def test_a_store_from_an_earlier_release_verifies_clean(name: str, tmp_path: Path) -> None:
    home = tmp_path / name
    shutil.copytree(FIXTURES / name, home)
    assert verify_store(home) == []


@pytest.mark.anyio
@pytest.mark.parametrize("name", RELEASE_STORES)
async def test_a_store_from_an_earlier_release_opens_in_the_engine(
    name: str, tmp_path: Path
) -> None:
    home = tmp_path / name
    shutil.copytree(FIXTURES / name, home)
    async with Engine.open(home) as engine:
        stats = await engine.stats()
        assert stats["players"]["count"] >= 1
        assert stats["ptos"]["count"] >= 1
    assert verify_store(home) == []
