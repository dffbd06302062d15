"""``sim.process_shards.ProcessWorldShards``: the ticks' physics in a worker process, the
stacked arrays in shared memory. The same bits as ``WorldShards`` (the thread, or the loop)
whatever happens between and during ticks: several shards, worlds added, removed and set
between ticks, growth past a shard's capacity (a new shared block), ``meanwhile`` changing
a shard (re-stepped on the loop), a unit that fails (the shard put back), the physics
raising (its own exception back); and nothing left behind after ``aclose``."""

from __future__ import annotations

import dataclasses
import gc
import os
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from test_shard import _sessions
from test_shard_meanwhile import PARAMS, _same

from ublox_sim.core.errors import RuntimeFailure
from ublox_sim.core.shard import Sessions, TickOutcome, WorldShards
from ublox_sim.core.world import new_world
from ublox_sim.sim.process_shards import ProcessWorldShards

Meanwhile = Callable[[], Awaitable[None]] | None


def _fill(shards: WorldShards, n: int, seed: int = 11, prefix: str = "w") -> WorldShards:
    rng = np.random.default_rng(seed)
    for k in range(n):
        w = new_world(PARAMS, rng)
        shards.put(f"{prefix}{k}", w["theta"], w["omega"])
    return shards


@asynccontextmanager
async def _pair(n: int = 5, per_shard: int = 256) -> AsyncIterator[tuple[WorldShards, WorldShards]]:
    """The same worlds in a thread's shards and in a process's."""
    thread = _fill(WorldShards(PARAMS, per_shard), n)
    process = _fill(ProcessWorldShards(PARAMS, per_shard), n)
    try:
        yield thread, process
    finally:
        await process.aclose()


def _work(shards: WorldShards, seed: int, held: int | None) -> list[tuple[object, Sessions]]:
    """Sessions on the worlds of each shard (on its first ``held`` if given)."""
    return [
        (s, _sessions(held or len(s), 30, 4, seed=seed + k)) for k, s in enumerate(shards.shards)
    ]


async def _tick(
    shards: WorldShards,
    meanwhile: Meanwhile = None,
    fail_at: int | None = None,
    seed: int = 5,
    held: int | None = None,
) -> list[TickOutcome]:
    """One tick of every shard; the loop body of shard ``fail_at`` raises (its unit did not
    commit)."""
    got: list[TickOutcome] = []
    ticked = shards.ticked(_work(shards, seed, held), 4, meanwhile)  # type: ignore[arg-type]
    async with aclosing(ticked):
        async for k, outcome in ticked:
            if k == fail_at:
                raise LookupError("the unit was refused")
            got.append(outcome)
    return got


def _assert_same(a: WorldShards, b: WorldShards) -> None:
    assert a.ids() == b.ids()
    assert [s.ids for s in a.shards] == [s.ids for s in b.shards]
    for w in a.ids():
        for name in ("theta", "omega"):
            assert a.arrays(w)[name].tobytes() == b.arrays(w)[name].tobytes(), (w, name)


@pytest.mark.asyncio
async def test_several_shards_tick_to_the_same_bits_as_the_thread() -> None:
    async with _pair(n=11, per_shard=4) as (thread, process):
        assert len(process.shards) == 3
        for seed in (5, 6, 7):
            a = await _tick(thread, seed=seed)
            b = await _tick(process, seed=seed)
            assert len(a) == len(b) == 3
            assert all(_same(x, y) for x, y in zip(a, b, strict=True))
            _assert_same(thread, process)
        assert isinstance(process, ProcessWorldShards)
        assert process.stats.ticks == 3 and len(process.stats.pids) == 1
        assert process.stats.step_cpu_seconds > 0


@pytest.mark.asyncio
async def test_worlds_added_removed_set_and_grown_between_ticks() -> None:
    async with _pair(n=3, per_shard=64) as (thread, process):
        await _tick(thread)
        await _tick(process)
        for shards in (thread, process):
            shards.remove("w1")  # w2 moves into slot 1
            shards.set_theta("w0", np.full((16, 16), 0.25))
            _fill(shards, 9, seed=4, prefix="x")  # 11 worlds: past the capacity of 4, then 8
        (shard,) = process.shards
        assert len(shard.theta) == 16
        for seed in (8, 9):
            a, b = await _tick(thread, seed=seed), await _tick(process, seed=seed)
            assert _same(a[0], b[0])
            _assert_same(thread, process)


@pytest.mark.asyncio
async def test_meanwhile_changing_and_growing_a_shard_is_stepped_as_if_it_ran_first() -> None:
    async with _pair(n=4) as (thread, process):
        extra = new_world(PARAMS, np.random.default_rng(3))

        def change(shards: WorldShards) -> None:
            shards.set_theta("w2", np.full((16, 16), 0.5))
            shards.put("w9", extra["theta"], extra["omega"])  # a fifth world: a new block

        change(thread)  # the reference: the change, then the tick
        a = await _tick(thread, held=4)

        async def meanwhile() -> None:
            change(process)

        b = await _tick(process, meanwhile, held=4)
        assert _same(a[0], b[0])
        _assert_same(thread, process)
        # The next tick steps in the worker again, on the grown shard's new blocks.
        assert _same((await _tick(thread))[0], (await _tick(process))[0])
        _assert_same(thread, process)


