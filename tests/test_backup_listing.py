"""A backup listing has one shape whatever the backend (``Backend.list_backups``): name,
created (the store's ``YYYY-mm-dd HH:MM:SS+00:00``), size and path. On PostgreSQL the
HTTP API's backups answered 500 (``KeyError: 'created'``) while the backup was made.
Restoring a backup that does not exist is a usage error (exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from api_client import operator_api
from test_pg_cli import GOLDEN, cli, ok

from ublox_sim import Engine, SimClock
from ublox_sim.core.clock import WALL_CLOCK
from ublox_sim.core.records import parse_iso
from ublox_sim.store.postgres.backend import CLUSTER_ENV

KEY = "backup-admin-key-0123456789"
OP = {"Authorization": f"Bearer {KEY}"}
STORE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.mark.anyio
async def test_backups_over_http_on_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UBLOX_STORE", pg_url)
    monkeypatch.setenv("UBLOX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CLUSTER_ENV, raising=False)
    async with operator_api(key=KEY) as client:
        made = await client.post("/api/backups", json={"name": "nightly"}, headers=OP)
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "nightly" and made.json()["size"] > 0
        assert RFC3339.fullmatch(made.json()["created"]), made.json()
        listed = await client.get("/api/backups", headers=OP)
        assert listed.status_code == 200, listed.text
        assert listed.json() == [made.json()]


def test_backup_list_json_has_one_shape_on_both_backends(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "default"
    sqlite_home = tmp_path / "sqlite"
    listings = []
    for where in (["--home", str(sqlite_home)], ["--store", pg_url]):
        ok(cli("import", *where, str(GOLDEN), home=home))
        made = Path(ok(cli("backup", "create", "first", *where, home=home)).strip())
        listed = json.loads(ok(cli("backup", "list", "--json", *where, home=home)))
        assert [b["name"] for b in listed] == ["first"]
        assert listed[0]["path"] == str(made)
        assert STORE_TIME.fullmatch(listed[0]["created"]), listed
        assert listed[0]["size"] > 0
        listings.append(listed[0])
    assert listings[0].keys() == listings[1].keys() == {"name", "created", "size", "path"}


def test_restoring_a_backup_that_does_not_exist_is_a_usage_error(
    pg_url: str, tmp_path: Path
) -> None:
    """Exit 2 (README: a usage or input error), not 1 (a run or a check failed)."""
    home = tmp_path / "default"
    for where in (["--home", str(tmp_path / "sqlite")], ["--store", pg_url]):
        ok(cli("import", *where, str(GOLDEN), home=home))
        before = ok(cli("export", *where, "-o", "-", home=home))
        done = cli("backup", "restore", "nosuch", *where, home=home)
        assert done.returncode == 2, (where, done.stderr)
        assert "error: no backup at " in done.stderr and done.stderr.rstrip().endswith("nosuch")
        assert ok(cli("export", *where, "-o", "-", home=home)) == before
        assert json.loads(ok(cli("backup", "list", "--json", *where, home=home))) == []


@pytest.mark.parametrize("damage", ["{not json", '["a list"]', '{"created": 5}', ""])
def test_a_damaged_or_foreign_manifest_does_not_fail_the_listing(
    pg_url: str, tmp_path: Path, damage: str
) -> None:
    """One bad backup.json made PostgreSQL's listing raise (GET /api/backups 500, `backup
    list` failed); both backends list it, stamped with its folder's time, and the rest."""
    home = tmp_path / "default"
    for where in (["--home", str(tmp_path / "sqlite")], ["--store", pg_url]):
        ok(cli("import", *where, str(GOLDEN), home=home))
        good = Path(ok(cli("backup", "create", "good", *where, home=home)).strip())
        bad = Path(ok(cli("backup", "create", "bad", *where, home=home)).strip())
        (bad / "backup.json").write_text(damage, encoding="utf-8")
        (bad / "extra").mkdir()  # a folder inside counts in the size, on both backends
        (bad / "extra" / "notes").write_bytes(b"x" * 1000)
        listed = json.loads(ok(cli("backup", "list", "--json", *where, home=home)))
        assert sorted(b["name"] for b in listed) == ["bad", "good"], where
        by_name = {b["name"]: b for b in listed}
        assert by_name["bad"]["path"] == str(bad) and by_name["good"]["path"] == str(good)
        assert all(STORE_TIME.fullmatch(b["created"]) for b in listed), listed
        files = [p for p in bad.rglob("*") if p.is_file()]
        assert by_name["bad"]["size"] == sum(p.stat().st_size for p in files)
        before = ok(cli("export", *where, "-o", "-", home=home))
        done = cli("backup", "restore", "bad", *where, home=home)  # refused by name
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert "bad" in done.stderr
        assert ok(cli("export", *where, "-o", "-", home=home)) == before


@pytest.mark.anyio
async def test_postgres_backups_are_stamped_in_wall_time(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like SQLite's: an engine's simulated clock (2025-12-12 here) names and stamps no
    backup, the wall clock does."""
    monkeypatch.setenv("UBLOX_HOME", str(tmp_path / "home"))
    before = WALL_CLOCK.now().replace(microsecond=0)
    async with Engine.open(store=pg_url, clock=SimClock()) as engine:
        made = await engine.backup()
    manifest = json.loads((made / "backup.json").read_text(encoding="utf-8"))
    assert parse_iso(manifest["created"]) >= before
    assert made.name.startswith(f"backup_{before:%Y%m%d}")
