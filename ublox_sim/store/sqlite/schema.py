"""The relational schema and its numbered migrations (``PRAGMA user_version``).

Money columns are INTEGER cents. Names follow the seed notes so ``sqlite3``,
Datasette or pandas read the file as is. Every migration runs in one transaction;
a database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

# The CHECK constraints' values come from their homes (the text of a migration must never
# change: these are the values it was written with, pinned by the schema tests).
from ...core.money import CURRENCIES as CURRENCIES
from ...core.records import PTO_STATUSES as PTO_STATUSES

TX_TYPES = ("deposit", "investment", "refund", "pto_completion", "xusd_composition", "transfer")


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_V1 = f"""
CREATE TABLE players (
    player_id          TEXT PRIMARY KEY NOT NULL,
    position_x         REAL NOT NULL DEFAULT 0.0,
    position_y         REAL NOT NULL DEFAULT 0.0,
    phase              REAL NOT NULL DEFAULT 0.0,
    coherence          REAL NOT NULL DEFAULT 0.0,
    tau_k              REAL NOT NULL DEFAULT 1.0,
    resonance_freq     REAL NOT NULL DEFAULT 1.0,
    usd_obbba_balance  INTEGER NOT NULL DEFAULT 0 CHECK (usd_obbba_balance >= 0),
    xUSD_balance       INTEGER NOT NULL DEFAULT 0 CHECK (xUSD_balance >= 0),
    total_play_time    REAL NOT NULL DEFAULT 0.0 CHECK (total_play_time >= 0),
    quality_score      REAL NOT NULL DEFAULT 0.0,
    phase_locks_count  INTEGER NOT NULL DEFAULT 0 CHECK (phase_locks_count >= 0),
    memory_depth       REAL NOT NULL DEFAULT 0.0 CHECK (memory_depth >= 0),
    created_at         TEXT NOT NULL
) STRICT;

CREATE TABLE ptos (
    pto_id               TEXT PRIMARY KEY NOT NULL,
    game_name            TEXT NOT NULL,
    creator_id           TEXT NOT NULL REFERENCES players(player_id),
    description          TEXT NOT NULL DEFAULT '',
    atu_required         INTEGER NOT NULL CHECK (atu_required >= 0),
    atu_spent            INTEGER NOT NULL DEFAULT 0 CHECK (atu_spent >= 0),
    pts_offered          INTEGER NOT NULL CHECK (pts_offered >= 0),
    pts_sold             INTEGER NOT NULL DEFAULT 0 CHECK (pts_sold >= 0 AND pts_sold <= pts_offered),
    price_per_pts        INTEGER NOT NULL CHECK (price_per_pts >= 0),
    funding_goal         INTEGER NOT NULL CHECK (funding_goal >= 0),
    funding_raised       INTEGER NOT NULL DEFAULT 0 CHECK (funding_raised >= 0),
    status               TEXT NOT NULL DEFAULT 'funding' CHECK (status IN ({_quoted(PTO_STATUSES)})),
    launch_time          TEXT NOT NULL,
    funding_deadline     TEXT,
    completion_time      TEXT,
    aci_coherence_score  REAL NOT NULL DEFAULT 0.0 CHECK (aci_coherence_score >= 0 AND aci_coherence_score <= 1),
    xUSD_pool            INTEGER NOT NULL DEFAULT 0 CHECK (xUSD_pool >= 0),
    world_cdt_id         TEXT,
    amplification        REAL NOT NULL DEFAULT 100.0 CHECK (amplification >= 0)
) STRICT;
CREATE INDEX ptos_by_status ON ptos(status, funding_deadline);
CREATE INDEX ptos_by_creator ON ptos(creator_id);

CREATE TABLE pts_tokens (
    token_id           TEXT PRIMARY KEY NOT NULL,
    game_id            TEXT NOT NULL REFERENCES ptos(pto_id),
    holder             TEXT NOT NULL REFERENCES players(player_id),
    hours_committed    REAL NOT NULL CHECK (hours_committed >= 0),
    hours_played       REAL NOT NULL DEFAULT 0.0 CHECK (hours_played >= 0),
    purchase_price     INTEGER NOT NULL CHECK (purchase_price >= 0),
    xUSD_accumulated   INTEGER NOT NULL DEFAULT 0 CHECK (xUSD_accumulated >= 0),
    tau_k_at_purchase  REAL NOT NULL DEFAULT 0.0,
    purchase_time      TEXT NOT NULL
) STRICT;
CREATE INDEX pts_tokens_by_game ON pts_tokens(game_id, holder);
CREATE INDEX pts_tokens_by_holder ON pts_tokens(holder);

