"""The async local store: records, exact money, export/import, corrupt worlds, verify."""

from __future__ import annotations

import base64
import json
import math
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from ublox_sim.core.errors import (
    CorruptCdtFile,
    InvalidAmount,
    InvalidId,
    InvalidInput,
    StoreError,
)
from ublox_sim.store.export import decode_array, encode_array
from ublox_sim.store.home import world_id_for
from ublox_sim.store.local import LocalStore
from ublox_sim.store.sync import UbloxLocalStorage
from ublox_sim.store.verify import verify_store

ALICE: dict[str, Any] = {
    "player_id": "alice",
    "position_x": 1.5,
    "position_y": -2.0,
    "phase": 0.25,
    "tau_k": 8.5,
    "resonance_freq": 1.1,
    "usd_obbba_balance": 5000.0,
    "xUSD_balance": 0.0,
    "total_play_time": 0.0,
    "quality_score": 0.0,
    "phase_locks_count": 0,
    "memory_depth": 0.0,
}
PTO_ID = "pto_harmonic_001"
OTHER_PTO = "pto_other_002"


def _world(seed: int, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "theta": rng.uniform(0, 2 * np.pi, (size, size)),
        "omega": rng.normal(1.0, 0.1, (size, size)),
    }


def _pto(pto_id: str, creator: str = "alice", **extra: Any) -> dict[str, Any]:
    return {
        "pto_id": pto_id,
        "game_name": f"Game {pto_id}",
        "creator_id": creator,
        "atu_required": 500,
        "pts_offered": 2000,
        "price_per_pts": 25.0,
        "funding_goal": 50000.0,
        "status": "funding",
        **extra,
    }


def _assert_worlds_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert got[name].tobytes() == want[name].tobytes()


def _sql(db: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query, params).fetchall()


def _count(db: Path, table: str) -> int:
    return int(_sql(db, f"SELECT COUNT(*) FROM {table}")[0][0])


async def _populate(store: LocalStore) -> dict[str, dict[str, np.ndarray]]:
    """A small store whose balances agree with its ledger (the seed's flow, plus bob)."""
    worlds = {PTO_ID: _world(1), OTHER_PTO: _world(2)}
    await store.save_player(ALICE)
    await store.log_transaction("deposit", None, "alice", 5000.0, "USD-OBBBA")
    await store.save_player({"player_id": "bob", "usd_obbba_balance": 300.0})
    await store.log_transaction("deposit", None, "bob", 300.0, "USD-OBBBA")
    await store.save_pto({**_pto(PTO_ID), "cdt": worlds[PTO_ID]})
    await store.save_pto({**_pto(OTHER_PTO, creator="bob"), "cdt": worlds[OTHER_PTO]})
    await store.log_transaction(
        "investment", "alice", PTO_ID, 1000.0, "USD-OBBBA", pto_id=PTO_ID, metadata={"hours": 40}
    )
    await store.save_player({**ALICE, "usd_obbba_balance": 4000.0})
    await store.save_pto(
        {
            **_pto(PTO_ID),
            "pts_sold": 40,
            "funding_raised": 1000.0,
            "world_cdt_id": world_id_for(PTO_ID),  # the raw API writes what it is given
        }
    )
    await store.save_pts_token(
        {
            "token_id": "pts_001",
            "game_id": PTO_ID,
            "holder": "alice",
            "hours_committed": 40.0,
            "purchase_price": 1000.0,
            "tau_k_at_purchase": 8.5,
        }
    )
    await store.log_play_session(PTO_ID, "alice", 5.0, 0.85, 425.0, phase_locks=2)
    await store.log_transaction("xusd_composition", None, "alice", 425.0, "xUSD", pto_id=PTO_ID)
    await store.save_player(
        {**ALICE, "usd_obbba_balance": 4000.0, "xUSD_balance": 425.0, "total_play_time": 5.0}
    )
    pto = await store.load_pto(PTO_ID)
    assert pto is not None
    await store.save_pto({**{k: v for k, v in pto.items() if k != "cdt"}, "xUSD_pool": 425.0})
    token = await store.load_pts_token("pts_001")
    assert token is not None
    await store.save_pts_token({**token, "hours_played": 5.0, "xUSD_accumulated": 425.0})
    return worlds


