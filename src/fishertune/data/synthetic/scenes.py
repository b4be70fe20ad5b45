"""Procedural street scenes: a perspective layout, its Cityscapes labels and its content maps.

A scene is generated from a numpy Generator. A pinhole camera at height ``h`` looks along a
straight street; a ground point at lateral offset ``x`` and depth ``z`` (metres) projects to
column ``cx + f·x/z`` and row ``horizon + f·h/z``, so an object standing at depth ``z`` is
``f/z`` pixels per metre: farther objects are smaller and higher. Stuff (sky, road, sidewalks,
terrain, facades) is painted per pixel from that geometry; things (cars, people, poles, ...)
are painted far to near from simple primitives, so nearer objects occlude farther ones.

The label is the semantic map; the *content* that the styles render is a per-pixel base
colour (``albedo``) with its texture, a shading factor, a depth map, a mask of upward-facing
surfaces, an emission map and a list of point lights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fishertune.label_space import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRUCK,
    VEGETATION,
    WALL,
)

__all__ = [
    "IMAGE_SIZE",
    "SKY_DEPTH",
    "Light",
    "Scene",
    "SceneObject",
    "generate_scene",
    "value_noise",
]

IMAGE_SIZE = (128, 256)
"""The default image size ``(H, W)`` of a scene."""

SKY_DEPTH = 1000.0
"""Depth (metres) assigned to sky pixels."""
_MAX_GROUND_DEPTH = 300.0
_MAX_FACADE_DEPTH = 250.0

Colour = tuple[float, float, float]
FloatMap = NDArray[np.float32]


@dataclass(frozen=True)
class Light:
    """A point light source in image coordinates (used by the night style).

    ``radius`` is the lamp's apparent radius in pixels; ``ground_row`` is the row of the ground
    below a street lamp, which it illuminates, or None for lights that cast no visible pool.
    """

    row: float
    col: float
    radius: float
    colour: Colour
    ground_row: float | None = None


@dataclass(frozen=True)
class SceneObject:
    """One painted thing: its instance id (in :attr:`Scene.instance`), class and depth."""

    instance: int
    category: int
    depth: float


@dataclass
class Scene:
    """A generated street scene: labels plus the content maps the styles render.

    ``label`` (H, W) int64 Cityscapes train ids; ``depth`` (H, W) metres (sky: ``SKY_DEPTH``);
    ``albedo`` (H, W, 3) base colour with texture in [0, 1]; ``shade`` (H, W) simple shading
    factor; ``emission`` (H, W, 3) light emitted at night (lit windows, lamps, car lights);
    ``instance`` (H, W) int32 thing ids (0 for stuff); ``horizontal`` (H, W) upward-facing
    surfaces (where snow settles); ``lights`` point lights; ``horizon`` the horizon row.
    """

    label: NDArray[np.int64]
    depth: FloatMap
    albedo: FloatMap
    shade: FloatMap
    emission: FloatMap
    instance: NDArray[np.int32]
    horizontal: NDArray[np.bool_]
    horizon: float
    lights: list[Light] = field(default_factory=list)
    objects: list[SceneObject] = field(default_factory=list)


def value_noise(
    rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]
) -> FloatMap:
    """Smooth noise in [0, 1]: a ``cells`` grid of uniform values, bilinearly upsampled."""
    height, width = shape
    grid = rng.random((cells[0] + 1, cells[1] + 1), dtype=np.float32)
    rows = np.linspace(0.0, cells[0], height, dtype=np.float32)
    cols = np.linspace(0.0, cells[1], width, dtype=np.float32)
    r0 = np.minimum(rows.astype(np.int64), cells[0] - 1)
    c0 = np.minimum(cols.astype(np.int64), cells[1] - 1)
    fr = (rows - r0)[:, None]
    fc = (cols - c0)[None, :]
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
    bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
    return np.asarray(top * (1 - fr) + bottom * fr, dtype=np.float32)


def _hash01(a: NDArray[np.floating], b: NDArray[np.floating], salt: float) -> FloatMap:
    """A deterministic pseudo-random value in [0, 1) per integer cell ``(a, b)``."""
    value = np.sin(a * 12.9898 + b * 78.233 + salt * 37.719) * 43758.5453
    return np.asarray(value - np.floor(value), dtype=np.float32)


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera looking along +z at height ``height`` (metres)."""

    horizon: float
    cx: float
    focal: float
    height: float

    def ground_row(self, z: float) -> float:
        """Image row of the ground at depth ``z``."""
        return self.horizon + self.focal * self.height / z

    def column(self, x: float, z: float) -> float:
        """Image column of lateral offset ``x`` at depth ``z``."""
        return self.cx + self.focal * x / z


