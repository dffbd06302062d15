"""The storage backend interface: what the engine, the runner, the seed's facade, backups,
export and verify need from a store, as named, typed methods. None takes SQL.

A backend persists *units*: the domain events one decision produced (see
``core.events``), the world arrays that must become durable with them, and an optional
idempotency receipt, all in one transaction or not at all. How events become rows is
the backend's business (SQLite: ``store.sqlite.rows``); a second backend (PostgreSQL)
joins by implementing this protocol and passing ``tests/conformance``.

Writes are acknowledged in the order they were submitted. ``submit`` returns as soon as
the unit is queued and calls ``done`` once it is durable (or failed): an actor may go
on deciding against its pending state meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from anyio.abc import TaskGroup
from numpy.typing import NDArray

from ..core.events import Event, EventBus
from ..core.records import PTO, Player, PTSToken, Record, Transaction

Arrays = Mapping[str, NDArray[np.generic]]


@dataclass(frozen=True, slots=True)
class Receipt:
    """An idempotency key stored with the operation it answers, in the same unit.

    ``response`` names what the stored answer holds, read from the rows the unit
    wrote: the player after it, the PTS token it bought, or the session it played."""

    principal: str
    key: str
    fingerprint: str
    status: int
    at: str
    response: Literal["player", "token", "session"]


@dataclass(frozen=True, slots=True)
class WorldWrite:
    """World arrays that become durable with the unit that carries them."""

    world_id: str
    arrays: Arrays


class Chain:
    """Units that each build on the ones before (a hot world's plays, each decided
    against what the plays in flight will leave): once the store refuses one of them,
    it refuses every later unit of the chain without running it, however they fall into
    batches, so what commits is always a prefix. A backend that can keep a chain says
    so (``chains = True``); the producer of a broken chain starts a new one."""

    __slots__ = ("refused",)

    def __init__(self) -> None:
        self.refused = False  # set by the store, once a unit of the chain was refused


@dataclass(frozen=True, slots=True)
class Unit:
    """One decision's events, committed together or not at all (and, in a ``chain``,
    only if no earlier unit of the chain was refused)."""

    events: tuple[Event, ...]
    worlds: tuple[WorldWrite, ...] = ()
    receipt: Receipt | None = None
    chain: Chain | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """A unit as it landed: its events numbered (``seq``; a session's ``session_id``),
    and its ``position`` in the order units were submitted (1, 2, ...; see
    ``Backend.load_player_at``)."""

    events: tuple[Event, ...]
    position: int = 0


Done = Callable[[Committed | BaseException], None]


async def commit_through(submit: Callable[[Unit, Done], Awaitable[None]], unit: Unit) -> Committed:
    """``Backend.commit`` as every backend does it: ``submit`` the unit and wait for its
    outcome (a caller cancelled meanwhile leaves the unit's fate to the store)."""
    outcome: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()

    def done(result: Committed | BaseException) -> None:
        if outcome.done():
            return
        if isinstance(result, BaseException):
            outcome.set_exception(result)
        else:
            outcome.set_result(result)

    await submit(unit, done)
    return await outcome


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A scenario run checkpointed in the store (one per store)."""

    name: str
    seed: int
    scenario: str  # the resolved scenario as canonical JSON
    started_at: str
    tick: int
    total_ticks: int
    state: str  # the runner's own state (rng, counters) as JSON
    finished: bool


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything a checkpoint makes durable at once (see ``Backend.checkpoint``)."""

    version: int
    worlds: tuple[WorldWrite, ...] = ()
    run: RunRecord | None = None


@runtime_checkable
class Backend(Protocol):
    """A store for one game: the single writer of its data while it is open."""

    bus: EventBus
    """Committed events are published here, in commit order, after their unit is durable."""

    hold_commits: bool
    """Scenario mode: writes are held in one transaction until ``checkpoint``."""

    # -- lifecycle: open takes the single-writer lock (a lease elsewhere) ------

    async def start(self, tg: TaskGroup) -> None: ...

    async def aclose(self) -> None:
        """Drain queued units, make worlds durable, release the lock. Idempotent."""

    @property
    def closed(self) -> bool: ...

    # -- what a server's metrics read ------------------------------------------

    @property
    def units_committed(self) -> int:
        """Units committed and acknowledged since the store opened."""

    def on_batch_committed(self, hook: Callable[[float, int], None] | None) -> None:
        """Call ``hook(seconds, units)`` after each group commit."""

    # -- writes ----------------------------------------------------------------

    async def submit(self, unit: Unit, done: Done) -> None:
        """Queue ``unit`` (waiting only for queue room); ``done`` gets the ``Committed``
        unit once it is durable, or the ``UbloxError`` that refused it (nothing of it
        kept). ``done`` runs on the event loop, in commit order, and must not block."""

    async def submit_many(self, units: Sequence[Unit], done: Done) -> None:
        """``submit`` for several units queued together, in order, with nothing of another
        producer's between them (one wait for queue room, positions consecutive). Each
        unit is still committed or refused on its own: ``done`` is called once per unit,
        in the units' order, exactly as ``submit`` would call it."""

    async def commit(self, unit: Unit) -> Committed:
        """``submit`` and wait for the acknowledgement."""

    async def save_world(self, world_id: str, arrays: Arrays) -> None:
        """Make a world's arrays durable now (a world file, or a row elsewhere); while
        commits are held, keep them for the next checkpoint, readable by ``load_world``."""

    def world_changed(self, world_id: str, arrays: Arrays) -> None:
        """A world moved on: write it back in the background, soon."""

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Worlds first (versioned: the given ones and, in held mode, every world launched
        or saved since the last checkpoint), then one transaction with the run record and,
        in held mode, every write since the last checkpoint; older world versions go after."""

    # -- point reads (consistent with acknowledged writes) ---------------------

    async def load_player(self, player_id: str) -> Player | None: ...

    async def load_player_at(self, player_id: str) -> tuple[Player | None, int]:
        """The player's row and the position of the last unit submitted before the read:
        the row holds every committed unit up to that position and none after it (a
        virtual actor loaded from it applies only credits of later units)."""

    async def load_pto(self, pto_id: str) -> PTO | None: ...

    async def load_token(self, token_id: str) -> PTSToken | None: ...

    async def load_tokens(self, pto_id: str) -> list[PTSToken]: ...

    async def load_world(self, world_id: str) -> dict[str, NDArray[np.generic]]: ...

    async def exists(self, ident: str) -> bool:
        """Whether a player or a PTO holds ``ident`` (ids are one namespace)."""

    async def load_all(self, cls: type[Record]) -> list[Any]:
        """Every record of one kind, in key order (opening, export)."""

    async def ptos_past_deadline(self, at: str) -> list[str]:
        """The PTOs still funding whose deadline is at or before ``at``, in id order."""

    async def player_ids(self) -> list[str]:
        """Every player's id, in order."""

    async def pto_ids(self) -> list[str]:
        """Every PTO's id, in order."""

    async def taken(self, idents: Sequence[str]) -> set[str]:
        """Those of ``idents`` a player or a PTO already holds (bulk ``exists``)."""

    async def open_hours(self, statuses: Sequence[str]) -> dict[str, dict[str, float]]:
        """Hours left to play per PTO (in id order, among PTOs in ``statuses``) and per
        holder, summed over the holder's tokens in token order; rooms of 1e-9 or less
        are left out."""

    # -- aggregates and pages --------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]: ...

    async def leaderboard(self, top: int) -> list[Player]:
        """The ``top`` players by xUSD balance (ties by id)."""

    async def transactions_of(
        self, player_id: str, *, after: int = 0, limit: int = 50
    ) -> list[Transaction]: ...

    async def events_after(self, since: int, limit: int = 500) -> list[tuple[int, str, str]]: ...

    async def event_log_span(self) -> tuple[int, int]: ...

    # -- the game server's bookkeeping -----------------------------------------

    async def find_receipt(self, principal: str, key: str) -> tuple[str, int, str] | None: ...

    async def token_versions(self) -> dict[str, int]: ...

    async def set_token_version(self, player_id: str, version: int) -> None: ...

    # -- scenario runs ---------------------------------------------------------

    async def run_record(self) -> RunRecord | None: ...

    async def run_status(self) -> dict[str, Any] | None:
        """The run's name, tick, total_ticks and finished flag, if a run is recorded."""

    async def is_empty(self) -> bool: ...

    # -- maintenance -----------------------------------------------------------

    async def create_backup(self, name: str | None = None) -> Path: ...

    def list_backups(self) -> list[dict[str, Any]]:
        """Oldest first, each ``{"name", "created", "size", "path"}``: ``created`` in the
        store's ``YYYY-mm-dd HH:MM:SS+00:00``, ``size`` in bytes, ``path`` the folder."""

    async def export_data(self) -> dict[str, Any]:
        """The whole store as the export's JSON-ready dict (see ``store.export``)."""

    async def export_to_json(self, path: Path | str | None = None) -> Path: ...

    async def verify(self) -> list[Any]:
        """The ledger, balances, tokens and worlds checked against each other."""
