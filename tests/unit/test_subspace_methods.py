"""TSV-Merge, Iso-C, Iso-CTS and WIDEN beyond their formulas (test_parity_subspace.py): the inputs each refuses
(model counts, common_fraction outside (0, 1], NaN or negative parameters, weights where the method weighs
nothing), each naming the input; the fallbacks for keys without singular vectors or columns; inputs untouched;
finite results where a formula divides by a norm; and one CLI run."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli import run_cli
from test_merge_api import small_model

from merge_core.combine.api import combine_state_dicts
from merge_core.combine.deltas import combine_key
from merge_core.combine.methods import METHODS, MethodParams, get_method
from merge_core.combine.subspace import common_and_task_dims
from merge_core.errors import MergeInputError

KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
NEW = ("tsv", "iso_c", "iso_cts", "widen")


def draw(shape, n, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base.to(dtype), [(base + 0.1 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(n)]


def delta(name, base, models, fallbacks=None, key=KEY, **params):
    return get_method(name).fn(base, models, MethodParams(**params), key, fallbacks)


def refused(sd1_keys, n, method, **options):
    base = small_model(sd1_keys, 0)
    with pytest.raises(MergeInputError) as info:
        combine_state_dicts(base, [small_model(sd1_keys, 1 + i) for i in range(n)], method=method, **options)
    return info.value


@pytest.mark.parametrize("method", ["tsv", "iso_cts", "widen"])
def test_one_model_is_refused(sd1_keys, method):
    err = refused(sd1_keys, 1, method)
    assert err.input_name == "models" and "at least 2" in err.problem


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, math.nan])
def test_common_fraction_outside_its_domain_is_refused(sd1_keys, value):
    err = refused(sd1_keys, 2, "iso_cts", common_fraction=value)
    assert err.input_name == "common_fraction"
    assert ("(0, 1]" in err.problem) or ("not finite" in err.problem), err.problem


@pytest.mark.parametrize("name,value", [("threshold", -1.0), ("calibration", -0.5), ("threshold", math.nan),
                                        ("calibration", math.inf)])
def test_widen_parameters_outside_their_domain_are_refused(sd1_keys, name, value):
    err = refused(sd1_keys, 2, "widen", **{name: value})
    assert err.input_name == name


@pytest.mark.parametrize("method", ["iso_c", "iso_cts", "widen"])
def test_weights_are_refused_where_the_method_weighs_nothing(sd1_keys, method):
    assert refused(sd1_keys, 2, method, weights="1,0.5").input_name == "weights"


def test_tsv_weighs_its_task_vectors():
    base, models = draw((12, 10), 2)
    scaled = [base + 2.0 * (models[0] - base), base - 0.5 * (models[1] - base)]
    torch.testing.assert_close(delta("tsv", base, models, weights=(2.0, -0.5)), delta("tsv", base, scaled))


@pytest.mark.parametrize("shape", [(7,), ()])
def test_keys_without_matrices_take_the_mean_task_vector(shape):
    base, models = draw(shape, 3)
    taus = [m - base for m in models]
    mean = sum(taus) / 3
    for name in ("tsv", "iso_c", "iso_cts"):
        fallbacks = []
        torch.testing.assert_close(delta(name, base, models, fallbacks), mean, msg=name)
        assert fallbacks == [], name  # a bias is no degenerate case: nothing to report
    torch.testing.assert_close(delta("tsv", base, models, weights=(1.0, 2.0, -1.0)),
                               (taus[0] + 2 * taus[1] - taus[2]) / 3)


def test_widen_scores_vectors_by_their_own_differences():
    """A 1-D key: scores from |M_i - C| per element (softmax over the models; calibration above t * mean)."""
    base = torch.zeros(4)
    models = [torch.tensor([1.0, 0.0, 0.0, 0.1]), torch.tensor([0.0, 0.0, 3.0, 0.1])]
    got = delta("widen", base, models, threshold=1.0, calibration=0.5)
    # element 0: model 1 is above its mean (0.275) -> 0.5; element 2: model 2 above its mean (0.775) -> 0.5;
    # element 3: both below their means -> softmax of (0.1, 0.1) = 0.5 each.
    torch.testing.assert_close(got, torch.tensor([0.5, 0.0, 1.5, 0.1]))


def test_tsv_falls_back_to_the_mean_where_the_rank_is_below_the_model_count():
    base, models = draw((2, 9), 3)
    fallbacks = []
    torch.testing.assert_close(delta("tsv", base, models, fallbacks), sum(m - base for m in models) / 3)
    assert fallbacks and "rank 2" in fallbacks[0]


@pytest.mark.parametrize("rank,n,fraction,want", [(320, 3, 0.8, (257, 21, False)), (8, 3, 1.0, (8, 0, False)),
                                                  (8, 3, 0.1, (2, 2, True)), (1280, 4, 0.8, (1024, 64, False))])
def test_iso_cts_splits_the_rank_as_fusion_bench(rank, n, fraction, want):
    """int(rank * fraction) common, then the rest made a multiple of n by Python's round (up 64/3 -> 21 * 3)."""
    assert common_and_task_dims(rank, n, fraction) == want


