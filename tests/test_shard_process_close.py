"""``ProcessWorldShards.aclose`` while a tick's exchange is in flight (an engine closed
mid-tick from another task; review 5): the stop and the exchange never share the socket
(they split each other's replies: aclose raised OverflowError, the tick UnpicklingError,
and nothing was freed). The tick fails with a clear ``RuntimeFailure`` (or had its reply
already), the worlds are as before it, ``aclose`` does not raise, and the worker and every
shared block are gone after it. With a real worker; no timing assertions."""

from __future__ import annotations

import asyncio
import gc
import threading
from contextlib import aclosing
from pathlib import Path

import pytest
from test_shard import _sessions
from test_shard_meanwhile import PARAMS
from test_shard_process import _fds, _fill

from ublox_sim.core.errors import RuntimeFailure
from ublox_sim.sim.process_shards import ProcessWorldShards


async def _tick(shards: ProcessWorldShards) -> str:
    work = [(s, _sessions(len(s), 200, 40, seed=k)) for k, s in enumerate(shards.shards)]
    try:
        async with aclosing(shards.ticked(work, 40)) as ticked:
            async for _ in ticked:
                pass
    except RuntimeFailure as exc:
        return str(exc)
    return "completed"


@pytest.mark.asyncio
@pytest.mark.parametrize("held", [True, False], ids=["held-at-its-send", "racing"])
async def test_close_during_a_ticks_exchange_fails_the_tick_and_frees_everything(
    held: bool,
) -> None:
    gc.collect()  # (earlier tests' garbage closes its descriptors now, not during this one)
    fds = _fds()
    shards = _fill(ProcessWorldShards(PARAMS, per_shard=4), 10)  # 3 shards
    before = {w: shards.arrays(w)["theta"] for w in shards.ids()}
    pid = shards.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    sent = asyncio.Event()
    go = threading.Event()

    def on_sent(_: int) -> None:  # (the exchange's thread, the tick sent)
        loop.call_soon_threadsafe(sent.set)
        if held:  # the reply is read only once aclose has begun
            go.wait(60)

    shards.on_sent = on_sent
    tick = asyncio.ensure_future(_tick(shards))
    await sent.wait()
    closing = asyncio.ensure_future(shards.aclose())
    await asyncio.sleep(0)  # (one turn of the loop: aclose runs to its first wait)
    go.set()
    await closing  # never a framing error
    outcome = await tick
    if held:
        assert outcome.startswith("the world shards were closed during a tick"), outcome
    else:
        assert outcome == "completed" or "closed during a tick" in outcome, outcome
    if outcome != "completed":
        for w, theta in before.items():  # the tick did not happen
            assert shards.arrays(w)["theta"].tobytes() == theta.tobytes()
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped: not even a zombie
    del tick, closing
    gc.collect()  # (the failed tick's frames held its output arrays: their mappings)
    after = _fds()
    assert {fd: after[fd] for fd in set(after) - set(fds)} == {}
    assert not [f for f in after.values() if "ublox-shard" in f]
    assert "closed" in await _tick(shards)  # and no new worker
    assert shards.stats.pids == [pid]
