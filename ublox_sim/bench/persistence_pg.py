"""Persistence on PostgreSQL next to SQLite's actor, in the same run (``ublox-sim bench
persistence --store URL``).

Every contender writes through the store's real group-commit writer, 100 producers each
awaiting its durable acknowledgement before submitting the next unit:

- ``sqlite``: SQLite's ``PersistenceActor`` (WAL, synchronous=NORMAL, the default);
- ``sqlite_full``: the same with synchronous=FULL (durable against power loss too);
- ``pg_1p``, ``pg_2p``, ``pg_4p``: ``PgWriter`` (one connection, group commit,
  ``synchronous_commit`` on: an acknowledgement waits for the WAL flush) in 1, 2 and 4
  processes sharing the database, each with its own 100 producers; rows/s is the total
  of all processes over the time from the first start to the last finish.

Two units: ``one``, one ledger row (the store numbers it: the counter row every process
updates, as SQLite's AUTOINCREMENT, is what processes queue on), and ``mixed``, a
purchase (two UPDATEs, a token, an event whose number is wanted, a ledger row; figures
count units). PostgreSQL's contenders run in a schema of their own (``ublox_bench_*``)
made in the given database and dropped after: a real store's tables are never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ublox_sim.store.postgres.url import masked
from ublox_sim.store.sqlite.writer import (
    PersistenceActor,
    Statement,
    Synchronous,
    prepare_database,
)

from .harness import child_command, child_env, percentile, run_rounds, summarise, table

SIZES = {"tiny": (400, 1), "quick": (5_000, 2), "full": (20_000, 3)}  # units per run, rounds
PRODUCERS = 100
PROCESSES = (1, 2, 4)
AT = "2025-12-12 16:56:32+00:00"
TX_SQL = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, pto_id,"
    f" timestamp) VALUES ('investment', ?, ?, ?, 'USD-OBBBA', NULL, '{AT}')"
)
MIXED = (
    "UPDATE players SET usd_obbba_balance = usd_obbba_balance - ? WHERE player_id = ?",
    "UPDATE ptos SET pts_sold = pts_sold + 1, funding_raised = funding_raised + ? WHERE pto_id = ?",
    "INSERT INTO pts_tokens (token_id, game_id, holder, hours_committed, purchase_price,"
    f" purchase_time) VALUES (?, ?, ?, 1.0, ?, '{AT}')",
    f"INSERT INTO event_log (kind, at, payload) VALUES ('pts_bought', '{AT}', ?)",
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, pto_id,"
    f" timestamp) VALUES ('investment', ?, ?, ?, 'USD-OBBBA', ?, '{AT}')",
)
SEED_PLAYERS = "INSERT INTO players (player_id, usd_obbba_balance, created_at) VALUES (?, 1000000000000000, '')"
SEED_PTOS = (
    "INSERT INTO ptos (pto_id, game_name, creator_id, atu_required, pts_offered,"
    " price_per_pts, funding_goal, launch_time)"
    " VALUES (?, '', 'player0', 1, 1000000000000, 1, 1000000000000, '')"
)


def one(i: int, tag: str) -> list[Statement]:
    return [Statement(TX_SQL, (f"player{i % 997}", f"pto{i % 13}", 100 + i % 1000))]


def mixed(i: int, tag: str) -> list[Statement]:
    player, pto, amount = f"player{i % 997}", f"pto{i % 13}", 100 + i % 1000
    update_player, update_pto, token, event, ledger = MIXED
    return [
        Statement(update_player, (amount, player)),
        Statement(update_pto, (amount, pto)),
        Statement(token, (f"t{tag}-{i}", pto, player, amount)),
        Statement(event, (json.dumps({"i": i}),), want_rowid=True, on_commit=lambda ids: None),
        Statement(ledger, (player, pto, amount, pto)),
    ]


UNITS: dict[str, Callable[[int, str], list[Statement]]] = {"one": one, "mixed": mixed}


def seed_statements() -> list[Statement]:
    return [Statement(SEED_PLAYERS, (f"player{i}",)) for i in range(997)] + [
        Statement(SEED_PTOS, (f"pto{i}",)) for i in range(13)
    ]


async def _produce(
    submit: Callable[[list[Statement]], Any], units: int, kind: str, tag: str
) -> tuple[float, float, list[float]]:
    """PRODUCERS producers, ``units`` in all; (start, end) wall times and ack latencies."""
    make = UNITS[kind]
    per = max(1, units // PRODUCERS)
    latencies: list[float] = []

    async def producer(p: int) -> None:
        for k in range(per):
            work = make(p * per + k, tag)
            sent = time.perf_counter()
            await submit(work)
            latencies.append((time.perf_counter() - sent) * 1000)

    start = time.time()
    async with anyio.create_task_group() as tg:
        for p in range(PRODUCERS):
            tg.start_soon(producer, p)
    return start, time.time(), latencies


def run_sqlite(folder: Path, units: int, kind: str, synchronous: Synchronous) -> dict[str, float]:
    path = folder / f"{kind}-{synchronous}-{time.monotonic_ns()}.db"
    prepare_database(path)

    async def main() -> tuple[float, float, list[float]]:
        async with PersistenceActor.open(path, synchronous=synchronous) as actor:
            await actor.submit(seed_statements())
            return await _produce(actor.submit, units, kind, "s")

    start, end, latencies = anyio.run(main, backend="asyncio")
    return _figures(len(latencies), end - start, latencies)


# -- PostgreSQL: a worker process per writer ---------------------------------------------


async def _worker(dsn: str, units: int, kind: str, tag: str) -> dict[str, Any]:
    from ublox_sim.store.postgres.writer import PgWriter

    writer = PgWriter(dsn)
    await writer.connect()
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        print("ready", flush=True)
        sys.stdin.readline()  # go: every worker starts at once
        start, end, latencies = await _produce(writer.submit, units, kind, tag)
    finally:
        await writer.aclose()
        await task
    return {"start": start, "end": end, "latencies": latencies}


WORKER = child_command("ublox_sim.bench.persistence_pg", "worker")


def run_pg(dsn: str, units: int, kind: str, processes: int) -> dict[str, float]:
    """``processes`` workers, each with PRODUCERS producers and ``units`` units."""
    tag = str(time.monotonic_ns())
    workers = [
        subprocess.Popen(
            [*WORKER, dsn, str(units), kind, f"{tag}-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for n in range(processes)
    ]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w in workers:
        if w.returncode != 0:
            raise RuntimeError(f"a PostgreSQL bench worker failed (exit {w.returncode})")
    latencies = [x for r in results for x in r["latencies"]]
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return _figures(len(latencies), elapsed, latencies)


def _schema_dsn(url: str, schema: str) -> str:
    # asyncpg passes a DSN's unknown query parameters on as server settings.
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def _prepare(url: str, schema: str) -> dict[str, str]:
    import asyncpg  # type: ignore[import-untyped]

    from ublox_sim.store.postgres.schema import migrate
    from ublox_sim.store.postgres.writer import PgWriter

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        settings = {
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "server_version": await conn.fetchval("SHOW server_version"),
        }
    finally:
        await conn.close()
    conn = await asyncpg.connect(_schema_dsn(url, schema))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    writer = PgWriter(_schema_dsn(url, schema))
    await writer.connect()
    task = asyncio.get_running_loop().create_task(writer.run())
    await writer.submit(seed_statements())
    await writer.aclose()
    await task
    return settings


async def _drop(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def bench(size: str, url: str) -> dict[str, Any]:
    units, rounds = SIZES[size]
    schema = f"ublox_bench_{os.getpid()}_{time.monotonic_ns()}"
    report: dict[str, Any] = {
        "store": masked(url),
        "producers": PRODUCERS,
        "units_per_run": units,
        "rounds": rounds,
        "detail": {},
    }
    report["postgres"] = anyio.run(_prepare, url, schema)
    dsn = _schema_dsn(url, schema)
    try:
        report["batch"] = anyio.run(_batch_variants, dsn, size)
        with tempfile.TemporaryDirectory(prefix="ublox-bench-pg-") as tmp:
            folder = Path(tmp)
            for kind in UNITS:
                contenders: dict[str, Callable[[], Mapping[str, float]]] = {
                    f"sqlite_{kind}": partial(run_sqlite, folder, units, kind, "NORMAL"),
                    f"sqlite_full_{kind}": partial(run_sqlite, folder, units, kind, "FULL"),
                }
                for n in PROCESSES:
                    contenders[f"pg_{n}p_{kind}"] = partial(run_pg, dsn, units, kind, n)
                results = run_rounds(contenders, rounds, warmup=size != "tiny")
                for name in contenders:
                    report["detail"][name] = {
                        metric: summarise(results, name, metric).to_dict()
                        for metric in ("units_per_s", "ack_p50_ms", "ack_p99_ms")
                    }
    finally:
        anyio.run(_drop, url, schema)
    return report


def _figures(units: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    return {
        "units": float(units),
        "seconds": elapsed,
        "units_per_s": units / elapsed,
        "ack_p50_ms": percentile(latencies, 0.50),
        "ack_p99_ms": percentile(latencies, 0.99),
    }


def show(report: Mapping[str, Any]) -> str:
    rows = []
    for name, d in report["detail"].items():
        r = d["units_per_s"]
        rows.append(
            [
                name,
                f"{r['median']:,.0f}",
                f"{r['min']:,.0f}–{r['max']:,.0f}",
                f"{d['ack_p50_ms']['median']:.1f} / {d['ack_p99_ms']['median']:.1f}",
            ]
        )
    pg = report["postgres"]
    batch = table(
        [
            [name, f"{int(d['rows_per_batch'])}", f"{d['batch_ms']:.2f}", f"{d['rows_per_s']:,.0f}"]
            for name, d in report["batch"].items()
        ],
        ["one batch, sent as", "rows", "ms (median)", "rows/s"],
    )
    return (
        batch
        + "\n\n"
        + table(rows, ["persistence", "units/s (median)", "min–max", "ack p50/p99 ms"])
        + (
            f"\n{report['producers']} producers per process; PostgreSQL {pg['server_version']}"
            f" at {report['store']}, synchronous_commit={pg['synchronous_commit']},"
            f" fsync={pg['fsync']}"
        )
    )


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _dsn, _units, _kind, _tag = sys.argv[2:6]
    print(json.dumps(anyio.run(_worker, _dsn, int(_units), _kind, _tag)), flush=True)


# -- group commit: how a batch's rows go to the server -----------------------------------

BATCHES = {"tiny": (64, 3), "quick": (512, 10), "full": (512, 30)}  # units per batch, repeats


async def _batch_variants(dsn: str, size: str) -> dict[str, dict[str, float]]:
    """One batch of one-row units committed three ways (commit included, durable):
    ``statements``, one execute per row (the writer before); ``executemany``, one
    pipelined call for the run of identical statements; ``copy``, the rows COPYed into a
    temporary staging table, then one INSERT ... SELECT in their order. Each keeps
    per-unit isolation the same way: a refused row fails the batch, which then runs again
    unit by unit under savepoints (not measured here: refusals are rare)."""
    import asyncpg

    from ublox_sim.store.postgres.dialect import to_postgres

    per, repeats = BATCHES[size]
    sql = to_postgres(TX_SQL)
    staged = (
        "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency,"
        f" pto_id, timestamp) SELECT 'investment', a, b, c, 'USD-OBBBA', NULL, '{AT}'"
        " FROM ublox_stage ORDER BY n"
    )
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TEMP TABLE ublox_stage (n BIGSERIAL, a TEXT, b TEXT, c BIGINT)"
        " ON COMMIT DELETE ROWS"
    )

    async def statements(rows: list[tuple[str, str, int]]) -> None:
        async with conn.transaction():
            for r in rows:
                await conn.execute(sql, *r)

    async def executemany(rows: list[tuple[str, str, int]]) -> None:
        async with conn.transaction():
            await conn.executemany(sql, rows)

    async def copy(rows: list[tuple[str, str, int]]) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table("ublox_stage", records=rows, columns=["a", "b", "c"])
            await conn.execute(staged)

    variants = {"statements": statements, "executemany": executemany, "copy": copy}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for r in range(repeats + 1):  # the first round warms up
            for name, run in variants.items():
                rows = [one(i, "")[0].params for i in range(r * per, (r + 1) * per)]
                started = time.perf_counter()
                await run(rows)  # type: ignore[arg-type]
                if r:
                    timings[name].append(time.perf_counter() - started)
    finally:
        await conn.close()
    return {
        name: {
            "batch_ms": 1000 * sorted(t)[len(t) // 2],
            "rows_per_s": per / sorted(t)[len(t) // 2],
        }
        | {"rows_per_batch": float(per)}
        for name, t in timings.items()
    }
