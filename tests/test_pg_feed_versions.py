"""A shared store's feed types the log's rows; rows from another version must not stop it."""

from __future__ import annotations

from decimal import Decimal

from ublox_sim.core import events as ev
from ublox_sim.store.postgres.notify import LoggedEvent, logged_event


def test_a_known_kind_with_a_field_from_a_newer_version_keeps_its_type() -> None:
    deposit = ev.Deposited(at="t", seq=6, player_id="alice", amount=Decimal("1.50"))
    newer = ev.payload(deposit)[:-1] + ',"fee_cents":3}'  # a field this version lacks
    assert logged_event(6, newer) == deposit


def test_a_known_kind_missing_a_field_it_needs_arrives_untyped() -> None:
    older = '{"kind":"deposited","at":"t","amount":"1.50"}'  # no player_id
    event = logged_event(7, older)
    assert isinstance(event, LoggedEvent)
    assert event.to_dict() == {"kind": "deposited", "at": "t", "seq": 7, "amount": "1.50"}
