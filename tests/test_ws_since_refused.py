"""The served ``/ws/events`` refuses a bad ``?since=`` at the handshake with HTTP 400 and
the API's error body naming ``since`` (it was a bare 403 that said nothing)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from live_server import LiveServer
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.anyio


async def test_a_bad_since_is_a_400_naming_since(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "home", tmp_path / "server.log")
    live.start()
    try:
        for since in ("abc", "-5", "9" * 30):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{live.ws_url}?since={since}", proxy=None):
                    pass
            answer = refused.value.response
            assert answer.status_code == 400, (since, answer)
            error = json.loads(answer.body)["error"]
            assert error["code"] == "invalid_since"
            assert error["message"].startswith("since must be a whole number"), error
        async with connect(f"{live.ws_url}?since=0", proxy=None) as ws:  # a good one still works
            assert ws.response is not None and ws.response.status_code == 101
    finally:
        assert live.stop(signal.SIGINT) == 0, live.output()
