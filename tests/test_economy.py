"""The pure economic rules: no actors, no database, just (state, command) → decision."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ublox_sim.core.economy import (
    allocate_play,
    check_hours,
    check_play_hours,
    compose_xusd,
    deadline_failure,
    funding_goal,
    hours_left,
    purchase,
    spend_atu,
    split_by_hours,
    tau_k_after,
)
from ublox_sim.core.errors import (
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    Refusal,
    SharesUnavailable,
)
from ublox_sim.core.money import MAX_CENTS
from ublox_sim.core.records import COMPLETED, FAILED, FUNDING, IN_PROGRESS, PTO, PTSToken, iso

LAUNCH = datetime(2025, 12, 12, tzinfo=UTC)
DEADLINE = LAUNCH + timedelta(days=30)


def seed_pto(**changes: object) -> PTO:
    """The seed's PTO: 2000 PTS at 25.00, 500 ATU required."""
    pto = PTO(
        pto_id="pto_harmonic_001",
        game_name="Harmonic Caverns",
        creator_id="creator",
        atu_required=500,
        pts_offered=2000,
        price_per_pts=2500,
        funding_goal=5_000_000,
        launch_time=iso(LAUNCH),
        funding_deadline=iso(DEADLINE),
    )
    return dataclasses.replace(pto, **changes)


def token(
    token_id: str,
    holder: str,
    hours: float,
    price: int,
    *,
    played: float = 0.0,
    at: datetime = LAUNCH,
) -> PTSToken:
    return PTSToken(
        token_id=token_id,
        game_id="pto_harmonic_001",
        holder=holder,
        hours_committed=hours,
        hours_played=played,
        purchase_price=price,
        purchase_time=iso(at),
    )


# -- buying ---------------------------------------------------------------------------


def test_seed_purchase_40_pts_at_25_costs_1000() -> None:
    decision = purchase(seed_pto(), 40, balance=500_000)
    assert decision.price == 100_000  # 1000.00 in cents
    assert decision.hours == 40
    assert decision.pts_sold_after == 40
    assert decision.funded is False


def test_funding_goal_is_offered_times_price_and_bounded() -> None:
    assert funding_goal(2000, 2500) == 5_000_000
    with pytest.raises(InvalidInput):
        funding_goal(MAX_CENTS, 2)


def test_purchase_of_the_last_share_is_flagged_funded() -> None:
    pto = seed_pto(pts_sold=1999, funding_raised=1999 * 2500)
    decision = purchase(pto, 1, balance=2500)
    assert decision.funded is True
    assert decision.pts_sold_after == 2000
    assert decision.price == 2500


def test_purchase_refused_unless_funding() -> None:
    for status in (IN_PROGRESS, COMPLETED, FAILED):
        with pytest.raises(InvalidState):
            purchase(seed_pto(status=status), 1, balance=10**9)


def test_purchase_refused_beyond_the_shares_left() -> None:
    pto = seed_pto(pts_sold=1990)
    with pytest.raises(SharesUnavailable):
        purchase(pto, 11, balance=10**9)
    assert purchase(pto, 10, balance=10**9).funded is True


def test_purchase_refused_on_overdraft_but_exact_balance_is_enough() -> None:
    with pytest.raises(InsufficientFunds):
        purchase(seed_pto(), 40, balance=99_999)
    assert purchase(seed_pto(), 40, balance=100_000).price == 100_000
    # None skips the funds check: the payer's actor does it.
    assert purchase(seed_pto(), 40, balance=None).price == 100_000


def test_purchase_refusals_are_refusals_and_leave_the_pto_alone() -> None:
    pto = seed_pto(pts_sold=5)
    before = dataclasses.replace(pto)
    for hours, balance in ((2000, 10**12), (1, 0)):
        with pytest.raises(Refusal):
            purchase(pto, hours, balance=balance)
    assert pto == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("nan"), float("inf"), True, "3", None, 10**10])
