"""The methods taken from mergekit (SCE, DELLA linear, Breadcrumbs-TIES, NuSLERP, multi-SLERP, Karcher mean,
NearSwap): their bad inputs are refused naming the input, their degenerate keys fall back as documented and say so,
their inputs are never modified, and the CLI runs them. Parity with mergekit: test_parity_mergekit.py."""
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli import run_cli
from test_merge_api import small_model

from merge_core.combine.deltas import combine_key
from merge_core.combine.interpolation import karcher_mean, multislerp, nuslerp
from merge_core.combine.methods import METHODS, MethodParams
from merge_core.combine.planning import combine_architecture
from merge_core.combine.settings import make_combine_settings
from merge_core.errors import MergeInputError

KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
OURS = ("sce", "della_linear", "breadcrumbs_ties", "nuslerp", "multislerp", "karcher", "nearswap")
rng = np.random.default_rng(7)


def draw(shape, n, dtype=torch.float32):
    return [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype) for _ in range(n)]


@pytest.fixture(scope="module")
def arch(sd1_keys):
    return combine_architecture([dict(sd1_keys)])


@pytest.mark.parametrize("method,n,options,input_name,needle", [
    ("nuslerp", 1, {}, "models", "at least 2"),
    ("nuslerp", 3, {}, "models", "exactly 2"),
    ("nearswap", 2, {}, "models", "exactly 1"),
    ("sce", 1, {}, "models", "at least 2"),
    ("breadcrumbs_ties", 1, {}, "models", "at least 2"),
    ("karcher", 1, {}, "models", "at least 2"),
    ("nearswap", 1, {"weights": "0.5"}, "weights", "does not weigh"),
    ("nearswap", 1, {"similarity_threshold": -0.1}, "similarity_threshold", ">= 0"),
    ("nearswap", 1, {"similarity_threshold": math.nan}, "similarity_threshold", "not finite"),
    ("nuslerp", 2, {"weights": "0.5,-0.5"}, "weights", "w_2 / (w_1 + w_2)"),
    ("nuslerp", 2, {"slerp_axis": "diagonal"}, "slerp_axis", "whole, rows, columns"),
    ("multislerp", 2, {"weights": "1,-0.5"}, "weights", "value #2"),
    ("multislerp", 2, {"weights": "0,0"}, "weights", "all 0"),
    ("karcher", 3, {"weights": "1,-1,1"}, "weights", "value #2"),
    ("karcher", 2, {"tolerance": 0.0}, "tolerance", "(0, 1]"),
    ("karcher", 2, {"iterations": 0}, "iterations", "outside 1"),
    ("sce", 2, {"density": 1.5}, "density", "[0, 1]"),
    ("della_linear", 2, {"drop_rate": 0.95, "epsilon": 0.2}, "drop_rate", "outside [0, 1)"),
    ("breadcrumbs_ties", 2, {"top": 0.6, "bottom": 0.5}, "top", "more than everything"),
])
def test_bad_inputs_are_refused_naming_the_input(arch, method, n, options, input_name, needle):
    with pytest.raises(MergeInputError) as exc:
        make_combine_settings(arch, n, method, **options)
    assert exc.value.input_name == input_name and needle in str(exc.value), str(exc.value)


def test_good_inputs_are_taken(arch):
    assert make_combine_settings(arch, 2, "nuslerp", weights="2,-0.5", slerp_axis="Rows").method_params.slerp_axis \
        == "rows"
    assert make_combine_settings(arch, 1, "nearswap", similarity_threshold=0.0).method_params.similarity_threshold == 0
    assert make_combine_settings(arch, 3, "karcher", weights="0,1,2", tolerance=1e-9).method_params.tolerance == 1e-9
    assert make_combine_settings(arch, 1, "multislerp").method.name == "multislerp"
    assert make_combine_settings(arch, 1, "della_linear", drop_rate=0.5, epsilon=0.2).method.name == "della_linear"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inputs_are_not_modified(dtype):
    base, *models = draw((6, 7), 4, dtype)
    copies = [x.clone() for x in (base, *models)]
    for name in OURS:
        method = METHODS[name]
        count = method.max_models or 3
        result = combine_key(method, MethodParams(density=0.5, drop_rate=0.5), KEY, 0.7, base, models[:count])
        assert result.dtype == torch.float32 and result.shape == base.shape and torch.isfinite(result).all(), name
    assert all(torch.equal(x, y) for x, y in zip((base, *models), copies))


def test_nuslerp_of_a_zero_task_vector_is_linear_and_says_so():
    """A zero vector has no direction: (1 - t) v0 + t v1 (mergekit slerps it as if orthogonal: sin(pi/4) v0 at
    t = 0.5); only the rows concerned, noted once."""
    v0, v1 = draw((4, 5), 2)
    v1[2] = 0
    notes = []
    got = nuslerp(v0, v1, 0.25, "rows", notes)
    torch.testing.assert_close(got[2], 0.75 * v0[2])
    torch.testing.assert_close(got[:2], nuslerp(v0[:2], v1[:2], 0.25, "rows"))
    assert notes == ["nuslerp: a task vector is zero, linear interpolation"]
    notes = []
    torch.testing.assert_close(nuslerp(v0, -3 * v0, 0.5, "whole", notes), -v0)
    assert notes == ["nuslerp: the task vectors are (anti)parallel, linear interpolation"]
    assert nuslerp(torch.tensor(2.0), torch.tensor(4.0), 0.5, "rows").item() == 3.0  # a scalar: one element


