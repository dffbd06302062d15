"""The PTO actor: owns one PTO's funding state, its PTS tokens and its world.

A purchase is one unit of work carried by the buyer's actor (``Pay``): the
player's debit, the PTO's sale, the token and the ledger row commit together or
not at all. The PTO handles one message at a time, so two buyers can never both
get the last share. Sessions of many players in one world are stepped together
(one array operation per step) and each player's outcome is one unit of work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

import anyio
import numpy as np

from ..core import events as ev
from ..core.economy import (
    COMPLETED,
    FAILED,
    FUNDING,
    IN_PROGRESS,
    Failure,
    allocate_play,
    compose_xusd,
    deadline_failure,
    purchase,
    spend_atu,
    split_by_hours,
    tau_k_after,
)
from ..core.errors import StoreError, UbloxError
from ..core.money import to_decimal
from ..core.records import PTO, PlaySession, PTSToken, parse_iso
from ..core.world import F64, WorldParams, cell_of, order_parameter, play_steps, step_world
from ..store.cdt import CdtStore
from ..store.sqlite import rows as ledger
from ..store.sqlite.writer import PersistenceActor, Statement
from .messages import (
    ApplySession,
    Buy,
    CheckDeadline,
    GetPhysics,
    GetPTO,
    GetTokens,
    GetWorld,
    Pay,
    Play,
    PlayRequest,
    PTOMessage,
    SpendAtu,
    StepWorld,
)
from .player import Physics, PlayerActor
from .runtime import Actor

USD = "USD-OBBBA"


@dataclass(frozen=True, slots=True)
class Sale:
    token: PTSToken
    pto: PTO


@dataclass(frozen=True, slots=True)
class AtuOutcome:
    pto: PTO
    completed: bool
    payout: int


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """One player's session, or the error that refused or failed it."""

    player_id: str
    session_id: int = 0
    hours: float = 0.0
    quality: float = 0.0
    xusd: int = 0
    locks: int = 0
    locked_hours: float = 0.0
    tau_k_after: float = 0.0
    error: UbloxError | None = None


