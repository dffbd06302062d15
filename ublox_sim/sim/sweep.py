"""Parameter sweeps: a grid of cells (scenario × ``--set`` values × seeds), each run
deterministically, checkpointed and resumable in its own home.

The parts, so that another executor (a Ray cluster) can run the same cells:

* ``Cell``: what one run is (the scenario path, its ``--set`` pairs, its seed) and a
  stable, filesystem-safe ``cell_id``;
* ``run_cell(cell, home)``: a plain picklable function that runs the cell in ``home``
  (or resumes it from its last checkpoint, or, finished, only reads it back) and
  returns a ``CellResult``: its per-tick metrics rows, or its error. Never raises for
  a cell's own fault (a bad ``--set``, a refused scenario);
* ``Executor``: ``map(fn, cells)`` yields ``(cell, result)`` as cells finish;
  ``LocalExecutor(jobs)`` uses worker processes (spawn);
* ``run_sweep(cells, out_dir, executor, progress)``: runs every cell under
  ``out_dir/cells/<cell_id>/`` and writes the tables (``series.csv``, ``final.csv``,
  ``summary.csv``, ``failed.json``), always sorted by cell, so the folder's tables are
  the same whatever the executor, the number of jobs or the order cells finished in.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import re
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..core.errors import InvalidInput, UbloxError
from . import metrics as M

Row = dict[str, Any]

CELLS = "cells"
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: ``scenario`` with the ``--set`` pairs in the order given, and
    ``seed``. Ordered by (scenario, overrides, seed), the tables' order."""

    scenario: str
    overrides: tuple[tuple[str, str], ...]
    seed: int

    @property
    def cell_id(self) -> str:
        """``s7_world.coupling=0.5``: readable, filesystem-safe, stable across runs and
        machines; a short hash of the exact cell is added when the slug had to be cleaned
        (or cut), so two cells never share a folder."""
        slug = f"s{self.seed}" + "".join(f"_{k}={v}" for k, v in self.overrides)
        safe = re.sub(r"[^A-Za-z0-9.=+_-]", "~", slug)
        if safe == slug and len(slug) <= 100:
            return slug
        digest = hashlib.sha256(repr((self.overrides, self.seed)).encode()).hexdigest()[:10]
        return f"{safe[:80]}-{digest}"

    @property
    def set_args(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.overrides]

    def sort_key(self) -> tuple[str, tuple[tuple[str, str], ...], int]:
        return (self.scenario, self.overrides, self.seed)


@dataclass(frozen=True)
class CellResult:
    """A cell's outcome: ``rows`` (its per-tick metrics) when ``error`` is None.

    ``how`` says whether it ``ran`` from the start, ``resumed`` a checkpoint or was
    ``skipped`` (finished before), or ended in an ``error``; ``seconds`` its wall time here. Neither is part of the
    sweep's tables."""

    cell: Cell
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    how: Literal["ran", "resumed", "skipped", "error"] = "ran"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def run_cell(cell: Cell, home: Path) -> CellResult:
    """Run ``cell`` in ``home`` (resume its checkpoint, or read back a finished run)."""
    import anyio

    from ..store.home import Home
    from ..store.sqlite.backend import read_run_record
    from .runner import resolved_scenario, run_scenario
    from .scenario import load_scenario

    started = time.perf_counter()
    where = Home.resolve(home)

    def failed(message: str) -> CellResult:
        return CellResult(cell, error=message, how="error", seconds=time.perf_counter() - started)

    try:
        loaded = load_scenario(cell.scenario, overrides=cell.set_args, seed=cell.seed)
        try:
            row = read_run_record(where)
        except InvalidInput:  # no store, or killed before it had its tables: start again
            row = None
        if row is not None and row.scenario != resolved_scenario(loaded.scenario):
            return failed(
                f"{home} holds a run of another scenario (the file, or --set, changed since): "
                "remove the folder to run the cell again"
            )
        if row is not None and row.finished and where.export_path.is_file():
            how: Literal["ran", "resumed", "skipped"] = "skipped"
        else:
            # A finished run killed before its export resumes to write it (no tick runs).
            how = "resumed" if row is not None else "ran"
            if row is None and home.exists():
                # Killed before its first checkpoint: nothing to resume, start again.
                shutil.rmtree(home)
            home.mkdir(parents=True, exist_ok=True)
            anyio.run(
                functools.partial(
                    run_scenario,
                    loaded,
                    where,
                    resume=how == "resumed",
                    collect_metrics=True,
                    interrupted=None if _STOP is None else _STOP.is_set,
                )
            )
        rows = M.read_metrics(where)
    except UbloxError as exc:
        return failed(str(exc))
    return CellResult(cell, rows=rows, how=how, seconds=time.perf_counter() - started)


