"""One store spec opens either backend: a PostgreSQL URL, a path, ``$UBLOX_STORE``, or the
default home (``store/open.py``); a bad URL is refused by name, password masked."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ublox_sim.core.errors import InvalidInput, PersistenceError
from ublox_sim.engine import Engine
from ublox_sim.store.home import Home
from ublox_sim.store.open import PgStore, masked, open_backend, resolve_store
from ublox_sim.store.postgres.backend import PostgresBackend
from ublox_sim.store.sqlite.backend import SqliteBackend


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://game:s3cret@db:5432/ublox", "postgresql://game:***@db:5432/ublox"),
        ("postgres://game@db/ublox", "postgres://game@db/ublox"),
        (
            "postgresql://g@db/u?password=s3cret&sslmode=require",
            "postgresql://g@db/u?password=***&sslmode=require",
        ),
    ],
)
def test_a_postgres_url_names_a_database_and_shows_no_password(url: str, shown: str) -> None:
    store = resolve_store(url)
    assert store == PgStore(url)
    assert str(store) == shown == masked(url)
    assert "s3cret" not in store.key


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("mysql://root:s3cret@db/ublox", "unsupported store URL mysql://root:***@db/ublox"),
        ("postgresql://u:s3cret@db:99999/x", "bad store URL postgresql://u:***@db:99999/x"),
        ("postgresql://u:s3cret@db:port/x", "bad store URL postgresql://u:***@db:port/x"),
        ("postgresql://u:s3cret@db/a/b", "database name 'a/b'"),
        ("sqlite://relative/path", "sqlite:///ABSOLUTE/PATH"),
    ],
)
def test_a_bad_url_is_refused_by_name_with_the_password_masked(spec: str, words: str) -> None:
    with pytest.raises(InvalidInput, match="store URL") as caught:
        resolve_store(spec)
    assert words in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_paths_and_nothing_keep_the_sqlite_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UBLOX_STORE", raising=False)
    monkeypatch.setenv("UBLOX_HOME", str(tmp_path / "default"))
    assert resolve_store(tmp_path / "a") == Home(tmp_path / "a")
    assert resolve_store(str(tmp_path / "b")) == Home(tmp_path / "b")
    assert resolve_store(f"sqlite://{tmp_path / 'c'}") == Home(tmp_path / "c")
    assert resolve_store() == Home(tmp_path / "default")
    monkeypatch.setenv("UBLOX_STORE", "postgresql://u@db/x")
    assert resolve_store() == PgStore("postgresql://u@db/x")
    assert resolve_store(home=tmp_path / "a") == Home(tmp_path / "a")  # given wins
    with pytest.raises(InvalidInput, match="not both"):
        resolve_store(tmp_path / "a", home=tmp_path / "b")


def test_a_postgres_backend_is_made_without_connecting(tmp_path: Path) -> None:
    pg = open_backend("postgresql://u@db.invalid/x", backup_root=tmp_path / "snaps")
    assert isinstance(pg, PostgresBackend)
    assert pg.backup_root == tmp_path / "snaps"
    assert not pg.closed


@pytest.mark.asyncio
async def test_the_engine_opens_postgres_by_url_and_reopens_its_rows(pg_url: str) -> None:
    async with Engine.open(store=pg_url) as engine:
        assert isinstance(engine.store, PostgresBackend)
        await engine.register_player("alice", usd_obbba=100)
        await engine.deposit("alice", "2.50")
    async with Engine.open(store=pg_url) as engine:
        assert (await engine.get_player("alice")).usd_obbba_balance == Decimal("102.50")


@pytest.mark.asyncio
async def test_the_engine_follows_ublox_store(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UBLOX_STORE", pg_url)
    async with Engine.open() as engine:
        assert isinstance(engine.store, PostgresBackend)
    async with Engine.open(tmp_path / "home") as engine:  # a given home wins
        assert isinstance(engine.store, SqliteBackend)


@pytest.mark.asyncio
async def test_an_unreachable_database_is_a_clear_error(pg_url: str) -> None:
    # The cluster's own host with a database that does not exist, and a password to mask.
    head, _ = pg_url.rsplit("/", 1)
    bad = head.replace("://", "://nobody:s3cret@", 1) + "/no_such_db"
    with pytest.raises(PersistenceError, match="cannot open the store") as caught:
        async with Engine.open(store=bad):
            pass
    assert "s3cret" not in str(caught.value)
