"""A crash campaign: a scenario run killed with SIGKILL at random instants reopens
consistent (integrity, ledger, escrow, tokens, CDT files) and ``--resume`` finishes it
with an export byte-identical to an uninterrupted run's.

K kills (``UBLOX_CRASH_KILLS``, default 5) at seeded random instants spread over the
run's duration; every other kill also kills the resume that follows it, so a run is
killed while resuming too. ``UBLOX_CRASH_SEED`` changes the instants.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from ublox_sim.store.cdt import world_file_name
from ublox_sim.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_COLOR": "1"}
SCENARIO = ROOT / "scenarios" / "festival.yaml"
CUT = (
    "--set",
    "clock.ticks=24",
    "--set",
    "checkpoint_every=3",
    "--set",
    "cohorts.0.count=300",
)
TOTAL_TICKS = 24
KILLS = int(os.environ.get("UBLOX_CRASH_KILLS", "5"))
SEED = int(os.environ.get("UBLOX_CRASH_SEED", "20251126"))


def command(home: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ublox_sim",
        "run",
        str(SCENARIO),
        "--home",
        str(home),
        "--json",
        *CUT,
        *extra,
    ]


def start(home: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command(home, *extra),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(home, *extra),
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def kill_at(proc: subprocess.Popen[bytes], started: float, instant: float) -> bool:
    """SIGKILL ``proc`` ``instant`` seconds after ``started``; False if it had already ended."""
    delay = started + instant - time.monotonic()
    if delay > 0:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()
    if killed:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, f"the run failed on its own (exit {proc.returncode})"
    return killed


def checkpoint_tick(home: Path) -> int | None:
    """The tick of the last committed checkpoint, or None if none was committed."""
    with closing(sqlite3.connect(f"{(home / 'ublox.db').as_uri()}?mode=ro", uri=True)) as conn:
        if not has_schema(conn):
            return None
        row = conn.execute("SELECT tick FROM runs WHERE run_id = 1").fetchone()
    return None if row is None else int(row[0])


def has_schema(conn: sqlite3.Connection) -> bool:
    """False for a database killed before its first migration committed (empty, version 0)."""
    return conn.execute("PRAGMA user_version").fetchone() != (0,)


def check_consistent(home: Path) -> int | None:
    """What a killed run left must verify; returns its checkpoint tick (None: none yet)."""
    db = home / "ublox.db"
    if not db.exists():
        return None  # killed before it created its store: nothing on disk to check
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    findings = verify_store(home)
    assert findings == [], "\n".join(map(str, findings))
    tick = checkpoint_tick(home)
    if tick is None:
        # Killed before checkpoint 0 committed: its held work was rolled back, nothing else.
        with closing(sqlite3.connect(db)) as conn:
            tables = ("players", "ptos", "transactions", "pts_tokens", "cdt_files")
            for table in tables if has_schema(conn) else ():
                assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    else:
        assert 0 <= tick <= TOTAL_TICKS and tick % 3 in (0, TOTAL_TICKS % 3)
    return tick


def resume(home: Path, tick: int | None, reference: bytes) -> str:
    """Finish a killed run; its export must be the reference's, byte for byte."""
    result = finish(home, "--resume")
    if tick is None and not (home / "ublox.db").exists():
        # Never got as far as a store: --resume has nothing to continue, and says so.
        assert result.returncode == 2, result.stderr
        assert "nothing to resume" in result.stderr, result.stderr
        how = "fresh run"
        result = finish(home)
    elif tick is None:
        # A store but no checkpoint: a clear refusal, then a fresh run in the same home.
        assert result.returncode == 2, result.stderr
        assert "nothing to resume" in result.stderr and str(home) in result.stderr
        how = "fresh run (nothing checkpointed)"
        result = finish(home)
    else:
        how = f"resumed from tick {tick}"
    assert result.returncode == 0, (how, result.stderr)
    assert "Traceback" not in result.stderr
    export = (home / "export.json").read_bytes()
    assert export == reference, f"{how}: the export differs from the uninterrupted run's"
    assert checkpoint_tick(home) == TOTAL_TICKS
    assert verify_store(home) == []
    # Every world file left is one the store references (older versions were pruned).
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        wanted = {world_file_name(w, v) for w, v in conn.execute("SELECT * FROM cdt_files")}
    files = {p.name for p in (home / "cdt_states").iterdir()}
    assert {f for f in files if not f.startswith(".")} == wanted
    # A write cut short leaves its hidden temporary file; noted, not an inconsistency.
    stray = sorted(f for f in files if f.startswith("."))
    return how + (f" ({len(stray)} orphaned temp file(s) in cdt_states)" if stray else "")


@dataclass
class Reference:
    export: bytes
    store_at: float  # seconds from start until ublox.db existed
    duration: float


def reference_run(home: Path) -> Reference:
    started = time.monotonic()
    proc = start(home)
    store_at: float | None = None
    while proc.poll() is None:
        if store_at is None and (home / "ublox.db").exists():
            store_at = time.monotonic() - started
        time.sleep(0.005)
    duration = time.monotonic() - started
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == 0, err
    assert store_at is not None
    assert checkpoint_tick(home) == TOTAL_TICKS
    assert verify_store(home) == []
    return Reference((home / "export.json").read_bytes(), store_at, duration)


def instants(rng: random.Random, count: int, low: float, high: float) -> list[float]:
    """``count`` instants in [low, high], one in each equal slice (spread, not clumped)."""
    width = (high - low) / count
    return [low + width * (k + rng.random()) for k in range(count)]


@pytest.mark.slow
def test_a_run_killed_at_random_instants_reopens_consistent_and_resumes_identically(
    tmp_path: Path,
) -> None:
    assert KILLS >= 1
    reference = reference_run(tmp_path / "reference")
    rng = random.Random(SEED)
    # From a little before the store appears (start-up varies) to the very end of the run.
    low = max(0.0, reference.store_at * 0.8)
    plan = instants(rng, KILLS, low, reference.duration * 0.95)
    rng.shuffle(plan)
    log: list[str] = []
    outcomes: dict[str, int] = {}
    for k, instant in enumerate(plan):
        home = tmp_path / f"kill{k:03d}"
        proc = start(home)
        killed = kill_at(proc, time.monotonic(), instant)
        tick = check_consistent(home)
        entry = f"kill {k}: at {instant:.2f} s {'killed' if killed else 'run had ended'}"
        entry += f", checkpoint {tick}"
        if k % 2 == 1 and tick is not None and tick < TOTAL_TICKS:
            # Kill the resume too, somewhere in its own run.
            again = rng.uniform(0.0, reference.duration)
            proc = start(home, "--resume")
            killed_again = kill_at(proc, time.monotonic(), again)
            tick_again = check_consistent(home)
            assert tick_again is not None and tick_again >= tick, "a resume went backwards"
            entry += (
                f"; resume {'killed' if killed_again else 'ended'} at {again:.2f} s,"
                f" checkpoint {tick_again}"
            )
            tick = tick_again
        how = resume(home, tick, reference.export)
        kind = how.split(" from")[0].split(" (")[0]
        outcomes[kind] = outcomes.get(kind, 0) + 1
        log.append(f"{entry} -> {how}: export identical")
    print(
        f"\ncrash campaign: reference {reference.duration:.2f} s (store at"
        f" {reference.store_at:.2f} s), {KILLS} kills, outcomes {outcomes}"
    )
    print("\n".join(log))
