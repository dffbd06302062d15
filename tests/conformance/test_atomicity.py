"""A refused unit leaves nothing of itself, not even its first event's rows; units queued
with it still commit; receipts commit with their unit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from ublox_sim.core import events as ev
from ublox_sim.core.errors import UbloxError, UnitRejected
from ublox_sim.core.records import Player, PlaySession, PTSToken, Transaction
from ublox_sim.store.backend import Backend, Checkpoint, Unit, WorldWrite
from ublox_sim.store.home import world_id_for

from . import workload as w
from .conftest import BackendFactory
from .workload import ALICE, BOB, DAVE

pytestmark = pytest.mark.anyio


async def snapshot(backend: Backend) -> dict[str, Any]:
    """Everything the protocol can read about the store's content."""
    return {
        "players": await backend.load_all(Player),
        "transactions": await backend.load_all(Transaction),
        "tokens": await backend.load_all(PTSToken),
        "sessions": await backend.load_all(PlaySession),
        "log": await backend.events_after(0),
        "span": await backend.event_log_span(),
        "stats": await backend.stats(),
    }


async def seeded(backend: Backend) -> None:
    await backend.commit(Unit((w.register(DAVE), w.register(ALICE, 10_000), w.register(BOB))))
    await backend.commit(w.launch(w.pto_record("pto-a", DAVE, offered=10, price=1_000)))


GHOST = w.pto_record("ghost", DAVE)

# (why, a unit whose FIRST event is fine and a later one is refused)
BAD_UNITS = [
    (
        "shares of a PTO that does not exist",
        (w.deposit(ALICE, 500), w.buy(GHOST, w.token(GHOST, ALICE, 1, 1), 1)),
    ),
    ("a transfer beyond the balance", (w.deposit(ALICE, 500), w.transfer(ALICE, BOB, 10_501))),
    ("a player registered twice", (w.register("newcomer", 700), w.register(ALICE, 1))),
    (
        "a PTO launched twice",
        (w.register("newcomer", 700), w.launch(w.pto_record("pto-a", DAVE)).events[0]),
    ),
]


