"""The reads virtual actors need (issue 13): a player's row with its store position, the
id lists, bulk existence, hours left to play, the PTOs past their deadline.

A position orders units as they were submitted (1, 2, ...). ``load_player_at`` answers
the row and the position of the last unit submitted before the read: every unit up to
it is in the row, and a unit submitted after the read has a larger position (an actor
loaded from the row applies only credits of units with a larger one)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from ublox_sim.store.backend import Committed, Done, Unit

from . import workload as w
from .conftest import BackendFactory
from .workload import ALICE, BOB, CAROL, DAVE

pytestmark = pytest.mark.anyio


async def test_load_player_at_gives_the_row_and_the_position_it_holds(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        registered = await backend.commit(Unit((w.register(ALICE, 1_000),)))
        assert registered.position >= 1
        row, position = await backend.load_player_at(ALICE)
        assert row is not None and row.usd_obbba_balance == 1_000
        assert position >= registered.position
        # A unit submitted after the read: not in that row, and a larger position.
        later = await backend.commit(Unit((w.deposit(ALICE, 250),)))
        assert later.position > position
        assert row.usd_obbba_balance == 1_000
        again, position_again = await backend.load_player_at(ALICE)
        assert again is not None and again.usd_obbba_balance == 1_250
        assert position_again >= later.position
        # Nobody there: no row, still a position (reads move nothing forward).
        nobody, at_nobody = await backend.load_player_at("nobody")
        assert nobody is None
        assert at_nobody == position_again
        assert (await backend.load_player_at(ALICE))[1] == position_again


async def test_positions_follow_submission_order_and_a_read_sees_every_unit_before_it(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(ALICE), w.register(BOB))))
        landed: list[tuple[int, Committed | BaseException]] = []
        acked = anyio.Event()
        count = 30

        def done(index: int) -> Done:
            def record(outcome: Committed | BaseException) -> None:
                landed.append((index, outcome))
                if len(landed) == count:
                    acked.set()

            return record

        # Submitted without waiting for the acknowledgements: then read at once.
        for i in range(count):
            who = ALICE if i % 2 else BOB
            await backend.submit(Unit((w.deposit(who, i + 1),)), done(i))
        row, position = await backend.load_player_at(ALICE)
        assert row is not None
        # Every unit submitted before the read is in the row, acknowledged or not.
        assert row.usd_obbba_balance == sum(i + 1 for i in range(count) if i % 2)
        with anyio.fail_after(30):
            await acked.wait()
        positions = {}
        for index, outcome in landed:
            assert isinstance(outcome, Committed), outcome
            positions[index] = outcome.position
        ordered = [positions[i] for i in range(count)]
        assert ordered == sorted(ordered) and len(set(ordered)) == count
        assert position >= ordered[-1]
        after = await backend.commit(Unit((w.deposit(ALICE, 1),)))
        assert after.position > position


async def test_player_and_pto_ids_in_order_each_its_own_kind(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        assert await backend.player_ids() == []
        assert await backend.pto_ids() == []
        for pid in (DAVE, BOB, CAROL, ALICE):  # out of order: an insertion order shows
            await backend.commit(Unit((w.register(pid),)))
        for pto_id in ("pto-z", "pto-a", "pto-m"):
            await backend.commit(w.launch(w.pto_record(pto_id, DAVE)))
        assert await backend.player_ids() == [ALICE, BOB, CAROL, DAVE]
        assert await backend.pto_ids() == ["pto-a", "pto-m", "pto-z"]
    async with backend_factory.open(location) as backend:
        assert await backend.player_ids() == [ALICE, BOB, CAROL, DAVE]
        assert await backend.pto_ids() == ["pto-a", "pto-m", "pto-z"]


async def test_taken_is_a_bulk_exists_over_players_and_ptos(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        assert await backend.taken([ALICE, "pto-a"]) == set()
        await backend.commit(Unit((w.register(ALICE), w.register(DAVE))))
        await backend.commit(w.launch(w.pto_record("pto-a", DAVE)))
        assert await backend.taken([]) == set()
        asked = [ALICE, "pto-a", "nobody", ALICE, "pto-a", "Alice"]
        assert await backend.taken(asked) == {ALICE, "pto-a"}
        for ident in asked:
            assert (ident in await backend.taken(asked)) == await backend.exists(ident)
        # More ids than one query may carry at once, the taken ones spread out.
        for i in range(0, 1200, 97):
            await backend.commit(Unit((w.register(f"p{i:04d}"),)))
        many = [f"p{i:04d}" for i in range(1200)] + ["pto-a", DAVE]
        expected = {f"p{i:04d}" for i in range(0, 1200, 97)} | {"pto-a", DAVE}
        assert await backend.taken(many) == expected


async def test_open_hours_per_pto_and_holder_among_the_statuses_asked(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(
            Unit((w.register(DAVE), w.register(ALICE, 50_000), w.register(BOB, 50_000)))
        )
        pto_b = w.pto_record("pto-b", DAVE, offered=6, price=1_000)
        pto_a = w.pto_record("pto-a", DAVE, offered=100, price=10)
        pto_c = w.pto_record("pto-c", DAVE, offered=100, price=10)
        for pto in (pto_b, pto_a, pto_c):
            await backend.commit(w.launch(pto))
        b1, b2, b3 = (
            w.token(pto_b, ALICE, 1, 1),
            w.token(pto_b, BOB, 2, 2),
            w.token(pto_b, ALICE, 3, 3),
        )
        await backend.commit(Unit((w.buy(pto_b, b1, 1),)))
        await backend.commit(Unit((w.buy(pto_b, b2, 3),)))
        await backend.commit(Unit((w.buy(pto_b, b3, 6), w.funded("pto-b", 6_000))))
        a1 = w.token(pto_a, BOB, 4, 5)
        await backend.commit(Unit((w.buy(pto_a, a1, 5),)))
        c1 = w.token(pto_c, ALICE, 5, 2)
        await backend.commit(Unit((w.buy(pto_c, c1, 2),)))
        # alice plays out her 1 h token and 1.5 h of her 3 h one; bob 2 h - 1e-10 of his.
        played = w.session(
            "pto-b",
            ALICE,
            hours=2.5,
            quality=0.5,
            xusd=0,
            shares=((b1.token_id, 1.0, 0), (b3.token_id, 1.5, 0)),
        )
        nearly = w.session(
            "pto-b",
            BOB,
            hours=2.0 - 1e-10,
            quality=0.5,
            xusd=0,
            shares=((b2.token_id, 2.0 - 1e-10, 0),),
        )
        await backend.commit(Unit((played,)))
        await backend.commit(Unit((nearly,)))
        assert await backend.open_hours([]) == {}
        playing = await backend.open_hours(["in_progress"])
        assert playing == {"pto-b": {ALICE: 1.5}}  # bob's 1e-10 is not room
        both = await backend.open_hours(["funding", "in_progress"])
        assert both == {"pto-a": {BOB: 5.0}, "pto-b": {ALICE: 1.5}, "pto-c": {ALICE: 2.0}}
        assert list(both) == ["pto-a", "pto-b", "pto-c"]
        assert await backend.open_hours(["failed", "completed"]) == {}
        # Two tokens of one holder in one PTO are summed.
        a2 = w.token(pto_a, BOB, 6, 7)
        a3 = dataclasses.replace(w.token(pto_a, ALICE, 7, 1))
        await backend.commit(Unit((w.buy(pto_a, a2, 12), w.buy(pto_a, a3, 13))))
        assert (await backend.open_hours(["funding"]))["pto-a"] == {BOB: 12.0, ALICE: 1.0}


async def test_ptos_past_deadline_are_only_those_still_funding(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await backend.commit(Unit((w.register(DAVE), w.register(ALICE, 10_000))))
        for pto_id in ("pto-f", "pto-d", "pto-x", "pto-a"):
            await backend.commit(w.launch(w.pto_record(pto_id, DAVE, deadline=w.at(60))))
        assert await backend.ptos_past_deadline(w.at(59)) == []
        assert await backend.ptos_past_deadline(w.at(61)) == ["pto-a", "pto-d", "pto-f", "pto-x"]
        await backend.commit(Unit((w.funded("pto-f", 0),)))  # in progress: no deadline
        await backend.commit(Unit((w.failed("pto-x", ()),)))  # failed already: not again
        assert await backend.ptos_past_deadline(w.at(61)) == ["pto-a", "pto-d"]
    async with backend_factory.open(location) as backend:
        assert await backend.ptos_past_deadline(w.at(60)) == ["pto-a", "pto-d"]
