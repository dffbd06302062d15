"""The CDT array store: one compressed ``.npz`` per world under ``cdt_states/``.

Writes are coalesced (a world marked dirty ten times is written once per flush) and
done off the event loop: ``np.savez_compressed`` to a temporary file, fsync,
``os.replace``, fsync of the folder, so a crash leaves either the old file or the
new one, never a torn one. Loading uses ``allow_pickle=False`` and refuses
symlinks and object arrays: loading a pickle runs code.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import numpy as np
from numpy.typing import NDArray

from ..core.errors import CorruptCdtFile, PersistenceError
from ..core.ids import check_file_name
from ..core.logsetup import get_logger
from .home import fsync_dir

log = get_logger(__name__)

Arrays = Mapping[str, NDArray[np.generic]]


@dataclass(frozen=True, slots=True)
class _Dirty:
    arrays: Arrays
    version: int | None


def world_file_name(world_id: str, version: int | None = None) -> str:
    """A world's file name: ``<world>.npz``, or ``<world>.v<N>.npz`` for version N.

    The one place the name is made: the store, verify and backups all find a
    world's file through it (a run writes each checkpoint's version beside the last)."""
    return f"{world_id}.npz" if version is None else f"{world_id}.v{version}.npz"


def is_world_file(name: str, world_id: str) -> bool:
    """True for a file name ``world_file_name(world_id, version)`` gives, any version."""
    return re.fullmatch(re.escape(world_id) + r"(\.v\d+)?\.npz", name) is not None


def write_npz_atomic(path: Path, arrays: Arrays) -> int:
    """Write ``arrays`` to ``path`` so that a crash never leaves a torn file. Returns bytes."""
    for name, array in arrays.items():
        if array.dtype.hasobject:  # would need a pickle; refuse before writing anything
            raise ValueError(f"array {name!r} holds Python objects; only numeric arrays are stored")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            # (mypy matches **arrays against the allow_pickle flag; the names are array names)
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def load_npz(path: Path) -> dict[str, NDArray[np.generic]]:
    """Load every array of a ``.npz``, refusing symlinks, pickles and torn files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise CorruptCdtFile(path, "the file is missing") from exc
    except OSError as exc:
        reason = "it is a symlink" if path.is_symlink() else str(exc)
        raise CorruptCdtFile(path, reason) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptCdtFile(path, "not a regular file")
    with os.fdopen(fd, "rb") as handle:
        return read_npz(handle, path)


