"""The library is quiet by default: a host that configured no logging sees nothing from it,
while a host that configured structlog (or stdlib logging, or uses ``capture_logs``) gets
every event. Only the CLI configures logging: console or JSON lines on stderr, and ``-v``
shows the runner's progress."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from ublox_sim import Engine, SimClock
from ublox_sim.core.logsetup import get_logger

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ublox_sim"
HARMONIC = ROOT / "scenarios" / "harmonic_caverns.yaml"
ENV = {**os.environ, "NO_COLOR": "1"}
SHORT_RUN = ("--set", "clock.ticks=12", "--set", "world.size=16")

# A host script that configures nothing and drives the library through its Python API:
# the seed's storage facade (backup, export), the Engine (backup, export, a damaged world
# file that makes it log an error) and a scenario run. It prints nothing itself.
QUIET_HOST = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    from pathlib import Path

    import anyio
    import numpy as np
    import structlog

    from ublox_sim import Engine
    from ublox_sim import Home
    from ublox_sim import SimClock
    from ublox_sim import UbloxLocalStorage
    from ublox_sim import parse_scenario
    from ublox_sim import run_scenario

    root = Path(sys.argv[1])
    theta = np.zeros((16, 16))

    with UbloxLocalStorage(root / "seed") as storage:
        storage.save_player({"player_id": "alice", "tau_k": 8.5, "usd_obbba_balance": 5000.0})
        storage.save_pto({"pto_id": "pto_001", "game_name": "Harmonic Caverns",
                          "creator_id": "alice", "cdt": {"theta": theta}})
        storage.log_transaction("investment", "alice", "pto_001", 1000.0, "USD-OBBBA")
        storage.create_backup("before")
        storage.export_to_json()


    async def engine_story() -> None:
        async with Engine.open(root / "engine", clock=SimClock()) as engine:
            await engine.register_player("alice", usd_obbba=5000)
            await engine.launch_pto(pto_id="pto_001", game_name="Caverns", creator_id="alice",
                                    atu_required=10, pts_offered=10, price_per_pts=1,
                                    funding_deadline=timedelta(days=1))
            await engine.backup("nightly")
            await engine.export_json()
        for world in (root / "engine" / "cdt_states").glob("*.npz"):
            world.write_bytes(b"not a zip file")  # reopening logs engine.world_unavailable
        async with Engine.open(root / "engine", clock=SimClock()) as engine:
            await engine.stats()


    anyio.run(engine_story)
    loaded = parse_scenario(Path(sys.argv[2]).read_text(), "harmonic_caverns.yaml",
                            overrides=["clock.ticks=12", "world.size=16"])
    anyio.run(run_scenario, loaded, Home.resolve(root / "run"))
    # The library must not have configured structlog behind the host's back.
    sys.exit(3 if structlog.is_configured() else 0)
    """
)


