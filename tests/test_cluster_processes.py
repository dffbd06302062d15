"""Several processes, one PostgreSQL database (#14 item 3): races are decided by the
database. Real processes (``tests/cluster_worker.py``), each an embedded engine with its
own actors (caches) on the session's throwaway cluster; their outcomes are compared with
the rows afterwards."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from cluster_helpers import child_env, launch

from ublox_sim.core.clock import SimClock
from ublox_sim.core.records import PlaySession, Transaction
from ublox_sim.engine import Engine
from ublox_sim.store.postgres.lease import TTL_ENV

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("cluster_worker.py")
PRICE = 10_00  # cents per PTS


def _spawn(url: str, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    """A worker; its stderr goes to ``log`` if given (read when a test fails)."""
    env = child_env()
    with contextlib.ExitStack() as stack:
        err = None if log is None else stack.enter_context(log.open("w"))
        return subprocess.Popen(  # the child has its own copy of ``err``
            [sys.executable, str(WORKER), url, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )


def _run_together(workers: Sequence[subprocess.Popen[str]]) -> list[dict[str, object]]:
    """Wait until every worker is ready, start them at once, collect their outcomes."""
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outcomes: list[dict[str, object]] = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        lines = out.splitlines()
        assert worker.returncode == 0 and lines[-1] == "done", out[-2000:]
        outcomes.extend(json.loads(line) for line in lines[:-1])
    return outcomes


async def _setup(url: str, buyers: int, shares: int) -> list[str]:
    names = [f"buyer-{i:04d}" for i in range(buyers)]
    async with Engine.open(store=url, seed=7) as engine:
        await engine.register_player("creator", usd_obbba=0)
        await engine.register_players([(n, 100, 1.0, None) for n in names])
        await launch(
            engine,
            "pto-race",
            shares=shares,
            atu_required=10,
            price="10.00",
            deadline=timedelta(days=1),
        )
    return names


async def test_a_thousand_buyers_on_four_processes_buy_exactly_the_ten_shares(
    pg_url: str,
) -> None:
    names = await _setup(pg_url, buyers=1000, shares=10)
    workers = [_spawn(pg_url, "buy", "pto-race", *names[k::4]) for k in range(4)]
    outcomes = await anyio.to_thread.run_sync(_run_together, workers)

    assert len(outcomes) == 1000
    sold = [o["op"].removeprefix("buy ") for o in outcomes if "ok" in o]  # type: ignore[union-attr]
    refused = Counter(o["error"] for o in outcomes if "error" in o)
    assert len(sold) == 10, refused
    # Every other buyer was refused by a business rule, none by a conflict left over.
    assert set(refused) <= {"shares_unavailable", "invalid_state"}, refused

    async with Engine.open(store=pg_url, seed=7) as engine:
        pto = await engine.get_pto("pto-race")
        assert (pto.pts_sold, pto.status, pto.funding_raised) == (10, "in_progress", 100)
        for name in names:
            player = await engine.get_player(name)
            expected = 100 - PRICE // 100 if name in sold else 100
            assert player.usd_obbba_balance == expected, name
        tokens = {t.holder for t in await engine.store.load_tokens("pto-race")}
        assert tokens == set(sold)
        assert await engine.store.verify() == []


async def test_deposits_and_transfers_racing_between_two_processes_lose_nothing(
    pg_url: str,
) -> None:
    async with Engine.open(store=pg_url, seed=7) as engine:
        await engine.register_player("a", usd_obbba=20)
        await engine.register_player("b", usd_obbba=5)
    rounds = 60
    workers = [_spawn(pg_url, "move", "a", "b", str(rounds)) for _ in range(2)]
    outcomes = await anyio.to_thread.run_sync(_run_together, workers)

    assert len(outcomes) == 2 * 3 * rounds
    done = Counter(o["op"] for o in outcomes if "ok" in o)
    refused = Counter(o["error"] for o in outcomes if "error" in o)
    # The only refusal is the business one; a conflict was decided again, never reported.
    assert set(refused) <= {"insufficient_funds"}, refused
    assert done["deposit"] == 2 * rounds
    async with Engine.open(store=pg_url, seed=7) as engine:
        a = (await engine.get_player("a")).usd_obbba_balance
        b = (await engine.get_player("b")).usd_obbba_balance
        assert a == 20 + done["deposit"] - 3 * done["a->b"] + 2 * done["b->a"]
        assert b == 5 + 3 * done["a->b"] - 2 * done["b->a"]
        assert await engine.store.verify() == []


async def test_a_deadline_fired_by_three_processes_refunds_once(pg_url: str) -> None:
    past = SimClock(datetime(2020, 1, 1, tzinfo=UTC))
    async with Engine.open(store=pg_url, seed=7, clock=past) as engine:
        await engine.register_player("creator", usd_obbba=0)
        for name in ("x", "y"):
            await engine.register_player(name, usd_obbba=50)
        await launch(engine, "pto-late", atu_required=10, price="10.00", deadline=timedelta(days=1))
        await engine.buy_pts("x", "pto-late", 2)
        await engine.buy_pts("y", "pto-late", 1)
    # Every worker runs on the wall clock: the deadline (2020) is long past.
    workers = [_spawn(pg_url, "deadline") for _ in range(3)]
    outcomes = await anyio.to_thread.run_sync(_run_together, workers)

    assert sorted(len(o["failed"]) for o in outcomes) == [0, 0, 1]  # type: ignore[arg-type]
    async with Engine.open(store=pg_url, seed=7) as engine:
        assert (await engine.get_pto("pto-late")).status == "failed"
        assert (await engine.get_player("x")).usd_obbba_balance == 50
        assert (await engine.get_player("y")).usd_obbba_balance == 50
        refunds = [t for t in await engine.store.load_all(Transaction) if t.tx_type == "refund"]
        assert sorted((t.to_player, t.amount) for t in refunds) == [("x", 2000), ("y", 1000)]
        assert await engine.store.verify() == []


class _Lines:
    """Every worker's stdout lines, as they come: (worker, parsed line) on one queue."""

    def __init__(self, workers: Sequence[subprocess.Popen[str]]) -> None:
        self.queue: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.seen: list[tuple[int, str]] = []
        self.threads = [
            threading.Thread(target=self._read, args=(k, w), daemon=True)
            for k, w in enumerate(workers)
        ]
        for thread in self.threads:
            thread.start()

    def _read(self, k: int, worker: subprocess.Popen[str]) -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            text = line.strip()
            self.seen.append((k, text))
            self.queue.put((k, text if text in ("ready", "done") else json.loads(text)))
        self.queue.put((k, None))  # end of output

    def next(self) -> tuple[int, Any]:
        try:
            return self.queue.get(timeout=60)
        except queue.Empty:
            print("last lines:", self.seen[-30:])
            raise