def run_cell_under(out_dir: Path, cell: Cell) -> CellResult:
    """``run_cell`` in the sweep's folder for the cell: what executors are handed."""
    return run_cell(cell, out_dir / CELLS / cell.cell_id)


CellFn = Callable[[Cell], CellResult]


class Executor(Protocol):
    """Runs cells somewhere; yields each ``(cell, result)`` as it finishes, in any order.
    ``fn`` is picklable (a ``functools.partial`` of a module-level function). An executor
    may have an int ``jobs``, how many cells it runs at once: progress shows it as the
    cells running (1 when absent)."""

    def map(self, fn: CellFn, cells: Sequence[Cell]) -> Iterator[tuple[Cell, CellResult]]: ...


_STOP: Any = None
"""In a ``LocalExecutor`` worker: the sweep's stop event, set when the sweep is stopped
(Ctrl-C); the worker's cell then stops at its next tick (``run_scenario``'s
``interrupted``), resumable from its last checkpoint."""


def _worker_init(stop: Any) -> None:
    """A worker's initializer: Ctrl-C is the sweep's to handle (a terminal sends SIGINT
    to every process of the group): the worker ignores SIGINT and stops its cell at the
    next tick once the sweep sets ``stop``, rather than finishing it first."""
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()


def _die_with_parent() -> None:
    """A worker's initializer: on Linux, the kernel kills the worker when the sweep's
    process dies, so a killed sweep leaves no worker still writing a cell's home."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalExecutor:
    """``jobs`` worker processes (spawn: a clean interpreter each, no inherited state);
    ``jobs=1`` runs cells one after another in this process."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1 (got {jobs})")
        self.jobs = jobs

    def map(self, fn: CellFn, cells: Sequence[Cell]) -> Iterator[tuple[Cell, CellResult]]:
        if self.jobs == 1:
            global _STOP
            # In this process: a Ctrl-C stops the running cell at its next tick, and the
            # sweep after it. Raised inside the cell's event loop instead, it could be
            # absorbed by a shielded commit and lost, and the sweep went on.
            pressed, held = threading.Event(), _STOP
            _STOP = pressed
            try:
                with _on_sigint(pressed.set):
                    for cell in cells:
                        result = _guarded(fn, cell)
                        if pressed.is_set():
                            raise KeyboardInterrupt
                        yield cell, result
            finally:
                _STOP = held
            return
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        with (
            _on_sigint(stop.set),
            cf.ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=context,
                initializer=_worker_init,
                initargs=(stop,),
            ) as pool,
        ):
            futures = {pool.submit(fn, cell): cell for cell in cells}
            try:
                for future in cf.as_completed(futures):
                    if stop.is_set():  # Ctrl-C: the cells running stopped at a tick
                        raise KeyboardInterrupt
                    cell = futures[future]
                    error = future.exception()
                    if error is None:
                        yield cell, future.result()
                    else:
                        yield cell, CellResult(cell, error=_describe(error), how="error")
            except BaseException:
                # Ctrl-C (or the caller gone): the cells running stop at their next tick,
                # so leaving the pool (which waits for them) is quick.
                stop.set()
                raise
            finally:
                for future in futures:
                    future.cancel()