CREATE TABLE transactions (
    tx_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_type      TEXT NOT NULL CHECK (tx_type IN ({_quoted(TX_TYPES)})),
    from_player  TEXT,
    to_player    TEXT,
    amount       INTEGER NOT NULL CHECK (amount >= 0),
    currency     TEXT NOT NULL CHECK (currency IN ({_quoted(CURRENCIES)})),
    pto_id       TEXT REFERENCES ptos(pto_id),
    timestamp    TEXT NOT NULL,
    metadata     TEXT
) STRICT;
CREATE INDEX transactions_by_from ON transactions(from_player, currency);
CREATE INDEX transactions_by_to ON transactions(to_player, currency);
CREATE INDEX transactions_by_pto ON transactions(pto_id);

CREATE TABLE play_sessions (
    session_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    pto_id       TEXT NOT NULL REFERENCES ptos(pto_id),
    player_id    TEXT NOT NULL REFERENCES players(player_id),
    duration     REAL NOT NULL CHECK (duration >= 0),
    quality      REAL NOT NULL CHECK (quality >= 0 AND quality <= 1),
    xUSD_earned  INTEGER NOT NULL CHECK (xUSD_earned >= 0),
    timestamp    TEXT NOT NULL,
    phase_locks  INTEGER NOT NULL DEFAULT 0 CHECK (phase_locks >= 0)
) STRICT;
CREATE INDEX play_sessions_by_pto ON play_sessions(pto_id);
CREATE INDEX play_sessions_by_player ON play_sessions(player_id);
"""

# Run bookkeeping for resumable scenario runs: the resolved scenario, its seed,
# the last committed checkpoint and the RNG states needed to continue from it.
_V2 = """
CREATE TABLE runs (
    run_id        INTEGER PRIMARY KEY CHECK (run_id = 1),
    name          TEXT NOT NULL,
    seed          INTEGER NOT NULL,
    scenario      TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    tick          INTEGER NOT NULL DEFAULT 0,
    total_ticks   INTEGER NOT NULL,
    state         TEXT NOT NULL DEFAULT '{}',
    finished      INTEGER NOT NULL DEFAULT 0 CHECK (finished IN (0, 1))
) STRICT;
CREATE TABLE cdt_files (
    world_cdt_id  TEXT PRIMARY KEY NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 0)
) STRICT;
"""

# The game server's bookkeeping. A player token carries its player's token version;
# bumping the version revokes every token issued before. An idempotency key is
# stored with its request's fingerprint and the response, in the same transaction
# as the money it moved, so a retry (even after a crash) replays instead of paying twice.
# WITHOUT ROWID: the key is the table, no second b-tree (the seed's store stays small).
_V3 = """
CREATE TABLE player_token_versions (
    player_id  TEXT PRIMARY KEY NOT NULL REFERENCES players(player_id),
    version    INTEGER NOT NULL CHECK (version >= 0)
) STRICT, WITHOUT ROWID;
CREATE TABLE idempotency_keys (
    principal    TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       INTEGER NOT NULL,
    response     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (principal, key)
) STRICT, WITHOUT ROWID;
"""

# The event log: every domain event, numbered in commit order (``seq``), written in
# the same transaction as the operation it describes, so ``/ws/events?since=N`` can
# replay exactly what a client missed. Retention is the last EVENT_RETENTION events,
# pruned by the trigger in that same transaction: which rows remain depends only on
# the sequence numbers, never on time or on when a background job ran.
EVENT_RETENTION = 100_000

_V4 = f"""
CREATE TABLE event_log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT NOT NULL,
    at       TEXT NOT NULL,
    payload  TEXT NOT NULL CHECK (json_valid(payload))
) STRICT;
CREATE TRIGGER event_log_retention AFTER INSERT ON event_log
BEGIN
    DELETE FROM event_log WHERE seq <= NEW.seq - {EVENT_RETENTION};
END;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)
# What release 0.1.0, the first, wrote: the oldest store that opens (by migrating), and
# the newest whose backups and exports were made before content digests were recorded.
FIRST_RELEASE_SCHEMA_VERSION = 2
TABLES = ("players", "ptos", "pts_tokens", "transactions", "play_sessions")

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    # Checkpoints are run by the persistence actor on its own connection so that
    # they never stall an acknowledgement (see persistence.py).
    "PRAGMA wal_autocheckpoint=0",
    "PRAGMA busy_timeout=5000",
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a (possibly empty) database to SCHEMA_VERSION. Returns the old version.

    Raises ``sqlite3.DatabaseError`` for a file that is not a database; the caller
    translates it. A version newer than ours raises ``ValueError``.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"database schema version {version} is newer than this ublox-sim ({SCHEMA_VERSION})"
        )
    for number in range(version, SCHEMA_VERSION):
        # executescript commits first; run each migration as its own explicit transaction.
        conn.executescript(
            "BEGIN;\n" + MIGRATIONS[number] + f"\nPRAGMA user_version={number + 1};\nCOMMIT;"
        )
    return int(version)
