"""The HTTP API's request and response models: the OpenAPI document is generated from them.

Every limit a request must meet is written here once, as a JSON-schema constraint, so
a request the document calls valid is one the engine accepts (refusals that depend on
the store's state, such as an overdraft or a deadline already past, are 409s). Money
goes in as an exact decimal string (``"12.50"``) or a whole number, never a float or a
boolean, and comes out as an exact major-unit string with two decimals. Timestamps
come out as RFC 3339 UTC (``2026-01-01T00:00:00Z``). Field names follow the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Self, cast, get_type_hints

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StringConstraints,
    create_model,
)
from pydantic_core import core_schema

from ..core import limits as L
from ..core.money import Currency, format_amount, format_cents
from ..core.records import PTOStatus, parse_iso
from ..core.views import PlayerInfo, PTOInfo, SessionResult, TokenInfo

# -- limits: from the one table (ublox_sim/limits.py) ------------------------------------

ID_PATTERN = L.URL_SAFE_ID_PATTERN
ID_HELP = f"1 to {L.ID_LENGTH.max} letters, digits, '_' or '-', starting with a letter or digit"
# An amount with at most 12 whole digits and two decimals; positive ones exclude zero.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
POSITIVE_AMOUNT_PATTERN = r"^([1-9][0-9]{0,11}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$"
PRICE_PATTERN = r"^([1-9][0-9]{0,6}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$"
MAX_WHOLE_AMOUNT = int(L.HTTP_AMOUNT.max)
MAX_PRICE = int(L.HTTP_PRICE_PER_PTS.max)
MAX_PTS_OFFERED = int(L.HTTP_PTS_OFFERED.max)
MAX_ATU = int(L.ATU_UNITS.max)
MIN_PLAY_HOURS = float(L.HTTP_PLAY_HOURS.min)
MAX_PLAY_HOURS = float(L.HTTP_PLAY_HOURS.max)
MAX_TAU_K = float(L.TAU_K.max)
MAX_FREQ = float(L.RESONANCE_FREQ.max)
MAX_AMPLIFICATION = float(L.AMPLIFICATION.max)
MAX_GAME_NAME = int(L.GAME_NAME.max)
MAX_DESCRIPTION = int(L.DESCRIPTION.max)
MAX_PAGE = int(L.TRANSACTIONS_PAGE.max)
MAX_TOP = int(L.LEADERBOARD_TOP.max)
# Free text: no NUL, which PostgreSQL cannot store (JSON parsing refuses lone surrogates).
TEXT_PATTERN = L.STORABLE_TEXT_PATTERN
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,255}$"
BACKUP_NAME_PATTERN = ID_PATTERN


def _number_not_bool_or_text(value: object) -> object:
    # JSON Schema's integer includes 5.0; a boolean or a numeric string is not a number.
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number, not a boolean or a string")
    return value


# After the Field in an Annotated, so the range stays in the JSON schema.
_NUMBER = BeforeValidator(_number_not_bool_or_text)
# Money's whole-number branch is also strict: JSON Schema calls 5.0 an integer, but money
# is "never a float" (README), so a client that sends 1.0 or 1e2 learns it at once rather
# than when a float of a larger amount loses a cent. JSON Schema cannot say it: the
# descriptions do.
_WHOLE = "a whole number written without a decimal point (5, not 5.0 or 5e0)"


@dataclasses.dataclass(frozen=True)
class _OneError:
    """A money field is a union (an exact decimal string, or a whole number); pydantic
    reports a refused value once per branch ("should match pattern '^([1-9]...'", "not a
    boolean or a string"), which tells a client nothing it can act on. This gives the
    union one error that says what the field takes; the JSON schema is unchanged."""

    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if schema["type"] != "union":
            raise TypeError(f"_OneError is for a union, not {schema['type']}")
        union = cast(core_schema.UnionSchema, schema)
        union["custom_error_type"] = "invalid_amount"
        union["custom_error_message"] = self.message
        return union


@dataclasses.dataclass(frozen=True)
class _TextError:
    """A free-text field's one problem, whatever broke (its length, a NUL, not text):
    the limit's own words, as the Engine and scenario files say them, rather than a
    regex. The JSON schema is unchanged."""

    limit: L.Limit

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        message = f"{self.limit.text_rule()}, without NUL (\\u0000)"
        return core_schema.custom_error_schema(
            handler(source), custom_error_type="invalid_text", custom_error_message=message
        )


def _amount_error(what: str, most: int) -> _OneError:
    return _OneError(
        f'must be {what}: a decimal string such as "5.00" (no sign, at most two decimals)'
        f" or a whole number (5, not 5.0: never a float), below {most + 1:,}"
    )


Id = Annotated[str, StringConstraints(pattern=ID_PATTERN), Field(description=ID_HELP)]
Amount = Annotated[
    Annotated[str, StringConstraints(pattern=AMOUNT_PATTERN)]
    | Annotated[int, Field(ge=0, le=MAX_WHOLE_AMOUNT, strict=True), _NUMBER],
    _amount_error("an amount of zero or more", MAX_WHOLE_AMOUNT),
    Field(description=f"USD-OBBBA in major units: an exact decimal string or {_WHOLE}"),
]
PositiveAmount = Annotated[
    Annotated[str, StringConstraints(pattern=POSITIVE_AMOUNT_PATTERN)]
    | Annotated[int, Field(ge=1, le=MAX_WHOLE_AMOUNT, strict=True), _NUMBER],
    _amount_error("a positive amount", MAX_WHOLE_AMOUNT),
    Field(description=f"a positive amount in major units: an exact decimal string or {_WHOLE}"),
]
Price = Annotated[
    Annotated[str, StringConstraints(pattern=PRICE_PATTERN)]
    | Annotated[int, Field(ge=1, le=MAX_PRICE, strict=True), _NUMBER],
    _amount_error("a positive price", MAX_PRICE),
    Field(description=f"price of one PTS (one hour) in major units: a decimal string or {_WHOLE}"),
]
Money = Annotated[
    str,
    Field(
        pattern=r"^-?[0-9]+\.[0-9]{2}$",
        description="exact major units with two decimals",
        examples=["5000.00"],
    ),
]
Timestamp = Annotated[
    str, Field(description="RFC 3339, UTC", json_schema_extra={"format": "date-time"})
]


def money(value: Decimal | int) -> str:
    """An exact major-unit amount as a string with two decimals (cents given as int)."""
    return format_cents(value) if isinstance(value, int) else format_amount(value)


def money_float(value: float) -> str:
    """A major-unit float from the store's aggregates (exact below 2**53 cents)."""
    return money(Decimal(repr(value)))


def rfc3339(text: str) -> str:
    """The store's ``YYYY-mm-dd HH:MM:SS+00:00`` as RFC 3339 UTC with a ``Z``."""
    moment = parse_iso(text).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{moment.microsecond:06d}Z" if moment.microsecond else "Z"
    )