@dataclass(frozen=True)
class _Anchor:
    """Where an object stands: ground pixel, pixels per metre, depth and instance id."""

    col: float
    row: float
    scale: float
    depth: float
    instance: int


class _Canvas:
    """The scene's maps under construction, with primitives painted in object metres."""

    def __init__(self, height: int, width: int, camera: _Camera) -> None:
        self.height = height
        self.width = width
        self.camera = camera
        self.label = np.full((height, width), SKY, dtype=np.int64)
        self.depth = np.full((height, width), SKY_DEPTH, dtype=np.float32)
        self.albedo = np.zeros((height, width, 3), dtype=np.float32)
        self.shade = np.ones((height, width), dtype=np.float32)
        self.emission = np.zeros((height, width, 3), dtype=np.float32)
        self.instance = np.zeros((height, width), dtype=np.int32)
        self.horizontal = np.zeros((height, width), dtype=np.bool_)
        self.lights: list[Light] = []
        self.objects: list[SceneObject] = []

    def anchor(self, x: float, z: float, category: int) -> _Anchor:
        """Register a new object standing at ground point ``(x, z)``."""
        instance = len(self.objects) + 1
        self.objects.append(SceneObject(instance, category, z))
        cam = self.camera
        return _Anchor(cam.column(x, z), cam.ground_row(z), cam.focal / z, z, instance)

    def _bbox(
        self, at: _Anchor, x0: float, x1: float, y0: float, y1: float
    ) -> tuple[int, int, int, int, float, float, float, float] | None:
        """Pixel box (clipped) of an object-space box, and its unclipped float extent."""
        c0, c1 = at.col + at.scale * x0, at.col + at.scale * x1
        r0, r1 = at.row - at.scale * y1, at.row - at.scale * y0
        ic0 = round(c0)
        ic1 = max(round(c1), ic0 + 1)
        ir0 = round(r0)
        ir1 = max(round(r1), ir0 + 1)
        ic0, ic1 = max(ic0, 0), min(ic1, self.width)
        ir0, ir1 = max(ir0, 0), min(ir1, self.height)
        if ic0 >= ic1 or ir0 >= ir1:
            return None
        return ir0, ir1, ic0, ic1, r0, r1, c0, c1

    def _write(
        self,
        at: _Anchor,
        box: tuple[int, int, int, int],
        mask: NDArray[np.bool_] | None,
        category: int,
        colour: Colour,
        shade: float,
        glow: Colour | None,
        horizontal: bool,
    ) -> None:
        """Assign every map inside ``box`` (where ``mask``) for one primitive."""
        ir0, ir1, ic0, ic1 = box
        region = (slice(ir0, ir1), slice(ic0, ic1))
        sel: NDArray[np.bool_] | slice = slice(None) if mask is None else mask
        self.label[region][sel] = category
        self.depth[region][sel] = at.depth
        self.albedo[region][sel] = colour
        self.shade[region][sel] = shade
        self.emission[region][sel] = (0.0, 0.0, 0.0) if glow is None else glow
        self.instance[region][sel] = at.instance
        self.horizontal[region][sel] = horizontal

    def box(
        self,
        at: _Anchor,
        extent: tuple[float, float, float, float],
        category: int,
        colour: Colour,
        *,
        shade: float = 1.0,
        glow: Colour | None = None,
        horizontal: bool = False,
    ) -> None:
        """Paint the box ``extent = (x0, x1, y0, y1)`` metres (x right, y up from the ground)."""
        found = self._bbox(at, *extent)
        if found is not None:
            self._write(at, found[:4], None, category, colour, shade, glow, horizontal)

    def ellipse(
        self,
        at: _Anchor,
        centre: tuple[float, float],
        radii: tuple[float, float],
        category: int,
        colour: Colour,
        *,
        shade: float = 1.0,
        glow: Colour | None = None,
        ring: float = 0.0,
    ) -> None:
        """Paint an ellipse (or, with ``ring`` > 0, an annulus whose hole is ``ring`` of it)."""
        (xc, yc), (rx, ry) = centre, radii
        found = self._bbox(at, xc - rx, xc + rx, yc - ry, yc + ry)
        if found is None:
            return
        ir0, ir1, ic0, ic1, r0, r1, c0, c1 = found
        rows = (np.arange(ir0, ir1, dtype=np.float32) + 0.5 - (r0 + r1) / 2) / max(
            (r1 - r0) / 2, 0.5
        )
        cols = (np.arange(ic0, ic1, dtype=np.float32) + 0.5 - (c0 + c1) / 2) / max(
            (c1 - c0) / 2, 0.5
        )
        dist = rows[:, None] ** 2 + cols[None, :] ** 2
        mask = dist <= 1.0
        if ring > 0.0 and min(r1 - r0, c1 - c0) > 4:
            mask &= dist >= ring**2
        if not mask.any():
            mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
        self._write(at, (ir0, ir1, ic0, ic1), mask, category, colour, shade, glow, False)

    def light(self, at: _Anchor, x: float, y: float, size: float, colour: Colour) -> None:
        """Add a point light at object-space ``(x, y)``; lamps above 3 m light the ground."""
        row = at.row - at.scale * y
        ground = at.row if y > 3.0 else None
        self.lights.append(
            Light(row, at.col + at.scale * x, max(at.scale * size, 0.6), colour, ground)
        )


