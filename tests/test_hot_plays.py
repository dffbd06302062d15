"""A hot world: many plays queued for one world at once (see actors/pto.py ``_play``).

The PTO decides each Play against the theta the Plays in flight leave, and their
sessions join the world's ``Chain`` (store.backend) so they share the store's batches.
A refused session breaks the chain: the store refuses the rest of it, the first
failure answers its caller, the others are decided again. These tests hold the result
to a serial run: the plays that committed, replayed one by one in commit order on a
fresh store, give the same money, hours, tau_k and theta, bit for bit.

Units are made to fail for real: an idempotency receipt whose key is already stored
(the database rejects the unit), or a player's row made to violate a CHECK."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hot_plays_worker import setup

import ublox_sim
from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import RequestTimeout, StoreFull, UbloxError, UnitRejected
from ublox_sim.core.records import PTO, Player, PlaySession, PTSToken, iso
from ublox_sim.engine import Engine
from ublox_sim.store.backend import Chain, Receipt
from ublox_sim.store.sqlite.writer import (
    PIPELINE_DEPTH,
    Chained,
    PersistenceActor,
    Statement,
    run,
)
from ublox_sim.store.verify import verify_store


async def state(home: Path) -> dict[str, Any]:
    """What the plays left, read back from the store by a fresh engine."""
    async with Engine.open(home, seed=1, clock=SimClock()) as engine:
        players = await engine.store.load_all(Player)
        tokens = await engine.store.load_all(PTSToken)
        ptos = await engine.store.load_all(PTO)
        sessions = await engine.store.load_all(PlaySession)
        theta = (await engine.world("hot"))["theta"]
    return {
        "players": sorted(
            (
                p.player_id,
                p.usd_obbba_balance,
                p.xUSD_balance,
                p.tau_k,
                p.phase,
                p.coherence,
                p.total_play_time,
                p.quality_score,
                p.phase_locks_count,
                p.memory_depth,
            )
            for p in players
        ),
        "tokens": sorted(
            (t.token_id, t.holder, t.hours_played, t.xUSD_accumulated) for t in tokens
        ),
        "ptos": [(p.pto_id, p.xUSD_pool, p.aci_coherence_score) for p in ptos],
        "sessions": [
            (s.player_id, s.duration, s.quality, s.xUSD_earned, s.phase_locks)
            for s in sorted(sessions, key=lambda s: s.session_id)
        ],
        "theta": theta.tobytes(),
    }


async def serial_replay(home: Path, count: int, committed: Sequence[tuple[str, float]]) -> None:
    """The same setup, then the committed plays one at a time, in commit order."""
    async with Engine.open(home, seed=1, clock=SimClock()) as engine:
        await setup(engine, count)
        for player_id, hours in committed:
            await engine.play(player_id, "hot", hours)


async def taken_key(engine: Engine) -> Receipt:
    """A receipt whose key is stored already: any unit carrying it is rejected."""
    await engine.deposit("maker", 1, receipt=Receipt("tester", "k", "p", 200, "x", "player"))
    return Receipt("tester", "k", "print", 201, iso(engine.clock.now()), "session")


def hours_of(k: int) -> float:
    return (0.5, 1.0, 1.5)[k % 3]


async def hot_plays(
    engine: Engine,
    names: list[str],
    rounds: int,
    refused: set[tuple[int, int]],
    bad: Receipt | None,
) -> dict[tuple[str, int], object]:
    """Every player plays ``rounds`` times, one after the other, all players at once;
    the plays named in ``refused`` carry ``bad``."""
    outcomes: dict[tuple[str, int], object] = {}

    async def player(i: int, name: str) -> None:
        for k in range(rounds):
            receipt = bad if (i, k) in refused else None
            try:
                outcomes[name, k] = await engine.play(name, "hot", hours_of(k), receipt=receipt)
            except UbloxError as exc:
                outcomes[name, k] = exc

    async with anyio.create_task_group() as tg:
        for i, name in enumerate(names):
            tg.start_soon(player, i, name)
    return outcomes


def committed_plays(after: dict[str, Any]) -> list[tuple[str, float]]:
    return [(player_id, duration) for player_id, duration, *_ in after["sessions"]]


@pytest.mark.asyncio
@pytest.mark.parametrize("refused", [set(), {(3, 0), (11, 1), (12, 1), (29, 2)}])
async def test_concurrent_plays_of_one_world_equal_a_serial_run_of_what_committed(
    tmp_path: Path, refused: set[tuple[int, int]]
) -> None:
    count, rounds = 30, 3
    async with Engine.open(tmp_path / "hot", seed=1, clock=SimClock()) as engine:
        names = await setup(engine, count)
        bad = await taken_key(engine)
        outcomes = await hot_plays(engine, names, rounds, refused, bad)
    # Exactly the marked plays were refused (by the database), every other one landed.
    for (name, k), outcome in outcomes.items():
        if (names.index(name), k) in refused:
            assert isinstance(outcome, UnitRejected), outcome
        else:
            assert not isinstance(outcome, BaseException), outcome
    played = count * rounds - len(refused)
    after = await state(tmp_path / "hot")
    assert len(after["sessions"]) == played
    # Replayed one by one in commit order, the plays that committed leave the same
    # money, hours, tau_k, world, bit for bit (the taken key's deposit aside).
    await serial_replay(tmp_path / "serial", count, committed_plays(after))
    serial = await state(tmp_path / "serial")
    maker = next(p for p in after["players"] if p[0] == "maker")
    serial_maker = next(p for p in serial["players"] if p[0] == "maker")
    assert maker[1] == serial_maker[1] + 100  # the deposit that stored the key (1 USD)
    assert [p for p in after["players"] if p[0] != "maker"] == [
        p for p in serial["players"] if p[0] != "maker"
    ]
    for key in ("tokens", "ptos", "sessions", "theta"):
        assert after[key] == serial[key], key
    assert verify_store(tmp_path / "hot") == []


def break_a_check(home: Path, player_id: str) -> None:
    """Give the player's row a value its CHECK forbids (behind the store's back), so the
    database refuses the next unit that writes that row."""
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        conn.execute("PRAGMA ignore_check_constraints = 1")
        conn.execute("UPDATE players SET memory_depth = -1e6 WHERE player_id = ?", (player_id,))
        conn.commit()


@pytest.mark.asyncio
async def test_a_refused_session_in_a_batch_of_plays_has_the_sessions_after_it_decided_again(
    tmp_path: Path,
) -> None:
    """One Play of four sessions; the second player's row violates a CHECK, so the
    database refuses its session. The chain's later two are refused with it, whatever
    the batches, and decided again: they land, on the world as committed."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        names = await setup(engine, 4)
        break_a_check(tmp_path, names[1])
        results = await engine.play_many("hot", [(name, 1.0) for name in names])
        redone = engine._ptos.active("hot").replays  # type: ignore[union-attr]
    assert isinstance(results[1], UnitRejected) and "CHECK" in str(results[1])
    assert [isinstance(r, UbloxError) for r in results] == [False, True, False, False]
    assert redone == 2
    after = await state(tmp_path)
    assert [s[0] for s in after["sessions"]] == [names[0], names[2], names[3]]
    played = {t[1]: t[2] for t in after["tokens"]}
    assert played == {names[0]: 1.0, names[1]: 0.0, names[2]: 1.0, names[3]: 1.0}


