"""``migrate`` refuses what it cannot copy, creating nothing: a ``--from`` that holds no
store (a mistyped path, an empty database) exits 2 naming it; a row the target cannot
hold is named (table, row, column) instead of the database's bare error."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from test_pg_cli import SCENARIO, cli, ok

from ublox_sim.store.open import resolve_store


def test_a_from_path_holding_no_store_exits_2_creating_nothing(tmp_path: Path) -> None:
    missing, target = tmp_path / "nosuch", tmp_path / "new"
    done = cli("migrate", "--from", str(missing), "--to", str(target), home=tmp_path / "default")
    assert done.returncode == 2, done.stdout
    assert f"no store at {missing}" in done.stderr
    assert not missing.exists() and not target.exists()


def test_an_empty_database_as_the_source_exits_2_and_stays_empty(
    pg_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "new"
    done = cli("migrate", "--from", pg_url, "--to", str(target), home=tmp_path / "default")
    assert done.returncode == 2, done.stdout
    assert "no store in postgresql://" in done.stderr
    assert not target.exists()
    assert not resolve_store(pg_url).holds_store()  # no schema made in it


def test_a_row_the_database_refuses_is_named_and_nothing_is_copied(
    pg_url: str, tmp_path: Path
) -> None:
    home, default = tmp_path / "home", tmp_path / "default"
    ok(cli("run", str(SCENARIO), "--home", str(home), home=default))
    # SQLite keeps a NUL in a text (a store written before it was refused): PostgreSQL cannot.
    with closing(sqlite3.connect(home / "ublox.db")) as db:
        db.execute("UPDATE ptos SET game_name = 'Harmonic' || char(0) || 'Caverns'")
        db.commit()
    done = cli("migrate", "--from", str(home), "--to", pg_url, home=default)
    assert done.returncode == 2, done.stdout
    assert "ptos row pto_id='pto_harmonic_001': game_name holds a NUL character" in done.stderr
    assert "invalid byte sequence" not in done.stderr
    stats = json.loads(ok(cli("stats", "--json", "--store", pg_url, home=default)))
    assert stats["players"]["count"] == 0 and stats["ptos"]["count"] == 0
