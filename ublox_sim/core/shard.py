"""World shards: the theta/omega of many worlds of one size stacked as (n, S, S) arrays.

A scenario's tick steps every world of a shard at once (one array operation per
lattice step for the whole stack, not one per world) with every session's player
coupled to its cell on the steps it plays (``Shard.tick``). Elementwise operations
on a stack are the same operations as on each world alone, the players' nudges are
summed per cell in the sessions' order (``np.add.at`` on the flattened stack) and
each world's coherence is the reduction ``world.order_parameter`` of its own slice,
so a tick is bit-identical to ``world.play_steps(..., world_steps=steps)`` on each
world by itself (``tests/test_shard.py`` holds it to that).

Pure numpy: no event loop, no store, picklable (a shard can live in another process,
e.g. a Ray actor: ``__getstate__`` keeps only the used slots).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from numpy.typing import NDArray

from .world import F64, I64, TWO_PI, WorldParams, coupled_steps, order_parameter


@dataclass(frozen=True, slots=True)
class Sessions:
    """The sessions of one tick in a shard, one entry per session (arrays)."""

    slot: I64  # the world's slot in the shard
    cells_y: I64
    cells_x: I64
    phase: F64
    freq: F64
    tau_k: F64
    steps: I64  # lattice steps the player is coupled for (at most the tick's)

    @staticmethod
    def empty() -> Sessions:
        i, f = np.zeros(0, dtype=np.int64), np.zeros(0)
        return Sessions(i, i, i, f, f, f, i)

    def __len__(self) -> int:
        return len(self.slot)


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """What a tick did: per session (in the order given) and per world slot."""

    quality: F64  # mean coherence over the steps played
    coherence: F64  # on the last step played
    locks: I64
    locked_steps: I64
    phase: F64  # the player's phase after the session
    aci: F64  # per slot: the world's order parameter after the tick


Allocate = Callable[[tuple[int, int, int]], F64]
"""Where a shard's stacked arrays live: a zeroed float64 array of this shape (``np.zeros``
by default; ``sim.process_shards`` gives blocks of shared memory)."""


class Shard:
    """Worlds of one size, stacked; slots are dense (``0 .. len - 1``): removing a world
    moves the last one into its slot. Capacity grows by doubling, into arrays made by
    ``allocate``."""

    def __init__(
        self, params: WorldParams, capacity: int = 4, allocate: Allocate | None = None
    ) -> None:
        self.params = params
        side = params.size
        self.allocate: Allocate = np.zeros if allocate is None else allocate
        self.theta: F64 = self.allocate((max(1, capacity), side, side))
        self.omega: F64 = self.allocate((max(1, capacity), side, side))
        self.ids: list[str] = []
        self.slots: dict[str, int] = {}
        # Moves on every change to the worlds held or their arrays outside a tick
        # (``WorldShards.ticked`` checks that a tick stepped on a worker thread saw them).
        self.version = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, world_id: object) -> bool:
        return world_id in self.slots

    def __getstate__(self) -> dict[str, Any]:
        n = len(self.ids)
        return {
            "params": self.params,
            "theta": self.theta[:n].copy(),
            "omega": self.omega[:n].copy(),
            "ids": list(self.ids),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params = state["params"]
        self.theta, self.omega = state["theta"], state["omega"]
        self.allocate = np.zeros
        self.ids = state["ids"]
        self.slots = {w: k for k, w in enumerate(self.ids)}
        self.version = 0
        if not len(self.theta):
            side = self.params.size
            self.theta, self.omega = np.zeros((1, side, side)), np.zeros((1, side, side))

    def put(self, world_id: str, theta: F64, omega: F64) -> int:
        """Hold ``world_id``'s arrays (copied in), replacing them if it is here; its slot."""
        side = self.params.size
        if theta.shape != (side, side) or omega.shape != (side, side):
            raise ValueError(
                f"world {world_id} is {theta.shape}, this shard holds {side}x{side} worlds"
            )
        slot = self.slots.get(world_id)
        if slot is None:
            slot = len(self.ids)
            if slot == len(self.theta):
                self.theta = self._grown(self.theta)
                self.omega = self._grown(self.omega)
            self.ids.append(world_id)
            self.slots[world_id] = slot
        self.theta[slot] = theta
        self.omega[slot] = omega
        self.version += 1
        return slot

    def _grown(self, stack: F64) -> F64:
        """``stack`` in new arrays of twice its capacity (the worlds copied, the rest 0)."""
        bigger = self.allocate((2 * len(stack), *stack.shape[1:]))
        bigger[: len(stack)] = stack
        return bigger

    def remove(self, world_id: str) -> None:
        slot = self.slots.pop(world_id)
        last = len(self.ids) - 1
        if slot != last:
            moved = self.ids[last]
            self.theta[slot] = self.theta[last]
            self.omega[slot] = self.omega[last]
            self.ids[slot] = moved
            self.slots[moved] = slot
        self.ids.pop()
        self.version += 1

    def arrays(self, world_id: str) -> dict[str, F64]:
        """Copies of one world's arrays (slots move: never hand out views)."""
        slot = self.slots[world_id]
        return {"theta": self.theta[slot].copy(), "omega": self.omega[slot].copy()}

    def tick(self, steps: int, sessions: Sessions) -> TickOutcome:
        """``steps`` lattice steps of every world, each session's player coupled to its
        cell for its own ``steps`` (at most the tick's); see the module doc."""
        theta, outcome = self.advance(steps, sessions)
        if theta is not None:
            self.theta[: len(self.ids)] = theta
        return outcome

    def advance(self, steps: int, sessions: Sessions) -> tuple[F64 | None, TickOutcome]:
        """``tick`` without changing the shard: the worlds' next theta (None if no step)
        and the outcome. Reads the arrays only, so it may run on a worker thread while
        nothing changes them (or in another process: ``advance``)."""
        n = len(self.ids)
        return advance(self.params, self.theta[:n], self.omega[:n], steps, sessions)


