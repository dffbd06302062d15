"""The command line as a user meets it: help that loads nothing heavy, commands that never
create a store at a mistyped path, an export that never replaces what is not a regular
file, tables that read as tables, and `make run` that says where its store is."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ublox_sim.store.sync import UbloxLocalStorage
from ublox_sim.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]
HARMONIC = str(ROOT / "scenarios" / "harmonic_caverns.yaml")
# Wide and colourless, so a table row is one line of plain text.
ENV = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("UBLOX_HOME", None)


def cli(
    *args: str, env: dict[str, str] | None = None, stdout: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", *args],
        env=env or ENV,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store made through the seed's API, with sums that are float noise in SQLite
    (0.1 h + 0.2 h of play is 0.30000000000000004 h) and a PTO in `funding`."""
    home = tmp_path_factory.mktemp("small") / "ublox"
    with UbloxLocalStorage(home) as storage:
        storage.save_player({"player_id": "alice", "usd_obbba_balance": 1234.5})
        storage.log_transaction("deposit", None, "alice", 1234.5, "USD-OBBBA")
        storage.save_pto(
            {
                "pto_id": "pto_1",
                "game_name": "Caverns",
                "creator_id": "alice",
                "atu_required": 10,
                "pts_offered": 4,
                "price_per_pts": 25.0,
                "funding_goal": 100.0,
                "status": "funding",
            }
        )
        storage.log_play_session("pto_1", "alice", 0.1, 0.123456, 1.0)
        storage.log_play_session("pto_1", "alice", 0.2, 0.654321, 2.0)
    return home


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The seed's story run to its end, with an ATU requirement the creator's 50-a-tick
    spending overshoots (480: the tenth spend reaches 500). Returns (home, report)."""
    home = tmp_path_factory.mktemp("run") / "ublox"
    result = cli("run", HARMONIC, "--home", str(home), "--set", "ptos.0.atu_required=480")
    assert result.returncode == 0, result.stderr
    return home, result.stdout


# -- item 1: help without the heavy imports ---------------------------------------------------


def test_help_of_every_command_loads_neither_numpy_nor_aiosqlite() -> None:
    probe = """
import json
import sys
import click
from ublox_sim.cli import main

def commands(group, path):
    for name, command in sorted(group.commands.items()):
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from commands(command, [*path, name])

seen = []
for args in [[], *commands(main, [])]:
    try:
        main([*args, "--help"], prog_name="ublox-sim")
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
    seen.append(" ".join(args))
heavy = sorted(m for m in ("numpy", "aiosqlite") if m in sys.modules)
print(json.dumps([seen, heavy]), file=sys.stderr)
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen, heavy = json.loads(result.stderr.strip().splitlines()[-1])
    assert {"", "run", "stats", "export", "verify", "backup", "backup list"} <= set(seen)
    assert heavy == []

    # And `python -m ublox_sim --help` in a fresh interpreter, as -X importtime lists it.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ublox_sim", "--help"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: ublox-sim" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {"numpy", "aiosqlite"} & imported


def test_every_public_name_still_resolves_from_the_lazy_package() -> None:
    import ublox_sim

    for name in ublox_sim.__all__:
        assert getattr(ublox_sim, name) is not None, name
    assert set(ublox_sim.__all__) <= set(dir(ublox_sim))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ublox_sim.Nope  # noqa: B018


# -- item 5: no store, no store created ---------------------------------------------------------

NEEDS_A_STORE = [
    ("verify",),
    ("verify", "--json"),
    ("stats",),
    ("stats", "--json"),
    ("export",),
    ("export", "-o", "-"),
    ("backup", "list"),
    ("backup", "list", "--json"),
    ("backup", "create"),
    ("backup", "restore", "some_backup"),
]


