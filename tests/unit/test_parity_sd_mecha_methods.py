"""rotate, crossover, clamp, add_opposite, geometric_sum, truncate_rank and n_model_stock equal sd-mecha 1.1.8's
functions on the same tensors (our delta d plus the base C against sd-mecha's merged tensor).

sd-mecha is a test-only reference (see test_sd_mecha_parity.py for how it is installed); its functions are called
through ``__wrapped__``. Tolerances: 1e-5 (relative and absolute, float32 inputs of unit scale) where both sides
run the same float32 operations in another order; 1e-4 where ours decomposes in float64 and sd-mecha in float32
(rotate's SVD and eigendecomposition, the Stiefel logarithm)."""
import importlib
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from merge_core.combine import orthogonal
from merge_core.combine.methods import METHODS
from merge_core.combine.params import MethodParams

SD_MECHA = Path(os.environ.get("MERGE_SUITE_SD_MECHA", Path.home() / ".cache/merge-suite/sd-mecha-1.1.8"))
MODULES = ("svd", "crossover", "limiting", "linear", "ties")


@pytest.fixture(scope="module")
def mecha():
    if not (SD_MECHA / "sd_mecha").is_dir():
        pytest.skip(f"sd-mecha 1.1.8 is not installed at {SD_MECHA} (see test_sd_mecha_parity.py to install it)")
    sys.path.append(str(SD_MECHA))  # last: the venv's torch, numpy and click win
    try:
        loaded = {name: importlib.import_module(f"sd_mecha.extensions.builtin.merge_methods.{name}")
                  for name in MODULES}
    except Exception as exc:  # an incompatible install: say why, do not fail the suite
        pytest.skip(f"sd-mecha at {SD_MECHA} does not import: {exc}")
    logging.getLogger().setLevel(logging.ERROR)  # its Stiefel logarithm logs each iteration's residual
    return loaded


rng = np.random.default_rng(1118)
SHAPES = [(11,), (16, 9), (5, 4, 3, 3), (6, 5, 1, 1)]


def tensors(shape, n, scale=1.0):
    return [torch.from_numpy((scale * rng.standard_normal(shape)).astype(np.float32)) for _ in range(n)]


def merged(method, base, models, **params):
    return base + METHODS[method].fn(base, models, MethodParams(**params), "k", [])


@pytest.mark.parametrize("shape", [(16, 9), (9, 9), (5, 4, 3, 3), (6, 5, 1, 1)])
@pytest.mark.parametrize("alignment", [1.0, 0.5, 0.3])
def test_rotate_equals_sd_mecha_with_alpha_0(mecha, shape, alignment):
    """Tall and square 2-D views (a 3x3 conv turns its kernel taps, a 1x1 conv its input channels)."""
    base = tensors(shape, 1)[0]
    model = base + 0.3 * tensors(shape, 1)[0]
    want = mecha["svd"].rotate.__wrapped__({"k": base}, {"k": model}, alignment=alignment, alpha=torch.tensor(0.0),
                                           key="k")
    torch.testing.assert_close(merged("rotate", base, [model], alignment=alignment), want, rtol=1e-4, atol=1e-4)


def test_rotate_keeps_1d_keys_as_sd_mecha(mecha):
    base, model = tensors((11,), 2)
    want = mecha["svd"].rotate.__wrapped__({"k": base}, {"k": model}, alignment=0.5, alpha=torch.tensor(0.0),
                                           key="k")
    assert torch.equal(merged("rotate", base, [model], alignment=0.5), want)


@pytest.mark.parametrize("t", [1.0, 0.25])
def test_frame_rotation_equals_sd_mecha_on_given_frames(mecha, t):
    """A wide matrix's map between two orthonormal frames, whole and fractional (the Stiefel geodesic): the same
    map as sd-mecha's for the same frames (its frames of centred rows include an arbitrary null-space basis, so the
    frames are given here)."""
    u = torch.linalg.qr(torch.from_numpy(rng.standard_normal((20, 6))).float()).Q
    q, r = torch.linalg.qr(u + 0.3 * torch.from_numpy(rng.standard_normal((20, 6))).float())
    v = q * torch.sign(torch.diagonal(r))  # the frame nearest u's columns, not a sign-flipped one
    x = tensors((6, 20), 1)[0]
    theirs = mecha["svd"].LowRankOrthogonalMatmul(u, v.mT)(x, t)
    ours = orthogonal.FrameRotation(u.double(), v.double()).apply(x, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(11,), (16, 9), (5, 4, 3, 3), (7, 6, 5)])
