"""Logging: the library's quiet loggers, and the command line's configuration.

Library modules log through ``get_logger(__name__)`` from here, never through
``structlog.get_logger`` directly: structlog's unconfigured default prints every
event to standard output, which is not a library's call to make. An event goes

* to structlog, when the host configured structlog (``structlog.configure``, the
  CLI's ``configure_logging``, or ``structlog.testing.capture_logs()`` in tests);
* else to the standard library's ``logging.getLogger(name)``, when the host
  configured a handler there (``logging.basicConfig``, pytest's log capture), at
  that logger's level;
* else nowhere: a host that configured nothing sees nothing (what a ``NullHandler``
  on the library's logger would do, without touching global state on import).

The choice is made per event, so configuring logging after import works.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

LogFormat = Literal["console", "json"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LibraryLogger:
    """A structlog-style logger (``log.info("event", key=value)``, ``bind``) that is silent
    unless the host configured structlog or standard logging. Make one per module with
    ``get_logger(__name__)``."""

    __slots__ = ("_context", "_name", "_proxy")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = dict(context or {})
        # A lazy proxy: it reads the structlog configuration current at each call.
        self._proxy: Any = structlog.get_logger(name, **self._context)

    def bind(self, **values: Any) -> LibraryLogger:
        return LibraryLogger(self._name, {**self._context, **values})

    def debug(self, event: str, **values: Any) -> None:
        self._emit("debug", event, values)

    def info(self, event: str, **values: Any) -> None:
        self._emit("info", event, values)

    def warning(self, event: str, **values: Any) -> None:
        self._emit("warning", event, values)

    def error(self, event: str, **values: Any) -> None:
        self._emit("error", event, values)

    def _emit(self, method: str, event: str, values: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._proxy, method)(event, **values)
            return
        std = logging.getLogger(self._name)
        level = _LEVELS[method]
        # hasHandlers() is False when no handler exists up to the root: the host
        # configured nothing, and stdlib's last-resort stderr handler must not speak.
        if not (std.isEnabledFor(level) and std.hasHandlers()):
            return
        exc_info = values.pop("exc_info", None)
        fields = {**self._context, **values}
        text = " ".join([event, *(f"{k}={v!r}" for k, v in fields.items())])
        std.log(level, "%s", text, exc_info=exc_info)


def get_logger(name: str) -> LibraryLogger:
    """The module-level logger of a library module: ``log = get_logger(__name__)``."""
    return LibraryLogger(name)


def configure_logging(fmt: LogFormat = "console", level: int = logging.WARNING) -> None:
    """Send structlog output to stderr as console lines or JSON objects (the CLI only)."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
