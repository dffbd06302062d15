"""What the README says of a SQLite home while ``serve`` holds it: ``stats``, ``export``
and ``backup create`` are refused (the home's lock), ``verify`` and ``backup list`` work."""

from __future__ import annotations

import signal
from pathlib import Path

from live_server import LiveServer
from test_pg_cli import cli


def test_commands_beside_a_server_on_a_sqlite_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    live = LiveServer(home, tmp_path / "server.log")
    live.start()
    try:
        for command in (["stats"], ["export", "-o", "-"], ["backup", "create"]):
            done = cli(*command, "--home", str(home), home=tmp_path / "default")
            assert done.returncode != 0, command
            assert "is already open by another engine or process" in done.stderr, command
        verified = cli("verify", "--home", str(home), home=tmp_path / "default")
        assert verified.returncode == 0 and "verify: ok" in verified.stdout, verified.stderr
        listed = cli("backup", "list", "--json", "--home", str(home), home=tmp_path / "default")
        assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr
    finally:
        assert live.stop(signal.SIGINT) == 0, live.output()
