from __future__ import annotations

import pytest
from conftest_pg import pg_cluster, pg_url  # noqa: F401  (PostgreSQL fixtures)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
