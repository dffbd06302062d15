"""Sweeps (issue 16): a grid of cells, each deterministic in its own home; the same tables
whatever the number of jobs, the executor or the order cells finish in; a killed sweep
rerun skips finished cells and ends with the same tables; a bad --set fails its cell only."""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ublox_sim.core.errors import InvalidInput
from ublox_sim.sim import metrics as M
from ublox_sim.sim import sweep as S
from ublox_sim.sim.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[1]
FESTIVAL = str(ROOT / "scenarios" / "festival.yaml")
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("UBLOX_HOME", None)
TABLES = ("series.csv", "final.csv", "summary.csv", "failed.json")

# Small cells: a second or less each.
FIXED = (
    "clock.ticks=10",
    "checkpoint_every=5",
    "cohorts.0.count=60",
    "pto_cohorts.0.count=3",
    "world.size=16",
    "pto_cohorts.0.price_per_pts=5",
    "pto_cohorts.0.launch_at=0",
)
GRID = (
    "--seeds",
    "1-2",
    "--set",
    "world.coupling=0.5,2",
    *(a for f in FIXED for a in ("--set", f)),
)


def sweep(out: Path, *args: str, jobs: int = 1) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", "sweep", FESTIVAL, *args, "--jobs", str(jobs),
         "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip


def tables(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in TABLES}


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "sweep"
    result = sweep(out, *GRID, jobs=1)
    assert result.returncode == 0, result.stderr
    return out


