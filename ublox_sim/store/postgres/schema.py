"""The PostgreSQL schema: SQLite's (``store.sqlite.schema``) translated, numbered migrations.

Same tables, columns, CHECKs and foreign keys: INTEGER cents become BIGINT, REAL becomes
DOUBLE PRECISION (SQLite's REAL is a double), AUTOINCREMENT keys become sequences. The
migration number of each is the SQLite one, so a store has the same version on both
backends; they are recorded in ``schema_migrations`` (one row per migration applied, in
the transaction that applied it). A database newer than this code is refused.

What SQLite gives implicitly and PostgreSQL does not is added here, in the schema:

- a NULL key inserted into ``transactions``/``play_sessions``/``event_log`` takes the next
  number of its ``counters`` row (SQLite's AUTOINCREMENT: no gap after a refused unit);
- ``pts_tokens.ord``: insertion order (SQLite's ``rowid``), for "the holder's newest
  token" in an idempotency receipt;
- ``worlds``: the world arrays, as the same ``.npz`` bytes SQLite keeps in files, so
  every process sharing the database sees them;
- ``event_log`` retention as a trigger, like SQLite's.

Unquoted names fold to lower case (``xUSD_balance`` is ``xusd_balance``): statements
name columns unquoted, and rows are read by position, so nothing else notices. Text
columns collate "C" (bytes, as SQLite's BINARY): every "in id order" is the same on both
backends whatever the database's default locale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..sqlite.schema import (
    CURRENCIES,
    EVENT_RETENTION,
    PTO_STATUSES,
    SCHEMA_VERSION,
    TX_TYPES,
)
from .mode import SCHEMA_KEY


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _numbered(table: str, key: str, what: str) -> str:
    """A BEFORE INSERT trigger giving a NULL ``key`` of ``table`` its counter's next value
    (function ``ublox_number_WHAT``, trigger ``TABLE_number``)."""
    return f"""CREATE FUNCTION ublox_number_{what}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.{key} IS NULL THEN NEW.{key} := ublox_next('{table}'); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER {table}_number BEFORE INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION ublox_number_{what}();"""


_V1 = f"""
CREATE TABLE players (
    player_id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    position_x         DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    position_y         DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    phase              DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    coherence          DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    tau_k              DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    resonance_freq     DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    usd_obbba_balance  BIGINT NOT NULL DEFAULT 0 CHECK (usd_obbba_balance >= 0),
    xUSD_balance       BIGINT NOT NULL DEFAULT 0 CHECK (xUSD_balance >= 0),
    total_play_time    DOUBLE PRECISION NOT NULL DEFAULT 0.0 CHECK (total_play_time >= 0),
    quality_score      DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    phase_locks_count  BIGINT NOT NULL DEFAULT 0 CHECK (phase_locks_count >= 0),
    memory_depth       DOUBLE PRECISION NOT NULL DEFAULT 0.0 CHECK (memory_depth >= 0),
    created_at         TEXT COLLATE "C" NOT NULL
);

CREATE TABLE ptos (
    pto_id               TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    game_name            TEXT COLLATE "C" NOT NULL,
    creator_id           TEXT COLLATE "C" NOT NULL REFERENCES players(player_id),
    description          TEXT COLLATE "C" NOT NULL DEFAULT '',
    atu_required         BIGINT NOT NULL CHECK (atu_required >= 0),
    atu_spent            BIGINT NOT NULL DEFAULT 0 CHECK (atu_spent >= 0),
    pts_offered          BIGINT NOT NULL CHECK (pts_offered >= 0),
    pts_sold             BIGINT NOT NULL DEFAULT 0 CHECK (pts_sold >= 0 AND pts_sold <= pts_offered),
    price_per_pts        BIGINT NOT NULL CHECK (price_per_pts >= 0),
    funding_goal         BIGINT NOT NULL CHECK (funding_goal >= 0),
    funding_raised       BIGINT NOT NULL DEFAULT 0 CHECK (funding_raised >= 0),
    status               TEXT COLLATE "C" NOT NULL DEFAULT 'funding' CHECK (status IN ({_quoted(PTO_STATUSES)})),
    launch_time          TEXT COLLATE "C" NOT NULL,
    funding_deadline     TEXT COLLATE "C",
    completion_time      TEXT COLLATE "C",
    aci_coherence_score  DOUBLE PRECISION NOT NULL DEFAULT 0.0 CHECK (aci_coherence_score >= 0 AND aci_coherence_score <= 1),
    xUSD_pool            BIGINT NOT NULL DEFAULT 0 CHECK (xUSD_pool >= 0),
    world_cdt_id         TEXT COLLATE "C",
    amplification        DOUBLE PRECISION NOT NULL DEFAULT 100.0 CHECK (amplification >= 0)
);
CREATE INDEX ptos_by_status ON ptos(status, funding_deadline);
CREATE INDEX ptos_by_creator ON ptos(creator_id);

