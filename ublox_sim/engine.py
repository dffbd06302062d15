"""The Engine: the embeddable face of ublox_sim.

    async with Engine.open(home) as engine:
        await engine.register_player("alice", usd_obbba=Decimal("5000"))
        token = await engine.buy_pts("alice", "pto_harmonic_001", 40)

It owns an actor system (one task group: a persistence actor, the CDT flusher and
the *active* player and PTO actors) and keeps the ledger true: every balance
change is committed with its ``transactions`` row before the call returns, and a
refusal (``InsufficientFunds``, ``SharesUnavailable`` ...) changes nothing.
Amounts go in as major units (``Decimal``, ``int``, ``str`` or ``float``; a float
is read by its shortest repr) and come back as exact ``Decimal``.
``Engine.open`` can also run inside a host's task group (``task_group=tg``).

Actors are virtual (see ``actors.directory``): one is activated from the store when a
message for it arrives and passivated when idle or pushed out by ``max_active``, so
opening reads no player, PTO or world, and memory follows who is playing. Reads that
span many (``stats``, ``leaderboard``, ``list_ptos``, ``tokens_of``, ``get_token``,
``player_ids``, ``pto_ids``) are store queries, consistent with acknowledged writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import anyio
import numpy as np
from anyio.abc import TaskGroup

from .actors.directory import Directory
from .actors.messages import (
    Allot,
    Allotment,
    AtuOutcome,
    Buy,
    BuyBatch,
    CheckDeadline,
    Deposit,
    GetPlayer,
    GetPTO,
    GetWorld,
    Play,
    PlayRequest,
    Reservation,
    Sale,
    SendTransfer,
    SessionOutcome,
    SpendAtu,
    Staged,
    StagedBuys,
    StepWorld,
)
from .actors.player import PlayerActor
from .actors.pto import PTOActor
from .actors.runtime import Actor, ActorSystem, Ask
from .core import events as ev
from .core import limits
from .core.clock import Clock, WallClock
from .core.draws import Draws, normal
from .core.economy import (
    allocate_play,
    check_hours,
    check_play_hours,
    compose_xusd,
    funding_goal,
    split_by_hours,
    tau_k_after,
)
from .core.errors import (
    CONFLICT_RETRIES,
    ActorClosed,
    AlreadyExists,
    BalanceLimit,
    Conflict,
    CorruptCdtFile,
    InvalidInput,
    StoreError,
    UbloxError,
    UnitRejected,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
)
from .core.events import EventBus, Subscription
from .core.ids import check_file_name, check_id
from .core.logsetup import get_logger
from .core.money import Amount, check_credit, to_cents, to_decimal
from .core.records import PLAYABLE, PTO, Player, iso
from .core.shard import Sessions, Shard, TickOutcome, WorldShards
from .core.tasks import joined_or_owned
from .core.views import PlayerInfo, PTOInfo, SessionResult, TokenInfo
from .core.world import F64, WorldParams, check_world, new_world
from .store.backend import Backend, Checkpoint, Committed, Receipt, RunRecord, Unit, WorldWrite
from .store.home import Home, world_id_for
from .store.open import StoreSpec, open_backend, resolve_store
from .store.sqlite.writer import Synchronous

log = get_logger(__name__)

R = TypeVar("R")
A = TypeVar("A", bound=Actor[Any])

DEFAULT_MAX_ACTIVE = 100_000
"""Active actors per kind (players, PTOs) before the least recently used passivate."""

DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds of the event loop's monotonic clock an actor may stay unused while active."""

_STEP_CONCURRENCY = 64  # PTOs stepping their worlds at once in ``advance``

MAX_ACTIVE_ENV = "UBLOX_MAX_ACTIVE"
"""Overrides the default ``max_active`` (tests run scenarios with a tiny one)."""


def _default_max_active() -> int:
    text = os.environ.get(MAX_ACTIVE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_ACTIVE
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{MAX_ACTIVE_ENV} must be a whole number, got {text!r}") from None
    checked: int = limits.MAX_ACTIVE.check(value, MAX_ACTIVE_ENV)
    return checked


@functools.lru_cache(maxsize=8)
def _position_limit(size: float) -> limits.Limit:
    """``POSITION.up_to(size)``, made once per world size rather than once per player."""
    return limits.POSITION.up_to(size)


def _registered(player: Player, *, fresh: bool = False) -> ev.PlayerRegistered:
    """The player's registration event; ``fresh``: nothing else holds ``player`` (a bulk
    registration's), so the event may carry it without a copy."""
    return ev.PlayerRegistered(
        at=player.created_at,
        player_id=player.player_id,
        usd_obbba=to_decimal(player.usd_obbba_balance),
        record=player if fresh else dataclasses.replace(player),
    )


# Players checked and built while the unit before them commits (register_players).
_REGISTER_STEP = 1_000
# Players built between two turns of the event loop (see ``register_players``).
_REGISTER_SLICE = 100
# The last step's size at most: its commit is the one nothing overlaps.
_REGISTER_TAIL = 200


def _register_steps(count: int) -> list[tuple[int, int]]:
    """(start, end) of each step of a bulk registration of ``count`` players:
    ``_REGISTER_STEP`` each, the last cut down to ``_REGISTER_TAIL``."""
    steps = [
        (start, min(start + _REGISTER_STEP, count)) for start in range(0, count, _REGISTER_STEP)
    ]
    if steps and steps[-1][1] - steps[-1][0] > _REGISTER_TAIL:
        start, end = steps.pop()
        steps += [(start, end - _REGISTER_TAIL), (end - _REGISTER_TAIL, end)]
    return steps


_T = TypeVar("_T")


def _maker(cls: type[_T]) -> Callable[..., _T]:
    """``cls(*values)`` for a frozen slotted dataclass with no ``__post_init__``,
    without its frozen ``__init__`` (an ``object.__setattr__`` per field, ~0.9 us for
    14 fields): for the bulk path's millions of results. Equal to what ``cls(...)``
    makes (tests/test_writer_bulk.py).

    A class straight from ``object`` is made as a twin: a plain class with the same
    slots and a plain ``__init__`` (made as ``dataclasses`` makes one), whose instance
    then takes ``cls`` as its class (the layouts are the same, which Python checks):
    ~0.2 us. Any other is made by a function that sets each slot through its
    descriptor, one statement each: ~0.3-0.5 us."""
    params = getattr(cls, "__dataclass_params__", None)
    if (
        not (params and params.frozen)
        or hasattr(cls, "__post_init__")
        or "__slots__" not in vars(cls)
    ):
        raise TypeError(f"{cls.__name__} is not a plain frozen slotted dataclass")
    fields = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]  # a dataclass: checked above
    values = ", ".join(f"_{n}" for n in range(len(fields)))
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    if cls.__bases__ == (object,):
        init = [f"def __init__(self, {values}):"]
        init += [f"    self.{name} = _{n}" for n, name in enumerate(fields)]
        exec("\n".join(init), scope)  # the text is made here, from the field names
        twin = type(
            f"_{cls.__name__}Twin",
            (),
            {"__slots__": vars(cls)["__slots__"], "__init__": scope.pop("__init__")},
        )
        probe = twin(*fields)
        try:
            probe.__class__ = cls
        except TypeError:  # not the same layout after all: the descriptors below
            pass
        else:
            scope["_twin"] = twin
            lines = [
                f"def make({values}):",
                f"    made = _twin({values})",
                "    made.__class__ = _cls",
            ]
    if "_twin" not in scope:
        lines = [f"def make({values}):", "    made = _new(_cls)"]
        for number, name in enumerate(fields):
            scope[f"_set{number}"] = getattr(cls, name).__set__
            lines.append(f"    _set{number}(made, _{number})")
    lines.append("    return made")
    exec("\n".join(lines), scope)  # the text is made here, from field numbers
    make: Callable[..., _T] = scope["make"]
    make.__qualname__ = f"_maker({cls.__name__})"
    return make


_player_info = _maker(PlayerInfo)
_player_registered = _maker(ev.PlayerRegistered)  # (at, seq, player_id, usd_obbba, record)
# A tick's events and results, hundreds per tick (fields in each class's order).
_session_played = _maker(ev.SessionPlayed)
_phase_lock = _maker(ev.PhaseLock)  # (at, seq, pto_id, player_id, locks)
_session_result = _maker(SessionResult)
# A play's result in a tick: its session, its refusal, ahead its phase locks (decided).
_Result = SessionResult | UbloxError | int | None


class _Figures(NamedTuple):
    """The figures of a player a tick's session reads (a snapshot: the actor's state moves
    when units land; copying the whole record per session cost more than the session)."""

    player_id: str
    position_x: float
    position_y: float
    phase: float
    resonance_freq: float
    tau_k: float

    @staticmethod
    def of(player: Player) -> _Figures:
        return _Figures(
            player.player_id,
            player.position_x,
            player.position_y,
            player.phase,
            player.resonance_freq,
            player.tau_k,
        )


class _Claimed:
    """The players checked and claimed, to be built: their places in the results, ids,
    cents, tau_k and resonance_freq (None: drawn); once built, what was drawn (x, y,
    phase and resonance_freq, four floats a player in one list)."""

    __slots__ = ("cents", "drawn", "freqs", "ids", "indexes", "taus")

    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.ids: list[str] = []
        self.cents: list[int] = []
        self.taus: list[float] = []
        self.freqs: list[float | None] = []
        self.drawn: list[float] = []


class _Chunk:
    """A step's players, to commit as one unit: their places in the results, their
    records and their events. Parallel lists (here and in ``_Claimed``), not a tuple
    per player: every object a bulk registration keeps for a while is one more for the
    garbage collector to count and walk."""

    __slots__ = ("events", "indexes", "players")

    def __init__(self) -> None:
        self.indexes: list[int] = []
        self.players: list[Player] = []
        self.events: list[ev.PlayerRegistered] = []


