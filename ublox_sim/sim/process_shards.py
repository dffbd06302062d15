"""The tick's physics in a worker process: ``run --physics process`` (the CLI's choice when
the process may use two CPUs; see ARCHITECTURE.md "Ticks").

``ProcessWorldShards`` is a ``WorldShards`` whose ticks step in one worker process of its
own (started when the engine makes it, so its interpreter and numpy load while the run
sets up; stopped by ``aclose``, which the engine's close calls). Everything else stays as
in ``WorldShards``, on the event loop: the loop owns the arrays (``put``, ``remove``,
``set_theta``, ``arrays``, the undo copy, the re-step on the loop when ``meanwhile``
changed a shard). What moves is ``Shard.advance`` alone (``core.shard.advance``, the same
code and numpy, so the same bits): every shard's stacked ``theta``/``omega`` is made in
shared memory (``Shard``'s allocation hook: a ``memfd`` mapped in both processes, its
descriptor passed once over the socket with ``SCM_RIGHTS``), the worker reads them in
place and writes the worlds' next theta into a shared output block per shard; only the
sessions (seven small arrays a shard) and the outcomes' small arrays are pickled over the
socket. A tick sends every shard's work in one message; the loop waits for the reply in a
thread blocked on the socket (holding no GIL), so whatever the loop runs meanwhile no
longer slows the physics: the worker has its own interpreter and its own GIL.

Nothing leaks when a process dies: a memfd is freed with its last descriptor and
mapping, the worker exits at the socket's EOF, and a worker killed during a tick (or
between two) makes the tick fail with ``RuntimeFailure`` naming how it ended (the loop's
arrays are untouched: the next theta was only in the output block); the next tick starts
a new worker. A checkpointed run that failed so resumes from its last checkpoint with the
same bytes. An exception raised by the physics comes back as itself.

The worker imports only numpy, the standard library and ``core.shard``/``core.world``
(about 0.1 s to start); it ignores SIGINT (a Ctrl-C stops the run between ticks: the
parent's handler decides) and runs in a session of its own.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from ..core.errors import RuntimeFailure
from ..core.shard import Sessions, Shard, TickOutcome, WorldShards, advance
from ..core.world import F64, WorldParams

_HEADER = struct.Struct("!Q")
_FDS_PER_MESSAGE = 200  # SCM_MAX_FD is 253
_STOP_TIMEOUT = 10.0  # seconds a worker told to stop (or whose socket closed) may take
# The worker's glibc malloc keeps what a tick frees: its heap holds little else, so by
# default the tick's large temporaries (a stack's size each) were given back to the
# kernel after every tick and faulted in again at the next (~6% of its CPU time).
_WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@dataclass
class PhysicsStats:
    """What the worker processes of one ``ProcessWorldShards`` did (filled as it runs;
    ``peak_rss_kb`` once it is closed): the loop's wait per tick against the worker's own
    wall and CPU time inside ``advance``."""

    pids: list[int] = field(default_factory=list)
    ticks: int = 0
    wait_seconds: float = 0.0  # the loop: from sending a tick to its reply
    step_seconds: float = 0.0  # the worker: wall time inside ``advance``
    step_cpu_seconds: float = 0.0  # the worker: its CPU time there (``thread_time``)
    peak_rss_kb: int = 0  # the largest worker's ``ru_maxrss`` (told at its stop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "process",
            "worker_pids": list(self.pids),
            "ticks": self.ticks,
            "wait_seconds": round(self.wait_seconds, 4),
            "step_seconds": round(self.step_seconds, 4),
            "step_cpu_seconds": round(self.step_cpu_seconds, 4),
            "worker_peak_rss_kb": self.peak_rss_kb,
        }


# -- the wire: length-prefixed pickles, descriptors in messages of their own --------------


def _send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)))
    sock.sendall(data)


def _exactly(sock: socket.socket, n: int) -> bytearray:
    """``n`` bytes, never more (a descriptor message may follow); EOFError at the end."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("the socket was closed")
        got += k
    return buf