CREATE TABLE pts_tokens (
    token_id           TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    game_id            TEXT COLLATE "C" NOT NULL REFERENCES ptos(pto_id),
    holder             TEXT COLLATE "C" NOT NULL REFERENCES players(player_id),
    hours_committed    DOUBLE PRECISION NOT NULL CHECK (hours_committed >= 0),
    hours_played       DOUBLE PRECISION NOT NULL DEFAULT 0.0 CHECK (hours_played >= 0),
    purchase_price     BIGINT NOT NULL CHECK (purchase_price >= 0),
    xUSD_accumulated   BIGINT NOT NULL DEFAULT 0 CHECK (xUSD_accumulated >= 0),
    tau_k_at_purchase  DOUBLE PRECISION NOT NULL DEFAULT 0.0,
    purchase_time      TEXT COLLATE "C" NOT NULL,
    ord                BIGSERIAL NOT NULL UNIQUE
);
CREATE INDEX pts_tokens_by_game ON pts_tokens(game_id, holder);
CREATE INDEX pts_tokens_by_holder ON pts_tokens(holder);

-- SQLite's AUTOINCREMENT counters (sqlite_sequence), transactional like them: a sequence
-- would leave a gap for every refused unit; a counter row rolls back with its unit (and,
-- for several writers, orders them by the row lock).
CREATE TABLE counters (
    name   TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    value  BIGINT NOT NULL CHECK (value >= 0)
);
INSERT INTO counters (name, value) VALUES ('transactions', 0), ('play_sessions', 0);
CREATE FUNCTION ublox_next(counter TEXT) RETURNS BIGINT LANGUAGE sql AS $$
    UPDATE counters SET value = value + 1 WHERE name = counter RETURNING value
$$;
CREATE TABLE transactions (
    tx_id        BIGINT PRIMARY KEY NOT NULL,
    tx_type      TEXT COLLATE "C" NOT NULL CHECK (tx_type IN ({_quoted(TX_TYPES)})),
    from_player  TEXT COLLATE "C",
    to_player    TEXT COLLATE "C",
    amount       BIGINT NOT NULL CHECK (amount >= 0),
    currency     TEXT COLLATE "C" NOT NULL CHECK (currency IN ({_quoted(CURRENCIES)})),
    pto_id       TEXT COLLATE "C" REFERENCES ptos(pto_id),
    timestamp    TEXT COLLATE "C" NOT NULL,
    metadata     TEXT COLLATE "C"
);
CREATE INDEX transactions_by_from ON transactions(from_player, currency);
CREATE INDEX transactions_by_to ON transactions(to_player, currency);
CREATE INDEX transactions_by_pto ON transactions(pto_id);

CREATE TABLE play_sessions (
    session_id   BIGINT PRIMARY KEY NOT NULL,
    pto_id       TEXT COLLATE "C" NOT NULL REFERENCES ptos(pto_id),
    player_id    TEXT COLLATE "C" NOT NULL REFERENCES players(player_id),
    duration     DOUBLE PRECISION NOT NULL CHECK (duration >= 0),
    quality      DOUBLE PRECISION NOT NULL CHECK (quality >= 0 AND quality <= 1),
    xUSD_earned  BIGINT NOT NULL CHECK (xUSD_earned >= 0),
    timestamp    TEXT COLLATE "C" NOT NULL,
    phase_locks  BIGINT NOT NULL DEFAULT 0 CHECK (phase_locks >= 0)
);
CREATE INDEX play_sessions_by_pto ON play_sessions(pto_id);
CREATE INDEX play_sessions_by_player ON play_sessions(player_id);

-- SQLite numbers a NULL INTEGER PRIMARY KEY; here the counter does (BEFORE INSERT).
{_numbered("transactions", "tx_id", "tx")}
{_numbered("play_sessions", "session_id", "session")}
"""

_V2 = """
CREATE TABLE runs (
    run_id        BIGINT PRIMARY KEY CHECK (run_id = 1),
    name          TEXT COLLATE "C" NOT NULL,
    seed          BIGINT NOT NULL,
    scenario      TEXT COLLATE "C" NOT NULL,
    started_at    TEXT COLLATE "C" NOT NULL,
    tick          BIGINT NOT NULL DEFAULT 0,
    total_ticks   BIGINT NOT NULL,
    state         TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    finished      BIGINT NOT NULL DEFAULT 0 CHECK (finished IN (0, 1))
);
CREATE TABLE cdt_files (
    world_cdt_id  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    version       BIGINT NOT NULL CHECK (version >= 0)
);
-- SQLite keeps world arrays in files next to the database; here they are rows.
CREATE TABLE worlds (
    world_cdt_id  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    npz           BYTEA NOT NULL
);
"""

_V3 = """
CREATE TABLE player_token_versions (
    player_id  TEXT COLLATE "C" PRIMARY KEY NOT NULL REFERENCES players(player_id),
    version    BIGINT NOT NULL CHECK (version >= 0)
);
CREATE TABLE idempotency_keys (
    principal    TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    fingerprint  TEXT COLLATE "C" NOT NULL,
    status       BIGINT NOT NULL,
    response     TEXT COLLATE "C" NOT NULL,
    created_at   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (principal, key)
);
"""

_V4 = f"""
INSERT INTO counters (name, value) VALUES ('event_log', 0);
CREATE TABLE event_log (
    seq      BIGINT PRIMARY KEY NOT NULL,
    kind     TEXT COLLATE "C" NOT NULL,
    at       TEXT COLLATE "C" NOT NULL,
    payload  TEXT COLLATE "C" NOT NULL CHECK (payload::json IS NOT NULL)
);
{_numbered("event_log", "seq", "event")}
CREATE FUNCTION ublox_event_retention() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_log WHERE seq <= NEW.seq - {EVENT_RETENTION};
    RETURN NULL;
