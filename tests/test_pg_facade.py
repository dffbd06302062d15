"""The seed's facade (``UbloxLocalStorage``) on both backends: the same calls, the same
answers, the same export; backups, restore, export/import and verify on each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ublox_sim.core.errors import BackupError, CorruptCdtFile, InvalidInput, StoreLocked
from ublox_sim.store.sync import UbloxLocalStorage

PTO_ID = "pto_harmonic_001"
THETA = np.random.default_rng(3).uniform(0, 2 * np.pi, (8, 8))


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store spec for a new, empty store of each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "home")
    else:
        yield request.getfixturevalue("pg_url")


def _fill(storage: UbloxLocalStorage) -> None:
    """The seed's story, shortened: a player, a PTO with a world, money, a token, a session."""
    storage.save_player({"player_id": "alice", "tau_k": 8.5, "usd_obbba_balance": 4000.0})
    storage.log_transaction("deposit", None, "alice", "5000.00", "USD-OBBBA")
    storage.save_pto(
        {
            "pto_id": PTO_ID,
            "game_name": "Harmonic Caverns",
            "creator_id": "alice",
            "atu_required": 500,
            "pts_offered": 2000,
            "price_per_pts": 25.0,
            "funding_goal": 50000.0,
            "pts_sold": 40,
            "funding_raised": 1000.0,
            "status": "funding",
            "cdt": {"theta": THETA},
        }
    )
    storage.log_transaction("investment", "alice", PTO_ID, 1000, "USD-OBBBA", pto_id=PTO_ID)
    storage.save_pts_token(
        {
            "token_id": "pts_001",
            "game_id": PTO_ID,
            "holder": "alice",
            "hours_committed": 40.0,
            "purchase_price": 1000.0,
            "tau_k_at_purchase": 8.5,
        }
    )


STAMPS = ("created_at", "launch_time", "purchase_time", "timestamp")


def _stamps_out(doc: dict[str, Any]) -> dict[str, Any]:
    """The export without what differs by when it was written (and so its digest)."""
    return {
        table: [{k: v for k, v in row.items() if k not in STAMPS} for row in rows]
        if isinstance(rows, list)
        else rows
        for table, rows in doc.items()
        if table != "digest"
    }


def test_the_seed_story_reads_back_and_verifies_clean(spec: str, tmp_path: Path) -> None:
    with UbloxLocalStorage(store=spec, backup_root=tmp_path / "snaps") as storage:
        _fill(storage)
        session = storage.log_play_session(PTO_ID, "alice", 5.0, 0.85, 425.0)
        assert isinstance(session, int) and session >= 1
        assert storage.log_transaction("transfer", "alice", "alice", 1, "USD-OBBBA") >= 3
    with UbloxLocalStorage(store=spec, backup_root=tmp_path / "snaps") as storage:
        player = storage.load_player("alice")
        pto = storage.load_pto(PTO_ID)
        token = storage.load_pts_token("pts_001")
        stats = storage.get_global_stats()
    assert player is not None and player["usd_obbba_balance"] == 4000.0
    assert pto is not None and pto["pts_sold"] == 40
    np.testing.assert_array_equal(pto["cdt"]["theta"], THETA)
    assert token is not None and token["purchase_price"] == 1000.0
    assert stats["transactions"]["count"] == 3
    assert stats["play_sessions"]["xUSD_earned_total"] == 425.0


def test_export_and_import_agree_across_backends(pg_url: str, tmp_path: Path) -> None:
    exports = {}
    for name, spec in (("sqlite", str(tmp_path / "home")), ("postgres", pg_url)):
        with UbloxLocalStorage(store=spec, backup_root=tmp_path / "snaps") as storage:
            _fill(storage)
            exports[name] = storage.export_to_json(tmp_path / f"{name}.json")
    # The same calls make the same content on both backends (timestamps aside).
    docs = {k: json.loads(p.read_text()) for k, p in exports.items()}
    a, b = (_stamps_out(d) for d in docs.values())
    assert a == b
    assert a["ptos"][0]["cdt"]  # the world is in both
    # PostgreSQL's export imports into a new SQLite home, and back, unchanged.
    with UbloxLocalStorage(store=str(tmp_path / "copy")) as storage:
        assert storage.import_from_json(exports["postgres"]) == []
        again = storage.export_to_json(tmp_path / "copy.json")
    assert json.loads(again.read_text())["digest"] == docs["postgres"]["digest"]


def test_import_refuses_a_store_that_is_not_empty(spec: str, tmp_path: Path) -> None:
    with UbloxLocalStorage(store=str(tmp_path / "src")) as storage:
        _fill(storage)
        export = storage.export_to_json(tmp_path / "x.json")
    with UbloxLocalStorage(store=spec, backup_root=tmp_path / "snaps") as storage:
        assert storage.import_from_json(export) == []
        with pytest.raises(InvalidInput, match="is not empty: import only into a new store"):
            storage.import_from_json(export)
        assert storage.get_global_stats()["transactions"]["count"] == 2


