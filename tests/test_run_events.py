"""A refused scripted event is counted in the report and, with -v, logged once with
where it is written, what it asked and why it was refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_scenario import BASE

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_COLOR": "1"}
ENV.pop("UBLOX_HOME", None)

REFUSED = BASE + "\n".join(
    [
        "  - at: 2",  # 31
        "    transfer: {from: bob, to: alice, amount: 1000000}",  # 32
        "  - at: 3",  # 33
        "    play: {player: alice, pto: g1, hours: 1}",  # 34
        "",
    ]
)


def run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "refused.yaml"
    path.write_text(REFUSED, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ublox_sim",
            *options,
            "run",
            str(path),
            "--home",
            str(tmp_path / "home"),
            "--json",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_each_refused_scripted_event_is_logged_with_its_line_action_and_reason(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, "-v", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcomes"]["transfer_refused"] == 1
    assert report["outcomes"]["play_refused"] == 1
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    refused = [e for e in logged if e["event"] == "run.event_refused"]
    path = tmp_path / "refused.yaml"
    assert [(e["where"], e["action"], e["code"]) for e in refused] == [
        (f"{path}:31", "transfer", "insufficient_funds"),
        (f"{path}:33", "play", "invalid_state"),
    ]
    transfer, play = refused
    assert transfer["transfer.amount"] == 1000000
    assert transfer["transfer.from"] == "bob"
    assert "needs 1000000.00" in transfer["reason"]
    assert play["play.player"] == "alice"
    assert "its world opens once funded" in play["reason"]


def test_without_v_refusals_are_only_counted(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcomes"]["transfer_refused"] == 1
    assert "run.event_refused" not in result.stderr
