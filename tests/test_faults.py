"""Real faults, each with one expected outcome, and nothing acknowledged lost:
a database that fills up (plain and checkpointed), a read-only home, damaged or
hostile CDT files, a damaged ublox.db, and damaged backups."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import (
    BackupError,
    PersistenceError,
    SchemaError,
    StoreError,
    StoreFull,
    UbloxError,
    UnknownPlayer,
)
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.backup import list_backups
from ublox_sim.store.home import world_id_for
from ublox_sim.store.local import LocalStore
from ublox_sim.store.sqlite.writer import run
from ublox_sim.store.verify import verify_store

ROOT = Path(__file__).resolve().parents[1]
PARAMS = WorldParams(size=8)
NO_CAP = 1_073_741_823


@asynccontextmanager
async def open_engine(home: Path, **kwargs: Any) -> AsyncIterator[Engine]:
    async with Engine.open(home, seed=7, clock=SimClock(), world=PARAMS, **kwargs) as engine:
        yield engine


def cents(amount: Decimal) -> int:
    return int(amount * 100)


def sql(home: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"{(home / 'ublox.db').as_uri()}?mode=ro", uri=True)) as conn:
        return conn.execute(query, params).fetchall()


def disk_balances(home: Path) -> dict[str, int]:
    return dict(sql(home, "SELECT player_id, usd_obbba_balance FROM players"))


def deposit_rows(home: Path) -> int:
    return int(sql(home, "SELECT COUNT(*) FROM transactions WHERE tx_type = 'deposit'")[0][0])


def file_state(path: Path) -> tuple[bool, str | None, bytes | None]:
    """What a test must find unchanged: link-ness, link target, bytes."""
    if path.is_symlink():
        return True, os.readlink(path), None
    return False, None, path.read_bytes()


TRANSIENT = {".lock", "ublox.db-wal", "ublox.db-shm"}


def home_snapshot(home: Path) -> dict[str, str]:
    """Every file in the home by its bytes, the database by its content."""
    files = {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.name not in TRANSIENT and p != home / "ublox.db"
    }
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        files["ublox.db"] = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    return files


# -- the database fills up -------------------------------------------------------------


async def page_count(engine: Engine) -> int:
    rows = await engine.store.db.call(lambda conn: run(conn, "PRAGMA page_count"))
    return int(rows[0][0])


async def cap_pages(engine: Engine, pages: int) -> int:
    """Set the persistence connection's ``max_page_count``; returns what SQLite took."""
    rows = await engine.store.db.call(lambda conn: run(conn, f"PRAGMA max_page_count={pages}"))
    return int(rows[0][0])


@dataclass
class Op:
    kind: str  # "register" | "deposit"
    player: str
    amount: Decimal
    error: BaseException | None = None
    done: bool = False


async def perform(engine: Engine, op: Op, patience: float) -> None:
    with anyio.move_on_after(patience):
        try:
            if op.kind == "register":
                await engine.register_player(op.player, usd_obbba=op.amount)
            else:
                await engine.deposit(op.player, op.amount)
        except Exception as exc:  # sorted out by the caller
            op.error = exc
        op.done = True


async def drive(engine: Engine, ops: list[Op], *, patience: float = 5.0) -> None:
    """Run ``ops`` concurrently (one batch for the persistence actor)."""
    async with anyio.create_task_group() as tg:
        for op in ops:
            tg.start_soon(perform, engine, op, patience)


