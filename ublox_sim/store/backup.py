"""Backups: sealing a snapshot, checking one, listing them, and swapping one in.

A backup is ``backups/NAME/`` holding ``ublox.db``, ``cdt_states/`` and, written
last, ``backup.json`` (creation time, schema version, the sha256 of every file).
Restore refuses damage and edits (``check_backup``) before it replaces anything,
and swaps the files under a marker so that a restore killed half way is finished
by the next open (``finish_restore``). ``LocalStore`` takes the database snapshot
and calls these; they run in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.clock import WALL_CLOCK
from ..core.errors import (
    BackupError,
    CorruptCdtFile,
    InvalidId,
    InvalidState,
    NoSuchBackup,
    StoreError,
)
from ..core.ids import check_file_name
from ..core.logsetup import get_logger
from ..core.records import iso, parse_iso
from .cdt import load_npz, world_file_name
from .home import Home, database_lost, fsync_dir, lock_home, unlock_home, write_text_atomic
from .sqlite.schema import FIRST_RELEASE_SCHEMA_VERSION, SCHEMA_VERSION
from .verify import database_findings, world_references

log = get_logger(__name__)

# What a restore or an import refuses: damage. Everything else a store can hold.
DAMAGE_CHECKS = ("schema", "integrity")


# Backups are named and stamped in wall time, whatever clock the store's rows use.


def new_backup_name(home: Home) -> str:
    """``backup_YYYYmmdd_HHMMSS``, numbered ``_1``, ``_2``... if taken."""
    name = f"backup_{WALL_CLOCK.now():%Y%m%d_%H%M%S}"
    while home.backups.joinpath(name).exists():
        name = f"{name}_1" if name.count("_") == 2 else _bump(name)
    return name


def safety_backup_name() -> str:
    """The name of the backup a restore makes of what it replaces."""
    return f"pre_restore_{WALL_CLOCK.now():%Y%m%d_%H%M%S_%f}"


def _bump(name: str) -> str:
    stem, _, n = name.rpartition("_")
    return f"{stem}_{int(n) + 1}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_cdt_and_seal(cdt_dir: Path, partial: Path, target: Path) -> None:
    """Copy the worlds beside the database snapshot in ``partial``, write the manifest,
    make it all durable, and rename it to ``target``: a backup exists whole or not at all."""
    dest = partial / "cdt_states"
    dest.mkdir()
    for path in sorted(cdt_dir.glob("*.npz")):
        if not path.name.startswith(".") and not path.is_symlink():
            shutil.copy2(path, dest / path.name)
    files = [partial / "ublox.db", *sorted(dest.iterdir())]
    manifest = {
        "created": iso(WALL_CLOCK.now()),
        "schema_version": SCHEMA_VERSION,
        # What restore checks the copy against: an edit by hand is not damage a
        # check can see, so the content as it was made is recorded here.
        "sha256": {path.relative_to(partial).as_posix(): file_sha256(path) for path in files},
    }
    (partial / "backup.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in (*files, partial / "backup.json"):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(dest)
    fsync_dir(partial)
    os.replace(partial, target)
    fsync_dir(target.parent)


def list_backups(home: Home) -> list[dict[str, Any]]:
    """Each backup's name, creation time (UTC ISO), size in bytes and path, oldest first."""
    return list_backup_folders(home.backups)


