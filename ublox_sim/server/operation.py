"""One API operation as data (``Op``), and the one handler that runs any of them.

An ``Op`` says everything about an operation once: method, path, body and response
models, who may call it, the engine call, and whether it takes an ``Idempotency-Key``.
``add_operations`` turns each into a FastAPI route whose signature is built from the
entry, so FastAPI still validates the request and writes the OpenAPI document.

A request runs in this order: the caller's credential (401/403, before anything else),
then the path, query and body (422), then ``acts_as`` and ``creator_of`` (403),
``check`` (a refusal that needs the store, before any key is looked up), then the call
itself, wrapped in the idempotent-request shape when ``receipt`` is set. A request
refused because another process holds the world's lease is answered by that process
(``forward``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal

from fastapi import APIRouter, Body, Depends, Header, Request, Response, Security
from fastapi.params import Path
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from typing_extensions import TypeVar

from ..core.errors import UnknownPlayer, WorldLeased
from ..core.records import iso
from ..engine import Engine
from ..store.backend import Receipt
from .auth import Authority, Principal
from .errors import ApiError, responses
from .forward import Forwarder
from .idempotency import IdempotencyKeys, fingerprint
from .metrics import Metrics
from .models import ID_HELP, ID_PATTERN, IDEMPOTENCY_KEY_PATTERN
from .receipts import ReceiptKind, receipt_for, stored_response


@dataclass(eq=False)
class ServerState:
    engine: Engine
    authority: Authority
    keys: IdempotencyKeys
    metrics: Metrics
    # The scenario this server plays, updated each tick, so a dashboard can say
    # "finished" rather than "live"; None when it plays none.
    run: dict[str, Any] | None = None
    # Several processes on one database: sends a play to the world's lease holder.
    forwarder: Forwarder | None = None


def state(request: Request) -> ServerState:
    server: ServerState = request.app.state.server
    return server


# -- who is calling ------------------------------------------------------------------------

operator_scheme = HTTPBearer(
    scheme_name="operatorKey",
    description="The operator's admin key (UBLOX_ADMIN_KEY or <home>/admin.key)",
    auto_error=False,
)
player_scheme = HTTPBearer(
    scheme_name="playerToken",
    description="A player token issued by POST /api/players/{player_id}/tokens",
    bearerFormat="JWT",
    auto_error=False,
)

Credential = HTTPAuthorizationCredentials | None


async def _identify(request: Request, credential: Credential) -> Principal:
    if credential is None:
        raise ApiError(401, "unauthorized", "this needs an Authorization: Bearer credential")
    server = state(request)
    store = server.engine.store
    if getattr(store, "shared", False):
        # Several processes: a revocation another one wrote counts here too (the admin
        # key, hence the signing secret, is the same in every process: see auth).
        server.authority.versions = await store.token_versions()
    principal = server.authority.identify(credential.credentials)
    if principal is None:
        raise ApiError(401, "unauthorized", "the credential is invalid, expired or revoked")
    return principal


async def operator(
    request: Request, credential: Annotated[Credential, Security(operator_scheme)]
) -> Principal:
    principal = await _identify(request, credential)
    if principal.kind != "operator":
        raise ApiError(403, "forbidden", "this needs the operator's key")
    return principal


async def caller(
    request: Request,
    op: Annotated[Credential, Security(operator_scheme)],
    player: Annotated[Credential, Security(player_scheme)],
) -> Principal:
    return await _identify(request, op or player)


# public: no credential; operator: the admin key; caller: the admin key or a player token.
Auth = Literal["public", "operator", "caller"]
_WHO: dict[Auth, Any] = {
    "operator": Annotated[Principal, Depends(operator)],
    "caller": Annotated[Principal, Depends(caller)],
}
_ID = Annotated[str, Path(pattern=ID_PATTERN, description=ID_HELP)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=(
            "retrying with the same key returns the first response and moves nothing again;"
            " the same key with another request is a 422. A key must be unique per caller"
            " and request (e.g. a UUID4). Keys are scoped per caller: the operator's and"
            " each player's keys are separate spaces. Only successes are stored: a refused"
            " request (4xx) moved nothing, so a retry with its key runs again"
        ),
    ),
]


def require_self(principal: Principal | None, player_id: str) -> None:
    if principal is None or (principal.kind != "operator" and principal.player_id != player_id):
        raise ApiError(403, "forbidden", "a player may only act as itself")


def require_creator(principal: Principal | None, creator_id: str) -> None:
    if principal is None or (principal.kind != "operator" and principal.player_id != creator_id):
        raise ApiError(403, "forbidden", "only the PTO's creator may do this")


@asynccontextmanager
async def body_names_players() -> AsyncIterator[None]:
    """A player named in the body (not the path) that does not exist is a refusal (409):
    404 is kept for the resource the path names."""
    try:
        yield
    except UnknownPlayer as exc:
        raise ApiError(409, exc.code, str(exc)) from None


# -- an operation --------------------------------------------------------------------------

B = TypeVar("B", default=None)  # the request body (a model), or None for operations without one
T = TypeVar("T", default=Any)  # what the call returns, before ``out`` makes it the response


@dataclass(frozen=True, slots=True, kw_only=True)
class Call(Generic[B]):
    """One request, as an operation's functions see it."""

    server: ServerState
    who: Principal | None  # None on public operations
    id: str  # the path's {player_id} or {pto_id}; "" when the path names none
    body: B
    query: Mapping[str, int]
    receipt: Receipt | None = None  # for idempotent operations: pass to the engine

    @property
    def engine(self) -> Engine:
        return self.server.engine


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Op(Generic[B, T]):
    """One operation of the API. ``name`` is its operationId, ``doc`` its description."""

    method: Literal["GET", "POST", "DELETE"]
    path: str
    name: str
    doc: str
    tag: str
    call: Callable[[Call[B]], Awaitable[T]]
    out: Callable[[T], Any] = _same  # the engine's answer as the response model
    response: Any = None  # the response model (None: ``call`` returns a Response)
    status: int = 200
    auth: Auth = "public"
    acts_as: Callable[[Call[B]], str] | None = None  # a player may only act as this one
    creator_of: Callable[[Call[B]], Awaitable[str]] | None = None  # ...or its PTO's creator
    check: Callable[[Call[B]], Awaitable[None]] | None = None  # before any key is looked up
    body: type[B] | None = None
    body_optional: bool = False  # an absent body is the model's defaults
    body_names_players: bool = False  # an unknown player in the body is a 409, not a 404
    query: tuple[tuple[str, Any, int], ...] = ()  # (name, annotated int type, default)
    receipt: ReceiptKind | None = None  # idempotent: what its receipt stores as response
    errors: tuple[int, ...] = ()
    success: dict[str, Any] | None = None  # the success response's OpenAPI entry
    response_class: type[Response] | None = None

    def __post_init__(self) -> None:
        # An entry that cannot run is refused when the table is built, not at its first request.
        if self.receipt is not None and (self.acts_as is None or self.body is None):
            raise ValueError(f"{self.name}: an idempotent operation needs acts_as and a body")
        if self.receipt is not None and self.auth == "public":
            raise ValueError(f"{self.name}: an idempotent operation scopes keys by caller")
        if self.auth == "public" and (self.acts_as is not None or self.creator_of is not None):
            raise ValueError(f"{self.name}: acts_as and creator_of need a caller")
        if self.body_optional and self.body is None:
            raise ValueError(f"{self.name}: body_optional without a body model")

    @property
    def path_id(self) -> str | None:
        found = re.search(r"\{(\w+)\}", self.path)
        return found.group(1) if found else None


