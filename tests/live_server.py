"""The real game server as a child process on loopback, for test_server and test_browser.

``python -m ublox_sim serve --home H --port P`` is started exactly as a user would
start it, and stopped with SIGINT or SIGTERM, so the tests also cover the clean
shutdown (drain, commit, exit code 0) that uvicorn's lifespan promises.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 20.0
ADMIN_KEY = "test-operator-key-0123456789abcdef"
OPERATOR = {"Authorization": f"Bearer {ADMIN_KEY}"}
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def deadline_in(days: float = 7) -> str:
    """A funding deadline in the future, ISO 8601 with a zone (the server's clock is the wall)."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


class LiveServer:
    """``ublox-sim serve`` in a child process; ``start()`` waits until it answers."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        # Worlds stepping on the wall clock would change state between two reads of a
        # test; the tests that need ticks ask for them.
        self.extra_args: list[str] = ["--tick", "86400"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/events"

    def start(self) -> None:
        # A port picked free may be taken again before the child binds it: try a few.
        for _ in range(3):
            self.port = free_port()
            if self._try_start():
                return
        raise RuntimeError(f"the server did not start:\n{self.output()}")

    def _try_start(self) -> bool:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONUNBUFFERED"] = "1"
        env["UBLOX_ADMIN_KEY"] = ADMIN_KEY
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ublox_sim",
                    "serve",
                    "--home",
                    str(self.home),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=self.url, timeout=2, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.proc = None
                    return False
                try:
                    if client.get("/api/stats").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the server did not answer within {START_TIMEOUT} s:\n{self.output()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Ask the server to shut down; wait (bounded) and return its exit code."""
        if self.proc is None:
            assert self.returncode is not None, "the server was never started"
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"the server did not exit within {STOP_TIMEOUT} s of {sig.name}:\n{self.output()}"
            ) from None
        self.proc = None
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.returncode = self.proc.wait(STOP_TIMEOUT)
            self.proc = None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def error_code(response: httpx.Response) -> Any:
    """The machine-readable code of an error response ({"error": {"code", "message"}})."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]["code"]
