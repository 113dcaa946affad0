"""TIES, geometric median, SLERP and add-perpendicular equal sd-mecha 1.1's on the same tensors.

sd-mecha is a test-only reference, never a dependency: it is looked for in $MERGE_SUITE_SD_MECHA or
~/.cache/merge-suite/sd-mecha-1.1.8 (`pip install --no-deps --target ~/.cache/merge-suite/sd-mecha-1.1.8
sd-mecha==1.1.8 fuzzywuzzy python-Levenshtein`; --no-deps keeps it from pulling another torch). Its functions
are called through ``__wrapped__``, the plain function under its merge-method decorator. The tests skip,
saying so, when it is not installed.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from merge_core.combine.formulas import geometric_median, ties
from merge_core.methods.spherical import add_perpendicular, slerp

SD_MECHA = Path(os.environ.get("MERGE_SUITE_SD_MECHA", Path.home() / ".cache/merge-suite/sd-mecha-1.1.8"))


@pytest.fixture(scope="module")
def mecha():
    if not (SD_MECHA / "sd_mecha").is_dir():
        pytest.skip(f"sd-mecha 1.1.8 is not installed at {SD_MECHA} (see this module's docstring to install it)")
    sys.path.append(str(SD_MECHA))  # last: the venv's torch, numpy and click win
    try:
        from sd_mecha.extensions.builtin.merge_methods import linear, ties as mecha_ties
    except Exception as exc:  # an incompatible install: say why, do not fail the suite
        pytest.skip(f"sd-mecha at {SD_MECHA} does not import: {exc}")
    return linear, mecha_ties


rng = np.random.default_rng(1115)
SHAPES = [(11,), (16, 9), (5, 4, 3, 3)]


def tensors(shape, n):
    return [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for _ in range(n)]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_ties_sum_with_vote_sgn(mecha, n, shape, density):
    _, mt = mecha
    taus = tensors(shape, n)
    want = mt.ties_sum.__wrapped__(*taus, k=density, vote_sgn=True)
    torch.testing.assert_close(ties(taus, density), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps,iterations", [(1e-6, 100), (1e-3, 7)])
def test_geometric_median_equals_sd_mecha(mecha, n, shape, eps, iterations):
    _, mt = mecha
    points = tensors(shape, n)
    want = mt.geometric_median.__wrapped__(*points, eps=eps, maxiter=iterations)
    torch.testing.assert_close(geometric_median(points, [1.0] * n, eps, iterations), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9])
def test_slerp_equals_sd_mecha(mecha, shape, alpha):
    linear, _ = mecha
    a, b = tensors(shape, 2)
    want = linear.slerp.__wrapped__(a, b, alpha=torch.tensor(alpha))
    torch.testing.assert_close(slerp(a, b, alpha), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_add_perpendicular_equals_sd_mecha(mecha, shape, alpha):
    """sd-mecha's add_perpendicular is a recipe: add_difference(A, perpendicular_component(A - C, B - C), alpha)."""
    linear, _ = mecha
    a, b, c = tensors(shape, 3)
    want = a + alpha * linear.perpendicular_component.__wrapped__(a - c, b - c)
    torch.testing.assert_close(add_perpendicular(a, b, c, alpha), want, rtol=1e-5, atol=1e-5)
    # A = C: sd-mecha's NaN check gives zeros, so A is kept; so here
    torch.testing.assert_close(add_perpendicular(c, b, c, alpha), c + alpha * linear.perpendicular_component
                               .__wrapped__(c - c, b - c))
