"""``serve --scenario FILE`` plays with the scenario's ``seed:`` (as ``run`` does; ``--seed``
replaces it): two live runs of one scenario leave the same data, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ublox_sim.server import ServerConfig, create_app
from ublox_sim.server import app as app_module
from ublox_sim.server.live import play_scenario

pytestmark = pytest.mark.anyio
SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "harmonic_caverns.yaml"
GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "harmonic_caverns.export.json"
KEY = "seed-admin-key-0123456789"


async def _live_export(home: Path, monkeypatch: pytest.MonkeyPatch, seed: int | None = None) -> Any:
    """The export of ``home`` once a server played SCENARIO there to its end."""
    ended = anyio.Event()  # set when the server's scenario task returns or dies
    failed: list[BaseException] = []

    async def observed(*args: Any) -> None:
        try:
            await play_scenario(*args)
        except BaseException as exc:
            failed.append(exc)
            raise
        finally:
            ended.set()

    monkeypatch.setattr(app_module, "play_scenario", observed)
    config = ServerConfig(admin_key=KEY, allowed_hosts=("testserver",))
    app = create_app(
        home, scenario=SCENARIO, ticks_per_second=float("inf"), seed=seed, config=config
    )
    async with app.api.router.lifespan_context(app.api):
        with anyio.fail_after(120):  # a hang's bound, not a timing assertion
            await ended.wait()
        assert not failed, failed
        assert app.state.server.run.get("finished"), app.state.server.run
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.get("/api/export", headers={"Authorization": f"Bearer {KEY}"})
            assert answer.status_code == 200, answer.text
            return answer.json()


async def test_two_live_runs_of_a_scenario_leave_the_same_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = await _live_export(tmp_path / "one", monkeypatch)
    two = await _live_export(tmp_path / "two", monkeypatch)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    # The scenario's own seed, as `run` uses it: the same plays as the golden export's.
    golden = json.loads(GOLDEN.read_text())
    assert one["play_sessions"] == golden["play_sessions"]


async def test_the_seed_given_replaces_the_scenarios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = await _live_export(tmp_path / "given", monkeypatch, seed=7)
    scenario = await _live_export(tmp_path / "scenario", monkeypatch)
    assert given["play_sessions"] != scenario["play_sessions"]
