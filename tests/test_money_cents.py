"""``to_cents`` on a Decimal: its fast path answers exactly as the digit-by-digit path."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from ublox_sim.core.errors import InvalidAmount
from ublox_sim.core.money import MAX_CENTS, to_cents


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("0", 0),
        ("-0", 0),
        ("0.00", 0),
        ("1", 100),
        ("1E+2", 10_000),
        ("123.45", 12_345),
        ("123.450000", 12_345),
        ("0.01", 1),
        (str(Decimal(MAX_CENTS).scaleb(-2)), MAX_CENTS),
    ],
)
def test_a_decimal_gives_its_exact_cents(text: str, cents: int) -> None:
    assert to_cents(Decimal(text)) == cents
    if re.fullmatch(r"[0-9]+(\.[0-9]{1,2})?", text):  # money as text: the HTTP API's rule
        assert to_cents(text) == cents  # the string path: the same digits, the general checks
    else:
        with pytest.raises(InvalidAmount, match="decimal string"):
            to_cents(text)


@pytest.mark.parametrize(
    "text", ["  5 ", "5 ", "5.", ".5", "\u0663", "1e3", "1E+2", "-0", "+5", "1_000", "5.000", ""]
)
def test_text_that_is_not_plain_decimal_digits_is_refused_as_http_refuses_it(text: str) -> None:
    # Decimal() reads all of these (" 5 " as 5, "\u0663", an Arabic-Indic digit, as 3).
    with pytest.raises(InvalidAmount, match="decimal string such as"):
        to_cents(text)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("0.001", "fraction of a cent"),
        ("-0.01", "negative"),
        (str(Decimal(MAX_CENTS + 1).scaleb(-2)), "exceeds"),
        ("1E+999999", "exceeds"),
        ("NaN", "finite"),
        ("-Infinity", "finite"),
    ],
)
def test_a_decimal_that_is_not_cents_is_refused_by_name(text: str, fault: str) -> None:
    with pytest.raises(InvalidAmount, match=fault):
        to_cents(Decimal(text))


def test_zero_is_refused_only_when_asked() -> None:
    with pytest.raises(InvalidAmount, match="positive"):
        to_cents(Decimal("0.00"), allow_zero=False)
