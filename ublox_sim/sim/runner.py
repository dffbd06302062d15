"""The scenario runner: a deterministic, checkpointed, resumable multi-player simulation.

Each tick, in this order: scheduled launches, scripted events (file order), players
(one batch per world, decided on the holdings acknowledged then), investors, creators,
then the clock moves (worlds step, deadlines fire); the investors' and the creators'
work is done while the worlds step (off the event loop: in `ublox-sim run`'s physics
worker process, else on a worker thread), its units before the tick's: a
share bought in a tick is played from the next. Every random decision comes from one generator seeded by
the scenario and saved at each checkpoint; operations that write ledger rows are
issued one after another in id order, so the ledger's order never depends on
timing. The run is durable at checkpoints only (``Engine.open(checkpointed=True)``):
killed at any instant, it reopens at its last checkpoint and ``resume=True``
continues to the same final export.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from ..core import limits as L
from ..core.clock import SimClock
from ..core.errors import InvalidInput, Refusal, UbloxError
from ..core.logsetup import get_logger
from ..core.money import format_cents
from ..core.records import FUNDING, IN_PROGRESS, PLAYABLE, PTO
from ..core.shard import Tape, WorldShards
from ..core.views import SessionResult, leaderboard
from ..core.world import WorldParams
from ..engine import Engine
from ..store.backend import RunRecord
from ..store.home import Home
from ..store.open import PgStore
from ..store.sqlite.backend import read_run_record
from .metrics import Collector, Tally, has_metrics
from .scenario import (
    ARRAYS_PER_WORLD,
    Loaded,
    Scenario,
    cohort_id,
    draw,
    draw_settled,
    settle,
    world_count,
    world_memory,
)

log = get_logger(__name__)

Progress = Callable[[int, int], None]

TAPE_ENV = "UBLOX_SIM_TAPE"
"""A path: the run records its shard ticks there (``core.shard.Tape``) for ``bench
simulation`` to replay their bare physics. Not for resumed runs (it holds this process's
ticks only)."""

SETUP_CHUNK = 20_000
"""Players settled and registered at once by ``Runner.setup`` (the engine commits them
in its own units): enough to keep the store busy, few enough to bound memory."""


@dataclass(frozen=True, slots=True)
class PlannedPlayer:
    player_id: str
    usd_obbba: Decimal
    tau_k: float
    resonance_freq: float | None


@dataclass(frozen=True, slots=True)
class Members:
    """A cohort's ids, ``PREFIX-0001`` …, formed when asked for: a crowd of 100,000 is
    two numbers, not 100,000 strings held for the whole run."""

    prefix: str
    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return cohort_id(self.prefix, index + 1, self.count)

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, str):
            return False
        prefix, _, number = ident.rpartition("-")
        return (
            prefix == self.prefix
            and number.isdigit()
            and 1 <= int(number) <= self.count
            and ident == cohort_id(prefix, int(number), self.count)
        )


@dataclass(frozen=True, slots=True)
class Roster:
    """Players in a fixed order (listed ones, then cohorts in file order): indexed by the
    runner's draws, tested for membership, never spelled out in full."""

    parts: tuple[Members | tuple[str, ...], ...]

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __getitem__(self, index: int) -> str:
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)

    def __contains__(self, ident: object) -> bool:
        return any(ident in part for part in self.parts)


@dataclass(frozen=True, slots=True)
class PlannedCohort:
    """A cohort's raw draws (numpy arrays); settled into players a chunk at a time."""

    members: Members
    usd_obbba: Any
    tau_k: Any
    resonance_freq: Any | None

    def players(self, start: int, stop: int) -> list[PlannedPlayer]:
        money = _settled(self.usd_obbba[start:stop], L.BALANCE)
        tau = _settled(self.tau_k[start:stop], L.TAU_K)
        freq = (
            _settled(self.resonance_freq[start:stop], L.RESONANCE_FREQ)
            if self.resonance_freq is not None
            else [None] * (stop - start)
        )
        return [
            PlannedPlayer(self.members[start + k], m, t, f)
            for k, (m, t, f) in enumerate(zip(money, tau, freq, strict=True))
        ]


