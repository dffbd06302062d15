"""Hostile input against the Engine API: every call either does what it documents or raises
a UbloxError, the actor system never crashes, the store stays true, and nothing is
written outside the home.

An oracle (written from the documented rules, not from the code) says for each call
whether it must succeed, be refused (a Refusal) or be rejected (InvalidInput); a model of
the caller's acknowledged balances follows every success, and the memory, the disk and
the ledger are checked against it.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sqlite3
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ublox_sim.core.clock import SimClock
from ublox_sim.core.errors import (
    AlreadyExists,
    BackupError,
    BalanceLimit,
    InsufficientFunds,
    InvalidInput,
    InvalidState,
    Refusal,
    SharesUnavailable,
    UbloxError,
    UnknownPlayer,
    UnknownPTO,
    UnknownToken,
)
from ublox_sim.core.world import WorldParams
from ublox_sim.engine import Engine
from ublox_sim.store.local import LocalStore
from ublox_sim.store.verify import verify_store

SIZE = 8
PARAMS = WorldParams(size=SIZE)
MAX_CENTS = 10**15
START = datetime(2025, 12, 12, tzinfo=UTC)

# -- hostile values ------------------------------------------------------------------------

SQL = "x'; DROP TABLE players; --"
HOSTILE_IDS: list[Any] = [
    "../etc/passwd",
    "../../outside",
    "a/b",
    "/abs",
    "..",
    ".",
    "x\x00y",
    "\x00",
    "x" * 10_000,
    "a" * 128,
    "a" * 129,
    "ünïcødé",
    "玩家一",
    "🎮",
    "\u202eevil",  # right-to-left override: not printable
    SQL,
    "Robert'); DROP TABLE ptos;--",
    "%s%n?",
    "",
    " ",
    " lead",
    "trail ",
    "tab\there",
    "line\nbreak",
    "C:\\windows",
    "nul",
    None,
    42,
    b"bytes",
    ("tu", "ple"),
    ["list"],
]
HOSTILE_AMOUNTS: list[Any] = [
    -1,
    -0.01,
    Decimal("-5"),
    0,
    0.0,
    -0.0,
    Decimal("-0"),
    float("nan"),
    float("inf"),
    float("-inf"),
    10**30,
    -(10**30),
    10**400,
    2**63,
    2**64,
    0.001,
    Decimal("0.001"),
    "0.001",
    5e-324,
    1e308,
    True,
    False,
    "1e5",
    "1E+2",
    " 12.5 ",
    "1_000",
    "abc",
    "",
    "NaN",
    "-inf",
    "0x10",
    "1" * 5000,
    "1e999999",
    Decimal("1e999999"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    "1.000000000000000000000000000001",  # 31 significant digits: a sub-cent tail
    Decimal("0.0100000000000000000000000000001"),
    Decimal("10000000000000"),  # the limit exactly
    Decimal("10000000000000.01"),
    None,
    [1],
    {"amount": 1},
    1,
    Decimal("12.34"),
    0.1,
    "7",
]
HOSTILE_HOURS: list[Any] = [
    -1,
    0,
    -0.0,
    0.5,
    1.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    10**30,
    10**400,
    2**63,
    10**9 + 1,
    True,
    False,
    "1e5",
    "3",
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("2.5"),
    Decimal("1e400"),
    1e-300,
    5e-324,
    None,
    [2],
    1,
    2.0,
    Decimal("2"),
]
# Numbers for float parameters (tau_k, phase, resonance_freq, amplification, advance).
HOSTILE_NUMBERS: list[Any] = [
    -1,
    -1e-9,
    float("nan"),
    float("inf"),
    float("-inf"),
    10**30,
    10**400,
    1e300,
    True,
    "1",
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("1e999999"),
    None,
    [1.0],
    0,
    0.5,
    Decimal("1.5"),
]
HOSTILE_POSITIONS: list[Any] = [
    (1.0, 2.0),
    (0, 0),
    (SIZE, SIZE),
    (-1.0, 2.0),
    (float("nan"), 1.0),
    (1.0, float("inf")),
    (10**400, 1.0),
    (1.0,),
    (1.0, 2.0, 3.0),
    "ab",
    "a",
    5,
    [1.0, 2.0],
    (True, 1.0),
    (Decimal("sNaN"), 1.0),
]
HOSTILE_DEADLINES: list[Any] = [
    timedelta(days=1),
    timedelta(0),
    timedelta(days=-1),
    timedelta(microseconds=1),
    timedelta.max,
    timedelta.min,
    timedelta(days=3_000_000),
    datetime(2030, 1, 1),  # naive
    datetime(2030, 1, 1, tzinfo=UTC),
    datetime(2000, 1, 1, tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
    "tomorrow",
    86400,
    None,
]
# Short inputs that are expensive to refuse the naive way (int() of a huge Decimal is
# quadratic): refused they must be, and promptly. Table only: each costs seconds if slow.
SLOW_AMOUNTS: list[Any] = ["1e200000", Decimal("1e200000")]
SLOW_HOURS: list[Any] = [Decimal("1e200000")]
# "Promptly" counted in bytes allocated, not seconds, so a busy machine cannot fail it:
# the naive refusal builds the 200,000-digit number (83 KB, 177 KB at its peak); a
# refusal from the exponent alone allocates a few KB.
SLOW_WORK_BYTES = 64 * 1024


@contextmanager
def allocates_at_most(limit: int) -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"allocated {peak} bytes at the peak, more than {limit}"


HOSTILE_TEXT: list[Any] = ["", "x" * 201, "x" * 200, SQL, "\x00", "🎮", None, 5, "y" * 10_001]


# -- the oracle: the documented rules, written independently of the code -------------------


def valid_id(value: object) -> bool:
    """Player and token ids: 1..128 printable characters, no leading/trailing spaces."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 128
        and value.isprintable()
        and value == value.strip()
    )


