"""The only store rows the server builds itself: idempotency receipts and token versions.

Everything here knows the store's row format; nothing else in ``server/`` does. A
receipt is appended to the operation's own unit, so the key, the money and the stored
response commit together or not at all, and ``stored_response`` reads that response
back. Swapping these statements for a data-only ``Receipt`` (or a backend method)
changes this module and no route.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ..core.records import Player, PlaySession, PTSToken
from ..core.views import PlayerInfo, TokenInfo
from ..store.sqlite import rows as ledger
from ..store.sqlite.writer import Statement
from .models import PlayerOut, SessionOut, TokenOut, ViewOut, money

# What a receipt stores as the response: the player's record, the PTS token the unit
# inserted, or the play session it inserted (with the player's tau_k after it).
ReceiptKind = Literal["player", "token", "session"]
Receipt = Statement


def receipt_for(
    kind: ReceiptKind,
    key: tuple[str, str],
    fingerprint: str,
    status: int,
    *,
    player_id: str,
    pto_id: str,
    at: str,
) -> Receipt:
    """The receipt of one idempotent request (``pto_id`` is unused for ``"player"``)."""
    match kind:
        case "player":
            return ledger.receipt_player(key, fingerprint, status, player_id, at)
        case "token":
            return ledger.receipt_token(key, fingerprint, status, player_id, pto_id, at)
        case "session":
            return ledger.receipt_session(key, fingerprint, status, player_id, pto_id, at)


def stored_response(kind: ReceiptKind, data: dict[str, Any]) -> ViewOut:
    """The response a receipt of ``kind`` stored, decoded as the first answer gave it."""
    match kind:
        case "player":
            return PlayerOut.of(PlayerInfo.of(Player(**_row(Player, data["player"]))))
        case "token":
            return TokenOut.of(TokenInfo.of(PTSToken(**_row(PTSToken, data["token"]))))
        case "session":
            s = _row(PlaySession, data["session"])
            return SessionOut.model_validate(
                {
                    "session_id": s["session_id"],
                    "pto_id": s["pto_id"],
                    "player_id": s["player_id"],
                    "hours": s["duration"],
                    "quality": s["quality"],
                    "xUSD_earned": money(int(s["xUSD_earned"])),
                    "phase_locks": s["phase_locks"],
                    "tau_k_after": float(data["tau_k_after"]),
                }
            )


def token_version(player_id: str, version: int) -> Statement:
    """The unit that revokes a player's tokens issued before ``version``."""
    return ledger.set_token_version(player_id, version)


def _row(cls: type, row: dict[str, Any]) -> dict[str, Any]:
    """A stored record's fields, REALs back from their exact 17-digit text."""
    floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
    return {k: float(v) if k in floats else v for k, v in row.items()}
