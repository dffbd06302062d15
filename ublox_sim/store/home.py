"""A store's folder: its layout, its one-writer lock, and atomic file writes.

ublox.db                    the database (SQLite, WAL)
cdt_states/*.npz            one file per world (see ``cdt.world_file_name``)
export.json                 the default export
backups/NAME/               ublox.db + cdt_states/ + backup.json
restore-in-progress.json    present only while a restore swaps files
.lock                       held (``flock``) by the one process that has the store open
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InvalidBackupName, InvalidId, SchemaError, StoreLocked
from ..core.ids import check_file_name


@dataclass(frozen=True, slots=True)
class Home:
    """The layout of a store folder."""

    root: Path

    @classmethod
    def resolve(cls, home: Path | str | None = None) -> Home:
        """The argument, else ``$UBLOX_HOME``, else ``~/.ublox``."""
        if home is None:
            home = os.environ.get("UBLOX_HOME") or Path.home() / ".ublox"
        return cls(Path(home).expanduser().absolute())

    @property
    def db(self) -> Path:
        return self.root / "ublox.db"

    @property
    def cdt_dir(self) -> Path:
        return self.root / "cdt_states"

    @property
    def export_path(self) -> Path:
        return self.root / "export.json"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def restore_marker(self) -> Path:
        return self.root / "restore-in-progress.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def backup_dir(self, name: str) -> Path:
        try:
            check_file_name(name, "backup name")
        except InvalidId as exc:
            raise InvalidBackupName(str(exc)) from exc
        return self.backups / name


WORLD_SUFFIX = "_world_cdt"


def world_id_for(pto_id: str) -> str:
    """The world id a PTO's arrays are stored under (its file: ``cdt.world_file_name``)."""
    return pto_id + WORLD_SUFFIX


def database_lost(home: Home) -> bool:
    """True when ublox.db is missing or empty but world files remain beside it."""
    if home.db.exists() and home.db.stat().st_size > 0:
        return False
    return home.cdt_dir.is_dir() and any(home.cdt_dir.glob("*.npz"))


def refuse_lost_database(home: Home) -> None:
    """An empty or missing ublox.db beside world files is a lost database, not a new store:
    opening it would make every balance look gone without a word."""
    if database_lost(home):
        raise SchemaError(
            f"{home.db} is missing or empty but {home.cdt_dir} holds worlds: the database "
            "was lost; restore a backup (`ublox-sim backup restore NAME`) or move the folder away"
        )


# -- one writer per home --------------------------------------------------------------


def lock_home(home: Home) -> int:
    """Take the home's OS lock (``flock`` on ``.lock``) or raise StoreLocked at once.

    The kernel drops the lock when its holder dies, so a killed process never
    blocks the next open; a second opener (another process, or another Engine in
    this one: each open is its own file description) is refused.
    """
    path = home.lock_path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"{home.root} is already open by another engine or process (lock {path}); "
            "close that one first"
        ) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock_home(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- atomic writes (they run in worker threads) ------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def reset_dir(path: Path) -> None:
    """An empty ``path``, whatever was there."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


__all__ = [
    "Home",
    "database_lost",
    "fsync_dir",
    "lock_home",
    "refuse_lost_database",
    "reset_dir",
    "unlock_home",
    "world_id_for",
    "write_text_atomic",
]
