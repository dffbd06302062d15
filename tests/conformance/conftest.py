"""The backends the conformance suite runs against: one fixture, one factory each.

A factory opens a backend at a location (a folder) and can open it again there, which
is how the suite checks durability. It also says what the backend can do that the
protocol leaves open: whether it has a held-commit mode, how a backup is restored, and
how the process that writes to it is killed (``run_killed``): SQLite's writer is a
subprocess that gets SIGKILL, and so is PostgreSQL's (one database of the session's
throwaway cluster per location, see ``tests/pg_harness.py``); an in-memory backend is
abandoned mid-write, never closed.

Every suite runs on SQLite and PostgreSQL, exclusive (``postgres``) and shared
(``postgres-shared``, the default users get: several writers, events reaching the bus
through the log's feed at or after commit, worlds written under their lease); a backend
joins by adding a factory to ``FACTORIES``. ``broken-fake``
(``fake.py``, deliberately wrong) is included only with ``UBLOX_CONFORMANCE_FAKE=1``,
to show that the suite can fail; ``UBLOX_CONFORMANCE_FAKE_DEFECTS=order,ties`` keeps only
those defects (``none``: a fake that should pass).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import anyio
import pytest
from pg_harness import PgCluster

import ublox_sim
from ublox_sim.actors.runtime import owned_task_group
from ublox_sim.store.backend import Backend
from ublox_sim.store.home import Home
from ublox_sim.store.postgres.backend import PostgresBackend
from ublox_sim.store.sqlite.backend import SqliteBackend

from .fake import DEFECTS, BrokenFakeBackend
from .workload import crash_workload


class BackendFactory(Protocol):
    name: str
    supports_hold: bool
    # Several processes may open the location at once (shared PostgreSQL); else a second
    # open is refused with ``StoreLocked``.
    several_writers: bool

    def open(
        self, location: Path, *, hold_commits: bool = False
    ) -> AbstractAsyncContextManager[Backend]:
        """A started backend over ``location``, closed (cleanly) on exit."""

    async def restore(self, backend: Backend, name: str) -> None:
        """Replace ``backend``'s content with backup ``name`` (made by ``create_backup``)."""

    async def run_killed(self, location: Path, scenario: str, kill_after: int) -> list[str]:
        """Run ``workload.crash_workload(scenario)`` against a backend at ``location`` and
        kill its writer once ``kill_after`` lines were reported; return those lines."""


@asynccontextmanager
async def _started(backend: Backend) -> AsyncIterator[Backend]:
    """``backend`` started in a task group of its own, closed (cleanly) on exit."""
    async with owned_task_group() as tg:
        await backend.start(tg)
        try:
            yield backend
        finally:
            await backend.aclose()


class SqliteFactory:
    name = "sqlite"
    supports_hold = True
    several_writers = False

    def open(
        self, location: Path, *, hold_commits: bool = False
    ) -> AbstractAsyncContextManager[Backend]:
        home = Home(location)
        return _started(SqliteBackend(home, flush_interval=0.05, hold_commits=hold_commits))

    async def restore(self, backend: Backend, name: str) -> None:
        assert isinstance(backend, SqliteBackend)
        await backend.local.restore_backup(name)

    async def run_killed(self, location: Path, scenario: str, kill_after: int) -> list[str]:
        return await anyio.to_thread.run_sync(_run_worker, location, scenario, kill_after)


def _run_worker(
    location: Path, scenario: str, kill_after: int, store: str = "", mode: str = "exclusive"
) -> list[str]:
    """Run ``crash_worker.py`` and SIGKILL it after ``kill_after`` lines (or its death)."""
    # This very ublox_sim, and tests/ (for ``conformance.workload``).
    roots = (Path(ublox_sim.__file__).resolve().parents[1], Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, roots))}
    lines: list[str] = []
    errors = location.parent / f"{location.name}.worker.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conformance.crash_worker",
                store or str(location),
                scenario,
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        try:
            while len(lines) < kill_after:
                line = proc.stdout.readline()
                if not line:
                    break  # the worker died on its own: the test sees too few lines
                lines.append(line.strip())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, errors.read_text()
    return lines


