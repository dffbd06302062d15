"""ublox_sim: an async actor-based game-simulation backend with a local, exact store.

Importing this package has no side effects: no logging configuration, no event
loop, no global state. The public names are loaded on first use, so ``import
ublox_sim`` (and ``ublox-sim --help``) does not pay for numpy or aiosqlite.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from .errors import (
    ActorBroken,
    ActorClosed,
    AlreadyExists,
    BackupError,
    BackupExists,
    CorruptCdtFile,
    InsufficientFunds,
    InvalidAmount,
    InvalidBackupName,
    InvalidId,
    InvalidInput,
    InvalidState,
    PersistenceError,
    Refusal,
    RequestTimeout,
    RuntimeFailure,
    SchemaError,
    SharesUnavailable,
    StoreError,
    StoreFull,
    StoreLocked,
    UbloxError,
    UnitRejected,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
)

if TYPE_CHECKING:
    from .cdt_store import CdtStore
    from .model import PTO, Player, PlaySession, PTSToken, Transaction
    from .persistence import PersistenceActor, Statement
    from .storage import UbloxLocalStorage
    from .store import Home, LocalStore
    from .verify import Finding, verify_store


# Public name -> the module that defines it, imported by ``__getattr__`` on first use.
_LAZY = {
    "CdtStore": "cdt_store",
    "PTO": "model",
    "Player": "model",
    "PlaySession": "model",
    "PTSToken": "model",
    "Transaction": "model",
    "PersistenceActor": "persistence",
    "Statement": "persistence",
    "UbloxLocalStorage": "storage",
    "Home": "store",
    "LocalStore": "store",
    "Finding": "verify",
    "verify_store": "verify",
}

try:
    __version__ = version("ublox-sim")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "PTO",
    "ActorBroken",
    "ActorClosed",
    "AlreadyExists",
    "BackupError",
    "BackupExists",
    "CdtStore",
    "CorruptCdtFile",
    "Finding",
    "Home",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidBackupName",
    "InvalidId",
    "InvalidInput",
    "InvalidState",
    "LocalStore",
    "PTSToken",
    "PersistenceActor",
    "PersistenceError",
    "PlaySession",
    "Player",
    "Refusal",
    "RequestTimeout",
    "RuntimeFailure",
    "SchemaError",
    "SharesUnavailable",
    "Statement",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "Transaction",
    "UbloxError",
    "UbloxLocalStorage",
    "UnitRejected",
    "UnknownPTO",
    "UnknownPlayer",
    "UnknownToken",
    "__version__",
    "verify_store",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
