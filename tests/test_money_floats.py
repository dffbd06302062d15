"""Money over HTTP is "never a float" (README): a JSON float (1.0, 1e2, 100.00) for an
amount, a starting balance or a price is one 422 saying what the field takes, and moves
nothing; whole numbers and decimal strings still work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_client import operator_api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with operator_api(
        tmp_path / "home", headers={"Content-Type": "application/json"}
    ) as client:
        yield client


def refused_as_a_float(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input", error
    assert f"body.{field}: must be" in error["message"] and "never a float" in error["message"]


@pytest.mark.parametrize("raw", ["1.0", "1e2", "100.00", "2.5"])
async def test_a_json_float_is_refused_for_every_money_field(
    http: httpx.AsyncClient, raw: str
) -> None:
    r = await http.post("/api/players", content=f'{{"player_id": "a", "usd_obbba": {raw}}}')
    refused_as_a_float(r, "usd_obbba")
    assert (await http.post("/api/players", json={"player_id": "p", "usd_obbba": 7})).is_success
    for path, body in (
        ("/api/players/p/deposit", f'{{"amount": {raw}}}'),
        ("/api/players/p/transfer", f'{{"to_player": "q", "amount": {raw}}}'),
    ):
        refused_as_a_float(await http.post(path, content=body), "amount")
    launch = (
        '{"pto_id": "g", "game_name": "G", "creator_id": "p", "atu_required": 0,'
        f' "pts_offered": 1, "price_per_pts": {raw},'
        ' "funding_deadline": "2999-01-01T00:00:00Z"}'
    )
    refused_as_a_float(await http.post("/api/ptos", content=launch), "price_per_pts")
    player = (await http.get("/api/players/p")).json()
    assert player["usd_obbba_balance"] == "7.00"  # nothing moved
    assert (await http.get("/api/ptos")).json() == []


async def test_whole_numbers_and_decimal_strings_still_carry_money(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.post("/api/players", json={"player_id": "p", "usd_obbba": 5})).is_success
    r = await http.post("/api/players/p/deposit", content='{"amount": "2.50"}')
    assert r.status_code == 200 and r.json()["usd_obbba_balance"] == "7.50", r.text
    r = await http.post("/api/players/p/deposit", content='{"amount": 100}')
    assert r.status_code == 200 and r.json()["usd_obbba_balance"] == "107.50", r.text
