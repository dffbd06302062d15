"""Events -> rows: every statement an economic operation writes, in one place.

``unit_statements`` turns a unit of domain events (``store.backend.Unit``) into the
SQL that persists it: the only translation from decisions to rows.

Balances change by relative updates (``balance = balance + ?``), so units from
different actors commute inside a group commit, and always together with their
``transactions`` row in the same unit (hence the same SQLite transaction).

Guards: a write that depends on what its actor believed a row holds checks it, in the
same statement (so under the row's lock on PostgreSQL): ``CASE WHEN <belief> THEN <new>
END`` is NULL when the belief is stale, and NULL in a NOT NULL column refuses the unit
(``core.errors.conflict_of`` makes it a ``Conflict``: the actor reloads and decides
again). With one process the actors are the only writers and the beliefs always hold.
See ARCHITECTURE.md, "Several processes", for which field needs what and why.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from decimal import Decimal
from itertools import chain
from typing import TypeVar

from ...core import events as ev
from ...core.money import USD, XUSD, to_cents
from ...core.records import (
    COMPLETED,
    FAILED,
    FUNDING,
    IN_PROGRESS,
    PTO,
    Player,
    PlaySession,
    PTSToken,
    Transaction,
)
from ..backend import Receipt, RunRecord, Unit
from .tables import columns, insert_sql, to_row
from .writer import Statement

_INSERT_TX = insert_sql(Transaction)
_E = TypeVar("_E", bound=ev.Event)
_INSERT_TOKEN = insert_sql(PTSToken)
# economy.tau_k_after(tau_k, q) is a * tau_k + b * (c * q): the session guard computes it
# in SQL with the same IEEE operations in the same order (tests/test_cluster.py pins it).
TAU_K_STEP = (0.9, 0.1, 10.0)
_INSERT_SESSION = insert_sql(PlaySession)


def insert_player(player: Player) -> Statement:
    return Statement(insert_sql(Player), to_row(player))


def insert_pto(pto: PTO) -> Statement:
    return Statement(insert_sql(PTO), to_row(pto))


def insert_token(token: PTSToken) -> Statement:
    return Statement(_INSERT_TOKEN, to_row(token))


def ledger_row(
    tx_type: str,
    from_id: str | None,
    to_id: str | None,
    amount: int,
    currency: str,
    at: str,
    pto_id: str | None = None,
) -> Statement:
    # Transaction's columns, in order (asserted below where the session rows are built).
    tx = (None, tx_type, from_id, to_id, amount, currency, pto_id, at, None)
    sides = _PLAYER_SIDES[tx_type]
    if not sides:
        return Statement(_INSERT_TX, tx)
    # The row itself refuses a player that does not exist: its amount turns negative,
    # which the table's CHECK rejects, and the whole unit with it (a balance UPDATE of
    # an unknown id would match nothing and the money would vanish).
    if sides == ("to",):
        return Statement(_CHECKED_TX[sides], (*tx, to_id))
    players = tuple(from_id if side == "from" else to_id for side in sides)
    return Statement(_CHECKED_TX[sides], (*tx, *players))


_INSERT_PLAYER = insert_sql(Player)


# Which side of each kind of ledger row is a player (the other may be a PTO).
_PLAYER_SIDES: dict[str, tuple[str, ...]] = {
    "deposit": ("to",),
    "transfer": ("from", "to"),
    "investment": ("from",),
    "refund": ("to",),
    "pto_completion": ("to",),
    "xusd_composition": ("to",),
}


def _checked_insert(sides: tuple[str, ...]) -> str:
    """The ledger row's INSERT, its amount made -1 unless each named player exists:
    ``?1``..``?n`` are the row's columns, the players' ids follow."""
    cols = columns(Transaction)
    exists = " AND ".join(
        f"EXISTS (SELECT 1 FROM players WHERE player_id = ?{len(cols) + k + 1})"
        for k in range(len(sides))
    )
    values = [
        f"CASE WHEN {exists} THEN ?{i + 1} ELSE -1 END" if name == "amount" else f"?{i + 1}"
        for i, name in enumerate(cols)
    ]
    return f"INSERT INTO transactions ({', '.join(cols)}) VALUES ({', '.join(values)})"


_CHECKED_TX = {sides: _checked_insert(sides) for sides in set(_PLAYER_SIDES.values())}


_USD_DELTA = "UPDATE players SET usd_obbba_balance = usd_obbba_balance + ? WHERE player_id = ?"


def usd_delta(player_id: str, delta: int) -> Statement:
    return Statement(_USD_DELTA, (delta, player_id))


def pto_failed(pto_id: str, refunded: int) -> Statement:
    """Funding -> failed, only from funding and only if the escrow is what the refunds
    return: the one unit that moves it refunds, exactly once whichever process races."""
    return Statement(
        "UPDATE ptos SET status = CASE WHEN status = ? AND funding_raised = ? THEN ? END"
        " WHERE pto_id = ?",
        (FUNDING, refunded, FAILED, pto_id),
    )


_SHARES_SOLD = (
    "UPDATE ptos SET pts_sold = CASE WHEN pts_sold = ? AND status = ? THEN pts_sold + ? END,"
    " funding_raised = funding_raised + ? WHERE pto_id = ?"
)


def shares_sold(pto_id: str, hours: int, price: int, sold_before: int) -> Statement:
    """A sale, only if the PTO still funds and has sold exactly what its actor saw."""
    return Statement(_SHARES_SOLD, (sold_before, FUNDING, hours, price, pto_id))


_PTO_SESSION = "UPDATE ptos SET xUSD_pool = xUSD_pool + ?, aci_coherence_score = ? WHERE pto_id = ?"


def pto_session(pto_id: str, xusd: int, aci: float) -> Statement:
    return Statement(_PTO_SESSION, (xusd, aci, pto_id))


def pto_aci(pto_id: str, aci: float) -> Statement:
    return Statement("UPDATE ptos SET aci_coherence_score = ? WHERE pto_id = ?", (aci, pto_id))


_TOKEN_PLAYED = (
    "UPDATE pts_tokens SET hours_played = hours_played + ?,"
    " xUSD_accumulated = xUSD_accumulated + ? WHERE token_id = ?"
)


def token_played(token_id: str, hours: float, xusd: int) -> Statement:
    return Statement(_TOKEN_PLAYED, (hours, xusd, token_id))


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


_PTO_FUNDED = "UPDATE ptos SET status = CASE WHEN status = ? THEN ? END WHERE pto_id = ?"


def pto_funded(pto_id: str) -> Statement:
    """Funding -> in progress, only from funding (the sale before it checked the shares)."""
    return Statement(_PTO_FUNDED, (FUNDING, IN_PROGRESS, pto_id))


def pto_atu_spent(pto_id: str, atu_spent: int, units: int) -> Statement:
    """ATU spent, only in progress and from what the actor saw spent."""
    return Statement(
        "UPDATE ptos SET atu_spent = CASE WHEN atu_spent = ? AND status = ? THEN atu_spent + ? END"
        " WHERE pto_id = ?",
        (atu_spent - units, IN_PROGRESS, units, pto_id),
    )


def pto_completed(pto_id: str, at: str) -> Statement:
    """In progress -> completed: the one unit that moves it pays the creator."""
    return Statement(
        "UPDATE ptos SET status = CASE WHEN status = ? THEN ? END, completion_time = ?"
        " WHERE pto_id = ?",
        (IN_PROGRESS, COMPLETED, at, pto_id),
    )


# -- a unit of events -> its statements -------------------------------------------------


def unit_statements(
    unit: Unit,
    publish: Callable[[ev.Event], None],
    *,
    bulk_sessions: bool = False,
    bulk_purchases: bool = False,
) -> tuple[list[Statement], list[ev.Event]]:
    """The rows of ``unit``'s events, in the unit's order, then its receipt.

    Returns the statements and the list of the unit's events that the commit hooks
    fill in: once the unit committed, each logged event is replaced by itself numbered
    (``seq``; a session's ``session_id``) and published, in commit order."""
    landed: list[ev.Event] = list(unit.events)
    out: list[Statement] = []
    if len(unit.events) > 1 and all(type(e) is ev.PlayerRegistered for e in unit.events):
        out.extend(_bulk_registration(unit.events, landed, publish))
    elif bulk_sessions and unit.receipt is None and _is_tick(unit.events):
        out.extend(_tick_sessions(unit.events, landed, publish))
    elif bulk_purchases and unit.receipt is None and _is_purchases(unit.events):
        out.extend(_bulk_purchases(unit.events, landed, publish))
    else:
        for index, event in enumerate(unit.events):
            out.extend(_rows(event))
            if event.logged:
                out.append(_log(index, event, landed, publish))
    if unit.receipt is not None:
        out.append(_receipt(unit.receipt, unit.events))
    return out, landed


def _rows(event: ev.Event) -> list[Statement]:
    match event:
        case ev.PlayerRegistered(record=player):
            assert player is not None, "a PlayerRegistered to store carries its record"
            rows = [insert_player(player)]
            if player.usd_obbba_balance:
                rows.append(
                    ledger_row(
                        "deposit",
                        None,
                        player.player_id,
                        player.usd_obbba_balance,
                        USD,
                        player.created_at,
                    )
                )
            return rows
        case ev.Deposited(player_id=player_id, amount=amount, at=at):
            cents = to_cents(amount)
            return [
                usd_delta(player_id, cents),
                ledger_row("deposit", None, player_id, cents, USD, at),
            ]
        case ev.Transferred(from_id=source, to_id=target, amount=amount, at=at):
            cents = to_cents(amount)
            return [
                usd_delta(source, -cents),
                usd_delta(target, cents),
                ledger_row("transfer", source, target, cents, USD, at),
            ]
        case ev.PTOLaunched(record=pto):
            assert pto is not None, "a PTOLaunched to store carries its record"
            return [insert_pto(pto)]
        case ev.SharesBought(token=token, pto_id=pto_id, hours=hours, at=at) as event:
            assert token is not None, "a SharesBought to store carries its token"
            price = token.purchase_price
            return [
                usd_delta(token.holder, -price),
                shares_sold(pto_id, hours, price, sold_before=event.pts_sold - hours),
                insert_token(token),
                ledger_row("investment", token.holder, pto_id, price, USD, at, pto_id),
            ]
        case ev.PTOFunded(pto_id=pto_id):
            return [pto_funded(pto_id)]
        case ev.PTOFailed(pto_id=pto_id, refunds=refunds, at=at):
            rows = [pto_failed(pto_id, sum(cents for _, cents in refunds))]
            for holder, cents in refunds:
                rows.append(usd_delta(holder, cents))
                rows.append(ledger_row("refund", pto_id, holder, cents, USD, at, pto_id))
            return rows
        case ev.AtuSpent(pto_id=pto_id, atu_spent=atu_spent, units=units):
            return [pto_atu_spent(pto_id, atu_spent, units)]
        case ev.PTOCompleted(pto_id=pto_id, creator_id=creator, payout=payout, at=at):
            rows = [pto_completed(pto_id, at)]
            cents = to_cents(payout)
            if cents:
                rows.append(usd_delta(creator, cents))
                rows.append(ledger_row("pto_completion", pto_id, creator, cents, USD, at, pto_id))
            return rows
        case ev.SessionPlayed() as s:
            return _session_rows(s)
        case ev.WorldStepped(pto_id=pto_id, aci=aci):
            return [pto_aci(pto_id, aci)]
        case _:
            return []  # a fact with no rows of its own (PhaseLock): logged only


_SESSION_PLAYER = (
    "UPDATE players SET xUSD_balance = xUSD_balance + ?,"
    " total_play_time = total_play_time + ?, phase_locks_count = phase_locks_count + ?,"
    " memory_depth = memory_depth + ?, quality_score = ?,"
    # tau_k moves from its value (economy.tau_k_after): only from the one the
    # player's actor saw, i.e. if the same step from the row's gives the same value.
    " tau_k = CASE WHEN ? * tau_k + ? * (CAST(? AS DOUBLE PRECISION) * ?) = ?"
    " THEN CAST(? AS DOUBLE PRECISION) END, phase = ?,"
    " coherence = ? WHERE player_id = ?"
)
# The session's rows are built as plain tuples (a tick has hundreds of sessions): the
# insert's values follow PlaySession's fields, the ledger row Transaction's.
assert columns(PlaySession) == (
    "session_id",
    "pto_id",
    "player_id",
    "duration",
    "quality",
    "xUSD_earned",
    "timestamp",
    "phase_locks",
)
assert columns(Transaction) == (
    "tx_id",
    "tx_type",
    "from_player",
    "to_player",
    "amount",
    "currency",
    "pto_id",
    "timestamp",
    "metadata",
)
_XUSD_COMPOSITION = _CHECKED_TX[_PLAYER_SIDES["xusd_composition"]]
assert _PLAYER_SIDES["xusd_composition"] == ("to",)


def _session_params(s: ev.SessionPlayed) -> list[tuple[str, tuple[object, ...]]]:
    """A session's statements as (SQL, parameters), in order; the insert of its
    ``play_sessions`` row is the one whose SQL is ``_INSERT_SESSION``."""
    xusd = to_cents(s.xUSD_earned)
    rows: list[tuple[str, tuple[object, ...]]] = [
        (
            _SESSION_PLAYER,
            (
                xusd,
                s.hours,
                s.phase_locks,
                s.memory_depth_added,
                s.quality,
                *TAU_K_STEP,
                s.quality,
                s.tau_k,
                s.tau_k,
                s.phase,
                s.coherence,
                s.player_id,
            ),
        )
    ]
    for token_id, hours, share in s.shares:
        rows.append((_TOKEN_PLAYED, (hours, share, token_id)))
    rows.append((_PTO_SESSION, (xusd, s.aci, s.pto_id)))
    rows.append(
        (
            _INSERT_SESSION,
            (None, s.pto_id, s.player_id, s.hours, s.quality, xusd, s.at, s.phase_locks),
        )
    )
    if xusd > 0:
        tx = (None, "xusd_composition", None, s.player_id, xusd, XUSD, s.pto_id, s.at, None)
        rows.append((_XUSD_COMPOSITION, (*tx, s.player_id)))
    return rows


def _session_rows(s: ev.SessionPlayed) -> list[Statement]:
    return [
        Statement(sql, params, want_rowid=sql == _INSERT_SESSION)
        for sql, params in _session_params(s)
    ]


def _log(
    index: int, event: ev.Event, landed: list[ev.Event], publish: Callable[[ev.Event], None]
) -> Statement:
    # A session's event follows its session's insert: ``ids`` are the unit's rowids so
    # far, so its id is the one before the event's own (a unit may hold many sessions).
    session = isinstance(event, ev.SessionPlayed) and event.session_id == 0

    def committed(ids: Sequence[int]) -> None:
        numbered: ev.Event
        if session and isinstance(event, ev.SessionPlayed):
            numbered = ev.numbered(event, ids[-1], ids[-2])
        else:
            numbered = ev.numbered(event, ids[-1])
        landed[index] = numbered
        publish(numbered)

    return log_event(event.kind, event.at, ev.payload(event), committed, last_session=session)


# A registering player's opening deposit when its player row is inserted by the same
# unit just before: it exists, so the ledger row needs no check (the raw INSERT).
_INSERT_DEPOSIT = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, timestamp)"
    f" VALUES ('deposit', NULL, ?, ?, '{USD}', ?)"
)
_player_row = operator.attrgetter(*columns(Player))
_encode = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str
# The fields a registration's log payload holds, in order, and those of the event: the
# template below is used only while they match (else ev.payload, the reference).
_REGISTERED_PAYLOAD = ("kind", "at", "player_id", "usd_obbba")
_REGISTERED_FIELDS = ("at", "seq", "player_id", "usd_obbba", "record")


