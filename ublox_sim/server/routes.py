"""Every route of the API, one decorated handler each: the OpenAPI document comes from here.

Authorization: the operator (admin key) may do everything; a player (token) may read
its own record and ledger, buy shares, play and transfer only as itself, and launch
or spend the ATU of a PTO only as its creator. PTOs, world images, stats and the
leaderboard (public fields only) need no credentials.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocket

from ..core.errors import InvalidInput, UnknownPlayer
from ..core.records import Player, PlaySession, PTSToken, iso
from ..core.views import PlayerInfo, TokenInfo
from ..engine import Engine
from ..store.backend import Receipt
from . import heatmap
from .auth import Authority, Principal
from .errors import ApiError, responses
from .event_socket import parse_since, serve_events
from .idempotency import IdempotencyKeys, Key, fingerprint
from .metrics import Metrics
from .models import (
    ID_HELP,
    ID_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_PAGE,
    MAX_TOP,
    AtuBody,
    BackupBody,
    BackupOut,
    BuyBody,
    DepositBody,
    ErrorOut,
    ExportOut,
    HealthOut,
    IssuedToken,
    LeaderOut,
    NewPlayer,
    NewPTO,
    NewToken,
    PlayBody,
    PlayerOut,
    PTOOut,
    SessionOut,
    StatsOut,
    TokenOut,
    TransactionOut,
    TransactionPage,
    TransferBody,
    money,
    parse_deadline,
    rfc3339,
)


def receipt_for(
    key: Key,
    print_: str,
    status: int,
    response: Literal["player", "token", "session"],
    engine: Engine,
) -> Receipt:
    """The idempotency receipt an operation commits in its own unit (see idempotency.py)."""
    principal, name = key
    return Receipt(principal, name, print_, status, iso(engine.clock.now()), response)


@dataclass(eq=False)
class ServerState:
    engine: Engine
    authority: Authority
    keys: IdempotencyKeys
    metrics: Metrics
    # The scenario this server plays, updated each tick, so a dashboard can say
    # "finished" rather than "live"; None when it plays none.
    run: dict[str, Any] | None = None


def state(request: Request) -> ServerState:
    server: ServerState = request.app.state.server
    return server


router = APIRouter()

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


def _identify(request: Request, credential: Credential) -> Principal:
    if credential is None:
        raise ApiError(401, "unauthorized", "this needs an Authorization: Bearer credential")
    principal = state(request).authority.identify(credential.credentials)
    if principal is None:
        raise ApiError(401, "unauthorized", "the credential is invalid, expired or revoked")
    return principal


async def operator(
    request: Request, credential: Annotated[Credential, Security(operator_scheme)]
) -> Principal:
    principal = _identify(request, credential)
    if principal.kind != "operator":
        raise ApiError(403, "forbidden", "this needs the operator's key")
    return principal


async def caller(
    request: Request,
    op: Annotated[Credential, Security(operator_scheme)],
    player: Annotated[Credential, Security(player_scheme)],
) -> Principal:
    return _identify(request, op or player)


Operator = Annotated[Principal, Depends(operator)]
Caller = Annotated[Principal, Depends(caller)]
PlayerId = Annotated[str, Path(pattern=ID_PATTERN, description=ID_HELP)]
PtoId = Annotated[str, Path(pattern=ID_PATTERN, description=ID_HELP)]
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


def require_self(principal: Principal, player_id: str) -> None:
    if principal.kind != "operator" and principal.player_id != player_id:
        raise ApiError(403, "forbidden", "a player may only act as itself")


@asynccontextmanager
async def body_names_players() -> AsyncIterator[None]:
    """A player named in the body (not the path) that does not exist is a refusal (409):
    404 is kept for the resource the path names."""
    try:
        yield
    except UnknownPlayer as exc:
        raise ApiError(409, exc.code, str(exc)) from None


def require_creator(principal: Principal, creator_id: str) -> None:
    if principal.kind != "operator" and principal.player_id != creator_id:
        raise ApiError(403, "forbidden", "only the PTO's creator may do this")


_AUTHED = (401, 403)
_BODY = (413, 415, 422)


def _player_links() -> dict[str, Any]:
    by_id = {"player_id": "$response.body#/player_id"}
    return {
        "GetPlayer": {"operationId": "get_player", "parameters": by_id},
        "Deposit": {"operationId": "deposit", "parameters": by_id},
        "IssueToken": {"operationId": "issue_token", "parameters": by_id},
        "ListTransactions": {"operationId": "list_transactions", "parameters": by_id},
        "LaunchPTO": {
            "operationId": "launch_pto",
            # A launch that can succeed: the new player as creator, a far deadline.
            "requestBody": {
                "creator_id": "$response.body#/player_id",
                "funding_deadline": "2999-01-01T00:00:00Z",
            },
        },
    }


def _pto_links() -> dict[str, Any]:
    by_id = {"pto_id": "$response.body#/pto_id"}
    return {
        "GetPTO": {"operationId": "get_pto", "parameters": by_id},
        "BuyShares": {
            "operationId": "buy_shares",
            "parameters": by_id,
            "requestBody": {"player_id": "$request.body#/creator_id"},
        },
        "Play": {
            "operationId": "play",
            "parameters": by_id,
            "requestBody": {"player_id": "$request.body#/creator_id"},
        },
        "SpendAtu": {"operationId": "spend_atu", "parameters": by_id},
        "WorldImage": {"operationId": "world_image", "parameters": by_id},
    }


# -- decoding stored idempotent responses ------------------------------------------------


def _row(cls: type, row: dict[str, Any]) -> dict[str, Any]:
    """A stored record's fields, REALs back from their exact 17-digit text."""
    floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
    return {k: float(v) if k in floats else v for k, v in row.items()}


