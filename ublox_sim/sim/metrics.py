"""Per-tick metrics of a scenario run: a tidy table, one row per tick and entity.

The runner samples the run's own state after setup (tick 0) and after every tick
(``Collector.sample``): one row per world (entity = the PTO's id) and one ``global``
row. Rows are persisted with the checkpoint they belong to, as a *segment* file in
the home (``metrics/<first>-<last>.jsonl``, written atomically *before* the store's
checkpoint commits): a run killed at any instant resumes at its last checkpoint,
drops any segment past it, and samples the following ticks again from the same state,
so a resumed run's table equals an uninterrupted one's.

Money columns are exact integer cents (``*_cents``). Columns a scenario's
``metrics:`` section does not choose are left out. ``read_metrics(home)`` gives the
rows; ``metrics_frame(home)`` a pandas DataFrame (the ``analysis`` extra);
``write_table(rows, path)`` a ``.csv`` or ``.parquet`` file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, get_args

import numpy as np

from ..core.errors import InvalidInput
from ..core.money import STORED_MAX_CENTS, USD, to_cents
from ..core.records import PTO, Player
from .scenario import GlobalMetric, WorldMetric

if TYPE_CHECKING:
    import pandas

    from ..engine import Engine
    from ..store.home import Home

WORLD_METRICS: Final = get_args(WorldMetric)
"""Per world: the order parameter, the mean coherence of each cell with its four
neighbours, money raised, PTS sold, the xUSD pool, and this tick's sessions and phase
locks in it."""

GLOBAL_METRICS: Final = get_args(GlobalMetric)
"""Global: players who bought or played this tick, the money held by all players, the
Gini coefficient of their xUSD balances, ledger rows so far, USD-OBBBA refunded so far."""

KEY_COLUMNS: Final = ("tick", "hour", "entity", "status", "funding_goal_cents", "deadline_hour")
"""Always present: the tick (0 = after setup), its simulated hour, the entity (a PTO id
or ``global``), and for worlds their status, funding goal and deadline (hours since the
start), so funding curves can mark them."""

INTEGER_COLUMNS: Final = frozenset(
    {
        "tick",
        "funding_goal_cents",
        "funding_raised_cents",
        "pts_sold",
        "xusd_pool_cents",
        "sessions",
        "phase_locks",
        "players_active",
        "usd_obbba_total_cents",
        "xusd_total_cents",
        "transactions",
        "refunded_cents",
    }
)
"""Columns of whole numbers (money in exact cents, counts): 64-bit integers in a pandas
DataFrame (``Int64``, empty where the entity has none, as money never is a float) and
in Parquet (``int64``)."""

PER_TICK: Final = ("sessions", "phase_locks", "players_active")
"""Metrics counted in one tick, not running totals: a sweep's ``final.csv`` names their
last tick's value ``last_tick_<name>`` (near 0 at the end of a long run)."""

GLOBAL: Final = "global"
SEGMENTS: Final = "metrics"

Row = dict[str, Any]


def columns(world: Sequence[str], global_: Sequence[str]) -> tuple[str, ...]:
    return (*KEY_COLUMNS, *world, *global_)


def gini(values: Sequence[int]) -> float:
    """The Gini coefficient of non-negative amounts: 0 all equal, → 1 one holds all."""
    if not values:
        return 0.0
    x = np.sort(np.asarray(values, dtype=np.float64))
    total = float(x.sum())
    if total <= 0:
        return 0.0
    n = len(x)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float((2.0 * float((ranks * x).sum())) / (n * total) - (n + 1) / n)


def mean_local_coherence(theta: np.ndarray[Any, Any]) -> float:
    """The mean over cells of ``(1 + cos(θ_nb − θ)) / 2`` with the four neighbours (the
    brightness of the world image, averaged): each neighbour pair is counted twice,
    so two rolls suffice."""
    t = np.asarray(theta, dtype=np.float64)
    pairs = np.cos(t - np.roll(t, 1, 0)).mean() + np.cos(t - np.roll(t, 1, 1)).mean()
    return float(0.5 + 0.25 * pairs)


