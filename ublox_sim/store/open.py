"""Which store a spec names, and the ``Backend`` that opens it.

A *store spec* is what a user gives: a ``postgresql://`` (or ``postgres://``) URL for a
PostgreSQL database, a ``sqlite:///PATH`` URL, a path or a ``Home`` for a SQLite home,
or nothing (``$UBLOX_STORE`` if set, else today's home: ``$UBLOX_HOME`` or
``~/.ublox``). The engine, the seed's facade and every CLI command resolve it here, so
that one URL points all of them at the same database.

    >>> resolve_store("postgresql://game:secret@db.example:5432/ublox").url
    'postgresql://game:secret@db.example:5432/ublox'
    >>> str(resolve_store("postgresql://game:secret@db.example:5432/ublox"))
    'postgresql://game:***@db.example:5432/ublox'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ..core.clock import WALL_CLOCK, Clock
from ..core.errors import InvalidInput, PersistenceError
from ..core.events import EventBus
from .home import Home
from .postgres.url import masked

if TYPE_CHECKING:
    from .backend import Backend
    from .sqlite.writer import Synchronous

STORE_ENV = "UBLOX_STORE"
POSTGRES_SCHEMES = ("postgresql", "postgres")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class PgStore:
    """A PostgreSQL database named by a checked URL. ``str()`` masks the password."""

    url: str

    def __str__(self) -> str:
        return masked(self.url)

    def holds_store(self) -> bool:
        """Whether the database holds a store (its migrations table), read without opening
        one: opening migrates, so a read-only command must ask first or it would make a
        store in a database named by mistake (not from inside an event loop).
        ``PersistenceError`` if the database cannot be reached."""
        import anyio
        import asyncpg  # type: ignore[import-untyped]

        async def read() -> bool:
            try:
                conn = await asyncpg.connect(self.url)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise PersistenceError(f"cannot open the store {self}: {exc}") from exc
            try:
                return bool(
                    await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
                )
            finally:
                await conn.close()

        return anyio.run(read)

    @property
    def key(self) -> str:
        """host_port_database, safe as a folder name (where its backups go by default)."""
        parts = urlsplit(self.url)
        host = parts.hostname or dict(parse_qsl(parts.query)).get("host", "local")
        words = (host, str(parts.port or 5432), parts.path.lstrip("/") or parts.username or "")
        return re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(w for w in words if w))


StoreSpec = str | Path | Home | PgStore | None


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and _URL.match(spec) is not None


def check_url(url: str) -> PgStore:
    """A PostgreSQL URL, checked; a clear ``InvalidInput`` naming it (masked) otherwise."""
    shown = masked(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise InvalidInput(f"bad store URL {shown}: {exc}") from None
    if parts.scheme not in POSTGRES_SCHEMES:
        raise InvalidInput(
            f"unsupported store URL {shown}: use postgresql://USER@HOST:PORT/DATABASE,"
            " sqlite:///PATH or a path"
        )
    if port == 0:
        raise InvalidInput(f"bad store URL {shown}: port 0")
    database = parts.path.lstrip("/")
    if "/" in database:
        raise InvalidInput(f"bad store URL {shown}: database name {database!r} holds a '/'")
    if parts.fragment:
        raise InvalidInput(f"bad store URL {shown}: a fragment ('#...') is not allowed")
    return PgStore(url)


def resolve_store(
    spec: StoreSpec = None, *, home: str | Path | Home | None = None
) -> Home | PgStore:
    """The store ``spec`` names (``home`` is the older spelling: give one of the two).

    Nothing -> ``$UBLOX_STORE`` if set, else the default home."""
    if spec is not None and home is not None:
        raise InvalidInput(f"give a home or a store, not both (home={home}, store={spec})")
    if (isinstance(spec, str) and not spec.strip()) or (isinstance(home, str) and not home.strip()):
        # Path("") is the current folder: a store would appear there unasked.
        raise InvalidInput(
            "an empty home or store names no store: give a folder or a postgresql:// URL"
            " (or neither, for the default)"
        )
    if spec is None:
        spec = home
    if spec is None:
        spec = os.environ.get(STORE_ENV) or None
    if isinstance(spec, Home | PgStore):
        return spec
    if isinstance(spec, str) and is_url(spec):
        if spec.startswith("sqlite://"):
            path = spec.removeprefix("sqlite://")
            if not path.startswith("/") or path == "/":
                raise InvalidInput(f"bad store URL {spec}: use sqlite:///ABSOLUTE/PATH")
            return Home.resolve(path)
        return check_url(spec)
    if spec is not None and not isinstance(spec, str | Path):
        raise InvalidInput(f"a store is a URL or a path, not {type(spec).__name__}")
    return Home.resolve(spec)


def default_backup_root(store: PgStore) -> Path:
    """Where a PostgreSQL store's snapshots go unless told: ``<home>/pg_backups/KEY``."""
    return Home.resolve(None).root / "pg_backups" / store.key


def open_backend(
    spec: StoreSpec = None,
    *,
    clock: Clock | None = None,
    synchronous: Synchronous = "NORMAL",
    flush_interval: float = 0.5,
    hold_commits: bool = False,
    bus: EventBus | None = None,
    backup_root: Path | None = None,
    shared: bool | None = None,
) -> Backend:
    """The backend for ``spec`` (see ``resolve_store``), not started yet.

    SQLite takes every option; PostgreSQL commits durably (``synchronous_commit`` on)
    whatever ``synchronous`` says and has no world files to flush (``flush_interval``).
    ``shared``: whether the process shares a PostgreSQL database with others (None:
    ``$UBLOX_CLUSTER``, else yes, except a held run: ``store.postgres.mode``); a SQLite
    home has one writer, so ``shared=True`` is refused there."""
    store = resolve_store(spec)
    if shared and not isinstance(store, PgStore):
        raise InvalidInput(
            f"{store.root} is a SQLite home, written by one process at a time: only a"
            " PostgreSQL store is shared"
        )
    if isinstance(store, PgStore):
        from .postgres.backend import PostgresBackend

        return PostgresBackend(
            store.url,
            hold_commits=hold_commits,
            bus=bus,
            backup_root=backup_root or default_backup_root(store),
            clock=clock or WALL_CLOCK,
            shared=shared,
        )
    from .sqlite.backend import SqliteBackend

    return SqliteBackend(
        store,
        synchronous=synchronous,
        flush_interval=flush_interval,
        clock=clock,
        hold_commits=hold_commits,
        bus=bus,
    )


__all__ = [
    "STORE_ENV",
    "PgStore",
    "StoreSpec",
    "check_url",
    "default_backup_root",
    "is_url",
    "masked",
    "open_backend",
    "resolve_store",
]
