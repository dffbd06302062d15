"""What the seed's story costs on disk: harmonic_caverns' home, measured as ``du -b`` does.

The seed notes claim a PTO with 3–5 players takes under 100 KB (db + CDT files +
export). For harmonic_caverns (5 players, 48 hours, 83 sessions, 96 ledger rows, a
64×64 float64 world) that cannot hold losslessly; the strict xfail below says why
with the figures, and turns into a failure the day it does hold.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from ublox_sim.sim.runner import run_scenario
from ublox_sim.sim.scenario import load_scenario
from ublox_sim.store.home import Home
from ublox_sim.store.local import LocalStore
from ublox_sim.store.sync import UbloxLocalStorage

ROOT = Path(__file__).resolve().parents[1]
RELEASE_0_1_0 = ROOT / "tests" / "fixtures" / "stores" / "v0.1.0"  # the same run, by 0.1.0
GOLDEN_EXPORT = ROOT / "tests" / "fixtures" / "golden" / "harmonic_caverns.export.json"


def du_b(home: Path) -> int:
    """``du -sb --exclude=backups HOME``: every file and folder's apparent size, backups aside."""
    total = home.stat().st_size
    for path in home.rglob("*"):
        if "backups" not in path.relative_to(home).parts:
            total += path.lstat().st_size
    return total


@pytest.fixture(scope="module")
def harmonic_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("size") / "home"
    loaded = load_scenario(ROOT / "scenarios" / "harmonic_caverns.yaml")
    anyio.run(lambda: run_scenario(loaded, Home(home)))
    return home


def test_the_export_of_a_run_is_a_fifth_smaller_than_release_0_1_0s_and_round_trips(
    harmonic_home: Path, tmp_path: Path
) -> None:
    """Same run, as many rows: arrays byte-shuffled and deflated, one record per line.

    The players' draws changed since 0.1.0 (issue 13: a keyed hash per id, not a numpy
    generator per player), so the content is compared with the current golden export
    and only the shape and size with 0.1.0's."""
    export = harmonic_home / "export.json"
    old = RELEASE_0_1_0 / "export.json"
    assert export.stat().st_size < 0.8 * old.stat().st_size
    new_data, old_data = json.loads(export.read_text()), json.loads(old.read_text())
    golden = json.loads(GOLDEN_EXPORT.read_text())
    for table in ("players", "ptos", "pts_tokens", "transactions", "play_sessions"):
        rows = [{k: v for k, v in r.items() if k != "cdt"} for r in new_data[table]]
        assert rows == [{k: v for k, v in r.items() if k != "cdt"} for r in golden[table]]
        assert len(rows) == len(old_data[table]), table
        assert [sorted(r) for r in new_data[table]] == [sorted(r) for r in old_data[table]]
    # Lossless: imported into a new home, it exports the very same content (the run's
    # record, name and seed, stays with the home that ran it: import takes the store).
    with UbloxLocalStorage(tmp_path / "copy") as storage:
        assert storage.import_from_json(export) == []
        again = json.loads(storage.export_to_json(tmp_path / "again.json").read_text())
    skip = {"run", "digest"}
    assert {k: v for k, v in again.items() if k not in skip} == {
        k: v for k, v in new_data.items() if k not in skip
    }


@pytest.mark.xfail(
    strict=True,
    reason=(
        "cannot fit losslessly at 64x64: theta (4096 float64 with noise mantissas: 27.3 KB "
        "under xz -9, 27.6 KB shuffled+deflate) is in the world file and again, base64, "
        "in the self-contained export (>=63 KB together); the database (24 tables and "
        "indexes, 96 ledger rows, 83 sessions, 134 events in event_log, the replay buffer "
        "of /ws/events, which the export leaves out) is 87.5 KB vacuumed at SQLite's "
        "smallest page (49.2 KB without the events); folders 8 KB: >=158 KB before the "
        "export's rows. The measured figures: README's Size paragraph (checked below)"
    ),
)
def test_harmonic_caverns_home_is_under_100_kb(harmonic_home: Path) -> None:
    assert du_b(harmonic_home) < 100_000


def test_the_event_log_is_kept_in_the_database_but_left_out_of_the_export(
    harmonic_home: Path, tmp_path: Path
) -> None:
    """The event log is the replay buffer of /ws/events, not content: it counts in the
    database's size (and rides along in backups), but the export does not carry it and an
    imported home starts a new event sequence."""
    with closing(sqlite3.connect(harmonic_home / "ublox.db")) as conn:
        (events,) = conn.execute("SELECT COUNT(*) FROM event_log").fetchone()
    assert events > 0
    export = harmonic_home / "export.json"
    assert not {k for k in json.loads(export.read_text()) if "event" in k}

    async def imported_span() -> tuple[int, int]:
        async with LocalStore.open(tmp_path / "copy") as store:
            await store.import_from_json(export)
            return await store.event_log_span()

    assert anyio.run(imported_span) == (0, 0)


def folder_size_is_ext4s(home: Path) -> bool:
    """The README's folder figures are ext4's: every folder 4096 bytes (``du -b``)."""
    folders = [home, *(p for p in home.rglob("*") if p.is_dir() and not p.is_symlink())]
    return all(p.lstat().st_size == 4096 for p in folders)


def event_log_bytes(db: Path) -> int | None:
    """The event log's pages (``dbstat``), or None where SQLite was built without it."""
    with closing(sqlite3.connect(db)) as conn:
        try:
            (size,) = conn.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = 'event_log'"
            ).fetchone()
        except sqlite3.OperationalError:
            return None
    return int(size)


def test_the_readme_quotes_the_figures_of_this_home(harmonic_home: Path) -> None:
    """The README's *Size* paragraph states what this home measures, so it cannot go
    stale: the files' exact sizes always (db, world, export, event count); the event
    log's bytes where SQLite has ``dbstat``; the total and the folders' share (in KB: the
    lock file's content, a process id, moves a byte) where folders are ext4's 4096 bytes,
    as where the figures were taken. A figure not checked here says why (printed)."""
    with closing(sqlite3.connect(harmonic_home / "ublox.db")) as conn:
        (events,) = conn.execute("SELECT COUNT(*) FROM event_log").fetchone()
    event_bytes = event_log_bytes(harmonic_home / "ublox.db")
    (world,) = (harmonic_home / "cdt_states").glob("*.npz")
    db = (harmonic_home / "ublox.db").stat().st_size
    export = (harmonic_home / "export.json").stat().st_size
    old_export = (RELEASE_0_1_0 / "export.json").stat().st_size
    any_figure = "[0-9][0-9,]*"
    total_kb = rest_kb = any_figure
    if folder_size_is_ext4s(harmonic_home):
        total = du_b(harmonic_home)
        total_kb = str(round(total / 1000))
        rest_kb = str(round((total - db - world.stat().st_size - export) / 1000))
    else:
        print("README's total and folder figures not checked: folders here are not 4096 bytes")
    events_size = any_figure
    if event_bytes is None:
        print("README's event log bytes not checked: this SQLite has no dbstat")
    else:
        events_size = re.escape(f"{event_bytes:,}")
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    stated = (
        re.escape("`du -b -s --exclude=backups H` is about ")
        + f"{total_kb} KB: "
        + re.escape(f"db {db:,} bytes (of which the event log's {events} events take ")
        + events_size
        + re.escape(
            f"), world file {world.stat().st_size:,}, export {export:,} (down from"
            f" {old_export:,} in 0.1.0 by deflating byte-shuffled arrays), folders and lock"
            " about "
        )
        + f"{rest_kb} KB"
    )
    assert re.search(stated, readme), stated