def _registered_payload(event: ev.PlayerRegistered) -> str:
    """``ev.payload(event)``, byte for byte, without building the dict (a bulk
    registration logs thousands; tests/test_writer_bulk.py holds them equal)."""
    return (
        f'{{"kind":"{event.kind}","at":{_encode(event.at)},'
        f'"player_id":{_encode(event.player_id)},"usd_obbba":{_encode(str(event.usd_obbba))}}}'
    )


def _template_fits() -> bool:
    fields = tuple(f.name for f in dataclasses.fields(ev.PlayerRegistered))
    sample = ev.PlayerRegistered(at="t", player_id="p", usd_obbba=Decimal("1.00"))
    return (
        fields == _REGISTERED_FIELDS
        and tuple(json.loads(ev.payload(sample))) == _REGISTERED_PAYLOAD
        and ev.PlayerRegistered.internal == ("record",)
    )


_TEMPLATE_FITS = _template_fits()


def _replaced(event: ev.PlayerRegistered, seq: int) -> ev.PlayerRegistered:
    return dataclasses.replace(event, seq=seq)


if _TEMPLATE_FITS:
    _new_event = object.__new__
    _set_at, _set_seq, _set_player_id, _set_usd_obbba, _set_record = (
        getattr(ev.PlayerRegistered, name).__set__ for name in _REGISTERED_FIELDS
    )

    def _numbered(event: ev.PlayerRegistered, seq: int) -> ev.PlayerRegistered:
        """``dataclasses.replace(event, seq=seq)`` through the slots: the frozen
        ``__init__`` sets each field with ``object.__setattr__``, at twice the cost, and
        a bulk registration numbers thousands (tests/test_writer_bulk.py holds the
        events equal to one-by-one registration's)."""
        made: ev.PlayerRegistered = _new_event(ev.PlayerRegistered)
        _set_at(made, event.at)
        _set_seq(made, seq)
        _set_player_id(made, event.player_id)
        _set_usd_obbba(made, event.usd_obbba)
        _set_record(made, event.record)
        return made
