"""Checks that a store tells the truth: schema, integrity, ledger, escrow, tokens, CDT files.

``verify_store(home)`` is what ``ublox-sim verify`` runs after an incident. The
ledger rule itself (``ledger_findings``) is a pure function over balances and
ledger sums, so an export can be checked before it is imported with the very
same rule.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CorruptCdtFile, InvalidId
from ..core.ids import check_file_name
from ..core.money import STORED_MAX_CENTS, USD, XUSD
from ..core.records import ESCROW_HELD
from .cdt import load_npz, world_file_name
from .sqlite.schema import FIRST_RELEASE_SCHEMA_VERSION, SCHEMA_VERSION

MIGRATED_FROM = FIRST_RELEASE_SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, and the row or file it concerns."""

    check: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: {self.message}"


LedgerSums = Mapping[tuple[str, str], int]


def ledger_sums(
    transactions: Iterable[tuple[str | None, str | None, int, str]],
) -> dict[tuple[str, str], int]:
    """Net flow per (party, currency) from (from, to, amount, currency) rows."""
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for source, target, amount, currency in transactions:
        if target is not None:
            sums[(target, currency)] += amount
        if source is not None:
            sums[(source, currency)] -= amount
    return sums


def ledger_findings(
    players: Iterable[tuple[str, int, int]],
    ptos: Iterable[tuple[str, str, int]],
    sums: LedgerSums,
) -> list[Finding]:
    """Balances against the ledger.

    ``players``: (player_id, usd_obbba_balance, xUSD_balance) in cents.
    ``ptos``: (pto_id, status, funding_raised) in cents.
    ``sums``: net ledger flow per (party, currency).
    """
    findings: list[Finding] = []
    known: set[str] = set()
    for player_id, usd, xusd in players:
        known.add(player_id)
        for currency, balance in ((USD, usd), (XUSD, xusd)):
            expected = sums.get((player_id, currency), 0)
            if balance != expected:
                findings.append(
                    Finding(
                        "ledger",
                        f"player {player_id}",
                        f"{currency} balance {balance} cents but the ledger sums to {expected}",
                    )
                )
    for pto_id, status, raised in ptos:
        known.add(pto_id)
        escrow = sums.get((pto_id, USD), 0)
        expected = raised if status in ESCROW_HELD else 0
        if escrow != expected:
            findings.append(
                Finding(
                    "escrow",
                    f"pto {pto_id}",
                    f"status {status}: escrow in the ledger is {escrow} cents, expected {expected}"
                    f" (funding_raised {raised})",
                )
            )
        if sums.get((pto_id, XUSD), 0) != 0:
            findings.append(
                Finding("ledger", f"pto {pto_id}", "holds xUSD, which only players hold")
            )
    for (party, currency), net in sorted(sums.items()):
        if party not in known and net != 0:
            findings.append(
                Finding(
                    "ledger",
                    f"party {party}",
                    f"ledger moves {net} {currency} cents to an unknown id",
                )
            )
    return findings


def range_findings(
    players: Iterable[tuple[str, object, object]], ptos: Iterable[tuple[str, str, object]]
) -> list[Finding]:
    """Balances and funding figures that are not whole cents in the storage range
    (0..``STORED_MAX_CENTS``). The API never stores one (a balance past the money limit
    is in range: concurrent credits, refunds and payouts can leave one there); only an
    edit can (a negative figure, CHECK constraints bypassed)."""
    findings: list[Finding] = []
    figures: list[tuple[str, tuple[tuple[str, object], ...]]] = [
        (f"player {p}", (("usd_obbba_balance", u), ("xUSD_balance", x))) for p, u, x in players
    ]
    figures += [(f"pto {p}", (("funding_raised", r),)) for p, _status, r in ptos]
    for subject, named in figures:
        for name, value in named:
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not whole or not 0 <= value <= STORED_MAX_CENTS:  # type: ignore[operator]
                findings.append(
                    Finding(
                        "range",
                        subject,
                        f"{name} {value!r} is not whole cents in the storage range"
                        f" 0..{STORED_MAX_CENTS}",
                    )
                )
    return findings