@pytest.fixture
def pristine_structlog() -> Iterator[None]:
    """capture_logs() leaves structlog marked as configured: put it back for other tests."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_host_that_configured_no_logging_sees_nothing_on_stdout_or_stderr(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_HOST, str(tmp_path), str(HARMONIC)],
        env={**ENV, "UBLOX_HOME": str(tmp_path / "default-home")},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    # The story really ran: the backups, exports and the run's store exist.
    assert (tmp_path / "seed" / "backups" / "before" / "backup.json").is_file()
    assert (tmp_path / "seed" / "export.json").is_file()
    assert (tmp_path / "engine" / "backups" / "nightly").is_dir()
    assert (tmp_path / "run" / "export.json").is_file()


@pytest.mark.anyio
@pytest.mark.usefixtures("pristine_structlog")
async def test_capture_logs_sees_the_library_events(tmp_path: Path) -> None:
    with capture_logs() as events:
        async with Engine.open(tmp_path / "h", clock=SimClock()) as engine:
            await engine.register_player("alice", usd_obbba=Decimal("5000"))
            await engine.launch_pto(
                pto_id="pto_001",
                game_name="Caverns",
                creator_id="alice",
                atu_required=10,
                pts_offered=10,
                price_per_pts=1,
                funding_deadline=timedelta(days=1),
            )
            await engine.backup("nightly")
        for world in (tmp_path / "h" / "cdt_states").glob("*.npz"):
            world.write_bytes(b"not a zip file")
        async with Engine.open(tmp_path / "h", clock=SimClock()) as engine:
            await engine.get_pto("pto_001")  # activation reads the world
    backups = [e for e in events if e["event"].endswith("backup_created")]
    assert [(e["name"], e["log_level"]) for e in backups] == [("nightly", "info")]
    unavailable = [e for e in events if e["event"].endswith("world_unavailable")]
    assert [(e["pto_id"], e["log_level"]) for e in unavailable] == [("pto_001", "error")]


@pytest.mark.anyio
@pytest.mark.usefixtures("pristine_structlog")
async def test_a_host_using_stdlib_logging_gets_the_events_at_its_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ublox_sim")
    async with Engine.open(tmp_path / "h", clock=SimClock()) as engine:
        await engine.backup("nightly")
    records = [r for r in caplog.records if r.name.startswith("ublox_sim.")]
    backups = [r for r in records if "backup_created" in r.getMessage()]
    assert [r.levelno for r in backups] == [logging.INFO]
    assert re.match(r"[\w.]*backup_created name='nightly' path=", backups[0].getMessage())

    caplog.clear()
    caplog.set_level(logging.WARNING, logger="ublox_sim")
    async with Engine.open(tmp_path / "h", clock=SimClock()) as engine:
        await engine.backup("weekly")
    assert [r for r in caplog.records if r.name.startswith("ublox_sim")] == []


@pytest.mark.usefixtures("pristine_structlog")
def test_bound_values_reach_structlog_and_stdlib_hosts_alike(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("ublox_sim.example").bind(run="r1")
    caplog.set_level(logging.DEBUG, logger="ublox_sim")
    log.debug("example.step", tick=3)
    try:
        raise OSError("disk on fire")
    except OSError:
        log.error("example.failed", exc_info=True)  # the traceback, not "exc_info=True"
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("ublox_sim.example", logging.DEBUG, "example.step run='r1' tick=3"),
        ("ublox_sim.example", logging.ERROR, "example.failed run='r1'"),
    ]
    assert "disk on fire" in caplog.text
    with capture_logs() as events:
        log.warning("example.step", tick=4)
    assert events == [{"run": "r1", "tick": 4, "event": "example.step", "log_level": "warning"}]


def test_no_module_but_logsetup_touches_structlog_configuration_or_its_default_logger() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "logsetup.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"structlog\.(configure|get_logger|getLogger|wrap_logger)\b", text) or (
            re.search(r"from structlog import .*\b(get_logger|getLogger|configure)\b", text)
        ):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_cli_is_quiet_below_warning_by_default(tmp_path: Path) -> None:
    proc = cli("run", str(HARMONIC), *SHORT_RUN, "--home", str(tmp_path / "h"))
    assert proc.returncode == 0, proc.stderr
    assert "run.checkpoint" not in proc.stderr + proc.stdout
    backup = cli("backup", "create", "nightly", "--home", str(tmp_path / "h"))
    assert backup.returncode == 0, backup.stderr
    assert "backup_created" not in backup.stderr + backup.stdout


def test_cli_verbose_shows_the_runner_progress_as_console_lines_on_stderr(tmp_path: Path) -> None:
    proc = cli("-v", "run", str(HARMONIC), *SHORT_RUN, "--home", str(tmp_path / "h"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(re.search(r"\[info\s*\] run\.started .*ticks=12", line) for line in lines)
    checkpoints = [line for line in lines if "run.checkpoint" in line]
    # harmonic_caverns checkpoints every 6 ticks: ticks 6 and 12.
    assert [re.search(r"tick=(\d+)", line).group(1) for line in checkpoints] == ["6", "12"]  # type: ignore[union-attr]
    assert any("run.finished" in line for line in lines)
    assert "run.checkpoint" not in proc.stdout  # logs never mix with the report


def test_cli_json_log_format_writes_one_json_object_per_event(tmp_path: Path) -> None:
    home = str(tmp_path / "h")
    proc = cli("-v", "--log-format", "json", "run", str(HARMONIC), *SHORT_RUN, "--home", home)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"].startswith("run.")] == [
        "run.started",
        "run.checkpoint",
        "run.checkpoint",
        "run.finished",
    ]
    assert all(e["level"] == "info" and "timestamp" in e for e in events)
    backup = cli("-v", "--log-format", "json", "backup", "create", "nightly", "--home", home)
    assert backup.returncode == 0, backup.stderr
    logged = [json.loads(line) for line in backup.stderr.splitlines() if line.startswith("{")]
    backups = [e for e in logged if e["event"].endswith("backup_created")]
    assert [(e["name"], e["level"]) for e in backups] == [("nightly", "info")]
