"""The engine's SQL: every statement an economic operation writes, in one place.

Balances change by relative updates (``balance = balance + ?``), so units from
different actors commute inside a group commit, and always together with their
``transactions`` row in the same unit (hence the same SQLite transaction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ...core.records import PTO, Player, PlaySession, PTSToken, Transaction, insert_sql, to_row
from .writer import Statement

_INSERT_TX = insert_sql(Transaction)
_INSERT_SESSION = insert_sql(PlaySession)


def insert_player(player: Player) -> Statement:
    return Statement(insert_sql(Player), to_row(player))


def insert_pto(pto: PTO) -> Statement:
    return Statement(insert_sql(PTO), to_row(pto))


def insert_token(token: PTSToken) -> Statement:
    return Statement(insert_sql(PTSToken), to_row(token))


def ledger_row(
    tx_type: str,
    from_id: str | None,
    to_id: str | None,
    amount: int,
    currency: str,
    at: str,
    pto_id: str | None = None,
) -> Statement:
    tx = Transaction(None, tx_type, from_id, to_id, amount, currency, pto_id, at, None)
    return Statement(_INSERT_TX, to_row(tx))


def usd_delta(player_id: str, delta: int) -> Statement:
    return Statement(
        "UPDATE players SET usd_obbba_balance = usd_obbba_balance + ? WHERE player_id = ?",
        (delta, player_id),
    )


def pto_sale(pto_id: str, hours: int, price: int, status: str) -> Statement:
    return Statement(
        "UPDATE ptos SET pts_sold = pts_sold + ?, funding_raised = funding_raised + ?, status = ?"
        " WHERE pto_id = ?",
        (hours, price, status, pto_id),
    )


def pto_atu(pto_id: str, atu_spent: int, status: str, completion_time: str | None) -> Statement:
    return Statement(
        "UPDATE ptos SET atu_spent = ?, status = ?, completion_time = ? WHERE pto_id = ?",
        (atu_spent, status, completion_time, pto_id),
    )


def pto_failed(pto_id: str) -> Statement:
    return Statement("UPDATE ptos SET status = 'failed' WHERE pto_id = ?", (pto_id,))


def pto_session(pto_id: str, xusd: int, aci: float) -> Statement:
    return Statement(
        "UPDATE ptos SET xUSD_pool = xUSD_pool + ?, aci_coherence_score = ? WHERE pto_id = ?",
        (xusd, aci, pto_id),
    )


def pto_aci(pto_id: str, aci: float) -> Statement:
    return Statement("UPDATE ptos SET aci_coherence_score = ? WHERE pto_id = ?", (aci, pto_id))


def token_played(token_id: str, hours: float, xusd: int) -> Statement:
    return Statement(
        "UPDATE pts_tokens SET hours_played = hours_played + ?,"
        " xUSD_accumulated = xUSD_accumulated + ? WHERE token_id = ?",
        (hours, xusd, token_id),
    )


def player_session(
    player: Player, *, xusd: int, hours: float, locks: int, locked_hours: float
) -> Statement:
    """The player's row after a session: xUSD and counters relative, physics absolute."""
    return Statement(
        "UPDATE players SET xUSD_balance = xUSD_balance + ?, total_play_time = total_play_time + ?,"
        " phase_locks_count = phase_locks_count + ?, memory_depth = memory_depth + ?,"
        " quality_score = ?, tau_k = ?, phase = ?, coherence = ? WHERE player_id = ?",
        (
            xusd,
            hours,
            locks,
            locked_hours,
            player.quality_score,
            player.tau_k,
            player.phase,
            player.coherence,
            player.player_id,
        ),
    )


def insert_session(session: PlaySession) -> Statement:
    return Statement(_INSERT_SESSION, to_row(session), want_rowid=True)


def set_world_version(world_id: str, version: int) -> Statement:
    return Statement(
        "INSERT INTO cdt_files (world_cdt_id, version) VALUES (?, ?)"
        " ON CONFLICT(world_cdt_id) DO UPDATE SET version = excluded.version",
        (world_id, version),
    )