def _player_out(data: dict[str, Any]) -> PlayerOut:
    return PlayerOut.of(PlayerInfo.of(Player(**_row(Player, data["player"]))))


def _token_out(data: dict[str, Any]) -> TokenOut:
    return TokenOut.of(TokenInfo.of(PTSToken(**_row(PTSToken, data["token"]))))


def _session_out(data: dict[str, Any]) -> SessionOut:
    s = _row(PlaySession, data["session"])
    return SessionOut(
        session_id=s["session_id"],
        pto_id=s["pto_id"],
        player_id=s["player_id"],
        hours=s["duration"],
        quality=s["quality"],
        xUSD_earned=money(int(s["xUSD_earned"])),
        phase_locks=s["phase_locks"],
        tau_k_after=float(data["tau_k_after"]),
    )


def _replayed(model: Any, status: int, replayed: bool) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)


# -- operations ------------------------------------------------------------------------


@router.get("/healthz", tags=["operations"], responses=responses(503))
async def healthz(request: Request) -> HealthOut:
    """Alive, the store open and accepting writes (one empty write round trip)."""
    engine = state(request).engine
    if engine.store.closed:
        raise ApiError(503, "store_closed", "the store is closed")
    await engine.sync()
    return HealthOut(status="ok", store_open=True, accepting_writes=True)


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        }
    },
)
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/api/stats", tags=["stats"], responses=responses(503))
async def get_stats(request: Request) -> StatsOut:
    """Counts and totals of the store, money as exact strings."""
    server = state(request)
    engine = server.engine
    run = server.run if server.run is not None else await engine.store.run_status()
    return StatsOut.of(await engine.stats(), engine.clock.now(), run)


# -- players ---------------------------------------------------------------------------


@router.post(
    "/api/players",
    status_code=201,
    tags=["players"],
    responses={
        201: {"description": "registered", "links": _player_links()},
        **responses(*_AUTHED, 409, *_BODY, 503),
    },
)
async def register_player(request: Request, body: NewPlayer, _: Operator) -> PlayerOut:
    """Register a player (operator); a starting balance is recorded as a deposit."""
    info = await state(request).engine.register_player(
        body.player_id,
        usd_obbba=body.usd_obbba,
        tau_k=body.tau_k,
        resonance_freq=body.resonance_freq,
    )
    return PlayerOut.of(info)


