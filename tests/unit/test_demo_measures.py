"""The demo image measures judged on scenes.py's own drawings: each drawing passes its caption's checks and
fails the other captions' checks, each style reads as itself, pixel blends of two styles move every style
measure monotonically from one end to the other, and noise or a blank image passes no check."""
import numpy as np
import pytest

from demo.train import measures, scenes

# Every colour and shape, each at a place, and the jittered scenes of a seed (their extremes of size and place).
CAPTIONS = [f"a {c} {s} {scenes.PLACES[p][0]}"
            for i, (c, s) in enumerate((c, s) for c in scenes.COLOURS for s in scenes.SHAPES)
            for p in [list(scenes.PLACES)[i % 3]]]
SCENES = [scenes.centred_scene(*scenes.parse_caption(text)) for text in CAPTIONS] + scenes.scenes(11, 8)
STEPS = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return np.rint((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.uint8)


@pytest.mark.parametrize("style", list(scenes.STYLES))
@pytest.mark.parametrize("size", [64, 128])
def test_each_drawing_passes_its_caption_and_no_other(style, size):
    for scene in SCENES if size == 64 else SCENES[::4]:
        image = scenes.render(scene, style, size)
        check = measures.check_scene(image, scene.colour, scene.shape, scene.place)
        assert check.passed, str(check)
        assert check.ious[scene.shape] > 0.9 and check.shares[scene.colour] > 0.95, str(check)
        for shape in scenes.SHAPES:
            if shape != scene.shape:
                assert not measures.check_scene(image, scene.colour, shape, scene.place).passed
        for colour in scenes.COLOURS:
            if colour != scene.colour:
                assert not measures.check_scene(image, colour, scene.shape, scene.place).passed
        elsewhere = [p for p in scenes.PLACES if p != scene.place]
        for place in elsewhere:  # the shape at another place is not the asked one
            assert not measures.check_scene(image, scene.colour, scene.shape, place).passed


def test_float_images_in_either_range_measure_as_uint8():
    image = scenes.render(SCENES[0], "pastel")
    values = measures.style_values(image)
    for scaled in (image.astype(np.float32), image.astype(np.float64) / 255.0):
        assert measures.style_values(scaled) == pytest.approx(values, abs=1e-9)
        assert measures.check_scene(scaled, SCENES[0].colour, SCENES[0].shape, SCENES[0].place).passed


def test_each_style_reads_as_itself():
    for scene in SCENES:
        base, pastel, stripes = (measures.style_values(scenes.render(scene, s)) for s in scenes.STYLES)
        assert base["background_darkness"] < 0.1 and pastel["background_darkness"] < 0.1
        assert stripes["background_darkness"] > 0.85
        assert abs(base["stripe_contrast"]) < 0.01 and abs(pastel["stripe_contrast"]) < 0.01
        assert stripes["stripe_contrast"] > 0.2
        assert abs(base["outline_darkness"]) < 0.02
        assert stripes["outline_darkness"] < -0.2  # its rim is lighter than its dark background
        assert pastel["outline_darkness"] > 0.4


# Which measures tell each pair of styles apart (the others stay near 0 at both ends).
PAIRS = {("pastel", "stripes"): ("background_darkness", "stripe_contrast", "outline_darkness"),
         ("base", "pastel"): ("outline_darkness",),
         ("base", "stripes"): ("background_darkness", "stripe_contrast")}


@pytest.mark.parametrize("pair", list(PAIRS), ids="-".join)
def test_pixel_blends_move_each_measure_monotonically(pair):
    """Strictly monotone from one style's value to the other's at t = 0, .25, .5, .75, 1 (each step at least
    a tenth of the way's average step, so a flat stretch fails too)."""
    for scene in SCENES:
        a, b = (scenes.render(scene, s) for s in pair)
        values = [measures.style_values(blend(a, b, t)) for t in STEPS]
        for name in PAIRS[pair]:
            series = np.array([v[name] for v in values])
            steps = np.diff(series) * np.sign(series[-1] - series[0])
            assert abs(series[-1] - series[0]) > 0.2, (scene, name, series)
            assert (steps > 0.1 * abs(series[-1] - series[0]) / len(steps)).all(), (scene, name, series)


def test_noise_and_blank_images_pass_no_check():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    coarse = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # blobs, not specks
    grey = np.full((64, 64, 3), 128, np.uint8)
    background = scenes.render(scenes.Scene("red", "circle", "middle", 2.0, 2.0, 0.1), "base")  # off-image
    for image in (uniform, coarse, grey, background):
        for text in CAPTIONS:
            colour, shape, place = scenes.parse_caption(text)
            check = measures.check_scene(image, colour, shape, place)
            assert not check.passed, str(check)
    for image in (uniform, grey):
        values = measures.style_values(image)
        assert abs(values["stripe_contrast"]) < 0.05 and abs(values["outline_darkness"]) < 0.05, values


def test_fitted_template_finds_the_drawn_geometry():
    scene = scenes.Scene("blue", "triangle", "right", 0.70, 0.55, 0.17)
    fit = measures.fit_shape(measures.shape_mask(scenes.render(scene, "base", 128)), "triangle", "right")
    assert fit.iou > 0.95
    assert abs(fit.cx - scene.cx) <= 1 / 64 and abs(fit.cy - scene.cy) <= 1 / 64
    assert abs(fit.half - scene.half) < 0.02
    assert measures.nearest_place(measures.shape_mask(scenes.render(scene))) == "right"


def test_blurred_noisy_drawings_still_pass_their_captions():
    """A model draws softer than scenes.py: a Gaussian blur (radius 1.5 px) and noise (sigma 15) keep every
    drawing passing its caption and failing the other shapes' (the misfit ratio, not an IoU difference,
    tells a soft square from a circle)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(1)
    for scene in SCENES:
        for style in scenes.STYLES:
            soft = Image.fromarray(scenes.render(scene, style)).filter(ImageFilter.GaussianBlur(1.5))
            image = np.clip(np.asarray(soft) + rng.normal(0, 15, (64, 64, 3)), 0, 255).astype(np.uint8)
            assert measures.check_scene(image, scene.colour, scene.shape, scene.place).passed, (scene, style)
            for shape in scenes.SHAPES:
                if shape != scene.shape:
                    assert not measures.check_scene(image, scene.colour, shape, scene.place).passed
