"""One writer per home: a second opener, in this process or another, is refused at once
with StoreLocked; closing or killing the holder frees the home.

"At once" is shown without a clock: the holders here never let go, so an opener that
waited for them would never return (in-process) or would hit the CLI helper's 60 s
hang guard; a refusal that returns at all did not wait.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import StoreError, StoreLocked, UbloxError
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_COLOR": "1"}
PARAMS = WorldParams(size=8)

HOLDER = textwrap.dedent(
    """
    import sys, time
    import anyio
    from decimal import Decimal
    from ublox_sim.core.clock import SimClock
    from ublox_sim.engine import Engine
    from ublox_sim.core.world import WorldParams

    async def main() -> None:
        async with Engine.open(sys.argv[1], seed=1, clock=SimClock(),
                               world=WorldParams(size=8)) as engine:
            if "alice" not in (await engine.player_ids()):
                await engine.register_player("alice", usd_obbba=Decimal("10"))
            print("ready", flush=True)
            await anyio.sleep(120)

    anyio.run(main)
    """
)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@contextmanager
def holder(home: Path) -> Iterator[subprocess.Popen[str]]:
    """A second process holding ``home`` open (an Engine, asleep) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"the holder did not start: {line!r} {err}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@contextmanager
def no_leaks() -> Iterator[None]:
    """Whatever a refused opener built must be closed, not left for the garbage collector
    (an unclosed anyio stream warns on collection, and a host running with
    ``-W error`` then fails somewhere unrelated)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, f"a refused open left {len(leaks)} unclosed resource(s): {leaks[:4]}"


# -- in one process ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_second_engine_in_the_same_process_is_refused_at_once(tmp_path: Path) -> None:
    with no_leaks():
        async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as first:
            await first.register_player("alice", usd_obbba=Decimal("10"))
            with pytest.raises(StoreLocked) as refused:
                async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS):
                    pytest.fail("a second engine opened a home that is already open")
            assert isinstance(refused.value, StoreError)
            assert str(tmp_path) in str(refused.value)
            del refused  # its traceback holds the refused store's frames
            # The refused opener took nothing from the first: it still works and writes.
            await first.deposit("alice", Decimal("5"))
            assert (await first.get_player("alice")).usd_obbba_balance == Decimal("15.00")

        # Closed: the home opens again, with everything the first engine acknowledged.
        async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as second:
            assert (await second.get_player("alice")).usd_obbba_balance == Decimal("15.00")
        assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_a_refused_opener_can_retry_and_many_refusals_leak_nothing(tmp_path: Path) -> None:
    """Each refusal closes its lock descriptor: after many, the holder closes and the
    next open succeeds (a leaked descriptor holding the flock would keep it locked)."""
    before = len(os.listdir("/proc/self/fd"))
    with no_leaks():
        async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS):
            for _ in range(50):
                with pytest.raises(StoreLocked):
                    async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS):
                        pass
        async with Engine.open(tmp_path, seed=1, clock=SimClock(), world=PARAMS) as again:
            assert (await again.player_ids()) == []
        assert len(os.listdir("/proc/self/fd")) <= before + 2


# -- across processes ---------------------------------------------------------------------


def test_a_second_process_is_refused_at_once_with_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with no_leaks(), holder(home):
        result = cli("stats", "--home", str(home))
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert "lock" in result.stderr.lower(), result.stderr
        assert str(home) in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr

        # And the same from an Engine in this process.
        async def open_here() -> None:
            async with Engine.open(home, seed=1, clock=SimClock(), world=PARAMS):
                pass

        with pytest.raises(StoreLocked):
            anyio.run(open_here)

    # The holder exited: the home opens, with the holder's player in it.
    result = cli("stats", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert '"count": 1' in result.stdout
    assert verify_store(home) == []


def test_a_holder_killed_with_sigkill_does_not_block_the_next_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with holder(home) as proc:
        assert cli("stats", "--home", str(home)).returncode == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    # The lock file is still there (with a dead pid in it); the kernel dropped the lock.
    assert (home / ".lock").exists()

    async def reopen() -> list[str]:
        async with Engine.open(home, seed=1, clock=SimClock(), world=PARAMS) as engine:
            balance = (await engine.get_player("alice")).usd_obbba_balance
            assert balance == Decimal("10.00")
            return await engine.player_ids()

    assert anyio.run(reopen) == ["alice"]
    result = cli("stats", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert verify_store(home) == []


def test_a_lock_error_is_a_ublox_error() -> None:
    assert issubclass(StoreLocked, StoreError)
    assert issubclass(StoreLocked, UbloxError)