_FILE_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def valid_file_name(value: object) -> bool:
    """PTO ids and backup names: letters, digits, ``_ . -``, no ``..``."""
    return valid_id(value) and bool(_FILE_SAFE.fullmatch(str(value))) and ".." not in str(value)


def oracle_cents(value: object, *, allow_zero: bool = True) -> int | None:
    """Exact cents for a documented amount (Decimal, int, float by its repr, numeric str),
    or None when it must be rejected: not a number, not finite, negative, a fraction of a
    cent (never rounded), zero where not allowed, beyond 10**13 major units. Text is
    ASCII digits with at most two decimals, as in the HTTP API (no "1e3", " 5 ", "-0")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+(\.[0-9]{1,2})?", value):
        return None
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            number = Decimal(repr(value))
        elif isinstance(value, Decimal | int | str):
            number = Decimal(value)
        else:
            return None
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite():
        return None
    if number != 0 and number.adjusted() > 20:
        return None  # far beyond the limit (and beyond any exact arithmetic worth doing)
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    magnitude = int("".join(map(str, digits)) or "0")
    shift = exponent + 2
    if shift >= 0:
        result = magnitude * 10**shift
    else:
        result, rest = divmod(magnitude, 10**-shift)
        if rest:
            return None
    if sign and result:
        return None
    if result == 0 and not allow_zero:
        return None
    if result > MAX_CENTS:
        return None
    return result


def oracle_whole_hours(value: object) -> int | None:
    """PTS hours: a whole positive number (int, or float/Decimal without fraction) ≤ 10**9."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    if isinstance(value, Decimal) and not (
        value.is_finite() and value == value.to_integral_value()
    ):
        return None
    if not 0 < value <= 10**9:
        return None
    return int(value)