@pytest.mark.asyncio
async def test_sessions_decided_again_answer_their_caller_when_deciding_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redo of a broken chain is a message the PTO sends itself: if reading its
    players' physics fails there, the first Play's caller still hears, per session."""
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        names = await setup(engine, 4)
        break_a_check(tmp_path, names[1])
        await engine.get_pto("hot")  # activated, so its decision can be failed
        pto = engine._ptos.active("hot")  # type: ignore[union-attr]
        decide, calls = pto._settled_physics, []

        async def failing_again(players: set[str]) -> Any:
            calls.append(players)
            if len(calls) > 1:  # the redo's
                raise RequestTimeout("players did not answer")
            return await decide(players)

        monkeypatch.setattr(pto, "_settled_physics", failing_again)
        results = await engine.play_many("hot", [(name, 1.0) for name in names])
    assert not isinstance(results[0], UbloxError)
    assert isinstance(results[1], UnitRejected)
    assert [type(r) for r in results[2:]] == [RequestTimeout, RequestTimeout]
    assert len(calls) == 2
    after = await state(tmp_path)
    assert [s[0] for s in after["sessions"]] == [names[0]]  # nothing decided twice


@pytest.mark.asyncio
async def test_pipelined_plays_survive_passivation(tmp_path: Path) -> None:
    """Few actors may be active: players are passivated and activated again between (and
    during) pipelined plays; nothing is lost, and a serial run of what committed matches."""
    count, rounds = 12, 3
    async with Engine.open(tmp_path / "hot", seed=1, clock=SimClock(), max_active=4) as engine:
        names = await setup(engine, count)
        outcomes = await hot_plays(engine, names, rounds, set(), None)
    assert all(not isinstance(o, BaseException) for o in outcomes.values()), outcomes
    after = await state(tmp_path / "hot")
    assert len(after["sessions"]) == count * rounds
    await serial_replay(tmp_path / "serial", count, committed_plays(after))
    serial = await state(tmp_path / "serial")
    assert after == serial
    assert verify_store(tmp_path / "hot") == []


@pytest.mark.asyncio
async def test_plays_queued_while_the_writer_is_busy_are_all_decided_and_share_a_commit(
    tmp_path: Path,
) -> None:
    """The writer is held (a call in its queue waits for the test): every queued Play
    is still decided and its session submitted (serially, the second would wait for the
    first's commit), and once the writer goes on they land together."""
    count = 10
    async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
        names = await setup(engine, count)
        pto = engine._ptos.active("hot")  # type: ignore[union-attr]
        db = engine.store.db  # type: ignore[attr-defined]  # SQLite's writer
        go = anyio.Event()

        async def hold(conn: object) -> None:
            await go.wait()

        held = await db.call_soon(hold)
        commits, units = db.commits, db.units_committed
        results: dict[str, object] = {}

        async def play(name: str) -> None:
            results[name] = await engine.play(name, "hot", 1.0)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(play, name)
            for _ in range(100_000):  # loop turns, not time: each Play takes a few
                if pto._flying == count:
                    break
                await anyio.lowlevel.checkpoint()
            assert pto._flying == count  # all decided and submitted, none committed
            assert not results  # none answered before its session is durable
            go.set()
        await held
        # One transaction, or two if a batch was taken beside the held call (the
        # writer keeps PIPELINE_DEPTH batches in flight), not one per Play.
        assert db.units_committed - units == count
        assert db.commits - commits <= PIPELINE_DEPTH
    assert all(not isinstance(r, BaseException) for r in results.values())
    assert len((await state(tmp_path))["sessions"]) == count


@pytest.mark.asyncio
async def test_plays_of_one_world_into_a_full_database_equal_a_serial_run_of_what_committed(
    tmp_path: Path,
) -> None:
    """The database is capped a few pages above its size (SQLite's own ``max_page_count``:
    a real SQLITE_FULL) while 20 players play one world: what fits commits, every other
    play is refused as ``StoreFull`` (no caller left waiting), and what committed is a
    serial run of itself."""
    count, rounds = 20, 3
    async with Engine.open(tmp_path / "hot", seed=1, clock=SimClock()) as engine:
        names = await setup(engine, count)
        db = engine.store.db  # type: ignore[attr-defined]  # SQLite's writer
        ((pages,),) = await db.call(lambda conn: run(conn, "PRAGMA page_count"))
        await db.call(lambda conn: run(conn, f"PRAGMA max_page_count={int(pages) + 4}"))
        outcomes = await hot_plays(engine, names, rounds, set(), None)
        await db.call(lambda conn: run(conn, "PRAGMA max_page_count=1073741823"))
    failed = [o for o in outcomes.values() if isinstance(o, BaseException)]
    assert len(outcomes) == count * rounds
    assert failed, "the capped database never filled up"
    assert all(isinstance(o, StoreFull) for o in failed), failed
    after = await state(tmp_path / "hot")
    assert len(after["sessions"]) == count * rounds - len(failed) > 0, len(failed)
    await serial_replay(tmp_path / "serial", count, committed_plays(after))
    assert after == await state(tmp_path / "serial")
    assert verify_store(tmp_path / "hot") == []


def run_killed(home: Path, count: int, acks: int) -> list[tuple[str, int]]:
    """Run ``hot_plays_worker`` and SIGKILL it once ``acks`` plays were answered."""
    roots = (Path(ublox_sim.__file__).resolve().parents[1], Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots))}
    answered: list[tuple[str, int]] = []
    errors = home.parent / "worker.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hot_plays_worker", str(home), str(count)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            while len(answered) < acks:
                line = proc.stdout.readline()
                if not line or line.strip() == "done":
                    break  # died, or finished first: the test sees too few acks
                if line.startswith("acked "):
                    _, player_id, session_id = line.split()
                    answered.append((player_id, int(session_id)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, errors.read_text()
    return answered


def test_a_process_killed_amid_pipelined_plays_keeps_every_answered_play_and_a_serial_prefix(
    tmp_path: Path,
) -> None:
    """SIGKILL while 20 players play one world: every answered play is on disk, the store
    verifies, and what committed is a serial run of itself (money, hours, tau_k; the
    world's arrays are written in the background, so its theta may be older)."""
    count = 20
    answered = run_killed(tmp_path / "hot", count, acks=3 * count)
    assert len(answered) == 3 * count
    assert verify_store(tmp_path / "hot") == []
    assert {session_id for _, session_id in answered} <= anyio.run(answered_ids, tmp_path / "hot")
    after = anyio.run(state, tmp_path / "hot")
    anyio.run(serial_replay, tmp_path / "serial", count, committed_plays(after))
    serial = anyio.run(state, tmp_path / "serial")
    for key in ("players", "tokens", "ptos", "sessions"):
        assert after[key] == serial[key], key


async def answered_ids(home: Path) -> set[int]:
    async with Engine.open(home, seed=1, clock=SimClock()) as engine:
        return {s.session_id for s in await engine.store.load_all(PlaySession)}


# -- the store's chain --------------------------------------------------------------------

TX = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, timestamp)"
    " VALUES ('deposit', NULL, ?, ?, 'USD-OBBBA', '2025-12-12 16:56:32+00:00')"
)


