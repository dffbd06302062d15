"""Messages between actors: one union per actor, frozen, handled with ``match``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.records import PlaySession
from ..store.sqlite.writer import Statement

if TYPE_CHECKING:
    from .player import PlayerActor


# -- to a player actor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPlayer:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposit:
    amount: int
    at: str
    # Statements that must commit in the same unit (a server's idempotency receipt).
    receipt: tuple[Statement, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTransfer:
    to: PlayerActor
    amount: int
    at: str
    receipt: tuple[Statement, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Credit:
    """Apply a credit another actor already committed (a transfer, refund or payout)."""

    usd: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Pay:
    """Pay ``amount`` to a PTO, committing the PTO's own rows (``extra``) in the same unit."""

    amount: int
    pto_id: str
    tx_type: str
    extra: tuple[Statement, ...]
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPhysics:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplySession:
    """A session's outcome for this player, with the PTO's rows for the same unit."""

    pto_id: str
    hours: float
    quality: float
    coherence: float
    phase: float
    locks: int
    locked_hours: float
    xusd: int
    session: PlaySession
    extra: tuple[Statement, ...]
    # Last in the unit: it may read the rows the unit wrote before it.
    receipt: tuple[Statement, ...] = ()


PlayerMessage = GetPlayer | Deposit | SendTransfer | Credit | Pay | GetPhysics | ApplySession


# -- to a PTO actor --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPTO:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class GetTokens:
    player_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Buy:
    player_id: str
    hours: int
    at: str
    receipt: tuple[Statement, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendAtu:
    units: int
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayRequest:
    player_id: str
    hours: float
    receipt: tuple[Statement, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Play:
    requests: tuple[PlayRequest, ...]
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepWorld:
    steps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckDeadline:
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetWorld:
    pass


PTOMessage = GetPTO | GetTokens | Buy | SpendAtu | Play | StepWorld | CheckDeadline | GetWorld