def oracle_number(value: object, low: float, high: float, *, open_low: bool = False) -> bool:
    """A float parameter: a finite number (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return False
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return False
    if not math.isfinite(number):
        return False
    return (low < number if open_low else low <= number) and number <= high


def oracle_whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# -- the model: what callers were told -----------------------------------------------------


@dataclass
class PTOModel:
    creator: str
    price: int
    offered: int
    atu_required: int
    deadline: datetime
    sold: int = 0
    status: str = "funding"
    atu_spent: int = 0
    escrow: int = 0
    paid: dict[str, int] = field(default_factory=dict)  # holder → cents paid
    hours_left: dict[str, float] = field(default_factory=dict)  # holder → hours to play


@dataclass
class Model:
    usd: dict[str, int] = field(default_factory=dict)
    xusd: dict[str, int] = field(default_factory=dict)
    ptos: dict[str, PTOModel] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    backups: set[str] = field(default_factory=set)
    now: datetime = START

    def taken(self, ident: object) -> bool:
        try:
            return ident in self.usd or ident in self.ptos
        except TypeError:
            return False

    def known_player(self, ident: object) -> bool:
        try:
            return ident in self.usd
        except TypeError:
            return False

    def known_pto(self, ident: object) -> bool:
        try:
            return ident in self.ptos
        except TypeError:
            return False


def cents(amount: Decimal) -> int:
    return int(amount.scaleb(2))


@dataclass
class Violation:
    op: str
    problem: str

    def __str__(self) -> str:
        return f"{self.op}: {self.problem}"


Expect = type[BaseException] | None  # None: must succeed


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"...<{len(text)} chars>"


class Checker:
    """Runs one call against the engine and judges it against the oracle and the model."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model = Model()
        self.violations: list[Violation] = []
        self.counts: dict[str, dict[str, int]] = {}

    def _count(self, name: str, outcome: str) -> None:
        per = self.counts.setdefault(name, {})
        per[outcome] = per.get(outcome, 0) + 1

    async def call(
        self, name: str, args: tuple[Any, ...], expect: Expect, fn: Callable[[], Any]
    ) -> Any:
        """Run ``fn``; record a violation if the outcome is not ``expect``. Returns the
        result on success, else None."""
        label = f"{name}({', '.join(short(a) for a in args)})"
        try:
            result = await fn()
        except UbloxError as exc:
            self._count(name, type(exc).__name__)
            if expect is None:
                self.violations.append(
                    Violation(label, f"should succeed, raised {type(exc).__name__}: {exc}")
                )
            elif not isinstance(exc, expect):
                self.violations.append(
                    Violation(label, f"expected {expect.__name__}, got {type(exc).__name__}: {exc}")
                )
            return None
        except Exception as exc:  # the contract: never anything but a UbloxError
            self._count(name, f"ESCAPED {type(exc).__name__}")
            self.violations.append(
                Violation(label, f"raised {type(exc).__name__} (not a UbloxError): {exc}"[:300])
            )
            return None
        self._count(name, "ok")
        if expect is not None:
            self.violations.append(
                Violation(label, f"should raise {expect.__name__}, succeeded: {short(result)}")
            )
        return result

    # -- players ---------------------------------------------------------------------------

    async def register(self, player_id: Any, amount: Any = "10", **physics: Any) -> None:
        model = self.model
        money = oracle_cents(amount)
        ok_physics = all(
            (
                oracle_number(physics.get("tau_k", 1.0), 0.0, 100.0),
                physics.get("phase") is None or oracle_number(physics["phase"], 0, 2 * math.pi),
                physics.get("resonance_freq") is None
                or oracle_number(physics["resonance_freq"], 0.0, 100.0),
                physics.get("position") is None or valid_position(physics["position"]),
            )
        )
        expect: Expect
        if not valid_id(player_id) or money is None or not ok_physics:
            expect = InvalidInput
        elif model.taken(player_id):
            expect = AlreadyExists
        else:
            expect = None
        info = await self.call(
            "register_player",
            (player_id, amount, *physics.values()),
            expect,
            lambda: self.engine.register_player(player_id, usd_obbba=amount, **physics),
        )
        if info is not None:
            model.usd[info.player_id] = cents(info.usd_obbba_balance)
            model.xusd[info.player_id] = 0
            if expect is None and cents(info.usd_obbba_balance) != money:
                self.violations.append(
                    Violation(
                        f"register_player({short(player_id)}, {short(amount)})",
                        f"balance {info.usd_obbba_balance}, expected {money} cents",
                    )
                )

    async def deposit(self, player_id: Any, amount: Any) -> None:
        model = self.model
        money = oracle_cents(amount, allow_zero=False)
        expect: Expect = (
            InvalidInput
            if money is None
            else UnknownPlayer
            if not model.known_player(player_id)
            else BalanceLimit
            if model.usd[player_id] + money > MAX_CENTS
            else None
        )
        info = await self.call(
            "deposit",
            (player_id, amount),
            expect,
            lambda: self.engine.deposit(player_id, amount),
        )
        if info is not None:
            if expect is None and money is not None:
                model.usd[player_id] += money
            else:
                await self.resync(player_id)

    async def transfer(self, source: Any, target: Any, amount: Any) -> None:
        model = self.model
        money = oracle_cents(amount, allow_zero=False)
        expect: Expect
        if money is None:
            expect = InvalidInput
        elif not model.known_player(source) or not model.known_player(target):
            expect = UnknownPlayer
        elif source == target:
            expect = InvalidInput
        elif model.usd[target] + money > MAX_CENTS:  # checked before the sender decides
            expect = BalanceLimit
        elif model.usd[source] < money:
            expect = InsufficientFunds
        else:
            expect = None
        info = await self.call(
            "transfer",
            (source, target, amount),
            expect,
            lambda: self.engine.transfer(source, target, amount),
        )
        if info is not None:
            if expect is None and money is not None:
                model.usd[source] -= money
                model.usd[target] += money
            else:
                await self.resync(source, target)

    # -- PTOs ------------------------------------------------------------------------------

    async def launch(
        self,
        pto_id: Any,
        creator: Any = "alice",
        price: Any = "1",
        offered: Any = 4,
        deadline: Any = timedelta(days=1),
        *,
        atu: Any = 10,
        game_name: Any = "Game",
        description: Any = "",
        amplification: Any = 100.0,
    ) -> None:
        model = self.model
        money = oracle_cents(price, allow_zero=False)
        now = model.now
        due: datetime | None = None
        if isinstance(deadline, timedelta):
            try:
                due = now + deadline
            except OverflowError:
                due = None
        elif isinstance(deadline, datetime) and deadline.tzinfo is not None:
            due = deadline
        expect: Expect
        if not valid_file_name(pto_id) or (
            model.known_player(creator)
            and not _launch_args_ok(
                game_name, description, atu, offered, money, amplification, due, now
            )
        ):
            expect = InvalidInput
        elif not model.known_player(creator):
            expect = UnknownPlayer
        elif model.taken(pto_id):
            expect = AlreadyExists
        else:
            expect = None
        info = await self.call(
            "launch_pto",
            (pto_id, creator, price, offered, deadline, atu, game_name, amplification),
            expect,
            lambda: self.engine.launch_pto(
                pto_id=pto_id,
                game_name=game_name,
                creator_id=creator,
                atu_required=atu,
                pts_offered=offered,
                price_per_pts=price,
                funding_deadline=deadline,
                description=description,
                amplification=amplification,
            ),
        )
        if info is not None:
            assert due is not None or expect is not None
            model.ptos[info.pto_id] = PTOModel(
                creator=info.creator_id,
                price=cents(info.price_per_pts),
                offered=info.pts_offered,
                atu_required=info.atu_required,
                deadline=due or datetime.fromisoformat(str(info.funding_deadline)),
            )

    async def buy(self, player_id: Any, pto_id: Any, hours: Any) -> None:
        model = self.model
        whole = oracle_whole_hours(hours)
        expect: Expect
        pto = model.ptos.get(pto_id) if model.known_pto(pto_id) else None
        if whole is None:
            expect = InvalidInput
        elif pto is None:
            expect = UnknownPTO
        elif not model.known_player(player_id):
            expect = UnknownPlayer
        elif pto.status != "funding":
            expect = InvalidState
        elif whole > pto.offered - pto.sold:
            expect = SharesUnavailable
        elif whole * pto.price > model.usd[player_id]:
            expect = InsufficientFunds
        else:
            expect = None
        token = await self.call(
            "buy_pts",
            (player_id, pto_id, hours),
            expect,
            lambda: self.engine.buy_pts(player_id, pto_id, hours),
        )
        if token is not None:
            assert pto is not None
            paid = cents(token.purchase_price)
            if expect is None and whole is not None and paid != whole * pto.price:
                self.violations.append(
                    Violation(
                        f"buy_pts({player_id!r}, {pto_id!r}, {hours!r})",
                        f"paid {paid} cents, expected {whole * pto.price}",
                    )
                )
            model.usd[player_id] -= paid
            pto.sold += token.hours_committed
            pto.escrow += paid
            pto.paid[player_id] = pto.paid.get(player_id, 0) + paid
            pto.hours_left[player_id] = pto.hours_left.get(player_id, 0.0) + token.hours_committed
            if pto.sold == pto.offered:
                pto.status = "in_progress"
            model.tokens.add(token.token_id)

    async def play(self, player_id: Any, pto_id: Any, hours: Any) -> None:
        model = self.model
        pto = model.ptos.get(pto_id) if model.known_pto(pto_id) else None
        valid_hours = oracle_number(hours, 0.01, 1e6)  # plays of at least 0.01 h
        expect: Expect
        left = 0.0
        if not valid_hours:
            expect = InvalidInput
        elif pto is None:
            expect = UnknownPTO
        elif not model.known_player(player_id):
            expect = UnknownPlayer
        else:
            left = pto.hours_left.get(player_id, 0.0)
            if pto.status not in ("in_progress", "completed") or float(hours) > left + 1e-9:
                expect = InvalidState
            else:
                expect = None
        if expect is InvalidState and pto is not None and abs(float(hours) - left) < 1e-6:
            expect = Refusal  # at the float boundary either answer is right
        session = await self.call(
            "play",
            (player_id, pto_id, hours),
            expect,
            lambda: self.engine.play(player_id, pto_id, hours),
        )
        if session is not None:
            assert pto is not None
            pto.hours_left[player_id] = pto.hours_left.get(player_id, 0.0) - session.hours
            model.xusd[player_id] += cents(session.xUSD_earned)

    async def spend_atu(self, pto_id: Any, units: Any) -> None:
        model = self.model
        pto = model.ptos.get(pto_id) if model.known_pto(pto_id) else None
        expect: Expect
        if not oracle_whole(units, 1, 10**12):
            expect = InvalidInput
        elif pto is None:
            expect = UnknownPTO
        elif pto.status != "in_progress":
            expect = InvalidState
        else:
            expect = None
        info = await self.call(
            "spend_atu", (pto_id, units), expect, lambda: self.engine.spend_atu(pto_id, units)
        )
        if info is not None:
            assert pto is not None
            pto.atu_spent = info.atu_spent
            if info.status == "completed" and pto.status != "completed":
                model.usd[pto.creator] += pto.escrow
                pto.escrow = 0
            pto.status = info.status

    async def advance(self, hours: Any) -> None:
        model = self.model
        ok = oracle_number(hours, 0.0, 1e6)
        failed = await self.call(
            "advance",
            (hours,),
            None if ok else InvalidInput,
            lambda: self.engine.advance(hours),
        )
        if failed is not None:
            model.now = self.engine.clock.now()
            due = sorted(
                p
                for p, m in model.ptos.items()
                if m.status == "funding" and m.deadline <= model.now
            )
            if failed != due:
                self.violations.append(
                    Violation(f"advance({hours!r})", f"failed {failed}, expected {due}")
                )
            for pto_id in failed:
                pto = model.ptos[pto_id]
                for holder, paid in pto.paid.items():
                    model.usd[holder] += paid
                pto.paid.clear()
                pto.escrow = 0
                pto.status = "failed"

    # -- reads and backups -----------------------------------------------------------------

    async def read(self, which: str, ident: Any, other: Any = None) -> None:
        model, engine = self.model, self.engine
        expect: Expect
        fn: Callable[[], Any]
        if which == "get_player":
            expect = None if model.known_player(ident) else UnknownPlayer
            fn = functools.partial(engine.get_player, ident)
        elif which == "get_pto":
            expect = None if model.known_pto(ident) else UnknownPTO
            fn = functools.partial(engine.get_pto, ident)
        elif which == "world":
            expect = None if model.known_pto(ident) else UnknownPTO
            fn = functools.partial(engine.world, ident)
        elif which == "get_token":
            try:
                known = ident in model.tokens
            except TypeError:
                known = False
            expect = None if known else UnknownToken
            fn = functools.partial(engine.get_token, ident)
        else:
            assert which == "tokens_of"
            if not model.known_player(ident):
                expect = UnknownPlayer
            elif not model.known_pto(other):
                expect = UnknownPTO
            else:
                expect = None
            fn = functools.partial(engine.tokens_of, ident, other)
        await self.call(which, (ident, other), expect, fn)

    async def backup(self, name: Any) -> None:
        model = self.model
        # None is documented: a default name (backup_YYYYmmdd_HHMMSS).
        expect: Expect = None
        if name is not None and (not valid_file_name(name) or name in model.backups):
            expect = BackupError
        path = await self.call(
            "backup", (name,), expect, functools.partial(self.engine.backup, name)
        )
        if path is not None:
            model.backups.add(path.name)

    async def resync(self, *players: str) -> None:
        """After an unexpected success: take the engine's word, so one violation is
        reported once rather than cascading."""
        for player_id in players:
            info = await self.engine.get_player(player_id)
            self.model.usd[player_id] = cents(info.usd_obbba_balance)
            self.model.xusd[player_id] = cents(info.xUSD_balance)

    # -- the whole truth -------------------------------------------------------------------

    async def check_memory(self) -> None:
        """Every player's balances in memory are what the callers were told."""
        for player_id, usd in self.model.usd.items():
            info = await self.engine.get_player(player_id)
            if (cents(info.usd_obbba_balance), cents(info.xUSD_balance)) != (
                usd,
                self.model.xusd[player_id],
            ):
                self.violations.append(
                    Violation(
                        f"get_player({short(player_id)})",
                        f"memory has {info.usd_obbba_balance}/{info.xUSD_balance}, callers were"
                        f" told {usd}/{self.model.xusd[player_id]} cents",
                    )
                )
                self.model.usd[player_id] = cents(info.usd_obbba_balance)
                self.model.xusd[player_id] = cents(info.xUSD_balance)
        assert sorted(self.model.usd) == (await self.engine.player_ids())
        assert sorted(self.model.ptos) == (await self.engine.pto_ids())