async def _populated_home(home: Path) -> dict[str, dict[str, np.ndarray]]:
    async with LocalStore.open(home) as store:
        return await _populate(store)


# -- records ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_save_and_load_player(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        assert await store.load_player("alice") is None
        await store.save_player(ALICE)
        loaded = await store.load_player("alice")
        assert loaded is not None
        assert {k: loaded[k] for k in ALICE} == ALICE
        assert loaded["created_at"]  # stamped by the store
        # Saving again replaces the row, keeps one row.
        await store.save_player({**ALICE, "usd_obbba_balance": 4000.0, "phase_locks_count": 3})
        loaded = await store.load_player("alice")
        assert loaded is not None
        assert loaded["usd_obbba_balance"] == 4000.0
        assert loaded["phase_locks_count"] == 3
    async with LocalStore.open(tmp_path) as store:
        again = await store.load_player("alice")
    assert again == loaded
    assert _count(tmp_path / "ublox.db", "players") == 1


@pytest.mark.asyncio
async def test_save_and_load_pto_with_world_arrays(tmp_path: Path) -> None:
    world = _world(5, size=24)
    async with LocalStore.open(tmp_path, flush_interval=60.0) as store:
        await store.save_player(ALICE)
        await store.save_pto({**_pto(PTO_ID), "cdt": world})
        await store.save_pto(_pto(OTHER_PTO))  # no world

        pto = await store.load_pto(PTO_ID)  # before any flush: read-your-writes
        assert pto is not None
        assert pto["price_per_pts"] == 25.0
        assert pto["funding_goal"] == 50000.0
        assert pto["status"] == "funding"
        assert pto["world_cdt_id"] == world_id_for(PTO_ID)
        _assert_worlds_equal(pto["cdt"], world)

        await store.flush()
        path = tmp_path / "cdt_states" / f"{world_id_for(PTO_ID)}.npz"
        assert path.is_file()
        pto = await store.load_pto(PTO_ID)  # now from the file
        assert pto is not None
        _assert_worlds_equal(pto["cdt"], world)

        plain = await store.load_pto(OTHER_PTO)
        assert plain is not None
        assert plain["world_cdt_id"] is None
        assert "cdt" not in plain
        assert await store.load_pto("pto_missing") is None

    async with LocalStore.open(tmp_path) as store:
        pto = await store.load_pto(PTO_ID)
    assert pto is not None
    _assert_worlds_equal(pto["cdt"], world)
    assert [p.name for p in (tmp_path / "cdt_states").iterdir()] == [path.name]


@pytest.mark.asyncio
async def test_world_arrays_marked_on_close_are_flushed(tmp_path: Path) -> None:
    world = _world(9)
    async with LocalStore.open(tmp_path, flush_interval=60.0) as store:
        await store.save_player(ALICE)
        await store.save_pto({**_pto(PTO_ID), "cdt": world})
    # Closing flushed the dirty world although the flusher never ran.
    async with LocalStore.open(tmp_path) as store:
        pto = await store.load_pto(PTO_ID)
    assert pto is not None
    _assert_worlds_equal(pto["cdt"], world)


@pytest.mark.asyncio
async def test_save_and_load_token(tmp_path: Path) -> None:
    token = {
        "token_id": "pts_001",
        "game_id": PTO_ID,
        "holder": "alice",
        "hours_committed": 40.0,
        "hours_played": 1.5,
        "purchase_price": 1000.0,
        "xUSD_accumulated": 12.34,
        "tau_k_at_purchase": 8.5,
    }
    async with LocalStore.open(tmp_path) as store:
        await store.save_player(ALICE)
        await store.save_pto(_pto(PTO_ID))
        await store.save_pts_token(token)
        loaded = await store.load_pts_token("pts_001")
        assert await store.load_pts_token("nope") is None
    assert loaded is not None
    assert {k: loaded[k] for k in token} == token
    assert loaded["purchase_time"]
    assert _sql(
        tmp_path / "ublox.db", "SELECT purchase_price, xUSD_accumulated FROM pts_tokens"
    ) == [(100000, 1234)]


