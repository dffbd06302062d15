"""The writer process the crash tests kill:
``python -m conformance.crash_worker STORE SCENARIO [shared]`` (with ``tests/`` on the
path; ``shared``: a PostgreSQL store opened shared, as users get it by default).

Runs ``workload.crash_workload`` against the backend STORE names (a home's path or a
PostgreSQL URL, see ``store.open``), printing each
acknowledgement as it arrives, then waits to be killed (it never closes the store)."""

from __future__ import annotations

import sys

import anyio

from ublox_sim.actors.runtime import owned_task_group
from ublox_sim.store.open import open_backend

from .workload import crash_workload


def report(line: str) -> None:
    print(line, flush=True)


async def main(store: str, scenario: str, mode: str = "exclusive") -> None:
    """``store``: a home's path or a PostgreSQL URL (``store.open``)."""
    async with owned_task_group() as tg:
        held = scenario == "held"  # a held run is exclusive (``mode.choose_shared``)
        backend = open_backend(store, hold_commits=held, shared=mode == "shared" and not held)
        await backend.start(tg)
        await crash_workload(backend, scenario, report)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
