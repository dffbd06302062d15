"""Per-tick metrics (issue 16): sampled from the run's own state, persisted with each
checkpoint so a run killed at any point resumes to the same table, never changing what a
run does, written as CSV or Parquet, and the core working without pandas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import numpy as np
import pytest

from ublox_sim.core.errors import InvalidInput
from ublox_sim.server.heatmap import local_coherence
from ublox_sim.sim import metrics as M
from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import ScenarioError, load_scenario, parse_scenario
from ublox_sim.store.home import Home

ROOT = Path(__file__).resolve().parents[1]
FESTIVAL = str(ROOT / "scenarios" / "festival.yaml")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("UBLOX_HOME", None)

# The festival cut small, with PTOs that fund in hours (sessions, phase locks) and some
# that do not by their deadline (refunds): every metric moves.
SMALL = (
    "clock.ticks=12",
    "checkpoint_every=4",
    "cohorts.0.count=80",
    "pto_cohorts.0.count=4",
    "world.size=16",
    "pto_cohorts.0.price_per_pts=5",
    "pto_cohorts.0.pts_offered={dist: uniform, low: 100, high: 1500}",
    "behaviours.investors.0.probability=0.2",
    "pto_cohorts.0.launch_at=0",
    "pto_cohorts.0.funding_deadline_hours=6",
)
SET = tuple(arg for item in SMALL for arg in ("--set", item))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted run with metrics: its home and its CSV table."""
    base = tmp_path_factory.mktemp("reference")
    table = base / "metrics.csv"
    result = cli("run", FESTIVAL, "--home", str(base / "home"), *SET, "--metrics", str(table))
    assert result.returncode == 0, result.stderr
    return base / "home", table.read_text(encoding="utf-8")


def test_the_table_has_a_row_per_tick_and_entity_and_every_metric_moves(
    reference: tuple[Path, str],
) -> None:
    home, _ = reference
    rows = M.read_metrics(Home(home))
    ticks = sorted({r["tick"] for r in rows})
    assert ticks == list(range(13))  # after setup, then after each of the 12 ticks
    for tick in ticks:
        entities = [r["entity"] for r in rows if r["tick"] == tick]
        assert entities == [*sorted(entities[:-1]), "global"]
    assert set(rows[0]) == set(M.columns(M.WORLD_METRICS, M.GLOBAL_METRICS))
    worlds = [r for r in rows if r["entity"] != M.GLOBAL]
    globals_ = [r for r in rows if r["entity"] == M.GLOBAL]
    for name in ("aci", "local_coherence", "funding_raised_cents", "sessions", "phase_locks"):
        assert max(r[name] or 0 for r in worlds) > 0, name
    for name in ("players_active", "xusd_total_cents", "xusd_gini", "refunded_cents"):
        assert max(r[name] for r in globals_) > 0, name
    assert {r["status"] for r in worlds} >= {"failed", "completed"}


def test_per_tick_counts_add_up_to_the_stores_totals(reference: tuple[Path, str]) -> None:
    home, _ = reference
    rows = M.read_metrics(Home(home))
    export = json.loads((home / "export.json").read_text(encoding="utf-8"))
    sessions = export["play_sessions"]
    assert sum(r["sessions"] or 0 for r in rows) == len(sessions)
    last = rows[-1]
    assert last["entity"] == M.GLOBAL
    assert last["transactions"] == len(export["transactions"])
    players = export["players"]
    assert last["xusd_total_cents"] == round(100 * sum(p["xUSD_balance"] for p in players))
    assert last["usd_obbba_total_cents"] == round(
        100 * sum(p["usd_obbba_balance"] for p in players)
    )
    by_world = {p["pto_id"]: p for p in export["ptos"]}
    for row in rows[-5:-1]:
        assert row["pts_sold"] == by_world[row["entity"]]["pts_sold"]
        assert row["aci"] == by_world[row["entity"]]["aci_coherence_score"]