def list_backup_folders(root: Path) -> list[dict[str, Any]]:
    """``list_backups`` of the backup folders in ``root`` (both backends' listing): a
    damaged or foreign ``backup.json`` does not fail it, its folder's time stands in."""
    result: list[dict[str, Any]] = []
    if not root.is_dir():
        return result
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
            continue
        try:
            meta = json.loads((path / "backup.json").read_text(encoding="utf-8"))
            # PostgreSQL's older manifests say ``created_at`` (ISO with a "T").
            created = iso(parse_iso(meta.get("created") or meta["created_at"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            created = iso(datetime.fromtimestamp(path.stat().st_mtime, UTC))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        result.append({"name": path.name, "created": created, "size": size, "path": str(path)})
    result.sort(key=lambda b: (b["created"], b["name"]))
    return result


def backup_predates_digests(manifest_schema: int, db_schema: int) -> bool:
    """A backup without sha256 digests is an old one only if both its manifest and its
    database say it was made by a schema no newer than release 0.1.0's (2), the last
    that recorded none: a manifest relabelled to shed its digests is not one."""
    return max(manifest_schema, db_schema) <= FIRST_RELEASE_SCHEMA_VERSION


def check_backup(source: Path, *, force: bool = False) -> list[str]:
    """Refuse a backup that is missing, damaged or edited since it was made; return warnings.

    Damage (not a database, integrity, schema version, a missing or unloadable world
    file) is always refused. A file whose sha256 no longer matches ``backup.json`` is
    refused unless ``force``. Findings about the content (ledger, escrow, tokens) are
    returned as warnings: a backup is a faithful copy, not a judgement of the store."""
    if source.is_symlink() or not source.is_dir():
        raise NoSuchBackup(f"no backup at {source}")
    db = source / "ublox.db"
    if not db.is_file() or db.is_symlink():
        raise BackupError(f"backup {source.name!r} has no ublox.db")
    try:
        manifest = json.loads((source / "backup.json").read_text(encoding="utf-8"))
        schema = int(manifest["schema_version"])
        recorded = manifest.get("sha256")
        if recorded is not None and not (
            isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())
        ):
            raise ValueError("sha256 must map file names to hex digests")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Every backup is sealed with its manifest last: without it, it is incomplete.
        raise BackupError(
            f"backup {source.name!r} is incomplete or damaged (backup.json: {exc})"
        ) from exc
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            db_schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
            findings = database_findings(conn)
            damaged = [f for f in findings if f.check in DAMAGE_CHECKS]
            world_files = [] if damaged else _world_files(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"backup {source.name!r} is not a usable database: {exc}") from exc
    if damaged:
        raise BackupError(f"backup {source.name!r} failed its check: {damaged[0]}")
    for name in world_files:
        try:
            load_npz(source / "cdt_states" / name)
        except CorruptCdtFile as exc:
            raise BackupError(f"backup {source.name!r}: {exc}") from exc
    warnings: list[str] = []
    if recorded is None and backup_predates_digests(schema, db_schema):
        warnings.append(
            f"backup {source.name!r} records no sha256 digests: it was made before digests "
            f"were recorded (schema version {schema}), so its files could not be checked "
            "for edits since"
        )
    elif recorded is None:
        # Every backup made since digests exist records them: one without is an edit
        # (deleting the digests would otherwise be how to slip an edited file past).
        message = (
            f"backup {source.name!r}: {source / 'backup.json'} has lost the sha256 digests "
            f"that every backup of schema version {max(schema, db_schema)} records "
            "(edited by hand?)"
        )
        if not force:
            raise BackupError(
                f"{message}; if the edit was intended, restore it with force=True "
                f"(`ublox-sim backup restore {source.name} --force`)"
            )
        warnings.append(f"{message}; restored anyway (force)")
    else:
        for edited in _edited_files(source, recorded, ["ublox.db", *world_files]):
            message = (
                f"backup {source.name!r}: {edited} differs from the sha256 recorded in "
                f"{source / 'backup.json'} when the backup was made (edited by hand?)"
            )
            if not force:
                raise BackupError(
                    f"{message}; if the edit was intended, restore it with force=True "
                    f"(`ublox-sim backup restore {source.name} --force`)"
                )
            warnings.append(f"{message}; restored anyway (force)")
    warnings.extend(str(f) for f in findings)
    return warnings


def _world_files(conn: sqlite3.Connection) -> list[str]:
    """The world files (relative to ``cdt_states/``) a database points at, by world id."""
    names: list[str] = []
    for _, world_id, version in sorted(world_references(conn), key=lambda ref: ref[1]):
        try:
            check_file_name(str(world_id), "world_cdt_id")
        except InvalidId as exc:
            raise BackupError(f"a world id in the backup's database is unusable: {exc}") from exc
        names.append(world_file_name(world_id, version))
    return names


def _edited_files(source: Path, recorded: Mapping[str, str], names: list[str]) -> list[str]:
    """The backup's files that are not byte for byte what was recorded when it was made."""
    edited = []
    for name in dict.fromkeys(names):
        rel = name if name == "ublox.db" else f"cdt_states/{name}"
        want = recorded.get(rel)
        if want is None or file_sha256(source / rel) != want:
            edited.append(rel)
    return edited


def start_restore(home: Home, name: str) -> None:
    """Swap backup NAME in for the store's files (which nobody may have open)."""
    # The marker makes the swap restartable: if we die half way, the next open
    # finishes it from the (untouched) backup instead of leaving a mixed store.
    write_text_atomic(home.restore_marker, json.dumps({"backup": name}))
    finish_restore(home)


def finish_restore(home: Home) -> None:
    """Do (or finish) the swap the restore marker names, then remove the marker."""
    try:
        name = json.loads(home.restore_marker.read_text())["backup"]
        source = home.backup_dir(name)
    except (OSError, ValueError, KeyError, TypeError, BackupError) as exc:
        raise StoreError(
            f"{home.restore_marker} is unreadable ({exc}); restore a backup by hand"
        ) from exc
    tmp_db = home.root / "ublox.db.restore-tmp"
    shutil.copyfile(source / "ublox.db", tmp_db)
    with open(tmp_db, "rb") as handle:
        os.fsync(handle.fileno())
    for suffix in ("-wal", "-shm"):
        Path(f"{home.db}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_db, home.db)
    tmp_cdt = home.root / "cdt_states.restore-tmp"
    shutil.rmtree(tmp_cdt, ignore_errors=True)
    shutil.copytree(source / "cdt_states", tmp_cdt)
    old = home.root / "cdt_states.old"
    shutil.rmtree(old, ignore_errors=True)
    if home.cdt_dir.exists():
        os.replace(home.cdt_dir, old)
    os.replace(tmp_cdt, home.cdt_dir)
    fsync_dir(home.root)
    shutil.rmtree(old, ignore_errors=True)
    home.restore_marker.unlink()
    fsync_dir(home.root)


def restore_lost_store(home: Home, name: str, *, force: bool = False) -> list[str]:
    """Restore backup NAME into a home whose database was lost, where no store can open.

    The same checks as ``LocalStore.restore_backup``; the world files found beside
    the lost database are kept in ``lost_worlds_<time>/`` rather than thrown away.
    """
    fd = lock_home(home)
    try:
        if not database_lost(home):
            raise InvalidState(f"{home.db} is not lost; restore through an open store")
        warnings = check_backup(home.backup_dir(name), force=force)
        kept = home.root / f"lost_worlds_{WALL_CLOCK.now():%Y%m%d_%H%M%S_%f}"
        shutil.copytree(home.cdt_dir, kept)
        fsync_dir(home.root)
        start_restore(home, name)
    finally:
        unlock_home(fd)
    log.info("store.restored_lost", name=name, kept=str(kept), warnings=len(warnings))
    return warnings


__all__ = [
    "check_backup",
    "copy_cdt_and_seal",
    "finish_restore",
    "list_backups",
    "new_backup_name",
    "restore_lost_store",
    "start_restore",
]
