"""The store's reads: every query ``LocalStore`` answers, over the persistence actor.

Each reads through the writer's connection, after every write queued before it
(read your writes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from ...core.money import from_cents
from ...core.records import FUNDING, Player, PTSToken, R, Transaction
from ..backend import RunRecord
from .tables import from_row, select_sql
from .writer import PersistenceActor, Row


async def load_record(db: PersistenceActor, cls: type[R], key: str) -> R | None:
    row = await db.fetchone(f"{select_sql(cls)} WHERE {cls.KEY} = ?", (key,))
    return None if row is None else from_row(cls, row)


# Keys per ``IN (...)`` query: well under SQLite's 32,766 variables, and the plans of
# the few lengths used are cached by the connection (a batch is padded to one of them).
_IN_SIZES = (1, 4, 16, 64, 256)


async def records_by_key(
    conn: aiosqlite.Connection, cls: type[R], keys: Sequence[str]
) -> dict[str, R]:
    """The records of ``keys`` that exist, by key: one ``IN (...)`` query per up to 256
    keys, run on ``conn`` (inside a writer request: ``PersistenceActor.call_soon``)."""
    found: dict[str, R] = {}
    head = f"{select_sql(cls)} WHERE {cls.KEY} IN "
    index = 0
    while index < len(keys):
        chunk = list(keys[index : index + _IN_SIZES[-1]])
        index += len(chunk)
        size = next(n for n in _IN_SIZES if n >= len(chunk))
        chunk += [chunk[-1]] * (size - len(chunk))  # a repeated key matches once
        sql = head + "(" + ",".join("?" * size) + ")"
        for row in await conn.execute_fetchall(sql, chunk):
            record = from_row(cls, tuple(row))
            found[getattr(record, cls.KEY)] = record
    return found


async def load_records(db: PersistenceActor, cls: type[R]) -> list[R]:
    """Every record of a table, by key."""
    rows = await db.fetchall(f"{select_sql(cls)} ORDER BY {cls.KEY}")
    return [from_row(cls, row) for row in rows]


async def world_version(db: PersistenceActor, world_id: str) -> int | None:
    """The version of the world's file the database points at (None: the unversioned file)."""
    row = await db.fetchone("SELECT version FROM cdt_files WHERE world_cdt_id = ?", (world_id,))
    return None if row is None else int(row[0])


async def world_versions(db: PersistenceActor) -> dict[str, int]:
    """Every world's file version the database points at (worlds with a versioned file)."""
    rows = await db.fetchall("SELECT world_cdt_id, version FROM cdt_files")
    return {str(w): int(v) for w, v in rows if v is not None}


async def is_empty(db: PersistenceActor) -> bool:
    """No player, PTO or ledger row."""
    for table in ("players", "ptos", "transactions"):
        if await db.fetchone(f"SELECT 1 FROM {table} LIMIT 1") is not None:
            return False
    return True


async def global_stats(db: PersistenceActor) -> dict[str, dict[str, Any]]:
    """Counts and sums per table (money in major units)."""

    async def one(sql: str) -> Row:
        row = await db.fetchone(sql)
        assert row is not None  # aggregates always give one row
        return row

    (n, usd, xusd, play, locks) = await one(
        "SELECT COUNT(*), COALESCE(SUM(usd_obbba_balance),0), COALESCE(SUM(xUSD_balance),0),"
        " COALESCE(SUM(total_play_time),0), COALESCE(SUM(phase_locks_count),0) FROM players"
    )
    players = {
        "count": n,
        "usd_obbba_total": from_cents(usd),
        "xUSD_total": from_cents(xusd),
        "total_play_time": play,
        "phase_locks_total": locks,
    }
    (n, raised, pool, atu) = await one(
        "SELECT COUNT(*), COALESCE(SUM(funding_raised),0), COALESCE(SUM(xUSD_pool),0),"
        " COALESCE(SUM(atu_spent),0) FROM ptos"
    )
    by_status = {
        s: c for s, c in await db.fetchall("SELECT status, COUNT(*) FROM ptos GROUP BY status")
    }
    ptos = {
        "count": n,
        "by_status": by_status,
        "funding_raised_total": from_cents(raised),
        "xUSD_pool_total": from_cents(pool),
        "atu_spent_total": atu,
    }
    (n, hours, played, paid) = await one(
        "SELECT COUNT(*), COALESCE(SUM(hours_committed),0), COALESCE(SUM(hours_played),0),"
        " COALESCE(SUM(purchase_price),0) FROM pts_tokens"
    )
    tokens = {
        "count": n,
        "hours_committed_total": hours,
        "hours_played_total": played,
        "purchase_price_total": from_cents(paid),
    }
    volume = {
        f"{t}/{c}": from_cents(v)
        for t, c, v in await db.fetchall(
            "SELECT tx_type, currency, SUM(amount) FROM transactions GROUP BY tx_type, currency"
        )
    }
    (n,) = await one("SELECT COUNT(*) FROM transactions")
    transactions = {"count": n, "volume": volume}
    (n, duration, earned, quality) = await one(
        "SELECT COUNT(*), COALESCE(SUM(duration),0), COALESCE(SUM(xUSD_earned),0),"
        " COALESCE(AVG(quality),0) FROM play_sessions"
    )
    sessions = {
        "count": n,
        "duration_total": duration,
        "xUSD_earned_total": from_cents(earned),
        "quality_mean": quality,
    }
    return {
        "players": players,
        "ptos": ptos,
        "pts_tokens": tokens,
        "transactions": transactions,
        "play_sessions": sessions,
    }