def advance(
    params: WorldParams,
    theta: F64,
    omega: F64,
    steps: int,
    sessions: Sessions,
    out: F64 | None = None,
) -> tuple[F64 | None, TickOutcome]:
    """``Shard.advance`` of the stacked worlds ``theta``/``omega`` (``(n, S, S)``, read
    only): their next theta (None if no step; written into ``out`` if given) and the
    outcome. The same arithmetic wherever the arrays live."""
    n, side = len(theta), params.size
    if len(sessions) and int(sessions.steps.max()) > steps:
        raise ValueError("a session is coupled for more steps than its tick has")
    m = len(sessions)
    # The loop of ``world.play_steps``, on the whole stack at once.
    stepped, phase, total, coherence, locks, locked = coupled_steps(
        theta,
        omega,
        params,
        flat=(sessions.slot * side + sessions.cells_y) * side + sessions.cells_x,
        phase=sessions.phase,
        freq=sessions.freq,
        tau_k=sessions.tau_k,
        steps=sessions.steps,
        world_steps=steps,
    )
    after = np.mod(stepped, TWO_PI, out=out) if steps else None
    final = theta if after is None else after
    quality = np.divide(total, sessions.steps, out=np.zeros(m), where=sessions.steps > 0)
    aci = np.array([order_parameter(final[k]) for k in range(n)])
    return after, TickOutcome(
        quality=np.clip(quality, 0.0, 1.0),
        coherence=coherence,
        locks=locks,
        locked_steps=locked,
        phase=np.mod(phase, TWO_PI),
        aci=aci,
    )


