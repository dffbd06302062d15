"""The dashboard at / in a real headless Chromium against the real server on loopback.

Skipped when Debian's Chromium (/usr/bin/chromium) or Playwright is missing. The page
must load without console errors, show the PTOs, their worlds with a legend and the aci
score, money with thousands separators, a placeholder in the empty feed and then a
purchase made through the HTTP API, in words. With the 100 PTOs of stress.yaml it must
stay under a fixed height, say the run finished, and draw a low-aci world with more
varied hues than a high-aci one. Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import OPERATOR, LiveServer, deadline_in

from ublox_sim.core import events as ev
from ublox_sim.server.heatmap import hue_spread
from ublox_sim.store.verify import verify_store

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
try:
    from playwright.sync_api import ConsoleMessage, Error, sync_playwright
except ImportError as exc:
    pytest.skip(f"playwright is not importable: {exc}", allow_module_level=True)

GAMES = {"pto_aurora": "Aurora Drift", "pto_basalt": "Basalt Echoes"}
ROOT = Path(__file__).resolve().parent.parent
# The page must never grow past this, however many PTOs there are.
MAX_PAGE_HEIGHT = 1300


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "home", tmp_path / "server.log")
    live.start()
    try:
        yield live
    finally:
        if live.proc is not None:
            live.stop(signal.SIGINT)


def post(client: httpx.Client, path: str, body: dict[str, Any], status: int = 201) -> Any:
    r = client.post(path, json=body)
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()


def seed(client: httpx.Client) -> None:
    """Two players and two PTOs: Aurora funded, built and played; Basalt still funding."""
    post(client, "/api/players", {"player_id": "ada", "usd_obbba": "500", "tau_k": 8})
    post(client, "/api/players", {"player_id": "bo", "usd_obbba": "120"})
    for pto_id, name in GAMES.items():
        post(
            client,
            "/api/ptos",
            {
                "pto_id": pto_id,
                "game_name": name,
                "creator_id": "ada",
                "atu_required": 20,
                "pts_offered": 8 if pto_id == "pto_aurora" else 400_000,
                "price_per_pts": "5.00",
                "funding_deadline": deadline_in(5),
                "description": f"{name}: a test world",
            },
        )
    post(client, "/api/ptos/pto_aurora/shares", {"player_id": "bo", "hours": 8})
    post(client, "/api/ptos/pto_aurora/atu", {"units": 5}, status=200)
    post(client, "/api/ptos/pto_aurora/play", {"player_id": "bo", "hours": 2})
    post(client, "/api/ptos/pto_basalt/shares", {"player_id": "ada", "hours": 6})


AT = "2026-01-01 00:00:00+00:00"
# One public event of every kind, as /ws/events sends them, and the stream's notices.
EXAMPLES = [
    e.public_dict()
    for e in (
        ev.PlayerRegistered(at=AT, seq=1, player_id="ada", usd_obbba=Decimal(5)),
        ev.Deposited(at=AT, seq=2, player_id="ada", amount=Decimal(5)),
        ev.Transferred(at=AT, seq=3, from_id="ada", to_id="bo", amount=Decimal(1)),
        ev.PTOLaunched(
            at=AT, seq=4, pto_id="w", game_name="W", creator_id="ada", funding_goal=Decimal(500)
        ),
        ev.SharesBought(
            at=AT,
            seq=5,
            pto_id="w",
            player_id="bo",
            token_id="w-pts-000001",
            hours=2,
            price=Decimal(10),
            pts_sold=2,
            pts_offered=100,
        ),
        ev.PTOFunded(at=AT, seq=6, pto_id="w", funding_raised=Decimal(500)),
        ev.PTOFailed(at=AT, seq=7, pto_id="w", refunded=Decimal(10), holders=1),
        ev.AtuSpent(at=AT, seq=8, pto_id="w", units=5, atu_spent=5, atu_required=10),
        ev.PTOCompleted(at=AT, seq=9, pto_id="w", creator_id="ada", payout=Decimal("1234567.89")),
        ev.SessionPlayed(
            at=AT,
            seq=10,
            pto_id="w",
            player_id="bo",
            session_id=1,
            hours=1.5,
            quality=0.8,
            xUSD_earned=Decimal(120),
            phase_locks=1,
        ),
        ev.PhaseLock(at=AT, seq=11, pto_id="w", player_id="bo", locks=1),
    )
] + [
    {"kind": "events_dropped", "at": AT, "count": 3, "since": 11},
    {"kind": "events_expired", "at": AT, "count": 3, "since": 0, "retention": 100_000},
]
assert {e["kind"] for e in EXAMPLES} >= set(ev.KINDS)


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page; console errors, page errors and failed requests are collected."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            errors.append(f"console {message.type}: {message.text} at {message.location}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(15_000)
            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.on(
                "requestfailed",
                lambda request: errors.append(f"request failed: {request.url} {request.failure}"),
            )
            try:
                yield page, errors
            except Error as exc:
                raise AssertionError(f"{exc}\nconsole errors: {errors}") from exc
        finally:
            browser.close()


def drawn_pixels(page: Any, selector: str) -> Any:
    """The image as the page drew it, read back through a canvas (64 × 64 RGB)."""
    flat = page.eval_on_selector(
        selector,
        """(img) => {
            const c = document.createElement("canvas");
            c.width = 64; c.height = 64;
            const ctx = c.getContext("2d");
            ctx.imageSmoothingEnabled = false;
            ctx.drawImage(img, 0, 0, 64, 64);
            return Array.from(ctx.getImageData(0, 0, 64, 64).data);
        }""",
    )
    return np.array(flat, dtype=np.uint8).reshape(64, 64, 4)[..., :3]


def world_shown(page: Any, pto_id: str) -> None:
    page.wait_for_function(
        """(id) => { const img = document.getElementById("world-img");
                     return img.dataset.pto === id && img.complete && img.naturalWidth > 0; }""",
        arg=pto_id,
    )


def test_dashboard_shows_ptos_worlds_and_live_events_in_words(
    server: LiveServer, browser_page: tuple[Any, list[str]]
) -> None:
    page, errors = browser_page
    with httpx.Client(base_url=server.url, timeout=15, trust_env=False, headers=OPERATOR) as client:
        seed(client)
        response = page.goto(server.url + "/", wait_until="load")
        assert response is not None and response.status == 200
        assert page.title() == "ublox-sim dashboard"
        page.wait_for_function(
            "document.getElementById('conn').textContent === 'events: connected'"
        )

        # Nothing happened since the page opened: the feed says so instead of being blank.
        assert "No events yet" in page.locator("#feed").inner_text()
        # A server without a scenario lives in wall time.
        page.wait_for_function("document.getElementById('run-state').textContent === 'live'")

        page.wait_for_selector('#pto-rows tr[data-pto="pto_basalt"]')
        names = page.locator("#pto-rows td.name").all_inner_texts()
        assert sorted(n.split()[0] for n in names) == ["Aurora", "Basalt"]
        aurora = page.locator('#pto-rows tr[data-pto="pto_aurora"]')
        assert aurora.locator(".status").inner_text() == "in progress"
        # Money with thousands separators: 400,000 PTS at 5.00.
        basalt = page.locator('#pto-rows tr[data-pto="pto_basalt"]')
        assert "30.00 / 2,000,000.00" in basalt.inner_text()

        # The selected world: an image that decoded, its aci score and a legend beside it.
        selected = page.eval_on_selector("#pto-rows tr.selected", "(tr) => tr.dataset.pto")
        world_shown(page, selected)
        assert page.locator("#legend").is_visible()
        assert "hue = phase" in page.locator("#legend-caption").inner_text()
        pto = client.get(f"/api/ptos/{selected}").json()
        aci = page.locator("#world-aci").inner_text().split()[0]
        assert aci == f"{pto['aci_coherence_score']:.3f}"

        # Every kind of event, and the stream's own notices, in words.
        words = page.evaluate("(events) => events.map(describe)", EXAMPLES)
        for event, said in zip(EXAMPLES, words, strict=True):
            assert not {"undefined", "NaN", "null", "{"} & set(said.replace("(", " ").split())
            # A sentence, not the fallback that only spells out the kind.
            assert said != event["kind"].replace("_", " ") and len(said.split()) >= 3, said
        assert "1,234,567.89" in words[[e["kind"] for e in EXAMPLES].index("pto_completed")]

        # A player's purchase shows up in the open page's live feed, in words: the
        # operator issues bo a token, and bo buys with it, as itself.
        issued = post(client, "/api/players/bo/tokens", {})
        as_bo = {"Authorization": f"Bearer {issued['token']}"}
        bought = client.post(
            "/api/ptos/pto_basalt/shares", json={"player_id": "bo", "hours": 3}, headers=as_bo
        )
        assert bought.status_code == 201, bought.text
        entry = page.wait_for_selector('#feed li[data-kind="shares_bought"]')
        assert entry is not None
        assert "bo bought 3 PTS of pto_basalt for 15.00 USD-OBBBA" in entry.inner_text()
        assert "No events yet" not in page.locator("#feed").inner_text()
        page.wait_for_selector(
            '#pto-rows tr[data-pto="pto_basalt"]:has-text("45.00 / 2,000,000.00")'
        )
        # The refresh kept every row's world thumbnail.
        page.wait_for_function(
            "[...document.querySelectorAll('#pto-rows .thumb')]"
            ".every((img) => img.complete && img.naturalWidth > 0)"
        )

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    assert errors == []
    assert server.stop(signal.SIGINT) == 0
    assert verify_store(server.home) == []


@pytest.fixture
def stress_home(tmp_path: Path) -> Path:
    """stress.yaml's 100 PTOs after 8 ticks (fewer players, so it takes seconds)."""
    home = tmp_path / "stress"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ublox_sim",
            "run",
            str(ROOT / "scenarios" / "stress.yaml"),
            "--home",
            str(home),
            "--set",
            "cohorts.0.count=300",
            "--set",
            "clock.ticks=8",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home


