"""Measures of a demo image: where its shape is, which shape and colour it is, and how strongly each style shows.

They let tests judge a sampled image against its caption without looking at it: the shape region is what
differs from the background (estimated from bands along the top and bottom), its mask is compared with
scenes.py's shape templates fitted at the caption's place, and its chromatic pixels vote for the nearest
palette hue. The style measures are continuous, so a blend of two styles lands between them:

- ``background_darkness``: 1 - the background's luminance (base and pastel near 0.07, stripes near 0.88);
- ``stripe_contrast``: how much the shape's inside changes across 45-degree stripes more than along them;
- ``outline_darkness``: how much darker the shape's rim is than its inside (pastel's outline).

Images are ``(H, W, 3)`` arrays, uint8 or float in 0..255 (a float image with nothing above 1 is read as 0..1).
Pure numpy: no ComfyUI, so the unit tests run the measures on scenes.py's own drawings.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

try:  # imported as demo.train.measures (tests) or as a sibling script's module (demo/train on sys.path)
    from . import scenes
except ImportError:  # pragma: no cover - run as a plain module
    import scenes

LUMA = np.array([0.299, 0.587, 0.114])
MASK_THRESHOLD = 48.0  # RGB distance from the background that makes a pixel part of the shape
CHROMA_MIN = 40.0  # max - min channel below this is grey (stripes' near-white, the outline, backgrounds)
PLACE_SLACK = 0.03  # how far (fraction of the side) beyond the caption's jitter a fitted centre may go


def as_rgb(image) -> np.ndarray:
    """The image as float64 RGB in 0..255."""
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.float64)
    if np.issubdtype(np.asarray(image).dtype, np.floating) and rgb.max(initial=0.0) <= 1.0:
        rgb = rgb * 255.0
    return rgb


def luminance(image) -> np.ndarray:
    return as_rgb(image) @ LUMA


def frame_width(side: int) -> int:
    """The image's outermost pixels that the measures ignore (1/32 of the side): no shape reaches them."""
    return max(1, round(side / 32))


def background_pixels(image) -> np.ndarray:
    """Background pixels, ``(N, 3)``: bands along the top and bottom (from 1/32 to 1/8 of the side in), where
    no scene's shape reaches (its centre is within 0.06 of the middle and its half size at most 0.2); the
    outermost pixels are left out, as a decoder may darken an image's very edge."""
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    edge, depth = frame_width(h), max(2, round(h / 8))
    cols = slice(frame_width(w), w - frame_width(w))
    return np.concatenate([rgb[edge:depth, cols].reshape(-1, 3), rgb[h - depth:h - edge, cols].reshape(-1, 3)])


def background_colour(image) -> np.ndarray:
    """The median colour of the background bands: robust to a stray pixel or sampling noise."""
    return np.median(background_pixels(image), axis=0)


_SQUARE = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_CROSS = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]


def _morph(mask: np.ndarray, radius: int, combine) -> np.ndarray:
    """Erode (combine=np.logical_and; outside the image counts as False) or dilate (np.logical_or) by about a
    disc of ``radius`` pixels: one-pixel steps alternating a square and a cross (an octagon)."""
    out = np.asarray(mask, dtype=bool)
    h, w = out.shape
    for step in range(radius):
        padded = np.pad(out, 1, constant_values=False)
        shifted = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in (_SQUARE if step % 2 else _CROSS)]
        out = combine.reduce(shifted)
    return out


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return _morph(mask, radius, np.logical_and)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return _morph(mask, radius, np.logical_or)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region it encloses added: what the border cannot reach without crossing it."""
    outside = ~mask
    reach = np.zeros_like(mask)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1]
    while True:
        grown = dilate(reach, 1) & outside
        if (grown == reach).all():
            return ~reach
        reach = grown


def drop_specks(mask: np.ndarray) -> np.ndarray:
    """The mask without pixels that have fewer than two of their eight neighbours in it (sampling noise);
    thin lines (a broken outline) stay."""
    padded = np.pad(mask, 1, constant_values=False).astype(np.int8)
    h, w = mask.shape
    neighbours = sum(padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _SQUARE if (dy, dx) != (0, 0))
    return mask & (neighbours >= 2)


def shape_mask(image, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Pixels farther than ``threshold`` (RGB distance) from the background colour, inside the frame and
    without isolated specks, closed by ``size / 32`` so that gaps of a few pixels in the edge are bridged,
    with the holes filled: a fill close to the background (a pastel, or light stripes half-way to a dark
    background) is still inside its edge."""
    rgb = as_rgb(image)
    far = np.linalg.norm(rgb - background_colour(rgb), axis=-1) > threshold
    e = frame_width(min(far.shape))
    far[:e], far[-e:], far[:, :e], far[:, -e:] = False, False, False, False  # a decoder's dark edge is no shape
    far = drop_specks(far)
    bridge = max(1, round(min(far.shape) / 32))
    return fill_holes(erode(dilate(far, bridge), bridge) | far)


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(coords, coords)


