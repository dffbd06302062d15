"""One table of limits: the scenario loader, the runner's draws and the engine all keep to it.

Each limited scenario key has one line in ``TEMPLATE`` (marked with its key); the tests
put values inside and outside its limit on that line and expect the loader to accept or
to refuse naming the file, line and key. The engine is probed with the same values.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError, create_model

from ublox_sim.core import limits as L
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidInput, UbloxError
from ublox_sim.core.limits import Limit
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.sim.scenario import (
    Scenario,
    ScenarioError,
    Within,
    _models_in,
    draw_settled,
    parse_scenario,
    settle,
)

ROOT = Path(__file__).resolve().parents[1]

# A valid scenario in which every limited key sits on a line of its own, marked
# "#= key" so the tests can find it. Values are chosen so that changing one key alone
# cannot break a cross-check (pts_offered 1 and price 0.01 keep any funding goal small;
# the cohort count is not referred to anywhere; no coupling and a tiny dt keep explicit
# Euler's products, coupling × dt and (player_coupling + feedback) × tau_k × dt, inside
# their bounds whatever one world key or tau_k is; 1,200 ticks of a year outlast any
# launch_at, which must fall before the run ends). The template is loaded, never run.
TEMPLATE = """\
name: limits
seed: 1  #= seed
clock:
  ticks: 1200  #= clock.ticks
  tick_hours: 8760  #= clock.tick_hours
checkpoint_every: 2  #= checkpoint_every
world:
  size: 8  #= world.size
  coupling: 0.0  #= world.coupling
  dt: 1.0e-7  #= world.dt
  steps_per_hour: 4  #= world.steps_per_hour
  omega_mean: 1.0  #= world.omega_mean
  omega_spread: 0.1  #= world.omega_spread
  player_coupling: 0.0  #= world.player_coupling
  feedback: 0.0  #= world.feedback
  amplification: 100  #= world.amplification
players:
  - id: alice
    usd_obbba: 100  #= players[0].usd_obbba
    tau_k: 1.0  #= players[0].tau_k
    resonance_freq: 1.0  #= players[0].resonance_freq
  - id: bob
cohorts:
  - prefix: fan
    count: 3  #= cohorts[0].count
    usd_obbba: 10  #= cohorts[0].usd_obbba
    tau_k: 1.0  #= cohorts[0].tau_k
    resonance_freq: 1.0  #= cohorts[0].resonance_freq
ptos:
  - id: g1
    game_name: Game One
    creator: alice
    atu_required: 10  #= ptos[0].atu_required
    pts_offered: 1  #= ptos[0].pts_offered
    price_per_pts: 0.01  #= ptos[0].price_per_pts
    funding_deadline_hours: 3  #= ptos[0].funding_deadline_hours
    launch_at: 0  #= ptos[0].launch_at
    amplification: 100  #= ptos[0].amplification
pto_cohorts:
  - prefix: pc
    creators: fan
    count: 2  #= pto_cohorts[0].count
    atu_required: 10  #= pto_cohorts[0].atu_required
    pts_offered: 1  #= pto_cohorts[0].pts_offered
    price_per_pts: 0.01  #= pto_cohorts[0].price_per_pts
    funding_deadline_hours: 3  #= pto_cohorts[0].funding_deadline_hours
    launch_at: 0  #= pto_cohorts[0].launch_at
behaviours:
  investors:
    - who: all
      probability: 0.5  #= behaviours.investors[0].probability
      hours: 2  #= behaviours.investors[0].hours
      max_share: 0.5  #= behaviours.investors[0].max_share
  players:
    - who: all
      probability: 0.5  #= behaviours.players[0].probability
      hours: 1  #= behaviours.players[0].hours
  creators:
    atu_per_tick: 5  #= behaviours.creators.atu_per_tick
    probability: 1.0  #= behaviours.creators.probability
events:
  - at: 0
    buy:
      player: bob
      pto: g1
      hours: 1  #= events[0].buy.hours
  - at: 0
    play:
      player: bob
      pto: g1
      hours: 1  #= events[1].play.hours
  - at: 0
    deposit:
      player: bob
      amount: 10  #= events[2].deposit.amount
  - at: 0
    transfer:
      from: bob
      to: alice
      amount: 1  #= events[3].transfer.amount
  - at: 0
    spend_atu:
      pto: g1
      units: 1  #= events[4].spend_atu.units
