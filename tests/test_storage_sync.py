"""The synchronous seed API (``UbloxLocalStorage``) and the ``ublox-sim demo``/``verify`` CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ublox_sim.core.errors import InvalidAmount, InvalidInput
from ublox_sim.store.sync import UbloxLocalStorage
from ublox_sim.store.verify import verify_store

PTO_ID = "pto_harmonic_001"
WORLD_ID = f"{PTO_ID}_world_cdt"
ALICE: dict[str, Any] = {
    "player_id": "alice",
    "tau_k": 8.5,
    "usd_obbba_balance": 5000.0,
    "xUSD_balance": 0.0,
    "total_play_time": 0.0,
    "quality_score": 0.0,
    "phase_locks_count": 0,
    "memory_depth": 0.0,
}


def _pto(**extra: Any) -> dict[str, Any]:
    return {
        "pto_id": PTO_ID,
        "game_name": "Harmonic Caverns",
        "creator_id": "alice",
        "atu_required": 500,
        "pts_offered": 2000,
        "price_per_pts": 25.0,
        "funding_goal": 50000.0,
        "status": "funding",
        "world_cdt_id": WORLD_ID,
        **extra,
    }


def test_seed_flow_through_the_sync_facade(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    theta = rng.uniform(0, 2 * np.pi, (32, 32))
    omega = rng.normal(1.0, 0.1, (32, 32))
    hours, price = 40, 25.0
    duration, quality, amplification = 5.0, 0.85, 100.0
    earned = round(duration * quality * amplification, 2)
    assert earned == 425.0

    with UbloxLocalStorage(tmp_path) as storage:
        assert storage.home_path == tmp_path
        storage.save_player(ALICE)
        deposit = storage.log_transaction("deposit", None, "alice", 5000.0, "USD-OBBBA")
        storage.save_pto({**_pto(), "cdt": {"theta": theta, "omega": omega}})

        investment = storage.log_transaction(
            "investment", "alice", PTO_ID, hours * price, "USD-OBBBA", pto_id=PTO_ID
        )
        assert investment > deposit
        storage.save_player({**ALICE, "usd_obbba_balance": 5000.0 - hours * price})
        storage.save_pto(_pto(pts_sold=hours, funding_raised=hours * price))
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
        session_id = storage.log_play_session(PTO_ID, "alice", duration, quality, earned)
        assert isinstance(session_id, int)
        storage.log_transaction("xusd_composition", None, "alice", earned, "xUSD", pto_id=PTO_ID)
        storage.save_player(
            {
                **ALICE,
                "usd_obbba_balance": 4000.0,
                "xUSD_balance": earned,
                "total_play_time": duration,
                "quality_score": quality,
            }
        )
        storage.save_pto(_pto(pts_sold=hours, funding_raised=hours * price, xUSD_pool=earned))
        token = storage.load_pts_token("pts_001")
        assert token is not None
        storage.save_pts_token({**token, "hours_played": duration, "xUSD_accumulated": earned})
        storage.flush()

        player = storage.load_player("alice")
        pto = storage.load_pto(PTO_ID)
        token = storage.load_pts_token("pts_001")
        stats = storage.get_global_stats()

    assert player is not None and pto is not None and token is not None
    assert player["usd_obbba_balance"] == 4000.0
    assert player["xUSD_balance"] == 425.0
    assert player["total_play_time"] == 5.0
    assert pto["funding_raised"] == 1000.0
    assert pto["pts_sold"] == 40
    assert pto["xUSD_pool"] == 425.0
    np.testing.assert_array_equal(pto["cdt"]["theta"], theta)
    np.testing.assert_array_equal(pto["cdt"]["omega"], omega)
    assert token["purchase_price"] == 1000.0
    assert token["hours_played"] == 5.0
    assert stats["players"]["count"] == 1
    assert stats["transactions"]["count"] == 3
    assert stats["transactions"]["volume"]["investment/USD-OBBBA"] == 1000.0
    assert stats["play_sessions"]["xUSD_earned_total"] == 425.0
    assert (tmp_path / "cdt_states" / f"{WORLD_ID}.npz").is_file()
    assert verify_store(tmp_path) == []

    # Everything is there after a reopen, too.
    with UbloxLocalStorage(tmp_path) as storage:
        again = storage.load_player("alice")
        reopened = storage.load_pto(PTO_ID)
    assert again == player
    assert reopened is not None
    np.testing.assert_array_equal(reopened["cdt"]["theta"], theta)


def test_the_seeds_story_round_trips_with_default_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed notes' script, call for call, default arguments only: every step succeeds.

    Like the seed's, it writes a 5000 balance with no deposit behind it, so the ledger
    disagrees: restore and import keep the store as it is and say so in warnings."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # the default home: ~/.ublox
    monkeypatch.delenv("UBLOX_HOME", raising=False)
    theta = np.random.default_rng(7).uniform(0, 2 * np.pi, (16, 16))  # the seed's world size
    pto = {
        "pto_id": "pto_harmonic_001",
        "game_name": "Harmonic Caverns",
        "creator_id": "alice",
        "atu_required": 500,
        "pts_offered": 2000,
        "funding_raised": 0.0,
        "status": "funding",
        "aci_coherence_score": 0.0,
        "xUSD_pool": 0.0,
        "world_cdt_id": "pto_harmonic_001_world_cdt",
        "cdt": {"theta": theta},
    }

    storage = UbloxLocalStorage()
    storage.save_player(ALICE)
    storage.save_pto(pto)
    storage.log_transaction(
        tx_type="investment",
        from_player="alice",
        to_player="pto_harmonic_001",
        amount=1000.0,
        currency="USD-OBBBA",
    )
    storage.log_play_session(
        pto_id="pto_harmonic_001", player_id="alice", duration=5.0, quality=0.85, xUSD_earned=425.0
    )
    backup_path = storage.create_backup("before_pto_completion")
    backups = storage.list_backups()
    storage.save_player({**ALICE, "usd_obbba_balance": 1.0})  # changed after the backup
    warnings = storage.restore_backup("before_pto_completion")
    stats = storage.get_global_stats()
    export = storage.export_to_json()
    player = storage.load_player("alice")
    storage.close()

    home = tmp_path / "user" / ".ublox"
    assert backup_path == home / "backups" / "before_pto_completion"
    assert [b["name"] for b in backups] == ["before_pto_completion"]
    assert player is not None and player["usd_obbba_balance"] == 5000.0  # restored
    # The warnings are verify's findings about the restored store, word for word.
    assert warnings == [str(f) for f in verify_store(home)]
    assert {w.split("]")[0] for w in warnings} == {"[ledger", "[escrow", "[session"}
    assert stats["players"]["count"] == 1 and stats["ptos"]["count"] == 1
    assert stats["transactions"]["volume"]["investment/USD-OBBBA"] == 1000.0
    assert stats["play_sessions"]["xUSD_earned_total"] == 425.0
    assert export == home / "export.json"
    # The seed's size claim holds for the seed's story (du -b, backups aside).
    size = home.stat().st_size + sum(
        p.lstat().st_size for p in home.rglob("*") if "backups" not in p.relative_to(home).parts
    )
    assert size < 100_000

    # The export is the portable copy: it imports into a new home as it was.
    with UbloxLocalStorage(tmp_path / "elsewhere") as other:
        imported = other.import_from_json(export)
        assert other.load_player("alice") == player
        copy = other.load_pto("pto_harmonic_001")
        assert other.get_global_stats() == stats
    assert copy is not None
    assert copy["cdt"]["theta"].tobytes() == theta.tobytes()
    # Import warns of what verify finds in the imported store, every check, word for word
    # (it once ran the ledger rule alone: 3 warnings where verify found 5), and that is
    # what restore said about the same story.
    assert imported == [str(f) for f in verify_store(tmp_path / "elsewhere")]
    assert imported == warnings
    assert {w.split("]")[0] for w in imported} == {"[ledger", "[escrow", "[session"}


def test_errors_cross_the_portal_with_their_type(tmp_path: Path) -> None:
    with UbloxLocalStorage(tmp_path) as storage:
        with pytest.raises(InvalidAmount):
            storage.save_player({"player_id": "alice", "usd_obbba_balance": 0.001})
        with pytest.raises(InvalidInput, match="nickname"):
            storage.save_player({"player_id": "alice", "nickname": "al"})
        with pytest.raises(InvalidAmount):
            storage.log_transaction("deposit", None, "alice", -1.0, "USD-OBBBA")
        assert storage.load_player("alice") is None
        assert storage.get_global_stats()["transactions"]["count"] == 0


def test_ublox_home_env_var_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_user_home = tmp_path / "user"
    fake_user_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_user_home))
    monkeypatch.setenv("UBLOX_HOME", str(tmp_path / "from_env"))

    with UbloxLocalStorage() as storage:
        assert storage.home_path == tmp_path / "from_env"
        storage.save_player(ALICE)
    assert (tmp_path / "from_env" / "ublox.db").is_file()
    assert not (fake_user_home / ".ublox").exists()

    # An explicit home wins over the variable.
    with UbloxLocalStorage(tmp_path / "explicit") as storage:
        assert storage.load_player("alice") is None
    assert (tmp_path / "explicit" / "ublox.db").is_file()

    # Without the variable, ~/.ublox.
    monkeypatch.delenv("UBLOX_HOME")
    with UbloxLocalStorage() as storage:
        assert storage.home_path == fake_user_home / ".ublox"
    assert (fake_user_home / ".ublox" / "ublox.db").is_file()


def test_close_twice_is_fine(tmp_path: Path) -> None:
    storage = UbloxLocalStorage(tmp_path)
    storage.save_player(ALICE)
    storage.close()
    storage.close()
    with UbloxLocalStorage(tmp_path) as again:
        loaded = again.load_player("alice")
        again.close()  # and the with-block closes it once more
    assert loaded is not None and loaded["usd_obbba_balance"] == 5000.0


# -- the CLI -------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    home = tmp_path_factory.mktemp("demo") / "home"
    return home, _cli("demo", "--home", str(home))


def test_demo_cli_runs_the_seed_flow(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, result = demo_run
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("✓")]
    assert len(steps) >= 8, result.stdout
    assert "5000.00" in result.stdout
    assert "425.00" in result.stdout
    assert "verify passed" in result.stdout

    assert (home / "ublox.db").is_file()
    assert (home / "cdt_states" / f"{WORLD_ID}.npz").is_file()
    assert (home / "export.json").is_file()
    assert (home / "backups" / "demo_backup" / "ublox.db").is_file()
    assert (home / "backups" / "demo_backup" / "cdt_states").is_dir()
    assert (home / "backups" / "demo_backup" / "cdt_states" / f"{WORLD_ID}.npz").is_file()

    store_files = [p for p in home.rglob("*") if p.is_file() and "backups" not in p.parts]
    assert sum(p.stat().st_size for p in store_files) < 100 * 1024

    export = json.loads((home / "export.json").read_text(encoding="utf-8"))
    (alice,) = export["players"]
    assert alice["usd_obbba_balance"] == 4000.0
    assert alice["xUSD_balance"] == 425.0
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        assert conn.execute("SELECT usd_obbba_balance FROM players").fetchall() == [(400000,)]


def test_verify_cli_passes_on_the_demo_and_fails_on_a_doctored_balance(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    source, result = demo_run
    assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    shutil.copytree(source, home)

    ok = _cli("verify", "--home", str(home))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok" in ok.stdout

    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        conn.execute("UPDATE players SET usd_obbba_balance = usd_obbba_balance + 100000")
        conn.commit()

    bad = _cli("verify", "--home", str(home))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "alice" in bad.stdout
    assert "ledger" in bad.stdout

    as_json = _cli("verify", "--home", str(home), "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [f["check"] for f in report["findings"]] == ["ledger"]


# -- a script that never closes ------------------------------------------------------

SEED_SCRIPT = """
import sys
import numpy as np
from ublox_sim.store.sync import UbloxLocalStorage

