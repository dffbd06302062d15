"""Persistence throughput and ack latency: the actor against raw SQLite, in the same run.

Every contender writes one-row units: a ``transactions`` row of the real schema
(same tables, same indexes, same page size).

- ``naive``: stdlib sqlite3, default rollback journal, synchronous=FULL, one commit
  per row, as the seed's auto-save does;
- ``ceiling``: stdlib sqlite3, WAL, synchronous=NORMAL, ``executemany`` of
  pre-built rows, 1,000 per transaction: the limit for this schema on this disk;
- ``actor``: N producers (default 100), each submitting a unit through the real
  ``PersistenceActor`` and awaiting its durable acknowledgement before the next;
- ``actor_full``: the same with synchronous=FULL (durable against power loss);
- ``actor_p10``, ``actor_p1000``: 10 and 1,000 producers;
- ``actor_mixed``: 100 producers whose units look like a purchase (five statements of
  four SQL texts: two UPDATEs, a token, an event whose rowid is wanted, a ledger row).
  Its figures count units, not rows. Runs of one SQL text cannot form across such
  units, so a batch is one call per statement on the connection's queue: this is the
  writer's cost per statement, where the one-row contenders show its cost per batch.

Each actor row counts the WAL checkpoints the writer ran (``ckpt``): they happen
after acknowledgements, each time the writer has appended ``WAL_LIMIT_BYTES``, and
the units that arrive during one wait for it. The full size crosses the limit a few
times; the quick one does not.
"""

from __future__ import annotations

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


def run_ceiling(folder: Path, rows: int, per_tx: int = 1000) -> dict[str, float]:
    path = _fresh(folder, "ceiling")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    prebuilt = [row(i) for i in range(rows)]
    start = time.perf_counter()
    for offset in range(0, rows, per_tx):
        conn.execute("BEGIN")
        conn.executemany(TX_SQL, prebuilt[offset : offset + per_tx])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return _figures(rows, elapsed, [])


def run_actor(
    folder: Path,
    rows: int,
    producers: int = 100,
    synchronous: str = "NORMAL",
    unit: Callable[[int], list[Statement]] | None = None,
) -> dict[str, float]:
    path = _fresh(folder, f"actor{producers}{synchronous}")
    if unit is None:
        unit = one_row
    else:
        _seed_mixed(path)
    per_producer = max(1, rows // producers)
    latencies: list[float] = []

    checkpoints = 0

    async def main() -> float:
        nonlocal checkpoints
        async with PersistenceActor.open(path, synchronous=synchronous) as actor:

            async def producer(p: int) -> None:
                for k in range(per_producer):
                    work = unit(p * per_producer + k)
                    sent = time.perf_counter()
                    await actor.submit(work)
                    latencies.append((time.perf_counter() - sent) * 1000)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for p in range(producers):
                    tg.start_soon(producer, p)
            elapsed = time.perf_counter() - start
            checkpoints = actor.checkpoints
            return elapsed

    elapsed = anyio.run(main, backend="asyncio")
    return _figures(per_producer * producers, elapsed, latencies) | {
        "checkpoints": float(checkpoints)
    }


def one_row(i: int) -> list[Statement]:
    return [Statement(TX_SQL, row(i))]


def _figures(rows: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    figures = {"rows": float(rows), "seconds": elapsed, "rows_per_s": rows / elapsed}
    if latencies:
        figures |= {
            "ack_p50_ms": percentile(latencies, 0.50),
            "ack_p99_ms": percentile(latencies, 0.99),
            "ack_max_ms": max(latencies),
        }
    return figures


def bench(size: str = "full", producers: int = 100) -> dict[str, Any]:
    rows, naive_rows, rounds = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="ublox-bench-") as tmp:
        folder = Path(tmp)
        contenders: Mapping[str, Callable[[], Mapping[str, float]]] = {
            "ceiling": lambda: run_ceiling(folder, rows),
            "actor": lambda: run_actor(folder, rows, producers),
            "naive": lambda: run_naive(folder, naive_rows),
        }
        results = run_rounds(contenders, rounds)
        variants: Mapping[str, Callable[[], Mapping[str, float]]] = {
            "actor_full": lambda: run_actor(folder, rows, producers, "FULL"),
            "actor_p10": lambda: run_actor(folder, rows, 10),
            "actor_p1000": lambda: run_actor(folder, rows, 1000),
            "actor_mixed": lambda: run_actor(folder, rows // 5, producers, unit=mixed_unit),
        }
        extra = run_rounds(variants, max(1, rounds - 2), warmup=False)
    report: dict[str, Any] = {
        "rows_per_contender": rows,
        "naive_rows": naive_rows,
        "rounds": rounds,
        "producers": producers,
        "actor_rows_per_s": summarise(results, "actor", "rows_per_s").median,
        "ceiling_rows_per_s": summarise(results, "ceiling", "rows_per_s").median,
        "naive_rows_per_s": summarise(results, "naive", "rows_per_s").median,
        "ratio_vs_ceiling": pairwise(results, "actor", "ceiling", "rows_per_s").median,
        "ratio_vs_naive": pairwise(results, "actor", "naive", "rows_per_s").median,
        "ack_p50_ms": summarise(results, "actor", "ack_p50_ms").median,
        "ack_p99_ms": summarise(results, "actor", "ack_p99_ms").median,
        "ack_max_ms": summarise(results, "actor", "ack_max_ms").median,
        "detail": {},
    }
    for name in ("naive", "ceiling", "actor"):
        report["detail"][name] = {
            "rows_per_s": summarise(results, name, "rows_per_s").to_dict(),
            **(
                {
                    q: summarise(results, name, q).to_dict()
                    for q in ("ack_p50_ms", "ack_p99_ms", "ack_max_ms", "checkpoints")
                    if q in results[0][name]
                }
                if "ack_p50_ms" in results[0][name]
                else {}
            ),
        }
    for name in variants:
        report["detail"][name] = {
            metric: summarise(extra, name, metric).to_dict()
            for metric in ("rows_per_s", "ack_p50_ms", "ack_p99_ms", "ack_max_ms", "checkpoints")
        }
    report["ratio_vs_ceiling_range"] = pairwise(results, "actor", "ceiling", "rows_per_s").to_dict()
    report["ratio_vs_naive_range"] = pairwise(results, "actor", "naive", "rows_per_s").to_dict()
    return report


def show(report: Mapping[str, Any]) -> str:
    rows = []
    for name, d in report["detail"].items():
        r = d["rows_per_s"]
        lat = (
            f"{d['ack_p50_ms']['median']:.2f} / {d['ack_p99_ms']['median']:.2f} / "
            f"{d['ack_max_ms']['median']:.1f}"
            if "ack_p50_ms" in d
            else "-"
        )
        ckpt = f"{d['checkpoints']['median']:.0f}" if "checkpoints" in d else "-"
        label = f"{name} (units)" if name == "actor_mixed" else name
        rows.append([label, f"{r['median']:,.0f}", f"{r['min']:,.0f}–{r['max']:,.0f}", lat, ckpt])
    out = table(rows, ["persistence", "rows/s (median)", "min–max", "ack p50/p99/max ms", "ckpt"])
    vc = report["ratio_vs_ceiling_range"]
    vn = report["ratio_vs_naive_range"]
    out += (
        f"\nactor/ceiling {vc['median']:.2f}× ({vc['min']:.2f}–{vc['max']:.2f}), "
        f"actor/naive {vn['median']:.0f}× ({vn['min']:.0f}–{vn['max']:.0f}), "
        f"{report['producers']} producers, pairwise per round"
    )
    return out