"""
LINES = TEMPLATE.splitlines()
LINE_OF = {
    line.split("#= ")[1]: number for number, line in enumerate(LINES, start=1) if "#= " in line
}

# Each limited key and its limit: what the loader must enforce there.
FIELDS: dict[str, Limit] = {
    "seed": L.SEED,
    "clock.ticks": L.TICKS,
    "clock.tick_hours": L.TICK_HOURS,
    "checkpoint_every": L.CHECKPOINT_EVERY,
    **{
        f"world.{name}": L.WORLD[name]
        for name in (
            "size",
            "coupling",
            "dt",
            "steps_per_hour",
            "omega_mean",
            "omega_spread",
            "player_coupling",
            "feedback",
            "amplification",
        )
    },
    "players[0].usd_obbba": L.BALANCE,
    "players[0].tau_k": L.TAU_K,
    "players[0].resonance_freq": L.RESONANCE_FREQ,
    "cohorts[0].count": L.PLAYER_COHORT_COUNT,
    "cohorts[0].usd_obbba": L.BALANCE,
    "cohorts[0].tau_k": L.TAU_K,
    "cohorts[0].resonance_freq": L.RESONANCE_FREQ,
    "ptos[0].atu_required": L.ATU_REQUIRED,
    "ptos[0].pts_offered": L.PTS_OFFERED,
    "ptos[0].price_per_pts": L.PRICE_PER_PTS,
    "ptos[0].funding_deadline_hours": L.FUNDING_DEADLINE_HOURS,
    "ptos[0].launch_at": L.HOUR_OFFSET,
    "ptos[0].amplification": L.AMPLIFICATION,
    "pto_cohorts[0].count": L.PTO_COHORT_COUNT,
    "pto_cohorts[0].atu_required": L.ATU_REQUIRED,
    "pto_cohorts[0].pts_offered": L.PTS_OFFERED,
    "pto_cohorts[0].price_per_pts": L.PRICE_PER_PTS,
    "pto_cohorts[0].funding_deadline_hours": L.FUNDING_DEADLINE_HOURS,
    "pto_cohorts[0].launch_at": L.HOUR_OFFSET,
    "behaviours.investors[0].probability": L.PROBABILITY,
    "behaviours.investors[0].hours": L.PTS_HOURS,
    "behaviours.investors[0].max_share": L.MAX_SHARE,
    "behaviours.players[0].probability": L.PROBABILITY,
    "behaviours.players[0].hours": L.PLAY_HOURS,
    "behaviours.creators.atu_per_tick": L.ATU_UNITS,
    "behaviours.creators.probability": L.PROBABILITY,
    "events[0].buy.hours": L.PTS_HOURS,
    "events[1].play.hours": L.PLAY_HOURS,
    "events[2].deposit.amount": L.AMOUNT,
    "events[3].transfer.amount": L.AMOUNT,
    "events[4].spend_atu.units": L.ATU_UNITS,
}
# Keys that take a number or a distribution.
DISTRIBUTED = [
    key
    for key in FIELDS
    if key.startswith(("cohorts[0].", "pto_cohorts[0].", "behaviours."))
    and not key.endswith((".count", ".probability", ".max_share"))
]


def yaml_number(value: float | int | Decimal) -> str:
    """A number as Python writes it (``1e-05``, ``1e+16``): the loader reads YAML 1.2
    floats, so the property tests below also exercise exponents without a dot."""
    if isinstance(value, int | Decimal):
        return str(value)
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


def with_value(key: str, value: str) -> str:
    lines = list(LINES)
    number = LINE_OF[key]
    head = lines[number - 1].split(":")[0]
    lines[number - 1] = f"{head}: {value}"
    return "\n".join(lines) + "\n"


def problems_of(text: str) -> list[str] | None:
    try:
        parse_scenario(text, "s.yaml")
    except ScenarioError as exc:
        return exc.problems
    return None


def assert_refused_at(key: str, text: str) -> str:
    problems = problems_of(text)
    assert problems is not None, f"{key}: accepted {text.splitlines()[LINE_OF[key] - 1]!r}"
    prefix = f"s.yaml:{LINE_OF[key]}: {key}:"
    assert len(problems) == 1 and problems[0].startswith(prefix), problems
    return problems[0]


def inside(limit: Limit) -> st.SearchStrategy[Any]:
    """Values a scenario may write for a key with this limit (as written: whole numbers
    for integer limits, whole cents for money)."""
    if limit.integer:
        return st.integers(int(limit.min), int(limit.max))
    if limit.money:
        low = int(limit.min * 100) + (1 if limit.min_exclusive else 0)
        return st.integers(low, int(limit.max * 100)).map(lambda c: float(Decimal(c).scaleb(-2)))
    return st.floats(
        limit.min,
        limit.max,
        exclude_min=limit.min_exclusive,
        exclude_max=limit.max_exclusive,
        allow_nan=False,
    )


def outside(limit: Limit) -> st.SearchStrategy[Any]:
    """Values beyond either end (or at an excluded end), and the non-finite ones."""
    if limit.integer:
        return st.integers(max_value=int(limit.min) - 1) | st.integers(min_value=int(limit.max) + 1)
    below = st.floats(max_value=limit.min, exclude_max=not limit.min_exclusive, allow_nan=False)
    above = st.floats(min_value=limit.max, exclude_min=not limit.max_exclusive, allow_nan=False)
    return below | above | st.just(math.nan)


def test_the_template_is_valid_and_marks_every_field() -> None:
    assert problems_of(TEMPLATE) is None
    assert sorted(FIELDS) == sorted(LINE_OF)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_inside_the_limits_loads(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(FIELDS)), label="key")
    value = data.draw(inside(FIELDS[key]), label="value")
    text = with_value(key, yaml_number(value))
    assert problems_of(text) is None, (key, value, problems_of(text))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_outside_the_limits_is_refused_naming_the_key(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(FIELDS)), label="key")
    value = data.draw(outside(FIELDS[key]), label="value")
    assert_refused_at(key, with_value(key, yaml_number(value)))


def beyond(limit: Limit) -> list[int]:
    """A whole number below the limit and one above it (every limit has whole ends)."""
    return [math.floor(limit.min) - 1, math.ceil(limit.max) * 2 + 1]


def as_set(key: str) -> str:
    """``ptos[0].price_per_pts`` as a ``--set`` path: ``ptos.0.price_per_pts``."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_limited_key_refuses_out_of_range_values_in_the_tables_words(key: str) -> None:
    """One wording per limit: the README table's ``describe()``, in a file and in --set,
    for plain fields (pydantic used to say "Input should be greater than 0") and for
    the keys that also take a distribution alike."""
    limit = FIELDS[key]
    for value in beyond(limit):
        expected = f"must be {limit.describe()} (got {value!r})"
        assert problems_of(with_value(key, str(value))) == [
            f"s.yaml:{LINE_OF[key]}: {key}: {expected}"
        ]
        assert problems_of_set(f"{as_set(key)}={value}") == [f"--set: {key}: {expected}"]
    if not limit.integer:  # a non-finite value: the same words, and why
        assert problems_of(with_value(key, ".inf")) == [
            f"s.yaml:{LINE_OF[key]}: {key}: must be {limit.describe()}, a finite number (got inf)"
        ]