@pytest.mark.parametrize("args", NEEDS_A_STORE, ids=" ".join)
def test_a_command_on_a_mistyped_home_exits_2_and_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    typo = tmp_path / "ublx"
    result = cli(*args, "--home", str(typo))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert one_error_line(result).startswith(f"error: no store at {typo}")
    assert result.stdout == ""
    assert not typo.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_or_the_default_home_without_a_store_is_no_store_either(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("verify",), ("stats",), ("backup", "list")):
        result = cli(*args, "--home", str(empty))
        assert result.returncode == 2, result.stderr
        assert f"no store at {empty}" in one_error_line(result)
    assert list(empty.iterdir()) == []

    # Through $UBLOX_HOME, as `ublox-sim verify` with no --home finds it.
    result = cli("verify", env={**ENV, "UBLOX_HOME": str(tmp_path / "unset")})
    assert result.returncode == 2, result.stderr
    assert f"no store at {tmp_path / 'unset'}" in one_error_line(result)
    assert not (tmp_path / "unset").exists()


def test_worlds_without_their_database_are_reported_as_a_lost_store_not_as_no_store(
    tmp_path: Path,
) -> None:
    home = tmp_path / "ublox"
    (home / "cdt_states").mkdir(parents=True)
    (home / "cdt_states" / "pto_1_world_cdt.v3.npz").write_bytes(b"PK")
    result = cli("verify", "--home", str(home))
    assert result.returncode == 1, result.stderr
    assert "no database here" in result.stdout


def test_a_lost_database_is_restored_from_a_backup_as_its_error_advises(tmp_path: Path) -> None:
    home = tmp_path / "ublox"
    theta = np.linspace(0.0, 6.0, 256).reshape(16, 16)
    with UbloxLocalStorage(home) as storage:
        storage.save_player({"player_id": "alice", "usd_obbba_balance": 10.0})
        storage.log_transaction("deposit", None, "alice", 10.0, "USD-OBBBA")
        storage.save_pto(
            {"pto_id": "pto_1", "game_name": "G", "creator_id": "alice", "cdt": {"theta": theta}}
        )
        storage.create_backup("good")
    (home / "ublox.db").unlink()
    refused = cli("verify", "--home", str(home))
    assert refused.returncode == 1
    advised = cli("stats", "--home", str(home))
    assert "ublox-sim backup restore NAME" in advised.stderr

    restored = cli("backup", "restore", "good", "--home", str(home))
    assert restored.returncode == 0, restored.stderr
    assert cli("verify", "--home", str(home)).returncode == 0
    with UbloxLocalStorage(home) as storage:
        player, pto = storage.load_player("alice"), storage.load_pto("pto_1")
        assert player is not None and player["usd_obbba_balance"] == 10.0
        assert pto is not None and pto["cdt"]["theta"].tobytes() == theta.tobytes()
    # The worlds that sat beside the lost database are kept, not thrown away.
    (kept,) = home.glob("lost_worlds_*")
    assert any(kept.glob("*.npz"))


# -- item 5: export writes a file, a pipe or stdout, and never replaces anything else ------------


