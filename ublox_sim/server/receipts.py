"""Idempotency receipts: what the server asks the store to keep with an operation.

A receipt (``store.backend.Receipt``, data only) travels in the operation's own unit,
so the key, the money and the stored response commit together or not at all; the
store writes the response from the rows the unit wrote, and ``stored_response`` reads
it back. Nothing else in ``server/`` knows the stored response's layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ..core.records import Player, PlaySession, PTSToken
from ..core.views import PlayerInfo, TokenInfo
from ..store.backend import Receipt
from .models import PlayerOut, SessionOut, TokenOut, ViewOut, money

# What a receipt stores as the response: the player's record, the PTS token the unit
# inserted, or the play session it inserted (with the player's tau_k after it).
ReceiptKind = Literal["player", "token", "session"]


def receipt_for(
    kind: ReceiptKind, key: tuple[str, str], fingerprint: str, status: int, at: str
) -> Receipt:
    """The receipt of one idempotent request: the store answers for the unit's subject
    (the player, the token it bought, the session it played)."""
    principal, name = key
    return Receipt(principal, name, fingerprint, status, at, kind)


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


def _row(cls: type, row: dict[str, Any]) -> dict[str, Any]:
    """A stored record's fields, REALs back from their exact 17-digit text."""
    floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
    return {k: float(v) if k in floats else v for k, v in row.items()}
