"""The dashboard at / in a real headless Chromium against the real server on loopback.

Skipped when Debian's Chromium (/usr/bin/chromium) or Playwright is missing. The page
must load without console errors, show the PTO cards with their world heatmaps, and
its live feed must show a purchase made through the HTTP API while the page is open.
A screenshot is left in test-artifacts/dashboard.png (git-ignored).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import OPERATOR, LiveServer, deadline_in

from ublox_sim.verify import verify_store

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
                "pts_offered": 8 if pto_id == "pto_aurora" else 40,
                "price_per_pts": "5.00",
                "funding_deadline": deadline_in(5),
                "description": f"{name}: a test world",
            },
        )
    post(client, "/api/ptos/pto_aurora/shares", {"player_id": "bo", "hours": 8})
    post(client, "/api/ptos/pto_aurora/atu", {"units": 5}, status=200)
    post(client, "/api/ptos/pto_aurora/play", {"player_id": "bo", "hours": 2})
    post(client, "/api/ptos/pto_basalt/shares", {"player_id": "ada", "hours": 6})


def test_dashboard_shows_ptos_heatmaps_and_live_events(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=15, trust_env=False, headers=OPERATOR) as client:
        seed(client)

        errors: list[str] = []
        warnings: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                errors.append(f"console: {message.text} at {message.location}")
            elif message.type == "warning":
                warnings.append(message.text)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.set_default_timeout(10_000)
                page.on("console", on_console)
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                page.on(
                    "requestfailed",
                    lambda request: errors.append(
                        f"request failed: {request.url} {request.failure}"
                    ),
                )

                response = page.goto(server.url + "/", wait_until="load")
                assert response is not None and response.status == 200
                assert page.title() == "ublox-sim dashboard"

                # The event feed connects; the cards carry the games' names.
                page.wait_for_function(
                    "document.getElementById('conn').textContent === 'events: live'"
                )
                page.wait_for_selector(".pto h3")
                names = page.locator(".pto h3").all_inner_texts()
                assert sorted(names) == sorted(GAMES.values())
                for name in GAMES.values():
                    assert page.get_by_text(name, exact=True).is_visible()
                assert page.locator("#n-players").inner_text() == "2"
                assert page.locator("#n-ptos").inner_text() == "2"
                aurora = page.locator('.pto[data-pto="pto_aurora"]')
                assert aurora.locator(".status").inner_text() == "in_progress"

                # At least one world heatmap really loaded (a decoded PNG, not a broken image).
                page.wait_for_function(
                    "[...document.querySelectorAll('.pto img')]"
                    ".some((img) => img.complete && img.naturalWidth > 0)"
                )
                widths = page.eval_on_selector_all(
                    ".pto img", "(imgs) => imgs.map((img) => img.naturalWidth)"
                )
                assert len(widths) == 2 and max(widths) > 0

                # A purchase through the API shows up in the open page's live feed.
                post(client, "/api/ptos/pto_basalt/shares", {"player_id": "bo", "hours": 3})
                entry = page.wait_for_selector(
                    '#feed li[data-kind="shares_bought"]:has-text("bo bought 3 PTS")'
                )
                assert entry is not None
                assert "pto_basalt" in entry.inner_text()
                # The next refresh shows it on the card too: (6 + 3) × 5.00 raised.
                page.wait_for_selector('.pto[data-pto="pto_basalt"] .kv:has-text("45.00 / 200.00")')
                page.wait_for_function(
                    "[...document.querySelectorAll('.pto img')]"
                    ".every((img) => img.complete && img.naturalWidth > 0)"
                )

                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                page.close()
            except Error as exc:
                raise AssertionError(f"{exc}\nconsole errors: {errors}") from exc
            finally:
                browser.close()

    assert errors == []
    assert not [w for w in warnings if "refresh failed" in w], warnings
    assert server.stop(signal.SIGINT) == 0
    assert verify_store(server.home) == []