storage = UbloxLocalStorage(sys.argv[1])
storage.save_player({"player_id": "alice", "tau_k": 8.5, "usd_obbba_balance": 5000.0})
storage.save_pto({
    "pto_id": "pto_harmonic_001", "game_name": "Harmonic Caverns", "creator_id": "alice",
    "atu_required": 500, "pts_offered": 2000,
    "cdt": {"theta": np.linspace(0.0, 1.0, 256).reshape(16, 16)},
})
print("saved", flush=True)
"""


def test_a_script_that_never_closes_its_storage_exits_with_everything_committed(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    script = tmp_path / "seed_style.py"
    script.write_text(SEED_SCRIPT)
    # The timeout only turns a hang (the bug: the portal's cleanup waited forever at
    # interpreter exit) into a failure instead of a stuck test run.
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "saved\n"
    assert result.stderr == ""
    # Closed, not abandoned: the WAL was checkpointed away and the lock released.
    assert not (home / "ublox.db-wal").exists()
    with UbloxLocalStorage(home) as storage:
        alice = storage.load_player("alice")
        pto = storage.load_pto(PTO_ID)
    assert alice is not None and alice["usd_obbba_balance"] == 5000.0
    assert pto is not None
    np.testing.assert_array_equal(pto["cdt"]["theta"], np.linspace(0.0, 1.0, 256).reshape(16, 16))
    assert verify_store(home) != []  # the raw API wrote a balance without its deposit


def test_cli_refuses_a_doctored_backup_and_export_naming_the_file_and_force_accepts_them(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    source, result = demo_run
    assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    shutil.copytree(source, home)
    with closing(sqlite3.connect(home / "backups" / "demo_backup" / "ublox.db")) as conn:
        conn.execute("UPDATE players SET usd_obbba_balance = usd_obbba_balance + 100000")
        conn.commit()

    refused = _cli("backup", "restore", "demo_backup", "--home", str(home))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "ublox.db differs from the sha256" in refused.stderr
    assert "--force" in refused.stderr
    forced = _cli("backup", "restore", "demo_backup", "--force", "--home", str(home))
    assert forced.returncode == 0, forced.stderr
    assert "warning: backup 'demo_backup': ublox.db differs" in forced.stderr
    assert "warning: [ledger] player alice" in forced.stderr

    export = json.loads((source / "export.json").read_text(encoding="utf-8"))
    export["players"][0]["xUSD_balance"] = 1.0
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(export), encoding="utf-8")
    target = tmp_path / "target"
    refused = _cli("import", str(doctored), "--home", str(target))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"export {doctored} differs from the content digest" in refused.stderr
    assert "--force" in refused.stderr
    forced = _cli("import", str(doctored), "--force", "--home", str(target))
    assert forced.returncode == 0, forced.stderr
    assert "warning: [ledger] player alice: xUSD balance 100" in forced.stderr
    # What verify says about the imported store (the session check included).
    assert "warning: [session] player alice: sessions earned" in forced.stderr


def test_cli_refuses_an_edit_whose_digest_was_deleted_too(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """Deleting the digest is not how to slip an edit past: only a file whose format
    predates digests may lack one (0.1.0's export version 1, backup schema 2)."""
    source, result = demo_run
    assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    shutil.copytree(source, home)
    backup = home / "backups" / "demo_backup"
    manifest = json.loads((backup / "backup.json").read_text(encoding="utf-8"))
    assert manifest["schema_version"] >= 3
    del manifest["sha256"]
    (backup / "backup.json").write_text(json.dumps(manifest), encoding="utf-8")
    with closing(sqlite3.connect(backup / "ublox.db")) as conn:
        conn.execute("UPDATE players SET usd_obbba_balance = usd_obbba_balance + 100000")
        conn.commit()
    refused = _cli("backup", "restore", "demo_backup", "--home", str(home))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"{backup / 'backup.json'} has lost the sha256 digests" in refused.stderr
    assert "--force" in refused.stderr and "0.1.0" not in refused.stderr
    forced = _cli("backup", "restore", "demo_backup", "--force", "--home", str(home))
    assert forced.returncode == 0, forced.stderr
    assert "restored anyway (force)" in forced.stderr

    export = json.loads((source / "export.json").read_text(encoding="utf-8"))
    assert export["version"] == 2
    del export["digest"]
    export["players"][0]["usd_obbba_balance"] += 1000.0
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(export), encoding="utf-8")
    target = tmp_path / "target"
    refused = _cli("import", str(doctored), "--home", str(target))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"export {doctored} (export version 2) has lost the content digest" in refused.stderr
    assert "--force" in refused.stderr and "0.1.0" not in refused.stderr
    assert not target.exists()
    forced = _cli("import", str(doctored), "--force", "--home", str(target))
    assert forced.returncode == 0, forced.stderr
    assert "imported anyway (force)" in forced.stderr
