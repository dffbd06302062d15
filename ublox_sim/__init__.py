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

from .core.clock import Clock, SimClock, WallClock
from .core.errors import (
    ActorBroken,
    ActorClosed,
    AlreadyExists,
    BackupError,
    BackupExists,
    BalanceLimit,
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
from .core.records import PTO, Player, PlaySession, PTSToken, Transaction

if TYPE_CHECKING:  # the names below are imported lazily at run time (see __getattr__)
    from .core.events import (
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
    from .core.views import PlayerInfo, PTOInfo, SessionResult, TokenInfo
    from .core.world import WorldParams
    from .engine import Engine
    from .sim.runner import RunReport, run_scenario
    from .sim.scenario import Loaded, Scenario, ScenarioError, load_scenario, parse_scenario
    from .store.cdt import CdtStore
    from .store.home import Home
    from .store.local import LocalStore
    from .store.sqlite.writer import PersistenceActor, Statement
    from .store.sync import UbloxLocalStorage
    from .store.verify import Finding, verify_store

    __version__: str

# Public name -> the submodule that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "CdtStore": "store.cdt",
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
        "core.events",
    ),
    "PersistenceActor": "store.sqlite.writer",
    "Statement": "store.sqlite.writer",
    "RunReport": "sim.runner",
    "run_scenario": "sim.runner",
    "Loaded": "sim.scenario",
    "Scenario": "sim.scenario",
    "ScenarioError": "sim.scenario",
    "load_scenario": "sim.scenario",
    "parse_scenario": "sim.scenario",
    "UbloxLocalStorage": "store.sync",
    "Home": "store.home",
    "LocalStore": "store.local",
    "Finding": "store.verify",
    "verify_store": "store.verify",
    "PTOInfo": "core.views",
    "PlayerInfo": "core.views",
    "SessionResult": "core.views",
    "TokenInfo": "core.views",
    "WorldParams": "core.world",
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
    "BalanceLimit",
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
