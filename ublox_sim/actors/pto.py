"""The PTO actor: owns one PTO's funding state, its PTS tokens and its world.

Like the player actor it decides, queues the unit of events and applies the events
when the store acknowledges them (see ``actors.player``). Purchases are pipelined:
each is decided against the *pending* state (acknowledged plus the purchases in
flight), which only ever holds fewer shares than are really left, so a purchase that
fails can only have made a later refusal too strict. The purchase that would sell
the last share, and every other command (ATU, deadlines, world steps, sessions), first
waits until nothing is in flight and decides on acknowledged state. A purchase is
decided here (shares left, the token); the buyer's actor only sets the price aside
(``Reserve``) and hears whether the unit committed (``PlayerActor.settle``), so two buyers can
never both get the last share. An active buyer sets it aside at once, without a trip
through its mailbox (``Players.reserve_now``): a hot PTO decides the purchases queued for
it one after the other without waiting, and their units share the store's batches.
``BuyBatch`` (``Engine.buy_many``) decides several purchases without queueing them: the
engine puts every PTO's purchases into ONE unit, in its caller's order; they commit or
fail together, so within the batch the last share needs no wait, and the PTO holds its
other messages until that unit is queued (its units reach the store in decision order).

Sessions of many players in one world are stepped together (one array operation per
step); each player commits its own session (its physics move from its own state),
and the PTO applies the committed sessions to its tokens and pool. A hot world's Plays
are pipelined (``_play``): each is decided on the theta the Plays in flight leave, and
their units join one ``Chain`` of the store, which commits only a prefix of it; a
refused session's successors are decided again, so what commits is a serial run.

Several processes on one database (``backend.shared``): the state is a cache. Every
unit's rows check what the decision assumed (``store.sqlite.rows``' guards); a unit the
database refuses as a ``Conflict`` marks the actor stale, and its next command first
reloads the PTO, its tokens and its world from the store (the caller retries: the
engine). Reads of a shared PTO reload it first when nothing is in flight. A session
steps the world, so on a shared store it first takes the world's lease (or is refused
with ``WorldLeased``: another live process steps it), as ``Engine.advance`` does.

World ownership: the arrays live in the engine's world shards (``core.shard.WorldShards``,
many worlds stacked), the one owner the scenario's ticks step too; this actor reads
and writes its world there, and it reaches the store only through
``Backend.world_changed``, units and checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, assert_never

import anyio
import numpy as np

from ..core import events as ev
from ..core.economy import (
    allocate_play,
    apply_to_pto,
    compose_xusd,
    deadline_failure,
    purchase,
    spend_atu,
    split_by_hours,
)
from ..core.errors import (
    CONFLICT_RETRIES,
    ActorBroken,
    ActorClosed,
    Conflict,
    StoreError,
    UbloxError,
    UnitRejected,
    WorldLeased,
    conflict_of,
)
from ..core.money import to_decimal
from ..core.records import PTO, PTSToken, parse_iso
from ..core.shard import WorldShards
from ..core.world import F64, WorldParams, cell_of, order_parameter, play_steps, step_world
from ..store.backend import Backend, Chain, Committed, Receipt, Unit
from .messages import (
    Allot,
    Allotment,
    Allotted,
    ApplySession,
    AtuOutcome,
    Buy,
    BuyBatch,
    CheckDeadline,
    GetPhysics,
    GetPTO,
    GetTokens,
    GetWorld,
    Physics,
    Play,
    PlayRequest,
    PTOMessage,
    Reserve,
    Sale,
    SessionOutcome,
    SpendAtu,
    Staged,
    StagedBuys,
    StepWorld,
)
from .player import Players
from .runtime import Actor, InFlight, Later, answer_when_done

if TYPE_CHECKING:  # PostgreSQL's module: imported only when a shared store has leases
    from ..store.postgres.lease import WorldLeases

Valid = tuple[int, PlayRequest, tuple[tuple[str, float], ...]]


def _token_number(token_id: str) -> int:
    """``<pto>-pts-000042`` -> 42 (0 for an id of another shape, from an import)."""
    number = token_id.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else 0


class _Flight:
    """A Play's answer in the making: one outcome per request, finished once all are in
    (its sessions may be decided more than once, see ``PTOActor._redo``)."""

    __slots__ = ("done", "later", "outcomes", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.outcomes: dict[int, SessionOutcome] = {}
        self.later = Later()
        self.done = anyio.Event()

    def final(self, index: int, outcome: SessionOutcome) -> None:
        self.outcomes[index] = outcome
        if len(self.outcomes) == self.size:
            self.later.finish([self.outcomes[i] for i in range(self.size)])
            self.done.set()


@dataclasses.dataclass(eq=False, slots=True)
class _Decided:
    """The theta one decision stepped the world to, taken by the world at its first commit."""

    theta: F64
    landed: bool = False


@dataclasses.dataclass(eq=False, slots=True)
class _Sent:
    """A session submitted by its player, not settled yet."""

    seq: int  # its place in its chain
    flight: _Flight
    index: int  # of its request in the Play
    request: PlayRequest
    message: ApplySession
    decided: _Decided
    settled: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    error: UbloxError | None = None


@dataclasses.dataclass(eq=False, slots=True)
class _Run:
    """The sessions submitted in one ``Chain``; broken once one failed."""

    chain: Chain = dataclasses.field(default_factory=Chain)
    sent: int = 0
    failed: list[_Sent] = dataclasses.field(default_factory=list)
    open: int = 0
    broken: bool = False
    drained: anyio.Event = dataclasses.field(default_factory=anyio.Event)


class PTOActor(Actor[PTOMessage]):
    def __init__(
        self,
        pto: PTO,
        tokens: list[PTSToken],
        worlds: WorldShards,
        *,
        params: WorldParams,
        backend: Backend,
        players: Players,
        world_error: str | None = None,
    ) -> None:
        super().__init__(f"pto:{pto.pto_id}", mailbox_size=256)
        self.state = pto  # acknowledged
        self.tokens = {t.token_id: t for t in tokens}
        self._pending = dataclasses.replace(pto)  # acknowledged + decided
        self._pending_tokens = {t.token_id: dataclasses.replace(t) for t in tokens}
        self._inflight: dict[int, tuple[ev.Event, ...]] = {}
        self._units = 0
        self.worlds = worlds
        self.world_error = world_error
        self.params = params
        self.backend = backend
        self.players = players
        self._idle = InFlight()
        # Token numbers only grow: a failed purchase leaves a gap, never a reused id.
        self._next_token = 1 + max((_token_number(t.token_id) for t in tokens), default=0)
        # A unit of this actor was refused as a Conflict: reload before deciding again.
        self._stale = False
        self.shared = bool(getattr(backend, "shared", False))
        self.reloads = 0
        # Allotted sessions of a scenario tick whose unit has not landed yet.
        self._ticking = 0
        # A checkpointed run's tick units submitted and not landed: (serial, their
        # SessionPlayed events here), oldest first. The next tick's allotments count them.
        self._tick_flight: list[tuple[int, list[ev.SessionPlayed]]] = []
        # Set while purchases this actor decided for a BuyBatch wait to be queued.
        self._held: anyio.Event | None = None
        # Plays (``_play``): pipelined where the store keeps chains and one process writes.
        self._pipelined = getattr(backend, "chains", False) is True and not self.shared
        self._current = _Run()  # the chain new Plays' sessions join
        self._draining: _Run | None = None  # a broken chain new Plays wait for
        self._theta: F64 | None = None  # after the Plays in flight (None: the world's)
        self._flying = 0  # sessions submitted and not settled
        self._no_flight = anyio.Event()
        self._no_flight.set()
        self._playing: dict[str, _Sent] = {}  # each player's last session in flight here
        self._redos: dict[int, tuple[tuple[PlayRequest, ...], _Flight, tuple[int, ...]]] = {}
        self.replays = 0  # sessions decided again after their chain broke

    def quiet(self) -> bool:
        """Nothing unacknowledged, no session in flight (it may be passivated)."""
        return not self._inflight and not self._ticking and not self._flying and not self._redos

    @property
    def world(self) -> dict[str, F64] | None:
        """A copy of the world's arrays; None when it could not be loaded (or has none)."""
        world_id = self.state.world_cdt_id
        if world_id is None or world_id not in self.worlds:
            return None
        return self.worlds.arrays(world_id)

    def has_world(self) -> bool:
        return self.state.world_cdt_id is not None and self.state.world_cdt_id in self.worlds

    async def handle(self, message: PTOMessage) -> object:
        if self._held is not None:  # a BuyBatch's unit is not queued yet: after it
            await self._held.wait()
        if self._flying and isinstance(message, StepWorld | Allot | GetWorld):
            await self._no_flight.wait()  # the world as the pipelined Plays leave it
        if isinstance(message, GetWorld) and not self._steps_world():
            self._stale = True  # the lease holder's arrays, not this copy
        if self._stale or (self.shared and isinstance(message, GetPTO | GetTokens)):
            await self._reload()
        match message:
            case GetPTO():
                return dataclasses.replace(self.state)
            case GetTokens(player_id=player_id):
                return [
                    dataclasses.replace(t)
                    for t in self.tokens.values()
                    if player_id is None or t.holder == player_id
                ]
            case Buy(player_id=player_id, hours=hours, at=at, receipt=receipt):
                return await self._buy(player_id, hours, at, receipt)
            case BuyBatch(buys=buys, at=at):
                return await self._buy_batch(buys, at)
            case SpendAtu(units=units, at=at):
                return await self._spend_atu(units, at)
            case Play(requests=requests, at=at):
                return await self._play(requests, at)
            case StepWorld(steps=steps, at=at):
                return await self._step(steps, at)
            case CheckDeadline(at=at):
                return await self._check_deadline(at)
            case Allot(requests=requests):
                return await self._allot(requests)
            case GetWorld():
                self._require_world()
                world = self.world
                assert world is not None
                return world
            case _:
                assert_never(message)

    # -- decide, queue, apply on acknowledgement -------------------------------------

    async def _decide(
        self,
        events: tuple[ev.Event, ...],
        acknowledged: Callable[[Committed], object],
        *,
        receipt: Receipt | None = None,
        failed: Callable[[], None] = lambda: None,
    ) -> Later:
        later, done, lost = self._stage(events, acknowledged, failed)
        try:
            await self.backend.submit(Unit(events, receipt=receipt), done)
        except BaseException:
            lost()
            raise
        return later

    def _stage(
        self,
        events: tuple[ev.Event, ...],
        acknowledged: Callable[[Committed], object],
        failed: Callable[[], None],
    ) -> tuple[Later, Callable[[object], None], Callable[[], None]]:
        """Count ``events`` as pending and in flight; returns the answer to come, the
        ``done`` callback for the unit's outcome, and what to call if it is never queued."""
        for event in events:
            apply_to_pto(self._pending, self._pending_tokens, event)
        self._units += 1
        unit = self._units
        self._inflight[unit] = events
        self._idle.busy()

        def landed(committed: Committed) -> object:
            applied = False
            try:
                for event in committed.events:
                    apply_to_pto(self.state, self.tokens, event)
                applied = True
            finally:
                # The pending state holds these events already: rebuilt only if applying
                # them failed half-way (a bug), so memory still follows the acknowledged.
                self._forget(unit, rebuild=not applied)
            return acknowledged(committed)

        def lost() -> None:
            self._forget(unit, rebuild=True)
            failed()

        later = Later()
        answer = answer_when_done(later, landed, lost)

        def done(outcome: object) -> None:
            if isinstance(outcome, BaseException):
                outcome = conflict_of(outcome)
                if isinstance(outcome, Conflict):
                    self._stale = True
            answer(outcome)

        return later, done, lost

    async def _take_lease(self, leases: WorldLeases) -> bool:
        try:
            return await leases.take(self.state.pto_id)
        except WorldLeased:
            self._stale = True  # the holder's steps: this copy reloads before it is used
            raise

    def _steps_world(self) -> bool:
        """Whether this process steps the world: always, unless the database is shared
        and another process may hold its lease."""
        leases = getattr(self.backend, "leases", None)
        return leases is None or self.state.pto_id in leases.held

    def mark_stale(self) -> None:
        """Reload (the world too) before the next command: this process just took the
        world's lease over from another, which stepped it since this copy was loaded."""
        self._stale = True

    async def _reload(self) -> None:
        """Replace the cache with the store's rows, once nothing is in flight (a stale
        actor's; a shared one's before a read). The PTO may not vanish (never deleted)."""
        if self._inflight and not self._stale:
            return  # a read while units are in flight: they keep the cache exact enough
        await self._idle.wait()
        pto_id = self.state.pto_id
        pto = await self.backend.load_pto(pto_id)
        assert pto is not None, f"PTO {pto_id} vanished from the store"
        tokens = await self.backend.load_tokens(pto_id)
        if self._stale and self.has_world() and pto.world_cdt_id:
            # Another process may have stepped it (under its lease) since this one did.
            arrays = await self.backend.load_world(pto.world_cdt_id)
            self.worlds.put(pto.world_cdt_id, arrays["theta"], arrays["omega"])
        self.state = pto
        self.tokens = {t.token_id: t for t in tokens}
        self._pending = dataclasses.replace(pto)
        self._pending_tokens = {t.token_id: dataclasses.replace(t) for t in tokens}
        top = max((_token_number(t.token_id) for t in tokens), default=0)
        self._next_token = max(self._next_token, top + 1)
        self._stale = False
        self.reloads += 1

    def _forget(self, unit: int, *, rebuild: bool) -> None:
        """A unit is no longer in flight. One that committed is in the pending state
        already (acknowledged + in flight, applied in the same order). One that failed
        must leave it: rebuild the pending state from the acknowledged one and the units
        still in flight (purchases only, which commute). Only a failure pays for the
        copy of every token, so a hot PTO's purchase costs the same with 10 tokens or
        100,000 (it was a copy of them all per acknowledgement)."""
        self._inflight.pop(unit, None)
        if not self._inflight:
            self._idle.idle()
        if rebuild:
            self._rebuild_pending()
        self._maybe_quiet()

    def _rebuild_pending(self) -> None:
        self._pending = dataclasses.replace(self.state)
        self._pending_tokens = {k: dataclasses.replace(t) for k, t in self.tokens.items()}
        for events in self._inflight.values():
            for event in events:
                apply_to_pto(self._pending, self._pending_tokens, event)

    # -- funding ---------------------------------------------------------------

    async def _buy(self, player_id: str, hours: int, at: str, receipt: Receipt | None) -> Later:
        decision = purchase(self._pending, hours)
        if decision.funded and self._inflight:
            # It would fund the PTO only if every purchase in flight commits: wait for
            # them, then decide on what is acknowledged.
            await self._idle.wait()
        events, sold, unsold = await self._sell(player_id, hours, at)
        return await self._decide(events, sold, receipt=receipt, failed=unsold)

    async def _buy_batch(self, buys: tuple[tuple[str, int], ...], at: str) -> StagedBuys:
        """Decide ``buys`` in order without queueing them: the asker queues all their
        events as ONE unit (with other PTOs' purchases), so they commit or fail together
        and each may count on the ones before it, the last share included. Units queued
        before are waited for first (nothing else is in flight then); this actor then
        holds every other message until the asker calls ``submitted``."""
        if self._inflight:  # (idle: no turn of the loop for nothing, a tick asks 100 PTOs)
            await self._idle.wait()
        staged: list[Staged | UbloxError] = []
        undo: list[Callable[[], None]] = []
        held = anyio.Event()
        self._held = held
        try:
            for player_id, hours in buys:
                try:
                    events, sold, unsold = await self._sell(player_id, hours, at, copies=False)
                except UbloxError as exc:
                    staged.append(exc)
                    continue
                later, done, lost = self._stage(events, sold, unsold)
                staged.append(Staged(events, done, later))
                undo.append(lost)
        except BaseException:
            for lost in undo:  # never handed over: nobody will queue them
                lost()
            self._release(held)
            raise

        def submitted() -> None:
            self._release(held)

        return StagedBuys(tuple(staged), submitted)

    def _release(self, held: anyio.Event) -> None:
        if self._held is held:
            self._held = None
        held.set()

    async def _sell(
        self, player_id: str, hours: int, at: str, *, copies: bool = True
    ) -> tuple[tuple[ev.Event, ...], Callable[[Committed], Sale], Callable[[], None]]:
        """A purchase decided against the pending state, its price set aside by the buyer:
        its events, what answers it once committed, and what undoes the reservation.
        Without ``copies`` the answer holds the token of the events and this actor's own
        state, not copies of them: for a caller that reads them at once and keeps
        neither (``Engine._buy_segment``; the token is never changed, the state is)."""
        decision = purchase(self._pending, hours)
        pto_id = self.state.pto_id
        reservation = self.players.reserve_now(player_id, decision.price, pto_id)
        if reservation is None:  # the buyer is not active: the ask activates it
            reservation = await self.players.ask(
                player_id, Reserve(amount=decision.price, pto_id=pto_id)
            )
        token = PTSToken(
            token_id=f"{pto_id}-pts-{self._next_token:06d}",
            game_id=pto_id,
            holder=player_id,
            hours_committed=float(hours),
            purchase_price=decision.price,
            tau_k_at_purchase=reservation.tau_k,
            purchase_time=at,
        )
        self._next_token += 1
        events: list[ev.Event] = [
            ev.SharesBought(
                at=at,
                pto_id=pto_id,
                player_id=player_id,
                token_id=token.token_id,
                hours=hours,
                price=to_decimal(decision.price),
                pts_sold=decision.pts_sold_after,
                pts_offered=self._pending.pts_offered,
                token=token,
            )
        ]
        if decision.funded:
            raised = self._pending.funding_raised + decision.price
            events.append(ev.PTOFunded(at=at, pto_id=pto_id, funding_raised=to_decimal(raised)))

        def sold(committed: Committed) -> Sale:
            self.players.settle(player_id, reservation.ticket, True)
            if not copies:
                return Sale(token, self.state)
            return Sale(dataclasses.replace(token), dataclasses.replace(self.state))

        def unsold() -> None:
            self.players.settle(player_id, reservation.ticket, False)

        return tuple(events), sold, unsold

    async def _check_deadline(self, at: str) -> Later | bool:
        await self._idle.wait()  # refunds only what is acknowledged
        failure = deadline_failure(
            self._pending, list(self._pending_tokens.values()), parse_iso(at)
        )
        if failure is None:
            return False
        failed = ev.PTOFailed(
            at=at,
            pto_id=self.state.pto_id,
            refunded=to_decimal(failure.total),
            holders=len(failure.refunds),
            refunds=failure.refunds,
        )

        def refunded(committed: Committed) -> bool:
            for holder, amount in failure.refunds:
                self.players.credit(holder, amount, committed.position)
            return True

        return await self._decide((failed,), refunded)

    async def _spend_atu(self, units: int, at: str) -> Later:
        await self._idle.wait()
        decision = spend_atu(self._pending, units, escrow=self._pending.funding_raised)
        pto_id = self.state.pto_id
        creator = self.state.creator_id
        events: list[ev.Event] = [
            ev.AtuSpent(
                at=at,
                pto_id=pto_id,
                units=units,
                atu_spent=decision.atu_spent_after,
                atu_required=self.state.atu_required,
            )
        ]
        if decision.completes:
            payout = to_decimal(decision.payout)
            events.append(ev.PTOCompleted(at=at, pto_id=pto_id, creator_id=creator, payout=payout))

        def spent(committed: Committed) -> AtuOutcome:
            if decision.completes and decision.payout:
                self.players.credit(creator, decision.payout, committed.position)
            return AtuOutcome(dataclasses.replace(self.state), decision.completes, decision.payout)

        return await self._decide(tuple(events), spent)

    # -- the world ---------------------------------------------------------------

    def _require_world(self) -> None:
        if not self.has_world():
            raise StoreError(
                f"the world of {self.state.pto_id} could not be loaded ({self.world_error}); "
                "restore a backup or run `ublox-sim verify`"
            )

    def _set_theta(self, theta: F64) -> None:
        """The world moved on: into the shards, and to the store in the background."""
        world_id = self.state.world_cdt_id
        assert world_id is not None
        self.worlds.set_theta(world_id, theta)
        self._world_changed()

    def _world_changed(self) -> None:
        world_id = self.state.world_cdt_id
        assert world_id is not None
        self.backend.world_changed(world_id, self.worlds.arrays(world_id))

    async def _step(self, steps: int, at: str) -> Later | float:
        await self._idle.wait()
        world = self.world
        if world is None or steps <= 0:
            return self.state.aci_coherence_score
        theta = step_world(world["theta"], world["omega"], self.params, steps)
        aci = order_parameter(theta)
        stepped = ev.WorldStepped(at=at, pto_id=self.state.pto_id, aci=aci)

        def durable(committed: Committed) -> float:
            # Sessions and steps wait until nothing is in flight: they see these arrays.
            self._set_theta(theta)
            return aci

        return await self._decide((stepped,), durable)

    async def _play(
        self, requests: tuple[PlayRequest, ...], at: str
    ) -> list[SessionOutcome] | Later:
        """Sessions in the world (``Engine.play``, ``play_many``), answered once every one
        is durable or refused.

        Pipelined (``_pipelined``: a store that keeps a ``Chain``, one process): a Play
        is decided against the theta the Plays in flight leave (``_theta``), its sessions
        are submitted in request order in the world's current chain, and the handler
        returns once they are submitted, so the next Play is decided while these commit
        and a hot world's sessions share the store's batches. A player's sessions in this
        world never overlap: its next one is decided once its last one settled, so its
        tau_k and physics and its tokens' hours are what a serial run gives without
        counting anything in flight. A refused session breaks the chain (see
        ``_session_settled``). Otherwise the handler waits until its sessions settled."""
        await self._idle.wait()
        leases = getattr(self.backend, "leases", None)
        if leases is not None and await self._take_lease(leases):
            # Shared: a session steps the world, so it needs the world's lease (another
            # live process's: ``WorldLeased``, nothing changed). Just taken: another
            # process may have stepped it since this copy was loaded.
            self._stale = True
            await self._reload()
        redo = self._redos.pop(id(requests), None)  # sessions of a broken chain, again
        if redo is None:
            flight, indices = _Flight(len(requests)), tuple(range(len(requests)))
        else:
            told, flight, indices = redo
            assert told is requests
        live: list[int] = []
        for local, request in enumerate(requests):
            try:
                self._require_world()
                await self.players.check(request.player_id)
            except UbloxError as exc:
                flight.final(indices[local], SessionOutcome(request.player_id, error=exc))
                continue
            live.append(local)
        try:
            physics = await self._settled_physics({requests[k].player_id for k in live})
        except UbloxError as exc:
            if redo is None:
                raise  # the caller hears it
            # Told by this actor: nobody would hear it, and the first Play's caller
            # would wait for sessions never decided again.
            for local in live:
                flight.final(indices[local], SessionOutcome(requests[local].player_id, error=exc))
            self._maybe_quiet()
            return []
        # Decided from here to the first submission without an await: on the tokens as
        # acknowledged (this world's sessions of these players all settled) and the theta
        # the Plays in flight leave. One pass over the tokens for the whole batch, not
        # one per request (a hot world's batch of n players over its t tokens cost n*t).
        held: dict[str, list[PTSToken]] = {}
        for token in self.tokens.values():
            if token.holder in physics:
                held.setdefault(token.holder, []).append(token)
        claimed: dict[str, float] = {}  # by this batch's earlier requests
        valid: list[Valid] = []
        for local in live:
            request = requests[local]
            try:
                tokens = self._held_tokens(held.get(request.player_id, []), claimed)
                allocation = allocate_play(self.state, tokens, request.hours)
            except UbloxError as exc:
                flight.final(indices[local], SessionOutcome(request.player_id, error=exc))
                continue
            for token_id, hours in allocation:
                claimed[token_id] = claimed.get(token_id, 0.0) + hours
            valid.append((indices[local], request, allocation))
        if valid:
            await self._run_sessions(flight, valid, [physics[r.player_id] for _, r, _ in valid], at)
        if redo is not None:
            self._maybe_quiet()
            return []  # told by this actor: the first Play's caller hears the outcomes
        if not self._pipelined:
            await flight.done.wait()
        return flight.later

    async def _allot(self, requests: tuple[PlayRequest, ...]) -> Allotment:
        """A scenario tick's sessions here (``Engine.tick``): the tokens each is played on,
        decided on acknowledged state (with the tick units in flight, ``tick_decided``);
        the engine steps the world and commits them."""
        await self._idle.wait()
        return self._allotted(requests)

    def allot_now(self, requests: tuple[PlayRequest, ...]) -> Allotment | None:
        """``Allot`` without a trip through the mailbox, or None (ask it then): when the
        actor is between messages with none queued, nothing of its own in flight or held,
        and nothing to reload, the answer is the one its ``handle`` would give now. A
        tick's allotments were a mailbox round trip per PTO (~12 ms of the stress run's
        serial chain a tick for 100 PTOs)."""
        if self._closed or self.broken is not None or self._stale or self.shared:
            return None
        if (
            self._held is not None
            or self._inflight
            or self._flying
            or self._redos
            or self._draining is not None
        ):
            return None
        if self._send is not None:
            stats = self._send.statistics()
            if stats.current_buffer_used or not stats.tasks_waiting_receive:
                return None  # a message queued, or one being handled
        return self._allotted(requests)

    def _allotted(self, requests: tuple[PlayRequest, ...]) -> Allotment:
        players = {r.player_id for r in requests}
        held: dict[str, list[PTSToken]] = {}
        for token in self.tokens.values():
            if token.holder in players:
                held.setdefault(token.holder, []).append(token)
        if self._tick_flight:
            held = self._after_flight(held)
        claimed: dict[str, float] = {}
        out: list[Allotted] = []
        for request in requests:
            try:
                self._require_world()
                tokens = self._held_tokens(held.get(request.player_id, []), claimed)
                allocation = allocate_play(self.state, tokens, request.hours)
            except UbloxError as exc:
                out.append(Allotted(error=exc))
                continue
            for token_id, hours in allocation:
                claimed[token_id] = claimed.get(token_id, 0.0) + hours
            out.append(Allotted(allocation))
        self._ticking += 1
        return Allotment(dataclasses.replace(self.state), tuple(out))

    def _after_flight(self, held: dict[str, list[PTSToken]]) -> dict[str, list[PTSToken]]:
        """The players' tokens as the tick units in flight leave them (copies of those
        they play on)."""
        played = self._flight_played()
        return {
            holder: [
                t
                if t.token_id not in played
                else dataclasses.replace(t, hours_played=played[t.token_id])
                for t in tokens
            ]
            for holder, tokens in held.items()
        }

    def _flight_played(self) -> dict[str, float]:
        """Each token's hours played once the tick units in flight land, for the tokens
        they play on: added one share at a time in the units' order, as ``apply_to_pto``
        (and the store's ``hours_played + ?``) add them, so the floats are the same."""
        played: dict[str, float] = {}
        for _, sessions in self._tick_flight:
            for session in sessions:
                for token_id, hours, _ in session.shares:
                    played[token_id] = played.get(token_id, self.tokens[token_id].hours_played)
                    played[token_id] += hours
        return played

    def tick_decided(self, serial: int, sessions: list[ev.SessionPlayed]) -> None:
        """A checkpointed run's tick unit ``serial`` was submitted with ``sessions`` here;
        until it lands (``tick_landed``) the next tick's allotments count their hours. The
        run fails whole if the unit fails, so deciding on it is sound (``Engine.tick_ahead``)."""
        self._tick_flight.append((serial, sessions))

    def tick_dropped(self, serial: int) -> None:
        """Tick unit ``serial`` failed: not in flight any more."""
        self._tick_flight = [f for f in self._tick_flight if f[0] != serial]

    def tick_landed(self, events: list[ev.Event], serial: int | None = None) -> None:
        """The tick's unit committed: its sessions and step in memory (state and pending);
        ``serial``: the unit's, if it was in flight here (``tick_decided``)."""
        for event in events:
            apply_to_pto(self.state, self.tokens, event)
            apply_to_pto(self._pending, self._pending_tokens, event)
        if self._tick_flight and self._tick_flight[0][0] == serial:
            del self._tick_flight[0]

    def open_hours(self) -> dict[str, float] | None:
        """Hours left per holder on this PTO's tokens once the tick units in flight land,
        as the store's ``open_hours`` computes them (tokens in id order, the same
        subtractions and sums); None if units of its own are in flight (the acknowledged
        tokens are not what the store will say)."""
        if self._inflight or self._flying:
            return None
        played = self._flight_played()
        left: dict[str, float] = {}
        for token_id in sorted(self.tokens):
            t = self.tokens[token_id]
            room = float(t.hours_committed) - float(played.get(token_id, t.hours_played))
            if room > 1e-9:
                left[t.holder] = left.get(t.holder, 0.0) + room
        return left

    def tick_over(self) -> None:
        """The tick after an ``Allot`` is over (landed or failed): it may passivate."""
        self._ticking = max(0, self._ticking - 1)
        self._maybe_quiet()

    @staticmethod
    def _held_tokens(tokens: list[PTSToken], claimed: dict[str, float]) -> list[PTSToken]:
        """A player's tokens, less hours already claimed by earlier requests in this batch
        (copies of those claimed from: the others are only read)."""
        return [
            t
            if t.token_id not in claimed
            else dataclasses.replace(t, hours_played=t.hours_played + claimed[t.token_id])
            for t in tokens
        ]

    async def _settled_physics(self, players: set[str]) -> dict[str, Physics]:
        """The players' physics once the world's pending state holds for them: no broken
        chain draining, and none of them with a session in flight in this world."""
        while True:
            while self._draining is not None:
                await self._draining.drained.wait()
            for player_id in players:
                if (busy := self._playing.get(player_id)) is not None:
                    await busy.settled.wait()
            if self._draining is None and not players & self._playing.keys():
                break
        snapshots: dict[str, Physics] = {}

        async def snapshot(player_id: str) -> None:
            snapshots[player_id] = await self.players.ask(player_id, GetPhysics())

        async with anyio.create_task_group() as tg:  # reads only: order does not matter
            for player_id in players:
                tg.start_soon(snapshot, player_id)
        while self._draining is not None:  # broken meanwhile: the theta to step is not known
            await self._draining.drained.wait()
        return snapshots

    async def _run_sessions(
        self, flight: _Flight, valid: list[Valid], physics: list[Physics], at: str
    ) -> None:
        """Step the world for the sessions (one array operation per step) from the theta
        the Plays in flight leave, and have each player submit its own session, in request
        order; returns once all are submitted (or failed). Each settles on its own
        (``_session_settled``)."""
        world = self.world
        assert world is not None
        size = self.params.size
        cells = [cell_of(p.position_x, p.position_y, size) for p in physics]
        result = play_steps(
            world["theta"] if self._theta is None else self._theta,
            world["omega"],
            self.params,
            cells_y=np.array([c[0] for c in cells], dtype=np.int64),
            cells_x=np.array([c[1] for c in cells], dtype=np.int64),
            phase=np.array([p.phase for p in physics]),
            freq=np.array([p.resonance_freq for p in physics]),
            tau_k=np.array([p.tau_k for p in physics]),
            steps=np.array([self.params.steps_for(r.hours) for _, r, _ in valid], dtype=np.int64),
        )
        aci = order_parameter(result.theta)
        pto_id = self.state.pto_id
        run = self._current
        chain = run.chain if self._pipelined else None
        if self._pipelined:
            self._theta = result.theta  # the next Play steps on from this one
        decided = _Decided(result.theta)
        if not self._flying:
            self._no_flight = anyio.Event()
        # Each player's unit is submitted in request order (the ledger's order, and the
        # chain's, must not depend on which player needed activating): a player is asked
        # once the one before has handled its session; the commits still share batches.
        handled = [anyio.Event() for _ in valid]
        for k, (index, request, allocation) in enumerate(valid):
            quality = float(result.quality[k])
            xusd = compose_xusd(request.hours, quality, self.state.amplification)
            shares = split_by_hours(xusd, allocation)
            message = ApplySession(
                pto_id=pto_id,
                at=at,
                hours=request.hours,
                quality=quality,
                coherence=float(result.coherence[k]),
                phase=float(result.phase[k]),
                locks=int(result.locks[k]),
                locked_hours=float(result.locked_steps[k]) / self.params.steps_per_hour,
                xusd=xusd,
                aci=aci,
                shares=tuple((t, h, x) for (t, h), x in zip(allocation, shares, strict=True)),
                receipt=request.receipt,
                chain=chain,
            )
            run.sent += 1
            sent = _Sent(run.sent, flight, index, request, message, decided)
            run.open += 1
            self._flying += 1
            self._playing[request.player_id] = sent
            before = handled[k - 1] if k else None
            assert self._overflow is not None, "actor not started"
            # They outlive this handler (pipelined): tasks of the actor's task group.
            self._overflow.start_soon(self._apply_session, run, sent, before, handled[k])
        await handled[-1].wait()  # every session submitted (or failed), in order

    async def _apply_session(
        self, run: _Run, sent: _Sent, before: anyio.Event | None, handled: anyio.Event
    ) -> None:
        played: ev.SessionPlayed | None = None
        error: UbloxError | None = None
        player_id = sent.request.player_id
        try:
            if before is not None:
                await before.wait()
            for attempt in range(CONFLICT_RETRIES):
                try:
                    played = await self.players.ask(
                        player_id, sent.message, handled=None if attempt else handled
                    )
                    break
                except Conflict:
                    # Another process moved the player's tau_k: it reloads, decides again.
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
        except UbloxError as exc:
            error = exc
        except BaseException as exc:
            # A bug (or the group's cancellation): its caller hears a crash of this actor,
            # and the error goes on to the task group, loudly.
            error = ActorBroken(f"{self.name} crashed while applying a session")
            error.__cause__ = exc
            raise
        finally:
            handled.set()  # also when the ask never reached a handler
            self._session_settled(run, sent, played, error)

    def _session_settled(
        self, run: _Run, sent: _Sent, played: ev.SessionPlayed | None, error: UbloxError | None
    ) -> None:
        """A session committed or failed (in the store's order for one chain).

        Committed: the PTO's tokens and pool take it, and the world takes its Play's theta
        at the Play's first commit (Plays commit in the order they were decided). Failed:
        the chain is broken (the store refuses its later units, so what committed is a
        prefix), new Plays use a new chain and wait until this one has drained; then its
        first failure answers its own caller and every session after it is decided again
        (``_redo``), against the world as committed: theta, hours and money are those of a
        serial run of the Plays that committed, in commit order."""
        run.open -= 1
        self._flying -= 1
        player_id = sent.request.player_id
        if self._playing.get(player_id) is sent:
            del self._playing[player_id]
        sent.settled.set()
        if played is not None:
            apply_to_pto(self.state, self.tokens, played)
            apply_to_pto(self._pending, self._pending_tokens, played)
            if not sent.decided.landed:
                sent.decided.landed = True
                self._set_theta(sent.decided.theta)
            m = sent.message
            outcome = SessionOutcome(
                player_id,
                session_id=played.session_id,
                hours=m.hours,
                quality=m.quality,
                xusd=m.xusd,
                locks=played.phase_locks,
                locked_hours=m.locked_hours,
                tau_k_after=played.tau_k,
            )
            sent.flight.final(sent.index, outcome)
        elif run.chain is None or not self._pipelined:
            sent.flight.final(sent.index, SessionOutcome(player_id, error=error))
        else:
            sent.error = error or UnitRejected("session not committed")
            run.failed.append(sent)
            run.chain.refused = True  # also if it never reached the store
            if not run.broken:
                run.broken = True
                self._draining = run
                self._current = _Run()
        if run.broken and not run.open:
            self._redo(run)
        if not self._flying:
            self._theta = None  # what is committed is all there is
            self._no_flight.set()
            self._maybe_quiet()

    def _redo(self, run: _Run) -> None:
        """A broken chain has drained: answer its first failure, decide the rest again."""
        failed = sorted(run.failed, key=lambda s: s.seq)  # they may settle out of order
        first, rest = failed[0], failed[1:]
        first.flight.final(first.index, SessionOutcome(first.request.player_id, error=first.error))
        groups: dict[int, list[_Sent]] = {}
        for sent in rest:
            groups.setdefault(id(sent.flight), []).append(sent)
        self.replays += len(rest)
        for sents in groups.values():
            requests = tuple(s.request for s in sents)
            self._redos[id(requests)] = (requests, sents[0].flight, tuple(s.index for s in sents))
            self._tell_self(Play(requests=requests, at=sents[0].message.at), sents)
        run.failed.clear()
        if self._draining is run:
            self._draining = None
        run.drained.set()

    def _tell_self(self, message: Play, sents: list[_Sent]) -> None:
        """Queue ``message`` behind what is queued; if this actor no longer takes
        messages, its sessions' callers hear why."""

        def closed(exc: UbloxError) -> None:
            self._redos.pop(id(message.requests), None)
            for sent in sents:
                sent.flight.final(sent.index, SessionOutcome(sent.request.player_id, error=exc))
            self._maybe_quiet()

        async def post() -> None:
            try:
                await self.tell(message)
            except UbloxError as exc:
                closed(exc)
            except anyio.get_cancelled_exc_class():  # the actor's group closing
                closed(ActorClosed(f"{self.name} is closed"))
                raise

        if self.passivated or self.broken is not None:
            closed(ActorClosed(f"{self.name} is closed"))
            return
        assert self._overflow is not None, "actor not started"
        self._overflow.start_soon(post)