def hours_sum(value: float) -> float:
    """A sum of hours from a REAL column, to 2 decimals: ``52087.48999999996`` is float
    noise of adding many fractional plays, not information (as the CLI's ``stats``)."""
    return round(float(value), 2)


def rfc3339_opt(text: str | None) -> str | None:
    return None if text is None else rfc3339(text)


# -- requests ------------------------------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewPlayer(Body):
    player_id: Id
    usd_obbba: Amount = "0"
    tau_k: Annotated[float, Field(strict=True, ge=0, le=MAX_TAU_K)] = 1.0
    resonance_freq: Annotated[float, Field(strict=True, ge=0, le=MAX_FREQ)] | None = None


class DepositBody(Body):
    amount: PositiveAmount


class TransferBody(Body):
    to_player: Id
    amount: PositiveAmount


class NewToken(Body):
    ttl_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600), _NUMBER] | None = Field(
        default=None, description="lifetime; the server's default (1 h) when absent"
    )


class NewPTO(Body):
    pto_id: Id
    game_name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_GAME_NAME, pattern=TEXT_PATTERN),
        _TextError(L.GAME_NAME),
    ]
    creator_id: Id
    atu_required: Annotated[int, Field(ge=0, le=MAX_ATU), _NUMBER]
    pts_offered: Annotated[int, Field(ge=1, le=MAX_PTS_OFFERED), _NUMBER]
    price_per_pts: Price
    funding_deadline: Annotated[
        str,
        Field(
            description="RFC 3339 with a time zone; must be in the future",
            json_schema_extra={"format": "date-time"},
        ),
    ]
    description: Annotated[
        str,
        StringConstraints(max_length=MAX_DESCRIPTION, pattern=TEXT_PATTERN),
        _TextError(L.DESCRIPTION),
    ] = ""
    amplification: Annotated[float, Field(strict=True, ge=0, le=MAX_AMPLIFICATION)] = 100.0


