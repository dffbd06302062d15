"""Exact money: integer cents inside, major units (5000.0) at the seed-compatible edges.

Floats never take part in arithmetic. A float given at the API is read through its
shortest repr (``Decimal(repr(x))``), so ``0.1`` means ten cents, and anything that
does not land on a whole cent is refused rather than rounded.

The one home of money's names and shapes:

* the currencies: ``USD`` (``"USD-OBBBA"``) and ``XUSD`` (``"xUSD"``), ``CURRENCIES``, and
  the type ``Currency``;
* the one bound on a balance: ``check_credit`` (a credit that would pass ``MAX_CENTS``
  is refused: a store, an export and an import all hold balances to it);
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


def to_cents(amount: Amount, *, what: str = "amount", allow_zero: bool = True) -> int:
    """Major units (Decimal, int, float, or decimal text such as ``"5.00"``) → exact
    non-negative cents.

    Computed from the number's digits with integers only: Decimal arithmetic would
    round past 28 digits (so 1.000…001 would pass as whole cents) or overflow.
    """
    if type(amount) is Decimal and amount.is_finite() and amount.adjusted() <= _MAX_DIGITS:
        # The common case (amounts the engine made itself), exact from the integer ratio;
        # anything this does not accept is left to the checks below, which name the fault.
        numerator, denominator = amount.as_integer_ratio()
        cents, rest = divmod(numerator * 100, denominator)
        if not rest and 0 <= cents <= MAX_CENTS and (cents or allow_zero):
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


def check_credit(balance: int, amount: int, what: str) -> None:
    """Refuse (``BalanceLimit``) crediting ``amount`` cents to a ``balance`` of cents when
    the sum would pass ``MAX_CENTS``: ``import`` refuses such a balance, and SQL integers
    overflow far beyond it. ``what`` names the credit: ``"deposit to 'alice'"``."""
    if balance + amount > MAX_CENTS:
        raise BalanceLimit(
            f"{what} of {format_cents(amount)} would take the balance of {format_cents(balance)}"
            f" past the limit of {MAX_CENTS // 100}: nothing changed"
        )


def from_cents(cents: int) -> float:
    """Cents → major units as the seed shows them (5000.0). Exact for |cents| < 2**53."""
    return cents / CENTS_PER_UNIT


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
