"""``/ws/events``: the public event stream, with replay and a real per-client bound.

Every message is one JSON object with ``kind``, ``at`` and ``seq`` (the event's
number in the log, in commit order) and the event's public fields: never a
player's USD-OBBBA amounts (``events.public``).

- ``?since=N`` first replays from the store every logged event with ``seq > N``
  (the log keeps the last ``schema.EVENT_RETENTION`` events; if some of those
  the client asks for are gone, an ``events_expired`` message says how many),
  then goes live. Sequence numbers on one connection only ever increase.
- A client that falls behind never slows the engine. At most ``buffer`` events
  wait for it in memory; a send that cannot complete within ``send_timeout``
  seconds (the client stopped reading and the socket buffers are full) counts as
  falling behind too. Either way the server stops queueing for that client, sends
  ``{"kind": "events_dropped", "count": C, "since": N}`` as soon as the socket
  takes it (C events after N did not reach it) and closes with 1013: reconnect
  with ``?since=N`` to get exactly what was missed.
- Clients only listen: anything they send, text or binary, is ignored. A
  ``since`` that is not a whole number ≥ 0 is refused at the handshake: HTTP 400
  with the API's error body naming ``since`` (``refuse_handshake``); one ahead of
  the log (a store restored from an older backup) is closed with 1008.

The kernel's socket buffers still hold what was sent before a client stalled;
bind the server's listening socket with a small ``SO_SNDBUF`` (accepted sockets
inherit it) so that is kilobytes, not megabytes. A send is cancelled only while
it waits for room (uvicorn writes a frame whole once there is), so a timed-out
send never leaves half a frame behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..core import events as ev
from ..core.errors import ActorClosed, InvalidInput, UbloxError
from ..core.records import iso
from ..engine import Engine
from ..store.sqlite.schema import EVENT_RETENTION
from .errors import error_json
from .models import rfc3339

EVENT_BUFFER = 256
SEND_TIMEOUT = 10.0
# How long a stalled client may take to read the news that it fell behind before
# the server gives up on it and drops the connection.
NOTICE_TIMEOUT = 60.0
NOTICE_RETRY = 0.2
REPLAY_PAGE = 500
CLOSE_BEHIND = 1013  # "try again later": reconnect with ?since=
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001

_GONE = (WebSocketDisconnect, RuntimeError, OSError, anyio.ClosedResourceError)


@dataclass(eq=False)
class StreamStats:
    """What one connection did, for tests and metrics."""

    bound: int = 0
    peak: int = 0  # the most events that ever waited in memory for this client
    replayed: int = 0
    sent: int = 0
    ignored: int = 0  # client messages ignored
    stalled: bool = False  # a send timed out
    behind_since: int | None = None  # the ``since`` the client was told to reconnect with
    dropped: int = 0
    close_code: int | None = None
    client_left: bool = False


class _Behind(Exception):
    """The client fell behind (queue overflow or a send that timed out)."""


def parse_since(raw: str | None) -> int | None:
    """The ``since`` query parameter: absent, or a whole number ≥ 0."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InvalidInput(
            f"since must be a whole number from 0 to {10**18 - 1} (an event's seq), got {shown!r}"
        )
    return int(raw)