class _BulkPlayers:
    """A bulk registration's players: checked and claimed first (cheap), then built at
    the cost of what each needs: an amount seen before is not parsed again, the drawn
    values need no bounds check (a uniform in [0, 1) scaled into its range cannot leave
    it), and the result is made straight from the values. The checks are
    ``Engine._new_player``'s, in its order, with its errors."""

    def __init__(self, engine: Engine, now: str) -> None:
        self.now = now
        # One per player given, in order; None while a claimed player is being built.
        self.results: list[PlayerInfo | UbloxError | None] = []
        self._cents: dict[tuple[type, object], int] = {}
        self._decimals: dict[int, Decimal] = {}
        self._uniforms = engine._draws.of_kind("player")
        self._size = engine.params.size
        self._omega = (engine.params.omega_mean, engine.params.omega_spread)
        self._phase = (limits.PHASE.min, limits.PHASE.max - limits.PHASE.min)
        self._zero = to_decimal(0)

    def check(
        self, player_id: str, usd: Amount, tau: float, freq: float | None
    ) -> tuple[int, float, float | None]:
        """``Engine._new_player``'s checks, in its order: cents, tau_k, resonance_freq."""
        check_id(player_id, "player_id")
        cents = self._amount(usd)
        if type(tau) is not float or not limits.TAU_K.contains(tau):
            tau = limits.TAU_K.check(tau)
        if freq is not None and (
            type(freq) is not float or not limits.RESONANCE_FREQ.contains(freq)
        ):
            freq = limits.RESONANCE_FREQ.check(freq)
        return cents, tau, freq

    def _amount(self, usd: Amount) -> int:
        key = (type(usd), usd)
        try:
            known = self._cents.get(key)
        except TypeError:  # unhashable (a signalling NaN): to_cents says why
            known = None
        if known is None:
            known = to_cents(usd, what="usd_obbba")
            if len(self._cents) < 1024:
                self._cents[key] = known
        return known

    def _decimal(self, cents: int) -> Decimal:
        known = self._decimals.get(cents)
        if known is None:
            known = to_decimal(cents)
            if len(self._decimals) < 1024:
                self._decimals[cents] = known
        return known

    def build(self, claimed: _Claimed, first: int, last: int, chunk: _Chunk) -> None:
        """Draw and make the claimed players ``first`` to ``last`` (the next ones: in
        order) and their events, into ``chunk``: the same players as
        ``Engine._new_player`` (tests/test_writer_bulk.py holds them equal). Their
        results are made by ``answers``, at the end: made here, they would live through
        every unit of the call, and the garbage collector would carry them into its
        oldest generation, whose every collection walks the whole heap."""
        uniforms, size, now = self._uniforms, self._size, self.now
        low, span = self._phase
        mean, spread = self._omega
        registered, drawn = _player_registered, claimed.drawn
        indexes, players, events = chunk.indexes, chunk.players, chunk.events
        for index, player_id, cents, tau, freq in zip(
            claimed.indexes[first:last],
            claimed.ids[first:last],
            claimed.cents[first:last],
            claimed.taus[first:last],
            claimed.freqs[first:last],
            strict=True,
        ):
            ux, uy, uphase, u1, u2 = uniforms(player_id)
            if freq is None:
                freq = normal(u1, u2, mean, spread)
            x, y, phase = ux * size, uy * size, low + span * uphase
            player = Player(player_id, x, y, phase, 0.0, tau, freq, cents, 0, 0.0, 0.0, 0, 0.0, now)
            usd = self._decimal(cents)
            indexes.append(index)
            players.append(player)
            events.append(registered(now, 0, player_id, usd, player))
            drawn += (x, y, phase, freq)

    def drop_taken(self, taken: set[str], chunk: _Chunk) -> _Chunk:
        """``chunk`` without the players whose ids the store already holds: refused."""
        if not taken:
            return chunk
        kept = _Chunk()
        for index, player, event in zip(chunk.indexes, chunk.players, chunk.events, strict=True):
            if player.player_id in taken:
                self.results[index] = AlreadyExists(
                    f"{player.player_id!r} is already taken by a player or PTO"
                )
            else:
                kept.indexes.append(index)
                kept.players.append(player)
                kept.events.append(event)
        return kept

    def answers(self, claimed: _Claimed) -> list[PlayerInfo | UbloxError]:
        """One result per player given: its error, or (all of ``claimed`` built) the
        player registered."""
        results, info, now, zero = self.results, _player_info, self.now, self._zero
        drawn = claimed.drawn
        assert len(drawn) == 4 * len(claimed.ids), "every claimed player was built"
        for place, (index, player_id, cents, tau) in enumerate(
            zip(claimed.indexes, claimed.ids, claimed.cents, claimed.taus, strict=True)
        ):
            if results[index] is None:
                x, y, phase, freq = drawn[4 * place : 4 * place + 4]
                usd = self._decimal(cents)
                results[index] = info(
                    player_id, usd, zero, tau, freq, phase, 0.0, x, y, 0.0, 0.0, 0, 0.0, now
                )
        answers: list[PlayerInfo | UbloxError] = []
        for result in results:
            assert result is not None
            answers.append(result)
        return answers