def test_export_to_stdout_prints_the_export_and_writes_no_file(
    small_store: Path, tmp_path: Path
) -> None:
    result = cli("export", "--home", str(small_store), "-o", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["format"] == "ublox-export"
    assert [p["player_id"] for p in data["players"]] == ["alice"]
    assert not (ROOT / "-").exists()

    # The same bytes as the file export, and as its own stdout named as a path (a pipe
    # here). /proc/self/fd/1, not /dev/stdout: a regression that replaced the target
    # could not create a file in /proc, but it could replace /dev/stdout for everyone.
    target = tmp_path / "export.json"
    assert cli("export", "--home", str(small_store), "-o", str(target)).returncode == 0
    assert target.read_text() == result.stdout
    if Path("/proc/self/fd/1").exists():
        by_name = cli("export", "--home", str(small_store), "-o", "/proc/self/fd/1")
        assert by_name.returncode == 0, by_name.stderr
        assert by_name.stdout == result.stdout


def test_export_replaces_a_regular_file_atomically_and_keeps_a_symlink(
    small_store: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target.name)
    result = cli("export", "--home", str(small_store), "-o", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == target.name
    assert json.loads(target.read_text())["format"] == "ublox-export"
    # Nothing half-written is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "out.json"]


def test_export_into_a_fifo_writes_through_it(small_store: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    # A daemon: if the FIFO were replaced, this reader would wait on it forever.
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cli("export", "--home", str(small_store), "-o", str(fifo))
    replaced = not stat.S_ISFIFO(fifo.lstat().st_mode)
    if reader.is_alive() and not replaced and result.returncode != 0:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release a reader nobody fed
    reader.join(timeout=60)
    assert not replaced, "the FIFO was replaced"
    assert result.returncode == 0, result.stderr
    assert json.loads(received[0])["format"] == "ublox-export"


def test_export_into_a_folder_is_refused_and_the_folder_kept(
    small_store: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = cli("export", "--home", str(small_store), "-o", str(folder))
    assert result.returncode == 2, result.stderr
    assert "is a folder" in one_error_line(result)
    assert tree(folder) == {"keep.txt": b"mine"}

    result = cli("export", "--home", str(small_store), "-o", str(tmp_path / "no" / "x.json"))
    assert result.returncode == 2, result.stderr
    assert "no folder" in one_error_line(result)
    assert not (tmp_path / "no").exists()


@pytest.fixture
def device_nodes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Private copies of /dev/full (1, 7) and /dev/null (1, 3): if export ever replaced a
    device node again, it would replace these, never the machine's own."""
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    nodes = {"full": tmp_path / "full", "null": tmp_path / "null"}
    try:
        os.mknod(nodes["full"], 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        os.mknod(nodes["null"], 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        with open(nodes["null"], "wb") as probe:
            probe.write(b"x")
    except OSError as exc:  # no CAP_MKNOD, or a nodev mount
        pytest.skip(f"cannot make or open a device node in {tmp_path}: {exc}")
    yield nodes


def is_device(path: Path, minor: int) -> bool:
    info = path.lstat()
    return (
        stat.S_ISCHR(info.st_mode)
        and os.major(info.st_rdev) == 1
        and os.minor(info.st_rdev) == minor
    )


def test_export_into_a_full_device_is_one_error_line_and_the_device_stays(
    small_store: Path, device_nodes: dict[str, Path]
) -> None:
    full = device_nodes["full"]
    result = cli("export", "--home", str(small_store), "-o", str(full))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "No space left on device" in one_error_line(result)
    assert str(full) in result.stderr
    assert is_device(full, 7), "the device node was replaced"

    result = cli("export", "--home", str(small_store), "-o", str(device_nodes["null"]))
    assert result.returncode == 0, result.stderr
    assert is_device(device_nodes["null"], 3)


def test_export_to_a_full_stdout_is_one_error_line(
    small_store: Path, device_nodes: dict[str, Path]
) -> None:
    with open(device_nodes["full"], "wb") as full:
        result = cli("export", "--home", str(small_store), "-o", "-", stdout=full.fileno())
    assert result.returncode == 1, result.stderr
    assert "standard output: No space left on device" in one_error_line(result)


# -- item 8: tables, money, counts ------------------------------------------------------------


def table_row(output: str, *cells: str) -> list[str]:
    """The cells of the first table row whose leading cells are ``cells``."""
    for line in output.splitlines():
        parts = [c.strip() for c in line.strip("│┃ ").split("│")]
        if parts[: len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in:\n{output}")


def test_stats_shows_counts_as_rows_money_with_two_decimals_and_rounded_sums(
    small_store: Path,
) -> None:
    result = cli("stats", "--home", str(small_store))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "{" not in out and "}" not in out, out
    assert table_row(out, "ptos", "by_status funding")[-1] == "1"
    assert table_row(out, "players", "usd_obbba_total")[-1] == "1234.50"
    assert table_row(out, "transactions", "volume deposit/USD-OBBBA")[-1] == "1234.50"
    assert table_row(out, "play_sessions", "duration_total")[-1] == "0.30"
    assert table_row(out, "play_sessions", "xUSD_earned_total")[-1] == "3.00"
    assert table_row(out, "play_sessions", "quality_mean")[-1] == "0.389"
    # --json stays the data itself.
    data = json.loads(cli("stats", "--home", str(small_store), "--json").stdout)
    assert data["ptos"]["by_status"] == {"funding": 1}


def test_run_summary_shows_counts_as_words_and_explains_an_atu_overshoot(
    finished_run: tuple[Path, str],
) -> None:
    _, out = finished_run
    assert "{" not in out, out
    assert "PTOs 1 (completed 1)" in out
    assert table_row(out, "pto_harmonic_001")[4] == "500/480 (+20)"
    assert "(+N): the creator's last spend went N past atu_required" in " ".join(out.split())


def test_run_summary_shows_money_with_two_decimals_and_no_note_when_atu_meets_the_requirement() -> (
    None
):
    from rich.console import Console

    from ublox_sim.sim.report import print_report
    from ublox_sim.sim.runner import RunReport
    from ublox_sim.store.home import Home

    pto = {
        "pto_id": "p",
        "game_name": "G",
        "status": "completed",
        "funding_raised": "10",
        "funding_goal": "10.5",
        "pts_sold": 1,
        "pts_offered": 1,
        "atu_spent": 500,
        "atu_required": 500,
        "aci_coherence_score": 0.5,
        "xUSD_pool": "0",
    }
    totals = {
        "players": {"count": 0},
        "ptos": {"count": 1, "by_status": {"completed": 1}},
        "transactions": {"count": 0},
        "play_sessions": {"count": 0, "xUSD_earned_total": 0.0},
    }
    report = RunReport("r", 1, 1, 1, None, 1.0, ptos=[pto], totals=totals)
    console = Console(record=True, width=200, color_system=None)
    print_report(report, Home(Path("/nowhere")), console)
    out = console.export_text()
    assert table_row(out, "p")[2:5] == ["10.00 / 10.50", "1/1", "500/500"]
    assert "past atu_required" not in out


def test_resume_of_a_finished_run_says_it_is_finished(finished_run: tuple[Path, str]) -> None:
    home, _ = finished_run
    result = cli("run", "--resume", "--home", str(home))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "had already finished (tick 48); nothing to resume" in first
    assert "resumed at" not in result.stdout
    assert "ticks/s" not in result.stdout

    result = cli("run", "--resume", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ticks_run"] == 0
    assert "had already finished" in result.stderr
    assert verify_store(home) == []


def test_backup_list_says_when_there_are_none_and_speaks_json(tmp_path: Path) -> None:
    home = tmp_path / "ublox"
    with UbloxLocalStorage(home) as storage:
        storage.save_player({"player_id": "alice"})
    result = cli("backup", "list", "--home", str(home))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"no backups in {home / 'backups'}")
    result = cli("backup", "list", "--home", str(home), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []

    assert cli("backup", "create", "--home", str(home), "first").returncode == 0
    result = cli("backup", "list", "--home", str(home), "--json")
    (item,) = json.loads(result.stdout)
    assert item["name"] == "first"
    assert item["size"] > 0 and item["created"]
    assert table_row(cli("backup", "list", "--home", str(home)).stdout, "first")


# -- item 8: make run -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_says_where_its_store_is_and_reuses_that_home(tmp_path: Path) -> None:
    run_home = tmp_path / "run-home"
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in ENV.items() if not k.startswith("MAKE")}
    # STAMP= skips the venv set-up: this interpreter already has the package.
    command = ["make", "--no-print-directory", "run", "STAMP=", f"BIN={bin_dir}"]
    for attempt in (1, 2):  # the second run reuses (empties) the first one's home
        result = subprocess.run(
            [*command, f"RUN_HOME={run_home}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (attempt, result.stdout, result.stderr)
        assert f"the store is in {run_home}" in result.stdout
        assert verify_store(run_home) == []

    # A RUN_HOME that holds something else is never emptied.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    result = subprocess.run(
        [*command, f"RUN_HOME={other}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "not a ublox store" in result.stderr
    assert tree(other) == {"notes.txt": b"keep"}


# -- item 5: a refused import leaves no store behind -------------------------------------------


def test_a_refused_import_into_a_new_home_leaves_nothing_there(
    small_store: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.json"
    assert cli("export", "--home", str(small_store), "-o", str(good)).returncode == 0
    data = json.loads(good.read_text())
    data["players"][0]["usd_obbba_balance"] = 99999.0  # no longer what its ledger says
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(data))
    not_an_export = tmp_path / "notes.json"
    not_an_export.write_text('{"hello": 1}')

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for source in (doctored, not_an_export):
        fresh = tmp_path / "fresh"
        result = cli("import", str(source), "--home", str(fresh))
        assert result.returncode in (1, 2), (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert not fresh.exists()

        result = cli("import", str(source), "--home", str(kept))
        assert result.returncode in (1, 2), result.stderr
        assert tree(kept) == {"notes.txt": b"mine"}

    # A good export still makes its new home.
    fresh = tmp_path / "fresh"
    result = cli("import", str(good), "--home", str(fresh))
    assert result.returncode == 0, result.stderr
    stats = json.loads(cli("stats", "--home", str(fresh), "--json").stdout)
    assert stats["players"]["count"] == 1


# -- issue 10 items 5 and 8, second pass: an outside tester's findings ------------------------


def test_demo_refuses_a_home_that_holds_a_store_and_leaves_it_as_it_was(
    small_store: Path, tmp_path: Path
) -> None:
    before = tree(small_store)
    result = cli("demo", "--home", str(small_store))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert one_error_line(result).endswith("already holds a store; use a new --home")
    assert tree(small_store) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = cli("demo", "--home", str(mine))
    assert result.returncode == 2, result.stderr
    assert "is not empty and holds no store (notes.txt)" in one_error_line(result)
    assert tree(mine) == {"notes.txt": b"keep"}


def test_demo_says_its_temporary_home_is_deleted_and_counts_in_words(tmp_path: Path) -> None:
    result = cli("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("(temporary: deleted when the demo ends)")
    assert "is deleted now" in lines[-1]
    temporary = Path(lines[0].split()[1])
    assert not temporary.exists()
    assert "✓ stats: 1 player, 1 PTO, 3 transactions, 1 session" in lines

    home = tmp_path / "kept"
    result = cli("demo", "--home", str(home))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"home: {home}"
    assert "deleted" not in result.stdout
    assert verify_store(home) == []


def test_demo_help_says_the_default_home_is_temporary() -> None:
    result = cli("demo", "--help")
    assert "UBLOX_HOME" not in result.stdout
    assert "temporary home" in " ".join(result.stdout.split())


def test_run_refuses_a_folder_that_holds_other_files_and_creates_nothing(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = cli("run", HARMONIC, "--home", str(mine))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "is not empty and holds no store (notes.txt); use a new or empty --home" in (
        one_error_line(result)
    )
    assert tree(mine) == {"notes.txt": b"keep"}
    # `import` makes a store too, and refuses the same folder the same way.
    good = tmp_path / "good.json"
    small = tmp_path / "small"
    with UbloxLocalStorage(small) as storage:
        storage.save_player({"player_id": "alice"})
        storage.export_to_json(good)
    result = cli("import", str(good), "--home", str(mine))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "is not empty and holds no store (notes.txt)" in one_error_line(result)
    assert tree(mine) == {"notes.txt": b"keep"}
    # An empty folder is a new home.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("run", HARMONIC, "--home", str(empty)).returncode == 0


def test_run_on_a_finished_run_says_it_is_finished(finished_run: tuple[Path, str]) -> None:
    home, _ = finished_run
    result = cli("run", HARMONIC, "--home", str(home))
    assert result.returncode == 2, result.stderr
    assert one_error_line(result) == (
        f"error: {home} holds a finished run of harmonic_caverns; use a new --home"
    )


# A run long enough that a SIGINT sent at its first checkpoint lands thousands of ticks
# before its end, on a small world so that finishing it after the resume stays quick.
# Far longer than the test waits for: the interrupt always lands mid-run, however slow
# the machine (resuming to the same bytes as an uninterrupted run is test_run's).
LONG_RUN = ("--set", "clock.ticks=200000", "--set", "world.size=8")


def test_ctrl_c_during_run_exits_130_with_the_resume_command_and_a_store_that_verifies(
    tmp_path: Path,
) -> None:
    import shlex
    import signal

    home = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ublox_sim", "-v", "run", HARMONIC, "--home", str(home), *LONG_RUN],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    # -v logs each checkpoint: the signal goes out once one is durable.
    for line in proc.stderr:
        if "run.checkpoint" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert "Aborted!" not in err and "Traceback" not in err
    (message,) = [line for line in err.splitlines() if line.startswith("interrupted at tick ")]
    resume_command = message.split("continue with `")[1].rstrip("`")
    assert resume_command == (
        f"ublox-sim run {HARMONIC} --set clock.ticks=200000 --set world.size=8 --resume "
        f"--home {home}"
    )
    assert verify_store(home) == []
    # The printed command is one the CLI accepts as it is (its own --help parses it).
    args = shlex.split(resume_command)[1:]
    assert cli(*args, "--help").returncode == 0


def test_output_that_is_not_a_terminal_keeps_ids_and_money_whole(
    finished_run: tuple[Path, str], tmp_path: Path
) -> None:
    narrow = {k: v for k, v in ENV.items() if k != "COLUMNS"}  # rich would assume 80
    home = tmp_path / "ublox"
    result = cli("run", HARMONIC, "--home", str(home), env=narrow)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    row = table_row(out, "pto_harmonic_001")
    assert row[2] == "5000.00 / 5000.00"
    assert " xUSD composed " in next(line for line in out.splitlines() if "sessions" in line)
    assert "ticks/s); store: " + str(home) in out
    stats = cli("stats", "--home", str(home), env=narrow).stdout
    assert table_row(stats, "transactions", "volume xusd_composition/xUSD")[-1].count(".") == 1


def test_stats_json_and_run_json_write_money_as_exact_strings_and_round_hours(
    small_store: Path, tmp_path: Path
) -> None:
    data = json.loads(cli("stats", "--home", str(small_store), "--json").stdout)
    assert data["players"]["usd_obbba_total"] == "1234.50"
    assert data["transactions"]["volume"] == {"deposit/USD-OBBBA": "1234.50"}
    assert data["play_sessions"]["xUSD_earned_total"] == "3.00"
    assert data["play_sessions"]["duration_total"] == 0.3  # not 0.30000000000000004
    assert data["players"]["count"] == 1 and data["ptos"]["by_status"] == {"funding": 1}

    result = cli("run", HARMONIC, "--home", str(tmp_path / "run"), "--json")
    report = json.loads(result.stdout)
    assert report["ptos"][0]["funding_raised"] == "5000.00"
    assert report["totals"]["players"]["usd_obbba_total"] == "10550.00"
    assert report["totals"]["transactions"]["volume"]["investment/USD-OBBBA"] == "5000.00"
    hours = report["totals"]["play_sessions"]["duration_total"]
    assert hours == round(hours, 2)


def test_export_into_a_fifo_killed_by_sigterm_leaves_no_temporary_copy(
    small_store: Path, tmp_path: Path
) -> None:
    import signal

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ublox_sim", "export", "--home", str(small_store), "-o", str(fifo)],
        env={**ENV, "TMPDIR": str(scratch)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # The writer blocks opening a FIFO nobody reads, with the staged export open and the
    # store closed: its open files say when it got there, so no sleep guesses it.
    fds = Path(f"/proc/{proc.pid}/fd")

    def open_files() -> set[str]:
        names = set()
        for fd in fds.iterdir():
            try:
                names.add(os.path.basename(os.readlink(fd)))
            except FileNotFoundError:  # closed meanwhile
                pass
        return names

    for _ in range(12_000):  # a bound on polls (a hang detector), not a timing assertion
        if "export.json" in (names := open_files()) and "ublox.db" not in names:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    else:
        raise AssertionError(f"the export never reached the FIFO: {names}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(scratch.iterdir()) == []
