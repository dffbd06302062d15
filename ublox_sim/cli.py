"""The ``ublox-sim`` command line. Exit codes: 0 ok, 1 a run or check failed, 2 usage or input error.

Commands import the heavy parts (numpy, aiosqlite, the store) inside their bodies, so
``ublox-sim --help`` and every ``COMMAND --help`` answer without loading them.
Only ``run``, ``demo`` and ``import`` may create a store; every other command on a
folder without one exits 2 with "no store at PATH" and leaves the folder as it was.
Every command that opens a store takes ``--store URL|PATH`` (default ``$UBLOX_STORE``):
a ``postgresql://`` URL names a PostgreSQL database, a path a home like ``--home``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ParamSpec, TypeVar

import click

from . import __version__
from .core.errors import InvalidInput, UbloxError

if TYPE_CHECKING:
    from rich.console import Console

    from .store.home import Home
    from .store.open import PgStore

P = ParamSpec("P")
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped, in CI or under `make run` nobody resizes a window: rich's 80-column
        # default would break ids and amounts mid-value (`pto_harmon|ic_001`). Tables do
        # not expand, so a wide console just lets each row be as long as it is.
        console = Console(highlight=False, width=WIDE)
    return console


WIDE = 1000  # columns for output that is not a terminal (see _console)


def _errors_to_exit_codes(fn: Callable[P, T]) -> Callable[P, T]:
    """Our errors become one clear line on stderr and an exit code, not a traceback."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except InvalidInput as exc:
            click.echo(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", err=True)
            sys.exit(EXIT_USAGE)
        except UbloxError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except OSError as exc:
            # A full disk or a refused write is the machine's answer, not a bug: one line.
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def _holds_store(home: Home) -> bool:
    try:
        if home.db.stat().st_size > 0:
            return True
    except OSError:
        pass
    # A restore half done, or worlds without their database (a lost database): the
    # commands open it so that the store itself finishes the restore or says what is lost.
    return home.restore_marker.exists() or any(home.cdt_dir.glob("*.npz"))


# What a store folder may hold before it holds a store (a failed first open leaves these).
STORE_ENTRIES = frozenset(
    {
        ".lock",
        "ublox.db",
        "ublox.db-wal",
        "ublox.db-shm",
        "ublox.db-journal",
        "cdt_states",
        "backups",
    }
)


def _require_new_home(home: Home, option: str = "--home") -> None:
    """Refuse (exit 2, nothing created) a home that holds a store or anything else: a
    command that makes a store never writes over the user's data or beside their files.
    ``option`` is the one that named the home (for the message)."""
    if _holds_store(home):
        raise InvalidInput(f"{home.root} already holds a store; use a new {option}")
    others = sorted((_entries(home.root) or set()) - STORE_ENTRIES)
    if others:
        shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise InvalidInput(
            f"{home.root} is not empty and holds no store ({shown}); use a new or empty {option}"
        )


def _target(home: Path | None, store: str | None) -> Home | PgStore:
    """The store ``--home`` or ``--store`` names (one of them; else ``$UBLOX_STORE``, else
    the default home). A bad URL exits 2 naming it, password masked."""
    from .store.open import resolve_store

    return resolve_store(store, home=home)


def _where(target: Home | PgStore) -> Path | PgStore:
    """The store as messages name it: a home's folder, a database's URL (no password)."""
    from .store.home import Home

    return target.root if isinstance(target, Home) else target


def _existing_store(home: Path | None, store: str | None = None) -> Home | PgStore:
    """The store named, or exit 2 without creating anything (a mistyped path, or a
    database that holds no store: opening one would make its tables)."""
    from .store.home import Home

    target = _target(home, store)
    if isinstance(target, Home) and not _holds_store(target):
        raise InvalidInput(
            f"no store at {target.root} (`ublox-sim run`, `demo --home` or `import` make one)"
        )
    if not isinstance(target, Home) and not target.holds_store():
        raise InvalidInput(
            f"no store in {target} (`ublox-sim run --store`, `demo --store`, `import --store`"
            " or `serve --store` make one)"
        )
    return target


class Folder(click.Path):
    """A folder option's path; an empty one is refused (click would read ``--home ""``
    as the current folder, where a store would appear unasked)."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty name: give a folder", param, ctx)
        return super().convert(value, param, ctx)


home_option = click.option(
    "--home",
    type=Folder(),
    default=None,
    help="Store folder (default: $UBLOX_HOME, else ~/.ublox).",
)
store_option = click.option(
    "--store",
    default=None,
    metavar="URL|PATH",
    help="The store: postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or a home folder "
    "as --home (default: $UBLOX_STORE if set).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ublox-sim")
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="How log lines on stderr look.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(log_format: str, verbose: int) -> None:
    """ublox-sim: an async actor-based game-simulation backend."""
    from .core.logsetup import configure_logging

    level = {0: 30, 1: 20}.get(verbose, 10)
    configure_logging("json" if log_format == "json" else "console", level)


@main.command()
@click.option(
    "--home",
    type=Folder(),
    default=None,
    help="Keep the demo's store in this new (or empty) folder "
    "(default: a temporary home, deleted when the demo ends).",
)
@click.option(
    "--store",
    default=None,
    metavar="URL",
    help="Run the demo on this PostgreSQL database instead (postgresql://...; one that "
    "holds no store yet: the demo's rows stay there).",
)
@_errors_to_exit_codes
def demo(home: Path | None, store: str | None) -> None:
    """Run the seed's storage demo (in a temporary home unless --home or --store is given)."""
    from .sim.demo import DemoCheckFailed, run_demo
    from .store.home import Home
    from .store.open import PgStore, resolve_store

    try:
        if store is not None:
            if home is not None:
                raise click.UsageError("give --home or --store, not both")
            database = resolve_store(store)
            if not isinstance(database, PgStore):
                raise click.BadParameter("takes a postgresql:// URL", param_hint="--store")
            run_demo(database)
            return
        if home is not None:
            target = Home.resolve(home)
            _require_new_home(target)  # the demo writes alice over whatever is there
            run_demo(target.root)
            return
        with tempfile.TemporaryDirectory(prefix="ublox-demo-") as tmp:
            run_demo(Path(tmp) / "ublox", temporary=True)
            click.echo(
                f"the temporary home {tmp} is deleted now; "
                "`ublox-sim demo --home DIR` keeps the store"
            )
    except DemoCheckFailed as exc:
        click.echo(f"demo check failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument(
    "scenario", required=False, type=click.Path(dir_okay=False, path_type=Path), default=None
)
@home_option
@store_option
@click.option("--seed", type=int, default=None, help="Replace the scenario's seed.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a scenario value."
)
@click.option("--resume", is_flag=True, help="Continue the checkpointed run in --home.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@click.option(
    "--synchronous",
    type=click.Choice(["NORMAL", "FULL"]),
    default="NORMAL",
    show_default=True,
    help="SQLite durability: FULL also survives power loss.",
)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write per-tick metrics to this .csv or .parquet file.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Hold the worlds in Ray actors: on the cluster at ADDRESS (auto, ray://HOST:PORT), "
    "or, given alone, on a local Ray instance started for the run.",
)
@click.option(
    "--ray-workers",
    type=int,
    default=None,
    help="Shard actors for --ray (default: the cluster's CPUs).",
)
@click.option(
    "--physics",
    type=click.Choice(["auto", "thread", "process"]),
    default="auto",
    show_default=True,
    help="Where the ticks' world physics runs: a worker process with the worlds in shared "
    "memory (a core of its own), or a thread of this process; auto: the process when this "
    "process may use 2 or more CPUs. Same results either way.",
)
@_errors_to_exit_codes
def run(
    scenario: Path | None,
    home: Path | None,
    store: str | None,
    seed: int | None,
    overrides: tuple[str, ...],
    resume: bool,
    as_json: bool,
    synchronous: str,
    metrics_path: Path | None,
    ray_address: str | None,
    ray_workers: int | None,
    physics: str,
) -> None:
    """Run a scenario (deterministic, checkpointed; --resume continues a killed run).

    Ctrl-C stops at the next tick and exits 130; the run resumes from its last checkpoint.
    With --ray the worlds' shards live in Ray actors (same results: see the README).
    Otherwise the ticks' physics runs in a worker process when 2 CPUs are usable
    (--physics)."""
    import anyio

    from .sim.process_shards import PhysicsStats, ProcessWorldShards
    from .sim.ray_shards import RayRun, run_on_ray
    from .sim.report import already_finished, print_report
    from .sim.runner import recorded_scenario, run_scenario
    from .sim.scenario import load_scenario
    from .store.home import Home

    target = _target(home, store)
    if ray_workers is not None and ray_address is None:
        raise click.UsageError("--ray-workers needs --ray")
    if physics == "process" and ray_address is not None:
        raise click.UsageError("--physics process is not for --ray (its shards are Ray actors)")
    stats: PhysicsStats | None = None
    if ray_address is None and _physics_in_process(physics):
        stats = PhysicsStats()
    ray = (
        None
        if ray_address is None
        else RayRun(None if ray_address == RAY_LOCAL else ray_address, ray_workers)
    )
    if metrics_path is not None:
        from .sim.metrics import check_table_path

        check_table_path(metrics_path)  # before running, not after an hour's run
        folder = metrics_path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            why = "is not a folder that can be written" if folder.is_dir() else "does not exist"
            raise InvalidInput(f"--metrics {metrics_path}: {folder} {why}")
        if not isinstance(target, Home):
            raise InvalidInput("--metrics keeps its rows in a home folder: use --home, not --store")
    if scenario is None:
        if not resume:
            raise click.UsageError("give a SCENARIO file (or --resume with --home)")
        if seed is not None or overrides:
            # Without the file the recorded scenario runs as it is: they would be ignored.
            raise click.UsageError(
                "--seed and --set change a scenario: to resume, give its file with the "
                "same --set and --seed as the run (without the file it resumes as recorded)"
            )
        loaded = recorded_scenario(target)
    else:
        loaded = load_scenario(scenario, overrides=overrides, seed=seed)
    if not resume and isinstance(target, Home) and not _holds_store(target):
        # A store is refused by the runner, which knows whether its run is finished.
        _require_new_home(target)
    console = _console()
    show_progress = console.is_terminal and not as_json
    reached = [0]  # the last tick done, for the message if Ctrl-C stops the run

    def work(progress: Callable[[int, int], None]) -> Any:
        def track(done: int, total: int) -> None:
            reached[0] = done
            progress(done, total)

        # The first Ctrl-C asks the run to stop between two ticks (an asyncio
        # cancellation could be absorbed by a shielded commit and lost); a second one
        # interrupts at once, as usual.
        pressed = threading.Event()

        def on_sigint(signum: int, frame: object) -> None:
            pressed.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            options: dict[str, Any] = {
                "resume": resume,
                "progress": track,
                "synchronous": synchronous,
                "interrupted": pressed.is_set,
                "collect_metrics": metrics_path is not None,
                "freeze_heap": True,  # this process is the run's own (see run_scenario)
            }
            if ray is not None:
                return anyio.run(lambda: run_on_ray(loaded, target, ray, **options))
            if stats is not None:
                options["worlds"] = partial(ProcessWorldShards, stats=stats)
            return anyio.run(lambda: run_scenario(loaded, target, **options))
        finally:
            signal.signal(signal.SIGINT, previous)

    stopped: tuple[str, int] | None = None
    try:
        if show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task(loaded.scenario.name, total=loaded.scenario.clock.total_ticks)
                report = work(lambda done, total: bar.update(task, completed=done))
        else:
            report = work(lambda done, total: None)
    except KeyboardInterrupt:
        stopped = ("interrupted", EXIT_INTERRUPTED)
    except MemoryError as exc:
        # One line, not numpy's traceback through the engine: the cause and the way on,
        # said once the except clause has dropped the traceback and the arrays it held.
        said = (str(exc) or type(exc).__name__).splitlines()[0]
        stopped = (f"error: out of memory ({said})", EXIT_FAILED)
    if stopped is not None:
        again = _run_command(
            scenario, target, seed, overrides, metrics_path, synchronous, ray_address, ray_workers
        )
        _say_stopped(stopped[0], target, reached[0], again)
        sys.exit(stopped[1])
    if metrics_path is not None:
        from .sim.metrics import read_metrics, write_table

        assert isinstance(target, Home)  # checked above
        write_table(read_metrics(target), metrics_path)
    if as_json:
        if already_finished(report):
            click.echo(f"{report.name}: the run in {_where(target)} had already finished", err=True)
        data = report.to_dict()
        data["totals"] = json_figures(data["totals"])
        # Where the physics ran, and this process's own peak RSS (its worker's is apart).
        data["physics"] = {"mode": "ray" if ray is not None else "thread"}
        if stats is not None:
            data["physics"] = stats.to_dict()
        data["physics"]["main_peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        print_report(report, target, console)


def _physics_in_process(physics: str) -> bool:
    """``run --physics``: whether the ticks' physics runs in a worker process (``auto``:
    when this process may use two CPUs or more, so the worker has a core beside the loop,
    and the system has memfds, its shared memory: Linux)."""
    if physics != "auto":
        return physics == "process"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (usable or 1) >= 2 and hasattr(os, "memfd_create")


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C
RAY_LOCAL = "local"  # `sweep --ray` given alone: a local Ray instance for the sweep


@main.command()
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", default="1", show_default=True, help="Seeds: N, A-B, or a comma list.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY.PATH=V1,V2,...",
    help="Sweep a scenario value over these values (repeat for a grid).",
)
@click.option("--jobs", type=int, default=None, help="Worker processes (default: the CPU count).")
@click.option(
    "--out",
    type=Folder(),
    required=True,
    help="The sweep's folder (cells' homes and tables); rerun to resume.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value=RAY_LOCAL,
    default=None,
    metavar="[ADDRESS]",
    help="Run the cells as Ray tasks: on the cluster at ADDRESS (auto, ray://HOST:PORT), "
    "or, given alone, on a local Ray instance of --jobs CPUs started for the sweep.",
)
@_errors_to_exit_codes
def sweep(
    scenario: Path,
    seeds: str,
    sets: tuple[str, ...],
    jobs: int | None,
    out: Path,
    ray_address: str | None,
) -> None:
    """Run SCENARIO over the grid of --set values times --seeds, each cell in its own home.

    The scenario with every --set value and seed is checked first (exit 2, nothing
    written, if one is refused), and --out must be new, empty or a sweep's folder. A
    cell that fails is reported and the others go on (exit 1 at the end); running the
    same command again skips finished cells and resumes checkpointed ones."""
    from .sim.sweep import (
        Executor,
        LocalExecutor,
        SweepProgress,
        check_sweep,
        grid,
        parse_seeds,
        parse_set,
        run_sweep,
    )

    try:
        seed_list = parse_seeds(seeds)
        swept = [parse_set(item) for item in sets]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if jobs is not None and jobs < 1:
        raise click.BadParameter(f"at least 1 worker process (got {jobs})", param_hint="--jobs")
    cells = grid(str(scenario), swept, seed_list)
    check_sweep(cells, out)  # every value and the --out folder, before anything is written
    workers = jobs if jobs is not None else max(1, os.cpu_count() or 1)

    def progress(p: SweepProgress) -> None:
        last = p.last
        assert last is not None
        eta = "" if p.eta_seconds is None else f", ETA {_duration(p.eta_seconds)}"
        what = f"{last.how} in {last.seconds:.1f} s" if last.ok else "FAILED"
        click.echo(
            f"[{p.done + p.failed}/{p.total}] done {p.done}, running {p.running}, "
            f"failed {p.failed}{eta} · {last.cell.cell_id} {what}",
            err=True,
        )
        if not last.ok:
            click.echo(f"  {last.cell.cell_id}: {last.error}", err=True)

    with ExitStack() as session:
        executor: Executor = LocalExecutor(min(workers, len(cells)))
        where = f"{workers} job(s)"
        if ray_address is not None:
            from .sim.ray_executor import RayExecutor

            if ray_address != RAY_LOCAL and jobs is not None:
                raise click.BadParameter(
                    "the cluster's CPUs decide, not --jobs", param_hint="--ray"
                )
            local = ray_address == RAY_LOCAL
            # Connected before the sweep writes anything: a wrong address changes nothing.
            ray = session.enter_context(
                RayExecutor(None if local else ray_address, num_cpus=workers if local else None)
            )
            executor = ray
            where = (
                f"Ray, a local instance of {workers} CPU(s)"
                if local
                else f"Ray at {ray_address}, {ray.jobs} CPU(s)"
            )
        click.echo(f"sweep: {len(cells)} cells in {out}, {where}", err=True)
        try:
            result = run_sweep(cells, out, executor, progress)
        except KeyboardInterrupt:
            _say_sweep_interrupted(scenario, seeds, sets, jobs, out, ray_address)
            sys.exit(EXIT_INTERRUPTED)
    ran = sum(r.seconds for r in result.results if r.how in ("ran", "resumed"))
    ok = len(result.results) - len(result.failed)
    click.echo(
        f"{ok} of {len(cells)} cells done, {len(result.failed)} failed; "
        f"wall {_duration(result.wall_seconds)}, cells' own time {_duration(ran)}"
        + (f" ({result.wall_seconds / ran:.2f}x)" if ran > 0 else "")
        + f"; tables in {out}"
    )
    for failed in result.failed:
        click.echo(f"failed {failed.cell.cell_id}: {failed.error}", err=True)
    if not result.tables_written:
        click.echo(
            f"no cell finished: the tables in {out} were not written (those there, if any, "
            "are kept as they were)",
            err=True,
        )
    if result.failed:
        sys.exit(EXIT_FAILED)


def _say_sweep_interrupted(
    scenario: Path,
    seeds: str,
    sets: tuple[str, ...],
    jobs: int | None,
    out: Path,
    ray_address: str | None,
) -> None:
    """The exact command that continues a sweep stopped by Ctrl-C (finished cells are
    skipped, checkpointed ones resume)."""
    import shlex

    from .sim.sweep import CELLS

    finished = sum(1 for _ in (out / CELLS).glob("*/export.json"))
    words = ["ublox-sim", "sweep", str(scenario), "--seeds", seeds]
    for item in sets:
        words += ["--set", item]
    if jobs is not None:
        words += ["--jobs", str(jobs)]
    if ray_address is not None:
        words.append("--ray" if ray_address == RAY_LOCAL else f"--ray={ray_address}")
    words += ["--out", str(out)]
    click.echo(
        f"interrupted with {finished} cell(s) finished in {out} (the others resume from "
        f"their last checkpoint); continue with `{shlex.join(words)}`",
        err=True,
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=Folder(),
    default=None,
    help="Where the figures go (default: PATH/plots).",
)
@_errors_to_exit_codes
def plot(path: Path, out: Path | None) -> None:
    """Draw PNG and SVG figures of a run's home (run with --metrics) or a sweep's folder."""
    from .sim.plot import plot_any

    for written in plot_any(path, out):
        click.echo(str(written))


def _say_stopped(cause: str, home: Home | PgStore, reached: int, again: list[str]) -> None:
    """Where a stopped run (Ctrl-C, out of memory) was left, and the exact command that
    continues it: ``again`` is the run's own command line without ``--resume`` (the same
    file, --set and --seed: a resume checks that the scenario is the recorded one; the
    same store, --metrics and the options that say how it runs)."""
    import shlex

    from .store.home import Home

    try:
        if isinstance(home, Home):
            from .store.sqlite.backend import read_run_record

            run = read_run_record(home)
        else:  # asyncpg is imported only for a PostgreSQL store
            from .store.postgres.backend import read_run_record as read_pg_run

            run = read_pg_run(home.url)
    except InvalidInput:  # no store, or no run in it yet
        run = None
    if run is None:
        # Stopped during the set-up: the store kept nothing of the run, so it starts over.
        click.echo(
            f"{cause} at tick {reached}, before the first checkpoint; "
            f"start it again with `{shlex.join(again)}`",
            err=True,
        )
        return
    at = next(i for i, word in enumerate(again) if word in ("--home", "--store"))
    click.echo(
        f"{cause} at tick {reached} (it resumes from its checkpoint at tick {run.tick}); "
        f"continue with `{shlex.join([*again[:at], '--resume', *again[at:]])}`",
        err=True,
    )


def _run_command(
    scenario: Path | None,
    home: Home | PgStore,
    seed: int | None,
    overrides: tuple[str, ...],
    metrics_path: Path | None,
    synchronous: str,
    ray_address: str | None,
    ray_workers: int | None,
) -> list[str]:
    """``ublox-sim run`` with the options that matter to continue this run."""
    from .store.home import Home

    words = ["ublox-sim", "run"]
    if scenario is not None:
        words.append(str(scenario))
    for override in overrides:
        words += ["--set", override]
    if seed is not None:
        words += ["--seed", str(seed)]
    if isinstance(home, Home):
        words += ["--home", str(home.root)]
    else:
        words += ["--store", str(home)]  # the password masked: the user knows it
    if metrics_path is not None:
        words += ["--metrics", str(metrics_path)]
    if synchronous != "NORMAL":
        words += ["--synchronous", synchronous]
    if ray_workers is not None:
        words += ["--ray-workers", str(ray_workers)]
    if ray_address is not None:  # last: given alone, --ray takes no value
        words += ["--ray"] if ray_address == RAY_LOCAL else ["--ray", ray_address]
    return words


@main.command()
@click.argument(
    "which",
    type=click.Choice(["persistence", "cdt", "simulation", "scale", "hot", "all"]),
    default="all",
)
@click.option("--quick", is_flag=True, help="Smaller sizes: the whole set in under two minutes.")
@click.option("--size", type=click.Choice(["tiny", "quick", "full"]), default=None, hidden=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--players",
    type=int,
    default=None,
    help="scale: players in the large store (default 1,000,000; --quick 100,000).",
)
@click.option(
    "--store",
    default=None,
    metavar="URL",
    help="persistence: also measure PostgreSQL at this postgresql:// URL (1, 2 and 4 "
    "processes; in a schema of its own, dropped after) next to SQLite.",
)
@click.option(
    "--ray",
    "on_ray",
    is_flag=True,
    help="simulation: a physics-heavy run single-process and on a local Ray instance of 1 "
    "and 2 workers.",
)
@_errors_to_exit_codes
def bench(
    which: str,
    quick: bool,
    size: str | None,
    json_path: Path | None,
    players: int | None,
    store: str | None,
    on_ray: bool,
) -> None:
    """Measure persistence, CDT flushing, simulation speed and a hot PTO (100 buyers on
    one PTO, through the Engine and HTTP) against their baselines (`all`), or a store of
    a million players (`scale`, run on its own)."""
    from .bench.run import main as run_benchmarks

    if players is not None and (which != "scale" or players < 2_000):
        raise click.BadParameter("takes 2,000 or more, with `scale`", param_hint="--players")
    chosen = size or ("quick" if quick else "full")
    if on_ray:
        if which != "simulation" or store is not None:
            raise click.BadParameter("goes with `simulation` alone", param_hint="--ray")
        which = "simulation_ray"
    url = None
    if store is not None:
        from .store.open import PgStore, resolve_store

        if which not in ("persistence", "all"):
            raise click.BadParameter("goes with `persistence`", param_hint="--store")
        target = resolve_store(store) if "://" in store else None
        if not isinstance(target, PgStore):
            raise click.BadParameter("takes a postgresql:// URL", param_hint="--store")
        url = target.url
    report = run_benchmarks(which, chosen, None if url else json_path, players=players)
    if url is not None:
        from .bench import persistence_pg

        click.echo(f"== persistence on PostgreSQL ({chosen}) ==")
        report["persistence_pg"] = persistence_pg.bench(chosen, url)
        click.echo(persistence_pg.show(report["persistence_pg"]))
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            click.echo(f"wrote {json_path}")


EXIT_PORT_BUSY = 4  # serve: the address is in use (documented in --help)


@main.command()
@home_option
@store_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Play this scenario live, in simulated time (refused on a home that holds a store).",
)
@click.option("--speed", default=2.0, show_default=True, help="Scenario ticks per second.")
@click.option("--seed", type=int, default=None)
@click.option(
    "--tick",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Without a scenario: seconds of wall time between world steps and deadline checks.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Another host name the server answers to (repeatable); localhost, 127.0.0.1 "
    "and ::1 are always answered, so the printed local URL works.",
)
@click.option("--cors-origin", "cors_origins", multiple=True, help="Origins allowed by CORS.")
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request body it announced (then 408).",
)
@click.option(
    "--token-ttl",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Lifetime of player tokens in seconds.",
)
@click.option(
    "--advertise",
    metavar="URL",
    default=None,
    help="Several servers on one database: the URL where the others reach this one, to "
    "forward it the plays of the worlds it steps (default: http://HOST:PORT; the machine's "
    "name when --host is a wildcard).",
)
@click.option(
    "--exclusive",
    is_flag=True,
    help="PostgreSQL: hold the database alone (1.4-1.7x one shared process's throughput; "
    "other processes are refused, and this one is refused while others share it). By "
    "default a server shares it (UBLOX_CLUSTER=0 also says exclusive); a --scenario "
    "server is always alone.",
)
@_errors_to_exit_codes
def serve(
    home: Path | None,
    store: str | None,
    host: str,
    port: int,
    scenario: Path | None,
    speed: float,
    seed: int | None,
    tick: float,
    allowed_hosts: tuple[str, ...],
    cors_origins: tuple[str, ...],
    read_timeout: float,
    token_ttl: int,
    advertise: str | None,
    exclusive: bool,
) -> None:
    """Serve the JSON API, live events and the dashboard (needs the [server] extra).

    Exit codes: 2 bad usage or scenario, 4 the port is busy. The operator's key is
    UBLOX_ADMIN_KEY or <home>/admin.key (created on first start; with a --store URL, in
    the default home)."""
    try:
        from .server import LOCAL_HOSTS, PortBusy, ServerConfig, bind
        from .server import serve as run_server
        from .server.auth import AuthSetupError, load_admin_key
    except ImportError as exc:
        raise click.UsageError(
            f"the server needs its extra: pip install 'ublox-sim[server]' ({exc})"
        ) from exc
    from .store.home import Home
    from .store.sync import UbloxLocalStorage

    target = _target(home, store)
    if advertise is not None:
        _check_advertised(advertise)
    # The admin key's folder: the home, or for a database the default home.
    root = target if isinstance(target, Home) else Home.resolve(None)
    if scenario is not None:
        from .sim.scenario import load_scenario

        load_scenario(scenario, seed=seed)  # a ScenarioError is file:line: key: message, exit 2
        if not isinstance(target, Home) or root.db.is_file():
            with UbloxLocalStorage(store=target) as storage:
                counts = storage.get_global_stats()
                if any(counts[t]["count"] for t in ("players", "ptos", "transactions")):
                    raise InvalidInput(
                        f"{_where(target)} already holds a store: a scenario is served into a "
                        "new --home (it would replay from tick 0 over this one)"
                    )
    try:
        sock = bind(host, port)
    except PortBusy as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_PORT_BUSY)
    try:
        key, key_file, created = load_admin_key(root.root)
    except AuthSetupError as exc:
        sock.close()
        raise click.UsageError(str(exc)) from exc
    if created:
        click.echo(f"operator admin key written to {key_file} (mode 0600); keep it secret")
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    if advertise is None:
        advertise = _advertised(host, sock.getsockname()[1])
    config = ServerConfig(
        # The others forward plays to the advertised address: its name is answered too.
        allowed_hosts=(*LOCAL_HOSTS, *allowed_hosts, _host_of(advertise)),
        advertise=advertise,
        cors_origins=cors_origins,
        token_ttl=token_ttl,
        read_timeout=read_timeout,
        tick_seconds=tick,
        admin_key=key,
        shared=False if exclusive else None,
    )
    run_server(
        # Engine.open reads a URL given as the home as the store it names.
        home if isinstance(target, Home) else target.url,
        sock,
        scenario=scenario,
        ticks_per_second=speed,
        seed=seed,
        config=config,
        on_ready=lambda: click.echo(f"ublox-sim serving {_where(target)} on {url}"),
    )


