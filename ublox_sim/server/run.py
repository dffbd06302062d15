"""Run the app under uvicorn on a socket bound before anything else happens.

Binding first means a busy port is found before a home or an admin key is created,
and "serving on ..." can be said only once the port is really ours.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import UbloxError
from .app import ServerConfig, create_app

# The send buffer of every connection (accepted sockets inherit the listening socket's).
# Linux otherwise autotunes it up to megabytes (net.ipv4.tcp_wmem), so a WebSocket client
# that stopped reading would swallow thousands of events into the kernel before the
# per-client bound in event_socket ever saw it fall behind. 64 KiB (the kernel doubles
# it for bookkeeping) still holds any REST response or world image in a few writes.
SEND_BUFFER = 64 * 1024


class PortBusy(OSError):
    """The address is in use or cannot be bound."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise PortBusy(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


class _OneLineDecodeErrors(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 text frame with ``logger.exception`` (a
    traceback per frame, from its own protocol code, before our app sees anything)
    although it handles it correctly (close 1007): keep its line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UnicodeDecodeError):
            record.exc_info = None
            record.exc_text = None
        return True


class _StartupErrorSaidOnce(logging.Filter):
    """Once the lifespan failed with an error of ours, ``serve`` raises it for the CLI to
    say in one line: uvicorn's copies (the traceback, "startup failed") are left out."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(self.state, "startup_error", None) is None


def serve(
    home: Path | str | None,
    sock: socket.socket,
    *,
    scenario: Path | None = None,
    ticks_per_second: float = 2.0,
    seed: int | None = None,
    resume: bool = False,
    config: ServerConfig | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve on ``sock`` until SIGINT/SIGTERM (then the lifespan drains and commits).
    ``home``: a home, or a store URL (``store.open``)."""
    import uvicorn

    cfg = replace(config or ServerConfig(), on_ready=on_ready)
    app = create_app(
        home,
        scenario=scenario,
        ticks_per_second=ticks_per_second,
        seed=seed,
        resume=resume,
        config=cfg,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    # After Config: it (re)configures uvicorn's loggers; the filter is for this process only.
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(_OneLineDecodeErrors())
    said_once = _StartupErrorSaidOnce(app.state)
    uvicorn_log.addFilter(said_once)
    # uvicorn re-raises the signal once its graceful shutdown is done; for SIGTERM
    # that default action would turn a clean, committed shutdown into exit -15.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # SIGINT re-raised by uvicorn after its graceful shutdown (as uvicorn.run does)
    except SystemExit:  # uvicorn's exit 3 when the lifespan failed to start
        error = getattr(app.state, "startup_error", None)
        if isinstance(error, UbloxError):
            raise error from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        uvicorn_log.removeFilter(said_once)