def add_operations(router: APIRouter, ops: tuple[Op[Any, Any], ...]) -> None:
    """Each operation as a route of ``router``, in the table's order."""
    for op in ops:
        documented: dict[int | str, Any] = {op.status: op.success} if op.success else {}
        extra: dict[str, Any] = {}
        if op.response_class is not None:
            extra["response_class"] = op.response_class
        router.add_api_route(
            op.path,
            _endpoint(op),
            methods=[op.method],
            name=op.name,
            description=op.doc,
            response_model=op.response,
            status_code=None if op.status == 200 else op.status,
            tags=[op.tag],
            responses={**documented, **responses(*op.errors)},
            **extra,
        )


def _endpoint(op: Op[Any, Any]) -> Callable[..., Awaitable[Any]]:
    async def endpoint(request: Request, **params: Any) -> Any:
        try:
            return await _run(op, request, params)
        except WorldLeased as refused:  # another process steps the world: it answers
            forwarder = state(request).forwarder
            if forwarder is None:
                raise
            return await forwarder.relay(request, refused)

    endpoint.__name__ = endpoint.__qualname__ = op.name
    endpoint.__doc__ = op.doc
    endpoint.__signature__ = _signature(op)  # type: ignore[attr-defined]
    return endpoint


def _signature(op: Op[Any, Any]) -> inspect.Signature:
    """What FastAPI reads to validate a request and document it."""

    def param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> Any:
        kind = inspect.Parameter.KEYWORD_ONLY
        return inspect.Parameter(name, kind, annotation=annotation, default=default)

    params = [inspect.Parameter("request", inspect.Parameter.POSITIONAL_ONLY, annotation=Request)]
    if op.path_id is not None:
        params.append(param(op.path_id, _ID))
    if op.body is not None and op.body_optional:
        params.append(param("body", Annotated[op.body | None, Body()], None))
    elif op.body is not None:
        params.append(param("body", op.body))
    if op.auth != "public":
        params.append(param("who", _WHO[op.auth]))
    params.extend(param(name, annotation, default) for name, annotation, default in op.query)
    if op.receipt is not None:
        params.append(param("idempotency_key", IdempotencyKey, None))
    return inspect.Signature(params)


