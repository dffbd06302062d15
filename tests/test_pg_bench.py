"""``ublox-sim bench persistence --store URL`` at its tiniest: every PostgreSQL contender
reports, in a schema of its own that is dropped after (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", "bench", "persistence", "--size", "tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


async def _schemas(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ublox_bench%'"
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


def test_postgres_runs_next_to_sqlite_and_leaves_nothing(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench("--store", pg_url, "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "== persistence on PostgreSQL (tiny) ==" in done.stdout
    report = json.loads(out.read_text())["persistence_pg"]
    assert report["postgres"]["synchronous_commit"] == "on"
    names = set(report["detail"])
    for kind in ("one", "mixed"):
        expected = {f"sqlite_{kind}", f"sqlite_full_{kind}"}
        expected |= {f"pg_{n}p_{kind}" for n in (1, 2, 4)}
        assert expected <= names
    for figures in report["detail"].values():
        assert figures["units_per_s"]["median"] > 0
    assert anyio.run(_schemas, pg_url) == []


@pytest.mark.parametrize(
    ("store", "words"),
    [
        ("/tmp/a/home", "takes a postgresql:// URL"),
        ("postgresql://u:s3cret@h:0x/d", "bad store URL"),
    ],
)
def test_a_store_that_is_no_database_url_is_refused(store: str, words: str) -> None:
    done = bench("--store", store)
    assert done.returncode == 2
    assert words in done.stderr and "s3cret" not in done.stderr
