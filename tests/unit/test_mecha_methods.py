"""sd-mecha's methods in combine (rotate, crossover, clamp, add_opposite, geometric_sum, truncate_rank,
n_model_stock): the inputs each refuses (naming the input), their fallbacks, inputs left unmodified, the randomized
SVD's error against the exact one, and one CLI run."""
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli import run_cli
from test_combine import UNET_KEY, models_for

from merge_core.combine import lowrank_svd, orthogonal
from merge_core.combine.deltas import combine_key
from merge_core.combine.methods import METHODS
from merge_core.combine.params import MethodParams
from merge_core.combine.planning import combine_architecture
from merge_core.combine.settings import make_combine_settings
from merge_core.errors import MergeInputError

ONE_MODEL = ("rotate", "crossover", "geometric_sum")


@pytest.fixture(scope="module")
def arch(sd1_keys):
    return combine_architecture([dict(sd1_keys)])


def refused(arch, n, method, **options):
    with pytest.raises(MergeInputError) as exc:
        make_combine_settings(arch, n, method, **options)
    return exc.value


@pytest.mark.parametrize("method", ONE_MODEL)
def test_one_model_methods_refuse_two(arch, method):
    error = refused(arch, 2, method)
    assert error.input_name == "models" and "exactly 1" in error.problem


@pytest.mark.parametrize("n", [1, 3])
def test_add_opposite_takes_exactly_two(arch, n):
    assert refused(arch, n, "add_opposite").input_name == "models"
    make_combine_settings(arch, 2, "add_opposite")


@pytest.mark.parametrize("method,name,value", [
    ("rotate", "alignment", 1.5), ("rotate", "alignment", -0.1), ("crossover", "mix", 1.2),
    ("geometric_sum", "mix", -0.5), ("clamp", "stiffness", 2.0), ("crossover", "tilt", 4.5),
    ("truncate_rank", "rank", 0), ("rotate", "alignment", math.nan)])
def test_parameters_outside_their_domain_are_refused(arch, method, name, value):
    error = refused(arch, 1, method, **{name: value})
    assert error.input_name == name, error


@pytest.mark.parametrize("method", ["add_opposite", "n_model_stock", "rotate"])
def test_methods_without_weights_refuse_them(arch, method):
    n = METHODS[method].max_models or 2
    assert refused(arch, n, method, weights=",".join(["1"] * n)).input_name == "weights"


@pytest.mark.parametrize("method,n,params", [
    ("rotate", 1, MethodParams(alignment=0.4)), ("rotate", 1, MethodParams(alignment=1.0)),
    ("crossover", 1, MethodParams(mix=0.3, tilt=0.5)), ("geometric_sum", 1, MethodParams(mix=0.3)),
    ("clamp", 3, MethodParams(weights=(1.0, 0.5, -0.3), stiffness=0.5)), ("add_opposite", 2, MethodParams()),
    ("truncate_rank", 2, MethodParams(rank=2)), ("n_model_stock", 3, MethodParams())])
@pytest.mark.parametrize("shape", [(7,), (12, 5), (4, 12), (4, 3, 3, 3)])
def test_inputs_are_not_modified_and_results_finite(method, n, params, shape):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(shape, generator=gen).half()
    models = [base.float().add(0.2 * torch.randn(shape, generator=gen)).half() for _ in range(n)]
    copies = [t.clone() for t in (base, *models)]
    delta = METHODS[method].fn(base, models, params, "k", [])
    assert delta.shape == base.shape and delta.dtype == torch.float32 and torch.isfinite(delta).all()
    assert all(torch.equal(a, b) for a, b in zip((base, *models), copies))


def test_rotate_keeps_1d_keys_and_a_zero_alignment():
    base, model = torch.randn(6), torch.randn(6)
    assert torch.equal(METHODS["rotate"].fn(base, [model], MethodParams(), "k", []), torch.zeros(6))
    base, model = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(METHODS["rotate"].fn(base, [model], MethodParams(alignment=0.0), "k", []), torch.zeros(6, 4))