def test_check_hours_refuses_anything_but_a_positive_whole_number(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_hours(bad)


def test_check_hours_accepts_whole_values() -> None:
    assert check_hours(40) == 40
    assert check_hours(3.0) == 3
    assert check_hours(Decimal("7")) == 7


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), 10**7, False, "1"])
def test_check_play_hours_refuses_non_positive_or_non_finite(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_play_hours(bad)


def test_check_play_hours_allows_fractions() -> None:
    assert check_play_hours(0.25) == 0.25
    assert check_play_hours(5) == 5.0


# -- lifecycle ------------------------------------------------------------------------


def test_spend_atu_below_the_requirement_does_not_complete() -> None:
    pto = seed_pto(status=IN_PROGRESS, pts_sold=2000, funding_raised=5_000_000, atu_spent=100)
    decision = spend_atu(pto, 399, escrow=5_000_000)
    assert decision.atu_spent_after == 499
    assert decision.completes is False
    assert decision.payout == 0


def test_spend_atu_reaching_the_requirement_pays_the_escrow() -> None:
    pto = seed_pto(status=IN_PROGRESS, pts_sold=2000, funding_raised=5_000_000, atu_spent=100)
    decision = spend_atu(pto, 400, escrow=5_000_000)
    assert decision.completes is True
    assert decision.atu_spent_after == 500
    assert decision.payout == 5_000_000
    # Overshooting completes too.
    assert spend_atu(pto, 10_000, escrow=5_000_000).completes is True


@pytest.mark.parametrize("status", [FUNDING, COMPLETED, FAILED])
def test_spend_atu_only_in_progress(status: str) -> None:
    with pytest.raises(InvalidState):
        spend_atu(seed_pto(status=status), 1, escrow=0)


def test_deadline_failure_refunds_each_holder_summed_in_holder_order() -> None:
    tokens = [
        token("t1", "zed", 10, 25_000),
        token("t2", "alice", 40, 100_000),
        token("t3", "zed", 2, 5_000),
        token("t4", "alice", 1, 2_500),
    ]
    failure = deadline_failure(seed_pto(pts_sold=53), tokens, DEADLINE)
    assert failure is not None
    assert failure.refunds == (("alice", 102_500), ("zed", 30_000))
    assert failure.total == 132_500 == sum(t.purchase_price for t in tokens)


def test_deadline_failure_waits_for_the_deadline() -> None:
    tokens = [token("t1", "alice", 1, 2_500)]
    assert deadline_failure(seed_pto(), tokens, DEADLINE - timedelta(seconds=1)) is None
    assert deadline_failure(seed_pto(), tokens, DEADLINE) is not None
    # Only a funding PTO fails; one with no deadline never does.
    assert deadline_failure(seed_pto(status=IN_PROGRESS), tokens, DEADLINE) is None
    assert deadline_failure(seed_pto(funding_deadline=None), tokens, DEADLINE) is None


def test_deadline_failure_with_no_holders_refunds_nothing() -> None:
    failure = deadline_failure(seed_pto(), [], DEADLINE + timedelta(days=1))
    assert failure is not None
    assert failure.refunds == ()
    assert failure.total == 0


# -- playing --------------------------------------------------------------------------


def test_allocate_play_spends_the_oldest_tokens_first() -> None:
    pto = seed_pto(status=IN_PROGRESS)
    tokens = [
        token("b", "alice", 4, 0, at=LAUNCH + timedelta(hours=2)),
        token("a", "alice", 3, 0, played=1, at=LAUNCH + timedelta(hours=1)),
        token("c", "alice", 5, 0, at=LAUNCH + timedelta(hours=3)),
    ]
    assert allocate_play(pto, tokens, 5) == (("a", 2.0), ("b", 3.0))
    assert allocate_play(pto, tokens, 1.5) == (("a", 1.5),)
    assert allocate_play(pto, tokens, 11) == (("a", 2.0), ("b", 4.0), ("c", 5.0))
    assert hours_left(tokens) == 11


def test_allocate_play_skips_used_up_tokens_and_breaks_ties_by_id() -> None:
    pto = seed_pto(status=COMPLETED)
    tokens = [token("y", "alice", 2, 0), token("x", "alice", 2, 0, played=2)]
    assert allocate_play(pto, tokens, 2) == (("y", 2.0),)
    tied = [token("q", "alice", 1, 0), token("p", "alice", 1, 0)]
    assert allocate_play(pto, tied, 2) == (("p", 1.0), ("q", 1.0))


def test_allocate_play_refusals() -> None:
    tokens = [token("a", "alice", 3, 0, played=1)]
    with pytest.raises(InvalidState):
        allocate_play(seed_pto(status=IN_PROGRESS), tokens, 2.5)
    with pytest.raises(InvalidState):
        allocate_play(seed_pto(status=IN_PROGRESS), [], 1)
    for status in (FUNDING, FAILED):
        with pytest.raises(InvalidState):
            allocate_play(seed_pto(status=status), tokens, 1)


def test_compose_xusd_seed_numbers() -> None:
    assert compose_xusd(5, 0.85, 100) == 42_500  # 5 h × 0.85 × 100 = 425.00
    assert compose_xusd(1, 1.0, 100) == 10_000
    assert compose_xusd(3, 0.0, 100) == 0
    # 0.1 × 0.5 × 1 × 100 = 5 cents exactly (the float 0.1 is read by its repr)
    assert compose_xusd(0.1, 0.5, 1) == 5


def test_compose_xusd_rounds_half_even_once() -> None:
    # 1 × 0.125 × 1 × 100 = 12.5 cents → 12; 0.135 → 13.5 → 14
    assert compose_xusd(1, 0.125, 1) == 12
    assert compose_xusd(1, 0.135, 1) == 14


def test_split_by_hours_is_exact_and_proportional() -> None:
    assert split_by_hours(42_500, [("a", 2.0), ("b", 3.0)]) == [17_000, 25_500]
    assert split_by_hours(100, [("a", 1.0), ("b", 1.0), ("c", 1.0)]) == [33, 33, 34]
    assert split_by_hours(0, [("a", 1.0)]) == [0]
    assert split_by_hours(7, []) == []


def test_tau_k_update() -> None:
    assert tau_k_after(1.0, 0.85) == pytest.approx(0.9 + 0.85)
    assert tau_k_after(10.0, 1.0) == pytest.approx(10.0)


# -- properties -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=MAX_CENTS),
    hours=st.lists(
        st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), min_size=1, max_size=12
    ),
)
def test_split_by_hours_always_sums_to_total_and_is_non_negative(
    total: int, hours: list[float]
) -> None:
    allocation = [(f"t{i}", h) for i, h in enumerate(hours)]
    shares = split_by_hours(total, allocation)
    assert len(shares) == len(allocation)
    assert sum(shares) == total
    assert all(isinstance(s, int) and s >= 0 for s in shares)


