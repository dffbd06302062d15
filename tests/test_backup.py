"""Backups: names, listing, consistency under concurrent writes, checked and resumable restore."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from ublox_sim.core.errors import BackupError
from ublox_sim.store.backup import list_backups
from ublox_sim.store.home import Home, world_id_for
from ublox_sim.store.local import LocalStore
from ublox_sim.store.sync import UbloxLocalStorage
from ublox_sim.store.verify import verify_store

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
PTO_ID = "pto_harmonic_001"
WORLD_FILE = f"{world_id_for(PTO_ID)}.npz"
TABLES = ("players", "ptos", "pts_tokens", "transactions", "play_sessions", "cdt_files")


def _world(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"theta": rng.uniform(0, 2 * np.pi, (16, 16)), "omega": rng.normal(1, 0.1, (16, 16))}


async def _populate(store: LocalStore, world: dict[str, np.ndarray]) -> None:
    """alice deposits 5000, funds a PTO with 1000 (40 h × 25): balances agree with the ledger."""
    await store.save_player({"player_id": "alice", "usd_obbba_balance": 4000.0})
    await store.log_transaction("deposit", None, "alice", 5000.0, "USD-OBBBA")
    await store.save_pto(
        {
            "pto_id": PTO_ID,
            "game_name": "Harmonic Caverns",
            "creator_id": "alice",
            "atu_required": 500,
            "pts_offered": 2000,
            "pts_sold": 40,
            "price_per_pts": 25.0,
            "funding_goal": 50000.0,
            "funding_raised": 1000.0,
            "cdt": world,
        }
    )
    await store.log_transaction("investment", "alice", PTO_ID, 1000.0, "USD-OBBBA", pto_id=PTO_ID)
    await store.save_pts_token(
        {
            "token_id": "pts_001",
            "game_id": PTO_ID,
            "holder": "alice",
            "hours_committed": 40.0,
            "purchase_price": 1000.0,
        }
    )


async def _change_everything(store: LocalStore) -> None:
    """State B: a new player with her deposit, and a different world."""
    await store.save_player({"player_id": "dave", "usd_obbba_balance": 10.0})
    await store.log_transaction("deposit", None, "dave", 10.0, "USD-OBBBA")
    pto = await store.load_pto(PTO_ID)
    assert pto is not None
    await store.save_pto({**pto, "cdt": _world(99)})
    await store.flush()


async def _rows(store: LocalStore) -> dict[str, list[tuple[Any, ...]]]:
    return {t: await store.db.fetchall(f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _sql(db: Path, query: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(query).fetchall()


def _assert_world(arrays: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(arrays) == sorted(want)
    for name in want:
        assert arrays[name].tobytes() == want[name].tobytes()


# -- creating and listing ------------------------------------------------------------


@pytest.mark.asyncio
async def test_default_backup_names_and_listing(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, _world(1))
        first = await store.create_backup()
        second = await store.create_backup()
        named = await store.create_backup("before_launch")
        listing = store.list_backups()

    assert re.fullmatch(r"backup_\d{8}_\d{6}", first.name)
    assert re.fullmatch(r"backup_\d{8}_\d{6}(_\d+)?", second.name)
    assert second != first
    assert first.parent == tmp_path / "backups"
    for backup in (first, second, named):
        assert (backup / "ublox.db").is_file()
        assert (backup / "cdt_states" / WORLD_FILE).is_file()
    assert not [p for p in (tmp_path / "backups").iterdir() if p.name.startswith(".")]

    assert {b["name"] for b in listing} == {first.name, second.name, "before_launch"}
    for item in listing:
        assert {"name", "created", "size"} <= set(item)
        datetime.fromisoformat(item["created"])
        path = tmp_path / "backups" / item["name"]
        assert item["size"] == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        assert item["size"] > 0
    assert [b["created"] for b in listing] == sorted(b["created"] for b in listing)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", ".hidden"])
async def test_create_backup_refuses_names_that_leave_backups(name: str, tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path / "home") as store:
        await store.save_player({"player_id": "alice"})
        with pytest.raises(BackupError):
            await store.create_backup(name)
        assert store.list_backups() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert list((tmp_path / "home" / "backups").iterdir()) == []


@pytest.mark.asyncio
async def test_existing_backup_name_is_refused(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, _world(1))
        await store.create_backup("snap")
        before = _files(tmp_path / "backups" / "snap")
        await store.save_player({"player_id": "zed"})
        with pytest.raises(BackupError, match="exists"):
            await store.create_backup("snap")
    assert _files(tmp_path / "backups" / "snap") == before


@pytest.mark.asyncio
async def test_backup_during_concurrent_writes_is_consistent(tmp_path: Path) -> None:
    stop = anyio.Event()
    enough = anyio.Event()  # set once writes are flowing
    writes = 0

    async with LocalStore.open(tmp_path, flush_interval=0.01) as store:
        await _populate(store, _world(1))

        async def writer(n: int) -> None:
            nonlocal writes
            while not stop.is_set():
                await store.log_transaction("deposit", None, f"writer{n}", 0.01, "USD-OBBBA")
                writes += 1
                if writes >= 200:
                    enough.set()

        async def world_stepper() -> None:
            pto = await store.load_pto(PTO_ID)
            assert pto is not None
            theta = pto["cdt"]["theta"]
            while not stop.is_set():
                theta += 0.01
                store.cdt.mark_dirty(world_id_for(PTO_ID), {"theta": theta})
                await anyio.sleep(0.001)

        async def count() -> int:
            row = await store.db.fetchone("SELECT COUNT(*) FROM transactions")
            assert row is not None
            return int(row[0])

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(writer, n)
            tg.start_soon(world_stepper)
            await enough.wait()
            before = await count()
            backup = await store.create_backup("under_load")
            after = await count()
            stop.set()

    db = backup / "ublox.db"
    assert _sql(db, "PRAGMA integrity_check") == [("ok",)]
    assert _sql(db, "PRAGMA foreign_key_check") == []
    (backed_up,) = _sql(db, "SELECT COUNT(*) FROM transactions")[0]
    assert before <= backed_up <= after
    assert before < after, "no write ran while the backup was taken; the test proved nothing"
    with np.load(backup / "cdt_states" / WORLD_FILE, allow_pickle=False) as npz:
        assert npz["theta"].shape == (16, 16)


# -- restore: refusals change nothing ------------------------------------------------


def _corrupt_db(backup: Path) -> None:
    (backup / "ublox.db").write_bytes(b"this is not a database " * 200)


def _truncate_cdt(backup: Path) -> None:
    path = backup / "cdt_states" / WORLD_FILE
    path.write_bytes(path.read_bytes()[:100])


def _delete_cdt(backup: Path) -> None:
    (backup / "cdt_states" / WORLD_FILE).unlink()


def _delete_db(backup: Path) -> None:
    (backup / "ublox.db").unlink()


def _doctor_ledger(backup: Path) -> None:
    with closing(sqlite3.connect(backup / "ublox.db")) as conn:
        conn.execute("UPDATE players SET usd_obbba_balance = 9999900 WHERE player_id = 'alice'")
        conn.commit()


def _doctor_world(backup: Path) -> None:
    """A valid world file, but not the one the backup was made with."""
    np.savez_compressed(backup / "cdt_states" / WORLD_FILE, **_world(7))


def _doctor_ledger_and_drop_the_digests(backup: Path) -> None:
    """Deleting the digests with the edit is still an edit: schema 3 on records them."""
    _doctor_ledger(backup)
    manifest = json.loads((backup / "backup.json").read_text())
    del manifest["sha256"]
    (backup / "backup.json").write_text(json.dumps(manifest))


def _doctor_ledger_and_pass_as_release_0_1_0(backup: Path) -> None:
    """backup.json relabelled as 0.1.0's (schema 2), but the database it holds is newer."""
    _doctor_ledger_and_drop_the_digests(backup)
    (backup / "backup.json").write_text(json.dumps({"created": "2026-11-26", "schema_version": 2}))