def template(shape: str, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    """scenes.py's shape as a pixel mask (pixel centres inside), positions as fractions of the side: the same
    inside test as ``scenes.signed_distance(...) < 0``, on cached pixel grids (the fits try many)."""
    x, y = _pixel_centres(size)
    cx, cy, h = cx * size, cy * size, half * size
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 < h * h
    if shape == "square":
        return (np.abs(x - cx) < h) & (np.abs(y - cy) < h)
    if shape == "triangle":  # apex (cx, cy - h), base corners (cx -/+ h, cy + h): the sides have slope 2
        return (y < cy + h) & (2 * np.abs(x - cx) < y - (cy - h))
    raise ValueError(f"unknown shape {shape!r}")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# Area of each shape per half**2, and its centroid's offset below the centre per half (the triangle points up).
_AREA = {"circle": np.pi, "square": 4.0, "triangle": 2.0}
_CENTROID_DROP = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


@dataclass(frozen=True)
class ShapeFit:
    """The best template of one shape for a mask: its centre and half size (fractions) and its IoU."""
    shape: str
    iou: float
    cx: float
    cy: float
    half: float


def fit_shape(mask: np.ndarray, shape: str, place: str) -> ShapeFit:
    """The template of ``shape`` that best overlaps ``mask`` with its centre at ``place``: a start from the
    mask's area and centroid (clamped to the place's jitter range plus ``PLACE_SLACK``), refined by a small
    search over centre and size."""
    size = mask.shape[0]
    if mask.shape[0] != mask.shape[1]:
        raise ValueError("the measures expect square images")
    px = scenes.PLACES[place][1]
    x_range = (px - scenes.X_JITTER - PLACE_SLACK, px + scenes.X_JITTER + PLACE_SLACK)
    y_range = (0.5 - scenes.Y_JITTER - PLACE_SLACK, 0.5 + scenes.Y_JITTER + PLACE_SLACK)
    h_range = (scenes.HALF_RANGE[0] - PLACE_SLACK, scenes.HALF_RANGE[1] + PLACE_SLACK)
    area = mask.sum() / size ** 2
    if area:
        ys, xs = np.nonzero(mask)
        half = float(np.clip(np.sqrt(area / _AREA[shape]), *h_range))
        cx = float(np.clip((xs.mean() + 0.5) / size, *x_range))
        cy = float(np.clip((ys.mean() + 0.5) / size - _CENTROID_DROP[shape] * half, *y_range))
    else:
        cx, cy, half = px, 0.5, sum(scenes.HALF_RANGE) / 2
    step = 1.0 / size
    best = ShapeFit(shape, -1.0, cx, cy, half)
    for _ in range(8):  # hill-climb one pixel at a time; each round tries the 3 x 3 x 3 neighbours
        start = best
        for dx in (-step, 0.0, step):
            for dy in (-step, 0.0, step):
                for dh in (-step, 0.0, step):
                    x, y, h = start.cx + dx, start.cy + dy, start.half + dh
                    if not (x_range[0] <= x <= x_range[1] and y_range[0] <= y <= y_range[1]
                            and h_range[0] <= h <= h_range[1]):
                        continue
                    score = iou(mask, template(shape, x, y, h, size))
                    if score > best.iou:
                        best = ShapeFit(shape, score, x, y, h)
        if best is start:
            break
    return best if best.iou >= 0 else ShapeFit(shape, 0.0, cx, cy, half)


def shape_ious(image, place: str, mask: np.ndarray | None = None) -> dict[str, float]:
    """IoU of the image's shape region with each shape's best template at ``place``."""
    region = shape_mask(image) if mask is None else mask
    return {shape: fit_shape(region, shape, place).iou for shape in scenes.SHAPES}


def nearest_place(mask: np.ndarray) -> str:
    """The caption place whose x is nearest the mask's centroid (the middle for an empty mask)."""
    if not mask.any():
        return "middle"
    x = (np.nonzero(mask)[1].mean() + 0.5) / mask.shape[1]
    return min(scenes.PLACES, key=lambda p: abs(scenes.PLACES[p][1] - x))


def best_fit(mask: np.ndarray) -> ShapeFit:
    """The shape template (any shape, at the mask's nearest place) that best overlaps the mask."""
    place = nearest_place(mask)
    return max((fit_shape(mask, shape, place) for shape in scenes.SHAPES), key=lambda f: f.iou)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The pixels whose centres lie in the convex hull of the mask's pixel centres (every demo shape is
    convex, so this closes an edge that a blend has broken into pieces)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return mask.copy()
    points = np.unique(np.stack([xs + 0.5, ys + 0.5], axis=1), axis=0)  # pixel centres, sorted by x, then y

    def half_hull(points):
        chain = []
        for p in points:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.array(half_hull(points) + half_hull(points[::-1]))  # one turning direction, no repeated point
    if len(hull) < 3:
        return mask.copy()
    h, w = mask.shape
    centres = np.stack(np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5), axis=-1)[:, :, None, :]
    edges = _cross(hull[None, None, :, :], np.roll(hull, -1, axis=0)[None, None, :, :], centres)
    return (edges >= 0).all(axis=-1)