@contextlib.contextmanager
def _on_sigint(press: Callable[[], None]) -> Iterator[None]:
    """While the sweep runs cells, a Ctrl-C calls ``press`` (the cells stop at their next
    tick, and the sweep with them); a second one interrupts at once. Only the main thread
    may set a handler: elsewhere (an embedding caller's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: object) -> None:
        press()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _guarded(fn: CellFn, cell: Cell) -> CellResult:
    try:
        return fn(cell)
    except Exception as exc:  # a defect, not the cell's fault: report it, go on
        return CellResult(cell, error=_describe(exc), how="error")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- the grid ------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``1-20``, ``3``, ``1,5,9`` or ``1-3,10`` → the seeds, in order, without repeats."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"--seeds {text!r}: expected N, A-B or a comma list of them")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if high < low:
            raise ValueError(f"--seeds {text!r}: {part} is an empty range")
        seeds.extend(s for s in range(low, high + 1) if s not in seeds)
    return seeds


def parse_set(text: str) -> tuple[str, list[str]]:
    """``world.coupling=0.5,1,2`` → (``world.coupling``, [``0.5``, ``1``, ``2``]).

    Commas inside brackets, braces or quotes belong to one YAML value:
    ``metrics.world=[aci,sessions]`` is one value, ``x={dist: choice, values: [1, 2]},3`` two.
    """
    key, eq, values = text.partition("=")
    if not eq or not key.strip() or not values:
        raise ValueError(f"--set {text!r}: expected key.path=value[,value...]")
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(values):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(values[start:i])
            start = i + 1
    parts.append(values[start:])
    if any(not part.strip() for part in parts):
        raise ValueError(f"--set {text!r}: an empty value in the list")
    return key.strip(), [part.strip() for part in parts]


SEED_KEY = "seed"


def grid(
    scenario: str, sets: Sequence[tuple[str, Sequence[str]]], seeds: Iterable[int]
) -> list[Cell]:
    """The product of the value lists, times the seeds, sorted by cell.

    ``InvalidInput`` for a grid whose cells would be mislabelled or counted twice: a
    ``seed`` key (the seeds are ``seeds``, ``--seeds``), a key given twice, or a value
    given twice in its list (values equal only once parsed, ``10`` and ``1e1``, are
    refused by ``check_sweep``, which reads the scenario)."""
    keys = [k for k, _ in sets]
    for key, values in sets:
        if key == SEED_KEY:
            raise InvalidInput(
                f"--set {key}={','.join(values)}: a sweep's seeds are not a --set key "
                "(the cells run their --seeds): use --seeds"
            )
        if keys.count(key) > 1:
            given = " and ".join(f"--set {k}={','.join(v)}" for k, v in sets if k == key)
            raise InvalidInput(
                f"--set {key} is given {keys.count(key)} times ({given}): give its values "
                "once, in one --set"
            )
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise InvalidInput(
                f"--set {key}={','.join(values)}: {', '.join(repeated)} given more than "
                "once: give each value once (a cell twice would count its seeds twice)"
            )
    cells = [
        Cell(scenario, tuple(zip(keys, combo, strict=True)), seed)
        for combo in itertools.product(*(values for _, values in sets))
        for seed in seeds
    ]
    return sorted(cells, key=Cell.sort_key)


# -- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepProgress:
    total: int
    done: int
    failed: int
    running: int
    eta_seconds: float | None
    last: CellResult | None = None


ProgressFn = Callable[[SweepProgress], None]


@dataclass
class SweepResult:
    """``tables_written`` is False when no cell finished: the tables already in
    ``out_dir`` (of an earlier run of the sweep) were left as they were."""

    out_dir: Path
    results: list[CellResult]
    wall_seconds: float
    tables_written: bool = True

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if not r.ok]


def check_sweep(cells: Sequence[Cell], out_dir: Path) -> str:
    """Refuse (``InvalidInput``, nothing written) a sweep that cannot run or whose tables
    would mislead: ``out_dir`` holding something that is not a sweep's folder, or another
    sweep (another grid, seeds or scenario: ``sweep.json`` records them); a scenario
    refused with a cell's ``--set`` values or seed (the scenario's ``file:line: key`` or
    the ``--set`` key named), which would fail cell after cell; a ``seed`` or a key twice
    in a cell's ``--set``; two cells that are one scenario once parsed (``10`` and
    ``1e1``), whose seeds would be counted twice. Each value combination is read once
    (at the first seed), each other seed once. Returns the sweep's identity: a digest of
    every combination's scenario as a run records it (``resolved_scenario``, and its
    ``metrics:`` section)."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_sweep_dir(out_dir):
        shown = ", ".join(sorted(p.name for p in out_dir.iterdir())[:3])
        raise InvalidInput(
            f"{out_dir} is not empty and is not a sweep's folder ({shown}; no {SWEEP_FILE}):"
            " use a new or empty --out"
        )
    from .runner import resolved_scenario
    from .scenario import load_scenario

    cells = sorted(set(cells), key=Cell.sort_key)
    if not cells:
        raise InvalidInput("a sweep needs at least one cell")
    for cell in cells:
        keys = [k for k, _ in cell.overrides]
        if SEED_KEY in keys:
            raise InvalidInput(f"cell {cell.cell_id}: --set {SEED_KEY} in a sweep: use --seeds")
        if len(set(keys)) != len(keys):
            raise InvalidInput(f"cell {cell.cell_id}: a --set key given twice ({', '.join(keys)})")
    first_seed = min(c.seed for c in cells)
    combos = list(dict.fromkeys((c.scenario, c.overrides) for c in cells))
    parsed: dict[str, tuple[tuple[str, str], ...]] = {}
    identity = hashlib.sha256()
    for scenario, overrides in combos:
        loaded = load_scenario(
            scenario, overrides=[f"{k}={v}" for k, v in overrides], seed=first_seed
        )
        model = loaded.scenario
        whole = json.dumps(model.model_dump(mode="json", by_alias=True), sort_keys=True)
        if whole in parsed:
            raise _same_scenario(parsed[whole], overrides)
        parsed[whole] = overrides
        metrics = json.dumps(model.metrics.model_dump(mode="json", by_alias=True), sort_keys=True)
        identity.update(f"{resolved_scenario(model)}\n{metrics}\n".encode())
    for seed in sorted({c.seed for c in cells} - {first_seed}):
        scenario, overrides = combos[0]
        load_scenario(scenario, overrides=[f"{k}={v}" for k, v in overrides], seed=seed)
    digest = identity.hexdigest()
    _check_same_sweep(out_dir, cells, digest)
    return digest


