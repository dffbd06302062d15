"""A throwaway PostgreSQL cluster for the tests: Debian's binaries, a temporary folder.

``PgCluster.start()`` runs ``initdb`` (trust authentication for one superuser, ``ublox``)
and ``pg_ctl start`` in a fresh temporary folder; the server listens on 127.0.0.1 only, on
a free port, and its unix socket stays in that folder. ``initdb`` refuses to run as root,
so as root every server command runs as the ``postgres`` user (``subprocess``'s ``user=``)
and the folder is handed to it. ``stop()`` stops the server and removes the folder.

One cluster serves a whole pytest session (``pg_cluster`` in ``tests/conftest_pg.py``);
each test gets its own database, created from an empty template (``fresh_database``), so
no test sees another's rows. The tests skip PostgreSQL only when no binaries are found
(``UBLOX_PG_BIN`` names a ``bin`` folder; otherwise ``/usr/lib/postgresql/<newest>/bin``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "ublox"
TEMPLATE = "ublox_template"
RUN_AS_WHEN_ROOT = "postgres"
START_ATTEMPTS = 3  # a free port found can be taken by someone else before we bind it


def find_bin() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``psql``, or None when there is none."""
    named = os.environ.get("UBLOX_PG_BIN")
    if named:
        return Path(named) if (Path(named) / "initdb").is_file() else None
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def missing_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if find_bin() is None:
        return (
            "PostgreSQL binaries not found (no /usr/lib/postgresql/*/bin/initdb, "
            "UBLOX_PG_BIN unset): apt-get install postgresql (.ci/run does it as root)"
        )
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgCluster:
    """One running PostgreSQL server in a temporary folder."""

    bin: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ublox-pg-")))
    port: int = 0
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    # Tests need no durability (fsync off, faster); a benchmark of durable acks does.
    durable: bool = False
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _running: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    # -- running commands, as postgres when we are root ----------------------

    def _run_as(self) -> str | None:
        return RUN_AS_WHEN_ROOT if os.geteuid() == 0 else None

    def _server_cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        user = self._run_as()
        return subprocess.run(
            args,
            user=user,
            group=pwd.getpwnam(user).pw_gid if user else None,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )

    def _checked(self, *args: str) -> str:
        done = self._server_cmd(*args)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}"
            )
        return done.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over TCP (no shell, one statement per call)."""
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr}")
        return done.stdout.strip()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> PgCluster:
        user = self._run_as()
        if user:
            entry = pwd.getpwnam(user)  # KeyError: no postgres user (Debian's package makes it)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.socket_dir.mkdir()
        if user:
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        self._checked(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            *(() if self.durable else ("--no-sync",)),  # test files need not survive a power cut
        )
        for attempt in range(START_ATTEMPTS):
            self.port = free_port()
            done = self._server_cmd(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-o",
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.socket_dir} "
                f"-c fsync={'on' if self.durable else 'off'} "
                "-c max_connections=200",
                "start",
            )
            if done.returncode == 0:
                break
            if attempt == START_ATTEMPTS - 1:
                raise RuntimeError(f"pg_ctl start failed:\n{done.stderr}\n{self.log.read_text()}")
        self._running = True
        self.psql(f"CREATE DATABASE {TEMPLATE}")
        return self

    def fresh_database(self) -> str:
        """A new empty database (a copy of the template) and its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        try:
            if self._running:
                self._checked(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
                self._running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._running


@contextlib.contextmanager
def cluster(*, durable: bool = False) -> Iterator[PgCluster]:
    """A started cluster, stopped and removed on exit (``durable``: fsync on)."""
    bin_dir = find_bin()
    if bin_dir is None:
        raise RuntimeError(missing_reason())
    pg = PgCluster(bin_dir, durable=durable)
    try:
        yield pg.start()
    finally:
        pg.stop()
