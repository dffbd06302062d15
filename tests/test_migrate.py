"""``ublox-sim migrate``: SQLite -> PostgreSQL -> SQLite gives back the original export,
byte for byte, with every table, world, run and counter; a target that is not new is
refused with nothing written."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from test_pg_cli import cli, ok

from ublox_sim.core.errors import InvalidInput
from ublox_sim.engine import Engine
from ublox_sim.store.migrate import TABLES, migrate_store

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "harmonic_caverns.export.json"
SCENARIO = Path(__file__).parent.parent / "scenarios" / "harmonic_caverns.yaml"


def _table_rows(home: Path) -> dict[str, list[tuple[object, ...]]]:
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        out = {
            table: conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY rowid").fetchall()
            for table, cols, _ in TABLES
            if table not in ("player_token_versions", "idempotency_keys")  # WITHOUT ROWID
        }
        out["sqlite_sequence"] = conn.execute(
            "SELECT * FROM sqlite_sequence ORDER BY name"
        ).fetchall()
    return out


def test_a_round_trip_through_postgres_gives_back_the_same_store(
    pg_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "default"
    original, back = tmp_path / "original", tmp_path / "back"
    ok(cli("run", str(SCENARIO), "--home", str(original), home=home))
    out = ok(cli("migrate", "--from", str(original), "--to", pg_url, home=home))
    assert "verified: both exports identical" in out
    ok(cli("migrate", "--from", pg_url, "--to", str(back), home=home))
    ok(cli("export", "--home", str(back), "-o", str(tmp_path / "back.json"), home=home))
    assert (tmp_path / "back.json").read_bytes() == GOLDEN.read_bytes()
    assert (original / "export.json").read_bytes() == GOLDEN.read_bytes()
    # Every row in the same order, the counters, and the same world files, byte for byte.
    assert _table_rows(back) == _table_rows(original)
    worlds = sorted(p.name for p in (original / "cdt_states").glob("*.npz"))
    assert worlds == sorted(p.name for p in (back / "cdt_states").glob("*.npz"))
    for name in worlds:
        assert (back / "cdt_states" / name).read_bytes() == (
            original / "cdt_states" / name
        ).read_bytes()
    # The copy is a working store: the run is recorded there and verify is clean.
    assert "verify: ok" in ok(cli("verify", "--store", pg_url, home=home))
    again = cli("run", str(SCENARIO), "--store", pg_url, home=home)
    assert again.returncode == 2 and "holds a finished run" in again.stderr


@pytest.mark.asyncio
async def test_numbering_goes_on_where_the_source_left_it(pg_url: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    async with Engine.open(source) as engine:
        await engine.register_player("alice", usd_obbba=100)
        await engine.deposit("alice", 5)
    await migrate_store(source, pg_url)
    async with Engine.open(store=pg_url) as engine:
        await engine.deposit("alice", 1)
        page = await engine.store.transactions_of("alice")
        # From the log, not the bus: a shared store publishes through its feed, after
        # the commit, so the bus may not have heard the deposit yet.
        _, last_seq = await engine.store.event_log_span()
    assert [t.tx_id for t in page] == [1, 2, 3]
    async with Engine.open(source) as engine:
        await engine.deposit("alice", 1)
        assert (await engine.store.event_log_span())[1] == last_seq


@pytest.mark.asyncio
async def test_a_target_that_is_not_new_is_refused_unchanged(pg_url: str, tmp_path: Path) -> None:
    source, other = tmp_path / "source", tmp_path / "other"
    for home, who in ((source, "alice"), (other, "bob")):
        async with Engine.open(home) as engine:
            await engine.register_player(who, usd_obbba=1)
    await migrate_store(source, pg_url)
    with pytest.raises(InvalidInput, match="is not empty: migrate only into a new store"):
        await migrate_store(other, pg_url)
    with pytest.raises(InvalidInput, match="is not empty"):
        await migrate_store(pg_url, other)
    with pytest.raises(InvalidInput, match="the same store"):
        await migrate_store(source, str(source))
    async with Engine.open(store=pg_url) as engine:
        assert await engine.player_ids() == ["alice"]
    async with Engine.open(other) as engine:
        assert await engine.player_ids() == ["bob"]


def test_the_cli_refuses_a_home_holding_other_files(pg_url: str, tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    done = cli("migrate", "--from", pg_url, "--to", str(target), home=tmp_path / "default")
    assert done.returncode == 2
    assert "is not empty and holds no store (notes.txt); use a new or empty --to" in done.stderr
    assert sorted(os.listdir(target)) == ["notes.txt"]
    shutil.rmtree(target)
