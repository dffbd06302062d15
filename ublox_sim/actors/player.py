"""The player actor: owns one player's balances and physics state.

A command is decided with the pure rules, returned as events and queued to the store
as one unit; when the store acknowledges it, the events are applied to the state and
the caller gets its answer. Reads answer that acknowledged state, so memory never
runs ahead of disk.

The actor takes its next message before the last unit is acknowledged only where the
next decision stays right whatever becomes of the units in flight: money leaves
against the *available* balance (acknowledged, less what is reserved and what
transfers in flight take; never counting a deposit in flight), so a failed unit can
only have made the refusal too strict, never an overdraft. A session, whose physics
move from the current state, first waits until nothing is in flight.

A purchase is decided by the PTO: the player only sets the price aside
(``Reserve``) and learns the outcome (``settle``, called when the PTO's unit is
acknowledged or refused). A player actor asks nobody (PTO actors ask players, never
the reverse), so actor requests cannot form a cycle.

The actor is virtual (see ``actors.directory``): it was loaded from its row at a
*position* of the store's unit order (``loaded_at``). A credit another actor's unit
``U`` committed (a transfer, refund or payout) is applied only if ``U`` was queued
after that load; an older one is already in the row it was loaded from.

Several processes on one database (``backend.shared``): the row is the truth and the
state a cache. A debit the database refuses (the balance's CHECK: another process spent
first) and a session whose tau_k guard fails come back as a ``Conflict``; the actor is
then stale and reloads its row before its next decision (the caller decides again). A
shared actor also reloads, when nothing of its own is in flight, before it answers a read
or decides a debit or a session, so credits other processes committed count.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, TypeVar, assert_never

import anyio

from ..core import events as ev
from ..core.economy import apply_to_player, check_funds, tau_k_after
from ..core.errors import Conflict, conflict_of
from ..core.money import check_credit, to_cents, to_decimal
from ..core.records import Player
from ..store.backend import Backend, Chain, Committed, Receipt, Unit
from .messages import (
    ApplySession,
    Deposit,
    GetPhysics,
    GetPlayer,
    Physics,
    PlayerMessage,
    Reservation,
    Reserve,
    SendTransfer,
)
from .runtime import Actor, Ask, InFlight, Later, answer_when_done

R = TypeVar("R")


class Players(Protocol):
    """How other actors reach players (the engine's directory of player actors)."""

    async def check(self, player_id: str) -> None:
        """Raise ``UnknownPlayer`` unless the player exists (activating it)."""

    async def ask(
        self, player_id: str, message: Ask[R], *, handled: anyio.Event | None = None
    ) -> R:
        """Ask the player's actor, activating it (``UnknownPlayer`` if there is none);
        ``handled`` as in ``Actor.ask``."""

    def reserve_now(self, player_id: str, amount: int, pto_id: str) -> Reservation | None:
        """``Reserve`` without a trip through the player's mailbox, if its actor is active
        (not activating, not passivating); None if it is not: ask it ``Reserve`` then."""

    def settle(self, player_id: str, ticket: int, committed: bool) -> None:
        """The unit spending reservation ``ticket`` committed or failed (the player is
        active: an open reservation keeps it from passivating)."""

    def credit(self, player_id: str, usd: int, position: int) -> None:
        """Apply a credit unit ``position`` committed, if the player is active."""


class PlayerActor(Actor[PlayerMessage]):
    def __init__(
        self,
        player: Player,
        backend: Backend,
        *,
        players: Players,
        loaded_at: int = 0,
        mailbox_size: int = 64,
    ) -> None:
        super().__init__(f"player:{player.player_id}", mailbox_size=mailbox_size)
        self.state = player  # acknowledged
        self._inflight: dict[int, tuple[ev.Event, ...]] = {}
        self._idle = InFlight()
        self._reserved: dict[int, int] = {}
        self._tickets = 0
        self.backend = backend
        self.players = players
        self.loaded_at = loaded_at
        self._stale = False  # a unit was refused as a Conflict: reload before deciding
        self.shared = bool(getattr(backend, "shared", False))
        # Credits that arrive while a reload's read is out: (usd, position).
        self._reloading: list[tuple[int, int]] | None = None
        # A checkpointed run's tick sessions submitted and not landed yet (``ticked``),
        # each with the serial of its tick unit, oldest first.
        self._ticks: list[tuple[int, ev.SessionPlayed]] = []

    def quiet(self) -> bool:
        """Nothing unacknowledged, no reservation open, no tick session pending (it may be
        passivated)."""
        return not self._inflight and not self._reserved and not self._ticks

    def credit(self, usd: int, position: int) -> None:
        """Apply a credit that unit ``position`` committed, unless the row this actor was
        loaded from already holds it. Called on the event loop, between handlers."""
        if self._reloading is not None:
            self._reloading.append((usd, position))
        if position <= self.loaded_at:
            return
        self.state.usd_obbba_balance += usd

    def landed(self, event: ev.Event, position: int, serial: int | None = None) -> None:
        """A session of a scenario tick (``Engine.tick``) that unit ``position`` committed:
        applied unless the row this actor was loaded from holds it already. ``serial``:
        the tick unit's, if its sessions were told to this actor as pending (``ticked``)."""
        if self._ticks and self._ticks[0][0] == serial:
            del self._ticks[0]
            self._maybe_quiet()
        if position > self.loaded_at:
            apply_to_player(self.state, event)

    def ticked(self, serial: int, event: ev.SessionPlayed) -> None:
        """A session of a checkpointed run's tick, decided and submitted in tick unit
        ``serial``, not landed yet: the next tick's figures count it (``figures``). Told
        only to an actor loaded before the unit was submitted (its row lacks it)."""
        self._ticks.append((serial, event))

    def tick_dropped(self, serial: int) -> None:
        """Tick unit ``serial`` failed: its sessions are not pending any more (the run
        that decided on them fails whole)."""
        self._ticks = [t for t in self._ticks if t[0] != serial]
        self._maybe_quiet()

    def figures(self) -> tuple[float, float, int]:
        """(phase, tau_k, xUSD balance) as the tick sessions pending leave them: what the
        state will say once they land (``apply_to_player`` sets phase and tau_k from the
        last session and adds the xUSD, exact cents)."""
        s = self.state
        if not self._ticks:
            return s.phase, s.tau_k, s.xUSD_balance
        last = self._ticks[-1][1]
        earned = sum(to_cents(e.xUSD_earned) for _, e in self._ticks)
        return last.phase, last.tau_k, s.xUSD_balance + earned

    async def settled(self) -> None:
        """Wait until no unit of this player is in flight (its session figures are final)."""
        await self._idle.wait()

    def settle(self, ticket: int, committed: bool) -> None:
        """The unit that spends reservation ``ticket`` committed (the debit is real) or
        failed (the funds are free again)."""
        amount = self._reserved.pop(ticket)
        if committed:
            self.state.usd_obbba_balance -= amount
        elif self.shared:
            # Refused: perhaps because this copy of the balance was stale (a Conflict
            # the PTO saw): read the row again before the next decision.
            self._stale = True
        self._maybe_quiet()

    async def _reload(self) -> None:
        """Replace the cache with the row (and the position it was read at). A stale
        actor waits until nothing of its own is in flight; a shared one reloads only then."""
        if self._stale:
            await self.wait_quiet()
        elif not self.quiet():
            return
        self._reloading = []
        try:
            player, position = await self.backend.load_player_at(self.state.player_id)
            assert player is not None, f"player {self.state.player_id} vanished from the store"
            late = self._reloading
        finally:
            self._reloading = None
        self.state, self.loaded_at, self._stale = player, position, False
        for usd, at in late:
            self.credit(usd, at)

    def reserve(self, amount: int, pto_id: str) -> Reservation:
        """Set ``amount`` aside for a purchase of ``pto_id``, or refuse (``InsufficientFunds``).

        Synchronous, so a PTO may call it directly on an active actor, between this
        actor's handlers or while one awaits: every handler has put what it spends in
        flight before its first await, so ``_available`` holds at any of them. That
        spares a hot PTO a round trip through this mailbox per purchase, which kept its
        decisions one at a time and the store's batches at ~2 units."""
        check_funds(self._available(), amount, f"pay {pto_id}")
        self._tickets += 1
        self._reserved[self._tickets] = amount
        # tau_k at purchase is a record of the acknowledged value.
        return Reservation(self._tickets, self.state.tau_k)

    def reserve_now(self, amount: int, pto_id: str) -> Reservation | None:
        """``reserve`` from another actor, or None if the ``Reserve`` must go through the
        mailbox: a crashed actor (the ask says so), and one that reloads its row before
        it decides (stale, or shared by several processes: see ``handle``)."""
        if self.broken is not None or self._stale or self.shared or self._reloading is not None:
            return None
        return self.reserve(amount, pto_id)

    async def handle(self, message: PlayerMessage) -> object:
        if self._stale or (
            self.shared and isinstance(message, GetPlayer | SendTransfer | Reserve | ApplySession)
        ):
            await self._reload()
        match message:
            case GetPlayer():
                return dataclasses.replace(self.state)
            case Deposit(amount=amount, at=at, receipt=receipt):
                check_credit(self._ceiling(), amount, f"a deposit to {self.state.player_id!r}")
                deposited = ev.Deposited(
                    at=at, player_id=self.state.player_id, amount=to_decimal(amount)
                )
                return await self._decide((deposited,), receipt)
            case SendTransfer(to_id=target, amount=amount, at=at, receipt=receipt):
                check_funds(self._available(), amount, "transfer")
                sent = ev.Transferred(
                    at=at,
                    from_id=self.state.player_id,
                    to_id=target,
                    amount=to_decimal(amount),
                )
                return await self._decide((sent,), receipt)
            case Reserve(amount=amount, pto_id=pto_id):
                return self.reserve(amount, pto_id)
            case GetPhysics():
                s = self.state
                return Physics(s.position_x, s.position_y, s.phase, s.resonance_freq, s.tau_k)
            case ApplySession() as s:
                await self._idle.wait()  # tau_k moves from the acknowledged value
                check_credit(self.state.xUSD_balance, s.xusd, f"the xUSD {s.pto_id!r} composed")
                return await self._decide((*self._session_events(s),), s.receipt, s.chain)
            case _:
                assert_never(message)

    def _available(self) -> int:
        """What money may leave now, whatever becomes of the units in flight."""
        me = self.state.player_id
        leaving = sum(
            to_cents(e.amount)
            for events in self._inflight.values()
            for e in events
            if isinstance(e, ev.Transferred) and e.from_id == me
        )
        return self.state.usd_obbba_balance - sum(self._reserved.values()) - leaving

    def _ceiling(self) -> int:
        """The USD-OBBBA balance once the deposits in flight commit (debits in flight not
        taken off): a deposit is held to the money limit against it, whatever becomes of
        the units in flight."""
        me = self.state.player_id
        coming = sum(
            to_cents(e.amount)
            for events in self._inflight.values()
            for e in events
            if isinstance(e, ev.Deposited) and e.player_id == me
        )
        return self.state.usd_obbba_balance + coming

    def _session_events(self, s: ApplySession) -> list[ev.Event]:
        # Two sessions of one player in two worlds may overlap: both count, counters
        # add up, and the later one sets phase and quality (tau_k moves from the value
        # the earlier one left, so neither update is lost). No refusal needed.
        player_id = self.state.player_id
        played: list[ev.Event] = [
            ev.SessionPlayed(
                at=s.at,
                pto_id=s.pto_id,
                player_id=player_id,
                session_id=0,
                hours=s.hours,
                quality=s.quality,
                xUSD_earned=to_decimal(s.xusd),
                phase_locks=s.locks,
                tau_k=tau_k_after(self.state.tau_k, s.quality),
                phase=s.phase,
                coherence=s.coherence,
                memory_depth_added=s.locked_hours,
                aci=s.aci,
                shares=s.shares,
            )
        ]
        if s.locks:
            played.append(
                ev.PhaseLock(at=s.at, pto_id=s.pto_id, player_id=player_id, locks=s.locks)
            )
        return played

    # -- decide, queue, apply on acknowledgement -------------------------------------

    async def _decide(
        self, events: tuple[ev.Event, ...], receipt: Receipt | None, chain: Chain | None = None
    ) -> Later:
        self._tickets += 1
        ticket = self._tickets
        self._inflight[ticket] = events
        self._idle.busy()
        later = Later()
        answer = answer_when_done(
            later,
            lambda committed: self._acknowledged(ticket, committed),
            lambda: self._landed(ticket),
        )

        def done(outcome: object) -> None:
            if isinstance(outcome, BaseException):
                outcome = conflict_of(outcome)
                if isinstance(outcome, Conflict):
                    self._stale = True
            answer(outcome)

        try:
            await self.backend.submit(Unit(events, receipt=receipt, chain=chain), done)
        except BaseException:
            self._landed(ticket)
            raise
        return later

    def _acknowledged(self, ticket: int, committed: Committed) -> object:
        try:
            for event in committed.events:
                apply_to_player(self.state, event)
                if isinstance(event, ev.Transferred) and event.from_id == self.state.player_id:
                    self.players.credit(event.to_id, to_cents(event.amount), committed.position)
        finally:
            self._landed(ticket)
        first = committed.events[0]
        if isinstance(first, ev.SessionPlayed):
            return first
        return self.state.usd_obbba_balance

    def _landed(self, ticket: int) -> None:
        """A unit is no longer in flight (committed or refused)."""
        self._inflight.pop(ticket, None)
        if not self._inflight:
            self._idle.idle()
        self._maybe_quiet()