def _check_advertised(url: str) -> None:
    """``--advertise`` must be an http(s) URL naming a host (exit 2 otherwise)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidInput(f"--advertise must be http://HOST[:PORT] or https://..., got {url!r}")


def _advertised(host: str, port: int) -> str:
    """Where the other servers reach this one: --host, or this machine's name when it
    listens on every interface."""
    import socket

    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


@main.command()
@home_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors_to_exit_codes
def stats(home: Path | None, store: str | None, as_json: bool) -> None:
    """Counts and totals of the store."""
    from rich.table import Table

    from .store.sync import UbloxLocalStorage

    target = _existing_store(home, store)
    with UbloxLocalStorage(store=target) as storage:
        data = storage.get_global_stats()
    if as_json:
        click.echo(json.dumps(json_figures(data), indent=2, sort_keys=True))
        return
    table = Table("table", "figure", "value", title=f"ublox store {_where(target)}")
    table.columns[2].justify = "right"
    for name, figures in data.items():
        for figure, value in stat_rows(figures):
            table.add_row(name, figure, value)
    _console().print(table)


# How each figure of `stats` reads: money in major units with two decimals, sums of
# hours and means of scores rounded (they are sums of REAL columns, so float noise
# like 144.75000000000003 is not information).
MONEY_FIGURES = frozenset(
    {
        "usd_obbba_total",
        "xUSD_total",
        "funding_raised_total",
        "xUSD_pool_total",
        "purchase_price_total",
        "xUSD_earned_total",
        "volume",
    }
)
HOUR_FIGURES = frozenset(
    {"total_play_time", "hours_committed_total", "hours_played_total", "duration_total"}
)
SCORE_FIGURES = frozenset({"quality_mean"})


def stat_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """One (figure, value) row per number; a breakdown (by status, by type) is a row per item."""
    rows: list[tuple[str, str]] = []
    for figure, value in figures.items():
        if isinstance(value, dict):
            if not value:
                rows.append((figure, "none"))
            for key, item in sorted(value.items()):
                rows.append((f"{figure} {key}", _figure(figure, item)))
        else:
            rows.append((figure, _figure(figure, value)))
    return rows


def json_figures(tables: dict[str, Any]) -> dict[str, Any]:
    """``stats`` as JSON with the conventions of ``run --json``: money as exact strings
    with two decimals, sums of hours rounded to 2 decimals and means of scores to 4
    (float noise like 144.75000000000003 is not information); counts stay integers."""

    def one(figure: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: one(figure, item) for key, item in value.items()}
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if figure in MONEY_FIGURES:
            return _figure(figure, value)
        if figure in HOUR_FIGURES:
            return round(float(value), 2)
        if figure in SCORE_FIGURES:
            return round(float(value), 4)
        return value

    return {
        name: {figure: one(figure, value) for figure, value in figures.items()}
        if isinstance(figures, dict)
        else figures
        for name, figures in tables.items()
    }


def _figure(figure: str, value: Any) -> str:
    from decimal import Decimal

    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return str(value)
    if figure in MONEY_FIGURES:
        from .core.money import format_amount

        return format_amount(value)
    if figure in HOUR_FIGURES:
        return f"{value:.2f}"
    if figure in SCORE_FIGURES:
        return f"{value:.3f}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


@main.command("export")
@home_option
@store_option
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="PATH",
    help="Where to write (default <home>/export.json); - for standard output. A regular "
    "file is replaced atomically; a pipe or a character device is written through.",
)
@_errors_to_exit_codes
def export_cmd(home: Path | None, store: str | None, output: str | None) -> None:
    """Write the full JSON export (default <home>/export.json; a database needs -o)."""
    from .store.sync import UbloxLocalStorage

    _exit_on_sigterm()
    target = _existing_store(home, store)
    if output is None:
        with UbloxLocalStorage(store=target) as storage:
            click.echo(str(storage.export_to_json()))
        return
    if output == "-":
        with tempfile.TemporaryDirectory(prefix="ublox-export-") as tmp:
            staged = Path(tmp) / "export.json"
            with UbloxLocalStorage(store=target) as storage:
                storage.export_to_json(staged)
            _copy_to_stdout(staged)
        return
    destination = Path(output)
    try:
        if _streams_into(destination):
            with tempfile.TemporaryDirectory(prefix="ublox-export-") as tmp:
                staged = Path(tmp) / "export.json"
                with UbloxLocalStorage(store=target) as storage:
                    storage.export_to_json(staged)
                with open(staged, "rb") as source, open(destination, "wb") as sink:
                    _pump(source, sink)
            # No "wrote PATH" line: the pipe or terminal may well be our own stdout.
            return
        _replace_with_export(target, destination)
    except OSError as exc:
        click.echo(f"error: cannot write the export to {destination}: {exc.strerror}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(str(destination))


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: the staged copy of the export (a full copy of the
    store's data, in a temporary folder) is removed by the finally-blocks instead of being
    left behind when, say, a writer blocked on a FIFO nobody reads is killed."""
    import signal

    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