def test_a_sweep_writes_the_grid_times_the_seeds(serial: Path) -> None:
    spec = json.loads((serial / "sweep.json").read_text(encoding="utf-8"))
    assert spec["parameters"] == ["world.coupling"]  # one-valued --set are not parameters
    ids = [c["cell_id"] for c in spec["cells"]]
    assert [(c["set"]["world.coupling"], c["seed"]) for c in spec["cells"]] == [
        ("0.5", 1), ("0.5", 2), ("2", 1), ("2", 2)
    ]  # fmt: skip
    for ident, cell in zip(ids, spec["cells"], strict=True):
        # Readable, cut to 100 characters with a hash when the --set list is long.
        assert ident.startswith(f"s{cell['seed']}_world.coupling={cell['set']['world.coupling']}_")
        assert len(ident) <= 100
    assert len(set(ids)) == 4
    final = (serial / "final.csv").read_text(encoding="utf-8").splitlines()
    # Counts per tick (sessions, phase locks, players active) are the last tick's, so named.
    assert final[0].startswith("cell_id,seed,world.coupling,tick,last_tick_players_active,")
    assert ",last_tick_sessions_mean,last_tick_phase_locks_mean" in final[0]
    assert ",sessions_mean" not in final[0] and ",players_active" not in final[0]
    assert len(final) == 1 + 4
    summary = (serial / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert summary[0] == "world.coupling,metric,n,mean,low,high"
    assert any(line.startswith("2,aci_mean,2,") for line in summary)
    for cell in spec["cells"]:
        assert (serial / "cells" / cell["cell_id"] / "export.json").is_file()
    assert json.loads((serial / "failed.json").read_text(encoding="utf-8")) == []


def test_jobs_1_and_jobs_2_give_identical_tables(serial: Path, tmp_path: Path) -> None:
    result = sweep(tmp_path / "sweep", *GRID, jobs=2)
    assert result.returncode == 0, result.stderr
    assert tables(tmp_path / "sweep") == tables(serial)
    for cell in (serial / "cells").iterdir():
        twin = tmp_path / "sweep" / "cells" / cell.name / "export.json"
        assert twin.read_bytes() == (cell / "export.json").read_bytes()


class Reversed:
    """An executor that runs cells in this process, last first: the tables cannot
    depend on the order results arrive in."""

    jobs = 1

    def map(self, fn: S.CellFn, cells: Sequence[S.Cell]) -> Iterator[tuple[S.Cell, S.CellResult]]:
        for cell in reversed(cells):
            yield cell, fn(cell)


def test_another_executor_finishing_in_another_order_gives_the_same_tables(
    serial: Path, tmp_path: Path
) -> None:
    cells = S.grid(
        FESTIVAL,
        [S.parse_set("world.coupling=0.5,2"), *(S.parse_set(f) for f in FIXED)],
        S.parse_seeds("1-2"),
    )
    seen: list[S.SweepProgress] = []
    result = S.run_sweep(list(reversed(cells)), tmp_path / "sweep", Reversed(), seen.append)
    assert [r.cell for r in result.results] == cells
    assert [(p.done, p.failed, p.running) for p in seen] == [
        (1, 0, 1),
        (2, 0, 1),
        (3, 0, 1),
        (4, 0, 0),
    ]
    assert seen[-1].eta_seconds == 0.0
    assert tables(tmp_path / "sweep") == tables(serial)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    return [int(p) for p in text.split()]


def _wait_exit(pid: int) -> None:
    """Block until ``pid`` (not our child) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_sweep_rerun_skips_finished_cells_and_ends_identical(tmp_path: Path) -> None:
    grid = ("--seeds", "1-3", "--set", "world.coupling=0.5,2",
            *(a for f in ("clock.ticks=40", *FIXED[1:]) for a in ("--set", f)))  # fmt: skip
    reference = sweep(tmp_path / "reference", *grid, jobs=2)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ublox_sim", "sweep", FESTIVAL, *grid, "--jobs", "2",
         "--out", str(out)],
        env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Wait (on the files, not a clock) for the first finished cell, then kill the
        # sweep's process: the workers die with it (PR_SET_PDEATHSIG).
        while not list(out.glob("cells/*/export.json")):
            assert proc.poll() is None, "the sweep ended before any cell was seen to finish"
            time.sleep(0.01)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert workers
    for worker in workers:  # each dies with the sweep: wait for its exit, not a clock
        _wait_exit(worker)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/export.json")}
    assert 1 <= len(finished) < 6

    rerun = sweep(out, *grid, jobs=2)
    assert rerun.returncode == 0, rerun.stderr
    assert tables(out) == tables(tmp_path / "reference")
    for cell_id, mtime in finished.items():
        assert (out / "cells" / cell_id / "export.json").stat().st_mtime_ns == mtime
        assert f"{cell_id} skipped" in rerun.stderr
    assert rerun.stderr.count(" skipped in ") == len(finished)


def test_a_bad_set_value_exits_2_naming_it_before_anything_is_written(tmp_path: Path) -> None:
    args = ("--seeds", "1", "--set", "world.coupling=0.5,-3,2",
            *(a for f in FIXED for a in ("--set", f)))  # fmt: skip
    result = sweep(tmp_path / "sweep", *args, jobs=2)
    assert result.returncode == 2, result.stdout
    with pytest.raises(ScenarioError) as caught:
        load_scenario(FESTIVAL, overrides=["world.coupling=-3", *FIXED], seed=1)
    expected = str(caught.value)
    assert expected == "--set: world.coupling: must be between 0 and 1e6 (got -3)"
    assert f"error: {expected}" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_an_unknown_set_key_exits_2_with_the_key_named(tmp_path: Path) -> None:
    result = sweep(tmp_path / "sweep", "--seeds", "1-2", "--set", "world.nope=1,2", jobs=1)
    assert result.returncode == 2, result.stdout
    assert (
        "--set: world.nope: unknown key; see scenarios/README.md for the keys this section takes"
        in result.stderr
    )
    assert not (tmp_path / "sweep").exists()


def test_a_scenario_typo_exits_2_naming_its_file_line_and_key(tmp_path: Path) -> None:
    text = Path(FESTIVAL).read_text(encoding="utf-8")
    assert "  coupling:" in text
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("  coupling:", "  couplng:", 1), encoding="utf-8")
    line = text[: text.index("  coupling:")].count("\n") + 1
    result = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "sweep", str(typo), "--seeds", "1-2",
         "--out", str(tmp_path / "sweep")],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout
    assert f"{typo}:{line}: world.couplng" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_an_out_folder_holding_other_files_is_refused_untouched(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    result = sweep(mine, *GRID)
    assert result.returncode == 2, result.stdout
    assert "is not empty and is not a sweep's folder (notes.txt; no sweep.json)" in result.stderr
    assert sorted(os.listdir(mine)) == ["notes.txt"]
    # The library refuses too, whatever calls it.
    cells = S.grid(FESTIVAL, [("world.coupling", ["0.5"])], [1])
    with pytest.raises(InvalidInput, match="not a sweep's folder"):
        S.run_sweep(cells, mine, S.LocalExecutor(1))
    with pytest.raises(ScenarioError, match=r"world\.nope: unknown key"):
        S.run_sweep(
            [S.Cell(FESTIVAL, (("world.nope", "1"),), 1)], tmp_path / "new", S.LocalExecutor(1)
        )
    assert sorted(os.listdir(mine)) == ["notes.txt"] and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("1-3", [1, 2, 3]), ("7", [7]), ("1,5,9", [1, 5, 9]), ("1-3,2,10", [1, 2, 3, 10])],
)
def test_seeds_are_ranges_and_lists(text: str, seeds: list[int]) -> None:
    assert S.parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("world.coupling=0.5,1,2", ["0.5", "1", "2"]),
        ("metrics.world=[aci, sessions]", ["[aci, sessions]"]),
        ("x={dist: choice, values: [1, 2]},3", ["{dist: choice, values: [1, 2]}", "3"]),
        ("ptos.0.description='a, b',c", ["'a, b'", "c"]),
    ],
)
def test_set_values_split_on_commas_outside_yaml_brackets_and_quotes(
    text: str, values: list[str]
) -> None:
    assert S.parse_set(text) == (text.partition("=")[0], values)


@pytest.mark.parametrize("text", ["world.coupling", "=1", "k=", "k=1,,2"])
def test_bad_set_items_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--set"):
        S.parse_set(text)


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-2"])
def test_bad_seeds_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--seeds"):
        S.parse_seeds(text)


def test_bad_seeds_or_set_exit_2_before_anything_runs(tmp_path: Path) -> None:
    for args in (("--seeds", "x"), ("--set", "world.coupling")):
        result = sweep(tmp_path / "sweep", *args)
        assert result.returncode == 2, result.stderr
        assert not (tmp_path / "sweep").exists()


def test_cell_ids_are_filesystem_safe_and_distinct() -> None:
    cells = [
        S.Cell("x.yaml", (("ptos.0.description", "a/b"),), 1),
        S.Cell("x.yaml", (("ptos.0.description", "a b"),), 1),
        S.Cell("x.yaml", (("world.size", "16"),), 1),
        S.Cell("x.yaml", (("k", "v" * 200),), 1),
    ]
    ids = [c.cell_id for c in cells]
    assert len(set(ids)) == len(ids)
    assert ids[2] == "s1_world.size=16"
    for ident in ids:
        assert len(ident) <= 100
        assert all(ch.isalnum() or ch in ".=+_-~" for ch in ident), ident


def test_the_interval_is_students_t() -> None:
    assert S.interval95([3.0]) == (3.0, None, None)  # one seed: no interval, not a zero one
    mean, low, high = S.interval95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert (low, high) == pytest.approx((2.0 - 4.303 / 3**0.5, 2.0 + 4.303 / 3**0.5))


def test_one_seed_gives_no_interval_in_the_summary() -> None:
    finals = [{"cell_id": "a", "seed": 1, "k": "1", "tick": 3, "aci_mean": 0.5},
              {"cell_id": "b", "seed": 1, "k": "2", "tick": 3, "aci_mean": 0.25},
              {"cell_id": "c", "seed": 2, "k": "2", "tick": 3, "aci_mean": 0.75}]  # fmt: skip
    summary = S.summarise(finals, ["k"])
    assert summary[0] == {"k": "1", "metric": "aci_mean", "n": 1, "mean": 0.5, "low": None,
                          "high": None}  # fmt: skip
    assert summary[1]["n"] == 2 and summary[1]["low"] < 0.5 < summary[1]["high"]
    assert M.to_csv(summary).splitlines()[1] == "1,aci_mean,1,0.5,,"


def test_seed_in_a_sweeps_set_is_refused_use_seeds(tmp_path: Path) -> None:
    result = sweep(tmp_path / "sweep", "--seeds", "1-2", "--set", "seed=5,6", *GRID[4:])
    assert result.returncode == 2, result.stderr
    assert "--set seed=5,6: a sweep's seeds are not a --set key" in result.stderr
    assert "use --seeds" in result.stderr
    assert not (tmp_path / "sweep").exists()
    # A cell made by hand with a seed in its --set is refused too, nothing written.
    with pytest.raises(InvalidInput, match="use --seeds"):
        S.check_sweep([S.Cell(FESTIVAL, (("seed", "5"),), 1)], tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("sets", "error"),
    [
        (("world.coupling=0.5,1", "world.coupling=2,3"),
         "--set world.coupling is given 2 times (--set world.coupling=0.5,1 and "
         "--set world.coupling=2,3): give its values once"),
        (("world.coupling=0.5,1,0.5",),
         "--set world.coupling=0.5,1,0.5: 0.5 given more than once: give each value once"),
        (("world.coupling=2,2e0",),
         "--set world.coupling: world.coupling=2 and world.coupling=2e0 are the same "
         "scenario once parsed: give each value once"),
        (("world.coupling=0.5,2", "world.omega_spread=0.1,0.10"),
         "--set world.omega_spread: world.omega_spread=0.1 and world.omega_spread=0.10 are "
         "the same scenario once parsed"),
    ],
)  # fmt: skip
def test_a_grid_with_a_cell_twice_is_refused_naming_the_key_and_values(
    tmp_path: Path, sets: tuple[str, ...], error: str
) -> None:
    fixed = (a for f in FIXED for a in ("--set", f))
    result = sweep(tmp_path / "sweep", *(a for s in sets for a in ("--set", s)), *fixed)
    assert result.returncode == 2, result.stderr
    assert error in result.stderr
    assert not (tmp_path / "sweep").exists()


def _copy(sweep_dir: Path, to: Path) -> Path:
    shutil.copytree(sweep_dir, to, symlinks=True)
    return to


def test_another_grid_or_seeds_into_a_sweeps_folder_is_refused_untouched(
    serial: Path, tmp_path: Path
) -> None:
    out = _copy(serial, tmp_path / "sweep")
    before = tables(out) | {"sweep.json": (out / "sweep.json").read_bytes()}
    grid = [a if a != "world.coupling=0.5,2" else "world.coupling=0.5,1" for a in GRID]
    result = sweep(out, *grid)
    assert result.returncode == 2, result.stderr
    assert (
        f"error: {out} holds another sweep (--set world.coupling=0.5,2 there, "
        f"world.coupling=0.5,1 now): use a new --out, or remove {out} to run this sweep there"
    ) in result.stderr
    result = sweep(out, "--seeds", "1-3", *GRID[2:])
    assert result.returncode == 2, result.stderr
    assert f"error: {out} holds another sweep (seeds 1-2 there, 1-3 now)" in result.stderr
    assert tables(out) | {"sweep.json": (out / "sweep.json").read_bytes()} == before


def test_a_rerun_after_the_scenario_changed_is_refused_and_keeps_the_tables(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "festival.yaml"
    shutil.copyfile(FESTIVAL, scenario)
    cells = S.grid(str(scenario), [S.parse_set("world.coupling=0.5,2"),
                                   *(S.parse_set(f) for f in FIXED)], [1])  # fmt: skip
    out = tmp_path / "sweep"
    assert not S.run_sweep(cells, out, S.LocalExecutor(1)).failed
    before = tables(out)
    text = scenario.read_text(encoding="utf-8")
    assert "  amplification: 100\n" in text  # not in the sweep's --set
    scenario.write_text(
        text.replace("  amplification: 100\n", "  amplification: 50\n"), encoding="utf-8"
    )
    with pytest.raises(InvalidInput) as caught:
        S.run_sweep(cells, out, S.LocalExecutor(1))
    assert str(caught.value) == (
        f"{out} holds another sweep (the scenario ({scenario}) is not the one it ran (the "
        f"file changed since)): use a new --out, or remove {out} to run this sweep there"
    )
    assert tables(out) == before
    # Without sweep.json (a sweep of an older version) each cell refuses the other
    # scenario: no cell finishes, and the tables already there are kept, not emptied.
    (out / "sweep.json").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "ublox_sim", "sweep", str(scenario), "--seeds", "1", "--set",
         "world.coupling=0.5,2", *(a for f in FIXED for a in ("--set", f)), "--jobs", "1",
         "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "holds a run of another scenario" in result.stderr
    assert f"no cell finished: the tables in {out} were not written" in result.stderr
    assert tables(out) == before


class Failing:
    """An executor whose every cell fails."""

    jobs = 1

    def map(self, fn: S.CellFn, cells: Sequence[S.Cell]) -> Iterator[tuple[S.Cell, S.CellResult]]:
        for cell in cells:
            yield cell, S.CellResult(cell, error="lost", how="error")


def test_no_finished_cell_never_overwrites_the_tables(serial: Path, tmp_path: Path) -> None:
    out = _copy(serial, tmp_path / "sweep")
    cells = S.grid(FESTIVAL, [S.parse_set("world.coupling=0.5,2"),
                              *(S.parse_set(f) for f in FIXED)], [1, 2])  # fmt: skip
    before = tables(out)
    result = S.run_sweep(cells, out, Failing())
    assert not result.tables_written and len(result.failed) == 4
    assert tables(out) == before
    # The same sweep again resumes as before: every cell finished, read back.
    again = S.run_sweep(cells, out, S.LocalExecutor(1))
    assert again.tables_written and {r.how for r in again.results} == {"skipped"}
    assert tables(out) == before


# Cells long enough (100 ticks, ~2 s each) that the Ctrl-C, sent once the first cell is
# seen to finish, lands while others still run, however slowly the test's poll is served
# on a loaded machine (with GRID's 0.2 s cells the whole sweep sometimes finished first).
LONG_GRID = tuple(
    {"clock.ticks=10": "clock.ticks=100", "checkpoint_every=5": "checkpoint_every=50"}.get(a, a)
    for a in GRID
)


@pytest.fixture(scope="module")
def long_serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("long") / "sweep"
    result = sweep(out, *LONG_GRID, jobs=2)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_exits_130_with_the_command_that_resumes_it(
    long_serial: Path, tmp_path: Path, jobs: int
) -> None:
    out = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ublox_sim", "sweep", FESTIVAL, *LONG_GRID, "--jobs", str(jobs),
         "--out", str(out)],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        # A terminal's Ctrl-C: SIGINT to the process group, once the first cell finished.
        while not list(out.glob("cells/*/export.json")):
            assert proc.poll() is None, "the sweep ended before any cell was seen to finish"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Aborted" not in stderr
    hint = stderr.rsplit("continue with `", 1)[1].split("`", 1)[0]
    words = shlex.split(hint)
    assert words[:2] == ["ublox-sim", "sweep"]
    rerun = subprocess.run(
        [sys.executable, "-m", "ublox_sim", *words[1:]],
        env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert " skipped in " in rerun.stderr
    assert tables(out) == tables(long_serial)