def _settled(raw: Any, limit: L.Limit) -> list[Any]:
    out = [settle(limit, x) for x in raw]
    for item in out:
        if not limit.contains(item):
            raise AssertionError(f"{limit.name}: drew {item!r}, outside {limit.describe()}")
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything drawn before the first tick. Players come in chunks (``chunks``) so
    that setup never holds one Python object per player of a large crowd."""

    listed: list[PlannedPlayer]
    cohorts: list[PlannedCohort]
    ptos: list[PlannedPTO]
    groups: dict[str, Roster]

    @property
    def everyone(self) -> Roster:
        return Roster((tuple(p.player_id for p in self.listed), *(c.members for c in self.cohorts)))

    def chunks(self, size: int) -> Iterator[list[PlannedPlayer]]:
        """Every player, listed ones first, then cohorts in file order, ``size`` at a time."""
        for start in range(0, len(self.listed), size):
            yield self.listed[start : start + size]
        for cohort in self.cohorts:
            for start in range(0, cohort.members.count, size):
                yield cohort.players(start, min(start + size, cohort.members.count))


@dataclass(frozen=True, slots=True)
class PlannedPTO:
    pto_id: str
    game_name: str
    creator: str
    atu_required: int
    pts_offered: int
    price_per_pts: Decimal
    deadline_hours: float
    launch_tick: int
    amplification: float | None
    description: str = ""


@dataclass
class RunReport:
    name: str
    seed: int
    total_ticks: int
    ticks_run: int
    resumed_from: int | None
    wall_seconds: float
    setup_seconds: float = 0.0
    ptos: list[dict[str, Any]] = field(default_factory=list)
    top_players: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    # Wall seconds of each tick this process ran (checkpoints and export excluded).
    tick_seconds: list[float] = field(default_factory=list)

    @property
    def ticks_per_second(self) -> float:
        return self.ticks_run / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "total_ticks": self.total_ticks,
            "ticks_run": self.ticks_run,
            "resumed_from": self.resumed_from,
            "wall_seconds": round(self.wall_seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "players": self.totals.get("players", {}).get("count", 0),
            "ticks_per_second": round(self.ticks_per_second, 2),
            "ptos": self.ptos,
            "top_players": self.top_players,
            "totals": self.totals,
            "outcomes": self.outcomes,
            "tick_seconds": [round(t, 6) for t in self.tick_seconds],
        }


def _money(value: float) -> Decimal:
    """An amount the loader has checked to be whole cents, as the engine takes it."""
    cents: Decimal = settle(L.BALANCE, value)
    return cents


def plan(scenario: Scenario) -> Plan:
    """Everything drawn before the first tick, from its own generator: a pure function of
    the scenario, so a resumed run plans exactly the same players and PTOs."""
    setup = np.random.default_rng(np.random.SeedSequence(scenario.seed).spawn(2)[0])
    listed = [
        PlannedPlayer(p.id, _money(p.usd_obbba), p.tau_k, p.resonance_freq)
        for p in scenario.players
    ]
    groups: dict[str, Roster] = {}
    cohorts: list[PlannedCohort] = []
    for cohort in scenario.cohorts:
        members = Members(cohort.prefix, cohort.count)
        groups[cohort.prefix] = Roster((members,))
        # The loader checked every distribution against its limit (scenario.within):
        # these draws are in range by construction, nothing is clipped here. Raw draws
        # stay numpy arrays (8 bytes a player) until setup settles them chunk by chunk.
        cohorts.append(
            PlannedCohort(
                members,
                draw(cohort.usd_obbba, setup, cohort.count, L.BALANCE),
                draw(cohort.tau_k, setup, cohort.count, L.TAU_K),
                draw(cohort.resonance_freq, setup, cohort.count, L.RESONANCE_FREQ)
                if cohort.resonance_freq is not None
                else None,
            )
        )
    ticks_per_hour = 1.0 / scenario.clock.tick_hours
    ptos = [
        PlannedPTO(
            p.id,
            p.game_name,
            p.creator,
            p.atu_required,
            p.pts_offered,
            _money(p.price_per_pts),
            p.funding_deadline_hours,
            int(p.launch_at * ticks_per_hour),
            p.amplification,
            p.description,
        )
        for p in scenario.ptos
    ]
    for pc in scenario.pto_cohorts:
        n = pc.count
        creators_spec = [pc.creators] if isinstance(pc.creators, str) else pc.creators
        pool = Roster(
            tuple(
                part
                for name in creators_spec
                for part in (groups[name].parts if name in groups else ((name,),))
            )
        )
        # The same draw as ``choice`` over the pool's ids, without spelling them out.
        creators = [pool[int(k)] for k in setup.choice(len(pool), n)]
        atu = draw_settled(pc.atu_required, setup, n, L.ATU_REQUIRED)
        offered = draw_settled(pc.pts_offered, setup, n, L.PTS_OFFERED)
        price = draw_settled(pc.price_per_pts, setup, n, L.PRICE_PER_PTS)
        deadline = draw_settled(pc.funding_deadline_hours, setup, n, L.FUNDING_DEADLINE_HOURS)
        launch = draw_settled(pc.launch_at, setup, n, L.HOUR_OFFSET)
        for k in range(n):
            pto_id = cohort_id(pc.prefix, k + 1, n)
            ptos.append(
                PlannedPTO(
                    pto_id,
                    f"{pc.prefix.replace('_', ' ').title()} {k + 1}",
                    str(creators[k]),
                    atu[k],
                    offered[k],
                    price[k],
                    deadline[k],
                    int(launch[k] * ticks_per_hour),
                    None,
                )
            )
    return Plan(listed, cohorts, ptos, groups)


def resolved_scenario(scenario: Scenario) -> str:
    """The run's identity, recorded and exported: everything but ``engine``, whose memory
    knobs never change a result (so they cannot change the export either, and a run
    killed for memory may resume with a smaller ``max_active``), and ``metrics``, which
    only chooses what is observed."""
    return json.dumps(
        scenario.model_dump(mode="json", by_alias=True, exclude={"engine", "metrics"}),
        sort_keys=True,
    )


def recorded_scenario(home: Home | PgStore) -> Loaded:
    """The resolved scenario a run in ``home`` recorded (to resume without the file)."""
    from .scenario import Scenario as Model

    if isinstance(home, PgStore):
        from ..store.postgres.backend import read_run_record as read_pg_run

        row = read_pg_run(home.url)
        source = f"{home} (recorded run)"
    else:
        row = read_run_record(home)
        source = f"{home.db} (recorded run)"
    if row is None:
        raise InvalidInput(f"nothing to resume in {_where(home)}: no run was checkpointed there")
    data = json.loads(row.scenario)
    return Loaded(Model.model_validate(data), source, data)


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, where the system says (``os.sysconf``)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX, or not said
        return None


def _check_memory(scenario: Scenario) -> None:
    """Refuse, before anything is created, a run whose worlds alone cannot fit in this
    machine's memory: it would fail late, after minutes of set-up, with a partial home."""
    need, have = world_memory(scenario), physical_memory()
    if have is not None and need > have:
        raise InvalidInput(
            f"the worlds need about {need / 2**30:,.1f} GiB ({world_count(scenario):,} worlds "
            f"of {scenario.world.size}×{scenario.world.size}, float64 arrays: "
            f"{ARRAYS_PER_WORLD} per world and a tick's temporaries) and this machine has "
            f"{have / 2**30:,.1f} GiB of memory: use fewer PTOs or a smaller world.size "
            "(or --ray to spread the worlds over a cluster)"
        )


