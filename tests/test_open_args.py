"""The arguments that name a store: ``Engine.open("")`` is refused (``Path("")`` is the
current folder, where a store used to appear unasked), and ``verify_store`` takes a
path as text too."""

from __future__ import annotations

from pathlib import Path

import pytest

from ublox_sim import Engine, verify_store
from ublox_sim.core.errors import InvalidInput

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("where", [{"home": ""}, {"store": ""}])
async def test_an_empty_home_or_store_is_refused_and_creates_nothing(
    where: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput, match="empty home or store"):
        async with Engine.open(**where):  # type: ignore[arg-type]
            pass
    assert list(tmp_path.iterdir()) == []


async def test_verify_store_takes_a_path_as_text(tmp_path: Path) -> None:
    async with Engine.open(tmp_path / "home") as engine:
        await engine.register_player("p", usd_obbba="5.00")
    assert verify_store(str(tmp_path / "home")) == []
    assert verify_store(tmp_path / "home") == []
    assert [f.message for f in verify_store(str(tmp_path / "none"))] == ["no database here"]