async def _run(op: Op[Any, Any], request: Request, params: dict[str, Any]) -> Any:
    body = params.get("body")
    if body is None and op.body is not None:
        body = op.body()  # an optional body left out
    c: Call[Any] = Call(
        server=state(request),
        who=params.get("who"),
        id=params[op.path_id] if op.path_id is not None else "",
        body=body,
        query={name: params[name] for name, _, _ in op.query},
    )
    if op.acts_as is not None:
        require_self(c.who, op.acts_as(c))
    if op.creator_of is not None:
        require_creator(c.who, await op.creator_of(c))
    if op.check is not None:
        await op.check(c)
    if op.receipt is None:
        return op.out(await _call(op, c))
    return await _idempotent(op, c, params.get("idempotency_key"))


async def _call(op: Op[Any, Any], c: Call[Any]) -> Any:
    if not op.body_names_players:
        return await op.call(c)
    async with body_names_players():
        return await op.call(c)


async def _idempotent(op: Op[Any, Any], c: Call[Any], key: str | None) -> JSONResponse:
    """Run once per key: a retry answers the stored response, marked as replayed."""
    assert op.receipt is not None and op.acts_as is not None and c.who is not None  # __post_init__
    kind = op.receipt
    path = {op.path_id: c.id} if op.path_id is not None else {}
    key_print = fingerprint(op.name, path, c.body.model_dump(mode="json"))

    def receipt(scoped: tuple[str, str], print_: str) -> Receipt:
        at = iso(c.engine.clock.now())
        return receipt_for(kind, scoped, print_, op.status, at)

    async def execute(stored: Receipt | None) -> BaseModel:
        out: BaseModel = op.out(await _call(op, dataclasses.replace(c, receipt=stored)))
        return out

    result, replayed = await c.server.keys.run(c.who, key, key_print, receipt, execute)
    model = stored_response(kind, result) if isinstance(result, dict) else result
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(model.model_dump(mode="json"), status_code=op.status, headers=headers)


__all__ = ["Auth", "Call", "Op", "ServerState", "add_operations", "state"]