def valid_position(position: object) -> bool:
    if not isinstance(position, tuple | list) or len(position) != 2:
        return False
    return all(oracle_number(v, 0.0, SIZE) for v in position)


def _launch_args_ok(
    game_name: object,
    description: object,
    atu: object,
    offered: object,
    money: int | None,
    amplification: object,
    due: datetime | None,
    now: datetime,
) -> bool:
    return (
        isinstance(game_name, str)
        and 1 <= len(game_name) <= 200
        and "\x00" not in game_name  # no store holds a NUL the same way
        and isinstance(description, str)
        and len(description) <= 10_000
        and "\x00" not in description
        and oracle_whole(atu, 0, 10**12)
        and oracle_whole(offered, 1, 10**9)
        and money is not None
        and isinstance(offered, int)
        and offered * money <= MAX_CENTS
        and oracle_number(amplification, 0.0, 1e6)
        and due is not None
        and due > now
    )


# -- checks after the storm -----------------------------------------------------------------


def check_store(parent: Path, home: Path, model: Model) -> None:
    """The store verifies, the disk holds what callers were told, nothing outside the home."""
    assert [p.name for p in parent.iterdir()] == ["home"], sorted(parent.rglob("*"))
    findings = verify_store(home)
    assert findings == [], "\n".join(map(str, findings))
    with closing(sqlite3.connect(home / "ublox.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"players", "ptos", "pts_tokens", "transactions", "play_sessions"} <= tables
        rows = conn.execute("SELECT player_id, usd_obbba_balance, xUSD_balance FROM players")
        disk = {p: (usd, xusd) for p, usd, xusd in rows}
        columns = [r[1] for r in conn.execute("PRAGMA table_info(players)")]
        assert columns[:2] == ["player_id", "position_x"] and "usd_obbba_balance" in columns
    assert disk == {p: (model.usd[p], model.xusd[p]) for p in model.usd}
    for path in home.rglob("*"):
        assert path.resolve().is_relative_to(home.resolve()), path
        assert not path.is_symlink(), path


def summary(checker: Checker) -> str:
    lines = [f"  {name}: {counts}" for name, counts in sorted(checker.counts.items())]
    return "\n".join(lines)


def report_violations(checker: Checker) -> None:
    if not checker.violations:
        return
    distinct: dict[str, Violation] = {}
    for v in checker.violations:
        key = v.op.split("(")[0] + re.sub(r"\d+", "N", v.problem)[:70]
        distinct.setdefault(key, v)
    pytest.fail(
        f"{len(checker.violations)} contract violation(s), {len(distinct)} distinct:\n"
        + "\n".join(f"  {v}" for v in distinct.values())
    )


@contextmanager
def engine_in_portal(home: Path) -> Iterator[tuple[BlockingPortal, Engine]]:
    with start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(
            Engine.open(home, seed=11, clock=SimClock(START), world=PARAMS)
        ) as engine:
            yield portal, engine


async def seed_world(checker: Checker) -> None:
    """A few players (hostile-but-valid ids among them) and PTOs in every state."""
    for player_id in ("alice", "bob", "carol", "../etc/passwd", SQL, "玩家一", "a" * 128):
        await checker.register(player_id, "1000")
    await checker.launch("open-pto", "alice", "2", 50, timedelta(days=2))
    await checker.launch("live-pto", "bob", "1", 4, timedelta(days=2), atu=1000)
    await checker.buy("carol", "live-pto", 4)
    await checker.launch("done-pto", "bob", "1", 2, timedelta(days=2), atu=1)
    await checker.buy(SQL, "done-pto", 2)
    await checker.spend_atu("done-pto", 5)
    assert not checker.violations, checker.violations


# -- every hostile value, one by one -----------------------------------------------------------


@pytest.mark.asyncio
async def test_every_hostile_value_gets_a_ublox_error_or_its_documented_result(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    async with Engine.open(home, seed=11, clock=SimClock(START), world=PARAMS) as engine:
        c = Checker(engine)
        await seed_world(c)
        n = 0

        def fresh() -> str:
            nonlocal n
            n += 1
            return f"fresh{n}"

        for ident in HOSTILE_IDS:
            await c.register(ident, "10")
            await c.deposit(ident, "1")
            await c.transfer(ident, "alice", "1")
            await c.transfer("alice", ident, "1")
            await c.launch(ident, "alice")
            await c.launch(fresh().replace("fresh", "pto"), ident)
            await c.buy(ident, "open-pto", 1)
            await c.buy("alice", ident, 1)
            await c.play(ident, "live-pto", 0.5)
            await c.play("carol", ident, 0.5)
            await c.spend_atu(ident, 1)
            for which in ("get_player", "get_pto", "get_token", "world", "tokens_of"):
                await c.read(which, ident, "open-pto")
            await c.read("tokens_of", "alice", ident)
            await c.backup(ident)
        for amount in HOSTILE_AMOUNTS:
            await c.register(fresh(), amount)
            await c.deposit("alice", amount)
            await c.transfer("alice", "bob", amount)
            await c.launch(fresh().replace("fresh", "pto"), "alice", amount, 2)
        for hours in HOSTILE_HOURS:
            await c.buy("alice", "open-pto", hours)
            await c.play("carol", "live-pto", hours)
            await c.spend_atu("live-pto", hours)
            await c.launch(fresh().replace("fresh", "pto"), "alice", "1", hours)
            await c.launch(fresh().replace("fresh", "pto"), "alice", "1", 2, atu=hours)
        for number in HOSTILE_NUMBERS:
            await c.register(fresh(), "1", tau_k=number)
            await c.register(fresh(), "1", phase=number)
            await c.register(fresh(), "1", resonance_freq=number)
            await c.launch(fresh().replace("fresh", "pto"), "alice", "1", 2, amplification=number)
            if not oracle_number(number, 0.0, 1e6) or float(number) <= 2:
                await c.advance(number)
        for amount in SLOW_AMOUNTS:
            with allocates_at_most(SLOW_WORK_BYTES):
                await c.deposit("alice", amount)
        for hours in SLOW_HOURS:
            with allocates_at_most(SLOW_WORK_BYTES):
                await c.buy("alice", "open-pto", hours)
        for position in HOSTILE_POSITIONS:
            await c.register(fresh(), "1", position=position)
        for deadline in HOSTILE_DEADLINES:
            await c.launch(fresh().replace("fresh", "pto"), "alice", "1", 2, deadline)
        for text in HOSTILE_TEXT:
            await c.launch(fresh().replace("fresh", "pto"), "alice", "1", 2, game_name=text)
            await c.launch(fresh().replace("fresh", "pto"), "alice", "1", 2, description=text)
        await c.check_memory()
        # Still answering, and still doing real work.
        await c.register("after-the-storm", "5")
        await c.deposit("after-the-storm", "0.01")
        await c.check_memory()
        assert (await engine.stats())["players"]["count"] == len(c.model.usd)
    check_store(tmp_path, home, c.model)
    print("\nhostile table:\n" + summary(c))
    report_violations(c)


# -- the fuzz -------------------------------------------------------------------------------

KNOWN_PLAYERS = ["alice", "bob", "carol", "../etc/passwd", SQL, "玩家一"]
KNOWN_PTOS = ["open-pto", "live-pto", "done-pto", "g1", "g-2", "g.3"]
IDS = st.one_of(
    st.sampled_from(HOSTILE_IDS),
    st.text(max_size=12),
    st.text(alphabet="ab./_-\x00 '\\", min_size=1, max_size=6),
)
# Valid values are drawn as often as hostile ones, so that money really moves meanwhile.
PLAYER_REF = st.one_of(st.sampled_from(KNOWN_PLAYERS), st.sampled_from(KNOWN_PLAYERS), IDS)
PTO_REF = st.one_of(st.sampled_from(KNOWN_PTOS), st.sampled_from(KNOWN_PTOS), IDS)
VALID_AMOUNTS = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=200, places=2),
    st.integers(min_value=1, max_value=100),
    st.sampled_from(["0.5", "12.34", "1e1", 0.1, 2.5]),
)
AMOUNTS = st.one_of(
    VALID_AMOUNTS,
    VALID_AMOUNTS,
    st.sampled_from(HOSTILE_AMOUNTS),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.floats(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.from_regex(r"\A-?[0-9]{0,4}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})?\Z"),
)
WHOLE_HOURS = st.one_of(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=5),
    st.sampled_from(HOSTILE_HOURS),
    st.integers(min_value=-5, max_value=60),
    st.floats(max_value=100),
    st.decimals(max_value=100, allow_nan=True),
)
PLAY_HOURS = st.one_of(
    st.sampled_from([0.25, 0.5, 1, 1.5, Decimal("0.75")]),
    st.sampled_from([0.25, 0.5, 1, 1.5, Decimal("0.75")]),
    st.sampled_from(HOSTILE_HOURS),
    st.floats(max_value=10),
)
NUMBERS = st.one_of(st.sampled_from(HOSTILE_NUMBERS), st.floats(max_value=3.0))
OPERATIONS = st.one_of(
    st.tuples(st.just("register"), IDS, AMOUNTS),
    st.tuples(st.just("register"), st.sampled_from(KNOWN_PLAYERS), AMOUNTS),
    st.tuples(st.just("deposit"), PLAYER_REF, AMOUNTS),
    st.tuples(st.just("transfer"), PLAYER_REF, PLAYER_REF, AMOUNTS),
    st.tuples(
        st.just("launch"),
        PTO_REF,
        PLAYER_REF,
        AMOUNTS,
        st.one_of(st.integers(min_value=-2, max_value=20), st.sampled_from(HOSTILE_HOURS)),
        st.sampled_from(HOSTILE_DEADLINES),
    ),
    st.tuples(
        st.just("launch"),
        st.sampled_from(KNOWN_PTOS),
        st.sampled_from(KNOWN_PLAYERS),
        VALID_AMOUNTS,
        st.integers(min_value=1, max_value=6),
        st.sampled_from([timedelta(hours=3), timedelta(days=1)]),
    ),
    st.tuples(st.just("buy"), PLAYER_REF, PTO_REF, WHOLE_HOURS),
    st.tuples(
        st.just("buy"),
        st.sampled_from(KNOWN_PLAYERS),
        st.sampled_from(KNOWN_PTOS),
        st.integers(min_value=1, max_value=4),
    ),
    st.tuples(st.just("play"), PLAYER_REF, PTO_REF, PLAY_HOURS),
    st.tuples(
        st.just("play"),
        st.sampled_from(KNOWN_PLAYERS),
        st.sampled_from(KNOWN_PTOS),
        st.sampled_from([0.25, 0.5, 1, Decimal("0.75")]),
    ),
    st.tuples(
        st.just("spend_atu"),
        PTO_REF,
        st.one_of(st.integers(-3, 50), st.sampled_from(HOSTILE_HOURS)),
    ),
    st.tuples(st.just("advance"), NUMBERS),
    st.tuples(
        st.just("read"),
        st.sampled_from(["get_player", "get_pto", "get_token", "world", "tokens_of"]),
        st.one_of(PLAYER_REF, PTO_REF, st.sampled_from(["live-pto-pts-000001", "x-pts-1"])),
        PTO_REF,
    ),
    st.tuples(st.just("backup"), st.one_of(IDS, st.sampled_from(["bk1", "bk2"]))),
)


async def apply(checker: Checker, ops: list[tuple[Any, ...]]) -> None:
    for op in ops:
        name, *args = op
        if name == "read":
            await checker.read(*args)
        else:
            await getattr(checker, name)(*args)
    await checker.check_memory()


def test_fuzzed_operations_never_escape_never_crash_and_keep_the_store_true() -> None:
    with tempfile.TemporaryDirectory() as directory:
        parent = Path(directory)
        home = parent / "home"
        with engine_in_portal(home) as (portal, engine):
            checker = Checker(engine)
            portal.call(seed_world, checker)

            @settings(
                max_examples=100,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(ops=st.lists(OPERATIONS, min_size=3, max_size=20))
            def storm(ops: list[tuple[Any, ...]]) -> None:
                portal.call(apply, checker, ops)

            storm()
            # The actor system survived: it answers, works and then closes cleanly.
            portal.call(checker.register, "after-the-storm", "5")
            portal.call(checker.deposit, "after-the-storm", "0.01")
            portal.call(checker.check_memory)
            stats = portal.call(engine.stats)
            assert stats["players"]["count"] == len(checker.model.usd)
        check_store(parent, home, checker.model)
        print("\nhostile fuzz:\n" + summary(checker))
        report_violations(checker)


# -- doctored exports -----------------------------------------------------------------------


def doctor(kind: str, data: dict[str, Any]) -> None:
    if kind == "balance-changed":
        player = next(p for p in data["players"] if p["player_id"] == "alice")
        player["usd_obbba_balance"] += 1000.0
    elif kind == "transaction-removed":
        data["transactions"] = [t for t in data["transactions"] if t["tx_type"] != "investment"]
    elif kind == "deposit-removed":
        data["transactions"] = data["transactions"][1:]
    elif kind == "world-path-escape":
        data["ptos"][0]["world_cdt_id"] = "../../escaped"
    elif kind == "world-object-array":
        spec = next(iter(data["ptos"][0]["cdt"].values()))
        spec["dtype"] = "|O"
    elif kind == "negative-balance":
        data["players"][0]["usd_obbba_balance"] = -5.0
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kind",
    [
        "balance-changed",
        "transaction-removed",
        "deposit-removed",
        "world-path-escape",
        "world-object-array",
        "negative-balance",
    ],
)
async def test_a_doctored_export_is_refused_and_the_target_stays_empty(
    tmp_path: Path, kind: str
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    async with Engine.open(source, seed=3, clock=SimClock(START), world=PARAMS) as engine:
        await engine.register_player("alice", usd_obbba=Decimal("100"))
        await engine.register_player("bob", usd_obbba=Decimal("50"))
        await engine.launch_pto(
            pto_id="pto-x",
            game_name="X",
            creator_id="bob",
            atu_required=10,
            pts_offered=10,
            price_per_pts=Decimal("2.5"),
            funding_deadline=timedelta(days=3),
        )
        await engine.buy_pts("alice", "pto-x", 4)
        await engine.transfer("alice", "bob", Decimal("1.25"))
        exported = await engine.export_json(tmp_path / "export.json")
    data = json.loads(exported.read_text())
    doctor(kind, data)
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(data))

    async with LocalStore.open(target) as store:
        with pytest.raises(UbloxError) as refused:
            await store.import_from_json(doctored)
        assert isinstance(refused.value, InvalidInput), repr(refused.value)
        assert await store.is_empty()
    assert list((target / "cdt_states").iterdir()) == []
    assert {p.name for p in tmp_path.iterdir()} == {
        "source",
        "target",
        "export.json",
        "doctored.json",
    }
    with closing(sqlite3.connect(target / "ublox.db")) as conn:
        for table in ("players", "ptos", "pts_tokens", "transactions", "play_sessions"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table

    # The undoctored export imports, and verifies: the refusal was about the doctoring.
    clean = tmp_path / "clean"
    async with LocalStore.open(clean) as store:
        await store.import_from_json(exported)
    assert verify_store(clean) == []
