"""An in-memory backend with dicts: the ``Backend`` protocol, DELIBERATELY BROKEN.

It exists to show that the conformance suite can fail (run it with
``UBLOX_CONFORMANCE_FAKE=1``). It gets most things right, and these wrong, each the
kind of mistake a real second backend could make:

1. NOT ATOMIC (``partial``): it applies a unit's events one by one to its live state, so a unit
   whose second event is refused leaves its first event's writes behind.
2. NOT NUMBERED IN COMMIT ORDER (``order``): a unit's logged events are numbered (and published)
   last to first.
3. ACKS BEFORE DURABLE (``volatile``): acknowledged units live only in memory until ``aclose`` (or
   every ``SPILL_EVERY`` units); a killed process loses them.
4. LEADERBOARD TIES UNORDERED (``ties``): ties stay in registration order, not by id.
5. OFF BY ONE AT THE DEADLINE (``deadline``): a PTO whose deadline is exactly ``at`` is not past it.
6. POSITIONS OFF BY ONE (``position``): ``load_player_at`` answers the position the *next*
   unit will get, so a credit of a unit submitted after the read looks already loaded.
7. IDS ARE NOT ONE NAMESPACE IN BULK (``taken``): ``taken`` looks at players only.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from anyio.abc import TaskGroup
from numpy.typing import NDArray

from ublox_sim.core import events as ev
from ublox_sim.core.errors import StoreLocked, UnitRejected
from ublox_sim.core.events import EventBus
from ublox_sim.core.money import USD, XUSD, to_cents
from ublox_sim.core.records import (
    PTO,
    RECORD_TYPES,
    Player,
    PlaySession,
    PTSToken,
    Record,
    Transaction,
    to_seed,
)
from ublox_sim.store.backend import Arrays, Checkpoint, Committed, Done, Receipt, RunRecord, Unit
from ublox_sim.store.export import EXPORT_FORMAT, EXPORT_VERSION, encode_array, export_digest
from ublox_sim.store.sqlite.schema import SCHEMA_VERSION
from ublox_sim.store.verify import Finding, ledger_findings, ledger_sums

SPILL_EVERY = 1000
# Each defect can be left out (``UBLOX_CONFORMANCE_FAKE_DEFECTS``, see conftest), to
# show which tests catch which, and that the fake without them passes the suite.
DEFECTS = frozenset({"partial", "order", "volatile", "ties", "deadline", "position", "taken"})


@dataclass
class _Data:
    players: dict[str, Player] = field(default_factory=dict)
    ptos: dict[str, PTO] = field(default_factory=dict)
    tokens: dict[str, PTSToken] = field(default_factory=dict)
    transactions: list[Transaction] = field(default_factory=list)
    sessions: list[PlaySession] = field(default_factory=list)
    events: list[tuple[int, str, str]] = field(default_factory=list)
    last_seq: int = 0
    receipts: dict[tuple[str, str], tuple[str, int, str]] = field(default_factory=dict)
    token_versions: dict[str, int] = field(default_factory=dict)
    worlds: dict[str, dict[str, NDArray[np.generic]]] = field(default_factory=dict)
    run: RunRecord | None = None


# The "disk": what survives a process (here: an open/close) at each location.
_DISKS: dict[str, _Data] = {}
_BACKUPS: dict[str, dict[str, _Data]] = {}
# The "lock": locations open now. A killed process's lock goes with it (see kill()).
_OPEN: set[str] = set()


class BrokenFakeBackend:
    def __init__(
        self,
        location: Path,
        *,
        hold_commits: bool = False,
        defects: frozenset[str] = DEFECTS,
    ) -> None:
        self.location = str(location)
        self.defects = defects
        self.bus = EventBus()
        self.hold_commits = hold_commits
        self._data = copy.deepcopy(_DISKS.get(self.location, _Data()))
        self._durable = copy.deepcopy(self._data)  # held mode: the last checkpoint
        self._closed = False
        self._units = 0
        self._submitted = 0  # positions: every unit submitted, committed or refused
        self._hook: Callable[[float, int], None] | None = None
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        if self.location in _OPEN:
            raise StoreLocked(f"{self.location} is already open")
        _OPEN.add(self.location)
        self._started = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._spill()
        if self._started:
            _OPEN.discard(self.location)

    def _spill(self) -> None:
        source = self._durable if self.hold_commits else self._data
        _DISKS[self.location] = copy.deepcopy(source)

    def kill(self) -> None:
        """The process died: memory is gone, the lock with it; nothing is written."""
        self._closed = True
        _OPEN.discard(self.location)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def units_committed(self) -> int:
        return self._units

    def on_batch_committed(self, hook: Callable[[float, int], None] | None) -> None:
        self._hook = hook

    # -- writes ----------------------------------------------------------------------

    async def submit(self, unit: Unit, done: Done) -> None:
        future = self._apply_unit(unit)
        # Like the real writer: the outcome arrives from the event loop, not in this call.
        asyncio.get_running_loop().call_soon(
            done, future.exception() if future.exception() is not None else future.result()
        )

    async def submit_many(self, units: Sequence[Unit], done: Done) -> None:
        for unit in units:
            await self.submit(unit, done)

    def _apply_unit(self, unit: Unit) -> asyncio.Future[Committed]:
        future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        self._submitted += 1
        position = self._submitted
        before = None if "partial" in self.defects else copy.deepcopy(self._data)
        try:
            for world in unit.worlds:
                self._data.worlds[world.world_id] = _copy_arrays(world.arrays)
            for event in unit.events:
                self._apply(event)  # DEFECT 1: one by one, no rollback
            if unit.receipt is not None:
                self._store_receipt(unit.receipt, unit.events)
        except UnitRejected as exc:
            if before is not None:
                self._data = before
            future.set_exception(exc)
            return future
        logged = [i for i, e in enumerate(unit.events) if e.logged]
        landed = list(unit.events)
        base = self._data.last_seq
        order = list(reversed(logged)) if "order" in self.defects else logged
        for rank, index in enumerate(order):  # DEFECT 2: last to first
            event = landed[index]
            seq = base + rank + 1
            if isinstance(event, ev.SessionPlayed) and event.session_id == 0:
                event = dataclasses.replace(
                    event, session_id=self._data.sessions[-1].session_id or 0
                )
            event = dataclasses.replace(event, seq=seq)
            landed[index] = event
            self._data.events.append((seq, event.kind, ev.payload(event)))
        self._data.events.sort()
        self._data.last_seq = base + len(logged)
        for index in order:
            self.bus.publish(landed[index])
        self._units += 1
        if self._hook is not None:
            self._hook(0.0, 1)
        every = SPILL_EVERY if "volatile" in self.defects else 1
        if not self.hold_commits and self._units % every == 0:
            self._spill()  # DEFECT 3: only now, not before the ack
        future.set_result(Committed(tuple(landed), position))
        return future

    async def commit(self, unit: Unit) -> Committed:
        return await self._apply_unit(unit)

    def _player(self, player_id: str) -> Player:
        player = self._data.players.get(player_id)
        if player is None:
            raise UnitRejected(f"no player {player_id}")
        return player

    def _pto(self, pto_id: str) -> PTO:
        pto = self._data.ptos.get(pto_id)
        if pto is None:
            raise UnitRejected(f"no PTO {pto_id}")
        return pto

    def _usd(self, player_id: str, delta: int) -> None:
        player = self._player(player_id)
        if player.usd_obbba_balance + delta < 0:
            raise UnitRejected(f"{player_id}'s balance would go negative")
        player.usd_obbba_balance += delta

    def _ledger(
        self, kind: str, source: str | None, target: str | None, cents: int, at: str, **kw: Any
    ) -> None:
        tx_id = len(self._data.transactions) + 1
        currency = kw.get("currency", USD)
        pto_id = kw.get("pto_id")
        self._data.transactions.append(
            Transaction(tx_id, kind, source, target, cents, currency, pto_id, at, None)
        )

    def _apply(self, event: ev.Event) -> None:
        d = self._data
        match event:
            case ev.PlayerRegistered(record=player):
                if player.player_id in d.players:
                    raise UnitRejected(f"player {player.player_id} exists")
                d.players[player.player_id] = dataclasses.replace(player)
                if player.usd_obbba_balance:
                    self._ledger(
                        "deposit", None, player.player_id, player.usd_obbba_balance, event.at
                    )
            case ev.Deposited(player_id=pid, amount=amount):
                self._usd(pid, to_cents(amount))
                self._ledger("deposit", None, pid, to_cents(amount), event.at)
            case ev.Transferred(from_id=source, to_id=target, amount=amount):
                cents = to_cents(amount)
                self._usd(source, -cents)
                self._usd(target, cents)
                self._ledger("transfer", source, target, cents, event.at)
            case ev.PTOLaunched(record=pto):
                if pto.pto_id in d.ptos:
                    raise UnitRejected(f"PTO {pto.pto_id} exists")
                self._player(pto.creator_id)
                d.ptos[pto.pto_id] = dataclasses.replace(pto)
            case ev.SharesBought(token=bought, pto_id=pto_id, hours=hours):
                self._usd(bought.holder, -bought.purchase_price)
                pto = self._pto(pto_id)
                if pto.pts_sold + hours > pto.pts_offered:
                    raise UnitRejected("oversold")
                pto.pts_sold += hours
                pto.funding_raised += bought.purchase_price
                if bought.token_id in d.tokens:
                    raise UnitRejected(f"token {bought.token_id} exists")
                d.tokens[bought.token_id] = dataclasses.replace(bought)
                self._ledger(
                    "investment",
                    bought.holder,
                    pto_id,
                    bought.purchase_price,
                    event.at,
                    pto_id=pto_id,
                )
            case ev.PTOFunded(pto_id=pto_id):
                self._pto(pto_id).status = "in_progress"
            case ev.PTOFailed(pto_id=pto_id, refunds=refunds):
                self._pto(pto_id).status = "failed"
                for holder, cents in refunds:
                    self._usd(holder, cents)
                    self._ledger("refund", pto_id, holder, cents, event.at, pto_id=pto_id)
            case ev.AtuSpent(pto_id=pto_id, atu_spent=spent):
                self._pto(pto_id).atu_spent = spent
            case ev.PTOCompleted(pto_id=pto_id, creator_id=creator, payout=payout):
                pto = self._pto(pto_id)
                pto.status = "completed"
                pto.completion_time = event.at
                cents = to_cents(payout)
                if cents:
                    self._usd(creator, cents)
                    self._ledger("pto_completion", pto_id, creator, cents, event.at, pto_id=pto_id)
            case ev.SessionPlayed() as s:
                xusd = to_cents(s.xUSD_earned)
                player = self._player(s.player_id)
                pto = self._pto(s.pto_id)
                player.xUSD_balance += xusd
                player.total_play_time += s.hours
                player.phase_locks_count += s.phase_locks
                player.memory_depth += s.memory_depth_added
                player.quality_score = s.quality
                player.tau_k, player.phase, player.coherence = s.tau_k, s.phase, s.coherence
                for token_id, played_hours, share in s.shares:
                    played = d.tokens[token_id]
                    played.hours_played += played_hours
                    played.xUSD_accumulated += share
                pto.xUSD_pool += xusd
                pto.aci_coherence_score = s.aci
                d.sessions.append(
                    PlaySession(
                        len(d.sessions) + 1,
                        s.pto_id,
                        s.player_id,
                        s.hours,
                        s.quality,
                        xusd,
                        s.at,
                        s.phase_locks,
                    )
                )
                if xusd > 0:
                    self._ledger(
                        "xusd_composition",
                        None,
                        s.player_id,
                        xusd,
                        s.at,
                        currency=XUSD,
                        pto_id=s.pto_id,
                    )
            case ev.WorldStepped(pto_id=pto_id, aci=aci):
                self._pto(pto_id).aci_coherence_score = aci
            case _:
                pass

    def _store_receipt(self, receipt: Receipt, events: tuple[ev.Event, ...]) -> None:
        import json

        key = (receipt.principal, receipt.key)
        if key in self._data.receipts:
            raise UnitRejected(f"receipt {key} exists")
        first = events[0]
        body: dict[str, Any]
        if receipt.response == "token" and isinstance(first, ev.SharesBought):
            body = {"token": dataclasses.asdict(self._data.tokens[first.token_id])}
        elif receipt.response == "session":
            s = self._data.sessions[-1]
            body = {
                "session": dataclasses.asdict(s),
                "tau_k_after": self._data.players[s.player_id].tau_k,
            }
        else:
            pid = first.from_id if isinstance(first, ev.Transferred) else first.player_id  # type: ignore[attr-defined]
            body = {"player": dataclasses.asdict(self._data.players[pid])}
        self._data.receipts[key] = (receipt.fingerprint, receipt.status, json.dumps(body))

    async def save_world(self, world_id: str, arrays: Arrays) -> None:
        self._data.worlds[world_id] = _copy_arrays(arrays)
        self._durable.worlds[world_id] = _copy_arrays(arrays)

    def world_changed(self, world_id: str, arrays: Arrays) -> None:
        if not self.hold_commits:
            self._data.worlds[world_id] = _copy_arrays(arrays)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        for world in checkpoint.worlds:
            self._data.worlds[world.world_id] = _copy_arrays(world.arrays)
        if checkpoint.run is not None:
            self._data.run = checkpoint.run
        if self.hold_commits:
            self._durable = copy.deepcopy(self._data)
            self._spill()

    # -- reads -----------------------------------------------------------------------

    async def load_player(self, player_id: str) -> Player | None:
        found = self._data.players.get(player_id)
        return None if found is None else dataclasses.replace(found)

    async def load_player_at(self, player_id: str) -> tuple[Player | None, int]:
        # Units apply as they are submitted: the row holds every one submitted so far.
        position = self._submitted + 1 if "position" in self.defects else self._submitted
        return await self.load_player(player_id), position  # DEFECT 6: one too far

    async def load_pto(self, pto_id: str) -> PTO | None:
        found = self._data.ptos.get(pto_id)
        return None if found is None else dataclasses.replace(found)

    async def load_token(self, token_id: str) -> PTSToken | None:
        found = self._data.tokens.get(token_id)
        return None if found is None else dataclasses.replace(found)

    async def load_tokens(self, pto_id: str) -> list[PTSToken]:
        return [
            dataclasses.replace(t)
            for _, t in sorted(self._data.tokens.items())
            if t.game_id == pto_id
        ]

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]:
        return _copy_arrays(self._data.worlds[world_id])

    async def exists(self, ident: str) -> bool:
        return ident in self._data.players or ident in self._data.ptos

    async def load_all(self, cls: type[Record]) -> list[Any]:
        d = self._data
        table: dict[type[Any], list[Any]] = {
            Player: [p for _, p in sorted(d.players.items())],
            PTO: [p for _, p in sorted(d.ptos.items())],
            PTSToken: [t for _, t in sorted(d.tokens.items())],
            Transaction: list(d.transactions),
            PlaySession: list(d.sessions),
        }
        return [dataclasses.replace(r) for r in table[cls]]

    async def ptos_past_deadline(self, at: str) -> list[str]:
        def past(deadline: str) -> bool:
            if "deadline" in self.defects:
                return deadline < at  # DEFECT 5: should be <=
            return deadline <= at

        return sorted(
            p.pto_id
            for p in self._data.ptos.values()
            if p.status == "funding" and p.funding_deadline is not None and past(p.funding_deadline)
        )

    async def player_ids(self) -> list[str]:
        return sorted(self._data.players)

    async def pto_ids(self) -> list[str]:
        return sorted(self._data.ptos)

    async def taken(self, idents: Sequence[str]) -> set[str]:
        held = set(self._data.players)
        if "taken" not in self.defects:  # DEFECT 7: PTO ids are forgotten
            held |= set(self._data.ptos)
        return {i for i in idents if i in held}

    async def open_hours(self, statuses: Sequence[str]) -> dict[str, dict[str, float]]:
        wanted = set(statuses)
        left: dict[str, dict[str, float]] = {}
        for t in sorted(self._data.tokens.values(), key=lambda t: (t.game_id, t.token_id)):
            pto = self._data.ptos.get(t.game_id)
            if pto is None or pto.status not in wanted:
                continue
            room = float(t.hours_committed) - float(t.hours_played)
            if room > 1e-9:
                per = left.setdefault(t.game_id, {})
                per[t.holder] = per.get(t.holder, 0.0) + room
        return left

    async def stats(self) -> dict[str, dict[str, Any]]:
        d = self._data
        by_status: dict[str, int] = {}
        for p in d.ptos.values():
            by_status[p.status] = by_status.get(p.status, 0) + 1
        volume: dict[str, float] = {}
        for t in d.transactions:
            k = f"{t.tx_type}/{t.currency}"
            volume[k] = volume.get(k, 0) + t.amount / 100
        players = list(d.players.values())
        return {
            "players": {
                "count": len(players),
                "usd_obbba_total": sum(p.usd_obbba_balance for p in players) / 100,
                "xUSD_total": sum(p.xUSD_balance for p in players) / 100,
                "total_play_time": sum(p.total_play_time for p in players),
                "phase_locks_total": sum(p.phase_locks_count for p in players),
            },
            "ptos": {
                "count": len(d.ptos),
                "by_status": by_status,
                "funding_raised_total": sum(p.funding_raised for p in d.ptos.values()) / 100,
                "xUSD_pool_total": sum(p.xUSD_pool for p in d.ptos.values()) / 100,
                "atu_spent_total": sum(p.atu_spent for p in d.ptos.values()),
            },
            "pts_tokens": {
                "count": len(d.tokens),
                "hours_committed_total": sum(t.hours_committed for t in d.tokens.values()),
                "hours_played_total": sum(t.hours_played for t in d.tokens.values()),
                "purchase_price_total": sum(t.purchase_price for t in d.tokens.values()) / 100,
            },
            "transactions": {"count": len(d.transactions), "volume": volume},
            "play_sessions": {
                "count": len(d.sessions),
                "duration_total": sum(s.duration for s in d.sessions),
                "xUSD_earned_total": sum(s.xUSD_earned for s in d.sessions) / 100,
                "quality_mean": (
                    sum(s.quality for s in d.sessions) / len(d.sessions) if d.sessions else 0
                ),
            },
        }

    async def leaderboard(self, top: int) -> list[Player]:
        # DEFECT 4: ties keep registration order.
        ranked = sorted(self._data.players.values(), key=lambda p: -p.xUSD_balance)
        if "ties" not in self.defects:
            ranked.sort(key=lambda p: (-p.xUSD_balance, p.player_id))
        return [dataclasses.replace(p) for p in ranked[: max(0, top)]]

    async def transactions_of(
        self, player_id: str, *, after: int = 0, limit: int = 50
    ) -> list[Transaction]:
        mine = [
            dataclasses.replace(t)
            for t in self._data.transactions
            if (t.tx_id or 0) > after and player_id in (t.from_player, t.to_player)
        ]
        return mine[:limit]

    async def events_after(self, since: int, limit: int = 500) -> list[tuple[int, str, str]]:
        return [e for e in self._data.events if e[0] > since][:limit]

    async def event_log_span(self) -> tuple[int, int]:
        oldest = self._data.events[0][0] if self._data.events else 0
        return oldest, self._data.last_seq

    async def find_receipt(self, principal: str, key: str) -> tuple[str, int, str] | None:
        return self._data.receipts.get((principal, key))

    async def token_versions(self) -> dict[str, int]:
        return dict(self._data.token_versions)

    async def set_token_version(self, player_id: str, version: int) -> None:
        self._data.token_versions[player_id] = version

    async def run_record(self) -> RunRecord | None:
        return self._data.run

    async def run_status(self) -> dict[str, Any] | None:
        run = self._data.run
        if run is None:
            return None
        return {
            "name": run.name,
            "tick": run.tick,
            "total_ticks": run.total_ticks,
            "finished": run.finished,
        }

    async def is_empty(self) -> bool:
        d = self._data
        return not (d.players or d.ptos or d.transactions)

    # -- maintenance -----------------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path:
        name = name or f"backup_{len(_BACKUPS.get(self.location, {})) + 1}"
        _BACKUPS.setdefault(self.location, {})[name] = copy.deepcopy(self._data)
        return Path(self.location) / "backups" / name

    def list_backups(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "created": "",
                "size": 0,
                "path": str(Path(self.location) / "backups" / name),
            }
            for name in _BACKUPS.get(self.location, {})
        ]

    async def restore_backup(self, name: str) -> None:
        self._data = copy.deepcopy(_BACKUPS[self.location][name])
        self._spill()

    async def export_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "schema_version": SCHEMA_VERSION,
        }
        for cls in RECORD_TYPES:
            data[cls.TABLE] = [to_seed(r) for r in await self.load_all(cls)]
        for pto in data["ptos"]:
            if pto["world_cdt_id"]:
                arrays = self._data.worlds[pto["world_cdt_id"]]
                pto["cdt"] = {n: encode_array(a) for n, a in sorted(arrays.items())}
        data["digest"] = export_digest(data)
        return data

    async def export_to_json(self, path: Path | str | None = None) -> Path:
        raise NotImplementedError

    async def verify(self) -> list[Any]:
        d = self._data
        sums = ledger_sums(
            (t.from_player, t.to_player, t.amount, t.currency) for t in d.transactions
        )
        findings: list[Finding] = ledger_findings(
            ((p.player_id, p.usd_obbba_balance, p.xUSD_balance) for p in d.players.values()),
            ((p.pto_id, p.status, p.funding_raised) for p in d.ptos.values()),
            sums,
        )
        for pto in d.ptos.values():
            if pto.world_cdt_id and pto.world_cdt_id not in d.worlds:
                findings.append(Finding("cdt", f"pto {pto.pto_id}", "world missing"))
        return findings


def _copy_arrays(arrays: Arrays) -> dict[str, NDArray[np.generic]]:
    return {name: np.array(a, copy=True) for name, a in arrays.items()}
