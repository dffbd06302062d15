"""PostgreSQL's export and verify read one snapshot (issue #14): beside another process
that deposits and transfers without pause, every verify is clean and every export's
ledger sums match its balances. Query by query, a deposit committed between the ledger's
sums and the balances' read would be reported as an imbalance."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from cluster_helpers import child_env

from ublox_sim.core.money import USD, XUSD
from ublox_sim.engine import Engine

pytestmark = pytest.mark.anyio

WRITER = Path(__file__).with_name("pg_snapshot_writer.py")
ROUNDS = 6


@contextmanager
def _writer(url: str, log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), url],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env(),
        )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def _progress(proc: subprocess.Popen[str], log: Path) -> int:
    """The writer's next report: one more deposit and transfer committed."""
    assert proc.stdout is not None
    line = await anyio.to_thread.run_sync(proc.stdout.readline)
    assert line, f"the writer died: {log.read_text()[-2000:]}"
    return int(line)


def _cents(value: Any) -> int:
    return int(Decimal(str(value)) * 100)


def _ledger_mismatches(export: dict[str, Any]) -> list[str]:
    """Each player's balances against its net flow in the export's own ledger."""
    net: Counter[tuple[str, str]] = Counter()
    for tx in export["transactions"]:
        amount = _cents(tx["amount"])
        if tx["to_player"]:
            net[tx["to_player"], tx["currency"]] += amount
        if tx["from_player"]:
            net[tx["from_player"], tx["currency"]] -= amount
    wrong = []
    for player in export["players"]:
        pid = player["player_id"]
        for currency, field in ((USD, "usd_obbba_balance"), (XUSD, "xUSD_balance")):
            if _cents(player[field]) != net[pid, currency]:
                wrong.append(f"{pid} {currency}: {player[field]} vs ledger {net[pid, currency]}")
    return wrong


async def test_verify_and_export_beside_a_live_writer(pg_url: str, tmp_path: Path) -> None:
    async with Engine.open(store=pg_url, seed=1) as engine:
        for i in range(4):
            await engine.register_player(f"w-{i}", usd_obbba=10)
        log = tmp_path / "writer.err"
        with _writer(pg_url, log) as proc:
            seen = []
            for _ in range(ROUNDS):
                seen.append(await _progress(proc, log))  # the writer is writing now
                assert await engine.store.verify() == []
                export = await engine.store.export_data()
                assert _ledger_mismatches(export) == []
                assert len(export["players"]) == 4
            seen.append(await _progress(proc, log))
        assert seen == sorted(seen) and seen[-1] > seen[0]  # writes went on throughout
        assert await engine.store.verify() == []