def problems_of_set(override: str) -> list[str] | None:
    try:
        parse_scenario(TEMPLATE, "s.yaml", overrides=[override])
    except ScenarioError as exc:
        return exc.problems
    return None


# Limited keys that are not numbers with a table row: an hour offset, and texts whose
# length is limited (said as ``Limit.check_length`` says it).
OTHER_LIMITED = {
    "name": ("''", "must be text of between 1 and 200 characters (got '')"),
    "ptos[0].game_name": ("''", "must be text of between 1 and 200 characters (got '')"),
    "events[0].at": ("-1", f"must be {L.HOUR_OFFSET.describe()} (got -1)"),
    "clock.duration_hours": ("0", f"must be {L.DURATION_HOURS.describe()} (got 0)"),
    **{
        key: (
            "x" * 10_001,
            f"must be text of between 0 and 10000 characters (got '{'x' * 10_001}')",
        )
        for key in ("description", "ptos[0].description")
    },
}


@pytest.mark.parametrize("key", sorted(OTHER_LIMITED))
def test_other_limited_keys_use_their_limits_words_too(key: str) -> None:
    value, expected = OTHER_LIMITED[key]
    assert problems_of_set(f"{as_set(key)}={value}") == [f"--set: {key}: {expected}"]


def metadata_of(info: Any) -> list[Any]:
    """A field's metadata: ``Annotated[float, within(...)]`` or, where optional, that ``| None``."""
    annotated = [info.annotation, *typing.get_args(info.annotation)]
    return [*info.metadata, *(m for a in annotated for m in getattr(a, "__metadata__", ()))]


def limited_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Limit]:
    """Every field of the scenario models that carries a limit, by its key
    (``ptos[].price_per_pts``), found through the ``Within`` validator it keeps."""
    found: dict[str, Limit] = {}
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        for item in metadata_of(info):
            if isinstance(item, Within):
                found[key] = item.limit
        for sub in _models_in(info.annotation):
            is_list = typing.get_origin(info.annotation) is list or any(
                typing.get_origin(arg) is list for arg in typing.get_args(info.annotation)
            )
            found.update(limited_fields(sub, key + ("[]." if is_list else ".")))
    return found


def test_every_limited_field_of_the_loader_is_in_the_table() -> None:
    """The models carry exactly the table's limits (so the test above covers every
    field), and no pydantic range constraint with its own wording is left beside them."""
    found = limited_fields(Scenario)
    table = {INDEX.sub("[]", key): limit for key, limit in FIELDS.items()}
    others = {INDEX.sub("[]", key) for key in OTHER_LIMITED}
    assert {k: v for k, v in found.items() if k not in others} == table
    assert set(found) >= others

    def range_constraints(model: type[BaseModel]) -> list[str]:
        out = [
            f"{model.__name__}.{name}"
            for name, info in model.model_fields.items()
            if any(type(m).__name__ in {"Gt", "Ge", "Lt", "Le"} for m in metadata_of(info))
        ]
        for info in model.model_fields.values():
            for sub in _models_in(info.annotation):
                out += range_constraints(sub)
        return out

    # A normal's sd (>= 0) has no limit in the table: it is a distribution's own rule.
    assert sorted(set(range_constraints(Scenario))) == ["Normal.sd"]


