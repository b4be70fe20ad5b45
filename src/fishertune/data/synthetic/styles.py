"""Rendering styles (domains) of a :class:`~fishertune.data.synthetic.scenes.Scene`.

``source`` is the labelled training domain: a flat, game-like rendering of the scene's base
colours with simple shading. The unseen target domains change the image formation, never the
layout, so every style of a scene has the same label map:

* ``fog``: Koschmieder haze, ``I = J·t + A·(1 − t)`` with transmission ``t = exp(−β·depth)``
  and a grey airlight ``A``;
* ``night``: dim bluish ambient light, street-lamp light pools, emissive windows, car lights and
  signals with glow, a camera gamma and sensor (shot and read) noise;
* ``rain``: darker, desaturated, wet (reflective) ground, light haze, slanted rain streaks and a
  slight blur;
* ``snow``: patchy snow cover on upward-facing surfaces, overcast sky, brighter and less
  saturated image, falling snowflakes;
* ``palette``: a fixed per-class hue rotation and saturation change plus texture noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from fishertune.data.synthetic.scenes import Scene, value_noise
from fishertune.label_space import ROAD, SKY, VEGETATION

__all__ = ["STYLES", "TARGET_STYLES", "render_style"]

STYLES: tuple[str, ...] = ("source", "fog", "night", "rain", "snow", "palette")
"""Every style: the labelled source domain first, then the unseen target domains."""
TARGET_STYLES: tuple[str, ...] = STYLES[1:]
"""The unseen target domains."""

FloatImage = NDArray[np.float32]

_PALETTE_SEED = 20240611
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _grey(image: FloatImage) -> FloatImage:
    """Luminance of an (H, W, 3) image, shape (H, W, 1)."""
    return np.asarray(image @ _LUMA, dtype=np.float32)[..., None]


def _saturate(image: FloatImage, factor: float) -> FloatImage:
    """Scale the chroma of ``image`` by ``factor`` around its luminance."""
    grey = _grey(image)
    return np.asarray(grey + (image - grey) * factor, dtype=np.float32)


def _haze(scene: Scene, image: FloatImage, beta: float, airlight: FloatImage) -> FloatImage:
    """Atmospheric scattering: blend towards ``airlight`` with transmission exp(−β·depth)."""
    transmission = np.exp(-beta * scene.depth)[..., None].astype(np.float32)
    return np.asarray(image * transmission + airlight * (1 - transmission), dtype=np.float32)


def _box_blur(image: FloatImage) -> FloatImage:
    """A 3×3 box blur with edge replication."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    total = sum(padded[i : i + height, j : j + width] for i in range(3) for j in range(3))
    return np.asarray(total / 9.0, dtype=np.float32)


def _blob(
    out: FloatImage, row: float, col: float, sigma: float, colour: FloatImage, flat: float = 1.0
) -> None:
    """Add a Gaussian blob (vertically squashed by ``flat``) of ``colour`` to ``out`` in place."""
    height, width = out.shape[:2]
    reach = 3.0 * sigma
    r0, r1 = max(int(row - reach * flat), 0), min(int(row + reach * flat) + 1, height)
    c0, c1 = max(int(col - reach), 0), min(int(col + reach) + 1, width)
    if r0 >= r1 or c0 >= c1:
        return
    rows = (np.arange(r0, r1, dtype=np.float32) + 0.5 - row) / flat
    cols = np.arange(c0, c1, dtype=np.float32) + 0.5 - col
    weight = np.outer(np.exp(-(rows**2) / (2 * sigma**2)), np.exp(-(cols**2) / (2 * sigma**2)))
    out[r0:r1, c0:c1] += weight[..., None] * colour


def _source(scene: Scene, rng: np.random.Generator) -> FloatImage:
    """Flat game-like rendering: saturated base colours times simple shading."""
    del rng
    return _saturate(scene.albedo * scene.shade[..., None], 1.15)