class Engine:
    """Players, PTOs and their worlds as actors over one local store. Open with ``Engine.open``."""

    def __init__(
        self,
        store: Backend,
        system: ActorSystem,
        *,
        seed: int | None,
        clock: Clock,
        params: WorldParams,
        request_timeout: float,
        max_active: int = DEFAULT_MAX_ACTIVE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        worlds: Callable[[WorldParams], WorldShards] = WorldShards,
    ) -> None:
        self.store = store
        self.system = system
        self.clock = clock
        self.params = params
        self.request_timeout = request_timeout
        self.seed = seed
        entropy = np.random.SeedSequence(seed).entropy
        assert isinstance(entropy, int)
        self._entropy = entropy
        self._draws = Draws(entropy)
        cap: int = limits.MAX_ACTIVE.check(max_active)
        idle: float = limits.IDLE_TIMEOUT.check(idle_timeout)

        def directory(
            kind: str,
            load: Callable[[str], Awaitable[A | None]],
            unknown: Callable[[str], UbloxError],
            release: Callable[[A], Awaitable[None]],
        ) -> Directory[A]:
            return Directory(
                kind,
                load=load,
                unknown=unknown,
                release=release,
                tg=system.tg,
                max_active=cap,
                idle_timeout=idle,
            )

        self._players: Directory[PlayerActor] = directory(
            "player",
            self._load_player,
            lambda ident: UnknownPlayer(f"no player {ident!r}"),
            self._release_player,
        )
        self._ptos: Directory[PTOActor] = directory(
            "pto",
            self._load_pto,
            lambda ident: UnknownPTO(f"no PTO {ident!r}"),
            self._release_pto,
        )
        self._port = _PlayersPort(self)
        # The one owner of every resident world's arrays (stacked by shard).
        self.worlds = worlds(params)
        # Worlds a scenario's ticks hold resident whether or not their PTO is active.
        self._ticked_worlds: set[str] = set()
        # Told every shard tick before it runs (``core.shard.Tape``: the bench's replay).
        self.tick_observer: Callable[[Shard, int, Sessions], None] | None = None
        # Credits (cents) and tick sessions (events) committed while their player was
        # being activated: applied (or not, by position) once the load is known.
        self._early_credits: dict[str, list[tuple[int | ev.SessionPlayed, int]]] = {}
        self._reserved: set[str] = set()
        self._buying = asyncio.Lock()  # one buy_many segment deciding at a time
        self._bus: EventBus = store.bus
        self._reaper: anyio.CancelScope | None = None
        self._state: Literal["opened", "closing", "closed"] = "opened"
        # ``tick_ahead`` (a checkpointed run): its ticks whose units have not all landed,
        # oldest first; the first unit that failed (the run fails whole); whether the
        # last tick's deadlines are still to fire; the players with sessions in flight
        # whose actor was not active when their unit was submitted; the PTOs (ids) the
        # last tick read (None: a PTO was launched since, or no tick yet).
        self._ahead: list[_Ahead] = []
        self._ahead_serial = 0
        self._ahead_error: BaseException | None = None
        self._deadlines_owed = False
        self._unseen: set[str] = set()
        self._tick_ptos: list[str] | None = None

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        home: Path | str | Home | None = None,
        *,
        store: StoreSpec = None,
        seed: int | None = None,
        clock: Clock | None = None,
        world: WorldParams | None = None,
        synchronous: Synchronous = "NORMAL",
        flush_interval: float = 0.5,
        request_timeout: float = 60.0,
        task_group: TaskGroup | None = None,
        checkpointed: bool = False,
        max_active: int | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        worlds: Callable[[WorldParams], WorldShards] = WorldShards,
        shared: bool | None = None,
    ) -> AsyncIterator[Engine]:
        """Open the store at ``home`` or ``store`` (a ``postgresql://`` URL or a path; by
        default ``$UBLOX_STORE``, else ``$UBLOX_HOME`` or ``~/.ublox``: see
        ``store.open``) and close everything cleanly (drained, committed, flushed) on exit. Opening reads no player
        or PTO: actors are activated by their first message. Pass ``task_group`` to run
        the actors in a host's own task group.

        ``max_active`` (default ``$UBLOX_MAX_ACTIVE`` or 100,000) caps the active actors
        *of each kind* (players, PTOs): beyond it the least recently used are passivated;
        so is any actor unused for ``idle_timeout`` seconds (default 300).

        ``checkpointed=True`` (scenario runs) holds every write in one open transaction
        until ``checkpoint()`` commits it with the worlds' versioned files: a crash then
        always reopens at the last checkpoint, never between two.

        ``worlds`` makes the holder of the world arrays (``WorldShards``; ``run --ray``
        passes one whose shards are Ray actors: ``sim.ray_shards``).

        ``shared`` (PostgreSQL): whether other processes may write the database at the
        same time. By default they may (``$UBLOX_CLUSTER=0`` says otherwise), except in
        checkpointed mode; ``shared=False`` holds it alone, 1.4-1.7x faster for one
        process. Each refuses the other with ``StoreLocked`` (``store.postgres.mode``)."""
        params = check_world(world or WorldParams())  # before anything is opened
        resolved = resolve_store(store, home=home)
        clock = clock or WallClock()
        # The engine's own checks, before anything is opened.
        cap = _default_max_active() if max_active is None else limits.MAX_ACTIVE.check(max_active)
        limits.IDLE_TIMEOUT.check(idle_timeout)

        async with joined_or_owned(task_group) as tg:
            backend = open_backend(
                resolved,
                synchronous=synchronous,
                flush_interval=flush_interval,
                clock=clock,
                hold_commits=checkpointed,
                shared=shared,
            )
            await backend.start(tg)
            try:
                engine = cls(
                    backend,
                    ActorSystem(tg),
                    seed=seed,
                    clock=clock,
                    params=params,
                    request_timeout=request_timeout,
                    max_active=cap,
                    idle_timeout=idle_timeout,
                    worlds=worlds,
                )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await backend.aclose()
                raise
            try:
                await engine._restore()
                yield engine
            finally:
                await engine.aclose()

    async def _restore(self) -> None:
        """Resume the event log's numbering; start the idle reaper. Nothing else is read:
        actors activate on demand."""
        _, self._bus.last_seq = await self.store.event_log_span()
        # The scope exists before the task starts: a close that comes first still stops it.
        self._reaper = anyio.CancelScope()
        self.system.tg.start_soon(self._reap_idle, self._reaper)

    async def _reap_idle(self, scope: anyio.CancelScope) -> None:
        with scope:
            timeout = min(self._players.idle_timeout, self._ptos.idle_timeout)
            period = max(0.05, min(timeout / 4, 30.0))
            while True:
                await anyio.sleep(period)
                self._ptos.reap_idle()
                self._players.reap_idle()

    async def aclose(self) -> None:
        """Drain PTO actors and wait until their units are acknowledged, then drain player
        actors, then commit and close the store. Idempotent."""
        if self._state != "opened":
            return
        self._state = "closing"
        with anyio.CancelScope(shield=True):
            try:
                if self._reaper is not None:
                    self._reaper.cancel()
                # Worlds changed since their last write are flushed by the store's close.
                ptos = await self._ptos.close()
                await self.system.drain(ptos)
                # Their units in flight settle buyers' reservations when acknowledged:
                # the players stay until every PTO is quiet.
                for pto in ptos:
                    await pto.wait_quiet()
                await self.system.drain(await self._players.close())
            finally:
                self._bus.close()
                try:
                    await self.store.aclose()
                finally:
                    await self.worlds.aclose()  # (a physics worker process, if any)
                    self._state = "closed"

    def _check_open(self) -> None:
        if self._state != "opened":
            raise ActorClosed("the engine is closed")

    # -- activation and passivation ---------------------------------------------

    async def _load_player(self, player_id: str) -> PlayerActor | None:
        if not isinstance(player_id, str):
            return None
        self._early_credits[player_id] = []
        try:
            player, position = await self.store.load_player_at(player_id)
            early = self._early_credits[player_id]
        finally:
            del self._early_credits[player_id]
        if player is None:
            return None
        actor = PlayerActor(player, self.store, players=self._port, loaded_at=position)
        for item, at in early:
            if isinstance(item, int):
                actor.credit(item, at)
            else:
                actor.landed(item, at)
        return actor

    async def _release_player(self, actor: PlayerActor) -> None:
        """Nothing to write: every change of a player is in its units."""

    async def _load_pto(self, pto_id: str) -> PTOActor | None:
        if not isinstance(pto_id, str):
            return None
        pto = await self.store.load_pto(pto_id)
        if pto is None:
            return None
        tokens = await self.store.load_tokens(pto_id)
        error = await self._resident(pto) if pto.world_cdt_id else None
        return PTOActor(
            pto,
            tokens,
            self.worlds,
            params=self.params,
            backend=self.store,
            players=self._port,
            world_error=error,
        )

    async def _resident(self, pto: PTO) -> str | None:
        """Load the PTO's world into the shards unless it is there (the shards' copy is
        the newest); returns why it could not be loaded, or None."""
        world_id = pto.world_cdt_id
        if world_id is None or world_id in self.worlds:
            return None
        try:
            arrays = await self.store.load_world(world_id)
        except CorruptCdtFile as exc:
            # One bad world must not keep the rest of the store from working.
            log.error("engine.world_unavailable", pto_id=pto.pto_id, error=str(exc))
            return str(exc)
        if world_id not in self.worlds:  # (another activation may have loaded it meanwhile)
            self.worlds.put(world_id, arrays["theta"], arrays["omega"])
        return None

    async def _release_pto(self, actor: PTOActor) -> None:
        """A passivating (or closing) PTO's world: written now, or, while the store holds
        commits for a checkpoint, kept by it for that checkpoint. It leaves the shards
        unless a scenario's ticks hold it."""
        world_id = actor.state.world_cdt_id
        world = actor.world
        if world is not None and world_id is not None:
            await self.store.save_world(world_id, world)
            if world_id not in self._ticked_worlds:
                self.worlds.remove(world_id)

    def _credit(self, player_id: str, usd: int, position: int) -> None:
        """A committed credit (unit ``position``): an active (or passivating) player applies
        it; one being activated gets it once its load is known; any other has it in its row."""
        # A passivating actor still finishes its mailbox: its decisions need the credit.
        actor = self._players.current(player_id)
        if actor is not None:
            actor.credit(usd, position)
        elif (early := self._early_credits.get(player_id)) is not None:
            early.append((usd, position))

    def active_actors(self) -> dict[str, int]:
        """How many actors are active, by kind."""
        return {"player": len(self._players), "pto": len(self._ptos)}

    async def passivate_all(self) -> None:
        """Passivate every active actor now (tests; a host under memory pressure), and
        release the worlds a scenario's ticks held (saved for the next checkpoint)."""
        self._check_open()
        await self._ptos.passivate_all()
        await self._players.passivate_all()
        for world_id in sorted(self._ticked_worlds):
            if world_id in self.worlds:
                await self.store.save_world(world_id, self.worlds.arrays(world_id))
                self.worlds.remove(world_id)
        self._ticked_worlds.clear()

    def rng(self, kind: str, ident: str) -> np.random.Generator:
        """A generator for one entity, derived from the engine's seed and the entity's id,
        so draws do not depend on the order entities were created in."""
        key = int.from_bytes(hashlib.sha256(f"{kind}:{ident}".encode()).digest()[:8], "big")
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(key,)))

    def _now(self) -> str:
        return iso(self.clock.now())

    async def _ask_player(self, player_id: str, message: Ask[R]) -> R:
        self._check_open()
        return await self._players.ask(player_id, message, timeout=self.request_timeout)

    async def _ask_pto(self, pto_id: str, message: Ask[R]) -> R:
        self._check_open()
        return await self._retried(self._ptos, pto_id, message)

    async def _retried(self, actors: Directory[Any], ident: str, message: Ask[R]) -> R:
        """Ask; a unit refused as a ``Conflict`` (another process sharing the database
        wrote first) left its actor stale: it reloads and decides the message again."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                return await actors.ask(ident, message, timeout=self.request_timeout)
            except Conflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                # Processes racing for one row would otherwise collide again in lockstep
                # (each decides, all but one lose): a random pause, growing, spreads them.
                await anyio.sleep(random.random() * min(0.001 * 2**attempt, 0.05))
        raise AssertionError("unreachable")

    async def _require_player(self, player_id: str) -> None:
        """``UnknownPlayer`` unless the player exists (a point read; nothing activated)."""
        if not isinstance(player_id, str):
            raise UnknownPlayer(f"no player {player_id!r}")
        if self._players.active(player_id) is not None:
            return
        if await self.store.load_player(player_id) is None:
            raise UnknownPlayer(f"no player {player_id!r}")

    async def _require_room(self, player_id: str, cents: int) -> None:
        """``_require_player``, and ``BalanceLimit`` if crediting ``cents`` would take its
        acknowledged balance (its actor's, or the row's) past the money limit."""
        actor = self._players.active(player_id)
        player = actor.state if actor is not None else None
        if player is None and isinstance(player_id, str):
            player = await self.store.load_player(player_id)
        if player is None:
            raise UnknownPlayer(f"no player {player_id!r}")
        check_credit(player.usd_obbba_balance, cents, f"a transfer to {player_id!r}")

    async def _require_pto(self, pto_id: str) -> PTO:
        pto = await self.store.load_pto(pto_id) if isinstance(pto_id, str) else None
        if pto is None:
            raise UnknownPTO(f"no PTO {pto_id!r}")
        return pto

    async def _reserve(self, ident: str) -> None:
        """Claim ``ident`` for a registration or launch in flight: refused if a player or
        PTO holds it, in the store or in flight (ids are one namespace)."""
        if ident in self._reserved:
            raise AlreadyExists(f"{ident!r} is already taken by a player or PTO")
        self._reserved.add(ident)
        try:
            taken = await self.store.exists(ident)
        except BaseException:
            self._reserved.discard(ident)
            raise
        if taken:
            self._reserved.discard(ident)
            raise AlreadyExists(f"{ident!r} is already taken by a player or PTO")

    # -- players ---------------------------------------------------------------

    async def register_player(
        self,
        player_id: str,
        *,
        usd_obbba: Amount = 0,
        tau_k: float = 1.0,
        resonance_freq: float | None = None,
        position: tuple[float, float] | None = None,
        phase: float | None = None,
    ) -> PlayerInfo:
        """Create a player; a starting balance is recorded as a ``deposit``."""
        self._check_open()
        player = self._new_player(player_id, usd_obbba, tau_k, resonance_freq, position, phase)
        await self._reserve(player_id)
        try:
            with anyio.CancelScope(shield=True):  # the id stays claimed until it lands
                await self.store.commit(Unit((_registered(player),)))
        finally:
            self._reserved.discard(player_id)
        return PlayerInfo.of(player)

    async def register_players(
        self, players: Sequence[tuple[str, Amount, float, float | None]]
    ) -> list[PlayerInfo | UbloxError]:
        """Register many players at once: (player_id, usd_obbba, tau_k, resonance_freq) each.

        Valid players are committed in large units, in the order given (so the ledger's
        order is the list's); each player is refused or registered on its own: one
        result each, an error for a refused one. A unit the database rejects as a whole
        is retried one player at a time, so one bad row refuses only its player.
        Registered players are not activated: their first message does that.

        Pipelined: every player is checked and claimed first, and the store asked once,
        without waiting, which of their ids it holds (one read per call, not one per
        unit: each is a trip through the writer's queue). Then the next
        ``_REGISTER_STEP`` players are built while the unit before is committed on the
        writer's thread; a unit is queued only once the one before has landed (and its
        refusals were retried), which keeps the order."""
        self._check_open()
        bulk = _BulkPlayers(self, self._now())
        ours: set[str] = set()  # ids claimed here and not yet released
        landing: tuple[_Chunk, asyncio.Future[BaseException | None]] | None = None
        asked: asyncio.Future[set[str]] | None = None
        try:
            # Shielded: the ids stay claimed until their units have landed.
            with anyio.CancelScope(shield=True):
                claimed, asked = self._claim_and_ask(bulk, players, ours)
                taken: set[str] | None = None
                for start, end in _register_steps(len(claimed.ids)):
                    chunk = _Chunk()
                    for first in range(start, end, _REGISTER_SLICE):
                        # The unit before reaches the writer's thread only once the
                        # writer's task has run: let it (and the replies), so the
                        # database works while these players are built.
                        await asyncio.sleep(0)
                        bulk.build(claimed, first, min(first + _REGISTER_SLICE, end), chunk)
                    if landing is not None:
                        await self._landed(bulk, *landing)
                        landing = None
                    if taken is None:
                        taken = await asked if asked is not None else set()
                        asked = None
                        self._reserved.difference_update(taken)
                        ours.difference_update(taken)
                    chunk = bulk.drop_taken(taken, chunk)
                    if chunk.events:
                        landing = (chunk, await self._submitted(Unit(tuple(chunk.events))))
                if landing is not None:
                    await self._landed(bulk, *landing)
        finally:
            if asked is not None:
                asked.cancel()  # the read runs anyway; nobody waits for it
            self._reserved.difference_update(ours)
        return bulk.answers(claimed)

    def _claim_and_ask(
        self,
        bulk: _BulkPlayers,
        players: Sequence[tuple[str, Amount, float, float | None]],
        ours: set[str],
    ) -> tuple[_Claimed, asyncio.Future[set[str]] | None]:
        """Claim ``players`` and ask the store, without waiting, which of their ids it
        holds (asked once they are claimed: an id that lands after the read is one
        claimed here or by whoever registers it)."""
        claimed = self._claim(bulk, players, ours)
        if not claimed.ids:
            return claimed, None
        return claimed, asyncio.ensure_future(self.store.taken(claimed.ids))

    def _claim(
        self,
        bulk: _BulkPlayers,
        players: Sequence[tuple[str, Amount, float, float | None]],
        ours: set[str],
    ) -> _Claimed:
        """Check ``players`` and claim the ids of the valid ones (refused: in flight
        here or elsewhere); the others get their error."""
        claimed = _Claimed()
        results, reserved = bulk.results, self._reserved
        for player_id, usd, tau, freq in players:
            index = len(results)
            try:
                cents, tau, freq = bulk.check(player_id, usd, tau, freq)
                if player_id in reserved:
                    raise AlreadyExists(f"{player_id!r} is already taken by a player or PTO")
            except UbloxError as exc:
                results.append(exc)
                continue
            reserved.add(player_id)
            ours.add(player_id)
            results.append(None)
            claimed.indexes.append(index)
            claimed.ids.append(player_id)
            claimed.cents.append(cents)
            claimed.taus.append(tau)
            claimed.freqs.append(freq)
        return claimed

    async def _submitted(self, unit: Unit) -> asyncio.Future[BaseException | None]:
        """Queue ``unit``; the future resolves with None once it committed, or its error
        (not the ``Committed``: its events need not outlive their publication)."""
        outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def done(result: object) -> None:
            if not outcome.done():
                outcome.set_result(result if isinstance(result, BaseException) else None)

        await self.store.submit(unit, done)
        return outcome

    async def _landed(
        self, bulk: _BulkPlayers, chunk: _Chunk, outcome: asyncio.Future[BaseException | None]
    ) -> None:
        """Wait for a unit of registrations; one the database rejected whole is retried
        player by player, so only the player it cannot take is refused."""
        result = await outcome
        if isinstance(result, UnitRejected):
            for index, player in zip(chunk.indexes, chunk.players, strict=True):
                try:
                    await self.store.commit(Unit((_registered(player),)))
                except UbloxError as exc:
                    bulk.results[index] = exc
        elif result is not None:
            raise result

    def _new_player(
        self,
        player_id: str,
        usd_obbba: Amount,
        tau_k: float,
        resonance_freq: float | None,
        position: tuple[float, float] | None,
        phase: float | None,
        now: str | None = None,
    ) -> Player:
        check_id(player_id, "player_id")
        cents = to_cents(usd_obbba, what="usd_obbba")
        tau = limits.TAU_K.check(tau_k)
        # One keyed hash per id (core/draws.py): the same player on every path and in
        # any batch; far cheaper than a numpy generator per player.
        ux, uy, uphase, u1, u2 = self._draws.uniforms("player", player_id)
        size = self.params.size
        if position is not None and (not isinstance(position, tuple | list) or len(position) != 2):
            raise InvalidInput(f"position must be an (x, y) pair, got {position!r}")
        x, y = position if position is not None else (ux * size, uy * size)
        where = _position_limit(size)
        return Player(
            player_id=player_id,
            position_x=where.check(x, "position x"),
            position_y=where.check(y, "position y"),
            phase=limits.PHASE.check(phase)
            if phase is not None
            else limits.PHASE.min + (limits.PHASE.max - limits.PHASE.min) * uphase,
            tau_k=tau,
            resonance_freq=limits.RESONANCE_FREQ.check(resonance_freq)
            if resonance_freq is not None
            else normal(u1, u2, self.params.omega_mean, self.params.omega_spread),
            usd_obbba_balance=cents,
            created_at=now if now is not None else self._now(),
        )

    async def deposit(
        self, player_id: str, amount: Amount, *, receipt: Receipt | None = None
    ) -> PlayerInfo:
        """Add USD-OBBBA. A ``receipt`` (every money-moving call takes one) commits in the
        operation's own unit: a server stores its idempotency key there."""
        cents = to_cents(amount, allow_zero=False)
        at = self._now()
        await self._ask_player(player_id, Deposit(amount=cents, at=at, receipt=receipt))
        return await self.get_player(player_id)

    async def transfer(
        self, from_id: str, to_id: str, amount: Amount, *, receipt: Receipt | None = None
    ) -> PlayerInfo:
        """Move USD-OBBBA between two players; returns the sender."""
        cents = to_cents(amount, allow_zero=False)
        await self._require_player(from_id)
        if from_id == to_id:
            raise InvalidInput("transfer to oneself")
        await self._require_room(to_id, cents)
        at = self._now()
        self._check_open()
        message = SendTransfer(to_id=to_id, amount=cents, at=at, receipt=receipt)
        await self._retried(self._players, from_id, message)
        return await self.get_player(from_id)

    async def get_player(self, player_id: str) -> PlayerInfo:
        player = await self._ask_player(player_id, GetPlayer())
        return PlayerInfo.of(player)

    async def usd_balance(self, player_id: str) -> int | None:
        """The player's acknowledged USD-OBBBA balance in cents (None: no such player),
        from its actor's memory (activated if need be; no message). On a shared store,
        where another process may have moved it, a store read."""
        self._check_open()
        if getattr(self.store, "shared", False):
            player = await self.store.load_player(player_id)
            return None if player is None else player.usd_obbba_balance
        try:
            actor = await self._players.get(player_id)
        except UnknownPlayer:
            return None
        return actor.state.usd_obbba_balance

    async def usd_balances(self, player_ids: Iterable[str]) -> dict[str, int]:
        """``usd_balance`` of many players at once: those not active are activated
        together (one store query, as ``activate_players``), the balances then read from
        their actors' memory; an unknown id is left out. On a shared store, store reads
        (a point loader coalesces them)."""
        self._check_open()
        ids = list(dict.fromkeys(player_ids))
        out: dict[str, int] = {}
        if getattr(self.store, "shared", False):
            loaded = await asyncio.gather(*map(self.store.load_player, ids))
            for player_id, player in zip(ids, loaded, strict=True):
                if player is not None:
                    out[player_id] = player.usd_obbba_balance
            return out
        await self._players.get_many(ids)
        for player_id in ids:
            actor = self._players.active(player_id)
            if actor is not None:
                out[player_id] = actor.state.usd_obbba_balance
            elif (balance := await self.usd_balance(player_id)) is not None:
                out[player_id] = balance  # passivated since (few actors may be active)
        return out

    async def activate_players(self, player_ids: Iterable[str]) -> None:
        """Bring these players into memory together: those not active are read in one
        store query rather than one each (unknown ids are skipped). Only an aid to speed:
        every call activates a player it needs anyway."""
        self._check_open()
        if not getattr(self.store, "shared", False):
            await self._players.get_many(player_ids)

    async def player_ids(self) -> list[str]:
        """Every player's id, in order (a store query)."""
        self._check_open()
        return await self.store.player_ids()

    async def leaderboard(self, top: int = 10) -> list[Player]:
        """The ``top`` players by xUSD balance, ties by id (a store query)."""
        self._check_open()
        return await self.store.leaderboard(top)

    # -- PTOs ------------------------------------------------------------------

    async def launch_pto(
        self,
        *,
        pto_id: str,
        game_name: str,
        creator_id: str,
        atu_required: int,
        pts_offered: int,
        price_per_pts: Amount,
        funding_deadline: datetime | timedelta,
        description: str = "",
        amplification: float = 100.0,
    ) -> PTOInfo:
        """Offer ``pts_offered`` PTS at ``price_per_pts``; fails at ``funding_deadline`` if unsold."""
        self._check_open()
        check_file_name(pto_id, "pto_id")
        await self._require_player(creator_id)
        limits.GAME_NAME.check_length(game_name)
        limits.DESCRIPTION.check_length(description)
        atu: int = limits.ATU_REQUIRED.check(atu_required)
        offered: int = limits.PTS_OFFERED.check(pts_offered)
        price = to_cents(price_per_pts, what="price_per_pts", allow_zero=False)
        goal = funding_goal(offered, price)
        amp: float = limits.AMPLIFICATION.check(amplification)
        now = self.clock.now()
        if isinstance(funding_deadline, timedelta):
            try:
                deadline = now + funding_deadline
            except OverflowError as exc:
                raise InvalidInput(f"funding_deadline {funding_deadline} is out of range") from exc
        elif isinstance(funding_deadline, datetime) and funding_deadline.tzinfo is not None:
            deadline = funding_deadline
        else:
            raise InvalidInput("funding_deadline must be an aware datetime or a timedelta")
        if deadline <= now:
            raise InvalidInput(f"funding_deadline {iso(deadline)} is not after now ({iso(now)})")
        world_id = world_id_for(pto_id)
        pto = PTO(
            pto_id=pto_id,
            game_name=game_name,
            creator_id=creator_id,
            description=description,
            atu_required=atu,
            pts_offered=offered,
            price_per_pts=price,
            funding_goal=goal,
            launch_time=iso(now),
            funding_deadline=iso(deadline),
            world_cdt_id=world_id,
            amplification=amp,
        )
        await self._reserve(pto_id)
        try:
            world = new_world(self.params, self.rng("world", pto_id))
            launched = ev.PTOLaunched(
                at=pto.launch_time,
                pto_id=pto_id,
                game_name=game_name,
                creator_id=creator_id,
                funding_goal=to_decimal(goal),
                record=dataclasses.replace(pto),
            )
            with anyio.CancelScope(shield=True):  # the id stays claimed until it lands
                await self.store.commit(Unit((launched,), worlds=(WorldWrite(world_id, world),)))
        finally:
            self._reserved.discard(pto_id)
        self._tick_ptos = None  # a PTO the ticks do not know yet
        if self.store.hold_commits:
            # A checkpointed run's ticks hold every world (``_play_tick``): this one is
            # resident from its launch, not read back from the store at the next tick.
            self.worlds.put(world_id, world["theta"], world["omega"])
            self._ticked_worlds.add(world_id)
        return PTOInfo.of(pto)

    async def buy_pts(
        self, player_id: str, pto_id: str, hours: int, *, receipt: Receipt | None = None
    ) -> TokenInfo:
        """Buy ``hours`` PTS; the purchase price moves into the PTO's escrow."""
        whole = check_hours(hours)
        self._check_open()
        await self._ptos.get(pto_id)  # UnknownPTO first, then UnknownPlayer
        await self._require_player(player_id)
        at = self._now()
        sale: Sale = await self._ask_pto(
            pto_id, Buy(player_id=player_id, hours=whole, at=at, receipt=receipt)
        )
        return TokenInfo.of(sale.token)

    async def buy_many(
        self, purchases: Sequence[tuple[str, str, int]]
    ) -> list[TokenInfo | UbloxError]:
        """Several purchases (player_id, pto_id, hours): one result or error each.

        Decided in the order given, each PTO's purchases in one message (``BuyBatch``),
        and committed as ONE unit whose events follow the list's order (the ledger's
        order is the list's): refusals stay per purchase, but a unit the store refuses
        fails every purchase in it. A player named twice starts a new unit, so its
        reservations are made in the list's order too. With several processes on one
        database they go one at a time."""
        self._check_open()
        results: list[TokenInfo | UbloxError | None] = [None] * len(purchases)
        if getattr(self.store, "shared", False):
            for k, (player_id, pto_id, hours) in enumerate(purchases):
                try:
                    results[k] = await self.buy_pts(player_id, pto_id, hours)
                except UbloxError as exc:
                    results[k] = exc
        else:
            # Checked in order as buy_pts does: hours, then UnknownPTO, then UnknownPlayer.
            segment: list[tuple[int, str, str, int]] = []
            buyers: set[str] = set()
            for k, (player_id, pto_id, hours) in enumerate(purchases):
                try:
                    whole = check_hours(hours)
                    await self._ptos.get(pto_id)
                    await self._players.get(player_id)  # activated: reserves at once
                except UbloxError as exc:
                    results[k] = exc
                    continue
                if player_id in buyers:
                    await self._buy_segment(segment, results)
                    segment, buyers = [], set()
                segment.append((k, player_id, pto_id, whole))
                buyers.add(player_id)
            await self._buy_segment(segment, results)
        done = [r for r in results if r is not None]
        assert len(done) == len(purchases)
        return done

    async def _buy_segment(
        self,
        segment: list[tuple[int, str, str, int]],
        results: list[TokenInfo | UbloxError | None],
    ) -> None:
        """Purchases of distinct players: each PTO decides its own (one ``BuyBatch``),
        then all their events go to the store as one unit, in ``segment`` order. One
        segment at a time (``_buying``): a PTO holds its other messages until the unit
        with its purchases is queued, so two segments waiting for each other's PTOs
        could never both go on."""
        if not segment:
            return
        by_pto: dict[str, list[tuple[int, str, int]]] = {}
        for k, player_id, pto_id, hours in segment:
            by_pto.setdefault(pto_id, []).append((k, player_id, hours))
        at = self._now()
        staged: dict[int, Staged] = {}
        holds: list[Callable[[], None]] = []
        async with self._buying:
            try:
                # Asked together: each PTO's batch depends on no other's (distinct buyers).
                answers = await self._ask_ptos(
                    [
                        (pto_id, BuyBatch(buys=tuple((p, h) for _, p, h in group), at=at))
                        for pto_id, group in by_pto.items()
                    ]
                )
                bug: BaseException | None = None
                for group, answer in zip(by_pto.values(), answers, strict=True):
                    if isinstance(answer, StagedBuys):
                        holds.append(answer.submitted)
                        for (k, _, _), one in zip(group, answer.staged, strict=True):
                            if isinstance(one, UbloxError):
                                results[k] = one
                            else:
                                staged[k] = one
                    elif isinstance(answer, UbloxError):
                        for k, _, _ in group:
                            results[k] = answer
                    elif isinstance(answer, BaseException):
                        bug = answer
                if bug is not None:
                    for one in staged.values():  # never queued: each PTO and buyer forgets it
                        one.done(StoreError(f"purchases not queued: {bug!r}"))
                    raise bug
                order = sorted(staged)
                landed: asyncio.Future[object] = asyncio.get_running_loop().create_future()

                def done(outcome: object) -> None:
                    if not landed.done():
                        landed.set_result(outcome)

                try:
                    if order:
                        events = tuple(e for k in order for e in staged[k].events)
                        await self.store.submit(Unit(events), done)
                except BaseException as exc:
                    for k in order:  # never queued: each PTO and buyer forgets it
                        staged[k].done(exc if isinstance(exc, UbloxError) else StoreError(str(exc)))
                    raise
            finally:
                for submitted in holds:
                    submitted()
        if not order:
            return
        outcome = await landed
        start = 0
        for k in order:
            one = staged[k]
            if isinstance(outcome, Committed):
                end = start + len(one.events)
                one.done(Committed(outcome.events[start:end], outcome.position))
                start = end
            else:
                one.done(outcome)
            try:
                sale = one.sale.outcome()  # the PTO's own objects, not copies: read at once
                assert isinstance(sale, Sale)
                results[k] = TokenInfo.of(sale.token)
            except UbloxError as exc:
                results[k] = exc

    async def _ask_ptos(self, asks: Sequence[tuple[str, Ask[Any]]]) -> list[object]:
        """Ask several PTOs at once, for messages whose answers do not depend on the order
        they are handled in: one answer each, in order, the error in place of one that
        failed (any error: the caller deals with every answer before raising a bug)."""
        answers: list[object] = await asyncio.gather(
            *(self._ask_pto(p, m) for p, m in asks), return_exceptions=True
        )
        return answers

    async def spend_atu(self, pto_id: str, units: int) -> PTOInfo:
        """The creator spends Agential Time Units; reaching ``atu_required`` completes the PTO
        and pays its escrow to the creator."""
        whole: int = limits.ATU_UNITS.check(units)
        at = self._now()
        outcome: AtuOutcome = await self._ask_pto(pto_id, SpendAtu(units=whole, at=at))
        return PTOInfo.of(outcome.pto)

    async def spend_atu_many(self, spends: Sequence[tuple[str, int]]) -> list[PTOInfo | UbloxError]:
        """Several ``spend_atu`` (pto_id, units): one result or error each. Each is queued
        to the store in the order given (the next is asked once its PTO queued the one
        before, so the ledger's order is the list's), none waits for the commit of the
        one before: their units share the store's batches. With several processes on one
        database they go one at a time."""
        self._check_open()
        results: list[PTOInfo | UbloxError | None] = [None] * len(spends)

        async def spend(k: int, pto_id: str, units: int, queued: anyio.Event | None) -> None:
            try:
                whole: int = limits.ATU_UNITS.check(units)
                message = SpendAtu(units=whole, at=self._now())
                outcome: AtuOutcome = await self._ptos.ask(
                    pto_id, message, timeout=self.request_timeout, handled=queued
                )
                results[k] = PTOInfo.of(outcome.pto)
            except UbloxError as exc:
                results[k] = exc
            finally:
                if queued is not None:
                    queued.set()  # (also when the ask was never handled)

        if getattr(self.store, "shared", False):
            for k, (pto_id, units) in enumerate(spends):
                try:
                    results[k] = await self.spend_atu(pto_id, units)
                except UbloxError as exc:
                    results[k] = exc
        else:
            async with anyio.create_task_group() as tg:
                for k, (pto_id, units) in enumerate(spends):
                    queued = anyio.Event()
                    tg.start_soon(spend, k, pto_id, units, queued)
                    await queued.wait()
        done = [r for r in results if r is not None]
        assert len(done) == len(spends)
        return done

    async def play(
        self, player_id: str, pto_id: str, hours: float, *, receipt: Receipt | None = None
    ) -> SessionResult:
        """Play ``hours`` in the PTO's world on the player's PTS; returns the session."""
        (result,) = await self._play(pto_id, [(player_id, hours)], receipt)
        if isinstance(result, UbloxError):
            raise result
        return result

    async def play_many(
        self, pto_id: str, sessions: Iterable[tuple[str, float]]
    ) -> list[SessionResult | UbloxError]:
        """Several players' sessions in one world, stepped together; one result or error each."""
        return await self._play(pto_id, sessions, None)

    async def _play(
        self,
        pto_id: str,
        sessions: Iterable[tuple[str, float]],
        receipt: Receipt | None,
    ) -> list[SessionResult | UbloxError]:
        requests = tuple(
            PlayRequest(player_id=player_id, hours=check_play_hours(hours), receipt=receipt)
            for player_id, hours in sessions
        )
        at = self._now()
        outcomes: list[SessionOutcome] = await self._ask_pto(pto_id, Play(requests=requests, at=at))
        results: list[SessionResult | UbloxError] = []
        for outcome in outcomes:
            if outcome.error is not None:
                assert isinstance(outcome.error, UbloxError)
                results.append(outcome.error)
                continue
            result = SessionResult(
                session_id=outcome.session_id,
                pto_id=pto_id,
                player_id=outcome.player_id,
                hours=outcome.hours,
                quality=outcome.quality,
                xUSD_earned=to_decimal(outcome.xusd),
                phase_locks=outcome.locks,
                memory_depth_added=outcome.locked_hours,
                tau_k_after=outcome.tau_k_after,
            )
            results.append(result)
        return results

    async def get_pto(self, pto_id: str) -> PTOInfo:
        pto = await self._ask_pto(pto_id, GetPTO())
        return PTOInfo.of(pto)

    async def pto_ids(self) -> list[str]:
        """Every PTO's id, in order (a store query)."""
        self._check_open()
        return await self.store.pto_ids()

    async def list_ptos(self) -> list[PTOInfo]:
        """Every PTO, in id order (a store query: no actor is woken)."""
        self._check_open()
        return [PTOInfo.of(p) for p in await self.store.load_all(PTO)]

    async def get_token(self, token_id: str) -> TokenInfo:
        self._check_open()
        token = await self.store.load_token(token_id) if isinstance(token_id, str) else None
        if token is None:
            raise UnknownToken(f"no PTS token {token_id!r}")
        return TokenInfo.of(token)

    async def tokens_of(self, player_id: str, pto_id: str) -> list[TokenInfo]:
        """The player's tokens of one PTO, in token order (store queries)."""
        self._check_open()
        await self._require_player(player_id)
        await self._require_pto(pto_id)
        tokens = await self.store.load_tokens(pto_id)
        return [TokenInfo.of(t) for t in tokens if t.holder == player_id]

    async def world(self, pto_id: str) -> dict[str, F64]:
        """A copy of the PTO's world arrays (``theta``, ``omega``)."""
        arrays = await self._ask_pto(pto_id, GetWorld())
        return {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}

    # -- time ------------------------------------------------------------------

    async def advance(self, hours: float) -> list[str]:
        """Move the clock ``hours`` (simulated clocks), step every world, fire deadlines.

        Every PTO is activated in turn (at most ``max_active`` at once) to step its
        world. Returns the PTOs that failed at their deadline (their holders refunded).
        """
        self._check_open()
        span: float = limits.ADVANCE_HOURS.check(hours)
        self.clock.advance(span)
        steps = round(span * self.params.steps_per_hour)
        if steps:
            # Worlds are independent; each writes only its own aci score.
            at = self._now()
            limiter = anyio.Semaphore(min(self._ptos.max_active, _STEP_CONCURRENCY))

            async def step(pto_id: str) -> None:
                async with limiter:
                    await self._ask_pto(pto_id, StepWorld(steps=steps, at=at))

            try:
                async with anyio.create_task_group() as tg:
                    for pto_id in await self._leased(await self.store.pto_ids()):
                        tg.start_soon(step, pto_id)
            except* ActorClosed as group:  # the engine closed mid-way: say so once
                raise ActorClosed("the engine is closed") from group
        return await self.fire_deadlines()

    async def tick(
        self,
        hours: float,
        plays: Sequence[tuple[str, str, float]],
        *,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[list[SessionResult | UbloxError], list[str]]:
        """One tick of a scenario: ``plays`` (pto_id, player_id, hours) are played *during*
        the tick's own lattice steps, then deadlines fire. Returns one result or error per
        play, in order, and the PTOs that failed at their deadline.

        The rule (ARCHITECTURE.md, "Ticks"): the clock moves ``hours`` and every world
        takes its ``round(hours × steps_per_hour)`` steps, all worlds of a shard stacked
        (``core.shard``); a session is coupled to its cell from the tick's first step for
        ``min(steps_for(hours), tick steps)`` steps and its quality is the mean coherence
        over those; its hours (tokens, play time, xUSD) are those asked. One unit of rows
        per shard: the sessions in ``plays`` order, then each world's coherence. Players
        are read and told directly (no message per session). With world leases (several
        processes on one database) each PTO plays and steps on its own, as ``play_many``
        and ``advance`` do.

        ``meanwhile``: other work of the caller's tick that neither plays nor reads what
        the sessions write (a scenario's purchases and ATU spending), run once the
        sessions are allotted, while the worlds step on a worker thread; its units come
        before the tick's in the ledger, and the tick is as if it ran first (see
        ``WorldShards.ticked``), except that the sessions are played on the PTOs and
        tokens as they were when the tick began (a PTO it funds is refused, a share it
        buys is not played on: the allotments are decided before it).
        """
        await self.settle_ticks()  # (a caller that ticked ahead before)
        results, failed = await self._tick(hours, plays, meanwhile, ahead=False)
        done: list[SessionResult | UbloxError] = []
        for result in results:
            assert result is not None and not isinstance(result, int)
            done.append(result)
        return done, failed

    async def tick_ahead(
        self,
        hours: float,
        plays: Sequence[tuple[str, str, float]],
        *,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> list[int | UbloxError]:
        """``tick`` for a checkpointed run (``Engine.open(checkpointed=True)``, the scenario
        runner): the tick's units are submitted and not waited for, so the caller's next
        tick is decided, and its physics runs, while they commit. Returns per play its
        refusal, or the phase locks of its session (decided; it lands with its unit).

        Sound because a checkpointed run fails whole: if a unit fails, every later
        ``tick_ahead``, ``settle_ticks`` and ``checkpoint`` raises its error, no held work
        is committed after it, and the run resumes from its last checkpoint. Until the
        units land, the next tick reads what they will leave from memory, the same floats
        in the same order as the store would give them: the hours each session claims on
        its tokens (``PTOActor.tick_decided``), the players' tau_k, phase and xUSD
        (``PlayerActor.ticked``), the PTOs and their hours left from their actors when
        every PTO the last tick read is active (``open_hours``), else from the store
        (whose reads queue behind the units: correct, only not overlapped).

        The deadlines this tick would fire are owed: the next ``tick_ahead`` fires them
        first thing beside its physics (before ``meanwhile``, so the ledger's order is
        the same), and ``settle_ticks`` fires them. So the caller settles (``settle_ticks``)
        before anything else writes or reads what a tick changed: a launch, a scripted
        action, metrics, a checkpoint (which settles itself), the end of the run."""
        if not self.store.hold_commits or getattr(self.store, "leases", None) is not None:
            raise InvalidInput("tick_ahead needs an engine opened for a checkpointed run")
        self._raise_ahead()
        results, _ = await self._tick(hours, plays, meanwhile, ahead=True)
        done: list[int | UbloxError] = []
        for result in results:
            assert result is not None and not isinstance(result, SessionResult)
            done.append(result)
        return done

    async def settle_ticks(self) -> None:
        """Wait until every unit of the ticks run ahead (``tick_ahead``) has landed, raise
        the first one's error if one failed, then fire the deadlines owed."""
        while self._ahead:
            await self._ahead[0].done.wait()
        self._raise_ahead()
        if self._deadlines_owed:
            self._deadlines_owed = False
            await self.fire_deadlines()

    def _raise_ahead(self) -> None:
        if self._ahead_error is not None:
            raise self._ahead_error

    async def _tick(
        self,
        hours: float,
        plays: Sequence[tuple[str, str, float]],
        meanwhile: Callable[[], Awaitable[None]] | None,
        *,
        ahead: bool,
    ) -> tuple[list[_Result], list[str]]:
        self._check_open()
        span: float = limits.ADVANCE_HOURS.check(hours)

        results: list[_Result] = [None] * len(plays)
        asked: list[tuple[int, str, str, float]] = []
        for index, (pto_id, player_id, want) in enumerate(plays):
            try:
                asked.append((index, pto_id, player_id, check_play_hours(want)))
            except UbloxError as exc:
                results[index] = exc
        if getattr(self.store, "leases", None) is not None:
            if meanwhile is not None:
                await meanwhile()
            by_pto: dict[str, list[tuple[int, str, float]]] = {}
            for index, pto_id, player_id, want in asked:
                by_pto.setdefault(pto_id, []).append((index, player_id, want))
            for pto_id, group in by_pto.items():
                played = await self.play_many(pto_id, [(p, h) for _, p, h in group])
                for (index, _, _), result in zip(group, played, strict=True):
                    results[index] = result
            failed = await self.advance(span)
            return results, failed
        at = self._now()
        steps = round(span * self.params.steps_per_hour)
        ran = False

        async def once() -> None:
            # ``meanwhile`` runs in the tick's time, before the clock moves; the deadlines
            # a tick ahead owes first (where they would have fired before it).
            nonlocal ran
            if not ran:
                ran = True
                if self._deadlines_owed:
                    self._deadlines_owed = False
                    await self.fire_deadlines()
                if meanwhile is not None:
                    await meanwhile()
                self.clock.advance(span)

        await self._play_tick(asked, results, at, steps, once, ahead)
        await once()  # (if no shard stepped)
        assert None not in results
        if ahead:
            self._deadlines_owed = True
            return results, []
        return results, await self.fire_deadlines()

    async def _play_tick(
        self,
        asked: list[tuple[int, str, str, float]],
        results: list[_Result],
        at: str,
        steps: int,
        meanwhile: Callable[[], Awaitable[None]],
        ahead: bool,
    ) -> None:
        ptos = (self._ptos_in_memory() if ahead else None) or await self.store.load_all(PTO)
        self._tick_ptos = [p.pto_id for p in ptos]
        # Beside the worlds' steps only if every PTO can be active at once: the PTOs
        # that allot stay active until the tick's unit lands, so one that ``meanwhile``
        # needed could otherwise wait for a place among them for ever. Else first, as
        # its units come first in the ledger either way.
        beside: Callable[[], Awaitable[None]] | None = meanwhile
        if len(ptos) > self._ptos.max_active:
            await meanwhile()
            beside = None
        for pto in ptos:  # every world moves with the clock: all resident for the run
            if pto.world_cdt_id is not None:
                if await self._resident(pto) is None:
                    self._ticked_worlds.add(pto.world_cdt_id)
        # The players first (an unknown one is refused before its tokens are looked at).
        known: dict[str, PlayerActor] = {}
        await self._players.get_many(player_id for _, _, player_id, _ in asked)
        for index, _, player_id, _ in asked:
            if player_id in known:
                continue
            try:
                known[player_id] = await self._players.get(player_id)
            except UbloxError as exc:
                results[index] = exc
        # Which tokens each session is played on: one ask per PTO, not per session. A PTO
        # not playable at the tick's start is refused here, as its allotment would refuse
        # it: ``meanwhile`` (run first or beside) may fund it, and the tick's sessions are
        # played on the PTOs as they were when the tick began, whichever ran first.
        start = {p.pto_id: p for p in ptos}
        by_pto: dict[str, list[tuple[int, str, float]]] = {}
        for index, pto_id, player_id, want in asked:
            if results[index] is not None:
                continue
            pto = start.get(pto_id)
            if pto is not None and pto.status not in PLAYABLE and pto.world_cdt_id in self.worlds:
                try:
                    allocate_play(pto, (), want)
                except UbloxError as exc:
                    results[index] = exc
                    continue
            by_pto.setdefault(pto_id, []).append((index, player_id, want))
        allotted: dict[int, tuple[PTO, tuple[tuple[str, float], ...]]] = {}
        holding: list[PTOActor] = []  # PTOs that stay active until their unit lands
        pto_ids = sorted(by_pto)
        # Ahead: the units' landing ends the tick for them (``_Ahead.release``).
        landing = _Ahead(self._ahead_serial + 1, holding, pto_ids) if ahead else None
        # Held from before they allot until the tick is over: one reaped or evicted meanwhile
        # would wait for the tick to passivate, and ``meanwhile`` asking it for that.
        self._ptos.hold(pto_ids)
        try:
            # An allotment reads one PTO's acknowledged tokens only: straight from an idle
            # active actor (``allot_now``), the others asked together.
            answers: list[object] = []
            asks: list[tuple[int, str, Allot]] = []
            for pto_id in pto_ids:
                allot = Allot(
                    requests=tuple(PlayRequest(player_id=p, hours=h) for _, p, h in by_pto[pto_id])
                )
                actor = self._ptos.active(pto_id)
                if actor is not None:  # (used now: ``get`` of an active one only touches it)
                    actor = await self._ptos.get(pto_id)
                answers.append(None if actor is None else actor.allot_now(allot.requests))
                if answers[-1] is None:
                    asks.append((len(answers) - 1, pto_id, allot))
            if asks:
                asked_now = await self._ask_ptos([(pto_id, allot) for _, pto_id, allot in asks])
                for (k, _, _), answer in zip(asks, asked_now, strict=True):
                    answers[k] = answer
            bug: BaseException | None = None
            for pto_id, allotment in zip(pto_ids, answers, strict=True):
                group = by_pto[pto_id]
                if isinstance(allotment, UbloxError):
                    for index, _, _ in group:
                        results[index] = allotment
                    continue
                if isinstance(allotment, BaseException):
                    bug = bug or allotment
                    continue
                assert isinstance(allotment, Allotment)
                # The actor that allotted stays (not quiet) until ``tick_over``.
                actor = self._ptos.current(pto_id)
                assert actor is not None
                holding.append(actor)
                for (index, _, _), one in zip(group, allotment.sessions, strict=True):
                    if one.error is not None:
                        assert isinstance(one.error, UbloxError)
                        results[index] = one.error
                    else:
                        allotted[index] = (allotment.pto, one.allocation)
            if bug is not None:
                raise bug
            # The players' figures, read from their actors (activated again if one was
            # passivated meanwhile), once their own units in flight have landed.
            physics: dict[int, _Figures] = {}
            # The most xUSD each player's sessions of the tick could compose (quality 1):
            # a session that could take its balance past the money limit is refused before
            # the worlds step, as ``play`` refuses it (it cannot be left out after).
            most: dict[str, int] = {}
            for index, _, player_id, want in asked:
                if index not in allotted:
                    continue
                if player_id in self._unseen:  # its row or actor lacks a session in flight
                    while self._ahead:
                        await self._ahead[0].done.wait()
                player = self._players.current(player_id) or await self._players.get(player_id)
                await player.settled()
                # As the tick sessions in flight (``tick_ahead``) leave them.
                phase, tau_k, xusd = player.figures()
                so_far = most.get(player_id, xusd)
                could = compose_xusd(want, 1.0, allotted[index][0].amplification)
                try:
                    check_credit(so_far, could, f"the xUSD a session of {player_id!r} may compose")
                except BalanceLimit as exc:
                    results[index] = exc
                    del allotted[index]
                    continue
                most[player_id] = so_far + could
                s = player.state
                physics[index] = _Figures(
                    player_id, s.position_x, s.position_y, phase, s.resonance_freq, tau_k
                )
            await self._commit_tick(
                asked, allotted, physics, results, ptos, at, steps, beside, landing
            )
        finally:
            if landing is None:
                for actor in holding:
                    actor.tick_over()
                self._ptos.unhold(pto_ids)
            else:
                self._ahead_released(landing)

    async def _commit_tick(
        self,
        asked: list[tuple[int, str, str, float]],
        allotted: dict[int, tuple[PTO, tuple[tuple[str, float], ...]]],
        physics: dict[int, _Figures],
        results: list[_Result],
        ptos: list[PTO],
        at: str,
        steps: int,
        meanwhile: Callable[[], Awaitable[None]] | None,
        landing: _Ahead | None,
    ) -> None:
        """The tick's shards: stepped, each one's unit built and committed (``landing``:
        ahead, submitted only). ``meanwhile`` (if not run already) runs while they step and
        moves the clock: the worlds' steps are stamped after it."""
        size = self.params.size
        # Sessions by shard, in ``plays`` order.
        per_shard: dict[int, list[tuple[int, int]]] = {}  # id(shard) -> (index, slot)
        shards: dict[int, Shard] = {}
        hours_of = {index: want for index, _, _, want in asked}
        for index, _, _, _ in asked:
            if index not in allotted:
                continue
            world_id = allotted[index][0].world_cdt_id
            if world_id is None or world_id not in self.worlds:
                results[index] = StoreError(f"the world of {allotted[index][0].pto_id} is gone")
                del allotted[index]
                continue
            shard, slot = self.worlds.locate(world_id)
            shards[id(shard)] = shard
            per_shard.setdefault(id(shard), []).append((index, slot))
        for shard in self.worlds.shards:
            shards.setdefault(id(shard), shard)
        pto_of = {p.world_cdt_id: p.pto_id for p in ptos if p.world_cdt_id is not None}
        tau: dict[str, float] = {}  # a player's tau_k as its sessions of this tick leave it
        work: list[tuple[Shard, list[tuple[int, int]], Sessions]] = []
        for key in sorted(shards, key=lambda k: self.worlds.shards.index(shards[k])):
            shard = shards[key]
            rows = per_shard.get(key, [])
            # ``world.cell_of`` for all at once (floor, then a modulo of the divisor's sign).
            xs = np.array([physics[i].position_x for i, _ in rows], dtype=np.float64)
            ys = np.array([physics[i].position_y for i, _ in rows], dtype=np.float64)
            sessions = Sessions(
                slot=np.array([slot for _, slot in rows], dtype=np.int64),
                cells_y=np.floor(ys).astype(np.int64) % size,
                cells_x=np.floor(xs).astype(np.int64) % size,
                phase=np.array([physics[i].phase for i, _ in rows], dtype=np.float64),
                freq=np.array([physics[i].resonance_freq for i, _ in rows], dtype=np.float64),
                tau_k=np.array([physics[i].tau_k for i, _ in rows], dtype=np.float64),
                steps=np.array(
                    [min(self.params.steps_for(hours_of[i]), steps) for i, _ in rows],
                    dtype=np.int64,
                ),
            )
            if self.tick_observer is not None:
                self.tick_observer(shard, steps, sessions)
            work.append((shard, rows, sessions))
        # One unit per shard, in order; a shard whose unit does not commit is put back
        # (the ledger did not move: nor the worlds). Remote shards step all at once.
        ticked = self.worlds.ticked(
            [(shard, sessions) for shard, _, sessions in work], steps, meanwhile
        )
        async with aclosing(ticked):
            async for k, outcome in ticked:
                shard, rows, _ = work[k]
                end = self._now()
                events = self._tick_events(rows, allotted, physics, hours_of, outcome, tau, at)
                for slot, world_id in sorted(enumerate(shard.ids), key=lambda s: s[1]):
                    if world_id in pto_of:
                        events.append(
                            ev.WorldStepped(
                                at=end, pto_id=pto_of[world_id], aci=float(outcome.aci[slot])
                            )
                        )
                if landing is not None:
                    await self._submit_ahead(Unit(tuple(events)), rows, results, landing)
                    continue
                committed = await self._commit_unit(Unit(tuple(events)))
                self._tick_landed(committed, rows, results)
                if not self.store.hold_commits:  # (held: every world goes with checkpoints)
                    self.worlds.changed(shard, self.store.world_changed)

    def _tick_events(
        self,
        rows: list[tuple[int, int]],
        allotted: dict[int, tuple[PTO, tuple[tuple[str, float], ...]]],
        physics: dict[int, _Figures],
        hours_of: dict[int, float],
        outcome: TickOutcome,
        tau: dict[str, float],
        at: str,
    ) -> list[ev.Event]:
        """The sessions' events, decided as a player actor decides them (``ApplySession``).

        The outcome's arrays are read as lists once (the same floats: ``tolist`` and
        ``float`` of an element both give the float64's value), and the events made
        without their frozen ``__init__`` (``_maker``): hundreds per tick."""
        events: list[ev.Event] = []
        append = events.append
        per_hour = self.params.steps_per_hour
        quality = outcome.quality.tolist()
        locks = outcome.locks.tolist()
        phase = outcome.phase.tolist()
        coherence = outcome.coherence.tolist()
        locked = outcome.locked_steps.tolist()
        aci = outcome.aci.tolist()
        for k, (index, slot) in enumerate(rows):
            pto, allocation = allotted[index]
            player = physics[index]
            player_id = player.player_id
            hours = hours_of[index]
            q = quality[k]
            xusd = compose_xusd(hours, q, pto.amplification)
            shares = split_by_hours(xusd, allocation)
            after = tau_k_after(tau.get(player_id, player.tau_k), q)
            tau[player_id] = after
            n = locks[k]
            append(
                _session_played(
                    at,
                    0,  # seq
                    pto.pto_id,
                    player_id,
                    0,  # session_id: the store numbers it
                    hours,
                    q,
                    to_decimal(xusd),
                    n,
                    after,
                    phase[k],
                    coherence[k],
                    float(locked[k]) / per_hour,
                    aci[slot],
                    tuple((t, h, x) for (t, h), x in zip(allocation, shares, strict=True)),
                )
            )
            if n:
                append(_phase_lock(at, 0, pto.pto_id, player_id, n))
        return events

    async def _commit_unit(self, unit: Unit) -> Committed:
        # The store's own commit: ``_submitted`` resolves with None (registration keeps
        # no ``Committed``), and a tick needs the committed events and position.
        return await self.store.commit(unit)

    async def _submit_ahead(
        self, unit: Unit, rows: list[tuple[int, int]], results: list[_Result], landing: _Ahead
    ) -> None:
        """A tick unit of ``tick_ahead``: its sessions told to their PTOs and players as in
        flight, each play's result its phase locks, the unit submitted, not waited for."""
        self._raise_ahead()  # decided on a unit that failed: not submitted
        serial = landing.serial
        if not landing.units:
            self._ahead_serial = serial
            self._ahead.append(landing)
        sessions = [e for e in unit.events if type(e) is ev.SessionPlayed]
        by_pto: dict[str, list[ev.SessionPlayed]] = {}
        for (index, _), session in zip(rows, sessions, strict=True):
            results[index] = session.phase_locks
            by_pto.setdefault(session.pto_id, []).append(session)
            player = self._players.current(session.player_id)
            if player is None:
                self._unseen.add(session.player_id)
            else:  # (loaded before the unit is queued: its row lacks the session)
                player.ticked(serial, session)
                landing.players.append(player)
        for pto_id, played in by_pto.items():
            actor = self._ptos.current(pto_id)
            assert actor is not None, f"{pto_id} allotted and passivated in its tick"
            actor.tick_decided(serial, played)
        landing.units += 1
        landing.open += 1

        def done(outcome: object) -> None:
            if isinstance(outcome, Committed):
                self._tick_landed(outcome, rows, None, serial)
            else:
                if self._ahead_error is None:
                    self._ahead_error = (
                        outcome
                        if isinstance(outcome, BaseException)
                        else StoreError(f"a tick unit came back as {outcome!r}")
                    )
                    log.error("engine.tick_unit_failed", error=str(self._ahead_error))
                for player in landing.players:
                    player.tick_dropped(serial)
                for pto_id in by_pto:
                    if (actor := self._ptos.current(pto_id)) is not None:
                        actor.tick_dropped(serial)
            self._ahead_released(landing)

        try:
            await self.store.submit(unit, done)
        except BaseException as exc:
            done(exc)
            raise

    def _ahead_released(self, landing: _Ahead) -> None:
        """The tick ahead's submissions are over, or one of its units landed: once both,
        its PTOs may passivate and the tick is no longer ahead."""
        landing.open -= 1
        if landing.open:
            return
        for actor in landing.holding:
            actor.tick_over()
        self._ptos.unhold(landing.held)
        if landing in self._ahead:
            self._ahead.remove(landing)
        if not self._ahead:
            self._unseen.clear()
        landing.done.set()

    def _known_ptos(self) -> list[PTOActor] | None:
        """The actors of every PTO the last tick read, by id, if each is active (then
        their acknowledged state is the store's, bar the tick units in flight, which they
        count); else None."""
        if self._tick_ptos is None:
            return None
        actors: list[PTOActor] = []
        for pto_id in self._tick_ptos:
            actor = self._ptos.current(pto_id)
            if actor is None:
                return None
            actors.append(actor)
        return actors

    def _ptos_in_memory(self) -> list[PTO] | None:
        """For a tick ahead: the PTOs from their actors, as the store would list them for
        the tick (what the tick reads of them, status, world, amplification, no tick unit
        changes; a PTO whose deadline is owed is still FUNDING here, FAILED there: not
        playable either way), or None (read the store)."""
        actors = self._known_ptos()
        if actors is None:
            return None
        return [dataclasses.replace(actor.state) for actor in actors]

    async def open_hours(self, statuses: Sequence[str]) -> dict[str, dict[str, float]]:
        """Hours left per PTO among ``statuses`` (playable ones) and per holder, as
        ``Backend.open_hours``. Between ticks ahead (``tick_ahead``) from the PTOs' actors
        when every PTO is active and none has a unit of its own in flight (their tokens
        with the tick units in flight counted, the same floats): the store's read would
        wait for those units."""
        if self._ahead or self._deadlines_owed:
            actors = self._known_ptos()
            if actors is not None:
                found: dict[str, dict[str, float]] = {}
                for actor in sorted(actors, key=lambda a: a.state.pto_id):
                    if actor.state.status not in statuses:
                        continue
                    left = actor.open_hours()
                    if left is None:
                        break
                    if left:
                        found[actor.state.pto_id] = left
                else:
                    return found
        return await self.store.open_hours(statuses)

    def _tick_landed(
        self,
        committed: Committed,
        rows: list[tuple[int, int]],
        results: list[_Result] | None,
        serial: int | None = None,
    ) -> None:
        """A shard's unit committed: players and PTOs learn it, each session its result
        (``results``; ahead, None: decided already). ``serial``: the ahead unit's."""
        position = committed.position
        by_pto: dict[str, list[ev.Event]] = {}
        sessions: list[ev.SessionPlayed] = []
        for event in committed.events:
            if type(event) is ev.SessionPlayed:
                sessions.append(event)
            by_pto.setdefault(getattr(event, "pto_id", ""), []).append(event)
        for (index, _), s in zip(rows, sessions, strict=True):
            self._session_landed(s, position, serial)
            if results is None:
                continue
            results[index] = _session_result(
                s.session_id,
                s.pto_id,
                s.player_id,
                s.hours,
                s.quality,
                s.xUSD_earned,
                s.phase_locks,
                s.memory_depth_added,
                s.tau_k,
            )
        for pto_id, events in by_pto.items():
            if (actor := self._ptos.current(pto_id)) is not None:
                actor.tick_landed(events, serial)

    def _session_landed(
        self, session: ev.SessionPlayed, position: int, serial: int | None = None
    ) -> None:
        """As ``_credit``, for a tick's session: the active player applies it."""
        actor = self._players.current(session.player_id)
        if actor is not None:
            actor.landed(session, position, serial)
        elif (early := self._early_credits.get(session.player_id)) is not None:
            early.append((session, position))

    async def _leased(self, pto_ids: list[str]) -> list[str]:
        """The worlds this process steps: all, unless several processes share the store
        (then those whose lease it holds; a world just taken over, or lost, is reloaded
        before its next command; plays take the lease themselves, in the PTO actor)."""
        leases = getattr(self.store, "leases", None)
        if leases is None:
            return pto_ids
        before = leases.held
        held, taken = await leases.acquire(pto_ids)
        # Taken: another process stepped it since. Lost: another process steps it now,
        # so this copy is not stepped (nor saved: ``SAVE_LEASED_WORLD``) and reloads.
        for pto_id in taken | (before - held):
            if (actor := self._ptos.current(pto_id)) is not None:
                actor.mark_stale()
        return [p for p in pto_ids if p in held]

    async def fire_deadlines(self) -> list[str]:
        """Fail every PTO past its deadline (in id order, so the ledger's order is stable).

        The store finds them; only those are activated."""
        self._check_open()
        at = self._now()
        failed: list[str] = []
        for pto_id in await self.store.ptos_past_deadline(at):
            if await self._ask_pto(pto_id, CheckDeadline(at=at)):
                failed.append(pto_id)
        return failed

    def mailbox_depths(self) -> dict[str, list[int]]:
        """Each active actor's mailbox depth by kind (players, ptos), for a server's metrics."""
        return {
            "player": [a.mailbox_depth() for a in self._players.actors()],
            "pto": [a.mailbox_depth() for a in self._ptos.actors()],
        }

    # -- the store -------------------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]:
        self._check_open()
        return await self.store.stats()

    async def backup(self, name: str | None = None) -> Path:
        self._check_open()
        return await self.store.create_backup(name)

    async def export_json(self, path: Path | str | None = None) -> Path:
        self._check_open()
        return await self.store.export_to_json(path)

    def events(self, buffer: int = 1000) -> Subscription:
        """Domain events as they commit: ``async with engine.events() as events: async for e in events``.

        Each carries its ``seq`` in the event log, in commit order. A subscriber that
        falls ``buffer`` events behind loses events (never slowing the engine) and then
        receives an ``EventsDropped`` with the count and the ``since`` to read them back
        with ``store.events_after``."""
        self._check_open()
        return self._bus.subscribe(buffer)

    @property
    def events_dropped(self) -> int:
        """Events that slow subscribers lost so far (each subscriber counted apart)."""
        return self._bus.dropped_total

    @property
    def last_event_seq(self) -> int:
        """The sequence number of the newest event committed (0 before the first)."""
        return self._bus.last_seq

    async def checkpoint(self, version: int, run: RunRecord | None = None) -> None:
        """Make everything so far durable as checkpoint ``version``, with the scenario
        ``run``'s progress: the worlds' arrays first (versioned), then one transaction
        with the run record and, in checkpointed mode, all held work.

        The worlds written are those of active PTOs and those the store holds (launched
        or passivated since the last checkpoint); every other world's file is current."""
        self._check_open()
        await self.settle_ticks()  # every unit of the ticks ahead, or their error
        await self._ptos.wait_passivations()
        # Every resident world (active PTOs' and those a scenario's ticks hold).
        writes = tuple(WorldWrite(w, self.worlds.arrays(w)) for w in self.worlds.ids())
        await self.store.checkpoint(Checkpoint(version, writes, run))

    async def sync(self) -> None:
        """Wait until every write queued so far is durable (a round trip to the store)."""
        self._check_open()
        await self.store.commit(Unit(()))


class _Ahead:
    """A tick of ``Engine.tick_ahead`` whose units have not all landed."""

    def __init__(self, serial: int, holding: list[PTOActor], held: list[str]) -> None:
        self.serial = serial
        self.holding = holding  # PTOs that allotted: active until it is over
        self.held = held  # the PTOs it holds in the directory until then
        self.players: list[PlayerActor] = []  # told of its sessions (``ticked``)
        self.units = 0  # submitted
        self.open = 1  # its submissions (until over) and each unit in flight
        self.done = anyio.Event()


class _PlayersPort:
    """How actors reach players: the engine's player directory (``actors.player.Players``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def check(self, player_id: str) -> None:
        await self._engine._players.get(player_id)

    async def ask(
        self, player_id: str, message: Ask[R], *, handled: anyio.Event | None = None
    ) -> R:
        return await self._engine._players.ask(player_id, message, handled=handled)

    def reserve_now(self, player_id: str, amount: int, pto_id: str) -> Reservation | None:
        actor = self._engine._players.active(player_id)  # not activating or passivating
        return None if actor is None else actor.reserve_now(amount, pto_id)

    def settle(self, player_id: str, ticket: int, committed: bool) -> None:
        actor = self._engine._players.current(player_id)
        assert actor is not None, "a player with an open reservation is not dropped"
        actor.settle(ticket, committed)

    def credit(self, player_id: str, usd: int, position: int) -> None:
        self._engine._credit(player_id, usd, position)