REFUSALS: list[tuple[str, Any, str]] = [
    ("../x", None, "not allowed"),
    ("a/b", None, "not allowed"),
    ("..", None, "not allowed"),
    ("missing", None, "no backup"),
    ("snap", _corrupt_db, "not a usable database"),
    ("snap", _truncate_cdt, re.escape(WORLD_FILE)),
    ("snap", _delete_cdt, re.escape(WORLD_FILE)),
    ("snap", _delete_db, "no ublox.db"),
    # An edit by hand is not damage any check can see: the digest recorded at backup time is.
    ("snap", _doctor_ledger, r"ublox\.db differs from the sha256 recorded .*--force"),
    ("snap", _doctor_world, re.escape(f"cdt_states/{WORLD_FILE} differs from the sha256")),
    ("snap", _doctor_ledger_and_drop_the_digests, r"backup\.json has lost the sha256.*--force"),
    ("snap", _doctor_ledger_and_pass_as_release_0_1_0, r"backup\.json has lost the sha256"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    REFUSALS,
    ids=[f"{n}-{d.__name__ if d else 'name'}" for n, d, _ in REFUSALS],
)
async def test_restore_refusals_change_nothing(
    name: str, damage: Any, reason: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    async with LocalStore.open(home) as store:
        await _populate(store, _world(1))
        snap = await store.create_backup("snap")
        await _change_everything(store)
        if damage is not None:
            damage(snap)
        rows = await _rows(store)
        backups = store.list_backups()
        cdt = _files(home / "cdt_states")
        db_files = sorted(p.name for p in home.iterdir())

        with pytest.raises(BackupError, match=reason):
            await store.restore_backup(name)

        assert await _rows(store) == rows
        assert store.list_backups() == backups  # not even a pre_restore_* safety backup
        assert _files(home / "cdt_states") == cdt
        assert sorted(p.name for p in home.iterdir()) == db_files
        # The store still works after the refusal.
        await store.save_player({"player_id": "erin"})
        assert await store.load_player("erin") is not None
    assert not (tmp_path / "x").exists()


# -- restore: the real thing -----------------------------------------------------------


@pytest.mark.asyncio
async def test_restore_brings_back_the_old_rows_and_keeps_a_safety_backup(tmp_path: Path) -> None:
    old_world = _world(1)
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, old_world)
        old_rows = await _rows(store)
        await store.create_backup("snap")
        await _change_everything(store)
        new_rows = await _rows(store)
        assert new_rows != old_rows

        await store.restore_backup("snap")

        assert await _rows(store) == old_rows
        assert await store.load_player("dave") is None
        pto = await store.load_pto(PTO_ID)
        assert pto is not None
        _assert_world(pto["cdt"], old_world)
        names = [b["name"] for b in store.list_backups()]
        # Writes go on after the restore, on the restored data.
        await store.log_transaction("deposit", None, "alice", 1.0, "USD-OBBBA")

    (safety,) = [n for n in names if n.startswith("pre_restore_")]
    assert "snap" in names
    safety_db = tmp_path / "backups" / safety / "ublox.db"
    assert _sql(safety_db, "SELECT player_id FROM players ORDER BY 1") == [("alice",), ("dave",)]
    with np.load(tmp_path / "backups" / safety / "cdt_states" / WORLD_FILE) as npz:
        np.testing.assert_array_equal(npz["theta"], _world(99)["theta"])

    assert not (tmp_path / "restore-in-progress.json").exists()
    async with LocalStore.open(tmp_path) as store:
        rows = await _rows(store)
        pto = await store.load_pto(PTO_ID)
    assert rows["players"] == old_rows["players"]
    assert len(rows["transactions"]) == len(old_rows["transactions"]) + 1
    assert pto is not None
    _assert_world(pto["cdt"], old_world)


def _crash_after_marker(home: Home) -> None:
    home.restore_marker.write_text(json.dumps({"backup": "snap"}))


def _crash_mid_swap(home: Home) -> None:
    """The marker is down, the database was swapped, the worlds were moved aside: then death."""
    home.restore_marker.write_text(json.dumps({"backup": "snap"}))
    source = home.backups / "snap"
    shutil.copyfile(source / "ublox.db", home.root / "ublox.db.restore-tmp")
    shutil.copyfile(source / "ublox.db", home.db)
    shutil.copytree(source / "cdt_states", home.root / "cdt_states.restore-tmp")
    home.cdt_dir.rename(home.root / "cdt_states.old")


@pytest.mark.asyncio
@pytest.mark.parametrize("crash", [_crash_after_marker, _crash_mid_swap])
async def test_an_interrupted_restore_is_completed_on_the_next_open(
    crash: Any, tmp_path: Path
) -> None:
    old_world = _world(1)
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, old_world)
        old_rows = await _rows(store)
        await store.create_backup("snap")
        await _change_everything(store)
        assert await _rows(store) != old_rows

    crash(Home(tmp_path))

    async with LocalStore.open(tmp_path) as store:
        assert await _rows(store) == old_rows
        pto = await store.load_pto(PTO_ID)
    assert pto is not None
    _assert_world(pto["cdt"], old_world)
    assert not (tmp_path / "restore-in-progress.json").exists()
    leftovers = {"ublox.db.restore-tmp", "cdt_states.restore-tmp", "cdt_states.old"}
    assert not leftovers & {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / "backups" / "snap" / "ublox.db").is_file()  # the backup is untouched


