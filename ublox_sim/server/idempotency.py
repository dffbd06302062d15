"""``Idempotency-Key`` on money-moving requests, as Stripe's API does it.

The key, a fingerprint of the request and the response are written by the operation's
own unit (its receipt, last in it; see ``receipts``), so they commit with the money or
not at all. A retry with the same key returns the stored response and moves nothing, even
after a crash and restart; the same key with another request is a 422. Requests with
one key are serialised in this process, so concurrent duplicates wait for the first.
Keys are scoped per caller: one caller's key never replays another's response.

Several processes on one database: a retry may land on another process. The receipt's
row is keyed by (caller, key), so of two processes running the same key at once only
one unit commits; the other's is refused whole by the key's uniqueness (its money with
it) and that process answers with the stored response, as a replay.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from ..core.errors import UnitRejected
from ..store.backend import Backend
from .auth import Principal
from .errors import ApiError

Key = tuple[str, str]
R = TypeVar("R")  # the receipt: whatever the operation's unit carries to store the key


def fingerprint(operation: str, path: dict[str, str], body: Any) -> str:
    text = json.dumps([operation, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(eq=False)
class IdempotencyKeys:
    store: Backend
    _locks: dict[Key, tuple[anyio.Lock, int]] = field(default_factory=dict)

    async def run(
        self,
        principal: Principal,
        key: str | None,
        print_: str,
        receipt: Callable[[Key, str], R],
        execute: Callable[[R | None], Awaitable[Any]],
    ) -> tuple[Any, bool]:
        """(result, replayed). Without a key, ``execute(None)`` and its result. With one, the
        stored response (a dict decoded from the store), first time and on every retry."""
        if key is None:
            return await execute(None), False
        scoped = (principal.name, key)
        lock, users = self._locks.get(scoped, (anyio.Lock(), 0))
        self._locks[scoped] = (lock, users + 1)
        try:
            async with lock:
                found = await self._find(scoped, print_)
                if found is not None:
                    return found, True
                try:
                    await execute(receipt(scoped, print_))
                except UnitRejected:
                    # Another process committed this key first: its unit moved the money.
                    found = await self._find(scoped, print_)
                    if found is None:
                        raise
                    return found, True
                stored = await self._find(scoped, print_)
                assert stored is not None, "the receipt commits with the operation"
                return stored, False
        finally:
            lock, users = self._locks[scoped]
            if users == 1:
                del self._locks[scoped]
            else:
                self._locks[scoped] = (lock, users - 1)

    async def _find(self, scoped: Key, print_: str) -> dict[str, Any] | None:
        row = await self.store.find_receipt(*scoped)
        if row is None:
            return None
        stored_print, _status, response = row
        if stored_print != print_:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
        data: dict[str, Any] = json.loads(response)
        return data
