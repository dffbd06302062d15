"""The writer process the crash tests kill:
``python -m conformance.crash_worker STORE SCENARIO`` (with ``tests/`` on the path).

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


async def main(store: str, scenario: str) -> None:
    """``store``: a home's path or a PostgreSQL URL (``store.open``)."""
    async with owned_task_group() as tg:
        # Exclusive on PostgreSQL: the suite's contract is one writer's (see conftest).
        backend = open_backend(store, hold_commits=scenario == "held", shared=False)
        await backend.start(tg)
        await crash_workload(backend, scenario, report)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
