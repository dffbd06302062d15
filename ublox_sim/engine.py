"""The Engine: the embeddable face of ublox_sim.

    async with Engine.open(home) as engine:
        await engine.register_player("alice", usd_obbba=Decimal("5000"))
        token = await engine.buy_pts("alice", "pto_harmonic_001", 40)

It owns an actor system (one task group: a persistence actor, one actor per
player and per PTO, the CDT flusher) and keeps the ledger true: every balance
change is committed with its ``transactions`` row before the call returns, and a
refusal (``InsufficientFunds``, ``SharesUnavailable`` ...) changes nothing.
Amounts go in as major units (``Decimal``, ``int``, ``str`` or ``float``; a float
is read by its shortest repr) and come back as exact ``Decimal``.
``Engine.open`` can also run inside a host's task group (``task_group=tg``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import numpy as np
from anyio.abc import TaskGroup

from .actors.messages import (
    AtuOutcome,
    Buy,
    CheckDeadline,
    Deposit,
    GetPlayer,
    GetPTO,
    GetTokens,
    GetWorld,
    Play,
    PlayRequest,
    Sale,
    SendTransfer,
    SessionOutcome,
    SpendAtu,
    StepWorld,
)
from .actors.player import PlayerActor
from .actors.pto import PTOActor
from .actors.runtime import ActorSystem
from .core import events as ev
from .core import limits
from .core.clock import Clock, WallClock
from .core.economy import check_hours, check_play_hours, funding_goal
from .core.errors import (
    ActorClosed,
    AlreadyExists,
    CorruptCdtFile,
    InvalidInput,
    UbloxError,
    UnitRejected,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
)
from .core.events import EventBus, Subscription
from .core.ids import check_file_name, check_id
from .core.logsetup import get_logger
from .core.money import Amount, to_cents, to_decimal
from .core.records import FUNDING, PTO, Player, PTSToken, iso
from .core.tasks import joined_or_owned
from .core.views import PlayerInfo, PTOInfo, SessionResult, TokenInfo
from .core.world import F64, WorldParams, check_world, new_world
from .store.backend import Backend, Checkpoint, Receipt, RunRecord, Unit, WorldWrite
from .store.home import Home, world_id_for
from .store.sqlite.backend import SqliteBackend
from .store.sqlite.writer import Synchronous

log = get_logger(__name__)


def _registered(player: Player) -> ev.PlayerRegistered:
    return ev.PlayerRegistered(
        at=player.created_at,
        player_id=player.player_id,
        usd_obbba=to_decimal(player.usd_obbba_balance),
        record=dataclasses.replace(player),
    )


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
        self._players: dict[str, PlayerActor] = {}
        self._ptos: dict[str, PTOActor] = {}
        self._token_pto: dict[str, str] = {}
        self._reserved: set[str] = set()
        self._bus: EventBus = store.bus
        self._state: Literal["opened", "closing", "closed"] = "opened"

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        home: Path | str | Home | None = None,
        *,
        seed: int | None = None,
        clock: Clock | None = None,
        world: WorldParams | None = None,
        synchronous: Synchronous = "NORMAL",
        flush_interval: float = 0.5,
        request_timeout: float = 60.0,
        task_group: TaskGroup | None = None,
        checkpointed: bool = False,
    ) -> AsyncIterator[Engine]:
        """Open the store at ``home`` (default ``$UBLOX_HOME`` or ``~/.ublox``), restore
        every actor from it, and close everything cleanly (drained, committed, flushed)
        on exit. Pass ``task_group`` to run the actors in a host's own task group.

        ``checkpointed=True`` (scenario runs) holds every write in one open transaction
        until ``checkpoint()`` commits it with the worlds' versioned files: a crash then
        always reopens at the last checkpoint, never between two."""
        params = check_world(world or WorldParams())  # before anything is opened
        resolved = home if isinstance(home, Home) else Home.resolve(home)
        clock = clock or WallClock()

        async with joined_or_owned(task_group) as tg:
            store = SqliteBackend(
                resolved,
                synchronous=synchronous,
                flush_interval=flush_interval,
                clock=clock,
                hold_commits=checkpointed,
            )
            await store.start(tg)
            engine = cls(
                store,
                ActorSystem(tg),
                seed=seed,
                clock=clock,
                params=params,
                request_timeout=request_timeout,
            )
            try:
                await engine._restore()
                yield engine
            finally:
                await engine.aclose()

    async def _restore(self) -> None:
        """Rebuild every actor from the store (a reopened engine sees the same state)."""
        _, self._bus.last_seq = await self.store.event_log_span()
        for player in await self.store.load_all(Player):
            self._spawn_player(player)
        tokens: dict[str, list[PTSToken]] = {}
        for token in await self.store.load_all(PTSToken):
            tokens.setdefault(token.game_id, []).append(token)
            self._token_pto[token.token_id] = token.game_id
        for pto in await self.store.load_all(PTO):
            world: dict[str, F64] | None = None
            error: str | None = None
            if pto.world_cdt_id:
                try:
                    arrays = await self.store.load_world(pto.world_cdt_id)
                    world = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
                except CorruptCdtFile as exc:
                    # One bad world must not keep the rest of the store from opening.
                    error = str(exc)
                    log.error("engine.world_unavailable", pto_id=pto.pto_id, error=error)
            self._spawn_pto(pto, tokens.get(pto.pto_id, []), world, error)

    async def aclose(self) -> None:
        """Drain PTO actors, then player actors, then commit and close the store. Idempotent."""
        if self._state != "opened":
            return
        self._state = "closing"
        with anyio.CancelScope(shield=True):
            try:
                await self.system.drain(list(self._ptos.values()))
                await self.system.drain(list(self._players.values()))
            finally:
                self._bus.close()
                await self.store.aclose()
                self._state = "closed"

    def _check_open(self) -> None:
        if self._state != "opened":
            raise ActorClosed("the engine is closed")

    def _spawn_player(self, player: Player) -> PlayerActor:
        actor = PlayerActor(player, self.store, players=self._player)
        self.system.spawn(actor)
        self._players[player.player_id] = actor
        return actor

    def _spawn_pto(
        self,
        pto: PTO,
        tokens: list[PTSToken],
        world: dict[str, F64] | None,
        error: str | None = None,
    ) -> PTOActor:
        actor = PTOActor(
            pto,
            tokens,
            world,
            params=self.params,
            backend=self.store,
            players=self._player,
            world_error=error,
        )
        self.system.spawn(actor)
        self._ptos[pto.pto_id] = actor
        return actor

    def _player(self, player_id: str) -> PlayerActor:
        try:
            return self._players[player_id]
        except (KeyError, TypeError):
            raise UnknownPlayer(f"no player {player_id!r}") from None

    def _pto(self, pto_id: str) -> PTOActor:
        try:
            return self._ptos[pto_id]
        except (KeyError, TypeError):
            raise UnknownPTO(f"no PTO {pto_id!r}") from None

    def rng(self, kind: str, ident: str) -> np.random.Generator:
        """A generator for one entity, derived from the engine's seed and the entity's id,
        so draws do not depend on the order entities were created in."""
        key = int.from_bytes(hashlib.sha256(f"{kind}:{ident}".encode()).digest()[:8], "big")
        return np.random.default_rng(np.random.SeedSequence(self._entropy, spawn_key=(key,)))

    def _now(self) -> str:
        return iso(self.clock.now())

    async def _ask(self, actor: PlayerActor | PTOActor, message: Any) -> Any:  # typed by callers
        self._check_open()
        return await actor.ask(message, timeout=self.request_timeout)

    def _reserve(self, ident: str) -> None:
        if ident in self._players or ident in self._ptos or ident in self._reserved:
            raise AlreadyExists(f"{ident!r} is already taken by a player or PTO")
        self._reserved.add(ident)

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
        self._reserve(player_id)
        try:
            await self._commit_player(player)
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
        is retried one player at a time, so one bad row refuses only its player."""
        self._check_open()
        prepared: list[Player | UbloxError] = []
        for player_id, usd, tau, freq in players:
            try:
                player = self._new_player(player_id, usd, tau, freq, None, None)
                self._reserve(player_id)
                prepared.append(player)
            except UbloxError as exc:
                prepared.append(exc)
        results: list[PlayerInfo | UbloxError] = [
            item if isinstance(item, UbloxError) else PlayerInfo.of(item) for item in prepared
        ]
        valid = [(i, p) for i, p in enumerate(prepared) if isinstance(p, Player)]
        try:
            for start in range(0, len(valid), limits.REGISTER_UNIT):
                # Shielded: a cancellation lands between units, never between a unit's
                # commit and its players' actors.
                with anyio.CancelScope(shield=True):
                    await self._register_unit(valid[start : start + limits.REGISTER_UNIT], results)
        finally:
            for _, player in valid:
                self._reserved.discard(player.player_id)
        return results

    async def _register_unit(
        self, chunk: list[tuple[int, Player]], results: list[PlayerInfo | UbloxError]
    ) -> None:
        try:
            await self.store.commit(Unit(tuple(_registered(p) for _, p in chunk)))
        except UnitRejected:
            for index, player in chunk:
                try:
                    await self.store.commit(Unit((_registered(player),)))
                except UbloxError as exc:
                    results[index] = exc
                else:
                    self._spawn_player(player)
            return
        for _, player in chunk:
            self._spawn_player(player)

    def _new_player(
        self,
        player_id: str,
        usd_obbba: Amount,
        tau_k: float,
        resonance_freq: float | None,
        position: tuple[float, float] | None,
        phase: float | None,
    ) -> Player:
        check_id(player_id, "player_id")
        cents = to_cents(usd_obbba, what="usd_obbba")
        tau = limits.TAU_K.check(tau_k)
        rng = self.rng("player", player_id)
        size = self.params.size
        if position is not None and (not isinstance(position, tuple | list) or len(position) != 2):
            raise InvalidInput(f"position must be an (x, y) pair, got {position!r}")
        x, y = position if position is not None else tuple(rng.uniform(0, size, 2))
        return Player(
            player_id=player_id,
            position_x=limits.POSITION.up_to(size).check(x, "position x"),
            position_y=limits.POSITION.up_to(size).check(y, "position y"),
            phase=limits.PHASE.check(phase)
            if phase is not None
            else float(rng.uniform(limits.PHASE.min, limits.PHASE.max)),
            tau_k=tau,
            resonance_freq=limits.RESONANCE_FREQ.check(resonance_freq)
            if resonance_freq is not None
            else float(rng.normal(self.params.omega_mean, self.params.omega_spread)),
            usd_obbba_balance=cents,
            created_at=self._now(),
        )

    async def _commit_player(self, player: Player) -> None:
        # Shielded: a caller cancelled while its row commits must still get its actor.
        with anyio.CancelScope(shield=True):
            await self.store.commit(Unit((_registered(player),)))
            self._spawn_player(player)

    async def deposit(
        self, player_id: str, amount: Amount, *, receipt: Receipt | None = None
    ) -> PlayerInfo:
        """Add USD-OBBBA. A ``receipt`` (every money-moving call takes one) commits in the
        operation's own unit: a server stores its idempotency key there."""
        cents = to_cents(amount, allow_zero=False)
        at = self._now()
        await self._ask(self._player(player_id), Deposit(amount=cents, at=at, receipt=receipt))
        return await self.get_player(player_id)

    async def transfer(
        self, from_id: str, to_id: str, amount: Amount, *, receipt: Receipt | None = None
    ) -> PlayerInfo:
        """Move USD-OBBBA between two players; returns the sender."""
        cents = to_cents(amount, allow_zero=False)
        source = self._player(from_id)
        self._player(to_id)
        if from_id == to_id:
            raise InvalidInput("transfer to oneself")
        at = self._now()
        await self._ask(source, SendTransfer(to_id=to_id, amount=cents, at=at, receipt=receipt))
        return await self.get_player(from_id)

    async def get_player(self, player_id: str) -> PlayerInfo:
        player = await self._ask(self._player(player_id), GetPlayer())
        return PlayerInfo.of(player)

    def player_ids(self) -> list[str]:
        return sorted(self._players)

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
        self._player(creator_id)
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
        self._reserve(pto_id)
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
            with anyio.CancelScope(shield=True):  # as in _commit_player
                await self.store.commit(Unit((launched,), worlds=(WorldWrite(world_id, world),)))
                self._spawn_pto(pto, [], world)
        finally:
            self._reserved.discard(pto_id)
        return PTOInfo.of(pto)

    async def buy_pts(
        self, player_id: str, pto_id: str, hours: int, *, receipt: Receipt | None = None
    ) -> TokenInfo:
        """Buy ``hours`` PTS; the purchase price moves into the PTO's escrow."""
        whole = check_hours(hours)
        actor = self._pto(pto_id)
        self._player(player_id)
        at = self._now()
        sale: Sale = await self._ask(
            actor, Buy(player_id=player_id, hours=whole, at=at, receipt=receipt)
        )
        self._token_pto[sale.token.token_id] = pto_id
        return TokenInfo.of(sale.token)

    async def spend_atu(self, pto_id: str, units: int) -> PTOInfo:
        """The creator spends Agential Time Units; reaching ``atu_required`` completes the PTO
        and pays its escrow to the creator."""
        whole: int = limits.ATU_UNITS.check(units)
        at = self._now()
        outcome: AtuOutcome = await self._ask(self._pto(pto_id), SpendAtu(units=whole, at=at))
        return PTOInfo.of(outcome.pto)

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
        outcomes: list[SessionOutcome] = await self._ask(
            self._pto(pto_id), Play(requests=requests, at=at)
        )
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
        pto = await self._ask(self._pto(pto_id), GetPTO())
        return PTOInfo.of(pto)

    def pto_ids(self) -> list[str]:
        return sorted(self._ptos)

    async def list_ptos(self) -> list[PTOInfo]:
        return [await self.get_pto(pto_id) for pto_id in self.pto_ids()]

    async def get_token(self, token_id: str) -> TokenInfo:
        try:
            pto_id = self._token_pto.get(token_id)
        except TypeError:  # an unhashable "id": no such token, like any other lookup
            pto_id = None
        if pto_id is None:
            raise UnknownToken(f"no PTS token {token_id!r}")
        tokens: list[PTSToken] = await self._ask(self._pto(pto_id), GetTokens())
        for token in tokens:
            if token.token_id == token_id:
                return TokenInfo.of(token)
        raise UnknownToken(f"no PTS token {token_id!r}")

    async def tokens_of(self, player_id: str, pto_id: str) -> list[TokenInfo]:
        self._player(player_id)
        tokens: list[PTSToken] = await self._ask(self._pto(pto_id), GetTokens(player_id=player_id))
        return [TokenInfo.of(t) for t in tokens]

    async def world(self, pto_id: str) -> dict[str, F64]:
        """A copy of the PTO's world arrays (``theta``, ``omega``)."""
        arrays: dict[str, F64] = await self._ask(self._pto(pto_id), GetWorld())
        return arrays

    # -- time ------------------------------------------------------------------

    async def advance(self, hours: float) -> list[str]:
        """Move the clock ``hours`` (simulated clocks), step every world, fire deadlines.

        Returns the PTOs that failed at their deadline (their holders refunded).
        """
        self._check_open()
        span: float = limits.ADVANCE_HOURS.check(hours)
        self.clock.advance(span)
        steps = round(span * self.params.steps_per_hour)
        if steps:
            # Worlds are independent; each writes only its own aci score.
            at = self._now()
            async with anyio.create_task_group() as tg:
                for pto_id in self.pto_ids():
                    tg.start_soon(self._ask, self._ptos[pto_id], StepWorld(steps=steps, at=at))
        return await self.fire_deadlines()

    async def fire_deadlines(self) -> list[str]:
        """Fail every PTO past its deadline (in id order, so the ledger's order is stable)."""
        at = self._now()
        failed: list[str] = []
        for pto_id in self.pto_ids():
            actor = self._ptos[pto_id]
            if actor.state.status != FUNDING:
                continue
            if await self._ask(actor, CheckDeadline(at=at)):
                failed.append(pto_id)
        return failed

    def mailbox_depths(self) -> dict[str, list[int]]:
        """Each actor's mailbox depth by kind (players, ptos), for a server's metrics."""
        return {
            "player": [a.mailbox_depth() for a in self._players.values()],
            "pto": [a.mailbox_depth() for a in self._ptos.values()],
        }

    # -- synchronous reads for runners ----------------------------------------

    def peek_player(self, player_id: str) -> Player:
        """A copy of the player's state without a round trip. Call ``settle()`` first if
        credits told by other actors must be included."""
        return dataclasses.replace(self._player(player_id).state)

    def peek_pto(self, pto_id: str) -> PTO:
        return dataclasses.replace(self._pto(pto_id).state)

    def peek_tokens(self, pto_id: str) -> list[PTSToken]:
        return [dataclasses.replace(t) for t in self._pto(pto_id).tokens.values()]

    def peek_hours_left(self, pto_id: str) -> dict[str, float]:
        """Hours left to play per holder of the PTO's tokens (no copies: for runners)."""
        left: dict[str, float] = {}
        for token in self._pto(pto_id).tokens.values():
            room = token.hours_committed - token.hours_played
            if room > 1e-9:
                left[token.holder] = left.get(token.holder, 0.0) + room
        return left

    async def settle(self) -> None:
        """Wait until every notification between actors (credits) has been applied."""
        for actor in self._players.values():
            if actor.unsettled:
                await self._ask(actor, GetPlayer())

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
        with the run record and, in checkpointed mode, all held work."""
        self._check_open()
        worlds: list[WorldWrite] = []
        for pto_id in self.pto_ids():
            actor = self._ptos[pto_id]
            world_id = actor.state.world_cdt_id
            if actor.world is None or world_id is None:
                continue
            arrays: dict[str, F64] = await self._ask(actor, GetWorld())
            worlds.append(WorldWrite(world_id, arrays))
        await self.store.checkpoint(Checkpoint(version, tuple(worlds), run))

    async def sync(self) -> None:
        """Wait until every write queued so far is durable (a round trip to the store)."""
        self._check_open()
        await self.store.commit(Unit(()))
