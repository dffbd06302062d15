"""The SQLite writer process the crash tests kill:
``python -m conformance.crash_worker LOCATION SCENARIO`` (with ``tests/`` on the path).

Runs ``workload.crash_workload`` against a ``SqliteBackend`` at LOCATION, printing each
acknowledgement as it arrives, then waits to be killed (it never closes the store)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from ublox_sim.actors.runtime import owned_task_group
from ublox_sim.store.home import Home
from ublox_sim.store.sqlite.backend import SqliteBackend

from .workload import crash_workload


def report(line: str) -> None:
    print(line, flush=True)


async def main(location: Path, scenario: str) -> None:
    async with owned_task_group() as tg:
        backend = SqliteBackend(Home(location), hold_commits=scenario == "held")
        await backend.start(tg)
        await crash_workload(backend, scenario, report)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), sys.argv[2])