def _where(home: Home | PgStore) -> Path | PgStore:
    """The store as messages name it: a home's folder, a database's URL (no password)."""
    return home.root if isinstance(home, Home) else home


class Runner:
    """Drives one scenario over an Engine opened in checkpointed mode."""

    def __init__(
        self,
        engine: Engine,
        scenario: Scenario,
        clock: SimClock,
        event_place: Callable[[int], str] | None = None,
        *,
        ahead: bool = False,
    ) -> None:
        self.engine = engine
        # Ticks ahead (``Engine.tick_ahead``, a checkpointed run): the next tick does not
        # wait for this one's units; ``settle`` before reading what a tick changed.
        self.ahead = ahead
        self.scenario = scenario
        self.clock = clock
        # Where a scripted event is written, for the log line of a refused one.
        self.event_place = event_place or (lambda index: f"events[{index}]")
        planned = plan(scenario)
        self.plan = planned
        self.ptos = planned.ptos
        self.groups = planned.groups
        self.rng = np.random.default_rng(np.random.SeedSequence(scenario.seed).spawn(2)[1])
        self.outcomes: Counter[str] = Counter()
        self.total = scenario.clock.total_ticks
        # What this tick did that the state does not show (for metrics; cheap when unused).
        self.tally = Tally()
        # This tick's sessions (pto_id, player_id, hours, scripted), played by play_tick.
        self._plays: list[tuple[str, str, float, bool]] = []
        self._scripted_events: list[int | None] = []  # of the scripted plays, in order
        # Wall seconds of each tick run by this process (the bench's tick p99).
        self.tick_seconds: list[float] = []

    # -- state saved at checkpoints --------------------------------------------

    def state_json(self, tick: int) -> str:
        return json.dumps(
            {"tick": tick, "rng": self.rng.bit_generator.state, "outcomes": dict(self.outcomes)},
            sort_keys=True,
        )

    def load_state(self, text: str) -> None:
        state = json.loads(text)
        self.rng.bit_generator.state = state["rng"]
        self.outcomes = Counter(state.get("outcomes", {}))

    def run_record(self, tick: int, finished: bool, resolved: str) -> RunRecord:
        """The run's progress for the checkpoint of ``tick``."""
        return RunRecord(
            name=self.scenario.name,
            seed=self.scenario.seed,
            scenario=resolved,
            started_at=self.scenario.clock.start.isoformat(),
            tick=tick,
            total_ticks=self.total,
            state=self.state_json(tick),
            finished=finished,
        )

    # -- the steps of a tick ---------------------------------------------------

    async def _attempt(self, what: str, op: Any, event: int | None = None) -> bool:
        """Run one operation; a refusal is a normal outcome of a simulation, counted.
        A refused scripted ``event`` (its index) is also logged at info (``-v``)."""
        try:
            await op
        except UbloxError as exc:
            if event is not None:
                self._refused_event(event, exc)
            return self._count(what, exc)
        return self._count(what, None)

    def _refused_event(self, index: int, exc: BaseException) -> None:
        """One info line per refused scripted event: where it is written, what it asked
        and why it was refused (the report only counts them)."""
        if isinstance(exc, UbloxError):
            event = self.scenario.events[index]
            name, action = event.action
            asked = action.model_dump(by_alias=True)
            log.info(
                "run.event_refused",
                where=self.event_place(index),
                at=event.at,
                action=name,
                **{f"{name}.{k}": v for k, v in asked.items()},
                code=exc.code,
                reason=str(exc),
            )

    def _count(self, what: str, result: object) -> bool:
        """Count an operation's outcome (``_attempt``'s rule): a refusal or invalid input
        is counted as such, any other error raised."""
        if isinstance(result, Refusal):
            self.outcomes[f"{what}_refused"] += 1
            return False
        if isinstance(result, InvalidInput):
            self.outcomes[f"{what}_invalid"] += 1
            return False
        if isinstance(result, BaseException):
            raise result
        self.outcomes[what] += 1
        return True

    async def setup(self) -> None:
        # In chunks: the engine commits each in large units, and the runner never holds
        # more than one chunk of planned players.
        for chunk in self.plan.chunks(SETUP_CHUNK):
            results = await self.engine.register_players(
                [(p.player_id, p.usd_obbba, p.tau_k, p.resonance_freq) for p in chunk]
            )
            for result in results:
                if isinstance(result, UbloxError):
                    raise result
        await self.launch_due(0)

    async def launch_due(self, tick: int) -> None:
        for p in self.ptos:
            if p.launch_tick == tick:
                await self.engine.launch_pto(
                    pto_id=p.pto_id,
                    game_name=p.game_name,
                    creator_id=p.creator,
                    atu_required=p.atu_required,
                    pts_offered=p.pts_offered,
                    price_per_pts=p.price_per_pts,
                    funding_deadline=timedelta(hours=p.deadline_hours),
                    description=p.description,
                    amplification=p.amplification
                    if p.amplification is not None
                    else self.scenario.world.amplification,
                )
                self.outcomes["launch"] += 1

    async def scripted(self, tick: int) -> None:
        th = self.scenario.clock.tick_hours
        for i, event in enumerate(self.scenario.events):
            if not tick * th <= event.at < (tick + 1) * th:
                continue
            name, a = event.action
            e = self.engine
            match name:
                case "buy":
                    if await self._attempt("buy", e.buy_pts(a.player, a.pto, a.hours), i):
                        self.tally.acted(a.player)
                case "play":
                    await self._scripted_play(a.player, a.pto, a.hours, i)
                case "transfer":
                    amount = _money(a.amount)
                    await self._attempt("transfer", e.transfer(a.from_, a.to, amount), i)
                case "spend_atu":
                    await self._attempt("spend_atu", e.spend_atu(a.pto, a.units), i)
                case "deposit":
                    await self._attempt("deposit", e.deposit(a.player, _money(a.amount)), i)

    async def _scripted_play(
        self, player_id: str, pto_id: str, hours: float, event: int | None = None
    ) -> None:
        """Played with the tick's sessions, during its lattice steps (``Engine.tick``);
        a refused one is logged with its event (``_refused_event``) when the tick plays."""
        self._plays.append((pto_id, player_id, hours, True))
        self._scripted_events.append(event)

    def _log_refused_plays(
        self, plays: Sequence[tuple[Any, ...]], results: Sequence[object]
    ) -> None:
        """Log each refused scripted play with its event (the scripted entries of ``plays``
        are ``_scripted_play``'s, in order)."""
        events, self._scripted_events = self._scripted_events, []
        scripted = [result for play, result in zip(plays, results, strict=True) if play[3]]
        for event, result in zip(events, scripted, strict=True):
            if event is not None and isinstance(result, UbloxError):
                self._refused_event(event, result)

    async def play_tick(self, meanwhile: Callable[[], Awaitable[None]] | None = None) -> None:
        """The clock moves one tick: every world steps, this tick's sessions played during
        those steps (scripted ones first, in file order, then the behaviours'), deadlines
        fire. One unit of rows per world shard (see ``Engine.tick``). ``meanwhile`` runs
        while the worlds step, its units before the tick's."""
        plays, self._plays = self._plays, []
        hours = self.scenario.clock.tick_hours
        asked = [(pto, player, h) for pto, player, h, _ in plays]
        results: Sequence[SessionResult | UbloxError | int]
        if self.ahead:  # each session's phase locks, decided; its unit lands later
            results = await self.engine.tick_ahead(hours, asked, meanwhile=meanwhile)
        else:
            results, _ = await self.engine.tick(hours, asked, meanwhile=meanwhile)
        self._log_refused_plays(plays, results)
        for (pto_id, player_id, _, scripted), result in zip(plays, results, strict=True):
            if isinstance(result, UbloxError):
                invalid = scripted and isinstance(result, InvalidInput)
                self.outcomes["play_invalid" if invalid else "play_refused"] += 1
            else:
                self.outcomes["play"] += 1
                locks = result if isinstance(result, int) else result.phase_locks
                self.tally.played(pto_id, player_id, locks)

    def _who(self, who: Any) -> Roster:
        if who == "all":
            return self.plan.everyone
        names = [who] if isinstance(who, str) else who
        parts: list[Members | tuple[str, ...]] = []
        for name in names:
            parts.extend(self.groups[name].parts if name in self.groups else [(name,)])
        return Roster(tuple(parts))

    async def investors(self) -> None:
        e = self.engine
        store = e.store
        for rule in self.scenario.behaviours.investors:
            candidates = self._who(rule.who)
            # Read once per rule, then kept up to date by this loop's own purchases (the
            # only writes to these PTOs until the loop ends): no store read per purchase.
            open_ptos = {p.pto_id: p for p in await store.load_all(PTO) if p.status == FUNDING}
            funding = list(open_ptos)
            if not funding or not candidates:
                continue
            chosen = np.flatnonzero(self.rng.random(len(candidates)) < rule.probability)
            if not len(chosen):
                continue
            picks = self.rng.integers(0, len(funding), len(chosen))
            hours = draw_settled(rule.hours, self.rng, len(chosen), L.PTS_HOURS)
            # Activated together, their balances read at once (none moves until buy_many).
            balances = await e.usd_balances(candidates[int(index)] for index in chosen)
            purchases: list[tuple[str, str, int]] = []
            for index, pick, want in zip(chosen, picks, hours, strict=True):
                player_id = candidates[int(index)]
                pto = open_ptos[funding[int(pick)]]
                if pto.status != FUNDING:
                    continue
                cap = max(1, int(pto.pts_offered * rule.max_share))
                left = pto.pts_offered - pto.pts_sold
                balance = balances.get(player_id)
                if balance is None:
                    continue
                affordable = balance // pto.price_per_pts
                n = min(want, cap, left, affordable)
                if n >= 1:
                    purchases.append((player_id, pto.pto_id, n))
                    # Decided as if it sells (the runner checked funds and shares left):
                    # a refusal is counted below and never makes a later decision wrong.
                    pto.pts_sold += n
                    if pto.pts_sold == pto.pts_offered:  # the last share funds it
                        pto.status = IN_PROGRESS
            # Queued in this order, committed together (Engine.buy_many).
            for (player_id, _, _), result in zip(
                purchases, await e.buy_many(purchases), strict=True
            ):
                if isinstance(result, InvalidInput):
                    self.outcomes["buy_invalid"] += 1
                elif isinstance(result, Refusal):
                    self.outcomes["buy_refused"] += 1
                elif isinstance(result, UbloxError):
                    raise result
                else:
                    self.outcomes["buy"] += 1
                    self.tally.acted(player_id)

    async def sessions(self) -> None:
        e = self.engine
        for rule in self.scenario.behaviours.players:
            candidates = self._who(rule.who)
            # Who can play where: hours left on tokens of playable worlds, in id order.
            left: dict[str, dict[str, float]] = {}
            member: dict[str, bool] = {}  # a holder of many worlds' tokens is tested once
            for pto_id, rooms in (await e.open_hours(sorted(PLAYABLE))).items():
                for holder, room in rooms.items():
                    known = member.get(holder)
                    if known is None:
                        known = member[holder] = holder in candidates
                    if known:
                        left.setdefault(holder, {})[pto_id] = room
            holders = sorted(left)
            if not holders:
                continue
            chosen = np.flatnonzero(self.rng.random(len(holders)) < rule.probability)
            wants = draw_settled(rule.hours, self.rng, len(chosen), L.PLAY_HOURS)
            batches: dict[str, list[tuple[str, float]]] = {}
            for index, want in zip(chosen, wants, strict=True):
                player_id = holders[int(index)]
                options = sorted(left[player_id])
                pto_id = options[int(self.rng.integers(0, len(options)))]
                hours = round(min(want, left[player_id][pto_id]), 2)
                if hours > 0:
                    batches.setdefault(pto_id, []).append((player_id, hours))
            for pto_id in sorted(batches):
                self._plays.extend(
                    (pto_id, player, hours, False) for player, hours in batches[pto_id]
                )

    async def creators(self) -> None:
        rule = self.scenario.behaviours.creators
        if rule is None:
            return
        e = self.engine
        building = [p.pto_id for p in await e.store.load_all(PTO) if p.status == IN_PROGRESS]
        if not building:
            return
        go = self.rng.random(len(building)) < rule.probability
        units = draw_settled(rule.atu_per_tick, self.rng, len(building), L.ATU_UNITS)
        spends = [(p, n) for p, yes, n in zip(building, go, units, strict=True) if yes]
        # Queued in this order, committed together (Engine.spend_atu_many).
        for result in await e.spend_atu_many(spends):
            self._count("spend_atu", result)

    async def tick(self, tick: int) -> None:
        self.tally.clear()
        if self._acts_first(tick):
            # A launch or a scripted action reads or writes before the sessions: after
            # the last tick's units and deadlines, as without ticks ahead.
            await self.settle()
        if tick:
            await self.launch_due(tick)
        await self.scripted(tick)
        # Sessions are decided on the holdings acknowledged now: a share the investors
        # buy this tick is played from the next one.
        await self.sessions()
        # The investors' purchases and the creators' work need no world and none of this
        # tick's sessions: they run while the worlds step (on a worker thread), their
        # units first in the ledger.
        await self.play_tick(meanwhile=self.beside)

    def _acts_first(self, tick: int) -> bool:
        th = self.scenario.clock.tick_hours
        return any(tick and p.launch_tick == tick for p in self.ptos) or any(
            tick * th <= event.at < (tick + 1) * th for event in self.scenario.events
        )

    async def settle(self) -> None:
        """Every tick run so far landed and its deadlines fired (``Engine.settle_ticks``)."""
        if self.ahead:
            await self.engine.settle_ticks()

    async def beside(self) -> None:
        """A tick's work beside its physics, in this order: purchases, then ATU spending."""
        await self.investors()
        await self.creators()


