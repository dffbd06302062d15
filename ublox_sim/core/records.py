"""The domain records, one per table, and their three shapes.

* the dataclass: what actors hold (money in integer cents);
* the table row: the same values in column order (``store.sqlite.tables``: the SQL
  lives in the store, not here);
* the seed dict: the seed notes' keys, money in major units (5000.0).

Field names are the column names, seed spelling included (``xUSD_balance``), so
the three shapes never disagree about a name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal, TypeVar, get_args

from .errors import InvalidInput
from .limits import UNSTORABLE_TEXT_RULE, storable_text
from .money import STORED_MAX_CENTS, seed_money, to_cents


def iso(moment: datetime) -> str:
    """The one timestamp format of the store: UTC, seconds, ``YYYY-mm-dd HH:MM:SS+00:00``."""
    if moment.tzinfo is None:
        raise InvalidInput(f"timestamp {moment!r} must be timezone-aware")
    return moment.astimezone(UTC).isoformat(sep=" ", timespec="seconds")


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(slots=True)
class Player:
    TABLE: ClassVar[str] = "players"
    KEY: ClassVar[str] = "player_id"
    MONEY: ClassVar[tuple[str, ...]] = ("usd_obbba_balance", "xUSD_balance")

    player_id: str
    position_x: float = 0.0
    position_y: float = 0.0
    phase: float = 0.0
    coherence: float = 0.0
    tau_k: float = 1.0
    resonance_freq: float = 1.0
    usd_obbba_balance: int = 0
    xUSD_balance: int = 0
    total_play_time: float = 0.0
    quality_score: float = 0.0
    phase_locks_count: int = 0
    memory_depth: float = 0.0
    created_at: str = ""


# A PTO's status, as stored in ``ptos.status`` and shown in exports and the API. The one
# home of these names: the schema's CHECK, the economy, the actors, verify and the
# server's models take them from here.
PTOStatus = Literal["funding", "in_progress", "completed", "failed"]
FUNDING: Final = "funding"  # selling PTS until every share is sold or the deadline passes
IN_PROGRESS: Final = "in_progress"  # fully funded: being built, playable
COMPLETED: Final = "completed"  # every ATU spent; the escrow went to the creator
FAILED: Final = "failed"  # the deadline passed unsold; every holder was refunded
PTO_STATUSES: Final[tuple[PTOStatus, ...]] = get_args(PTOStatus)
PLAYABLE: Final = (IN_PROGRESS, COMPLETED)  # a holder may play in the world
ESCROW_HELD: Final = (FUNDING, IN_PROGRESS)  # the PTO holds its buyers' USD-OBBBA


# xUSD composed per fully coherent hour of play (the seed's "daThiccNOW" factor), unless a
# PTO or a scenario's world says otherwise.
DEFAULT_AMPLIFICATION: Final = 100.0


@dataclass(slots=True)
class PTO:
    TABLE: ClassVar[str] = "ptos"
    KEY: ClassVar[str] = "pto_id"
    MONEY: ClassVar[tuple[str, ...]] = (
        "price_per_pts",
        "funding_goal",
        "funding_raised",
        "xUSD_pool",
    )

    pto_id: str
    game_name: str
    creator_id: str
    description: str = ""
    atu_required: int = 0
    atu_spent: int = 0
    pts_offered: int = 0
    pts_sold: int = 0
    price_per_pts: int = 0
    funding_goal: int = 0
    funding_raised: int = 0
    status: str = FUNDING
    launch_time: str = ""
    funding_deadline: str | None = None
    completion_time: str | None = None
    aci_coherence_score: float = 0.0
    xUSD_pool: int = 0
    world_cdt_id: str | None = None
    amplification: float = DEFAULT_AMPLIFICATION


@dataclass(slots=True)
class PTSToken:
    TABLE: ClassVar[str] = "pts_tokens"
    KEY: ClassVar[str] = "token_id"
    MONEY: ClassVar[tuple[str, ...]] = ("purchase_price", "xUSD_accumulated")

    token_id: str
    game_id: str
    holder: str
    hours_committed: float = 0.0
    hours_played: float = 0.0
    purchase_price: int = 0
    xUSD_accumulated: int = 0
    tau_k_at_purchase: float = 0.0
    purchase_time: str = ""


@dataclass(slots=True)
class Transaction:
    TABLE: ClassVar[str] = "transactions"
    KEY: ClassVar[str] = "tx_id"
    MONEY: ClassVar[tuple[str, ...]] = ("amount",)

    tx_id: int | None
    tx_type: str
    from_player: str | None
    to_player: str | None
    amount: int
    currency: str
    pto_id: str | None = None
    timestamp: str = ""
    metadata: str | None = None


@dataclass(slots=True)
class PlaySession:
    TABLE: ClassVar[str] = "play_sessions"
    KEY: ClassVar[str] = "session_id"
    MONEY: ClassVar[tuple[str, ...]] = ("xUSD_earned",)

    session_id: int | None
    pto_id: str
    player_id: str
    duration: float
    quality: float
    xUSD_earned: int
    timestamp: str = ""
    phase_locks: int = 0


Record = Player | PTO | PTSToken | Transaction | PlaySession
R = TypeVar("R", Player, PTO, PTSToken, Transaction, PlaySession)
RECORD_TYPES: tuple[type[Record], ...] = (Player, PTO, PTSToken, Transaction, PlaySession)


def to_seed(record: Record) -> dict[str, Any]:
    """The seed notes' shape: money in major units (5000.0; exact text such as
    ``"92233720368547758.07"`` past what a float holds exactly: ``money.seed_money``)."""
    data = dataclasses.asdict(record)
    for name in record.MONEY:
        data[name] = seed_money(data[name])
    return data


def from_seed(cls: type[R], data: Mapping[str, Any] | R, *, extra_ok: tuple[str, ...] = ()) -> R:
    """Build a record from a seed dict (major units) or pass a record through.

    Unknown keys are refused (they would be silently dropped otherwise), as are
    missing required keys and amounts that are not whole cents. Money is a stored figure
    here (a balance, a pool, a funding figure), so it may be anything a store holds, up to
    ``STORED_MAX_CENTS``: past the money limit, which bounds operations, not records.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{cls.__name__} must be a dict or {cls.__name__}, got {type(data)}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known) - set(extra_ok))
    if unknown:
        raise InvalidInput(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name in data:
            value = data[name]
            if name in cls.MONEY:
                value = to_cents(value, what=name, limit=STORED_MAX_CENTS)
            else:
                _check_type(cls.__name__, name, str(spec.type), value)
            values[name] = value
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise InvalidInput(f"{cls.__name__} is missing required field {name!r}")
    return cls(**values)


def _check_type(owner: str, name: str, annotation: str, value: object) -> None:
    """Refuse values whose type does not match the field (the seed dicts are untyped)."""
    if value is None and "None" in annotation:
        return
    base = annotation.split("|")[0].strip()
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value),
    }.get(base, True)
    if not ok:
        raise InvalidInput(f"{owner}.{name} must be {annotation}, got {value!r}")
    if isinstance(value, str) and not storable_text(value):
        raise InvalidInput(f"{owner}.{name} {UNSTORABLE_TEXT_RULE}, got {value!r}")


def metadata_json(metadata: Mapping[str, Any] | None) -> str | None:
    return None if metadata is None else json.dumps(metadata, sort_keys=True, default=str)


__all__ = [
    "COMPLETED",
    "DEFAULT_AMPLIFICATION",
    "ESCROW_HELD",
    "FAILED",
    "FUNDING",
    "IN_PROGRESS",
    "PLAYABLE",
    "PTO",
    "PTO_STATUSES",
    "RECORD_TYPES",
    "PTOStatus",
    "PTSToken",
    "PlaySession",
    "Player",
    "Record",
    "Transaction",
    "from_seed",
    "iso",
    "metadata_json",
    "parse_iso",
    "to_seed",
]