def shape_region(image) -> np.ndarray:
    """The shape template that best fits the convex hull of the image's shape region: a clean region that
    does not depend on how close a blend brings parts of the shape's edge to the background, so the style
    measures read the same pixels at every blend of two drawings of one scene."""
    hull = convex_hull(shape_mask(image))
    fit = best_fit(hull)
    return template(fit.shape, fit.cx, fit.cy, fit.half, hull.shape[0])


def hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees (0..360) of ``(..., 3)`` RGB values."""
    r, g, b = np.moveaxis(np.asarray(rgb, dtype=np.float64), -1, 0)
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360.0


PALETTE_HUES = {name: float(hue(np.array(rgb))) for name, rgb in scenes.COLOURS.items()}


def chromatic(rgb: np.ndarray) -> np.ndarray:
    return rgb.max(axis=-1) - rgb.min(axis=-1) >= CHROMA_MIN


def colour_shares(image, mask: np.ndarray | None = None) -> dict[str, float]:
    """Share of the chromatic pixels of the shape region's core (the region less its outer ``OUTLINE``, where
    an outline or a blurred edge mixes colours) whose hue is nearest each palette colour's hue (all zero when
    there is no chromatic pixel). Hue ignores the mix with white, so pastel and stripes vote for their own
    colour."""
    rgb = as_rgb(image)
    region = shape_mask(rgb) if mask is None else mask
    core = erode(region, round(scenes.OUTLINE * region.shape[0]) + 1)  # inside an outline and a soft edge
    pixels = rgb[core if core.any() else region]
    pixels = pixels[chromatic(pixels)]
    if not len(pixels):
        return {name: 0.0 for name in scenes.COLOURS}
    names = list(PALETTE_HUES)
    gaps = np.abs(hue(pixels)[:, None] - np.array([PALETTE_HUES[n] for n in names])[None, :])
    nearest = np.minimum(gaps, 360.0 - gaps).argmin(axis=1)
    counts = np.bincount(nearest, minlength=len(names))
    return {name: float(counts[i] / len(pixels)) for i, name in enumerate(names)}


def background_darkness(image) -> float:
    """1 - the background colour's luminance, 0 (white) .. 1 (black)."""
    return float(1.0 - background_colour(image) @ LUMA / 255.0)


def stripe_contrast(image, mask: np.ndarray | None = None) -> float:
    """How much the shape's inside changes across 45-degree stripes more than along them (RGB, 0..1): the mean
    colour difference between pixels a quarter period apart along (1, 1), where stripes of ``STRIPE_PERIOD``
    along ``x + y`` flip, minus the same along (1, -1), where they keep their colour. A flat fill gives 0 (no
    edges counted: both pixels lie inside the shape, away from its rim), noise gives about 0 (both directions
    alike), and a pixel blend of a flat fill and stripes gives the stripes' value times their share."""
    rgb = as_rgb(image) / 255.0
    region = shape_region(rgb * 255.0) if mask is None else mask
    size = region.shape[0]
    inside = erode(region, max(1, round(scenes.OUTLINE * size)) + 1)
    q = max(1, round(scenes.STRIPE_PERIOD * size / 4))
    core = (slice(q, size - q), slice(q, size - q))

    def mean_step(dy: int, dx: int) -> float:
        moved = (slice(q + dy, size - q + dy), slice(q + dx, size - q + dx))
        both = inside[core] & inside[moved]
        if not both.any():
            return 0.0
        return float(np.abs(rgb[core] - rgb[moved]).mean(axis=-1)[both].mean())

    return mean_step(q, q) - mean_step(-q, q)


