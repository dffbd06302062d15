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
(``Reserve``) and learns the outcome (``Settle``). A player actor asks nobody (PTO
actors ask players, never the reverse), so actor requests cannot form a cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import assert_never

import anyio

from ..core import events as ev
from ..core.economy import apply_to_player, check_funds, tau_k_after
from ..core.money import to_cents, to_decimal
from ..core.records import Player
from ..store.backend import Backend, Committed, Receipt, Unit
from .messages import (
    ApplySession,
    Credit,
    Deposit,
    GetPhysics,
    GetPlayer,
    Physics,
    PlayerMessage,
    Reservation,
    Reserve,
    SendTransfer,
    Settle,
)
from .runtime import Actor, Later, answer_when_done


class PlayerActor(Actor[PlayerMessage]):
    def __init__(
        self,
        player: Player,
        backend: Backend,
        *,
        players: Callable[[str], PlayerActor],
        mailbox_size: int = 64,
    ) -> None:
        super().__init__(f"player:{player.player_id}", mailbox_size=mailbox_size)
        self.state = player  # acknowledged
        self._inflight: dict[int, tuple[ev.Event, ...]] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self._reserved: dict[int, int] = {}
        self._tickets = 0
        self.backend = backend
        self.players = players
        # Credits told to this actor and not yet applied (see Engine.settle).
        self.unsettled = 0

    async def handle(self, message: PlayerMessage) -> object:
        match message:
            case GetPlayer():
                return dataclasses.replace(self.state)
            case Deposit(amount=amount, at=at, receipt=receipt):
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
            case Credit(usd=usd):
                self.state.usd_obbba_balance += usd
                self.unsettled -= 1
                return None
            case Reserve(amount=amount, pto_id=pto_id):
                check_funds(self._available(), amount, f"pay {pto_id}")
                self._tickets += 1
                self._reserved[self._tickets] = amount
                # tau_k at purchase is a record of the acknowledged value.
                return Reservation(self._tickets, self.state.tau_k)
            case Settle(ticket=ticket, committed=committed):
                amount = self._reserved.pop(ticket)
                if committed:
                    self.state.usd_obbba_balance -= amount
                return None
            case GetPhysics():
                s = self.state
                return Physics(s.position_x, s.position_y, s.phase, s.resonance_freq, s.tau_k)
            case ApplySession() as s:
                await self._idle.wait()  # tau_k moves from the acknowledged value
                return await self._decide((*self._session_events(s),), s.receipt)
            case _:
                assert_never(message)

    def credit_soon(self, usd: int) -> None:
        """Tell this player to apply a credit already committed by someone else."""
        self.unsettled += 1
        self.tell_soon(Credit(usd=usd))

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

    async def _decide(self, events: tuple[ev.Event, ...], receipt: Receipt | None) -> Later:
        self._tickets += 1
        ticket = self._tickets
        self._inflight[ticket] = events
        self._idle = anyio.Event()
        later = Later()
        done = answer_when_done(
            later,
            lambda committed: self._acknowledged(ticket, committed),
            lambda: self._landed(ticket),
        )
        try:
            await self.backend.submit(Unit(events, receipt=receipt), done)
        except BaseException:
            self._landed(ticket)
            raise
        return later

    def _acknowledged(self, ticket: int, committed: Committed) -> object:
        try:
            for event in committed.events:
                apply_to_player(self.state, event)
                if isinstance(event, ev.Transferred) and event.from_id == self.state.player_id:
                    self.players(event.to_id).credit_soon(to_cents(event.amount))
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
            self._idle.set()
