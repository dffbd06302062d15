"""Every bound on every input value, once: the table the engine, the scenario loader, the
runner and the server all validate against.

A ``Limit`` is a closed or half-open interval with a few flags::

    TAU_K = Limit("tau_k", 0, 100)                               # 0 ≤ tau_k ≤ 100
    PLAY_HOURS = Limit("hours", 0, 10**6, min_exclusive=True)    # 0 < hours ≤ 1e6
    PTS_OFFERED = Limit("pts_offered", 1, 10**9, integer=True)   # a whole number
    AMOUNT = Limit("amount", 0, MAX_MONEY, min_exclusive=True, money=True)  # cents

Three ways to use one:

* **In code** (the engine): ``TAU_K.check(value)`` returns the value as a float (an int
  for ``integer`` limits) or raises ``InvalidInput`` saying ``tau_k must be between 0
  and 100, got -5``. ``TAU_K.contains(x)`` is the plain test. Limits on a text's
  length (``GAME_NAME``, ``DESCRIPTION``) are checked with ``check_length``.
* **In a pydantic model, statically typed**: ``tau_k: Annotated[float, TAU_K.field()] = 1.0``
  (``field()`` gives ``Field(ge=…, le=…)``, ``gt``/``lt`` for exclusive ends, and
  ``allow_inf_nan=False`` for floats; a default and keyword arguments such as
  ``description`` pass through: ``tau_k: float = TAU_K.field(1.0)`` works too). For
  text: ``Annotated[str, GAME_NAME.length_field()]``. pydantic is imported only here,
  on use, so the engine's checks do not need it.
* **In a pydantic model built at run time**: ``TAU_K.annotated()`` is
  ``Annotated[float, Field(...)]`` (``int`` for integer limits) ready for
  ``create_model`` or as an alias whose value mypy need not see.

Money limits (``money=True``) are in major units (``5000`` means 5000.00 USD-OBBBA)
and also require whole cents. The engine reads money with ``money.to_cents``, which
takes ``MAX_CENTS`` from here (``allow_zero=False`` where the limit excludes 0), so
``check`` is not used for money; a request model can take ``Annotated[Decimal,
AMOUNT.field(decimal_places=2)]``. ``by_name`` maps a key as it appears in scenarios
and request bodies to its limit, where the key has one meaning.

World-dependent bounds (a position on a world of size N) use ``limit.up_to(N)``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Annotated, Any

from .errors import InvalidInput

Number = int | float


@dataclass(frozen=True, slots=True)
class Limit:
    """``min ≤ value ≤ max`` (``<`` with the exclusive flags). See the module doc."""

    name: str
    min: Number
    max: Number
    min_exclusive: bool = False
    max_exclusive: bool = False
    integer: bool = False  # a whole number (an int in Python)
    money: bool = False  # major units, whole cents
    unit: str = ""

    def contains(self, value: float | Decimal) -> bool:
        """Inside the bounds (a NaN never is)."""
        try:
            low_ok = value > self.min if self.min_exclusive else value >= self.min
            high_ok = value < self.max if self.max_exclusive else value <= self.max
        except (TypeError, ArithmeticError):  # Decimal("sNaN") compares by raising
            return False
        return bool(low_ok and high_ok)

    def describe(self) -> str:
        """``between 0 and 100``, ``greater than 0 and at most 1e+06``…"""
        low, high = _show(self.min), _show(self.max)
        if not self.min_exclusive and not self.max_exclusive:
            text = f"between {low} and {high}"
        else:
            first = f"greater than {low}" if self.min_exclusive else f"at least {low}"
            second = f"less than {high}" if self.max_exclusive else f"at most {high}"
            text = f"{first} and {second}"
        return f"{text} {self.unit}".rstrip()

    def check(self, value: object, what: str | None = None) -> Any:
        """The value (a float, or an int for integer limits) or ``InvalidInput``.

        Integer limits take only ints (not bools, not 3.0); others take ints, floats and
        Decimals that are finite, read as a float."""
        what = what or self.name
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"{what} must be a whole number, got {value!r}")
            if not self.contains(value):
                raise InvalidInput(f"{what} must be {self.describe()}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise InvalidInput(f"{what} must be a number, got {value!r}")
        try:
            number = float(value)
        except (OverflowError, ValueError) as exc:  # 10**400, Decimal("sNaN")
            raise InvalidInput(f"{what} must be {self.describe()}, got {value!r}") from exc
        if not math.isfinite(number) or not self.contains(number):
            raise InvalidInput(f"{what} must be {self.describe()}, got {value!r}")
        return number

    def check_length(self, value: object, what: str | None = None) -> str:
        """Text whose length is within this (integer) limit, and that every store holds."""
        what = what or self.name
        fault = self.text_fault(value) if isinstance(value, str) else None
        if not isinstance(value, str) or fault is not None:
            raise InvalidInput(f"{what} {fault or self.text_rule()}")
        return value

    def text_rule(self) -> str:
        return f"must be text of {self.describe()} characters"

    def text_fault(self, value: str) -> str | None:
        """What is wrong with ``value`` as a text this (integer) limit bounds the length of,
        or None: the length, or a character no store holds (``storable_text``)."""
        if not self.contains(len(value)):
            return self.text_rule()
        if not storable_text(value):
            return UNSTORABLE_TEXT_RULE
        return None

    def up_to(self, high: Number) -> Limit:
        """The same limit with a smaller maximum (a position on a smaller world)."""
        return replace(self, max=min(self.max, high))

    # -- pydantic ------------------------------------------------------------------------

    # pydantic is imported on use: the engine validates with this table without it.

    def field(self, *default: Any, **kwargs: Any) -> Any:
        """``Field(ge=…, le=…)`` for this limit; a default and keyword arguments pass through."""
        from pydantic import Field

        bounds: dict[str, Any] = {
            ("gt" if self.min_exclusive else "ge"): self.min,
            ("lt" if self.max_exclusive else "le"): self.max,
        }
        if not self.integer:
            bounds["allow_inf_nan"] = False
        return Field(*default, **bounds, **kwargs)

    def length_field(self, *default: Any, **kwargs: Any) -> Any:
        """``Field(min_length=…, max_length=…)`` for a text whose length this limit bounds."""
        from pydantic import Field

        return Field(
            *default,
            min_length=int(self.min),
            max_length=int(self.max),
            pattern=STORABLE_TEXT_PATTERN,
            **kwargs,
        )

    def annotated(self) -> Any:
        """``Annotated[int | float, Field(...)]`` for models built at run time."""
        return Annotated[int if self.integer else float, self.field()]

    def decimal_pattern(self) -> str:
        """A JSON-schema ``pattern`` for money written as exact decimal text under this
        limit: a whole part of at most as many digits as ``max`` has, at most two decimals
        (whole cents), no leading zeros, and no zero where the limit excludes it.

        Only for limits from 0: ``HTTP_AMOUNT.decimal_pattern()`` is
        ``^(0|[1-9][0-9]{0,11})(\\.[0-9]{1,2})?$``."""
        if self.min != 0 or self.max_exclusive:
            raise ValueError(f"{self.name}: a decimal pattern needs a limit from 0 to a maximum")
        whole = f"[1-9][0-9]{{0,{len(str(int(self.max))) - 1}}}"
        cents = r"(\.[0-9]{1,2})?"
        if self.min_exclusive:
            return rf"^({whole}{cents}|0\.(0[1-9]|[1-9][0-9]?))$"
        return rf"^(0|{whole}){cents}$"


def _show(value: Number) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if value == 2**63 - 1:
        return "2**63 - 1"
    if isinstance(value, int) and abs(value) >= 10**5 and str(abs(value)).rstrip("0") == "1":
        return f"{'-' if value < 0 else ''}1e{len(str(abs(value))) - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- money (major units, whole cents) ------------------------------------------------------

# The unit money limits are said in: ``money.USD``. Written out here because money takes
# its bound from this module (no import cycle); tests/test_limits.py keeps the two equal.
CURRENCY_UNIT = "USD-OBBBA"

# The money limit: the largest amount one operation takes (a deposit, a transfer, a
# price) and the balance a credit made on request (deposit, transfer, play's xUSD) may
# reach (``money.check_credit``). It bounds operations, not what a store holds: credits
# in flight together each pass against the balance they saw, and refunds and creator
# payouts are never refused (they must happen exactly once), so a stored balance may end
# past it. A wide margin under the storage range, so sums of many amounts still fit.
MAX_CENTS = 10**15
MAX_MONEY = MAX_CENTS // 100
CENTS_DIGITS = 13  # the largest amount, 10**13 major units, has this decimal exponent

# The storage range: what a store holds (SQLite INTEGER, PostgreSQL BIGINT: signed 64-bit)
# and so what import, export and verify accept for any stored money figure (a balance, a
# pool, a funding figure), so that every export of a store imports.
STORED_MAX_CENTS = 2**63 - 1

BALANCE = Limit("usd_obbba", 0, MAX_MONEY, money=True, unit=CURRENCY_UNIT)
AMOUNT = Limit("amount", 0, MAX_MONEY, min_exclusive=True, money=True, unit=CURRENCY_UNIT)
PRICE_PER_PTS = Limit(
    "price_per_pts", 0, MAX_MONEY, min_exclusive=True, money=True, unit=CURRENCY_UNIT
)

# -- hours ---------------------------------------------------------------------------------

PTS_HOURS = Limit("hours", 1, 10**9, integer=True)  # PTS bought: whole hours
# Play is at least 0.01 h (36 s), the grain scenario runs round play to: a play of
# 5e-324 h would store a session and move tau_k for no time played.
PLAY_HOURS = Limit("hours", 0.01, 10**6)
ADVANCE_HOURS = Limit("hours", 0, 10**6)  # moving a simulated clock
FUNDING_DEADLINE_HOURS = Limit("funding_deadline_hours", 0, 10**7, min_exclusive=True)
HOUR_OFFSET = Limit("at", 0, 10**7)  # hours after a run's start (events, launches)
TICK_HOURS = Limit("tick_hours", 0, 24 * 365, min_exclusive=True)
DURATION_HOURS = Limit("duration_hours", 0, 10**7, min_exclusive=True)

# How many players ``Engine.register_players`` commits in one unit (one transaction):
# large enough for the writer's executemany to run at the database's pace.
REGISTER_UNIT = 5_000

# -- counts --------------------------------------------------------------------------------

TICKS = Limit("ticks", 1, 10**6, integer=True)
CHECKPOINT_EVERY = Limit("checkpoint_every", 1, 10**6, integer=True)
PLAYER_COHORT_COUNT = Limit("count", 1, 10**6, integer=True)
PTO_COHORT_COUNT = Limit("count", 1, 10**5, integer=True)
SEED = Limit("seed", 0, 2**63 - 1, integer=True)
ATU_REQUIRED = Limit("atu_required", 0, 10**12, integer=True)
ATU_UNITS = Limit("units", 1, 10**12, integer=True)  # ATU spent at once
PTS_OFFERED = Limit("pts_offered", 1, 10**9, integer=True)

# -- a player's physics --------------------------------------------------------------------

TAU_K = Limit("tau_k", 0, 100)
RESONANCE_FREQ = Limit("resonance_freq", 0, 100)
PHASE = Limit("phase", 0, 2 * math.pi)
WORLD_SIZE = Limit("size", 2, 1024, integer=True)
POSITION = Limit("position", 0, WORLD_SIZE.max)  # at most the world's size: ``up_to(size)``

# -- world physics (``WorldParams``) -------------------------------------------------------

COUPLING = Limit("coupling", 0, 10**6)
DT = Limit("dt", 0, 10, min_exclusive=True)
STEPS_PER_HOUR = Limit("steps_per_hour", 1, 1000, integer=True)
OMEGA_MEAN = Limit("omega_mean", -(10**6), 10**6)
OMEGA_SPREAD = Limit("omega_spread", 0, 10**6)
PLAYER_COUPLING = Limit("player_coupling", 0, 10**6)
FEEDBACK = Limit("feedback", 0, 10**6)
# Explicit Euler's stability, not a range of one constant but of products (``world.py``
# derives them; ``check_world`` and the scenario loader apply them). A linear mode of rate
# λ < 0 stays bounded under ``x += dt·λ·x`` only while dt·|λ| ≤ 2. The 4-neighbour
# lattice's Laplacian has eigenvalues down to −8 (the checkerboard mode), so
# coupling·dt·8 ≤ 2; a player and its cell pull their phase difference together at
# (player_coupling + feedback)·tau_k, so that times dt ≤ 2 as well.
EULER_COUPLING_DT = 0.25  # coupling × dt
EULER_PLAYER_DT = 2.0  # (player_coupling + feedback) × tau_k × dt
# Floating products of decimal inputs (2.5 × 0.1 = 0.25000000000000006) are allowed
# this relative slack, so a value written at the bound is accepted.
EULER_SLACK = 1e-9
LOCK_THRESHOLD = Limit("lock_threshold", 0, 1)
LOCK_STEPS = Limit("lock_steps", 1, 1000, integer=True)
AMPLIFICATION = Limit("amplification", 0, 10**6)

WORLD: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        WORLD_SIZE,
        COUPLING,
        DT,
        STEPS_PER_HOUR,
        OMEGA_MEAN,
        OMEGA_SPREAD,
        PLAYER_COUPLING,
        FEEDBACK,
        LOCK_THRESHOLD,
        LOCK_STEPS,
        AMPLIFICATION,
    )
}

# -- behaviours ----------------------------------------------------------------------------

PROBABILITY = Limit("probability", 0, 1)
MAX_SHARE = Limit("max_share", 0, 1, min_exclusive=True)

# -- the engine's memory knobs (``Engine.open`` and a scenario's ``engine:`` key) ---------
# Far above any run, but finite: a typo of 1e99 is a mistake to report, not a setting.

MAX_ACTIVE = Limit("max_active", 1, 10**7, integer=True)  # active actors per kind
IDLE_TIMEOUT = Limit("idle_timeout", 0, 10**6, min_exclusive=True)  # seconds

# -- reads ---------------------------------------------------------------------------------

LEADERBOARD_TOP = Limit("top", 0, 1000, integer=True)  # players in one leaderboard page

TRANSACTIONS_PAGE = Limit("limit", 1, 500, integer=True)  # ledger rows in one page

# -- the HTTP API's tighter caps -----------------------------------------------------------
# A JSON schema cannot say "pts_offered × price_per_pts fits the money limit", so the API
# caps each factor so that every product fits (10**6 × (10**7 − 0.01) < MAX_MONEY): a
# request its document calls valid is never refused for its size. Whole-number amounts
# in JSON stay below 10**12, well inside the exact range of a double.
HTTP_PTS_OFFERED = Limit("pts_offered", 1, 10**6, integer=True)
HTTP_PRICE_PER_PTS = Limit("price_per_pts", 0, 10**7 - 1, min_exclusive=True, unit=CURRENCY_UNIT)
HTTP_AMOUNT = Limit("amount", 0, 10**12 - 1, unit=CURRENCY_UNIT)
HTTP_POSITIVE_AMOUNT = replace(HTTP_AMOUNT, min_exclusive=True)  # deposits, transfers
HTTP_PLAY_HOURS = Limit("hours", 0.01, 24)  # one request plays 0.01 h to a day
# Amounts in JSON as exact decimal text, a pattern per cap (``Limit.decimal_pattern``).
HTTP_AMOUNT_PATTERN = HTTP_AMOUNT.decimal_pattern()
HTTP_POSITIVE_AMOUNT_PATTERN = HTTP_POSITIVE_AMOUNT.decimal_pattern()
HTTP_PRICE_PATTERN = HTTP_PRICE_PER_PTS.decimal_pattern()
TOKEN_TTL_SECONDS = Limit("ttl_seconds", 1, 7 * 24 * 3600, integer=True)  # a player token
TX_CURSOR = Limit("after", 0, 2**62, integer=True)  # the last tx_id a ledger page saw
# Ids in URL paths: no characters that need escaping, so every id made through the API
# can be addressed by it (``a/b`` cannot); the length is ID_LENGTH's.

# -- the command line's server options (click ranges: ``click.IntRange(PORT.min, PORT.max)``)

PORT = Limit("port", 0, 65535, integer=True)
SERVE_TICK_SECONDS = Limit("tick", 0.01, math.inf)  # wall seconds between live world steps
READ_TIMEOUT_SECONDS = Limit("read_timeout", 0.1, math.inf)  # to send an announced body

# -- scenario files: the YAML loader's guards ----------------------------------------------

SCENARIO_MAX_VALUES = 200_000  # after alias expansion: a "billion laughs" file stops here
SCENARIO_MAX_DEPTH = 40

# -- ids and text (limits on the length) ---------------------------------------------------

ID_LENGTH = Limit("id", 1, 128, integer=True)
# Ids that become file or folder names (PTO ids, world ids, backup names); no ".." either.
FILE_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
URL_SAFE_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{ID_LENGTH.max - 1}}}$"
# Text no store holds, refused wherever text enters (the Engine, request bodies, scenario
# files, imports) rather than by the store: PostgreSQL's text refuses NUL (SQLite took it,
# so the backends disagreed), and an unpaired surrogate has no UTF-8 at all. Ids refuse
# every control character (``ids.check_id``); free text (a description) may hold newlines.
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_TEXT_RULE = "must not contain a NUL character (\\u0000) or an unpaired surrogate"
# For a JSON schema: a JSON parser already refuses unpaired surrogates in strings.
STORABLE_TEXT_PATTERN = "^[^\\x00]*$"


def storable_text(value: str) -> bool:
    """Whether every store can hold ``value`` as it is (no NUL, no unpaired surrogate)."""
    return _UNSTORABLE_TEXT.search(value) is None


GAME_NAME = Limit("game_name", 1, 200, integer=True)
DESCRIPTION = Limit("description", 0, 10_000, integer=True)
SCENARIO_NAME = Limit("name", 1, 200, integer=True)

# The keys of scenarios and request bodies, each with its one limit. Where a key means
# different things in different places (``hours`` of PTS bought or of play, ``count`` of
# players or PTOs) the loader picks the specific limit; this maps the unambiguous ones.
by_name: dict[str, Limit] = {
    limit.name: limit
    for limit in (
        BALANCE,
        AMOUNT,
        PRICE_PER_PTS,
        FUNDING_DEADLINE_HOURS,
        TICK_HOURS,
        DURATION_HOURS,
        TICKS,
        CHECKPOINT_EVERY,
        SEED,
        ATU_REQUIRED,
        ATU_UNITS,
        PTS_OFFERED,
        TAU_K,
        RESONANCE_FREQ,
        PHASE,
        *WORLD.values(),
        PROBABILITY,
        MAX_SHARE,
        GAME_NAME,
        DESCRIPTION,
    )
}
