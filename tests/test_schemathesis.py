"""Schemathesis (the third-party API tester) against the real server and its generated document.

The run is the CLI a user would run: every phase (examples, coverage, fuzzing,
stateful), every check, operator credentials given per security scheme (so the
missing-header and ignored-auth checks can take them away), 50 examples an
operation, deterministic generation. It must find nothing, and its stateful phase
must really follow the document's links (the 201 responses' ids into later calls).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from live_server import ADMIN_KEY, LiveServer

TESTS = Path(__file__).parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_all_checks_and_follows_links(tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'[auth.openapi.operatorKey]\nbearer = "{ADMIN_KEY}"\n'
        f'[auth.openapi.playerToken]\nbearer = "{ADMIN_KEY}"\n'
        # Scenarios long enough for player → PTO → purchase chains (the default is 6).
        "[phases.stateful]\nmax-steps = 12\n"
    )
    server = LiveServer(tmp_path / "home", tmp_path / "server.log")
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["SCHEMATHESIS_HOOKS"] = "schemathesis_hooks"
        env["PYTHONPATH"] = str(TESTS)
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--no-color",
                "--config-file",
                str(config),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "50",
                "--generation-deterministic",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            timeout=540,
        )
    finally:
        code = server.stop()
    out = run.stdout + run.stderr
    # The run's summary, for the note (pytest -s shows it).
    print(
        "\n".join(
            line
            for line in out.splitlines()
            if re.search(
                r"API Links|generated,|Stateful|Coverage|Fuzzing|Operations|Selected|Tested", line
            )
        )
    )
    assert run.returncode == 0, out[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts is not None and counts.group(1) == counts.group(2), out[-3000:]
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", out)
    assert links is not None, out[-3000:]
    assert int(links.group(1)) >= 10, links.group(0)  # links were followed, not only listed
    assert re.search(r"✅ Stateful", out), out[-3000:]
    assert code == 0
    assert "Traceback" not in server.output()