# -- money -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_money_is_major_units_at_the_api_and_integer_cents_in_the_file(
    tmp_path: Path,
) -> None:
    async with LocalStore.open(tmp_path) as store:
        await store.save_player({"player_id": "alice", "usd_obbba_balance": 5000.0})
        await store.save_player(
            {"player_id": "carol", "usd_obbba_balance": 0.1, "xUSD_balance": 0.3}
        )
        await store.log_transaction("deposit", None, "alice", 19.99, "USD-OBBBA")
        alice = await store.load_player("alice")
        carol = await store.load_player("carol")
    assert alice is not None and carol is not None
    assert alice["usd_obbba_balance"] == 5000.0
    assert carol["usd_obbba_balance"] == 0.1
    assert carol["xUSD_balance"] == 0.3
    db = tmp_path / "ublox.db"
    assert _sql(
        db,
        "SELECT usd_obbba_balance, typeof(usd_obbba_balance) FROM players WHERE player_id = ?",
        ("alice",),
    ) == [(500000, "integer")]
    assert _sql(
        db, "SELECT usd_obbba_balance, xUSD_balance FROM players WHERE player_id='carol'"
    ) == [(10, 30)]
    assert _sql(db, "SELECT amount, typeof(amount) FROM transactions") == [(1999, "integer")]


BAD_AMOUNTS = [0.001, 12.345, math.nan, math.inf, -5.0, -0.01, True, False, "abc", None, [1]]


@pytest.mark.asyncio
@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
async def test_bad_amounts_are_refused_and_nothing_is_written(
    amount: object, tmp_path: Path
) -> None:
    async with LocalStore.open(tmp_path) as store:
        with pytest.raises(InvalidAmount):
            await store.save_player({"player_id": "alice", "usd_obbba_balance": amount})
        with pytest.raises(InvalidAmount):
            await store.save_player({"player_id": "alice", "xUSD_balance": amount})
        with pytest.raises(InvalidAmount):
            await store.log_transaction("deposit", None, "alice", amount, "USD-OBBBA")  # type: ignore[arg-type]
        with pytest.raises(InvalidAmount):
            await store.log_play_session("p", "alice", 1.0, 0.5, amount)  # type: ignore[arg-type]
        assert await store.load_player("alice") is None
        assert await store.is_empty()
    db = tmp_path / "ublox.db"
    for table in ("players", "transactions", "play_sessions"):
        assert _count(db, table) == 0


