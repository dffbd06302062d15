"""``/ws/events``: the engine's domain events as JSON, one per message, to any client.

Each client has a bounded buffer (``EVENT_BUFFER`` events); a client that falls behind
never slows the engine: its events are dropped and it is told how many
(``events_dropped``). Messages from the client are ignored; a close ends the stream.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..engine import Engine

EVENT_BUFFER = 256


async def serve_events(
    websocket: WebSocket,
    engine: Engine,
    *,
    since: int | None = None,
    on_dropped: Callable[[int], None] | None = None,
) -> None:
    await websocket.accept()
    try:
        async with engine.events(EVENT_BUFFER) as stream:
            async with anyio.create_task_group() as tg:

                async def watch_close() -> None:
                    # The client only listens: text or binary frames are ignored, a close ends it.
                    try:
                        while True:
                            message = await websocket.receive()
                            if message["type"] == "websocket.disconnect":
                                break
                    except (WebSocketDisconnect, RuntimeError):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_close)
                async for event in stream:
                    data = event.to_dict()
                    if on_dropped is not None and data.get("kind") == "events_dropped":
                        on_dropped(int(data.get("count", 0)))
                    await websocket.send_json(data)
                tg.cancel_scope.cancel()
    except (WebSocketDisconnect, RuntimeError, anyio.ClosedResourceError):
        return
    with anyio.CancelScope(shield=True):
        try:
            await websocket.close(code=1001, reason="the engine is shutting down")
        except (RuntimeError, WebSocketDisconnect):
            pass  # the client is already gone