class Tally:
    """What the runner did this tick that state alone does not show: sessions and
    phase locks per world, and who bought or played. Cleared at each sample."""

    def __init__(self) -> None:
        self.sessions: Counter[str] = Counter()
        self.locks: Counter[str] = Counter()
        self.active: set[str] = set()

    def played(self, pto_id: str, player_id: str, locks: int) -> None:
        self.sessions[pto_id] += 1
        self.locks[pto_id] += locks
        self.active.add(player_id)

    def acted(self, player_id: str) -> None:
        self.active.add(player_id)

    def clear(self) -> None:
        self.sessions.clear()
        self.locks.clear()
        self.active.clear()


class Collector:
    """Samples the chosen metrics from an engine and persists them with checkpoints."""

    def __init__(
        self,
        home: Home,
        tally: Tally,
        *,
        start: datetime,
        tick_hours: float,
        world: Sequence[str] = WORLD_METRICS,
        global_: Sequence[str] = GLOBAL_METRICS,
    ) -> None:
        self.dir = home.root / SEGMENTS
        self.start = start
        self.tick_hours = tick_hours
        self.world = tuple(world)
        self.global_ = tuple(global_)
        self.columns = columns(self.world, self.global_)
        self.tally = tally  # the runner's, cleared by it at the start of each tick
        self.pending: list[Row] = []  # sampled since the last checkpoint
        self.first = 0  # the first tick of the pending segment

    def _hours(self, iso: str | None) -> float | None:
        if not iso:
            return None
        return (datetime.fromisoformat(iso) - self.start).total_seconds() / 3600.0

    async def sample(self, engine: Engine, tick: int) -> None:
        """Sample the state after ``tick`` (0 = after setup); held until ``persist``."""
        store = engine.store
        ptos: list[PTO] = await store.load_all(PTO)
        hour = tick * self.tick_hours
        rows: list[Row] = []
        for p in ptos:
            row: Row = {
                "tick": tick,
                "hour": hour,
                "entity": p.pto_id,
                "status": p.status,
                "funding_goal_cents": p.funding_goal,
                "deadline_hour": self._hours(p.funding_deadline),
            }
            values: Row = {
                "aci": p.aci_coherence_score,
                "funding_raised_cents": p.funding_raised,
                "pts_sold": p.pts_sold,
                "xusd_pool_cents": p.xUSD_pool,
                "sessions": self.tally.sessions[p.pto_id],
                "phase_locks": self.tally.locks[p.pto_id],
            }
            if "local_coherence" in self.world:
                values["local_coherence"] = (
                    mean_local_coherence((await engine.world(p.pto_id))["theta"])
                    if p.world_cdt_id is not None
                    else None
                )
            rows.append(row | {name: values[name] for name in self.world})
        row = {name: None for name in KEY_COLUMNS} | {"tick": tick, "hour": hour, "entity": GLOBAL}
        values = {"players_active": len(self.tally.active)}
        if {"usd_obbba_total_cents", "xusd_total_cents", "xusd_gini"} & set(self.global_):
            players: list[Player] = await store.load_all(Player)
            values["usd_obbba_total_cents"] = sum(p.usd_obbba_balance for p in players)
            xusd = [p.xUSD_balance for p in players]
            values["xusd_total_cents"] = sum(xusd)
            values["xusd_gini"] = gini(xusd) if "xusd_gini" in self.global_ else None
        if {"transactions", "refunded_cents"} & set(self.global_):
            stats = (await store.stats())["transactions"]
            values["transactions"] = stats["count"]
            # Stats give major units, exact below 2**53 cents: back to cents.
            refunded = stats["volume"].get(f"refund/{USD}", 0)  # a total: past the money limit
            values["refunded_cents"] = to_cents(refunded, limit=STORED_MAX_CENTS)
        rows.append(row | {name: values[name] for name in self.global_})
        self.pending.extend({c: r.get(c) for c in self.columns} for r in rows)

    def persist(self, tick: int) -> None:
        """Write the rows sampled since the last checkpoint as one segment, atomically,
        before the store commits checkpoint ``tick``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self.first:08d}-{tick:08d}.jsonl"
        body = "".join(json.dumps(row, allow_nan=False) + "\n" for row in self.pending)
        header = json.dumps({"columns": list(self.columns)}) + "\n"
        _write_atomically(path, header + body)
        self.pending = []
        self.first = tick + 1

    def resume_at(self, tick: int) -> None:
        """Continue after checkpoint ``tick``: drop segments past it (written for a
        checkpoint that never committed) and check those kept cover ticks 0 … ``tick``
        with these columns."""
        spans = _segments(self.dir)
        for (first, _last), path in spans.items():
            if first > tick:
                path.unlink()
        kept = {span: path for span, path in spans.items() if span[0] <= tick}
        _check_cover(self.dir, kept, tick)
        for path in kept.values():
            found = _header(path)
            if found != list(self.columns):
                raise InvalidInput(
                    f"{path}: metrics were collected with columns {found}, not the "
                    f"scenario's {list(self.columns)}: resume with the same metrics section"
                )
        self.first = tick + 1


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segments(folder: Path) -> dict[tuple[int, int], Path]:
    spans: dict[tuple[int, int], Path] = {}
    if not folder.is_dir():
        return spans
    for path in folder.glob("*.jsonl"):
        first, _, last = path.stem.partition("-")
        if first.isdigit() and last.isdigit():
            spans[(int(first), int(last))] = path
    return dict(sorted(spans.items()))


def _check_cover(folder: Path, spans: dict[tuple[int, int], Path], tick: int) -> None:
    expected = 0
    for first, last in spans:
        if first != expected:
            break
        expected = last + 1
    if expected != tick + 1:
        raise InvalidInput(
            f"{folder}: metrics cover ticks up to {expected - 1}, not the checkpoint's "
            f"{tick}: the run was not collecting metrics before (start it again with them)"
        )


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        columns: list[str] = json.loads(f.readline())["columns"]
    return columns


def has_metrics(home: Home) -> bool:
    return bool(_segments(home.root / SEGMENTS))


def read_metrics(home: Home) -> list[Row]:
    """Every row a run in ``home`` persisted, in tick order (worlds by id, then global)."""
    rows: list[Row] = []
    for path in _segments(home.root / SEGMENTS).values():
        with open(path, encoding="utf-8") as f:
            f.readline()
            rows.extend(json.loads(line) for line in f)
    if not rows:
        raise InvalidInput(f"{home.root} holds no metrics: run with --metrics or in a sweep")
    return rows


def metrics_frame(home: Home) -> pandas.DataFrame:
    """The rows of ``read_metrics`` as a pandas DataFrame (needs the ``analysis`` extra)."""
    return frame(read_metrics(home))


def frame(rows: Iterable[Row]) -> pandas.DataFrame:
    """``rows`` as a DataFrame; ``INTEGER_COLUMNS`` (money in cents, counts) as ``Int64``,
    not the float64 pandas would make of whole numbers with gaps."""
    pd = _require("pandas")
    table: pandas.DataFrame = pd.DataFrame.from_records(list(rows))
    whole = {name: "Int64" for name in table.columns if name in INTEGER_COLUMNS}
    return table.astype(whole) if whole else table


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InvalidInput(
            f"{module} is not installed: pip install 'ublox-sim[analysis]' for tables and plots"
        ) from exc


TABLE_SUFFIXES: Final = (".csv", ".parquet")


def check_table_path(path: Path) -> None:
    """Refuse a path ``write_table`` could not write (another suffix, Parquet without
    pyarrow) before anything runs."""
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise InvalidInput(
            f"{path}: a metrics table is .csv or .parquet (by its suffix), not {path.suffix!r}"
        )
    if path.suffix.lower() == ".parquet":
        _require("pyarrow.parquet")
        _require("pandas")


def write_table(rows: Sequence[Row], path: Path) -> None:
    """``rows`` (dicts with the same keys) as CSV or Parquet by ``path``'s suffix.
    Parquet keeps ``INTEGER_COLUMNS`` as ``int64`` (with nulls), and pandas reads them
    back as ``Int64`` (``pd.read_parquet``), not float64."""
    check_table_path(path)
    if path.suffix.lower() == ".csv":
        path.write_text(to_csv(rows), encoding="utf-8")
        return
    pa = _require("pyarrow")
    pq = _require("pyarrow.parquet")
    table = pa.Table.from_pandas(frame(rows), preserve_index=False) if rows else pa.table({})
    pq.write_table(table, path)


def to_csv(rows: Sequence[Row]) -> str:
    """CSV with a header; floats as ``repr`` (exact round trip), None as empty."""
    out = io.StringIO()
    if not rows:
        return ""
    writer = csv.writer(out, lineterminator="\n")
    names = list(rows[0])
    writer.writerow(names)
    for row in rows:
        writer.writerow(["" if (v := row.get(n)) is None else _cell(v) for n in names])
    return out.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)