def fake_defects() -> frozenset[str]:
    """Every defect, or those named in ``UBLOX_CONFORMANCE_FAKE_DEFECTS`` (``none``: none)."""
    named = os.environ.get("UBLOX_CONFORMANCE_FAKE_DEFECTS")
    if named is None:
        return DEFECTS
    chosen = frozenset(n.strip() for n in named.split(",") if n.strip() not in ("", "none"))
    assert chosen <= DEFECTS, f"unknown defects {sorted(chosen - DEFECTS)}"
    return chosen


class FakeFactory:
    name = "broken-fake"
    supports_hold = True
    several_writers = False

    def __init__(self) -> None:
        self.defects = fake_defects()

    @asynccontextmanager
    async def open(self, location: Path, *, hold_commits: bool = False) -> AsyncIterator[Backend]:
        async with owned_task_group() as tg:
            backend = BrokenFakeBackend(location, hold_commits=hold_commits, defects=self.defects)
            await backend.start(tg)
            try:
                yield backend
            finally:
                await backend.aclose()

    async def restore(self, backend: Backend, name: str) -> None:
        assert isinstance(backend, BrokenFakeBackend)
        await backend.restore_backup(name)

    async def run_killed(self, location: Path, scenario: str, kill_after: int) -> list[str]:
        # The process dies: whatever the backend holds only in memory is gone, and it
        # never gets to close. Abandon it mid-write by cancelling everything it runs.
        lines: list[str] = []
        enough = anyio.Event()

        def report(line: str) -> None:
            lines.append(line)
            if len(lines) >= kill_after:
                enough.set()

        async with anyio.create_task_group() as tg:
            backend = BrokenFakeBackend(
                location, hold_commits=scenario == "held", defects=self.defects
            )
            await backend.start(tg)
            tg.start_soon(crash_workload, backend, scenario, report)
            await enough.wait()
            tg.cancel_scope.cancel()
        backend.kill()
        return lines[:kill_after]


class PostgresFactory:
    """One database of the session's PostgreSQL cluster per location."""

    name = "postgres"
    supports_hold = True
    shared = False
    several_writers = False

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        self.urls: dict[Path, str] = {}

    def url(self, location: Path) -> str:
        if location not in self.urls:
            self.urls[location] = self.cluster.fresh_database()
        return self.urls[location]

    def open(
        self, location: Path, *, hold_commits: bool = False
    ) -> AbstractAsyncContextManager[Backend]:
        url = self.url(location)
        # A held (checkpointed) run is exclusive whatever is asked (``mode.choose_shared``).
        backend = PostgresBackend(
            url,
            hold_commits=hold_commits,
            backup_root=location / "backups",
            shared=self.shared and not hold_commits,
        )
        return _started(backend)

    async def restore(self, backend: Backend, name: str) -> None:
        assert isinstance(backend, PostgresBackend)
        await backend.restore_backup(name)

    async def run_killed(self, location: Path, scenario: str, kill_after: int) -> list[str]:
        location.parent.mkdir(parents=True, exist_ok=True)
        return await anyio.to_thread.run_sync(
            _run_worker,
            location,
            scenario,
            kill_after,
            self.url(location),
            "shared" if self.shared else "exclusive",
        )


class SharedPostgresFactory(PostgresFactory):
    """PostgreSQL as users get it by default: shared (world leases, the event log feeding
    the bus). The contract is the same; events reach the bus at or after their commit."""

    name = "postgres-shared"
    shared = True
    several_writers = True


# name -> the factory, made for one test (a PostgreSQL one needs the session's cluster).
FACTORIES: dict[str, Callable[[pytest.FixtureRequest], BackendFactory]] = {
    "sqlite": lambda request: SqliteFactory(),
    "postgres": lambda request: PostgresFactory(request.getfixturevalue("pg_cluster")),
    "postgres-shared": lambda request: SharedPostgresFactory(request.getfixturevalue("pg_cluster")),
}
if os.environ.get("UBLOX_CONFORMANCE_FAKE") == "1":
    FACTORIES["broken-fake"] = lambda request: FakeFactory()


@pytest.fixture(params=sorted(FACTORIES))
def backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    return FACTORIES[request.param](request)


@pytest.fixture
def location(tmp_path: Path) -> Path:
    return tmp_path / "store"
