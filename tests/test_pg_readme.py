"""README's PostgreSQL section runs as written against a real database: its command
lines (URL standing for the test's database; serve and bench left to their own tests)
in order, then its Python block with ``$UBLOX_STORE`` naming that database.
(``tests/test_readme.py`` runs the same Python block on a SQLite home.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio

from ublox_sim.engine import Engine

ROOT = Path(__file__).resolve().parents[1]


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## PostgreSQL\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert match is not None, "README.md has no PostgreSQL section"
    return match.group(1)


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section(), re.MULTILINE | re.DOTALL)


def test_the_postgres_section_runs_against_a_database(pg_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "UBLOX_STORE"}
    env |= {"UBLOX_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    (commands,) = blocks("")
    ran = 0
    for line in commands.splitlines():
        words = line.split()
        assert words[0] == "ublox-sim", line
        if words[1] in ("serve", "bench"):
            continue
        args = [
            pg_url
            if w == "URL"
            else str(tmp_path / w.removeprefix("/tmp/"))
            if w.startswith("/tmp/")
            else w
            for w in words[1:]
        ]
        done = subprocess.run(
            [sys.executable, "-m", "ublox_sim", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{line}:\n{done.stdout}\n{done.stderr}"
        ran += 1
    assert ran == 5
    assert (tmp_path / "pg-export.json").is_file() and (tmp_path / "pg-copy" / "ublox.db").is_file()

    (code,) = blocks("python")
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        env=env | {"UBLOX_STORE": pg_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == ["50.00", "50.0"]

    async def on_postgres() -> list[str]:
        async with Engine.open(store=pg_url) as engine:
            return await engine.player_ids()

    assert "pg-alice" in anyio.run(on_postgres)
    assert not (tmp_path / "home" / "ublox.db").exists()  # nothing went to a SQLite home
