"""The CDT array store: bit-identical round trips, coalescing, crash safety, safe loading."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ublox_sim.core.errors import CorruptCdtFile, InvalidId
from ublox_sim.store import cdt as cdt_store
from ublox_sim.store.cdt import CdtStore, load_npz, world_file_name, write_npz_atomic
from ublox_sim.store.verify import cdt_findings

WORLD = "pto_test_world_cdt"


def _tree(root: Path) -> set[str]:
    """Every path under ``root``, relative, so a test can see what appeared."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_bit_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        loaded = got[name]
        assert loaded.dtype == array.dtype, name  # byte order included
        assert loaded.shape == array.shape, name
        assert loaded.tobytes() == array.tobytes(), name


def _sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    nan_payloads = np.array([0x7FF8000000000001, 0xFFF0000000000123], dtype=np.uint64)
    return {
        "theta": rng.uniform(0, 2 * np.pi, (32, 32)),
        "omega": rng.normal(1.0, 0.1, (32, 32)),
        "specials": np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 5e-324, 1.7976931348623157e308]),
        "nan_payloads": nan_payloads.view(np.float64),
        "f32": rng.random((3, 5), dtype=np.float32),
        "f16": np.array([1.5, -2.25, 65504.0], dtype=np.float16),
        "i64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]),
        "u8": np.arange(256, dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "c128": rng.random(4) + 1j * rng.random(4),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 3)),
        "fortran": np.asfortranarray(rng.random((4, 6))),
        "strided": rng.random((8, 9))[::2, 1::3],
        "big_endian": np.arange(5, dtype=">i4"),
    }


# -- round trips ---------------------------------------------------------------------