def _rows(
    conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()
) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def database_findings(conn: sqlite3.Connection) -> list[Finding]:
    """Every relational check on an open database connection."""
    findings: list[Finding] = []
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    # An older schema is not damage: the next open migrates it (release 0.1.0 wrote 2).
    if not MIGRATED_FROM <= version <= SCHEMA_VERSION:
        findings.append(
            Finding("schema", "ublox.db", f"schema version {version}, expected {SCHEMA_VERSION}")
        )
        return findings
    integrity = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
    if integrity != ["ok"]:
        findings.extend(Finding("integrity", "ublox.db", line) for line in integrity[:20])
        return findings
    for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check").fetchall():
        findings.append(
            Finding("foreign_key", f"{table} rowid {rowid}", f"points at a missing {parent}")
        )

    results = {name: _rows(conn, sql, params) for name, (sql, params) in CHECKS.items()}
    findings.extend(relational_findings(results))
    return findings


# The relational checks, as queries any backend runs (SQLite's SQL; PostgreSQL's writer
# translates the placeholders) and one pure function over their rows, so that both
# backends check the very same things.
CHECKS: dict[str, tuple[str, tuple[object, ...]]] = {
    "ledger": (
        """SELECT party, currency, SUM(net) FROM (
               SELECT to_player AS party, currency, amount AS net FROM transactions
               WHERE to_player IS NOT NULL
               UNION ALL
               SELECT from_player, currency, -amount FROM transactions
               WHERE from_player IS NOT NULL) AS flows
           GROUP BY party, currency""",
        (),
    ),
    "players": (
        "SELECT player_id, usd_obbba_balance, xUSD_balance FROM players ORDER BY player_id",
        (),
    ),
    "ptos": ("SELECT pto_id, status, funding_raised FROM ptos ORDER BY pto_id", ()),
    "overplayed": (
        "SELECT token_id, hours_played, hours_committed FROM pts_tokens "
        "WHERE hours_played > hours_committed + 1e-9",
        (),
    ),
    "escrow_tokens": (
        f"""SELECT p.pto_id, p.status, p.pts_sold, p.funding_raised,
                  COALESCE(SUM(t.hours_committed), 0), COALESCE(SUM(t.purchase_price), 0)
           FROM ptos p LEFT JOIN pts_tokens t ON t.game_id = p.pto_id
           WHERE p.status IN ({", ".join("?" * len(ESCROW_HELD))})
           GROUP BY p.pto_id""",
        tuple(ESCROW_HELD),
    ),
    "pool_sessions": (
        """SELECT p.pto_id, p.xUSD_pool, COALESCE(SUM(s.xUSD_earned), 0)
           FROM ptos p LEFT JOIN play_sessions s ON s.pto_id = p.pto_id
           GROUP BY p.pto_id HAVING p.xUSD_pool != COALESCE(SUM(s.xUSD_earned), 0)""",
        (),
    ),
    "pool_tokens": (
        """SELECT p.pto_id, p.xUSD_pool, COALESCE(SUM(t.xUSD_accumulated), 0)
           FROM ptos p LEFT JOIN pts_tokens t ON t.game_id = p.pto_id
           GROUP BY p.pto_id HAVING p.xUSD_pool != COALESCE(SUM(t.xUSD_accumulated), 0)""",
        (),
    ),
    "earned": (
        """SELECT p.player_id, COALESCE(SUM(s.xUSD_earned), 0), p.xUSD_balance
           FROM players p LEFT JOIN play_sessions s ON s.player_id = p.player_id
           GROUP BY p.player_id HAVING COALESCE(SUM(s.xUSD_earned), 0) != p.xUSD_balance""",
        (),
    ),
}

Rows = Sequence[tuple[Any, ...]]


