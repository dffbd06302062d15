"""Exact money: integer cents inside, major units (5000.0) at the seed-compatible edges.

Floats never take part in arithmetic. A float given at the API is read through its
shortest repr (``Decimal(repr(x))``), so ``0.1`` means ten cents, and anything that
does not land on a whole cent is refused rather than rounded.

The one home of money's names and shapes:

* the currencies: ``USD`` (``"USD-OBBBA"``) and ``XUSD`` (``"xUSD"``), ``CURRENCIES``, and
  the type ``Currency``;
* the money limit on operations: ``check_credit`` (a deposit, transfer or play's xUSD
  that would take a balance past ``MAX_CENTS`` is refused); what a store holds, and
  import, export and verify accept, is the storage range ``STORED_MAX_CENTS`` (see
  ``limits``);
* one parse: ``to_cents`` (exact; refuses fractions of a cent) and, for values drawn at
  random by a scenario, ``round_to_cent`` (rounds to the nearest cent);
* the shapes out: ``to_decimal`` (exact ``Decimal`` major units, the Engine's API),
  ``from_cents`` (a float, the seed's and the export's shape) and one text format,
  ``format_cents`` / ``format_amount`` (``"5000.00"``: reports, the HTTP API, messages).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, get_args

from .errors import BalanceLimit, InvalidAmount
from .limits import CENTS_DIGITS as _MAX_DIGITS
from .limits import MAX_CENTS as MAX_CENTS  # re-exported: money's bound lives in limits
from .limits import STORED_MAX_CENTS as STORED_MAX_CENTS

CENTS_PER_UNIT = 100

# ``Currency`` types a field that holds one (a pydantic model's ``Literal``); the names
# below are the values to use in code.
Currency = Literal["USD-OBBBA", "xUSD"]
USD: Final = "USD-OBBBA"  # the seed's currency of deposits, investments, refunds and payouts
XUSD: Final = "xUSD"  # composed by play
CURRENCIES: Final[tuple[Currency, ...]] = get_args(Currency)

Amount = Decimal | int | float | str

# Money as text, the same rule as the HTTP API's (``limits.HTTP_AMOUNT_PATTERN`` adds its
# bound): ASCII digits and at most two decimals. ``Decimal`` alone would also read
# " 5 ", "5.", ".5", "1e3", "-0" and other scripts' digits ("٣" is 3).
_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")


def to_cents(
    amount: Amount, *, what: str = "amount", allow_zero: bool = True, limit: int = MAX_CENTS
) -> int:
    """Major units (Decimal, int, float, or decimal text such as ``"5.00"``) → exact
    non-negative cents, at most ``limit`` (the money limit of an operation's amount;
    ``STORED_MAX_CENTS`` for a figure a store holds, read back by an import).

    Computed from the number's digits with integers only: Decimal arithmetic would
    round past 28 digits (so 1.000…001 would pass as whole cents) or overflow.
    """
    max_digits = _MAX_DIGITS if limit == MAX_CENTS else len(str(limit // 100)) - 1
    if type(amount) is Decimal and amount.is_finite() and amount.adjusted() <= max_digits:
        # The common case (amounts the engine made itself), exact from the integer ratio;
        # anything this does not accept is left to the checks below, which name the fault.
        numerator, denominator = amount.as_integer_ratio()
        cents, rest = divmod(numerator * 100, denominator)
        if not rest and 0 <= cents <= limit and (cents or allow_zero):
            return cents
    if isinstance(amount, bool):
        raise InvalidAmount(f"{what} must be a number, not a bool")
    if isinstance(amount, str) and not _DECIMAL_TEXT.fullmatch(amount):
        raise InvalidAmount(
            f'{what} must be a decimal string such as "5.00" (ASCII digits, no sign, no'
            f" spaces, at most two decimals), got {amount!r}"
        )
    try:
        if isinstance(amount, float):
            if not math.isfinite(amount):
                raise InvalidAmount(f"{what} must be finite, got {amount!r}")
            value = Decimal(repr(amount))
        elif isinstance(amount, Decimal | int | str):
            value = Decimal(amount)
        else:
            raise InvalidAmount(f"{what} must be a number, got {type(amount).__name__}")
    except (InvalidOperation, ValueError) as exc:
        raise InvalidAmount(f"{what} is not a number: {amount!r}") from exc
    if not value.is_finite():
        raise InvalidAmount(f"{what} must be finite, got {amount!r}")
    if value.is_signed() and value != 0:
        raise InvalidAmount(f"{what} must not be negative, got {amount!r}")
    if value != 0 and value.adjusted() > max_digits:
        raise InvalidAmount(f"{what} {amount!r} {_past(limit)}")
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
    if result > limit:
        raise InvalidAmount(f"{what} {amount!r} {_past(limit)}")
    return result


def _past(limit: int) -> str:
    if limit == STORED_MAX_CENTS:
        return f"exceeds the largest amount a store holds ({format_cents(limit)})"
    return f"exceeds the limit of {format_cents(limit).removesuffix('.00')}"


def check_credit(balance: int, amount: int, what: str) -> None:
    """Refuse (``BalanceLimit``) crediting ``amount`` cents to a ``balance`` of cents when
    the sum would pass ``MAX_CENTS``, for credits made on request (deposit, transfer,
    play's xUSD). Best effort: credits in flight together each pass against the balance
    they saw, and refunds and payouts are not checked, so a stored balance may end past
    ``MAX_CENTS`` (never past ``STORED_MAX_CENTS``: stores, exports and imports hold
    that). ``what`` names the credit: ``"deposit to 'alice'"``."""
    if balance + amount > MAX_CENTS:
        raise BalanceLimit(
            f"{what} of {format_cents(amount)} would take the balance of {format_cents(balance)}"
            f" past the limit of {MAX_CENTS // 100}: nothing changed"
        )


# Below this many cents, ``from_cents``'s float reads back (``to_cents``) as the very same
# cents: a float's spacing is at most 1/128 of a unit below 2**46 units, finer than a cent.
FLOAT_EXACT_CENTS: Final = 2**46 * CENTS_PER_UNIT


def from_cents(cents: int) -> float:
    """Cents → major units as the seed shows them (5000.0). Reads back exactly for
    ``|cents| < FLOAT_EXACT_CENTS`` (about 7.0e13 units, past the money limit)."""
    return cents / CENTS_PER_UNIT


def seed_money(cents: int) -> float | str:
    """Cents → the seed's (and the export's) shape: a float (5000.0) where it reads back
    exactly, else exact decimal text (``"92233720368547758.07"``, which ``to_cents``
    reads): a stored balance may pass the money limit, and an export must keep it."""
    if -FLOAT_EXACT_CENTS < cents < FLOAT_EXACT_CENTS:
        return cents / CENTS_PER_UNIT
    return format_cents(cents)


def to_decimal(cents: int) -> Decimal:
    """Cents → an exact Decimal in major units (for the Engine API)."""
    return Decimal(cents).scaleb(-2)


def round_to_cent(value: float) -> Decimal:
    """A drawn float (a scenario's random amount) as major units rounded to the cent.

    Drawing is the one place money is rounded rather than refused: a uniform draw of
    12.3456 means 12.35. Python's ``round`` is correctly rounded, half to even."""
    return Decimal(str(round(float(value), 2)))


def format_amount(amount: Decimal | int | float | str) -> str:
    """Major units as text with exactly two decimals: ``"5000.00"``, the one text format.

    A float is read through its shortest repr (``0.1`` is ``"0.10"``), an int as whole
    major units; a third decimal is rounded half to even, as ``Decimal`` formats."""
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return f"{value:.2f}"


def format_cents(cents: int) -> str:
    """Cents as major-unit text: ``500000`` → ``"5000.00"`` (exact at any size)."""
    return format_amount(to_decimal(cents))