def read_npz(handle: BinaryIO, path: Path) -> dict[str, NDArray[np.generic]]:
    """Every array of the ``.npz`` in ``handle`` (a file, or a database row's bytes),
    refusing pickles and damage as ``CorruptCdtFile`` naming ``path``."""
    try:
        with np.load(handle, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise CorruptCdtFile(path, f"{type(exc).__name__}: {exc}") from exc
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise CorruptCdtFile(path, f"array {name!r} holds objects")
    return arrays


class CdtStore:
    """Coalescing, crash-safe writer and safe reader of per-world ``.npz`` files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # a read-only or missing home: prepare() reports it with a clear error
        self._dirty: dict[str, _Dirty] = {}
        self._dirty_event = anyio.Event()
        self._lock = anyio.Lock()
        self.last_error: BaseException | None = None
        self.files_written = 0
        self.bytes_written = 0

    def prepare(self) -> None:
        """Create the folder (the store calls this once it holds the home's lock)."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, world_id: str, version: int | None = None) -> Path:
        check_file_name(world_id, "world id")
        return self.directory / world_file_name(world_id, version)

    def mark_dirty(self, world_id: str, arrays: Arrays, *, version: int | None = None) -> None:
        """Schedule ``arrays`` to be written. They are copied at flush time, so pass live ones."""
        self.path_for(world_id, version)  # validate now, not in the background
        self._dirty[world_id] = _Dirty(arrays, version)
        self._dirty_event.set()

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def is_dirty(self, world_id: str) -> bool:
        """Whether arrays of ``world_id`` wait to be written."""
        return world_id in self._dirty

    def forget(self, world_id: str) -> None:
        """Drop arrays waiting to be written (their unit was refused)."""
        self._dirty.pop(world_id, None)

    async def flush(self) -> list[Path]:
        """Write every dirty world now; return when the files are durable."""
        async with self._lock:
            if not self._dirty:
                return []
            dirty, self._dirty = self._dirty, {}
            # Copy on the event loop: the owning actors mutate arrays only there, so
            # this snapshot is consistent even while they go on stepping.
            jobs = [
                (
                    self.path_for(world_id, item.version),
                    {k: np.array(v) for k, v in item.arrays.items()},
                )
                for world_id, item in dirty.items()
            ]
            try:
                sizes = await anyio.to_thread.run_sync(_write_all, jobs)
            except OSError as exc:
                for world_id, item in dirty.items():  # keep them dirty unless re-marked since
                    self._dirty.setdefault(world_id, item)
                self.last_error = exc
                raise PersistenceError(f"CDT flush to {self.directory} failed: {exc}") from exc
            self.last_error = None
            self.files_written += len(sizes)
            self.bytes_written += sum(sizes)
            return [path for path, _ in jobs]

    async def run_flusher(self, interval: float = 0.5) -> None:
        """Background task: flush dirty worlds at most every ``interval`` seconds."""
        while True:
            await self._dirty_event.wait()
            self._dirty_event = anyio.Event()
            await anyio.sleep(interval)
            try:
                await self.flush()
            except PersistenceError as exc:
                log.error("cdt.flush_failed", error=str(exc))

    def load(self, world_id: str, version: int | None = None) -> dict[str, NDArray[np.generic]]:
        return load_npz(self.path_for(world_id, version))

    async def aload(
        self, world_id: str, version: int | None = None
    ) -> dict[str, NDArray[np.generic]]:
        """The world's arrays: the not-yet-flushed ones if dirty (read your writes), else the file."""
        pending = self._dirty.get(world_id)
        if pending is not None:
            return {k: np.array(v) for k, v in pending.arrays.items()}
        path = self.path_for(world_id, version)
        return await anyio.to_thread.run_sync(load_npz, path)

    def remove(self, world_id: str, version: int | None = None) -> None:
        self.path_for(world_id, version).unlink(missing_ok=True)

    def prune(self, world_id: str, keep: int) -> None:
        """Remove every other version of a world (after the commit that names ``keep``)."""
        self.path_for(world_id)
        for path in self.directory.glob(f"{world_id}*.npz"):
            if is_world_file(path.name, world_id) and path != self.path_for(world_id, keep):
                path.unlink(missing_ok=True)

    async def aprune(self, world_ids: Sequence[str], keep: int) -> None:
        """``prune`` for many worlds, off the event loop (one listing of the folder, the
        unlinks on a worker thread: a checkpoint of many worlds removes as many files)."""
        await self.aprune_to(dict.fromkeys(world_ids, keep))

    async def aprune_to(self, versions: Mapping[str, int]) -> None:
        """Remove every version of each world but ``versions[world]``, off the event loop."""
        kept = {self.path_for(w, v).name for w, v in versions.items()}  # (validates the ids)
        await anyio.to_thread.run_sync(_prune_all, self.directory, set(versions), kept)

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.npz") if not p.name.startswith("."))


WRITERS = max(1, min(4, (os.cpu_count() or 1) - 1))
"""Worker threads compressing and writing world files at once (zlib releases the GIL),
leaving one core to the event loop: a flush runs while the worlds step, and on 2 cores
two compressing threads beside the ticks cost them 1.37x their p99 (`bench cdt`), one
thread 0.99x."""


def _write_all(jobs: list[tuple[Path, dict[str, NDArray[np.generic]]]]) -> list[int]:
    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    if len(jobs) < 2 or WRITERS < 2:
        return [write_npz_atomic(path, arrays) for path, arrays in jobs]
    # Each file is still written atomically on its own (temporary file, fsync, rename,
    # fsync of the folder); map keeps the order and raises the first failure.
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="cdt-write") as pool:
        return list(pool.map(lambda job: write_npz_atomic(*job), jobs))


def _prune_all(directory: Path, world_ids: set[str], kept: set[str]) -> None:
    """Unlink every version of ``world_ids``' files but the ``kept`` names."""
    for path in directory.glob("*.npz"):
        name = path.name
        if name in kept or name.startswith("."):
            continue
        world_id = re.sub(r"(\.v\d+)?\.npz$", "", name)
        if world_id in world_ids and is_world_file(name, world_id):
            path.unlink(missing_ok=True)