def _streams_into(path: Path) -> bool:
    """True for a pipe or a character device (written through), False for a regular file
    or a new name (replaced atomically). Anything else is refused: replacing it would
    destroy what the name stands for (a directory's contents, a disk)."""
    try:
        mode = path.stat().st_mode  # follows symlinks: /dev/stdout says what it points at
    except FileNotFoundError:
        if not path.absolute().parent.is_dir():
            raise InvalidInput(
                f"cannot write the export to {path}: there is no folder {path.absolute().parent}"
            ) from None
        return False
    except OSError as exc:
        raise InvalidInput(f"cannot write the export to {path}: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        return False
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return True
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file, a pipe or a terminal"
    raise InvalidInput(f"cannot write the export to {path}: it is {kind}; give a file path")


def _replace_with_export(home: Home | PgStore, destination: Path) -> None:
    from .store.sync import UbloxLocalStorage

    # Replace the file a symlink points at, never the symlink. The store writes the export
    # atomically beside it first, so the swap is one rename: a reader sees the old export
    # or the new one, and a failed write leaves the old one in place.
    final = Path(os.path.realpath(destination))
    staged = final.with_name(f".{final.name}.{os.getpid()}.export")
    try:
        with UbloxLocalStorage(store=home) as storage:
            storage.export_to_json(staged)
        os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _pump(source: BinaryIO, sink: BinaryIO) -> None:
    while chunk := source.read(1 << 16):
        sink.write(chunk)


def _copy_to_stdout(staged: Path) -> None:
    out = sys.stdout.buffer
    try:
        with open(staged, "rb") as source:
            _pump(source, out)
        out.flush()
    except OSError as exc:
        # Whatever did not go out must not be flushed again at exit (a second error,
        # or "Exception ignored" noise): what is left goes to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(exc, BrokenPipeError):  # a reader that left (`| head`) is no error
            click.echo(
                f"error: cannot write the export to standard output: {exc.strerror}", err=True
            )
        sys.exit(EXIT_FAILED)


@main.command("import")
@home_option
@store_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Accept an export edited since it was written.")
@_errors_to_exit_codes
def import_cmd(home: Path | None, store: str | None, path: Path, force: bool) -> None:
    """Load an export into an empty home or database as it is (refused if damaged or edited)."""
    from .store.home import Home
    from .store.sync import UbloxLocalStorage

    chosen = _target(home, store)
    if not isinstance(chosen, Home):
        # One unit, worlds included: a refused import leaves the database as it was.
        with UbloxLocalStorage(store=chosen) as storage:
            warnings = storage.import_from_json(path, force=force)
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"imported {path} into {chosen}")
        return
    target = chosen
    # A refused import into a new home leaves no store behind: nothing of a store that
    # holds nothing, and no world files without their database (a "lost database").
    new_home = not _holds_store(target)
    if new_home:
        _require_new_home(target)  # an export never lands beside the user's own files
    before = _entries(target.root) if new_home else None
    try:
        with UbloxLocalStorage(store=target) as storage:
            warnings = storage.import_from_json(path, force=force)
    except BaseException:
        if new_home:
            _remove_new_entries(target.root, before)
        raise
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"imported {path} into {target.root}")


