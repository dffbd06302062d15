"""SQLite statements (``store.sqlite.rows``, ``store.sqlite.queries``) as PostgreSQL ones.

The event -> row logic lives once, in ``store.sqlite.rows``; the few SQLite spellings it
uses are rewritten here, each by a rule that names it. A statement this module cannot
translate raises rather than running as something else. (The intended end state, see the
report of issue #14: rows emit dialect-neutral statements and each backend renders them.)
"""

from __future__ import annotations

import functools
import re

# Which column an INSERT's lastrowid is, per table (SQLite: the rowid).
ROWID = {"event_log": "seq", "play_sessions": "session_id", "transactions": "tx_id"}

_NUMBERED = re.compile(r"\?(\d+)")
_PRINTF = re.compile(r"printf\('%!\.17g', ([\w.]+)\)")
_CHECKED_AMOUNT = re.compile(r"THEN \$(\d+) ELSE -1 END")
_INSERT_SELECT = re.compile(r"^(INSERT INTO idempotency_keys \([^)]*\) )SELECT \?, \?, \?, \?, ")
_SQLITE_ONLY = ("sqlite_", "json_set", "json_valid", "PRAGMA", "rowid")


@functools.lru_cache(maxsize=512)
def to_postgres(sql: str, want_rowid: bool = False) -> str:
    """``sql`` with PostgreSQL placeholders ($n) and spellings."""
    out = sql
    # Idempotency receipts: INSERT ... SELECT ?, ?, ?, ? needs types for its parameters.
    out = _INSERT_SELECT.sub(r"\1SELECT ?::text, ?::text, ?::text, ?::bigint, ", out)
    out = _PRINTF.sub(r"(\1)::text", out)  # a double as text, exact (shortest round trip)
    out = out.replace("json_object(", "json_build_object(")
    out = out.replace("ORDER BY rowid DESC", "ORDER BY ord DESC")  # pts_tokens.ord
    if _NUMBERED.search(out):
        out = _NUMBERED.sub(r"$\1", out)
    else:
        parts = out.split("?")
        out = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    # The ledger row's amount, made -1 for a missing player: keep it a bigint.
    out = _CHECKED_AMOUNT.sub(r"THEN $\1::bigint ELSE -1 END", out)
    for word in _SQLITE_ONLY:
        if word in out:
            raise ValueError(f"no PostgreSQL translation for {word!r} in: {sql}")
    if want_rowid:
        match = re.match(r"INSERT INTO (\w+)", out)
        if match is None or match.group(1) not in ROWID:
            raise ValueError(f"no rowid to return for: {sql}")
        out += f" RETURNING {ROWID[match.group(1)]}"
    return out