def _fog(scene: Scene, rng: np.random.Generator) -> FloatImage:
    """Depth-dependent haze (visibility roughly 75–200 m) towards a grey airlight."""
    beta = float(rng.uniform(0.015, 0.04))
    airlight = np.full(3, rng.uniform(0.72, 0.85), dtype=np.float32) * np.array(
        (0.98, 1.0, 1.02), dtype=np.float32
    )
    return _haze(scene, _saturate(_source(scene, rng), 0.85), beta, airlight)


def _night(scene: Scene, rng: np.random.Generator) -> FloatImage:
    """Low light: ambient + lamp pools + emitters with glow, camera gamma, sensor noise."""
    height, width = scene.label.shape
    ambient = float(rng.uniform(0.05, 0.09))
    light = np.zeros((height, width, 3), dtype=np.float32)
    light += ambient * np.array((0.6, 0.7, 1.0), dtype=np.float32)
    glow = np.zeros_like(light)
    for lamp in scene.lights:
        colour = np.array(lamp.colour, dtype=np.float32)
        if lamp.ground_row is not None:
            spread = min(max(lamp.ground_row - lamp.row, 1.0), 0.25 * width)
            _blob(light, lamp.ground_row, lamp.col, 0.6 * spread, 0.5 * colour, flat=0.35)
            _blob(light, (lamp.row + lamp.ground_row) / 2, lamp.col, 0.35 * spread, 0.2 * colour)
        _blob(glow, lamp.row, lamp.col, 2.5 * lamp.radius + 0.8, 0.5 * colour)
        _blob(glow, lamp.row, lamp.col, 0.7 * lamp.radius + 0.4, 1.2 * colour)
    sky = (scene.label == SKY)[..., None]
    albedo = np.where(sky, np.float32(0.25), scene.albedo)
    linear = albedo * scene.shade[..., None] * light + scene.emission + glow
    gamma = float(rng.uniform(1.6, 2.0))
    image = np.clip(linear, 0.0, 1.0) ** (1.0 / gamma) * 0.6
    shot = np.sqrt(np.clip(image, 0, 1)) * rng.normal(0.0, 0.03, size=image.shape)
    read = rng.normal(0.0, 0.015, size=image.shape)
    return np.asarray(image + shot + read, dtype=np.float32)


def _rain(scene: Scene, rng: np.random.Generator) -> FloatImage:
    """Wet look, light haze, slanted rain streaks and a slight blur."""
    height, width = scene.label.shape
    image = _saturate(_source(scene, rng), 0.7) * 0.72
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    grazing = np.clip(1.0 - (rows - scene.horizon) / max(height - scene.horizon, 1.0), 0, 1)
    reflect = (0.1 + 0.3 * grazing**2)[..., None] * scene.horizontal[..., None]
    sky = np.array((0.55, 0.58, 0.62), dtype=np.float32)
    image = np.where(scene.horizontal[..., None], image * 0.75, image) + reflect * sky
    image = np.where((scene.label == SKY)[..., None], sky, image)
    image = _haze(scene, image, float(rng.uniform(0.006, 0.012)), sky)
    streaks = np.zeros((height, width), dtype=np.float32)
    count = int(height * width * rng.uniform(0.012, 0.02))
    length = rng.integers(int(0.05 * height) + 2, int(0.12 * height) + 3, size=count)
    angle = float(rng.uniform(-0.35, 0.35))
    start_r = rng.uniform(-0.1 * height, height, size=count)
    start_c = rng.uniform(0, width, size=count)
    steps = np.arange(int(length.max()))
    along = np.where(steps[None, :] < length[:, None], steps[None, :], -10_000)
    r = np.round(start_r[:, None] + along * np.cos(angle)).astype(np.int64)
    c = np.round(start_c[:, None] + along * np.sin(angle)).astype(np.int64)
    keep = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    strength = rng.uniform(0.2, 0.5, size=count)[:, None] * np.ones_like(along)
    np.add.at(streaks, (r[keep], c[keep]), strength[keep])
    alpha = np.clip(streaks, 0, 0.6)[..., None]
    image = image * (1 - alpha) + 0.85 * alpha
    return np.asarray(0.5 * image + 0.5 * _box_blur(image), dtype=np.float32)


