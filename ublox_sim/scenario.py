"""Scenario files: YAML in, a fully validated ``Scenario`` out, or errors naming file, line and key.

The YAML is composed with PyYAML's safe loader (no arbitrary tags, no code), its
node tree is turned into plain data while remembering each key's line, and the
data is validated by pydantic models that forbid unknown keys. Cross-references
(a PTO's creator, a scripted event's player) are checked after. The reference is
``scenarios/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InvalidInput

MAX_NODES = 200_000  # after alias expansion: a "billion laughs" file stops here
MAX_DEPTH = 40
Path_ = tuple[str | int, ...]


class ScenarioError(InvalidInput):
    """A scenario that cannot run; ``problems`` holds one line per mistake."""

    code = "bad_scenario"

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# -- YAML with line numbers --------------------------------------------------------------


def _load_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse safely; return the data and the 1-based line of every key/item path."""
    _check_depth(text, source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
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


Number = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]


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
    dist: Literal["normal"]
    mean: Number
    sd: NonNeg
    min: Number | None = None
    max: Number | None = None


class Choice(_Model):
    dist: Literal["choice"]
    values: list[Number] = Field(min_length=1)


Distribution = Annotated[Uniform | Normal | Choice, Field(discriminator="dist")]
Value = Number | Distribution


def draw(value: Value, rng: np.random.Generator, size: int | None = None) -> Any:
    """Draw from a constant or a distribution."""
    if isinstance(value, int | float):
        return np.full(size, float(value)) if size is not None else float(value)
    if isinstance(value, Uniform):
        return rng.uniform(value.low, value.high, size)
    if isinstance(value, Normal):
        out = rng.normal(value.mean, value.sd, size)
        low = -np.inf if value.min is None else value.min
        high = np.inf if value.max is None else value.max
        return np.clip(out, low, high)
    return rng.choice(np.asarray(value.values, dtype=float), size)


class Clock(_Model):
    start: datetime = datetime(2025, 12, 12, tzinfo=UTC)
    tick_hours: Annotated[float, Field(gt=0, le=24 * 365, allow_inf_nan=False)] = 1.0
    ticks: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    duration_hours: Annotated[float, Field(gt=0, le=1e7, allow_inf_nan=False)] | None = None

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
    def _length(self) -> Clock:
        if (self.ticks is None) == (self.duration_hours is None):
            raise ValueError("give exactly one of ticks or duration_hours")
        return self

    @property
    def total_ticks(self) -> int:
        if self.ticks is not None:
            return self.ticks
        assert self.duration_hours is not None
        return max(1, math.ceil(self.duration_hours / self.tick_hours))


class World(_Model):
    size: Annotated[int, Field(ge=2, le=1024)] = 64
    coupling: NonNeg = 1.0
    dt: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.1
    steps_per_hour: Annotated[int, Field(ge=1, le=1000)] = 4
    omega_mean: Number = 1.0
    omega_spread: NonNeg = 0.1
    player_coupling: NonNeg = 0.2
    feedback: NonNeg = 0.02
    amplification: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 100.0


Id = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
Money = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


class PlayerSpec(_Model):
    id: Id
    usd_obbba: Money = 0.0
    tau_k: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 1.0
    resonance_freq: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None


class Cohort(_Model):
    prefix: Id
    count: Annotated[int, Field(ge=1, le=1_000_000)]
    usd_obbba: Value = 1000.0
    tau_k: Value = 1.0
    resonance_freq: Value | None = None


class PTOSpec(_Model):
    id: Id
    game_name: Annotated[str, Field(min_length=1, max_length=200)]
    creator: Id
    atu_required: Annotated[int, Field(ge=0, le=10**12)]
    pts_offered: Annotated[int, Field(ge=1, le=10**9)]
    price_per_pts: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]
    funding_deadline_hours: Annotated[float, Field(gt=0, le=1e7, allow_inf_nan=False)]
    launch_at: NonNeg = 0.0
    amplification: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None
    description: Annotated[str, Field(max_length=10_000)] = ""


class PTOCohort(_Model):
    prefix: Id
    count: Annotated[int, Field(ge=1, le=100_000)]
    creators: Id | list[Id] = Field(description="a player cohort prefix, or a list of player ids")
    atu_required: Value
    pts_offered: Value
    price_per_pts: Value
    funding_deadline_hours: Value
    launch_at: Value = 0.0


Who = Literal["all"] | Id | list[Id]


class Investors(_Model):
    who: Who = "all"
    probability: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    hours: Value
    max_share: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5


class Players(_Model):
    who: Who = "all"
    probability: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    hours: Value


class Creators(_Model):
    atu_per_tick: Value
    probability: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 1.0


class Behaviours(_Model):
    investors: list[Investors] = []
    players: list[Players] = []
    creators: Creators | None = None