def _recv(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    return pickle.loads(_exactly(sock, size))


def _send_fds(sock: socket.socket, fds: Sequence[int]) -> None:
    for k in range(0, len(fds), _FDS_PER_MESSAGE):
        socket.send_fds(sock, [b"F"], list(fds[k : k + _FDS_PER_MESSAGE]))


def _recv_fds(sock: socket.socket, count: int) -> list[int]:
    fds: list[int] = []
    while len(fds) < count:
        data, got, _, _ = socket.recv_fds(sock, 1, min(_FDS_PER_MESSAGE, count - len(fds)))
        if not data:
            raise EOFError("the socket was closed")
        fds += got
    return fds


# -- the worker ----------------------------------------------------------------------------


def serve(fd: int) -> None:
    """The worker's loop (``python -c``, the socket's descriptor ``fd``): map the blocks it
    is sent, step each tick's shards on them, reply; return at ``stop`` or at EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    blocks: dict[int, F64] = {}
    try:
        _, params = _recv(sock)
        while True:
            message = _recv(sock)
            if message[0] == "stop":
                _send(sock, ("bye", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
                return
            _, new, forget, jobs = message
            for (block, nbytes), block_fd in zip(new, _recv_fds(sock, len(new)), strict=True):
                try:
                    blocks[block] = np.frombuffer(mmap.mmap(block_fd, nbytes), dtype=np.float64)
                finally:
                    os.close(block_fd)
            for block in forget:
                blocks.pop(block, None)
            _send(sock, _step(params, blocks, jobs))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the engine's process is gone: so is the work
    finally:
        sock.close()


def _step(params: WorldParams, blocks: dict[int, F64], jobs: list[Any]) -> tuple[Any, ...]:
    side = params.size
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        results = []
        for theta_at, omega_at, out_at, capacity, n, steps, sessions in jobs:
            shape = (capacity, side, side)
            after, outcome = advance(
                params,
                blocks[theta_at].reshape(shape)[:n],
                blocks[omega_at].reshape(shape)[:n],
                steps,
                sessions,
                out=blocks[out_at].reshape(shape)[:n],
            )
            results.append((after is not None, outcome))
    except Exception as exc:
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeFailure(f"the physics worker failed: {exc!r}")
        return ("raised", exc)
    return ("done", results, time.perf_counter() - wall, time.thread_time() - cpu)


# -- the engine's side ---------------------------------------------------------------------


class _Block:
    """A zeroed float64 array in a memfd, mapped here; ``fd`` is kept (a new worker maps
    it again) until the block is retired. (The mapping holds a descriptor of its own, a
    ``dup``, until its array is collected.)"""

    __slots__ = ("array", "fd", "key", "nbytes")

    def __init__(self, key: int, shape: tuple[int, ...]) -> None:
        self.key = key
        self.nbytes = 8 * int(np.prod(shape))
        self.fd = os.memfd_create(f"ublox-shard-{key}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.nbytes)
            self.array: F64 = np.frombuffer(
                mmap.mmap(self.fd, self.nbytes), dtype=np.float64
            ).reshape(shape)
        except BaseException:
            os.close(self.fd)
            raise


class _Worker:
    """One worker process and the socket to it; ``mapped``: the blocks it was sent."""

    def __init__(self, params: WorldParams) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(__file__).resolve().parents[2])  # this ublox_sim, whatever the cwd
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            f"from ublox_sim.sim.process_shards import serve; serve({theirs.fileno()})"
        )
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **_WORKER_MALLOC},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        # One thread at a time on the socket (a tick's exchange, or the stop): two would
        # split each other's replies.
        self.lock = threading.Lock()
        self.mapped: set[int] = set()
        self.gone: RuntimeFailure | None = None
        _send(ours, ("open", params))

    def ended(self, during: str) -> RuntimeFailure:
        """The failure that says how the worker ended (it closed its socket, or broke it)."""
        if self.gone is None:
            self.sock.close()
            code = _reap(self.proc)
            how = (
                f"was killed by {signal.Signals(-code).name}"
                if code < 0
                else f"exited with status {code}"
            )
            self.gone = RuntimeFailure(
                f"the physics worker process (pid {self.proc.pid}) {how} {during}; "
                "the worlds are as they were before the tick (a checkpointed run resumes "
                "from its last checkpoint)"
            )
        return self.gone

    def release(self) -> None:
        self.sock.close()  # the worker sees EOF and exits
        _reap(self.proc)


def _reap(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class _Held:
    """What a ``ProcessWorldShards`` holds outside Python's memory (its worker, its blocks'
    descriptors): released by ``aclose``, or when it is collected unclosed."""

    def __init__(self) -> None:
        self.worker: _Worker | None = None
        self.blocks: dict[int, _Block] = {}  # by id() of the block's array

    def release(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.release()
        for block in self.blocks.values():
            os.close(block.fd)
        self.blocks.clear()


class ProcessWorldShards(WorldShards):
    """``WorldShards`` whose ticks step in a worker process (see the module doc). Pass it as
    ``Engine.open(worlds=ProcessWorldShards)`` (or a ``functools.partial`` of it with
    ``stats=``); the engine's close stops the worker."""

    steps_off_loop = True  # the loop is free while the worker steps, meanwhile or not

    def __init__(
        self, params: WorldParams, per_shard: int = 256, *, stats: PhysicsStats | None = None
    ) -> None:
        super().__init__(params, per_shard)
        self.stats = PhysicsStats() if stats is None else stats
        # Told the worker's pid once a tick is sent, before its reply (tests kill it there).
        self.on_sent: Callable[[int], None] | None = None
        self._held = _Held()
        self._keys = 0
        self._out: weakref.WeakKeyDictionary[Shard, F64] = weakref.WeakKeyDictionary()
        self._closed = False
        self._exchanging = False  # a tick's exchange is in flight (on a thread)
        self._finalizer = weakref.finalize(self, self._held.release)
        self._start()

    @property
    def pid(self) -> int | None:
        """The current worker's process id (None before the first or after a loss)."""
        worker = self._held.worker
        return None if worker is None or worker.gone else worker.proc.pid

    def _start(self) -> _Worker:
        worker = self._held.worker = _Worker(self.params)
        self.stats.pids.append(worker.proc.pid)
        return worker

    def _allocate(self, shape: tuple[int, int, int]) -> F64:
        self._keys += 1
        block = _Block(self._keys, shape)
        self._held.blocks[id(block.array)] = block
        return block.array

    def _new_shard(self) -> Shard:
        return Shard(self.params, allocate=self._allocate)

    def _shared(self, shard: Shard, name: str) -> _Block:
        """The block holding ``shard``'s array ``name`` (one that is not in a block, set
        from outside, is moved into one)."""
        array: F64 = getattr(shard, name)
        block = self._held.blocks.get(id(array))
        if block is None:
            moved = self._allocate(array.shape)
            moved[...] = array
            setattr(shard, name, moved)
            block = self._held.blocks[id(moved)]
        return block

    def _message(
        self, worker: _Worker, work: Sequence[tuple[Shard, Sessions]], steps: int
    ) -> tuple[tuple[Any, ...], list[int], list[F64]]:
        """The tick's message, the descriptors of the blocks the worker has not mapped, and
        each shard's output array. Blocks no shard uses any more are retired."""
        jobs, outs = [], []
        for shard, sessions in work:
            theta, omega = self._shared(shard, "theta"), self._shared(shard, "omega")
            out = self._out.get(shard)
            if out is None or out.shape != shard.theta.shape or id(out) not in self._held.blocks:
                out = self._out[shard] = self._allocate(shard.theta.shape)
            outs.append(out)
            capacity = len(shard.theta)
            out_at = self._held.blocks[id(out)].key
            jobs.append((theta.key, omega.key, out_at, capacity, len(shard), steps, sessions))
        live = {id(a) for s, _ in work for a in (s.theta, s.omega, self._out.get(s))}
        live |= {id(a) for s in self.shards for a in (s.theta, s.omega, self._out.get(s))}
        forget = []
        for at, block in list(self._held.blocks.items()):
            if at not in live:
                del self._held.blocks[at]
                os.close(block.fd)
                if block.key in worker.mapped:
                    worker.mapped.discard(block.key)
                    forget.append(block.key)
        new = [b for b in self._held.blocks.values() if b.key not in worker.mapped]
        worker.mapped.update(b.key for b in new)
        message = ("tick", [(b.key, b.nbytes) for b in new], forget, jobs)
        return message, [b.fd for b in new], outs

    def _exchange(self, worker: _Worker, message: tuple[Any, ...], fds: list[int]) -> Any:
        """Send a tick, wait for its reply (on a thread: blocked on the socket)."""
        with worker.lock:
            try:
                if self._closed:  # (``aclose`` came first: the worker is stopped)
                    raise EOFError
                _send(worker.sock, message)
                _send_fds(worker.sock, fds)
                if self.on_sent is not None:
                    self.on_sent(worker.proc.pid)
                reply = _recv(worker.sock)
                if self._closed:  # (a reply that came as ``aclose`` cut the tick short)
                    raise EOFError
                return reply
            except (EOFError, OSError):
                if self._closed:
                    raise RuntimeFailure(
                        "the world shards were closed during a tick (its physics was "
                        "stopped; the worlds are as they were before the tick)"
                    ) from None
                raise worker.ended("during a tick") from None

    async def advance_all(
        self, work: Sequence[tuple[Shard, Sessions]], steps: int
    ) -> list[tuple[F64 | None, TickOutcome]]:
        """Every shard of ``work`` stepped by the worker, in one exchange."""
        if self._closed:
            raise RuntimeFailure("these world shards are closed")
        if not work:
            return []
        worker = self._held.worker
        if worker is None or worker.gone is not None:
            if worker is not None:
                worker.release()
            worker = self._start()
        message, fds, outs = self._message(worker, work, steps)
        sizes = [len(shard) for shard, _ in work]
        started = time.perf_counter()
        self._exchanging = True
        try:
            reply = await anyio.to_thread.run_sync(self._exchange, worker, message, fds)
        finally:
            self._exchanging = False
        if reply[0] == "raised":
            raise reply[1]
        _, results, wall, cpu = reply
        self.stats.ticks += 1
        self.stats.wait_seconds += time.perf_counter() - started
        self.stats.step_seconds += wall
        self.stats.step_cpu_seconds += cpu
        return [
            (out[:n] if stepped else None, outcome)
            for out, n, (stepped, outcome) in zip(outs, sizes, results, strict=True)
        ]

    async def aclose(self) -> None:
        """Stop the worker (it tells its peak RSS) and free the shared blocks: the worlds
        stay readable, in ordinary arrays (a copy each), and a shard grows into ordinary
        arrays from now on. A tick whose physics is in flight is cut short: it fails with
        ``RuntimeFailure`` (the worker is stopped without its peak RSS). Idempotent."""
        if self._closed:
            return
        self._closed = True
        worker = self._held.worker
        if worker is not None and worker.gone is None:
            if self._exchanging:  # wake the thread blocked on the socket (EOF), end the work
                with contextlib.suppress(OSError):
                    worker.sock.shutdown(socket.SHUT_RDWR)
                worker.proc.terminate()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stop, worker)
        for shard in self.shards:
            shard.theta, shard.omega = np.array(shard.theta), np.array(shard.omega)
            shard.allocate = np.zeros
        self._out.clear()
        self._finalizer()  # (each mapping goes when its last array does: here, now)

    def _stop(self, worker: _Worker) -> None:
        with worker.lock:  # (after the exchange in flight, if any, has left the socket)
            try:
                worker.sock.settimeout(_STOP_TIMEOUT)  # (a wedged worker is killed below)
                _send(worker.sock, ("stop",))
                _, peak = _recv(worker.sock)
                self.stats.peak_rss_kb = max(self.stats.peak_rss_kb, int(peak))
            except (EOFError, OSError):  # (TimeoutError is an OSError)
                pass  # gone already, or wedged: released (reaped, or killed) all the same