# -- restore: faithful, with digests ---------------------------------------------------


@pytest.mark.asyncio
async def test_a_backup_records_the_sha256_of_every_file_it_holds(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, _world(1))
        snap = await store.create_backup("snap")
    manifest = json.loads((snap / "backup.json").read_text())
    files = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
    assert sorted(manifest["sha256"]) == [f for f in files if f != "backup.json"]
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((snap / name).read_bytes()).hexdigest() == digest


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "doctor",
    [
        _doctor_ledger,
        _doctor_world,
        _doctor_ledger_and_drop_the_digests,
        _doctor_ledger_and_pass_as_release_0_1_0,
    ],
)
async def test_a_doctored_backup_is_restored_as_it_is_with_force_and_warns(
    doctor: Any, tmp_path: Path
) -> None:
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, _world(1))
        snap = await store.create_backup("snap")
        doctor(snap)
        warnings = await store.restore_backup("snap", force=True)
        alice = await store.load_player("alice")
        pto = await store.load_pto(PTO_ID)
    assert "restored anyway (force)" in warnings[0]
    assert alice is not None and pto is not None
    if doctor is not _doctor_world:
        assert alice["usd_obbba_balance"] == 99999.0  # the edit, faithfully
        assert any("[ledger] player alice" in w for w in warnings)
    else:
        _assert_world(pto["cdt"], _world(7))


