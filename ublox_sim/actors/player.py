"""The player actor: owns one player's balances and physics state.

Every change is persisted as one unit of work and applied to memory only after
the persistence actor acknowledged it, so memory never runs ahead of disk. A
player actor asks nobody but the persistence actor (PTO actors ask players, never
the reverse), so actor requests cannot form a cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import assert_never

from ..core import events as ev
from ..core.economy import check_funds, tau_k_after
from ..core.money import to_decimal
from ..core.records import Player
from ..store.sqlite import rows as ledger
from ..store.sqlite.writer import PersistenceActor
from .messages import (
    ApplySession,
    Credit,
    Deposit,
    GetPhysics,
    GetPlayer,
    Pay,
    PlayerMessage,
    SendTransfer,
)
from .runtime import Actor

USD = "USD-OBBBA"
XUSD = "xUSD"


@dataclasses.dataclass(frozen=True, slots=True)
class Physics:
    """A consistent copy of the player's physics, taken before a session."""

    player: Player


class PlayerActor(Actor[PlayerMessage]):
    def __init__(
        self,
        player: Player,
        db: PersistenceActor,
        *,
        mailbox_size: int = 64,
        publish: Callable[[ev.Event], None] = lambda event: None,
    ) -> None:
        super().__init__(f"player:{player.player_id}", mailbox_size=mailbox_size)
        self.state = player
        self.db = db
        self.publish = publish
        # Credits told to this actor and not yet applied (see Engine.settle).
        self.unsettled = 0

    async def handle(self, message: PlayerMessage) -> object:
        match message:
            case GetPlayer():
                return dataclasses.replace(self.state)
            case Deposit(amount=amount, at=at, receipt=receipt):
                await self.db.submit(
                    [
                        ledger.usd_delta(self.state.player_id, amount),
                        ledger.ledger_row("deposit", None, self.state.player_id, amount, USD, at),
                        ev.record(
                            ev.Deposited(
                                at=at, player_id=self.state.player_id, amount=to_decimal(amount)
                            ),
                            self.publish,
                        ),
                        *receipt,
                    ]
                )
                self.state.usd_obbba_balance += amount
                return self.state.usd_obbba_balance
            case SendTransfer(to=target, amount=amount, at=at, receipt=receipt):
                check_funds(self.state.usd_obbba_balance, amount, "transfer")
                target_id = target.state.player_id
                await self.db.submit(
                    [
                        ledger.usd_delta(self.state.player_id, -amount),
                        ledger.usd_delta(target_id, amount),
                        ledger.ledger_row(
                            "transfer", self.state.player_id, target_id, amount, USD, at
                        ),
                        ev.record(
                            ev.Transferred(
                                at=at,
                                from_id=self.state.player_id,
                                to_id=target_id,
                                amount=to_decimal(amount),
                            ),
                            self.publish,
                        ),
                        *receipt,
                    ]
                )
                self.state.usd_obbba_balance -= amount
                target.credit_soon(amount)
                return self.state.usd_obbba_balance
            case Credit(usd=usd):
                self.state.usd_obbba_balance += usd
                self.unsettled -= 1
                return None
            case Pay(amount=amount, pto_id=pto_id, tx_type=tx_type, extra=extra, at=at):
                check_funds(self.state.usd_obbba_balance, amount, f"pay {pto_id}")
                await self.db.submit(
                    [
                        ledger.usd_delta(self.state.player_id, -amount),
                        *extra,
                        ledger.ledger_row(
                            tx_type, self.state.player_id, pto_id, amount, USD, at, pto_id
                        ),
                    ]
                )
                self.state.usd_obbba_balance -= amount
                return dataclasses.replace(self.state)
            case GetPhysics():
                return Physics(dataclasses.replace(self.state))
            case ApplySession() as s:
                return await self._apply_session(s)
            case _:
                assert_never(message)

    def credit_soon(self, usd: int) -> None:
        """Tell this player to apply a credit already committed by someone else."""
        self.unsettled += 1
        self.tell_soon(Credit(usd=usd))

    async def _apply_session(self, s: ApplySession) -> int:
        # Two sessions of one player in two worlds may overlap: both count, counters
        # add up, and the later commit sets phase and quality (tau_k moves from the
        # current value, so neither update is lost). No refusal needed.
        after = dataclasses.replace(
            self.state,
            quality_score=s.quality,
            tau_k=tau_k_after(self.state.tau_k, s.quality),
            phase=s.phase,
            coherence=s.coherence,
        )
        unit = [
            ledger.player_session(
                after, xusd=s.xusd, hours=s.hours, locks=s.locks, locked_hours=s.locked_hours
            ),
            *s.extra,
            ledger.insert_session(s.session),
        ]
        if s.xusd > 0:
            unit.append(
                ledger.ledger_row(
                    "xusd_composition",
                    None,
                    self.state.player_id,
                    s.xusd,
                    XUSD,
                    s.session.timestamp,
                    s.pto_id,
                )
            )
        # The session's events follow its insert (SessionPlayed takes its id from it).
        at = s.session.timestamp
        player_id = self.state.player_id
        unit.append(
            ev.record(
                ev.SessionPlayed(
                    at=at,
                    pto_id=s.pto_id,
                    player_id=player_id,
                    session_id=0,
                    hours=s.hours,
                    quality=s.quality,
                    xUSD_earned=to_decimal(s.xusd),
                    phase_locks=s.locks,
                ),
                self.publish,
            )
        )
        if s.locks:
            unit.append(
                ev.record(
                    ev.PhaseLock(at=at, pto_id=s.pto_id, player_id=player_id, locks=s.locks),
                    self.publish,
                )
            )
        unit.extend(s.receipt)  # last: it reads back the rows this unit wrote
        session_id, *_ = await self.db.submit(unit)
        after.xUSD_balance += s.xusd
        after.total_play_time += s.hours
        after.phase_locks_count += s.locks
        after.memory_depth += s.locked_hours
        self.state = after
        return session_id
