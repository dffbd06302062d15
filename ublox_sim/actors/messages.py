"""Messages between actors: one union per actor, frozen, handled with ``match``.

They carry ids and numbers only: never SQL, never another actor. A message that is
asked subclasses ``Ask[R]``, ``R`` being the type of its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core import events as ev
from ..core.errors import UbloxError
from ..core.records import PTO, Player, PTSToken
from ..store.backend import Chain, Receipt
from .runtime import Ask, Later

# -- to a player actor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPlayer(Ask[Player]):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposit(Ask[int]):
    amount: int
    at: str
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTransfer(Ask[int]):
    to_id: str
    amount: int
    at: str
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """Funds set aside for a purchase another actor is committing (see ``Reserve``)."""

    ticket: int
    tau_k: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Reserve(Ask[Reservation]):
    """Set ``amount`` aside for a purchase, or refuse (``InsufficientFunds``). The buyer's
    balance changes when the purchase's unit commits (``PlayerActor.settle``)."""

    amount: int
    pto_id: str


@dataclass(frozen=True, slots=True)
class Physics:
    """The player's figures a session needs, as acknowledged."""

    position_x: float
    position_y: float
    phase: float
    resonance_freq: float
    tau_k: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPhysics(Ask[Physics]):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplySession(Ask[ev.SessionPlayed]):
    """A session's outcome in a world: the player decides its own part (tau_k moves from
    its current value) and commits the whole session as one unit."""

    pto_id: str
    at: str
    hours: float
    quality: float
    coherence: float
    phase: float
    locks: int
    locked_hours: float
    xusd: int
    aci: float
    shares: tuple[tuple[str, float, int], ...]
    receipt: Receipt | None = None
    chain: Chain | None = None  # the world's plays in flight it builds on (``actors.pto``)


PlayerMessage = GetPlayer | Deposit | SendTransfer | Reserve | GetPhysics | ApplySession


# -- to a PTO actor --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sale:
    token: PTSToken
    pto: PTO


@dataclass(frozen=True, slots=True)
class AtuOutcome:
    pto: PTO
    completed: bool
    payout: int


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """One player's session, or the error that refused or failed it."""

    player_id: str
    session_id: int = 0
    hours: float = 0.0
    quality: float = 0.0
    xusd: int = 0
    locks: int = 0
    locked_hours: float = 0.0
    tau_k_after: float = 0.0
    error: Exception | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPTO(Ask[PTO]):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class GetTokens(Ask[list[PTSToken]]):
    player_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Buy(Ask[Sale]):
    player_id: str
    hours: int
    at: str
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyBatch(Ask["StagedBuys"]):
    """Several purchases of one PTO (player_id, hours), decided in order but not queued:
    the asker puts their events into one unit with other PTOs' (``Engine.buy_many``)."""

    buys: tuple[tuple[str, int], ...]
    at: str


@dataclass(frozen=True, slots=True)
class Staged:
    """One purchase a PTO decided for a ``BuyBatch``: its events, the callback its part
    of the unit's outcome goes to (a ``Committed`` holding exactly these events, or the
    error), and the ``Later`` that then holds its ``Sale``."""

    events: tuple[ev.Event, ...]
    done: Callable[[object], None]
    sale: Later


@dataclass(frozen=True, slots=True)
class StagedBuys:
    """A PTO's answer to ``BuyBatch``: per purchase, ``Staged`` or its refusal. The PTO
    takes no other message until ``submitted()`` is called (once the unit holding these
    events is queued, or will never be), so its units still reach the store in the order
    it decided them."""

    staged: tuple[Staged | UbloxError, ...]
    submitted: Callable[[], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendAtu(Ask[AtuOutcome]):
    units: int
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayRequest:
    player_id: str
    hours: float
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Play(Ask[list[SessionOutcome]]):
    requests: tuple[PlayRequest, ...]
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepWorld(Ask[float]):
    steps: int
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckDeadline(Ask[bool]):
    """Fail the PTO if it is still funding at ``at`` past its deadline; answers whether it did."""

    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetWorld(Ask[dict[str, object]]):
    pass


@dataclass(frozen=True, slots=True)
class Allotted:
    """The tokens (token_id, hours) a session of a tick is played on, or its refusal."""

    allocation: tuple[tuple[str, float], ...] = ()
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class Allotment:
    """A PTO's answer to ``Allot``: its record (amplification, world) and one ``Allotted``
    per request, in order."""

    pto: PTO
    sessions: tuple[Allotted, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Allot(Ask[Allotment]):
    """A scenario tick's sessions in this PTO's world: which tokens each is played on.
    The actor stays active (not quiet) until the engine's tick is over
    (``PTOActor.tick_over``)."""

    requests: tuple[PlayRequest, ...]


PTOMessage = (
    GetPTO
    | GetTokens
    | Buy
    | BuyBatch
    | SpendAtu
    | Play
    | StepWorld
    | CheckDeadline
    | GetWorld
    | Allot
)
