"""World images: a PTO's phase field as a PNG, with numpy and a tiny encoder only.

Each cell's **hue is its phase** θ on a cyclic colour wheel (θ and θ + 2π get the
same colour, so phase waves show as colour bands and a vortex as a point all
colours wind around), and its **brightness is its local coherence**: its mean
``(1 + cos(θ_nb − θ)) / 2`` with its four neighbours, 1 where they agree, 0 where
they are opposite (½ on average for random phases). A locked patch is one bright,
even colour; turbulence is dim speckle, and a vortex core a dark point. The dashboard's legend draws the same wheel
(``PALETTE_JS`` in dashboard.html uses the same formula as ``phase_rgb``).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

# Brightness never goes fully black, so the hue of an incoherent cell is still legible.
MIN_BRIGHTNESS = 0.25


def local_coherence(theta: NDArray[np.floating]) -> F64:
    """Per cell, 0..1: its mean coherence ``(1 + cos(θ_nb − θ)) / 2`` with its four
    neighbours (wrapping), the design's coherence formula: 1 in phase, 0 opposite."""
    z = np.exp(1j * np.asarray(theta, dtype=np.float64))
    around = np.roll(z, 1, 0) + np.roll(z, -1, 0) + np.roll(z, 1, 1) + np.roll(z, -1, 1)
    mean_cos = np.real(around * np.conj(z)) / 4.0
    return np.asarray(np.clip((1.0 + mean_cos) / 2.0, 0.0, 1.0), dtype=np.float64)


def phase_rgb(theta: NDArray[np.floating]) -> F64:
    """A cyclic colour wheel: phase → RGB in 0..1 (three cosines 120° apart)."""
    t = np.asarray(theta, dtype=np.float64)[..., None]
    shifts = np.array([0.0, -2 * np.pi / 3, 2 * np.pi / 3])
    return np.asarray(0.5 + 0.5 * np.cos(t + shifts), dtype=np.float64)


def world_rgb(theta: NDArray[np.floating]) -> NDArray[np.uint8]:
    """The world's cells as 8-bit RGB: hue from phase, brightness from local coherence."""
    brightness = MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * local_coherence(theta)
    rgb = phase_rgb(theta) * brightness[..., None]
    return np.asarray(np.round(rgb * 255), dtype=np.uint8)


def world_png(theta: np.ndarray, scale: int = 4) -> bytes:
    """The world's phase field as a PNG, each cell ``scale`` × ``scale`` pixels."""
    if theta.ndim != 2 or theta.size == 0:
        raise ValueError(f"a world's theta is a non-empty 2-D array, got shape {theta.shape}")
    rgb = world_rgb(theta)
    return png(np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1))


def png(rgb: np.ndarray) -> bytes:
    """A minimal PNG encoder (8-bit RGB, no filters): no image library needed."""
    height, width, _ = rgb.shape
    pixels = np.asarray(rgb, dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def hue_spread(rgb: NDArray[np.integer]) -> float:
    """How much the hues of an RGB image vary: circular variance of hue, 0 (one hue) to 1.

    For tests and tools that check an image carries the field's structure."""
    pixels = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    mx, mn = pixels.max(axis=1), pixels.min(axis=1)
    chroma = mx - mn
    keep = chroma > 1e-9
    if not keep.any():
        return 0.0
    r, g, b = pixels[keep].T
    # The hue angle of the usual hexagonal model, as a point on the circle.
    angle = np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)
    return float(1.0 - np.abs(np.mean(np.exp(1j * angle))))


__all__ = ["hue_spread", "local_coherence", "phase_rgb", "png", "world_png", "world_rgb"]
