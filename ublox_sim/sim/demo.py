"""The seed's demo flow on the storage API: one line per step, checks that fail loudly.

Unlike the seed, it records alice's 5000.00 as a ``deposit`` and her purchase and
play as ledger rows, so the demo store also passes ``ublox-sim verify``. It runs on a
SQLite home or on a PostgreSQL database (``demo --store URL``): the same storage API,
the same checks; only where the worlds, the backup and the export go differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.errors import InvalidInput
from ..core.money import USD, XUSD
from ..core.records import FUNDING
from ..store.home import world_id_for
from ..store.open import PgStore, default_backup_root
from ..store.sync import UbloxLocalStorage

Say = Callable[[str], None]

ALICE = {
    "player_id": "alice",
    "tau_k": 8.5,
    "usd_obbba_balance": 5000.0,
    "xUSD_balance": 0.0,
    "total_play_time": 0.0,
    "quality_score": 0.0,
    "phase_locks_count": 0,
    "memory_depth": 0.0,
}
PTO_ID = "pto_harmonic_001"


class DemoCheckFailed(AssertionError):
    pass


def plural(count: int, word: str) -> str:
    """``1 player``, ``2 players``, ``0 sessions``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoCheckFailed(what)


def run_demo(home: Path | PgStore, say: Say = print, *, temporary: bool = False) -> Path:
    """Run the seed's flow in ``home`` (a folder, or a PostgreSQL database that holds no
    store yet); return the export's path. ``temporary``: the caller deletes ``home``
    afterwards, and the first line says so."""
    on_pg = isinstance(home, PgStore)
    backend = "PostgreSQL" if on_pg else "SQLite"
    rng = np.random.default_rng(12)
    # A 32×32 world, like the seed's small CDT files: random phases do not compress,
    # so a 64×64 float64 world alone is ~64 KB on disk.
    theta = rng.uniform(0, 2 * np.pi, (32, 32))
    omega = rng.normal(1.0, 0.1, (32, 32))
    with UbloxLocalStorage(store=home) as storage:
        if isinstance(home, PgStore):
            stats = storage.get_global_stats()
            if any(stats[t]["count"] for t in ("players", "ptos", "transactions")):
                raise InvalidInput(f"{home} already holds a store; use a new database")
            say(f"store: {home}")
        else:
            say(
                f"home: {storage.home_path}"
                + (" (temporary: deleted when the demo ends)" if temporary else "")
            )
        storage.save_player(ALICE)
        storage.log_transaction("deposit", None, "alice", 5000.0, USD)
        say(f"✓ player alice saved to {backend} (5000.00 USD-OBBBA, deposit logged)")

        storage.save_pto(
            {
                "pto_id": PTO_ID,
                "game_name": "Harmonic Caverns",
                "creator_id": "alice",
                "atu_required": 500,
                "pts_offered": 2000,
                "price_per_pts": 25.0,
                "funding_goal": 50000.0,
                "status": FUNDING,
                "world_cdt_id": world_id_for(PTO_ID),
                "cdt": {"theta": theta, "omega": omega},
            }
        )
        where = "a row of worlds" if on_pg else "cdt_states/"
        say(f"✓ PTO {PTO_ID} saved to {backend}, its 32×32 world to {where}")

        hours, price = 40, 25.0
        storage.log_transaction("investment", "alice", PTO_ID, hours * price, USD, pto_id=PTO_ID)
        storage.save_player({**ALICE, "usd_obbba_balance": 5000.0 - hours * price})
        storage.save_pto(
            {
                "pto_id": PTO_ID,
                "game_name": "Harmonic Caverns",
                "creator_id": "alice",
                "atu_required": 500,
                "pts_offered": 2000,
                "pts_sold": hours,
                "price_per_pts": price,
                "funding_goal": 50000.0,
                "funding_raised": hours * price,
                "world_cdt_id": world_id_for(PTO_ID),
            }
        )
        storage.save_pts_token(
            {
                "token_id": "pts_001",
                "game_id": PTO_ID,
                "holder": "alice",
                "hours_committed": float(hours),
                "purchase_price": hours * price,
                "tau_k_at_purchase": 8.5,
            }
        )
        say(f"✓ PTS token pts_001 saved: {hours} h × {price:.2f} = {hours * price:.2f} USD-OBBBA")
        say("✓ investment transaction logged")

        duration, quality, amplification = 5.0, 0.85, 100.0
        earned = round(duration * quality * amplification, 2)
        session_id = storage.log_play_session(PTO_ID, "alice", duration, quality, earned)
        storage.log_transaction("xusd_composition", None, "alice", earned, XUSD, pto_id=PTO_ID)
        storage.save_player(
            {
                **ALICE,
                "usd_obbba_balance": 4000.0,
                "xUSD_balance": earned,
                "total_play_time": duration,
                "quality_score": quality,
            }
        )
        pto = storage.load_pto(PTO_ID)
        assert pto is not None
        storage.save_pto({**{k: v for k, v in pto.items() if k != "cdt"}, "xUSD_pool": earned})
        token = storage.load_pts_token("pts_001")
        assert token is not None
        storage.save_pts_token({**token, "hours_played": duration, "xUSD_accumulated": earned})
        say(
            f"✓ play session {session_id} logged: {duration} h at quality {quality} → {earned:.2f} xUSD"
        )

        storage.flush()  # so the world below is read back from its .npz (row), not memory
        player = storage.load_player("alice")
        pto = storage.load_pto(PTO_ID)
        token = storage.load_pts_token("pts_001")
        _check(player is not None and player["usd_obbba_balance"] == 4000.0, "alice's balance")
        _check(player is not None and player["xUSD_balance"] == 425.0, "alice's xUSD")
        _check(pto is not None and pto["funding_raised"] == 1000.0, "funding raised")
        _check(
            pto is not None and np.array_equal(pto["cdt"]["theta"], theta),
            "world reloads identical",
        )
        _check(token is not None and token["purchase_price"] == 1000.0, "token price")
        say("✓ everything loads back equal (player, PTO + world arrays, token)")

        backup = storage.create_backup("demo_backup")
        say(f"✓ backup created: {backup}")
        # A database has no home folder: its export goes beside its backups.
        export = storage.export_to_json(
            default_backup_root(home) / "demo_export.json" if isinstance(home, PgStore) else None
        )
        say(f"✓ JSON export written: {export}")
        stats = storage.get_global_stats()
        say(
            "✓ stats: "
            + ", ".join(
                plural(stats[table]["count"], word)
                for table, word in (
                    ("players", "player"),
                    ("ptos", "PTO"),
                    ("transactions", "transaction"),
                    ("play_sessions", "session"),
                )
            )
        )
        findings = storage.verify()
    _check(not findings, "verify: " + "; ".join(map(str, findings)))
    if isinstance(home, PgStore):
        say("✓ verify passed")
        return export
    size = sum(
        p.stat().st_size for p in home.rglob("*") if p.is_file() and "backups" not in p.parts
    )
    say(f"✓ verify passed; store size {size / 1024:.1f} KB (ublox.db + cdt_states + export.json)")
    return export
