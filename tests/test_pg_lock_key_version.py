"""The PostgreSQL advisory-lock keys changed form (one bigint -> two int4, the second the
store's schema) and the two forms never exclude each other: the PostgreSQL schema version
moved with them (migration 7, a marker), so a binary of schema 6 refuses a database this
one opened, with its "newer schema" message. SQLite's schema and exports are untouched."""

from __future__ import annotations

import pytest

from ublox_sim import Engine, SimClock
from ublox_sim.store.postgres import schema
from ublox_sim.store.sqlite.schema import SCHEMA_VERSION

pytestmark = pytest.mark.anyio
OLD = 6  # the last PostgreSQL schema of single-bigint advisory-lock keys


def test_sqlite_schema_and_export_version_did_not_move() -> None:
    assert SCHEMA_VERSION == 4
    assert schema.PG_SCHEMA_VERSION == OLD + 1 and schema.MARKERS == {OLD + 1}


async def test_a_schema_6_binary_refuses_the_database_and_its_database_upgrades(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg  # type: ignore[import-untyped]

    old_migrations = schema.MIGRATIONS[:OLD]
    conn = await asyncpg.connect(pg_url)
    try:
        # The schema-6 binary's migrate: its migrations, its version.
        with monkeypatch.context() as old:
            old.setattr(schema, "MIGRATIONS", old_migrations)
            old.setattr(schema, "PG_SCHEMA_VERSION", OLD)
            assert await schema.migrate(conn) == 0
        async with Engine.open(store=pg_url, clock=SimClock()) as engine:
            await engine.register_player("p", usd_obbba=5)
        assert await conn.fetchval("SELECT MAX(version) FROM schema_migrations") == OLD + 1
        with monkeypatch.context() as old:
            old.setattr(schema, "MIGRATIONS", old_migrations)
            old.setattr(schema, "PG_SCHEMA_VERSION", OLD)
            with pytest.raises(ValueError, match="schema version 7 is newer than this ublox-sim"):
                await schema.migrate(conn)
        marker = await conn.fetchval("SELECT obj_description('world_leases'::regclass)")
        assert "advisory locks keyed" in marker
    finally:
        await conn.close()
    async with Engine.open(store=pg_url, clock=SimClock()) as engine:
        assert (await engine.get_player("p")).usd_obbba_balance == 5
        assert await engine.store.verify() == []


def test_a_marker_keeps_backups_restorable() -> None:
    assert schema.same_tables(OLD, OLD + 1) and schema.same_tables(OLD + 1, OLD + 1)
    assert not schema.same_tables(OLD - 1, OLD + 1)
