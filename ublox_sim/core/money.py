"""Exact money: integer cents inside, major units (5000.0) at the seed-compatible edges.

Floats never take part in arithmetic. A float given at the API is read through its
shortest repr (``Decimal(repr(x))``), so ``0.1`` means ten cents, and anything that
does not land on a whole cent is refused rather than rounded.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

from .errors import InvalidAmount
from .limits import CENTS_DIGITS as _MAX_DIGITS
from .limits import MAX_CENTS as MAX_CENTS  # re-exported: money's bound lives in limits

CENTS_PER_UNIT = 100
# The two currencies: players pay in USD-OBBBA; play composes xUSD.
USD = "USD-OBBBA"
XUSD = "xUSD"

Amount = Decimal | int | float | str


def to_cents(amount: Amount, *, what: str = "amount", allow_zero: bool = True) -> int:
    """Major units (Decimal, int, float or numeric string) → exact non-negative cents.

    Computed from the number's digits with integers only: Decimal arithmetic would
    round past 28 digits (so 1.000…001 would pass as whole cents) or overflow.
    """
    if isinstance(amount, bool):
        raise InvalidAmount(f"{what} must be a number, not a bool")
    try:
        if isinstance(amount, float):
            if not math.isfinite(amount):
                raise InvalidAmount(f"{what} must be finite, got {amount!r}")
            value = Decimal(repr(amount))
        elif isinstance(amount, Decimal | int | str):
            value = Decimal(amount.strip() if isinstance(amount, str) else amount)
        else:
            raise InvalidAmount(f"{what} must be a number, got {type(amount).__name__}")
    except (InvalidOperation, ValueError) as exc:
        raise InvalidAmount(f"{what} is not a number: {amount!r}") from exc
    if not value.is_finite():
        raise InvalidAmount(f"{what} must be finite, got {amount!r}")
    if value.is_signed() and value != 0:
        raise InvalidAmount(f"{what} must not be negative, got {amount!r}")
    if value != 0 and value.adjusted() > _MAX_DIGITS:
        raise InvalidAmount(f"{what} {amount!r} exceeds the limit of {MAX_CENTS // 100}")
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    shift = exponent + 2  # cents = digits × 10**shift
    if shift >= 0:
        result = int("".join(map(str, digits)) or "0") * int(10**shift)
    else:
        whole, dropped = digits[:shift], digits[shift:]
        if any(dropped):
            raise InvalidAmount(f"{what} {amount!r} has a fraction of a cent")
        result = int("".join(map(str, whole)) or "0")
    if result == 0 and not allow_zero:
        raise InvalidAmount(f"{what} must be positive, got {amount!r}")
    if result > MAX_CENTS:
        raise InvalidAmount(f"{what} {amount!r} exceeds the limit of {MAX_CENTS // 100}")
    return result


def from_cents(cents: int) -> float:
    """Cents → major units as the seed shows them (5000.0). Exact for |cents| < 2**53."""
    return cents / CENTS_PER_UNIT


def to_decimal(cents: int) -> Decimal:
    """Cents → an exact Decimal in major units (for the Engine API)."""
    return Decimal(cents).scaleb(-2)