class WorldShards:
    """Every resident world of an engine, in shards of at most ``per_shard`` worlds (all
    of one size: the engine's). The one owner of the world arrays: PTO actors and the
    scenario's ticks read and write them here, checkpoints copy them from here."""

    def __init__(self, params: WorldParams, per_shard: int = 256) -> None:
        self.params = params
        self.per_shard = per_shard
        self.shards: list[Shard] = []
        self._where: dict[str, Shard] = {}
        self._undo: weakref.WeakKeyDictionary[Shard, F64] = weakref.WeakKeyDictionary()

    def __contains__(self, world_id: object) -> bool:
        return world_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def ids(self) -> list[str]:
        return sorted(self._where)

    def put(self, world_id: str, theta: NDArray[Any], omega: NDArray[Any]) -> None:
        """Hold a world's arrays (copied in, as float64), replacing them if it is resident."""
        shard = self._where.get(world_id)
        if shard is None:
            shard = next((s for s in self.shards if len(s) < self.per_shard), None)
            if shard is None:
                shard = self._new_shard()
                self.shards.append(shard)
        shard.put(world_id, np.asarray(theta, np.float64), np.asarray(omega, np.float64))
        self._where[world_id] = shard

    def _new_shard(self) -> Shard:
        return Shard(self.params)

    def set_theta(self, world_id: str, theta: F64) -> None:
        shard = self._where[world_id]
        shard.theta[shard.slots[world_id]] = theta
        shard.version += 1

    def arrays(self, world_id: str) -> dict[str, F64]:
        """Copies of a resident world's arrays."""
        return self._where[world_id].arrays(world_id)

    def remove(self, world_id: str) -> None:
        shard = self._where.pop(world_id, None)
        if shard is not None:
            shard.remove(world_id)
            if not len(shard):
                self.shards.remove(shard)

    def locate(self, world_id: str) -> tuple[Shard, int]:
        shard = self._where[world_id]
        return shard, shard.slots[world_id]

    async def ticked(
        self,
        work: Sequence[tuple[Shard, Sessions]],
        steps: int,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[tuple[int, TickOutcome], None]:
        """A tick of the shards in ``work`` (each with its sessions): yields each one's
        index in ``work`` and outcome, in order. A shard stands once the caller's loop body
        for it completes; one whose body raised, or never ran, is put back as it was
        before the tick (iterate inside ``contextlib.aclosing``). Here each shard steps
        when its turn comes; a remote implementation (``sim.ray_shards``) steps them all
        at once before the first is yielded.

        ``meanwhile`` (the loop's other work of the tick, see ARCHITECTURE.md "Ticks") runs
        on the event loop while the shards step off it (``advance_all``: on a worker
        thread here), before the first is yielded; the tick is as if it ran first: a shard
        it changed (a world loaded, dropped or moved) is stepped again, on the loop, from
        what it left. Without ``meanwhile`` the shards step on the loop, unless
        ``steps_off_loop`` says otherwise."""
        ahead: list[tuple[int, tuple[F64 | None, TickOutcome]] | None] = [None] * len(work)
        # The worlds each shard held when its sessions were given: a world ``meanwhile``
        # loads comes last (the others keep their slots); one it drops moves another
        # into its slot, and the sessions' slots would no longer say whose cells they are.
        held = [list(shard.ids) for shard, _ in work]
        if meanwhile is not None or self.steps_off_loop:
            versions = [shard.version for shard, _ in work]

            async def step_all() -> None:
                for k, stepped in enumerate(await self.advance_all(work, steps)):
                    ahead[k] = (versions[k], stepped)

            stepping = asyncio.ensure_future(step_all())
            beside: BaseException | None = None
            try:
                if meanwhile is not None:
                    await meanwhile()
            except BaseException as exc:
                beside = exc
            # (Pure reads: the shards are as they were if either failed.)
            with anyio.CancelScope(shield=True):
                try:
                    await stepping
                except Exception as physics:
                    if beside is None:
                        raise
                    if isinstance(beside, Exception):  # neither hides the other
                        raise ExceptionGroup(
                            "the tick's physics and the work beside it both failed",
                            [physics, beside],
                        ) from None
                    raise beside from physics  # a cancellation or an interrupt goes on
            if beside is not None:
                raise beside
        for k, (shard, sessions) in enumerate(work):
            if shard.ids[: len(held[k])] != held[k]:
                raise RuntimeError(
                    "a world of the shard was dropped or moved while its tick was stepping: "
                    f"held {held[k]}, now {shard.ids}"
                )
            n = len(shard)
            # The undo copy goes to a buffer kept per shard: a fresh one each tick costs
            # more in page faults than in copying (3 MB for 100 worlds of 64x64).
            undo = self._undo.get(shard)
            if undo is None or undo.shape != shard.theta.shape:
                undo = self._undo[shard] = np.empty_like(shard.theta)
            before = undo[:n]
            np.copyto(before, shard.theta[:n])
            stepped = ahead[k]
            if stepped is not None and stepped[0] == shard.version:
                theta, outcome = stepped[1]
                if theta is not None:
                    shard.theta[:n] = theta
            else:
                outcome = shard.tick(steps, sessions)
            try:
                yield k, outcome
            except BaseException:
                shard.theta[:n] = before  # its unit did not commit: nor does its tick
                raise

    steps_off_loop = False
    """Whether ``ticked`` steps the shards with ``advance_all`` even with nothing beside
    them (here no: a thread would only add its hand-over)."""

    async def advance_all(
        self, work: Sequence[tuple[Shard, Sessions]], steps: int
    ) -> list[tuple[F64 | None, TickOutcome]]:
        """Each shard's ``Shard.advance`` (in ``work``'s order), off the event loop: here on
        a worker thread (numpy's ufuncs release the GIL). Reads the arrays only."""
        return await anyio.to_thread.run_sync(
            lambda: [shard.advance(steps, sessions) for shard, sessions in work]
        )

    async def aclose(self) -> None:
        """Release what stepping holds beside the arrays (here nothing; the engine calls it
        when it closes)."""

    def changed(self, shard: Shard, tell: Callable[[str, dict[str, F64]], None]) -> None:
        """``tell`` (the store's ``world_changed``) each world of ``shard`` and its arrays."""
        for world_id in shard.ids:
            tell(world_id, shard.arrays(world_id))


class Tape:
    """Every shard tick of a run, recorded to replay its bare physics (``bench simulation``):
    the worlds' arrays when first seen, and per shard tick the slot order, the steps and
    the sessions. ``save`` writes one ``.npz`` (no pickles); ``replay`` steps the same
    worlds with the same sessions and returns the final arrays of every world."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[F64, F64]] = {}
        self.records: list[tuple[list[str], int, Sessions]] = []

    def record(self, shard: Shard, steps: int, sessions: Sessions) -> None:
        for world_id in shard.ids:
            if world_id not in self.first:
                slot = shard.slots[world_id]
                self.first[world_id] = (shard.theta[slot].copy(), shard.omega[slot].copy())
        self.records.append((list(shard.ids), steps, sessions))

    def save(self, path: str) -> None:
        ids = sorted(self.first)
        index = {w: k for k, w in enumerate(ids)}
        fields = Sessions.__slots__
        arrays: dict[str, Any] = {
            "world_ids": np.array(ids, dtype=str),
            "theta0": np.stack([self.first[w][0] for w in ids]) if ids else np.zeros((0, 1, 1)),
            "omega0": np.stack([self.first[w][1] for w in ids]) if ids else np.zeros((0, 1, 1)),
            "steps": np.array([r[1] for r in self.records], dtype=np.int64),
            "members": np.concatenate(
                [np.array([index[w] for w in r[0]], dtype=np.int64) for r in self.records]
                or [np.zeros(0, dtype=np.int64)]
            ),
            "member_counts": np.array([len(r[0]) for r in self.records], dtype=np.int64),
            "session_counts": np.array([len(r[2]) for r in self.records], dtype=np.int64),
        }
        for name in fields:
            parts = [getattr(r[2], name) for r in self.records]
            arrays[f"s_{name}"] = np.concatenate(parts) if parts else np.zeros(0)
        np.savez(path, **arrays)


def replay(path: str, params: WorldParams) -> tuple[dict[str, F64], float, int]:
    """Step the worlds of a saved ``Tape`` through its shard ticks, stacked as the run did
    (``Shard.tick``); returns every world's final theta, the seconds spent in the ticks
    and the number of sessions played."""
    with np.load(path, allow_pickle=False) as data:
        tape = {k: data[k] for k in data.files}
    ids = [str(w) for w in tape["world_ids"]]
    theta = {w: tape["theta0"][k] for k, w in enumerate(ids)}
    omega = {w: tape["omega0"][k] for k, w in enumerate(ids)}
    shards: dict[tuple[str, ...], Shard] = {}
    where: dict[str, tuple[str, ...]] = {}  # the shard holding a world's newest theta
    m0 = s0 = 0
    seconds = 0.0
    played = 0
    for r, steps in enumerate(tape["steps"]):
        members = tuple(ids[k] for k in tape["members"][m0 : m0 + tape["member_counts"][r]])
        m0 += int(tape["member_counts"][r])
        n = int(tape["session_counts"][r])
        sessions = Sessions(*(tape[f"s_{name}"][s0 : s0 + n] for name in Sessions.__slots__))
        s0 += n
        shard = shards.get(members)
        if shard is None:
            shard = shards[members] = Shard(params, capacity=len(members))
        for w in members:  # a world last stepped in another shard (or never) moves here
            if where.get(w) != members:
                source = shards.get(where[w]) if w in where else None
                current = source.theta[source.slots[w]] if source is not None else theta[w]
                shard.put(w, current, omega[w])
                where[w] = members
        started = time.perf_counter()
        shard.tick(int(steps), sessions)
        seconds += time.perf_counter() - started
        played += n
    final = {}
    for w in ids:
        if w in where:
            s = shards[where[w]]
            final[w] = s.theta[s.slots[w]].copy()
        else:
            final[w] = theta[w]
    return final, seconds, played
