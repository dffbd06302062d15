"""Scenario files: YAML in, a fully validated ``Scenario`` out, or errors naming file, line and key.

The YAML is composed with PyYAML's safe loader (no arbitrary tags, no code), its
node tree is turned into plain data while remembering each key's line, and the
data is validated by pydantic models that forbid unknown keys (suggesting the closest
known one). Every number is held to its limit in ``limits`` (the table the engine uses
too); a key that takes a distribution is checked with ``within(limit)`` so that every
value it can draw, once ``settle``d, is inside the limit: the runner never clamps.
Cross-references (a PTO's creator, a scripted event's player) are checked after. The
reference is ``scenarios/README.md``.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..core import limits as L
from ..core.clock import DEFAULT_START, SimClock
from ..core.errors import InvalidInput
from ..core.ids import check_file_name, check_id
from ..core.limits import Limit
from ..core.money import round_to_cent, to_cents
from ..core.world import WorldParams, lattice_fault, player_fault

MAX_NODES = L.SCENARIO_MAX_VALUES
MAX_DEPTH = L.SCENARIO_MAX_DEPTH
Path_ = tuple[str | int, ...]


class ScenarioError(InvalidInput):
    """A scenario that cannot run; ``problems`` holds one line per mistake."""

    code = "bad_scenario"

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# -- YAML with line numbers --------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """The safe loader, reading numbers as YAML 1.2 does: PyYAML follows YAML 1.1, where a
    float needs a dot and a signed exponent (``5.0e+3``), so ``5e3``, ``1e-3`` and ``-.5``
    were strings and a limit written as in the README (``1e13``) was "not a number"."""


# YAML 1.2 core-schema floats that YAML 1.1 reads as strings: an exponent without a dot or
# without a sign, and a signed leading dot. Whole numbers stay ints (the int resolver comes
# first, and this pattern needs a dot or an exponent). Added to this class only
# (``add_implicit_resolver`` copies the table into the subclass), not to ``SafeLoader``.
_YAML12_FLOAT = re.compile(
    r"^[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$"
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+.0123456789"))


def _load_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse safely; return the data and the 1-based line of every key/item path."""
    _check_depth(text, source)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError([f"{source}:{line}: not valid YAML: {problem}"]) from exc
    if root is None:
        raise ScenarioError([f"{source}:1: the file is empty"])
    lines: dict[Path_, int] = {}
    budget = [MAX_NODES]
    constructor = yaml.constructor.SafeConstructor()

    def convert(node: yaml.Node, path: Path_, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ScenarioError(
                [
                    f"{source}:{node.start_mark.line + 1}: the document expands to more than "
                    f"{MAX_NODES} values (aliases?)"
                ]
            )
        if depth > MAX_DEPTH:
            raise ScenarioError(
                [
                    f"{source}:{node.start_mark.line + 1}: {_dotted(path)}: nested deeper than {MAX_DEPTH}"
                ]
            )
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            raise ScenarioError(
                [
                    f"{source}:{node.start_mark.line + 1}: {_dotted(path)}: the tag {node.tag!r} "
                    "is not allowed (scenarios are plain YAML: no tags)"
                ]
            )
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ScenarioError(
                        [
                            f"{source}:{key_node.start_mark.line + 1}: {_dotted(path)}: keys must be plain text"
                        ]
                    )
                key = key_node.value
                if key == "<<":
                    raise ScenarioError(
                        [
                            f"{source}:{key_node.start_mark.line + 1}: merge keys (<<) are not supported"
                        ]
                    )
                if key in result:
                    raise ScenarioError(
                        [
                            f"{source}:{key_node.start_mark.line + 1}: {_dotted((*path, key))}: duplicate key"
                        ]
                    )
                lines[(*path, key)] = key_node.start_mark.line + 1
                result[key] = convert(value_node, (*path, key), depth + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        try:
            return constructor.construct_object(node)
        except (
            yaml.YAMLError,
            ValueError,
            KeyError,
            IndexError,  # !!float "" indexes an empty string
            AttributeError,
            TypeError,
            OverflowError,
        ) as exc:
            problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [repr(exc)])[0]
            raise ScenarioError(
                [
                    f"{source}:{node.start_mark.line + 1}: {_dotted(path)}: cannot read "
                    f"{node.value!r} as {node.tag.rsplit(':', 1)[-1]}: {problem}"
                ]
            ) from exc

    return convert(root, (), 0), lines


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _check_depth(text: str, source: str) -> None:
    """Refuse absurd nesting from the event stream, before the (recursive) composer."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > 4 * MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else 1
                    raise ScenarioError([f"{source}:{line}: nested deeper than {MAX_DEPTH} levels"])
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return  # compose() reports syntax errors with their line


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# -- the schema --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Plain values: one pydantic constraint per limit (``limits.Limit.field``).
Number = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _whole_cents(value: float) -> float:
    """Money is exact: a constant with a fraction of a cent is refused, as the engine does."""
    try:
        to_cents(value)
    except InvalidInput:
        raise ValueError("must be whole cents (at most two decimals)") from None
    return value


PlayerId = Annotated[str, AfterValidator(partial(check_id, what="player id"))]
PtoId = Annotated[str, AfterValidator(partial(check_file_name, what="PTO id"))]


class Uniform(_Model):
    dist: Literal["uniform"]
    low: Number
    high: Number

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError("high must be ≥ low")
        return self


class Normal(_Model):
    """A normal draw clipped to [min, max]; an omitted end is the field's own limit."""

    dist: Literal["normal"]
    mean: Number
    sd: NonNeg
    min: Number | None = None
    max: Number | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Normal:
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError("max must be ≥ min")
        # A mean outside the clip makes (almost) every draw the nearer end: a typo, not a
        # distribution (mean 50, max 10 drew 10 every time).
        for end, given, outside in (("min", self.min, operator.lt), ("max", self.max, operator.gt)):
            if given is not None and outside(self.mean, given):
                raise ValueError(
                    f"mean {self.mean:g} is outside [min, max]: every draw would be clipped "
                    f"to {end} {given:g} or near it; the mean must lie between min and max"
                )
        return self


class Choice(_Model):
    dist: Literal["choice"]
    values: list[Number] = Field(min_length=1)


Distribution = Annotated[Uniform | Normal | Choice, Field(discriminator="dist")]
# A constant is a plain float here (non-finite ones included) so that ``within`` refuses
# .inf in the limit's own words rather than pydantic's union saying "a valid dictionary".
Value = float | Distribution


def settle(limit: Limit, value: float) -> Any:
    """A drawn float as the field's value: money rounded to the cent (a ``Decimal``), whole
    numbers rounded down (an ``int``), anything else as it is (a ``float``)."""
    if limit.money:
        return round_to_cent(value)
    if limit.integer:
        return math.floor(value)
    return float(value)


def _exact(limit: Limit, value: float, what: str = "") -> None:
    """A constant (or a choice's value) is taken as written: it must be inside the limit
    and already whole (a whole number, or whole cents for money)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what}must be {limit.describe()}, a finite number")
    if not limit.contains(value):
        raise ValueError(f"{what}must be {limit.describe()}")
    if limit.integer and not float(value).is_integer():
        raise ValueError(f"{what}must be a whole number")
    if limit.money:
        _whole_cents(value)


def support(value: Value, limit: Limit) -> tuple[Any, Any]:
    """The smallest and largest value a field can take once drawn and settled."""
    if isinstance(value, int | float):
        return settle(limit, value), settle(limit, value)
    if isinstance(value, Uniform):
        return settle(limit, value.low), settle(limit, value.high)
    if isinstance(value, Normal):
        low = limit.min if value.min is None else value.min
        high = limit.max if value.max is None else value.max
        return settle(limit, low), settle(limit, high)
    settled = [settle(limit, v) for v in value.values]
    return min(settled), max(settled)


@dataclass(frozen=True, slots=True)
class Within(AfterValidator):
    """The one validator of a field that has a limit: ``within(limit)`` for numbers and
    distributions, ``text_within(limit)`` for a text's length. Its message is the limit's
    own (``must be greater than 0 and at most 1e13 USD-OBBBA``), the wording of the README's
    table and of the engine, wherever the key appears; pydantic's range constraints
    (``ge``/``le``, "Input should be greater than 0") are not used in scenario models. It
    keeps the limit, so the models can be searched for their limited fields."""

    limit: Limit


def text_within(limit: Limit) -> Within:
    """A text whose length is inside ``limit``, said as ``Limit.check_length`` says it."""

    def check(value: str) -> str:
        fault = limit.text_fault(value)
        if fault is not None:
            raise ValueError(fault)
        return value

    return Within(check, limit)


def within(limit: Limit) -> Within:
    """A validator for ``Value`` fields: every value the field can draw lies in ``limit``.

    This is what makes an out-of-range draw impossible by construction: a uniform's
    ``low`` and ``high`` (as settled: rounded to the cent or down to a whole number), a
    normal's ``mean`` and its clip ends ``min``/``max``, and every ``choice`` value must
    lie inside the limit. A normal is clipped to [min, max] by definition; an end left
    out is the limit's own, which is refused where the limit excludes it (``> 0``)."""

    def check(value: Value) -> Value:
        if isinstance(value, int | float):
            _exact(limit, value)
        elif isinstance(value, Uniform):
            for end in ("low", "high"):
                raw = getattr(value, end)
                if not limit.contains(settle(limit, raw)):
                    raise ValueError(
                        f"uniform {end} {raw!r} draws values outside the limit: "
                        f"{limit.name} must be {limit.describe()}" + _settled_note(limit, raw)
                    )
        elif isinstance(value, Normal):
            if not limit.contains(value.mean):
                raise ValueError(
                    f"normal mean {value.mean!r} is outside the limit: "
                    f"{limit.name} must be {limit.describe()}"
                )
            for end, given, exclusive in (
                ("min", value.min, limit.min_exclusive),
                ("max", value.max, limit.max_exclusive),
            ):
                if given is None:
                    if exclusive:
                        raise ValueError(
                            f"normal needs an explicit {end}: its draws are unbounded and "
                            f"{limit.name} must be {limit.describe()}"
                        )
                elif not limit.contains(settle(limit, given)):
                    raise ValueError(
                        f"normal {end} {given!r} is outside the limit: "
                        f"{limit.name} must be {limit.describe()}" + _settled_note(limit, given)
                    )
        else:
            for i, item in enumerate(value.values):
                _exact(limit, item, f"choice value {item!r} ({i + 1} of {len(value.values)}) ")
        return value

    return Within(check, limit)


def _settled_note(limit: Limit, raw: float) -> str:
    settled = settle(limit, raw)
    if settled != raw:
        return f" (a draw of {raw!r} becomes {settled}: rounded {_ROUNDING[limit.money]})"
    return ""


_ROUNDING = {True: "to the cent", False: "down to a whole number"}


def draw(value: Value, rng: np.random.Generator, size: int | None, limit: Limit) -> Any:
    """Raw draws (floats) from a constant or a distribution validated ``within(limit)``.

    A normal is clipped to its [min, max], the limit's ends where not given: that clip is
    part of the distribution's definition, and ``within`` has made sure it lies inside
    the limit. ``settle`` turns a draw into the field's value."""
    if isinstance(value, int | float):
        return np.full(size, float(value)) if size is not None else float(value)
    if isinstance(value, Uniform):
        return rng.uniform(value.low, value.high, size)
    if isinstance(value, Normal):
        out = rng.normal(value.mean, value.sd, size)
        low = limit.min if value.min is None else value.min
        high = limit.max if value.max is None else value.max
        return np.clip(out, low, high)
    return rng.choice(np.asarray(value.values, dtype=float), size)


def draw_settled(value: Value, rng: np.random.Generator, size: int, limit: Limit) -> list[Any]:
    """``size`` draws settled into field values, each checked against ``limit`` (a draw
    outside it would be a bug in ``within``, never the scenario's fault)."""
    out = [settle(limit, x) for x in draw(value, rng, size, limit)]
    for item in out:
        if not limit.contains(item):
            raise AssertionError(f"{limit.name}: drew {item!r}, outside {limit.describe()}")
    return out


class ClockSpec(_Model):
    """The ``clock:`` section: when simulated time starts and how a run is cut into ticks.
    Its ``sim_clock()`` is the run's ``core.clock.SimClock``."""

    start: datetime = DEFAULT_START
    tick_hours: Annotated[float, within(L.TICK_HOURS)] = 1.0
    ticks: Annotated[int, within(L.TICKS)] | None = None
    duration_hours: Annotated[float, within(L.DURATION_HOURS)] | None = None

    @field_validator("start", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not an ISO 8601 time: {value!r}") from exc
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _length(self) -> ClockSpec:
        if (self.ticks is None) == (self.duration_hours is None):
            raise ValueError("give exactly one of ticks or duration_hours")
        if not L.TICKS.contains(self.total_ticks):
            raise ValueError(
                f"duration_hours / tick_hours makes {self.total_ticks} ticks; "
                f"ticks must be {L.TICKS.describe()}"
            )
        return self

    @property
    def total_ticks(self) -> int:
        if self.ticks is not None:
            return self.ticks
        assert self.duration_hours is not None
        return max(1, math.ceil(self.duration_hours / self.tick_hours))

    def sim_clock(self) -> SimClock:
        """A fresh simulated clock at ``start``."""
        return SimClock(self.start)


_WORLD = WorldParams()  # the defaults live there, the bounds in ``limits.WORLD``


class World(_Model):
    """The ``world:`` section: ``WorldParams`` a scenario may set (the lock rule's two
    constants keep their defaults), each held to its ``limits.WORLD`` bound."""

    size: Annotated[int, within(L.WORLD_SIZE)] = _WORLD.size
    coupling: Annotated[float, within(L.COUPLING)] = _WORLD.coupling
    dt: Annotated[float, within(L.DT)] = _WORLD.dt
    steps_per_hour: Annotated[int, within(L.STEPS_PER_HOUR)] = _WORLD.steps_per_hour
    omega_mean: Annotated[float, within(L.OMEGA_MEAN)] = _WORLD.omega_mean
    omega_spread: Annotated[float, within(L.OMEGA_SPREAD)] = _WORLD.omega_spread
    player_coupling: Annotated[float, within(L.PLAYER_COUPLING)] = _WORLD.player_coupling
    feedback: Annotated[float, within(L.FEEDBACK)] = _WORLD.feedback
    amplification: Annotated[float, within(L.AMPLIFICATION)] = _WORLD.amplification

    def params(self) -> WorldParams:
        """The ``WorldParams`` this section sets (defaults for what it does not)."""
        return WorldParams(**self.model_dump())


class PlayerSpec(_Model):
    id: PlayerId
    usd_obbba: Annotated[float, within(L.BALANCE)] = 0.0
    tau_k: Annotated[float, within(L.TAU_K)] = 1.0
    resonance_freq: Annotated[float, within(L.RESONANCE_FREQ)] | None = None


def _fits(prefix: str, count: int) -> None:
    longest = cohort_id(prefix, count, count)
    if not L.ID_LENGTH.contains(len(longest)):
        raise ValueError(
            f"generated ids like {longest!r} are {len(longest)} characters; "
            f"ids are at most {L.ID_LENGTH.max}: shorten the prefix"
        )


class Cohort(_Model):
    prefix: PlayerId
    count: Annotated[int, within(L.PLAYER_COHORT_COUNT)]
    usd_obbba: Annotated[Value, within(L.BALANCE)] = 1000.0
    tau_k: Annotated[Value, within(L.TAU_K)] = 1.0
    resonance_freq: Annotated[Value, within(L.RESONANCE_FREQ)] | None = None

    @model_validator(mode="after")
    def _ids_fit(self) -> Cohort:
        _fits(self.prefix, self.count)
        return self


def _goal_fits(offered: int, price: Any) -> None:
    if offered * to_cents(price) > L.MAX_CENTS:
        raise ValueError(
            f"pts_offered × price_per_pts can reach {offered} × {price}, beyond the money "
            f"limit of {L.MAX_MONEY}"
        )


class PTOSpec(_Model):
    id: PtoId
    game_name: Annotated[str, text_within(L.GAME_NAME)]
    creator: PlayerId
    atu_required: Annotated[int, within(L.ATU_REQUIRED)]
    pts_offered: Annotated[int, within(L.PTS_OFFERED)]
    price_per_pts: Annotated[float, within(L.PRICE_PER_PTS)]
    funding_deadline_hours: Annotated[float, within(L.FUNDING_DEADLINE_HOURS)]
    launch_at: Annotated[float, within(L.HOUR_OFFSET)] = 0.0
    amplification: Annotated[float, within(L.AMPLIFICATION)] | None = None
    description: Annotated[str, text_within(L.DESCRIPTION)] = ""

    @model_validator(mode="after")
    def _goal(self) -> PTOSpec:
        _goal_fits(self.pts_offered, self.price_per_pts)
        return self


class PTOCohort(_Model):
    prefix: PtoId
    count: Annotated[int, within(L.PTO_COHORT_COUNT)]
    creators: PlayerId | list[PlayerId] = Field(
        description="a player cohort prefix, or a list of player ids"
    )
    atu_required: Annotated[Value, within(L.ATU_REQUIRED)]
    pts_offered: Annotated[Value, within(L.PTS_OFFERED)]
    price_per_pts: Annotated[Value, within(L.PRICE_PER_PTS)]
    funding_deadline_hours: Annotated[Value, within(L.FUNDING_DEADLINE_HOURS)]
    launch_at: Annotated[Value, within(L.HOUR_OFFSET)] = 0.0

    @model_validator(mode="after")
    def _fit(self) -> PTOCohort:
        _fits(self.prefix, self.count)
        _goal_fits(
            support(self.pts_offered, L.PTS_OFFERED)[1],
            support(self.price_per_pts, L.PRICE_PER_PTS)[1],
        )
        return self


Who = Literal["all"] | PlayerId | list[PlayerId]


class Investors(_Model):
    who: Who = "all"
    probability: Annotated[float, within(L.PROBABILITY)]
    hours: Annotated[Value, within(L.PTS_HOURS)]
    max_share: Annotated[float, within(L.MAX_SHARE)] = 0.5


class Players(_Model):
    who: Who = "all"
    probability: Annotated[float, within(L.PROBABILITY)]
    hours: Annotated[Value, within(L.PLAY_HOURS)]


class Creators(_Model):
    atu_per_tick: Annotated[Value, within(L.ATU_UNITS)]
    probability: Annotated[float, within(L.PROBABILITY)] = 1.0


class Behaviours(_Model):
    investors: list[Investors] = []
    players: list[Players] = []
    creators: Creators | None = None


class BuyEvent(_Model):
    player: PlayerId
    pto: PtoId
    hours: Annotated[int, within(L.PTS_HOURS)]


class PlayEvent(_Model):
    player: PlayerId
    pto: PtoId
    hours: Annotated[float, within(L.PLAY_HOURS)]


class TransferEvent(_Model):
    from_: PlayerId = Field(alias="from")
    to: PlayerId
    amount: Annotated[float, within(L.AMOUNT)]


class SpendAtuEvent(_Model):
    pto: PtoId
    units: Annotated[int, within(L.ATU_UNITS)]


class DepositEvent(_Model):
    player: PlayerId
    amount: Annotated[float, within(L.AMOUNT)]


class ScriptedEvent(_Model):
    at: Annotated[float, within(L.HOUR_OFFSET), Field(description="hours after the start")]
    buy: BuyEvent | None = None
    play: PlayEvent | None = None
    transfer: TransferEvent | None = None
    spend_atu: SpendAtuEvent | None = None
    deposit: DepositEvent | None = None

    @model_validator(mode="after")
    def _one(self) -> ScriptedEvent:
        given = [k for k in ("buy", "play", "transfer", "spend_atu", "deposit") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "each event has exactly one of buy, play, transfer, spend_atu, deposit"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def action(self) -> tuple[str, Any]:
        for name in ("buy", "play", "transfer", "spend_atu", "deposit"):
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("validated to have one action")


class EngineSpec(_Model):
    """The ``engine:`` section: how many actors the engine keeps active. These bound
    memory and never change a result (same seed, same export whatever they are), so a
    run may be resumed with other values. Their limits are ``Engine.open``'s own."""

    max_active: int | None = Field(
        default=None, description="active actors per kind; default $UBLOX_MAX_ACTIVE or 100,000"
    )
    idle_timeout: float = Field(
        default=300.0, description="wall-clock seconds an unused actor stays active"
    )

    @field_validator("max_active")
    @classmethod
    def _max_active(cls, value: int | None) -> int | None:
        if value is not None:
            _exact(L.MAX_ACTIVE, value)
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _idle_timeout(cls, value: float) -> float:
        _exact(L.IDLE_TIMEOUT, value)
        return value


WorldMetric = Literal[
    "aci",
    "local_coherence",
    "funding_raised_cents",
    "pts_sold",
    "xusd_pool_cents",
    "sessions",
    "phase_locks",
]
GlobalMetric = Literal[
    "players_active",
    "usd_obbba_total_cents",
    "xusd_total_cents",
    "xusd_gini",
    "transactions",
    "refunded_cents",
]


class MetricsSpec(_Model):
    """The ``metrics:`` section: which per-tick reporters a run with metrics samples
    (``sim.metrics``; every one when absent). Observing never changes a result, so the
    section is not part of the recorded scenario."""

    world: tuple[WorldMetric, ...] = get_args(WorldMetric)
    global_: tuple[GlobalMetric, ...] = Field(default=get_args(GlobalMetric), alias="global")

    @field_validator("world", "global_", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        # YAML gives lists; strict mode takes a tuple only, so convert (and refuse repeats).
        if isinstance(value, list):
            if len(set(value)) != len(value):
                raise ValueError("names a metric twice")
            return tuple(value)
        return value


class Scenario(_Model):
    name: Annotated[str, text_within(L.SCENARIO_NAME)]
    seed: Annotated[int, within(L.SEED)]
    description: Annotated[str, text_within(L.DESCRIPTION)] = ""
    clock: ClockSpec
    checkpoint_every: Annotated[int, within(L.CHECKPOINT_EVERY)] = 10
    world: World = World()
    players: list[PlayerSpec] = []
    cohorts: list[Cohort] = []
    ptos: list[PTOSpec] = []
    pto_cohorts: list[PTOCohort] = []
    behaviours: Behaviours = Behaviours()
    events: list[ScriptedEvent] = []
    engine: EngineSpec = EngineSpec()
    metrics: MetricsSpec = MetricsSpec()


# -- memory ------------------------------------------------------------------------------

# A run holds, per world, world-sized float64 arrays: theta and omega in its shard, the
# tick's undo copy of theta, and the store's copy (theta, omega) held from a launch to
# the next checkpoint. A tick steps one shard (at most ``SHARD_WORLDS`` worlds, as
# ``WorldShards`` holds them) at a time with about 5 shard-sized temporaries (measured
# with tracemalloc: the four neighbour rolls, their sines and sums).
ARRAYS_PER_WORLD = 5
TICK_TEMPORARIES = 5
SHARD_WORLDS = 256


def world_count(s: Scenario) -> int:
    """One world per PTO: the listed ones and every cohort's."""
    return len(s.ptos) + sum(c.count for c in s.pto_cohorts)


def world_memory(s: Scenario) -> int:
    """Bytes the worlds' arrays take during a run (a lower bound of the run's memory)."""
    worlds = world_count(s)
    one = s.world.size**2 * 8
    return one * (ARRAYS_PER_WORLD * worlds + TICK_TEMPORARIES * min(worlds, SHARD_WORLDS))


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    scenario: Scenario
    source: str
    data: dict[str, Any]  # the resolved plain data (after --set and --seed)
    # Where each scripted event is written (``FILE:LINE``, or ``events[i]`` for one whose
    # line is unknown: a recorded scenario resumed without its file), for log lines.
    event_places: tuple[str, ...] = ()

    def event_place(self, index: int) -> str:
        if index < len(self.event_places):
            return self.event_places[index]
        return f"{self.source}: events[{index}]"


def load_scenario(
    path: Path | str, *, overrides: Sequence[str] = (), seed: int | None = None
) -> Loaded:
    """Read, override and validate a scenario file; raise ScenarioError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"{source}: cannot read: {exc}"]) from exc
    return parse_scenario(text, source, overrides=overrides, seed=seed)


def parse_scenario(
    text: str, source: str = "<scenario>", *, overrides: Sequence[str] = (), seed: int | None = None
) -> Loaded:
    data, lines = _load_yaml(text, source)
    if not isinstance(data, dict):
        raise ScenarioError(
            [f"{source}:1: a scenario is a mapping of keys (name, seed, clock, ...)"]
        )
    sets: dict[Path_, str] = {}  # what each --set changed, to name it in a problem
    for item in overrides:
        _apply_override(data, item)
        key = tuple(_split_key(item.partition("=")[0]))
        lines[key] = 0
        sets[key] = item
    if seed is not None:
        data["seed"] = seed
        lines[("seed",)] = 0
    where = partial(_where, source, lines, sets=sets)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_explain(exc, where)) from exc
    problems = [where(path) + f": {message}" for path, message in _cross_check(scenario, where)]
    if problems:
        raise ScenarioError(problems)
    places = tuple(where(("events", i)).rsplit(": ", 1)[0] for i in range(len(scenario.events)))
    return Loaded(scenario, source, data, places)


def _where(
    source: str,
    lines: Mapping[Path_, int],
    path: Sequence[str | int],
    *,
    sets: Mapping[Path_, str] | None = None,
) -> str:
    """``FILE:LINE: key.path``, or ``--set: key.path`` for a value a --set gave. A problem
    in the file's part of a section a --set changed (``clock`` after ``--set
    clock.ticks=``, ``usd_obbba.low`` after ``--set cohorts.0.usd_obbba.dist=normal``)
    names that --set too: the file alone is not at fault."""
    probe = tuple(path)
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe, 1)
    place = "--set" if line == 0 else f"{source}:{line}"
    path = tuple(path)
    inside = [
        item
        for key, item in (sets or {}).items()
        if key[: len(path)] == path or (len(key) > 1 and path[: len(key) - 1] == key[:-1])
    ]
    if line != 0 and inside:
        place += " (after " + ", ".join(f"--set {item!r}" for item in inside) + ")"
    return f"{place}: {_dotted(path)}"


_HINTS = {
    "extra_forbidden": "unknown key; see scenarios/README.md for the keys this section takes",
    "missing": "required key is missing",
}


_BRANCHES = (
    "float",
    "int",
    "str",
    "bool",
    "list[",
    "tagged-union[",
    "function-",
    "uniform",
    "normal",
    "choice",
)


def _explain(exc: ValidationError, where: Callable[[Path_], str]) -> list[str]:
    """One line per mistake. For a value that may be a number or a distribution,
    pydantic reports every branch; keep the branch that says the most."""
    best: dict[Path_, tuple[int, str]] = {}
    order: list[Path_] = []
    for error in exc.errors():
        loc = error["loc"]
        branch = next((p for p in loc if isinstance(p, str) and p.startswith(_BRANCHES)), None)
        path = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(_BRANCHES)))
        path = tuple("from" if p == "from_" else p for p in path)
        message = _HINTS.get(error["type"], error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and path and isinstance(path[-1], str):
            message = _did_you_mean(loc, path[-1]) or message
        if error["type"] not in _HINTS and not isinstance(error.get("input"), dict | list):
            message += f" (got {error.get('input')!r})"
        # Prefer a distribution's own complaint over "should be a number".
        rank = 0 if branch is None else 1 if branch.startswith("tagged-union[") else 2
        if path not in best:
            order.append(path)
        if path not in best or rank < best[path][0]:
            best[path] = (rank, message)
    # A mapping where a number or a distribution goes: the distribution's complaints
    # about its own keys say more than "should be a number" about the whole.
    order = [
        path
        for path in order
        if best[path][0] < 2
        or not any(len(other) > len(path) and other[: len(path)] == path for other in order)
    ]
    return [where(path) + f": {best[path][1]}" for path in order]


def _did_you_mean(loc: Sequence[str | int], key: str) -> str | None:
    """``unknown key; did you mean `price_per_pts`?`` when a known key is close enough."""
    close = difflib.get_close_matches(key, sorted(_known_keys(loc[:-1])), n=1, cutoff=0.7)
    return f"unknown key; did you mean `{close[0]}`?" if close else None


def _known_keys(loc: Sequence[str | int]) -> set[str]:
    """The keys the mapping at ``loc`` takes: follow the models' fields down the path (a
    tagged union's branch appears in ``loc`` by its tag, which names its model)."""
    models: list[type[BaseModel]] = [Scenario]
    for part in loc:
        if isinstance(part, int):
            continue
        fields = [
            info
            for m in models
            for name, info in m.model_fields.items()
            if part in (name, info.alias)
        ]
        if fields:
            models = [m for info in fields for m in _models_in(info.annotation)]
        else:  # a union's branch: keep the model it names, if any
            models = [m for m in models if m.__name__.lower() == part.lower()] or models
    return {info.alias or name for m in models for name, info in m.model_fields.items()}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _split_key(key: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in key.strip().split(".") if p]


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    parts = _split_key(key)
    if not sep or not parts:
        raise ScenarioError([f"--set {item!r}: expected key.path=value"])
    try:
        value = yaml.load(raw, Loader=_Loader)  # a SafeLoader: read as the file is
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ScenarioError([f"--set {item!r}: the value is not valid YAML: {first}"]) from exc
    except (ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError) as exc:
        raise ScenarioError([f"--set {item!r}: the value cannot be read: {exc!r}"]) from exc
    target: Any = data
    for part in parts[:-1]:
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            if isinstance(part, str) and isinstance(target, dict):
                target[part] = {}
                target = target[part]
            else:
                raise ScenarioError([f"--set {item!r}: no {key.strip()} in the scenario"]) from None
    last = parts[-1]
    if isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise ScenarioError([f"--set {item!r}: no {key.strip()} in the scenario"])


def cohort_id(prefix: str, number: int, count: int) -> str:
    """The n-th generated id of a cohort: ``fan-0001`` (wider when the cohort is larger)."""
    return f"{prefix}-{number:0{max(4, len(str(count)))}d}"


def _member(ident: str, cohorts: Mapping[str, Cohort | PTOCohort]) -> str | None:
    """The prefix of the cohort that generates ``ident`` (``PREFIX-0001`` …), if any."""
    prefix, _, number = ident.rpartition("-")
    cohort = cohorts.get(prefix)
    if (
        cohort is not None
        and number.isdigit()
        and 1 <= int(number) <= cohort.count
        and ident == cohort_id(prefix, int(number), cohort.count)
    ):
        return prefix
    return None


def _declared(ident: str, listed: set[str], cohorts: Mapping[str, Cohort | PTOCohort]) -> bool:
    """Listed by name, or one of a cohort's generated ids (``PREFIX-0001`` …)."""
    return ident in listed or _member(ident, cohorts) is not None


def _id_clashes(s: Scenario, place: Callable[[Path_], str]) -> Iterator[tuple[Path_, str]]:
    """Ids given twice: players and PTOs share one namespace (the engine refuses a second
    ``alice`` whatever kind it is), so a listed id, a cohort's generated ids and a prefix
    must each be unique across both kinds. Each problem names the place given first."""

    def clash(here: Path_, what: str, kind: str, first: tuple[str, Path_]) -> tuple[Path_, str]:
        shared = "" if kind == first[0] else "; players and PTOs share one namespace of ids"
        return here, f"{what} ({place(first[1])}){shared}"

    listed: dict[str, tuple[str, Path_]] = {}  # id -> (kind, where it was first listed)
    for section, kind in (("players", "player"), ("ptos", "PTO")):
        items: Sequence[PlayerSpec | PTOSpec] = getattr(s, section)
        for i, item in enumerate(items):
            here: Path_ = (section, i, "id")
            if item.id in listed:
                first = listed[item.id]
                what = f"{kind} id {item.id!r} is already the id of a {first[0]}"
                yield clash(here, what, kind, first)
            else:
                listed[item.id] = (kind, here)
    prefixes: dict[str, tuple[str, Path_]] = {}
    for section, kind in (("cohorts", "player"), ("pto_cohorts", "PTO")):
        cohorts: Sequence[Cohort | PTOCohort] = getattr(s, section)
        for i, c in enumerate(cohorts):
            here = (section, i, "prefix")
            if c.prefix in prefixes:
                first = prefixes[c.prefix]
                what = f"prefix {c.prefix!r} is already the prefix of a {first[0]} cohort"
                yield clash(here, what, kind, first)
            else:
                prefixes[c.prefix] = (kind, here)
    generated: dict[str, Cohort | PTOCohort] = {c.prefix: c for c in s.pto_cohorts}
    generated.update({c.prefix: c for c in s.cohorts})
    for ident, (kind, here) in listed.items():
        prefix = _member(ident, generated)
        if prefix is not None:
            first = prefixes[prefix]
            what = f"{kind} id {ident!r} is also an id the {first[0]} cohort {prefix!r} generates"
            yield clash(here, what, kind, first)


# A session moves tau_k to 0.9·tau_k + quality (``economy.tau_k_after``, quality ≤ 1): it
# never rises above max(its start, 10), so a run's largest tau_k is known when it loads.
SESSION_TAU_K_CEILING = 10.0


def _world_faults(s: Scenario) -> Iterator[tuple[Path_, str]]:
    """The world's explicit Euler steps stable for this scenario (``core.world``): the
    lattice (coupling × dt) and each player against its cell (with the largest tau_k any
    player here can reach), blamed on the first of the keys the file sets."""
    params = s.world.params()
    given = s.world.model_fields_set

    def key(*names: str) -> Path_:
        return ("world", *[n for n in names if n in given][:1])

    fault = lattice_fault(params)
    if fault is not None:
        yield key("coupling", "dt"), fault
    tau_k = max(
        [
            SESSION_TAU_K_CEILING,
            *(p.tau_k for p in s.players),
            *(support(c.tau_k, L.TAU_K)[1] for c in s.cohorts),
        ]
    )
    fault = player_fault(params, tau_k)
    if fault is not None:
        yield (
            key("player_coupling", "feedback", "dt"),
            f"{fault} (tau_k {tau_k:g}: the largest a player here starts with, or 10, "
            "where sessions take it)",
        )


def _cross_check(s: Scenario, place: Callable[[Path_], str]) -> Iterator[tuple[Path_, str]]:
    """References between sections: every id used must be declared, once."""
    yield from _id_clashes(s, place)
    yield from _world_faults(s)
    prefixes = {c.prefix: c for c in s.cohorts}
    seen = {p.id for p in s.players}

    def player_known(pid: str) -> bool:
        return _declared(pid, seen, prefixes)

    ptos = {p.id for p in s.ptos}
    for i, p in enumerate(s.ptos):
        if not player_known(p.creator):
            yield (
                ("ptos", i, "creator"),
                f"creator {p.creator!r} is not a declared player (hint: add it under players:)",
            )
    pto_prefixes = {c.prefix: c for c in s.pto_cohorts}
    for i, pc in enumerate(s.pto_cohorts):
        creators = [pc.creators] if isinstance(pc.creators, str) else pc.creators
        for creator in creators:
            if creator not in prefixes and not player_known(creator):
                yield (
                    ("pto_cohorts", i, "creators"),
                    f"{creator!r} is neither a player nor a cohort prefix",
                )

    def pto_known(pid: str) -> bool:
        return _declared(pid, ptos, pto_prefixes)

    rules: list[tuple[str, int, Who]] = [
        *(("investors", i, r.who) for i, r in enumerate(s.behaviours.investors)),
        *(("players", i, r.who) for i, r in enumerate(s.behaviours.players)),
    ]
    for kind, i, rule_who in rules:
        who = [] if rule_who == "all" else [rule_who] if isinstance(rule_who, str) else rule_who
        for name in who:
            if name not in prefixes and not player_known(name):
                yield (
                    ("behaviours", kind, i, "who"),
                    f"{name!r} is neither a player nor a cohort prefix",
                )
    total = s.clock.total_ticks * s.clock.tick_hours
    # A PTO launched after the last tick never launches: it is missing from the export and
    # every event on it is refused, so its launch must fall inside the run, as an event's.
    for i, p in enumerate(s.ptos):
        if p.launch_at >= total:
            yield (
                ("ptos", i, "launch_at"),
                f"launch_at {p.launch_at:g} h is after the run ends ({total:g} h)",
            )
    # A drawn launch need only be able to fall inside the run: cutting a run short
    # (--set clock.ticks=1) is how a scenario is tried, and the members drawn later are
    # the PTOs not launched yet when it stops, as in the full run stopped early.
    for i, pc in enumerate(s.pto_cohorts):
        earliest = support(pc.launch_at, L.HOUR_OFFSET)[0]
        if earliest >= total:
            yield (
                ("pto_cohorts", i, "launch_at"),
                f"launch_at draws {earliest:g} h at the earliest, after the run ends "
                f"({total:g} h): none of these PTOs would launch",
            )
    for i, event in enumerate(s.events):
        if event.at >= total:
            yield ("events", i, "at"), f"at {event.at:g} h is after the run ends ({total:g} h)"
        name, action = event.action
        for field_name in ("player", "from_", "to"):
            ref: str | None = getattr(action, field_name, None)
            if ref is not None and not player_known(ref):
                key = "from" if field_name == "from_" else field_name
                yield ("events", i, name, key), f"player {ref!r} is not declared"
        pto = getattr(action, "pto", None)
        if pto is not None and not pto_known(pto):
            yield ("events", i, name, "pto"), f"PTO {pto!r} is not declared"