@pytest.mark.asyncio
async def test_unknown_and_mistyped_fields_are_refused(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        with pytest.raises(InvalidInput, match="usd_balance"):
            await store.save_player({"player_id": "alice", "usd_balance": 5000.0})
        with pytest.raises(InvalidInput, match="player_id"):
            await store.save_player({"usd_obbba_balance": 5000.0})
        with pytest.raises(InvalidInput, match="tau_k"):
            await store.save_player({"player_id": "alice", "tau_k": "high"})
        with pytest.raises(InvalidInput, match="phase_locks_count"):
            await store.save_player({"player_id": "alice", "phase_locks_count": 1.5})
        with pytest.raises(InvalidInput, match="tau_k"):
            await store.save_player({"player_id": "alice", "tau_k": math.nan})
        with pytest.raises(InvalidId):
            await store.save_player({"player_id": ""})
        with pytest.raises(InvalidInput, match="colour"):
            await store.save_pto({**_pto(PTO_ID), "colour": "red"})
        with pytest.raises(InvalidId):
            await store.save_pto(_pto("../escape"))
        with pytest.raises(InvalidInput, match="cdt"):
            await store.save_pto({**_pto(PTO_ID), "cdt": {"theta": [1.0, 2.0]}})
        with pytest.raises(InvalidInput):
            await store.log_transaction("gift", None, "alice", 1.0, "USD-OBBBA")
        with pytest.raises(InvalidInput):
            await store.log_transaction("deposit", None, "alice", 1.0, "EUR")
        assert await store.is_empty()
    assert not list((tmp_path / "cdt_states").iterdir())
    for table in ("players", "ptos", "transactions"):
        assert _count(tmp_path / "ublox.db", table) == 0


@pytest.mark.asyncio
async def test_a_pto_refused_by_the_database_leaves_no_world_file(tmp_path: Path) -> None:
    """Nothing is written for a refused save: not the row, and not its world either."""
    async with LocalStore.open(tmp_path) as store:
        with pytest.raises(StoreError):  # creator 'nobody' is not a player (foreign key)
            await store.save_pto({**_pto(PTO_ID, creator="nobody"), "cdt": _world(3)})
        assert await store.load_pto(PTO_ID) is None
    assert _count(tmp_path / "ublox.db", "ptos") == 0
    assert not list((tmp_path / "cdt_states").iterdir())


@pytest.mark.asyncio
async def test_a_refused_pto_update_keeps_the_old_world(tmp_path: Path) -> None:
    """A refused save changes nothing: the world stays the one the database row knows."""
    old, new = _world(3), _world(4)
    async with LocalStore.open(tmp_path) as store:
        await store.save_player(ALICE)
        await store.save_pto({**_pto(PTO_ID), "cdt": old})
        await store.flush()
        with pytest.raises(StoreError):  # pts_sold > pts_offered breaks a CHECK constraint
            await store.save_pto({**_pto(PTO_ID), "pts_sold": 999999, "cdt": new})
        pto = await store.load_pto(PTO_ID)
        assert pto is not None
        assert pto["pts_sold"] == 0
        _assert_worlds_equal(pto["cdt"], old)
    async with LocalStore.open(tmp_path) as store:
        pto = await store.load_pto(PTO_ID)
    assert pto is not None
    _assert_worlds_equal(pto["cdt"], old)


# -- the ledger, stats -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_log_transaction_returns_increasing_tx_ids(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        await store.save_player({"player_id": "p0"})
        await store.save_pto(_pto("x", creator="p0"))
        ids = [
            await store.log_transaction("deposit", None, f"p{i}", i + 1, "USD-OBBBA")
            for i in range(6)
        ]
        session_ids = [await store.log_play_session("x", "p0", 1.0, 0.5, 1.0) for _ in range(3)]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert session_ids == sorted(set(session_ids))
    rows = _sql(
        tmp_path / "ublox.db", "SELECT tx_id, to_player, amount FROM transactions ORDER BY tx_id"
    )
    assert rows == [(tx, f"p{i}", (i + 1) * 100) for i, tx in enumerate(ids)]


@pytest.mark.asyncio
async def test_get_global_stats_counts_and_sums(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        empty = await store.get_global_stats()
        await _populate(store)
        stats = await store.get_global_stats()
    assert empty["players"]["count"] == 0
    assert empty["transactions"] == {"count": 0, "volume": {}}
    assert empty["players"]["usd_obbba_total"] == 0

    assert stats["players"] == {
        "count": 2,
        "usd_obbba_total": 4300.0,
        "xUSD_total": 425.0,
        "total_play_time": 5.0,
        "phase_locks_total": 0,
    }
    assert stats["ptos"] == {
        "count": 2,
        "by_status": {"funding": 2},
        "funding_raised_total": 1000.0,
        "xUSD_pool_total": 425.0,
        "atu_spent_total": 0,
    }
    assert stats["pts_tokens"] == {
        "count": 1,
        "hours_committed_total": 40.0,
        "hours_played_total": 5.0,
        "purchase_price_total": 1000.0,
    }
    assert stats["transactions"] == {
        "count": 4,
        "volume": {
            "deposit/USD-OBBBA": 5300.0,
            "investment/USD-OBBBA": 1000.0,
            "xusd_composition/xUSD": 425.0,
        },
    }
    assert stats["play_sessions"]["count"] == 1
    assert stats["play_sessions"]["duration_total"] == 5.0
    assert stats["play_sessions"]["xUSD_earned_total"] == 425.0
    assert stats["play_sessions"]["quality_mean"] == pytest.approx(0.85)


@pytest.mark.asyncio
async def test_a_store_written_consistently_verifies_clean(tmp_path: Path) -> None:
    await _populated_home(tmp_path)
    assert verify_store(tmp_path) == []


def test_verify_passes_a_database_killed_before_its_first_migration(tmp_path: Path) -> None:
    """A run killed between creating ublox.db and committing its schema leaves an empty
    database (user_version 0) that the next open migrates: nothing in it is wrong."""
    with closing(sqlite3.connect(tmp_path / "ublox.db")) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    assert verify_store(tmp_path) == []
    with closing(sqlite3.connect(tmp_path / "ublox.db")) as conn:
        conn.execute("CREATE TABLE stray (x)")
    # A version-0 database that holds something is not one that was never migrated.
    assert [f.check for f in verify_store(tmp_path)] == ["schema"]


@pytest.mark.asyncio
async def test_verify_reports_a_balance_without_its_deposit(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        await store.save_player({"player_id": "alice", "usd_obbba_balance": 5000.0})
    findings = verify_store(tmp_path)
    assert len(findings) == 1
    (finding,) = findings
    assert finding.check == "ledger"
    assert "alice" in finding.subject
    assert "500000" in finding.message
    assert "USD-OBBBA" in finding.message


# -- export / import -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_export_import_export_is_byte_identical(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    worlds = await _populated_home(source)
    async with LocalStore.open(source) as store:
        first = await store.export_to_json()
    assert first == source / "export.json"
    data = json.loads(first.read_text())
    by_id = {p["pto_id"]: p for p in data["ptos"]}
    assert set(by_id[PTO_ID]["cdt"]) == {"theta", "omega"}  # arrays are in the export
    assert [p["usd_obbba_balance"] for p in data["players"]] == [4000.0, 300.0]

    async with LocalStore.open(target) as store:
        await store.import_from_json(first)
        second = await store.export_to_json(tmp_path / "second.json")
        pto = await store.load_pto(PTO_ID)
    assert second.read_bytes() == first.read_bytes()
    assert pto is not None
    _assert_worlds_equal(pto["cdt"], worlds[PTO_ID])
    assert verify_store(target) == []
    # And from the files on disk after a reopen, not from memory.
    async with LocalStore.open(target) as store:
        third = await store.export_to_json(tmp_path / "third.json")
    assert third.read_bytes() == first.read_bytes()


@pytest.mark.asyncio
async def test_import_into_a_non_empty_home_is_refused(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    await _populated_home(source)
    async with LocalStore.open(source) as store:
        export = await store.export_to_json()
    async with LocalStore.open(target) as store:
        await store.save_player({"player_id": "zed", "usd_obbba_balance": 0})
        with pytest.raises(InvalidInput, match="not empty"):
            await store.import_from_json(export)
        assert await store.load_player("alice") is None
    assert _count(target / "ublox.db", "players") == 1
    assert not list((target / "cdt_states").iterdir())


def _doctor_balance(data: dict[str, Any]) -> None:
    for player in data["players"]:
        if player["player_id"] == "alice":
            player["usd_obbba_balance"] += 500.0


def _doctor_escrow(data: dict[str, Any]) -> None:
    for pto in data["ptos"]:
        if pto["pto_id"] == PTO_ID:
            pto["funding_raised"] = 0.0


def _doctor_deleted_deposit(data: dict[str, Any]) -> None:
    data["transactions"] = [t for t in data["transactions"] if t["to_player"] != "bob"]


def _doctor_balance_and_drop_the_digest(data: dict[str, Any]) -> None:
    """Deleting the digest with the edit is still an edit: version 2 always records one."""
    _doctor_balance(data)
    del data["digest"]


def _doctor_balance_and_pass_as_version_1(data: dict[str, Any]) -> None:
    """Relabelled as a pre-digest export, but its schema and arrays are version 2's."""
    _doctor_balance_and_drop_the_digest(data)
    data["version"] = 1


DOCTORS = [
    _doctor_balance,
    _doctor_escrow,
    _doctor_deleted_deposit,
    _doctor_balance_and_drop_the_digest,
    _doctor_balance_and_pass_as_version_1,
]


@pytest.mark.asyncio
@pytest.mark.parametrize("doctor", DOCTORS)
async def test_a_doctored_export_is_refused_naming_the_file_and_the_home_stays_empty(
    doctor: Any, tmp_path: Path
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    await _populated_home(source)
    async with LocalStore.open(source) as store:
        export = await store.export_to_json()
    data = json.loads(export.read_text())
    doctor(data)
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(data))

    async with LocalStore.open(target) as store:
        with pytest.raises(InvalidInput) as refused:
            await store.import_from_json(doctored)
        assert await store.is_empty()
    message = str(refused.value)
    assert str(doctored) in message
    assert "digest" in message and "force=True" in message and "--force" in message
    db = target / "ublox.db"
    for table in ("players", "ptos", "pts_tokens", "transactions", "play_sessions"):
        assert _count(db, table) == 0, table
    assert not list((target / "cdt_states").iterdir())


@pytest.mark.asyncio
@pytest.mark.parametrize("doctor", DOCTORS)
async def test_a_doctored_export_is_imported_as_it_is_with_force_and_its_ledger_is_a_warning(
    doctor: Any, tmp_path: Path
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    await _populated_home(source)
    async with LocalStore.open(source) as store:
        export = await store.export_to_json()
    data = json.loads(export.read_text())
    doctor(data)
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(data))

    async with LocalStore.open(target) as store:
        warnings = await store.import_from_json(doctored, force=True)
        again = await store.export_data()
    assert "imported anyway (force)" in warnings[0]
    assert any("[ledger]" in w or "[escrow]" in w for w in warnings[1:]), warnings
    # Faithful: what was in the file is what is in the store, doctoring included.
    for table in ("players", "ptos", "transactions"):
        assert again[table] == data[table], table
    assert {f.check for f in verify_store(target)} & {"ledger", "escrow"}


@pytest.mark.asyncio
async def test_an_export_that_disagrees_with_its_ledger_imports_with_warnings(
    tmp_path: Path,
) -> None:
    """Exported as it was (the raw API wrote a balance without its deposit): no force needed."""
    source, target = tmp_path / "source", tmp_path / "target"
    async with LocalStore.open(source) as store:
        await store.save_player(ALICE)
        export = await store.export_to_json()
    async with LocalStore.open(target) as store:
        warnings = await store.import_from_json(export)
        alice = await store.load_player("alice")
    assert alice is not None and alice["usd_obbba_balance"] == 5000.0
    assert len(warnings) == 1 and "[ledger] player alice" in warnings[0]


@pytest.mark.asyncio
async def test_damage_in_an_export_is_refused_even_with_force(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await _populated_home(source)
    async with LocalStore.open(source) as store:
        export = await store.export_to_json()
    data = json.loads(export.read_text())
    data["ptos"][0]["cdt"]["theta"]["data"] = data["ptos"][0]["cdt"]["theta"]["data"][:40]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(data))
    async with LocalStore.open(tmp_path / "target") as store:
        with pytest.raises(InvalidInput, match="bad array"):
            await store.import_from_json(damaged, force=True)
        assert await store.is_empty()


def test_an_export_of_release_0_1_0_imports_with_a_warning_that_it_has_no_digest(
    tmp_path: Path,
) -> None:
    fixture = Path(__file__).parent / "fixtures" / "stores" / "v0.1.0" / "export.json"
    with UbloxLocalStorage(tmp_path) as storage:
        warnings = storage.import_from_json(fixture)
        stats = storage.get_global_stats()
    assert len(warnings) == 1 and "no content digest" in warnings[0]
    # Not "release 0.1.0": the release that wrote it and the one reading it share a number.
    assert "written before digests were recorded (export version 1)" in warnings[0]
    assert stats["players"]["count"] == 5
    assert verify_store(tmp_path) == []


@pytest.mark.asyncio
async def test_an_import_warns_of_everything_verify_finds_in_the_imported_store(
    tmp_path: Path,
) -> None:
    """The export's ledger agrees, but a session earned xUSD no balance holds: import
    says so as verify does, not only what the ledger rule sees."""
    source, target = tmp_path / "source", tmp_path / "target"
    await _populated_home(source)
    async with LocalStore.open(source) as store:
        await store.log_play_session(PTO_ID, "bob", 1.0, 0.5, 12.5)
        export = await store.export_to_json()
    async with LocalStore.open(target) as store:
        warnings = await store.import_from_json(export)
    findings = verify_store(target)
    assert {f.check for f in findings} == {"session"}
    assert warnings == [str(f) for f in findings]


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(0.0, 2 * np.pi, 4096).reshape(64, 64),
        np.arange(10, dtype=">i4"),
        np.array(3.5),
        np.zeros((0, 3)),
        np.array([1 + 2j, -0.0, np.inf]),
        np.array([True, False]),
    ],
    ids=["float64", "big-endian-int", "0-d", "empty", "complex", "bool"],
)
def test_exported_arrays_decode_to_the_same_bytes(array: np.ndarray) -> None:
    encoded = encode_array(array)
    decoded = decode_array(json.loads(json.dumps(encoded)), "here")
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()


def test_an_exported_array_that_inflates_past_its_shape_is_refused() -> None:
    encoded = encode_array(np.zeros(1000))
    with pytest.raises(InvalidInput, match="does not hold"):
        decode_array({**encoded, "shape": [10]}, "here")


@pytest.mark.asyncio
async def test_import_of_a_non_export_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"players": []}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    async with LocalStore.open(tmp_path / "home") as store:
        with pytest.raises(InvalidInput, match="not a ublox export"):
            await store.import_from_json(bogus)
        with pytest.raises(InvalidInput, match="cannot read"):
            await store.import_from_json(broken)
        with pytest.raises(InvalidInput, match="cannot read"):
            await store.import_from_json(tmp_path / "missing.json")
        assert await store.is_empty()


# -- a corrupt world on disk -----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_corrupt_world_file_fails_only_its_own_pto(tmp_path: Path) -> None:
    worlds = await _populated_home(tmp_path)
    bad = tmp_path / "cdt_states" / f"{world_id_for(PTO_ID)}.npz"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])

    async with LocalStore.open(tmp_path) as store:  # the store still opens
        with pytest.raises(CorruptCdtFile) as caught:
            await store.load_pto(PTO_ID)
        assert str(bad) in str(caught.value)
        other = await store.load_pto(OTHER_PTO)
        assert other is not None
        _assert_worlds_equal(other["cdt"], worlds[OTHER_PTO])
        alice = await store.load_player("alice")
        assert alice is not None and alice["usd_obbba_balance"] == 4000.0

    findings = verify_store(tmp_path)
    assert [(f.check, f.subject) for f in findings] == [("cdt", str(bad))]


