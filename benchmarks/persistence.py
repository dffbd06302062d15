"""Persistence throughput and ack latency: the actor against raw SQLite, in the same run.

Contenders, each writing one-row units (a ``transactions`` row of the real schema):
- ``naive``: stdlib sqlite3, default rollback journal, synchronous=FULL, one commit
  per row (what the seed's auto-save does);
- ``ceiling``: stdlib sqlite3, WAL, synchronous=NORMAL, ``executemany`` of pre-built
  rows, 1,000 per transaction: the physical limit for this schema here;
- ``actor``: N producers each awaiting the durable acknowledgement of its unit
  through the real ``PersistenceActor``.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from ublox_sim.persistence import PersistenceActor, Statement, prepare_database

TX_SQL = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, pto_id, timestamp)"
    " VALUES ('investment', ?, ?, ?, 'USD-OBBBA', NULL, '2025-12-12 16:56:32+00:00')"
)


def row(i: int) -> tuple[str, str, int]:
    return (f"player{i % 997}", f"pto{i % 13}", 100 + i % 1000)


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    rows: int
    seconds: float
    latencies_ms: tuple[float, ...] = ()

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def latency(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fresh_db(folder: Path, name: str) -> Path:
    path = folder / f"{name}.db"
    prepare_database(path)
    return path


def run_naive(folder: Path, rows: int) -> Result:
    path = folder / "naive.db"
    prepare_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    start = time.perf_counter()
    for i in range(rows):
        conn.execute("BEGIN")
        conn.execute(TX_SQL, row(i))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return Result("naive", rows, elapsed)


def run_ceiling(folder: Path, rows: int, per_tx: int = 1000) -> Result:
    path = fresh_db(folder, "ceiling")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    prebuilt = [row(i) for i in range(rows)]
    start = time.perf_counter()
    for offset in range(0, rows, per_tx):
        conn.execute("BEGIN")
        conn.executemany(TX_SQL, prebuilt[offset : offset + per_tx])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return Result("ceiling", rows, elapsed)


def run_actor(
    folder: Path, rows: int, producers: int = 100, synchronous: str = "NORMAL", name: str = "actor"
) -> Result:
    path = fresh_db(folder, name)
    per_producer = rows // producers
    latencies: list[float] = []

    async def main() -> float:
        async with PersistenceActor.open(path, synchronous=synchronous) as actor:

            async def producer(p: int) -> None:
                for k in range(per_producer):
                    unit = [Statement(TX_SQL, row(p * per_producer + k))]
                    sent = time.perf_counter()
                    await actor.submit(unit)
                    latencies.append((time.perf_counter() - sent) * 1000)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for p in range(producers):
                    tg.start_soon(producer, p)
            return time.perf_counter() - start

    elapsed = anyio.run(main)
    return Result(name, per_producer * producers, elapsed, tuple(latencies))


def quick_compare(rows: int = 50_000, rounds: int = 3) -> None:
    """Print actor vs ceiling vs naive, pairwise ratios per round."""
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            folder = Path(tmp) / f"r{r}"
            folder.mkdir()
            ceiling = run_ceiling(folder, rows)
            actor = run_actor(folder, rows)
            naive = run_naive(folder, min(rows, 2000))
            print(
                f"round {r}: actor {actor.rows_per_s:,.0f} rows/s "
                f"(p50 {statistics.median(actor.latencies_ms):.2f} ms, p99 {actor.latency(0.99):.2f} ms, "
                f"max {max(actor.latencies_ms):.1f} ms), ceiling {ceiling.rows_per_s:,.0f} rows/s, "
                f"naive {naive.rows_per_s:,.0f} rows/s; actor/ceiling "
                f"{actor.rows_per_s / ceiling.rows_per_s:.2f}, actor/naive "
                f"{actor.rows_per_s / naive.rows_per_s:.0f}"
            )


if __name__ == "__main__":
    quick_compare()
