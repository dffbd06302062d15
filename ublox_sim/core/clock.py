"""The one clock: wall time for servers, simulated time for scenarios (deterministic timestamps).

Everything that stamps a time takes a ``Clock`` and calls ``clock.now()``: the engine,
the seed's storage facade, the server. ``WallClock`` reads the system's UTC time;
``SimClock`` moves only when told to, so a scenario run stamps the same times every run.
A scenario's ``clock:`` section (``sim.scenario.ClockSpec``) makes its ``SimClock``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

# Where simulated time starts unless told otherwise (the seed notes' date).
DEFAULT_START: Final = datetime(2025, 12, 12, tzinfo=UTC)


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
        start = start or DEFAULT_START
        if start.tzinfo is None:
            raise ValueError("SimClock start must be timezone-aware")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, hours: float) -> None:
        if hours < 0:
            raise ValueError("time only moves forward")
        self._now += timedelta(hours=hours)


WALL_CLOCK: Final[Clock] = WallClock()  # stateless: one is enough for every caller
