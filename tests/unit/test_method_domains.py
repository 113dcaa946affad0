"""Each n-model method's parameters in their domain (combine/methods.py's docstring says why each rule), refused
before any tensor is read, with valid edge values still merging by the formula; and every merged result checked
(merge_core/nonfinite.py): a NaN/inf result of finite inputs stops the merge naming the key and the method, while
NaN/inf inputs are merged as the formula says and counted."""
import pytest
import torch
from safetensors.torch import save_file
from test_merge_api import small_model

from merge_core.combine import settings as combine_settings
from merge_core.api import merge_files, merge_state_dicts
from merge_core.combine.api import combine_files, combine_state_dicts
from merge_core.combine.deltas import combine_key
from merge_core.errors import MergeInputError
from merge_core.io.sources import FileSource
from merge_core.methods import fused_linear
from merge_core.combine.methods import MAX_ITERATIONS, METHODS, MethodParams, check_params
from merge_core.nonfinite import NonFiniteResult, may_leave_range

KEY = "model.diffusion_model.input_blocks.1.1.proj_in.weight"


def params_error(method, n=2, **params):
    with pytest.raises(MergeInputError) as info:
        check_params(METHODS[method], MethodParams(**params), n)
    return info.value


@pytest.mark.parametrize("weights", [(1, -1), (0, 0), (1, -0.999), (-1, -1), (2, -1)])
def test_geometric_median_refuses_weights_it_cannot_normalise(weights):
    err = params_error("geometric_median", weights=weights)
    assert err.input_name == "weights" and ">= 0 with a positive sum" in str(err), str(err)