class Ledger:
    """The caller's view: what was acknowledged, and nothing else."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.deposits = 0
        self.refused: list[str] = []  # ids whose registration raised

    def apply(self, op: Op) -> None:
        if op.error is not None:
            if op.kind == "register":
                self.refused.append(op.player)
            return
        if op.kind == "register":
            self.balances[op.player] = cents(op.amount)
        else:
            self.balances[op.player] += cents(op.amount)
        self.deposits += 1


@pytest.mark.asyncio
async def test_a_full_database_fails_the_writes_that_do_not_fit_and_loses_nothing(
    tmp_path: Path,
) -> None:
    book = Ledger()
    async with open_engine(tmp_path) as engine:
        for i in range(10):
            op = Op("register", f"base{i}", Decimal("5.00"))
            await drive(engine, [op])
            assert op.error is None
            book.apply(op)
        pages = await page_count(engine)
        assert await cap_pages(engine, pages + 6) == pages + 6

        ops: list[Op] = []
        n = 0
        while sum(op.error is not None for op in ops) < 40 and len(ops) < 4000:
            batch: list[Op] = []
            for j in range(8):
                if j % 2 == 0:
                    batch.append(Op("register", f"new{n:05d}", Decimal("1.23")))
                    n += 1
                else:
                    known = sorted(book.balances)
                    batch.append(Op("deposit", known[(n + j) % len(known)], Decimal("0.07")))
            await drive(engine, batch)
            assert all(op.done for op in batch), "a caller never heard back"
            for op in batch:
                book.apply(op)
            ops.extend(batch)

        failures = [op for op in ops if op.error is not None]
        assert failures, "the capped database never filled up"
        assert any(op.error is None for op in ops), "no write fitted under the cap at all"
        for op in failures:
            assert isinstance(op.error, StoreFull), repr(op.error)
            assert "full" in str(op.error)

        # Memory tells what the caller was told, and disk agrees (every ack is committed).
        for player, balance in book.balances.items():
            info = await engine.get_player(player)
            assert cents(info.usd_obbba_balance) == balance, player
        for player in book.refused:
            assert player not in (await engine.player_ids())
            with pytest.raises(UnknownPlayer):
                await engine.get_player(player)
        assert disk_balances(tmp_path) == book.balances
        assert deposit_rows(tmp_path) == book.deposits

        # Lift the cap: the same ids register now (a failed write left nothing behind).
        assert await cap_pages(engine, NO_CAP) > pages + 6
        retry = [Op("register", player, Decimal("2.00")) for player in book.refused[:5]]
        retry += [Op("deposit", "base0", Decimal("1.00"))]
        await drive(engine, retry)
        for op in retry:
            assert op.error is None, repr(op.error)
            book.apply(op)
        assert cents((await engine.get_player("base0")).usd_obbba_balance) == book.balances["base0"]

    assert verify_store(tmp_path) == []
    assert disk_balances(tmp_path) == book.balances
    assert deposit_rows(tmp_path) == book.deposits
    assert len(book.balances) == int(sql(tmp_path, "SELECT COUNT(*) FROM players")[0][0])


def full_disk_child(home: str, concurrency: int, report_path: str) -> None:
    """Runs in a child process (an engine that hangs cannot be stopped from inside):
    fill the disk under a checkpointed engine, record what every caller heard."""
    report: dict[str, Any] = {}

    def save() -> None:
        Path(report_path).write_text(json.dumps(report))

    def hung_on_close() -> None:
        report["closed"] = False
        save()
        os._exit(3)

    async def main() -> None:
        async with open_engine(Path(home), checkpointed=True) as engine:
            for i in range(10):
                await engine.register_player(f"base{i}", usd_obbba=Decimal("5.00"))
            await engine.checkpoint(1)
            report["committed"] = disk_balances(Path(home))
            report["committed_deposits"] = deposit_rows(Path(home))
            save()

            pages = await page_count(engine)
            await cap_pages(engine, pages + 6)
            ops: list[Op] = []
            n = 0
            while not any(op.error is not None for op in ops) and len(ops) < 4000:
                batch: list[Op] = []
                for j in range(concurrency):
                    if j % 2 == 0:
                        batch.append(Op("register", f"new{n:05d}", Decimal("1.23")))
                        n += 1
                    else:
                        batch.append(Op("deposit", f"base{n % 10}", Decimal("0.07")))
                await drive(engine, batch, patience=3.0)
                ops.extend(batch)
            report["ops"] = len(ops)
            report["hung"] = sum(not op.done for op in ops)
            report["failures"] = [type(op.error).__name__ for op in ops if op.error is not None]
            report["messages"] = [str(op.error) for op in ops if op.error is not None]
            report["failures_ok"] = all(
                isinstance(op.error, PersistenceError) for op in ops if op.error is not None
            )
            save()

            # From now on nothing may succeed, whatever it is, even once space is back.
            later = [Op("register", f"late{i}", Decimal("1.00")) for i in range(3)]
            later += [Op("deposit", "base1", Decimal("1.00")), Op("deposit", "base2", 1)]
            for op in later:
                await drive(engine, [op], patience=3.0)
            await cap_pages(engine, NO_CAP)
            for op in [Op("register", "after-lift", Decimal("1")), Op("deposit", "base3", 1)]:
                await drive(engine, [op], patience=3.0)
                later.append(op)
            report["later"] = [
                [op.kind, op.done, type(op.error).__name__ if op.error else None] for op in later
            ]
            report["later_ok"] = all(isinstance(op.error, PersistenceError) for op in later)
            try:
                await engine.checkpoint(2)
                report["checkpoint2"] = None
            except UbloxError as exc:
                report["checkpoint2"] = type(exc).__name__
                report["checkpoint2_ok"] = isinstance(exc, PersistenceError)
            save()
            watchdog = threading.Timer(8.0, hung_on_close)
            watchdog.start()
        watchdog.cancel()
        report["closed"] = True
        save()

    anyio.run(main)


@pytest.mark.parametrize("concurrency", [1, 8], ids=["one-at-a-time", "8-concurrent"])
def test_a_full_disk_in_a_checkpointed_run_stops_it_and_reopens_at_the_checkpoint(
    tmp_path: Path, concurrency: int
) -> None:
    """SQLite drops the held transaction on SQLITE_FULL, so memory is then ahead of disk:
    every later call must fail (never run on from a state disk lost), every caller must
    hear back, the engine must still close, and the home reopens at the checkpoint.
    In a child process, so that a hang is a failure here rather than a stuck suite."""
    home, report_path = tmp_path / "home", tmp_path / "report.json"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_faults;"
        " test_faults.full_disk_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])"
    )
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(Path(__file__).parent),
            str(home),
            str(concurrency),
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    report = json.loads(report_path.read_text())
    assert child.returncode in (0, 3), child.stderr[-3000:]

    # Durability first: whatever happened, the home is the checkpoint, consistent.
    committed: dict[str, int] = report["committed"]
    assert len(committed) == 10
    assert verify_store(home) == []
    assert disk_balances(home) == committed
    assert deposit_rows(home) == report["committed_deposits"]

    async def reopen() -> dict[str, int]:
        async with open_engine(home) as engine:
            return {
                p: cents((await engine.get_player(p)).usd_obbba_balance)
                for p in (await engine.player_ids())
            }

    assert anyio.run(reopen) == committed
    assert verify_store(home) == []

    # Then what the callers heard.
    assert report["failures"], "the capped database never filled up"
    assert report["failures_ok"], report["failures"]
    # The callers whose writes hit the cap learn that the disk (or database) is full.
    assert "StoreFull" in report["failures"] or any("full" in m for m in report["messages"])
    problems = []
    if report["hung"]:
        problems.append(
            f"{report['hung']} of {report['ops']} callers never heard back after the disk"
            " filled up (a failed batch in hold mode answers only its first unit)"
        )
    if not report.get("later_ok", False):
        problems.append(f"a call after the failure did not fail: {report.get('later')}")
    if not report.get("checkpoint2_ok", False):
        problems.append(f"checkpoint 2 after the failure: {report.get('checkpoint2')}")
    if not report.get("closed", False):
        problems.append("the engine never closed (shutdown waits on an actor stuck in a write)")
    assert not problems, "\n".join(problems)


# -- a read-only home --------------------------------------------------------------------


SETPRIV = shutil.which("setpriv")


@contextmanager
def world_readable_dir() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's tmp_path is root-only)."""
    parent = Path(tempfile.mkdtemp(prefix="ublox-ro-"))
    try:
        parent.chmod(0o755)
        yield parent
    finally:
        for path in (parent, *parent.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(parent)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    return subprocess.run(
        [
            SETPRIV,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "ublox_sim",
            *args,
        ],
        env={**os.environ, "NO_COLOR": "1", "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def populate(home: Path) -> None:
    async with open_engine(home) as engine:
        await engine.register_player("creator")
        await engine.register_player("alice", usd_obbba=Decimal("100"))
        await engine.register_player("bob", usd_obbba=Decimal("100"))
        for pto_id, buyer in (("pto-a", "alice"), ("pto-b", "bob")):
            await engine.launch_pto(
                pto_id=pto_id,
                game_name=pto_id,
                creator_id="creator",
                atu_required=100,
                pts_offered=4,
                price_per_pts=Decimal("5"),
                funding_deadline=timedelta(days=2),
            )
            await engine.buy_pts(buyer, pto_id, 4)  # sold out: in progress, playable


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.parametrize("populated", [False, True], ids=["empty-home", "existing-store"])
def test_a_read_only_home_is_refused_with_a_clear_error(populated: bool) -> None:
    with world_readable_dir() as parent:
        home = parent / "home"
        if populated:
            anyio.run(populate, home)
        else:
            home.mkdir()
        home.chmod(0o555)
        before = {str(p.relative_to(home)): p.stat().st_mtime_ns for p in home.rglob("*")}
        probe = as_nobody("stats", "--home", str(home))
        # An empty folder holds no store: `stats` says so (exit 2) before trying to open one.
        assert probe.returncode == (1 if populated else 2), (probe.stdout, probe.stderr)
        assert probe.stderr.startswith("error: "), probe.stderr
        assert str(home) in probe.stderr, probe.stderr
        assert "Traceback" not in probe.stderr, probe.stderr
        if populated:
            assert "writable" in probe.stderr or "read-only" in probe.stderr, probe.stderr
        else:
            assert "no store at" in probe.stderr, probe.stderr
        after = {str(p.relative_to(home)): p.stat().st_mtime_ns for p in home.rglob("*")}
        assert after == before, "the refused opener changed the home"
        if populated:
            # Reading is not writing: verify must not call a healthy read-only store corrupt.
            check = as_nobody("verify", "--home", str(home))
            assert "Traceback" not in check.stderr, check.stderr
            assert "[integrity]" not in check.stdout, check.stdout
            assert check.returncode == 0 or "[store]" in check.stdout, check.stdout
        home.chmod(0o755)
        if populated:
            assert verify_store(home) == []


# -- damaged or hostile CDT files ----------------------------------------------------------


class Pwned:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


OPENED: list[tuple[str, int]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        OPENED.append((os.fsdecode(args[0]), flags))


sys.addaudithook(_audit)


@contextmanager
def watch_opens() -> Iterator[list[tuple[str, int]]]:
    """Every file this process opens by path (builtins.open and os.open) while active."""
    global OPENED
    OPENED = []
    try:
        yield OPENED
    finally:
        OPENED = None


def damage(kind: str, path: Path, outside: Path) -> None:
    size = path.stat().st_size
    if kind == "truncated":
        os.truncate(path, size // 2)
    elif kind == "zeroed":
        path.write_bytes(bytes(size))
    elif kind == "pickle":
        payload = np.empty(1, dtype=object)
        payload[0] = Pwned(outside / "pwned")
        with open(path, "wb") as handle:
            np.savez(handle, theta=payload, omega=np.zeros((8, 8)))
    elif kind == "symlink":
        target = outside / "elsewhere.npz"
        with open(target, "wb") as handle:
            np.savez(handle, theta=np.full((8, 8), 7.0), omega=np.full((8, 8), 7.0))
        path.unlink()
        path.symlink_to(target)
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["truncated", "zeroed", "pickle", "symlink"])
async def test_a_damaged_cdt_file_fails_its_pto_only(tmp_path: Path, kind: str) -> None:
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    await populate(home)
    bad = home / "cdt_states" / f"{world_id_for('pto-a')}.npz"
    good = home / "cdt_states" / f"{world_id_for('pto-b')}.npz"
    assert bad.is_file() and good.is_file()
    damage(kind, bad, outside)
    damaged = file_state(bad)
    target = outside / "elsewhere.npz"
    target_before = (target.read_bytes(), target.stat().st_mtime_ns) if kind == "symlink" else None

    with watch_opens() as opened:
        async with open_engine(home) as engine:  # one bad world does not keep the store shut
            with pytest.raises(StoreError) as refused:
                await engine.play("alice", "pto-a", 1.0)
            assert isinstance(refused.value, UbloxError)
            assert str(bad) in str(refused.value), str(refused.value)
            with pytest.raises(StoreError):
                await engine.world("pto-a")
            # Everything else works: the other world plays, money moves, time passes.
            session = await engine.play("bob", "pto-b", 1.0)
            assert session.xUSD_earned > 0
            assert (await engine.get_pto("pto-a")).status == "in_progress"
            await engine.deposit("alice", Decimal("1"))
            await engine.advance(1.0)
            assert (await engine.world("pto-b"))["theta"].shape == (8, 8)
        findings = verify_store(home)

    assert [(f.check, f.subject) for f in findings] == [("cdt", str(bad))], findings
    assert not (outside / "pwned").exists(), "loading the world ran pickled code"
    assert file_state(bad) == damaged, "the damaged file was changed or replaced"
    if kind == "symlink":
        assert target_before == (target.read_bytes(), target.stat().st_mtime_ns)
        elsewhere = [
            p for p, _ in opened if p != str(bad) and Path(p).resolve() == target.resolve()
        ]
        assert not elsewhere, f"something opened the symlink's target: {elsewhere}"
        assert any(p == str(bad) for p, _ in opened), "the audit hook saw no load at all"
        through_link = [f for p, f in opened if p == str(bad) and not f & os.O_NOFOLLOW]
        assert not through_link, "the symlink was opened without O_NOFOLLOW"
    # Nothing acknowledged was lost: the other PTO's session and the deposit are on disk.
    assert sql(home, "SELECT COUNT(*) FROM play_sessions WHERE pto_id = 'pto-b'") == [(1,)]
    assert disk_balances(home)["alice"] == cents(Decimal("81"))


# -- a damaged ublox.db ------------------------------------------------------------------------


def break_db(kind: str, db: Path) -> None:
    size = db.stat().st_size
    if kind == "truncated-half":
        os.truncate(db, size // 2)
    elif kind == "garbage":
        db.write_bytes(np.random.default_rng(5).bytes(size))
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["truncated-half", "garbage"])
async def test_a_damaged_database_is_refused_and_left_as_it_was(tmp_path: Path, kind: str) -> None:
    await populate(tmp_path)
    db = tmp_path / "ublox.db"
    assert (
        not (tmp_path / "ublox.db-wal").exists() or (tmp_path / "ublox.db-wal").stat().st_size == 0
    )
    break_db(kind, db)
    damaged = db.read_bytes()
    others = {p.name: p.read_bytes() for p in (tmp_path / "cdt_states").iterdir()}
    for _ in range(2):  # and again: a refusal does not make it worse
        with pytest.raises(StoreError) as refused:
            async with open_engine(tmp_path):
                pytest.fail("a damaged database opened")
        assert isinstance(refused.value, SchemaError), repr(refused.value)
        message = str(refused.value)
        assert str(db) in message
        assert "restore a backup" in message or "move the file away" in message, message
    assert db.read_bytes() == damaged, "the damaged database was overwritten"
    assert {p.name: p.read_bytes() for p in (tmp_path / "cdt_states").iterdir()} == others
    assert verify_store(tmp_path) != []
    result = await anyio.run_process(
        [sys.executable, "-m", "ublox_sim", "stats", "--home", str(tmp_path)],
        check=False,
        cwd=ROOT,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in stderr, stderr
    assert db.read_bytes() == damaged


# -- damaged backups ------------------------------------------------------------------------


def break_backup(kind: str, backup: Path) -> None:
    if kind == "db-garbage":
        db = backup / "ublox.db"
        db.write_bytes(np.random.default_rng(9).bytes(db.stat().st_size))
    elif kind == "cdt-truncated":
        world = backup / "cdt_states" / f"{world_id_for('pto-a')}.npz"
        os.truncate(world, world.stat().st_size // 2)
    elif kind == "manifest-removed":
        (backup / "backup.json").unlink()
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["db-garbage", "cdt-truncated", "manifest-removed"])
async def test_a_damaged_backup_is_refused_and_the_home_is_untouched(
    tmp_path: Path, kind: str
) -> None:
    await populate(tmp_path)
    async with open_engine(tmp_path) as engine:
        await engine.backup("snap")
        await engine.register_player("after-backup", usd_obbba=Decimal("3"))
    break_backup(kind, tmp_path / "backups" / "snap")
    before = home_snapshot(tmp_path)
    listed = [b["name"] for b in list_backups_of(tmp_path)]
    assert listed == ["snap"]

    async with LocalStore.open(tmp_path) as store:
        with pytest.raises(BackupError) as refused:
            await store.restore_backup("snap")
        assert "snap" in str(refused.value)
        assert [b["name"] for b in store.list_backups()] == ["snap"]
        # The store is still open and working after the refusal.
        assert await store.load_player("after-backup") is not None

    assert home_snapshot(tmp_path) == before
    assert not (tmp_path / "restore-in-progress.json").exists()
    assert [b["name"] for b in list_backups_of(tmp_path)] == ["snap"]
    assert verify_store(tmp_path) == []


def list_backups_of(home: Path) -> list[dict[str, Any]]:
    from ublox_sim.store.home import Home

    return list_backups(Home.resolve(home))


def test_an_emptied_database_beside_worlds_is_refused_not_opened_as_new(tmp_path: Path) -> None:
    """A truncated-to-zero ublox.db next to world files would look like a new, empty store."""

    async def launch() -> None:
        async with Engine.open(tmp_path, seed=1, clock=SimClock()) as engine:
            await engine.register_player("alice", usd_obbba=100)
            await engine.launch_pto(
                pto_id="p1",
                game_name="G",
                creator_id="alice",
                atu_required=1,
                pts_offered=1,
                price_per_pts=1,
                funding_deadline=timedelta(days=1),
            )

    anyio.run(launch)
    (tmp_path / "ublox.db").write_bytes(b"")

    async def reopen() -> None:
        async with Engine.open(tmp_path, seed=1, clock=SimClock()):
            pass

    with pytest.raises(SchemaError, match="restore a backup"):
        anyio.run(reopen)
    assert (tmp_path / "ublox.db").read_bytes() == b""


def test_half_written_world_files_of_a_killed_writer_are_removed_at_open(tmp_path: Path) -> None:
    async def touch() -> None:
        async with Engine.open(tmp_path, seed=1, clock=SimClock()):
            pass

    anyio.run(touch)
    leftover = tmp_path / "cdt_states" / ".w.v3.npz.1234.tmp"
    leftover.write_bytes(b"partial")
    anyio.run(touch)
    assert not leftover.exists()
    assert verify_store(tmp_path) == []