@contextmanager
def _setup_frozen() -> Iterator[None]:
    """The ticks of a run with the objects alive after its setup (players, PTOs, actors,
    records: most of the heap, and most live for the whole run) kept out of the cyclic
    garbage collector's passes (``gc.freeze``): each full pass walked all of them again,
    ~0.35 s of the stress run's 20 ticks (a tenth of their wall time); the young generation
    is collected less often too (0.12 s -> 0.08 s). Reference counting still frees a frozen
    object; garbage cycles among them wait for ``gc.unfreeze`` when the ticks are over,
    which (with the thresholds put back) leaves the collector as the embedding process had
    it, unless it had frozen objects of its own: then they stay frozen, as it wanted."""
    gc.collect()  # the setup's own garbage is freed, not kept frozen for the run
    own = gc.get_freeze_count() == 0
    gc.freeze()
    threshold = gc.get_threshold()
    # A young generation of 10,000 objects, not 700: a tick allocates events, rows and
    # answers by the thousand, nearly all freed by reference counting within the tick.
    gc.set_threshold(10_000, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if own:
            gc.unfreeze()


async def run_scenario(
    loaded: Loaded,
    home: Home | PgStore,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    stop_after_ticks: int | None = None,
    synchronous: str = "NORMAL",
    interrupted: Callable[[], bool] | None = None,
    collect_metrics: bool = False,
    export_path: Path | None = None,
    worlds: Callable[[WorldParams], WorldShards] = WorldShards,
    worlds_here: bool = True,
    freeze_heap: bool = False,
) -> RunReport:
    """Run (or resume) ``loaded`` in ``home``; returns the summary. See the module doc.

    ``interrupted`` is asked between ticks; when it says yes the run stops there with
    ``KeyboardInterrupt`` (the engine closes as usual; the run resumes from its last
    checkpoint). A CLI sets it from its SIGINT handler, so a Ctrl-C is never lost in a
    section that must not be cancelled half way (a commit, a world flush).

    ``collect_metrics`` samples the scenario's ``metrics:`` after setup and after every
    tick, persisted with each checkpoint in the home (``sim.metrics``; a home folder only,
    not a PostgreSQL store); a resumed run goes on collecting when the run it resumes did.

    The finished run is exported to ``export_path`` (default ``<home>/export.json``; a
    PostgreSQL store, which has no home folder, is exported only when one is given).

    ``worlds`` makes the engine's holder of the world arrays (``Engine.open``; a run on
    Ray, ``sim.ray_shards.run_on_ray``, passes its Ray actors' here, with ``worlds_here``
    False: the worlds are not in this machine's memory, which is checked otherwise).

    ``freeze_heap`` keeps the heap the setup left out of the garbage collector's passes
    for the ticks (``gc.freeze``, a larger young generation; both put back after): about a
    tenth of a large run's tick time. It changes process-wide state while the ticks run,
    so only a process that is the run's own asks for it (``ublox-sim run`` does); an
    embedding process keeps its collector as it set it."""
    started = time.perf_counter()
    scenario = loaded.scenario
    where = _where(home)
    if resume and isinstance(home, Home) and not home.db.is_file():
        raise InvalidInput(f"nothing to resume in {where}: no store there")
    if collect_metrics and not isinstance(home, Home):
        raise InvalidInput(
            f"metrics are kept beside a home folder's checkpoints: {where} has none "
            "(run with --home to collect them)"
        )
    if worlds_here:  # (on Ray the worlds live on the cluster's nodes)
        _check_memory(scenario)
    resolved = resolved_scenario(scenario)
    async with Engine.open(
        store=home,
        seed=scenario.seed,
        clock=(clock := scenario.clock.sim_clock()),
        world=scenario.world.params(),
        checkpointed=True,
        synchronous=synchronous,  # type: ignore[arg-type]
        max_active=scenario.engine.max_active,
        idle_timeout=scenario.engine.idle_timeout,
        worlds=worlds,
    ) as engine:
        # The next tick is decided while this one's units commit: the run fails whole if
        # one fails (``Engine.tick_ahead``), and resumes from its last checkpoint.
        runner = Runner(engine, scenario, clock, loaded.event_place, ahead=True)
        # A benchmark aid (``bench simulation``): record every shard tick of this process.
        tape_path = os.environ.get(TAPE_ENV, "").strip()
        tape = Tape() if tape_path else None
        if tape is not None:
            engine.tick_observer = tape.record
        collector = (
            Collector(
                home,
                runner.tally,
                start=scenario.clock.start,
                tick_hours=scenario.clock.tick_hours,
                world=scenario.metrics.world,
                global_=scenario.metrics.global_,
            )
            if isinstance(home, Home) and (collect_metrics or (resume and has_metrics(home)))
            else None
        )
        row = await engine.store.run_record()
        resumed_from: int | None = None
        if resume:
            if row is None:
                raise InvalidInput(f"nothing to resume in {where}: no run was checkpointed there")
            if row.scenario != resolved:
                raise InvalidInput(
                    f"{loaded.source} is not the scenario of the run in {where} "
                    "(same file, --set and --seed are needed to resume)"
                )
            tick = row.tick
            runner.load_state(row.state)
            if collector is not None:
                collector.resume_at(tick)
            clock.advance(tick * scenario.clock.tick_hours)
            resumed_from = tick
            setup_seconds = time.perf_counter() - started
        else:
            if row is not None and row.finished:
                recorded = json.loads(row.scenario).get("name", "a scenario")
                raise InvalidInput(f"{where} holds a finished run of {recorded}; use a new --home")
            if row is not None or not await engine.store.is_empty():
                raise InvalidInput(
                    f"{where} already holds a store"
                    + (" with a run: add --resume to continue it" if row is not None else "")
                    + "; use a new --home"
                )
            await runner.setup()
            if collector is not None:
                await collector.sample(engine, 0)
                collector.persist(0)
            await engine.checkpoint(0, runner.run_record(0, False, resolved))
            tick = 0
        setup_seconds = time.perf_counter() - started
        first = tick
        log.info(
            "run.started", name=scenario.name, seed=scenario.seed, tick=tick, ticks=runner.total
        )
        every = scenario.checkpoint_every
        with _setup_frozen() if freeze_heap else nullcontext():
            while tick < runner.total:
                if stop_after_ticks is not None and tick - first >= stop_after_ticks:
                    break
                if interrupted is not None and interrupted():
                    raise KeyboardInterrupt
                began = time.perf_counter()
                await runner.tick(tick)
                tick += 1
                if collector is not None or tick % every == 0 or tick == runner.total:
                    await runner.settle()  # (its units and deadlines in this tick's time)
                runner.tick_seconds.append(time.perf_counter() - began)
                if collector is not None:
                    await collector.sample(engine, tick)
                if tick % every == 0 or tick == runner.total:
                    finished = tick == runner.total
                    if collector is not None:
                        # Before the store's checkpoint: a segment past the last committed
                        # checkpoint is dropped on resume, a missing one would be lost.
                        collector.persist(tick)
                    if finished:
                        # Nobody acts after the last tick: release every actor before the
                        # export, which needs the memory (results do not depend on activation).
                        await engine.passivate_all()
                    await engine.checkpoint(tick, runner.run_record(tick, finished, resolved))
                    log.info("run.checkpoint", tick=tick, ticks=runner.total)
                if progress is not None:
                    progress(tick, runner.total)
        await runner.settle()  # (stopped early: the ticks run land)
        if tape is not None:
            tape.save(tape_path)
        if tick == runner.total and (isinstance(home, Home) or export_path is not None):
            await engine.export_json(export_path)
        log.info("run.finished" if tick == runner.total else "run.stopped", tick=tick)
        report = RunReport(
            name=scenario.name,
            seed=scenario.seed,
            total_ticks=runner.total,
            ticks_run=tick - first,
            resumed_from=resumed_from,
            wall_seconds=time.perf_counter() - started,
            setup_seconds=setup_seconds,
            outcomes=dict(sorted(runner.outcomes.items())),
            tick_seconds=runner.tick_seconds,
        )
        await _summarise(engine, report)
    return report


async def _summarise(engine: Engine, report: RunReport) -> None:
    ptos: list[PTO] = await engine.store.load_all(PTO)
    for p in ptos:
        report.ptos.append(
            {
                "pto_id": p.pto_id,
                "game_name": p.game_name,
                "status": p.status,
                "funding_raised": format_cents(p.funding_raised),
                "funding_goal": format_cents(p.funding_goal),
                "pts_sold": p.pts_sold,
                "pts_offered": p.pts_offered,
                "atu_spent": p.atu_spent,
                "atu_required": p.atu_required,
                "aci_coherence_score": round(p.aci_coherence_score, 4),
                "xUSD_pool": format_cents(p.xUSD_pool),
            }
        )
    report.top_players = leaderboard(await engine.leaderboard(10))
    report.totals = await engine.stats()