def test_write_npz_atomic_round_trips_bit_identical(tmp_path: Path) -> None:
    arrays = _sample_arrays()
    path = tmp_path / "w.npz"
    size = write_npz_atomic(path, arrays)

    assert size == path.stat().st_size > 0
    assert zipfile.is_zipfile(path)
    _assert_bit_identical(load_npz(path), arrays)
    # A plain numpy reader that refuses pickles reads it too: no pickle inside.
    with np.load(path, allow_pickle=False) as npz:
        _assert_bit_identical({name: npz[name] for name in npz.files}, arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temp file left behind


@pytest.mark.asyncio
async def test_cdt_store_round_trips_through_flush_and_load(tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    arrays = _sample_arrays()
    store.mark_dirty(WORLD, arrays)
    # Read-your-writes before the flush ...
    _assert_bit_identical(await store.aload(WORLD), arrays)
    assert await store.flush() == [store.path_for(WORLD)]
    # ... and from the file after it, sync and async.
    _assert_bit_identical(store.load(WORLD), arrays)
    _assert_bit_identical(await store.aload(WORLD), arrays)
    assert store.files() == [store.path_for(WORLD)]


def test_write_npz_atomic_refuses_object_arrays_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="objects"):
        write_npz_atomic(tmp_path / "w.npz", {"bad": np.array([{"a": 1}], dtype=object)})
    assert list(tmp_path.iterdir()) == []


# -- coalescing ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ten_marks_then_one_flush_write_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = cdt_store.write_npz_atomic
    writes: list[Path] = []

    def counting_write(path: Path, arrays: cdt_store.Arrays) -> int:
        writes.append(path)
        return real_write(path, arrays)

    monkeypatch.setattr(cdt_store, "write_npz_atomic", counting_write)
    store = CdtStore(tmp_path / "cdt_states")
    live = np.zeros((16, 16))
    for k in range(10):
        live[:] = k  # the owning actor goes on mutating the live array
        store.mark_dirty(WORLD, {"theta": live})
    assert store.dirty_count == 1

    paths = await store.flush()

    path = store.path_for(WORLD)
    assert paths == [path]
    assert writes == [path]
    assert store.files_written == 1
    assert store.bytes_written == path.stat().st_size
    assert store.dirty_count == 0
    np.testing.assert_array_equal(store.load(WORLD)["theta"], np.full((16, 16), 9.0))

    # The snapshot was taken at flush time: later mutation does not reach the file.
    live[:] = 42
    np.testing.assert_array_equal(store.load(WORLD)["theta"], np.full((16, 16), 9.0))

    # Nothing dirty: a flush writes nothing.
    assert await store.flush() == []
    assert store.files_written == 1
    assert len(writes) == 1

    # Two worlds dirty: one write each.
    store.mark_dirty(WORLD, {"theta": live})
    store.mark_dirty("other_world", {"theta": live})
    store.mark_dirty(WORLD, {"theta": live})
    await store.flush()
    assert store.files_written == 3
    assert sorted(writes[1:]) == sorted([path, store.path_for("other_world")])


# -- crash safety with a real SIGKILL ------------------------------------------------

# One source of truth for what version (iteration, i) of the world holds, used by the
# child that writes and by the test that checks what survived.
_MAKE_SRC = """
import numpy as np

def make_version(iteration, i):
    rng = np.random.default_rng([iteration, i])
    return {
        "iteration": np.array(iteration),
        "i": np.array(i),
        "theta": rng.uniform(0, 6.283185307179586, (96, 96)),
        "omega": rng.normal(1.0, 0.1, (96, 96)),
    }
"""

_CHILD_SRC = (
    _MAKE_SRC
    + """
import sys
from pathlib import Path
from ublox_sim.store.cdt import write_npz_atomic

target, iteration = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
i = 0
while True:
    write_npz_atomic(target, make_version(iteration, i))
    print(i, flush=True)  # version i is durable
    i += 1
"""
)


def _make_version(iteration: int, i: int) -> dict[str, np.ndarray]:
    namespace: dict[str, object] = {}
    exec(_MAKE_SRC, namespace)
    make = namespace["make_version"]
    assert callable(make)
    result = make(iteration, i)
    assert isinstance(result, dict)
    return result


def test_sigkill_mid_write_never_leaves_a_torn_file(tmp_path: Path) -> None:
    directory = tmp_path / "cdt_states"
    directory.mkdir()
    target = directory / f"{WORLD}.npz"
    chooser = random.Random(0xC0FFEE)
    state: tuple[int, int] | None = None  # what the file holds: (iteration, i), or missing
    seen_files = 0
    mid_write_kills = 0
    iteration = 0
    # Kills are placed by the child's progress (after 0-3 versions it reported durable,
    # at once or once the next write has begun), not by a clock, so a slow machine sees
    # the same cases. Go on until a kill has landed mid-write and a version survived a kill.
    while iteration < 4 or not (seen_files and mid_write_kills):
        assert iteration < 20, "no kill landed mid-write in 20 tries; the test proved nothing"
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_SRC, str(target), str(iteration)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            lines = [child.stdout.readline() for _ in range(chooser.randrange(4))]
            if iteration % 2 == 0:
                # Every other child: once its next write has begun (its temporary file exists).
                temporary = directory / f".{target.name}.{child.pid}.tmp"
                while not temporary.exists() and child.poll() is None:
                    time.sleep(0.001)
            child.send_signal(signal.SIGKILL)
            # Through the same buffered reader as readline(): communicate() would read
            # the pipe underneath it and lose the lines already buffered.
            lines.append(child.stdout.read())
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        done = [int(line) for line in "".join(lines).split()]
        assert done == list(range(len(done)))
        if (directory / f".{target.name}.{child.pid}.tmp").exists():
            mid_write_kills += 1

        # The file is at least the last version reported durable, at most the one after.
        if done:
            allowed = {(iteration, done[-1]), (iteration, done[-1] + 1)}
        else:
            allowed = {(iteration, 0)} | ({state} if state is not None else set())
        if not target.exists():
            assert state is None and not done, "a durable version disappeared"
        else:
            arrays = load_npz(target)  # never CorruptCdtFile: no torn file
            version = (int(arrays["iteration"]), int(arrays["i"]))
            assert version in allowed
            _assert_bit_identical(arrays, _make_version(*version))
            state = version
            seen_files += 1
        iteration += 1

    print("DEBUG", iteration, seen_files, mid_write_kills)
    # Temp files of killed writers may remain; the store never lists them.
    store = CdtStore(directory)
    assert store.files() == ([target] if target.exists() else [])


def test_temp_and_hidden_files_are_ignored_by_files(tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    write_npz_atomic(store.path_for(WORLD), {"theta": np.ones(3)})
    # What write_npz_atomic leaves if killed, plus other leftovers.
    (store.directory / f".{WORLD}.npz.12345.tmp").write_bytes(b"half a file")
    (store.directory / f".{WORLD}.npz").write_bytes(b"hidden")
    (store.directory / "notes.txt").write_text("not a world")
    assert store.files() == [store.path_for(WORLD)]


# -- corrupted files -----------------------------------------------------------------


class _RunsCodeWhenUnpickled:
    """An object whose unpickling touches a marker file: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _valid_bytes(tmp_path: Path) -> bytes:
    scratch = tmp_path / "scratch.npz"
    rng = np.random.default_rng(7)
    write_npz_atomic(scratch, {"theta": rng.random((64, 64)), "omega": rng.random((64, 64))})
    data = scratch.read_bytes()
    scratch.unlink()
    return data


def _corrupt(kind: str, path: Path, tmp_path: Path) -> None:
    valid = _valid_bytes(tmp_path)
    if kind == "truncated":
        path.write_bytes(valid[: len(valid) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zeroed":
        path.write_bytes(bytes(len(valid)))
    elif kind == "garbage":
        path.write_bytes(random.Random(1).randbytes(len(valid)))
    elif kind == "bitrot_in_compressed_data":
        damaged = bytearray(valid)
        damaged[100:164] = random.Random(2).randbytes(64)
        path.write_bytes(bytes(damaged))
    elif kind == "object_array":
        marker = tmp_path / "pwned"
        payload = np.array([_RunsCodeWhenUnpickled(marker), None], dtype=object)
        with open(path, "wb") as handle:
            np.savez(handle, theta=np.ones(3), evil=payload, allow_pickle=True)
    elif kind == "symlink_outside":
        outside = tmp_path / "outside.npz"
        outside.write_bytes(valid)
        path.symlink_to(outside)
    elif kind == "directory":
        path.mkdir()
    else:  # pragma: no cover
        raise AssertionError(kind)


CORRUPTIONS = [
    "truncated",
    "empty",
    "zeroed",
    "garbage",
    "bitrot_in_compressed_data",
    "object_array",
    "symlink_outside",
    "directory",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupted_file_raises_corrupt_cdt_file_naming_it(kind: str, tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    path = store.path_for(WORLD)
    _corrupt(kind, path, tmp_path)

    with pytest.raises(CorruptCdtFile) as caught:
        store.load(WORLD)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    with pytest.raises(CorruptCdtFile) as caught:
        load_npz(path)
    assert str(path) in str(caught.value)
    assert not (tmp_path / "pwned").exists()  # no pickle was ever run


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["truncated", "object_array", "symlink_outside"])
async def test_corrupted_file_raises_through_aload(kind: str, tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    path = store.path_for(WORLD)
    _corrupt(kind, path, tmp_path)
    with pytest.raises(CorruptCdtFile, match=str(path)):
        await store.aload(WORLD)


def test_object_array_payload_is_live(tmp_path: Path) -> None:
    """Control for the test above: the payload does run code when pickles are allowed."""
    path = tmp_path / "evil.npz"
    _corrupt("object_array", path, tmp_path)
    with np.load(path, allow_pickle=True) as npz:
        npz["evil"]
    assert (tmp_path / "pwned").exists()


def test_missing_file_raises_corrupt_cdt_file(tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    with pytest.raises(CorruptCdtFile, match="missing") as caught:
        store.load(WORLD)
    assert str(store.path_for(WORLD)) in str(caught.value)


# -- ids that would leave the folder ------------------------------------------------

BAD_IDS = ["../x", "a/b", "..", "", "x\x00", "a" * 200, "/etc/passwd", ".hidden", "x/../../y"]


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_world_ids_are_refused(bad: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = CdtStore(home / "cdt_states")
    before = _tree(tmp_path)
    arrays = {"theta": np.ones((4, 4))}

    with pytest.raises(InvalidId):
        store.path_for(bad)
    with pytest.raises(InvalidId):
        store.path_for(bad, 3)
    with pytest.raises(InvalidId):
        store.mark_dirty(bad, arrays)
    with pytest.raises(InvalidId):
        store.load(bad)
    with pytest.raises(InvalidId):
        await store.aload(bad)
    with pytest.raises(InvalidId):
        store.remove(bad)
    assert store.dirty_count == 0
    assert await store.flush() == []
    assert store.files_written == 0
    assert _tree(tmp_path) == before


@pytest.mark.asyncio
async def test_valid_world_ids_with_versions_stay_inside_the_folder(tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    store.mark_dirty("pto-1.world_cdt", {"theta": np.ones(2)}, version=7)
    (path,) = await store.flush()
    assert path == store.directory / "pto-1.world_cdt.v7.npz"
    assert path.exists()
    np.testing.assert_array_equal(store.load("pto-1.world_cdt", 7)["theta"], np.ones(2))


def test_prune_removes_only_other_versions_of_that_world(tmp_path: Path) -> None:
    store = CdtStore(tmp_path)
    names = ["w.npz", "w.v1.npz", "w.v2.npz", "w.v10.npz", "w2.v1.npz", "w_x.v1.npz", "w.vx.npz"]
    for name in names:
        (tmp_path / name).touch()
    store.prune("w", keep=2)
    # Another world whose id starts alike, and a name no version gives, are not its files.
    assert _tree(tmp_path) == {"w.v2.npz", "w2.v1.npz", "w_x.v1.npz", "w.vx.npz"}


def test_verify_finds_a_world_under_the_name_the_store_wrote(tmp_path: Path) -> None:
    store = CdtStore(tmp_path / "cdt_states")
    store.mark_dirty("w", {"theta": np.ones(2)}, version=4)
    path = store.path_for("w", 4)
    assert path.name == world_file_name("w", 4) == "w.v4.npz"
    assert world_file_name("w") == "w.npz"
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE cdt_files (world_cdt_id TEXT, version INTEGER)")
    conn.execute("CREATE TABLE ptos (pto_id TEXT, world_cdt_id TEXT)")
    conn.execute("INSERT INTO cdt_files VALUES ('w', 4)")
    conn.execute("INSERT INTO ptos VALUES ('p', 'w')")
    (missing,) = cdt_findings(conn, store.directory)
    assert missing.subject == str(path)
    write_npz_atomic(path, {"theta": np.ones(2)})
    assert cdt_findings(conn, store.directory) == []
