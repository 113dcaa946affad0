"""The compiled 3^4 median kernel against SciPy's median_filter, and its fallbacks."""
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from merge_core.methods import native
from merge_core.methods.filters import _median_gather, median_filter3

rng = np.random.default_rng(7)
HAS_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def kernel(x):
    out = native.median3_kernel4d(torch.from_numpy(x))
    assert out is not None, "the kernel should apply to this shape"
    return out.numpy()


@pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine: the torch path is used instead")
def test_kernel_builds_where_a_compiler_exists():
    assert native.library() is not None


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (1, 1, 3, 3), (2, 2, 2, 2), (4, 3, 1, 3), (6, 5, 3, 1),
                                   (1, 1, 1, 1), (3, 1, 1, 2), (2, 9, 3, 2), (64, 48, 3, 3)])
def test_kernel_equals_scipy(shape):
    for trial in range(4):
        if trial == 0:
            x = rng.standard_normal(shape)
        elif trial == 1:
            x = rng.integers(-2, 3, size=shape)  # many ties
        elif trial == 2:
            x = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, size=shape)  # wide magnitudes
        else:
            x = rng.choice([-np.inf, np.inf, 0.0, 1.0, -1.0], size=shape)  # infinities are ordered values
        x = x.astype(np.float32)
        assert np.array_equal(kernel(x), ndi.median_filter(x, size=3)), (shape, trial)


@pytest.mark.skipif(not HAS_CC, reason="no C compiler")
def test_threads_split_rows_without_changing_the_result(monkeypatch):
    x = rng.standard_normal((301, 40, 3, 3)).astype(np.float32)
    want = ndi.median_filter(x, size=3)
    for threads in (1, 2, 5):
        monkeypatch.setattr(native, "compute_threads", lambda limit=None, n=threads: n)
        monkeypatch.setattr(native, "PARALLEL_MIN", 1)
        assert np.array_equal(kernel(x), want)


def test_kernel_declines_what_it_cannot_do_and_the_filter_still_matches_scipy():
    nan = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    nan[2, 1, 1, 1] = np.nan
    for x in (nan, rng.standard_normal((5, 4, 3, 5)).astype(np.float32),
              rng.standard_normal((5, 4, 3, 3)).astype(np.float64)):
        assert native.median3_kernel4d(torch.from_numpy(x)) is None
    x = rng.standard_normal((5, 4, 3, 5)).astype(np.float32)
    assert np.array_equal(median_filter3(torch.from_numpy(x)).numpy(), ndi.median_filter(x, size=3))


def test_disabled_kernel_falls_back_to_the_same_values(monkeypatch):
    x = rng.standard_normal((9, 7, 3, 3)).astype(np.float32)
    with_kernel = median_filter3(torch.from_numpy(x)).numpy()
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    assert native.median3_kernel4d(torch.from_numpy(x)) is None
    assert np.array_equal(median_filter3(torch.from_numpy(x)).numpy(), with_kernel)
    assert np.array_equal(_median_gather(torch.from_numpy(x)).numpy(), with_kernel)


@pytest.mark.parametrize("shape,budget", [((50, 7), 40), ((33, 5, 3, 3), 100), ((9, 4, 3), 20), ((12, 3), 3),
                                          ((6, 2, 3, 3), 18), ((40, 1, 30), 31)])
def test_smooth_in_slabs_equals_the_whole_tensor_filter_and_scipy(shape, budget):
    from merge_core.methods.filters import smooth
    x = rng.standard_normal(shape).astype(np.float32)
    slabbed = smooth(torch.from_numpy(x), budget=budget).numpy()
    whole = smooth(torch.from_numpy(x), budget=10 ** 9).numpy()
    ref = ndi.gaussian_filter(ndi.median_filter(x, size=3), sigma=1)
    assert np.abs(slabbed - whole).max() <= 1e-6 * np.abs(ref).max()
    assert np.abs(slabbed - ref).max() <= 1e-5 * np.abs(ref).max()