def _jitter(rng: np.random.Generator, colour: Colour, amount: float = 0.08) -> Colour:
    """``colour`` with a small random brightness/tint change."""
    scale = 1.0 + rng.uniform(-amount, amount)
    shift = rng.uniform(-amount / 2, amount / 2, size=3)
    r, g, b = (min(max(float(c * scale + d), 0.0), 1.0) for c, d in zip(colour, shift, strict=True))
    return (r, g, b)


_CAR_COLOURS: tuple[Colour, ...] = (
    (0.75, 0.1, 0.1),
    (0.1, 0.25, 0.7),
    (0.9, 0.9, 0.9),
    (0.15, 0.15, 0.17),
    (0.55, 0.56, 0.6),
    (0.85, 0.75, 0.1),
    (0.1, 0.5, 0.25),
)
_SHIRTS: tuple[Colour, ...] = (
    (0.8, 0.2, 0.2),
    (0.2, 0.4, 0.8),
    (0.9, 0.8, 0.2),
    (0.3, 0.6, 0.3),
    (0.85, 0.85, 0.85),
    (0.5, 0.2, 0.6),
)
_FACADES: tuple[Colour, ...] = (
    (0.78, 0.7, 0.55),
    (0.65, 0.35, 0.28),
    (0.7, 0.7, 0.72),
    (0.85, 0.8, 0.7),
    (0.55, 0.5, 0.45),
    (0.8, 0.6, 0.45),
)
_GLASS: Colour = (0.22, 0.28, 0.36)
_TYRE: Colour = (0.08, 0.08, 0.08)
_WARM: Colour = (1.0, 0.85, 0.55)
_RED_LAMP: Colour = (1.0, 0.1, 0.05)
_HEADLIGHT: Colour = (1.0, 0.97, 0.85)


