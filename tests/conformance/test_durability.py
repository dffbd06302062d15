"""What survives: a killed writer (real kills, see conftest), worlds, checkpoints and held
commits, backup and restore, the export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ublox_sim.core.records import PTO, RECORD_TYPES, Player, Transaction, to_seed
from ublox_sim.store.backend import Checkpoint, Unit, WorldWrite
from ublox_sim.store.export import export_digest
from ublox_sim.store.home import world_id_for

from . import workload as w
from .conftest import BackendFactory
from .workload import ALICE, DAVE

pytestmark = pytest.mark.anyio


def same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return sorted(got) == sorted(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want
    )


async def test_every_acknowledged_unit_survives_a_kill(
    backend_factory: BackendFactory, location: Path
) -> None:
    lines = await backend_factory.run_killed(location, "acked", kill_after=150)
    acked = [line.split()[1] for line in lines if line.startswith("acked ")]
    assert len(acked) == 150
    async with backend_factory.open(location) as backend:
        players = {p.player_id: p for p in await backend.load_all(Player)}
        missing = [pid for pid in acked if pid not in players]
        assert missing == [], f"{len(missing)} acknowledged units lost, first {missing[:3]}"
        # Units in flight when it died are there whole or not at all.
        assert all(p.usd_obbba_balance == 100 for p in players.values())
        assert len(await backend.load_all(Transaction)) == len(players)
        assert await backend.verify() == []
        # And the store goes on: numbers continue after the last one kept.
        _, newest = await backend.event_log_span()
        assert newest == 2 * len(players)
        after = await backend.commit(Unit((w.register("after-crash", 1),)))
        assert after.events[0].seq == newest + 1


async def test_a_kill_in_held_mode_reopens_at_the_last_checkpoint(
    backend_factory: BackendFactory, location: Path
) -> None:
    if not backend_factory.supports_hold:
        pytest.skip(f"{backend_factory.name} has no held-commit mode")
    lines = await backend_factory.run_killed(location, "held", kill_after=2)
    assert lines == ["checkpointed", "acked held-b"]
    async with backend_factory.open(location) as backend:
        assert await backend.exists("held-a")
        assert not await backend.exists("held-b")  # after the checkpoint: not durable
        assert await backend.run_record() == w.RUN
        assert same_arrays(await backend.load_world("w-held"), w.world(5))


async def test_held_work_commits_with_the_checkpoint(
    backend_factory: BackendFactory, location: Path
) -> None:
    if not backend_factory.supports_hold:
        pytest.skip(f"{backend_factory.name} has no held-commit mode")
    async with backend_factory.open(location, hold_commits=True) as backend:
        assert backend.hold_commits
        await backend.commit(Unit((w.register(DAVE), w.register(ALICE, 1_000))))
        pto = w.pto_record("pto-a", DAVE)
        await backend.commit(w.launch(pto, seed=3))
        assert await backend.load_player(ALICE) is not None  # reads see held work
        assert await backend.run_record() is None
        wid = world_id_for("pto-a")
        await backend.checkpoint(Checkpoint(1, (WorldWrite(wid, w.world(4)),), w.RUN))
        assert await backend.run_status() == {
            "name": "conformance",
            "tick": 3,
            "total_ticks": 10,
            "finished": False,
        }
        later = dataclasses.replace(w.RUN, tick=10, finished=True)
        await backend.checkpoint(Checkpoint(2, (WorldWrite(wid, w.world(6)),), later))
    async with backend_factory.open(location) as backend:
        assert await backend.run_record() == later
        assert same_arrays(await backend.load_world(world_id_for("pto-a")), w.world(6))
        player = await backend.load_player(ALICE)
        assert player is not None and player.usd_obbba_balance == 1_000
        assert await backend.verify() == []


async def test_held_mode_reads_a_world_launched_since_the_checkpoint(
    backend_factory: BackendFactory, location: Path, request: pytest.FixtureRequest
) -> None:
    if not backend_factory.supports_hold:
        pytest.skip(f"{backend_factory.name} has no held-commit mode")
    async with backend_factory.open(location, hold_commits=True) as backend:
        await backend.commit(Unit((w.register(DAVE),)))
        await backend.commit(w.launch(w.pto_record("pto-a", DAVE), seed=3))
        assert await backend.load_pto("pto-a") is not None
        assert same_arrays(await backend.load_world(world_id_for("pto-a")), w.world(3))


async def test_worlds_round_trip(backend_factory: BackendFactory, location: Path) -> None:
    async with backend_factory.open(location) as backend:
        await backend.save_world("w-1", w.world(1))
        assert same_arrays(await backend.load_world("w-1"), w.world(1))
        await backend.commit(Unit((w.register(DAVE),)))
        pto = w.pto_record("pto-a", DAVE)
        await backend.commit(w.launch(pto, seed=9))
        assert same_arrays(await backend.load_world(world_id_for("pto-a")), w.world(9))
        # A unit's world becomes durable with it.
        await backend.commit(
            Unit(
                (w.stepped("pto-a", 0.3),), worlds=(WorldWrite(world_id_for("pto-a"), w.world(10)),)
            )
        )
        assert same_arrays(await backend.load_world(world_id_for("pto-a")), w.world(10))
        await backend.checkpoint(Checkpoint(3, (WorldWrite("w-1", w.world(2)),)))
        assert same_arrays(await backend.load_world("w-1"), w.world(2))
    async with backend_factory.open(location) as backend:
        assert same_arrays(await backend.load_world("w-1"), w.world(2))
        assert same_arrays(await backend.load_world(world_id_for("pto-a")), w.world(10))
        assert await backend.verify() == []


async def test_everything_survives_a_clean_reopen(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await w.full_workload(backend)
        exported = await backend.export_data()
        log = await backend.events_after(0)
        stats = await backend.stats()
    async with backend_factory.open(location) as backend:
        assert await backend.export_data() == exported
        assert await backend.events_after(0) == log
        assert await backend.stats() == stats
        assert await backend.verify() == []


async def test_export_is_the_store(backend_factory: BackendFactory, location: Path) -> None:
    async with backend_factory.open(location) as backend:
        await w.full_workload(backend)
        data = await backend.export_data()
        for cls in RECORD_TYPES:
            rows = [{k: v for k, v in r.items() if k != "cdt"} for r in data[cls.TABLE]]
            assert rows == [to_seed(r) for r in await backend.load_all(cls)]
        assert data["digest"] == export_digest(data)
        with_world = [p for p in data["ptos"] if p.get("cdt")]
        assert sorted(p["pto_id"] for p in with_world) == ["pto-a", "pto-b"]
        assert sorted(with_world[0]["cdt"]) == ["omega", "theta"]


async def test_backup_and_restore_round_trip(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await w.full_workload(backend)
        at_backup = await backend.export_data()
        log = await backend.events_after(0)
        path = await backend.create_backup("before")
        assert path.name == "before"
        listed = [b for b in backend.list_backups() if b["name"] == "before"]
        assert len(listed) == 1 and listed[0].keys() == {"name", "created", "size", "path"}
        # Life goes on after the backup...
        await backend.commit(Unit((w.deposit(ALICE, 1_234), w.register("late", 5))))
        await backend.save_world(world_id_for("pto-a"), w.world(99))
        assert await backend.export_data() != at_backup
        # ...and the restore takes the store back to it, worlds included.
        await backend_factory.restore(backend, "before")
        assert await backend.export_data() == at_backup
        assert await backend.events_after(0) == log
        assert not await backend.exists("late")
        assert await backend.verify() == []
        pto = await backend.load_pto("pto-a")
        assert isinstance(pto, PTO)
    async with backend_factory.open(location) as backend:
        assert await backend.export_data() == at_backup
        assert await backend.verify() == []
