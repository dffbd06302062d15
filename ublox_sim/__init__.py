"""ublox_sim: an async actor-based game-simulation backend with a local, exact store.

Importing this package has no side effects: no logging configuration, no event
loop, no global state.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .cdt_store import CdtStore
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
from .model import PTO, Player, PlaySession, PTSToken, Transaction
from .persistence import PersistenceActor, Statement
from .storage import UbloxLocalStorage
from .store import Home, LocalStore
from .verify import Finding, verify_store

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