@pytest.mark.asyncio
async def test_a_chain_commits_only_the_prefix_before_its_first_refusal(tmp_path: Path) -> None:
    """In one batch (a SAVEPOINT rerun) and in the batches after: once a unit of a chain
    is refused, its later units are refused without running; other units commit."""
    chain = Chain()

    def unit(name: str, amount: int, chained: bool = True) -> list[Statement]:
        statements = [Statement(TX, (name, 1)), Statement(TX, (name, amount))]
        return Chained(statements, chain) if chained else statements

    async with PersistenceActor.open(tmp_path / "ublox.db") as actor:
        first = await actor.submit_many(
            [unit("a", 1), unit("b", -1), unit("c", 1), unit("free", 1, chained=False)]
        )
        later = await actor.submit_many([unit("d", 1), unit("free2", 1, chained=False)])
    assert first[0] == [] and first[3] == [] and later[1] == []
    assert isinstance(first[1], UnitRejected) and "CHECK" in str(first[1])
    assert isinstance(first[2], UnitRejected) and "chain" in str(first[2])
    assert isinstance(later[0], UnitRejected) and "chain" in str(later[0])
    assert chain.refused
    with closing(sqlite3.connect(tmp_path / "ublox.db")) as conn:
        names = [r[0] for r in conn.execute("SELECT to_player FROM transactions ORDER BY tx_id")]
    assert names == ["a", "a", "free", "free", "free2", "free2"]