@pytest.mark.asyncio
async def test_a_shard_whose_unit_failed_is_put_back_and_the_others_stand() -> None:
    async with _pair(n=8, per_shard=4) as (thread, process):
        before = {w: process.arrays(w)["theta"] for w in process.ids()}
        with pytest.raises(LookupError):
            await _tick(process, fail_at=1)
        first, second = (s.ids for s in process.shards)
        await _tick(thread)  # the reference: the first shard's tick stood
        for w in first:
            assert process.arrays(w)["theta"].tobytes() == thread.arrays(w)["theta"].tobytes()
        for w in second:
            assert process.arrays(w)["theta"].tobytes() == before[w].tobytes()


@pytest.mark.asyncio
async def test_the_physics_raising_in_the_worker_comes_back_as_itself() -> None:
    async with _pair() as (_, process):
        before = {w: process.arrays(w)["theta"] for w in process.ids()}
        (shard,) = process.shards
        bad = dataclasses.replace(_sessions(5, 10, 4), steps=np.full(10, 9, dtype=np.int64))

        async def meanwhile() -> None:
            raise RuntimeError("creators failed")

        ticked = process.ticked([(shard, bad)], 4, meanwhile)
        with pytest.raises(ExceptionGroup) as caught:
            async with aclosing(ticked):
                async for _ in ticked:
                    pass
        kinds = {type(e): str(e) for e in caught.value.exceptions}
        assert "more steps than its tick" in kinds[ValueError]
        assert kinds[RuntimeError] == "creators failed"
        for w, theta in before.items():
            assert process.arrays(w)["theta"].tobytes() == theta.tobytes()
        await _tick(process)  # the worker goes on


def _fds() -> dict[str, str]:
    """This process's open descriptors and what they are."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # (listdir's own)
            pass
    return out


@pytest.mark.asyncio
async def test_close_stops_the_worker_and_leaves_no_descriptor_or_process() -> None:
    gc.collect()  # (earlier tests' garbage closes its descriptors now, not during this one)
    fds = _fds()
    process = _fill(ProcessWorldShards(PARAMS, per_shard=4), 10)  # 3 shards, 2 grown
    await _tick(process)
    pid = process.pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    _fill(process, 2, prefix="late")
    process.remove("w0")
    await _tick(process)  # retires the blocks no shard uses any more
    await process.aclose()
    await process.aclose()  # idempotent
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped: not even a zombie
    after = _fds()
    assert {fd: after[fd] for fd in set(after) - set(fds)} == {}
    assert not [f for f in after.values() if "ublox-shard" in f]
    assert process.stats.peak_rss_kb > 0
    with pytest.raises(Exception, match="closed"):
        await _tick(process)


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["mid-tick", "between ticks"])
async def test_a_killed_worker_fails_its_tick_clearly_and_the_next_tick_has_a_new_one(
    when: str,
) -> None:
    async with _pair() as (thread, process):
        assert isinstance(process, ProcessWorldShards)
        await _tick(thread)
        await _tick(process)
        before = {w: process.arrays(w)["theta"] for w in process.ids()}
        first = process.pid
        assert first is not None

        def kill(pid: int) -> None:
            os.kill(pid, signal.SIGKILL)

        if when == "mid-tick":
            # Killed once the tick is sent, before its reply: stopped first, so that a tick
            # this small cannot be stepped and answered before the kill lands.
            os.kill(first, signal.SIGSTOP)
            process.on_sent = kill
        else:
            kill(first)
        with pytest.raises(RuntimeFailure, match=rf"pid {first}\) was killed by SIGKILL"):
            await _tick(process)
        assert not Path(f"/proc/{first}").exists()  # reaped
        for w, theta in before.items():  # the tick did not happen
            assert process.arrays(w)["theta"].tobytes() == theta.tobytes()
        process.on_sent = None
        assert _same((await _tick(thread))[0], (await _tick(process))[0])
        _assert_same(thread, process)
        assert process.pid not in (None, first) and process.stats.pids == [first, process.pid]


CHILD = """
import asyncio, sys
import numpy as np
from ublox_sim.core.shard import Sessions
from ublox_sim.core.world import WorldParams, new_world
from ublox_sim.sim.process_shards import ProcessWorldShards

async def main():
    params = WorldParams(size=16)
    shards = ProcessWorldShards(params)
    w = new_world(params, np.random.default_rng(1))
    shards.put("w0", w["theta"], w["omega"])
    await shards.advance_all([(shards.shards[0], Sessions.empty())], 2)  # up and mapped
    print(shards.pid, flush=True)
    sys.stdin.read()  # until killed

asyncio.run(main())
"""


def test_the_worker_exits_when_the_engines_process_is_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        watch = os.pidfd_open(worker)  # (not our child: waited on through a pidfd)
    finally:
        parent.kill()
        parent.wait()
        for stream in (parent.stdin, parent.stdout):
            assert stream is not None
            stream.close()
    try:
        exited, _, _ = select.select([watch], [], [], 60)
    finally:
        os.close(watch)
    assert exited  # it saw its socket's EOF and ended (its memfds went with it)
