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


class _Duplicate(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


def duplicate_key(body: bytes) -> str | None:
    """The first key an object of this JSON repeats, or None (also when it is not JSON:
    the handler's parser then says what is wrong with it)."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except _Duplicate as exc:
        return str(exc.args[0])
    except (ValueError, RecursionError):
        return None
    return None


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
        duplicate = duplicate_key(body) if body else None
        if duplicate is not None:
            # Python's json keeps the last of repeated keys, other parsers the first:
            # {"amount":"1","amount":"99999"} must not mean 99,999 here and 1 in a log.
            await send_error(send, 422, "invalid_input", f"the JSON repeats the key {duplicate!r}")
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


def _without_body(send: Send) -> Send:
    """``send`` for a HEAD request: the status and headers (Content-Length included)
    of the GET response, no body bytes."""

    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return head_send


class HostGuard:
    """The ``Host`` header must name one of ``allowed`` (``*`` any, ``*.example.org`` a
    subdomain), so DNS rebinding fails; refused with a JSON 400 like every error.

    Starlette's ``TrustedHostMiddleware`` answers in plain text and cuts an IPv6 Host
    (``[::1]:8000``) at its first colon, so ``::1`` could never be allowed."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = frozenset(h.lower() for h in allowed if not h.startswith("*"))
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        name = host_name((_header(scope, b"host") or b"").decode("latin-1"))
        if name in self.exact or (name and name.endswith(self.suffixes)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid host"})
            return
        await send_error(send, 400, "invalid_host", "the Host header names no host served here")


def host_name(header: str) -> str:
    """``example.org:80`` → ``example.org``; ``[::1]:8000`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.partition(":")[0]


class PlainErrors:
    """Turns a plain-text error of the middleware outside the app (CORS refusing a
    preflight) into the JSON error shape, keeping its status and other headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        text = bytearray()

        async def json_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", ()))
                if message["status"] >= 400 and headers.get(b"content-type", b"").startswith(
                    b"text/plain"
                ):
                    start = message
                    return
            elif start is not None and message["type"] == "http.response.body":
                text.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                message_text = text.decode("utf-8", "replace")
                kept = [
                    (k, v)
                    for k, v in start.get("headers", ())
                    if k.lower() not in (b"content-type", b"content-length")
                ]
                code = "cors_refused" if "CORS" in message_text else "bad_request"
                await send_error(send, start["status"], code, message_text, kept)
                return
            await send(message)

        await self.app(scope, receive, json_send)


class MethodGuard:
    """``OPTIONS`` and 405 answered with every method any route on the path accepts."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            # RFC 9110: HEAD is GET without the body, wherever GET exists.
            send = _without_body(send)
            as_get = {**scope, "method": "GET"}
            if any(route.matches(as_get)[0] == Match.FULL for route in self.routes()):
                await self.app(as_get, receive, send)
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
        if "GET" in allowed:
            allowed.add("HEAD")
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