# -- the event log (retention in schema.EVENT_RETENTION) ---------------------------------


async def events_after(db: PersistenceActor, since: int, limit: int) -> list[tuple[int, str, str]]:
    """Up to ``limit`` logged events with ``seq > since``, oldest first: (seq, kind, payload)."""
    rows = await db.fetchall(
        "SELECT seq, kind, payload FROM event_log WHERE seq > ? ORDER BY seq LIMIT ?",
        (since, limit),
    )
    return [(int(seq), str(kind), str(payload)) for seq, kind, payload in rows]


async def event_log_span(db: PersistenceActor) -> tuple[int, int]:
    """(oldest retained seq, newest seq ever numbered); (0, n) when none is retained."""
    row = await db.fetchone(
        "SELECT (SELECT COALESCE(MIN(seq), 0) FROM event_log),"
        " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'event_log'), 0)"
    )
    assert row is not None
    return int(row[0]), int(row[1])


# -- the recorded scenario run -------------------------------------------------------------


# The scenario run's row: one query, every view of it derived from the record.
SELECT_RUN = (
    "SELECT name, seed, scenario, started_at, tick, total_ticks, state, finished"
    " FROM runs WHERE run_id = 1"
)


def run_record_of(row: Row) -> RunRecord:
    name, seed, scenario, started_at, tick, total, state, finished = row
    return RunRecord(
        name=str(name),
        seed=int(seed),
        scenario=str(scenario),
        started_at=str(started_at),
        tick=int(tick),
        total_ticks=int(total),
        state=str(state),
        finished=bool(finished),
    )


async def run_record(db: PersistenceActor) -> RunRecord | None:
    row = await db.fetchone(SELECT_RUN)
    return None if row is None else run_record_of(row)


async def run_status(db: PersistenceActor) -> dict[str, Any] | None:
    """The scenario run recorded in this store (name, tick, total_ticks, finished), if any."""
    run = await run_record(db)
    if run is None:
        return None
    return {
        "name": run.name,
        "tick": run.tick,
        "total_ticks": run.total_ticks,
        "finished": run.finished,
    }


# -- what the backend interface adds (point and set reads) -------------------------------


async def load_tokens(db: PersistenceActor, pto_id: str) -> list[PTSToken]:
    """A PTO's tokens, by id."""
    found = await db.fetchall(
        f"{select_sql(PTSToken)} WHERE game_id = ? ORDER BY token_id", (pto_id,)
    )
    return [from_row(PTSToken, row) for row in found]


async def exists(db: PersistenceActor, ident: str) -> bool:
    """Whether a player or a PTO holds ``ident`` (one namespace)."""
    row = await db.fetchone(
        "SELECT EXISTS (SELECT 1 FROM players WHERE player_id = ?)"
        " OR EXISTS (SELECT 1 FROM ptos WHERE pto_id = ?)",
        (ident, ident),
    )
    return bool(row and row[0])


async def ptos_past_deadline(db: PersistenceActor, at: str) -> list[str]:
    """PTOs still funding whose deadline is at or before ``at``, by id."""
    found = await db.fetchall(
        "SELECT pto_id FROM ptos WHERE status = ? AND funding_deadline IS NOT NULL"
        " AND funding_deadline <= ? ORDER BY pto_id",
        (FUNDING, at),
    )
    return [str(pto_id) for (pto_id,) in found]