async def refuse_handshake(websocket: WebSocket, message: str) -> None:
    """Refuse the upgrade: HTTP 400 with ``{"error": {"code": "invalid_since", ...}}``
    where the server can answer a handshake with a response (uvicorn can), else accept
    and close with 1008 and ``message`` as the reason (a bare close before accepting
    would be a 403 that says nothing)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_json(400, "invalid_since", message))
        return
    await websocket.accept()
    reason = message.encode()[:123].decode(errors="ignore")  # a close reason's limit
    await _close(websocket, StreamStats(), CLOSE_POLICY, reason)


async def serve_events(
    websocket: WebSocket,
    engine: Engine,
    *,
    since: int | None,
    buffer: int = EVENT_BUFFER,
    send_timeout: float = SEND_TIMEOUT,
    stats: StreamStats | None = None,
) -> None:
    """Handle one whole ``/ws/events`` connection (accept, replay, live, close)."""
    stats = stats if stats is not None else StreamStats()
    await websocket.accept()
    if since is not None and since < 0:
        await _close(websocket, stats, CLOSE_POLICY, "since must be ≥ 0")
        return
    try:
        # Subscribe before reading the log, so nothing falls between the two; events
        # that are in both are skipped by their seq.
        subscription = engine.events(buffer)
    except ActorClosed:
        await _close(websocket, stats, CLOSE_GOING_AWAY, "the engine is shutting down")
        return
    stream = _Stream(websocket, engine, subscription, stats, send_timeout)
    code, reason = CLOSE_GOING_AWAY, "the engine is shutting down"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_ignore_incoming, websocket, stats, tg.cancel_scope)
            # Every exception is handled here, in the task group's body: one escaping
            # it would reach the server wrapped in an ExceptionGroup, as a crash.
            try:
                await stream.run(since)
            except _Behind:
                await subscription.aclose()  # nothing more waits in memory for it
                try:
                    code, reason = await stream.tell_behind()
                except _GONE:
                    stats.client_left = True
            except _Refused as refusal:
                code, reason = CLOSE_POLICY, str(refusal)
            except UbloxError:
                pass  # the store closed under the replay: the engine is going away
            except _GONE:
                stats.client_left = True
            tg.cancel_scope.cancel()
    finally:
        stats.peak = max(stats.peak, subscription.peak)
        await subscription.aclose()
    if not stats.client_left:
        await _close(websocket, stats, code, reason)


class _Refused(Exception):
    pass


class _Stream:
    def __init__(
        self,
        websocket: WebSocket,
        engine: Engine,
        subscription: ev.Subscription,
        stats: StreamStats,
        send_timeout: float,
    ) -> None:
        self.ws = websocket
        self.engine = engine
        self.subscription = subscription
        self.stats = stats
        self.send_timeout = send_timeout
        self.last = engine.last_event_seq
        stats.bound = subscription.bound

    async def run(self, since: int | None) -> None:
        if since is not None:
            await self.replay(since)
        while True:
            try:
                try:
                    event = self.subscription.receive_nowait()
                except anyio.WouldBlock:
                    if self.subscription.lost:
                        # Drained, with a gap behind: no later event may come to say so.
                        raise _Behind from None
                    event = await self.subscription.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return  # the engine closed
            self.stats.peak = max(self.stats.peak, self.subscription.peak)
            if isinstance(event, ev.EventsDropped):
                raise _Behind
            if event.seq <= self.last:
                continue  # already replayed
            await self.send(event.public_dict())
            self.last = event.seq

    async def replay(self, since: int) -> None:
        oldest, newest = await self.engine.store.event_log_span()
        if since > newest:
            raise _Refused(f"since {since} is ahead of the event log (newest {newest})")
        first_kept = oldest if oldest else newest + 1
        if since < first_kept - 1:
            expired = first_kept - 1 - since
            await self.send(
                {
                    "kind": "events_expired",
                    "at": self.now(),
                    "count": expired,
                    "since": since,
                    "retention": EVENT_RETENTION,
                }
            )
        self.last = since
        while True:
            rows = await self.engine.store.events_after(self.last, REPLAY_PAGE)
            for seq, _, payload in rows:
                await self.send(ev.public(ev.from_log(seq, payload)))
                self.last = seq
                self.stats.replayed += 1
            if len(rows) < REPLAY_PAGE:
                return

    def now(self) -> str:
        return rfc3339(iso(self.engine.clock.now()))

    async def send(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("at"), str):
            # The log keeps the store's ``YYYY-mm-dd HH:MM:SS+00:00`` (old logs replay
            # unchanged); the wire speaks RFC 3339 UTC like every REST timestamp.
            message = {**message, "at": rfc3339(message["at"])}
        text = json.dumps(message, separators=(",", ":"))
        with anyio.move_on_after(self.send_timeout) as scope:
            await self.ws.send_text(text)
        if scope.cancelled_caught:
            # The client stopped reading and every buffer on the way is full: holding
            # more for it would only delay the news that it fell behind.
            self.stats.stalled = True
            raise _Behind
        self.stats.sent += 1

    async def tell_behind(self) -> tuple[int, str]:
        """Send ``events_dropped`` as soon as the client reads again, then close.

        The count is composed afresh every ``NOTICE_RETRY`` seconds (a send still
        waiting for room is cancelled before it wrote anything, then retried), so
        it is exact as of at most that long before the client got it."""
        with anyio.move_on_after(NOTICE_TIMEOUT):
            while True:
                count = max(0, self.engine.last_event_seq - self.last)
                self.stats.behind_since, self.stats.dropped = self.last, count
                at = self.now()
                notice = {"kind": "events_dropped", "at": at, "count": count, "since": self.last}
                with anyio.move_on_after(NOTICE_RETRY) as scope:
                    await self.ws.send_text(json.dumps(notice, separators=(",", ":")))
                if not scope.cancelled_caught:
                    return CLOSE_BEHIND, f"fell behind: reconnect with ?since={self.last}"
        return CLOSE_BEHIND, "fell behind and stopped reading"


async def _ignore_incoming(
    websocket: WebSocket, stats: StreamStats, scope: anyio.CancelScope
) -> None:
    """Read (and ignore) whatever the client sends; its leaving ends the stream."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            stats.ignored += 1
    except _GONE:
        pass
    stats.client_left = True
    scope.cancel()


async def _close(websocket: WebSocket, stats: StreamStats, code: int, reason: str) -> None:
    stats.close_code = code
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            await websocket.close(code=code, reason=reason)
        except _GONE:
            pass  # the client is already gone


__all__ = ["EVENT_BUFFER", "StreamStats", "parse_since", "refuse_handshake", "serve_events"]