def _kill_one_under_load(
    url: str, players: list[str], acks_before: int, logs: Path
) -> dict[str, Any]:
    """3 workers under load; kill -9 the one holding the worlds once ``acks_before``
    writes were acknowledged; wait until a survivor holds them; stop the survivors."""
    workers = [_spawn(url, "load", *players[k::3], log=logs / f"w{k}.log") for k in range(3)]
    try:
        return _under_load(workers, acks_before)
    except BaseException:
        print("exit codes:", [w.poll() for w in workers])
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGUSR2)  # where it hangs, to its log
                worker.send_signal(signal.SIGUSR1)
        for worker in workers:
            try:
                worker.wait(timeout=2)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for k in range(3):
            print(f"--- worker {k} stderr ---\n" + (logs / f"w{k}.log").read_text()[-3000:])
        raise


def _under_load(workers: list[subprocess.Popen[str]], acks_before: int) -> dict[str, Any]:
    lines = _Lines(workers)
    ready = 0
    while ready < 3:
        assert lines.next()[1] == "ready"
        ready += 1
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    acked: list[dict[str, Any]] = []
    held: dict[int, list[str]] = {}
    victim: int | None = None
    taken_over_by: int | None = None
    ended = 0
    while taken_over_by is None:
        k, line = lines.next()
        if line is None:
            assert k == victim, f"worker {k} ended early"
            ended += 1
            continue
        if line["op"] == "held":
            held[k] = line["ptos"]
            if victim is not None and k != victim and "arena" in line["ptos"]:
                taken_over_by = k
            continue
        acked.append(line)
        if victim is None and len(acked) >= acks_before and any(held.values()):
            victim = next(w for w, ptos in held.items() if "arena" in ptos)
            workers[victim].send_signal(signal.SIGKILL)
    survivors = [w for k, w in enumerate(workers) if k != victim]
    for worker in survivors:
        assert worker.stdin is not None
        worker.stdin.write("stop\n")
        worker.stdin.flush()
    while ended < 3:  # the victim's and both survivors' outputs end
        k, line = lines.next()
        if line is None:
            ended += 1
        elif isinstance(line, dict) and line["op"] not in ("held",):
            acked.append(line)
    for worker in workers:
        worker.wait(timeout=60)
        if worker.stdin is not None:
            worker.stdin.close()
        if worker.stdout is not None:
            worker.stdout.close()
    assert workers[victim].returncode == -signal.SIGKILL
    assert all(w.returncode == 0 for w in survivors)
    return {"acked": acked, "victim": victim, "taken_over_by": taken_over_by}


