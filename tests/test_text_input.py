"""Text no store can hold (a NUL, an unpaired surrogate) is refused where it enters, the
same on both backends: the Engine (``InvalidInput`` naming the field), a request body
(422 ``invalid_input`` naming the field), a scenario file and an import. PostgreSQL's
text refuses NUL, so it used to be a 503 there and a 201 on SQLite."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from api_client import operator_api

from ublox_sim import Engine, SimClock
from ublox_sim.core.errors import InvalidInput
from ublox_sim.sim.scenario import ScenarioError, parse_scenario
from ublox_sim.store.sync import UbloxLocalStorage

pytestmark = pytest.mark.anyio
BAD = ["a\x00b", "a\ud800b"]


def launch_args(**changes: str) -> dict[str, object]:
    args: dict[str, object] = {
        "pto_id": "g",
        "game_name": "G",
        "creator_id": "maker",
        "atu_required": 0,
        "pts_offered": 1,
        "price_per_pts": 1,
        "funding_deadline": timedelta(days=1),
    }
    return {**args, **changes}


@pytest.mark.parametrize("text", BAD)
async def test_the_engine_refuses_unstorable_text_naming_the_field(store: str, text: str) -> None:
    async with Engine.open(store=store, clock=SimClock()) as engine:
        await engine.register_player("maker")
        for field in ("game_name", "description"):
            with pytest.raises(InvalidInput, match=f"^{field} must not contain a NUL"):
                await engine.launch_pto(**launch_args(**{field: text}))  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="player_id"):
            await engine.register_player(text)
        assert await engine.list_ptos() == []
        assert await engine.player_ids() == ["maker"]
        # Newlines and tabs in a description are text like any other.
        await engine.launch_pto(**launch_args(description="two\nlines\tand a tab"))  # type: ignore[arg-type]


async def test_http_refuses_a_nul_with_a_422_naming_the_field(store: str) -> None:
    async with operator_api(store) as http:
        assert (await http.post("/api/players", json={"player_id": "maker"})).status_code == 201
        body = {
            "pto_id": "g",
            "game_name": "G",
            "creator_id": "maker",
            "atu_required": 0,
            "pts_offered": 1,
            "price_per_pts": "1",
            "funding_deadline": "2999-01-01T00:00:00Z",
        }
        for field in ("game_name", "description"):
            for text in BAD:
                raw = json.dumps({**body, field: text})  # "\ud800" escaped, as JSON may
                r = await http.post(
                    "/api/ptos", content=raw, headers={"Content-Type": "application/json"}
                )
                assert r.status_code == 422, r.text
                error = r.json()["error"]
                assert error["code"] == "invalid_input"
                assert f"body.{field}: must be text of" in error["message"]
                assert "without NUL" in error["message"] and "pattern" not in error["message"]
        assert (await http.get("/api/ptos")).json() == []


@pytest.mark.parametrize("escape", ["\\0", "\\ud800"])
def test_a_scenario_with_unstorable_text_is_refused_with_its_line(escape: str) -> None:
    text = f"""name: s
clock: {{start: "2025-12-12T00:00:00Z", ticks: 2}}
players:
  - {{id: alice, usd_obbba: 50}}
ptos:
  - {{id: p1, game_name: "bad{escape}name", creator: alice, atu_required: 1,
     pts_offered: 1, price_per_pts: 1, funding_deadline_hours: 12}}
"""
    with pytest.raises(ScenarioError, match=r"s\.yaml:6.*game_name.*must not contain a NUL"):
        parse_scenario(text, "s.yaml")


def test_an_export_with_unstorable_text_is_refused_on_import(tmp_path: Path) -> None:
    with UbloxLocalStorage(store=tmp_path / "home") as storage:
        storage.save_player({"player_id": "maker", "usd_obbba_balance": 1.0})
        exported = storage.export_to_json(tmp_path / "export.json")
    data = json.loads(exported.read_text())
    data["players"][0]["player_id"] = "mak\x00er"
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with UbloxLocalStorage(store=tmp_path / "copy") as storage:
        with pytest.raises(InvalidInput, match="player_id must not contain a NUL"):
            storage.import_from_json(tmp_path / "edited.json", force=True)