else:
    _numbered = _replaced


# A registering player's row with the columns every new player starts at zero written as
# literals in the SQL, the others bound: a bulk registration binds 8 values a player, not
# 14 (the writer's thread binds them holding the GIL). Used only for records that hold
# exactly those zeros (else the plain row): the same row either way.
_FRESH = {
    "coherence": 0.0,
    "xUSD_balance": 0,
    "total_play_time": 0.0,
    "quality_score": 0.0,
    "phase_locks_count": 0,
    "memory_depth": 0.0,
}
_BOUND = tuple(c for c in columns(Player) if c not in _FRESH)
_INSERT_FRESH_PLAYER = (
    f"INSERT INTO {Player.TABLE} ({', '.join(columns(Player))}) VALUES"
    f" ({', '.join('?' if c in _BOUND else repr(_FRESH[c]) for c in columns(Player))})"
)
_fresh_row = operator.attrgetter(*_BOUND)
_fresh_rest = operator.attrgetter(*_FRESH)
_FRESH_REST = tuple(_FRESH.values())
# Their log rows, the kind a literal.
_INSERT_REGISTERED = (
    f"INSERT INTO event_log (kind, at, payload) VALUES ('{ev.PlayerRegistered.kind}', ?, ?)"
)


_deposit_row = operator.attrgetter("player_id", "usd_obbba_balance", "created_at")
# Rows per multi-row INSERT at most (as the writer's own multi-row INSERTs).
_MANY_ROWS = 4096
_MANY_TEXTS: dict[tuple[str, int], str] = {}


