"""Calc modes against independent NumPy/SciPy transcriptions of docs/merging.md#calc-modes."""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from spec_blocks import sd1_block
from test_merge_api import SD1_NAMES, small_model

from merge_core import merge_state_dicts
from merge_core.methods.calcmodes import (CALC_MODES, KeyContext, cosine_stats, extract, get_calc_mode, plus_random,
                                  self_scale, smooth_add, tensor2_exchange, tensor_exchange, train_difference)
from merge_core.errors import MergeInputError
from merge_core.methods.filters import _median_gather, gaussian_filter, median_filter3

rng = np.random.default_rng(0)
SHAPES = [(7,), (6, 5), (8, 4, 3, 3), (5, 3, 1, 1), (130, 120)]


def t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def ctx(alpha=0.3, beta=0.2, gamma=0.5, key="model.diffusion_model.input_blocks.1.0.in_layers.2.weight", **kw):
    return KeyContext(key, alpha, beta, gamma, **kw)


@pytest.mark.parametrize("shape", SHAPES + [(3, 4, 5), (1, 9), (2, 1, 3, 1), (9, 9, 3, 3)])
def test_filters_equal_scipy(shape):
    for trial in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        if trial == 2:
            x = rng.integers(-2, 3, size=shape).astype(np.float32)  # ties
        med = ndi.median_filter(x, size=3)
        assert np.array_equal(median_filter3(t(x)).numpy(), med)
        ref = ndi.gaussian_filter(med, sigma=1)
        got = gaussian_filter(t(med)).numpy()
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (5, 2, 3)])
def test_torch_median_path_used_on_gpus_equals_scipy(shape):
    x = rng.integers(-3, 4, size=shape).astype(np.float32)
    assert np.array_equal(_median_gather(t(x), use_numpy=False).numpy(), ndi.median_filter(x, size=3))


