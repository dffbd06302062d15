"""The economic rules as pure functions: (state, command) → a decision, or a Refusal.

Nothing here awaits, stores or mutates. Actors call these, persist what the
decision says as one unit of work, and apply it to their state after the ack.
All money is integer cents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from .errors import InsufficientFunds, InvalidInput, InvalidState, SharesUnavailable
from .events import (
    AtuSpent,
    Deposited,
    Event,
    PTOCompleted,
    PTOFailed,
    PTOFunded,
    SessionPlayed,
    SharesBought,
    Transferred,
    WorldStepped,
)
from .limits import MAX_CENTS, PLAY_HOURS, PTS_HOURS
from .money import CENTS_PER_UNIT, USD, format_cents, to_cents
from .records import (
    COMPLETED,
    FAILED,
    FUNDING,
    IN_PROGRESS,
    PLAYABLE,
    PTO,
    Player,
    PTSToken,
    parse_iso,
)


def check_hours(hours: object, what: str = "hours") -> int:
    """PTS are whole hours: a positive int (or a float/Decimal with no fraction)."""
    if isinstance(hours, bool) or not isinstance(hours, int | float | Decimal):
        raise InvalidInput(f"{what} must be a whole number of hours, got {hours!r}")
    # Before int(): int(Decimal("1E+200000")) would build a huge number first.
    too_many = len(str(PTS_HOURS.max))  # digits of the largest: 1E+10 is beyond it
    if isinstance(hours, Decimal) and hours.is_finite() and hours.adjusted() >= too_many:
        raise InvalidInput(f"{what} {hours!r} is beyond any PTO's size")
    try:
        whole = int(hours)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(f"{what} must be a whole number of hours, got {hours!r}") from exc
    if whole != hours:
        raise InvalidInput(f"{what} must be a whole number of hours, got {hours!r}")
    if whole < PTS_HOURS.min:
        raise InvalidInput(f"{what} must be positive, got {hours!r}")
    if whole > PTS_HOURS.max:
        raise InvalidInput(f"{what} {hours!r} is beyond any PTO's size")
    return whole


def check_play_hours(hours: object) -> float:
    """Play time may be fractional, but positive and finite (``limits.PLAY_HOURS``)."""
    value: float = PLAY_HOURS.check(hours)
    return value


# -- launching -------------------------------------------------------------------------


def funding_goal(pts_offered: int, price_per_pts: int) -> int:
    goal = pts_offered * price_per_pts
    if goal > MAX_CENTS:
        raise InvalidInput("pts_offered × price_per_pts exceeds the money limit")
    return goal


# -- buying PTS ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Purchase:
    hours: int
    price: int
    pts_sold_after: int
    funded: bool  # this purchase sold the last share: funding → in_progress


def purchase(pto: PTO, hours: int, balance: int | None = None) -> Purchase:
    """Buy ``hours`` PTS of ``pto``. ``balance`` None skips the funds check (done by the payer)."""
    if pto.status != FUNDING:
        raise InvalidState(f"PTO {pto.pto_id} is {pto.status}, not funding: no shares for sale")
    left = pto.pts_offered - pto.pts_sold
    if hours > left:
        raise SharesUnavailable(f"PTO {pto.pto_id} has {left} PTS left, asked for {hours}")
    price = hours * pto.price_per_pts
    if balance is not None:
        check_funds(balance, price, "buy PTS")
    sold = pto.pts_sold + hours
    return Purchase(hours=hours, price=price, pts_sold_after=sold, funded=sold == pto.pts_offered)


def check_funds(balance: int, amount: int, what: str) -> None:
    if amount > balance:
        raise InsufficientFunds(
            f"cannot {what}: needs {format_cents(amount)}, balance is {format_cents(balance)} {USD}"
        )


# -- lifecycle -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AtuDecision:
    units: int
    atu_spent_after: int
    completes: bool
    payout: int  # escrow paid to the creator when it completes


def spend_atu(pto: PTO, units: int, escrow: int) -> AtuDecision:
    if pto.status != IN_PROGRESS:
        raise InvalidState(f"PTO {pto.pto_id} is {pto.status}: ATU are spent only in progress")
    after = pto.atu_spent + units
    completes = after >= pto.atu_required
    return AtuDecision(units, after, completes, escrow if completes else 0)


@dataclass(frozen=True, slots=True)
class Failure:
    refunds: tuple[tuple[str, int], ...]  # (holder, cents), in holder order

    @property
    def total(self) -> int:
        return sum(amount for _, amount in self.refunds)


def deadline_failure(pto: PTO, tokens: Sequence[PTSToken], now: datetime) -> Failure | None:
    """A PTO still funding at its deadline fails and refunds every holder; else None."""
    if pto.status != FUNDING or not pto.funding_deadline:
        return None
    if now < parse_iso(pto.funding_deadline):
        return None
    per_holder: dict[str, int] = {}
    for token in tokens:
        per_holder[token.holder] = per_holder.get(token.holder, 0) + token.purchase_price
    return Failure(tuple(sorted(per_holder.items())))


# -- playing ---------------------------------------------------------------------------


def hours_left(tokens: Sequence[PTSToken]) -> float:
    return sum(max(0.0, t.hours_committed - t.hours_played) for t in tokens)


def allocate_play(
    pto: PTO, tokens: Sequence[PTSToken], hours: float
) -> tuple[tuple[str, float], ...]:
    """Which of the player's tokens the hours are played on (oldest first)."""
    if pto.status not in PLAYABLE:
        raise InvalidState(f"PTO {pto.pto_id} is {pto.status}: its world opens once funded")
    if not tokens:
        raise InvalidState(f"no PTS of {pto.pto_id} held: buy shares to play")
    left = hours_left(tokens)
    if hours > left + 1e-9:
        raise InvalidState(f"only {left:g} hours left on the PTS of {pto.pto_id}, asked {hours:g}")
    allocation: list[tuple[str, float]] = []
    remaining = hours
    for token in sorted(tokens, key=lambda t: (t.purchase_time, t.token_id)):
        room = token.hours_committed - token.hours_played
        if room <= 0 or remaining <= 0:
            continue
        take = min(room, remaining)
        allocation.append((token.token_id, take))
        remaining -= take
    return tuple(allocation)