# -- the event log (see events.py) ------------------------------------------------------

_INSERT_EVENT = "INSERT INTO event_log (kind, at, payload) VALUES (?, ?, ?)"
# A session's event names the session inserted just before it in the same unit: the
# unit runs in order on the one writer, so play_sessions' counter is that session's id.
_INSERT_SESSION_EVENT = (
    "INSERT INTO event_log (kind, at, payload) VALUES (?, ?, json_set(?, '$.session_id',"
    " (SELECT seq FROM sqlite_sequence WHERE name = 'play_sessions')))"
)


def log_event(
    kind: str,
    at: str,
    payload: str,
    on_commit: Callable[[Sequence[int]], None],
    *,
    last_session: bool = False,
) -> Statement:
    """One row of ``event_log``; its rowid is the event's sequence number."""
    sql = _INSERT_SESSION_EVENT if last_session else _INSERT_EVENT
    return Statement(sql, (kind, at, payload), want_rowid=True, on_commit=on_commit)


# -- the game server's bookkeeping (tokens, idempotency keys) ---------------------------


def set_token_version(player_id: str, version: int) -> Statement:
    """Record a player's token version; tokens that carry an older one are revoked."""
    return Statement(
        "INSERT INTO player_token_versions (player_id, version) VALUES (?, ?)"
        " ON CONFLICT (player_id) DO UPDATE SET version = excluded.version",
        (player_id, version),
    )


def _json_of(cls: type, alias: str = "") -> str:
    # SQLite's JSON writes a REAL with 15 digits; 17 (as text) give back the exact double.
    return ", ".join(
        f"'{f.name}', printf('%!.17g', {alias}{f.name})"
        if f.type == "float"
        else f"'{f.name}', {alias}{f.name}"
        for f in dataclasses.fields(cls)
    )


_RECEIPT = (
    "INSERT INTO idempotency_keys (principal, key, fingerprint, status, response, created_at) "
)


def receipt_player(
    key: tuple[str, str], fingerprint: str, status: int, player_id: str, at: str
) -> Statement:
    """Store an idempotency key with the player's record as it is at this point of the unit.

    Appended to the operation's own unit, so the key, the money and the response
    commit together or not at all; the response is read from the rows just written."""
    return Statement(
        _RECEIPT + f"SELECT ?, ?, ?, ?, json_object('player', json_object({_json_of(Player)})), ?"
        " FROM players WHERE player_id = ?",
        (*key, fingerprint, status, at, player_id),
    )


def receipt_token(
    key: tuple[str, str], fingerprint: str, status: int, holder: str, pto_id: str, at: str
) -> Statement:
    """Store an idempotency key with the PTS token this unit just inserted (the holder's
    newest in the PTO: the unit runs alone in the writer, after the token's INSERT)."""
    return Statement(
        _RECEIPT + f"SELECT ?, ?, ?, ?, json_object('token', json_object({_json_of(PTSToken)})), ?"
        " FROM pts_tokens WHERE holder = ? AND game_id = ? ORDER BY rowid DESC LIMIT 1",
        (*key, fingerprint, status, at, holder, pto_id),
    )


def receipt_session(
    key: tuple[str, str], fingerprint: str, status: int, player_id: str, pto_id: str, at: str
) -> Statement:
    """Store an idempotency key with the play session this unit just inserted and the
    player's tau_k after it."""
    return Statement(
        _RECEIPT + "SELECT ?, ?, ?, ?, json_object("
        f"'session', json_object({_json_of(PlaySession, 's.')}),"
        " 'tau_k_after', printf('%!.17g', p.tau_k)), ?"
        " FROM play_sessions AS s JOIN players AS p ON p.player_id = s.player_id"
        " WHERE s.player_id = ? AND s.pto_id = ? ORDER BY s.session_id DESC LIMIT 1",
        (*key, fingerprint, status, at, player_id, pto_id),
    )
