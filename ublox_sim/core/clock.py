"""Clocks: wall time for servers, simulated time for scenarios (deterministic timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def advance(self, hours: float) -> None:
        """Move simulated time forward; a wall clock ignores it."""
        ...


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def advance(self, hours: float) -> None:
        """Wall time moves by itself."""


class SimClock:
    """Simulated time that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2025, 12, 12, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("SimClock start must be timezone-aware")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, hours: float) -> None:
        if hours < 0:
            raise ValueError("time only moves forward")
        self._now += timedelta(hours=hours)