def compose_xusd(hours: float, quality: float, amplification: float) -> int:
    """xUSD composed = hours × quality × amplification, in cents, rounded half-even once."""
    exact = Decimal(repr(float(hours))) * Decimal(repr(float(quality)))
    exact *= Decimal(repr(float(amplification))) * CENTS_PER_UNIT
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def split_by_hours(total: int, allocation: Sequence[tuple[str, float]]) -> list[int]:
    """Split ``total`` cents across an allocation in proportion to hours, exactly."""
    if len(allocation) == 1:  # the common case: one token takes it all
        return [total]
    hours = sum(h for _, h in allocation)
    shares = [int(total * h // hours) if hours else 0 for _, h in allocation]
    if shares:
        shares[-1] += total - sum(shares)
    return shares


def tau_k_after(tau_k: float, quality: float) -> float:
    return 0.9 * tau_k + 0.1 * (10.0 * quality)


# -- applying events to state ----------------------------------------------------------
# The one place a committed fact changes an actor's memory: the same events the store
# turned into rows, so memory and rows cannot disagree.


def apply_to_player(player: Player, event: Event) -> None:
    """Apply ``event`` to ``player`` (in place) as far as it concerns that player."""
    me = player.player_id
    match event:  # (a tick's sessions first: hundreds per tick)
        case SessionPlayed(player_id=pid) as s if pid == me:
            player.quality_score = s.quality
            player.tau_k = s.tau_k
            player.phase = s.phase
            player.coherence = s.coherence
            player.xUSD_balance += to_cents(s.xUSD_earned)
            player.total_play_time += s.hours
            player.phase_locks_count += s.phase_locks
            player.memory_depth += s.memory_depth_added
        case Deposited(player_id=pid, amount=amount) if pid == me:
            player.usd_obbba_balance += to_cents(amount)
        case Transferred(from_id=source, to_id=target, amount=amount):
            if source == me:
                player.usd_obbba_balance -= to_cents(amount)
            if target == me:
                player.usd_obbba_balance += to_cents(amount)
        case _:
            pass


def apply_to_pto(pto: PTO, tokens: dict[str, PTSToken], event: Event) -> None:
    """Apply ``event`` to a PTO's record and its tokens (in place)."""
    if getattr(event, "pto_id", None) != pto.pto_id:
        return
    match event:  # (a tick's facts first: hundreds per tick, the others rare)
        case SessionPlayed() as s:
            for token_id, played_hours, share in s.shares:
                played = tokens[token_id]
                played.hours_played += played_hours
                played.xUSD_accumulated += share
            pto.xUSD_pool += to_cents(s.xUSD_earned)
            pto.aci_coherence_score = s.aci
        case WorldStepped(aci=aci):
            pto.aci_coherence_score = aci
        case SharesBought(token=token, hours=hours) if token is not None:
            pto.pts_sold += hours
            pto.funding_raised += token.purchase_price
            tokens[token.token_id] = dataclasses.replace(token)
        case PTOFunded():
            pto.status = IN_PROGRESS
        case PTOFailed():
            pto.status = FAILED
        case AtuSpent(atu_spent=atu_spent):
            pto.atu_spent = atu_spent
        case PTOCompleted(at=at):
            pto.status = COMPLETED
            pto.completion_time = at
        case _:
            pass
