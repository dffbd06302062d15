"""ASGI guards in front of the app: bodies, methods and origins, before any handler runs.

``BodyGuard`` reads a request body itself, so the limits hold whatever the handler:
only ``application/json`` (415), at most ``max_body`` bytes, counted while the body
streams in so a 100 MB upload is refused after the first megabyte rather than read
whole (413), within ``read_timeout`` seconds (408: a client that announces a body and
sends nothing is not held), nested at most ``max_depth`` deep (422, before a JSON
parser could recurse), and a state-changing request from a foreign ``Origin`` is
refused (403) unless CORS allows that origin. ``MethodGuard`` answers ``OPTIONS`` and
wrong methods from the union of every route on a path, so ``Allow`` is complete.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.routing import BaseRoute, Match

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (strings skipped), without parsing."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b"", body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class BodyGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        read_timeout: float,
        max_depth: int,
        allowed_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.max_depth = max_depth
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        close = [(b"connection", b"close")]
        origin = _header(scope, b"origin")
        if origin is not None and not self._same_origin(scope, origin):
            await send_error(send, 403, "forbidden_origin", "cross-origin requests are not allowed")
            return
        raw_length = _header(scope, b"content-length")
        chunked = b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
        try:
            length = int(raw_length) if raw_length is not None else None
        except ValueError:
            await send_error(send, 400, "bad_request", "Content-Length is not a number", close)
            return
        if length is not None and length > self.max_body:
            await send_error(
                send, 413, "body_too_large", f"the body exceeds {self.max_body} bytes", close
            )
            return
        refuse_media = bool(length or chunked) and not self._is_json(scope)
        chunks: list[bytes] = []
        size = 0
        more = bool(length or chunked)
        with anyio.move_on_after(self.read_timeout) as scope_timer:
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await send_error(
                        send,
                        413,
                        "body_too_large",
                        f"the body exceeds {self.max_body} bytes",
                        close,
                    )
                    return
                chunks.append(chunk)
                more = bool(message.get("more_body", False))
        if scope_timer.cancelled_caught:
            await send_error(send, 408, "request_timeout", "the body did not arrive in time", close)
            return
        if refuse_media:
            # Read (within the limits) before answering, so the client sees the 415
            # rather than a connection reset in the middle of its upload.
            await send_error(
                send, 415, "unsupported_media_type", "the body must be application/json"
            )
            return
        body = b"".join(chunks)
        if body and json_depth(body) > self.max_depth:
            await send_error(
                send, 422, "invalid_input", f"the JSON nests deeper than {self.max_depth} levels"
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _is_json(self, scope: Scope) -> bool:
        value = (_header(scope, b"content-type") or b"").decode("latin-1")
        media, _, params = value.partition(";")
        if media.strip().lower() != "application/json":
            return False
        charset = params.strip().lower()
        return charset in ("", "charset=utf-8", 'charset="utf-8"')

    def _same_origin(self, scope: Scope, origin: bytes) -> bool:
        text = origin.decode("latin-1")
        if text in self.allowed_origins:
            return True
        host = (_header(scope, b"host") or b"").decode("latin-1")
        return bool(host) and urlsplit(text).netloc == host


class MethodGuard:
    """``OPTIONS`` and 405 answered with every method any route on the path accepts."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed: set[str] = set()
        full = False
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                full = True
                break
            if match == Match.PARTIAL:
                allowed |= set(getattr(route, "methods", None) or ())
        if full or not allowed:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(allowed | {"OPTIONS"}))
        if scope["method"] == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [(b"allow", allow.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await send_error(
            send,
            405,
            "method_not_allowed",
            f"{scope['method']} is not allowed here; allowed: {allow}",
            [(b"allow", allow.encode())],
        )