def _same_scenario(
    one: tuple[tuple[str, str], ...], other: tuple[tuple[str, str], ...]
) -> InvalidInput:
    a, b = dict(one), dict(other)
    differ = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    shown = " and ".join(
        ", ".join(f"{k}={given.get(k, '(not set)')}" for k in differ) for given in (a, b)
    )
    return InvalidInput(
        f"--set {', '.join(differ)}: {shown} are the same scenario once parsed: "
        "give each value once (a cell twice would count its seeds twice)"
    )


def _check_same_sweep(out_dir: Path, cells: Sequence[Cell], identity: str) -> None:
    """A rerun into a sweep's folder must be the same sweep (it resumes): refuse
    another grid, other seeds or another scenario, naming the folder and what differs."""
    path = out_dir / SWEEP_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
        old = {(tuple(sorted(c["set"].items())), int(c["seed"])) for c in before["cells"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(
            f"{path} cannot be read ({exc}): use a new --out, or remove {out_dir}"
        ) from exc
    new = {(tuple(sorted(c.overrides)), c.seed) for c in cells}
    differs: list[str] = []
    old_seeds, new_seeds = sorted({s for _, s in old}), sorted({s for _, s in new})
    if old_seeds != new_seeds:
        differs.append(f"seeds {_ranges(old_seeds)} there, {_ranges(new_seeds)} now")
    old_grid, new_grid = _values(o for o, _ in old), _values(o for o, _ in new)
    changed = [k for k in sorted({*old_grid, *new_grid}) if old_grid.get(k) != new_grid.get(k)]
    if changed:
        there, now = (_show(values, changed) for values in (old_grid, new_grid))
        differs.append(f"--set {there} there, {now} now")
    if not differs and before.get("identity", identity) != identity:
        differs.append(
            f"the scenario ({cells[0].scenario}) is not the one it ran (the file changed since)"
        )
    if differs:
        raise InvalidInput(
            f"{out_dir} holds another sweep ({'; '.join(differs)}): use a new --out, or "
            f"remove {out_dir} to run this sweep there"
        )


def _values(combos: Iterable[tuple[tuple[str, str], ...]]) -> dict[str, list[str]]:
    seen: dict[str, set[str]] = {}
    for combo in combos:
        for k, v in combo:
            seen.setdefault(k, set()).add(v)
    return {k: sorted(v) for k, v in sorted(seen.items())}


def _show(values: dict[str, list[str]], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={','.join(values[k])}" if k in values else f"{k} unset" for k in keys)


def _ranges(seeds: Sequence[int]) -> str:
    """[1, 2, 3, 7] → ``1-3,7``, as ``--seeds`` takes them."""
    parts: list[str] = []
    for _, run in itertools.groupby(enumerate(seeds), lambda pair: pair[1] - pair[0]):
        block = [s for _, s in run]
        parts.append(str(block[0]) if len(block) == 1 else f"{block[0]}-{block[-1]}")
    return ",".join(parts)


def _is_sweep_dir(path: Path) -> bool:
    """A sweep wrote here (``sweep.json``; ``cells/`` alone if it was killed at once)."""
    return (path / SWEEP_FILE).is_file() or (path / CELLS).is_dir()


def run_sweep(
    cells: Sequence[Cell],
    out_dir: Path,
    executor: Executor,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Run ``cells`` (those finished before are read back, checkpointed ones resume) and
    write the sweep's tables in ``out_dir``. See the module doc. ``InvalidInput`` before
    anything is written for a sweep that cannot run (``check_sweep``). When no cell
    finished, no table is written: those there stay (``SweepResult.tables_written``)."""
    started = time.perf_counter()
    identity = check_sweep(cells, out_dir)
    cells = sorted(set(cells), key=Cell.sort_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CELLS).mkdir(exist_ok=True)
    _record_sweep(out_dir, cells, identity)
    jobs = int(getattr(executor, "jobs", 1))
    results: dict[Cell, CellResult] = {}
    done = failed = 0
    fn = functools.partial(run_cell_under, out_dir)
    for cell, result in executor.map(fn, cells):
        results[cell] = result
        if result.ok:
            done += 1
        else:
            failed += 1
        if progress is not None:
            left = len(cells) - done - failed
            elapsed = time.perf_counter() - started
            eta = elapsed / (done + failed) * left if left else 0.0
            progress(SweepProgress(len(cells), done, failed, min(jobs, left), eta, result))
    ordered = [results[c] for c in cells if c in results]
    written = any(r.ok for r in ordered)
    if written:
        write_tables(out_dir, ordered)
    return SweepResult(out_dir, ordered, time.perf_counter() - started, written)


def swept_keys(cells: Sequence[Cell]) -> list[str]:
    """The ``--set`` keys that take more than one value over ``cells`` (first-seen order):
    a key set to one value is part of every cell's scenario, not a parameter."""
    values: dict[str, set[str]] = {}
    for cell in cells:
        for k, v in cell.overrides:
            values.setdefault(k, set()).add(v)
    return [k for k, seen in values.items() if len(seen) > 1]


def _record_sweep(out_dir: Path, cells: Sequence[Cell], identity: str) -> None:
    """``sweep.json``: the cells and the swept keys, for ``plot`` and for a reader, and
    the sweep's ``identity`` (``check_sweep``): a rerun must be the same sweep."""
    spec = {
        "parameters": swept_keys(cells),
        "seeds": sorted({c.seed for c in cells}),
        "identity": identity,
        "cells": [
            {"cell_id": c.cell_id, "scenario": c.scenario, "set": dict(c.overrides), "seed": c.seed}
            for c in cells
        ],
    }
    (out_dir / SWEEP_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def write_tables(out_dir: Path, results: Sequence[CellResult]) -> None:
    """``series.csv`` (every tick of every cell), ``final.csv`` (one row per cell: the
    global metrics at the last tick and the worlds' means, ``final_metrics``), ``summary.csv`` (each
    metric per parameter value: mean and 95% interval over seeds), ``failed.json``."""
    keys = swept_keys([r.cell for r in results])

    def ident(cell: Cell) -> Row:
        given = dict(cell.overrides)
        return {"cell_id": cell.cell_id, "seed": cell.seed} | {k: given.get(k) for k in keys}

    series: list[Row] = []
    finals: list[Row] = []
    for r in results:
        if not r.ok:
            continue
        series.extend(ident(r.cell) | row for row in r.rows)
        finals.append(ident(r.cell) | final_metrics(r.rows))
    (out_dir / "series.csv").write_text(M.to_csv(series), encoding="utf-8")
    (out_dir / "final.csv").write_text(M.to_csv(finals), encoding="utf-8")
    (out_dir / "summary.csv").write_text(M.to_csv(summarise(finals, keys)), encoding="utf-8")
    errors = [
        {
            "cell_id": r.cell.cell_id,
            "seed": r.cell.seed,
            "set": dict(r.cell.overrides),
            "error": r.error,
        }
        for r in results
        if not r.ok
    ]
    (out_dir / "failed.json").write_text(json.dumps(errors, indent=2) + "\n", encoding="utf-8")


def final_metrics(rows: Sequence[Row]) -> Row:
    """A cell's result: the global metrics at its last tick, and each world metric's
    mean over the worlds at that tick (``<metric>_mean``). A metric counted per tick
    (``M.PER_TICK``: sessions, phase locks, players active) is that last tick's count,
    not a total: its column is ``last_tick_<name>``."""
    last = max(row["tick"] for row in rows)
    at_end = [row for row in rows if row["tick"] == last]
    out: Row = {"tick": last}
    for row in at_end:
        if row["entity"] == M.GLOBAL:
            out |= {_final_name(k): row[k] for k in M.GLOBAL_METRICS if k in row}
    worlds = [row for row in at_end if row["entity"] != M.GLOBAL]
    for name in M.WORLD_METRICS:
        values = [row[name] for row in worlds if row.get(name) is not None]
        if any(name in row for row in at_end):
            out[_final_name(f"{name}_mean", name)] = statistics.fmean(values) if values else None
    return out


def _final_name(column: str, metric: str | None = None) -> str:
    return f"last_tick_{column}" if (metric or column) in M.PER_TICK else column


# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; past 30 the
# normal's 1.96 is within 2%.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def interval95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the mean and its 95% t-interval; one value has no interval
    (low and high None: its spread is unknown, not zero)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarise(finals: Sequence[Row], keys: Sequence[str]) -> list[Row]:
    """Per combination of parameter values (in first-seen order) and metric: n, the mean
    and its 95% interval over the seeds (none, empty cells, when n is 1)."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in finals:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    metrics = [
        name
        for name in (finals[0] if finals else {})
        if name not in {"cell_id", "seed", "tick", *keys}
    ]
    out: list[Row] = []
    for combo, rows in groups.items():
        for name in metrics:
            values = [float(r[name]) for r in rows if r.get(name) is not None]
            if not values:
                continue
            mean, low, high = interval95(values)
            out.append(
                dict(zip(keys, combo, strict=True))
                | {"metric": name, "n": len(values), "mean": mean, "low": low, "high": high}
            )
    return out
