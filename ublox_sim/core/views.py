"""What the Engine hands back: frozen snapshots with money as exact ``Decimal`` major units."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .money import format_cents, to_decimal
from .records import PTO, Player, PTSToken


@dataclass(frozen=True, slots=True)
class PlayerInfo:
    player_id: str
    usd_obbba_balance: Decimal
    xUSD_balance: Decimal
    tau_k: float
    resonance_freq: float
    phase: float
    coherence: float
    position_x: float
    position_y: float
    total_play_time: float
    quality_score: float
    phase_locks_count: int
    memory_depth: float
    created_at: str

    @classmethod
    def of(cls, p: Player) -> PlayerInfo:
        return cls(
            player_id=p.player_id,
            usd_obbba_balance=to_decimal(p.usd_obbba_balance),
            xUSD_balance=to_decimal(p.xUSD_balance),
            tau_k=p.tau_k,
            resonance_freq=p.resonance_freq,
            phase=p.phase,
            coherence=p.coherence,
            position_x=p.position_x,
            position_y=p.position_y,
            total_play_time=p.total_play_time,
            quality_score=p.quality_score,
            phase_locks_count=p.phase_locks_count,
            memory_depth=p.memory_depth,
            created_at=p.created_at,
        )


@dataclass(frozen=True, slots=True)
class PTOInfo:
    pto_id: str
    game_name: str
    creator_id: str
    description: str
    status: str
    atu_required: int
    atu_spent: int
    pts_offered: int
    pts_sold: int
    price_per_pts: Decimal
    funding_goal: Decimal
    funding_raised: Decimal
    launch_time: str
    funding_deadline: str | None
    completion_time: str | None
    aci_coherence_score: float
    xUSD_pool: Decimal
    world_cdt_id: str | None
    amplification: float

    @classmethod
    def of(cls, p: PTO) -> PTOInfo:
        return cls(
            pto_id=p.pto_id,
            game_name=p.game_name,
            creator_id=p.creator_id,
            description=p.description,
            status=p.status,
            atu_required=p.atu_required,
            atu_spent=p.atu_spent,
            pts_offered=p.pts_offered,
            pts_sold=p.pts_sold,
            price_per_pts=to_decimal(p.price_per_pts),
            funding_goal=to_decimal(p.funding_goal),
            funding_raised=to_decimal(p.funding_raised),
            launch_time=p.launch_time,
            funding_deadline=p.funding_deadline,
            completion_time=p.completion_time,
            aci_coherence_score=p.aci_coherence_score,
            xUSD_pool=to_decimal(p.xUSD_pool),
            world_cdt_id=p.world_cdt_id,
            amplification=p.amplification,
        )


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    pto_id: str
    holder: str
    hours_committed: float
    hours_played: float
    purchase_price: Decimal
    xUSD_accumulated: Decimal
    tau_k_at_purchase: float
    purchase_time: str

    @classmethod
    def of(cls, t: PTSToken) -> TokenInfo:
        return cls(
            token_id=t.token_id,
            pto_id=t.game_id,
            holder=t.holder,
            hours_committed=t.hours_committed,
            hours_played=t.hours_played,
            purchase_price=to_decimal(t.purchase_price),
            xUSD_accumulated=to_decimal(t.xUSD_accumulated),
            tau_k_at_purchase=t.tau_k_at_purchase,
            purchase_time=t.purchase_time,
        )


@dataclass(frozen=True, slots=True)
class SessionResult:
    session_id: int
    pto_id: str
    player_id: str
    hours: float
    quality: float
    xUSD_earned: Decimal
    phase_locks: int
    memory_depth_added: float
    tau_k_after: float


def as_json(view: Any) -> dict[str, Any]:
    """A dataclass (a view or an event) as a JSON-ready dict: Decimals as strings, so no
    cent is lost."""
    return {
        name: str(value) if isinstance(value := getattr(view, name), Decimal) else value
        for name in _FIELD_NAMES.get(type(view)) or _field_names(type(view))
    }


# ``dataclasses.fields`` walks a class's fields on every call: each event logged and
# published goes through ``as_json``, thousands per tick. Their names, per class, once.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def leaderboard(players: list[Player], top: int = 10) -> list[dict[str, Any]]:
    """The top players by xUSD (ties by id), JSON-ready, money as exact strings."""
    ranked = sorted(players, key=lambda p: (-p.xUSD_balance, p.player_id))
    return [
        {
            "player_id": p.player_id,
            "xUSD_balance": format_cents(p.xUSD_balance),
            "usd_obbba_balance": format_cents(p.usd_obbba_balance),
            "phase_locks_count": p.phase_locks_count,
            "tau_k": round(p.tau_k, 3),
        }
        for p in ranked[: max(0, top)]
    ]