def test_iso_cts_with_the_whole_rank_common_is_iso_c():
    base, models = draw((10, 14), 3)
    torch.testing.assert_close(delta("iso_cts", base, models, common_fraction=1.0), delta("iso_c", base, models))


@pytest.mark.parametrize("method", NEW)
@pytest.mark.parametrize("shape", [(6,), (8, 12), (4, 3, 3, 3)])
def test_inputs_are_not_modified_and_results_are_float32_of_the_base_shape(method, shape):
    base, models = draw(shape, 3, dtype=torch.float16)
    snapshot = [t.clone() for t in (base, *models)]
    out = combine_key(METHODS[method], MethodParams(), KEY, 0.7, base, models)
    assert out.dtype == torch.float32 and out.shape == base.shape and bool(out.isfinite().all())
    assert all(torch.equal(t, s) for t, s in zip((base, *models), snapshot))


@pytest.mark.parametrize("method", NEW)
def test_models_equal_to_the_base_give_zero(method):
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    out = delta(method, base, [base.clone(), base.clone()])
    assert torch.equal(out, torch.zeros_like(base)), method


@pytest.mark.parametrize("method", NEW)
def test_a_nan_input_gives_nan_where_the_formula_does_and_no_error(method):
    """The SVD methods mix every value of a matrix (LAPACK refuses a NaN): the key becomes NaN, noted; WIDEN's
    NaN stays in its own column's values; a 1-D key's NaN stays at its element."""
    base, models = draw((6, 5), 2)
    models[1][2, 3] = math.nan
    fallbacks = []
    out = delta(method, base, models, fallbacks)
    if method == "widen":
        assert int(out.isnan().sum()) == 1 and fallbacks == []
    else:
        assert bool(out.isnan().all()) and "non-finite" in fallbacks[0]
    vector_base, vector_models = draw((7,), 2)
    vector_models[0][4] = math.nan
    assert int(delta(method, vector_base, vector_models).isnan().sum()) == 1


def test_widen_zero_columns_stay_finite_and_are_noted():
    base, models = draw((6, 5), 2)
    base[:, 1] = 0
    models[0][:, 3] = 0
    fallbacks = []
    out = delta("widen", base, models, fallbacks)
    assert bool(out.isfinite().all()) and fallbacks and "zero column" in fallbacks[0]


def test_cli_combines_by_iso_cts_and_refuses_a_negative_widen_threshold(tmp_path, sd1_keys):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(small_model(sd1_keys, 10 + i, torch.float32), paths[-1])
    out = tmp_path / "iso.safetensors"
    res = run_cli("combine", "--base", paths[0], *paths[1:], "--method", "iso_cts", "--common-fraction", "0.5",
                  "--dtype", "fp32", "-q", "-o", str(out))
    assert res.returncode == 0, res.stderr
    models = [small_model(sd1_keys, 10 + i, torch.float32) for i in range(4)]
    with safe_open(str(out), "pt") as f:
        got = f.get_tensor(KEY)
        recipe = json.loads(f.metadata()["merge_suite_recipe"])
    want = combine_key(METHODS["iso_cts"], MethodParams(common_fraction=0.5), KEY, 1.0, models[0][KEY],
                       [m[KEY] for m in models[1:]])
    torch.testing.assert_close(got, want)
    assert recipe["method"] == "iso_cts" and recipe["common_fraction"] == 0.5
    bad = run_cli("combine", "--base", paths[0], *paths[1:], "--method", "widen", "--threshold", "-1",
                  "-o", str(tmp_path / "bad.safetensors"))
    assert bad.returncode != 0 and "--threshold" in bad.stderr and not (tmp_path / "bad.safetensors").exists()
