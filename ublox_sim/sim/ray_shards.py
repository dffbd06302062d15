"""One scenario's worlds on Ray: ``run SCENARIO --ray [ADDRESS]``.

The world shards (``core.shard.Shard``: the theta/omega of many worlds stacked) live in
Ray actors, one per worker CPU by default, each world placed on the actor holding the
fewest; the engine, the wallets, the store and every decision stay with the driver.
``RayWorldShards`` is the engine's holder of the world arrays for such a run (passed as
``Engine.open(worlds=...)``): it keeps on the driver only which world is in which slot
of which actor, mirroring the actors' own layout.

Each tick the driver sends every actor its sessions (``Sessions``: seven small arrays)
and the step count, *all actors at once*, and awaits them together; each returns its
``TickOutcome`` (arrays: per session and per world slot). The driver then commits one
unit per shard exactly as locally (``Engine._commit_tick``), so the ledger is decided by
the same code, and a shard whose unit is not committed is told to put its worlds back.
The arrays themselves cross only when the driver reads them: at checkpoints (one fetch
per actor, for all its worlds), for the server path (``Engine.world``) and when a PTO
is passivated. A tick's worlds are not shipped back: in a checkpointed run (the only
kind ``run --ray`` makes) the store writes worlds at checkpoints, never between them, so
``changed`` tells it nothing.

A lost shard: an actor whose worker dies is restarted by Ray (``max_restarts``) and
comes back empty. Every call carries the driver's *epoch* for the actors; a restarted
actor has none, so it refuses every call (``ShardLost``), as does a call in flight when
the worker died. The driver then drops the run's held work (the engine runs
checkpointed: nothing since the last checkpoint was committed), reopens the store and
resumes the run in-process from its last checkpoint (``run_on_ray``) with a new epoch,
the actors reloaded from the checkpoint's world files; the final export is the same
bytes as an uninterrupted single-process run. An actor whose restarts are exhausted is
replaced by a new one.

Every node needs ublox-sim at the driver's version (checked: an actor on a worker with
another version fails the run with an error naming both), the same Python minor, numpy
and the same Ray; the scenario file and the home stay with the driver. Ray is imported
when a run starts, never by importing this module.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..core.errors import InvalidInput, RuntimeFailure
from ..core.logsetup import get_logger
from ..core.shard import Sessions, Shard, TickOutcome, WorldShards
from ..core.world import F64, I64, WorldParams
from .ray_executor import RayExecutor, _ray, installed_version

if TYPE_CHECKING:
    from ..store.home import Home
    from ..store.open import PgStore
    from .runner import RunReport
    from .scenario import Loaded

log = get_logger(__name__)

DEFAULT_MAX_RESTARTS = 3
"""Ray restarts of a shard actor whose worker died (it comes back empty and the run
resumes from its last checkpoint); past them the actor is replaced by a new one."""

MAX_RECOVERIES = 5
"""Shard losses one run survives before it gives up (each resumes from a checkpoint)."""


class ShardLost(RuntimeFailure):
    """A shard actor lost its worlds (its worker died, or Ray restarted it empty)."""


@dataclass(frozen=True)
class RayRun:
    """Where ``run --ray`` places its shards: on the cluster at ``address`` (``auto``,
    ``ray://HOST:PORT``), or on a local Ray instance of ``workers`` CPUs started for the
    run (``address=None``); ``workers`` shard actors (default: the cluster's CPUs)."""

    address: str | None = None
    workers: int | None = None
    max_restarts: int = DEFAULT_MAX_RESTARTS

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InvalidInput(f"--ray-workers: {self.workers} is not a positive count")
        if self.max_restarts < 0:
            raise InvalidInput(f"Ray max_restarts: {self.max_restarts} is negative")


@dataclass
class Shipping:
    """What the ticks cost the driver: per tick, the time it waited for all its shards,
    the longest shard step inside that wait, and the bytes of arrays each way."""

    ticks: int = 0
    wait_seconds: float = 0.0
    longest_step_seconds: float = 0.0
    step_seconds: float = 0.0  # summed over the shards
    bytes_out: int = 0
    bytes_back: int = 0
    losses: int = 0

    def per_tick(self) -> dict[str, float]:
        n = max(1, self.ticks)
        return {
            "ticks": self.ticks,
            "wait_ms": 1e3 * self.wait_seconds / n,
            "longest_step_ms": 1e3 * self.longest_step_seconds / n,
            "shipping_ms": 1e3 * (self.wait_seconds - self.longest_step_seconds) / n,
            "kb_out": self.bytes_out / n / 1024,
            "kb_back": self.bytes_back / n / 1024,
            "losses": self.losses,
        }


def _nbytes(record: Sessions | TickOutcome) -> int:
    return sum(getattr(record, name).nbytes for name in type(record).__slots__)


class ShardActor:
    """A Ray actor holding one ``Shard`` (see the module doc). Every call names the
    driver's epoch; one that is not this incarnation's (a restarted actor has none) is
    refused with ``ShardLost``."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.shard: Shard | None = None
        self.before: F64 | None = None

    def open(self, epoch: str, params: WorldParams, driver_version: str) -> int:
        """Start epoch ``epoch`` empty; returns this worker's process id."""
        mine = installed_version()
        if mine != driver_version:
            raise RuntimeFailure(
                f"the Ray worker on pid {os.getpid()} has ublox-sim {mine}, the driver "
                f"{driver_version}: install the driver's version on every node"
            )
        self.epoch, self.shard, self.before = epoch, Shard(params), None
        return os.getpid()

    def _held(self, epoch: str) -> Shard:
        if epoch != self.epoch or self.shard is None:
            raise ShardLost(f"the shard actor on pid {os.getpid()} was restarted empty")
        return self.shard

    def put(self, epoch: str, world_id: str, theta: F64, omega: F64) -> None:
        self._held(epoch).put(world_id, theta, omega)

    def set_theta(self, epoch: str, world_id: str, theta: F64) -> None:
        shard = self._held(epoch)
        shard.theta[shard.slots[world_id]] = theta

    def remove(self, epoch: str, world_id: str) -> None:
        self._held(epoch).remove(world_id)

    def arrays(self, epoch: str) -> tuple[list[str], F64, F64]:
        """Every world's id (by slot) and arrays, stacked."""
        shard = self._held(epoch)
        n = len(shard)
        return list(shard.ids), shard.theta[:n], shard.omega[:n]

    def tick(
        self, epoch: str, steps: int, sessions: Sessions
    ) -> tuple[TickOutcome, list[str], float]:
        """``Shard.tick``, keeping the worlds as they were for ``undo``; returns the
        outcome, the slots' world ids (the driver checks its mirror) and the seconds."""
        shard = self._held(epoch)
        started = time.perf_counter()
        self.before = shard.theta[: len(shard)].copy()
        outcome = shard.tick(steps, sessions)
        return outcome, list(shard.ids), time.perf_counter() - started

    def undo(self, epoch: str, slots: I64) -> None:
        """Put these worlds back as they were before the last tick (their unit did not
        commit)."""
        shard = self._held(epoch)
        if self.before is not None:
            shard.theta[slots] = self.before[slots]


class ShardPool:
    """The run's shard actors, kept across its recoveries; ``worlds`` makes the engine's
    ``RayWorldShards`` for one attempt (a new epoch)."""

    def __init__(self, ray: ModuleType, workers: int, cpus: float, max_restarts: int) -> None:
        self.ray = ray
        self.shipping = Shipping()
        self._remote = ray.remote(
            num_cpus=min(1.0, cpus / workers),
            max_restarts=max_restarts,
            max_task_retries=0,  # a call in flight when the worker died: the driver resumes
            scheduling_strategy="SPREAD",
        )(ShardActor)
        self.actors: list[Any] = [self._remote.remote() for _ in range(workers)]
        self.pids: list[int] = []

    def worlds(self, params: WorldParams) -> RayWorldShards:
        return RayWorldShards(params, self)

    def open(self, params: WorldParams) -> str:
        """A new epoch on every actor (emptied); an actor Ray gave up on is replaced."""
        ray = self.ray
        epoch = secrets.token_hex(8)
        ours = installed_version()
        pids: list[int] = []
        for k in range(len(self.actors)):
            try:
                pids.append(ray.get(self.actors[k].open.remote(epoch, params, ours)))
            except ray.exceptions.RayActorError:
                self.actors[k] = self._remote.remote()
                pids.append(ray.get(self.actors[k].open.remote(epoch, params, ours)))
            except ray.exceptions.RayTaskError as exc:
                raise exc.cause from None
        self.pids = pids
        return epoch

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []


class Slots:
    """Which world is in which slot, moved exactly as ``Shard.put``/``Shard.remove`` move
    them (the last world into a removed one's slot)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.slots: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, world_id: str) -> int:
        slot = self.slots.get(world_id)
        if slot is None:
            slot = self.slots[world_id] = len(self.ids)
            self.ids.append(world_id)
        return slot

    def drop(self, world_id: str) -> None:
        slot = self.slots.pop(world_id)
        last = len(self.ids) - 1
        if slot != last:
            moved = self.ids[slot] = self.ids[last]
            self.slots[moved] = slot
        self.ids.pop()


class RemoteShard(Shard):
    """A shard as the engine sees it, laid out exactly as ``WorldShards`` lays out its
    local shards (so the tick's units are the same), its worlds held by the actors. No
    arrays here (``Shard.__init__`` is not called): ``arrays`` fetches them."""

    def __init__(self, params: WorldParams, owner: RayWorldShards) -> None:
        self.params = params
        self.owner = owner
        self.layout = Slots()
        self.ids, self.slots = self.layout.ids, self.layout.slots  # the same objects

    def put(self, world_id: str, theta: F64, omega: F64) -> int:
        self.owner.put(world_id, theta, omega)
        return self.slots[world_id]

    def remove(self, world_id: str) -> None:
        self.owner.remove(world_id)

    def arrays(self, world_id: str) -> dict[str, F64]:
        return self.owner.arrays(world_id)

    def tick(self, steps: int, sessions: Sessions) -> TickOutcome:
        raise RuntimeFailure("a Ray shard steps through RayWorldShards.ticked")


class Placed:
    """The driver's mirror of one actor: its worlds' slots, and their arrays once fetched
    (kept until the actor's worlds change)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.layout = Slots()
        self.cache: dict[str, dict[str, F64]] | None = None


class RayWorldShards(WorldShards):
    """The engine's world arrays in shard actors (see the module doc). The engine's
    shards (``RemoteShard``) are laid out as local ones (at most ``per_shard`` worlds
    each, filled in order), so each tick commits the same units as a local run; their
    worlds are spread over the actors (each new one on the actor holding the fewest), and
    a tick sends each actor the sessions of its worlds, whatever shard they are in:
    ``Shard.tick`` is the same arithmetic for a world whatever it is stacked with."""

    def __init__(self, params: WorldParams, pool: ShardPool) -> None:
        super().__init__(params)
        self.pool = pool
        self.epoch = pool.open(params)
        self.lost = False
        self.placed = [Placed(k) for k in range(len(pool.actors))]
        self._actor_of: dict[str, Placed] = {}

    def _call(self, placed: Placed, method: str, *args: Any) -> Any:
        """One call to ``placed``'s actor (in call order after every earlier one)."""
        if self.lost:
            raise ShardLost("the run's shards were lost: it resumes from its checkpoint")
        placed.cache = None if method != "arrays" else placed.cache
        return getattr(self.pool.actors[placed.index], method).remote(self.epoch, *args)

    def put(self, world_id: str, theta: Any, omega: Any) -> None:
        theta, omega = np.asarray(theta, np.float64), np.asarray(omega, np.float64)
        side = self.params.size
        if theta.shape != (side, side) or omega.shape != (side, side):
            raise ValueError(f"world {world_id} is {theta.shape}, shards hold {side}x{side}")
        placed = self._actor_of.get(world_id) or min(self.placed, key=lambda p: len(p.layout))
        self._call(placed, "put", world_id, theta, omega)
        placed.layout.add(world_id)
        self._actor_of[world_id] = placed
        shard = self._where.get(world_id)
        if shard is None:
            shard = next((s for s in self.shards if len(s) < self.per_shard), None)
            if shard is None:
                shard = RemoteShard(self.params, self)
                self.shards.append(shard)
            assert isinstance(shard, RemoteShard)
            shard.layout.add(world_id)
            self._where[world_id] = shard

    def set_theta(self, world_id: str, theta: F64) -> None:
        self._call(self._actor_of[world_id], "set_theta", world_id, np.asarray(theta, np.float64))

    def remove(self, world_id: str) -> None:
        shard = self._where.pop(world_id, None)
        if shard is None:
            return
        assert isinstance(shard, RemoteShard)
        placed = self._actor_of.pop(world_id)
        self._call(placed, "remove", world_id)
        placed.layout.drop(world_id)
        shard.layout.drop(world_id)
        if not len(shard):
            self.shards.remove(shard)

    def arrays(self, world_id: str) -> dict[str, F64]:
        """A copy of one world's arrays; the first read after a change fetches all of its
        actor's worlds at once (a checkpoint reads them all)."""
        placed = self._actor_of[world_id]
        if placed.cache is None:
            ids, theta, omega = self._fetch(self._call(placed, "arrays"))
            if ids != placed.layout.ids:
                raise RuntimeFailure(f"shard actor {placed.index} holds {ids}")
            theta, omega = np.array(theta), np.array(omega)  # out of Ray's object store
            placed.cache = {w: {"theta": theta[k], "omega": omega[k]} for k, w in enumerate(ids)}
        return {name: a.copy() for name, a in placed.cache[world_id].items()}

    def _fetch(self, ref: Any) -> Any:
        try:
            return self.pool.ray.get(ref)
        except BaseException as exc:
            self._raise_loss(exc)

    def _raise_loss(self, exc: BaseException) -> NoReturn:
        """Raise what a failed call means: the error a shard's code raised, or
        ``ShardLost`` (its worker died, or it was restarted empty). Lost, the driver
        forgets every world: nothing is read from, or saved of, a run that resumes."""
        ray = self.pool.ray
        if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(exc.cause, ShardLost):
            if isinstance(exc.cause, BaseException):
                raise exc.cause from None
            raise exc
        if not isinstance(exc, ray.exceptions.RayError):
            raise exc
        self.lost = True
        self.pool.shipping.losses += 1
        self._where.clear()
        self.shards.clear()
        raise ShardLost(f"a shard actor lost its worlds: {type(exc).__name__}: {exc}") from exc

    async def ticked(
        self,
        work: Sequence[tuple[Shard, Sessions]],
        steps: int,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[tuple[int, TickOutcome], None]:
        """Every actor steps its worlds with their sessions at once (one call each,
        dispatched before any is awaited); then yields each shard's outcome as
        ``WorldShards.ticked`` does, and has the worlds of each shard whose unit did not
        commit put back. ``meanwhile`` runs first, before anything is sent."""
        if meanwhile is not None:
            await meanwhile()
        if len(work) != len(self.shards):
            raise RuntimeFailure("a Ray tick steps every shard (every world moves with the clock)")
        # Each session goes to its world's actor, in shard then session order.
        parts: list[list[tuple[int, I64, I64]]] = [[] for _ in self.placed]  # (k, idx, slot)
        where = []  # per shard: (actor, actor slot) of each of its slots
        for k, (shard, sessions) in enumerate(work):
            actor = np.array([self._actor_of[w].index for w in shard.ids], dtype=np.int64)
            slot = np.array([self._actor_of[w].layout.slots[w] for w in shard.ids], dtype=np.int64)
            where.append((actor, slot))
            on = actor[sessions.slot]
            for p in range(len(self.placed)):
                idx = np.flatnonzero(on == p)
                if len(idx):
                    parts[p].append((k, idx, slot[sessions.slot[idx]]))
        started = time.perf_counter()
        refs = []
        sent = 0
        for placed, segments in zip(self.placed, parts, strict=True):
            sub = _concat([(work[k][1], idx, slot) for k, idx, slot in segments])
            sent += _nbytes(sub)
            refs.append(self._call(placed, "tick", steps, sub))
        try:
            done = await asyncio.gather(*refs)
        except BaseException as exc:
            self._raise_loss(exc)
        stats = self.pool.shipping
        stats.ticks += 1
        stats.wait_seconds += time.perf_counter() - started
        stats.longest_step_seconds += max((s for _, _, s in done), default=0.0)
        stats.step_seconds += sum(s for _, _, s in done)
        stats.bytes_out += sent
        stats.bytes_back += sum(_nbytes(outcome) for outcome, _, _ in done)
        for placed, (_, ids, _) in zip(self.placed, done, strict=True):
            if ids != placed.layout.ids:
                raise RuntimeFailure(f"shard actor {placed.index} holds {ids}")
        outcomes = _split(work, parts, where, [outcome for outcome, _, _ in done])
        stood = 0
        try:
            for k, outcome in enumerate(outcomes):
                yield k, outcome
                stood = k + 1
        finally:
            if stood < len(work) and not self.lost:
                for p, placed in enumerate(self.placed):
                    back = [slot[actor == p] for actor, slot in where[stood:]]
                    self._call(placed, "undo", np.concatenate(back))

    def changed(self, shard: Shard, tell: Callable[[str, dict[str, F64]], None]) -> None:
        """Nothing: a checkpointed run's store takes worlds at checkpoints only (see the
        module doc), and fetching every world each tick is what this class avoids."""


def _concat(segments: list[tuple[Sessions, I64, I64]]) -> Sessions:
    """The sessions ``idx`` of each segment's ``Sessions``, their slots replaced by the
    actor's, one after another."""
    if not segments:
        return Sessions.empty()
    fields = {}
    for name in Sessions.__slots__:
        if name == "slot":
            fields[name] = np.concatenate([slot for _, _, slot in segments])
        else:
            fields[name] = np.concatenate([getattr(s, name)[idx] for s, idx, _ in segments])
    return Sessions(**fields)


def _split(
    work: Sequence[tuple[Shard, Sessions]],
    parts: list[list[tuple[int, I64, I64]]],
    where: list[tuple[I64, I64]],
    outcomes: list[TickOutcome],
) -> list[TickOutcome]:
    """Each shard's ``TickOutcome`` (its sessions in its order, its slots' coherence)
    from the actors' outcomes."""
    per_session = [n for n in TickOutcome.__slots__ if n != "aci"]
    fields: list[dict[str, Any]] = []
    for (_, sessions), (actor, slot) in zip(work, where, strict=True):
        one: dict[str, Any] = {
            n: np.zeros(len(sessions), dtype=getattr(outcomes[0], n).dtype) for n in per_session
        }
        aci = np.zeros(len(actor))
        for p, outcome in enumerate(outcomes):
            mine = actor == p
            aci[mine] = outcome.aci[slot[mine]]
        one["aci"] = aci
        fields.append(one)
    for p, segments in enumerate(parts):
        start = 0
        for k, idx, _ in segments:
            for n in per_session:
                fields[k][n][idx] = getattr(outcomes[p], n)[start : start + len(idx)]
            start += len(idx)
    return [TickOutcome(**f) for f in fields]


def _lost(exc: BaseException | None) -> bool:
    """Whether ``exc`` is (or wraps, or was caused by) a ``ShardLost``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ShardLost):
            return True
        if isinstance(exc, BaseExceptionGroup):
            return any(_lost(e) for e in exc.exceptions)
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class RayOutcome:
    """What ``run_on_ray`` did beside the run: its shards' pids and shipping costs."""

    workers: int = 0
    pids: list[int] = field(default_factory=list)
    shipping: Shipping = field(default_factory=Shipping)


async def run_on_ray(
    loaded: Loaded,
    home: Home | PgStore,
    ray: RayRun,
    *,
    resume: bool = False,
    on_pool: Callable[[ShardPool], None] | None = None,
    outcome: RayOutcome | None = None,
    **options: Any,
) -> RunReport:
    """``run_scenario`` with its shards on Ray (see the module doc), resuming in-process
    from the last checkpoint after a lost shard. ``on_pool`` is told the shard actors
    once they are up (tests find a worker to kill there); ``outcome`` receives the
    shards' pids and the shipping costs."""
    from .runner import TAPE_ENV, recorded_scenario, run_scenario

    if os.environ.get(TAPE_ENV, "").strip():
        raise InvalidInput(f"{TAPE_ENV} records the ticks of local shards: not with --ray")
    local = ray.address is None
    with RayExecutor(ray.address, num_cpus=ray.workers if local else None) as cluster:
        workers = ray.workers or cluster.jobs
        pool = ShardPool(_ray(), workers, float(cluster.jobs), ray.max_restarts)
        try:
            if on_pool is not None:
                on_pool(pool)
            for attempt in range(MAX_RECOVERIES + 1):
                try:
                    report = await run_scenario(
                        loaded,
                        home,
                        resume=resume,
                        worlds=pool.worlds,
                        worlds_here=False,
                        **options,
                    )
                    break
                except BaseException as exc:
                    if not _lost(exc) or attempt == MAX_RECOVERIES:
                        raise
                    log.warning("run.shard_lost", attempt=attempt + 1, error=str(exc))
                    resume = _checkpointed(home, recorded_scenario)
        finally:
            if outcome is not None:
                outcome.workers, outcome.pids = workers, list(pool.pids)
                outcome.shipping = pool.shipping
            pool.close()
    return report


def _checkpointed(home: Home | PgStore, recorded: Callable[[Home | PgStore], object]) -> bool:
    """Whether the run in ``home`` has a checkpoint to resume from (a shard lost before
    the first one starts the run afresh: nothing of it was committed)."""
    try:
        recorded(home)
    except InvalidInput:
        return False
    return True