@pytest.mark.parametrize("weights", [(1, 0), (0.5, 0.5), (1e-3, 2), (1000, 1)])
def test_geometric_median_takes_non_negative_weights_with_a_positive_sum(weights):
    check_params(METHODS["geometric_median"], MethodParams(weights=weights), 2)
    base = torch.zeros(4, 3)
    models = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = combine_key(METHODS["geometric_median"], MethodParams(weights=weights), KEY, 1.0, base, models)
    assert torch.isfinite(result).all()
    if weights[1] == 0:  # a zero weight leaves that model out: the median of one point is that point
        torch.testing.assert_close(result, models[0])


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare", "dare_ties", "della", "breadcrumbs"])
def test_methods_that_never_divide_by_the_weights_take_negative_ones(method):
    """A negative weight subtracts that task vector; weights summing to 0 are well defined."""
    check_params(METHODS[method], MethodParams(weights=(1, -1)), 2)
    base = torch.zeros(6, 5)
    models = [torch.randn(6, 5, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    params = MethodParams(weights=(1, -1), drop_rate=0.5)
    got = combine_key(METHODS[method], params, KEY, 1.0, base, models)
    assert torch.isfinite(got).all()
    if method == "task_arithmetic":
        torch.testing.assert_close(got, models[0] - models[1])
    if method == "ties":  # the negated model votes with its flipped sign, as the same model negated would
        flipped = combine_key(METHODS[method], MethodParams(drop_rate=0.5), KEY, 1.0, base, [models[0], -models[1]])
        torch.testing.assert_close(got, flipped)


@pytest.mark.parametrize("drop_rate,epsilon", [(0.9, 0.25), (0.9, 0.4), (0.95, 0.1), (0.05, 0.2), (1.0, 0.0),
                                               (0.0, 0.1)])
def test_della_refuses_probabilities_outside_0_1(drop_rate, epsilon):
    err = params_error("della", drop_rate=drop_rate, epsilon=epsilon)
    assert err.input_name == "drop_rate" and "epsilon" in str(err) and "[0, 1)" in str(err), str(err)


@pytest.mark.parametrize("drop_rate,epsilon", [(0.9, 0.1), (0.9, 0.19), (0.1, 0.2), (0.0, 0.0), (0.5, 0.98)])
def test_della_edges_inside_the_domain_merge_within_their_scale(drop_rate, epsilon):
    check_params(METHODS["della"], MethodParams(drop_rate=drop_rate, epsilon=epsilon), 2)
    base = torch.zeros(50, 40)
    models = [torch.rand(50, 40, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(2)]
    got = combine_key(METHODS["della"], MethodParams(drop_rate=drop_rate, epsilon=epsilon), KEY, 1.0, base, models)
    # the largest scale 1/(1 - p_r) stays below 1/(1 - (drop_rate + epsilon/2))
    assert float(got.abs().max()) <= 1.0 / (1.0 - (drop_rate + epsilon / 2)) + 1e-5


def test_dare_drop_rate_one_drops_everything_and_near_one_is_the_papers_scale():
    base = torch.zeros(200)
    model = torch.full((200,), 0.5)
    everything = combine_key(METHODS["dare"], MethodParams(drop_rate=1.0), KEY, 1.0, base, [model])
    assert torch.equal(everything, base)
    p = 0.999
    kept = combine_key(METHODS["dare"], MethodParams(drop_rate=p), KEY, 1.0, torch.zeros(100000),
                       [torch.full((100000,), 0.5)])
    values = kept[kept != 0]
    torch.testing.assert_close(values, torch.full_like(values, 0.5 / (1 - p)))  # large, finite: the formula


@pytest.mark.parametrize("iterations", [0, MAX_ITERATIONS + 1, 2 ** 64])
def test_iterations_outside_1_to_the_maximum_are_refused(iterations):
    err = params_error("geometric_median", iterations=iterations)
    assert err.input_name == "iterations" and str(MAX_ITERATIONS) in str(err)


@pytest.mark.parametrize("value", [float("nan"), 2.5, "many"])
def test_iterations_must_be_a_whole_number(value, sd1_keys):
    base = small_model(sd1_keys, 1, torch.float32)
    with pytest.raises(MergeInputError) as info:
        combine_state_dicts(base, [base, base], method="geometric_median", iterations=value)
    assert info.value.input_name == "iterations"


def test_the_maximum_iteration_count_itself_is_taken():
    check_params(METHODS["geometric_median"], MethodParams(iterations=MAX_ITERATIONS), 2)


@pytest.fixture
def unreadable(monkeypatch):
    """Every tensor read fails: a refusal must come before any."""
    def refuse(self, key):
        raise AssertionError(f"a tensor was read ({key}) before the settings were checked")
    monkeypatch.setattr(FileSource, "get", refuse)
    monkeypatch.setattr(FileSource, "raw", refuse)


@pytest.mark.parametrize("options", [
    dict(method="geometric_median", weights="1,-1"), dict(method="geometric_median", weights="0,0"),
    dict(method="della", drop_rate=0.9, epsilon=0.25), dict(method="geometric_median", iterations=MAX_ITERATIONS + 1),
])
def test_refused_before_any_tensor_is_read(tmp_path, sd1_keys, unreadable, options):
    paths = []
    for seed in (1, 2, 3):
        paths.append(str(tmp_path / f"m{seed}.safetensors"))
        save_file(small_model(sd1_keys, seed), paths[-1])
    out = tmp_path / "out.safetensors"
    with pytest.raises(MergeInputError):
        combine_files(paths[0], paths[1:], str(out), **options)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1.safetensors", "m2.safetensors", "m3.safetensors"]


# --- every merged result checked --------------------------------------------------------------------

def filled(sd1_keys, value):
    """An SD1 fp16 model whose float values are all `value` (finite)."""
    return {k: torch.full_like(v, value) if v.is_floating_point() else v
            for k, v in small_model(sd1_keys, 1, torch.float16).items()}


def test_combine_result_beyond_float16_is_an_error_naming_key_and_method(tmp_path, sd1_keys):
    base, model = filled(sd1_keys, 0.0), filled(sd1_keys, 100.0)
    with pytest.raises(NonFiniteResult) as info:
        combine_state_dicts(base, [model, model], method="task_arithmetic", weights="1000,1000")
    text = str(info.value)
    assert info.value.input_name == "method" and "task_arithmetic" in text and "at key '" in text
    assert "float16" in text and "inputs there are finite" in text
    # written as fp32 the same settings are finite: the formula's value, no error
    out = combine_state_dicts(base, [model, model], method="task_arithmetic", weights="1000,1000",
                              dtype=torch.float32)
    assert float(out[KEY].max()) == 200000.0
    # files: the same error, nothing written, the inputs unchanged
    paths = [tmp_path / "base.safetensors", tmp_path / "m.safetensors"]
    save_file(base, paths[0])
    save_file(model, paths[1])
    before = [p.read_bytes() for p in paths]
    with pytest.raises(NonFiniteResult, match="task_arithmetic"):
        combine_files(str(paths[0]), [str(paths[1]), str(paths[1])], str(tmp_path / "o.safetensors"),
                      method="task_arithmetic", weights="1000,1000")
    assert [p.read_bytes() for p in paths] == before and sorted(tmp_path.iterdir()) == sorted(paths)


def test_nonfinite_inputs_still_merge_as_the_formula_says(sd1_keys):
    base, model = filled(sd1_keys, 0.0), filled(sd1_keys, 1.0)
    broken = dict(model, **{KEY: model[KEY].clone()})
    broken[KEY].view(-1)[0] = float("nan")
    out = combine_state_dicts(base, [model, broken], method="task_arithmetic")
    assert torch.isnan(out[KEY]).sum() == 1


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("mode,alpha,c", [("Weight sum", 1000.0, False), ("Add difference", 1000.0, True),
                                          ("Weight sum", -1000.0, False)])
def test_two_model_result_beyond_float16_is_an_error(tmp_path, sd1_keys, monkeypatch, native, mode, alpha, c):
    """Both the native kernel and the torch path check what their coefficients can take out of range."""
    if not native:
        monkeypatch.setattr(fused_linear, "available", lambda: False)
    a, b = filled(sd1_keys, 0.0), filled(sd1_keys, 100.0)
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    save_file(a, paths[0])
    save_file(b, paths[1])
    out = tmp_path / "o.safetensors"
    with pytest.raises(NonFiniteResult) as info:
        merge_files(str(paths[0]), str(paths[1]), str(paths[0]) if c else None, str(out), mode=mode, alpha=alpha)
    mode_name = mode.lower().replace(" ", "_")
    assert info.value.input_name == "mode" and mode_name in str(info.value) and "at key '" in str(info.value)
    assert not out.exists() and sorted(tmp_path.iterdir()) == sorted(paths)
    # in range: a plain weight sum merges (the result pass is skipped where it cannot overflow)
    merged = merge_state_dicts(a, b, mode="Weight sum", alpha=0.5)
    assert float(merged[KEY].max()) == 50.0


def test_calc_mode_result_is_checked(sd1_keys):
    a, b = filled(sd1_keys, 0.0), filled(sd1_keys, 100.0)
    with pytest.raises(NonFiniteResult, match="calcmode.*trainDifference|trainDifference"):
        merge_state_dicts(a, b, a, mode="Add difference", alpha=1000.0, calcmode="trainDifference")


@pytest.mark.parametrize("mode,alpha,beta,dtypes,out,expected", [
    ("weight_sum", 0.3, 0.0, (torch.float16, torch.float16), torch.float16, False),
    ("weight_sum", 1.0, 0.0, (torch.bfloat16, torch.bfloat16), torch.bfloat16, False),
    ("weight_sum", 0.5, 0.0, (torch.float16, torch.float16), torch.float32, False),
    ("weight_sum", 0.5, 0.0, (torch.float32, torch.float32), torch.float32, False),
    ("weight_sum", 1.5, 0.0, (torch.float32, torch.float32), torch.float32, True),
    ("weight_sum", 1.2, 0.0, (torch.float16, torch.float16), torch.float16, True),
    ("add_difference", 0.5, 0.0, (torch.float16,) * 3, torch.float16, True),
    ("weight_sum", 0.5, 0.0, (torch.float32, torch.float16), torch.float16, True),
    ("triple_sum", 0.3, 0.3, (torch.float16,) * 3, torch.float16, False),
    ("sum_twice", 0.3, 1.5, (torch.float16,) * 3, torch.float16, True),
])
def test_the_result_pass_is_skipped_only_where_the_coefficients_keep_the_range(mode, alpha, beta, dtypes, out,
                                                                                expected):
    assert may_leave_range(mode, alpha, beta, dtypes, out) is expected


def test_parse_weights_names_the_input():
    with pytest.raises(MergeInputError) as info:
        combine_settings.parse_weights("1,x")
    assert info.value.input_name == "weights"


@pytest.mark.parametrize("method", ["ties", "sce"])
def test_density_zero_is_refused_naming_the_input(method):
    err = params_error(method, density=0.0)
    assert err.input_name == "density" and "(0, 1]" in str(err), str(err)
    check_params(METHODS[method], MethodParams(density=1e-6), 2)  # any positive fraction is taken


@pytest.mark.parametrize("options,name", [
    (dict(method="truncate_rank", rank=0), "rank"), (dict(method="iso_cts", common_fraction=0.0), "common_fraction"),
    (dict(method="crossover", mix=float("nan")), "mix"), (dict(method="nuslerp", slerp_axis="diagonal"), "slerp_axis"),
])
def test_later_parameters_out_of_their_domain_are_refused_before_any_tensor_is_read(tmp_path, sd1_keys, unreadable,
                                                                                    options, name):
    paths = []
    for seed in (1, 2, 3):
        paths.append(str(tmp_path / f"m{seed}.safetensors"))
        save_file(small_model(sd1_keys, seed), paths[-1])
    count = METHODS[options["method"]].max_models or 2
    out = tmp_path / "out.safetensors"
    with pytest.raises(MergeInputError) as info:
        combine_files(paths[0], paths[1:1 + count], str(out), **options)
    assert info.value.input_name == name, str(info.value)
    assert not out.exists()
