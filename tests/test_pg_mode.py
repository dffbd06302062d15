"""Shared or exclusive on PostgreSQL (#14: "on PostgreSQL the lease replaces the lock").

Processes share a database by default; one that holds it alone (``shared=False``,
``$UBLOX_CLUSTER=0``, ``serve --exclusive``, a scenario run) excludes every other, and is
refused while others share it. Advisory locks are a session's, so two engines in one
test are two holders; the same is shown with real processes (``cluster_worker.py``),
one of them killed with SIGKILL. And ``Engine.events()`` yields the same types whichever
the backend and the mode."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from cluster_helpers import child_env, launch

from ublox_sim.core import events as ev
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import InvalidInput, StoreLocked
from ublox_sim.engine import Engine
from ublox_sim.store.postgres.mode import SCHEMA_KEY, WRITER_LOCK
from ublox_sim.store.postgres.notify import LoggedEvent, logged_event

pytestmark = pytest.mark.anyio
WORKER = Path(__file__).with_name("cluster_worker.py")
START = datetime(2030, 1, 1, tzinfo=UTC)
SHARED_HOLDS = r"1 process shares .* \(shared mode, the default on PostgreSQL\)"
EXCLUSIVE_HOLDS = r"another process holds .* exclusively \(a scenario run, migrate"


async def test_engines_share_a_database_by_default(pg_url: str) -> None:
    async with Engine.open(store=pg_url) as one, Engine.open(store=pg_url) as two:
        assert one.store.shared and two.store.shared  # type: ignore[attr-defined]
        await one.register_player("alice", usd_obbba=5)
        await two.deposit("alice", 2)
        assert await one.usd_balance("alice") == 700


async def test_stores_in_two_schemas_of_one_database_are_held_exclusively_at_once(
    pg_url: str,
) -> None:
    """Advisory locks belong to the database; ours are keyed by the store's schema too, so
    two stores (``?search_path=``) are each held alone at the same time, and each still
    excludes a second opener of its own schema."""
    conn = await asyncpg.connect(pg_url)
    try:
        for schema in ("one", "two"):
            await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    one_url, two_url = (f"{pg_url}?search_path={schema}" for schema in ("one", "two"))
    async with (
        Engine.open(store=one_url, shared=False) as one,
        Engine.open(store=two_url, shared=False) as two,
    ):
        await one.register_player("alice", usd_obbba=5)
        await two.register_player("alice", usd_obbba=3)
        assert (await one.usd_balance("alice"), await two.usd_balance("alice")) == (500, 300)
        with pytest.raises(StoreLocked, match=EXCLUSIVE_HOLDS):
            async with Engine.open(store=one_url):
                pass
        with pytest.raises(StoreLocked, match=EXCLUSIVE_HOLDS):
            async with Engine.open(store=two_url, shared=False):
                pass


async def test_an_exclusive_engine_is_refused_while_others_share_and_changes_nothing(
    pg_url: str,
) -> None:
    async with Engine.open(store=pg_url) as shared:
        await shared.register_player("alice", usd_obbba=5)
        with pytest.raises(StoreLocked, match=SHARED_HOLDS + ": this process opens it exclusive"):
            async with Engine.open(store=pg_url, shared=False):
                pass
        # A scenario run (held commits) is exclusive whatever it is told.
        with pytest.raises(StoreLocked, match=SHARED_HOLDS):
            async with Engine.open(store=pg_url, checkpointed=True):
                pass
        await shared.deposit("alice", 1)  # unharmed
        assert await shared.usd_balance("alice") == 600
    async with Engine.open(store=pg_url, shared=False) as alone:  # alone now: granted
        assert await alone.usd_balance("alice") == 600


async def test_a_shared_or_exclusive_engine_is_refused_while_one_holds_it_alone(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UBLOX_CLUSTER", "0")  # the environment's way to say exclusive
    async with Engine.open(store=pg_url) as alone:
        assert not alone.store.shared  # type: ignore[attr-defined]
        await alone.register_player("alice", usd_obbba=5)
        monkeypatch.delenv("UBLOX_CLUSTER")
        with pytest.raises(StoreLocked, match=EXCLUSIVE_HOLDS):
            async with Engine.open(store=pg_url):
                pass
        with pytest.raises(StoreLocked, match=EXCLUSIVE_HOLDS):
            async with Engine.open(store=pg_url, shared=False):
                pass
        assert await alone.usd_balance("alice") == 500
    async with Engine.open(store=pg_url) as shared:
        assert await shared.usd_balance("alice") == 500


async def test_a_scenario_run_cannot_be_told_to_share(pg_url: str) -> None:
    with pytest.raises(InvalidInput, match="needs the database to itself"):
        async with Engine.open(store=pg_url, checkpointed=True, shared=True):
            pass


def _hold(url: str, how: str) -> subprocess.Popen[str]:
    """A process holding the database (``hold``: shared; ``hold-exclusive``) once it has
    printed ``ready``, until it reads a line."""
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), url, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    return worker


def _release(worker: subprocess.Popen[str]) -> None:
    out, _ = worker.communicate("go\n", timeout=60)
    assert worker.returncode == 0 and out.strip() == "done", out


async def _lock_released(url: str) -> None:
    """Until PostgreSQL has ended a killed process's session (it then drops its locks):
    a blocking request for the lock is granted then."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET statement_timeout = '30s'")
        await conn.fetchval(f"SELECT pg_advisory_lock($1, {SCHEMA_KEY})", WRITER_LOCK)
        await conn.fetchval(f"SELECT pg_advisory_unlock($1, {SCHEMA_KEY})", WRITER_LOCK)
    finally:
        await conn.close()