def test_collecting_metrics_does_not_change_the_run(
    reference: tuple[Path, str], tmp_path: Path
) -> None:
    home, _ = reference
    result = cli("run", FESTIVAL, "--home", str(tmp_path / "plain"), *SET)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plain" / "export.json").read_bytes() == (home / "export.json").read_bytes()
    assert not (tmp_path / "plain" / M.SEGMENTS).exists()


# A run killed at a chosen instant by a real SIGKILL of its own process: right after the
# metrics of checkpoint 8 are written but before the store commits that checkpoint (the
# segment must be dropped on resume), and in the middle of the ticks after checkpoint 4
# (the sampled rows are lost with the process and sampled again).
KILLER = """
import os, signal, sys
from ublox_sim.sim import metrics
from ublox_sim.cli import main

where, at = sys.argv[1], int(sys.argv[2])
persist, sample = metrics.Collector.persist, metrics.Collector.sample

def killing_persist(self, tick):
    persist(self, tick)
    if where == "after-segment" and tick == at:
        os.kill(os.getpid(), signal.SIGKILL)

async def killing_sample(self, engine, tick):
    await sample(self, engine, tick)
    if where == "mid-ticks" and tick == at:
        os.kill(os.getpid(), signal.SIGKILL)

metrics.Collector.persist = killing_persist
metrics.Collector.sample = killing_sample
main(sys.argv[3:])
"""


@pytest.mark.parametrize(
    ("where", "at", "checkpoint"), [("after-segment", 8, 4), ("mid-ticks", 6, 4)]
)
def test_metrics_of_a_killed_and_resumed_run_equal_an_uninterrupted_runs(
    reference: tuple[Path, str], tmp_path: Path, where: str, at: int, checkpoint: int
) -> None:
    home = tmp_path / "home"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, where, str(at), "run", FESTIVAL, "--home", str(home), *SET,
         "--metrics", str(tmp_path / "never.csv")],
        env=ENV, capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.csv").exists()
    segments = sorted(p.name for p in (home / M.SEGMENTS).glob("*.jsonl"))
    if where == "after-segment":  # written for a checkpoint that never committed
        assert segments[-1] == f"{checkpoint + 1:08d}-{at:08d}.jsonl"

    table = tmp_path / "resumed.csv"
    resumed = cli("run", FESTIVAL, "--home", str(home), *SET, "--resume", "--metrics", str(table))
    assert resumed.returncode == 0, resumed.stderr
    _, expected = reference
    assert table.read_text(encoding="utf-8") == expected
    assert (home / "export.json").read_bytes() == (reference[0] / "export.json").read_bytes()