def test_exported_float64_arrays_are_shuffled_and_deflated_below_plain_base64() -> None:
    rng = np.random.default_rng(5)
    for array in (rng.uniform(0, 2 * np.pi, (64, 64)), rng.normal(1.0, 0.1, (64, 64))):
        plain = base64.b64encode(array.tobytes())
        assert len(encode_array(array)["data"]) < 0.9 * len(plain)


@pytest.mark.asyncio
async def test_the_api_export_carries_its_digest_and_imports_without_warnings(
    tmp_path: Path,
) -> None:
    await _populated_home(tmp_path / "source")
    async with LocalStore.open(tmp_path / "source") as store:
        data = await store.export_data()  # what GET /api/export answers
    assert data["digest"].startswith("sha256:")
    saved = tmp_path / "from_api.json"
    saved.write_text(json.dumps(data))
    async with LocalStore.open(tmp_path / "target") as store:
        assert await store.import_from_json(saved) == []


@pytest.mark.asyncio
async def test_a_store_closed_right_after_opening_stops_its_flusher(tmp_path: Path) -> None:
    # The flusher task had not run yet, so it had no cancel scope to cancel: close hung.
    with anyio.fail_after(60):  # a hang guard, not a timing assertion
        async with LocalStore.open(tmp_path) as store:
            pass
    assert store.cdt.dirty_count == 0
