"""SCE, DELLA linear, Breadcrumbs-TIES, NuSLERP, multi-SLERP, the Karcher mean and NearSwap equal mergekit 0.1.5's on
the same tensors, our parameters mapped to theirs.

mergekit is a test-only reference, never a dependency: it is looked for in $MERGE_SUITE_MERGEKIT or
~/.cache/merge-suite/mergekit-0.1.5 (scripts/test.sh installs it with --no-deps). Its methods are called through
their undecorated functions (a registered method's ``implementation`` or ``merge_group``) on a TensorGroup built
here, base first. The tests skip, saying so, when it is not installed.

Tolerances: rtol 1e-5 / atol 1e-6 (1e-5 for the iterative Karcher mean) on values of order 1: both sides compute
in float32 with the same formulas, but not in the same order (ours forms C + alpha * d from a delta, mergekit the
merged tensor directly; sums over models run in another order), which moves the last bits only.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from merge_core.combine import formulas
from merge_core.combine.deltas import combine_key
from merge_core.combine.methods import METHODS, MethodParams

MERGEKIT = Path(os.environ.get("MERGE_SUITE_MERGEKIT", Path.home() / ".cache/merge-suite/mergekit-0.1.5"))
KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"


@pytest.fixture(scope="module")
def mk():
    if not (MERGEKIT / "mergekit").is_dir():
        pytest.skip(f"mergekit 0.1.5 is not installed at {MERGEKIT} (see this module's docstring)")
    sys.path.append(str(MERGEKIT))  # last: the venv's torch and numpy win
    try:
        from mergekit.merge_methods import base, karcher, registry
    except Exception as exc:  # an incompatible install: say why, do not fail the suite
        pytest.skip(f"mergekit at {MERGEKIT} does not import: {exc}")
    return base, karcher, registry


rng = np.random.default_rng(2408)
SHAPES = [(11,), (16, 9), (5, 4, 3, 3)]


def tensors(shape, n):
    return [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for _ in range(n)]


def group(mk, base, models):
    return mk[0].TensorGroup.from_tensors([base, *models], base_index=0)


def per_model(mk, values):
    """A per-model parameter as mergekit takes it (entries 1..n; 0 is the base)."""
    return mk[0].PerInputValues([(i + 1, v) for i, v in enumerate(values)])


def ours(name, base, models, **params):
    return combine_key(METHODS[name], MethodParams(**params), KEY, 1.0, base, models)


def close(got, want, tol=1e-5):
    torch.testing.assert_close(got, want, rtol=tol, atol=tol / 10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("density", [0.3, 1.0])
def test_sce_equals_mergekit(mk, shape, n, density):
    """select_topk = density; mergekit weighs no model: our weights w_i equal its SCE of C + w_i (M_i - C)."""
    base, *models = tensors(shape, n + 1)
    want = mk[2].get("sce").implementation(group(mk, base, models), select_topk=density)
    close(ours("sce", base, models, density=density), want)
    weights = (0.5, -1.5, 2.0)[:n]
    scaled = [base + w * (m - base) for m, w in zip(models, weights)]
    want = mk[2].get("sce").implementation(group(mk, base, scaled), select_topk=density)
    close(ours("sce", base, models, density=density, weights=weights), want)


def test_sce_weighs_small_task_vectors_by_their_mean_square():
    """mergekit weighs uniformly once the mean squares sum below 1e-6 (most keys of a diffusion model); ours is
    scale-free: SCE of task vectors scaled by 1e-4 is SCE of the originals scaled by 1e-4."""
    base = torch.zeros(16, 9)
    models = tensors((16, 9), 3)
    sce = METHODS["sce"].fn
    params = MethodParams(density=0.5)
    close(sce(base, [1e-4 * m for m in models], params, KEY, []), 1e-4 * sce(base, models, params, KEY, []),
          tol=1e-9)


def _della_linear(mk, base, models, weights, density, eps_mergekit, monkeypatch, drop_rate, epsilon):
    """mergekit's della_linear with our keep mask: its torch.bernoulli(probs) is replaced by our draw's keep mask
    divided by probs. Our DELLA draws uniform numbers from our generator and scales kept values by 1/(1 - p_r); theirs
    draws torch.bernoulli and rescales by the L1 norm (rescale = true), a different random scheme: so mergekit runs
    with rescale = false, and the replaced draw returns keep / probs, its probability, which this test first checks
    equal to our 1 - p_r. What is compared is then everything else: the ranks, the mapping of the parameters, the
    weighting, the plain sum (normalize = false)."""
    calls = []

    def bernoulli(probs):
        i = len(calls)
        tau = (models[i] - base) * weights[i]
        p = formulas.della_probabilities(tau, drop_rate, epsilon).reshape(probs.shape)
        torch.testing.assert_close(probs, 1 - p, rtol=0, atol=1e-6)
        draw = torch.rand(tau.shape, generator=formulas.model_generator(0, KEY, i)).reshape(probs.shape)
        calls.append(i)
        return ((draw >= p) & (p < 1)).float() / probs

    monkeypatch.setattr(torch, "bernoulli", bernoulli)
    n = len(models)
    out = mk[2].get("della_linear").merge_group(
        group(mk, base, models), int8_mask=False, normalize=False, rescale=False, **{"lambda": 1.0},
        weight=dict(zip(range(1, n + 1), weights)), density=dict.fromkeys(range(1, n + 1), density),
        epsilon=dict.fromkeys(range(1, n + 1), eps_mergekit))
    assert len(calls) == n
    return out


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("drop_rate,epsilon", [(0.7, 0.2), (0.4, 0.5)])
def test_della_linear_equals_mergekit_on_vectors(mk, monkeypatch, n, drop_rate, epsilon):
    """On a 1-D tensor mergekit ranks the whole vector as we do: density = 1 - drop_rate, and its epsilon is our
    half-spread over its endpoints, epsilon * (numel - 1) / (2 numel) (ours spans ranks 1..numel by r / numel, its
    by (r - 1) / (numel - 1))."""
    base, *models = tensors((64,), n + 1)
    weights = (1.0, 0.5, -2.0)[:n]
    want = _della_linear(mk, base, models, weights, 1 - drop_rate, epsilon * 63 / 128, monkeypatch,
                         drop_rate, epsilon)
    close(ours("della_linear", base, models, weights=weights, drop_rate=drop_rate, epsilon=epsilon), want)


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_della_linear_equals_mergekit_without_spread(mk, monkeypatch, shape):
    """mergekit ranks a matrix within each row (along dimension 1), ours over the whole tensor: with epsilon 0 the
    ranks do not matter and every shape compares."""
    base, *models = tensors(shape, 3)
    weights = (0.8, 1.2)
    want = _della_linear(mk, base, models, weights, 0.4, 0.0, monkeypatch, 0.6, 0.0)
    close(ours("della_linear", base, models, weights=weights, drop_rate=0.6, epsilon=0.0), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("top,bottom", [(0.01, 0.1), (0.2, 0.3), (0.0, 0.0)])
def test_breadcrumbs_ties_equals_mergekit(mk, shape, n, top, bottom):
    """gamma = top, density = 1 - top - bottom; mergekit floors density * numel and gamma * numel and takes the
    remainder as the bottom count, so the test passes it counts + 0.5 (over numel) to floor to ours exactly."""
    base, *models = tensors(shape, n + 1)
    numel = base.numel()
    n_top, n_bottom = int(top * numel), int(bottom * numel)
    gamma, density = (n_top + 0.5) / numel, (numel - n_top - n_bottom + 0.5) / numel
    weights = (1.0, 0.7, -0.4, 1.3)[:n]
    ids = range(1, n + 1)
    want = mk[2].get("breadcrumbs_ties").merge_group(
        group(mk, base, models), int8_mask=False, normalize=False, rescale=False, **{"lambda": 1.0},
        weight=dict(zip(ids, weights)), density=dict.fromkeys(ids, density), gamma=dict.fromkeys(ids, gamma))
    close(ours("breadcrumbs_ties", base, models, weights=weights, top=top, bottom=bottom), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis,row_wise,flatten", [("whole", False, True), ("rows", False, False),
                                                   ("columns", True, False)])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.3, 0.9), (2.0, -0.5)])
def test_nuslerp_equals_mergekit(mk, shape, axis, row_wise, flatten, weights):
    base, *models = tensors(shape, 3)
    want = mk[2].get("nuslerp").merge_group(group(mk, base, models), weight=per_model(mk, weights),
                                             nuslerp_row_wise=row_wise, nuslerp_flatten=flatten)
    close(ours("nuslerp", base, models, weights=weights, slerp_axis=axis), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_multislerp_equals_mergekit(mk, shape, n):
    base, *models = tensors(shape, n + 1)
    weights = (0.5, 2.0, 1.0, 0.25)[:n]
    want = mk[2].get("multislerp").merge_group(group(mk, base, models), weight=per_model(mk, weights))
    close(ours("multislerp", base, models, weights=weights), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("iterations,tolerance", [(10, 1e-5), (100, 1e-7)])
def test_karcher_equals_mergekit(mk, shape, n, iterations, tolerance):
    """mergekit's method weighs equally (1/n) and ignores the base (its contract drops it from the group); its
    karcher_merge_tensors takes our normalised weights as alphas."""
    base, *models = tensors(shape, n + 1)
    weights = (1.0, 3.0, 0.5, 2.0, 1.5)[:n]
    alphas = [w / sum(weights) for w in weights]
    want = mk[1].karcher_merge_tensors(models, alphas, max_iter=iterations, tol=tolerance)
    close(ours("karcher", base, models, weights=weights, iterations=iterations, tolerance=tolerance), want)
    models_only = mk[0].TensorGroup.from_tensors(models)
    want = mk[2].get("karcher").merge_group(models_only, max_iter=iterations, tol=tolerance)
    close(ours("karcher", base, models, iterations=iterations, tolerance=tolerance), want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threshold", [0.0, 1e-3, 0.5, 5.0])
def test_nearswap_equals_mergekit(mk, shape, threshold):
    """mergekit's a is the base C, b the model M1."""
    base, model = tensors(shape, 2)
    model[..., 0] = base[..., 0]  # |a - b| = 0: its clamp to 1e-6
    want = mk[2].get("nearswap").merge_group(group(mk, base, [model]), t=threshold)
    close(ours("nearswap", base, [model], similarity_threshold=threshold), want)