@pytest.mark.parametrize(("why", "events"), BAD_UNITS, ids=[b[0] for b in BAD_UNITS])
async def test_a_refused_unit_leaves_nothing(
    backend_factory: BackendFactory, location: Path, why: str, events: tuple[ev.Event, ...]
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        before = await snapshot(backend)
        async with backend.bus.subscribe() as sub:
            with pytest.raises(UnitRejected) as refused:
                await backend.commit(Unit(events, receipt=w.receipt(ALICE, "k-bad", "player")))
            assert isinstance(refused.value, UbloxError)
            with pytest.raises(anyio.WouldBlock):
                sub.receive_nowait()  # nothing of it was published
        assert await snapshot(backend) == before, why
        assert not await backend.exists("newcomer")
        assert await backend.find_receipt(ALICE, "k-bad") is None
        assert await backend.verify() == []
    # Nor after a reopen.
    async with backend_factory.open(location) as backend:
        assert await snapshot(backend) == before


async def test_units_queued_with_a_refused_one_still_commit(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        _, newest = await backend.event_log_span()
        good1 = await w.queued(backend, Unit((w.deposit(ALICE, 100),)))
        bad = await w.queued(backend, Unit((w.deposit(BOB, 5), w.transfer(BOB, ALICE, 1_000_000))))
        good2 = await w.queued(backend, Unit((w.deposit(BOB, 200),)))
        first = await good1
        with pytest.raises(UnitRejected):
            await bad
        second = await good2
        alice, bob = await backend.load_player(ALICE), await backend.load_player(BOB)
        assert alice is not None and bob is not None
        assert (alice.usd_obbba_balance, bob.usd_obbba_balance) == (10_100, 200)
        # The refused unit took no number: the log has no gap.
        assert [first.events[0].seq, second.events[0].seq] == [newest + 1, newest + 2]
        assert await backend.event_log_span() == (1, newest + 2)
        assert await backend.verify() == []


async def test_a_refused_unit_in_a_batch_of_many(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        futures = []
        landed: list[ev.Event] = []
        async with backend.bus.subscribe(buffer=1000) as sub:
            for i in range(40):
                pid = f"p{i:03d}"
                events: tuple[ev.Event, ...] = (w.register(pid, 100),)
                if i % 7 == 3:  # refused: the first event would be fine on its own
                    events = (*events, w.transfer(pid, ALICE, 101))
                futures.append(await w.queued(backend, Unit(events)))
            outcomes = []
            for future in futures:
                try:
                    landed.extend((await future).events)
                    outcomes.append(True)
                except UnitRejected:
                    outcomes.append(False)
            published = await w.published_through(sub, landed)
        assert outcomes == [i % 7 != 3 for i in range(40)]
        # Published as they landed, numbered in that order without a gap.
        assert w.as_published(published) == w.as_published(landed)
        assert [e.seq for e in landed] == list(range(landed[0].seq, landed[0].seq + len(landed)))
        for i in range(40):
            assert await backend.exists(f"p{i:03d}") == (i % 7 != 3)
        assert await backend.verify() == []


async def test_money_for_an_unknown_player_is_refused(
    backend_factory: BackendFactory, location: Path, request: pytest.FixtureRequest
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        before = await snapshot(backend)
        with pytest.raises(UnitRejected):
            await backend.commit(Unit((w.transfer(ALICE, "nobody", 1_000),)))
        assert await snapshot(backend) == before


async def test_receipts_store_the_response_with_the_unit(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        await backend.commit(
            Unit((w.deposit(ALICE, 250),), receipt=w.receipt(ALICE, "k-dep", "player"))
        )
        fingerprint, status, body = await backend.find_receipt(ALICE, "k-dep") or ("", 0, "")
        assert (fingerprint, status) == ("fp-k-dep", 200)
        assert json.loads(body)["player"]["usd_obbba_balance"] == 10_250
        assert json.loads(body)["player"]["player_id"] == ALICE

        await backend.commit(
            Unit((w.transfer(ALICE, BOB, 50),), receipt=w.receipt(ALICE, "k-tr", "player"))
        )
        _, _, body = await backend.find_receipt(ALICE, "k-tr") or ("", 0, "")
        assert json.loads(body)["player"]["usd_obbba_balance"] == 10_200

        pto = w.pto_record("pto-a", DAVE, offered=10, price=1_000)
        bought = w.token(pto, ALICE, 1, 2)
        await backend.commit(
            Unit((w.buy(pto, bought, 2),), receipt=w.receipt(ALICE, "k-buy", "token"))
        )
        _, status, body = await backend.find_receipt(ALICE, "k-buy") or ("", 0, "")
        token = json.loads(body)["token"]
        assert status == 201
        assert (token["token_id"], token["purchase_price"], float(token["hours_committed"])) == (
            bought.token_id,
            2_000,
            2.0,
        )
        # The same key again: refused, and the second deposit is not kept either.
        with pytest.raises(UnitRejected):
            await backend.commit(
                Unit((w.deposit(ALICE, 1),), receipt=w.receipt(ALICE, "k-dep", "player"))
            )
        player = await backend.load_player(ALICE)
        assert player is not None and player.usd_obbba_balance == 8_200
        assert await backend.find_receipt(ALICE, "nope") is None
    async with backend_factory.open(location) as backend:
        assert (await backend.find_receipt(ALICE, "k-buy") or ("",))[0] == "fp-k-buy"


async def test_a_session_receipt_names_the_session(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        pto = w.pto_record("pto-a", DAVE, offered=10, price=1_000)
        t1 = w.token(pto, ALICE, 1, 10)
        await backend.commit(Unit((w.buy(pto, t1, 10), w.funded("pto-a", 10_000))))
        played = w.session(
            "pto-a", ALICE, hours=1.0, quality=0.5, xusd=5_000, shares=((t1.token_id, 1.0, 5_000),)
        )
        committed = await backend.commit(
            Unit((played,), receipt=w.receipt(ALICE, "k-play", "session"))
        )
        numbered = committed.events[0]
        assert isinstance(numbered, ev.SessionPlayed)
        _, _, body = await backend.find_receipt(ALICE, "k-play") or ("", 0, "")
        answer = json.loads(body)
        assert answer["session"]["session_id"] == numbered.session_id
        assert answer["session"]["xUSD_earned"] == 5_000
        assert float(answer["tau_k_after"]) == played.tau_k


async def test_token_versions(backend_factory: BackendFactory, location: Path) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        assert await backend.token_versions() == {}
        await backend.set_token_version(ALICE, 3)
        await backend.set_token_version(ALICE, 4)
        await backend.set_token_version(BOB, 1)
        assert await backend.token_versions() == {ALICE: 4, BOB: 1}
    async with backend_factory.open(location) as backend:
        assert await backend.token_versions() == {ALICE: 4, BOB: 1}


async def test_a_refused_unit_leaves_its_world_as_it_was(
    backend_factory: BackendFactory, location: Path, request: pytest.FixtureRequest
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)  # pto-a with its world, seed 1
        wid = world_id_for("pto-a")
        before = await backend.load_world(wid)
        refused = Unit(
            (w.stepped("pto-a", 0.5), w.transfer(ALICE, BOB, 1_000_000)),
            worlds=(WorldWrite(wid, w.world(2)),),
        )
        with pytest.raises(UnitRejected):
            await backend.commit(refused)
        after = await backend.load_world(wid)
        assert all(np.array_equal(after[k], v) for k, v in before.items())
    async with backend_factory.open(location) as backend:
        after = await backend.load_world(wid)
        assert all(np.array_equal(after[k], v) for k, v in before.items())


async def test_a_refused_unit_in_held_mode_keeps_the_held_work(
    backend_factory: BackendFactory, location: Path
) -> None:
    if not backend_factory.supports_hold:
        pytest.skip(f"{backend_factory.name} has no held-commit mode")
    async with backend_factory.open(location, hold_commits=True) as backend:
        await seeded(backend)
        await backend.commit(Unit((w.deposit(BOB, 300),)))  # held, before the refusal
        before = await snapshot(backend)
        with pytest.raises(UnitRejected):
            await backend.commit(Unit((w.deposit(ALICE, 5), w.transfer(BOB, ALICE, 301))))
        assert await snapshot(backend) == before
        await backend.commit(Unit((w.deposit(ALICE, 7),)))  # and work goes on after it
        # As the engine does: a held checkpoint carries every world.
        world = WorldWrite(world_id_for("pto-a"), w.world(1))
        await backend.checkpoint(Checkpoint(1, (world,), w.RUN))
    async with backend_factory.open(location) as backend:
        alice, bob = await backend.load_player(ALICE), await backend.load_player(BOB)
        assert alice is not None and bob is not None
        assert (alice.usd_obbba_balance, bob.usd_obbba_balance) == (10_007, 300)
        assert await backend.run_record() == w.RUN
        assert await backend.verify() == []


async def test_submit_many_answers_each_unit_on_its_own_in_order(
    backend_factory: BackendFactory, location: Path
) -> None:
    async with backend_factory.open(location) as backend:
        await seeded(backend)
        _, newest = await backend.event_log_span()
        outcomes: list[object] = []
        answered = anyio.Event()
        units = [
            Unit((w.deposit(ALICE, 100),)),
            Unit((w.deposit(BOB, 5), w.transfer(BOB, ALICE, 1_000_000))),  # refused alone
            Unit((w.deposit(BOB, 200),)),
        ]

        def done(outcome: object) -> None:
            outcomes.append(outcome)
            if len(outcomes) == len(units):
                answered.set()

        await backend.submit_many(units, done)
        await answered.wait()
        first, refused, third = outcomes
        assert isinstance(refused, UnitRejected)
        assert not isinstance(first, BaseException) and not isinstance(third, BaseException)
        assert first.position < third.position  # type: ignore[union-attr]
        assert [first.events[0].seq, third.events[0].seq] == [newest + 1, newest + 2]  # type: ignore[union-attr]
        alice, bob = await backend.load_player(ALICE), await backend.load_player(BOB)
        assert alice is not None and bob is not None
        assert (alice.usd_obbba_balance, bob.usd_obbba_balance) == (10_100, 200)
        assert await backend.verify() == []
