"""An operator's HTTP client on the app served in the test's own process (no socket):
``create_app`` on a store, its lifespan entered, the admin key sent with every request
(imported as ``api_client``: pytest puts ``tests/`` on the path, as for ``live_server``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from ublox_sim.server import ServerConfig, create_app

OPERATOR_KEY = "operator-key-for-tests-0123456789"


@asynccontextmanager
async def operator_api(
    store: str | Path | None = None,
    *,
    key: str = OPERATOR_KEY,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``create_app(store)`` (None: ``$UBLOX_STORE`` or the default home), as
    the operator holding ``key``, with ``headers`` on every request too."""
    config = ServerConfig(admin_key=key, allowed_hosts=("testserver",), tick_seconds=None)
    app = create_app(store, config=config)
    async with app.api.router.lifespan_context(app.api):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {key}", **(headers or {})},
        ) as client:
            yield client