def test_rotate_full_alignment_is_the_procrustes_optimum():
    """Tall: the centred rows turned by Q are at least as close to the model's as any other rotation tried."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(20, 6, generator=gen)
    model = base @ torch.linalg.qr(torch.randn(6, 6, generator=gen)).Q + 0.01 * torch.randn(20, 6, generator=gen)
    rotated = base + METHODS["rotate"].fn(base, [model], MethodParams(alignment=1.0), "k", [])
    assert torch.dist(rotated, model) < 0.1 * torch.dist(base, model)
    half = base + METHODS["rotate"].fn(base, [model], MethodParams(alignment=0.5), "k", [])
    twice = orthogonal.orthogonal_power(orthogonal.orthogonal_power(torch.eye(6), 0.5), 2.0)
    torch.testing.assert_close(twice, torch.eye(6, dtype=torch.float64))
    assert torch.dist(base, model) > torch.dist(half, model) > torch.dist(rotated, model)


def test_fractional_power_of_a_rotation_composes():
    q = torch.linalg.qr(torch.randn(9, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).Q
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    root = orthogonal.orthogonal_power(q, 1 / 3)
    torch.testing.assert_close(root @ root @ root, q, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(root @ root.mT, torch.eye(9, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_frames_too_far_apart_fall_back_to_a_scaled_change():
    u = torch.eye(6, 2, dtype=torch.float64)
    v = -u  # opposite frames: no unique geodesic (the logarithm of -I is not principal)
    x = torch.randn(3, 6)
    fallbacks = []
    out = orthogonal.FrameRotation(u, v).apply(x, 0.5, fallbacks)
    whole = orthogonal.FrameRotation(u, v).apply(x, 1.0)
    assert torch.isfinite(out).all() and "rotate" in fallbacks[0]
    torch.testing.assert_close(out, x + 0.5 * (whole - x))


def test_n_model_stock_undefined_rows_keep_the_base():
    base = torch.zeros(3, 1)
    models = [torch.tensor([[1.0], [2.0], [1.0]]), torch.tensor([[-1.0], [3.0], [-2.0]])]
    fallbacks = []
    delta = METHODS["n_model_stock"].fn(base, models, MethodParams(), "k", fallbacks)
    assert delta[0, 0] == 0 and delta[2, 0] == 0 and delta[1, 0] == 2.5 and fallbacks


def test_add_opposite_ratio():
    base = torch.zeros(4)
    first = torch.tensor([1.0, 1.0, 0.0, 0.0])
    second = torch.tensor([-1.0, 1.0, 2.0, 0.0])  # opposite, equal, one side 0, both 0
    delta = METHODS["add_opposite"].fn(base, [first, second], MethodParams(), "k", [])
    assert delta.tolist() == [1.0 - 2.0, 1.0, 2.0, 0.0]


def test_randomized_truncation_is_within_a_percent_of_the_exact_one():
    """A 120 x 80 matrix with singular values 0.9^j: rank 8 by the randomized path (8 + 10 < 40) has a Frobenius
    error within 1% of Eckart-Young's optimum (the exact SVD's)."""
    gen = torch.Generator().manual_seed(11)
    u = torch.linalg.qr(torch.randn(120, 80, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(80, 80, generator=gen)).Q
    matrix = (u * 0.9 ** torch.arange(80.0)) @ v.mT
    exact = lowrank_svd.truncated(matrix, 8)
    randomized = lowrank_svd.truncated(matrix, 8, torch.Generator().manual_seed(0))
    best, got = torch.dist(matrix, exact), torch.dist(matrix, randomized)
    assert not torch.equal(exact, randomized) and got <= 1.01 * best, (float(got), float(best))
    again = lowrank_svd.truncated(matrix, 8, torch.Generator().manual_seed(0))
    assert torch.equal(randomized, again)
    wide = lowrank_svd.truncated(matrix.mT.contiguous(), 8, torch.Generator().manual_seed(0))
    assert torch.dist(matrix.mT, wide) <= 1.01 * best


def test_cli_rotate_with_a_fractional_alignment(tmp_path, sd1_keys):
    base, models = models_for(sd1_keys, 1)
    paths = []
    for i, sd in enumerate((base, *models)):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(sd, paths[-1])
    out = tmp_path / "rotate.safetensors"
    res = run_cli("combine", "--base", paths[0], paths[1], "--method", "rotate", "--alignment", "0.5",
                  "--dtype", "fp32", "-q", "-o", str(out))
    assert res.returncode == 0, res.stderr
    want = combine_key(METHODS["rotate"], MethodParams(alignment=0.5), UNET_KEY, 1.0, base[UNET_KEY],
                       [models[0][UNET_KEY]])
    with safe_open(str(out), "pt") as f:
        torch.testing.assert_close(f.get_tensor(UNET_KEY), want)