def test_nuslerp_keeps_the_norm_and_angle():
    """Orthogonal vectors of one norm at t = 1/3: the result has that norm and lies at a third of the angle."""
    v0, v1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    got = nuslerp(v0, v1, 1 / 3)
    torch.testing.assert_close(got, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0]))


def test_multislerp_of_cancelling_directions_is_the_weighted_mean_and_says_so():
    v = draw((8,), 1)[0]
    taus = [v.clone(), -v.clone(), 2 * v, -2 * v]
    notes = []
    got = multislerp([t.clone() for t in taus], [0.25] * 4, notes)
    torch.testing.assert_close(got, torch.zeros(8), atol=1e-6, rtol=0)
    assert notes == ["multislerp: the weighted unit vectors cancel, weighted mean of the task vectors"]
    notes = []
    torch.testing.assert_close(multislerp([v.clone(), -3 * v], [0.5, 0.5], notes), -v)  # mergekit's 2-model case
    assert len(notes) == 1


def test_multislerp_of_one_model_is_its_task_vector():
    base, model = draw((5, 3), 2)
    got = combine_key(METHODS["multislerp"], MethodParams(weights=(0.3,)), KEY, 1.0, base, [model])
    torch.testing.assert_close(got, model)


def test_karcher_of_zero_models_is_zero_and_says_so():
    notes = []
    assert torch.equal(karcher_mean([torch.zeros(4), torch.full((4,), 1e-7)], [0.5, 0.5], 10, 1e-5, notes),
                       torch.zeros(4))
    assert notes == ["karcher: every model's norm is below tolerance, mean 0"]


def test_karcher_of_two_points_is_the_slerp_midpoint():
    """On the sphere the mean of two points is the middle of the arc; the norm is the mean norm."""
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    got = karcher_mean([a, b], [0.5, 0.5], 100, 1e-7)
    torch.testing.assert_close(got, 3 * torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))


def test_nearswap_takes_the_model_where_near_and_the_base_where_far():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    model = torch.tensor([1e-4, 1.0, 4e-3, 1.0])
    got = combine_key(METHODS["nearswap"], MethodParams(similarity_threshold=2e-3), KEY, 1.0, base, [model])
    torch.testing.assert_close(got, torch.tensor([1e-4, 2e-3, 2e-3, 1.0]))


def test_sce_breadcrumbs_ties_and_della_linear_edges():
    base, *models = draw((8, 8), 3)
    zero = combine_key(METHODS["sce"], MethodParams(density=0.0), KEY, 1.0, base, models)
    assert torch.equal(zero, base)  # nothing selected: the base
    same = [base.clone(), base.clone()]  # all task vectors zero: uniform weights, d = 0
    assert torch.equal(combine_key(METHODS["sce"], MethodParams(), KEY, 1.0, base, same), base)
    summed = combine_key(METHODS["breadcrumbs_ties"], MethodParams(top=0.0, bottom=0.0), KEY, 1.0, base,
                         [base + 1, base + 2, base - 0.5])
    torch.testing.assert_close(summed, base + 3)  # agreeing values summed, the minority erased
    kept = combine_key(METHODS["della_linear"], MethodParams(drop_rate=0.0, epsilon=0.0, weights=(1, 2, 3)), KEY,
                       1.0, base, models)
    torch.testing.assert_close(kept, base + sum(w * (m - base) for w, m in zip((1, 2, 3), models)))


def test_cli_runs_sce_and_nuslerp(tmp_path, sd1_keys):
    """One method per module through `combine`: the written key is the library's."""
    models = [small_model(sd1_keys, seed, torch.float32) for seed in (30, 31, 32)]
    paths = []
    for i, sd in enumerate(models):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_file(sd, paths[-1])
    runs = {"sce": (["--density", "0.5"], MethodParams(density=0.5)),
            "nuslerp": (["--weights", "1,3", "--slerp-axis", "rows"], MethodParams(weights=(1, 3), slerp_axis="rows"))}

    def run(method):
        return run_cli("combine", "--base", paths[0], *paths[1:], "--method", method, *runs[method][0],
                       "--dtype", "fp32", "-q", "-o", str(tmp_path / f"{method}.safetensors"))

    with ThreadPoolExecutor(2) as pool:  # two processes at once: the test's time is one CLI start
        results = dict(zip(runs, pool.map(run, runs)))
    for method, (_, params) in runs.items():
        assert results[method].returncode == 0, results[method].stderr
        with safe_open(str(tmp_path / f"{method}.safetensors"), "pt") as f:
            got = f.get_tensor(KEY)
        want = combine_key(METHODS[method], params, KEY, 1.0, models[0][KEY], [m[KEY] for m in models[1:]])
        torch.testing.assert_close(got, want)
