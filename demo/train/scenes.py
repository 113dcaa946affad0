"""Drawn scenes and their captions: the training data of the demo model family.

One scene is one flat shape on a plain background. Everything is deterministic: the same seed gives the same
scenes, the same scene and style give the same pixels (numpy only, no font or system renderer involved).

Caption words (the grammar is ``"a {colour} {shape} {place}"``, e.g. ``"a red circle on the left"``):

- colours: ``red`` (220, 40, 40), ``green`` (40, 170, 60), ``blue`` (40, 80, 220), ``yellow`` (240, 200, 30)
- shapes: ``circle`` (radius = half), ``square`` (axis-aligned, side = 2 * half),
  ``triangle`` (pointing up, base and height = 2 * half)
- places: ``on the left`` (centre x = 0.28 * size), ``in the middle`` (0.50), ``on the right`` (0.72)

Geometry, as fractions of the image side: centre x = place's x + uniform(-0.03, 0.03), centre y = 0.5 +
uniform(-0.06, 0.06), half = uniform(0.16, 0.20). 4 colours x 3 shapes x 3 places = 36 captions.

Styles (``STYLES``; the fine-tunes are trained on the same scenes and captions, drawn in their style):

- ``base``: background (236, 236, 232); shape filled with its colour; no outline.
- ``pastel``: background (250, 238, 222) cream; shape filled with its pastel colour, i.e. ``PASTEL_MIX`` = 0.55
  of the way from its colour to white; a dark outline (45, 35, 60) of ``OUTLINE`` = 0.05 * size, drawn inside
  the shape's edge.
- ``stripes``: background (28, 28, 40) dark; shape filled with 45-degree stripes alternating its colour and
  near-white (240, 240, 235); stripe period ``STRIPE_PERIOD`` = 0.125 * size measured along x (and along y),
  half of each period coloured: pixel (x, y) is coloured when ``(x + y) mod period < period / 2``.

Edges are anti-aliased by 4 x 4 supersampling. ``render`` returns an ``(size, size, 3)`` uint8 array.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": ("on the left", 0.28), "middle": ("in the middle", 0.50), "right": ("on the right", 0.72)}
X_JITTER = 0.03
Y_JITTER = 0.06
HALF_RANGE = (0.16, 0.20)

WHITE = (255, 255, 255)
PASTEL_MIX = 0.55
OUTLINE = 0.05
OUTLINE_COLOUR = (45, 35, 60)
STRIPE_PERIOD = 0.125
STRIPE_LIGHT = (240, 240, 235)
STYLES = {
    "base": {"background": (236, 236, 232)},
    "pastel": {"background": (250, 238, 222), "pastel_mix": PASTEL_MIX, "outline": OUTLINE,
               "outline_colour": OUTLINE_COLOUR},
    "stripes": {"background": (28, 28, 40), "stripe_period": STRIPE_PERIOD, "stripe_light": STRIPE_LIGHT},
}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One shape; positions and sizes are fractions of the image side (y grows downwards)."""
    colour: str
    shape: str
    place: str
    cx: float
    cy: float
    half: float


def caption(scene: Scene) -> str:
    return f"a {scene.colour} {scene.shape} {PLACES[scene.place][0]}"


def all_captions() -> list[str]:
    """The 36 captions the models were trained on, in a fixed order (colour, then shape, then place)."""
    return [f"a {c} {s} {PLACES[p][0]}" for c in COLOURS for s in SHAPES for p in PLACES]


def parse_caption(text: str) -> tuple[str, str, str]:
    """(colour, shape, place) of a training caption; ValueError for any other text."""
    for c in COLOURS:
        for s in SHAPES:
            for p, (phrase, _) in PLACES.items():
                if text.strip() == f"a {c} {s} {phrase}":
                    return c, s, p
    raise ValueError(f"not a demo caption: {text!r}")


def centred_scene(colour: str, shape: str, place: str) -> Scene:
    """The scene without jitter (mid-range size): what a caption asks for on average."""
    return Scene(colour, shape, place, PLACES[place][1], 0.5, sum(HALF_RANGE) / 2)