def outline_darkness(image, mask: np.ndarray | None = None) -> float:
    """How much darker (luminance, 0..1) the shape's darkest one-pixel ring, among the depths 1 .. ``OUTLINE``
    * size under its edge, is than both its inside and the background: pastel's dark outline makes this large;
    a flat or striped fill, or a soft edge fading into a dark background, leaves it near 0 or below. The
    outermost ring mixes with the background, so it is left out; taking the darkest ring keeps the value when
    the region found is a pixel larger or smaller than the shape."""
    rgb = as_rgb(image)
    region = shape_region(rgb) if mask is None else mask
    width = max(1, round(scenes.OUTLINE * region.shape[0]))
    layers = [erode(region, depth) for depth in range(width + 3)]
    rings = [layers[d] & ~layers[d + 1] for d in range(1, width + 1)]
    inside = layers[width + 2]
    if not inside.any() or not all(r.any() for r in rings):
        return 0.0
    lum = rgb @ LUMA / 255.0
    surround = min(lum[inside].mean(), background_colour(rgb) @ LUMA / 255.0)
    return float(surround - min(lum[r].mean() for r in rings))


STYLE_MEASURES = {"background_darkness": background_darkness, "stripe_contrast": stripe_contrast,
                  "outline_darkness": outline_darkness}


def style_values(image) -> dict[str, float]:
    """Every style measure of the image, by name (the shape region found once)."""
    rgb = as_rgb(image)
    region = shape_region(rgb)
    return {"background_darkness": background_darkness(rgb), "stripe_contrast": stripe_contrast(rgb, region),
            "outline_darkness": outline_darkness(rgb, region)}


@dataclass(frozen=True)
class SceneCheck:
    """How an image answers a caption: the IoU per shape at the asked place, the colour shares, and whether
    the asked shape and colour win by the given margins."""
    colour: str
    shape: str
    place: str
    ious: dict[str, float]
    shares: dict[str, float]
    min_iou: float
    misfit_ratio: float
    min_share: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        ious = ", ".join(f"{k} {v:.2f}" for k, v in self.ious.items())
        shares = ", ".join(f"{k} {v:.2f}" for k, v in self.shares.items())
        verdict = "ok" if self.passed else "; ".join(self.failures)
        return f"a {self.colour} {self.shape} at {self.place}: IoU {ious}; colour {shares}: {verdict}"


def check_scene(image, colour: str, shape: str, place: str, min_iou: float = 0.6, misfit_ratio: float = 1.5,
                min_share: float = 0.6) -> SceneCheck:
    """Judge ``image`` against the caption's colour, shape and place: the asked shape's IoU is at least
    ``min_iou`` and its misfit (1 - IoU) is ``misfit_ratio`` times smaller than every other shape's (a ratio,
    not a difference: a circle and a square overlap by 0.85 at best, so a blurred square beats the circle by
    less than 0.1 of IoU but misfits three times less); the asked colour has at least ``min_share`` of the
    chromatic pixels (so it is also the most common)."""
    rgb = as_rgb(image)
    mask = shape_mask(rgb)
    ious = shape_ious(rgb, place, mask)
    shares = colour_shares(rgb, mask)
    failures = []
    if ious[shape] < min_iou:
        failures.append(f"{shape} IoU {ious[shape]:.2f} < {min_iou}")
    rival = max(v for k, v in ious.items() if k != shape)
    if (1 - rival) < misfit_ratio * (1 - ious[shape]):
        failures.append(f"{shape} misfit {1 - ious[shape]:.2f} not {misfit_ratio} times below {1 - rival:.2f}")
    if shares[colour] < min_share:
        failures.append(f"{colour} share {shares[colour]:.2f} < {min_share}")
    return SceneCheck(colour, shape, place, ious, shares, min_iou, misfit_ratio, min_share, failures)
