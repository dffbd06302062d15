"""Every operation of the API, one entry each in ``OPERATIONS``: the OpenAPI document
comes from here. Adding an operation is one entry (and the engine method it calls).

Authorization: the operator (admin key) may do everything; a player (token) may read
its own record and ledger, buy shares, play and transfer only as itself, and launch
or spend the ATU of a PTO only as its creator. PTOs, world images, stats and the
leaderboard (public fields only) need no credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files
from types import GenericAlias
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Query, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocket

from ..core.errors import InvalidInput
from ..core.views import PTOInfo
from . import heatmap
from .errors import ApiError
from .event_socket import parse_since, refuse_handshake, serve_events
from .models import (
    MAX_PAGE,
    MAX_TOP,
    AtuBody,
    BackupBody,
    BackupOut,
    BuyBody,
    DepositBody,
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
    ViewOut,
    money,
    parse_deadline,
    rfc3339,
)
from .operation import Call, Op, ServerState, add_operations

B = TypeVar("B")
T = TypeVar("T")

_AUTHED = (401, 403)
_BODY = (413, 415, 422)
_BY_PLAYER = {"player_id": "$response.body#/player_id"}
_BY_PTO = {"pto_id": "$response.body#/pto_id"}


def as_player(
    *,
    path: str,
    name: str,
    doc: str,
    body: type[B],
    call: Callable[[Call[B]], Awaitable[T]],
    **more: Any,
) -> Op[B, T]:
    """A POST on a PTO in the name of the player its body names: by that player itself
    (its token) or the operator; an unknown player in the body is a 409. Buying shares and
    playing are such operations (and ``bench hot``'s no-op routes, to cost the same layers)."""
    return Op(
        method="POST",
        path=path,
        name=name,
        doc=doc,
        tag="ptos",
        auth="caller",
        acts_as=_body_player,
        body=body,
        body_names_players=True,
        call=call,
        status=201,
        errors=(*_AUTHED, 404, 409, *_BODY, 503),
        **more,
    )


def _body_player(c: Call[Any]) -> str:
    player_id: str = c.body.player_id
    return player_id


# -- the calls longer than one line ------------------------------------------------------------


async def _healthz(c: Call[None]) -> HealthOut:
    if c.engine.store.closed:
        raise ApiError(503, "store_closed", "the store is closed")
    await c.engine.sync()
    return HealthOut(status="ok", store_open=True, accepting_writes=True)


async def _metrics(c: Call[None]) -> Response:
    return Response(generate_latest(c.server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _stats(c: Call[None]) -> StatsOut:
    run = c.server.run if c.server.run is not None else await c.engine.store.run_status()
    return StatsOut.of(await c.engine.stats(), c.engine.clock.now(), run)


async def _register_player(c: Call[NewPlayer]) -> ViewOut:
    b = c.body
    info = await c.engine.register_player(
        b.player_id, usd_obbba=b.usd_obbba, tau_k=b.tau_k, resonance_freq=b.resonance_freq
    )
    return PlayerOut.of(info)


async def _leaderboard(c: Call[None]) -> list[LeaderOut]:
    players = await c.engine.leaderboard(c.query["top"])  # a store query: nobody woken
    return [
        LeaderOut(
            player_id=p.player_id,
            xUSD_balance=money(p.xUSD_balance),
            total_play_time=p.total_play_time,
            phase_locks_count=p.phase_locks_count,
        )
        for p in players
    ]


async def _two_players(c: Call[TransferBody]) -> None:
    if c.body.to_player == c.id:
        raise ApiError(409, "invalid_transfer", "a transfer needs two different players")
    await c.engine.get_player(c.id)  # 404: the path's player, before any key is looked up


async def _issue_token(c: Call[NewToken]) -> IssuedToken:
    await c.engine.get_player(c.id)  # 404 for an unknown player
    token, expires = c.server.authority.issue(c.id, c.body.ttl_seconds)
    return IssuedToken(player_id=c.id, token=token, expires_at=rfc3339(expires.isoformat()))


async def _revoke_tokens(c: Call[None]) -> Response:
    await c.engine.get_player(c.id)
    versions = c.server.authority.versions
    version = versions.get(c.id, 0) + 1
    await c.engine.store.set_token_version(c.id, version)
    versions[c.id] = version
    return Response(status_code=204)


async def _transactions(c: Call[None]) -> TransactionPage:
    await c.engine.get_player(c.id)
    limit = c.query["limit"]
    rows = await c.engine.store.transactions_of(c.id, after=c.query["after"], limit=limit)
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


async def _launch_pto(c: Call[NewPTO]) -> PTOInfo:
    b = c.body
    deadline = parse_deadline(b.funding_deadline)
    if deadline is None:
        raise ApiError(422, "invalid_input", "funding_deadline must be RFC 3339 with a time zone")
    try:
        return await c.engine.launch_pto(
            pto_id=b.pto_id,
            game_name=b.game_name,
            creator_id=b.creator_id,
            atu_required=b.atu_required,
            pts_offered=b.pts_offered,
            price_per_pts=b.price_per_pts,
            funding_deadline=deadline,
            description=b.description,
            amplification=b.amplification,
        )
    except (InvalidInput, OverflowError) as exc:
        # The document cannot say "in the future" or "within the store's years":
        # a deadline the clock refuses is a refusal of this request, not malformed input.
        raise ApiError(409, "invalid_deadline", f"funding_deadline refused: {exc}") from None


async def _body_creator(c: Call[NewPTO]) -> str:
    return c.body.creator_id


async def _pto_creator(c: Call[AtuBody]) -> str:
    return (await c.engine.get_pto(c.id)).creator_id


async def _world_image(c: Call[None]) -> Response:
    arrays = await c.engine.world(c.id)
    image = await anyio.to_thread.run_sync(heatmap.world_png, arrays["theta"])
    return Response(image, media_type="image/png", headers={"Cache-Control": "no-store"})


async def _create_backup(c: Call[BackupBody]) -> BackupOut:
    path = await c.engine.backup(c.body.name)
    for entry in c.engine.store.list_backups():
        if entry["name"] == path.name:
            return BackupOut(
                name=entry["name"], created=rfc3339(entry["created"]), size=entry["size"]
            )
    raise ApiError(503, "backup_missing", "the backup was written but cannot be listed")


async def _list_backups(c: Call[None]) -> list[BackupOut]:
    return [
        BackupOut(name=b["name"], created=rfc3339(b["created"]), size=b["size"])
        for b in c.engine.store.list_backups()
    ]


async def _export(c: Call[None]) -> ExportOut:
    return ExportOut.model_validate(await c.engine.store.export_data())


# -- the table ---------------------------------------------------------------------------------

OPERATIONS = (
    # operations
    Op(
        method="GET",
        path="/healthz",
        name="healthz",
        doc="Alive, the store open and accepting writes (one empty write round trip).",
        tag="operations",
        call=_healthz,
        response=HealthOut,
        errors=(503,),
    ),
    Op(
        method="GET",
        path="/metrics",
        name="metrics",
        doc="",
        tag="operations",
        call=_metrics,
        response_class=Response,
        success={
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
    ),
    Op(
        method="GET",
        path="/api/stats",
        name="get_stats",
        doc="Counts and totals of the store, money as exact strings.",
        tag="stats",
        call=_stats,
        response=StatsOut,
        errors=(503,),
    ),
    # players
    Op(
        method="POST",
        path="/api/players",
        name="register_player",
        doc="Register a player (operator); a starting balance is recorded as a deposit.",
        tag="players",
        auth="operator",
        body=NewPlayer,
        call=_register_player,
        response=PlayerOut,
        status=201,
        errors=(*_AUTHED, 409, *_BODY, 503),
        success={
            "description": "registered",
            "links": {
                "GetPlayer": {"operationId": "get_player", "parameters": _BY_PLAYER},
                "Deposit": {"operationId": "deposit", "parameters": _BY_PLAYER},
                "IssueToken": {"operationId": "issue_token", "parameters": _BY_PLAYER},
                "ListTransactions": {"operationId": "list_transactions", "parameters": _BY_PLAYER},
                "LaunchPTO": {
                    "operationId": "launch_pto",
                    # A launch that can succeed: the new player as creator, a far deadline.
                    "requestBody": {
                        "creator_id": "$response.body#/player_id",
                        "funding_deadline": "2999-01-01T00:00:00Z",
                    },
                },
            },
        },
    ),
    Op(
        method="GET",
        path="/api/players",
        name="leaderboard",
        doc="Top players by xUSD (public fields only).",
        tag="players",
        query=(("top", Annotated[int, Query(ge=0, le=MAX_TOP)], 10),),
        call=_leaderboard,
        response=list[LeaderOut],
        errors=(422, 503),
    ),
    Op(
        method="GET",
        path="/api/players/{player_id}",
        name="get_player",
        doc="One player's record (the player itself or the operator).",
        tag="players",
        auth="caller",
        acts_as=lambda c: c.id,
        call=lambda c: c.engine.get_player(c.id),
        out=PlayerOut.of,
        response=PlayerOut,
        errors=(*_AUTHED, 404, 422, 503),
    ),
    Op(
        method="POST",
        path="/api/players/{player_id}/deposit",
        name="deposit",
        doc="Deposit USD-OBBBA (operator).",
        tag="players",
        auth="operator",
        acts_as=lambda c: c.id,  # the operator may; and the receipt stores this player
        body=DepositBody,
        call=lambda c: c.engine.deposit(c.id, c.body.amount, receipt=c.receipt),
        out=PlayerOut.of,
        response=PlayerOut,
        receipt="player",
        errors=(*_AUTHED, 404, 409, *_BODY, 503),
    ),
    Op(
        method="POST",
        path="/api/players/{player_id}/transfer",
        name="transfer",
        doc="Move USD-OBBBA from this player to another (the sender itself or the operator).",
        tag="players",
        auth="caller",
        acts_as=lambda c: c.id,
        check=_two_players,
        body=TransferBody,
        body_names_players=True,
        call=lambda c: c.engine.transfer(c.id, c.body.to_player, c.body.amount, receipt=c.receipt),
        out=PlayerOut.of,
        response=PlayerOut,
        receipt="player",
        errors=(*_AUTHED, 404, 409, *_BODY, 503),
    ),
    # tokens
    Op(
        method="POST",
        path="/api/players/{player_id}/tokens",
        name="issue_token",
        doc="Issue a signed, expiring token for a player (operator).",
        tag="tokens",
        auth="operator",
        body=NewToken,
        body_optional=True,
        call=_issue_token,
        response=IssuedToken,
        status=201,
        errors=(*_AUTHED, 404, *_BODY, 503),
    ),
    Op(
        method="DELETE",
        path="/api/players/{player_id}/tokens",
        name="revoke_tokens",
        doc="Revoke every token of a player (the player itself or the operator).",
        tag="tokens",
        auth="caller",
        acts_as=lambda c: c.id,
        call=_revoke_tokens,
        status=204,
        success={"description": "every token issued so far is revoked"},
        errors=(*_AUTHED, 404, 422, 503),
    ),
    # players, again: the order of the OpenAPI document
    Op(
        method="GET",
        path="/api/players/{player_id}/transactions",
        name="list_transactions",
        doc="A player's ledger history, oldest first, one page at a time.",
        tag="players",
        auth="caller",
        acts_as=lambda c: c.id,
        query=(
            ("after", Annotated[int, Query(ge=0, le=2**62, description="the last tx_id seen")], 0),
            ("limit", Annotated[int, Query(ge=1, le=MAX_PAGE)], 50),
        ),
        call=_transactions,
        response=TransactionPage,
        errors=(*_AUTHED, 404, 422, 503),
    ),
    # PTOs
    Op(
        method="POST",
        path="/api/ptos",
        name="launch_pto",
        doc="Launch a PTO (its creator or the operator).",
        tag="ptos",
        auth="caller",
        creator_of=_body_creator,
        body=NewPTO,
        body_names_players=True,
        call=_launch_pto,
        out=PTOOut.of,
        response=PTOOut,
        status=201,
        errors=(*_AUTHED, 404, 409, *_BODY, 503),
        success={
            "description": "launched",
            "links": {
                "GetPTO": {"operationId": "get_pto", "parameters": _BY_PTO},
                "BuyShares": {
                    "operationId": "buy_shares",
                    "parameters": _BY_PTO,
                    "requestBody": {"player_id": "$request.body#/creator_id"},
                },
                "Play": {
                    "operationId": "play",
                    "parameters": _BY_PTO,
                    "requestBody": {"player_id": "$request.body#/creator_id"},
                },
                "SpendAtu": {"operationId": "spend_atu", "parameters": _BY_PTO},
                "WorldImage": {"operationId": "world_image", "parameters": _BY_PTO},
            },
        },
    ),
    Op(
        method="GET",
        path="/api/ptos",
        name="list_ptos",
        doc="Every PTO.",
        tag="ptos",
        call=lambda c: c.engine.list_ptos(),
        out=lambda ptos: [PTOOut.of(p) for p in ptos],
        response=GenericAlias(
            list, (PTOOut,)
        ),  # list[PTOOut]: PTOOut is derived, not a class statement
        errors=(503,),
    ),
    Op(
        method="GET",
        path="/api/ptos/{pto_id}",
        name="get_pto",
        doc="One PTO.",
        tag="ptos",
        call=lambda c: c.engine.get_pto(c.id),
        out=PTOOut.of,
        response=PTOOut,
        errors=(404, 422, 503),
    ),
    as_player(
        path="/api/ptos/{pto_id}/shares",
        name="buy_shares",
        doc="Buy PTS (whole hours) as the player itself (or the operator).",
        body=BuyBody,
        call=lambda c: c.engine.buy_pts(c.body.player_id, c.id, c.body.hours, receipt=c.receipt),
        out=TokenOut.of,
        response=TokenOut,
        receipt="token",
    ),
    Op(
        method="POST",
        path="/api/ptos/{pto_id}/atu",
        name="spend_atu",
        doc="Spend Agential Time Units (the PTO's creator or the operator).",
        tag="ptos",
        auth="caller",
        creator_of=_pto_creator,
        body=AtuBody,
        call=lambda c: c.engine.spend_atu(c.id, c.body.units),
        out=PTOOut.of,
        response=PTOOut,
        errors=(*_AUTHED, 404, 409, *_BODY, 503),
    ),
    as_player(
        path="/api/ptos/{pto_id}/play",
        name="play",
        doc="Play a session in the PTO's world on the player's PTS.",
        body=PlayBody,
        call=lambda c: c.engine.play(c.body.player_id, c.id, c.body.hours, receipt=c.receipt),
        out=SessionOut.of,
        response=SessionOut,
        receipt="session",
    ),
    Op(
        method="GET",
        path="/api/ptos/{pto_id}/world.png",
        name="world_image",
        doc="A PNG of the world's local coherence.",
        tag="ptos",
        call=_world_image,
        response_class=Response,
        success={
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the world's coherence field",
        },
        errors=(404, 422, 503),
    ),
    # the store
    Op(
        method="POST",
        path="/api/backups",
        name="create_backup",
        doc="Take a consistent backup (operator).",
        tag="backups",
        auth="operator",
        body=BackupBody,
        body_optional=True,
        call=_create_backup,
        response=BackupOut,
        status=201,
        errors=(*_AUTHED, 409, *_BODY, 503),
    ),
    Op(
        method="GET",
        path="/api/backups",
        name="list_backups",
        doc="Every backup, oldest first (operator).",
        tag="backups",
        auth="operator",
        call=_list_backups,
        response=list[BackupOut],
        errors=(*_AUTHED, 503),
    ),
    Op(
        method="GET",
        path="/api/export",
        name="export",
        doc="The full JSON export (operator).",
        tag="backups",
        auth="operator",
        call=_export,
        response=ExportOut,
        errors=(*_AUTHED, 503),
    ),
)

router = APIRouter()
add_operations(router, OPERATIONS)


# -- outside the document: the dashboard and the event stream ----------------------------------


@router.get("/", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    page = files("ublox_sim").joinpath("static/dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


@router.websocket("/ws/events")
async def events(websocket: WebSocket) -> None:
    server: ServerState = websocket.app.state.server
    try:
        since = parse_since(websocket.query_params.get("since"))
    except InvalidInput as exc:
        await refuse_handshake(websocket, str(exc))
        return
    await serve_events(websocket, server.engine, since=since)


__all__ = ["OPERATIONS", "ServerState", "router"]