@settings(max_examples=300, deadline=None)
@given(
    offered=st.integers(min_value=1, max_value=5000),
    price=st.integers(min_value=1, max_value=10**6),
    buys=st.lists(st.integers(min_value=1, max_value=6000), max_size=30),
)
def test_purchase_never_oversells(offered: int, price: int, buys: list[int]) -> None:
    """Applying every accepted purchase in turn: pts_sold never passes pts_offered,
    the raised money is exactly sold × price, and funded is set exactly once, at the end."""
    pto = seed_pto(pts_offered=offered, price_per_pts=price, funding_goal=offered * price)
    funded_flags = []
    for hours in buys:
        try:
            decision = purchase(pto, hours, balance=None)
        except (SharesUnavailable, InvalidState):
            left = pto.pts_offered - pto.pts_sold
            assert pto.status != FUNDING or hours > left
            continue
        assert decision.price == hours * price
        pto.pts_sold = decision.pts_sold_after
        pto.funding_raised += decision.price
        if decision.funded:
            pto.status = IN_PROGRESS
        funded_flags.append(decision.funded)
        assert pto.pts_sold <= pto.pts_offered
    assert pto.funding_raised == pto.pts_sold * price
    assert funded_flags.count(True) <= 1
    if True in funded_flags:
        assert funded_flags[-1] is True and pto.pts_sold == offered


@settings(max_examples=300, deadline=None)
@given(
    hours=st.floats(min_value=0, max_value=1e4, allow_nan=False),
    quality=st.floats(min_value=0, max_value=1, allow_nan=False),
    amplification=st.floats(min_value=0, max_value=1e4, allow_nan=False),
)
def test_compose_xusd_is_the_rounded_product(
    hours: float, quality: float, amplification: float
) -> None:
    cents = compose_xusd(hours, quality, amplification)
    assert cents >= 0
    exact = Decimal(repr(hours)) * Decimal(repr(quality)) * Decimal(repr(amplification)) * 100
    assert abs(Decimal(cents) - exact) <= Decimal("0.5")


