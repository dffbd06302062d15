"""Persistence throughput and ack latency: the actor against raw SQLite, in the same run.

Every contender writes one-row units: a ``transactions`` row of the real schema
(same tables, same indexes, same page size).

- ``raw_100`` and ``raw_1000``: stdlib sqlite3, WAL, synchronous=NORMAL, ``executemany``
  of pre-built rows, 100 or 1,000 per transaction. With 100 producers each awaiting its
  acknowledgement, no batch can hold more than 100 rows, so ``raw_100`` is the
  yardstick of the actor; ``raw_1000`` is the disk's pace for this schema. Each
  transaction is timed as an ack is (``raw_100_txn_p50_ms``/``_p99_ms``): what the
  machine and SQLite's own checkpoints do to a plain loop's tail, in the same rounds;
- ``actor``: 100 producers, each submitting a one-row unit through the real
  ``PersistenceActor`` and awaiting its durable acknowledgement before the next
  (p50/p99/max of those acknowledgements are reported). Its units are built before the
  clock starts, as ``raw_*`` builds its rows: both time the writing, not the making of
  the rows;
- ``submit_many``: 100 producers, each submitting 10 one-row units at once with
  ``submit_many`` (batches of up to 1,000 rows): held to ``raw_1000``;
- ``naive`` (context only, not a target): stdlib sqlite3, rollback journal,
  synchronous=FULL, one commit per row, as the seed's auto-save did; it measures the
  disk's fsync, not the code;
- variants: ``actor_full`` (synchronous=FULL), ``actor_p10``/``actor_p1000`` (10 and
  1,000 producers) and ``actor_mixed`` (units shaped like a purchase: five statements of
  four SQL texts; its figures count units, not rows).

Checkpoints (``ckpt``) run in the background on their own connection (PASSIVE), never
on an acknowledgement's path; the full size crosses ``WAL_LIMIT_BYTES`` a few times.
Key names changed with issue 15: ``ceiling_*``/``ratio_vs_ceiling`` (one 1,000-row
ceiling) became ``raw_100_*``/``raw_1000_*`` and ``actor_vs_raw_100``/``_1000``; the
ratio to the naive approach is ``actor_vs_naive_context``.
"""

from __future__ import annotations

import gc
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from ublox_sim.store.sqlite.writer import PersistenceActor, Statement, prepare_database

from .harness import pairwise, percentile, run_rounds, summarise, table

TX_SQL = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, pto_id, timestamp)"
    " VALUES ('investment', ?, ?, ?, 'USD-OBBBA', NULL, '2025-12-12 16:56:32+00:00')"
)

SIZES = {
    # rows per actor/ceiling run, rows for the (slow) naive run, rounds
    "tiny": (600, 30, 3),
    "quick": (10_000, 300, 3),
    "full": (50_000, 2_000, 5),
}


def row(i: int) -> tuple[str, str, int]:
    return (f"player{i % 997}", f"pto{i % 13}", 100 + i % 1000)


MIXED_SQL = (
    "UPDATE players SET usd_obbba_balance = usd_obbba_balance - ? WHERE player_id = ?",
    "UPDATE ptos SET pts_sold = pts_sold + 1, funding_raised = funding_raised + ? WHERE pto_id = ?",
    "INSERT INTO pts_tokens (token_id, game_id, holder, hours_committed, purchase_price,"
    " purchase_time) VALUES (?, ?, ?, 1.0, ?, '2025-12-12 16:56:32+00:00')",
    "INSERT INTO event_log (kind, at, payload) VALUES ('pts_bought',"
    " '2025-12-12 16:56:32+00:00', ?)",
    TX_SQL,
)


def _seed_mixed(path: Path) -> None:
    """997 rich players and 13 PTOs that never sell out, for ``mixed_unit``."""
    conn = sqlite3.connect(path, isolation_level=None)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO players (player_id, usd_obbba_balance, created_at) VALUES (?, ?, '')",
            [(f"player{i}", 10**15) for i in range(997)],
        )
        conn.executemany(
            "INSERT INTO ptos (pto_id, game_name, creator_id, atu_required, pts_offered,"
            " price_per_pts, funding_goal, launch_time) VALUES (?, '', 'player0', 1, ?, 1, ?, '')",
            [(f"pto{i}", 10**12, 10**12) for i in range(13)],
        )
        conn.execute("COMMIT")
    conn.close()


def mixed_unit(i: int) -> list[Statement]:
    player, pto, amount = row(i)
    update_player, update_pto, token, event, ledger = MIXED_SQL
    return [
        Statement(update_player, (amount, player)),
        Statement(update_pto, (amount, pto)),
        Statement(token, (f"t{i}", pto, player, amount)),
        Statement(event, (f'{{"i": {i}}}',), want_rowid=True, on_commit=lambda ids: None),
        Statement(ledger, (player, pto, amount)),
    ]