def distribution(limit: Limit, ends: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """A distribution (as YAML flow text) whose parameters come from ``ends``."""

    def uniform(pair: tuple[Any, Any]) -> str:
        low, high = sorted(pair)
        return f"{{dist: uniform, low: {yaml_number(low)}, high: {yaml_number(high)}}}"

    def normal(triple: tuple[Any, Any, Any]) -> str:
        low, mean, high = sorted(triple)
        return (
            f"{{dist: normal, mean: {yaml_number(mean)}, sd: 1.0,"
            f" min: {yaml_number(low)}, max: {yaml_number(high)}}}"
        )

    def choice(values: list[Any]) -> str:
        return "{dist: choice, values: [" + ", ".join(map(yaml_number, values)) + "]}"

    return st.one_of(
        st.tuples(ends, ends).map(uniform),
        st.tuples(ends, ends, ends).map(normal),
        st.lists(ends, min_size=1, max_size=4).map(choice),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_distribution_that_loads_only_draws_values_inside_the_limits(
    data: st.DataObject,
) -> None:
    """Any distribution the loader accepts draws (and settles) inside the limit, so the
    runner never needs to clip; one with a parameter outside is refused naming the key."""
    key = data.draw(st.sampled_from(DISTRIBUTED), label="key")
    limit = FIELDS[key]
    text = data.draw(distribution(limit, inside(limit)), label="distribution")
    loaded = parse_scenario(with_value(key, text), "s.yaml").scenario
    value: Any = loaded
    for part in re.findall(r"[a-z_]+|\d+", key):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    seed = data.draw(st.integers(0, 2**32), label="seed")
    draws = draw_settled(value, np.random.default_rng(seed), 200, limit)
    assert all(limit.contains(d) for d in draws)

    bad = data.draw(distribution(limit, inside(limit) | outside(limit)), label="mixed")
    problems = problems_of(with_value(key, bad))
    if problems is not None:
        assert problems[0].startswith(f"s.yaml:{LINE_OF[key]}: {key}"), problems


@pytest.mark.parametrize("key", DISTRIBUTED)
def test_a_distribution_reaching_outside_the_limits_is_refused(key: str) -> None:
    limit = FIELDS[key]
    low = yaml_number(limit.min - 1)
    mid = yaml_number(limit.min + 1 if limit.integer else (limit.min + limit.max) / 2)
    high = yaml_number(limit.max * 2)
    for text in (
        f"{{dist: uniform, low: {low}, high: {mid}}}",
        f"{{dist: uniform, low: {mid}, high: {high}}}",
        f"{{dist: normal, mean: {mid}, sd: 1.0, min: {low}}}",
        f"{{dist: normal, mean: {high}, sd: 1.0}}",
        f"{{dist: choice, values: [{mid}, {high}]}}",
    ):
        assert_refused_at(key, with_value(key, text))


def test_a_normal_without_min_needs_one_where_the_limit_excludes_its_end() -> None:
    key = "pto_cohorts[0].funding_deadline_hours"
    problem = assert_refused_at(key, with_value(key, "{dist: normal, mean: 5.0, sd: 1.0}"))
    assert "explicit min" in problem
    assert problems_of(with_value(key, "{dist: normal, mean: 5.0, sd: 1.0, min: 1.0}")) is None


def test_a_normal_without_ends_is_clipped_to_the_limits() -> None:
    """Documented: an omitted min/max is the limit's own end (here 0 and 100)."""
    key = "cohorts[0].tau_k"
    loaded = parse_scenario(with_value(key, "{dist: normal, mean: 1.0, sd: 500.0}"), "s.yaml")
    tau = loaded.scenario.cohorts[0].tau_k
    draws = draw_settled(tau, np.random.default_rng(7), 1000, L.TAU_K)
    assert min(draws) == 0.0 and max(draws) == 100.0


def test_draws_are_settled_as_documented() -> None:
    assert settle(L.PRICE_PER_PTS, 0.126) == Decimal("0.13")
    assert settle(L.PTS_OFFERED, 7.99) == 7
    assert settle(L.TAU_K, 7.99) == 7.99


def test_the_funding_goal_must_fit_the_money_limit() -> None:
    text = with_value("ptos[0].pts_offered", str(L.PTS_OFFERED.max))
    lines = text.splitlines()
    lines[LINE_OF["ptos[0].price_per_pts"] - 1] = f"    price_per_pts: {L.MAX_MONEY}"
    problems = problems_of("\n".join(lines) + "\n")
    assert problems is not None
    assert problems == [
        f"s.yaml:{LINES.index('  - id: g1') + 1}: ptos[0]: pts_offered × price_per_pts can reach"
        f" 1000000000 × {float(L.MAX_MONEY)}, beyond the money limit of {L.MAX_MONEY}"
    ]


def test_generated_ids_must_fit_the_id_length() -> None:
    prefix = "p" * (int(L.ID_LENGTH.max) - len("-0001"))
    ok = TEMPLATE.replace("prefix: fan", f"prefix: {prefix}").replace(
        "creators: fan", "creators: alice"
    )
    assert problems_of(ok) is None
    too_long = ok.replace(f"prefix: {prefix}", f"prefix: {prefix}x")
    problems = problems_of(too_long)
    assert problems is not None and "shorten the prefix" in problems[0]


# -- did you mean ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "right", "line"),
    [
        ("    price_per_pt: 0.01  #= ptos[0].price_per_pts", "price_per_pts", "ptos[0].price_per_pt"),
        ("  sise: 8  #= world.size", "size", "world.sise"),
        ("    atu_per_tik: 5  #= behaviours.creators.atu_per_tick", "atu_per_tick", "behaviours.creators.atu_per_tik"),
    ],
)  # fmt: skip
def test_an_unknown_key_suggests_the_closest_known_one(wrong: str, right: str, line: str) -> None:
    key = wrong.split("#= ")[1]
    lines = list(LINES)
    lines[LINE_OF[key] - 1] = wrong
    problems = problems_of("\n".join(lines) + "\n")
    assert problems is not None
    assert f"s.yaml:{LINE_OF[key]}: {line}: unknown key; did you mean `{right}`?" in problems


def test_an_unknown_key_inside_a_distribution_suggests_its_parameter() -> None:
    key = "cohorts[0].tau_k"
    problems = problems_of(with_value(key, "{dist: uniform, low: 1.0, hihg: 2.0}"))
    assert problems is not None
    assert any(
        p.endswith("cohorts[0].tau_k.hihg: unknown key; did you mean `high`?") for p in problems
    )
    assert not any("valid number" in p for p in problems)  # the number branch is noise here


def test_an_unknown_key_with_nothing_close_gets_no_guess() -> None:
    problems = problems_of(TEMPLATE + "colour: blue\n")
    assert problems is not None
    assert problems[0].endswith(
        "colour: unknown key; see scenarios/README.md for the keys this section takes"
    )


# -- the engine keeps to the same table ----------------------------------------------------


def probes(limit: Limit) -> list[Any]:
    """Values at and around both ends, and the non-finite ones."""
    low, high = limit.min, limit.max
    if limit.integer:
        return [int(low) - 1, int(low), int(low) + 1, int(high) - 1, int(high), int(high) + 1, 2.5]
    values = [
        low,
        high,
        math.nextafter(low, -math.inf),
        math.nextafter(high, math.inf),
        (low + high) / 2,
        -1.0,
        math.nan,
        math.inf,
    ]
    if limit.money:
        values += [low + 0.01, high - 0.01, 0.005, high + 0.01]
    return values


def loader_refuses(key: str, value: Any) -> bool:
    return problems_of(with_value(key, yaml_number(value))) is not None


async def engine_refuses(engine: Engine, call: Any) -> bool:
    try:
        await call
    except InvalidInput:
        return True
    return False


# (scenario key, how the engine is handed the same value)
ENGINE_CALLS: list[tuple[str, str]] = [
    ("players[0].usd_obbba", "register usd_obbba"),
    ("players[0].tau_k", "register tau_k"),
    ("players[0].resonance_freq", "register resonance_freq"),
    ("ptos[0].atu_required", "launch atu_required"),
    ("ptos[0].pts_offered", "launch pts_offered"),
    ("ptos[0].price_per_pts", "launch price_per_pts"),
    ("ptos[0].amplification", "launch amplification"),
    ("events[0].buy.hours", "buy"),
    ("events[1].play.hours", "play"),
    ("events[2].deposit.amount", "deposit"),
    ("events[3].transfer.amount", "transfer"),
    ("events[4].spend_atu.units", "spend_atu"),
]


@pytest.mark.asyncio
async def test_the_engine_and_the_loader_refuse_the_same_values(tmp_path: Path) -> None:
    start = datetime(2025, 12, 12, tzinfo=UTC)
    disagreements: list[tuple[str, Any, bool, bool]] = []
    async with Engine.open(tmp_path / "home", seed=1, clock=SimClock(start)) as engine:
        await engine.register_player("rich", usd_obbba=L.MAX_MONEY)
        await engine.register_player("poor")
        n = 0

        def fresh() -> str:
            nonlocal n
            n += 1
            return f"x{n}"

        async def launch(**changes: Any) -> Any:
            args: dict[str, Any] = {
                "pto_id": fresh(),
                "game_name": "G",
                "creator_id": "rich",
                "atu_required": 1,
                "pts_offered": 1,
                "price_per_pts": Decimal("0.01"),
                "funding_deadline": timedelta(hours=3),
                **changes,
            }
            return await engine.launch_pto(**args)

        for key, how in ENGINE_CALLS:
            for value in probes(FIELDS[key]):
                verb, _, name = how.partition(" ")
                if verb == "register":
                    call = engine.register_player(fresh(), **{name: value})
                elif verb == "launch":
                    call = launch(**{name: value})
                elif verb == "buy":
                    call = engine.buy_pts("rich", "nope", value)
                elif verb == "play":
                    call = engine.play("rich", "nope", value)
                elif verb == "deposit":
                    call = engine.deposit("poor", value)
                elif verb == "transfer":
                    call = engine.transfer("poor", "rich", value)
                else:
                    call = engine.spend_atu("nope", value)
                try:
                    refused = await engine_refuses(engine, call)
                except UbloxError:  # a refusal (no such PTO) once the value passed
                    refused = False
                if refused != loader_refuses(key, value):
                    disagreements.append((key, value, refused, not refused))
    assert not disagreements, disagreements


# The template's world: the engine is probed with the same other constants as the loader.
TEMPLATE_WORLD = WorldParams(size=8, coupling=0.0, dt=1e-7, player_coupling=0.0, feedback=0.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(set(L.WORLD) - {"lock_threshold", "lock_steps"}))
async def test_the_engine_refuses_the_world_params_the_loader_refuses(
    tmp_path: Path, name: str
) -> None:
    limit = L.WORLD[name]
    for value in probes(limit):
        if isinstance(value, float) and limit.integer:
            continue  # WorldParams are typed; a float size is a type error, not a limit
        by_loader = loader_refuses(f"world.{name}", value)
        try:
            async with Engine.open(
                tmp_path / f"{name}-{value}", world=replace(TEMPLATE_WORLD, **{name: value})
            ):
                by_engine = False
        except InvalidInput:
            by_engine = True
        assert by_engine == by_loader, (name, value, by_engine, by_loader)


def test_ids_have_one_length_and_alphabet_everywhere() -> None:
    from ublox_sim.core.ids import check_file_name, check_id

    longest = "a" * int(L.ID_LENGTH.max)
    check_id(longest)
    check_file_name(longest)
    with pytest.raises(InvalidInput):
        check_id(longest + "a")
    text = TEMPLATE.replace("id: bob", f"id: {longest}").replace(
        "player: bob", f"player: {longest}"
    )
    text = text.replace("from: bob", f"from: {longest}")
    assert problems_of(text) is None
    problems = problems_of(text.replace(longest, longest + "a"))
    assert problems is not None and f"1 to {int(L.ID_LENGTH.max)} characters" in problems[0]
    # A PTO id becomes a file name: the engine's alphabet, "..", in the loader too.
    problems = problems_of(TEMPLATE.replace("id: g1", "id: g..1").replace("pto: g1", "pto: g..1"))
    assert problems is not None and "is not allowed" in problems[0]


# -- the table itself ------------------------------------------------------------------------


def test_limit_check_takes_numbers_and_says_the_bounds() -> None:
    assert L.TAU_K.check(5) == 5.0
    assert L.TAU_K.check(Decimal("2.5")) == 2.5
    for bad in (-0.1, 100.1, math.nan, math.inf, True, "5", None, 10**400, Decimal("sNaN")):
        with pytest.raises(InvalidInput, match="tau_k must be"):
            L.TAU_K.check(bad)
    with pytest.raises(InvalidInput, match="units must be between 1 and 1e12, got 0"):
        L.ATU_UNITS.check(0)
    with pytest.raises(InvalidInput, match="whole number"):
        L.ATU_UNITS.check(3.0)
    with pytest.raises(InvalidInput, match=r"hours must be between 0\.01 and 1e6"):
        L.PLAY_HOURS.check(0)
    assert L.POSITION.up_to(8).max == 8


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(L.by_name)), st.data())
def test_a_pydantic_field_from_a_limit_accepts_exactly_what_check_accepts(
    name: str, data: st.DataObject
) -> None:
    limit = L.by_name[name]
    if limit is L.GAME_NAME or limit is L.DESCRIPTION:
        model: type[BaseModel] = create_model("M", v=(str, limit.length_field()))
        text = data.draw(st.text(max_size=int(limit.max) + 2))
        assert _accepts(model, text) == (limit.text_fault(text) is None)  # NUL too
        if _accepts(model, text):
            assert limit.check_length(text) == text
        return
    model = create_model("M", v=(limit.annotated(), ...))
    value = data.draw(inside(limit) | outside(limit))
    if isinstance(value, Decimal):
        value = float(value)
    try:
        L.by_name[name].check(value)
        checked = True
    except InvalidInput:
        checked = False
    assert _accepts(model, value) == checked, value


