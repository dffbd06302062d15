"""The PostgreSQL test harness itself: the session's cluster runs on 127.0.0.1 with its
socket in its own folder, each test's database starts empty, and a cluster stops and
leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

from pg_harness import PgCluster, cluster


def test_the_cluster_listens_on_loopback_only(pg_cluster: PgCluster) -> None:
    assert pg_cluster.running
    assert pg_cluster.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg_cluster.psql("SHOW port") == str(pg_cluster.port)
    assert pg_cluster.psql("SHOW unix_socket_directories") == str(pg_cluster.socket_dir)
    assert pg_cluster.psql("SELECT current_user") == "ublox"
    assert pg_cluster.psql("SHOW server_version_num").isdigit()


def _write_a_row(pg_cluster: PgCluster, url: str) -> str:
    name = url.rsplit("/", 1)[1]
    tables = pg_cluster.psql(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database=name
    )
    pg_cluster.psql("CREATE TABLE mark (n BIGINT NOT NULL)", database=name)
    pg_cluster.psql("INSERT INTO mark VALUES (1)", database=name)
    return tables


def test_a_test_gets_an_empty_database(pg_cluster: PgCluster, pg_url: str) -> None:
    # Both tests write the same table: whichever runs second would fail if it saw the
    # first one's database (CREATE TABLE mark would raise).
    assert _write_a_row(pg_cluster, pg_url) == "0"


def test_another_test_gets_another_empty_database(pg_cluster: PgCluster, pg_url: str) -> None:
    assert _write_a_row(pg_cluster, pg_url) == "0"


def test_a_cluster_stops_and_removes_its_folder(pg_cluster: PgCluster) -> None:
    # pg_cluster: skip (or fail in CI) as the other tests do when binaries are missing.
    with cluster() as pg:
        root, port = pg.root, pg.port
        url = pg.fresh_database()
        assert url == f"postgresql://ublox@127.0.0.1:{port}/{url.rsplit('/', 1)[1]}"
        assert (root / "data" / "PG_VERSION").is_file()
    assert not pg.running
    assert not Path(root).exists()
