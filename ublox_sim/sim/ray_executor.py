"""Sweep cells as Ray tasks: the same cells, the same results, on a Ray cluster.

``RayExecutor`` is the sweep's ``Executor`` (``ublox_sim.sim.sweep``) for a cluster: each
cell runs as one Ray task (``run_cell`` on a worker, in the cell's own home there) and
only the cell's result (its tables, or its error) comes back through Ray's object store;
the driver assembles the sweep's output folder exactly as a local sweep does, so the
tables are byte-identical to ``--jobs 1``.

* ``address=None``: a local Ray instance is started for the run (``num_cpus`` CPUs, a
  small object store, its files in a temporary folder) and stopped after it, its
  processes waited for. If this process is already connected to Ray (the caller ran
  ``ray.init``), that connection is used and left as it was.
* ``address="auto"`` (a cluster started on this machine with ``ray start``) or
  ``"ray://HEAD:10001"`` (Ray Client): the cells run on that cluster, and this process
  only disconnects at the end.

A worker that dies mid-cell (killed, out of memory, its node lost) is Ray's to retry
(``max_retries``): the retried task runs the same cell again in the same home, which
resumes from the cell's last checkpoint when the retry lands on the same node (and starts
the cell afresh on another node's disk; the result is the same either way). A cell whose
retries are exhausted is reported as that cell's error; the other cells go on.

The homes live where the tasks run: on one machine, under the sweep's output folder; on
a multi-node cluster, at the same path on each worker's own disk (the path must be
writable there), and they stay on the workers: only the tables travel (so a rerun skips
or resumes a cell only when Ray places it where its home is; elsewhere it runs again,
to the same result). Tasks run from the driver's working folder when the node has it.
Every node needs the scenario file at the path the driver was given, the same ublox-sim
version as the driver (checked: a cell on a worker with another version fails with an
error naming both), the same Python minor and the same Ray.

Ray is imported when a sweep starts, never by importing this module: the core runs
without the ``[ray]`` extra.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from ..core.errors import InvalidInput, RuntimeFailure
from .sweep import Cell, CellFn, CellResult

LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
"""A local instance's object store: cells send back tables of kilobytes, not arrays of
gigabytes, and Ray's default (30% of the machine's memory) is not ours to take."""

DEFAULT_MAX_RETRIES = 3
"""Ray retries of a cell whose worker died (an error raised by the cell is never
retried: the same cell would raise it again)."""

# A Unix socket path is at most 107 bytes, and Ray's sit 83 bytes deep in our folder
# (/ublox-ray-XXXXXXXX/session_DATE_TIME_USEC_PID/sockets/plasma_store): under a deeper
# $TMPDIR (a test's) the instance would fail to start.
_MAX_TEMP_ROOT = 24


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise InvalidInput(
            "--ray needs Ray, which is not installed: pip install 'ublox-sim[ray]'"
        ) from exc
    return ray


def installed_version() -> str:
    """ublox-sim's installed version, as ``ublox_sim.__version__`` reads it (that face of
    the package is above this layer)."""
    try:
        return version("ublox-sim")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


def run_on_worker(fn: CellFn, cell: Cell, driver_version: str, driver_cwd: str) -> CellResult:
    """The body of every Ray task. Refuses a worker whose ublox-sim differs from the
    driver's (its results could differ); runs the cell from the driver's working folder
    when the worker has it (relative scenario and --out paths mean the same there), else
    from its own."""
    mine = installed_version()
    if mine != driver_version:
        raise RuntimeFailure(
            f"the Ray worker on pid {os.getpid()} has ublox-sim {mine}, the driver "
            f"{driver_version}: install the driver's version on every node"
        )
    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    return fn(cell)


@dataclass(eq=False)
class RayExecutor:
    """The sweep's ``Executor`` on Ray (see the module doc): ``map`` yields each cell with
    its result as the tasks finish, in no fixed order (the sweep orders its tables).

    ``with RayExecutor(...) as executor:`` connects (or starts the local instance) on
    entry, so that a wrong address fails before the sweep writes anything, and holds the
    connection until the block ends; without it, each ``map`` connects for its run."""

    address: str | None = None
    num_cpus: int | None = None
    """CPUs of a local instance (``address=None``); Ray's default is the machine's."""
    max_retries: int = DEFAULT_MAX_RETRIES
    _session: ExitStack | None = field(default=None, init=False, repr=False)
    _cluster_cpus: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise InvalidInput("--ray: the address is empty (give none, auto or ray://HOST:PORT)")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise InvalidInput(f"Ray CPUs: {self.num_cpus} is not a positive count")
        if self.max_retries < 0:
            raise InvalidInput(f"Ray max_retries: {self.max_retries} is negative")

    @property
    def jobs(self) -> int:
        """Cells running at once, for the sweep's progress: the cluster's CPUs once
        connected, else the local instance's."""
        if self._cluster_cpus is not None:
            return self._cluster_cpus
        return (self.num_cpus or os.cpu_count() or 1) if self.address is None else 1

    def __enter__(self) -> RayExecutor:
        if self._session is not None:
            raise RuntimeFailure("this RayExecutor is already connected")
        with ExitStack() as session:
            session.enter_context(self._connected(_ray()))
            self._session = session.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def map(self, fn: CellFn, cells: Sequence[Cell]) -> Iterator[tuple[Cell, CellResult]]:
        ray = _ray()
        with nullcontext() if self._session is not None else self._connected(ray):
            task = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(run_on_worker)
            shared_fn = ray.put(fn)  # shipped once, not once per cell
            cwd = os.getcwd()
            ours = installed_version()
            pending = {task.remote(shared_fn, cell, ours, cwd): cell for cell in cells}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        result: CellResult = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        result = CellResult(cell, error=self._why(ray, exc), how="error")
                    yield cell, result

    def _why(self, ray: ModuleType, exc: BaseException) -> str:
        if isinstance(exc, ray.exceptions.RayTaskError):
            # The cell's code raised (run_cell reports a cell's own faults as results,
            # so this is a defect): its type and message, as LocalExecutor reports it.
            return f"{type(exc.cause).__name__}: {exc.cause}"
        return f"its Ray task failed ({self.max_retries} retries): {type(exc).__name__}: {exc}"

    @contextmanager
    def _connected(self, ray: ModuleType) -> Iterator[None]:
        if self.address is None and ray.is_initialized():
            yield  # the caller's own Ray: theirs to keep
            return
        if self.address is not None:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, configure_logging=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InvalidInput(f"--ray {self.address}: cannot connect ({exc})") from exc
            try:
                self._cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
                yield
            finally:
                self._cluster_cpus = None
                ray.shutdown()  # disconnects; the cluster stays up
            return
        saved = _ray_environment()
        temp = tempfile.mkdtemp(prefix="ublox-ray-", dir=_short_temp_root())
        try:
            ray.init(
                num_cpus=self.num_cpus,
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                _temp_dir=temp,
                configure_logging=False,
                log_to_driver=False,
            )
            try:
                yield
            finally:
                ray.shutdown(wait_for_processes=True)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
            for name in _ray_environment().keys() - saved.keys():
                del os.environ[name]
            os.environ.update(saved)


CONNECT_TIMEOUT_SECONDS = 10.0
"""How long the address check waits for a TCP answer (a host that drops packets)."""


def _check_reachable(address: str) -> None:
    """Refuse an address nothing answers at, before ``ray.init``: for a ``HOST:PORT`` of
    a GCS that is not there, Ray retries for minutes, logging each attempt (Ray Client's
    ``ray://`` gives up after 30 s). ``auto`` (found by Ray on this machine) is Ray's."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # not HOST:PORT: Ray says what is wrong with it
    host = host.strip("[]")  # [::1]:6379
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise InvalidInput(
            f"--ray {address}: cannot connect (nothing answers at {host}:{port}: "
            f"{exc.strerror or exc}); is the Ray cluster up there (`ray start --head`)?"
        ) from exc


def _ray_environment() -> dict[str, str]:
    """The environment variables ray.init sets in the calling process (token
    authentication, usage stats, its debugger hook): put back after a local instance, so
    the embedding process is left as it was found."""
    return {k: v for k, v in os.environ.items() if k.startswith("RAY_") or k == "PYTHONBREAKPOINT"}


def _short_temp_root() -> str:
    root = tempfile.gettempdir()
    return root if len(root) <= _MAX_TEMP_ROOT else "/tmp"