def _accepts(model: type[BaseModel], value: Any) -> bool:
    try:
        model(v=value)
    except ValidationError:
        return False
    return True


INDEX = re.compile(r"\[\d+\]")


def test_the_readme_limits_table_is_the_table() -> None:
    rows = [f"| `{INDEX.sub('[]', key)}` | {limit.describe()} |" for key, limit in FIELDS.items()]
    readme = (ROOT / "scenarios" / "README.md").read_text(encoding="utf-8")
    marker = "<!-- limits-table: kept equal to ublox_sim/core/limits.py by tests/test_limits.py -->"
    assert marker in readme
    shown = readme.split(marker, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    assert shown[:2] == ["| key | limits |", "|---|---|"]
    assert shown[2:] == rows, "\n".join(rows)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([L.BALANCE, L.AMOUNT, L.PRICE_PER_PTS]),
    st.decimals(allow_nan=True, allow_infinity=True, places=None)
    | st.integers(-(10**16), 10**16).map(lambda c: Decimal(c).scaleb(-2))
    | st.integers(-(10**17), 10**17).map(lambda c: Decimal(c).scaleb(-3)),
)
def test_a_money_field_from_a_limit_accepts_what_the_engine_accepts(
    limit: Limit, amount: Decimal
) -> None:
    """The request-model form the module doc gives for money agrees with ``to_cents``."""
    from ublox_sim.core.money import to_cents

    model = create_model("M", v=(Decimal, limit.field(decimal_places=2)))
    try:
        to_cents(amount, allow_zero=not limit.min_exclusive)
        by_engine = True
    except InvalidInput:
        by_engine = False
    assert _accepts(model, amount) == by_engine, amount