def _snow(scene: Scene, rng: np.random.Generator) -> FloatImage:
    """Snow cover on upward-facing surfaces, overcast sky, bright flat light, snowflakes."""
    height, width = scene.label.shape
    image = _saturate(_source(scene, rng), 0.6) * 0.9 + 0.08
    patches = value_noise(rng, (height, width), (8, 16)) * 0.6
    patches += value_noise(rng, (height, width), (32, 64)) * 0.4
    threshold = np.where(scene.label == ROAD, 0.5, 0.3)
    cover = np.clip((patches - threshold) * 6.0, 0, 1) * scene.horizontal
    foliage = (scene.label == VEGETATION) & (patches > 0.5)
    cover = np.where(foliage, 0.7, cover)[..., None]
    white = np.array((0.93, 0.95, 0.98), dtype=np.float32) * scene.shade[..., None]
    image = image * (1 - cover) + white * cover
    overcast = np.array((0.82, 0.84, 0.86), dtype=np.float32)
    image = np.where((scene.label == SKY)[..., None], overcast, image)
    image = _haze(scene, image, float(rng.uniform(0.006, 0.015)), overcast)
    count = int(height * width * rng.uniform(0.01, 0.02))
    rows = rng.integers(0, height, size=count)
    cols = rng.integers(0, width, size=count)
    flake = rng.uniform(0.5, 0.9, size=count)[:, None]
    image[rows, cols] = image[rows, cols] * (1 - flake) + flake
    big = count // 4
    for dr, dc in ((0, 1), (1, 0), (1, 1)):
        rr = np.minimum(rows[:big] + dr, height - 1)
        cc = np.minimum(cols[:big] + dc, width - 1)
        image[rr, cc] = image[rr, cc] * (1 - flake[:big]) + flake[:big]
    return np.asarray(image, dtype=np.float32)


_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


def _palette(scene: Scene, rng: np.random.Generator) -> FloatImage:
    """A fixed per-class hue rotation and saturation change plus multi-scale texture noise."""
    mapping = np.random.default_rng(_PALETTE_SEED)
    angles = mapping.uniform(0.6, np.pi, size=256) * mapping.choice((-1.0, 1.0), size=256)
    chroma = mapping.uniform(0.7, 1.6, size=256)
    bright = mapping.uniform(0.8, 1.2, size=256)
    yiq = _source(scene, rng) @ _YIQ.T
    theta = angles[scene.label]
    cos, sin = np.cos(theta) * chroma[scene.label], np.sin(theta) * chroma[scene.label]
    i, q = yiq[..., 1], yiq[..., 2]
    yiq = np.stack((yiq[..., 0] * bright[scene.label], cos * i - sin * q, sin * i + cos * q), -1)
    image = yiq @ _RGB.T
    height, width = scene.label.shape
    texture = value_noise(rng, (height, width), (16, 32)) - 0.5
    texture += 0.5 * (value_noise(rng, (height, width), (48, 96)) - 0.5)
    grain = rng.normal(0.0, 0.03, size=(height, width))
    return np.asarray(image * (1.0 + 0.5 * texture + grain)[..., None], dtype=np.float32)


_RENDERERS: dict[str, Callable[[Scene, np.random.Generator], FloatImage]] = {
    "source": _source,
    "fog": _fog,
    "night": _night,
    "rain": _rain,
    "snow": _snow,
    "palette": _palette,
}


def render_style(scene: Scene, style: str, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Render ``scene`` in ``style`` as an (H, W, 3) uint8 RGB image; ValueError if unknown.

    ``rng`` drives the style's own randomness (haze density, noise, streaks, flakes), so a
    fixed ``rng`` seed gives the same image.
    """
    if style not in _RENDERERS:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    image = _RENDERERS[style](scene, rng)
    return np.asarray(np.round(np.clip(image, 0.0, 1.0) * 255.0), dtype=np.uint8)
