"""The arguments that name a store: ``Engine.open("")`` is refused (``Path("")`` is the
current folder, where a store used to appear unasked), and ``verify_store`` takes a
path as text too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ublox_sim import Engine, UbloxLocalStorage, verify_store
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


@pytest.mark.parametrize("where", [{"home": ""}, {"store": " "}])
def test_the_facade_refuses_an_empty_store_and_creates_nothing(
    where: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput, match="empty home or store"):
        UbloxLocalStorage(**where)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [["stats"], ["export", "-o", "-"], ["demo"], ["run", "scenarios/harmonic_caverns.yaml"]],
)
def test_the_cli_refuses_an_empty_home_with_a_usage_error(
    command: list[str], tmp_path: Path
) -> None:
    # In a process of its own: the CLI configures logging, which a test process must not.
    result = subprocess.run(
        [sys.executable, "-m", "ublox_sim", *command, "--home", ""],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--home': an empty name" in result.stderr
    assert list(tmp_path.iterdir()) == []