def test_money_limits_are_said_in_the_currency_money_names() -> None:
    from ublox_sim.core.money import USD

    said_in_money = [limit for limit in vars(L).values() if isinstance(limit, Limit) and limit.unit]
    assert said_in_money and all(limit.unit == USD for limit in said_in_money)
    assert L.CURRENCY_UNIT == USD


def test_the_http_amount_patterns_are_built_from_their_caps() -> None:
    """The API's decimal-text patterns say the caps' digits; they are the ones it used."""
    assert L.HTTP_AMOUNT_PATTERN == r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
    assert L.HTTP_POSITIVE_AMOUNT_PATTERN == (
        r"^([1-9][0-9]{0,11}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$"
    )
    assert L.HTTP_PRICE_PATTERN == r"^([1-9][0-9]{0,6}(\.[0-9]{1,2})?|0\.(0[1-9]|[1-9][0-9]?))$"
    with pytest.raises(ValueError, match="from 0"):
        L.PLAY_HOURS.decimal_pattern()


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([L.HTTP_AMOUNT, L.HTTP_POSITIVE_AMOUNT, L.HTTP_PRICE_PER_PTS]),
    st.integers(0, 10**13).map(lambda c: f"{Decimal(c).scaleb(-2)}")
    | st.from_regex(r"\A[0-9]{1,14}(\.[0-9]{0,3})?\Z")
    | st.sampled_from(["999999999999.99", "9999999.99", "0", "0.0", "0.00", "0.01", "00.5"]),
)
def test_a_decimal_pattern_matches_whole_cents_inside_its_cap(limit: Limit, text: str) -> None:
    from ublox_sim.core.money import to_cents

    canonical = text == text.lstrip("0") or text.startswith("0.") or text == "0"
    whole_cents = "." not in text or 1 <= len(text.split(".")[1]) <= 2
    value = Decimal(text)
    # The pattern bounds the whole digits, not the value: 999999999999.99 matches the
    # pattern of a cap of 10**12 - 1 (as the API's patterns always did).
    digits = len(str(int(limit.max)))
    expected = canonical and whole_cents and value < 10**digits and value >= 0
    if limit.min_exclusive:
        expected = expected and value > 0
    assert bool(re.fullmatch(limit.decimal_pattern(), text)) == expected, text
    if expected:
        to_cents(text, allow_zero=not limit.min_exclusive)


