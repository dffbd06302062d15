from __future__ import annotations

from pathlib import Path

import pytest
from conftest_pg import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store named as users name one: a home folder, then a PostgreSQL URL (a throwaway
    cluster's database; skipped with a reason outside CI when PostgreSQL is missing)."""
    if request.param == "sqlite":
        return str(tmp_path / "home")
    url: str = request.getfixturevalue("pg_url")
    return url
