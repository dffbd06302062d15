"""The world image: a PNG of a world's local coherence (kept small so it can be swapped).

``world_png(theta)`` is the whole interface the routes use.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def coherence_field(theta: np.ndarray) -> np.ndarray:
    """Local coherence per cell, 0..1: how in phase a cell is with its four neighbours."""
    return np.clip((1.0 + _local_order(theta)) / 2, 0, 1)


def _local_order(theta: np.ndarray) -> np.ndarray:
    z = np.exp(1j * theta)
    around = np.roll(z, 1, 0) + np.roll(z, -1, 0) + np.roll(z, 1, 1) + np.roll(z, -1, 1)
    return np.asarray(np.real(around * np.conj(z)) / 4.0)  # mean cos(θ_nb − θ), −1..1


def png(rgb: np.ndarray) -> bytes:
    """A minimal PNG encoder (8-bit RGB, no filters): no image library needed."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].astype(np.uint8).tobytes() for row in range(height))

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


def heatmap(values: np.ndarray, scale: int = 4) -> bytes:
    """0..1 values → a dark-blue → teal → yellow PNG, each cell ``scale`` pixels wide."""
    stops = np.array([[13, 8, 135], [33, 145, 140], [253, 231, 37]], dtype=float)
    v = np.clip(values, 0, 1) * 2
    low = np.floor(v).clip(0, 1).astype(int)
    frac = (v - low)[..., None]
    rgb = stops[low] * (1 - frac) + stops[low + 1] * frac
    return png(np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1))


def world_png(theta: np.ndarray) -> bytes:
    return heatmap(coherence_field(theta))
