"""The ``ublox-sim`` command line. Exit codes: 0 ok, 1 a run or check failed, 2 usage or input error."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import InvalidInput, UbloxError
from .logsetup import configure_logging
from .storage import UbloxLocalStorage
from .store import Home
from .verify import verify_store

P = ParamSpec("P")
T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2


def _console() -> Console:
    return Console(highlight=False)


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

    return wrapper


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store folder (default: $UBLOX_HOME, else ~/.ublox).",
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
    level = {0: 30, 1: 20}.get(verbose, 10)
    configure_logging("json" if log_format == "json" else "console", level)


@main.command()
@home_option
def demo(home: Path | None) -> None:
    """Run the seed's storage demo (in a temporary home unless --home is given)."""
    from .demo import DemoCheckFailed, run_demo

    try:
        if home is not None:
            run_demo(Home.resolve(home).root)
            return
        with tempfile.TemporaryDirectory(prefix="ublox-demo-") as tmp:
            run_demo(Path(tmp) / "ublox")
    except DemoCheckFailed as exc:
        click.echo(f"demo check failed: {exc}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument(
    "scenario", required=False, type=click.Path(dir_okay=False, path_type=Path), default=None
)
@home_option
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
@_errors_to_exit_codes
def run(
    scenario: Path | None,
    home: Path | None,
    seed: int | None,
    overrides: tuple[str, ...],
    resume: bool,
    as_json: bool,
    synchronous: str,
) -> None:
    """Run a scenario (deterministic, checkpointed; --resume continues a killed run)."""
    import anyio

    from .report import print_report
    from .runner import recorded_scenario, run_scenario
    from .scenario import load_scenario

    target = Home.resolve(home)
    if scenario is None:
        if not resume:
            raise click.UsageError("give a SCENARIO file (or --resume with --home)")
        loaded = recorded_scenario(target)
    else:
        loaded = load_scenario(scenario, overrides=overrides, seed=seed)
    console = _console()
    show_progress = console.is_terminal and not as_json
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

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done)

            report = anyio.run(
                lambda: run_scenario(
                    loaded, target, resume=resume, progress=progress, synchronous=synchronous
                )
            )
    else:
        report = anyio.run(
            lambda: run_scenario(loaded, target, resume=resume, synchronous=synchronous)
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print_report(report, target, console)


@main.command()
@click.argument(
    "which", type=click.Choice(["persistence", "cdt", "simulation", "all"]), default="all"
)
@click.option("--quick", is_flag=True, help="Smaller sizes: the whole set in under two minutes.")
@click.option("--size", type=click.Choice(["tiny", "quick", "full"]), default=None, hidden=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def bench(which: str, quick: bool, size: str | None, json_path: Path | None) -> None:
    """Measure persistence, CDT flushing and simulation speed against their baselines."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        raise click.UsageError("the benchmarks live in the source tree: run from a checkout")
    sys.path.insert(0, str(root))
    from benchmarks.run import main as run_benchmarks

    run_benchmarks(which, size or ("quick" if quick else "full"), json_path)


EXIT_PORT_BUSY = 4  # serve: the address is in use (documented in --help)


@main.command()
@home_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
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
    help="Host names the server answers to (default: localhost, 127.0.0.1).",
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
@_errors_to_exit_codes
def serve(
    home: Path | None,
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
) -> None:
    """Serve the JSON API, live events and the dashboard (needs the [server] extra).

    Exit codes: 2 bad usage or scenario, 4 the port is busy. The operator's key is
    UBLOX_ADMIN_KEY or <home>/admin.key (created on first start)."""
    try:
        from .server import PortBusy, ServerConfig, bind
        from .server import serve as run_server
        from .server.auth import AuthSetupError, load_admin_key
    except ImportError as exc:
        raise click.UsageError(
            f"the server needs its extra: pip install 'ublox-sim[server]' ({exc})"
        ) from exc
    root = Home.resolve(home)
    if scenario is not None:
        from .scenario import load_scenario

        load_scenario(scenario, seed=seed)  # a ScenarioError is file:line: key: message, exit 2
        if root.db.is_file():
            with UbloxLocalStorage(home) as storage:
                counts = storage.get_global_stats()
                if any(counts[t]["count"] for t in ("players", "ptos", "transactions")):
                    raise InvalidInput(
                        f"{root.root} already holds a store: a scenario is served into a new "
                        "--home (it would replay from tick 0 over this one)"
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
    config = ServerConfig(
        allowed_hosts=allowed_hosts or ("localhost", "127.0.0.1"),
        cors_origins=cors_origins,
        token_ttl=token_ttl,
        read_timeout=read_timeout,
        tick_seconds=tick,
        admin_key=key,
    )
    run_server(
        home,
        sock,
        scenario=scenario,
        ticks_per_second=speed,
        seed=seed,
        config=config,
        on_ready=lambda: click.echo(f"ublox-sim serving {root.root} on {url}"),
    )


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors_to_exit_codes
def stats(home: Path | None, as_json: bool) -> None:
    """Counts and totals of the store."""
    with UbloxLocalStorage(home) as storage:
        data = storage.get_global_stats()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    table = Table("table", "figure", "value", title=f"ublox store {Home.resolve(home).root}")
    for name, figures in data.items():
        for key, value in figures.items():
            table.add_row(name, key, str(value))
    _console().print(table)


@main.command("export")
@home_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@_errors_to_exit_codes
def export_cmd(home: Path | None, output: Path | None) -> None:
    """Write the full JSON export (default <home>/export.json)."""
    with UbloxLocalStorage(home) as storage:
        path = storage.export_to_json(output)
    click.echo(str(path))


@main.command("import")
@home_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_errors_to_exit_codes
def import_cmd(home: Path | None, path: Path) -> None:
    """Load an export into an empty home (refused if its ledger does not balance)."""
    with UbloxLocalStorage(home) as storage:
        storage.import_from_json(path)
    click.echo(f"imported {path} into {Home.resolve(home).root}")


@main.group()
def backup() -> None:
    """Create, list and restore consistent snapshots under <home>/backups/."""


@backup.command("create")
@home_option
@click.argument("name", required=False)
@_errors_to_exit_codes
def backup_create(home: Path | None, name: str | None) -> None:
    with UbloxLocalStorage(home) as storage:
        click.echo(str(storage.create_backup(name)))


@backup.command("list")
@home_option
@_errors_to_exit_codes
def backup_list(home: Path | None) -> None:
    from .store import list_backups

    table = Table("name", "created", "size")
    for item in list_backups(Home.resolve(home)):
        table.add_row(item["name"], item["created"], f"{item['size'] / 1024:.1f} KB")
    _console().print(table)


@backup.command("restore")
@home_option
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Accept a backup whose ledger disagrees with its balances."
)
@_errors_to_exit_codes
def backup_restore(home: Path | None, name: str, force: bool) -> None:
    """Replace the store with backup NAME (checked first; the old state is kept)."""
    with UbloxLocalStorage(home) as storage:
        storage.restore_backup(name, force=force)
    click.echo(f"restored {name}; the previous state is kept as a pre_restore_* backup")


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
def verify(home: Path | None, as_json: bool) -> None:
    """Check schema, integrity, ledger vs balances, escrow, tokens, sessions and CDT files."""
    root = Home.resolve(home).root
    findings = verify_store(root)
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