def test_a_resume_without_metrics_goes_on_collecting_them(
    reference: tuple[Path, str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    loaded = load_scenario(FESTIVAL, overrides=SMALL)
    anyio.run(lambda: run_scenario(loaded, Home(home), stop_after_ticks=5, collect_metrics=True))
    anyio.run(lambda: run_scenario(loaded, Home(home), resume=True))
    assert M.to_csv(M.read_metrics(Home(home))) == reference[1]


def test_resuming_with_metrics_a_run_that_had_none_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    loaded = load_scenario(FESTIVAL, overrides=SMALL)
    anyio.run(lambda: run_scenario(loaded, Home(home), stop_after_ticks=5))
    with pytest.raises(InvalidInput, match="metrics cover ticks up to -1, not the checkpoint's 4"):
        anyio.run(lambda: run_scenario(loaded, Home(home), resume=True, collect_metrics=True))


def test_csv_and_parquet_hold_the_same_table(reference: tuple[Path, str], tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    home, _ = reference
    rows = M.read_metrics(Home(home))
    M.write_table(rows, tmp_path / "m.parquet")
    M.write_table(rows, tmp_path / "m.csv")
    parquet = pd.read_parquet(tmp_path / "m.parquet")
    csv = pd.read_csv(tmp_path / "m.csv")
    assert list(parquet.columns) == list(rows[0])
    # Missing values as None in both (CSV reads them as NaN, Parquet as None or NaN).
    same = [f.astype(object).where(f.notna(), None) for f in (parquet, csv)]
    pd.testing.assert_frame_equal(*same, check_dtype=False)
    frame = M.metrics_frame(Home(home))
    assert len(frame) == len(rows)


def test_money_and_counts_are_64_bit_integers_in_pandas_and_parquet(
    reference: tuple[Path, str], tmp_path: Path
) -> None:
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    home, _ = reference
    rows = M.read_metrics(Home(home))
    cents = {name for name in rows[0] if name.endswith("_cents")}
    assert cents and cents <= M.INTEGER_COLUMNS  # every money column is whole cents
    M.write_table(rows, tmp_path / "m.parquet")
    schema = pq.read_schema(tmp_path / "m.parquet")
    for frame in (M.metrics_frame(Home(home)), pd.read_parquet(tmp_path / "m.parquet")):
        for name in M.INTEGER_COLUMNS & set(rows[0]):
            assert str(frame[name].dtype) == "Int64", name
            assert str(schema.field(name).type) == "int64", name
            # Exact: the same integers as the rows, a gap (None) where an entity has none.
            got = [None if v is pd.NA else int(v) for v in frame[name]]
            assert got == [row[name] for row in rows], name


def test_a_metrics_file_of_another_suffix_is_refused_before_running(tmp_path: Path) -> None:
    result = cli("run", FESTIVAL, "--home", str(tmp_path / "home"), *SET, "--metrics", "m.xlsx")
    assert result.returncode == 2
    assert "m.xlsx: a metrics table is .csv or .parquet (by its suffix), not '.xlsx'" in (
        result.stderr
    )
    assert not (tmp_path / "home").exists()


def test_the_metrics_section_chooses_the_columns(tmp_path: Path) -> None:
    loaded = load_scenario(
        FESTIVAL, overrides=[*SMALL, "metrics.world=[aci]", "metrics.global=[xusd_gini]"]
    )
    anyio.run(lambda: run_scenario(loaded, Home(tmp_path), collect_metrics=True))
    rows = M.read_metrics(Home(tmp_path))
    assert list(rows[0]) == [*M.KEY_COLUMNS, "aci", "xusd_gini"]


def test_an_unknown_metric_is_a_file_line_key_error() -> None:
    text = textwrap.dedent(
        """\
        name: m
        seed: 1
        clock: {ticks: 2}
        metrics:
          world: [aci, coherence]
        """
    )
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "m.yaml")
    assert "m.yaml:5: metrics.world[1]: " in str(caught.value)
    assert "'aci'" in str(caught.value)


def test_gini_of_known_distributions() -> None:
    assert M.gini([]) == 0.0
    assert M.gini([0, 0]) == 0.0
    assert M.gini([5, 5, 5, 5]) == 0.0
    assert M.gini([0, 0, 0, 10]) == pytest.approx(0.75)
    assert M.gini([1, 2, 3, 4]) == pytest.approx(0.25)


def test_mean_local_coherence_is_the_world_images_brightness_averaged() -> None:
    rng = np.random.default_rng(3)
    for theta in (rng.uniform(0, 2 * np.pi, (16, 16)), np.full((8, 8), 1.0)):
        assert M.mean_local_coherence(theta) == pytest.approx(local_coherence(theta).mean())


def test_the_core_and_a_csv_run_need_no_pandas_pyarrow_or_matplotlib(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        f"""
        import sys
        for name in ("pandas", "pyarrow", "pyarrow.parquet", "matplotlib"):
            sys.modules[name] = None  # an import of it fails, as when not installed
        import ublox_sim
        from ublox_sim.cli import main
        try:
            main(["run", {FESTIVAL!r}, "--home", {str(tmp_path / "h")!r},
                  *{list(SET)!r}, "--metrics", {str(tmp_path / "m.csv")!r}, "--json"])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.csv").read_text(encoding="utf-8").startswith("tick,hour,entity,")

    parquet = subprocess.run(
        [sys.executable, "-c", probe.replace("m.csv", "m.parquet").replace("/h'", "/h2'")],
        env=ENV, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert parquet.returncode != 0
    assert "pyarrow.parquet is not installed: pip install 'ublox-sim[analysis]'" in parquet.stderr
    assert not (tmp_path / "h2").exists()