@pytest.mark.parametrize("mix,tilt", [(0.3, 0.0), (0.7, 0.5), (0.4, 1.5), (0.6, 2.0), (0.2, 3.3), (0.5, 1.0)])
def test_crossover_equals_sd_mecha(mecha, shape, mix, tilt):
    base, model = tensors(shape, 2)
    want = mecha["crossover"].crossover.__wrapped__(base, model, alpha=mix, tilt=tilt)
    torch.testing.assert_close(merged("crossover", base, [model], mix=mix, tilt=tilt), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mix", [0.0, 0.3, 0.5, 1.0])
def test_geometric_sum_equals_sd_mecha(mecha, shape, mix):
    """Negative values included: the real part of the principal complex powers. Zeros: 0^0 = 1 here, where torch's
    complex power of a zero by a tensor 0 (sd-mecha at mix 0 or 1) gives NaN: compared where sd-mecha is finite."""
    base, model = tensors(shape, 2)
    base.view(-1)[:2] = 0.0
    model.view(-1)[1:3] = 0.0
    want = mecha["linear"].geometric_sum.__wrapped__(base, model, alpha=torch.tensor(mix))
    got = merged("geometric_sum", base, [model], mix=mix)
    finite = torch.isfinite(want)
    assert torch.isfinite(got).all() and finite.sum() >= want.numel() - 3
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    if mix in (0.0, 1.0):
        torch.testing.assert_close(got, base if mix == 0.0 else model, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,weights", [(1, (1.5,)), (2, (1.0, 1.0)), (3, (0.8, -0.4, 1.3))])
@pytest.mark.parametrize("stiffness", [0.0, 0.6])
def test_clamp_equals_sd_mecha(mecha, shape, n, weights, stiffness):
    base, *models = tensors(shape, n + 1)
    total = base + sum(w * (m - base) for w, m in zip(weights, models))
    want = mecha["limiting"].clamp.__wrapped__(total, base, *models, stiffness=stiffness)
    got = merged("clamp", base, models, weights=weights, stiffness=stiffness)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_add_opposite_equals_sd_mecha(mecha, shape):
    """sd-mecha's add_opposite: a + (b - c) * add_opposite_mask(a, b, c); here a = M1, b = M2, c = C (where both
    differences are 0, the mask's 0/0 is 0)."""
    base, first, second = tensors(shape, 3)
    first.view(-1)[:2] = base.view(-1)[:2]
    second.view(-1)[:2] = base.view(-1)[:2]
    second.view(-1)[2:4] = 2 * base.view(-1)[2:4] - first.view(-1)[2:4]  # exactly opposite: the ratio is 2
    want = first + (second - base) * mecha["linear"].add_opposite_mask.__wrapped__(first, second, base, alpha=1.0)
    torch.testing.assert_close(merged("add_opposite", base, [first, second]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 5])
def test_n_model_stock_equals_sd_mecha(mecha, shape, n):
    base, *models = tensors(shape, n + 1)
    """Rows where 1 + (n-1) cos = 0 (two one-element rows of opposite signs) have no ratio: sd-mecha's nan_to_num
    gives float32's largest value there, here the base (t = 0)."""
    want = base + mecha["ties"].model_stock.__wrapped__(*[m - base for m in models], cos_eps=1e-6)
    got = merged("n_model_stock", base, models)
    defined = want.abs() < 1e30
    torch.testing.assert_close(got[defined], want[defined], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[~defined], base[~defined])


@pytest.mark.parametrize("shape,rank", [((16, 9), 3), ((9, 16), 5), ((6, 5, 3, 3), 2), ((8, 4, 1, 1), 4),
                                        ((16, 9), 9), ((11,), 3)])
@pytest.mark.parametrize("weights", [(1.0,), (0.7, -0.3)])
def test_truncate_rank_equals_sd_mecha_exact(mecha, shape, rank, weights):
    """Ranks at or above half the short side take the exact SVD (lowrank_svd.EXACT_FRACTION), as sd-mecha's
    use_approximate_basis=False."""
    base, *models = tensors(shape, len(weights) + 1)
    total = sum(w * (m - base) for w, m in zip(weights, models))
    want = base + mecha["svd"].truncate_rank.__wrapped__(total, rank=rank, use_approximate_basis=False)
    got = merged("truncate_rank", base, models, weights=weights, rank=rank)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