@settings(max_examples=200, deadline=None)
@given(
    committed=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=6),
    played_fraction=st.floats(min_value=0, max_value=1),
    ask=st.floats(min_value=0.01, max_value=400, allow_nan=False),
)
def test_allocate_play_covers_exactly_the_hours_asked_within_each_token(
    committed: list[int], played_fraction: float, ask: float
) -> None:
    pto = seed_pto(status=IN_PROGRESS)
    tokens = [
        token(f"t{i}", "alice", c, 0, played=c * played_fraction, at=LAUNCH + timedelta(hours=i))
        for i, c in enumerate(committed)
    ]
    left = hours_left(tokens)
    if ask > left + 1e-9:
        with pytest.raises(InvalidState):
            allocate_play(pto, tokens, ask)
        return
    allocation = allocate_play(pto, tokens, ask)
    assert sum(h for _, h in allocation) == pytest.approx(ask)
    room = {t.token_id: t.hours_committed - t.hours_played for t in tokens}
    for token_id, hours in allocation:
        assert 0 < hours <= room[token_id] + 1e-9


# -- one home for the names: PTO statuses and currencies --------------------------------


def test_the_pto_statuses_are_the_schemas_and_the_economys() -> None:
    import typing

    from ublox_sim.core import economy, records
    from ublox_sim.store.sqlite import schema

    assert records.PTO_STATUSES == ("funding", "in_progress", "completed", "failed")
    assert records.PTO_STATUSES == typing.get_args(records.PTOStatus)
    assert (FUNDING, IN_PROGRESS, COMPLETED, FAILED) == records.PTO_STATUSES
    assert records.PLAYABLE == (IN_PROGRESS, COMPLETED)
    assert records.ESCROW_HELD == (FUNDING, IN_PROGRESS)
    assert PTO("p", "g", "c").status == FUNDING
    # Until they import them from records, the copies must agree (see issue 12, item 5).
    assert tuple(schema.PTO_STATUSES) == records.PTO_STATUSES
    assert (economy.FUNDING, economy.IN_PROGRESS, economy.COMPLETED, economy.FAILED) == (
        records.PTO_STATUSES
    )
    assert tuple(economy.PLAYABLE) == records.PLAYABLE


def test_the_currencies_are_the_schemas() -> None:
    import typing

    from ublox_sim.core import money
    from ublox_sim.store.sqlite import schema

    assert (money.USD, money.XUSD) == ("USD-OBBBA", "xUSD")
    assert money.CURRENCIES == (money.USD, money.XUSD) == tuple(schema.CURRENCIES)
    assert money.CURRENCIES == typing.get_args(money.Currency)


# -- one money format, one rounding of draws ---------------------------------------------

CENTS = st.integers(min_value=0, max_value=MAX_CENTS)


@settings(max_examples=300, deadline=None)
@given(CENTS)
def test_one_money_format_says_what_the_old_three_said(cents: int) -> None:
    """``format_cents`` replaces the API's ``money()``, the reports' ``money()`` and the
    refusal message's ``cents / 100:.2f``: byte for byte the same text."""
    from ublox_sim.core.money import format_amount, format_cents, to_cents, to_decimal

    text = format_cents(cents)
    assert text == f"{to_decimal(cents).quantize(Decimal('0.01')):f}"  # server.models.money
    assert text == f"{Decimal(str(to_decimal(cents))):.2f}"  # sim.report.money, cli
    assert text == f"{cents / 100:.2f}"  # economy.check_funds (exact below 2**53 cents)
    assert text == str(to_decimal(cents))  # the leaderboard's str(Decimal)
    assert format_amount(to_decimal(cents)) == text
    assert format_amount(cents / 100) == text  # a major-unit float from an aggregate
    assert to_cents(text) == cents  # and it reads back exactly


def test_format_amount_takes_major_units_in_any_form() -> None:
    from ublox_sim.core.money import format_amount, format_cents

    assert format_cents(500_000) == "5000.00"
    assert format_cents(1) == "0.01"
    assert format_amount(5000) == "5000.00"
    assert format_amount(0.1) == "0.10"
    assert format_amount("25") == "25.00"
    assert format_amount(Decimal("1E+3")) == "1000.00"


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e13, allow_nan=False))
def test_a_drawn_amount_rounds_to_the_cent_as_scenario_runs_always_did(value: float) -> None:
    from ublox_sim.core.money import round_to_cent, to_cents

    rounded = round_to_cent(value)
    assert rounded == Decimal(str(round(value, 2)))
    assert abs(rounded - Decimal(repr(value))) <= Decimal("0.005")
    if rounded <= MAX_CENTS // 100:
        to_cents(rounded)  # whole cents, so the exact parse takes it