@pytest.mark.parametrize("shape", SHAPES)
def test_smooth_add(shape):
    a, b, c = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    want = a + 0.4 * ndi.gaussian_filter(ndi.median_filter(b - c, size=3), sigma=1)
    got = smooth_add(t(a), t(b), t(c), ctx(alpha=0.4)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_train_difference(shape):
    a, b, c = (rng.standard_normal(shape).astype(np.float64) for _ in range(3))
    b.flat[0] = c.flat[0]  # a zero B-C term
    diff = b - c
    denom = np.abs(diff) + np.abs(b - a)
    frac = np.where(denom != 0, np.abs(b - a) / np.where(denom == 0, 1, denom), 0)
    want = a + 1.8 * 0.7 * diff * frac
    got = train_difference(t(a), t(b), t(c), ctx(alpha=0.7)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert train_difference(t(a), t(b), t(b), ctx()) is None, "B == C keeps A"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta,gamma", [(0.0, 0.5, 0.3), (0.7, 0.1, 2.0), (1.0, 1.0, 0.0)])
def test_extract(shape, alpha, beta, gamma):
    a, b, c = (rng.standard_normal(shape) for _ in range(3))
    x, y = b - a, c - a
    cos = (x * y).sum(-1) / np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-8)
    d = ((np.clip(cos, -1, 1)[..., None] + 1) / 2) ** gamma
    want = a + (x + alpha * (y - x)) * (d + beta * (1 - 2 * d))
    got = extract(t(a), t(b), t(c), ctx(alpha, beta, gamma)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def spec_slices(a, b, alpha, beta, axis, n):
    out = a.copy() if alpha + beta <= 1 else b.copy()
    src = b if alpha + beta <= 1 else a
    lo, hi = (int(n * beta), int(n * (alpha + beta))) if alpha + beta <= 1 else (int(n * (alpha + beta - 1)),
                                                                                 int(n * beta))
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(lo, hi)
    out[tuple(idx)] = src[tuple(idx)]
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta", [(0.3, 0.2), (0.5, 0.8), (1.0, 0.0)])
def test_tensor_and_tensor2(shape, alpha, beta):
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    got = tensor_exchange(t(a), t(b), None, ctx(alpha, beta)).numpy()
    np.testing.assert_array_equal(got, spec_slices(a, b, alpha, beta, 0, shape[0]))
    axis = 0 if len(shape) == 1 else 1
    n = shape[1] if (len(shape) > 1 and shape[1] > 100) else shape[0]  # quirk 9 kept
    got2 = tensor2_exchange(t(a), t(b), None, ctx(alpha, beta)).numpy()
    np.testing.assert_array_equal(got2, spec_slices(a, b, alpha, beta, axis, n))
    fixed = tensor2_exchange(t(a), t(b), None, ctx(alpha, beta, corrected=True)).numpy()
    np.testing.assert_array_equal(fixed, spec_slices(a, b, alpha, beta, axis, shape[axis]))


def test_self_and_plus_random():
    a = t(rng.standard_normal((4, 4)))
    assert torch.equal(self_scale(a, a, None, ctx(alpha=0.5)), a * 0.5)
    assert self_scale(a, a, None, ctx(alpha=0.5, key="x.proj_out.weight")) is None
    assert self_scale(a, a, None, ctx(alpha=0.0)) is None
    r1 = plus_random(a, a, None, ctx(alpha=0.1, seed=5))
    r2 = plus_random(a, a, None, ctx(alpha=0.1, seed=5))
    r3 = plus_random(a, a, None, ctx(alpha=0.1, seed=6))
    assert torch.equal(r1, r2) and not torch.equal(r1, r3), "seeded and reproducible"
    assert 0.05 < (r1 - a).std() < 0.2
    assert plus_random(a, a, None, ctx(alpha=0.1, key="x.norm1.weight")) is None


def spec_cosine_stats(values):
    v = values[~np.isnan(values)]
    v = np.delete(v, np.where(v < np.percentile(v, 1, method="midpoint")))
    v = np.delete(v, np.where(v > np.percentile(v, 99, method="midpoint")))
    return v.min(), v.max()


def test_cosine_stats_match_numpy_percentiles():
    values = rng.standard_normal(10001)
    values[::97] = np.nan
    got = cosine_stats(torch.from_numpy(values))
    np.testing.assert_allclose(got, spec_cosine_stats(values), rtol=0, atol=0)


def spec_cos_dim0(x, y):
    return (x * y).sum(0) / np.maximum(np.linalg.norm(x, axis=0) * np.linalg.norm(y, axis=0), 1e-8)


@pytest.mark.parametrize("variant", ["cosineA", "cosineB"])
def test_cosine_modes_through_the_engine(variant, sd1_keys):
    keys = {k: s for k, s in sd1_keys.items() if k.startswith((
        "model.diffusion_model.input_blocks.1.", "model.diffusion_model.input_blocks.11.",
        "first_stage_model.decoder.conv_out"))}
    gen = torch.Generator().manual_seed(3)
    a = {k: torch.randn((6, 5) if len(s) > 1 else (5,), generator=gen) for k, s in keys.items()}
    b = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in a.items()}
    alpha = 0.2
    out = merge_state_dicts(a, b, calcmode=variant, alpha=alpha)

    def norm0(x):
        return x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), 1e-12)
    vals = []
    for k in keys:
        if k.startswith("first_stage_model"):
            continue
        x, y = a[k].double().numpy(), b[k].double().numpy()
        if variant == "cosineA":
            vals.append(np.ravel(spec_cos_dim0(norm0(x), norm0(y))))
        else:
            vals.append(np.ravel((spec_cos_dim0(x, y) + (x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y)) / 2))
    s_min, s_max = spec_cosine_stats(np.concatenate(vals))
    for k in keys:
        x, y = a[k].double().numpy(), b[k].double().numpy()
        if k.startswith("first_stage_model"):
            assert torch.equal(out[k], a[k]), "cosine modes keep A's VAE"
            continue
        xs, ys = (norm0(x), norm0(y)) if variant == "cosineA" else (x, y)
        comb = (spec_cos_dim0(xs, ys) + (xs * ys).sum() / np.linalg.norm(xs) / np.linalg.norm(ys)) / 2
        kk = np.clip((comb - s_min) / (s_max - s_min) - abs(alpha), 0, 1)
        np.testing.assert_allclose(out[k].double().numpy(), y * (1 - kk) + x * kk, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("calcmode", ["trainDifference", "smoothAdd", "extract", "tensor", "self"])
def test_block_weights_apply_per_block(calcmode, sd1_keys):
    keys = {k: s for k, s in sd1_keys.items() if k.startswith("model.diffusion_model.")}
    a, b, c = small_model(keys, 1, torch.float32), small_model(keys, 2, torch.float32), small_model(keys, 3,
                                                                                                  torch.float32)
    alphas = [round(0.1 + 0.8 * i / 26, 3) for i in range(26)]
    mode = "Add difference" if calcmode in ("smoothAdd",) else "Weight sum"
    out = merge_state_dicts(a, b, c, mode=mode, calcmode=calcmode, blocks_alpha=",".join(map(str, alphas)),
                            beta=0.1, gamma=1.0)
    fn = CALC_MODES[calcmode].fn
    for key in list(keys)[::23]:
        if "weight" not in key and "bias" not in key:
            continue
        kc = ctx(alphas[SD1_NAMES.index(sd1_block(key))], 0.1, 1.0, key=key)
        want = fn(a[key], b[key], c[key], kc)
        want = a[key] if want is None else want
        torch.testing.assert_close(out[key], want, rtol=1e-5, atol=1e-6, msg=key)
    if calcmode in ("trainDifference", "smoothAdd", "extract"):  # tiny tensors may get empty slices
        assert not any(torch.equal(out[k], a[k]) for k in list(keys)[:3])


def test_forcing_and_refused_pairings(sd1_keys):
    keys = {k: s for k, s in sd1_keys.items() if k.startswith(("model.diffusion_model.out.",
                                                                 "model.diffusion_model.input_blocks.11."))}
    a, b, c = small_model(keys, 1), small_model(keys, 2), small_model(keys, 3)
    forced = merge_state_dicts(a, b, c, mode="Weight sum", calcmode="trainDifference", alpha=0.5)
    direct = merge_state_dicts(a, b, c, mode="Add difference", calcmode="trainDifference", alpha=0.5)
    assert all(torch.equal(forced[k], direct[k]) for k in forced)
    with pytest.raises(MergeInputError, match="'smoothAdd' does not work with 'Weight sum'.*Add difference"):
        merge_state_dicts(a, b, c, mode="Weight sum", calcmode="smoothAdd")
    with pytest.raises(MergeInputError, match="'cosineA' does not work with 'Triple sum'"):
        merge_state_dicts(a, b, c, mode="Triple sum", calcmode="cosineA")
    with pytest.raises(MergeInputError, match="model_c.*'trainDifference'"):
        merge_state_dicts(a, b, calcmode="trainDifference")
    with pytest.raises(MergeInputError, match="unknown calc mode 'cosineC'"):
        merge_state_dicts(a, b, calcmode="cosineC")
    for kwargs, match in ((dict(alpha=1.5), "'alpha': is 1.5"), (dict(alpha=0.5, beta=-0.1), "'beta': is -0.1"),
                          (dict(alpha=0.5, beta=0.5, gamma=-1), "'gamma': is -1")):
        with pytest.raises(MergeInputError, match=match):
            merge_state_dicts(a, b, c, calcmode="extract", **kwargs)
    assert get_calc_mode("smoothAdd MT") is CALC_MODES["smoothAdd"]
    assert get_calc_mode("normal") is None


def test_results_take_a_dtype_and_inputs_are_untouched(sd1_keys):
    keys = {k: s for k, s in sd1_keys.items() if k.startswith(("model.diffusion_model.out.",
                                                                 "model.diffusion_model.input_blocks.11."))}
    a, b, c = small_model(keys, 1), small_model(keys, 2), small_model(keys, 3)
    snap = {k: v.clone() for k, v in a.items()}
    for calcmode, mode in (("trainDifference", "Add difference"), ("smoothAdd", "Add difference"),
                           ("plus random", "Weight sum"), ("tensor", "Weight sum")):
        out = merge_state_dicts(a, b, c, mode=mode, calcmode=calcmode, alpha=0.5)
        assert all(out[k].dtype == a[k].dtype for k in out), calcmode  # quirk 12 fixed
    assert all(torch.equal(snap[k], a[k]) for k in a)
