"""Every error the API gives is ``{"error": {"code", "message"}}`` with a real status code.

401 no or invalid credentials · 403 the caller may not do this · 404 unknown id or
route · 405 method not allowed · 408 the body did not arrive in time · 409 refused by
the rules or the store's state (nothing changed) · 413 body too large · 415 not JSON ·
422 the request does not match the document · 503 the engine is closing or its store
failed, or another process sharing the database holds the world's lease and cannot be
asked to play it (``world_leased``, with ``Retry-After``; a reachable holder answers the
play itself: ``forward``). The framework's own errors are translated too, so no plain-text error escapes.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import (
    InvalidInput,
    Refusal,
    RuntimeFailure,
    StoreError,
    UbloxError,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
    WorldLeased,
)
from ..core.logsetup import get_logger
from .models import ErrorOut

log = get_logger(__name__)


class ApiError(Exception):
    """An HTTP error raised by the server itself (auth, limits, idempotency)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def status_of(exc: UbloxError) -> int:
    if isinstance(exc, UnknownPlayer | UnknownPTO | UnknownToken):
        return 404
    if isinstance(exc, Refusal):
        return 409
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, RuntimeFailure | StoreError):
        return 503
    return 500


_DESCRIPTIONS = {
    401: "no valid credentials",
    403: "the caller may not do this",
    404: "unknown id",
    409: "refused: nothing was changed",
    413: "the body is larger than the server's limit",
    415: "the body is not application/json",
    422: "the request does not match this document",
    503: "the engine is closing or its store failed, or (several processes) another"
    " process holds the world's lease: retry after Retry-After seconds",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of an operation (each with the error schema)."""
    return {s: {"model": ErrorOut, "description": _DESCRIPTIONS[s]} for s in statuses}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
}


MAX_LISTED_PROBLEMS = 10  # a 422 names at most this many problems, then counts the rest


def install(app: FastAPI) -> None:
    @app.exception_handler(UbloxError)
    async def ublox_error(request: Request, exc: UbloxError) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("server.unexpected_error", error=repr(exc), path=request.url.path)
        headers = None
        if isinstance(exc, WorldLeased):  # another process steps the world: retry then
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return error_json(status, exc.code, str(exc) or exc.code, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_json(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        found = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}"
            for e in found[:MAX_LISTED_PROBLEMS]
        )
        if len(found) > MAX_LISTED_PROBLEMS:
            # 80,000 unknown keys would otherwise make a 3.6 MB answer to a 1 MB body.
            problems += f"; and {len(found) - MAX_LISTED_PROBLEMS} more"
        return error_json(422, "invalid_input", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (not JSON, not UTF-8): the body does not
            # match the document, like any other invalid body.
            message = exc.detail if isinstance(exc.detail, str) else "invalid body"
            return error_json(422, "invalid_input", message)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code
        return error_json(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("server.unexpected_error", error=repr(exc), path=request.url.path)
        return error_json(500, "internal_error", "internal error")
