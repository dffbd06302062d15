"""Deterministic per-entity draws: the same (seed, kind, id) gives the same numbers on
every path, in any batch and any order, at the cost of one keyed hash per entity.

``Draws(entropy).uniforms(kind, ident)`` is five uniforms in [0, 1) taken from a keyed
BLAKE2b digest of ``kind:id`` (53 bits each, as numpy does for doubles); a normal
comes from two of them by Box-Muller. Cheaper than a numpy generator per entity
(a SeedSequence costs ~10 us); used for what registration draws."""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable

_UNPACK = struct.Struct("<5Q").unpack
_SCALE = 2.0**-53
_TWO_PI = 2.0 * math.pi


class Draws:
    """Uniforms keyed by the engine's entropy (an int, as ``SeedSequence.entropy``)."""

    __slots__ = ("_base",)

    def __init__(self, entropy: int) -> None:
        key = entropy.to_bytes(max(1, (entropy.bit_length() + 7) // 8), "little")
        if len(key) > 64:  # BLAKE2b's key limit; fold a longer entropy down
            key = hashlib.blake2b(key).digest()
        self._base = hashlib.blake2b(key=key, digest_size=40, person=b"ublox-draws")

    def uniforms(self, kind: str, ident: str) -> tuple[float, float, float, float, float]:
        """Five independent uniforms in [0, 1) for one entity."""
        h = self._base.copy()
        h.update(f"{kind}:{ident}".encode())
        a, b, c, d, e = _UNPACK(h.digest())
        s = _SCALE
        return (a >> 11) * s, (b >> 11) * s, (c >> 11) * s, (d >> 11) * s, (e >> 11) * s

    def of_kind(self, kind: str) -> Callable[[str], tuple[float, float, float, float, float]]:
        """``uniforms(kind, ident)`` as a function of ``ident``, the key and ``kind:``
        hashed once (for a bulk path: the same numbers, a tenth cheaper)."""
        prefixed = self._base.copy()
        prefixed.update(f"{kind}:".encode())
        copy, unpack, s = prefixed.copy, _UNPACK, _SCALE

        def uniforms(ident: str) -> tuple[float, float, float, float, float]:
            h = copy()
            h.update(ident.encode())
            a, b, c, d, e = unpack(h.digest())
            return (a >> 11) * s, (b >> 11) * s, (c >> 11) * s, (d >> 11) * s, (e >> 11) * s

        return uniforms


def normal(u1: float, u2: float, mean: float, spread: float) -> float:
    """A normal draw from two uniforms in [0, 1) (Box-Muller; ``1 - u1`` is never 0)."""
    return mean + spread * math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(_TWO_PI * u2)