def test_backups_restore_the_old_rows_and_keep_a_safety_copy(spec: str, tmp_path: Path) -> None:
    with UbloxLocalStorage(store=spec, backup_root=tmp_path / "snaps") as storage:
        _fill(storage)
        storage.create_backup("before")
        storage.save_player({"player_id": "bob", "usd_obbba_balance": 1.0})
        storage.save_pto({**_pto_of(storage), "cdt": {"theta": THETA * 2}})
        warnings = storage.restore_backup("before")
        assert storage.load_player("bob") is None
        pto = storage.load_pto(PTO_ID)
        assert pto is not None
        np.testing.assert_array_equal(pto["cdt"]["theta"], THETA)
        names = [b["name"] for b in storage.list_backups()]
        with pytest.raises(BackupError, match="no backup at"):
            storage.restore_backup("never_made")
    assert "before" in names
    assert any(n.startswith("pre_restore_") for n in names)
    assert warnings == []  # _fill's ledger agrees with its balances and escrow


def _pto_of(storage: UbloxLocalStorage) -> dict[str, Any]:
    pto = storage.load_pto(PTO_ID)
    assert pto is not None
    return {k: v for k, v in pto.items() if k != "cdt"}


def test_a_database_has_no_home_folder(pg_url: str) -> None:
    with UbloxLocalStorage(store=pg_url) as storage:
        assert storage.home is None
        with pytest.raises(InvalidInput, match="is a database"):
            _ = storage.home_path
        with pytest.raises(InvalidInput, match="give the export's path"):
            storage.export_to_json()


def test_facades_share_a_database_unless_one_holds_it_alone(pg_url: str) -> None:
    with UbloxLocalStorage(store=pg_url) as one, UbloxLocalStorage(store=pg_url) as two:
        one.save_player({"player_id": "alice", "usd_obbba_balance": 1.0})
        assert two.load_player("alice") is not None  # what one wrote, two reads
        with pytest.raises(StoreLocked, match=r"2 processes share .* \(shared mode"):
            UbloxLocalStorage(store=pg_url, shared=False)
    with UbloxLocalStorage(store=pg_url, shared=False) as alone:
        with pytest.raises(StoreLocked, match=r"another process holds .* exclusively"):
            UbloxLocalStorage(store=pg_url)
        assert alone.load_player("alice") is not None  # unharmed


def test_an_import_or_a_restore_needs_the_database_to_itself(pg_url: str, tmp_path: Path) -> None:
    with UbloxLocalStorage(tmp_path / "home") as home:
        _fill(home)
        export = home.export_to_json(tmp_path / "seed.json")
    snaps = tmp_path / "snaps"
    with UbloxLocalStorage(store=pg_url, backup_root=snaps) as one:
        with UbloxLocalStorage(store=pg_url, backup_root=snaps):
            refused = r"1 process shares .*: an import needs the database to itself"
            with pytest.raises(StoreLocked, match=refused):
                one.import_from_json(export)
            assert one.load_player("alice") is None  # nothing imported
        assert one.import_from_json(export) == []  # alone now: it may
        one.create_backup("imported")
        one.save_player({"player_id": "zed", "usd_obbba_balance": 0})
        with UbloxLocalStorage(store=pg_url, backup_root=snaps):
            with pytest.raises(StoreLocked, match=r"a backup restore needs the database to itself"):
                one.restore_backup("imported")
            assert one.load_player("zed") is not None  # nothing restored
        assert [b["name"] for b in one.list_backups()] == ["imported"]  # no safety snapshot
        assert one.restore_backup("imported") == []
        assert one.load_player("zed") is None
        assert one.load_player("alice") is not None


def test_verify_finds_the_same_problems_on_both_backends(spec: str, tmp_path: Path) -> None:
    with UbloxLocalStorage(store=spec, backup_root=tmp_path / "snaps") as storage:
        _fill(storage)
        storage.save_player({"player_id": "bob", "usd_obbba_balance": 12.5})  # no deposit
        storage.log_play_session(PTO_ID, "alice", 1.0, 0.5, 3.0)  # pool and balance not moved
        found = [str(f) for f in storage.verify()]
    assert found == [
        "[ledger] player bob: USD-OBBBA balance 1250 cents but the ledger sums to 0",
        f"[session] pto {PTO_ID}: xUSD_pool 0 but its sessions earned 300",
        "[session] player alice: sessions earned 300 xUSD cents but the balance is 0",
    ]


@pytest.mark.asyncio
async def test_verify_names_a_damaged_world_row(pg_url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    with UbloxLocalStorage(store=pg_url) as storage:
        _fill(storage)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE worlds SET npz = $1", b"not a zip file")
    finally:
        await conn.close()
    with UbloxLocalStorage(store=pg_url) as storage:
        found = [str(f) for f in storage.verify()]
        with pytest.raises(CorruptCdtFile, match="cannot be loaded"):
            storage.load_pto(PTO_ID)
    assert len(found) == 1
    assert found[0].startswith(f"[cdt] pto {PTO_ID}: ValueError")