def _car(canvas: _Canvas, rng: np.random.Generator, x: float, z: float, oncoming: bool) -> None:
    """A car seen from behind (or from the front when ``oncoming``)."""
    at = canvas.anchor(x, z, CAR)
    w = rng.uniform(1.7, 1.95) / 2
    top = rng.uniform(1.4, 1.6)
    body = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))])
    canvas.box(at, (-w, w, 0.3, 0.95), CAR, body, shade=0.9)
    canvas.box(at, (-0.85 * w, 0.85 * w, 0.95, top), CAR, body, shade=1.0, horizontal=True)
    canvas.box(at, (-0.72 * w, 0.72 * w, 1.0, top - 0.08), CAR, _GLASS, shade=0.9)
    for side in (-1.0, 1.0):
        canvas.box(at, (side * w - 0.22, side * w + 0.22, 0.0, 0.4), CAR, _TYRE)
        lamp = _HEADLIGHT if oncoming else _RED_LAMP
        span = (side * w - 0.3, side * w) if side > 0 else (side * w, side * w + 0.3)
        canvas.box(at, (min(span), max(span), 0.65, 0.82), CAR, lamp, glow=lamp)
        canvas.light(at, side * (w - 0.15), 0.73, 0.12 if oncoming else 0.08, lamp)
    canvas.box(at, (-w, w, 0.22, 0.32), CAR, (0.12, 0.12, 0.12), shade=0.8)


