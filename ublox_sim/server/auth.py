"""Who is calling: the operator (the admin key) or a player (a signed, expiring token).

The operator's key comes from ``UBLOX_ADMIN_KEY`` or ``<home>/admin.key`` (created on
first start, mode 0600). Player tokens are JWTs (PyJWT, HS256) signed with a secret
derived from the admin key, carrying the player id, an expiry checked against the wall
clock, and the player's token version: bumping the version revokes every token issued
before it, and rotating the admin key revokes them all. Secrets are compared in
constant time and never logged or put into an error message.

Several processes on one database (``shared`` stores) share all of it: each is given
the same key (``UBLOX_ADMIN_KEY``, or the same key file), so a token signed by one is
valid on all; token versions live in the database and each request reads them again
(``operation._identify``), so a revocation on one process counts on every other.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import jwt

ADMIN_KEY_ENV = "UBLOX_ADMIN_KEY"
ADMIN_KEY_FILE = "admin.key"
MIN_KEY_LENGTH = 16
DEFAULT_TOKEN_TTL = 3600


class AuthSetupError(ValueError):
    """The admin key cannot be used (too short, unreadable)."""


def admin_key_path(home: Path) -> Path:
    return home / ADMIN_KEY_FILE


def load_admin_key(home: Path, *, create: bool = True) -> tuple[str, Path | None, bool]:
    """(key, file or None when from the environment, whether the file was just created)."""
    from_env = os.environ.get(ADMIN_KEY_ENV)
    if from_env is not None:
        if len(from_env) < MIN_KEY_LENGTH:
            raise AuthSetupError(f"{ADMIN_KEY_ENV} must be at least {MIN_KEY_LENGTH} characters")
        return from_env, None, False
    path = admin_key_path(home)
    try:
        key = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not create:
            raise AuthSetupError(f"no admin key at {path}") from None
        home.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        # O_EXCL: two servers starting at once never overwrite each other's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())
        return key, path, True
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthSetupError(
            f"cannot read the admin key file {path}: {exc.__class__.__name__}"
        ) from None
    if len(key) < MIN_KEY_LENGTH:
        raise AuthSetupError(f"the admin key in {path} is shorter than {MIN_KEY_LENGTH} characters")
    return key, path, False


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["operator", "player"]
    player_id: str | None = None

    @property
    def name(self) -> str:
        """A stable name for scoping idempotency keys: one caller's keys never meet another's."""
        return "operator" if self.kind == "operator" else f"player:{self.player_id}"


OPERATOR = Principal("operator")


@dataclass(eq=False)
class Authority:
    """Checks credentials and issues player tokens. ``versions`` mirrors the store."""

    admin_key: str
    token_ttl: int = DEFAULT_TOKEN_TTL
    wall_time: Callable[[], float] = time.time
    versions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._secret = hmac.new(
            self.admin_key.encode(), b"ublox-sim player tokens v1", hashlib.sha256
        ).digest()

    def issue(self, player_id: str, ttl: int | None = None) -> tuple[str, datetime]:
        now = int(self.wall_time())
        expires = now + (ttl or self.token_ttl)
        claims = {
            "sub": player_id,
            "ver": self.versions.get(player_id, 0),
            "iat": now,
            "exp": expires,
            "typ": "player",
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return token, datetime.fromtimestamp(expires, UTC)

    def identify(self, credential: str) -> Principal | None:
        """The caller a bearer credential names, or None if it is not valid now."""
        if hmac.compare_digest(credential.encode(), self.admin_key.encode()):
            return OPERATOR
        try:
            # The expiry is checked below against wall_time (the wall clock, injectable
            # in tests), never the simulated clock; the signature by PyJWT.
            claims = jwt.decode(
                credential,
                self._secret,
                algorithms=["HS256"],
                options={
                    "require": ["sub", "ver", "exp", "typ"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            return None
        player_id, version, expires = claims.get("sub"), claims.get("ver"), claims.get("exp")
        if claims.get("typ") != "player" or not isinstance(player_id, str):
            return None
        if not isinstance(version, int) or not isinstance(expires, int | float):
            return None
        if expires <= self.wall_time():
            return None
        if version != self.versions.get(player_id, 0):
            return None  # revoked
        return Principal("player", player_id)
