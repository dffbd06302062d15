"""Several processes, one PostgreSQL database (#14 item 3): races are decided by the
database. Real processes (``tests/cluster_worker.py``), each an embedded engine with its
own actors (caches) on the session's throwaway cluster; their outcomes are compared with
the rows afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.records import Transaction
from ublox_sim.engine import Engine
from ublox_sim.store.postgres.backend import CLUSTER_ENV

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("cluster_worker.py")
PRICE = 10_00  # cents per PTS


def _spawn(url: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, **{CLUSTER_ENV: "1"})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
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
        await engine.launch_pto(
            pto_id="pto-race",
            game_name="Race",
            creator_id="creator",
            atu_required=10,
            pts_offered=shares,
            price_per_pts="10.00",
            funding_deadline=timedelta(days=1),
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
        await engine.launch_pto(
            pto_id="pto-late",
            game_name="Late",
            creator_id="creator",
            atu_required=10,
            pts_offered=10,
            price_per_pts="10.00",
            funding_deadline=timedelta(days=1),
        )
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
