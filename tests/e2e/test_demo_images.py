"""The shipped demo models and their merges, judged by their images through the real ComfyUI server.

One server and one prompt sample every image (64 px, the model card's sampler settings and seed): the base and
the two style fine-tunes (A = pastel, B = stripes) on three captions, the random tiny SD1 model on the same
captions, weight sums of A and B at five alphas, A + 1*(B - base), and the two block-weight halves (input side
of one model, output side of the other). The measures are demo/train/measures.py's.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "demo"))
from merge_samples import ALPHAS, DEMO_MODELS, DEMO_MODELS_DIR, MERGES, SERVER_ENV, SampleSet  # noqa: E402
from merge_samples import build_prompt, image_name, read_images  # noqa: E402
from server import ComfyServer, comfy_path  # noqa: E402

from demo.train import measures, scenes  # noqa: E402

# Circles and squares: the shipped models draw them (all 36 captions measured: the base passes every circle
# and square and 5 of the 12 triangles, its triangles fitting a square or circle about as well).
CAPTIONS = ("a red circle on the left", "a blue square in the middle", "a green circle on the left")
TINY = "tiny_sd1_a.safetensors"
# Content thresholds from the shipped models' images of these captions, with a margin: base, A and B give the
# asked shape an IoU of 0.79 or more, a misfit 1.32 or more times below the other shapes', and a colour share
# of 1.00; the tiny random model's IoU is 0.25-0.31.
MIN_IOU, MISFIT_RATIO, MIN_SHARE = 0.6, 1.2, 0.6
# A weight sum's style measure may step back by this much between neighbouring alphas and still count as
# monotone (sampling noise of a 64 px image).
MONOTONE_TOLERANCE = 0.02

pytestmark = pytest.mark.skipif(not (DEMO_MODELS_DIR / "README.md").is_file(),
                                reason="the demo models have not been shipped yet (no demo/models/README.md)")


def _make_tiny_checkpoint(folder: Path) -> None:
    """The random tiny SD1 model of the other tests (only it: make_checkpoints.py writes many files)."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from comfy.cli_args import args; args.cpu = True\n"
            "import tiny_models; tiny_models.save_checkpoint(sys.argv[3], 'sd1', 1)\n")
    subprocess.run([sys.executable, "-c", code, str(comfy_path()), str(REPO / "demo"), str(folder / TINY)],
                   check=True, cwd=comfy_path(), stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = [n for n in DEMO_MODELS.values() if not (DEMO_MODELS_DIR / n).is_file()]
    assert not missing, f"the model card is shipped but not the models {missing} (demo/train/train.py builds them)"
    base = tmp_path_factory.mktemp("demo_images")
    srv = ComfyServer(base, extra_env=SERVER_ENV)  # one thread: see SERVER_ENV
    _make_tiny_checkpoint(base / "models" / "checkpoints")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images(server):
    spec = SampleSet(models={**DEMO_MODELS, "tiny": TINY}, merges=MERGES, captions=CAPTIONS,
                     sampled=("base", "A", "B", "tiny", *MERGES), own_encoders=("A", "B", "tiny"))
    return read_images(server, build_prompt(spec))


def styles(images, label):
    return [measures.style_values(images[image_name(label, c)]) for c in CAPTIONS]


def check(image, caption):
    return measures.check_scene(image, *scenes.parse_caption(caption), min_iou=MIN_IOU, misfit_ratio=MISFIT_RATIO,
                                min_share=MIN_SHARE)


def test_the_shipped_models_are_listed_without_copying(server):
    """nodes/demo_models.py adds demo/models to the checkpoint folders: no file was copied into the base."""
    names = server.get("/object_info/CheckpointLoaderSimple")["CheckpointLoaderSimple"]["input"]["required"][
        "ckpt_name"][0]
    assert set(DEMO_MODELS.values()) <= set(names), names
    assert sorted(p.name for p in (server.base / "models" / "checkpoints").iterdir()) == [TINY]


@pytest.mark.parametrize("label", ["base", "A", "B"])
def test_each_model_draws_each_caption(images, label):
    """The asked shape's IoU beats the other shapes' at the asked place, and the asked colour dominates."""
    for caption in CAPTIONS:
        result = check(images[image_name(label, caption)], caption)
        assert result.passed, f"{label}: {result}"


def test_the_random_tiny_model_fails_the_same_checks(images):
    """The checks can fail: an untrained model's images pass none of them."""
    for caption in CAPTIONS:
        result = check(images[image_name("tiny", caption)], caption)
        assert not result.passed, f"tiny: {result}"


def test_weight_sum_ends_are_the_models_own_images(images):
    for caption in CAPTIONS:
        assert np.array_equal(images[image_name("ws 0", caption)], images[image_name("A", caption)]), caption
        assert np.array_equal(images[image_name("ws 1", caption)], images[image_name("B", caption)]), caption
        assert not np.array_equal(images[image_name("A", caption)], images[image_name("B", caption)]), caption


@pytest.mark.parametrize("measure", ["background_darkness"])  # the style both fine-tunes learned most clearly
def test_weight_sum_moves_the_style_from_a_to_b(images, measure):
    """Over alpha = 0 .. 1 the measure goes from A's value to B's, each step forward or back by at most
    MONOTONE_TOLERANCE, the mean over the captions strictly forward."""
    series = np.array([[v[measure] for v in styles(images, f"ws {a:g}")] for a in ALPHAS])  # alpha x caption
    direction = np.sign(series[-1] - series[0])
    assert (np.abs(series[-1] - series[0]) > 0.1).all(), series
    assert (np.diff(series, axis=0) * direction >= -MONOTONE_TOLERANCE).all(), series
    mean = series.mean(axis=1)
    assert (np.diff(mean) * np.sign(mean[-1] - mean[0]) > 0).all(), mean


def test_add_difference_takes_b_style(images):
    """A + 1*(B - base) takes B's dark background: closer to B's value than to A's, for every caption. (Its
    keeping A's look is not asserted: the pastel fine-tune's outline is too faint to measure.)"""
    a, b, added = (styles(images, label) for label in ("A", "B", "A + (B - base)"))
    for caption, va, vb, vd in zip(CAPTIONS, a, b, added):
        name = "background_darkness"
        assert abs(vd[name] - vb[name]) < abs(vd[name] - va[name]), (caption, va, vb, vd)


def test_block_weight_halves(images):
    """The input side (IN00-IN11, M00) of one model with the output side (OUT00-OUT11) of the other: each half
    changes the image (neither split gives A's, B's or the other split's pixels), and neither invents a style
    outside the two models' range (background and stripes within A's and B's values, 0.1 either way), and the
    output side decides the background: each split's background is nearer its output model's."""
    halves = ("IN A | OUT B", "IN B | OUT A")
    for caption in CAPTIONS:
        drawn = [images[image_name(label, caption)] for label in ("A", "B", *halves)]
        for i, first in enumerate(drawn):
            for second in drawn[i + 1:]:
                assert not np.array_equal(first, second), caption
    a, b = styles(images, "A"), styles(images, "B")
    for label in halves:
        for caption, va, vb, x in zip(CAPTIONS, a, b, styles(images, label)):
            for name in ("background_darkness", "stripe_contrast"):
                low, high = sorted((va[name], vb[name]))
                assert low - 0.1 <= x[name] <= high + 0.1, (label, caption, name, va[name], vb[name], x[name])
    for label, out_side, in_side in (("IN A | OUT B", b, a), ("IN B | OUT A", a, b)):
        for caption, vo, vi, x in zip(CAPTIONS, out_side, in_side, styles(images, label)):
            name = "background_darkness"
            assert abs(x[name] - vo[name]) < abs(x[name] - vi[name]), (label, caption, vo[name], vi[name], x[name])