class BuyBody(Body):
    player_id: Id
    hours: Annotated[
        int, Field(ge=1, le=MAX_PTS_OFFERED, description="whole hours of PTS"), _NUMBER
    ]


class AtuBody(Body):
    units: Annotated[int, Field(ge=1, le=MAX_ATU), _NUMBER]


class PlayBody(Body):
    player_id: Id
    hours: Annotated[float, Field(strict=True, ge=MIN_PLAY_HOURS, le=MAX_PLAY_HOURS)]


class BackupBody(Body):
    name: Annotated[str, StringConstraints(pattern=BACKUP_NAME_PATTERN)] | None = None


def parse_deadline(text: str) -> datetime | None:
    """An aware datetime, or None when the text is not RFC 3339 with a zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


# -- responses -----------------------------------------------------------------------------


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ViewOut(Out):
    """A response derived from an Engine view (``core.views``): ``of(view)`` converts it."""

    # field -> how the view's value becomes the response's (money, timestamps)
    converters: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    @classmethod
    def of(cls, view: object) -> Self:
        return cls(
            **{
                name: cls.converters.get(name, _same)(getattr(view, name))
                for name in cls.model_fields
            }
        )


def _same(value: Any) -> Any:
    return value


def view_model(
    name: str,
    view: type,
    *,
    timestamps: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    types: dict[str, Any] | None = None,
) -> type[ViewOut]:
    """The response model of ``view``: its fields in its order, a ``Decimal`` as ``Money``,
    the ``timestamps`` as RFC 3339 (``Timestamp``), ``types`` overriding a field's type.
    Written once in the view, a field cannot disagree between the Engine and the API."""
    hints = get_type_hints(view)
    fields: dict[str, Any] = {}
    converters: dict[str, Callable[[Any], Any]] = {}
    for f in dataclasses.fields(view):
        if f.name in exclude:
            continue
        kind = hints[f.name]
        if f.name in timestamps:
            optional = kind == str | None
            kind, converters[f.name] = (
                (Timestamp | None, rfc3339_opt) if optional else (Timestamp, rfc3339)
            )
        elif kind is Decimal:
            kind, converters[f.name] = Money, money
        fields[f.name] = ((types or {}).get(f.name, kind), ...)
    model = create_model(name, __base__=ViewOut, __module__=__name__, **fields)
    model.converters = converters
    return model


PlayerOut = view_model("PlayerOut", PlayerInfo, timestamps=("created_at",))
PTOOut = view_model(
    "PTOOut",
    PTOInfo,
    timestamps=("launch_time", "funding_deadline", "completion_time"),
    types={"status": PTOStatus},  # the schema's CHECK holds the column to these
)
TokenOut = view_model("TokenOut", TokenInfo, timestamps=("purchase_time",))
SessionOut = view_model("SessionOut", SessionResult, exclude=("memory_depth_added",))


class LeaderOut(Out):
    """Public fields only: never a USD-OBBBA balance."""

    player_id: str
    xUSD_balance: Money
    total_play_time: float
    phase_locks_count: int


class IssuedToken(Out):
    player_id: str
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: Timestamp


class TransactionOut(Out):
    tx_id: int
    tx_type: str
    from_player: str | None
    to_player: str | None
    amount: Money
    currency: Currency
    pto_id: str | None
    timestamp: Timestamp


class TransactionPage(Out):
    items: list[TransactionOut]
    next_after: int | None = Field(description="pass as ?after= for the next page; null at the end")


class PlayerStats(Out):
    count: int
    usd_obbba_total: Money
    xUSD_total: Money
    total_play_time: float
    phase_locks_total: int


class PTOStats(Out):
    count: int
    by_status: dict[str, int]
    funding_raised_total: Money
    xUSD_pool_total: Money
    atu_spent_total: int


class TokenStats(Out):
    count: int
    hours_committed_total: float
    hours_played_total: float
    purchase_price_total: Money


class TransactionStats(Out):
    count: int
    volume: dict[str, Money]


class SessionStats(Out):
    count: int
    duration_total: float
    xUSD_earned_total: Money
    quality_mean: float


class ClockOut(Out):
    now: Timestamp


class RunOut(Out):
    """The scenario run this server plays, or the one recorded in its store."""

    name: str
    tick: int
    total_ticks: int
    finished: bool


class StatsOut(Out):
    players: PlayerStats
    ptos: PTOStats
    pts_tokens: TokenStats
    transactions: TransactionStats
    play_sessions: SessionStats
    clock: ClockOut
    run: RunOut | None = None

    @classmethod
    def of(
        cls, data: dict[str, dict[str, Any]], now: datetime, run: dict[str, Any] | None = None
    ) -> StatsOut:
        p, t, k, x, s = (
            data["players"],
            data["ptos"],
            data["pts_tokens"],
            data["transactions"],
            data["play_sessions"],
        )
        return cls(
            players=PlayerStats(
                count=p["count"],
                usd_obbba_total=money_float(p["usd_obbba_total"]),
                xUSD_total=money_float(p["xUSD_total"]),
                total_play_time=hours_sum(p["total_play_time"]),
                phase_locks_total=p["phase_locks_total"],
            ),
            ptos=PTOStats(
                count=t["count"],
                by_status=t["by_status"],
                funding_raised_total=money_float(t["funding_raised_total"]),
                xUSD_pool_total=money_float(t["xUSD_pool_total"]),
                atu_spent_total=t["atu_spent_total"],
            ),
            pts_tokens=TokenStats(
                count=k["count"],
                hours_committed_total=hours_sum(k["hours_committed_total"]),
                hours_played_total=hours_sum(k["hours_played_total"]),
                purchase_price_total=money_float(k["purchase_price_total"]),
            ),
            transactions=TransactionStats(
                count=x["count"], volume={n: money_float(v) for n, v in x["volume"].items()}
            ),
            play_sessions=SessionStats(
                count=s["count"],
                duration_total=hours_sum(s["duration_total"]),
                xUSD_earned_total=money_float(s["xUSD_earned_total"]),
                quality_mean=s["quality_mean"],
            ),
            clock=ClockOut(now=rfc3339(now.isoformat())),
            run=None if run is None else RunOut(**run),
        )


class BackupOut(Out):
    name: str
    created: Timestamp
    size: int


class ExportOut(BaseModel):
    """The store's full export (the seed's portable format, as ``ublox-sim export`` writes)."""

    model_config = ConfigDict(extra="allow")
    schema_version: int


class HealthOut(Out):
    status: Literal["ok"]
    store_open: bool
    accepting_writes: bool


class ErrorDetail(Out):
    code: str
    message: str


class ErrorOut(Out):
    error: ErrorDetail