def _entries(root: Path) -> set[str] | None:
    """The names in ``root``, or None if there is no such folder."""
    try:
        return {entry.name for entry in os.scandir(root)}
    except FileNotFoundError:
        return None


def _remove_new_entries(root: Path, before: set[str] | None) -> None:
    import shutil

    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for name in (_entries(root) or set()) - before:
        entry = root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@main.group()
def backup() -> None:
    """Create, list and restore consistent snapshots under <home>/backups/."""


@backup.command("create")
@home_option
@store_option
@click.argument("name", required=False)
@_errors_to_exit_codes
def backup_create(home: Path | None, store: str | None, name: str | None) -> None:
    """Snapshot the store as backups/NAME (default backup_<UTC time>); a database's
    snapshots go to <default home>/pg_backups/HOST_PORT_DB/."""
    from .store.sync import UbloxLocalStorage

    target = _existing_store(home, store)
    with UbloxLocalStorage(store=target) as storage:
        click.echo(str(storage.create_backup(name)))


@backup.command("list")
@home_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (sizes in bytes).")
@_errors_to_exit_codes
def backup_list(home: Path | None, store: str | None, as_json: bool) -> None:
    """The backups of the store, oldest first."""
    from .store.backup import list_backups
    from .store.home import Home
    from .store.open import default_backup_root

    target = _existing_store(home, store)
    if isinstance(target, Home):
        items, folder = list_backups(target), target.backups
    else:
        from .store.sync import UbloxLocalStorage

        with UbloxLocalStorage(store=target) as storage:
            items, folder = storage.list_backups(), default_backup_root(target)
    if as_json:
        click.echo(json.dumps(items, indent=2, sort_keys=True))
        return
    if not items:
        click.echo(f"no backups in {folder} (`ublox-sim backup create` makes one)")
        return
    from rich.table import Table

    table = Table("name", "created", "size", title=f"backups in {folder}")
    table.columns[2].justify = "right"
    for item in items:
        table.add_row(item["name"], item["created"], f"{item['size'] / 1024:,.1f} KB")
    _console().print(table)


