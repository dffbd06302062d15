"""An export carries the run record of a run still going (``started_at`` and the runner's
``state`` too), so an exported and imported store resumes where the original stopped, on
SQLite and on PostgreSQL, to the same bytes as the run never interrupted. A finished
run's export keeps its former shape (the golden bytes); older exports still import."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_pg_cli import GOLDEN, SCENARIO, cli, ok

from ublox_sim.core.errors import InvalidInput
from ublox_sim.engine import Engine
from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.export import export_digest
from ublox_sim.store.home import Home
from ublox_sim.store.local import LocalStore

STOPPED_AT = 18  # of harmonic_caverns' 48 ticks: a checkpoint (one every 6)


@pytest.fixture(scope="module")
def stopped_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of harmonic_caverns stopped after its checkpoint of tick 18."""
    root = tmp_path_factory.mktemp("stopped")
    loaded = load_scenario(SCENARIO)
    stopped = anyio.run(
        partial(run_scenario, loaded, Home.resolve(root / "home"), stop_after_ticks=STOPPED_AT)
    )
    assert stopped.ticks_run == STOPPED_AT
    ok(cli("export", "--home", str(root / "home"), "-o", str(root / "stopped.json"), home=root))
    return root / "stopped.json"


def test_a_running_run_is_exported_whole(stopped_export: Path) -> None:
    run = json.loads(stopped_export.read_text())["run"]
    assert (run["tick"], run["finished"]) == (STOPPED_AT, False)
    assert run["started_at"] == "2025-12-12T16:00:00+00:00"
    assert set(run["state"]) == {"tick", "rng", "outcomes"}
    # A finished run's export is as it was: no state to resume (the golden bytes).
    assert set(json.loads(GOLDEN.read_text())["run"]) == {
        "name",
        "seed",
        "scenario",
        "tick",
        "total_ticks",
        "finished",
    }


def test_an_imported_run_resumes_to_the_uninterrupted_export_on_sqlite(
    stopped_export: Path, tmp_path: Path
) -> None:
    home = tmp_path / "copy"
    ok(cli("import", "--home", str(home), str(stopped_export), home=tmp_path))
    report = json.loads(ok(cli("run", "--resume", "--home", str(home), "--json", home=tmp_path)))
    assert report["resumed_from"] == STOPPED_AT
    assert (home / "export.json").read_bytes() == GOLDEN.read_bytes()


def test_an_imported_run_resumes_to_the_uninterrupted_export_on_postgres(
    stopped_export: Path, pg_url: str, tmp_path: Path
) -> None:
    ok(cli("import", "--store", pg_url, str(stopped_export), home=tmp_path))
    report = json.loads(ok(cli("run", "--resume", "--store", pg_url, "--json", home=tmp_path)))
    assert report["resumed_from"] == STOPPED_AT
    ok(cli("export", "--store", pg_url, "-o", str(tmp_path / "pg.json"), home=tmp_path))
    assert (tmp_path / "pg.json").read_bytes() == GOLDEN.read_bytes()


def test_an_export_of_before_imports_without_its_run(stopped_export: Path, tmp_path: Path) -> None:
    """An export written before runs were carried whole has nothing to resume from: it
    imports as it always did, without the run."""
    data = json.loads(stopped_export.read_text())
    del data["run"]["state"], data["run"]["started_at"]
    older = _sealed(tmp_path / "older.json", data)

    async def imported() -> None:
        async with LocalStore.open(tmp_path / "older") as store:
            assert await store.import_from_json(older) == []
            assert await store.run_status() is None
            assert not await store.is_empty()

    anyio.run(imported)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("state", "rng", "run.state is missing or not a object"),
        ("tick", True, "run.tick is missing or not a integer"),
        ("tick", 49, "run.tick 49 is not in 0..run.total_ticks"),
        ("started_at", None, "run.started_at is missing or not a string"),
    ],
)
def test_a_bad_run_record_is_refused_and_nothing_is_imported(
    stopped_export: Path, tmp_path: Path, field: str, value: Any, message: str
) -> None:
    data = json.loads(stopped_export.read_text())
    data["run"][field] = value
    bad = _sealed(tmp_path / "bad.json", data)

    async def refused() -> None:
        async with LocalStore.open(tmp_path / "bad") as store:
            with pytest.raises(InvalidInput, match=message):
                await store.import_from_json(bad)
            assert await store.is_empty()

    anyio.run(refused)


def _sealed(path: Path, data: dict[str, Any]) -> Path:
    """``data`` written as an export with its digest (an edit made by the writer)."""
    data["digest"] = export_digest(data)
    path.write_text(json.dumps(data))
    return path


def test_after_an_import_into_a_database_new_rows_are_numbered_after_the_imported(
    pg_url: str, tmp_path: Path
) -> None:
    ok(cli("import", "--store", pg_url, str(GOLDEN), home=tmp_path))
    imported = json.loads(GOLDEN.read_text())

    async def deposit() -> int:
        async with Engine.open(store=pg_url) as engine:
            await engine.deposit("alice", "1.00")
            return int((await engine.stats())["transactions"]["count"])

    assert anyio.run(deposit) == len(imported["transactions"]) + 1
