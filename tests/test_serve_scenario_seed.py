"""``serve --scenario FILE`` plays with the scenario's ``seed:`` (as ``run`` does; ``--seed``
replaces it): two live runs of one scenario leave the same data, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from ublox_sim.server import ServerConfig, create_app

pytestmark = pytest.mark.anyio
SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "harmonic_caverns.yaml"
GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "harmonic_caverns.export.json"
KEY = "seed-admin-key-0123456789"


async def _live_export(home: Path, seed: int | None = None) -> Any:
    """The export of ``home`` once a server played SCENARIO there to its end."""
    config = ServerConfig(admin_key=KEY, allowed_hosts=("testserver",))
    app = create_app(
        home, scenario=SCENARIO, ticks_per_second=float("inf"), seed=seed, config=config
    )
    async with app.api.router.lifespan_context(app.api):
        progress = app.state.server.run
        with anyio.fail_after(120):  # a hang's bound, not a timing assertion
            while not progress.get("finished"):  # the progress has no event to wait on
                await anyio.lowlevel.checkpoint()  # the scenario's task runs meanwhile
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.get("/api/export", headers={"Authorization": f"Bearer {KEY}"})
            assert answer.status_code == 200, answer.text
            return answer.json()


async def test_two_live_runs_of_a_scenario_leave_the_same_data(tmp_path: Path) -> None:
    one = await _live_export(tmp_path / "one")
    two = await _live_export(tmp_path / "two")
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    # The scenario's own seed, as `run` uses it: the same plays as the golden export's.
    golden = json.loads(GOLDEN.read_text())
    assert one["play_sessions"] == golden["play_sessions"]


async def test_the_seed_given_replaces_the_scenarios(tmp_path: Path) -> None:
    given = await _live_export(tmp_path / "given", seed=7)
    scenario = await _live_export(tmp_path / "scenario")
    assert given["play_sessions"] != scenario["play_sessions"]
