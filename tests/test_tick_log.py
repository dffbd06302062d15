"""A tick's log rows (``rows._tick_sessions``: each session's id set in its payload by the
one statement of many rows) are byte for byte what writing the unit event by event
stores: the log's replays (``events_after``) read these bytes, the export does not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from test_tick import _open, _setup

pytestmark = pytest.mark.anyio


async def _log(home: Path) -> list[tuple[int, str, str, str]]:
    async with _open(home) as engine:
        await _setup(engine)
        for hours in (1.0, 0.5):
            await engine.tick(
                hours, [("g1", "alice", 1.0), ("g1", "bob", 0.5), ("g2", "bob", 0.25)]
            )
    with sqlite3.connect(home / "ublox.db") as db:
        return db.execute("SELECT seq, kind, at, payload FROM event_log ORDER BY seq").fetchall()


async def test_a_ticks_log_rows_are_the_bytes_of_event_by_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ublox_sim.store.sqlite import rows

    with anyio.fail_after(120):
        bulk = await _log(tmp_path / "bulk")
        monkeypatch.setattr(rows, "_is_tick", lambda events: False)
        single = await _log(tmp_path / "single")
    sessions = [row for row in bulk if row[1] == "session_played"]
    assert len(sessions) == 6
    assert [int(p.split('"session_id":')[1].split(",")[0]) for *_, p in sessions] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert bulk == single
