"""ublox_sim: an async actor-based game-simulation backend with a local, exact store.

    from ublox_sim import Engine, SimClock, InsufficientFunds

Importing this package has no side effects: no logging configuration, no event
loop, no global state. It is also cheap: the errors, the clocks and the records
are imported at once (they need only the standard library); everything that needs
numpy, aiosqlite or pydantic (the Engine, the store, scenarios) is imported on
first use, so ``ublox-sim --help`` and ``except ublox_sim.UbloxError`` stay light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .clock import Clock, SimClock, WallClock
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

if TYPE_CHECKING:  # the names below are imported lazily at run time (see __getattr__)
    from .cdt_store import CdtStore
    from .engine import Engine
    from .events import (
        AtuSpent,
        Deposited,
        Event,
        EventsDropped,
        PhaseLock,
        PlayerRegistered,
        PTOCompleted,
        PTOFailed,
        PTOFunded,
        PTOLaunched,
        SessionPlayed,
        SharesBought,
        Subscription,
        Transferred,
    )
    from .persistence import PersistenceActor, Statement
    from .runner import RunReport, run_scenario
    from .scenario import Loaded, Scenario, ScenarioError, load_scenario, parse_scenario
    from .storage import UbloxLocalStorage
    from .store import Home, LocalStore
    from .verify import Finding, verify_store
    from .views import PlayerInfo, PTOInfo, SessionResult, TokenInfo
    from .world import WorldParams

    __version__: str

# Public name -> the submodule that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "CdtStore": "cdt_store",
    "Engine": "engine",
    **dict.fromkeys(
        [
            "AtuSpent",
            "Deposited",
            "Event",
            "EventsDropped",
            "PTOCompleted",
            "PTOFailed",
            "PTOFunded",
            "PTOLaunched",
            "PhaseLock",
            "PlayerRegistered",
            "SessionPlayed",
            "SharesBought",
            "Subscription",
            "Transferred",
        ],
        "events",
    ),
    "PersistenceActor": "persistence",
    "Statement": "persistence",
    "RunReport": "runner",
    "run_scenario": "runner",
    "Loaded": "scenario",
    "Scenario": "scenario",
    "ScenarioError": "scenario",
    "load_scenario": "scenario",
    "parse_scenario": "scenario",
    "UbloxLocalStorage": "storage",
    "Home": "store",
    "LocalStore": "store",
    "Finding": "verify",
    "verify_store": "verify",
    "PTOInfo": "views",
    "PlayerInfo": "views",
    "SessionResult": "views",
    "TokenInfo": "views",
    "WorldParams": "world",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("ublox-sim")
        except PackageNotFoundError:  # running from a source tree without installing
            value = "0.0.0+unknown"
    elif name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "PTO",
    "ActorBroken",
    "ActorClosed",
    "AlreadyExists",
    "AtuSpent",
    "BackupError",
    "BackupExists",
    "CdtStore",
    "Clock",
    "CorruptCdtFile",
    "Deposited",
    "Engine",
    "Event",
    "EventsDropped",
    "Finding",
    "Home",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidBackupName",
    "InvalidId",
    "InvalidInput",
    "InvalidState",
    "Loaded",
    "LocalStore",
    "PTOCompleted",
    "PTOFailed",
    "PTOFunded",
    "PTOInfo",
    "PTOLaunched",
    "PTSToken",
    "PersistenceActor",
    "PersistenceError",
    "PhaseLock",
    "PlaySession",
    "Player",
    "PlayerInfo",
    "PlayerRegistered",
    "Refusal",
    "RequestTimeout",
    "RunReport",
    "RuntimeFailure",
    "Scenario",
    "ScenarioError",
    "SchemaError",
    "SessionPlayed",
    "SessionResult",
    "SharesBought",
    "SharesUnavailable",
    "SimClock",
    "Statement",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "Subscription",
    "TokenInfo",
    "Transaction",
    "Transferred",
    "UbloxError",
    "UbloxLocalStorage",
    "UnitRejected",
    "UnknownPTO",
    "UnknownPlayer",
    "UnknownToken",
    "WallClock",
    "WorldParams",
    "__version__",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
    "verify_store",
]