# -- one home for each name and bound --------------------------------------------------------
# A scan of the package for the names and bounds issue 12 (item 5) gives one home each:
# currency names (core/money.py), PTO status names (core/records.py), range keywords
# (``ge=``/``le=``..., click ranges: core/limits.py), the clock (core/clock.py), and the
# conversions of cents (``/ 100``, ``scaleb``: core/money.py). ``LEFTOVERS`` are the copies
# still outside their home when this test was written, each with what it should use; the
# test fails on any new copy. Remove an entry when its copy goes.

PACKAGE = ROOT / "ublox_sim"
NAME_HOMES = {
    "USD-OBBBA": "core/money.py",
    "xUSD": "core/money.py",
    **dict.fromkeys(("funding", "in_progress", "completed", "failed"), "core/records.py"),
}
ONE_HOME_NAMES = {
    **dict.fromkeys(("USD", "XUSD", "CURRENCIES"), "core/money.py"),
    **dict.fromkeys(
        ("FUNDING", "IN_PROGRESS", "COMPLETED", "FAILED", "PTO_STATUSES", "PLAYABLE"),
        "core/records.py",
    ),
    "ESCROW_HELD": "core/records.py",
    "Clock": "core/clock.py",
}
RANGE_KEYWORDS = {"ge", "le", "gt", "lt", "min_length", "max_length"}
LEFTOVERS: dict[tuple[str, str], int] = {
    ("sim/report.py", "'funding'"): 1,  # a column title, not a status: fine to keep
    # -> Limit.field() / Limit.length_field() / the limit's min and max
    ("server/models.py", "ge="): 12,
    ("server/models.py", "le="): 12,
    ("server/models.py", "min_length="): 1,
    ("server/models.py", "max_length="): 2,
    ("server/routes.py", "ge="): 3,
    ("server/routes.py", "le="): 3,
    ("cli.py", "IntRange"): 2,
    ("cli.py", "FloatRange"): 2,
    # a structural rule, not a value's bound: a normal's sd is not negative, a choice
    # has at least one value
    ("sim/scenario.py", "ge="): 1,
    ("sim/scenario.py", "min_length="): 1,
    # The unit of money limits' messages: money imports its bound from limits, so limits
    # cannot import money.USD; test_money_limits_are_said_in_the_currency_money_names
    # keeps the two equal.
    ("core/limits.py", "'USD-OBBBA'"): 1,
}


