"""Every error ublox_sim raises on purpose.

    UbloxError
    ├── InvalidInput              bad argument: ids, amounts, names (caller's fault)
    │   ├── InvalidAmount
    │   └── InvalidId
    ├── Refusal                   an economic rule said no; nothing changed
    │   ├── InsufficientFunds
    │   ├── BalanceLimit          a credit would take a balance past the money limit
    │   ├── SharesUnavailable
    │   ├── InvalidState
    │   ├── UnknownPlayer
    │   ├── UnknownPTO
    │   ├── UnknownToken
    │   └── AlreadyExists
    ├── RuntimeFailure            the machinery, not the request
    │   ├── ActorClosed           you (or shutdown) closed it
    │   ├── ActorBroken           it crashed; the cause is chained
    │   ├── RequestTimeout
    │   └── WorldLeased       another live process steps this world: retry later
    └── StoreError                the local store
        ├── PersistenceError      a write was not committed (the cause is chained)
        │   └── StoreFull         disk or max_page_count reached
        ├── UnitRejected          one unit of work broke a constraint; others went on
        │   └── Conflict          ...because it was decided on stale state (another
        │                         process wrote the row first): reload, decide again
        ├── CorruptCdtFile        a .npz that cannot be loaded safely (names the file)
        ├── BackupError           missing or corrupt backup
        │   ├── BackupExists      (also an AlreadyExists refusal)
        │   ├── InvalidBackupName (also an InvalidId)
        │   └── NoSuchBackup      (also an InvalidInput: a name that names none)
        ├── SchemaError           the database is not one we understand
        └── StoreLocked           another writer holds the home

Lower-level errors (sqlite3, OSError, zipfile) are translated with ``raise X(...) from exc``.
"""

from __future__ import annotations

from pathlib import Path


class UbloxError(Exception):
    """Root of every error raised on purpose by ublox_sim."""

    code = "ublox_error"


class InvalidInput(UbloxError, ValueError):
    code = "invalid_input"


class InvalidAmount(InvalidInput):
    code = "invalid_amount"


class InvalidId(InvalidInput):
    code = "invalid_id"


class Refusal(UbloxError):
    """An economic rule refused the operation; nothing was changed."""

    code = "refused"


class InsufficientFunds(Refusal):
    code = "insufficient_funds"


class BalanceLimit(Refusal):
    """A credit made on request (deposit, transfer, play's xUSD) would take a balance past
    the money limit (``limits.MAX_MONEY``). The limit bounds operations: what a store
    holds (and an export carries) is the storage range, ``limits.STORED_MAX_CENTS``."""

    code = "balance_limit"


class SharesUnavailable(Refusal):
    code = "shares_unavailable"


class InvalidState(Refusal):
    code = "invalid_state"


class UnknownPlayer(Refusal, LookupError):
    code = "unknown_player"


class UnknownPTO(Refusal, LookupError):
    code = "unknown_pto"


class UnknownToken(Refusal, LookupError):
    code = "unknown_token"


class AlreadyExists(Refusal):
    code = "already_exists"


class RuntimeFailure(UbloxError):
    code = "runtime_failure"


class ActorClosed(RuntimeFailure):
    """The actor was closed (by you, or by shutdown) before it could answer."""

    code = "actor_closed"


class ActorBroken(RuntimeFailure):
    """The actor crashed; ``__cause__`` holds what it raised."""

    code = "actor_broken"


class RequestTimeout(RuntimeFailure, TimeoutError):
    code = "request_timeout"


class WorldLeased(RuntimeFailure):
    """Several processes share the database and another live process holds the world's
    lease (it steps the world and plays its sessions). Nothing changed: retry after
    ``retry_after`` seconds (its lease then expires unless it renews it), or send the
    play to the process that holds it (``holder``)."""

    code = "world_leased"

    def __init__(self, pto_id: str, holder: str, retry_after: float) -> None:
        super().__init__(
            f"the world of PTO {pto_id!r} is stepped by another process ({holder}) under "
            f"its lease: nothing changed, retry in {retry_after:.1f} s or play it there"
        )
        self.pto_id = pto_id
        self.holder = holder
        self.retry_after = retry_after


class StoreError(UbloxError):
    code = "store_error"


class PersistenceError(StoreError):
    """A unit of work was not committed. Nothing of it is on disk."""

    code = "persistence_error"


class StoreFull(PersistenceError):
    code = "store_full"


class UnitRejected(StoreError):
    """One unit broke a database constraint; it was rolled back alone."""

    code = "unit_rejected"


class Conflict(UnitRejected):
    """The unit was decided on a stale copy of a row (another process sharing the
    database wrote it first): the database refused it whole, nothing changed. Not a
    business refusal: the actor reloads the row and decides again (``conflict_of``)."""

    code = "conflict"


# How many times a caller decides again after a Conflict before giving up (raising it).
CONFLICT_RETRIES = 32

# How a unit's guard fails (see ``store.sqlite.rows``): it writes NULL into a NOT NULL
# column, which no business rule ever does. A debit beyond the balance (whose CHECK an
# actor checks first against its copy) can only come from a stale copy too, and so can a
# PTS token number another process's actor gave first (numbers are the PTO actor's).
_CONFLICT_MARKS = (
    "NOT NULL constraint failed",  # SQLite
    "violates not-null constraint",  # PostgreSQL
    "usd_obbba_balance",  # the balance's CHECK, both
    "pts_tokens.token_id",  # SQLite's UNIQUE
    "pts_tokens_pkey",  # PostgreSQL's
)


def conflict_of(error: BaseException) -> BaseException:
    """``error`` as a ``Conflict`` if it is a unit refused by a guard, else itself."""
    if type(error) is UnitRejected and any(m in str(error) for m in _CONFLICT_MARKS):
        conflict = Conflict(str(error))
        conflict.__cause__ = error
        return conflict
    return error


class CorruptCdtFile(StoreError):
    code = "corrupt_cdt_file"

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"CDT file {path} cannot be loaded: {reason}")
        self.path = path
        self.reason = reason


class BackupError(StoreError):
    code = "backup_error"


class SchemaError(StoreError):
    code = "schema_error"


class StoreLocked(StoreError):
    code = "store_locked"


class BackupExists(BackupError, AlreadyExists):
    """A backup of that name is already there (a refusal: nothing was written)."""

    code = "backup_exists"


class InvalidBackupName(BackupError, InvalidId):
    """A backup name that would leave ``backups/`` or is not a plain name."""

    code = "invalid_backup_name"


class NoSuchBackup(BackupError, InvalidInput):
    """A backup name that names no backup (the caller's mistake, like a bad name)."""

    code = "no_such_backup"