@functools.cache
def _variable_limit() -> int:
    """The most parameters one statement binds on this SQLite (999 before 3.32, 32,766
    since, or as it was built)."""
    with closing(sqlite3.connect(":memory:")) as db:
        return db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def _many(sql: str, width: int, values: list[object]) -> list[Statement]:
    """``sql``, a one-row INSERT of ``width`` parameters, for every ``width`` values of
    ``values``: as multi-row INSERTs, each given its rows' values as one flat list
    (what the writer would send for a statement of many rows, without a tuple per row
    for the event loop to make and the writer's thread to flatten)."""
    head, group = sql.split(" VALUES ", 1)
    per = max(1, min(_MANY_ROWS, _variable_limit() // width)) * width
    out: list[Statement] = []
    for start in range(0, len(values), per):
        part = values if len(values) <= per else values[start : start + per]
        key = (sql, len(part) // width)
        text = _MANY_TEXTS.get(key)
        if text is None:
            text = f"{head} VALUES {', '.join([group] * key[1])}"
            if len(_MANY_TEXTS) < 256:
                _MANY_TEXTS[key] = text
        out.append(Statement(text, rows=[part]))
    return out


def _bulk_registration(
    events: Sequence[ev.Event], landed: list[ev.Event], publish: Callable[[ev.Event], None]
) -> list[Statement]:
    """A bulk registration's rows: the players, their deposits and their log rows, each
    kind as multi-row INSERTs (players first: the others refer to them)."""
    registered: list[ev.PlayerRegistered] = []
    for event in events:
        assert isinstance(event, ev.PlayerRegistered) and event.record is not None
        registered.append(event)
    players = [e.record for e in registered if e.record is not None]
    if all(map(_FRESH_REST.__eq__, map(_fresh_rest, players))):
        sql, width, row = _INSERT_FRESH_PLAYER, len(_BOUND), _fresh_row
    else:
        sql, width, row = _INSERT_PLAYER, len(columns(Player)), _player_row
    out = _many(sql, width, list(chain.from_iterable(map(row, players))))
    deposits = list(chain.from_iterable(map(_deposit_row, filter(_has_balance, players))))
    if deposits:
        out += _many(_INSERT_DEPOSIT, 3, deposits)
    out += _log_registered(registered, landed, publish)
    return out


def _has_balance(player: Player) -> bool:
    return bool(player.usd_obbba_balance)


def _log_registered(
    events: Sequence[ev.PlayerRegistered],
    landed: list[ev.Event],
    publish: Callable[[ev.Event], None],
) -> list[Statement]:
    """Registrations' log rows as multi-row INSERTs. On the one writer they are numbered
    consecutively (AUTOINCREMENT takes the next value per row), so the last rowid, the
    last statement's, gives them all. They are numbered on commit without
    ``dataclasses.replace`` (the fields are known)."""
    payload = _registered_payload if _TEMPLATE_FITS else ev.payload
    values: list[object] = []
    for event in events:
        values += (event.at, payload(event))
    committed = _number_on_commit(
        events, landed, publish, _numbered if _TEMPLATE_FITS else _replaced
    )
    out = _many(_INSERT_REGISTERED, 2, values)
    last = out[-1]
    out[-1] = Statement(last.sql, rows=last.rows, want_rowid=True, on_commit=committed)
    return out


def _number_on_commit(
    events: Sequence[_E],
    landed: list[ev.Event],
    publish: Callable[[ev.Event], None],
    numbered: Callable[[_E, int], ev.Event] = ev.numbered,
) -> Callable[[Sequence[int]], None]:
    """The ``on_commit`` of ``events``' log rows, one row each and inserted last: on the
    one writer they are numbered consecutively (AUTOINCREMENT takes the next value per
    row), so the last rowid gives them all; each numbered event lands and is published."""

    def committed(ids: Sequence[int]) -> None:
        first = ids[-1] - len(events) + 1
        for offset, event in enumerate(events):
            landed[offset] = done = numbered(event, first + offset)
            publish(done)

    return committed


# -- a unit of many purchases (Engine.buy_many): one statement per kind (SQLite) ----------

# The ledger row of a purchase whose token (the same unit, just before) names its buyer:
# the token's foreign key refuses a buyer that does not exist, so the row needs no check
# of its own (``ledger_row``'s) and goes as multi-row INSERTs.
_INSERT_INVESTMENT = (
    "INSERT INTO transactions (tx_type, from_player, to_player, amount, currency, pto_id,"
    f" timestamp) VALUES ('investment', ?1, ?2, ?3, '{USD}', ?4, ?5)"
)


def _params_numbered(sql: str) -> str:
    """``sql`` with its ``?`` numbered ``?1``, ``?2``...: the writer then runs its rows with
    ``executemany`` (one prepared statement, reused every tick) rather than as multi-row
    INSERTs, whose text (so a statement compiled and cached) differs with each count of
    rows: a tick's purchases are a few hundred rows, not the thousands that pay for it."""
    parts = sql.split("?")
    return parts[0] + "".join(f"?{k}{part}" for k, part in enumerate(parts[1:], 1))


_INSERT_TOKENS = _params_numbered(_INSERT_TOKEN)
_INSERT_EVENTS = _params_numbered(_INSERT_EVENT)


def _is_purchases(events: Sequence[ev.Event]) -> bool:
    """Whether ``events`` are many purchases (and the fundings they made) whose rows may
    be written kind by kind: no purchase of a PTO after its funding in the unit (the
    sales check the status the funding moves)."""
    if len(events) < 2:
        return False
    funded: set[str] = set()
    for event in events:
        if isinstance(event, ev.SharesBought):
            if event.pto_id in funded or event.token is None:
                return False
        elif isinstance(event, ev.PTOFunded):
            funded.add(event.pto_id)
        else:
            return False
    return True


def _bulk_purchases(
    events: Sequence[ev.Event], landed: list[ev.Event], publish: Callable[[ev.Event], None]
) -> list[Statement]:
    """Purchases' rows as one run per statement kind, each run in the events' order:
    the debits, the sales, the fundings, the tokens, the ledger rows, the log rows. The
    same rows, ids and values as event by event (``_rows`` then ``_log`` per event:
    tests/test_buy_bulk.py holds them equal; a buyer that does not exist refuses the unit
    at its token's foreign key): the tokens, ledger rows and log rows are
    numbered in the same order; a PTO's sales and its funding stay in order; and the
    debits only lower balances, so a balance goes below zero (the CHECK refusing the
    unit) in this order exactly when it does in the events' order."""
    debits: list[tuple[object, ...]] = []
    sales: list[tuple[object, ...]] = []
    fundings: list[tuple[object, ...]] = []
    tokens: list[tuple[object, ...]] = []
    ledger: list[tuple[object, ...]] = []
    log: list[tuple[object, ...]] = []
    payload = ev.payload
    for event in events:
        if isinstance(event, ev.SharesBought):
            token = event.token
            assert token is not None
            price, holder, hours = token.purchase_price, token.holder, event.hours
            pto_id = event.pto_id
            debits.append((-price, holder))
            sales.append((event.pts_sold - hours, FUNDING, hours, price, pto_id))
            tokens.append(to_row(token))
            ledger.append((holder, pto_id, price, pto_id, event.at))
        else:
            assert isinstance(event, ev.PTOFunded)
            fundings.append((FUNDING, IN_PROGRESS, event.pto_id))
        log.append((event.kind, event.at, payload(event)))

    committed = _number_on_commit(events, landed, publish)
    out = [
        Statement.many(_USD_DELTA, debits),
        Statement.many(_SHARES_SOLD, sales),
        Statement.many(_INSERT_TOKENS, tokens),
        Statement.many(_INSERT_INVESTMENT, ledger),
        Statement(_INSERT_EVENTS, rows=log, want_rowid=True, on_commit=committed),
    ]
    if fundings:
        out.insert(2, Statement.many(_PTO_FUNDED, fundings))
    return out


def _receipt(receipt: Receipt, events: Sequence[ev.Event]) -> Statement:
    """The receipt's statement, answering for the unit's first event's subject."""
    key = (receipt.principal, receipt.key)
    args = (receipt.fingerprint, receipt.status)
    first = events[0]
    match receipt.response, first:
        case "token", ev.SharesBought(player_id=holder, pto_id=pto_id):
            return receipt_token(key, *args, holder, pto_id, receipt.at)
        case "session", ev.SessionPlayed(player_id=player_id, pto_id=pto_id):
            return receipt_session(key, *args, player_id, pto_id, receipt.at)
        case "player", ev.Deposited(player_id=player_id) | ev.PlayerRegistered(player_id=player_id):
            return receipt_player(key, *args, player_id, receipt.at)
        case "player", ev.Transferred(from_id=player_id):
            return receipt_player(key, *args, player_id, receipt.at)
    raise AssertionError(f"a {receipt.response} receipt cannot answer {first.kind}")


def save_run(run: RunRecord) -> Statement:
    """The scenario run's row: created at the first checkpoint, its progress updated after."""
    return Statement(
        "INSERT INTO runs (run_id, name, seed, scenario, started_at, tick, total_ticks, state,"
        " finished) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
        " tick = excluded.tick, state = excluded.state, finished = excluded.finished",
        (
            run.name,
            run.seed,
            run.scenario,
            run.started_at,
            run.tick,
            run.total_ticks,
            run.state,
            int(run.finished),
        ),
    )


# -- a scenario tick's unit: many sessions at once (SQLite) -------------------------------

_TICK_EVENTS = (ev.SessionPlayed, ev.PhaseLock, ev.WorldStepped)

# A tick's logged events as one statement of many rows. A session's row takes its id from
# the sessions inserted just before, all at once: ``?4`` is how many sessions follow it
# (their ids are consecutive, the newest is ``sqlite_sequence``'s); NULL for other events.
_INSERT_TICK_EVENT = (
    "INSERT INTO event_log (kind, at, payload) VALUES (?1, ?2, CASE WHEN ?4 IS NULL THEN ?3"
    " ELSE json_set(?3, '$.session_id',"
    " (SELECT seq FROM sqlite_sequence WHERE name = 'play_sessions') - ?4) END)"
)


def _is_tick(events: Sequence[ev.Event]) -> bool:
    sessions = 0
    for event in events:
        if type(event) not in _TICK_EVENTS:
            return False
        if type(event) is ev.SessionPlayed:
            if event.session_id != 0:
                return False
            sessions += 1
    return sessions > 1


def _tick_sessions(
    events: Sequence[ev.Event], landed: list[ev.Event], publish: Callable[[ev.Event], None]
) -> list[Statement]:
    """A tick's unit (``Engine.tick``: sessions, phase locks, world steps) as one statement
    of many rows per SQL text, instead of one call per row: each text's rows keep the
    events' order, so every table gets the same rows, ids and values as event by event
    (``tests/test_tick.py`` holds the bytes equal); the log rows come last, in order."""
    runs: dict[str, list[Sequence[object]]] = {}
    inserts: list[Sequence[object]] = []
    for event in events:
        if type(event) is ev.SessionPlayed:
            for sql, params in _session_params(event):
                if sql == _INSERT_SESSION:
                    inserts.append(params)
                else:
                    runs.setdefault(sql, []).append(params)
            continue
        for stmt in _rows(event):
            if stmt.sql == _INSERT_SESSION:
                inserts.append(stmt.params)
            else:
                assert not stmt.want_rowid and stmt.rows is None
                runs.setdefault(stmt.sql, []).append(stmt.params)
    logged = [(k, e) for k, e in enumerate(events) if e.logged]
    total = sum(1 for e in events if type(e) is ev.SessionPlayed)
    log_rows: list[tuple[object, ...]] = []
    seen = 0
    for _, event in logged:
        after: int | None = None
        if type(event) is ev.SessionPlayed:
            seen += 1
            after = total - seen
        log_rows.append((event.kind, event.at, ev.payload(event), after))

    def committed(ids: Sequence[int]) -> None:
        seq, session = ids[-1] - len(logged) + 1, ids[-2] - total + 1
        for offset, (index, event) in enumerate(logged):
            numbered: ev.Event
            if type(event) is ev.SessionPlayed:
                numbered = ev.numbered(event, seq + offset, session)
                session += 1
            else:
                numbered = ev.numbered(event, seq + offset)
            landed[index] = numbered
            publish(numbered)

    out = [Statement.many(sql, rows) for sql, rows in runs.items()]
    out.append(Statement(_INSERT_SESSION, rows=inserts, want_rowid=True))
    out.append(Statement(_INSERT_TICK_EVENT, rows=log_rows, want_rowid=True, on_commit=committed))
    return out
