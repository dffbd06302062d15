"""bench persistence's raw baseline times its own transactions as the actor's acks are
timed (the machine's share of a tail); no timing asserted."""

from __future__ import annotations

from pathlib import Path

from ublox_sim.bench.persistence import run_raw


def test_raw_baseline_reports_its_own_transactions_percentiles(tmp_path: Path) -> None:
    figures = run_raw(tmp_path, 300, 100)
    assert figures["rows"] == 300
    assert 0 < figures["txn_p50_ms"] <= figures["txn_p99_ms"] <= figures["txn_max_ms"]
    assert not any(key.startswith("ack_") for key in figures)  # not an acknowledgement
