"""A real Ray cluster for the tests: ``ray start --head --block`` in a temporary folder,
once per test session, stopped (its whole process group killed) at the end.

Bound as tightly as Ray allows: node address 127.0.0.1, every port chosen free (two
engineers' clusters on one machine never collide on Ray's fixed defaults), 2 CPUs, a
128 MB object store, no dashboard, no usage stats, token authentication with a token
made for the session (Ray's servers listen on every interface; the token is what keeps
the cluster to this test run). Its workers import ``ublox_sim`` from this checkout, and
the test modules (for the functions the tests send them).

A test module takes it as a plugin (``pytest_plugins = ("ray_cluster",)``), so that
every module shares the one cluster. Ray tests carry the ``ray`` mark (``pytest -m ray``
runs them alone, ``-m "not ray"`` leaves them out) and skip, saying why, when the
``[ray]`` extra is not installed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STARTUP_TIMEOUT = 120.0  # seconds: Ray starts in ~4 s here; a loaded machine is slower


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, for RayExecutor(address=...) and ray.init(address=...)
    client_address: str  # ray://127.0.0.1:PORT, the Ray Client's
    temp_dir: Path
    env: dict[str, str]  # what a process that connects to it needs (token, PYTHONPATH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ray_env(home: Path) -> dict[str, str]:
    token = secrets.token_hex(32)
    return {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if p
        ),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _read_until_started(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "--address='" in line:  # "To add another node ... ray start --address='IP:PORT'"
            return


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    # A short folder: Ray's Unix sockets sit ~60 bytes deep in it (107 at most).
    temp = Path(tempfile.mkdtemp(prefix="ublox-rayt-", dir="/tmp"))
    env = ray_env(temp / "home")
    (temp / "home").mkdir()
    port, client_port = free_port(), free_port()
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--include-dashboard=false",
        "--num-cpus=2",
        f"--object-store-memory={128 * 1024 * 1024}",
        f"--temp-dir={temp / 'ray'}",
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: stopped as one, nothing else
    )
    lines: list[str] = []
    reader = threading.Thread(target=_read_until_started, args=(proc, lines), daemon=True)
    reader.start()
    reader.join(STARTUP_TIMEOUT)
    try:
        found = re.search(r"--address='([^']+)'", "".join(lines))
        assert found, f"ray start did not start ({proc.poll()=}):\n{''.join(lines)}"
        # Keep draining its output so that it never blocks on a full pipe.
        reader = threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True)
        reader.start()
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
        _refresh_ray_config()
        try:
            yield RayCluster(
                address=found.group(1),
                client_address=f"ray://127.0.0.1:{client_port}",
                temp_dir=temp,
                env=env,
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        # gcs_server and raylet outlive a SIGTERM for seconds: the group is ours alone.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join()  # the pipe's end: every writer of it is gone
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(temp, ignore_errors=True)


def _refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE when imported; if this process imported it before the
    fixture set the variable, make it read it again (what ray.init does itself when it
    turns token authentication on)."""
    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")
