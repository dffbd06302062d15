"""``ublox-sim migrate --from STORE --to STORE``: move a store between backends.

Everything is copied, as it is: the players, PTOs, tokens, ledger, sessions, the run
record, the worlds (the very ``.npz`` bytes: a SQLite home's current world files become
PostgreSQL ``worlds`` rows and back) and their versions, player token versions,
idempotency keys, the event log and the counters that number transactions, sessions and
events, so the next number given is the same on both sides. The target must be new:
a store holding any row (or a home holding a world file) is refused, nothing written.

The rows go in as one unit (all or nothing), worlds first on SQLite (a row never points
at a file that is not there). Then both sides are compared: their exports, byte for
byte, and every world's bytes. Both stores are open, so locked, throughout: no writer
changes the source while it is copied.

    async with anyio.create_task_group():
        report = await migrate_store("~/.ublox", "postgresql://game@db/ublox")
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..core.errors import InvalidInput, StoreError, UnitRejected
from ..core.logsetup import get_logger
from ..core.records import PTO, Player, PlaySession, PTSToken, Transaction
from .cdt import world_file_name
from .export import export_text
from .home import Home, fsync_dir
from .local import LocalStore, SeedOperations
from .open import PgStore, StoreSpec, default_backup_root, resolve_store
from .sqlite.tables import columns
from .sqlite.writer import Statement

log = get_logger(__name__)

RUN_COLUMNS = (
    *("run_id", "name", "seed", "scenario", "started_at"),
    *("tick", "total_ticks", "state", "finished"),
)
# Every table a store's content lives in, parents before children, with its columns and
# the order its rows are copied in (pts_tokens: insertion order, which numbers them).
TABLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("players", columns(Player), "player_id"),
    ("ptos", columns(PTO), "pto_id"),
    ("pts_tokens", columns(PTSToken), "@insertion"),
    ("transactions", columns(Transaction), "tx_id"),
    ("play_sessions", columns(PlaySession), "session_id"),
    (
        "runs",
        RUN_COLUMNS,
        "run_id",
    ),
    ("cdt_files", ("world_cdt_id", "version"), "world_cdt_id"),
    ("player_token_versions", ("player_id", "version"), "player_id"),
    (
        "idempotency_keys",
        ("principal", "key", "fingerprint", "status", "response", "created_at"),
        "principal, key",
    ),
    ("event_log", ("seq", "kind", "at", "payload"), "seq"),
)
# The tables whose keys the store numbers itself: the last number given is copied too.
COUNTED = ("transactions", "play_sessions", "event_log")

Row = tuple[Any, ...]


@dataclass
class Content:
    """A store's whole content, as rows and world bytes."""

    tables: dict[str, list[Row]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    worlds: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Migration:
    """What ``migrate_store`` copied and checked."""

    source: str
    target: str
    rows: dict[str, int]
    worlds: int
    export_bytes: int

    def lines(self) -> list[str]:
        counts = ", ".join(f"{table} {n}" for table, n in self.rows.items())
        return [
            f"copied {self.source} -> {self.target}: {counts}; worlds {self.worlds}",
            f"verified: both exports identical ({self.export_bytes:,} bytes), "
            f"{self.worlds} world(s) byte-identical",
        ]


class _Side:
    """One store being copied from or into (see the subclasses)."""

    insertion_order: str
    store: SeedOperations

    @property
    def where(self) -> str:
        raise NotImplementedError

    async def counters(self) -> dict[str, int]:
        raise NotImplementedError

    def counter_statements(self, counters: dict[str, int]) -> list[Statement]:
        raise NotImplementedError

    async def worlds(self) -> dict[str, bytes]:
        raise NotImplementedError

    async def write(self, unit: list[Statement], content: Content) -> None:
        """The rows (one unit) and the worlds of ``content``."""
        raise NotImplementedError

    def refusal(self, value: Any) -> str | None:
        """Why this side's database would refuse ``value`` in a row, if it would."""
        return None

    async def has_content(self) -> bool:
        for table, _, _ in TABLES:
            if await self.store.db.fetchone(f"SELECT 1 FROM {table} LIMIT 1") is not None:
                return True
        return False

    async def read(self) -> Content:
        content = Content()
        for table, cols, order in TABLES:
            by = self.insertion_order if order == "@insertion" else order
            sql = f"SELECT {', '.join(cols)} FROM {table} ORDER BY {by}"
            content.tables[table] = [tuple(r) for r in await self.store.db.fetchall(sql)]
        content.counters = await self.counters()
        content.worlds = await self.worlds()
        return content


class _Sqlite(_Side):
    insertion_order = "rowid"

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.home = store.home

    @property
    def where(self) -> str:
        return str(self.home.root)

    async def counters(self) -> dict[str, int]:
        rows = dict(await self.store.db.fetchall("SELECT name, seq FROM sqlite_sequence"))
        return {name: int(rows.get(name, 0)) for name in COUNTED}

    def counter_statements(self, counters: dict[str, int]) -> list[Statement]:
        out = [Statement("DELETE FROM sqlite_sequence")]
        out += [
            Statement("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, value))
            for name, value in sorted(counters.items())
            if value  # SQLite has no row for a table that never numbered one
        ]
        return out

    async def worlds(self) -> dict[str, bytes]:
        await self.store.flush()
        versions = dict(await self.store.db.fetchall("SELECT world_cdt_id, version FROM cdt_files"))
        referenced = {
            str(w)
            for (w,) in await self.store.db.fetchall(
                "SELECT world_cdt_id FROM ptos WHERE world_cdt_id IS NOT NULL"
            )
        }
        found: dict[str, bytes] = {}
        for world_id in sorted(referenced | set(versions)):
            path = self.home.cdt_dir / world_file_name(world_id, versions.get(world_id))
            try:
                found[world_id] = await anyio.Path(path).read_bytes()
            except FileNotFoundError:
                if world_id in referenced:
                    raise StoreError(
                        f"{self.where}: world {world_id!r} is missing ({path});"
                        " `ublox-sim verify` says what else is wrong"
                    ) from None
        return found

    async def has_content(self) -> bool:
        files = await anyio.to_thread.run_sync(lambda: any(self.home.cdt_dir.glob("*.npz")))
        return files or await super().has_content()

    async def write(self, unit: list[Statement], content: Content) -> None:
        # Worlds first, named by the versions the rows record: never a row without its file.
        versions = {str(w): int(v) for w, v in content.tables["cdt_files"]}
        for world_id, data in sorted(content.worlds.items()):
            name = world_file_name(world_id, versions.get(world_id))
            await anyio.to_thread.run_sync(_write_bytes_atomic, self.home.cdt_dir / name, data)
        await self.store.db.submit(unit)


class _Postgres(_Side):
    insertion_order = "ord"

    def __init__(self, store: Any, shown: str) -> None:
        self.store = store
        self.shown = shown

    @property
    def where(self) -> str:
        return self.shown

    async def counters(self) -> dict[str, int]:
        rows = dict(await self.store.db.fetchall("SELECT name, value FROM counters"))
        return {name: int(rows.get(name, 0)) for name in COUNTED}

    def counter_statements(self, counters: dict[str, int]) -> list[Statement]:
        return [
            Statement("UPDATE counters SET value = ? WHERE name = ?", (counters.get(name, 0), name))
            for name in COUNTED
        ]

    async def worlds(self) -> dict[str, bytes]:
        rows = await self.store.db.fetchall("SELECT world_cdt_id, npz FROM worlds")
        return {str(w): bytes(data) for w, data in rows}

    def refusal(self, value: Any) -> str | None:
        # SQLite keeps a NUL in a text; PostgreSQL's text refuses it (the whole unit).
        if isinstance(value, str) and "\x00" in value:
            return "holds a NUL character, which PostgreSQL refuses in a text"
        return None

    async def write(self, unit: list[Statement], content: Content) -> None:
        from .postgres.backend import SAVE_WORLD

        saves = [Statement(SAVE_WORLD, (w, data)) for w, data in sorted(content.worlds.items())]
        await self.store.db.submit([*unit, *saves])


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@asynccontextmanager
async def _opened(store: Home | PgStore, backup_root: Path | None) -> AsyncIterator[_Side]:
    if isinstance(store, PgStore):
        from .postgres.local import PgLocalStore

        root = backup_root or default_backup_root(store)
        # Alone on the database: both ends are copied, then compared.
        async with PgLocalStore.open(store.url, backup_root=root, shared=False) as pg:
            yield _Postgres(pg, str(store))
    else:
        async with LocalStore.open(store) as local:
            yield _Sqlite(local)


def _check_rows(content: Content, source: str, target: _Side) -> None:
    """``InvalidInput`` naming the first row ``target`` would refuse, before anything is
    written (the database would only say the value, not where it is)."""
    for table, cols, _ in TABLES:
        for row in content.tables[table]:
            for col, value in zip(cols, row, strict=True):
                why = target.refusal(value)
                if why is not None:
                    raise InvalidInput(
                        f"{source}: {table} row {cols[0]}={row[0]!r}: {col} {why};"
                        f" nothing was copied to {target.where}"
                    )


def _insert(table: str, cols: tuple[str, ...], row: Row) -> Statement:
    marks = ", ".join("?" * len(cols))
    return Statement(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", row)


async def migrate_store(
    source: StoreSpec, target: StoreSpec, *, backup_root: Path | None = None
) -> Migration:
    """Copy ``source`` into the new store ``target`` and check both hold the same (see
    the module docstring). ``InvalidInput`` (nothing written) for the same store twice, a
    target that is not new or a row the target cannot hold (named); ``StoreError`` if the
    copy does not compare equal."""
    src, dst = resolve_store(source), resolve_store(target)
    if src == dst:
        raise InvalidInput(f"--from and --to are the same store ({src})")
    async with _opened(src, backup_root) as a, _opened(dst, backup_root) as b:
        if await b.has_content():
            raise InvalidInput(f"{b.where} is not empty: migrate only into a new store")
        content = await a.read()
        _check_rows(content, a.where, b)
        unit = [
            _insert(table, cols, row) for table, cols, _ in TABLES for row in content.tables[table]
        ]
        unit += b.counter_statements(content.counters)
        try:
            await b.write(unit, content)
        except UnitRejected as exc:
            raise UnitRejected(f"{b.where} refused the copy of {a.where}: {exc}") from None
        log.info("store.migrated", source=a.where, target=b.where, rows=len(unit))
        # Both sides, compared as the export and the world bytes say them.
        before = export_text(await a.store.export_data())
        after = export_text(await b.store.export_data())
        if after != before:
            raise StoreError(f"the copy in {b.where} does not export as {a.where} does")
        if await b.worlds() != content.worlds or await b.counters() != content.counters:
            raise StoreError(f"the worlds or counters copied to {b.where} differ from {a.where}")
        return Migration(
            source=a.where,
            target=b.where,
            rows={table: len(rows) for table, rows in content.tables.items()},
            worlds=len(content.worlds),
            export_bytes=len(after.encode()),
        )


__all__ = ["TABLES", "Migration", "migrate_store"]