_IN_CHUNK = 400  # ids per IN (...) list: two lists stay under SQLite's 999 variables


async def ids(db: PersistenceActor, table: str, key: str) -> list[str]:
    """Every key of ``table``, in order."""
    found = await db.fetchall(f"SELECT {key} FROM {table} ORDER BY {key}")
    return [str(ident) for (ident,) in found]


async def taken(db: PersistenceActor, idents: Sequence[str]) -> set[str]:
    """Those of ``idents`` a player or a PTO already holds (bulk ``exists``)."""
    wanted = list(dict.fromkeys(idents))
    found: set[str] = set()
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = await db.fetchall(
            f"SELECT player_id FROM players WHERE player_id IN ({marks})"
            f" UNION SELECT pto_id FROM ptos WHERE pto_id IN ({marks})",
            (*chunk, *chunk),
        )
        found.update(str(ident) for (ident,) in rows)
    return found


# ``taken`` for SQLite alone (PostgreSQL has no json_each): the ids passed as one JSON
# array, each looked up in the key's index. One query, one trip to the writer's thread,
# whatever the number of ids, where the ``IN (?, ...)`` lists take one per 400.
_TAKEN_JSON = (
    "SELECT player_id FROM players WHERE player_id IN (SELECT value FROM json_each(?1))"
    " UNION SELECT pto_id FROM ptos WHERE pto_id IN (SELECT value FROM json_each(?1))"
)


async def taken_at_once(db: PersistenceActor, idents: Sequence[str]) -> set[str]:
    """``taken`` in one query (SQLite only)."""
    if not idents:
        return set()
    rows = await db.fetchall(_TAKEN_JSON, (json.dumps(list(idents), ensure_ascii=False),))
    return {str(ident) for (ident,) in rows}


async def open_hours(db: PersistenceActor, statuses: Sequence[str]) -> dict[str, dict[str, float]]:
    """Hours left to play per PTO among ``statuses`` and per holder (see the backend)."""
    if not statuses:
        return {}
    marks = ", ".join("?" * len(statuses))
    found = await db.fetchall(
        "SELECT t.game_id, t.holder, t.hours_committed, t.hours_played"
        " FROM pts_tokens t JOIN ptos p ON p.pto_id = t.game_id"
        f" WHERE p.status IN ({marks}) ORDER BY t.game_id, t.token_id",
        tuple(statuses),
    )
    left: dict[str, dict[str, float]] = {}
    for game_id, holder, committed, played in found:
        room = float(committed) - float(played)
        if room > 1e-9:
            per = left.setdefault(str(game_id), {})
            per[str(holder)] = per.get(str(holder), 0.0) + room
    return left


async def leaderboard(db: PersistenceActor, top: int) -> list[Player]:
    """The ``top`` players by xUSD balance, ties by id."""
    found = await db.fetchall(
        f"{select_sql(Player)} ORDER BY xUSD_balance DESC, player_id LIMIT ?", (max(0, top),)
    )
    return [from_row(Player, row) for row in found]


# -- the game server's bookkeeping -----------------------------------------------------------


async def token_versions(db: PersistenceActor) -> dict[str, int]:
    """Every player's token version (players never issued a token are absent: 0)."""
    rows = await db.fetchall("SELECT player_id, version FROM player_token_versions")
    return {str(pid): int(version) for pid, version in rows}


async def find_receipt(
    db: PersistenceActor, principal: str, key: str
) -> tuple[str, int, str] | None:
    """An idempotency key's (fingerprint, status, response JSON), if it was stored."""
    row = await db.fetchone(
        "SELECT fingerprint, status, response FROM idempotency_keys"
        " WHERE principal = ? AND key = ?",
        (principal, key),
    )
    return None if row is None else (str(row[0]), int(row[1]), str(row[2]))


async def transactions_of(
    db: PersistenceActor, player_id: str, *, after: int, limit: int
) -> list[Transaction]:
    """A player's ledger rows (either side), oldest first, ``tx_id > after``: one page."""
    rows = await db.fetchall(
        f"{select_sql(Transaction)}"
        " WHERE tx_id > ? AND (from_player = ? OR to_player = ?)"
        " ORDER BY tx_id LIMIT ?",
        (after, player_id, player_id, limit),
    )
    return [from_row(Transaction, row) for row in rows]