def _copies_outside_their_home(package: Path = PACKAGE) -> dict[tuple[str, str], int]:
    import ast
    from collections import Counter

    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("bench/"):
            continue  # benchmarks drive the library, not its rules (N // 100 players, a deadline)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                home = NAME_HOMES.get(node.value)
                if home not in (None, rel) and id(node) not in docstrings:
                    found[rel, repr(node.value)] += 1
            elif isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "attr", None) or getattr(func, "id", "")
                if rel != "core/limits.py":
                    found.update(
                        (rel, f"{kw.arg}=") for kw in node.keywords if kw.arg in RANGE_KEYWORDS
                    )
                    if name in ("IntRange", "FloatRange"):
                        found[rel, name] += 1
                if name == "scaleb" and rel != "core/money.py":
                    found[rel, "scaleb"] += 1
                if name == "now" and rel != "core/clock.py" and ast.unparse(func) == "datetime.now":
                    found[rel, "datetime.now"] += 1
            elif isinstance(node, ast.BinOp) and isinstance(
                node.op, ast.Div | ast.FloorDiv | ast.Mult
            ):
                hundred = any(
                    isinstance(side, ast.Constant) and side.value in (100, 100.0)
                    for side in (node.left, node.right)
                )
                if hundred and rel not in ("core/money.py", "core/limits.py"):
                    found[rel, f"{type(node.op).__name__} 100"] += 1
            elif isinstance(node, ast.ClassDef) and node.name.endswith("Clock"):
                if rel != "core/clock.py":
                    found[rel, f"class {node.name}"] += 1
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    home = ONE_HOME_NAMES.get(getattr(target, "id", ""))
                    if home not in (None, rel):
                        found[rel, f"{target.id} ="] += 1  # type: ignore[attr-defined]
    return dict(found)


def test_each_name_and_bound_has_one_home() -> None:
    found = _copies_outside_their_home()
    new = {key: n for key, n in found.items() if n > LEFTOVERS.get(key, 0)}
    assert not new, f"copies outside their home (use the home's name instead): {new}"
    # And no leftover listed that is gone: the table says exactly what is left to do.
    gone = {key: n for key, n in LEFTOVERS.items() if found.get(key, 0) < n}
    assert not gone, f"these copies are gone: remove them from LEFTOVERS: {gone}"
    # The homes themselves define what the copies should use.
    from ublox_sim.core import clock, money, records

    assert (money.USD, money.XUSD) == ("USD-OBBBA", "xUSD")
    assert records.FUNDING == "funding" and clock.Clock.__module__ == "ublox_sim.core.clock"


def test_the_scan_finds_each_kind_of_copy_and_skips_docstrings(tmp_path: Path) -> None:
    planted = tmp_path / "sim" / "planted.py"
    planted.parent.mkdir()
    planted.write_text(
        '''"""Statuses: "funding" in a docstring is prose."""
from datetime import UTC, datetime
from pydantic import Field
USD = "USD-OBBBA"
class MyClock: ...
def f(cents: int) -> object:
    """failed"""
    return Field(ge=0, le=cents / 100), datetime.now(UTC), "in_progress"
''',
        encoding="utf-8",
    )
    assert _copies_outside_their_home(tmp_path) == {
        ("sim/planted.py", "'USD-OBBBA'"): 1,
        ("sim/planted.py", "USD ="): 1,
        ("sim/planted.py", "class MyClock"): 1,
        ("sim/planted.py", "ge="): 1,
        ("sim/planted.py", "le="): 1,
        ("sim/planted.py", "Div 100"): 1,
        ("sim/planted.py", "datetime.now"): 1,
        ("sim/planted.py", "'in_progress'"): 1,
    }


def test_the_command_line_server_bounds_keep_the_ranges_it_had() -> None:
    """``serve``'s click ranges, in the table: ports 0..65535, a tick of at least 0.01 s,
    a read timeout of at least 0.1 s, none of them capped above."""
    assert (L.PORT.min, L.PORT.max, L.PORT.integer) == (0, 65535, True)
    assert L.SERVE_TICK_SECONDS.min == 0.01 and L.SERVE_TICK_SECONDS.max == math.inf
    assert L.READ_TIMEOUT_SECONDS.min == 0.1 and L.READ_TIMEOUT_SECONDS.max == math.inf
    assert L.READ_TIMEOUT_SECONDS.contains(10.0) and not L.READ_TIMEOUT_SECONDS.contains(0.05)
    with pytest.raises(InvalidInput, match="port must be between 0 and 65535"):
        L.PORT.check(65536)