class PTOActor(Actor[PTOMessage]):
    def __init__(
        self,
        pto: PTO,
        tokens: list[PTSToken],
        world: dict[str, F64] | None,
        *,
        params: WorldParams,
        db: PersistenceActor,
        cdt: CdtStore,
        players: Callable[[str], PlayerActor],
        world_error: str | None = None,
        autosave_world: bool = True,
        publish: Callable[[ev.Event], None] = lambda event: None,
    ) -> None:
        super().__init__(f"pto:{pto.pto_id}", mailbox_size=256)
        self.state = pto
        self.tokens = {t.token_id: t for t in tokens}
        self.world = world
        self.world_error = world_error
        self.params = params
        self.db = db
        self.cdt = cdt
        self.players = players
        self._next_token = len(tokens) + 1
        # Off in scenario runs: worlds are written, versioned, at each checkpoint instead.
        self.autosave_world = autosave_world
        self.publish = publish

    async def handle(self, message: PTOMessage) -> object:
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
            case SpendAtu(units=units, at=at):
                return await self._spend_atu(units, at)
            case Play(requests=requests, at=at):
                return await self._play(requests, at)
            case StepWorld(steps=steps):
                return await self._step(steps)
            case CheckDeadline(at=at):
                return await self._check_deadline(at)
            case GetWorld():
                self._require_world()
                assert self.world is not None
                return {k: v.copy() for k, v in self.world.items()}
            case _:
                assert_never(message)

    # -- funding ---------------------------------------------------------------

    async def _buy(
        self, player_id: str, hours: int, at: str, receipt: tuple[Statement, ...] = ()
    ) -> Sale:
        decision = purchase(self.state, hours)
        payer = self.players(player_id)
        pto_id = self.state.pto_id
        status = IN_PROGRESS if decision.funded else FUNDING
        token = PTSToken(
            token_id=f"{pto_id}-pts-{self._next_token:06d}",
            game_id=pto_id,
            holder=player_id,
            hours_committed=float(hours),
            purchase_price=decision.price,
            # A read-only peek: tau_k at purchase is a record, not a balance.
            tau_k_at_purchase=payer.state.tau_k,
            purchase_time=at,
        )
        events: list[ev.Event] = [
            ev.SharesBought(
                at=at,
                pto_id=pto_id,
                player_id=player_id,
                token_id=token.token_id,
                hours=hours,
                price=to_decimal(decision.price),
                pts_sold=decision.pts_sold_after,
                pts_offered=self.state.pts_offered,
            )
        ]
        if decision.funded:
            events.append(
                ev.PTOFunded(
                    at=at,
                    pto_id=pto_id,
                    funding_raised=to_decimal(self.state.funding_raised + decision.price),
                )
            )
        await payer.ask(
            Pay(
                amount=decision.price,
                pto_id=pto_id,
                tx_type="investment",
                extra=(
                    ledger.pto_sale(pto_id, hours, decision.price, status),
                    ledger.insert_token(token),
                    *(ev.record(e, self.publish) for e in events),
                    *receipt,
                ),
                at=at,
            )
        )
        self._next_token += 1
        self.tokens[token.token_id] = token
        self.state.pts_sold = decision.pts_sold_after
        self.state.funding_raised += decision.price
        self.state.status = status
        return Sale(dataclasses.replace(token), dataclasses.replace(self.state))

    async def _check_deadline(self, at: str) -> Failure | None:
        failure = deadline_failure(self.state, list(self.tokens.values()), parse_iso(at))
        if failure is None:
            return None
        pto_id = self.state.pto_id
        unit = [ledger.pto_failed(pto_id)]
        for holder, amount in failure.refunds:
            unit.append(ledger.usd_delta(holder, amount))
            unit.append(ledger.ledger_row("refund", pto_id, holder, amount, USD, at, pto_id))
        failed = ev.PTOFailed(
            at=at,
            pto_id=pto_id,
            refunded=to_decimal(failure.total),
            holders=len(failure.refunds),
        )
        unit.append(ev.record(failed, self.publish))
        await self.db.submit(unit)
        self.state.status = FAILED
        for holder, amount in failure.refunds:
            self.players(holder).credit_soon(amount)
        return failure

    async def _spend_atu(self, units: int, at: str) -> AtuOutcome:
        decision = spend_atu(self.state, units, escrow=self.state.funding_raised)
        pto_id = self.state.pto_id
        spent = ev.record(
            ev.AtuSpent(
                at=at,
                pto_id=pto_id,
                units=units,
                atu_spent=decision.atu_spent_after,
                atu_required=self.state.atu_required,
            ),
            self.publish,
        )
        if not decision.completes:
            await self.db.submit(
                [ledger.pto_atu(pto_id, decision.atu_spent_after, IN_PROGRESS, None), spent]
            )
            self.state.atu_spent = decision.atu_spent_after
            return AtuOutcome(dataclasses.replace(self.state), False, 0)
        creator = self.state.creator_id
        unit = [ledger.pto_atu(pto_id, decision.atu_spent_after, COMPLETED, at), spent]
        if decision.payout:
            unit.append(ledger.usd_delta(creator, decision.payout))
            unit.append(
                ledger.ledger_row(
                    "pto_completion", pto_id, creator, decision.payout, USD, at, pto_id
                )
            )
        completed = ev.PTOCompleted(
            at=at, pto_id=pto_id, creator_id=creator, payout=to_decimal(decision.payout)
        )
        unit.append(ev.record(completed, self.publish))
        await self.db.submit(unit)
        self.state.atu_spent = decision.atu_spent_after
        self.state.status = COMPLETED
        self.state.completion_time = at
        if decision.payout:
            self.players(creator).credit_soon(decision.payout)
        return AtuOutcome(dataclasses.replace(self.state), True, decision.payout)

    # -- the world ---------------------------------------------------------------

    def _require_world(self) -> None:
        if self.world is None:
            raise StoreError(
                f"the world of {self.state.pto_id} could not be loaded ({self.world_error}); "
                "restore a backup or run `ublox-sim verify`"
            )

    def _mark_world_dirty(self) -> None:
        assert self.world is not None and self.state.world_cdt_id is not None
        if self.autosave_world:
            self.cdt.mark_dirty(self.state.world_cdt_id, self.world)

    async def _step(self, steps: int) -> float:
        if self.world is None or steps <= 0:
            return self.state.aci_coherence_score
        theta = step_world(self.world["theta"], self.world["omega"], self.params, steps)
        aci = order_parameter(theta)
        await self.db.submit([ledger.pto_aci(self.state.pto_id, aci)])
        self.world["theta"] = theta
        self.state.aci_coherence_score = aci
        self._mark_world_dirty()
        return aci

    async def _play(self, requests: tuple[PlayRequest, ...], at: str) -> list[SessionOutcome]:
        outcomes: dict[int, SessionOutcome] = {}
        valid: list[tuple[int, PlayRequest, tuple[tuple[str, float], ...], PlayerActor]] = []
        claimed: dict[str, float] = {}
        for index, request in enumerate(requests):
            try:
                self._require_world()
                actor = self.players(request.player_id)
                tokens = self._held_tokens(request.player_id, claimed)
                allocation = allocate_play(self.state, tokens, request.hours)
            except UbloxError as exc:
                outcomes[index] = SessionOutcome(request.player_id, error=exc)
                continue
            for token_id, hours in allocation:
                claimed[token_id] = claimed.get(token_id, 0.0) + hours
            valid.append((index, request, allocation, actor))
        if valid:
            for index, outcome in await self._run_sessions(valid, at):
                outcomes[index] = outcome
        return [outcomes[i] for i in range(len(requests))]

    def _held_tokens(self, player_id: str, claimed: dict[str, float]) -> list[PTSToken]:
        """The player's tokens, less hours already claimed by earlier requests in this batch."""
        return [
            dataclasses.replace(t, hours_played=t.hours_played + claimed.get(t.token_id, 0.0))
            for t in self.tokens.values()
            if t.holder == player_id
        ]

    async def _run_sessions(
        self,
        valid: list[tuple[int, PlayRequest, tuple[tuple[str, float], ...], PlayerActor]],
        at: str,
    ) -> list[tuple[int, SessionOutcome]]:
        assert self.world is not None
        snapshots: list[object] = [None] * len(valid)

        async def snapshot(k: int, actor: PlayerActor) -> None:
            snapshots[k] = await actor.ask(GetPhysics())

        async with anyio.create_task_group() as tg:  # reads only: order does not matter
            for k, (_, _, _, actor) in enumerate(valid):
                tg.start_soon(snapshot, k, actor)
        physics = [p for p in snapshots if isinstance(p, Physics)]
        assert len(physics) == len(valid)
        size = self.params.size
        cells = [cell_of(p.player.position_x, p.player.position_y, size) for p in physics]
        result = play_steps(
            self.world["theta"],
            self.world["omega"],
            self.params,
            cells_y=np.array([c[0] for c in cells], dtype=np.int64),
            cells_x=np.array([c[1] for c in cells], dtype=np.int64),
            phase=np.array([p.player.phase for p in physics]),
            freq=np.array([p.player.resonance_freq for p in physics]),
            tau_k=np.array([p.player.tau_k for p in physics]),
            steps=np.array(
                [self.params.steps_for(r.hours) for _, r, _, _ in valid], dtype=np.int64
            ),
        )
        aci = order_parameter(result.theta)
        pto_id = self.state.pto_id
        outcomes: list[tuple[int, SessionOutcome]] = []

        async def apply(k: int) -> None:
            index, request, allocation, actor = valid[k]
            quality = float(result.quality[k])
            xusd = compose_xusd(request.hours, quality, self.state.amplification)
            shares = split_by_hours(xusd, allocation)
            locked_hours = float(result.locked_steps[k]) / self.params.steps_per_hour
            session = PlaySession(
                session_id=None,
                pto_id=pto_id,
                player_id=request.player_id,
                duration=request.hours,
                quality=quality,
                xUSD_earned=xusd,
                timestamp=at,
                phase_locks=int(result.locks[k]),
            )
            extra = (
                *(
                    ledger.token_played(t, h, x)
                    for (t, h), x in zip(allocation, shares, strict=True)
                ),
                ledger.pto_session(pto_id, xusd, aci),
            )
            try:
                session_id = await actor.ask(
                    ApplySession(
                        pto_id=pto_id,
                        hours=request.hours,
                        quality=quality,
                        coherence=float(result.coherence[k]),
                        phase=float(result.phase[k]),
                        locks=int(result.locks[k]),
                        locked_hours=locked_hours,
                        xusd=xusd,
                        session=session,
                        extra=extra,
                        receipt=request.receipt,
                    )
                )
            except UbloxError as exc:
                outcomes.append((index, SessionOutcome(request.player_id, error=exc)))
                return
            assert isinstance(session_id, int)
            for (token_id, hours), share in zip(allocation, shares, strict=True):
                token = self.tokens[token_id]
                token.hours_played += hours
                token.xUSD_accumulated += share
            self.state.xUSD_pool += xusd
            tau_before = physics[k].player.tau_k
            outcomes.append(
                (
                    index,
                    SessionOutcome(
                        request.player_id,
                        session_id=session_id,
                        hours=request.hours,
                        quality=quality,
                        xusd=xusd,
                        locks=int(result.locks[k]),
                        locked_hours=locked_hours,
                        tau_k_after=tau_k_after(tau_before, quality),
                    ),
                )
            )

        # Each player's unit goes to the persistence actor at once (one group commit);
        # they are sent in request order, so the ledger's order does not depend on timing.
        async with anyio.create_task_group() as tg:
            for k in range(len(valid)):
                tg.start_soon(apply, k)
        if any(o.error is None for _, o in outcomes):
            self.world["theta"] = result.theta
            self.state.aci_coherence_score = aci
            self._mark_world_dirty()
        return outcomes