@pytest.mark.asyncio
async def test_a_backup_whose_ledger_disagrees_restores_with_warnings(tmp_path: Path) -> None:
    """The raw API writes what it is given; the backup keeps it, and restore says so."""
    async with LocalStore.open(tmp_path) as store:
        await store.save_player({"player_id": "alice", "usd_obbba_balance": 5000.0})
        await store.create_backup("snap")
        await store.save_player({"player_id": "bob"})
        warnings = await store.restore_backup("snap")
        assert await store.load_player("bob") is None
    assert len(warnings) == 1 and "[ledger] player alice" in warnings[0]


@pytest.mark.asyncio
async def test_damage_is_refused_even_with_force(tmp_path: Path) -> None:
    async with LocalStore.open(tmp_path) as store:
        await _populate(store, _world(1))
        snap = await store.create_backup("snap")
        _truncate_cdt(snap)
        with pytest.raises(BackupError, match=re.escape(WORLD_FILE)):
            await store.restore_backup("snap", force=True)
        _corrupt_db(snap)
        with pytest.raises(BackupError, match="not a usable database"):
            await store.restore_backup("snap", force=True)
    assert [b["name"] for b in list_backups(Home(tmp_path))] == ["snap"]


def test_a_backup_made_by_release_0_1_0_restores_with_a_warning_that_it_has_no_digests(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    shutil.copytree(FIXTURES / "v0.1.0-seed", home)
    with UbloxLocalStorage(home) as storage:
        warnings = storage.restore_backup("demo_backup")
        stats = storage.get_global_stats()
    assert len(warnings) == 1 and "records no sha256 digests" in warnings[0]
    # Not "release 0.1.0": the release that made it and the one reading it share a number.
    assert "made before digests were recorded (schema version 2)" in warnings[0]
    assert stats["players"]["count"] == 1
    assert verify_store(home) == []
