"""PostgreSQL fixtures (see ``tests/pg_harness.py``): one cluster per pytest session,
one fresh database per test. Imported by ``tests/conftest.py``.

Outside CI a machine without PostgreSQL's binaries skips these tests with the reason
printed; in CI (``CI`` set) a missing cluster fails instead, so it cannot go unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pg_harness import PgCluster, cluster, missing_reason


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    with cluster() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A URL to a new, empty database of the session's cluster, dropped after the test."""
    url = pg_cluster.fresh_database()
    yield url
    pg_cluster.drop_database(url)