def _big_vehicle(canvas: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A truck (box body, dark cab glass) or a bus (window band), seen from behind."""
    category = BUS if rng.random() < 0.5 else TRUCK
    at = canvas.anchor(x, z, category)
    w = rng.uniform(2.4, 2.6) / 2
    if category == BUS:
        top = rng.uniform(3.0, 3.3)
        colour = _jitter(
            rng, ((0.9, 0.75, 0.1), (0.8, 0.15, 0.15), (0.2, 0.45, 0.75))[rng.integers(3)]
        )
        canvas.box(at, (-w, w, 0.3, top), BUS, colour, shade=0.92, horizontal=True)
        canvas.box(at, (-0.9 * w, 0.9 * w, 1.6, top - 0.3), BUS, _GLASS)
    else:
        top = rng.uniform(3.2, 3.8)
        colour = _jitter(
            rng, ((0.85, 0.85, 0.85), (0.3, 0.4, 0.6), (0.6, 0.3, 0.2))[rng.integers(3)]
        )
        canvas.box(at, (-w, w, 0.5, top), TRUCK, colour, shade=0.9, horizontal=True)
        canvas.box(at, (-0.04, 0.04, 0.6, top - 0.2), TRUCK, (0.4, 0.4, 0.4), shade=0.8)
    for side in (-1.0, 1.0):
        canvas.box(at, (side * w - 0.3, side * w + 0.3, 0.0, 0.55), category, _TYRE)
        canvas.box(
            at, (side * w - 0.25, side * w + 0.25, 0.7, 0.9), category, _RED_LAMP, glow=_RED_LAMP
        )
        canvas.light(at, side * (w - 0.1), 0.8, 0.1, _RED_LAMP)


def _person(
    canvas: _Canvas, rng: np.random.Generator, at: _Anchor, base: float, category: int
) -> None:
    """A standing/sitting person whose feet (or seat) are at height ``base`` metres."""
    tall = rng.uniform(1.6, 1.9) if category == PERSON else rng.uniform(0.85, 1.0)
    shirt = _jitter(rng, _SHIRTS[rng.integers(len(_SHIRTS))])
    trousers = _jitter(rng, ((0.15, 0.15, 0.3), (0.2, 0.2, 0.2), (0.4, 0.3, 0.2))[rng.integers(3)])
    skin = _jitter(rng, ((0.9, 0.72, 0.58), (0.6, 0.42, 0.3), (0.4, 0.28, 0.2))[rng.integers(3)])
    legs = 0.47 * tall if category == PERSON else 0.0
    if category == PERSON:
        for side in (-1.0, 1.0):
            canvas.box(
                at, (side * 0.14 - 0.07, side * 0.14 + 0.07, base, base + legs), category, trousers
            )
    torso_top = base + legs + 0.35 * tall / (1.0 if category == PERSON else 0.55)
    canvas.box(at, (-0.22, 0.22, base + legs, torso_top), category, shirt)
    canvas.ellipse(at, (0.0, torso_top + 0.12), (0.11, 0.13), category, skin)


def _pedestrian(canvas: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A pedestrian standing on the sidewalk."""
    _person(canvas, rng, canvas.anchor(x, z, PERSON), 0.0, PERSON)


def _two_wheeler(
    canvas: _Canvas, rng: np.random.Generator, x: float, z: float, ridden: bool
) -> None:
    """A bicycle or motorcycle in side view, with a rider when ``ridden``."""
    category = MOTORCYCLE if ridden and rng.random() < 0.45 else BICYCLE
    at = canvas.anchor(x, z, category)
    frame = _jitter(rng, ((0.1, 0.1, 0.1), (0.7, 0.1, 0.1), (0.2, 0.3, 0.7))[rng.integers(3)])
    radius = 0.36 if category == BICYCLE else 0.33
    for side in (-1.0, 1.0):
        ring = 0.55 if category == BICYCLE else 0.4
        canvas.ellipse(at, (side * 0.6, radius), (radius, radius), category, _TYRE, ring=ring)
    if category == BICYCLE:
        canvas.box(at, (-0.6, 0.6, 0.55, 0.7), category, frame)
        canvas.box(at, (-0.08, 0.08, 0.3, 0.85), category, frame)
    else:
        canvas.ellipse(at, (0.0, 0.6), (0.55, 0.25), category, frame)
    if ridden:
        _person(canvas, rng, at, 0.8, RIDER)


def _pole(canvas: _Canvas, at: _Anchor, top: float, width: float = 0.3) -> None:
    """A grey vertical pole from the ground to ``top`` metres."""
    canvas.box(at, (-width / 2, width / 2, 0.0, top), POLE, (0.5, 0.5, 0.52), shade=0.95)


def _street_lamp(
    canvas: _Canvas, rng: np.random.Generator, x: float, z: float, towards: float
) -> None:
    """A street lamp whose arm leans towards the road (``towards`` = ±1)."""
    at = canvas.anchor(x, z, POLE)
    top = rng.uniform(6.0, 8.0)
    _pole(canvas, at, top)
    reach = towards * 1.2
    canvas.box(
        at, (min(0.0, reach), max(0.0, reach), top - 0.1, top + 0.05), POLE, (0.5, 0.5, 0.52)
    )
    canvas.ellipse(at, (reach, top - 0.15), (0.3, 0.12), POLE, (0.85, 0.85, 0.8), glow=_WARM)
    canvas.light(at, reach, top - 0.2, 0.3, _WARM)


def _traffic_sign(canvas: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A sign plate (round, square or rectangular) on a short pole."""
    at = canvas.anchor(x, z, TRAFFIC_SIGN)
    top = rng.uniform(2.4, 3.0)
    _pole(canvas, at, top, 0.15)
    shape = rng.integers(3)
    colour = ((0.85, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.85, 0.1))[rng.integers(3)]
    if shape == 0:
        canvas.ellipse(at, (0.0, top), (0.55, 0.55), TRAFFIC_SIGN, (0.95, 0.95, 0.95))
        canvas.ellipse(at, (0.0, top), (0.4, 0.4), TRAFFIC_SIGN, colour)
    elif shape == 1:
        canvas.box(at, (-0.5, 0.5, top - 0.5, top + 0.5), TRAFFIC_SIGN, colour)
    else:
        canvas.box(at, (-0.9, 0.9, top - 0.4, top + 0.4), TRAFFIC_SIGN, (0.1, 0.45, 0.2))


def _traffic_light(canvas: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A three-lamp traffic light on a pole, one lamp lit."""
    at = canvas.anchor(x, z, TRAFFIC_LIGHT)
    top = rng.uniform(3.6, 4.6)
    _pole(canvas, at, top - 1.5)
    canvas.box(at, (-0.35, 0.35, top - 1.6, top), TRAFFIC_LIGHT, (0.12, 0.12, 0.1))
    lit = int(rng.integers(3))
    colours: tuple[Colour, ...] = ((1.0, 0.1, 0.05), (1.0, 0.7, 0.0), (0.1, 1.0, 0.4))
    for i, colour in enumerate(colours):
        y = top - 0.28 - 0.52 * i
        if i == lit:
            canvas.ellipse(at, (0.0, y), (0.18, 0.18), TRAFFIC_LIGHT, colour, glow=colour)
            canvas.light(at, 0.0, y, 0.16, colour)
        else:
            dim = (colour[0] * 0.25, colour[1] * 0.25, colour[2] * 0.25)
            canvas.ellipse(at, (0.0, y), (0.18, 0.18), TRAFFIC_LIGHT, dim)


def _tree(canvas: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A tree: trunk and a crown of overlapping ellipses (all vegetation)."""
    at = canvas.anchor(x, z, VEGETATION)
    trunk = rng.uniform(1.8, 3.0)
    crown = rng.uniform(1.3, 2.6)
    canvas.box(at, (-0.14, 0.14, 0.0, trunk + 0.5), VEGETATION, (0.35, 0.25, 0.15))
    green = _jitter(rng, (0.2, 0.5, 0.15), 0.15)
    for _ in range(4):
        dx, dy = rng.uniform(-0.5, 0.5) * crown, rng.uniform(0.6, 1.3) * crown
        size = rng.uniform(0.6, 0.9) * crown
        shade = float(rng.uniform(0.75, 1.05))
        canvas.ellipse(at, (dx, trunk + dy), (size, size * 0.9), VEGETATION, green, shade=shade)


@dataclass(frozen=True)
class _Street:
    """Lateral layout (metres): road edges, sidewalk outer edges, facade lines, lanes."""

    road: tuple[float, float]
    walk: tuple[float, float]
    facade: tuple[float, float]
    lane: float
    lanes: int
    centre: float


def _layout(rng: np.random.Generator) -> _Street:
    """Random lanes, sidewalks, terrain strips and facade lines around the camera."""
    lane = float(rng.uniform(3.0, 3.6))
    lanes = int(rng.integers(2, 5))
    own = int(rng.integers(lanes // 2, lanes))
    left = -(own + 0.5) * lane
    right = left + lanes * lane
    walk = (left - rng.uniform(2.0, 4.5), right + rng.uniform(2.0, 4.5))
    grass = [0.0 if rng.random() < 0.4 else float(rng.uniform(1.0, 4.0)) for _ in range(2)]
    facade = (walk[0] - grass[0], walk[1] + grass[1])
    return _Street((left, right), walk, facade, lane, lanes, left + (lanes // 2) * lane)


def _paint_ground(canvas: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """Sky above the horizon; road, lane markings, sidewalks and terrain below it."""
    cam = canvas.camera
    height, width = canvas.height, canvas.width
    first = min(max(int(np.floor(cam.horizon)) + 1, 0), height)
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
    t = np.clip(rows[:first] / max(cam.horizon, 1.0), 0, 1)[..., None]
    sky_top = np.array(_jitter(rng, (0.3, 0.5, 0.85), 0.1), dtype=np.float32)
    sky_low = np.array((0.78, 0.86, 0.95), dtype=np.float32)
    clouds = value_noise(rng, (height, width), (4, 8))[:first]
    clouds = np.clip((clouds - 0.55) * 3.0, 0, 1)[..., None]
    canvas.albedo[:first] = (sky_top * (1 - t) + sky_low * t) * (1 - clouds) + 0.95 * clouds

    below = rows[first:] - cam.horizon
    z = np.minimum(cam.focal * cam.height / below, _MAX_GROUND_DEPTH).astype(np.float32)
    x = (cols - cam.cx) * z / cam.focal
    z = np.broadcast_to(z, x.shape)
    (left, right), (wl, wr) = street.road, street.walk
    road = (x >= left) & (x <= right)
    walk = ~road & (x >= wl) & (x <= wr)
    kind = np.where(road, 0, np.where(walk, 1, 2))
    table = np.array(
        [
            _jitter(rng, (0.34, 0.34, 0.36), 0.06),
            _jitter(rng, (0.62, 0.57, 0.52), 0.06),
            _jitter(rng, (0.42, 0.55, 0.22), 0.1),
        ],
        dtype=np.float32,
    )
    grain = value_noise(rng, (height, width), (16, 32))[first:] * 0.12 - 0.06
    colour = table[kind] + (grain * np.where(kind == 2, 2.5, 1.0))[..., None]
    dashed = np.mod(z, 9.0) < 4.0
    marks = (np.abs(x - left - 0.3) < 0.08) | (np.abs(x - right + 0.3) < 0.08)
    for k in range(1, street.lanes):
        boundary = left + k * street.lane
        solid = abs(boundary - street.centre) < 1e-6
        marks |= (np.abs(x - boundary) < 0.08) & (solid | dashed)
    colour[marks & road] = 0.92
    tiles = walk & ((np.mod(z, 1.2) < 0.06) | (np.mod(x, 1.2) < 0.06))
    colour[tiles] *= 0.85
    colour[walk & ((np.abs(x - left) < 0.25) | (np.abs(x - right) < 0.25))] = 0.78
    canvas.albedo[first:] = colour
    canvas.label[first:] = np.array([ROAD, SIDEWALK, TERRAIN])[kind]
    canvas.depth[first:] = z
    canvas.horizontal[first:] = True


def _paint_facades(canvas: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """Vertical facade planes along both sides: buildings with windows, walls, fences, hedges."""
    cam = canvas.camera
    rows = np.arange(canvas.height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(canvas.width, dtype=np.float32)[None, :] + 0.5
    for side, line, shade in ((-1.0, -street.facade[0], 0.95), (1.0, street.facade[1], 0.78)):
        lengths = rng.uniform(8.0, 30.0, size=40)
        edges = np.concatenate(([0.0], np.cumsum(lengths)))
        kinds = rng.choice(
            np.array([BUILDING, WALL, FENCE, VEGETATION, SKY]),
            size=40,
            p=[0.6, 0.12, 0.12, 0.08, 0.08],
        )
        tops = np.where(
            kinds == BUILDING,
            rng.uniform(8.0, 25.0, 40),
            np.where(kinds == VEGETATION, rng.uniform(2.5, 6.0, 40), rng.uniform(1.2, 2.8, 40)),
        )
        palette = np.array(
            [_jitter(rng, _FACADES[i]) for i in rng.integers(len(_FACADES), size=40)]
        )
        palette = np.where((kinds == VEGETATION)[:, None], np.array((0.2, 0.45, 0.15)), palette)
        palette = np.where((kinds == WALL)[:, None], np.array((0.6, 0.58, 0.55)), palette)
        palette = np.where((kinds == FENCE)[:, None], np.array((0.45, 0.4, 0.35)), palette)
        offset = side * (cols - cam.cx)
        z = np.where(offset > 0.5, cam.focal * line / np.maximum(offset, 0.5), 1e6)
        seg_col = np.clip(np.searchsorted(edges, z, side="right") - 1, 0, 39)
        v = cam.height - (rows - cam.horizon) * z / cam.focal
        candidate = (z <= _MAX_FACADE_DEPTH) & (v >= 0.0) & (v <= tops.max() + 1.0)
        r, c = np.nonzero(candidate)
        seg, u, height = seg_col[0, c], z[0, c], v[r, c]
        kind, top = kinds[seg], tops[seg]
        bumpy = top + np.where(
            kind == VEGETATION, 0.6 * np.sin(u * 1.7) + 0.4 * np.sin(u * 4.3), 0.0
        )
        keep = (height <= bumpy) & (kind != SKY)
        keep &= (kind != FENCE) | (np.mod(u, 0.5) < 0.3) | (height > top - 0.2)
        r, c, seg, u, height, kind, top = (a[keep] for a in (r, c, seg, u, height, kind, top))
        colour = palette[seg].astype(np.float32)
        ws, floor = 2.6, 3.2
        along, up = np.mod(u, ws), np.mod(height, floor)
        window = (kind == BUILDING) & (height > 2.5) & (height < top - 1.2)
        window &= (along > 0.6) & (along < 1.9) & (up > 1.0) & (up < 2.6)
        cornice = (kind == BUILDING) & (height > top - 0.4)
        colour[window] = _GLASS
        colour[cornice] *= 0.7
        lit = window & (_hash01(np.floor(u / ws), np.floor(height / floor), side) < 0.3)
        canvas.albedo[r, c] = colour
        canvas.label[r, c] = kind
        canvas.depth[r, c] = u
        canvas.shade[r, c] = shade
        canvas.horizontal[r, c] = False
        canvas.emission[r[lit], c[lit]] = np.array(_WARM, dtype=np.float32) * 0.7


def _spread(rng: np.random.Generator, count: int, near: float, far: float) -> NDArray[np.float64]:
    """``count`` depths log-uniformly between ``near`` and ``far`` metres."""
    return np.exp(rng.uniform(np.log(near), np.log(far), size=count))


def _place_things(canvas: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """Sample every object, then paint them far to near (nearer objects occlude farther)."""
    (left, right), (wl, wr), (fl, fr) = street.road, street.walk, street.facade
    todo: list[tuple[float, Callable[..., None], tuple[object, ...]]] = []

    def add(z: float, paint: Callable[..., None], x: float, *extra: object) -> None:
        todo.append((float(z), paint, (float(x), float(z), *extra)))

    occupied: list[tuple[float, float]] = []
    for k in range(street.lanes):
        for z in _spread(rng, int(rng.integers(0, 3)), 6.0, 90.0):
            x = left + (k + 0.5) * street.lane + rng.uniform(-0.3, 0.3)
            if x == 0.0 or any(abs(x - ox) < 2.5 and abs(z - oz) < 7.0 for ox, oz in occupied):
                continue
            occupied.append((x, z))
            oncoming = left + (k + 0.5) * street.lane < street.centre
            if rng.random() < 0.3:
                add(z, _big_vehicle, x)
            else:
                add(z, _car, x, oncoming)
    for edge in (left + 1.1, right - 1.1):
        for z in _spread(rng, int(rng.integers(0, 4)), 7.0, 70.0):
            if not any(abs(edge - ox) < 2.5 and abs(z - oz) < 6.0 for ox, oz in occupied):
                occupied.append((edge, z))
                add(z, _car, edge, False)
    for _ in range(int(rng.integers(1, 4))):
        x = right - 0.6 if rng.random() < 0.7 else left + 0.6
        z = float(_spread(rng, 1, 5.0, 30.0)[0])
        add(z, _two_wheeler, x, True)
    for towards, curb, outer in ((1.0, left - 0.4, wl), (-1.0, right + 0.4, wr)):
        start, spacing = rng.uniform(3.0, 20.0), rng.uniform(18.0, 30.0)
        for z in np.arange(start, 160.0, spacing):
            add(z, _street_lamp, curb, towards)
        for z in _spread(rng, int(rng.integers(1, 5)), 4.0, 35.0):
            x = rng.uniform(min(curb, outer), max(curb, outer))
            add(z, _pedestrian, x)
        for z in _spread(rng, int(rng.integers(1, 3)), 5.0, 40.0):
            add(z, _traffic_sign, curb)
        for z in _spread(rng, int(rng.integers(1, 3)), 8.0, 40.0):
            add(z, _traffic_light, curb - towards * 0.3)
        if rng.random() < 0.6:
            x = outer + towards * 0.8
            z = float(rng.uniform(6.0, 40.0))
            add(z, _two_wheeler, x, False)
    for inner, outer in ((wl, fl), (wr, fr)):
        if abs(outer - inner) > 1.0 or rng.random() < 0.3:
            x = (inner + outer) / 2 if abs(outer - inner) > 1.0 else inner + np.sign(inner) * -0.8
            for z in np.arange(rng.uniform(4.0, 15.0), 120.0, rng.uniform(9.0, 16.0)):
                add(z, _tree, x)
    for _, paint, args in sorted(todo, key=lambda item: -item[0]):
        paint(canvas, rng, *args)


def generate_scene(rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> Scene:
    """Generate a random street scene of ``size = (H, W)`` pixels from ``rng``."""
    height, width = size
    camera = _Camera(
        horizon=height * float(rng.uniform(0.38, 0.46)),
        cx=width * float(0.5 + rng.uniform(-0.06, 0.06)),
        focal=0.75 * width,
        height=float(rng.uniform(2.2, 2.8)),
    )
    canvas = _Canvas(height, width, camera)
    street = _layout(rng)
    _paint_ground(canvas, rng, street)
    _paint_facades(canvas, rng, street)
    _place_things(canvas, rng, street)
    return Scene(
        label=canvas.label,
        depth=canvas.depth,
        albedo=np.clip(canvas.albedo, 0.0, 1.0),
        shade=canvas.shade,
        emission=canvas.emission,
        instance=canvas.instance,
        horizontal=canvas.horizontal,
        horizon=camera.horizon,
        lights=canvas.lights,
        objects=canvas.objects,
    )