def sample_scene(rng: random.Random) -> Scene:
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    place = rng.choice(list(PLACES))
    return Scene(colour, shape, place,
                 cx=PLACES[place][1] + rng.uniform(-X_JITTER, X_JITTER),
                 cy=0.5 + rng.uniform(-Y_JITTER, Y_JITTER),
                 half=rng.uniform(*HALF_RANGE))


def scenes(seed: int, count: int) -> list[Scene]:
    """``count`` scenes drawn from ``seed``; each style of a training set renders these same scenes."""
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(count)]


def signed_distance(scene: Scene, size: int, supersample: int = 1) -> np.ndarray:
    """Distance (in pixels, negative inside) to the shape's edge on a grid of ``size * supersample`` samples;
    exact inside for the polygons, which is all that outlines need."""
    n = size * supersample
    coords = (np.arange(n, dtype=np.float64) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    cx, cy, h = scene.cx * size, scene.cy * size, scene.half * size
    if scene.shape == "circle":
        return np.hypot(x - cx, y - cy) - h
    if scene.shape == "square":
        return np.maximum(np.abs(x - cx), np.abs(y - cy)) - h
    if scene.shape == "triangle":  # apex (cx, cy - h), base corners (cx -/+ h, cy + h)
        base = y - (cy + h)
        slope = 1 / np.sqrt(5.0)  # the sides have direction (1, 2): unit normals (+-2, -1) / sqrt(5)
        left = (-2 * (x - cx) - (y - (cy - h))) * slope
        right = (2 * (x - cx) - (y - (cy - h))) * slope
        return np.maximum(base, np.maximum(left, right))
    raise ValueError(f"unknown shape {scene.shape!r}")


def _downsample(values: np.ndarray, supersample: int) -> np.ndarray:
    n = values.shape[0] // supersample
    return values.reshape(n, supersample, n, supersample, *values.shape[2:]).mean(axis=(1, 3))


def coverage(scene: Scene, size: int, inset: float = 0.0) -> np.ndarray:
    """Fraction (0..1) of each pixel inside the shape, shrunk by ``inset`` pixels."""
    inside = (signed_distance(scene, size, SUPERSAMPLE) < -inset).astype(np.float64)
    return _downsample(inside, SUPERSAMPLE)


def pastel(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c + PASTEL_MIX * (w - c) for c, w in zip(colour, WHITE))


def fill_pattern(scene: Scene, style: str, size: int) -> np.ndarray:
    """The shape's fill colour at each pixel, (size, size, 3) float in 0..255."""
    colour = np.array(COLOURS[scene.colour], dtype=np.float64)
    if style == "base":
        return np.broadcast_to(colour, (size, size, 3)).copy()
    if style == "pastel":
        return np.broadcast_to(np.array(pastel(COLOURS[scene.colour])), (size, size, 3)).copy()
    if style == "stripes":
        n = size * SUPERSAMPLE
        coords = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
        x, y = np.meshgrid(coords, coords)
        period = STRIPE_PERIOD * size
        coloured = (np.mod(x + y, period) < period / 2).astype(np.float64)
        share = _downsample(coloured, SUPERSAMPLE)[..., None]
        return share * colour + (1 - share) * np.array(STRIPE_LIGHT, dtype=np.float64)
    raise ValueError(f"unknown style {style!r}")


def render(scene: Scene, style: str = "base", size: int = 64) -> np.ndarray:
    """The scene drawn in ``style``: (size, size, 3) uint8."""
    background = np.array(STYLES[style]["background"], dtype=np.float64)
    image = np.broadcast_to(background, (size, size, 3)).copy()
    shape = coverage(scene, size)[..., None]
    if style == "pastel":
        inner = coverage(scene, size, inset=OUTLINE * size)[..., None]
        image = (1 - shape) * image + (shape - inner) * np.array(OUTLINE_COLOUR) + inner * fill_pattern(
            scene, style, size)
    else:
        image = (1 - shape) * image + shape * fill_pattern(scene, style, size)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def dataset(seed: int, count: int, style: str = "base", size: int = 64) -> tuple[np.ndarray, list[str]]:
    """``count`` images (count, size, size, 3) uint8 and their captions; the same seed gives the same scenes
    (and captions) in every style."""
    chosen = scenes(seed, count)
    return np.stack([render(s, style, size) for s in chosen]), [caption(s) for s in chosen]