@backup.command("restore")
@home_option
@store_option
@click.argument("name")
@click.option("--force", is_flag=True, help="Accept a backup edited since it was made.")
@_errors_to_exit_codes
def backup_restore(home: Path | None, store: str | None, name: str, force: bool) -> None:
    """Replace the store with backup NAME (checked first; the old state is kept)."""
    from .store.backup import restore_lost_store
    from .store.home import Home, database_lost
    from .store.sync import UbloxLocalStorage

    target = _existing_store(home, store)
    if isinstance(target, Home) and database_lost(target):
        # No store can open over a lost database, so the restore happens offline.
        warnings = restore_lost_store(target, name, force=force)
    else:
        with UbloxLocalStorage(store=target) as storage:
            warnings = storage.restore_backup(name, force=force)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"restored {name}; the previous state is kept as a pre_restore_* backup")


@main.command()
@click.option(
    "--from", "source", required=True, metavar="URL|PATH", help="The store to copy (kept as it is)."
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL|PATH",
    help="A new store: an empty database or home.",
)
@_errors_to_exit_codes
def migrate(source: str, target: str) -> None:
    """Copy a store to another backend (a home to a postgresql:// database, or back), then
    check that both export the same bytes and hold the same worlds. Exit 2 if the target
    is not new (nothing written), 1 if the copy does not compare equal."""
    import anyio

    from .store.home import Home
    from .store.migrate import migrate_store

    to = _target(None, target)
    if isinstance(to, Home):
        _require_new_home(to, "--to")
    src = _existing_store(None, source)  # a mistyped --from creates nothing at either end
    done = anyio.run(lambda: migrate_store(src, to))
    for line in done.lines():
        click.echo(line)


@main.command()
@home_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@_errors_to_exit_codes
def verify(home: Path | None, store: str | None, as_json: bool) -> None:
    """Check schema, integrity, ledger vs balances, escrow, tokens, sessions and CDT files."""
    from .store.home import Home
    from .store.verify import verify_store

    target = _existing_store(home, store)
    root = _where(target)
    if isinstance(target, Home):
        findings = verify_store(target.root)
    else:
        from .store.sync import UbloxLocalStorage

        with UbloxLocalStorage(store=target) as storage:
            findings = storage.verify()
    if as_json:
        items: list[dict[str, Any]] = [
            {"check": f.check, "subject": f.subject, "message": f.message} for f in findings
        ]
        click.echo(json.dumps({"ok": not findings, "findings": items}, indent=2))
    elif findings:
        for finding in findings:
            click.echo(str(finding))
        click.echo(f"verify: {len(findings)} problem(s) in {root}")
    else:
        click.echo(f"verify: ok ({root})")
    sys.exit(EXIT_FAILED if findings else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
