"""The CLI on PostgreSQL (``--store URL`` / ``$UBLOX_STORE``): a scenario run exports the
same bytes as on SQLite; stats, verify, export, import and backups work on a database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "harmonic_caverns.export.json"
SCENARIO = Path(__file__).parent.parent / "scenarios" / "harmonic_caverns.yaml"


def cli(*args: str, home: Path, store: str | None = None) -> subprocess.CompletedProcess[str]:
    """``ublox-sim ARGS``; ``$UBLOX_HOME`` a test folder (a database's backups go there)."""
    env = {k: v for k, v in os.environ.items() if k != "UBLOX_STORE"}
    env["UBLOX_HOME"] = str(home)
    if store is not None:
        env["UBLOX_STORE"] = store
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_run_on_postgres_exports_the_golden_bytes(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "default"
    out = ok(cli("run", str(SCENARIO), "--store", pg_url, home=home))
    assert f"store: {pg_url}" in out
    ok(cli("export", "--store", pg_url, "-o", str(tmp_path / "pg.json"), home=home))
    assert (tmp_path / "pg.json").read_bytes() == GOLDEN.read_bytes()
    assert "verify: ok" in ok(cli("verify", "--store", pg_url, home=home))
    # The same figures as the same run on SQLite, to the type (cents summed as integers).
    sqlite_home = tmp_path / "sqlite"
    ok(cli("run", str(SCENARIO), "--home", str(sqlite_home), home=home))
    pg_stats = json.loads(ok(cli("stats", "--json", home=home, store=pg_url)))  # $UBLOX_STORE
    assert pg_stats == json.loads(ok(cli("stats", "--json", "--home", str(sqlite_home), home=home)))
    # A finished run is not run again over its store.
    again = cli("run", str(SCENARIO), "--store", pg_url, home=home)
    assert again.returncode == 2
    assert "holds a finished run" in again.stderr


def test_import_export_and_backups_on_a_database(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "default"
    ok(cli("import", "--store", pg_url, str(GOLDEN), home=home))
    refused = cli("import", "--store", pg_url, str(GOLDEN), home=home)
    assert refused.returncode == 2 and "import only into a new store" in refused.stderr
    # The same bytes as the same import into a SQLite home (an import keeps no run record).
    ok(cli("import", "--home", str(tmp_path / "sqlite"), str(GOLDEN), home=home))
    imported = ok(cli("export", "--home", str(tmp_path / "sqlite"), "-o", "-", home=home))
    assert ok(cli("export", "--store", pg_url, "-o", "-", home=home)) == imported
    made = Path(ok(cli("backup", "create", "first", "--store", pg_url, home=home)).strip())
    assert made.parent.parent == home / "pg_backups"
    listed = json.loads(ok(cli("backup", "list", "--json", "--store", pg_url, home=home)))
    assert [b["name"] for b in listed] == ["first"]
    ok(cli("backup", "restore", "first", "--store", pg_url, home=home))
    assert ok(cli("export", "--store", pg_url, "-o", "-", home=home)) == imported
    no_path = cli("export", "--store", pg_url, home=home)
    assert no_path.returncode == 2 and "give the export's path" in no_path.stderr


@pytest.mark.parametrize("command", [["stats"], ["verify"], ["export", "-o", "-"]])
def test_a_bad_store_url_exits_2_naming_it_without_the_password(
    command: list[str], tmp_path: Path
) -> None:
    home = tmp_path / "default"
    done = cli(*command, "--store", "postgresql://game:s3cret@db:99999/x", home=home)
    assert done.returncode == 2
    assert "bad store URL postgresql://game:***@db:99999/x" in done.stderr
    assert "s3cret" not in done.stderr
    assert not home.exists()  # nothing created


def test_home_and_store_together_are_refused(tmp_path: Path) -> None:
    done = cli(
        "stats", "--home", str(tmp_path / "a"), "--store", "postgresql://u@db/x", home=tmp_path
    )
    assert done.returncode == 2
    assert "not both" in done.stderr


def test_a_run_stopped_between_checkpoints_resumes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    import anyio

    from ublox_sim.sim.runner import run_scenario
    from ublox_sim.sim.scenario import load_scenario
    from ublox_sim.store.open import resolve_store

    home = tmp_path / "default"
    loaded = load_scenario(SCENARIO)
    # 10 ticks: checkpointed at 6; 7 to 10 were held, and are rolled back at the close.
    stopped = anyio.run(lambda: run_scenario(loaded, resolve_store(pg_url), stop_after_ticks=10))
    assert stopped.ticks_run == 10
    out = ok(cli("run", "--resume", "--store", pg_url, home=home))  # the recorded scenario
    assert "resumed at tick 6" in out
    ok(cli("export", "--store", pg_url, "-o", str(tmp_path / "pg.json"), home=home))
    assert (tmp_path / "pg.json").read_bytes() == GOLDEN.read_bytes()


def test_the_demo_runs_on_a_database_and_only_on_an_empty_one(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "default"
    out = ok(cli("demo", "--store", pg_url, home=home))
    lines = out.splitlines()
    assert lines[0] == f"store: {pg_url}"
    assert "✓ PTO pto_harmonic_001 saved to PostgreSQL, its 32×32 world to a row of worlds" in out
    assert lines[-1] == "✓ verify passed"
    export = home / "pg_backups"
    assert [p.name for p in export.glob("*/demo_export.json")] == ["demo_export.json"]
    stats = json.loads(ok(cli("stats", "--json", "--store", pg_url, home=home)))
    assert (stats["players"]["count"], stats["transactions"]["count"]) == (1, 3)
    again = cli("demo", "--store", pg_url, home=home)
    assert again.returncode == 2
    assert "already holds a store; use a new database" in again.stderr
    both = cli("demo", "--store", pg_url, "--home", str(tmp_path / "h"), home=home)
    assert both.returncode == 2 and "not both" in both.stderr
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize("command", ["verify", "stats", "export", "backup create", "backup list"])
def test_a_read_on_a_database_without_a_store_exits_2_and_makes_none(
    pg_url: str, tmp_path: Path, command: str
) -> None:
    """A database named by mistake is not given a store's tables by a command that reads."""
    import anyio
    import asyncpg  # type: ignore[import-untyped]

    args = [*command.split(), "--store", pg_url]
    if command == "export":
        args += ["-o", str(tmp_path / "out.json")]
    done = cli(*args, home=tmp_path / "default")
    assert done.returncode == 2, done.stderr
    assert "no store in postgresql://" in done.stderr and "make one" in done.stderr

    async def tables() -> int:
        conn = await asyncpg.connect(pg_url)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM information_schema.tables"
                    " WHERE table_schema = current_schema()"
                )
            )
        finally:
            await conn.close()

    assert anyio.run(tables) == 0
    assert not (tmp_path / "out.json").exists()