def test_stress_dashboard_stays_compact_says_finished_and_draws_coherence(
    stress_home: Path, tmp_path: Path, browser_page: tuple[Any, list[str]]
) -> None:
    page, errors = browser_page
    live = LiveServer(stress_home, tmp_path / "server.log")
    live.start()
    try:
        with httpx.Client(base_url=live.url, timeout=15, trust_env=False) as client:
            ptos = client.get("/api/ptos").json()
        assert len(ptos) == 100
        by_aci = sorted(ptos, key=lambda p: p["aci_coherence_score"])
        low, high = by_aci[0], by_aci[-1]
        assert high["aci_coherence_score"] - low["aci_coherence_score"] > 0.1

        page.goto(live.url + "/", wait_until="load")
        page.wait_for_selector("#pto-rows tr[data-pto]")
        page.wait_for_function(
            "document.getElementById('run-state').textContent === 'stress: finished'"
        )
        assert page.locator("#pto-rows tr[data-pto]").count() == 10
        assert page.locator("#page").inner_text() == "page 1 / 10"
        assert page.locator("#legend").is_visible()
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height <= MAX_PAGE_HEIGHT, height

        # Sorted by aci, highest first: the most coherent world is the one shown.
        world_shown(page, high["pto_id"])
        high_spread = hue_spread(drawn_pixels(page, "#world-img"))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-stress.png"), full_page=True)
        # Lowest first, then pick the least coherent world.
        page.click('th[data-sort="aci_coherence_score"]')
        page.click(f'#pto-rows tr[data-pto="{low["pto_id"]}"]')
        world_shown(page, low["pto_id"])
        low_spread = hue_spread(drawn_pixels(page, "#world-img"))
        assert low_spread > high_spread, (low_spread, high_spread)

        # Paging through all 100 keeps the page the same size.
        for _ in range(9):
            page.click("#next")
        assert page.locator("#page").inner_text() == "page 10 / 10"
        assert page.evaluate("document.documentElement.scrollHeight") <= MAX_PAGE_HEIGHT
    finally:
        assert live.stop(signal.SIGINT) == 0
    assert errors == []