@pytest.mark.parametrize("acks_before", [5, 60, 200])
async def test_kill_9_of_one_of_three_processes_loses_no_acknowledged_write(
    pg_url: str, acks_before: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(TTL_ENV, "0.5")  # the survivors take over within half a second
    players = [f"p{i:02d}" for i in range(12)]
    past = SimClock(datetime(2020, 1, 1, tzinfo=UTC))
    async with Engine.open(store=pg_url, seed=7, clock=past) as engine:
        await engine.register_player("creator")
        await engine.register_players([(p, 1000, 1.0, None) for p in players])
        for pto_id, shares, days in (("big", 1_000_000, 36500), ("arena", 12, 1), ("late", 5, 1)):
            await launch(
                engine,
                pto_id,
                shares=shares,
                atu_required=10,
                price="1",
                deadline=timedelta(days=days),
            )
        for player in players:
            await engine.buy_pts(player, "arena", 1)  # funded: its world is played
        await engine.buy_pts(players[0], "late", 2)  # its deadline (2020) is long past
        await engine.buy_pts(players[1], "late", 1)

    run = await anyio.to_thread.run_sync(
        _kill_one_under_load, pg_url, players, acks_before, tmp_path
    )

    acked = run["acked"]
    async with Engine.open(store=pg_url, seed=7) as engine:
        tokens = {t.token_id for t in await engine.store.load_tokens("big")}
        assert {a["token"] for a in acked if a["op"] == "buy"} <= tokens
        sessions = {s.session_id for s in await engine.store.load_all(PlaySession)}
        assert {a["session"] for a in acked if a["op"] == "play"} <= sessions
        ledger = await engine.store.load_all(Transaction)
        deposits = Counter(t.to_player for t in ledger if t.tx_type == "deposit")
        for player, count in Counter(a["player"] for a in acked if a["op"] == "deposit").items():
            assert deposits[player] >= count + 1, player  # + the opening deposit
        refunds = sorted((t.to_player, t.amount) for t in ledger if t.tx_type == "refund")
        assert refunds == [(players[0], 200), (players[1], 100)]  # once, whoever fired it
        assert (await engine.get_pto("late")).status == "failed"
        assert await engine.store.verify() == []