async def test_shared_and_exclusive_processes_exclude_each_other_both_ways(pg_url: str) -> None:
    sharing = [_hold(pg_url, "hold") for _ in range(2)]
    try:
        with pytest.raises(StoreLocked, match=r"2 processes share"):
            async with Engine.open(store=pg_url, shared=False):
                pass
        async with Engine.open(store=pg_url) as third:  # a third may share
            await third.register_player("alice")
    finally:
        for worker in sharing:
            _release(worker)
    alone = _hold(pg_url, "hold-exclusive")
    try:
        with pytest.raises(StoreLocked, match=EXCLUSIVE_HOLDS):
            async with Engine.open(store=pg_url):
                pass
    finally:
        alone.send_signal(signal.SIGKILL)  # its lock goes with its session
        assert alone.wait(60) == -signal.SIGKILL
        assert alone.stdin is not None and alone.stdout is not None
        alone.stdin.close()
        alone.stdout.close()
    await _lock_released(pg_url)
    async with Engine.open(store=pg_url) as after:
        assert (await after.get_player("alice")).player_id == "alice"


async def _play_the_same_story(engine: Engine) -> list[ev.Event]:
    """Every kind of logged event once, as ``engine.events()`` yields them."""
    async with engine.events() as events:
        await engine.register_player("creator")
        await engine.register_player("x", usd_obbba=50)
        await engine.register_player("y", usd_obbba=0)
        await engine.deposit("x", 5)
        await engine.transfer("x", "y", 1)
        await launch(engine, "pto-e", shares=2, atu_required=1)
        await engine.buy_pts("x", "pto-e", 2)  # funds it
        await engine.play("x", "pto-e", 0.05)
        await engine.spend_atu("pto-e", 1)  # completes it
        last = (await engine.store.event_log_span())[1]  # shared: the feed may lag behind
        seen: list[ev.Event] = []
        async for event in events:
            if event.kind != "world_stepped":  # not logged: never read back from the log
                seen.append(event)
            if event.seq == last:
                return seen
    raise AssertionError("the stream ended early")


async def test_events_have_the_same_types_on_sqlite_and_on_a_shared_database(
    pg_url: str, tmp_path: Path
) -> None:
    async with Engine.open(tmp_path / "home", seed=3, clock=SimClock(START)) as local:
        expected = await _play_the_same_story(local)
    async with Engine.open(store=pg_url, seed=3, clock=SimClock(START)) as shared:
        assert shared.store.shared  # type: ignore[attr-defined]
        got = await _play_the_same_story(shared)
    assert [type(e) for e in got] == [type(e) for e in expected]
    assert {type(e) for e in got} >= set(ev.KINDS.values()) - {ev.PTOFailed, ev.PhaseLock}
    assert [e.to_dict() for e in got] == [e.to_dict() for e in expected]
    purchase = next(e for e in got if isinstance(e, ev.SharesBought))
    assert purchase.price == expected[[type(e) for e in expected].index(ev.SharesBought)].price


def test_an_event_read_back_from_the_log_is_the_event_logged() -> None:
    logged = [
        ev.PTOFailed(at="t", seq=4, pto_id="p", refunded=Decimal("12.34"), holders=2),
        ev.PhaseLock(at="t", seq=5, pto_id="p", player_id="x", locks=3),
    ]
    assert [logged_event(e.seq, ev.payload(e)) for e in logged] == logged
    newer = logged_event(6, '{"kind":"from_a_newer_version","at":"t","n":1}')
    assert isinstance(newer, LoggedEvent)  # a kind this version does not know
    assert newer.to_dict() == {"kind": "from_a_newer_version", "at": "t", "seq": 6, "n": 1}


def test_serve_exclusive_holds_the_database_alone(pg_url: str, tmp_path: Path) -> None:
    env = child_env(UBLOX_ADMIN_KEY="mode-admin-key-0123456789", UBLOX_HOME=str(tmp_path))
    serve = [sys.executable, "-m", "ublox_sim", "serve", "--store", pg_url, "--exclusive"]
    server = subprocess.Popen(
        [*serve, "--port", "0", "--tick", "86400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        assert "ublox-sim serving" in server.stdout.readline()  # its engine is open

        async def beside_it() -> None:
            with pytest.raises(StoreLocked, match=EXCLUSIVE_HOLDS):
                async with Engine.open(store=pg_url):
                    pass

        anyio.run(beside_it)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert server.stdout is not None
        server.stdout.close()


def test_a_scenario_run_says_it_needs_the_database_to_itself(pg_url: str, tmp_path: Path) -> None:
    scenario = Path(__file__).parent.parent / "scenarios" / "harmonic_caverns.yaml"
    run = [sys.executable, "-m", "ublox_sim", "run", str(scenario), "--store", pg_url]

    async def beside_a_shared_engine() -> subprocess.CompletedProcess[str]:
        async with Engine.open(store=pg_url):
            return await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    run,
                    env=child_env(UBLOX_HOME=str(tmp_path)),
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            )

    done = anyio.run(beside_a_shared_engine)
    assert done.returncode == 1, done.stderr
    assert "1 process shares" in done.stderr
    assert "a scenario run, a sweep and migrate always need it alone" in done.stderr
