"""World images: phase as hue on a cyclic wheel, local coherence as brightness, a valid PNG."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from ublox_sim.core.world import WorldParams, new_world, order_parameter, step_world
from ublox_sim.server.heatmap import (
    MIN_BRIGHTNESS,
    hue_spread,
    local_coherence,
    phase_rgb,
    world_png,
    world_rgb,
)


def decode(png: bytes) -> np.ndarray:
    """Our own PNGs back to RGB (8-bit RGB, filter 0 on every row)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", data[:8])
            assert data[8:] == bytes([8, 2, 0, 0, 0])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_the_png_decodes_to_the_drawn_cells_each_scale_pixels_wide() -> None:
    theta = np.random.default_rng(1).uniform(0, 2 * np.pi, (8, 6))
    image = decode(world_png(theta, scale=3))
    assert image.shape == (24, 18, 3)
    assert (image[::3, ::3] == world_rgb(theta)).all()


def test_the_colour_wheel_is_cyclic_and_tells_phases_apart() -> None:
    theta = np.linspace(0, 2 * np.pi, 13)
    rgb = phase_rgb(theta)
    assert rgb[0] == pytest.approx(rgb[-1])  # 0 and 2π: one colour
    assert np.abs(rgb[0] - rgb[6]).max() > 0.9  # π apart: far apart in colour


def test_brightness_is_local_coherence() -> None:
    locked = np.full((16, 16), 1.3)
    assert local_coherence(locked) == pytest.approx(np.ones((16, 16)))
    checker = np.indices((16, 16)).sum(axis=0) % 2 * np.pi  # every neighbour opposite
    assert local_coherence(checker) == pytest.approx(np.zeros((16, 16)), abs=1e-12)
    random = np.random.default_rng(2).uniform(0, 2 * np.pi, (64, 64))
    assert local_coherence(random).mean() == pytest.approx(0.5, abs=0.05)
    # Locked: the wheel's colour at full brightness; opposite: at the floor.
    assert (world_rgb(locked) == np.round(255 * phase_rgb(locked))).all()
    floor = np.round(255 * MIN_BRIGHTNESS * phase_rgb(checker))
    assert (world_rgb(checker) == floor).all()


def test_a_less_coherent_world_draws_more_varied_hues() -> None:
    rng = np.random.default_rng(7)
    params = WorldParams(size=32)
    world = new_world(params, rng)
    calm = step_world(world["theta"], world["omega"] * 0, params, 400)  # no spread: it locks
    turbulent = rng.uniform(0, 2 * np.pi, (32, 32))
    assert order_parameter(calm) > order_parameter(turbulent) + 0.3
    assert hue_spread(decode(world_png(turbulent))) > hue_spread(decode(world_png(calm))) + 0.2
    assert hue_spread(decode(world_png(np.full((4, 4), 2.0)))) == pytest.approx(0, abs=1e-9)


def test_a_world_that_is_not_a_2d_array_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        world_png(np.zeros(5))