def relational_findings(results: Mapping[str, Rows]) -> list[Finding]:
    """What the rows of ``CHECKS`` (by name) say: ledger, escrow, tokens, sessions."""
    findings: list[Finding] = []
    sums = {(str(party), str(currency)): int(net) for party, currency, net in results["ledger"]}
    findings.extend(range_findings(results["players"], results["ptos"]))
    findings.extend(ledger_findings(results["players"], results["ptos"], sums))
    for token_id, played, committed in results["overplayed"]:
        findings.append(
            Finding("token", f"token {token_id}", f"hours played {played} > committed {committed}")
        )
    for pto_id, status, sold, raised, hours, paid in results["escrow_tokens"]:
        if abs(float(hours) - float(sold)) > 1e-9 or int(paid) != int(raised):
            findings.append(
                Finding(
                    "token",
                    f"pto {pto_id}",
                    f"{status}: tokens hold {hours} h for {paid} cents, "
                    f"but pts_sold is {sold} and funding_raised {raised}",
                )
            )
    for pto_id, pool, earned in results["pool_sessions"]:
        findings.append(
            Finding(
                "session", f"pto {pto_id}", f"xUSD_pool {pool} but its sessions earned {earned}"
            )
        )
    for pto_id, pool, accumulated in results["pool_tokens"]:
        findings.append(
            Finding("token", f"pto {pto_id}", f"xUSD_pool {pool} but its tokens hold {accumulated}")
        )
    for player_id, earned, balance in results["earned"]:
        findings.append(
            Finding(
                "session",
                f"player {player_id}",
                f"sessions earned {earned} xUSD cents but the balance is {balance}",
            )
        )
    return findings


def world_references(conn: sqlite3.Connection) -> list[tuple[str, str, int | None]]:
    """(pto_id, world_cdt_id, version of its file) for every PTO that has a world; the
    version is None for an unversioned file (see ``cdt.world_file_name``)."""
    versions: dict[str, int] = dict(_rows(conn, "SELECT world_cdt_id, version FROM cdt_files"))
    return [
        (pto_id, world_id, versions.get(world_id))
        for pto_id, world_id in _rows(
            conn, "SELECT pto_id, world_cdt_id FROM ptos WHERE world_cdt_id IS NOT NULL"
        )
    ]


def cdt_findings(conn: sqlite3.Connection, cdt_dir: Path) -> list[Finding]:
    """Every world a PTO references must be present and load safely."""
    findings: list[Finding] = []
    for pto_id, world_id, version in world_references(conn):
        try:
            name = check_file_name(world_id, "world id")
        except InvalidId as exc:
            findings.append(Finding("cdt", f"pto {pto_id}", str(exc)))
            continue
        path = cdt_dir / world_file_name(name, version)
        try:
            load_npz(path)
        except CorruptCdtFile as exc:
            findings.append(Finding("cdt", str(path), exc.reason))
    return findings


def _never_migrated(conn: sqlite3.Connection) -> bool:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None


def store_findings(conn: sqlite3.Connection, cdt_dir: Path) -> list[Finding]:
    """Every check, in verify's order: the database's, then (if it is sound) its worlds'.
    Shared by ``verify_store`` and an import, so an import says what verify will."""
    if _never_migrated(conn):
        # Created, then killed before its first migration committed: it holds nothing,
        # and the next open creates the schema in it. Not damage, and nothing to check.
        return []
    findings = database_findings(conn)
    if not any(f.check in ("schema", "integrity") for f in findings):
        findings.extend(cdt_findings(conn, cdt_dir))
    return findings


def verify_store(home: str | os.PathLike[str]) -> list[Finding]:
    """Open ``home/ublox.db`` read-only and run every check, CDT files included."""
    root = Path(home)
    db_path = root / "ublox.db"
    if not db_path.is_file():
        return [Finding("store", str(db_path), "no database here")]
    # Read-write mode only so that closing tidies the -wal/-shm files; nothing is written.
    # A read-only home cannot hold SQLite's shared-memory file, so read it as immutable.
    writable = os.access(root, os.W_OK) and os.access(db_path, os.W_OK)
    query = "mode=rw" if writable else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?{query}", uri=True)
    except sqlite3.Error as exc:
        return [Finding("store", str(db_path), f"cannot open: {exc}")]
    try:
        return store_findings(conn, root / "cdt_states")
    except sqlite3.DatabaseError as exc:
        return [Finding("integrity", str(db_path), f"not a usable database: {exc}")]
    finally:
        conn.close()