END $$;
CREATE TRIGGER event_log_retention AFTER INSERT ON event_log
    FOR EACH ROW EXECUTE FUNCTION ublox_event_retention();
"""

# PostgreSQL only (several processes share the database; SQLite's flock keeps one):
# which process steps which world, until when (``store.postgres.lease``). Expiries are
# seconds of the processes' lease clock (injectable), never the database's now().
# And every event logged notifies the processes' feeds (``store.postgres.notify``); the
# notification carries nothing: the log is read after the last seq each feed published.
_V5 = """
CREATE TABLE world_leases (
    pto_id   TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    holder   TEXT COLLATE "C" NOT NULL,
    expires  DOUBLE PRECISION NOT NULL
);
CREATE FUNCTION ublox_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ublox_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER event_log_notify AFTER INSERT ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION ublox_notify_event();
"""

# PostgreSQL only: where each lease holder answers HTTP (``serve --advertise``), so a
# server that is not the holder forwards a play there instead of refusing it ('': the
# holder is an embedded engine, or a server that advertises nothing).
_V6 = """
ALTER TABLE world_leases ADD COLUMN address TEXT COLLATE "C" NOT NULL DEFAULT '';
"""

# PostgreSQL only, a marker that changes no table: from here on every advisory lock of
# ours takes two int4 keys, the second the store's schema (``mode.SCHEMA_KEY``), where
# binaries of schema 6 took one bigint key. The two forms never exclude each other, so an
# older binary must not run beside this one: the version moves so that it refuses the
# database at open ("database schema version 7 is newer than this ublox-sim (6)"). A
# process of the older binary already running is not excluded: stop those first.
_V7 = """
COMMENT ON TABLE world_leases IS
    'ublox-sim schema 7: advisory locks keyed (key, hashtext(current_schema()))';
"""

PG_ONLY = (_V5, _V6, _V7)
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, *PG_ONLY)
# The first SCHEMA_VERSION are SQLite's, number for number; the rest are PostgreSQL's own.
PG_SCHEMA_VERSION = len(MIGRATIONS)
assert PG_SCHEMA_VERSION == SCHEMA_VERSION + len(PG_ONLY), "SQLite's migrations, then ours"
# Migrations that change no table (markers): a backup taken just before one restores
# after it, as its tables' rows are the same shape.
MARKERS: frozenset[int] = frozenset({7})


def same_tables(version: int, other: int) -> bool:
    """Whether databases of the two schema versions have the same tables and columns (only
    markers between them), so one's backup restores into the other."""
    low, high = sorted((version, other))
    return all(v in MARKERS for v in range(low + 1, high + 1))


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     BIGINT PRIMARY KEY NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
# Two processes opening one empty store must not both migrate it.
_MIGRATION_LOCK = 0x75B10C5  # pg_advisory_xact_lock key (with the schema's), any of ours


class _Conn(Protocol):
    """What ``migrate`` needs of an asyncpg connection (kept narrow for the type checker)."""

    async def execute(self, query: str, *args: object) -> str: ...

    async def fetchval(self, query: str, *args: object) -> object: ...

    def transaction(self) -> object: ...


async def migrate(conn: _Conn) -> int:
    """Bring a (possibly empty) database to PG_SCHEMA_VERSION. Returns the old version.

    Each migration runs in its own transaction with its ``schema_migrations`` row, under
    a transaction-scoped advisory lock. A version newer than ours raises ``ValueError``."""
    old: int | None = None
    while True:
        async with conn.transaction():  # type: ignore[attr-defined]
            await conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK}, {SCHEMA_KEY})")
            await conn.execute(_LEDGER)
            found = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            assert isinstance(found, int)
            if old is None:
                old = found
            if found > PG_SCHEMA_VERSION:
                raise ValueError(
                    f"database schema version {found} is newer than this ublox-sim"
                    f" ({PG_SCHEMA_VERSION})"
                )
            if found == PG_SCHEMA_VERSION:
                return old
            await conn.execute(MIGRATIONS[found])
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", found + 1)