@router.get("/api/players", tags=["players"], responses=responses(422, 503))
async def leaderboard(
    request: Request, top: Annotated[int, Query(ge=0, le=MAX_TOP)] = 10
) -> list[LeaderOut]:
    """Top players by xUSD (public fields only)."""
    engine = state(request).engine
    players = sorted(
        (engine.peek_player(pid) for pid in engine.player_ids()),
        key=lambda p: (-p.xUSD_balance, p.player_id),
    )
    return [
        LeaderOut(
            player_id=p.player_id,
            xUSD_balance=money(p.xUSD_balance),
            total_play_time=p.total_play_time,
            phase_locks_count=p.phase_locks_count,
        )
        for p in players[:top]
    ]


@router.get(
    "/api/players/{player_id}", tags=["players"], responses=responses(*_AUTHED, 404, 422, 503)
)
async def get_player(request: Request, player_id: PlayerId, who: Caller) -> PlayerOut:
    """One player's record (the player itself or the operator)."""
    require_self(who, player_id)
    return PlayerOut.of(await state(request).engine.get_player(player_id))


@router.post(
    "/api/players/{player_id}/deposit",
    response_model=PlayerOut,
    tags=["players"],
    responses=responses(*_AUTHED, 404, 409, *_BODY, 503),
)
async def deposit(
    request: Request,
    player_id: PlayerId,
    body: DepositBody,
    who: Operator,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Deposit USD-OBBBA (operator)."""
    server = state(request)
    engine = server.engine
    key_print = fingerprint("deposit", {"player_id": player_id}, body.model_dump(mode="json"))

    async def execute(receipt: Receipt | None) -> PlayerOut:
        return PlayerOut.of(await engine.deposit(player_id, body.amount, receipt=receipt))

    result, replayed = await server.keys.run(
        who,
        idempotency_key,
        key_print,
        lambda key, fp: receipt_for(key, fp, 200, "player", engine),
        execute,
    )
    out = _player_out(result) if isinstance(result, dict) else result
    return _replayed(out, 200, replayed)


@router.post(
    "/api/players/{player_id}/transfer",
    response_model=PlayerOut,
    tags=["players"],
    responses=responses(*_AUTHED, 404, 409, *_BODY, 503),
)
async def transfer(
    request: Request,
    player_id: PlayerId,
    body: TransferBody,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Move USD-OBBBA from this player to another (the sender itself or the operator)."""
    require_self(who, player_id)
    if body.to_player == player_id:
        raise ApiError(409, "invalid_transfer", "a transfer needs two different players")
    server = state(request)
    engine = server.engine
    key_print = fingerprint("transfer", {"player_id": player_id}, body.model_dump(mode="json"))

    await engine.get_player(player_id)  # 404: the path's player

    async def execute(receipt: Receipt | None) -> PlayerOut:
        async with body_names_players():
            info = await engine.transfer(player_id, body.to_player, body.amount, receipt=receipt)
        return PlayerOut.of(info)

    result, replayed = await server.keys.run(
        who,
        idempotency_key,
        key_print,
        lambda key, fp: receipt_for(key, fp, 200, "player", engine),
        execute,
    )
    out = _player_out(result) if isinstance(result, dict) else result
    return _replayed(out, 200, replayed)


@router.post(
    "/api/players/{player_id}/tokens",
    status_code=201,
    tags=["tokens"],
    responses=responses(*_AUTHED, 404, *_BODY, 503),
)
async def issue_token(
    request: Request,
    player_id: PlayerId,
    _: Operator,
    body: Annotated[NewToken | None, Body()] = None,
) -> IssuedToken:
    """Issue a signed, expiring token for a player (operator)."""
    server = state(request)
    await server.engine.get_player(player_id)  # 404 for an unknown player
    token, expires = server.authority.issue(player_id, body.ttl_seconds if body else None)
    return IssuedToken(player_id=player_id, token=token, expires_at=rfc3339(expires.isoformat()))


@router.delete(
    "/api/players/{player_id}/tokens",
    status_code=204,
    tags=["tokens"],
    responses={
        204: {"description": "every token issued so far is revoked"},
        **responses(*_AUTHED, 404, 422, 503),
    },
)
async def revoke_tokens(request: Request, player_id: PlayerId, who: Caller) -> Response:
    """Revoke every token of a player (the player itself or the operator)."""
    require_self(who, player_id)
    server = state(request)
    await server.engine.get_player(player_id)
    version = server.authority.versions.get(player_id, 0) + 1
    await server.engine.store.set_token_version(player_id, version)
    server.authority.versions[player_id] = version
    return Response(status_code=204)


@router.get(
    "/api/players/{player_id}/transactions",
    tags=["players"],
    responses=responses(*_AUTHED, 404, 422, 503),
)
async def list_transactions(
    request: Request,
    player_id: PlayerId,
    who: Caller,
    after: Annotated[int, Query(ge=0, le=2**62, description="the last tx_id seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> TransactionPage:
    """A player's ledger history, oldest first, one page at a time."""
    require_self(who, player_id)
    engine = state(request).engine
    await engine.get_player(player_id)
    rows = await engine.store.transactions_of(player_id, after=after, limit=limit)
    items = [
        TransactionOut(
            tx_id=int(t.tx_id or 0),
            tx_type=t.tx_type,
            from_player=t.from_player,
            to_player=t.to_player,
            amount=money(t.amount),
            currency=t.currency,  # type: ignore[arg-type]  # the schema's CHECK holds it
            pto_id=t.pto_id,
            timestamp=rfc3339(t.timestamp),
        )
        for t in rows
    ]
    return TransactionPage(items=items, next_after=items[-1].tx_id if len(items) == limit else None)


# -- PTOs --------------------------------------------------------------------------------


@router.post(
    "/api/ptos",
    status_code=201,
    tags=["ptos"],
    responses={
        201: {"description": "launched", "links": _pto_links()},
        **responses(*_AUTHED, 404, 409, *_BODY, 503),
    },
)
async def launch_pto(request: Request, body: NewPTO, who: Caller) -> PTOOut:
    """Launch a PTO (its creator or the operator)."""
    require_creator(who, body.creator_id)
    deadline = parse_deadline(body.funding_deadline)
    if deadline is None:
        raise ApiError(422, "invalid_input", "funding_deadline must be RFC 3339 with a time zone")
    engine = state(request).engine
    try:
        async with body_names_players():
            info = await engine.launch_pto(
                pto_id=body.pto_id,
                game_name=body.game_name,
                creator_id=body.creator_id,
                atu_required=body.atu_required,
                pts_offered=body.pts_offered,
                price_per_pts=body.price_per_pts,
                funding_deadline=deadline,
                description=body.description,
                amplification=body.amplification,
            )
    except (InvalidInput, OverflowError) as exc:
        # The document cannot say "in the future" or "within the store's years":
        # a deadline the clock refuses is a refusal of this request, not malformed input.
        raise ApiError(409, "invalid_deadline", f"funding_deadline refused: {exc}") from None
    return PTOOut.of(info)


@router.get("/api/ptos", tags=["ptos"], responses=responses(503))
async def list_ptos(request: Request) -> list[PTOOut]:
    """Every PTO."""
    return [PTOOut.of(p) for p in await state(request).engine.list_ptos()]


@router.get("/api/ptos/{pto_id}", tags=["ptos"], responses=responses(404, 422, 503))
async def get_pto(request: Request, pto_id: PtoId) -> PTOOut:
    """One PTO."""
    return PTOOut.of(await state(request).engine.get_pto(pto_id))


@router.post(
    "/api/ptos/{pto_id}/shares",
    response_model=TokenOut,
    status_code=201,
    tags=["ptos"],
    responses=responses(*_AUTHED, 404, 409, *_BODY, 503),
)
async def buy_shares(
    request: Request,
    pto_id: PtoId,
    body: BuyBody,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Buy PTS (whole hours) as the player itself (or the operator)."""
    require_self(who, body.player_id)
    server = state(request)
    engine = server.engine
    key_print = fingerprint("buy_shares", {"pto_id": pto_id}, body.model_dump(mode="json"))

    async def execute(receipt: Receipt | None) -> TokenOut:
        async with body_names_players():
            token = await engine.buy_pts(body.player_id, pto_id, body.hours, receipt=receipt)
        return TokenOut.of(token)

    result, replayed = await server.keys.run(
        who,
        idempotency_key,
        key_print,
        lambda key, fp: receipt_for(key, fp, 201, "token", engine),
        execute,
    )
    out = _token_out(result) if isinstance(result, dict) else result
    return _replayed(out, 201, replayed)


@router.post(
    "/api/ptos/{pto_id}/atu",
    tags=["ptos"],
    responses=responses(*_AUTHED, 404, 409, *_BODY, 503),
)
async def spend_atu(request: Request, pto_id: PtoId, body: AtuBody, who: Caller) -> PTOOut:
    """Spend Agential Time Units (the PTO's creator or the operator)."""
    engine = state(request).engine
    require_creator(who, (await engine.get_pto(pto_id)).creator_id)
    return PTOOut.of(await engine.spend_atu(pto_id, body.units))


@router.post(
    "/api/ptos/{pto_id}/play",
    response_model=SessionOut,
    status_code=201,
    tags=["ptos"],
    responses=responses(*_AUTHED, 404, 409, *_BODY, 503),
)
async def play(
    request: Request,
    pto_id: PtoId,
    body: PlayBody,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Play a session in the PTO's world on the player's PTS."""
    require_self(who, body.player_id)
    server = state(request)
    engine = server.engine
    key_print = fingerprint("play", {"pto_id": pto_id}, body.model_dump(mode="json"))

    async def execute(receipt: Receipt | None) -> SessionOut:
        async with body_names_players():
            session = await engine.play(body.player_id, pto_id, body.hours, receipt=receipt)
        return SessionOut.of(session)

    result, replayed = await server.keys.run(
        who,
        idempotency_key,
        key_print,
        lambda key, fp: receipt_for(key, fp, 201, "session", engine),
        execute,
    )
    out = _session_out(result) if isinstance(result, dict) else result
    return _replayed(out, 201, replayed)


@router.get(
    "/api/ptos/{pto_id}/world.png",
    tags=["ptos"],
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the world's coherence field",
        },
        **responses(404, 422, 503),
    },
)
async def world_image(request: Request, pto_id: PtoId) -> Response:
    """A PNG of the world's local coherence."""
    arrays = await state(request).engine.world(pto_id)
    image = await anyio.to_thread.run_sync(heatmap.world_png, arrays["theta"])
    return Response(image, media_type="image/png", headers={"Cache-Control": "no-store"})


# -- the store ---------------------------------------------------------------------------


@router.post(
    "/api/backups",
    status_code=201,
    tags=["backups"],
    responses=responses(*_AUTHED, 409, *_BODY, 503),
)
async def create_backup(
    request: Request, _: Operator, body: Annotated[BackupBody | None, Body()] = None
) -> BackupOut:
    """Take a consistent backup (operator)."""
    engine = state(request).engine
    path = await engine.backup(body.name if body else None)
    for entry in engine.store.list_backups():
        if entry["name"] == path.name:
            return BackupOut(
                name=entry["name"], created=rfc3339(entry["created"]), size=entry["size"]
            )
    raise ApiError(503, "backup_missing", "the backup was written but cannot be listed")


@router.get("/api/backups", tags=["backups"], responses=responses(*_AUTHED, 503))
async def list_backups(request: Request, _: Operator) -> list[BackupOut]:
    """Every backup, oldest first (operator)."""
    return [
        BackupOut(name=b["name"], created=rfc3339(b["created"]), size=b["size"])
        for b in state(request).engine.store.list_backups()
    ]


@router.get("/api/export", tags=["backups"], responses=responses(*_AUTHED, 503))
async def export(request: Request, _: Operator) -> ExportOut:
    """The full JSON export (operator)."""
    data = await state(request).engine.store.export_data()
    return ExportOut.model_validate(data)


# -- the dashboard and the event stream ----------------------------------------------------


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    page = files("ublox_sim").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


@router.websocket("/ws/events")
async def events(websocket: WebSocket) -> None:
    server: ServerState = websocket.app.state.server
    try:
        since = parse_since(websocket.query_params.get("since"))
    except InvalidInput:
        await websocket.close(code=1008, reason="since must be a whole number ≥ 0")
        return
    await serve_events(websocket, server.engine, since=since)


__all__ = ["ErrorOut", "ServerState", "json", "router"]