def _fresh(folder: Path, name: str) -> Path:
    path = folder / f"{name}-{time.monotonic_ns()}.db"
    prepare_database(path)
    return path


def _settled() -> None:
    """Collect once the inputs are built, before the clock starts (``raw_*`` and the
    actor alike). Building 50,000 rows or units makes that many objects survive young
    collections, and the collector then owes full passes over the heap (one or two of
    10-40 ms a run, measured with ``gc.callbacks``), which otherwise land inside the
    timed run, on whichever contender allocates next. Nothing process-wide changes."""
    gc.collect()


def run_naive(folder: Path, rows: int) -> dict[str, float]:
    path = _fresh(folder, "naive")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    conn.execute("PRAGMA synchronous=FULL")
    latencies = []
    start = time.perf_counter()
    for i in range(rows):
        sent = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute(TX_SQL, row(i))
        conn.execute("COMMIT")
        latencies.append((time.perf_counter() - sent) * 1000)
    elapsed = time.perf_counter() - start
    conn.close()
    return _figures(rows, elapsed, latencies)


def run_raw(folder: Path, rows: int, per_tx: int) -> dict[str, float]:
    path = _fresh(folder, f"raw{per_tx}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    prebuilt = [row(i) for i in range(rows)]
    _settled()
    latencies = []
    start = time.perf_counter()
    for offset in range(0, rows, per_tx):
        began = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(TX_SQL, prebuilt[offset : offset + per_tx])
        conn.execute("COMMIT")
        latencies.append((time.perf_counter() - began) * 1000)
    elapsed = time.perf_counter() - start
    conn.close()
    # Each transaction's own time, measured as an ack is: what the machine (a scheduler
    # with more runnable threads than cores, the disk, SQLite's own checkpoints every
    # 1,000 pages) does to a plain loop's tail, next to the actor's ack p99.
    return _figures(rows, elapsed, latencies, "txn")


def run_actor(
    folder: Path,
    rows: int,
    producers: int = 100,
    synchronous: str = "NORMAL",
    unit: Callable[[int], list[Statement]] | None = None,
    many: int = 1,
) -> dict[str, float]:
    """``producers`` tasks, each awaiting its acknowledgement before its next request;
    with ``many`` > 1 a request is ``submit_many`` of that many one-row units."""
    path = _fresh(folder, f"actor{producers}{synchronous}")
    if unit is None:
        unit = one_row
    else:
        _seed_mixed(path)
    per_producer = max(1, rows // producers)
    # Built before the clock starts, as raw_* builds its rows: both time the writing.
    units = [unit(i) for i in range(per_producer * producers)]
    _settled()
    latencies: list[float] = []

    checkpoints = inline = 0

    async def main() -> float:
        nonlocal checkpoints, inline
        async with PersistenceActor.open(path, synchronous=synchronous) as actor:

            async def producer(p: int) -> None:
                for k in range(0, per_producer, many):
                    first = p * per_producer + k
                    sent = time.perf_counter()
                    if many == 1:
                        await actor.submit(units[first])
                    else:
                        for outcome in await actor.submit_many(
                            units[first : first + min(many, per_producer - k)]
                        ):
                            if isinstance(outcome, BaseException):
                                raise outcome
                    latencies.append((time.perf_counter() - sent) * 1000)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for p in range(producers):
                    tg.start_soon(producer, p)
            elapsed = time.perf_counter() - start
            await actor.checkpoints_settled()
            checkpoints, inline = actor.checkpoints, actor.checkpoints_inline
            return elapsed

    elapsed = anyio.run(main, backend="asyncio")
    return _figures(per_producer * producers, elapsed, latencies) | {
        "checkpoints": float(checkpoints),
        "checkpoints_inline": float(inline),
    }


def one_row(i: int) -> list[Statement]:
    return [Statement(TX_SQL, row(i))]


def _figures(
    rows: int, elapsed: float, latencies: list[float], what: str = "ack"
) -> dict[str, float]:
    figures = {"rows": float(rows), "seconds": elapsed, "rows_per_s": rows / elapsed}
    if latencies:
        figures |= {
            f"{what}_p50_ms": percentile(latencies, 0.50),
            f"{what}_p99_ms": percentile(latencies, 0.99),
            f"{what}_max_ms": max(latencies),
        }
    return figures


def bench(size: str = "full", producers: int = 100) -> dict[str, Any]:
    rows, naive_rows, rounds = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="ublox-bench-") as tmp:
        folder = Path(tmp)
        contenders: Mapping[str, Callable[[], Mapping[str, float]]] = {
            "raw_100": lambda: run_raw(folder, rows, 100),
            "raw_1000": lambda: run_raw(folder, rows, 1000),
            "actor": lambda: run_actor(folder, rows, producers),
            "submit_many": lambda: run_actor(folder, rows, producers, many=10),
        }
        results = run_rounds(contenders, rounds)
        context: Mapping[str, Callable[[], Mapping[str, float]]] = {
            "naive": lambda: run_naive(folder, naive_rows),
            "actor": lambda: run_actor(folder, rows, producers),
        }
        naive = run_rounds(context, max(1, rounds - 2), warmup=False)
        variants: Mapping[str, Callable[[], Mapping[str, float]]] = {
            "actor_full": lambda: run_actor(folder, rows, producers, "FULL"),
            "actor_p10": lambda: run_actor(folder, rows, 10),
            "actor_p1000": lambda: run_actor(folder, rows, 1000),
            "actor_mixed": lambda: run_actor(folder, rows // 5, producers, unit=mixed_unit),
        }
        extra = run_rounds(variants, max(1, rounds - 2), warmup=False)
    ratios = {
        "actor_vs_raw_100": pairwise(results, "actor", "raw_100", "rows_per_s"),
        "actor_vs_raw_1000": pairwise(results, "actor", "raw_1000", "rows_per_s"),
        "submit_many_vs_raw_1000": pairwise(results, "submit_many", "raw_1000", "rows_per_s"),
        "actor_vs_naive_context": pairwise(naive, "actor", "naive", "rows_per_s"),
    }
    report: dict[str, Any] = {
        "rows_per_contender": rows,
        "naive_rows": naive_rows,
        "rounds": rounds,
        "producers": producers,
        "submit_many_units": 10,
        "actor_rows_per_s": summarise(results, "actor", "rows_per_s").median,
        "raw_100_rows_per_s": summarise(results, "raw_100", "rows_per_s").median,
        "raw_1000_rows_per_s": summarise(results, "raw_1000", "rows_per_s").median,
        "submit_many_rows_per_s": summarise(results, "submit_many", "rows_per_s").median,
        "naive_rows_per_s": summarise(naive, "naive", "rows_per_s").median,
        **{name: ratio.median for name, ratio in ratios.items()},
        "ack_p50_ms": summarise(results, "actor", "ack_p50_ms").median,
        "ack_p99_ms": summarise(results, "actor", "ack_p99_ms").median,
        "ack_max_ms": summarise(results, "actor", "ack_max_ms").median,
        # The raw loop's own transactions at 100 rows, timed the same way in the same
        # rounds: the machine's share of a tail (an ack also waits for the batch ahead).
        "raw_100_txn_p50_ms": summarise(results, "raw_100", "txn_p50_ms").median,
        "raw_100_txn_p99_ms": summarise(results, "raw_100", "txn_p99_ms").median,
        "ranges": {name: ratio.to_dict() for name, ratio in ratios.items()},
        "detail": {},
    }
    acks = (
        *(f"{what}_{q}_ms" for what in ("ack", "txn") for q in ("p50", "p99", "max")),
        "checkpoints",
        "checkpoints_inline",
    )
    for source, names in ((results, contenders), (naive, ("naive",)), (extra, variants)):
        for name in names:
            report["detail"][name] = {
                metric: summarise(source, name, metric).to_dict()
                for metric in ("rows_per_s", *acks)
                if metric in source[0][name]
            }
    return report


def show(report: Mapping[str, Any]) -> str:
    rows = []
    for name, d in report["detail"].items():
        r = d["rows_per_s"]
        what = "ack" if "ack_p50_ms" in d else "txn"
        lat = (
            f"{d[what + '_p50_ms']['median']:.2f} / {d[what + '_p99_ms']['median']:.2f} / "
            f"{d[what + '_max_ms']['median']:.1f}" + (" (txn)" if what == "txn" else "")
            if what + "_p50_ms" in d
            else "-"
        )
        ckpt = (
            f"{d['checkpoints']['median']:.0f} / {d['checkpoints_inline']['median']:.0f}"
            if "checkpoints" in d
            else "-"
        )
        label = {"actor_mixed": "actor_mixed (units)", "naive": "naive (context)"}.get(name, name)
        rows.append([label, f"{r['median']:,.0f}", f"{r['min']:,.0f}–{r['max']:,.0f}", lat, ckpt])
    out = table(
        rows, ["persistence", "rows/s (median)", "min–max", "ack p50/p99/max ms", "ckpt bg/inline"]
    )

    def ratio(key: str) -> str:
        r = report["ranges"][key]
        return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"

    out += (
        f"\nactor/raw@100 {ratio('actor_vs_raw_100')}, actor/raw@1000 "
        f"{ratio('actor_vs_raw_1000')}, submit_many(10)/raw@1000 "
        f"{ratio('submit_many_vs_raw_1000')}; {report['producers']} producers, pairwise per "
        f"round; actor/naive {report['ranges']['actor_vs_naive_context']['median']:.0f}× "
        "(context: the naive approach measures fsync)"
    )
    return out