class BuyEvent(_Model):
    player: Id
    pto: Id
    hours: Annotated[int, Field(ge=1, le=10**9)]


class PlayEvent(_Model):
    player: Id
    pto: Id
    hours: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]


class TransferEvent(_Model):
    from_: Id = Field(alias="from")
    to: Id
    amount: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]


class SpendAtuEvent(_Model):
    pto: Id
    units: Annotated[int, Field(ge=1, le=10**12)]


class DepositEvent(_Model):
    player: Id
    amount: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)]


class ScriptedEvent(_Model):
    at: NonNeg = Field(description="hours after the start")
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


class Scenario(_Model):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)]
    description: str = ""
    clock: Clock
    checkpoint_every: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    world: World = World()
    players: list[PlayerSpec] = []
    cohorts: list[Cohort] = []
    ptos: list[PTOSpec] = []
    pto_cohorts: list[PTOCohort] = []
    behaviours: Behaviours = Behaviours()
    events: list[ScriptedEvent] = []


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    scenario: Scenario
    source: str
    data: dict[str, Any]  # the resolved plain data (after --set and --seed)


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
    for item in overrides:
        _apply_override(data, item)
        lines[tuple(_split_key(item.partition("=")[0]))] = 0
    if seed is not None:
        data["seed"] = seed
        lines[("seed",)] = 0
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_explain(exc, source, lines)) from exc
    problems = [
        _where(source, lines, path) + f": {message}" for path, message in _cross_check(scenario)
    ]
    if problems:
        raise ScenarioError(problems)
    return Loaded(scenario, source, data)


def _where(source: str, lines: Mapping[Path_, int], path: Sequence[str | int]) -> str:
    probe = tuple(path)
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe, 1)
    place = "--set" if line == 0 else f"{source}:{line}"
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


def _explain(exc: ValidationError, source: str, lines: Mapping[Path_, int]) -> list[str]:
    """One line per mistake. For a value that may be a number or a distribution,
    pydantic reports every branch; keep the branch that says the most."""
    best: dict[Path_, tuple[int, str]] = {}
    order: list[Path_] = []
    for error in exc.errors():
        loc = error["loc"]
        branch = next((p for p in loc if isinstance(p, str) and p.startswith(_BRANCHES)), None)
        path = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(_BRANCHES)))
        path = tuple("from" if p == "from_" else p for p in path)
        message = _HINTS.get(error["type"], error["msg"])
        if error["type"] not in _HINTS and not isinstance(error.get("input"), dict | list):
            message += f" (got {error.get('input')!r})"
        # Prefer a distribution's own complaint over "should be a number".
        rank = 0 if branch is None else 1 if branch.startswith("tagged-union[") else 2
        if path not in best:
            order.append(path)
        if path not in best or rank < best[path][0]:
            best[path] = (rank, message)
    return [_where(source, lines, path) + f": {best[path][1]}" for path in order]


def _split_key(key: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in key.strip().split(".") if p]


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    parts = _split_key(key)
    if not sep or not parts:
        raise ScenarioError([f"--set {item!r}: expected key.path=value"])
    try:
        value = yaml.safe_load(raw)
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


def _declared(ident: str, listed: set[str], cohorts: Mapping[str, Cohort | PTOCohort]) -> bool:
    """Listed by name, or one of a cohort's generated ids (``PREFIX-0001`` …)."""
    if ident in listed:
        return True
    prefix, _, number = ident.rpartition("-")
    cohort = cohorts.get(prefix)
    return (
        cohort is not None
        and number.isdigit()
        and 1 <= int(number) <= cohort.count
        and ident == cohort_id(prefix, int(number), cohort.count)
    )


def _cross_check(s: Scenario) -> Iterator[tuple[Path_, str]]:
    """References between sections: every id used must be declared, once."""
    players = [p.id for p in s.players]
    prefixes = {c.prefix: c for c in s.cohorts}
    for i, c in enumerate(s.cohorts):
        generated = cohort_id(c.prefix, 1, c.count)
        if generated in players:
            yield (
                ("cohorts", i, "prefix"),
                f"cohort ids like {generated!r} clash with a listed player",
            )
    seen: set[str] = set()
    for i, pid in enumerate(players):
        if pid in seen:
            yield ("players", i, "id"), f"player {pid!r} is declared twice"
        seen.add(pid)
    if len(prefixes) != len(s.cohorts):
        yield ("cohorts",), "two cohorts share a prefix"

    def player_known(pid: str) -> bool:
        return _declared(pid, seen, prefixes)

    ptos: set[str] = set()
    for i, p in enumerate(s.ptos):
        if p.id in ptos:
            yield ("ptos", i, "id"), f"PTO {p.id!r} is declared twice"
        ptos.add(p.id)
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
